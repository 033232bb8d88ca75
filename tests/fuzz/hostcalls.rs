//! Hostcall arguments against a real instance, on both runtimes: the module
//! `tests/wat/hostcall_fuzz.wat` imports every `proxy_*` hostcall of ABI 0.2.1
//! and calls the one a command names, with the arguments the command carries,
//! from a root context (`proxy_on_foreign_function`,
//! `proxy_on_http_call_response`) or a stream context (request and response
//! headers and bodies).
//!
//! Properties, for any pointers, lengths, enum values and ids:
//! - the host neither panics nor traps the guest (the test process survives);
//! - the status is one the Rust SDK accepts from that hostcall, or
//!   BAD_ARGUMENT / INVALID_MEMORY_ACCESS ([`allowed`]);
//! - guest memory changes only inside the out-parameters the call was given
//!   (the module compares a 16 KiB arena with a copy taken before the call).

use crate::common::{self, unique_vm_id, wat_bytes, Harness, TestServer, TestStream};
use crate::engine::{self, Case, Rng};
use proxy_wasm_host::abi::pairs;
use proxy_wasm_host::abi::Status;
use proxy_wasm_host::config::RuntimeKind;
use proxy_wasm_host::host::HttpCallResponse;
use proxy_wasm_host::http_client::FAILURE_TOO_LARGE;
use proxy_wasm_host::metrics::Metrics;
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::shared::InProcessStore;
use proxy_wasm_host::vm::{VmError, VmOptions};
use std::sync::Arc;

const ARENA: u32 = 0x1_0000;
const ARENA_LEN: u32 = 0x4000;
/// Where the module keeps its copy of the arena during the call.
const SNAPSHOT: u32 = 0x1_8000;
/// The command header: u32 hostcall number and 12 i64 arguments.
const HEADER: usize = 100;

/// What a parameter of a hostcall is, to pick values that get past the first check.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// An input pointer; its length is the next parameter.
    In,
    Len,
    /// An out-parameter of this many bytes.
    Out(u32),
    /// An enumeration with values `0..n`.
    Enum(u32),
    /// A context, queue, metric or call id.
    Id,
    /// Any u32 (a status code, a timeout, a CAS, a buffer offset).
    Int,
    I64,
}

use Role::*;

struct Hostcall {
    name: &'static str,
    params: &'static [Role],
    /// Statuses the Rust SDK (0.2.5) accepts from this call without panicking.
    sdk: &'static [u32],
}

const fn h(name: &'static str, params: &'static [Role], sdk: &'static [u32]) -> Hostcall {
    Hostcall { name, params, sdk }
}

