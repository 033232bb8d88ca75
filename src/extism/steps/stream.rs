//! The steps' side of a server's transaction, through the server-neutral [`HttpStream`] (the
//! interface both servers already implement for Proxy-Wasm filters): the request and response
//! the step inputs are built from, and the verdicts of [`super::output`] applied back.
//!
//! Nothing here knows NGINX or Traffic Server: pseudo-headers carry the method, path, authority,
//! scheme and status, and Envoy-named properties (`request.protocol`, `source.address`) the rest,
//! as for Proxy-Wasm plugins.

use crate::abi::pairs::Pair;
use crate::abi::{MapType, Status};
use crate::host::{self, HttpStream};

use super::output::{RequestChanges, ResponseChanges};
use super::route;
use super::view::{Cookie, RequestParts, ResponseParts};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The map's ordinary headers (pseudo-headers left out), as text.
fn plain_headers(pairs: &[Pair]) -> Vec<(String, String)> {
    pairs.iter().filter(|(k, _)| !k.starts_with(b":")).map(|(k, v)| (text(k), text(v))).collect()
}

fn pseudo<'p>(pairs: &'p [Pair], name: &[u8]) -> Option<&'p [u8]> {
    pairs.iter().find(|(k, _)| k.as_slice() == name).map(|(_, v)| v.as_slice())
}

/// `HTTP/1.1` from what a server reports as `request.protocol` (`HTTP/1.1`, `1.1`, `http/2`...).
fn version_of(protocol: Option<&[u8]>) -> String {
    let p = protocol.map(text).unwrap_or_default();
    let number = p.trim().trim_start_matches("HTTP/").trim_start_matches("http/");
    match number {
        "" => "HTTP/1.1".to_owned(),
        "2" => "HTTP/2.0".to_owned(),
        "3" => "HTTP/3.0".to_owned(),
        n => format!("HTTP/{n}"),
    }
}

/// The IP of `source.address` (`1.2.3.4:5678`, `[::1]:5678`, or an address without port).
fn ip_of(address: &str) -> String {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip.to_owned(),
        _ => address.to_owned(),
    }
}

/// The incoming request as the step inputs read it. `id` is the server's unique request number.
/// Without a `Host` header (HTTP/2), `:authority` is given as `Host`, as Play shows it.
///
/// # Errors
/// What the stream answers when its request headers cannot be read.
pub fn request_parts(stream: &dyn HttpStream, id: u64) -> Result<RequestParts, Status> {
    let pairs = stream.header_map(MapType::HttpRequestHeaders)?;
    let protocol = stream.property(&[b"request", b"protocol"]).ok().flatten();
    let address = stream.property(&[b"source", b"address"]).ok().flatten();
    Ok(request_parts_from(&pairs, protocol.as_deref(), address.as_deref(), id))
}

/// The same from a server's request header map (pseudo-headers included), its protocol
/// (`request.protocol`) and client address (`source.address`), for the steps that run outside a
/// chain (MatchRoute and Router, where the server routes).
#[must_use]
pub fn request_parts_from(pairs: &[Pair], protocol: Option<&[u8]>, address: Option<&[u8]>, id: u64) -> RequestParts {
    let mut headers = plain_headers(pairs);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        if let Some(authority) = pseudo(pairs, b":authority").filter(|a| !a.is_empty()) {
            headers.insert(0, ("Host".to_owned(), text(authority)));
        }
    }
    let remote = address.map(|a| ip_of(&text(a))).unwrap_or_default();
    RequestParts {
        id,
        method: pseudo(pairs, b":method").map(text).unwrap_or_else(|| "GET".to_owned()),
        uri: pseudo(pairs, b":path").map(text).unwrap_or_else(|| "/".to_owned()),
        version: version_of(protocol),
        headers,
        remote,
        secure: pseudo(pairs, b":scheme") == Some(b"https"),
        client_cert_chain: None,
        path_params: Vec::new(),
    }
}

/// The response (the origin's, or a local one) as the response steps read it.
///
/// # Errors
/// What the stream answers when its response headers cannot be read.
pub fn response_parts(stream: &dyn HttpStream) -> Result<ResponseParts, Status> {
    let pairs = stream.header_map(MapType::HttpResponseHeaders)?;
    let status = pseudo(&pairs, b":status").and_then(|s| std::str::from_utf8(s).ok()?.parse().ok()).unwrap_or(200);
    Ok(ResponseParts { status, headers: plain_headers(&pairs) })
}

