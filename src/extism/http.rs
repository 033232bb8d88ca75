//! Outgoing HTTP for Extism plugins (`http_request`) and Otoroshi plugins (`proxy_http_call`):
//! the request and answer as plain data, the [`HttpClient`] a server binding provides, and the
//! allowed-host rules of both (Extism's globs, Otoroshi's wildcard regexes).
//!
//! Both functions are synchronous for the plugin: the call blocks the thread that runs the
//! plugin until the answer is there. A server runs plugins that may make calls off its event
//! loop (see docs/otoroshi.md, "Never blocking the event loop"); this module only describes calls.

use std::time::Duration;

use crate::host::HttpCallRequest;

/// One outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub method: String,
    /// An absolute `http://` or `https://` URL, query included.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    pub follow_redirects: bool,
    /// The most bytes of the answer taken; a larger one fails the call.
    pub max_response_size: u64,
}

/// An answer (any status: a 404 is an answer, not a failure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncomingResponse {
    pub status: u16,
    /// Names as the upstream sent them, in order; repeated names repeated.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("timeout")]
    Timeout,
    #[error("the answer is larger than {0} bytes")]
    TooLarge(u64),
    #[error("bad answer: {0}")]
    Protocol(String),
}

/// What a server binding gives plugins for outgoing calls. `send` blocks until the answer is
/// complete or the request's timeout passes; it must never be called on an event loop.
pub trait HttpClient: Send + Sync {
    fn send(&self, request: &OutgoingRequest) -> Result<IncomingResponse, HttpError>;
}

/// The parts of a URL the host needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    /// Without brackets for IPv6, lower-cased.
    pub host: String,
    pub port: u16,
    /// As written after the host (`/` when empty), query included, fragment removed.
    pub path_and_query: String,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
}

