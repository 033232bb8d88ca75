//! `proxy_http_call` on the worker's event loop: a non-blocking HTTP/1.1
//! exchange over a connection made with `ngx_event_connect_peer`, with a
//! timer for the timeout. Any number of calls run at once. Every outcome,
//! failures and timeouts included, reaches `proxy_on_http_call_response`
//! (with zero headers on failure), from an event handler, never from inside
//! the VM callback that dispatched it.
//!
//! Upstreams are IP addresses (`127.0.0.1:8080`, `[::1]:8080`),
//! `localhost`, or names resolved by nginx's resolver (the `resolver`
//! directive of the `http` block, non-blocking); without a `resolver` a
//! name is refused with BAD_ARGUMENT and a log line saying so.
//!
//! Connections are kept alive where the upstream allows it (HTTP/1.1, a
//! response framed by Content-Length or chunked encoding, no
//! `Connection: close`): each worker keeps up to [`POOL_PER_ADDRESS`] idle
//! connections per address for [`POOL_IDLE`], and a call to that address
//! takes one instead of connecting. A kept connection the upstream closed
//! meanwhile is replaced by a new one (the request is sent again).
//!
//! Each VM numbers its calls itself (from 1, and again from 1 in a recycled
//! or reloaded generation), so the worker keeps its calls by (VM, token):
//! the VM is its [`NgxServer`](super::server::NgxServer)'s id, unique in
//! the worker for its whole life. Keyed by the token alone, a second VM's
//! call replaced (and freed) the first one's while nginx still held its
//! timer and connection, and one VM's cancellation ended another's call.

use ngx::http::HttpModuleLocationConf;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::net::{IpAddr, SocketAddr};
use std::sync::Weak;

use ngx::ffi::*;

use super::base::{log, post_event};
use super::base::{new_event, with_vm, WorkerVms};
use proxy_wasm_host::abi::{LogLevel, Status};
use proxy_wasm_host::host::{HttpCallRequest, HttpCallResponse};
use proxy_wasm_host::http_client::{self, FAILURE_CONNECT, FAILURE_PROTOCOL, FAILURE_TIMEOUT};
use proxy_wasm_host::http_response::{Progress, ResponseParser};

/// Idle kept-alive connections per upstream address and worker.
pub const POOL_PER_ADDRESS: usize = 8;
/// How long an idle kept-alive connection is kept.
pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// `ngx_resolve_start`'s answer when no name server is configured.
const NGX_NO_RESOLVER: *mut ngx_resolver_ctx_t = -1isize as *mut ngx_resolver_ctx_t;

/// A call of this worker: (the id of the VM's server, the VM's token).
pub type CallKey = (u64, u32);

struct Call {
    key: CallKey,
    generation: Weak<WorkerVms>,
    vm: usize,
    pc: ngx_peer_connection_t,
    sockaddr: libc::sockaddr_storage,
    name: ngx_str_t,
    name_bytes: Vec<u8>,
    /// The host name being resolved (ctx->name points into it).
    host: Vec<u8>,
    port: u16,
    resolving: *mut ngx_resolver_ctx_t,
    /// The address connected to (the key of the connection pool).
    addr: Option<SocketAddr>,
    /// The connection came from the pool (retried once on a fresh one if
    /// the upstream had closed it).
    reused: bool,
    out: Vec<u8>,
    sent: usize,
    /// The answer, read as it arrives (each byte looked at once).
    parser: ResponseParser,
    /// The request was HEAD (no body in the answer).
    head: bool,
    /// `max_response_size` of the request.
    limit: u64,
    timer: ngx_event_t,
    /// Posted to deliver the answer (also used for failures at dispatch).
    deliver: ngx_event_t,
    response: Option<HttpCallResponse>,
}

thread_local! {
    /// The calls of this worker, by VM and token. Boxes: nginx holds
    /// pointers to their events, so an entry is only removed by the code
    /// that takes its events off nginx's queues.
    static CALLS: RefCell<HashMap<CallKey, Box<Call>>> = RefCell::new(HashMap::new());
    /// Idle kept-alive connections of this worker, by upstream address.
    static POOL: RefCell<HashMap<SocketAddr, Vec<PooledConn>>> = RefCell::new(HashMap::new());
}

