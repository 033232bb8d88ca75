//! Every Proxy-Wasm hostcall, in one place, for every ABI version.
//!
//! Each function decodes its raw arguments (pointers and lengths are u32 in
//! guest memory), acts on the effective context through the server interface,
//! and returns a status the SDKs accept in that situation. A hostcall traps the
//! guest only when the guest's own allocator traps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::memory::{self, return_bytes};
use super::pairs::{self, Pair};
use super::{AbiVersion, BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use crate::host::{HttpCallRequest, LocalResponse};
use crate::runtime::{Caller, HostFunction, Trap, Val, ValType};
use crate::shared::QueueOwner;
use crate::vm::state::{Context, Deferred, HostState, Phase};

type R = Result<Option<Val>, Trap>;

fn done(s: Status) -> R {
    Ok(Some(Val::I32(s.code())))
}

fn result(r: Result<(), Status>) -> R {
    done(r.err().unwrap_or(Status::Ok))
}

/// Argument `i` as a u32 (pointers, sizes, enums, ids).
fn u(a: &[Val], i: usize) -> u32 {
    a.get(i).map_or(0, |v| v.as_i32() as u32)
}

fn i64_arg(a: &[Val], i: usize) -> i64 {
    a.get(i).map_or(0, |v| v.as_i64())
}

/// Reads guest bytes, or returns INVALID_MEMORY_ACCESS from the hostcall.
macro_rules! read {
    ($c:expr, $ptr:expr, $len:expr) => {
        match memory::read($c.memory_and_state().0, $ptr, $len) {
            Ok(v) => v,
            Err(s) => return done(s),
        }
    };
}

/// Returns early with a status.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return done(s),
        }
    };
}

/// Only logging, time and WASI are allowed while the module starts up or its
/// allocator runs: there is no context yet, and re-entering the host from the
/// allocator would observe half-done state.
fn running(c: &mut dyn Caller) -> Result<(), Status> {
    match c.state().phase {
        Phase::Running => Ok(()),
        Phase::Startup => Err(Status::InternalFailure),
    }
}

fn write_u32_result(c: &mut dyn Caller, ptr: u32, v: u32) -> R {
    result(memory::write_u32(c.memory_and_state().0, ptr, v))
}

// ---------------------------------------------------------------- logging, time

fn proxy_log(c: &mut dyn Caller, a: &[Val]) -> R {
    let level = tri!(LogLevel::try_from(u(a, 0) as i32));
    let msg = read!(c, u(a, 1), u(a, 2));
    let st = c.state();
    let plugin = st.log_ref();
    st.env.server.log(&plugin, level, &String::from_utf8_lossy(&msg));
    done(Status::Ok)
}

fn proxy_get_log_level(c: &mut dyn Caller, a: &[Val]) -> R {
    let level = c.state().env.server.log_level() as u32;
    write_u32_result(c, u(a, 0), level)
}

fn proxy_get_current_time_nanoseconds(c: &mut dyn Caller, a: &[Val]) -> R {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    result(memory::write_u64(c.memory_and_state().0, u(a, 0), now))
}

fn proxy_set_tick_period_milliseconds(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let ms = u(a, 0);
    let st = c.state();
    let Some(root_id) = st.effective_root_id() else { return done(Status::BadArgument) };
    let period = (ms != 0).then(|| Duration::from_millis(ms as u64));
    if let Some(Context::Root(root)) = st.contexts.get_mut(&root_id) {
        root.tick_period = period;
    }
    st.env.server.set_tick_period(root_id, period);
    done(Status::Ok)
}

// ---------------------------------------------------------------- buffers

/// The bytes of a buffer as the effective context sees it, `None` when that
/// buffer does not exist here.
fn buffer(st: &mut HostState, ty: BufferType) -> Option<&mut Vec<u8>> {
    match ty {
        BufferType::HttpRequestBody => st.effective_stream().map(|s| &mut s.request_body),
        BufferType::HttpResponseBody => st.effective_stream().map(|s| &mut s.response_body),
        BufferType::HttpCallResponseBody => st.http_call_response.as_mut().map(|r| &mut r.body),
        BufferType::CallData => st.call_data.as_mut(),
        BufferType::DownstreamData | BufferType::UpstreamData | BufferType::GrpcReceiveBuffer => None,
        BufferType::VmConfiguration | BufferType::PluginConfiguration => None,
    }
}

