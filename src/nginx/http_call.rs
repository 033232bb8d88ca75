//! `proxy_http_call` on the worker's event loop: a non-blocking HTTP/1.1
//! exchange over a connection made with `ngx_event_connect_peer`
//! (`Connection: close`; the response is read until the upstream closes,
//! then parsed), with a timer for the timeout. Any number of calls run at
//! once. Every outcome, failures and timeouts included, reaches
//! `proxy_on_http_call_response` (with zero headers on failure), from an
//! event handler, never from inside the VM callback that dispatched it.
//!
//! Upstreams are IP addresses (`127.0.0.1:8080`, `[::1]:8080`) or
//! `localhost`; other names are refused with BAD_ARGUMENT (no blocking DNS
//! on the event loop).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::net::{IpAddr, SocketAddr};
use std::sync::Weak;

use ngx::ffi::*;

use super::server::{log, post_event};
use super::worker::{new_event, with_vm, Slot};
use crate::abi::{LogLevel, Status};
use crate::host::{HttpCallRequest, HttpCallResponse};
use crate::http_client::{self, FAILURE_CONNECT, FAILURE_PROTOCOL, FAILURE_TIMEOUT};

/// Most calls in flight per worker; more are refused (INTERNAL_FAILURE).
pub const MAX_CALLS_IN_FLIGHT: usize = 4096;

struct Call {
    token: u32,
    slot: Weak<Slot>,
    vm: usize,
    pc: ngx_peer_connection_t,
    sockaddr: libc::sockaddr_storage,
    name: ngx_str_t,
    name_bytes: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    input: Vec<u8>,
    head: bool,
    timer: ngx_event_t,
    /// Posted to deliver the answer (also used for failures at dispatch).
    deliver: ngx_event_t,
    response: Option<HttpCallResponse>,
}

thread_local! {
    /// The calls of this worker, by token. Boxes: nginx holds pointers to their events.
    static CALLS: RefCell<HashMap<u32, Box<Call>>> = RefCell::new(HashMap::new());
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
}