/// An idle connection in the pool (only touched on the worker's thread).
struct PooledConn(*mut ngx_connection_t);

fn literal_address(host: &str, port: u16) -> Option<SocketAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
}

/// The resolver of the `http` block (`resolver` directive) and its timeout;
/// `None` when no name server is configured.
fn http_resolver() -> Option<(*mut ngx_resolver_t, ngx_msec_t)> {
    // SAFETY: the cycle's configuration: conf_ctx has a slot per core module;
    // the http slot is an ngx_http_conf_ctx_t whose loc_conf holds the
    // http-level ngx_http_core_loc_conf_t at the core module's ctx_index.
    unsafe {
        let cycle = ngx_cycle;
        if cycle.is_null() {
            return None;
        }
        let ctx = *(*cycle).conf_ctx.add(ngx_http_module.index) as *mut ngx_http_conf_ctx_t;
        if ctx.is_null() {
            return None;
        }
        let clcf = ngx::http::NgxHttpCoreModule::location_conf(&*ctx)?;
        if clcf.resolver.is_null() || (*clcf.resolver).connections.nelts == 0 {
            return None;
        }
        Some((clcf.resolver, clcf.resolver_timeout))
    }
}

/// Most calls in flight per worker (`PROXY_WASM_HOST_MAX_HTTP_CALLS_IN_FLIGHT`,
/// default 4096); more are refused (INTERNAL_FAILURE).
fn max_calls_in_flight() -> usize {
    http_client::max_calls_in_flight(|w| log(LogLevel::Warn, &format!("[proxy_wasm] {w}")))
}

/// Why this worker takes no more calls now, if it does not.
pub fn calls_full() -> Option<String> {
    let in_flight = CALLS.with(|c| c.borrow().len());
    let max = max_calls_in_flight();
    (in_flight >= max).then(|| {
        format!(
            "{in_flight} calls are in flight in this worker (pid {}), the most a worker allows ({} {max})",
            std::process::id(),
            http_client::MAX_CALLS_IN_FLIGHT_ENV
        )
    })
}