/// Configuration buffers are read-only and only during the callbacks that receive them.
fn configuration(st: &HostState, ty: BufferType) -> Option<Vec<u8>> {
    match (ty, st.callback) {
        (BufferType::VmConfiguration, Some("proxy_on_vm_start")) => Some(st.env.vm_configuration.clone()),
        (BufferType::PluginConfiguration, Some("proxy_on_configure" | "proxy_validate_configuration")) => {
            st.effective_plugin().map(|p| p.configuration.clone())
        }
        _ => None,
    }
}

fn proxy_get_buffer_bytes(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let ty = tri!(BufferType::try_from(u(a, 0) as i32));
    let (start, max) = (u(a, 1) as usize, u(a, 2) as usize);
    let st = c.state();
    let data = match configuration(st, ty) {
        Some(cfg) => cfg,
        None => match buffer(st, ty) {
            Some(buf) => {
                let begin = start.min(buf.len());
                let end = begin.saturating_add(max).min(buf.len());
                buf[begin..end].to_vec()
            }
            None => return done(Status::NotFound),
        },
    };
    let data = if matches!(ty, BufferType::VmConfiguration | BufferType::PluginConfiguration) {
        let begin = start.min(data.len());
        data[begin..begin.saturating_add(max).min(data.len())].to_vec()
    } else {
        data
    };
    done(return_bytes(c, &data, u(a, 3), u(a, 4))?)
}

fn proxy_set_buffer_bytes(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let ty = tri!(BufferType::try_from(u(a, 0) as i32));
    let (start, size) = (u(a, 1) as usize, u(a, 2) as usize);
    let data = read!(c, u(a, 3), u(a, 4));
    if !matches!(ty, BufferType::HttpRequestBody | BufferType::HttpResponseBody | BufferType::HttpCallResponseBody) {
        return done(if buffer(c.state(), ty).is_some() { Status::BadArgument } else { Status::NotFound });
    }
    let Some(buf) = buffer(c.state(), ty) else { return done(Status::NotFound) };
    splice(buf, start, size, &data);
    done(Status::Ok)
}

/// The ABI's buffer edit: (0, 0) prepends, a start at or past the end appends,
/// anything else replaces `size` bytes from `start` (clamped to the end).
pub fn splice(buf: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) {
    if start == 0 && size == 0 {
        buf.splice(0..0, data.iter().copied());
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
    } else {
        let end = start.saturating_add(size).min(buf.len());
        buf.splice(start..end, data.iter().copied());
    }
}

fn proxy_get_buffer_status(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let ty = tri!(BufferType::try_from(u(a, 0) as i32));
    let st = c.state();
    let (len, eos) = match ty {
        BufferType::HttpRequestBody => match st.effective_stream() {
            Some(s) => (s.request_body.len(), s.request_body_eos),
            None => return done(Status::NotFound),
        },
        BufferType::HttpResponseBody => match st.effective_stream() {
            Some(s) => (s.response_body.len(), s.response_body_eos),
            None => return done(Status::NotFound),
        },
        _ => match configuration(st, ty).map(|v| v.len()).or_else(|| buffer(st, ty).map(|b| b.len())) {
            Some(len) => (len, true),
            None => return done(Status::NotFound),
        },
    };
    let mem = c.memory_and_state().0;
    result(memory::write_u32(mem, u(a, 1), len as u32).and_then(|_| memory::write_u32(mem, u(a, 2), eos as u32)))
}

fn proxy_get_configuration(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let st = c.state();
    let data = if st.callback == Some("proxy_on_vm_start") {
        st.env.vm_configuration.clone()
    } else {
        st.effective_plugin().map(|p| p.configuration.clone()).unwrap_or_default()
    };
    done(return_bytes(c, &data, u(a, 0), u(a, 1))?)
}

// ---------------------------------------------------------------- header maps

enum MapSource {
    Stream,
    HttpCall,
    Absent,
}

fn map_source(st: &mut HostState, map: MapType) -> MapSource {
    match map {
        MapType::HttpRequestHeaders | MapType::HttpRequestTrailers | MapType::HttpResponseHeaders | MapType::HttpResponseTrailers => {
            if st.effective_stream().is_some() {
                MapSource::Stream
            } else {
                MapSource::Absent
            }
        }
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers if st.http_call_response.is_some() => MapSource::HttpCall,
        _ => MapSource::Absent,
    }
}

