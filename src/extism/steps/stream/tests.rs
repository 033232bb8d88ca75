use super::*;
use crate::abi::StreamType;
use crate::extism::steps::output::{self, Attrs};

/// A transaction held in memory: two header maps and a few properties.
#[derive(Default)]
struct Memory {
    request: Vec<Pair>,
    response: Vec<Pair>,
    properties: Vec<(String, Vec<u8>)>,
    response_sent: bool,
}

fn pairs(list: &[(&str, &str)]) -> Vec<Pair> {
    list.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

impl Memory {
    fn map(&mut self, map: MapType) -> Result<&mut Vec<Pair>, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request),
            MapType::HttpResponseHeaders if !self.response_sent => Ok(&mut self.response),
            _ => Err(Status::BadArgument),
        }
    }
}

impl HttpStream for Memory {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(self.request.clone()),
            MapType::HttpResponseHeaders => Ok(self.response.clone()),
            _ => Ok(Vec::new()),
        }
    }
    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status> {
        *self.map(map)? = pairs;
        Ok(())
    }
    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.map(map)?.push((key.to_vec(), value.to_vec()));
        Ok(())
    }
    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.remove_header(map, key)?;
        self.add_header(map, key, value)
    }
    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        self.map(map)?.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        Ok(())
    }
    fn send_local_response(&mut self, _response: host::LocalResponse) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    fn resume(&mut self, _stream: StreamType) -> Result<(), Status> {
        Ok(())
    }
    fn close(&mut self, _stream: StreamType) -> Result<(), Status> {
        Ok(())
    }
    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        let name = path.iter().map(|p| text(p)).collect::<Vec<_>>().join(".");
        Ok(self.properties.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
    }
}

fn nginx_like() -> Memory {
    Memory {
        request: pairs(&[
            (":method", "POST"),
            (":path", "/api/x?a=1"),
            (":authority", "example.test"),
            (":scheme", "https"),
            ("Host", "example.test"),
            ("Cookie", "s=1"),
            ("X-A", "1"),
        ]),
        response: pairs(&[(":status", "201"), ("Content-Type", "text/plain"), ("Set-Cookie", "old=1")]),
        properties: vec![
            ("request.protocol".into(), b"HTTP/1.1".to_vec()),
            ("source.address".into(), b"127.0.0.1:40000".to_vec()),
        ],
        response_sent: false,
    }
}

#[test]
fn request_parts_come_from_pseudo_headers_and_properties() {
    let parts = request_parts(&nginx_like(), 7).unwrap();
    assert_eq!(parts.id, 7);
    assert_eq!(parts.method, "POST");
    assert_eq!(parts.uri, "/api/x?a=1");
    assert_eq!(parts.version, "HTTP/1.1");
    assert_eq!(parts.remote, "127.0.0.1");
    assert!(parts.secure);
    assert_eq!(
        parts.headers,
        [("Host".into(), "example.test".into()), ("Cookie".into(), "s=1".into()), ("X-A".into(), "1".into())]
    );
}

#[test]
fn authority_stands_for_a_missing_host_and_ipv6_ports_are_cut() {
    let mut m = nginx_like();
    m.request.retain(|(k, _)| k.as_slice() != b"Host");
    m.properties =
        vec![("request.protocol".into(), b"HTTP/2".to_vec()), ("source.address".into(), b"[::1]:5000".to_vec())];
    let parts = request_parts(&m, 1).unwrap();
    assert_eq!(parts.headers[0], ("Host".to_owned(), "example.test".to_owned()));
    assert_eq!(parts.version, "HTTP/2.0");
    assert_eq!(parts.remote, "::1");
}

#[test]
fn response_parts_read_the_status() {
    let parts = response_parts(&nginx_like()).unwrap();
    assert_eq!(parts.status, 201);
    assert_eq!(parts.headers, [("Content-Type".into(), "text/plain".into()), ("Set-Cookie".into(), "old=1".into())]);
}

#[test]
fn request_transformer_output_is_applied() {
    let mut m = nginx_like();
    let out = br#"{"method":"PUT","url":"http://backend:8080/v2/x?b=2","headers":{"Host":"example.test","X-B":"2"},"cookies":[{"name":"t","value":"9"}],"body_str":"new"}"#;
    let output::RequestVerdict::Continue(changes) = output::transform_request(Ok(out), &mut Attrs::default()) else {
        panic!("not a continue")
    };
    let body = apply_request(&mut m, changes).unwrap();
    assert_eq!(body.as_deref(), Some(&b"new"[..]));
    let parts = request_parts(&m, 1).unwrap();
    assert_eq!(parts.method, "PUT");
    assert_eq!(parts.uri, "/v2/x?b=2");
    assert_eq!(
        parts.headers,
        [("Host".into(), "example.test".into()), ("X-B".into(), "2".into()), ("Cookie".into(), "t=9".into())]
    );
    assert!(m.request.iter().any(|(k, v)| k == b":authority" && v == b"example.test"));
}

#[test]
fn response_transformer_output_is_applied_with_otoroshi_defaults() {
    let mut m = nginx_like();
    // No status: Otoroshi's default is 200, not the origin's status.
    let out = br#"{"headers":{"Content-Type":"application/json"},"cookies":[{"name":"n","value":"v","path":"/"}],"body_json":{"ok":true}}"#;
    let output::ResponseVerdict::Continue(changes) = output::transform_response(Ok(out), &mut Attrs::default()) else {
        panic!("not a continue")
    };
    let body = apply_response(&mut m, changes).unwrap();
    assert_eq!(body.as_deref(), Some(&br#"{"ok":true}"#[..]));
    let parts = response_parts(&m).unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(
        parts.headers,
        [("Content-Type".into(), "application/json".into()), ("Set-Cookie".into(), "n=v; Path=/".into())]
    );
}

#[test]
fn changes_after_the_response_left_are_refused_by_the_stream() {
    let mut m = nginx_like();
    m.response_sent = true;
    let output::ResponseVerdict::Continue(changes) =
        output::transform_response(Ok(br#"{"status":204}"#), &mut Attrs::default())
    else {
        panic!()
    };
    assert_eq!(apply_response(&mut m, changes), Err(Status::BadArgument));
}

#[test]
fn an_access_denial_becomes_the_chains_local_response() {
    let denied = br#"{"result":false,"error":{"message":"nope","status":401}}"#;
    let output::Gate::Respond(response) =
        output::access(Ok(denied), &mut Attrs::default(), &[("Accept".into(), "application/json".into())])
    else {
        panic!("let in")
    };
    let local = local_response(response, "wasm-plugin_dev_access");
    assert_eq!(local.status, 401);
    assert_eq!(local.details, "otoroshi_wasm:wasm-plugin_dev_access");
    assert_eq!(local.grpc_status, -1);
    assert!(String::from_utf8_lossy(&local.body).contains("nope"), "{:?}", String::from_utf8_lossy(&local.body));
}