/// Starts call `key` of VM `vm` of `generation`.
pub fn dispatch_http_call(
    generation: Weak<WorkerVms>,
    vm: usize,
    key: CallKey,
    request: HttpCallRequest,
) -> Result<(), Status> {
    let (host, port) = http_client::parse_upstream(&request.upstream).ok_or(Status::BadArgument)?;
    let literal = literal_address(&host, port);
    let resolver = if literal.is_none() {
        match http_resolver() {
            Some(r) => Some(r),
            None => {
                log(LogLevel::Warn, &format!("[proxy_wasm] http_call to {:?}: the name cannot be resolved: configure `resolver` in the http block of nginx.conf", request.upstream));
                return Err(Status::BadArgument);
            }
        }
    } else {
        None
    };
    let (in_flight, taken) = CALLS.with(|c| {
        let c = c.borrow();
        (c.len(), c.contains_key(&key))
    });
    if in_flight >= max_calls_in_flight() {
        return Err(Status::InternalFailure);
    }
    if taken {
        // A VM never hands out the token of a call it still waits for; if it
        // did, replacing the pending call would free what nginx points at.
        log(
            LogLevel::Critical,
            &format!("[proxy_wasm] internal error: http_call token {} dispatched twice by one VM; refused", key.1),
        );
        return Err(Status::InternalFailure);
    }
    let head = request.headers.iter().any(|(k, v)| k == b":method" && v.eq_ignore_ascii_case(b"HEAD"));
    let out = http_client::encode_request_keep_alive(&request);
    // SAFETY: plain C structures (integers, pointers, function pointers that
    // may be NULL) for which all-zero is the initial state nginx expects
    // (it callocs its own peer connections); filled below.
    let (pc, sockaddr) =
        unsafe { (std::mem::zeroed::<ngx_peer_connection_t>(), std::mem::zeroed::<libc::sockaddr_storage>()) };
    let mut call = Box::new(Call {
        key,
        generation,
        vm,
        pc,
        sockaddr,
        name: ngx_str_t { len: 0, data: std::ptr::null_mut() },
        name_bytes: request.upstream.clone().into_bytes(),
        host: host.clone().into_bytes(),
        port,
        resolving: std::ptr::null_mut(),
        addr: None,
        reused: false,
        out,
        sent: 0,
        parser: ResponseParser::new(head, request.max_response_size),
        head,
        limit: request.max_response_size,
        timer: new_event(on_timeout, std::ptr::null_mut()),
        deliver: new_event(on_deliver, std::ptr::null_mut()),
        response: None,
    });
    let raw: *mut Call = &mut *call;
    call.timer.data = raw as *mut c_void;
    call.deliver.data = raw as *mut c_void;
    call.name = ngx_str_t { len: call.name_bytes.len(), data: call.name_bytes.as_mut_ptr() };
    let timeout = request.timeout.filter(|t| !t.is_zero()).unwrap_or(http_client::MAX_CALL_TIME);
    // SAFETY: the timer lives in the boxed call, removed in `close`.
    unsafe { ngx_add_timer(&mut call.timer, timeout.as_millis().max(1) as ngx_msec_t) };
    CALLS.with(|c| c.borrow_mut().insert(key, call));
    match (literal, resolver) {
        // SAFETY: the call is alive in CALLS.
        (Some(addr), _) => unsafe { connect(raw, addr) },
        // SAFETY: as above; the resolver context points into the boxed call.
        (None, Some((resolver, resolver_timeout))) => unsafe {
            let ctx = ngx_resolve_start(resolver, std::ptr::null_mut());
            if ctx.is_null() || ctx == NGX_NO_RESOLVER {
                finish(raw, HttpCallResponse::failed(FAILURE_CONNECT, format!("cannot resolve {host}: no resolver")));
                return Ok(());
            }
            (*ctx).name = ngx_str_t { len: (*raw).host.len(), data: (*raw).host.as_mut_ptr() };
            (*ctx).handler = Some(on_resolved);
            (*ctx).data = raw as *mut c_void;
            (*ctx).timeout = resolver_timeout;
            (*raw).resolving = ctx;
            // The handler may run at once (a cached name).
            if ngx_resolve_name(ctx) != NGX_OK as ngx_int_t {
                // nginx freed the context.
                (*raw).resolving = std::ptr::null_mut();
                finish(raw, HttpCallResponse::failed(FAILURE_CONNECT, format!("cannot resolve {host}")));
            }
        },
        // A name without a resolver was refused above.
        // SAFETY: the call is alive in CALLS.
        (None, None) => unsafe { finish(raw, HttpCallResponse::failed(FAILURE_CONNECT, "no resolver")) },
    }
    Ok(())
}

/// nginx's resolver answered (or failed, or timed out).
unsafe extern "C" fn on_resolved(ctx: *mut ngx_resolver_ctx_t) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the context was started for a live call (its data); a
        // cancelled call ends the resolution first, so the call is alive.
        unsafe {
            let call = (*ctx).data as *mut Call;
            (*call).resolving = std::ptr::null_mut();
            let state = (*ctx).state;
            let mut addr = None;
            if state == 0 && (*ctx).naddrs > 0 {
                let a = &*(*ctx).addrs;
                addr = sockaddr_to(a.sockaddr as *const libc::sockaddr, (*call).port);
            }
            ngx_resolve_name_done(ctx);
            let host = String::from_utf8_lossy(&(*call).host).into_owned();
            match addr {
                Some(addr) => connect(call, addr),
                None if state != 0 => finish(
                    call,
                    HttpCallResponse::failed(
                        FAILURE_CONNECT,
                        format!("cannot resolve {host} (resolver error {state})"),
                    ),
                ),
                None => finish(
                    call,
                    HttpCallResponse::failed(FAILURE_CONNECT, format!("cannot resolve {host}: no address")),
                ),
            }
        }
    });
}

/// A resolved socket address with the call's port.
unsafe fn sockaddr_to(sa: *const libc::sockaddr, port: u16) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: a sockaddr from nginx's resolver, of the family it says.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(SocketAddr::new(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()), port))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(SocketAddr::new(IpAddr::from(sin6.sin6_addr.s6_addr), port))
            }
            _ => None,
        }
    }
}

