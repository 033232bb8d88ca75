//! A plugin's view of one nginx request: header maps (request, response
//! once the header filter ran) and properties. Resumes, local responses and
//! closes never reach it: the chain's stream (`proxy_wasm_host::chain::stream`)
//! takes them.

use std::sync::Arc;

use ngx::ffi::*;

use super::context::ReqCtx;
use super::headers as hdr;
use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::{MapType, Status, StreamType};
use proxy_wasm_host::host::{HttpStream, LocalResponse};

/// The stream context's view of the request.
pub struct NgxStream {
    ctx: Arc<ReqCtx>,
}

impl NgxStream {
    pub fn new(ctx: Arc<ReqCtx>) -> NgxStream {
        NgxStream { ctx }
    }

    fn req(&self) -> Option<*mut ngx_http_request_t> {
        self.ctx.r()
    }

    fn response_started(&self) -> bool {
        self.ctx.response_started.get()
    }
}

pub fn header_sent(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: live request.
    unsafe { (*r).header_sent() != 0 }
}

impl HttpStream for NgxStream {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        let Some(r) = self.req() else { return Ok(Vec::new()) };
        let response_started = self.response_started();
        // SAFETY: live request on this worker's thread.
        Ok(unsafe {
            match map {
                MapType::HttpRequestHeaders => hdr::request_pairs(r),
                MapType::HttpResponseHeaders if response_started => hdr::response_pairs(r),
                MapType::HttpResponseHeaders | MapType::HttpRequestTrailers | MapType::HttpResponseTrailers => {
                    Vec::new()
                }
                _ => return Err(Status::BadArgument),
            }
        })
    }

    /// Counted in nginx's lists, as `header_map` would list them (no copies: the chain asks
    /// after every plugin that edited a map).
    fn header_count(&self, map: MapType) -> Result<usize, Status> {
        let Some(r) = self.req() else { return Ok(0) };
        let response_started = self.response_started();
        // SAFETY: live request on this worker's thread.
        Ok(unsafe {
            match map {
                MapType::HttpRequestHeaders => hdr::request_pair_count(r),
                MapType::HttpResponseHeaders if response_started => hdr::response_pair_count(r),
                MapType::HttpResponseHeaders | MapType::HttpRequestTrailers | MapType::HttpResponseTrailers => 0,
                _ => return Err(Status::BadArgument),
            }
        })
    }

    fn header_value(&self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        let Some(r) = self.req() else { return Ok(None) };
        let response_started = self.response_started();
        // SAFETY: live request on this worker's thread.
        Ok(unsafe {
            match map {
                MapType::HttpRequestHeaders => hdr::request_value(r, key),
                MapType::HttpResponseHeaders if response_started => hdr::response_value(r, key),
                MapType::HttpResponseHeaders | MapType::HttpRequestTrailers | MapType::HttpResponseTrailers => None,
                _ => return Err(Status::BadArgument),
            }
        })
    }

    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status> {
        let r = self.writable(map)?;
        // SAFETY: live request.
        unsafe {
            match map {
                MapType::HttpRequestHeaders => hdr::set_request_pairs(r, &pairs),
                _ => hdr::set_response_pairs(r, &pairs),
            }
        }
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let r = self.writable(map)?;
        // SAFETY: live request.
        unsafe {
            match map {
                MapType::HttpRequestHeaders => hdr::add_request(r, key, value),
                _ => hdr::add_response(r, key, value),
            }
        }
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let r = self.writable(map)?;
        // SAFETY: live request.
        unsafe {
            match map {
                MapType::HttpRequestHeaders => hdr::replace_request(r, key, value),
                _ => hdr::replace_response(r, key, value),
            }
        }
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        let r = self.writable(map)?;
        // SAFETY: live request.
        unsafe {
            match map {
                MapType::HttpRequestHeaders => hdr::remove_request_header(r, key),
                _ => hdr::remove_response_header(r, key),
            }
        }
    }

    // The chain's stream (`proxy_wasm_host::chain::stream::ChainStream`) takes these
    // three: they never reach the server's stream.
    fn send_local_response(&mut self, _response: LocalResponse) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    fn resume(&mut self, _stream: StreamType) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    fn close(&mut self, _stream: StreamType) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    fn detach(&mut self) {}

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        let Some(r) = self.req() else { return Ok(None) };
        match path {
            [b"response", b"code_details"] => {
                if let Some(details) = self.ctx.local_details.borrow().as_ref() {
                    return Ok(Some(details.clone().into_bytes()));
                }
            }
            // Body bytes as the body filter passed them on, before any chunked framing.
            [b"response", b"size"] => return Ok(Some(self.ctx.response_sent.get().to_le_bytes().to_vec())),
            [b"response", b"total_size"] => {
                // SAFETY: live request; nginx sets `header_size` when it writes the header.
                let header = unsafe { (*r).header_size } as u64;
                return Ok(Some((header + self.ctx.response_sent.get()).to_le_bytes().to_vec()));
            }
            _ => {}
        }
        // SAFETY: live request.
        Ok(unsafe { property(r, path, self.response_started()) })
    }
}