/// The whole map; a map that does not exist here reads as empty, because the
/// SDKs treat any other answer to a read as fatal.
fn read_map(st: &mut HostState, map: MapType) -> Result<Vec<Pair>, Status> {
    match map_source(st, map) {
        MapSource::Stream => st.effective_stream().map_or(Ok(Vec::new()), |s| s.stream.header_map(map)),
        MapSource::HttpCall => {
            let r = st.http_call_response.as_ref().expect("checked by map_source");
            Ok(if map == MapType::HttpCallResponseHeaders { r.headers.clone() } else { r.trailers.clone() })
        }
        MapSource::Absent => Ok(Vec::new()),
    }
}

fn proxy_get_header_map_pairs(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let pairs = tri!(read_map(c.state(), map));
    done(return_bytes(c, &pairs::encode(&pairs), u(a, 1), u(a, 2))?)
}

fn proxy_get_header_map_size(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let pairs = tri!(read_map(c.state(), map));
    write_u32_result(c, u(a, 1), pairs::encode(&pairs).len() as u32)
}

fn proxy_get_header_map_value(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let key = read!(c, u(a, 1), u(a, 2));
    let st = c.state();
    let value = match map_source(st, map) {
        MapSource::Stream => tri!(st.effective_stream().map_or(Ok(None), |s| s.stream.header_value(map, &key))),
        _ => {
            let pairs = tri!(read_map(st, map));
            let values: Vec<&[u8]> = pairs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(&key)).map(|(_, v)| v.as_slice()).collect();
            (!values.is_empty()).then(|| values.join(&b","[..]))
        }
    };
    match value {
        Some(v) => done(return_bytes(c, &v, u(a, 3), u(a, 4))?),
        // ABI 0.1.0 reads a missing header as an empty value.
        None if c.state().env.abi == AbiVersion::V0_1_0 => done(return_bytes(c, &[], u(a, 3), u(a, 4))?),
        None => done(Status::NotFound),
    }
}

/// Runs a write on the effective stream's map; maps that cannot be written
/// here are BAD_ARGUMENT.
fn write_map(c: &mut dyn Caller, map: MapType, f: impl FnOnce(&mut dyn crate::host::HttpStream) -> Result<(), Status>) -> R {
    let st = c.state();
    match map_source(st, map) {
        MapSource::Stream => match st.effective_stream() {
            Some(s) => result(f(s.stream.as_mut())),
            None => done(Status::BadArgument),
        },
        _ => done(Status::BadArgument),
    }
}

fn proxy_set_header_map_pairs(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let raw = read!(c, u(a, 1), u(a, 2));
    let pairs = tri!(pairs::decode(&raw));
    write_map(c, map, |s| s.set_header_map(map, pairs))
}

fn proxy_add_header_map_value(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let key = read!(c, u(a, 1), u(a, 2));
    let value = read!(c, u(a, 3), u(a, 4));
    write_map(c, map, |s| s.add_header(map, &key, &value))
}

fn proxy_replace_header_map_value(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let key = read!(c, u(a, 1), u(a, 2));
    let value = read!(c, u(a, 3), u(a, 4));
    write_map(c, map, |s| s.replace_header(map, &key, &value))
}

fn proxy_remove_header_map_value(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let key = read!(c, u(a, 1), u(a, 2));
    write_map(c, map, |s| s.remove_header(map, &key))
}

// ---------------------------------------------------------------- stream control

fn defer_resume(c: &mut dyn Caller, stream: StreamType) -> R {
    tri!(running(c));
    let st = c.state();
    let context_id = st.effective_context;
    if st.effective_stream().is_none() {
        return done(Status::NotFound);
    }
    if !matches!(stream, StreamType::HttpRequest | StreamType::HttpResponse) {
        return done(Status::BadArgument);
    }
    // Applied when the current callback returns: a stream must not resume
    // while the plugin is still running inside it.
    let d = Deferred::Resume { context_id, stream };
    if !st.deferred.contains(&d) {
        st.deferred.push(d);
    }
    done(Status::Ok)
}

fn proxy_continue_stream(c: &mut dyn Caller, a: &[Val]) -> R {
    let stream = tri!(StreamType::try_from(u(a, 0) as i32));
    defer_resume(c, stream)
}

fn proxy_continue_request(c: &mut dyn Caller, _a: &[Val]) -> R {
    defer_resume(c, StreamType::HttpRequest)
}

