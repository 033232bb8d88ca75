//! Runs plugins from a YAML config through the host core with recorded HTTP
//! transactions, printing what the client sent, what the origin received,
//! and what the client got back. No server needed.
//!
//! Usage: demo <plugins.yaml> <transactions.txt>

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::{LogLevel, MapType, Status, StreamType};
use proxy_wasm_host::host::{HttpCallRequest, HttpStream, LocalResponse, PluginRef, ServerHost};
use proxy_wasm_host::loader::{self, PluginVms};
use proxy_wasm_host::vm::Verdict;

struct DemoServer;

impl ServerHost for DemoServer {
    fn log(&self, plugin: &PluginRef, level: LogLevel, message: &str) {
        println!("    [plugin {} {}] {}", plugin.name, level.name(), message);
    }
    fn log_level(&self) -> LogLevel {
        LogLevel::Info
    }
    fn dispatch_http_call(&self, _root: u32, _token: u32, _request: HttpCallRequest) -> Result<(), Status> {
        Err(Status::InternalFailure) // the demo has no network
    }
    fn set_tick_period(&self, _root: u32, _period: Option<Duration>) {}
    fn notify_queue_ready(&self, _root: u32, _queue: u32) {}
}

#[derive(Default)]
struct Transaction {
    request: Vec<Pair>,
    response: Vec<Pair>,
    local: Option<LocalResponse>,
}

#[derive(Clone, Default)]
struct DemoStream(Arc<Mutex<Transaction>>);

impl DemoStream {
    fn with<R>(&self, map: MapType, f: impl FnOnce(&mut Vec<Pair>) -> R) -> Result<R, Status> {
        let mut t = self.0.lock().unwrap();
        match map {
            MapType::HttpRequestHeaders => Ok(f(&mut t.request)),
            MapType::HttpResponseHeaders => Ok(f(&mut t.response)),
            MapType::HttpRequestTrailers | MapType::HttpResponseTrailers => Ok(f(&mut Vec::new())),
            _ => Err(Status::BadArgument),
        }
    }
}

impl HttpStream for DemoStream {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        self.with(map, |m| m.clone())
    }
    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status> {
        self.with(map, |m| *m = pairs)
    }
    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.with(map, |m| m.push((key.to_vec(), value.to_vec())))
    }
    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.with(map, |m| {
            m.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
            m.push((key.to_vec(), value.to_vec()));
        })
    }
    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        self.with(map, |m| m.retain(|(k, _)| !k.eq_ignore_ascii_case(key)))
    }
    fn send_local_response(&mut self, response: LocalResponse) -> Result<(), Status> {
        self.0.lock().unwrap().local = Some(response);
        Ok(())
    }
    fn resume(&mut self, _stream: StreamType) -> Result<(), Status> {
        Ok(())
    }
    fn close(&mut self, _stream: StreamType) -> Result<(), Status> {
        Ok(())
    }
    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        let t = self.0.lock().unwrap();
        let header = |name: &[u8]| t.request.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Ok(match path {
            [b"request", b"path"] => header(b":path"),
            [b"request", b"method"] => header(b":method"),
            [b"source", b"address"] => Some(b"127.0.0.1:40000".to_vec()),
            [b"source", b"port"] => Some(40000u64.to_le_bytes().to_vec()),
            [b"request", b"headers", name] => header(name),
            _ => None,
        })
    }
}

struct Recorded {
    request: Vec<Pair>,
    request_body: Vec<u8>,
    response: Vec<Pair>,
    response_body: Vec<u8>,
}