pub fn dispatch_http_call(slot: Weak<Slot>, vm: usize, _root: u32, token: u32, request: HttpCallRequest) -> Result<(), Status> {
    let (host, port) = http_client::parse_upstream(&request.upstream).ok_or(Status::BadArgument)?;
    let Some(addr) = resolve(&host, port) else {
        log(LogLevel::Warn, &format!("[proxy_wasm] http_call to {:?}: only IP addresses and localhost are supported", request.upstream));
        return Err(Status::BadArgument);
    };
    if CALLS.with(|c| c.borrow().len()) >= MAX_CALLS_IN_FLIGHT {
        return Err(Status::InternalFailure);
    }
    let head = request.headers.iter().any(|(k, v)| k == b":method" && v.eq_ignore_ascii_case(b"HEAD"));
    let out = http_client::encode_request(&request);
    // SAFETY: zeroed C structures are their initial state; filled below.
    let mut call = Box::new(Call {
        token,
        slot,
        vm,
        pc: unsafe { std::mem::zeroed() },
        sockaddr: unsafe { std::mem::zeroed() },
        name: ngx_str_t { len: 0, data: std::ptr::null_mut() },
        name_bytes: request.upstream.clone().into_bytes(),
        out,
        sent: 0,
        input: Vec::new(),
        head,
        timer: new_event(on_timeout, std::ptr::null_mut()),
        deliver: new_event(on_deliver, std::ptr::null_mut()),
        response: None,
    });
    let raw: *mut Call = &mut *call;
    call.timer.data = raw as *mut c_void;
    call.deliver.data = raw as *mut c_void;
    let socklen = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut call.sockaddr as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut call.sockaddr as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    call.name = ngx_str_t { len: call.name_bytes.len(), data: call.name_bytes.as_mut_ptr() };
    call.pc.sockaddr = &mut call.sockaddr as *mut _ as *mut sockaddr;
    call.pc.socklen = socklen as socklen_t;
    call.pc.name = &mut call.name;
    call.pc.get = Some(ngx_event_get_peer);
    call.pc.log = call.timer.log;
    call.pc.set_log_error(1); // NGX_ERROR_ERR: connect errors at error level
    // SAFETY: the peer connection points into the boxed call, which stays
    // alive (in CALLS) until the connection is closed.
    let rc = unsafe { ngx_event_connect_peer(&mut call.pc) };
    if rc == NGX_ERROR as ngx_int_t || rc == NGX_BUSY as ngx_int_t || rc == NGX_DECLINED as ngx_int_t || call.pc.connection.is_null() {
        call.response = Some(HttpCallResponse::failed(FAILURE_CONNECT, format!("cannot connect to {}", request.upstream)));
        post_event(&mut call.deliver);
        CALLS.with(|c| c.borrow_mut().insert(token, call));
        return Ok(());
    }
    // SAFETY: the connection made above; its events call back with it.
    unsafe {
        let c = call.pc.connection;
        (*c).data = raw as *mut c_void;
        (*(*c).read).handler = Some(on_read);
        (*(*c).write).handler = Some(on_write);
        (*c).log = call.pc.log;
        (*(*c).read).log = (*c).log;
        (*(*c).write).log = (*c).log;
        if let Some(t) = request.timeout.filter(|t| !t.is_zero()) {
            ngx_add_timer(&mut call.timer, t.as_millis().max(1) as ngx_msec_t);
        } else {
            ngx_add_timer(&mut call.timer, http_client::MAX_CALL_TIME.as_millis() as ngx_msec_t);
        }
    }
    CALLS.with(|c| c.borrow_mut().insert(token, call));
    if rc == NGX_OK as ngx_int_t {
        // Connected at once: send now (no VM is entered).
        // SAFETY: the call is alive in CALLS.
        unsafe { send_more(raw) };
    }
    Ok(())
}

/// Closes the connection and stops the timer; the call stays until delivered.
unsafe fn close(call: *mut Call) {
    // SAFETY: a live call (caller).
    unsafe {
        if (*call).timer.timer_set() != 0 {
            ngx_del_timer(&mut (*call).timer);
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
                    (*call).input.extend_from_slice(&buf[..n as usize]);
                    if (*call).input.len() > http_client::MAX_RESPONSE_BYTES {
                        finish(call, HttpCallResponse::failed(FAILURE_PROTOCOL, "response too large"));
                        return;
                    }
                    continue;
                }
                if n == 0 {
                    let input = std::mem::take(&mut (*call).input);
                    let response = http_client::parse_response(&input, (*call).head)
                        .unwrap_or_else(|e| HttpCallResponse::failed(FAILURE_PROTOCOL, format!("bad response: {e}")));
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

unsafe extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the timer's data is its live call.
        unsafe { finish((*ev).data as *mut Call, HttpCallResponse::failed(FAILURE_TIMEOUT, "timeout")) };
    });
}

unsafe extern "C" fn on_deliver(ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: the event's data is its live call; it is taken out of CALLS here.
        let token = unsafe { (*((*ev).data as *mut Call)).token };
        let Some(mut call) = CALLS.with(|c| c.borrow_mut().remove(&token)) else { return };
        // SAFETY: closes what is left of the call before it is freed.
        unsafe { close(&mut *call) };
        let response = call.response.take().unwrap_or_else(|| HttpCallResponse::failed(FAILURE_PROTOCOL, "no response"));
        with_vm(&call.slot, call.vm, "on_http_call_response", |vm| vm.on_http_call_response(token, response));
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) delivering an http_call response");
    }
}

/// The root context went away: the call ends without an answer.
pub fn cancel_http_call(token: u32) {
    let call = CALLS.with(|c| c.borrow_mut().remove(&token));
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