fn proxy_continue_response(c: &mut dyn Caller, _a: &[Val]) -> R {
    defer_resume(c, StreamType::HttpResponse)
}

fn proxy_clear_route_cache(c: &mut dyn Caller, _a: &[Val]) -> R {
    tri!(running(c));
    // Our servers pick the route after the request-header filters have run, so
    // there is no cached route to clear.
    done(Status::Ok)
}

fn proxy_close_stream(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let stream = tri!(StreamType::try_from(u(a, 0) as i32));
    let Some(s) = c.state().effective_stream() else { return done(Status::NotFound) };
    if !matches!(stream, StreamType::HttpRequest | StreamType::HttpResponse) {
        return done(Status::BadArgument);
    }
    let r = s.stream.close(stream);
    if r.is_ok() {
        s.closed = true;
    }
    result(r)
}

fn proxy_send_local_response(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let details = read!(c, u(a, 1), u(a, 2));
    let body = read!(c, u(a, 3), u(a, 4));
    let raw_headers = read!(c, u(a, 5), u(a, 6));
    let headers = tri!(pairs::decode(&raw_headers));
    let status = u(a, 0);
    if !(100..=999).contains(&status) {
        return done(Status::BadArgument);
    }
    let response = LocalResponse { status, details: String::from_utf8_lossy(&details).into_owned(), body, headers, grpc_status: u(a, 7) as i32 };
    let Some(s) = c.state().effective_stream() else { return done(Status::NotFound) };
    let r = s.stream.send_local_response(response);
    if r.is_ok() {
        s.local_response_sent = true;
    }
    result(r)
}

fn proxy_get_status(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let (code, message) = c.state().last_status.clone();
    {
        let mem = c.memory_and_state().0;
        tri!(memory::write_u32(mem, u(a, 0), code));
    }
    done(return_bytes(c, message.as_bytes(), u(a, 1), u(a, 2))?)
}

// ---------------------------------------------------------------- outgoing calls

fn has_pseudo(headers: &[Pair], name: &[u8]) -> bool {
    headers.iter().any(|(k, v)| k.as_slice() == name && !v.is_empty())
}

fn proxy_http_call(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let upstream = read!(c, u(a, 0), u(a, 1));
    let raw_headers = read!(c, u(a, 2), u(a, 3));
    let body = read!(c, u(a, 4), u(a, 5));
    let raw_trailers = read!(c, u(a, 6), u(a, 7));
    let timeout_ms = u(a, 8);
    let token_ptr = u(a, 9);
    tri!(memory::check(c.memory_and_state().0, token_ptr, 4));
    let headers = tri!(pairs::decode(&raw_headers));
    let trailers = tri!(pairs::decode(&raw_trailers));
    // The servers write these into the request as they are: a line break would add headers.
    if !pairs::fit_for_http1(&headers) || !pairs::fit_for_http1(&trailers) {
        return done(Status::BadArgument);
    }
    let Ok(upstream) = String::from_utf8(upstream) else { return done(Status::BadArgument) };
    if upstream.is_empty() || ![&b":method"[..], b":path", b":authority"].iter().all(|p| has_pseudo(&headers, p)) {
        return done(Status::BadArgument);
    }
    let st = c.state();
    if let Some(plugin) = st.effective_plugin() {
        if !plugin.authorizations.allows_upstream(&upstream) {
            st.log_denial(format!("http_call to {upstream:?}"), "not in authorizations.allowed_hosts");
            return done(Status::BadArgument);
        }
    }
    let Some(root_id) = st.effective_root_id() else { return done(Status::BadArgument) };
    let dispatcher = st.effective_context;
    let token = st.allocate_http_call_token();
    let timeout = (timeout_ms != 0).then(|| Duration::from_millis(timeout_ms as u64));
    let request = HttpCallRequest { upstream, headers, body, trailers, timeout };
    match st.env.server.dispatch_http_call(root_id, token, request) {
        Ok(()) => {
            st.http_calls.insert(token, (root_id, dispatcher));
            write_u32_result(c, token_ptr, token)
        }
        Err(Status::BadArgument) => done(Status::BadArgument),
        Err(_) => done(Status::InternalFailure),
    }
}

fn unimplemented(c: &mut dyn Caller, _a: &[Val]) -> R {
    tri!(running(c));
    done(Status::Unimplemented)
}

// ---------------------------------------------------------------- shared data and queues