/// In the import order of hostcall_fuzz.wat (the command's `k`).
static HOSTCALLS: &[Hostcall] = &[
    h("proxy_log", &[Enum(6), In, Len], &[0]),
    h("proxy_get_current_time_nanoseconds", &[Out(8)], &[0]),
    h("proxy_set_tick_period_milliseconds", &[Int], &[0]),
    h("proxy_get_buffer_bytes", &[Enum(9), Int, Int, Out(4), Out(4)], &[0, 1]),
    h("proxy_set_buffer_bytes", &[Enum(9), Int, Int, In, Len], &[0]),
    // Not called by the Rust SDK; the C++ SDK handles NOT_FOUND.
    h("proxy_get_buffer_status", &[Enum(9), Out(4), Out(4)], &[0, 1]),
    h("proxy_get_header_map_pairs", &[Enum(8), Out(4), Out(4)], &[0]),
    h("proxy_set_header_map_pairs", &[Enum(8), In, Len], &[0]),
    h("proxy_get_header_map_size", &[Enum(8), Out(4)], &[0]),
    h("proxy_get_header_map_value", &[Enum(8), In, Len, Out(4), Out(4)], &[0, 1]),
    h("proxy_add_header_map_value", &[Enum(8), In, Len, In, Len], &[0]),
    h("proxy_replace_header_map_value", &[Enum(8), In, Len, In, Len], &[0]),
    h("proxy_remove_header_map_value", &[Enum(8), In, Len], &[0]),
    h("proxy_send_local_response", &[Int, In, Len, In, Len, In, Len, Int], &[0]),
    h("proxy_get_status", &[Out(4), Out(4), Out(4)], &[0]),
    h("proxy_http_call", &[In, Len, In, Len, In, Len, In, Len, Int, Out(4)], &[0, 2, 10]),
    // gRPC is documented as not implemented: UNIMPLEMENTED (12) is its answer.
    h("proxy_grpc_call", &[In, Len, In, Len, In, Len, In, Len, In, Len, Int, Out(4)], &[0, 4, 10, 12]),
    h("proxy_grpc_stream", &[In, Len, In, Len, In, Len, In, Len, Out(4)], &[0, 4, 10, 12]),
    h("proxy_grpc_send", &[Id, In, Len, Int], &[0, 1, 12]),
    h("proxy_grpc_cancel", &[Id], &[0, 1, 12]),
    h("proxy_grpc_close", &[Id], &[0, 1, 12]),
    h("proxy_get_shared_data", &[In, Len, Out(4), Out(4), Out(4)], &[0, 1]),
    h("proxy_set_shared_data", &[In, Len, In, Len, Int], &[0, 8]),
    h("proxy_register_shared_queue", &[In, Len, Out(4)], &[0]),
    h("proxy_resolve_shared_queue", &[In, Len, In, Len, Out(4)], &[0, 1]),
    h("proxy_enqueue_shared_queue", &[Id, In, Len], &[0, 1]),
    h("proxy_dequeue_shared_queue", &[Id, Out(4), Out(4)], &[0, 1, 7]),
    h("proxy_define_metric", &[Enum(3), In, Len, Out(4)], &[0]),
    h("proxy_increment_metric", &[Id, I64], &[0, 1]),
    h("proxy_record_metric", &[Id, I64], &[0, 1]),
    h("proxy_get_metric", &[Id, Out(8)], &[0, 1]),
    h("proxy_get_property", &[In, Len, Out(4), Out(4)], &[0, 1, 3, 10]),
    h("proxy_set_property", &[In, Len, In, Len], &[0]),
    h("proxy_set_effective_context", &[Id], &[0]),
    h("proxy_done", &[], &[0]),
    h("proxy_call_foreign_function", &[In, Len, In, Len, Out(4), Out(4)], &[0, 1, 3, 10]),
    h("proxy_continue_stream", &[Enum(4)], &[0]),
    h("proxy_close_stream", &[Enum(4)], &[0]),
    h("proxy_get_log_level", &[Out(4)], &[0]),
];

/// What a hostcall may answer: what the SDK accepts, or the two statuses the
/// ABI gives to arguments that cannot be used, or NOT_FOUND for a call about
/// something the calling context does not have ([`absent`]).
fn allowed(cmd: &Command, status: u32, channel: Channel) -> bool {
    HOSTCALLS[cmd.k].sdk.contains(&status)
        || status == Status::BadArgument as u32
        || status == Status::InvalidMemoryAccess as u32
        || (status == Status::NotFound as u32 && absent(cmd, channel))
        || envoys_answer(cmd, status)
}

/// Calls no SDK makes in an HTTP stream, answered as Envoy (proxy-wasm-cpp-host's
/// embedder) answers them (docs/compatibility.md): this host has no TCP
/// streams, and Envoy's `continueStream` of an HTTP stream answers
/// UNIMPLEMENTED for the upstream one (`StreamType` 3).
fn envoys_answer(cmd: &Command, status: u32) -> bool {
    HOSTCALLS[cmd.k].name == "proxy_continue_stream"
        && cmd.args[0] as u32 == 3
        && status == Status::Unimplemented as u32
}