/// An idle connection to `addr` from the pool, still open.
fn take_pooled(addr: SocketAddr) -> Option<*mut ngx_connection_t> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(&addr)?;
        let c = list.pop()?.0;
        if list.is_empty() {
            p.remove(&addr);
        }
        Some(c)
    })
}

/// Connects (or takes a kept-alive connection) to `addr` and sends the request.
unsafe fn connect(call: *mut Call, addr: SocketAddr) {
    // SAFETY: a live call (caller), boxed in CALLS.
    unsafe {
        (*call).addr = Some(addr);
        if let Some(c) = take_pooled(addr) {
            if (*(*c).read).timer_set() != 0 {
                ngx_del_timer((*c).read);
            }
            (*c).set_idle(0);
            (*call).reused = true;
            (*call).pc.connection = c;
            attach(call, c);
            send_more(call);
            return;
        }
        (*call).reused = false;
        let socklen = match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large enough for sockaddr_in.
                let sin = &mut *(&mut (*call).sockaddr as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
                let sin6 = &mut *(&mut (*call).sockaddr as *mut _ as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (*call).pc = std::mem::zeroed();
        (*call).pc.sockaddr = &mut (*call).sockaddr as *mut _ as *mut sockaddr;
        (*call).pc.socklen = socklen as socklen_t;
        (*call).pc.name = &mut (*call).name;
        (*call).pc.get = Some(ngx_event_get_peer);
        (*call).pc.log = (*call).timer.log;
        (*call).pc.set_log_error(1); // NGX_ERROR_ERR: connect errors at error level
                                     // The peer connection points into the boxed call, alive until closed.
        let rc = ngx_event_connect_peer(&mut (*call).pc);
        if rc == NGX_ERROR as ngx_int_t
            || rc == NGX_BUSY as ngx_int_t
            || rc == NGX_DECLINED as ngx_int_t
            || (*call).pc.connection.is_null()
        {
            let upstream = String::from_utf8_lossy(&(*call).name_bytes).into_owned();
            finish(call, HttpCallResponse::failed(FAILURE_CONNECT, format!("cannot connect to {upstream}")));
            return;
        }
        attach(call, (*call).pc.connection);
        if rc == NGX_OK as ngx_int_t {
            // Connected at once: send now (no VM is entered).
            send_more(call);
        }
    }
}

/// Points a connection's events at a call.
unsafe fn attach(call: *mut Call, c: *mut ngx_connection_t) {
    // SAFETY: a live connection and call (caller).
    unsafe {
        (*c).data = call as *mut c_void;
        (*(*c).read).handler = Some(on_read);
        (*(*c).write).handler = Some(on_write);
        (*c).log = (*call).pc.log;
        if (*c).log.is_null() {
            (*c).log = (*call).timer.log;
        }
        (*(*c).read).log = (*c).log;
        (*(*c).write).log = (*c).log;
    }
}

/// Puts the call's connection into the pool (the response ended cleanly and
/// the upstream keeps it); closes it when the pool is full.
unsafe fn release_to_pool(call: *mut Call) {
    // SAFETY: a live call with an open connection (caller).
    unsafe {
        let c = (*call).pc.connection;
        let Some(addr) = (*call).addr else { return };
        if c.is_null() {
            return;
        }
        (*call).pc.connection = std::ptr::null_mut();
        let full = POOL.with(|p| p.borrow().get(&addr).is_some_and(|l| l.len() >= POOL_PER_ADDRESS));
        // SAFETY: worker shutdown: ngx_close_idle_connections calls the read
        // handler of idle connections with c->close set.
        if full || ngx_exiting != 0 || ngx_terminate != 0 || ngx_quit != 0 {
            ngx_close_connection(c);
            return;
        }
        (*c).data = std::ptr::null_mut();
        (*(*c).read).handler = Some(on_idle_event);
        (*(*c).write).handler = Some(on_idle_event);
        (*c).set_idle(1);
        (*(*c).read).set_cancelable(1);
        ngx_add_timer((*c).read, POOL_IDLE.as_millis() as ngx_msec_t);
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
            ngx_close_connection(c);
            return;
        }
        POOL.with(|p| p.borrow_mut().entry(addr).or_default().push(PooledConn(c)));
    }
}

/// An idle pooled connection became readable (the upstream closed it or sent
/// something unasked), timed out, or the worker is shutting down: closed.
unsafe extern "C" fn on_idle_event(ev: *mut ngx_event_t) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the event belongs to a pooled connection (its data).
        unsafe {
            let c = (*ev).data as *mut ngx_connection_t;
            if (*ev).write() != 0 && (*ev).timedout() == 0 && (*c).close() == 0 {
                return;
            }
            if (*ev).timedout() == 0 && (*c).close() == 0 {
                let mut byte = 0u8;
                let n = libc::recv((*c).fd, &mut byte as *mut u8 as *mut c_void, 1, libc::MSG_PEEK);
                if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                    return;
                }
            }
            POOL.with(|p| {
                for list in p.borrow_mut().values_mut() {
                    list.retain(|x| x.0 != c);
                }
                p.borrow_mut().retain(|_, l| !l.is_empty());
            });
            ngx_close_connection(c);
        }
    });
}