/// Where a shared-data key lives for the effective plugin, if it may read
/// (or write) there: its own VM's keys, or `<vm_id>::<key>` of another VM with
/// `global_map_access`. A denial is logged once.
fn shared_data_target(st: &mut HostState, key: &[u8], write: bool) -> Option<(String, Vec<u8>)> {
    let Some(plugin) = st.effective_plugin() else { return Some((st.env.vm_id.clone(), key.to_vec())) };
    let (vm_id, key, access) = plugin.authorizations.shared_data_target(&st.env.vm_id, key);
    if if write { access.write } else { access.read } {
        return Some((vm_id.to_string(), key.to_vec()));
    }
    let (what, setting) = if vm_id == st.env.vm_id { ("its own", "plugin_map_access") } else { ("another VM's", "global_map_access") };
    let verb = if write { "write" } else { "read" };
    st.log_denial(format!("shared data {verb} of vm_id {vm_id:?}"), &format!("authorizations.{setting}.{verb} is false for {what} shared data"));
    None
}

fn proxy_get_shared_data(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let key = read!(c, u(a, 0), u(a, 1));
    tri!(memory::check(c.memory_and_state().0, u(a, 4), 4));
    let st = c.state();
    // A key the plugin may not read looks absent (what SDKs handle).
    let Some((vm_id, key)) = shared_data_target(st, &key, false) else { return done(Status::NotFound) };
    let Some((value, cas)) = st.env.shared_data.get(&vm_id, &key) else { return done(Status::NotFound) };
    let s = return_bytes(c, &value, u(a, 2), u(a, 3))?;
    if s != Status::Ok {
        return done(s);
    }
    write_u32_result(c, u(a, 4), cas)
}

fn proxy_set_shared_data(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let key = read!(c, u(a, 0), u(a, 1));
    let value = read!(c, u(a, 2), u(a, 3));
    let st = c.state();
    let Some((vm_id, key)) = shared_data_target(st, &key, true) else { return done(Status::BadArgument) };
    result(st.env.shared_data.set(&vm_id, &key, &value, u(a, 4)))
}

fn proxy_register_shared_queue(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let name = read!(c, u(a, 0), u(a, 1));
    tri!(memory::check(c.memory_and_state().0, u(a, 2), 4));
    let st = c.state();
    let Some(root_context_id) = st.effective_root_id() else { return done(Status::BadArgument) };
    let owner = QueueOwner { server: std::sync::Arc::downgrade(&st.env.server), root_context_id };
    let id = tri!(st.env.queues.register(&st.env.vm_id, &String::from_utf8_lossy(&name), owner));
    write_u32_result(c, u(a, 2), id)
}

fn proxy_resolve_shared_queue(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let vm_id = read!(c, u(a, 0), u(a, 1));
    let name = read!(c, u(a, 2), u(a, 3));
    tri!(memory::check(c.memory_and_state().0, u(a, 4), 4));
    let st = c.state();
    let vm_id = if vm_id.is_empty() { st.env.vm_id.clone() } else { String::from_utf8_lossy(&vm_id).into_owned() };
    match st.env.queues.resolve(&vm_id, &String::from_utf8_lossy(&name)) {
        Some(id) => write_u32_result(c, u(a, 4), id),
        None => done(Status::NotFound),
    }
}

fn proxy_enqueue_shared_queue(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let data = read!(c, u(a, 1), u(a, 2));
    result(c.state().env.queues.enqueue(u(a, 0), &data))
}

fn proxy_dequeue_shared_queue(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    {
        let mem = c.memory_and_state().0;
        tri!(memory::check(mem, u(a, 1), 4));
        tri!(memory::check(mem, u(a, 2), 4));
    }
    let data = tri!(c.state().env.queues.dequeue(u(a, 0)));
    done(return_bytes(c, &data, u(a, 1), u(a, 2))?)
}

// ---------------------------------------------------------------- metrics

fn proxy_define_metric(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let kind = tri!(MetricType::try_from(u(a, 0) as i32));
    let name = read!(c, u(a, 1), u(a, 2));
    tri!(memory::check(c.memory_and_state().0, u(a, 3), 4));
    let Ok(name) = String::from_utf8(name) else { return done(Status::BadArgument) };
    let id = tri!(c.state().env.metrics.define(kind, &name));
    write_u32_result(c, u(a, 3), id)
}

fn proxy_increment_metric(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    result(c.state().env.metrics.increment(u(a, 0), i64_arg(a, 1)))
}