/// Calls no SDK makes in this situation, whose object does not exist here:
/// NOT_FOUND is the honest answer (proxy-wasm-cpp-host gives it to
/// `proxy_set_buffer_bytes` on a missing buffer and to `proxy_done` with
/// nothing waiting), and the SDKs only make these calls where it exists.
fn absent(cmd: &Command, channel: Channel) -> bool {
    let root = matches!(channel, Channel::ForeignFunction | Channel::HttpCallResponse);
    match HOSTCALLS[cmd.k].name {
        // Nothing waits for proxy_done here: no on_done returned false.
        "proxy_done" => true,
        // A root context has no stream to continue, close or answer.
        "proxy_continue_stream" | "proxy_close_stream" | "proxy_send_local_response" => root,
        // The buffer types that exist in each callback.
        "proxy_set_buffer_bytes" => {
            let ty = cmd.args[0] as u32;
            let here: &[u32] = match channel {
                Channel::ForeignFunction => &[8],
                Channel::HttpCallResponse => &[4],
                _ => &[0, 1],
            };
            !here.contains(&ty)
        }
        _ => false,
    }
}

/// The callback a command is delivered to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Channel {
    ForeignFunction,
    HttpCallResponse,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

const CHANNELS: [Channel; 6] = [
    Channel::ForeignFunction,
    Channel::HttpCallResponse,
    Channel::RequestHeaders,
    Channel::RequestBody,
    Channel::ResponseHeaders,
    Channel::ResponseBody,
];

/// Pieces of payload that get a call past its first checks.
fn piece(rng: &mut Rng) -> Vec<u8> {
    let header_pairs = |rng: &mut Rng| {
        let mut list = Vec::new();
        if rng.chance(3, 4) {
            list.push((b":method".to_vec(), b"GET".to_vec()));
            list.push((b":path".to_vec(), b"/fuzz".to_vec()));
            list.push((b":authority".to_vec(), b"fuzz".to_vec()));
        }
        for _ in 0..rng.len(6) {
            let (kl, vl) = (rng.len(16), rng.len(32));
            list.push((rng.bytes_from(kl, b"x-fuzzabc:"), rng.bytes(vl)));
        }
        pairs::encode(&list)
    };
    match rng.below(10) {
        0 | 1 => header_pairs(rng),
        2 => {
            let mut p = header_pairs(rng);
            rng.mutate(&mut p, 4096);
            p
        }
        3 => rng
            .pick(&[
                &b"request\0path"[..],
                b"request\0path\0",
                b"request\0headers\0x-fuzz",
                b"plugin_name",
                b"plugin_root_id",
                b"plugin_vm_id\0",
                b"source\0address",
                b"\0",
                b"\0\0request",
                b"node\0id\0\0",
            ])
            .to_vec(),
        4 => rng.pick(&[&b"x-fuzz"[..], b":path", b":status", b"X-FUZZ", b"content-length", b"k", b"q"]).to_vec(),
        5 => rng.pick(&[&b"fuzz-upstream"[..], b"127.0.0.1:1", b"[::1]:80", b"", b"\xff\xfe", b"a:b:c"]).to_vec(),
        6 => {
            let n = rng.len(64);
            rng.bytes_from(n, b"abc:-.\0")
        }
        _ => {
            let n = rng.len(2048);
            rng.bytes(n)
        }
    }
}

/// Names that calls share: header keys the streams have, shared-data keys,
/// queue names, properties, foreign functions the test server knows.
static NAMES: &[&[u8]] =
    &[b"x-fuzz", b"x-a", b":path", b":status", b"k", b"q", b"request\0path", b"plugin_name", b"echo", b"reverse", b""];

/// A command: the arena payload (with the spans of its pieces) and arguments.
struct Command {
    k: usize,
    args: [u64; 12],
    payload: Vec<u8>,
}