impl NgxStream {
    fn writable(&self, map: MapType) -> Result<*mut ngx_http_request_t, Status> {
        let r = self.req().ok_or(Status::BadArgument)?;
        match map {
            MapType::HttpRequestHeaders => Ok(r),
            MapType::HttpResponseHeaders if self.response_started() && !header_sent(r) => Ok(r),
            _ => Err(Status::BadArgument),
        }
    }
}

/// Envoy-named properties of a request, plus `ngx.<variable>`.
unsafe fn property(r: *mut ngx_http_request_t, path: &[&[u8]], response: bool) -> Option<Vec<u8>> {
    let int = |v: u64| Some(v.to_le_bytes().to_vec());
    // SAFETY: live request; every pointer read is nginx's own.
    unsafe {
        let c = (*r).connection;
        // Repeated headers joined with ",", as `get_header_map_value` answers.
        let header = |name: &[u8]| hdr::request_value(r, name);
        let sockaddr_port = |sa: *const libc::sockaddr| -> Option<u16> {
            if sa.is_null() {
                return None;
            }
            match (*sa).sa_family as i32 {
                libc::AF_INET => Some(u16::from_be((*(sa as *const libc::sockaddr_in)).sin_port)),
                libc::AF_INET6 => Some(u16::from_be((*(sa as *const libc::sockaddr_in6)).sin6_port)),
                _ => None,
            }
        };
        match path {
            [b"request", b"path"] => Some((*r).unparsed_uri.as_bytes().to_vec()),
            [b"request", b"url_path"] => Some((*r).uri.as_bytes().to_vec()),
            [b"request", b"query"] => Some((*r).args.as_bytes().to_vec()),
            [b"request", b"host"] => Some(hdr::request_authority(r)),
            [b"request", b"scheme"] => Some(scheme_of(r).to_vec()),
            [b"request", b"method"] => Some((*r).method_name.as_bytes().to_vec()),
            [b"request", b"referer"] => header(b"referer"),
            [b"request", b"useragent"] => header(b"user-agent"),
            [b"request", b"id"] => header(b"x-request-id").or_else(|| variable(r, b"request_id")),
            [b"request", b"protocol"] => Some((*r).http_protocol.as_bytes().to_vec()),
            [b"request", b"headers", name] => header(name),
            [b"request", b"time"] => {
                int(((*r).start_sec as u64) * 1_000_000_000 + ((*r).start_msec as u64) * 1_000_000)
            }
            // Envoy: nanoseconds since the first byte of the request (nginx keeps its start to the ms).
            [b"request", b"duration"] => {
                let start = ((*r).start_sec as u64) * 1_000_000_000 + ((*r).start_msec as u64) * 1_000_000;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                int(now.saturating_sub(start))
            }
            // The request line, headers and body bytes read so far (`$request_length`).
            [b"request", b"total_size"] => int((*r).request_length.max(0) as u64),
            // The response came from the upstream (the local responses are answered by `NgxStream`).
            [b"response", b"code_details"] if response => (!(*r).upstream.is_null()
                && variable(r, b"upstream_status").is_some_and(|s| s != b"-"))
            .then(|| b"via_upstream".to_vec()),
            // The last upstream tried (`$upstream_addr` lists each attempt).
            [b"upstream", b"address"] => last_upstream(r),
            [b"upstream", b"port"] => {
                last_upstream(r).and_then(|a| number(a.rsplit(|b| *b == b':').next()?.to_vec())).and_then(int)
            }
            // TLS with a verified client certificate.
            [b"connection", b"mtls"] => {
                let verified =
                    !(*c).ssl.is_null() && variable(r, b"ssl_client_verify").is_some_and(|v| v == b"SUCCESS");
                Some(vec![verified as u8])
            }
            [b"request", b"size"] => {
                ((*r).headers_in.content_length_n >= 0).then(|| (*r).headers_in.content_length_n as u64).and_then(int)
            }
            [b"response", b"code"] if response => int((*r).headers_out.status as u64),
            [b"response", b"headers", name] if response => hdr::response_value(r, name),
            // Envoy's form: "<ip>:<port>" ("[<ip6>]:<port>").
            [b"source", b"address"] => {
                let ip = String::from_utf8_lossy((*c).addr_text.as_bytes()).into_owned();
                let port = sockaddr_port((*c).sockaddr as *const libc::sockaddr).unwrap_or(0);
                Some(if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }.into_bytes())
            }
            [b"source", b"port"] => sockaddr_port((*c).sockaddr as *const libc::sockaddr).and_then(|p| int(p as u64)),
            [b"destination", b"address"] => {
                let ip = String::from_utf8_lossy(&variable(r, b"server_addr")?).into_owned();
                let port = String::from_utf8_lossy(&variable(r, b"server_port")?).into_owned();
                Some(if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }.into_bytes())
            }
            [b"destination", b"port"] => variable(r, b"server_port")
                .and_then(|p| std::str::from_utf8(&p).ok()?.parse::<u64>().ok())
                .and_then(int),
            [b"connection", b"id"] => int((*c).number as u64),
            [b"ngx", name] => variable(r, name),
            _ => None,
        }
    }
}