fn proxy_record_metric(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    result(c.state().env.metrics.record(u(a, 0), i64_arg(a, 1) as u64))
}

fn proxy_get_metric(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    tri!(memory::check(c.memory_and_state().0, u(a, 1), 8));
    let v = tri!(c.state().env.metrics.get(u(a, 0)));
    result(memory::write_u64(c.memory_and_state().0, u(a, 1), v as u64))
}

// ---------------------------------------------------------------- properties

fn normalize_path(raw: &[u8]) -> Vec<u8> {
    raw.strip_suffix(&[0]).unwrap_or(raw).to_vec()
}

/// Resolves a property for the effective context: values the plugin set, then
/// the plugin's identity, then the server.
fn get_property(st: &mut HostState, raw: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    let key = normalize_path(raw);
    if let Some(v) = st.effective().and_then(|c| c.properties().get(&key)) {
        return Ok(Some(v.clone()));
    }
    let segments = super::property_path::split(raw);
    if segments.is_empty() {
        return Ok(None);
    }
    if segments.len() == 1 {
        if let Some(p) = st.effective_plugin() {
            match segments[0] {
                b"plugin_name" => return Ok(Some(p.name.clone().into_bytes())),
                b"plugin_root_id" => return Ok(Some(p.root_id.clone().into_bytes())),
                b"plugin_vm_id" => return Ok(Some(st.env.vm_id.clone().into_bytes())),
                _ => {}
            }
        }
    }
    match st.effective_stream() {
        Some(s) => s.stream.property(&segments),
        None => st.env.server.property(&segments),
    }
}

/// A property path as operators write it (`request.headers.x-a`).
fn property_name(segments: &[&[u8]]) -> String {
    segments.iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>().join(".")
}

fn proxy_get_property(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let path = read!(c, u(a, 0), u(a, 1));
    {
        let mem = c.memory_and_state().0;
        tri!(memory::check(mem, u(a, 2), 4));
        tri!(memory::check(mem, u(a, 3), 4));
    }
    let st = c.state();
    if let Some(plugin) = st.effective_plugin() {
        let segments = super::property_path::split(&path);
        if !plugin.authorizations.allows_property_read(&segments) {
            st.log_denial(format!("property read {}", property_name(&segments)), "not in authorizations.properties.read");
            return done(Status::NotFound);
        }
    }
    match get_property(c.state(), &path) {
        Ok(Some(v)) => done(return_bytes(c, &v, u(a, 2), u(a, 3))?),
        Ok(None) => done(Status::NotFound),
        Err(Status::SerializationFailure) => done(Status::SerializationFailure),
        Err(Status::NotFound) => done(Status::NotFound),
        Err(_) => done(Status::InternalFailure),
    }
}

fn proxy_set_property(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let path = read!(c, u(a, 0), u(a, 1));
    let value = read!(c, u(a, 2), u(a, 3));
    let key = normalize_path(&path);
    if key.is_empty() {
        return done(Status::BadArgument);
    }
    let st = c.state();
    if let Some(plugin) = st.effective_plugin() {
        let segments = super::property_path::split(&path);
        if !plugin.authorizations.allows_property_write(&segments) {
            st.log_denial(format!("property write {}", property_name(&segments)), "not in authorizations.properties.write");
            return done(Status::BadArgument);
        }
    }
    if let Some(s) = st.effective_stream() {
        let segments = super::property_path::split(&path);
        match s.stream.set_property(&segments, &value) {
            Ok(()) => return done(Status::Ok),
            Err(Status::NotFound) => {}
            Err(other) => return done(other),
        }
    }
    match st.effective_mut() {
        Some(ctx) => {
            ctx.properties_mut().insert(key, value);
            done(Status::Ok)
        }
        None => done(Status::NotFound),
    }
}

// ---------------------------------------------------------------- contexts

fn proxy_set_effective_context(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let id = u(a, 0);
    let st = c.state();
    if id == 0 || !st.contexts.contains_key(&id) {
        return done(Status::BadArgument);
    }
    st.effective_context = id;
    done(Status::Ok)
}