impl Command {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        out.extend_from_slice(&(self.k as u32).to_le_bytes());
        for a in self.args {
            out.extend_from_slice(&a.to_le_bytes());
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn describe(&self) -> String {
        let hc = &HOSTCALLS[self.k];
        let args: Vec<String> = (0..hc.params.len())
            .map(|i| match hc.params[i] {
                I64 => format!("{}", self.args[i] as i64),
                _ => format!("{:#x}", self.args[i] as u32),
            })
            .collect();
        format!("{}({}) with {} payload bytes at {ARENA:#x}", hc.name, args.join(", "), self.payload.len())
    }
}

/// Builds a command for hostcall `k` (random if `None`); `memory` is the
/// guest's memory size, `ids` the context ids worth trying.
fn command(rng: &mut Rng, k: Option<usize>, memory: u32, ids: &[u32]) -> Command {
    let k = k.unwrap_or_else(|| rng.below(HOSTCALLS.len()));
    let mut payload = Vec::new();
    let mut spans: Vec<(u32, u32)> = Vec::new();
    let target = rng.len(ARENA_LEN as usize);
    while payload.len() < target.max(1) {
        let p = piece(rng);
        if payload.len() + p.len() > ARENA_LEN as usize {
            break;
        }
        spans.push((payload.len() as u32, p.len() as u32));
        payload.extend_from_slice(&p);
        if rng.chance(1, 3) {
            payload.push(0);
        }
    }
    let edge_ptr = |rng: &mut Rng| -> u32 {
        match rng.below(6) {
            0 => 0,
            1 => memory.wrapping_sub(rng.below(9) as u32),
            2 => memory.wrapping_add(rng.below(9) as u32),
            3 => u32::MAX - rng.below(16) as u32,
            4 => ARENA + ARENA_LEN - rng.below(8) as u32,
            _ => rng.interesting_u32(),
        }
    };
    let params = HOSTCALLS[k].params;
    let mut args = [0u64; 12];
    // High bits of an i32 argument are ignored by the module; vary them anyway.
    for a in args.iter_mut() {
        *a = rng.u64();
    }
    let mut i = 0;
    while i < params.len() {
        let v: u64 = match params[i] {
            In => {
                let name = *rng.pick(NAMES);
                let (ptr, len) = if rng.chance(1, 3) && payload.len() + name.len() <= ARENA_LEN as usize {
                    // A name from a small set, so that calls meet: a key set
                    // then read, a queue registered then resolved.
                    let off = payload.len() as u32;
                    payload.extend_from_slice(name);
                    (ARENA + off, name.len() as u32)
                } else if !spans.is_empty() && rng.chance(4, 5) {
                    let (off, len) = *rng.pick(&spans);
                    let len = match rng.below(8) {
                        0 => len.saturating_sub(1),
                        1 => len + 1,
                        _ => len,
                    };
                    (ARENA + off, len)
                } else if rng.bool() {
                    (edge_ptr(rng), rng.interesting_u32())
                } else {
                    let off = rng.below(ARENA_LEN as usize + 16) as u32;
                    (ARENA + off, rng.len(ARENA_LEN as usize) as u32)
                };
                if params.get(i + 1) == Some(&Len) {
                    args[i + 1] = (args[i + 1] & !0xffff_ffff) | len as u64;
                    args[i] = (args[i] & !0xffff_ffff) | ptr as u64;
                    i += 2;
                    continue;
                }
                ptr as u64
            }
            Len => rng.interesting_u32() as u64,
            Out(w) => match rng.below(10) {
                0..=6 => {
                    let off = rng.below((ARENA_LEN + 2 * w) as usize) as u32;
                    (ARENA - w + off) as u64
                }
                _ => edge_ptr(rng) as u64,
            },
            Enum(n) => match rng.below(10) {
                0..=7 => rng.below(n as usize + 1) as u64,
                _ => rng.interesting_u32() as u64,
            },
            Id => match rng.below(10) {
                0..=3 if !ids.is_empty() => *rng.pick(ids) as u64,
                4..=7 => rng.below(8) as u64,
                _ => rng.interesting_u32() as u64,
            },
            // CAS 0 (overwrite) often, or the call never succeeds.
            Int if HOSTCALLS[k].name == "proxy_set_shared_data" && rng.bool() => 0,
            Int => match rng.below(4) {
                0 => rng.below(1000) as u64,
                1 => rng.range(100, 999) as u64,
                _ => rng.interesting_u32() as u64,
            },
            I64 => match rng.below(4) {
                0 => *rng.pick(&[0u64, 1, u64::MAX, i64::MAX as u64, i64::MIN as u64]),
                1 => rng.below(100) as u64,
                _ => rng.u64(),
            },
        };
        args[i] = (args[i] & !0xffff_ffff) | (v & 0xffff_ffff);
        if params[i] == I64 {
            args[i] = v;
        }
        i += 1;
    }
    Command { k, args, payload }
}

/// The module's report of one call: its status and the arena ranges it changed.
struct Outcome {
    status: u32,
    runs: u32,
    changed: Vec<(u32, u32)>,
}

fn parse_outcome(line: &str) -> Result<Outcome, String> {
    let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|_| format!("bad report line {line:?}"));
    let rest = line.strip_prefix("FUZZ r=").ok_or_else(|| format!("bad report line {line:?}"))?;
    let mut words = rest.split(' ');
    let status = hex(words.next().unwrap_or(""))?;
    let runs = hex(words.next().and_then(|w| w.strip_prefix("n=")).unwrap_or(""))?;
    let mut changed = Vec::new();
    for w in words {
        let (a, b) = w.split_once('-').ok_or_else(|| format!("bad run {w:?} in {line:?}"))?;
        changed.push((hex(a)?, hex(b)?));
    }
    Ok(Outcome { status, runs, changed })
}