fn parse(text: &str) -> Vec<Recorded> {
    text.split("\n###")
        .filter_map(|block| {
            let lines: Vec<&str> = block.lines().filter(|l| !l.starts_with('#')).collect();
            let (req, resp): (Vec<&str>, Vec<&str>) = lines.iter().partition(|l| !l.starts_with('<'));
            let mut req = req.into_iter().skip_while(|l| l.trim().is_empty());
            let mut first = req.next()?.split_whitespace();
            let (method, path) = (first.next()?, first.next()?);
            let mut request = vec![
                (b":method".to_vec(), method.as_bytes().to_vec()),
                (b":path".to_vec(), path.as_bytes().to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
            ];
            let mut body = Vec::new();
            let mut in_body = false;
            for l in req {
                if in_body {
                    body.extend_from_slice(l.as_bytes());
                } else if l.trim().is_empty() {
                    in_body = true;
                } else if let Some((k, v)) = l.split_once(':') {
                    let k = k.trim().to_ascii_lowercase();
                    let k = if k == "host" { ":authority".to_string() } else { k };
                    request.push((k.into_bytes(), v.trim().as_bytes().to_vec()));
                }
            }
            let resp: Vec<&str> =
                resp.iter().map(|l| l.trim_start_matches('<').strip_prefix(' ').unwrap_or("")).collect();
            let status = resp.first().and_then(|s| s.split_whitespace().nth(1)).unwrap_or("200");
            let mut response = vec![(b":status".to_vec(), status.as_bytes().to_vec())];
            let mut response_body = Vec::new();
            let mut in_body = false;
            for l in resp.iter().skip(1) {
                if in_body {
                    response_body.extend_from_slice(l.as_bytes());
                } else if l.is_empty() {
                    in_body = true;
                } else if let Some((k, v)) = l.split_once(':') {
                    response.push((k.trim().to_ascii_lowercase().into_bytes(), v.trim().as_bytes().to_vec()));
                }
            }
            Some(Recorded { request, request_body: body, response, response_body })
        })
        .collect()
}

fn show(prefix: &str, pairs: &[Pair]) {
    for (k, v) in pairs {
        println!("{prefix}{}: {}", String::from_utf8_lossy(k), String::from_utf8_lossy(v));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: {} <plugins.yaml> <transactions.txt>", args[0]);
        std::process::exit(2);
    }
    let configs = match proxy_wasm_host::files::load_file(&PathBuf::from(&args[1])) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let plugins = loader::load(&configs).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    for p in &plugins {
        println!("loaded plugin {:?} (ABI {}, {}) from {}", p.info.name, p.code.abi, p.code.engine, p.code.origin);
    }
    let mut vms = PluginVms::start(&plugins, |_| Arc::new(DemoServer)).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let text = std::fs::read_to_string(&args[2]).expect("read transactions");
    for (n, rec) in parse(&text).into_iter().enumerate() {
        println!("\n=== transaction {} ===", n + 1);
        println!("  client sends:");
        show("    ", &rec.request);
        let stream = DemoStream::default();
        stream.0.lock().unwrap().request = rec.request.clone();
        let mut stopped = false;
        let mut contexts = Vec::new();
        for root in vms.roots.clone() {
            let vm = &mut vms.vms[root.vm];
            let ctx = vm.create_stream(root.root_context_id, Box::new(stream.clone())).expect("stream");
            contexts.push((root.vm, ctx));
            let eos = rec.request_body.is_empty();
            let mut verdict = vm.on_request_headers(ctx, rec.request.len(), eos).expect("on_request_headers");
            if verdict != Verdict::Stop && !eos {
                verdict = vm.on_request_body(ctx, &rec.request_body, true).expect("on_request_body");
                let body = vm.take_body(ctx, StreamType::HttpRequest).unwrap();
                println!("  origin receives body: {:?}", String::from_utf8_lossy(&body));
            }
            stopped |= verdict == Verdict::Stop;
        }
        if !stopped {
            println!("  origin receives:");
            show("    ", &stream.0.lock().unwrap().request);
            stream.0.lock().unwrap().response = rec.response.clone();
            for &(vm, ctx) in &contexts {
                let eos = rec.response_body.is_empty();
                vms.vms[vm].on_response_headers(ctx, rec.response.len(), eos).expect("on_response_headers");
                let mut body = rec.response_body.clone();
                if !eos {
                    vms.vms[vm].on_response_body(ctx, &body, true).expect("on_response_body");
                    body = vms.vms[vm].take_body(ctx, StreamType::HttpResponse).unwrap();
                }
                println!("  client receives:");
                show("    ", &stream.0.lock().unwrap().response);
                println!("    body: {:?}", String::from_utf8_lossy(&body));
            }
        } else if let Some(local) = stream.0.lock().unwrap().local.clone() {
            println!("  the plugin answered locally: {} {:?}", local.status, String::from_utf8_lossy(&local.body));
            show("    ", &local.headers);
        }
        for (vm, ctx) in contexts {
            vms.vms[vm].finish_stream(ctx).expect("finish");
        }
    }
}