fn proxy_done(c: &mut dyn Caller, _a: &[Val]) -> R {
    tri!(running(c));
    let st = c.state();
    // A stream context whose on_done returned false finishes now.
    let effective = st.effective_context;
    if let Some(s) = st.effective_stream() {
        if s.awaiting_done {
            s.awaiting_done = false;
            st.deferred.push(Deferred::Done { context_id: effective });
            return done(Status::Ok);
        }
    }
    let Some(root_id) = st.effective_root_id() else { return done(Status::NotFound) };
    match st.contexts.get(&root_id) {
        Some(Context::Root(r)) if r.awaiting_done => {
            st.deferred.push(Deferred::Done { context_id: root_id });
            done(Status::Ok)
        }
        _ => done(Status::NotFound),
    }
}

fn proxy_call_foreign_function(c: &mut dyn Caller, a: &[Val]) -> R {
    tri!(running(c));
    let name = read!(c, u(a, 0), u(a, 1));
    let arg = read!(c, u(a, 2), u(a, 3));
    {
        let mem = c.memory_and_state().0;
        tri!(memory::check(mem, u(a, 4), 4));
        tri!(memory::check(mem, u(a, 5), 4));
    }
    let name = String::from_utf8_lossy(&name).into_owned();
    let out = tri!(c.state().env.server.call_foreign_function(&name, &arg));
    done(return_bytes(c, &out, u(a, 4), u(a, 5))?)
}

// ---------------------------------------------------------------- the import tables

use ValType::{I32, I64};

/// An `env` hostcall, checked against the calling plugin's
/// `capability_restriction_config` before it runs.
macro_rules! hostcall {
    ($name:literal, $params:expr, $func:path) => {
        HostFunction {
            module: "env",
            name: $name,
            params: $params,
            results: &[I32],
            func: {
                fn checked(c: &mut dyn Caller, a: &[Val]) -> R {
                    if capability_denied(c, $name) {
                        return done(Status::Unimplemented);
                    }
                    $func(c, a)
                }
                checked
            },
        }
    };
}

/// Whether the effective plugin may not use `name` (logged once). As in
/// proxy-wasm-cpp-host, a denied hostcall answers UNIMPLEMENTED.
pub(crate) fn capability_denied(c: &mut dyn Caller, name: &'static str) -> bool {
    let st = c.state();
    if !st.restricted {
        return false;
    }
    let Some(plugin) = st.effective_plugin() else { return false };
    if plugin.authorizations.allows_capability(name) {
        return false;
    }
    st.log_denial(format!("hostcall {name}"), "not in capability_restriction_config.allowed_capabilities");
    true
}

/// Hostcalls common to every ABI version.
static COMMON: &[HostFunction] = &[
    hostcall!("proxy_log", &[I32, I32, I32], proxy_log),
    hostcall!("proxy_get_current_time_nanoseconds", &[I32], proxy_get_current_time_nanoseconds),
    hostcall!("proxy_set_tick_period_milliseconds", &[I32], proxy_set_tick_period_milliseconds),
    hostcall!("proxy_get_buffer_bytes", &[I32, I32, I32, I32, I32], proxy_get_buffer_bytes),
    hostcall!("proxy_set_buffer_bytes", &[I32, I32, I32, I32, I32], proxy_set_buffer_bytes),
    hostcall!("proxy_get_buffer_status", &[I32, I32, I32], proxy_get_buffer_status),
    hostcall!("proxy_get_header_map_pairs", &[I32, I32, I32], proxy_get_header_map_pairs),
    hostcall!("proxy_set_header_map_pairs", &[I32, I32, I32], proxy_set_header_map_pairs),
    hostcall!("proxy_get_header_map_size", &[I32, I32], proxy_get_header_map_size),
    hostcall!("proxy_get_header_map_value", &[I32, I32, I32, I32, I32], proxy_get_header_map_value),
    hostcall!("proxy_add_header_map_value", &[I32, I32, I32, I32, I32], proxy_add_header_map_value),
    hostcall!("proxy_replace_header_map_value", &[I32, I32, I32, I32, I32], proxy_replace_header_map_value),
    hostcall!("proxy_remove_header_map_value", &[I32, I32, I32], proxy_remove_header_map_value),
    hostcall!("proxy_send_local_response", &[I32, I32, I32, I32, I32, I32, I32, I32], proxy_send_local_response),
    hostcall!("proxy_get_status", &[I32, I32, I32], proxy_get_status),
    hostcall!("proxy_http_call", &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32], proxy_http_call),
    hostcall!("proxy_grpc_call", &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32], unimplemented),
    hostcall!("proxy_grpc_stream", &[I32, I32, I32, I32, I32, I32, I32, I32, I32], unimplemented),
    hostcall!("proxy_grpc_send", &[I32, I32, I32, I32], unimplemented),
    hostcall!("proxy_grpc_cancel", &[I32], unimplemented),
    hostcall!("proxy_grpc_close", &[I32], unimplemented),
    hostcall!("proxy_get_shared_data", &[I32, I32, I32, I32, I32], proxy_get_shared_data),
    hostcall!("proxy_set_shared_data", &[I32, I32, I32, I32, I32], proxy_set_shared_data),
    hostcall!("proxy_register_shared_queue", &[I32, I32, I32], proxy_register_shared_queue),
    hostcall!("proxy_resolve_shared_queue", &[I32, I32, I32, I32, I32], proxy_resolve_shared_queue),
    hostcall!("proxy_enqueue_shared_queue", &[I32, I32, I32], proxy_enqueue_shared_queue),
    hostcall!("proxy_dequeue_shared_queue", &[I32, I32, I32], proxy_dequeue_shared_queue),
    hostcall!("proxy_define_metric", &[I32, I32, I32, I32], proxy_define_metric),
    hostcall!("proxy_increment_metric", &[I32, I64], proxy_increment_metric),
    hostcall!("proxy_record_metric", &[I32, I64], proxy_record_metric),
    hostcall!("proxy_get_metric", &[I32, I32], proxy_get_metric),
    hostcall!("proxy_get_property", &[I32, I32, I32, I32], proxy_get_property),
    hostcall!("proxy_set_property", &[I32, I32, I32, I32], proxy_set_property),
    hostcall!("proxy_set_effective_context", &[I32], proxy_set_effective_context),
    hostcall!("proxy_done", &[], proxy_done),
    hostcall!("proxy_call_foreign_function", &[I32, I32, I32, I32, I32, I32], proxy_call_foreign_function),
];