/// Checks the call's status and that every changed arena byte lies in one of
/// its out-parameters.
fn judge(cmd: &Command, outcome: &Outcome, channel: Channel) -> Result<(), String> {
    let hc = &HOSTCALLS[cmd.k];
    if !allowed(cmd, outcome.status, channel) {
        return Err(format!(
            "{} answered status {} from {channel:?}: the Rust SDK accepts only {:?} (or 2, 6) there",
            hc.name, outcome.status as i32, hc.sdk
        ));
    }
    let windows: Vec<(u32, u32)> = hc
        .params
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Out(w) => Some((cmd.args[i] as u32 as u64, *w as u64)),
            _ => None,
        })
        .flat_map(|(p, w)| {
            // An out-parameter in the arena, or in the module's copy of it
            // (which then differs from the arena there).
            [ARENA, SNAPSHOT].into_iter().filter_map(move |base| {
                let base = base as u64;
                let (lo, hi) = (p.max(base), (p + w).min(base + ARENA_LEN as u64));
                (lo < hi).then(|| ((lo - base) as u32, (hi - base) as u32))
            })
        })
        .collect();
    if outcome.runs as usize > outcome.changed.len() {
        return Err(format!(
            "{} changed {} separate ranges of guest memory, more than its out-parameters",
            hc.name, outcome.runs
        ));
    }
    for &(start, end) in &outcome.changed {
        for b in start..end {
            if !windows.iter().any(|&(lo, hi)| lo <= b && b < hi) {
                return Err(format!(
                    "{} wrote guest memory at {:#x} (arena bytes {start:#x}..{end:#x} changed), outside its out-parameters {:?} (status {})",
                    hc.name,
                    ARENA + b,
                    windows.iter().map(|(lo, hi)| format!("{:#x}..{:#x}", ARENA + lo, ARENA + hi)).collect::<Vec<_>>(),
                    outcome.status
                ));
            }
        }
    }
    Ok(())
}

/// One VM with the fuzzing module, a root context and a current stream.
struct Rig {
    h: Harness,
    stream: Option<(u32, TestStream, u32)>,
    cases: u32,
}

