//! What a server shows of a request and a response, and the JSON Otoroshi builds from them
//! (`JsonHelpers.requestToJson`, `NgPluginHttpRequest.json`, `NgPluginHttpResponse.json`).

use serde_json::{json, Map, Value};

use super::json_text as text;

/// A client certificate as Otoroshi describes it (`clientCertChainToJson`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject_dn: String,
    pub issuer_dn: String,
    /// Milliseconds since the epoch.
    pub not_after: i64,
    pub not_before: i64,
    /// Hexadecimal.
    pub serial_number: String,
}

/// The incoming request, as a server binding shows it.
pub trait RequestView {
    /// A number unique in the process (Otoroshi's Play request id, a sequence number).
    fn id(&self) -> u64;
    fn method(&self) -> &str;
    /// Path and query as the client sent them.
    fn uri(&self) -> &str;
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2.0`.
    fn version(&self) -> &str;
    /// Every header as received, in order (repeated names repeated).
    fn headers(&self) -> &[(String, String)];
    /// The client's address (IP only).
    fn remote(&self) -> &str;
    /// Whether the client connection is TLS.
    fn secure(&self) -> bool;
    fn client_cert_chain(&self) -> Option<Vec<CertInfo>> {
        None
    }
    /// Parameters the route matched in the path (Otoroshi's `path_params`).
    fn path_params(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A [`RequestView`] as plain data, for servers that prefer filling a struct (and for tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParts {
    pub id: u64,
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub remote: String,
    pub secure: bool,
    pub client_cert_chain: Option<Vec<CertInfo>>,
    pub path_params: Vec<(String, String)>,
}

impl RequestView for RequestParts {
    fn id(&self) -> u64 {
        self.id
    }
    fn method(&self) -> &str {
        &self.method
    }
    fn uri(&self) -> &str {
        &self.uri
    }
    fn version(&self) -> &str {
        &self.version
    }
    fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
    fn remote(&self) -> &str {
        &self.remote
    }
    fn secure(&self) -> bool {
        self.secure
    }
    fn client_cert_chain(&self) -> Option<Vec<CertInfo>> {
        self.client_cert_chain.clone()
    }
    fn path_params(&self) -> Vec<(String, String)> {
        self.path_params.clone()
    }
}

/// A response (the origin's, or one being sent), as a server shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseParts {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// The first value of a header, by name in any case.
#[must_use]
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Play's `headers.toSimpleMap`: each name once (as first written), with its first value.
#[must_use]
pub fn simple_map(headers: &[(String, String)]) -> Map<String, Value> {
    let mut out = Map::new();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if !seen.contains(&lower) {
            seen.push(lower);
            out.insert(k.clone(), Value::from(v.clone()));
        }
    }
    out
}

/// The path of a URI (what comes before `?`), as sent.
#[must_use]
pub fn path_of(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or_default()
}

/// Percent-decoding of a query component, `+` as a space (form encoding); invalid escapes are
/// kept as written.
#[must_use]
pub fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query of a URI as Otoroshi gives it: `{name: [values...]}`, decoded, in order of first
/// appearance; a parameter without `=` has the value `""`.
#[must_use]
pub fn query_map(uri: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(query) = uri.split('#').next().and_then(|u| u.split_once('?')).map(|(_, q)| q) else { return out };
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let entry = out.entry(decode_component(k)).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = entry {
            values.push(Value::from(decode_component(v)));
        }
    }
    out
}

/// Request cookies from the `Cookie` headers, as Play decodes them (a cookie per name, the first
/// one; surrounding double quotes removed).
#[must_use]
pub fn request_cookies(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (_, value) in headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("cookie")) {
        for part in value.split(';') {
            let Some((name, v)) = part.trim().split_once('=') else { continue };
            let name = name.trim();
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            if !name.is_empty() && !out.iter().any(|(n, _)| n == name) {
                out.push((name.to_owned(), v.to_owned()));
            }
        }
    }
    out
}

/// Otoroshi's `BodyUtils.hasBody`: from the method and the body headers.
#[must_use]
pub fn has_body(method: &str, headers: &[(String, String)]) -> bool {
    let length = header(headers, "Content-Length").is_some();
    let typed = header(headers, "Content-Type").is_some();
    let chunked = header(headers, "Transfer-Encoding") == Some("chunked");
    match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" | "DELETE" => length || typed || chunked,
        _ => true,
    }
}

/// `theSecuredTrusted`: `X-Forwarded-Proto` (or `X-Forwarded-Protocol`) says https, else the
/// connection is TLS.
#[must_use]
pub fn tls(view: &dyn RequestView) -> bool {
    match header(view.headers(), "X-Forwarded-Proto").or_else(|| header(view.headers(), "X-Forwarded-Protocol")) {
        Some(proto) => proto == "https",
        None => view.secure(),
    }
}

/// `clientCertChainToJson`: `null`, or the certificates with their names.
#[must_use]
pub fn cert_chain_json(chain: Option<Vec<CertInfo>>) -> Value {
    let Some(chain) = chain else { return Value::Null };
    let cn = |dn: &str| {
        dn.split(',')
            .map(str::trim)
            .find(|p| p.to_ascii_lowercase().starts_with("cn="))
            .map_or_else(|| dn.to_owned(), |p| p[3..].to_owned())
    };
    Value::Array(
        chain
            .iter()
            .map(|c| {
                json!({
                    "subjectDN": c.subject_dn, "issuerDN": c.issuer_dn, "notAfter": c.not_after, "notBefore": c.not_before,
                    "serialNumber": c.serial_number, "subjectCN": cn(&c.subject_dn), "issuerCN": cn(&c.issuer_dn),
                })
            })
            .collect(),
    )
}

/// `JsonHelpers.requestToJson`: the `request` of every context.
#[must_use]
pub fn request_json(view: &dyn RequestView) -> Value {
    let cookies: Vec<Value> = request_cookies(view.headers())
        .into_iter()
        // Play's defaults for a request cookie: path "/", HttpOnly.
        .map(|(name, value)| json!({"name": name, "value": value, "path": "/", "domain": null, "http_only": true, "max_age": null, "secure": false, "same_site": null}))
        .collect();
    json!({
        "id": view.id(),
        "method": view.method(),
        "headers": simple_map(view.headers()),
        "cookies": cookies,
        "tls": tls(view),
        "uri": view.uri(),
        "query": query_map(view.uri()),
        "path": path_of(view.uri()),
        "version": view.version(),
        "has_body": has_body(view.method(), view.headers()),
        "remote": view.remote(),
        "client_cert_chain": cert_chain_json(view.client_cert_chain()),
        "path_params": view.path_params().into_iter().map(|(k, v)| (k, Value::from(v))).collect::<Map<_, _>>(),
    })
}

/// Play's `headers.toSimpleMap` (as [`simple_map`]) written as JSON text: the names kept, then
/// sorted as the map writes them.
pub fn write_simple_map(out: &mut Vec<u8>, headers: &[(String, String)]) {
    let mut kept: Vec<&(String, String)> = Vec::with_capacity(headers.len());
    for h in headers {
        if !kept.iter().any(|k| k.0.eq_ignore_ascii_case(&h.0)) {
            kept.push(h);
        }
    }
    kept.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut o = text::Object::new(out);
    for (k, v) in kept {
        o.str(k, v);
    }
    o.end();
}

/// [`request_json`] written as JSON text; with `body`, the request also carries
/// `request_body_bytes` (HandlesRequest's input).
pub fn write_request(out: &mut Vec<u8>, view: &dyn RequestView, body: Option<&[u8]>) {
    let headers = view.headers();
    let uri = view.uri();
    let mut o = text::Object::new(out);
    text::value(o.key("client_cert_chain"), &cert_chain_json(view.client_cert_chain()));
    let cookies = o.key("cookies");
    cookies.push(b'[');
    for (i, (name, value)) in request_cookies(headers).iter().enumerate() {
        if i > 0 {
            cookies.push(b',');
        }
        // Play's defaults for a request cookie: path "/", HttpOnly.
        cookies.extend_from_slice(br#"{"domain":null,"http_only":true,"max_age":null,"name":"#);
        text::string(cookies, name);
        cookies.extend_from_slice(br#","path":"/","same_site":null,"secure":false,"value":"#);
        text::string(cookies, value);
        cookies.push(b'}');
    }
    cookies.push(b']');
    text::bool(o.key("has_body"), has_body(view.method(), headers));
    write_simple_map(o.key("headers"), headers);
    text::u64(o.key("id"), view.id());
    o.str("method", view.method());
    o.str("path", path_of(uri));
    let params = view.path_params();
    if params.is_empty() {
        o.raw("path_params", "{}");
    } else {
        let m: Map<String, Value> = params.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
        text::map(o.key("path_params"), &m);
    }
    text::map(o.key("query"), &query_map(uri));
    o.str("remote", view.remote());
    if let Some(body) = body {
        text::signed_bytes(o.key("request_body_bytes"), body);
    }
    text::bool(o.key("tls"), tls(view));
    o.str("uri", uri);
    o.str("version", view.version());
    o.end();
}

/// The absolute URL the client asked for (`theUrl`).
#[must_use]
pub fn request_url(view: &dyn RequestView) -> String {
    let host = header(view.headers(), "Host").unwrap_or("localhost");
    format!("{}://{host}{}", if tls(view) { "https" } else { "http" }, view.uri())
}

/// A cookie of a request or response as Otoroshi's `NgPluginHttpRequest/Response.json` write
/// them (camelCase keys).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub domain: Option<String>,
    pub path: Option<String>,
    pub max_age: Option<i64>,
    pub secure: bool,
    pub http_only: bool,
}

impl Cookie {
    #[must_use]
    pub fn json(&self) -> Value {
        json!({"name": self.name, "value": self.value, "domain": self.domain, "path": self.path, "maxAge": self.max_age, "secure": self.secure, "httpOnly": self.http_only})
    }

    /// [`Cookie::json`] written as JSON text.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let opt = |out: &mut Vec<u8>, v: Option<&str>| match v {
            Some(v) => text::string(out, v),
            None => out.extend_from_slice(b"null"),
        };
        let mut o = text::Object::new(out);
        opt(o.key("domain"), self.domain.as_deref());
        text::bool(o.key("httpOnly"), self.http_only);
        match self.max_age {
            Some(age) => {
                let out = o.key("maxAge");
                if age < 0 {
                    out.push(b'-');
                }
                text::u64(out, age.unsigned_abs());
            }
            None => o.raw("maxAge", "null"),
        }
        o.str("name", &self.name);
        opt(o.key("path"), self.path.as_deref());
        text::bool(o.key("secure"), self.secure);
        o.str("value", &self.value);
        o.end();
    }

    /// The `Set-Cookie` value.
    #[must_use]
    pub fn set_cookie(&self) -> String {
        let mut out = format!("{}={}", self.name, self.value);
        if let Some(age) = self.max_age {
            out.push_str(&format!("; Max-Age={age}"));
        }
        if let Some(path) = &self.path {
            out.push_str(&format!("; Path={path}"));
        }
        if let Some(domain) = &self.domain {
            out.push_str(&format!("; Domain={domain}"));
        }
        if self.secure {
            out.push_str("; Secure");
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        out
    }

    /// Parses a `Set-Cookie` value (attributes Otoroshi keeps; others ignored).
    #[must_use]
    pub fn parse_set_cookie(text: &str) -> Option<Cookie> {
        let mut parts = text.split(';');
        let (name, value) = parts.next()?.trim().split_once('=')?;
        let mut c = Cookie { name: name.trim().to_owned(), value: value.trim().to_owned(), ..Default::default() };
        for attr in parts {
            let (k, v) = attr.trim().split_once('=').unwrap_or((attr.trim(), ""));
            match k.to_ascii_lowercase().as_str() {
                "max-age" => c.max_age = v.trim().parse().ok(),
                "path" => c.path = Some(v.trim().to_owned()),
                "domain" => c.domain = Some(v.trim().to_owned()),
                "secure" => c.secure = true,
                "httponly" => c.http_only = true,
                _ => {}
            }
        }
        (!c.name.is_empty()).then_some(c)
    }
}

/// A request as Otoroshi's plugins see one about to be sent (`NgPluginHttpRequest.json`): the
/// `raw_request` and `otoroshi_request` of a request transformer, the `request` of a backend call.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRequest {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub version: String,
    pub cookies: Vec<Cookie>,
    pub client_cert_chain: Option<Vec<CertInfo>>,
    /// `NgTarget.json` of the backend, when known.
    pub backend: Option<Value>,
}

impl PluginRequest {
    /// The request as received (the `raw_request` of a request transformer): its cookies are
    /// Play's request cookies (path `/`, HttpOnly).
    #[must_use]
    pub fn from_view(view: &dyn RequestView, backend: Option<Value>) -> PluginRequest {
        PluginRequest {
            url: request_url(view),
            method: view.method().to_owned(),
            headers: view.headers().to_vec(),
            version: view.version().to_owned(),
            cookies: request_cookies(view.headers())
                .into_iter()
                .map(|(name, value)| Cookie {
                    name,
                    value,
                    path: Some("/".into()),
                    http_only: true,
                    ..Default::default()
                })
                .collect(),
            client_cert_chain: view.client_cert_chain(),
            backend,
        }
    }

    #[must_use]
    pub fn json(&self) -> Value {
        json!({
            "url": self.url,
            "method": self.method,
            "headers": simple_map(&self.headers),
            "query": query_map(&self.url),
            "version": self.version,
            "client_cert_chain": cert_chain_json(self.client_cert_chain.clone()),
            "backend": self.backend.clone().unwrap_or(Value::Null),
            "cookies": self.cookies.iter().map(Cookie::json).collect::<Vec<_>>(),
        })
    }

    /// [`PluginRequest::json`] written as JSON text.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = text::Object::new(out);
        match &self.backend {
            Some(b) => text::value(o.key("backend"), b),
            None => o.raw("backend", "null"),
        }
        text::value(o.key("client_cert_chain"), &cert_chain_json(self.client_cert_chain.clone()));
        write_cookies(o.key("cookies"), &self.cookies);
        write_simple_map(o.key("headers"), &self.headers);
        o.str("method", &self.method);
        text::map(o.key("query"), &query_map(&self.url));
        o.str("url", &self.url);
        o.str("version", &self.version);
        o.end();
    }

    /// Otoroshi's `NgPluginHttpRequest.hasBody`.
    #[must_use]
    pub fn has_body(&self) -> bool {
        has_body(&self.method, &self.headers)
    }
}

/// `NgPluginHttpResponse.json`: status, headers, cookies (from `Set-Cookie`).
#[must_use]
pub fn response_json(response: &ResponseParts) -> Value {
    let cookies: Vec<Value> = response
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| Cookie::parse_set_cookie(v))
        .map(|c| c.json())
        .collect();
    json!({"status": response.status, "headers": simple_map(&response.headers), "cookies": cookies})
}

fn write_cookies(out: &mut Vec<u8>, cookies: &[Cookie]) {
    out.push(b'[');
    for (i, c) in cookies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        c.write_json(out);
    }
    out.push(b']');
}

/// [`response_json`] written as JSON text.
pub fn write_response(out: &mut Vec<u8>, response: &ResponseParts) {
    let cookies: Vec<Cookie> = response
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| Cookie::parse_set_cookie(v))
        .collect();
    let mut o = text::Object::new(out);
    write_cookies(o.key("cookies"), &cookies);
    write_simple_map(o.key("headers"), &response.headers);
    text::u64(o.key("status"), u64::from(response.status));
    o.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn request() -> RequestParts {
        RequestParts {
            id: 7,
            method: "POST".into(),
            uri: "/api/items?x=1&x=2&q=a+b%21&flag".into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), "api.test".into()),
                ("Content-Type".into(), "application/json".into()),
                ("Cookie".into(), "session=abc; theme=\"dark\"".into()),
                ("X-Multi".into(), "one".into()),
                ("x-multi".into(), "two".into()),
            ],
            remote: "10.0.0.1".into(),
            secure: false,
            client_cert_chain: None,
            path_params: vec![],
        }
    }

    #[test]
    fn the_request_json_has_every_field_otoroshi_writes() {
        let v = request_json(&request());
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "id",
            "method",
            "headers",
            "cookies",
            "tls",
            "uri",
            "query",
            "path",
            "version",
            "has_body",
            "remote",
            "client_cert_chain",
            "path_params",
        ] {
            assert!(keys.contains(&k), "{k}");
        }
        assert_eq!(v["path"], "/api/items");
        assert_eq!(v["query"], json!({"x": ["1", "2"], "q": ["a b!"], "flag": [""]}));
        assert_eq!(v["headers"]["X-Multi"], "one");
        assert!(v["headers"].get("x-multi").is_none());
        assert_eq!(
            v["cookies"][1],
            json!({"name": "theme", "value": "dark", "path": "/", "domain": null, "http_only": true, "max_age": null, "secure": false, "same_site": null})
        );
        assert_eq!((v["tls"].as_bool(), v["has_body"].as_bool()), (Some(false), Some(true)));
        assert_eq!(v["client_cert_chain"], Value::Null);
    }

    #[test]
    fn a_forwarded_proto_decides_tls() {
        let mut r = request();
        r.headers.push(("X-Forwarded-Proto".into(), "https".into()));
        assert!(tls(&r));
    }

    #[test]
    fn has_body_follows_otoroshi() {
        assert!(!has_body("GET", &[]));
        assert!(has_body("GET", &[("content-length".into(), "0".into())]));
        assert!(has_body("POST", &[]));
        assert!(has_body("DELETE", &[("Transfer-Encoding".into(), "chunked".into())]));
        assert!(has_body("OPTIONS", &[]));
    }

    #[test]
    fn certificates_get_their_common_names() {
        let v = cert_chain_json(Some(vec![CertInfo {
            subject_dn: "CN=client, O=Acme".into(),
            issuer_dn: "O=NoCn".into(),
            not_after: 2,
            not_before: 1,
            serial_number: "ff".into(),
        }]));
        assert_eq!(v[0]["subjectCN"], "client");
        assert_eq!(v[0]["issuerCN"], "O=NoCn");
    }

    #[test]
    fn plugin_requests_and_responses_have_otoroshis_cookie_shape() {
        let r = PluginRequest::from_view(&request(), None);
        let v = r.json();
        assert_eq!(v["url"], "http://api.test/api/items?x=1&x=2&q=a+b%21&flag");
        assert_eq!(
            v["cookies"][0],
            json!({"name": "session", "value": "abc", "domain": null, "path": "/", "maxAge": null, "secure": false, "httpOnly": true})
        );
        let resp = response_json(&ResponseParts {
            status: 201,
            headers: vec![("Set-Cookie".into(), "a=1; Max-Age=60; Path=/x; HttpOnly".into())],
        });
        assert_eq!(
            resp["cookies"][0],
            json!({"name": "a", "value": "1", "domain": null, "path": "/x", "maxAge": 60, "secure": false, "httpOnly": true})
        );
    }

    /// A request with what needs escaping, repeated names in two cases, non-ASCII, cookies,
    /// a repeated and encoded query, path parameters and a certificate.
    fn awkward() -> RequestParts {
        let mut r = request();
        r.uri = "/p/\u{e9}t\u{e9}?b=2&a=1&b=%22x%22&c&%E2%9C%93=\u{2713}".into();
        r.headers.push(("X-Quote".into(), "say \"hi\"\\ \u{1}\t\u{7f}".into()));
        r.headers.push(("x-quote".into(), "second".into()));
        r.headers.push(("Zeta".into(), "\u{4e2d}\u{6587} \u{1f600}".into()));
        r.headers.push(("cookie".into(), "late=1; session=dup".into()));
        r.headers.push(("X-Forwarded-Proto".into(), "https".into()));
        r.path_params = vec![("id".into(), "7".into()), ("a\"b".into(), "\n".into()), ("id".into(), "8".into())];
        r.client_cert_chain = Some(vec![CertInfo {
            subject_dn: "CN=c\"1\", O=X".into(),
            issuer_dn: "CN=ca".into(),
            not_after: 2,
            not_before: -1,
            serial_number: "0a".into(),
        }]);
        r
    }

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_request_is_written_as_serde_json_writes_its_tree() {
        for r in [request(), awkward(), RequestParts::default()] {
            assert_eq!(written(|o| write_request(o, &r, None)), request_json(&r).to_string());
            let mut with_body = request_json(&r);
            with_body["request_body_bytes"] = crate::extism::body::signed_bytes(b"\x00\xff a");
            assert_eq!(written(|o| write_request(o, &r, Some(b"\x00\xff a"))), with_body.to_string());
        }
    }

    #[test]
    fn plugin_requests_responses_and_cookies_are_written_as_their_trees() {
        for r in [request(), awkward()] {
            let mut p = PluginRequest::from_view(&r, None);
            assert_eq!(written(|o| p.write_json(o)), p.json().to_string());
            p.backend = Some(json!({"id": "h:80", "port": 80, "tls": false}));
            p.cookies.push(Cookie {
                name: "n\"".into(),
                max_age: Some(-3),
                domain: Some("d".into()),
                ..Default::default()
            });
            p.cookies.push(Cookie { name: "m".into(), max_age: Some(i64::MIN), ..Default::default() });
            assert_eq!(written(|o| p.write_json(o)), p.json().to_string());
        }
        let resp = ResponseParts {
            status: 404,
            headers: vec![
                ("Set-Cookie".into(), "a=1; Max-Age=60; Path=/x; HttpOnly".into()),
                ("set-cookie".into(), "b=\u{e9}; Domain=d; Secure".into()),
                ("Content-Type".into(), "text/plain".into()),
            ],
        };
        assert_eq!(written(|o| write_response(o, &resp)), response_json(&resp).to_string());
        let empty = ResponseParts::default();
        assert_eq!(written(|o| write_response(o, &empty)), response_json(&empty).to_string());
    }

    #[test]
    fn set_cookie_round_trips() {
        let c = Cookie {
            name: "a".into(),
            value: "1".into(),
            max_age: Some(5),
            path: Some("/".into()),
            domain: Some("d".into()),
            secure: true,
            http_only: true,
        };
        assert_eq!(c.set_cookie(), "a=1; Max-Age=5; Path=/; Domain=d; Secure; HttpOnly");
        assert_eq!(Cookie::parse_set_cookie(&c.set_cookie()), Some(c));
    }
}