impl Url {
    /// Parses an absolute `http(s)://[user@]host[:port][/path][?query][#fragment]` URL.
    pub fn parse(url: &str) -> Result<Url, HttpError> {
        let bad = || HttpError::InvalidUrl(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        if authority.is_empty() || authority.bytes().any(|b| b <= b' ') {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), port.parse().map_err(|_| bad())?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let tail = tail.split('#').next().unwrap_or_default();
        let path_and_query = match tail {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        Ok(Url { scheme, host: host.to_ascii_lowercase(), port, path_and_query, authority: authority.to_owned() })
    }
}

/// Appends `params` to `url`'s query, percent-encoding names and values as a form would (what
/// Play's `withQueryStringParameters` does for Otoroshi's `query`).
#[must_use]
pub fn with_query(url: &str, params: &[(String, String)]) -> String {
    if params.is_empty() {
        return url.to_owned();
    }
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let mut out = base.to_owned();
    let mut first = !base.contains('?');
    for (name, value) in params {
        out.push(if first { '?' } else { '&' });
        first = false;
        out.push_str(&percent_encode(name));
        out.push('=');
        out.push_str(&percent_encode(value));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Extism's allowed-host rule (`manifest.allowed_hosts`, matched with the `glob` crate against
/// the URL's host): `*` any run of characters, `?` one character, `[abc]`/`[a-z]`/`[!abc]` a
/// class; a pattern that is not a valid glob matches only itself. No list, or an empty one,
/// allows nothing.
#[must_use]
pub fn extism_host_allowed(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|p| glob_match(p.as_bytes(), host.as_bytes()).unwrap_or(p == host))
}

/// `Some(matched)` for a valid glob, `None` for an invalid one (an unclosed `[`).
fn glob_match(pattern: &[u8], text: &[u8]) -> Option<bool> {
    if !valid_classes(pattern) {
        return None;
    }
    // Iterative matching that backtracks to the last `*`: never recursive, O(pattern x text).
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while p < pattern.len() || t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' if t < text.len() => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' if t < text.len() => {
                    let (matched, next) = class_match(pattern, p, text[t])?;
                    if matched {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                c if c != b'?' && c != b'[' && t < text.len() && c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) if st < text.len() => {
                star = Some((sp, st + 1));
                p = sp + 1;
                t = st + 1;
            }
            _ => return Some(false),
        }
    }
    Some(true)
}

fn valid_classes(pattern: &[u8]) -> bool {
    let mut i = 0;
    while i < pattern.len() {
        if pattern[i] == b'[' {
            match class_match(pattern, i, 0) {
                Some((_, next)) => i = next,
                None => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// Matches `c` against the class starting at `pattern[start] == '['` (a `]` right after `[` or
/// `[!` is literal, `a-z` is a range); gives whether it matched and where the pattern continues,
/// or `None` for an unclosed class.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = pattern.get(i) == Some(&b'!');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &b = pattern.get(i)?;
        if b == b']' && !first {
            break;
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            matched |= (b..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= c == b;
            i += 1;
        }
    }
    Some((matched != negated, i + 1))
}

/// Otoroshi's `allowedHosts` for `proxy_http_call`: each entry is turned into a regular
/// expression as Otoroshi's `RegexPool` does (`.` is literal, `*` is any run of characters, the
/// rest is regex syntax) and must match the whole host. No entry, or `*`, allows every host.
#[derive(Debug, Clone)]
pub struct OtoroshiHosts {
    any: bool,
    patterns: Vec<(String, regex::Regex)>,
}

impl OtoroshiHosts {
    /// Compiles the entries; an entry that is not a valid pattern is an error naming it.
    pub fn new(entries: &[String]) -> Result<OtoroshiHosts, String> {
        let any = entries.is_empty() || entries.iter().any(|e| e == "*");
        let mut patterns = Vec::new();
        for entry in entries {
            let processed = entry.replace('.', "\\.").replace('*', ".*");
            let re = regex::Regex::new(&format!("^(?:{processed})$"))
                .map_err(|e| format!("allowedHosts entry {entry:?} is not a valid pattern: {e}"))?;
            patterns.push((entry.clone(), re));
        }
        Ok(OtoroshiHosts { any, patterns })
    }

    #[must_use]
    pub fn allows(&self, host: &str) -> bool {
        self.any || self.patterns.iter().any(|(_, re)| re.is_match(host))
    }
}

/// An [`HttpClient`] over the host's own blocking HTTP/1.1 client ([`crate::http_client`]):
/// `http://` only (it has no TLS), one connection per call, redirects not followed. For server
/// bindings that run plugin calls on threads of their own.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlockingHttpClient;

thread_local! {
    /// This thread runs a plugin call where it may block: off the server's event loop.
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a plugin call on a thread pool or task thread) with blocking HTTP calls allowed.
pub fn off_the_event_loop<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            MAY_BLOCK.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(MAY_BLOCK.with(|b| b.replace(true)));
    f()
}

/// The client of plugin calls ([`BlockingHttpClient`]) that refuses to block: a call made where
/// the server runs the plugin on its event loop (MatchRoute and Router, which decide the route
/// before anything can wait; an NGINX job on its worker's timer) fails at once instead, so no
/// Extism call blocks an event loop. The steps the chain can wait for run off the event loop
/// ([`off_the_event_loop`]) and call out.
pub struct OffLoopHttpClient;

impl HttpClient for OffLoopHttpClient {
    fn send(&self, request: &OutgoingRequest) -> Result<IncomingResponse, HttpError> {
        if !MAY_BLOCK.with(std::cell::Cell::get) {
            return Err(HttpError::Unsupported(format!(
                "{}: this plugin call runs on the server's event loop (MatchRoute, Router, an NGINX job), \
                 where an HTTP call would block every request; the call is refused",
                request.url
            )));
        }
        BlockingHttpClient.send(request)
    }
}

impl HttpClient for BlockingHttpClient {
    fn send(&self, request: &OutgoingRequest) -> Result<IncomingResponse, HttpError> {
        let url = Url::parse(&request.url)?;
        if url.scheme != "http" {
            return Err(HttpError::Unsupported(format!(
                "{}: only http:// URLs can be called (this host's HTTP client has no TLS)",
                request.url
            )));
        }
        let upstream = if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let mut headers = vec![
            (b":method".to_vec(), request.method.to_ascii_uppercase().into_bytes()),
            (b":path".to_vec(), url.path_and_query.clone().into_bytes()),
            (b":authority".to_vec(), url.authority.clone().into_bytes()),
        ];
        headers.extend(request.headers.iter().map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes())));
        let answer = crate::http_client::call(&HttpCallRequest {
            upstream,
            headers,
            body: request.body.clone().unwrap_or_default(),
            trailers: Vec::new(),
            timeout: Some(request.timeout),
            max_response_size: request.max_response_size,
        });
        if let Some((code, message)) = answer.failure {
            return Err(match code {
                crate::http_client::FAILURE_TIMEOUT => HttpError::Timeout,
                crate::http_client::FAILURE_TOO_LARGE => HttpError::TooLarge(request.max_response_size),
                crate::http_client::FAILURE_CONNECT => HttpError::Connect(message),
                _ => HttpError::Protocol(message),
            });
        }
        let mut status = 0;
        let mut headers = Vec::new();
        for (k, v) in answer.headers {
            if k == b":status" {
                status = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            } else if !k.starts_with(b":") {
                headers.push((String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()));
            }
        }
        Ok(IncomingResponse { status, headers, body: answer.body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_calls_refuse_to_block_unless_off_the_event_loop() {
        // A port nothing listens on: off the event loop the call is made (and fails to connect).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let request = OutgoingRequest {
            method: "GET".into(),
            url: format!("http://127.0.0.1:{port}/x"),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(2),
            follow_redirects: false,
            max_response_size: 1024,
        };
        match OffLoopHttpClient.send(&request) {
            Err(HttpError::Unsupported(m)) => assert!(m.contains("runs on the server's event loop"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(off_the_event_loop(|| OffLoopHttpClient.send(&request)), Err(HttpError::Connect(_))));
        // The permission ends with the call.
        assert!(matches!(OffLoopHttpClient.send(&request), Err(HttpError::Unsupported(_))));
    }

    #[test]
    fn urls_are_split_into_host_port_and_path() {
        let u = Url::parse("http://User@Example.COM:8080/a/b?x=1#frag").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("http", "example.com", 8080, "/a/b?x=1")
        );
        let u = Url::parse("https://[::1]?q").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path_and_query.as_str()), ("::1", 443, "/?q"));
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("http:///x").is_err());
        assert!(Url::parse("http://x:99999/").is_err());
    }

    #[test]
    fn query_parameters_are_appended_encoded() {
        let q = vec![("a b".to_owned(), "é&".to_owned())];
        assert_eq!(with_query("http://h/p", &q), "http://h/p?a%20b=%C3%A9%26");
        assert_eq!(with_query("http://h/p?x=1#f", &q), "http://h/p?x=1&a%20b=%C3%A9%26#f");
    }

    #[test]
    fn extism_globs_match_hosts() {
        let p = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(extism_host_allowed(&p(&["*.example.com"]), "api.example.com"));
        assert!(!extism_host_allowed(&p(&["*.example.com"]), "example.com"));
        assert!(extism_host_allowed(&p(&["api-?.x"]), "api-1.x"));
        assert!(extism_host_allowed(&p(&["[ab]pi.x"]), "bpi.x"));
        assert!(!extism_host_allowed(&p(&["[!ab]pi.x"]), "bpi.x"));
        assert!(extism_host_allowed(&p(&["*"]), "anything"));
        assert!(!extism_host_allowed(&[], "anything"));
        // An invalid glob matches only itself.
        assert!(extism_host_allowed(&p(&["[oops"]), "[oops"));
        assert!(!extism_host_allowed(&p(&["[oops"]), "o"));
    }

    #[test]
    fn otoroshi_host_patterns_are_wildcards_over_regexes() {
        let h = |s: &[&str]| OtoroshiHosts::new(&s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        assert!(h(&[]).allows("any.host"));
        assert!(h(&["*"]).allows("any.host"));
        let list = h(&["*.example.com", "api-[0-9]+.internal"]);
        assert!(list.allows("a.example.com"));
        assert!(!list.allows("example.com.evil"));
        assert!(!list.allows("aexample.com"));
        assert!(list.allows("api-12.internal"));
        assert!(!list.allows("api-x.internal"));
        assert!(OtoroshiHosts::new(&["(".to_owned()]).is_err());
    }
}