impl Rig {
    fn new(runtime: RuntimeKind) -> Rig {
        static CODE: std::sync::Mutex<Vec<(RuntimeKind, Arc<proxy_wasm_host::hostcalls::code::WasmCode>)>> =
            std::sync::Mutex::new(Vec::new());
        let code = {
            let mut cache = CODE.lock().unwrap_or_else(|p| p.into_inner());
            match cache.iter().find(|(r, _)| *r == runtime) {
                Some((_, c)) => c.clone(),
                None => {
                    let c = common::load_on(runtime, &wat_bytes("hostcall_fuzz"), "hostcall_fuzz.wat")
                        .expect("hostcall_fuzz.wat loads");
                    cache.push((runtime, c.clone()));
                    c
                }
            }
        };
        // Stores of its own: what one rig writes is dropped with it.
        let mut options = VmOptions::new(unique_vm_id("fuzz"));
        // One store for both, as in a server: data and queued items count against one cap.
        let store = Arc::new(InProcessStore::default());
        options.shared_data = Some(store.clone());
        options.queues = Some(store);
        options.metrics = Some(Arc::new(Metrics::default()));
        // The module reports every case with proxy_log: no cap on its lines.
        let mut plugin = PluginInfo::new("test-plugin", "", options.vm_id.clone(), Vec::new());
        plugin.quotas.max_log_lines_per_second = u32::MAX;
        let h = Harness::try_start_plugin(code, plugin, options, TestServer::new()).expect("the fuzzing module starts");
        Rig { h, stream: None, cases: 0 }
    }

    fn ids(&self) -> Vec<u32> {
        let mut ids = vec![self.h.root, self.h.root + 1];
        if let Some((ctx, _, _)) = &self.stream {
            ids.extend([*ctx, ctx + 1, ctx - 1]);
        }
        ids
    }

    /// The current stream, replaced after a few commands.
    fn stream(&mut self, rng: &mut Rng) -> Result<(u32, TestStream), String> {
        if let Some((ctx, s, left)) = &mut self.stream {
            if *left > 0 && self.h.vm.has_context(*ctx) {
                *left -= 1;
                return Ok((*ctx, s.clone()));
            }
            let ctx = *ctx;
            self.stream = None;
            if self.h.vm.has_context(ctx) {
                self.h.vm.finish_stream(ctx).map_err(|e| format!("finishing a stream: {e}"))?;
            }
        }
        let (ctx, s) = self.h.stream(&[(":method", "GET"), (":path", "/fuzz"), (":authority", "fuzz"), ("x-a", "1")]);
        s.set_response(&[(":status", "200"), ("x-b", "2")]);
        self.stream = Some((ctx, s.clone(), rng.below(16) as u32));
        Ok((ctx, s))
    }

