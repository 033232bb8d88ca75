//! Otoroshi's side of its WASM plugins: the host functions it links into every plugin
//! ([`host`]), the JSON of `proxy_http_call` ([`http_call`]), and the stores behind the map and
//! data-store functions ([`maps`], [`datastore`]).

pub mod datastore;
pub mod host;
pub mod http_call;
pub mod maps;
