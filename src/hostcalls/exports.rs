//! Every Proxy-Wasm hostcall, in one place, for every ABI version.
//!
//! Each function decodes its raw arguments (pointers and lengths are u32 in
//! guest memory), acts on the effective context through the server interface,
//! and returns a status the SDKs accept in that situation. A hostcall traps the
//! guest only when the guest's own allocator traps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::memory::{self, return_bytes};
use crate::abi::pairs::{self, Pair};
use crate::abi::property_path;
use crate::abi::{AbiVersion, BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use crate::host::{HttpCallRequest, LocalResponse};
use crate::runtime::{Caller, HostFn, Trap, Val, ValType};

/// An entry of the Proxy-Wasm hostcall table.
pub type HostFunction = crate::runtime::HostFunction<HostState>;
use super::state::{Context, Deferred, HostState, Phase};
use crate::config::Quotas;
use crate::shared::{QueueLimits, QueueOwner, SharedError, Writer};

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
fn running(c: &mut dyn Caller<HostState>) -> Result<(), Status> {
    match c.state().phase {
        Phase::Running => Ok(()),
        Phase::Startup => Err(Status::InternalFailure),
    }
}

fn write_u32_result(c: &mut dyn Caller<HostState>, ptr: u32, v: u32) -> R {
    result(memory::write_u32(c.memory_and_state().0, ptr, v))
}

// ---------------------------------------------------------------- logging, time

/// The longest log line a plugin writes (`proxy_log`, or one WASI `fd_write`
/// call): longer messages are cut, so that a plugin cannot make the host copy
/// its whole memory into one line.
pub const MAX_LOG_LINE_BYTES: u32 = 64 * 1024;

fn proxy_log(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    let level = tri!(LogLevel::try_from(u(a, 0) as i32));
    let (ptr, len) = (u(a, 1), u(a, 2));
    // The whole message must be valid memory; only its head is copied.
    tri!(memory::check(c.memory_and_state().0, ptr, len));
    if !c.state().log_enabled(level) {
        // The server drops it: nothing to copy, decode or count.
        return done(Status::Ok);
    }
    let msg = read!(c, ptr, len.min(MAX_LOG_LINE_BYTES));
    let mut text = String::from_utf8_lossy(&msg).into_owned();
    if len > MAX_LOG_LINE_BYTES {
        text.push_str(&format!(" [{} more bytes not logged]", len - MAX_LOG_LINE_BYTES));
    }
    c.state().plugin_log(level, &text);
    done(Status::Ok)
}

fn proxy_get_log_level(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    let level = c.state().env.server.log_level() as u32;
    write_u32_result(c, u(a, 0), level)
}

fn proxy_get_current_time_nanoseconds(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    result(memory::write_u64(c.memory_and_state().0, u(a, 0), now))
}

fn proxy_set_tick_period_milliseconds(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let ms = u(a, 0);
    let st = c.state();
    let Some(root_id) = st.effective_root_id() else { return done(Status::BadArgument) };
    let mut period = (ms != 0).then(|| Duration::from_millis(ms as u64));
    if let Some(Context::Root(root)) = st.contexts.get_mut(&root_id) {
        // vm_config.limits.min_tick_period of the plugin whose root ticks.
        let min = root.plugin.quotas.min_tick_period;
        if let Some(p) = period.filter(|p| *p < min) {
            period = Some(min);
            root.tick_period = period;
            st.log_once(
                "min_tick_period",
                LogLevel::Warn,
                &format!(
                    "tick period of {} ms raised to {min:?} (vm_config.limits.min_tick_period) (logged once)",
                    p.as_millis()
                ),
            );
        } else {
            root.tick_period = period;
        }
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

/// Whether the host is configuring a root context: its `proxy_on_context_create`,
/// `proxy_on_configure` or `proxy_validate_configuration`. The reference host
/// offers the plugin configuration only then (cpp-host's `temp_plugin_`, set in
/// `ContextBase::onStart` / `onConfigure`, read by Envoy's `Context::getBuffer`).
fn configuring(st: &HostState) -> bool {
    match st.callback {
        Some("proxy_on_configure" | "proxy_validate_configuration") => true,
        Some("proxy_on_context_create") => matches!(st.contexts.get(&st.current_context), Some(Context::Root(_))),
        _ => false,
    }
}

/// Configuration buffers, read-only: the VM configuration in every callback,
/// the plugin configuration while its root context is configured (as Envoy's
/// `Context::getBuffer`); `None` where the buffer does not exist.
fn configuration(st: &HostState, ty: BufferType) -> Option<Vec<u8>> {
    match ty {
        BufferType::VmConfiguration => Some(st.env.vm_configuration.clone()),
        BufferType::PluginConfiguration if configuring(st) => st.effective_plugin().map(|p| p.configuration.clone()),
        _ => None,
    }
}

fn proxy_get_buffer_bytes(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
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
    let (ptr_ptr, size_ptr) = (u(a, 3), u(a, 4));
    if data.is_empty() && (ptr_ptr == 0 || size_ptr == 0) {
        // A zero-length read with a null return slot: OK, nothing written, as
        // cpp-host answered every zero-length read before its PR #303 (Envoy
        // <= 1.23). The AssemblyScript SDK 0.1.x relies on it: its default
        // `RootContext.onConfigure` passes the configuration size where the
        // size slot belongs, so an empty configuration gives a null size slot,
        // and writing a null pointer into its result slot makes it trap.
        // Well-formed slots get 0/0 written, as cpp-host does now.
        return done(Status::Ok);
    }
    done(return_bytes(c, &data, ptr_ptr, size_ptr)?)
}

fn proxy_set_buffer_bytes(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let ty = tri!(BufferType::try_from(u(a, 0) as i32));
    let (start, size) = (u(a, 1) as usize, u(a, 2) as usize);
    let data = read!(c, u(a, 3), u(a, 4));
    let st = c.state();
    if !matches!(ty, BufferType::HttpRequestBody | BufferType::HttpResponseBody) {
        // Only bodies can be edited; the others (configurations, the answer to an
        // http_call, call data) are read-only: BAD_ARGUMENT where they exist, as
        // cpp-host's BufferBase::copyFrom answers.
        let exists = configuration(st, ty).is_some() || buffer(st, ty).is_some();
        return done(if exists { Status::BadArgument } else { Status::NotFound });
    }
    let Some(buf) = buffer(st, ty) else { return done(Status::NotFound) };
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

fn proxy_get_buffer_status(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let ty = tri!(BufferType::try_from(u(a, 0) as i32));
    let st = c.state();
    let len = match configuration(st, ty).map(|v| v.len()).or_else(|| buffer(st, ty).map(|b| b.len())) {
        Some(len) => len,
        None => return done(Status::NotFound),
    };
    // cpp-host's get_buffer_status always writes 0 flags (the ABI calls them unused).
    let mem = c.memory_and_state().0;
    result(memory::write_u32(mem, u(a, 1), len as u32).and_then(|_| memory::write_u32(mem, u(a, 2), 0)))
}

/// ABI 0.1.0: the plugin configuration while configuring, else the VM
/// configuration (Envoy's `Context::getConfiguration`).
fn proxy_get_configuration(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let st = c.state();
    let data = if configuring(st) {
        st.effective_plugin().map(|p| p.configuration.clone()).unwrap_or_default()
    } else {
        st.env.vm_configuration.clone()
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
        MapType::HttpRequestHeaders
        | MapType::HttpRequestTrailers
        | MapType::HttpResponseHeaders
        | MapType::HttpResponseTrailers => {
            if st.effective_stream().is_some() {
                MapSource::Stream
            } else {
                MapSource::Absent
            }
        }
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers if st.http_call_response.is_some() => {
            MapSource::HttpCall
        }
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

/// The answer to an outgoing call's map, borrowed (`None`: not in this callback).
fn http_call_map(st: &HostState, map: MapType) -> Option<&[Pair]> {
    let r = st.http_call_response.as_ref()?;
    Some(if map == MapType::HttpCallResponseHeaders { &r.headers } else { &r.trailers })
}

/// The guest's bytes at argument `i` (pointer) and `i + 1` (length), borrowed
/// from its memory, or INVALID_MEMORY_ACCESS from the hostcall.
macro_rules! arg_bytes {
    ($mem:expr, $a:expr, $i:expr) => {
        tri!(memory::bytes($mem, u($a, $i), u($a, $i + 1)))
    };
}

fn proxy_get_header_map_pairs(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let pairs = tri!(read_map(c.state(), map));
    done(memory::return_with(c, pairs::encoded_len(&pairs), u(a, 1), u(a, 2), |out| pairs::encode_into(&pairs, out))?)
}

fn proxy_get_header_map_size(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let st = c.state();
    let size = match map_source(st, map) {
        MapSource::HttpCall => http_call_map(st, map).map_or(0, pairs::encoded_len),
        _ => pairs::encoded_len(&tri!(read_map(st, map))),
    };
    write_u32_result(c, u(a, 1), size as u32)
}

fn proxy_get_header_map_value(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let (mem, st) = c.memory_and_state();
    let key = arg_bytes!(mem, a, 1);
    let value = match map_source(st, map) {
        MapSource::Stream => tri!(st.effective_stream().map_or(Ok(None), |s| s.stream.header_value(map, key))),
        MapSource::HttpCall => http_call_map(st, map).and_then(|pairs| crate::host::value_in_pairs(pairs, key)),
        MapSource::Absent => None,
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
fn write_map(
    st: &mut HostState,
    map: MapType,
    f: impl FnOnce(&mut dyn crate::host::HttpStream) -> Result<(), Status>,
) -> R {
    match map_source(st, map) {
        MapSource::Stream => match st.effective_stream() {
            Some(s) => result(f(s.stream.as_mut())),
            None => done(Status::BadArgument),
        },
        _ => done(Status::BadArgument),
    }
}

fn proxy_set_header_map_pairs(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let (mem, st) = c.memory_and_state();
    let pairs = tri!(pairs::decode(arg_bytes!(mem, a, 1)));
    write_map(st, map, |s| s.set_header_map(map, pairs))
}

fn proxy_add_header_map_value(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let (mem, st) = c.memory_and_state();
    let (key, value) = (arg_bytes!(mem, a, 1), arg_bytes!(mem, a, 3));
    write_map(st, map, |s| s.add_header(map, key, value))
}

fn proxy_replace_header_map_value(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let (mem, st) = c.memory_and_state();
    let (key, value) = (arg_bytes!(mem, a, 1), arg_bytes!(mem, a, 3));
    write_map(st, map, |s| s.replace_header(map, key, value))
}

fn proxy_remove_header_map_value(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let map = tri!(MapType::try_from(u(a, 0) as i32));
    let (mem, st) = c.memory_and_state();
    let key = arg_bytes!(mem, a, 1);
    write_map(st, map, |s| s.remove_header(map, key))
}

// ---------------------------------------------------------------- stream control

/// Resumes a direction of the effective stream. As in Envoy's
/// `Context::continueStream`: without a stream (a root context) there is
/// nothing to resume and the answer is OK; there are no TCP streams here, so
/// Downstream is OK with no effect and Upstream UNIMPLEMENTED.
fn defer_resume(c: &mut dyn Caller<HostState>, stream: StreamType) -> R {
    tri!(running(c));
    match stream {
        StreamType::HttpRequest | StreamType::HttpResponse => {}
        StreamType::Downstream => return done(Status::Ok),
        StreamType::Upstream => return done(Status::Unimplemented),
    }
    let st = c.state();
    let context_id = st.effective_context;
    if st.effective_stream().is_none() {
        return done(Status::Ok);
    }
    // Applied when the current callback returns: a stream must not resume
    // while the plugin is still running inside it.
    let d = Deferred::Resume { context_id, stream };
    if !st.deferred.contains(&d) {
        st.deferred.push(d);
    }
    done(Status::Ok)
}

fn proxy_continue_stream(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    let stream = tri!(StreamType::try_from(u(a, 0) as i32));
    defer_resume(c, stream)
}

fn proxy_continue_request(c: &mut dyn Caller<HostState>, _a: &[Val]) -> R {
    defer_resume(c, StreamType::HttpRequest)
}

fn proxy_continue_response(c: &mut dyn Caller<HostState>, _a: &[Val]) -> R {
    defer_resume(c, StreamType::HttpResponse)
}

fn proxy_clear_route_cache(c: &mut dyn Caller<HostState>, _a: &[Val]) -> R {
    tri!(running(c));
    // Our servers pick the route after the request-header filters have run, so
    // there is no cached route to clear.
    done(Status::Ok)
}

/// Closes a direction of the effective stream. As in Envoy's
/// `Context::closeStream`: OK with no effect without a stream or for the TCP
/// stream types.
fn proxy_close_stream(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let stream = tri!(StreamType::try_from(u(a, 0) as i32));
    if !matches!(stream, StreamType::HttpRequest | StreamType::HttpResponse) {
        return done(Status::Ok);
    }
    let Some(s) = c.state().effective_stream() else { return done(Status::Ok) };
    let r = s.stream.close(stream);
    if r.is_ok() {
        s.closed = true;
    }
    result(r)
}

fn proxy_send_local_response(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let details = read!(c, u(a, 1), u(a, 2));
    let body = read!(c, u(a, 3), u(a, 4));
    let raw_headers = read!(c, u(a, 5), u(a, 6));
    let headers = tri!(pairs::decode(&raw_headers));
    let status = u(a, 0);
    if !(100..=999).contains(&status) {
        return done(Status::BadArgument);
    }
    let response = LocalResponse {
        status,
        details: String::from_utf8_lossy(&details).into_owned(),
        body,
        headers,
        grpc_status: u(a, 7) as i32,
    };
    // Envoy's Context::sendLocalResponse answers OK and does nothing without a stream.
    let Some(s) = c.state().effective_stream() else { return done(Status::Ok) };
    let r = s.stream.send_local_response(response);
    if r.is_ok() {
        s.local_response_sent = true;
    }
    result(r)
}

fn proxy_get_status(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
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

fn proxy_http_call(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let upstream = read!(c, u(a, 0), u(a, 1));
    let raw_headers = read!(c, u(a, 2), u(a, 3));
    let body = read!(c, u(a, 4), u(a, 5));
    let raw_trailers = read!(c, u(a, 6), u(a, 7));
    let timeout_ms = u(a, 8);
    let token_ptr = u(a, 9);
    // As cpp-host's http_call: the token slot is zeroed before anything else
    // can fail, so it reads 0 after any refusal.
    tri!(memory::write_u32(c.memory_and_state().0, token_ptr, 0));
    // Envoy takes the timeout as a signed int and refuses a negative one.
    if timeout_ms > i32::MAX as u32 {
        return done(Status::BadArgument);
    }
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
    if let Some(plugin) = st.calling_plugin() {
        if !plugin.authorizations.allows_upstream(&upstream) {
            st.log_denial(format!("http_call to {upstream:?}"), "not in authorizations.allowed_hosts");
            return done(Status::BadArgument);
        }
    }
    let Some(root_id) = st.effective_root_id() else { return done(Status::BadArgument) };
    let quotas = st.effective_plugin().map(|p| p.quotas).unwrap_or_default();
    // The caps answer INTERNAL_FAILURE, which the SDKs hand to the plugin as
    // an error (the Rust SDK's dispatch_http_call returns Err) without trapping.
    let pending = st.http_calls.values().filter(|(root, _)| *root == root_id).count();
    if pending >= quotas.max_pending_http_calls as usize {
        let message = format!("http_call to {upstream:?} refused (INTERNAL_FAILURE): {pending} calls of this plugin are waiting for their answer, the most vm_config.limits.max_pending_http_calls allows");
        st.log_limit("max_pending_http_calls", &message);
        return done(Status::InternalFailure);
    }
    if let Some(why) = st.env.server.http_calls_full() {
        st.log_limit("calls in flight", &format!("http_call to {upstream:?} refused (INTERNAL_FAILURE): {why}"));
        return done(Status::InternalFailure);
    }
    let dispatcher = st.effective_context;
    let token = st.allocate_http_call_token();
    let timeout = (timeout_ms != 0).then(|| Duration::from_millis(timeout_ms as u64));
    let request = HttpCallRequest {
        upstream,
        headers,
        body,
        trailers,
        timeout,
        max_response_size: quotas.max_http_call_response_size,
    };
    match st.env.server.dispatch_http_call(root_id, token, request) {
        Ok(()) => {
            st.http_calls.insert(token, (root_id, dispatcher));
            write_u32_result(c, token_ptr, token)
        }
        Err(Status::BadArgument) => done(Status::BadArgument),
        Err(_) => done(Status::InternalFailure),
    }
}

fn unimplemented(c: &mut dyn Caller<HostState>, _a: &[Val]) -> R {
    tri!(running(c));
    done(Status::Unimplemented)
}

// ---------------------------------------------------------------- shared data and queues

/// Where a shared-data key lives for the effective plugin, if it may read
/// (or write) there: its own VM's keys, or `<vm_id>::<key>` of another VM with
/// `global_map_access`. A denial is logged once.
fn shared_data_target(st: &mut HostState, key: &[u8], write: bool) -> Option<(String, Vec<u8>)> {
    let Some(plugin) = st.calling_plugin() else { return Some((st.env.vm_id.clone(), key.to_vec())) };
    let (vm_id, key, access) = plugin.authorizations.shared_data_target(&st.env.vm_id, key);
    if if write { access.write } else { access.read } {
        return Some((vm_id.to_string(), key.to_vec()));
    }
    let (what, setting) =
        if vm_id == st.env.vm_id { ("its own", "plugin_map_access") } else { ("another VM's", "global_map_access") };
    let verb = if write { "write" } else { "read" };
    st.log_denial(
        format!("shared data {verb} of vm_id {vm_id:?}"),
        &format!("authorizations.{setting}.{verb} is false for {what} shared data"),
    );
    None
}

fn proxy_get_shared_data(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
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

fn proxy_set_shared_data(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let key = read!(c, u(a, 0), u(a, 1));
    let value = read!(c, u(a, 2), u(a, 3));
    let st = c.state();
    let Some((vm_id, key)) = shared_data_target(st, &key, true) else { return done(Status::BadArgument) };
    // The writing plugin's VM pays for what it stores, in whichever VM's data.
    let writer = Writer { vm_id: &st.env.vm_id, max_bytes: quotas(st).max_shared_data_size };
    match st.env.shared_data.set_within(&vm_id, &key, &value, u(a, 4), writer) {
        Ok(()) => done(Status::Ok),
        Err(SharedError::CasMismatch) => done(Status::CasMismatch),
        // Over the cap or out of room: nothing is stored. The Rust SDK accepts
        // only OK and CAS_MISMATCH from this call (it panics on anything
        // else), and Envoy never refuses a set, so CAS_MISMATCH is the one
        // refusal a plugin survives; it is what a lost race looks like.
        Err(e) => {
            let cap = if matches!(e, SharedError::OverQuota { .. }) {
                "vm_config.limits.max_shared_data_size"
            } else {
                "the room in the store"
            };
            refusal(
                st,
                format!("set_shared_data over {cap}"),
                &format!("{e}; the write answered CAS_MISMATCH and stored nothing"),
            );
            done(Status::CasMismatch)
        }
    }
}

/// Logs once per plugin and `what` that a cap refused something.
fn refusal(st: &mut HostState, what: String, why: &str) {
    st.log_limit(&what, &format!("refused {what}: {why}"));
}

/// The effective plugin's caps (the defaults when no plugin context is effective).
fn quotas(st: &HostState) -> Quotas {
    st.effective_plugin().map_or_else(Quotas::default, |p| p.quotas)
}

/// What a queue hostcall does, for its authorization.
#[derive(Clone, Copy, PartialEq, Eq)]
enum QueueUse {
    Register,
    Resolve,
    Enqueue,
    Dequeue,
}

/// Whether the effective plugin may use the queues of `vm_id` that way: its
/// own VM's with `plugin_map_access`, another VM's with `global_map_access`
/// (dequeue reads, enqueue writes, register and resolve need either right). A
/// denial is logged once.
fn queue_allowed(st: &mut HostState, vm_id: &str, what: QueueUse) -> bool {
    let Some(plugin) = st.effective_plugin() else { return true };
    let access = plugin.authorizations.access_to(&st.env.vm_id, vm_id);
    let (allowed, verb, right) = match what {
        // Registering only names a queue of its own VM: any right there will do
        // (a write-only plugin may still register; its dequeues are denied).
        QueueUse::Register => (access.read || access.write, "register", "read and write are"),
        QueueUse::Resolve => (access.read || access.write, "resolve", "read and write are"),
        QueueUse::Enqueue => (access.write, "enqueue to", "write is"),
        QueueUse::Dequeue => (access.read, "dequeue from", "read is"),
    };
    if !allowed {
        let (whose, setting) = if vm_id == st.env.vm_id {
            ("its own", "plugin_map_access")
        } else {
            ("another VM's", "global_map_access")
        };
        st.log_denial(
            format!("shared queue {verb} a queue of vm_id {vm_id:?}"),
            &format!("authorizations.{setting}.{right} false for {whose} shared data and queues"),
        );
    }
    allowed
}

fn proxy_register_shared_queue(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let name = read!(c, u(a, 0), u(a, 1));
    tri!(memory::check(c.memory_and_state().0, u(a, 2), 4));
    let st = c.state();
    let Some(root_context_id) = st.effective_root_id() else { return done(Status::BadArgument) };
    let vm_id = st.env.vm_id.clone();
    // The SDKs accept only OK here: a denial answers BAD_ARGUMENT, as a denied shared-data write.
    if !queue_allowed(st, &vm_id, QueueUse::Register) {
        return done(Status::BadArgument);
    }
    let owner = QueueOwner { server: std::sync::Arc::downgrade(&st.env.server), root_context_id };
    let limits = QueueLimits::from_quotas(&quotas(st));
    let id = match st.env.queues.register(&vm_id, &String::from_utf8_lossy(&name), owner, limits) {
        Ok(id) => id,
        Err(e) => {
            refusal(st, "register_shared_queue".into(), &format!("{e}; answered INTERNAL_FAILURE"));
            return done(Status::InternalFailure);
        }
    };
    write_u32_result(c, u(a, 2), id)
}

fn proxy_resolve_shared_queue(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let vm_id = read!(c, u(a, 0), u(a, 1));
    let name = read!(c, u(a, 2), u(a, 3));
    tri!(memory::check(c.memory_and_state().0, u(a, 4), 4));
    let st = c.state();
    let vm_id = if vm_id.is_empty() { st.env.vm_id.clone() } else { String::from_utf8_lossy(&vm_id).into_owned() };
    // A queue the plugin may not use looks absent (NOT_FOUND, which SDKs handle).
    if !queue_allowed(st, &vm_id, QueueUse::Resolve) {
        return done(Status::NotFound);
    }
    match st.env.queues.resolve(&vm_id, &String::from_utf8_lossy(&name)) {
        Some(id) => write_u32_result(c, u(a, 4), id),
        None => done(Status::NotFound),
    }
}

fn proxy_enqueue_shared_queue(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let data = read!(c, u(a, 1), u(a, 2));
    let st = c.state();
    let id = u(a, 0);
    // Rights follow the queue's VM, whoever found out its id; a denied or
    // refused enqueue answers NOT_FOUND, the one refusal the Rust SDK accepts.
    let Some(vm_id) = st.env.queues.queue_vm_id(id) else { return done(Status::NotFound) };
    if !queue_allowed(st, &vm_id, QueueUse::Enqueue) {
        return done(Status::NotFound);
    }
    match st.env.queues.enqueue(id, &data) {
        Ok(()) => done(Status::Ok),
        Err(SharedError::NotFound) => done(Status::NotFound),
        Err(e) => {
            let cap = match e {
                SharedError::QueueFull { .. } => "max_queue_length",
                SharedError::OverQuota { .. } => "max_shared_data_size",
                _ => "the room in the store",
            };
            refusal(
                st,
                format!("enqueue to a queue of vm_id {vm_id:?} over {cap}"),
                &format!("{e}; the item was dropped and the call answered NOT_FOUND"),
            );
            done(Status::NotFound)
        }
    }
}

fn proxy_dequeue_shared_queue(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    {
        let mem = c.memory_and_state().0;
        tri!(memory::check(mem, u(a, 1), 4));
        tri!(memory::check(mem, u(a, 2), 4));
    }
    let st = c.state();
    let id = u(a, 0);
    let Some(vm_id) = st.env.queues.queue_vm_id(id) else { return done(Status::NotFound) };
    if !queue_allowed(st, &vm_id, QueueUse::Dequeue) {
        return done(Status::NotFound);
    }
    let data = match st.env.queues.dequeue(id) {
        Ok(data) => data,
        Err(SharedError::Empty) => return done(Status::Empty),
        Err(_) => return done(Status::NotFound),
    };
    done(return_bytes(c, &data, u(a, 1), u(a, 2))?)
}

// ---------------------------------------------------------------- metrics

fn proxy_define_metric(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let kind = tri!(MetricType::try_from(u(a, 0) as i32));
    let name = read!(c, u(a, 1), u(a, 2));
    tri!(memory::check(c.memory_and_state().0, u(a, 3), 4));
    let Ok(name) = String::from_utf8(name) else { return done(Status::BadArgument) };
    let st = c.state();
    let max_metrics = quotas(st).max_metrics;
    let vm_id = st.env.vm_id.clone();
    let id = match st.env.metrics.define_within(kind, &name, &vm_id, max_metrics) {
        Ok(id) => id,
        Err(SharedError::BadArgument) => return done(Status::BadArgument),
        // The SDKs accept only OK from define_metric: there is no refusal a
        // plugin survives, so it gets the one that says what happened.
        Err(e) => {
            let cap = if matches!(e, SharedError::TooManyMetrics { .. }) {
                "vm_config.limits.max_metrics"
            } else {
                "the room in the store"
            };
            refusal(
                st,
                format!("define_metric over {cap}"),
                &format!("metric {name:?}: {e}; answered INTERNAL_FAILURE"),
            );
            return done(Status::InternalFailure);
        }
    };
    write_u32_result(c, u(a, 3), id)
}

fn proxy_increment_metric(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    result(c.state().env.metrics.increment(u(a, 0), i64_arg(a, 1)))
}

fn proxy_record_metric(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    result(c.state().env.metrics.record(u(a, 0), i64_arg(a, 1) as u64))
}

fn proxy_get_metric(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
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
    let key = raw.strip_suffix(&[0]).unwrap_or(raw);
    if let Some(v) = st.effective().and_then(|c| c.properties().get(key)) {
        return Ok(Some(v.clone()));
    }
    let segments = property_path::split(raw);
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

fn proxy_get_property(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let path = read!(c, u(a, 0), u(a, 1));
    {
        let mem = c.memory_and_state().0;
        tri!(memory::check(mem, u(a, 2), 4));
        tri!(memory::check(mem, u(a, 3), 4));
    }
    let st = c.state();
    if let Some(plugin) = st.calling_plugin() {
        let segments = property_path::split(&path);
        if !plugin.authorizations.allows_property_read(&segments) {
            st.log_denial(
                format!("property read {}", property_name(&segments)),
                "not in authorizations.properties.read",
            );
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

fn proxy_set_property(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let path = read!(c, u(a, 0), u(a, 1));
    let value = read!(c, u(a, 2), u(a, 3));
    let key = normalize_path(&path);
    if key.is_empty() {
        return done(Status::BadArgument);
    }
    let st = c.state();
    if let Some(plugin) = st.calling_plugin() {
        let segments = property_path::split(&path);
        if !plugin.authorizations.allows_property_write(&segments) {
            st.log_denial(
                format!("property write {}", property_name(&segments)),
                "not in authorizations.properties.write",
            );
            return done(Status::BadArgument);
        }
    }
    if let Some(s) = st.effective_stream() {
        let segments = property_path::split(&path);
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

/// Any context of the instance may be made effective, as in
/// proxy-wasm-cpp-host (`set_effective_context` looks the id up among all the
/// contexts of the `WasmBase`), also one of another plugin sharing the
/// instance (same `vm_id` and code). The calling plugin keeps its own rights
/// and caps ([`HostState::calling_plugin`]): the other plugin's
/// authorizations never become the caller's.
fn proxy_set_effective_context(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let id = u(a, 0);
    let st = c.state();
    if id == 0 || !st.contexts.contains_key(&id) {
        return done(Status::BadArgument);
    }
    st.effective_context = id;
    done(Status::Ok)
}

fn proxy_done(c: &mut dyn Caller<HostState>, _a: &[Val]) -> R {
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

fn proxy_call_foreign_function(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    tri!(running(c));
    let name = read!(c, u(a, 0), u(a, 1));
    let arg = read!(c, u(a, 2), u(a, 3));
    let (results, results_size) = (u(a, 4), u(a, 5));
    {
        // A null result pointer means "not wanted" (cpp-host writes neither
        // slot then), so only non-null ones must be writable.
        let mem = c.memory_and_state().0;
        for ptr in [results, results_size] {
            if ptr != 0 {
                tri!(memory::check(mem, ptr, 4));
            }
        }
    }
    let name = String::from_utf8_lossy(&name).into_owned();
    let out = tri!(c.state().env.server.call_foreign_function(&name, &arg));
    let Ok(len) = u32::try_from(out.len()) else { return done(Status::InvalidMemoryAccess) };
    if results != 0 && results_size != 0 {
        return done(return_bytes(c, &out, results, results_size)?);
    }
    if results != 0 {
        let addr = if out.is_empty() {
            0
        } else {
            match memory::allocate(c, len)? {
                Some(addr) => addr,
                None => return done(Status::InvalidMemoryAccess),
            }
        };
        let mem = c.memory_and_state().0;
        return result(memory::write(mem, addr, &out).and_then(|_| memory::write_u32(mem, results, addr)));
    }
    if results_size != 0 {
        return write_u32_result(c, results_size, len);
    }
    done(Status::Ok)
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
                fn checked(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
                    if capability_denied(c, $name) {
                        return done(Status::InternalFailure);
                    }
                    $func(c, a)
                }
                HostFn::Caller(checked)
            },
        }
    };
}

/// Whether the calling plugin may not use `name` (logged once). As in
/// proxy-wasm-cpp-host (the stubs of `include/proxy-wasm/exports.h`), a denied
/// hostcall answers INTERNAL_FAILURE. Start-up code, which runs before any
/// plugin context, may use what every plugin of the instance allows
/// (`StartupPolicy`).
pub(crate) fn capability_denied(c: &mut dyn Caller<HostState>, name: &'static str) -> bool {
    let st = c.state();
    if !st.restricted {
        return false;
    }
    let why = match st.calling_plugin() {
        Some(plugin) if plugin.authorizations.allows_capability(name) => return false,
        Some(_) => "not in capability_restriction_config.allowed_capabilities",
        None if st.env.startup.authorizations.allows_capability(name) => return false,
        None => "start-up code (_initialize, main, _start) runs for every plugin of the VM and may only use what all of their capability_restriction_config.allowed_capabilities allow",
    };
    let kind = if crate::hostcalls::wasi::FUNCTIONS.iter().any(|(n, _, _)| *n == name) && !name.starts_with("proxy_") {
        "WASI call"
    } else {
        "hostcall"
    };
    st.log_denial(format!("{kind} {name}"), why);
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

/// `pthread_equal(a, b)`: whether two thread ids are equal (there is one thread).
fn pthread_equal(_c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
    Ok(Some(Val::I32((u(a, 0) == u(a, 1)) as i32)))
}

/// Emscripten's notification that memory grew: nothing to do.
fn emscripten_notify_memory_growth(_c: &mut dyn Caller<HostState>, _a: &[Val]) -> R {
    Ok(None)
}

/// `env` functions cpp-host gives every module besides the ABI (Emscripten
/// builds of the C++ SDK import them); outside capability restrictions, as there.
static RUNTIME_SUPPORT: &[HostFunction] = &[
    HostFunction {
        module: "env",
        name: "pthread_equal",
        params: &[I32, I32],
        results: &[I32],
        func: HostFn::Caller(pthread_equal),
    },
    HostFunction {
        module: "env",
        name: "emscripten_notify_memory_growth",
        params: &[I32],
        results: &[],
        func: HostFn::Caller(emscripten_notify_memory_growth),
    },
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
    COMMON.iter().chain(a).chain(b).chain(c).chain(RUNTIME_SUPPORT)
}

/// Names of hostcalls that answer UNIMPLEMENTED (listed in the docs).
pub const UNIMPLEMENTED: &[&str] =
    &["proxy_grpc_call", "proxy_grpc_stream", "proxy_grpc_send", "proxy_grpc_cancel", "proxy_grpc_close"];

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