    /// Delivers `cmd` through `channel`; returns the module's report line.
    fn deliver(&mut self, rng: &mut Rng, channel: Channel, cmd: &Command) -> Result<String, String> {
        self.h.server.clear_logs();
        let bytes = cmd.bytes();
        let root = self.h.root;
        let r: Result<(), VmError> = match channel {
            Channel::ForeignFunction => self.h.vm.on_foreign_function(root, rng.u32(), bytes),
            Channel::HttpCallResponse => {
                // A real pending call first: an http_call made through the other root channel.
                let token = self.http_call(rng)?;
                let list = |rng: &mut Rng| -> Vec<(Vec<u8>, Vec<u8>)> {
                    (0..rng.len(4)).map(|_| (b"x-r".to_vec(), rng.bytes(4))).collect()
                };
                let response = HttpCallResponse {
                    headers: list(rng),
                    body: bytes,
                    trailers: list(rng),
                    // Any code but the one for a response over the size cap, which the
                    // VM delivers without its body (the command), as servers do.
                    failure: rng
                        .chance(1, 4)
                        .then(|| (rng.below(600) as u32, "fuzz failure".to_string()))
                        .filter(|(code, _)| *code != FAILURE_TOO_LARGE),
                };
                self.h.server.clear_logs();
                self.h.vm.on_http_call_response(token, response)
            }
            Channel::RequestHeaders | Channel::ResponseHeaders => {
                let (ctx, s) = self.stream(rng)?;
                {
                    let mut d = s.0.lock().unwrap();
                    let map = if channel == Channel::RequestHeaders {
                        &mut d.request_headers
                    } else {
                        &mut d.response_headers
                    };
                    // Any spelling: the module reads the header case-insensitively.
                    map.retain(|(k, _)| !k.eq_ignore_ascii_case(b"x-fuzz"));
                    map.push((b"x-fuzz".to_vec(), bytes));
                }
                let eos = rng.bool();
                if channel == Channel::RequestHeaders {
                    self.h.vm.on_request_headers(ctx, 4, eos).map(|_| ())
                } else {
                    self.h.vm.on_response_headers(ctx, 2, eos).map(|_| ())
                }
            }
            Channel::RequestBody | Channel::ResponseBody => {
                let (ctx, _) = self.stream(rng)?;
                let direction = if channel == Channel::RequestBody {
                    proxy_wasm_host::abi::StreamType::HttpRequest
                } else {
                    proxy_wasm_host::abi::StreamType::HttpResponse
                };
                self.h.vm.take_body(ctx, direction).map_err(|e| e.to_string())?;
                let eos = rng.bool();
                let r = if channel == Channel::RequestBody {
                    self.h.vm.on_request_body(ctx, &bytes, eos)
                } else {
                    self.h.vm.on_response_body(ctx, &bytes, eos)
                };
                let _ = self.h.vm.take_body(ctx, direction);
                r.map(|_| ())
            }
        };
        self.cases += 1;
        let _ = self.h.server.take_http_calls();
        match r {
            Ok(()) => {}
            // A call may end the stream (proxy_done): the next case starts another.
            Err(VmError::UnknownContext(_)) => {}
            Err(e) => return Err(format!("the VM failed: {e}\nlog: {:?}", self.h.server.messages())),
        }
        let messages = self.h.server.messages();
        if let Some(m) = messages.iter().find(|m| m.starts_with("FUZZ driver")) {
            return Err(format!("the module could not read its command through {channel:?}: {m}"));
        }
        messages
            .iter()
            .rev()
            .find(|m| m.starts_with("FUZZ r="))
            .cloned()
            .ok_or_else(|| format!("no report from the module through {channel:?}; log: {messages:?}"))
    }

    /// Makes a valid http_call from the root context; returns its token.
    fn http_call(&mut self, rng: &mut Rng) -> Result<u32, String> {
        let headers = pairs::encode(&[(":method", "GET"), (":path", "/"), (":authority", "fuzz")]);
        let mut payload = b"fuzz-upstream".to_vec();
        payload.resize(64, 0);
        payload.extend_from_slice(&headers);
        let mut args = [0u64; 12];
        args[0] = ARENA as u64;
        args[1] = 13;
        args[2] = ARENA as u64 + 64;
        args[3] = headers.len() as u64;
        args[8] = 1000;
        args[9] = (ARENA + 0x3000) as u64;
        let cmd = Command { k: 15, args, payload };
        self.h.server.clear_logs();
        self.h
            .vm
            .on_foreign_function(self.h.root, rng.u32(), cmd.bytes())
            .map_err(|e| format!("setup http_call: {e}"))?;
        let calls = self.h.server.take_http_calls();
        match calls.last() {
            Some((_, token, _)) => Ok(*token),
            None => Err(format!("setup http_call was not dispatched: {:?}", self.h.server.messages())),
        }
    }
}