/// A decimal nginx variable's value.
fn number(text: Vec<u8>) -> Option<u64> {
    std::str::from_utf8(&text).ok()?.trim().parse().ok()
}

/// The address of the last upstream tried, "<ip>:<port>" (`$upstream_addr`
/// separates attempts with ", " and internal redirections with " : ").
///
/// # Safety
/// `r` is a live request.
unsafe fn last_upstream(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    // SAFETY: live request (caller).
    let all = unsafe { variable(r, b"upstream_addr")? };
    let text = std::str::from_utf8(&all).ok()?;
    let last = text.rsplit([',', ' ']).find(|s| !s.is_empty() && *s != ":")?;
    (last.contains(':') && last != "-").then(|| last.as_bytes().to_vec())
}

fn scheme_of(r: *mut ngx_http_request_t) -> &'static [u8] {
    // SAFETY: live request.
    if unsafe { !(*(*r).connection).ssl.is_null() } {
        b"https"
    } else {
        b"http"
    }
}

/// An nginx variable's value (`ngx.<name>`).
unsafe fn variable(r: *mut ngx_http_request_t, name: &[u8]) -> Option<Vec<u8>> {
    if name.is_empty() {
        return None;
    }
    let mut lower = name.to_ascii_lowercase();
    // SAFETY: `lower` outlives the call; nginx returns a value from the request pool.
    unsafe {
        let mut s = ngx_str_t { len: lower.len(), data: lower.as_mut_ptr() };
        let key = ngx_hash_key(s.data, s.len);
        let v = ngx_http_get_variable(r, &mut s, key);
        if v.is_null() || (*v).not_found() != 0 {
            return None;
        }
        Some((*v).as_bytes().to_vec())
    }
}