/// Closes the connection and stops the timer; the call stays until delivered.
unsafe fn close(call: *mut Call) {
    // SAFETY: a live call (caller).
    unsafe {
        if (*call).timer.timer_set() != 0 {
            ngx_del_timer(&mut (*call).timer);
        }
        if !(*call).resolving.is_null() {
            ngx_resolve_name_done((*call).resolving);
            (*call).resolving = std::ptr::null_mut();
        }
        let c = (*call).pc.connection;
        if !c.is_null() {
            ngx_close_connection(c);
            (*call).pc.connection = std::ptr::null_mut();
        }
    }
}

/// Ends a call with `response`: delivered from a posted event.
unsafe fn finish(call: *mut Call, response: HttpCallResponse) {
    // SAFETY: a live call (caller).
    unsafe {
        close(call);
        if (*call).response.is_none() {
            (*call).response = Some(response);
            post_event(&mut (*call).deliver);
        }
    }
}

unsafe fn send_more(call: *mut Call) {
    // SAFETY: a live call with an open connection (caller).
    unsafe {
        let c = (*call).pc.connection;
        if c.is_null() {
            return;
        }
        while (*call).sent < (*call).out.len() {
            let rest = &(&(*call).out)[(*call).sent..];
            let n = libc::send((*c).fd, rest.as_ptr() as *const c_void, rest.len(), libc::MSG_NOSIGNAL);
            if n > 0 {
                (*call).sent += n as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            if n < 0 && err.kind() == std::io::ErrorKind::WouldBlock {
                if ngx_handle_write_event((*c).write, 0) != NGX_OK as ngx_int_t {
                    finish(call, HttpCallResponse::failed(FAILURE_CONNECT, "cannot wait for the connection"));
                }
                return;
            }
            if n < 0 && err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            finish(call, HttpCallResponse::failed(FAILURE_CONNECT, format!("send: {err}")));
            return;
        }
        // Request sent: wait for the answer.
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
            finish(call, HttpCallResponse::failed(FAILURE_CONNECT, "cannot wait for the answer"));
        }
    }
}

unsafe extern "C" fn on_write(ev: *mut ngx_event_t) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the event's connection carries its call (set at dispatch).
        unsafe {
            let c = (*ev).data as *mut ngx_connection_t;
            let call = (*c).data as *mut Call;
            send_more(call);
        }
    });
}