/// One target per runtime: random hostcalls with random arguments from every channel.
pub fn fuzz_hostcalls(runtime: RuntimeKind) {
    let mut rig: Option<Rig> = None;
    engine::run(&format!("hostcalls_{runtime}"), |case: &mut Case| {
        // A fresh VM now and then bounds what the calls accumulate (pending
        // calls, shared data, streams); a failed one is not reused.
        let r = match &mut rig {
            Some(r) if r.cases < 2000 && r.h.vm.failure().is_none() => r,
            _ => rig.insert(Rig::new(runtime)),
        };
        let memory = r.h.vm.memory_size() as u32;
        let channel = *case.rng.pick(&CHANNELS);
        let ids = r.ids();
        let cmd = command(&mut case.rng, None, memory, &ids);
        case.note(format!("{channel:?}: {}", cmd.describe()));
        case.input(&cmd.payload);
        let line = r.deliver(&mut case.rng, channel, &cmd)?;
        let outcome = parse_outcome(&line)?;
        judge(&cmd, &outcome, channel)
    });
}

/// `proxy_http_call` with a CR or LF in a header name or value, in `:method`
/// or in `:path`: found by the request-encoding target. The request must be
/// refused (BAD_ARGUMENT, which the SDKs accept) or sent without the line
/// break: sent as it is, it adds headers (or a whole request) the plugin was
/// not given, and on a kept-alive upstream connection (NGINX) a smuggled
/// request desynchronizes the answers of later calls, other plugins' too.
pub fn http_call_header_with_line_break(runtime: RuntimeKind) {
    let cases: [&[(&str, &str)]; 4] = [
        &[(":method", "GET"), (":path", "/"), (":authority", "fuzz"), ("x-a", "1\r\nInjected: 1")],
        &[(":method", "GET"), (":path", "/"), (":authority", "fuzz"), ("x-a\r\nInjected", "1")],
        &[(":method", "GET"), (":path", "/ HTTP/1.1\r\nInjected: 1\r\nx:"), (":authority", "fuzz")],
        &[(":method", "GET /other HTTP/1.1\r\nHost: x\r\n\r\nGET"), (":path", "/"), (":authority", "fuzz")],
    ];
    for headers in cases {
        let mut rig = Rig::new(runtime);
        let encoded = pairs::encode(headers);
        let mut payload = b"fuzz-upstream".to_vec();
        payload.resize(64, 0);
        payload.extend_from_slice(&encoded);
        let mut args = [0u64; 12];
        (args[0], args[1], args[2], args[3]) = (ARENA as u64, 13, ARENA as u64 + 64, encoded.len() as u64);
        (args[8], args[9]) = (1000, (ARENA + 0x3000) as u64);
        let cmd = Command { k: 15, args, payload };
        rig.h.server.clear_logs();
        rig.h.vm.on_foreign_function(rig.h.root, 0, cmd.bytes()).expect("the callback runs");
        let line = rig.h.server.messages().into_iter().find(|m| m.starts_with("FUZZ r=")).expect("a report");
        let status = parse_outcome(&line).expect("a report").status;
        let calls = rig.h.server.take_http_calls();
        if status == Status::BadArgument as u32 {
            assert!(calls.is_empty(), "{headers:?}: refused, yet dispatched");
            continue;
        }
        assert_eq!(status, 0, "{headers:?}");
        let (_, _, request) = &calls[0];
        let bytes = proxy_wasm_host::http_client::encode_request(request);
        let head = &bytes[..bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap()];
        let lines = head.split(|b| *b == b'\n').count();
        // The request line, host, one line per plain header, connection, content-length.
        let plain = headers.iter().filter(|(k, _)| !k.starts_with(':')).count();
        assert_eq!(lines, 4 + plain, "{headers:?} was sent as:\n{}", String::from_utf8_lossy(&bytes));
    }
}

crate::common::for_each_runtime! {
    #[test]
    fn fuzz_hostcall_arguments() {
        crate::hostcalls::fuzz_hostcalls(common::RUNTIME);
    }

    #[test]
    fn an_http_call_header_with_a_line_break_is_refused() {
        crate::hostcalls::http_call_header_with_line_break(common::RUNTIME);
    }
}