/// A step's answer as the chain's local response.
#[must_use]
pub fn local_response(response: route::LocalResponse, plugin: &str) -> host::LocalResponse {
    host::LocalResponse {
        status: u32::from(response.status),
        details: format!("otoroshi_wasm:{plugin}"),
        body: response.body,
        headers: response.headers.into_iter().map(|(k, v)| (k.into_bytes(), v.into_bytes())).collect(),
        grpc_status: -1,
    }
}

/// The path and query of a transformer's `url`: Otoroshi gives the backend's whole URL; here the
/// server routes, so only what follows the authority is applied (a relative `url` as it is).
fn path_of_url(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

/// Keeps the map's pseudo-headers and replaces its ordinary headers by `headers`.
fn replace_plain(
    stream: &mut dyn HttpStream,
    map: MapType,
    headers: &[(String, String)],
    cookies: Option<(&str, Vec<String>)>,
) -> Result<(), Status> {
    let current = stream.header_map(map)?;
    let mut pairs: Vec<Pair> = current.into_iter().filter(|(k, _)| k.starts_with(b":")).collect();
    let cookie_name = cookies.as_ref().map(|(n, _)| *n);
    pairs.extend(
        headers
            .iter()
            .filter(|(k, _)| cookie_name.is_none_or(|n| !k.eq_ignore_ascii_case(n)))
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    if let Some((name, values)) = cookies {
        pairs.extend(values.into_iter().map(|v| (name.as_bytes().to_vec(), v.into_bytes())));
    }
    stream.set_header_map(map, pairs)
}

/// Applies a request transformer's changes to the request headers (`method` → `:method`, `url`
/// → `:path`, `headers` replace every header, `cookies` the `Cookie` header). The new body, when
/// the plugin gave one, is returned: bodies go through the chain, not through this stream.
///
/// # Errors
/// What the stream answers (BAD_ARGUMENT once the request went upstream).
pub fn apply_request(stream: &mut dyn HttpStream, changes: RequestChanges) -> Result<Option<Vec<u8>>, Status> {
    if let Some(method) = &changes.method {
        stream.replace_header(MapType::HttpRequestHeaders, b":method", method.as_bytes())?;
    }
    if let Some(url) = &changes.url {
        stream.replace_header(MapType::HttpRequestHeaders, b":path", path_of_url(url).as_bytes())?;
    }
    let cookie_line = changes
        .cookies
        .as_ref()
        .map(|cs| cs.iter().map(|c| format!("{}={}", c.name, c.value)).collect::<Vec<_>>().join("; "));
    match (&changes.headers, cookie_line) {
        (Some(headers), cookie) => {
            replace_plain(stream, MapType::HttpRequestHeaders, headers, cookie.map(|c| ("Cookie", vec![c])))?
        }
        (None, Some(cookie)) => stream.replace_header(MapType::HttpRequestHeaders, b"cookie", cookie.as_bytes())?,
        (None, None) => {}
    }
    Ok(changes.body)
}

/// Applies a response transformer's changes to the response headers (`status` → `:status`,
/// `headers` replace every header, `cookies` the `Set-Cookie` lines). The new body, when the
/// plugin gave one, is returned for the chain.
///
/// # Errors
/// What the stream answers (BAD_ARGUMENT once the response headers left).
pub fn apply_response(stream: &mut dyn HttpStream, changes: ResponseChanges) -> Result<Option<Vec<u8>>, Status> {
    stream.replace_header(MapType::HttpResponseHeaders, b":status", changes.status.to_string().as_bytes())?;
    let set_cookies = changes.cookies.as_ref().map(|cs| cs.iter().map(Cookie::set_cookie).collect::<Vec<_>>());
    match (&changes.headers, set_cookies) {
        (Some(headers), cookies) => {
            replace_plain(stream, MapType::HttpResponseHeaders, headers, cookies.map(|c| ("Set-Cookie", c)))?
        }
        (None, Some(cookies)) => {
            stream.remove_header(MapType::HttpResponseHeaders, b"set-cookie")?;
            for c in cookies {
                stream.add_header(MapType::HttpResponseHeaders, b"Set-Cookie", c.as_bytes())?;
            }
        }
        (None, None) => {}
    }
    Ok(changes.body)
}

#[cfg(test)]
mod tests;