/// Only in ABI 0.1.0 (replaced in 0.2.0).
static V0_1_0_ONLY: &[HostFunction] = &[
    hostcall!("proxy_get_configuration", &[I32, I32], proxy_get_configuration),
    hostcall!("proxy_continue_request", &[], proxy_continue_request),
    hostcall!("proxy_continue_response", &[], proxy_continue_response),
    hostcall!("proxy_clear_route_cache", &[], proxy_clear_route_cache),
];

/// From ABI 0.2.0 on.
static V0_2_0_ON: &[HostFunction] = &[
    hostcall!("proxy_continue_stream", &[I32], proxy_continue_stream),
    hostcall!("proxy_close_stream", &[I32], proxy_close_stream),
];

/// From ABI 0.2.1 on.
static V0_2_1_ON: &[HostFunction] = &[hostcall!("proxy_get_log_level", &[I32], proxy_get_log_level)];

/// The `env` hostcalls a module of `abi` may import.
pub fn hostcalls(abi: AbiVersion) -> impl Iterator<Item = &'static HostFunction> {
    let (a, b, c): (&[HostFunction], &[HostFunction], &[HostFunction]) = match abi {
        AbiVersion::V0_1_0 => (V0_1_0_ONLY, &[], &[]),
        AbiVersion::V0_2_0 => (V0_2_0_ON, &[], &[]),
        AbiVersion::V0_2_1 => (V0_2_0_ON, V0_2_1_ON, &[]),
    };
    COMMON.iter().chain(a).chain(b).chain(c)
}

/// Names of hostcalls that answer UNIMPLEMENTED (listed in the docs).
pub const UNIMPLEMENTED: &[&str] = &["proxy_grpc_call", "proxy_grpc_stream", "proxy_grpc_send", "proxy_grpc_cancel", "proxy_grpc_close"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_prepends_appends_and_replaces() {
        let mut b = b"world".to_vec();
        splice(&mut b, 0, 0, b"hello ");
        assert_eq!(b, b"hello world");
        splice(&mut b, 100, 0, b"!");
        assert_eq!(b, b"hello world!");
        splice(&mut b, 0, 5, b"HELLO");
        assert_eq!(b, b"HELLO world!");
        splice(&mut b, 6, 1000, b"there");
        assert_eq!(b, b"HELLO there");
    }

    #[test]
    fn tables_have_no_duplicates() {
        for abi in AbiVersion::ALL {
            let mut names: Vec<_> = hostcalls(abi).map(|h| h.name).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(n, names.len(), "{abi}");
        }
    }
}