unsafe extern "C" fn on_read(ev: *mut ngx_event_t) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: as on_write.
        unsafe {
            let c = (*ev).data as *mut ngx_connection_t;
            let call = (*c).data as *mut Call;
            let mut buf = [0u8; 16384];
            loop {
                let n = libc::recv((*c).fd, buf.as_mut_ptr() as *mut c_void, buf.len(), 0);
                if n > 0 {
                    let n = n as usize;
                    match (*call).parser.feed(&buf[..n]) {
                        Ok(Progress::NeedMore) => continue,
                        Ok(Progress::Complete { used }) => {
                            // Bytes past the answer: the connection is not clean.
                            let clean = used == n && (*call).parser.keep_alive();
                            let parser = take_parser(call);
                            if clean {
                                release_to_pool(call);
                            }
                            finish(call, parser.into_response());
                        }
                        Err(e) => finish(call, http_client::parse_failure(&e)),
                    }
                    return;
                }
                if n == 0 && (*call).reused && (*call).parser.seen() == 0 {
                    // The upstream closed the kept connection meanwhile: once more on a new one.
                    retry_fresh(call);
                    return;
                }
                if n == 0 {
                    let mut parser = take_parser(call);
                    let response = match parser.finish() {
                        Ok(()) => parser.into_response(),
                        Err(e) => http_client::parse_failure(&e),
                    };
                    finish(call, response);
                    return;
                }
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::WouldBlock => {
                        if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
                            finish(call, HttpCallResponse::failed(FAILURE_CONNECT, "cannot wait for the answer"));
                        }
                        return;
                    }
                    std::io::ErrorKind::Interrupted => continue,
                    _ => {
                        finish(call, HttpCallResponse::failed(FAILURE_CONNECT, format!("recv: {err}")));
                        return;
                    }
                }
            }
        }
    });
}

/// The call's parser, with its answer (a fresh one takes its place).
unsafe fn take_parser(call: *mut Call) -> ResponseParser {
    // SAFETY: a live call (caller).
    unsafe { std::mem::replace(&mut (*call).parser, ResponseParser::new((*call).head, (*call).limit)) }
}

/// Sends the request again on a new connection (a kept one was closed).
unsafe fn retry_fresh(call: *mut Call) {
    // SAFETY: a live call (caller).
    unsafe {
        let c = (*call).pc.connection;
        if !c.is_null() {
            ngx_close_connection(c);
            (*call).pc.connection = std::ptr::null_mut();
        }
        (*call).sent = 0;
        (*call).reused = false;
        match (*call).addr {
            Some(addr) => {
                // Never from the pool again for this call: a fresh connection.
                (*call).pc = std::mem::zeroed();
                connect_fresh(call, addr);
            }
            None => finish(call, HttpCallResponse::failed(FAILURE_CONNECT, "connection closed")),
        }
    }
}

/// As `connect`, without the pool.
unsafe fn connect_fresh(call: *mut Call, addr: SocketAddr) {
    // Empty the pool entry's view for this call: take nothing from it.
    let saved = POOL.with(|p| p.borrow_mut().remove(&addr));
    // SAFETY: a live call (caller).
    unsafe { connect(call, addr) };
    if let Some(saved) = saved {
        POOL.with(|p| p.borrow_mut().entry(addr).or_default().extend(saved));
    }
}

unsafe extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the timer's data is its live call.
        unsafe { finish((*ev).data as *mut Call, HttpCallResponse::failed(FAILURE_TIMEOUT, "timeout")) };
    });
}

unsafe extern "C" fn on_deliver(ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: the event's data is its live call; it is taken out of CALLS here.
        let key = unsafe { (*((*ev).data as *mut Call)).key };
        let Some(mut call) = CALLS.with(|c| c.borrow_mut().remove(&key)) else { return };
        // SAFETY: closes what is left of the call before it is freed.
        unsafe { close(&mut *call) };
        let response =
            call.response.take().unwrap_or_else(|| HttpCallResponse::failed(FAILURE_PROTOCOL, "no response"));
        with_vm(&call.generation, call.vm, "on_http_call_response", |vm| vm.on_http_call_response(key.1, response));
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) delivering an http_call response");
    }
}

/// The context that made call `key` went away: the call ends without an answer.
pub fn cancel_http_call(key: CallKey) {
    let call = CALLS.with(|c| c.borrow_mut().remove(&key));
    if let Some(mut call) = call {
        // SAFETY: the call is ours now; its events are taken off nginx's queues.
        unsafe {
            close(&mut *call);
            if call.deliver.posted() != 0 {
                ngx_delete_posted_event(&mut call.deliver);
            }
        }
    }
}
