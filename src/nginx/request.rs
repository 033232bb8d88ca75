//! One nginx request as the plugins of its location's chain see it.
//!
//! - rewrite phase: `on_request_headers` (chain order); then, only if a
//!   plugin of the chain exports `proxy_on_request_body` and the request has
//!   a body, nginx reads the body and it goes through `on_request_body` in
//!   the chunks nginx read, the last with `end_of_stream`; the edited body
//!   replaces the request body (Content-Length fixed).
//! - header filter: `on_response_headers` (reverse chain order).
//! - body filter: `on_response_body` (reverse chain order); a plugin that
//!   pauses keeps what it got until it continues or the body ends.
//! - log phase: `on_done`, `on_log`, `on_delete`; the request pool's cleanup
//!   does the same for requests that never reached the log phase.
//!
//! A pause in a request phase suspends the phase handler (holding a request
//! reference); in the response phases the header and body are held back
//! (`r->buffered`) until the plugin continues. A resume is always run from a
//! posted event, after the callback that asked for it returned.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use ngx::ffi::*;

use super::headers as hdr;
use super::server::{log, post_event};
use super::worker::{current_set, current_slot, new_event, Slot};
use crate::abi::pairs::Pair;
use crate::abi::{LogLevel, MapType, Status, StreamType};
use crate::config::FailurePolicy;
use crate::host::{HttpStream, LocalResponse};
use crate::loader::Admission;
use crate::vm::{Verdict, VmError};

/// `r->buffered` bit while a plugin holds the response back.
const BUFFERED: u32 = 0x08;

static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

/// Puts the module's filters at the top of the chains.
pub unsafe fn install_filters() {
    // SAFETY: called from postconfiguration (single-threaded configuration).
    unsafe {
        NEXT_HEADER_FILTER = ngx_http_top_header_filter;
        ngx_http_top_header_filter = Some(header_filter);
        NEXT_BODY_FILTER = ngx_http_top_body_filter;
        ngx_http_top_body_filter = Some(body_filter);
    }
}

fn next_header(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: the saved next filter is set before any request.
    unsafe { NEXT_HEADER_FILTER.map_or(NGX_ERROR as ngx_int_t, |f| f(r)) }
}

fn next_body(r: *mut ngx_http_request_t, cl: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: as above.
    unsafe { NEXT_BODY_FILTER.map_or(NGX_ERROR as ngx_int_t, |f| f(r, cl)) }
}

/// One plugin's stream context in this request.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub plugin: usize,
    pub vm: usize,
    pub ctx: u32,
}

#[derive(Default)]
struct State {
    chain: Vec<Link>,
    /// Plugins that have run `on_request_headers`.
    next: usize,
    request_headers_done: bool,
    wants_request_body: bool,
    wants_response_body: bool,
    body_read_started: bool,
    body_ready: bool,
    request_body_done: bool,
    /// Where the plugins are in the body nginx read (read in 64 KiB pieces
    /// as they go through the chain, not all at once).
    request_cursor: Option<BodyCursor>,
    /// The piece with `end_of_stream` went through the chain.
    request_eos_fed: bool,
    /// What the chain let through, held until the whole body went through:
    /// it replaces nginx's request body at once (bounded by `max_body_size`).
    request_out: Vec<u8>,
    /// A request-phase callback paused: the phase handler is suspended.
    paused_request: bool,
    /// Body stage (index into the chain) waiting at end of stream.
    request_body_wait: Option<usize>,
    resumes: Vec<StreamType>,
    local: Option<LocalResponse>,
    local_sent: bool,
    /// A failed plugin answers 503 (fail closed).
    failed: bool,
    /// The plugin that paused last (for the `pause_timeout` message).
    paused_by: Option<Link>,
    resume_posted: bool,
    // response
    response_started: bool,
    response_next: usize,
    response_headers_paused: bool,
    response_headers_done: bool,
    held_raw: Vec<u8>,
    held_eos: bool,
    replace_body: Option<Vec<u8>>,
    replaced_sent: bool,
    response_body_wait: Option<usize>,
    response_eos_sent: bool,
    /// The response body length the upstream declared (Content-Length) when
    /// the header arrived, and the bytes of it seen so far: the chunk that
    /// completes it is delivered with `end_of_stream`, as Envoy's HTTP/1
    /// codec does, instead of waiting for nginx's separate empty last buffer.
    response_length: Option<u64>,
    response_seen: u64,
    finished: bool,
    /// The client's framing as received: plugins may remove Content-Length
    /// or Transfer-Encoding, but nginx must still read the body it was sent.
    framing: (off_t, bool),
}

/// The request context, shared by the module (request ctx slot, pool
/// cleanup) and the stream contexts of the plugins.
pub struct ReqCtx {
    r: AtomicPtr<ngx_http_request_t>,
    slot: Arc<Slot>,
    st: Mutex<State>,
    /// Posted to continue after a resume.
    ev: UnsafeCell<ngx_event_t>,
    /// Ends a pause that outlasted the plugin's `pause_timeout`.
    pause_timer: UnsafeCell<ngx_event_t>,
}

// SAFETY: nginx workers are single-threaded: the request pointer and the
// event are only used on the worker's thread; the state is behind a mutex.
unsafe impl Send for ReqCtx {}
// SAFETY: as above.
unsafe impl Sync for ReqCtx {}

impl ReqCtx {
    fn r(&self) -> Option<*mut ngx_http_request_t> {
        let r = self.r.load(Ordering::Acquire);
        (!r.is_null()).then_some(r)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plugin_name(&self, link: Link) -> String {
        self.slot.set.plugins[link.plugin].config.name.clone()
    }

    fn policy(&self, link: Link) -> FailurePolicy {
        self.slot.set.plugins[link.plugin].config.failure_policy
    }

    /// Continues the request on the worker's loop (after the current callback).
    fn post_resume(&self) {
        let mut st = self.st();
        if st.resume_posted || self.r().is_none() {
            return;
        }
        st.resume_posted = true;
        drop(st);
        post_event(self.ev.get());
    }

    /// `link` paused the request or the response: it has its `pause_timeout`
    /// to continue (or answer) before `on_pause_timeout` ends the stream.
    fn arm_pause_timer(&self, link: Link) {
        self.st().paused_by = Some(link);
        let timeout = self.slot.set.plugins[link.plugin].config.pause_timeout;
        // SAFETY: the event lives in the context, whose pool cleanup deletes
        // the timer before the context can go away; worker thread only.
        unsafe { ngx_add_timer(self.pause_timer.get(), timeout.as_millis().max(1) as ngx_msec_t) };
    }

    fn take_resume(&self, stream: StreamType) -> bool {
        let mut st = self.st();
        let found = st.resumes.contains(&stream);
        st.resumes.retain(|s| *s != stream);
        found
    }

    /// A plugin failed: logged; true when the request must get 503.
    fn on_failure(&self, link: Link, e: &VmError) -> bool {
        log(LogLevel::Error, &format!("[proxy_wasm] {}: {e}", self.plugin_name(link)));
        if self.policy(link) == FailurePolicy::FailOpen {
            return false;
        }
        let mut st = self.st();
        st.failed = true;
        true
    }
}

/// The stream context's view of the request.
pub struct NgxStream {
    ctx: Arc<ReqCtx>,
}

impl NgxStream {
    fn req(&self) -> Option<*mut ngx_http_request_t> {
        self.ctx.r()
    }
}

fn header_sent(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: live request.
    unsafe { (*r).header_sent() != 0 }
}

impl HttpStream for NgxStream {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        let Some(r) = self.req() else { return Ok(Vec::new()) };
        let response_started = self.ctx.st().response_started;
        // SAFETY: live request on this worker's thread.
        Ok(unsafe {
            match map {
                MapType::HttpRequestHeaders => hdr::request_pairs(r),
                MapType::HttpResponseHeaders if response_started => hdr::response_pairs(r),
                MapType::HttpResponseHeaders | MapType::HttpRequestTrailers | MapType::HttpResponseTrailers => Vec::new(),
                _ => return Err(Status::BadArgument),
            }
        })
    }

    fn header_value(&self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        let Some(r) = self.req() else { return Ok(None) };
        let response_started = self.ctx.st().response_started;
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

    fn send_local_response(&mut self, response: LocalResponse) -> Result<(), Status> {
        let Some(r) = self.req() else { return Err(Status::BadArgument) };
        if header_sent(r) {
            return Err(Status::BadArgument);
        }
        let mut st = self.ctx.st();
        if st.local_sent || st.response_headers_done {
            return Err(Status::BadArgument);
        }
        st.local = Some(response);
        let paused = st.paused_request || st.response_headers_paused || st.request_body_wait.is_some();
        drop(st);
        if paused {
            self.ctx.post_resume();
        }
        Ok(())
    }

    fn resume(&mut self, stream: StreamType) -> Result<(), Status> {
        let mut st = self.ctx.st();
        if !st.resumes.contains(&stream) {
            st.resumes.push(stream);
        }
        let paused = match stream {
            StreamType::HttpRequest => st.paused_request,
            _ => st.response_headers_paused || st.response_body_wait.is_some(),
        };
        drop(st);
        if paused {
            self.ctx.post_resume();
        }
        Ok(())
    }

    fn close(&mut self, _stream: StreamType) -> Result<(), Status> {
        // The driver sees Verdict::Stop and ends the request.
        self.ctx.st().failed = true;
        Ok(())
    }

    fn detach(&mut self) {}

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        let Some(r) = self.req() else { return Ok(None) };
        // SAFETY: live request.
        Ok(unsafe { property(r, path, self.ctx.st().response_started) })
    }
}

impl NgxStream {
    fn writable(&self, map: MapType) -> Result<*mut ngx_http_request_t, Status> {
        let r = self.req().ok_or(Status::BadArgument)?;
        match map {
            MapType::HttpRequestHeaders => Ok(r),
            MapType::HttpResponseHeaders if self.ctx.st().response_started && !header_sent(r) => Ok(r),
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
            [b"request", b"time"] => int(((*r).start_sec as u64) * 1_000_000_000 + ((*r).start_msec as u64) * 1_000_000),
            [b"request", b"size"] => ((*r).headers_in.content_length_n >= 0).then(|| (*r).headers_in.content_length_n as u64).and_then(int),
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
            [b"destination", b"port"] => variable(r, b"server_port").and_then(|p| std::str::from_utf8(&p).ok()?.parse::<u64>().ok()).and_then(int),
            [b"connection", b"id"] => int((*c).number as u64),
            [b"ngx", name] => variable(r, name),
            _ => None,
        }
    }
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

// ------------------------------------------------------------------ request ctx

fn get_ctx(r: *mut ngx_http_request_t) -> Option<&'static ReqCtx> {
    // SAFETY: r->ctx has a slot per HTTP module; ours holds a pointer from
    // Arc::into_raw, alive until the pool cleanup releases it.
    unsafe {
        let p = *(*r).ctx.add(super::ctx_index()) as *const ReqCtx;
        p.as_ref()
    }
}

unsafe extern "C" fn cleanup(data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `data` is the Arc::into_raw pointer set in `create_ctx`; the pool runs this once.
        let ctx = unsafe { Arc::from_raw(data as *const ReqCtx) };
        finish(&ctx);
        ctx.r.store(std::ptr::null_mut(), Ordering::Release);
        // SAFETY: the event lives in ctx; taking it off the posted queue before
        // the context may go away.
        unsafe {
            let ev = ctx.ev.get();
            if (*ev).posted() != 0 {
                ngx_delete_posted_event(ev);
            }
            let timer = ctx.pause_timer.get();
            if (*timer).timer_set() != 0 {
                ngx_del_timer(timer);
            }
        }
    });
}

/// `on_done`, `on_log`, `on_delete` of every stream context, once.
fn finish(ctx: &ReqCtx) {
    let chain = {
        let mut st = ctx.st();
        if std::mem::replace(&mut st.finished, true) {
            return;
        }
        std::mem::take(&mut st.chain)
    };
    let mut vms = ctx.slot.vms.lock().unwrap_or_else(|p| p.into_inner());
    let mut waiting = false;
    for link in chain {
        match vms.vms[link.vm].finish_stream(link.ctx) {
            Ok(done) => waiting |= !done,
            Err(e) => log(LogLevel::Error, &format!("[proxy_wasm] {}: {e}", ctx.plugin_name(link))),
        }
    }
    drop(vms);
    if waiting {
        // The plugin's on_done returned false: its proxy_done is awaited, within its pause_timeout.
        super::worker::watch_awaiting_done();
    }
}

enum Created {
    Ctx(&'static ReqCtx),
    Refuse,
    Skip,
}

unsafe fn create_ctx(r: *mut ngx_http_request_t, chain: &[usize]) -> Created {
    let Some(set) = current_set() else {
        log(LogLevel::Error, "[proxy_wasm] the plugins are not loaded in this worker; the request gets 503");
        return Created::Refuse;
    };
    let Some(slot) = current_slot() else {
        let open = chain.iter().all(|p| set.plugins[*p].config.failure_policy == FailurePolicy::FailOpen);
        return if open { Created::Skip } else { Created::Refuse };
    };
    let roots = {
        let vms = slot.vms.lock().unwrap_or_else(|p| p.into_inner());
        match vms.admit(&slot.set.plugins) {
            Admission::Run(roots) => roots,
            Admission::Refuse { plugin } if chain.contains(&plugin) => {
                log(LogLevel::Debug, &format!("[proxy_wasm] {}: failed earlier; the request gets 503 (failure policy)", slot.set.plugins[plugin].config.name));
                return Created::Refuse;
            }
            Admission::Refuse { .. } => vms.roots.iter().copied().filter(|r| vms.vms[r.vm].failure().is_none()).collect(),
        }
    };
    let ctx = Arc::new(ReqCtx {
        r: AtomicPtr::new(r),
        slot: slot.clone(),
        st: Mutex::new(State::default()),
        ev: UnsafeCell::new(new_event(on_resume_event, std::ptr::null_mut())),
        pause_timer: UnsafeCell::new(new_event(on_pause_timeout, std::ptr::null_mut())),
    });
    // SAFETY: the events' data is the context itself (it lives as long as the events can fire).
    unsafe {
        (*ctx.ev.get()).data = Arc::as_ptr(&ctx) as *mut c_void;
        (*ctx.pause_timer.get()).data = Arc::as_ptr(&ctx) as *mut c_void;
    }
    let mut links = Vec::new();
    {
        let mut vms = slot.vms.lock().unwrap_or_else(|p| p.into_inner());
        for plugin in chain {
            let Some(root) = roots.iter().find(|r| r.plugin == *plugin) else { continue };
            match vms.vms[root.vm].create_stream(root.root_context_id, Box::new(NgxStream { ctx: ctx.clone() })) {
                Ok(id) => links.push(Link { plugin: *plugin, vm: root.vm, ctx: id }),
                Err(e) => log(LogLevel::Error, &format!("[proxy_wasm] {}: cannot create a stream context: {e}", slot.set.plugins[*plugin].config.name)),
            }
        }
    }
    {
        let mut st = ctx.st();
        st.wants_request_body = links.iter().any(|l| slot.set.exports(l.plugin, "proxy_on_request_body"));
        st.wants_response_body = links.iter().any(|l| slot.set.exports(l.plugin, "proxy_on_response_body"));
        st.chain = links;
        // SAFETY: live request.
        st.framing = unsafe { ((*r).headers_in.content_length_n, (*r).headers_in.chunked() != 0) };
    }
    // SAFETY: live request; the cleanup releases the reference taken here.
    unsafe {
        let cln = ngx_pool_cleanup_add((*r).pool, 0);
        if cln.is_null() {
            finish(&ctx);
            return Created::Refuse;
        }
        let raw = Arc::into_raw(ctx);
        (*cln).handler = Some(cleanup);
        (*cln).data = raw as *mut c_void;
        *(*r).ctx.add(super::ctx_index()) = raw as *mut c_void;
        Created::Ctx(&*raw)
    }
}

fn loc_conf(r: *mut ngx_http_request_t) -> &'static super::LocConf {
    // SAFETY: loc_conf has a slot per HTTP module, ours a LocConf.
    unsafe { &*(*(*r).loc_conf.add(super::ctx_index()) as *const super::LocConf) }
}

// ------------------------------------------------------------------ request phases

enum Outcome {
    Continue,
    Pause,
    Stop,
}

fn has_body(ctx: &ReqCtx) -> bool {
    let (length, chunked) = ctx.st().framing;
    length > 0 || chunked
}

/// Puts the client's framing back after the request headers callbacks.
fn restore_framing(ctx: &ReqCtx, r: *mut ngx_http_request_t) {
    let (length, chunked) = ctx.st().framing;
    // SAFETY: live request.
    unsafe {
        (*r).headers_in.content_length_n = length;
        (*r).headers_in.set_chunked(chunked as u32);
    }
}

/// The rewrite-phase handler (also re-entered by `ngx_http_core_run_phases` after a resume).
pub unsafe extern "C" fn rewrite_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: live request.
        if unsafe { (*r).main } != r {
            return NGX_DECLINED as ngx_int_t;
        }
        let ctx = match get_ctx(r) {
            Some(c) => c,
            None => {
                let lc = loc_conf(r);
                if lc.chain.is_empty() {
                    return NGX_DECLINED as ngx_int_t;
                }
                // SAFETY: live request.
                match unsafe { create_ctx(r, &lc.chain) } {
                    Created::Ctx(c) => c,
                    Created::Skip => return NGX_DECLINED as ngx_int_t,
                    Created::Refuse => return NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t,
                }
            }
        };
        drive_request(ctx, r)
    });
    out.unwrap_or_else(|_| {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the rewrite phase");
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
    })
}

/// Runs the request side as far as it goes; the phase handler's answer.
fn drive_request(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    loop {
        {
            let st = ctx.st();
            if st.local.is_some() && !st.local_sent || st.failed {
                drop(st);
                return answer_locally(ctx, r);
            }
            if st.local_sent {
                return NGX_DECLINED as ngx_int_t;
            }
        }
        let (headers_done, wants_body, started, ready, body_done) = {
            let st = ctx.st();
            (st.request_headers_done, st.wants_request_body, st.body_read_started, st.body_ready, st.request_body_done)
        };
        if !headers_done {
            match run_request_headers(ctx, r) {
                Outcome::Continue => {
                    ctx.st().request_headers_done = true;
                    restore_framing(ctx, r);
                }
                Outcome::Pause => return suspend_reading_body(ctx, r),
                Outcome::Stop => continue,
            }
            continue;
        }
        if wants_body && has_body(ctx) && !body_done {
            if !started {
                ctx.st().body_read_started = true;
                // SAFETY: live request; nginx calls the handler once the body is read
                // (it holds a request reference meanwhile, released below as
                // the mirror module does).
                let rc = unsafe { ngx_http_read_client_request_body(r, Some(request_body_ready)) };
                if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                    return rc;
                }
                // SAFETY: balances the reference read_client_request_body took.
                unsafe { ngx_http_finalize_request(r, NGX_DONE as ngx_int_t) };
                return NGX_DONE as ngx_int_t;
            }
            if !ready {
                return NGX_DONE as ngx_int_t;
            }
            match run_request_body(ctx, r) {
                Outcome::Continue => {
                    ctx.st().request_body_done = true;
                    install_request_body(ctx, r);
                }
                Outcome::Pause => return suspend(ctx, r),
                Outcome::Stop => continue,
            }
            continue;
        }
        return NGX_DECLINED as ngx_int_t;
    }
}

/// `on_request_headers` paused: the phase engine stops. When a plugin of
/// the chain reads the body, nginx goes on reading (buffering) it meanwhile,
/// but no `on_request_body` runs before the whole chain has continued its
/// headers: Envoy (proxy-wasm-cpp-host) turns a Pause from the headers into
/// StopAllIterationAndWatermark, which holds the body callbacks too.
fn suspend_reading_body(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    let rc = suspend(ctx, r);
    let start = {
        let mut st = ctx.st();
        let start = st.wants_request_body && !st.body_read_started && st.local.is_none() && !st.failed;
        if start {
            st.body_read_started = true;
        }
        start
    };
    if start && has_body(ctx) {
        restore_framing(ctx, r);
        // SAFETY: live request; nginx takes a request reference while it reads
        // (released at once, as the mirror module does; the pause holds its own).
        unsafe {
            let read = ngx_http_read_client_request_body(r, Some(request_body_ready));
            if read >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                // The pause's reference is released by the resume or the
                // error path; nginx answers the error.
                ctx.st().paused_request = false;
                let main = (*r).main;
                (*main).set_count((*main).count() - 1);
                return read;
            }
            ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
        }
    } else if start {
        ctx.st().body_read_started = false;
    }
    rc
}

/// A request callback paused: hold a reference and stop the phase engine.
fn suspend(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    ctx.st().paused_request = true;
    // SAFETY: live request; the reference is released in `on_resume_event`.
    unsafe {
        let main = (*r).main;
        (*main).set_count((*main).count() + 1);
    }
    NGX_DONE as ngx_int_t
}

unsafe extern "C" fn request_body_ready(r: *mut ngx_http_request_t) {
    let _ = std::panic::catch_unwind(|| {
        let Some(ctx) = get_ctx(r) else { return };
        let headers_paused = {
            let mut st = ctx.st();
            st.body_ready = true;
            // SAFETY: live request with its body read.
            st.request_cursor = Some(BodyCursor { cl: unsafe { request_body_bufs(r) }, offset: 0 });
            st.paused_request && !st.request_headers_done
        };
        if headers_paused {
            // Kept until the resume runs the phases again.
            return;
        }
        // SAFETY: live request; continue the phases where they stopped (as the mirror module does).
        unsafe {
            (*r).write_event_handler = Some(ngx_http_core_run_phases);
            ngx_http_core_run_phases(r);
        }
    });
}

/// The buffers of the request body nginx read (null when it has none).
unsafe fn request_body_bufs(r: *mut ngx_http_request_t) -> *mut ngx_chain_t {
    // SAFETY: live request whose body was read.
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            std::ptr::null_mut()
        } else {
            (*rb).bufs
        }
    }
}

/// The most bytes read from nginx's body buffers at once: a request body
/// nginx kept in a temporary file is read piece by piece as it goes through
/// the plugins, never whole.
const PIECE: usize = 64 * 1024;

/// A position in a chain of nginx buffers (memory or file).
pub struct BodyCursor {
    cl: *mut ngx_chain_t,
    /// Bytes of the current buffer already taken.
    offset: off_t,
}

impl BodyCursor {
    /// Bytes left in the buffer of `cl` after `offset`.
    ///
    /// # Safety
    /// `cl` is a live chain link of the request's body.
    unsafe fn left(cl: *mut ngx_chain_t, offset: off_t) -> off_t {
        // SAFETY: see above.
        unsafe {
            let b = (*cl).buf;
            if (*b).in_file() != 0 && !(*b).file.is_null() {
                ((*b).file_last - (*b).file_pos - offset).max(0)
            } else if !(*b).pos.is_null() && (*b).last > (*b).pos {
                ((*b).last.offset_from((*b).pos) as off_t - offset).max(0)
            } else {
                0
            }
        }
    }

    /// The next piece (at most [`PIECE`] bytes), `None` at the end.
    ///
    /// # Safety
    /// The request is live and its body buffers unchanged since the cursor was made.
    unsafe fn next(&mut self) -> Option<Vec<u8>> {
        // SAFETY: see above; file buffers refer to the request's temporary file.
        unsafe {
            while !self.cl.is_null() {
                let left = Self::left(self.cl, self.offset);
                if left == 0 {
                    self.cl = (*self.cl).next;
                    self.offset = 0;
                    continue;
                }
                let b = (*self.cl).buf;
                let n = (left as usize).min(PIECE);
                if (*b).in_file() != 0 && !(*b).file.is_null() {
                    let mut buf = vec![0u8; n];
                    let got = libc::pread((*(*b).file).fd, buf.as_mut_ptr() as *mut c_void, n, ((*b).file_pos + self.offset) as libc::off_t);
                    if got <= 0 {
                        log(LogLevel::Error, &format!("[proxy_wasm] cannot read the request body from nginx's temporary file: {}", std::io::Error::last_os_error()));
                        self.cl = std::ptr::null_mut();
                        return None;
                    }
                    buf.truncate(got as usize);
                    self.offset += got as off_t;
                    return Some(buf);
                }
                let piece = std::slice::from_raw_parts((*b).pos.add(self.offset as usize), n).to_vec();
                self.offset += n as off_t;
                return Some(piece);
            }
            None
        }
    }

    /// Whether any byte is left.
    ///
    /// # Safety
    /// As [`BodyCursor::next`].
    unsafe fn has_more(&self) -> bool {
        // SAFETY: see above.
        unsafe {
            let (mut cl, mut offset) = (self.cl, self.offset);
            while !cl.is_null() {
                if Self::left(cl, offset) > 0 {
                    return true;
                }
                cl = (*cl).next;
                offset = 0;
            }
            false
        }
    }
}

/// The next piece of the request body for the chain, with `end_of_stream`
/// on the last one (an empty body is one empty piece); `None` once that one
/// was taken.
fn next_request_piece(ctx: &ReqCtx) -> Option<(Vec<u8>, bool)> {
    let mut st = ctx.st();
    if st.request_eos_fed {
        return None;
    }
    let (piece, eos) = match st.request_cursor.as_mut() {
        // SAFETY: the cursor walks the body nginx read for this live request;
        // it is replaced (install_request_body) only after the last piece.
        Some(cursor) => unsafe {
            let piece = cursor.next().unwrap_or_default();
            (piece, !cursor.has_more())
        },
        None => (Vec::new(), true),
    };
    st.request_eos_fed = eos;
    Some((piece, eos))
}

/// The smallest `max_body_size` of the chain's plugins that read the body of
/// `stream` (the host holds that body for them), and the plugin it is from.
fn body_limit(ctx: &ReqCtx, links: &[Link], stream: StreamType) -> Option<(u64, Link)> {
    let callback = if stream == StreamType::HttpRequest { "proxy_on_request_body" } else { "proxy_on_response_body" };
    links.iter().filter(|l| ctx.slot.set.exports(l.plugin, callback)).map(|l| (ctx.slot.set.plugins[l.plugin].config.max_body_size, *l)).min_by_key(|(limit, _)| *limit)
}

fn run_request_headers(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> Outcome {
    // SAFETY: live request.
    let count = unsafe { hdr::request_pair_count(r) };
    let eos = !has_body(ctx);
    let mut vms = ctx.slot.vms.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let link = {
            let mut st = ctx.st();
            if st.next >= st.chain.len() {
                return Outcome::Continue;
            }
            st.next += 1;
            st.chain[st.next - 1]
        };
        match vms.vms[link.vm].on_request_headers(link.ctx, count, eos) {
            Ok(Verdict::Continue) => {}
            Ok(Verdict::Pause) => {
                if !ctx.take_resume(StreamType::HttpRequest) {
                    ctx.arm_pause_timer(link);
                    return Outcome::Pause;
                }
            }
            Ok(Verdict::Stop) => return Outcome::Stop,
            Err(e) => {
                if ctx.on_failure(link, &e) {
                    return Outcome::Stop;
                }
            }
        }
    }
}

/// What a body went through the chain to.
enum Feed {
    /// The bytes that come out at the end of the chain.
    Out(Vec<u8>),
    /// A plugin keeps the data (Pause before the end of the body).
    Held,
    /// A plugin paused at the end of the body: waiting for it at this stage.
    Wait(usize),
    Stop,
}

/// Runs `data` through `links[from..]` (in that order) for one direction.
fn feed(ctx: &ReqCtx, links: &[Link], from: usize, mut data: Vec<u8>, eos: bool, stream: StreamType) -> Feed {
    let mut vms = ctx.slot.vms.lock().unwrap_or_else(|p| p.into_inner());
    for (i, link) in links.iter().enumerate().skip(from) {
        let vm = &mut vms.vms[link.vm];
        let verdict = match stream {
            StreamType::HttpRequest => vm.on_request_body(link.ctx, &data, eos),
            _ => vm.on_response_body(link.ctx, &data, eos),
        };
        match verdict {
            Ok(Verdict::Continue) => {}
            Ok(Verdict::Pause) => {
                if !ctx.take_resume(stream) {
                    if eos {
                        ctx.arm_pause_timer(*link);
                        return Feed::Wait(i);
                    }
                    return Feed::Held;
                }
            }
            Ok(Verdict::Stop) => return Feed::Stop,
            Err(e) => {
                if ctx.on_failure(link.to_owned(), &e) {
                    return Feed::Stop;
                }
            }
        }
        data = vms.vms[link.vm].take_body(link.ctx, stream).unwrap_or_default();
    }
    Feed::Out(data)
}

fn run_request_body(ctx: &ReqCtx, _r: *mut ngx_http_request_t) -> Outcome {
    let links = ctx.st().chain.clone();
    // A plugin that paused at the end of the body and has continued since.
    let waiting = ctx.st().request_body_wait;
    if let Some(stage) = waiting {
        if !ctx.take_resume(StreamType::HttpRequest) {
            return Outcome::Pause;
        }
        ctx.st().request_body_wait = None;
        let data = ctx.slot.vms.lock().unwrap_or_else(|p| p.into_inner()).vms[links[stage].vm].take_body(links[stage].ctx, StreamType::HttpRequest).unwrap_or_default();
        match feed(ctx, &links, stage + 1, data, true, StreamType::HttpRequest) {
            Feed::Out(out) => {
                if !hold_request_out(ctx, &links, out) {
                    return Outcome::Stop;
                }
            }
            Feed::Held => {}
            Feed::Wait(stage) => {
                ctx.st().request_body_wait = Some(stage);
                return Outcome::Pause;
            }
            Feed::Stop => return Outcome::Stop,
        }
        return Outcome::Continue;
    }
    loop {
        let Some((chunk, eos)) = next_request_piece(ctx) else { return Outcome::Continue };
        match feed(ctx, &links, 0, chunk, eos, StreamType::HttpRequest) {
            Feed::Out(out) => {
                if !hold_request_out(ctx, &links, out) {
                    return Outcome::Stop;
                }
            }
            Feed::Held => {}
            Feed::Wait(stage) => {
                ctx.st().request_body_wait = Some(stage);
                return Outcome::Pause;
            }
            Feed::Stop => return Outcome::Stop,
        }
    }
}

/// Keeps what the chain let through until the end of the body: nginx takes a
/// new request body whole. Bounded by the smallest `max_body_size` of the
/// plugins that read the body; past it the request gets 413 and is not sent
/// on (false).
fn hold_request_out(ctx: &ReqCtx, links: &[Link], out: Vec<u8>) -> bool {
    let mut st = ctx.st();
    st.request_out.extend_from_slice(&out);
    let size = st.request_out.len() as u64;
    let Some((limit, link)) = body_limit(ctx, links, StreamType::HttpRequest).filter(|(limit, _)| size > *limit) else { return true };
    st.request_out = Vec::new();
    st.local.get_or_insert_with(LocalResponse::request_payload_too_large);
    drop(st);
    log(LogLevel::Warn, &format!("[proxy_wasm] {}: the request body held for the plugins would reach {size} bytes, over its max_body_size ({limit} bytes): the request gets 413 and is not sent on", ctx.plugin_name(link)));
    false
}

/// The body the plugins let through becomes the request body.
fn install_request_body(ctx: &ReqCtx, r: *mut ngx_http_request_t) {
    let body = std::mem::take(&mut ctx.st().request_out);
    // SAFETY: live request whose body was read; the new buffer lives in its pool.
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            return;
        }
        if body.is_empty() {
            (*rb).bufs = std::ptr::null_mut();
        } else {
            let b = ngx_create_temp_buf((*r).pool, body.len());
            let cl = ngx_alloc_chain_link((*r).pool);
            if b.is_null() || cl.is_null() {
                return;
            }
            std::ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
            (*b).last = (*b).last.add(body.len());
            (*b).set_last_buf(1);
            (*cl).buf = b;
            (*cl).next = std::ptr::null_mut();
            (*rb).bufs = cl;
        }
        let _ = hdr::remove_request_header(r, b"transfer-encoding");
        let _ = hdr::replace_request(r, b"content-length", body.len().to_string().as_bytes());
        (*r).headers_in.content_length_n = body.len() as off_t;
        (*r).headers_in.set_chunked(0);
    }
}

/// Sends the local response (or 503 for a failed plugin) from a request phase.
fn answer_locally(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    let response = {
        let mut st = ctx.st();
        st.local_sent = true;
        match st.local.clone() {
            Some(l) if !st.failed => l,
            _ => LocalResponse { status: 503, details: String::new(), body: b"plugin failure\n".to_vec(), headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())], grpc_status: -1 },
        }
    };
    if header_sent(r) {
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: live request, header not sent yet.
    unsafe {
        if (*r).request_body.is_null() {
            ngx_http_discard_request_body(r);
        }
        (*r).headers_out.status = response.status as ngx_uint_t;
        hdr::clear_content_length(r);
        for (k, v) in &response.headers {
            if !k.starts_with(b":") && !k.eq_ignore_ascii_case(b"content-length") {
                let _ = hdr::add_response(r, k, v);
            }
        }
        (*r).headers_out.content_length_n = response.body.len() as off_t;
        send_response(r, &response.body)
    }
}

/// Sends the header and then `body` as the whole body.
unsafe fn send_response(r: *mut ngx_http_request_t, body: &[u8]) -> ngx_int_t {
    // SAFETY: live request (caller); the buffer lives in its pool.
    unsafe {
        if body.is_empty() {
            (*r).set_header_only(1);
        }
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        match chain_of(r, body, true) {
            Some(cl) => ngx_http_output_filter(r, cl),
            None => NGX_ERROR as ngx_int_t,
        }
    }
}

/// A one-buffer chain with a copy of `data`.
unsafe fn chain_of(r: *mut ngx_http_request_t, data: &[u8], last: bool) -> Option<*mut ngx_chain_t> {
    // SAFETY: live request; memory from its pool.
    unsafe {
        let b = if data.is_empty() { ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t } else { ngx_create_temp_buf((*r).pool, data.len()) };
        let cl = ngx_alloc_chain_link((*r).pool);
        if b.is_null() || cl.is_null() {
            return None;
        }
        if !data.is_empty() {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (*b).last, data.len());
            (*b).last = (*b).last.add(data.len());
        }
        if last {
            (*b).set_last_buf(if r == (*r).main { 1 } else { 0 });
            (*b).set_last_in_chain(1);
        } else if data.is_empty() {
            (*b).set_flush(1);
        }
        (*cl).buf = b;
        (*cl).next = std::ptr::null_mut();
        Some(cl)
    }
}

/// Posted after a resume or a local response from another event.
unsafe extern "C" fn on_resume_event(ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: the event's data is its ReqCtx, alive while the event is
        // posted (the cleanup takes it off the queue).
        let ctx = unsafe { &*((*ev).data as *const ReqCtx) };
        ctx.st().resume_posted = false;
        let Some(r) = ctx.r() else { return };
        let (paused_request, response_paused, body_wait) = {
            let st = ctx.st();
            (st.paused_request, st.response_headers_paused, st.response_body_wait)
        };
        // SAFETY: live request on this worker.
        let c = unsafe { (*r).connection };
        if paused_request {
            let go = {
                let mut st = ctx.st();
                let go = st.local.is_some() || st.failed || st.resumes.contains(&StreamType::HttpRequest);
                if go {
                    st.paused_request = false;
                    if st.request_body_wait.is_none() {
                        // This resume is used up here; a later pause must wait for a new one.
                        st.resumes.retain(|s| *s != StreamType::HttpRequest);
                    }
                }
                go
            };
            if go {
                // SAFETY: live request; run the phases again (our handler goes
                // on where it stopped), then release the pause's reference.
                unsafe {
                    (*r).write_event_handler = Some(ngx_http_core_run_phases);
                    ngx_http_core_run_phases(r);
                    ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
                }
            }
        } else if response_paused {
            resume_response_headers(ctx, r);
        } else if body_wait.is_some() {
            resume_response_body(ctx, r);
        }
        // SAFETY: the connection of the request (still valid: requests on it run now).
        unsafe { ngx_http_run_posted_requests(c) };
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) resuming a request");
    }
}

/// A pause outlasted the plugin's `pause_timeout` (its timer is re-armed at
/// every pause, so it only ends the pause it was armed for): a request, or a
/// response whose header is not sent yet, gets a local 504; a response body
/// held back after its header went out ends with the connection closed (as
/// Envoy resets a stream past its idle timeout).
unsafe extern "C" fn on_pause_timeout(ev: *mut ngx_event_t) {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: the event's data is its ReqCtx, alive while the timer is set
        // (the cleanup deletes it).
        let ctx = unsafe { &*((*ev).data as *const ReqCtx) };
        let Some(r) = ctx.r() else { return };
        let (paused, phase, body_wait, link) = {
            let st = ctx.st();
            let phase = match (st.paused_request, st.request_body_wait.is_some()) {
                (true, true) => "request body",
                (true, false) => "request",
                _ => "response",
            };
            (st.paused_request || st.response_headers_paused, phase, st.response_body_wait.is_some(), st.paused_by)
        };
        if !paused && !body_wait {
            return;
        }
        let (name, timeout) = link.map_or((String::from("a plugin"), Default::default()), |l| (ctx.plugin_name(l), ctx.slot.set.plugins[l.plugin].config.pause_timeout));
        // SAFETY: live request on this worker.
        let c = unsafe { (*r).connection };
        if paused {
            log(LogLevel::Warn, &format!("[proxy_wasm] {name}: kept the {phase} paused for {timeout:?} (pause_timeout) without continuing it; answering 504"));
            {
                let mut st = ctx.st();
                if st.local.is_none() {
                    st.local = Some(LocalResponse::pause_timeout());
                }
            }
            ctx.post_resume();
        } else {
            log(LogLevel::Warn, &format!("[proxy_wasm] {name}: kept the response body paused for {timeout:?} (pause_timeout) without continuing it; aborting the response"));
            ctx.st().response_body_wait = None;
            // SAFETY: live request; ends it as a failed response.
            unsafe {
                (*r).set_buffered((*r).buffered() & !BUFFERED);
                ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t);
            }
        }
        // SAFETY: the connection of the request (still valid: requests on it run now).
        unsafe { ngx_http_run_posted_requests(c) };
    });
    if out.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) ending a paused request");
    }
}

// ------------------------------------------------------------------ response

/// The plugins that saw the request, in response order (last first).
fn response_links(ctx: &ReqCtx) -> Vec<Link> {
    let st = ctx.st();
    let ran = st.next.min(st.chain.len());
    st.chain[..ran].iter().rev().copied().collect()
}

unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: live request.
        if unsafe { (*r).main } != r {
            return next_header(r);
        }
        let Some(ctx) = get_ctx(r) else { return next_header(r) };
        {
            let mut st = ctx.st();
            if st.finished || st.response_started {
                return next_header(r);
            }
            st.response_started = true;
            // SAFETY: live request.
            st.response_length = unsafe { ((*r).header_only() == 0).then_some((*r).headers_out.content_length_n).and_then(|n| u64::try_from(n).ok()) };
        }
        continue_response_headers(ctx, r, false)
    });
    out.unwrap_or_else(|_| {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the header filter");
        NGX_ERROR as ngx_int_t
    })
}

/// Runs `on_response_headers` from the next plugin on; passes the header on
/// unless a plugin paused. `resumed`: called from the resume event.
fn continue_response_headers(ctx: &ReqCtx, r: *mut ngx_http_request_t, resumed: bool) -> ngx_int_t {
    let links = response_links(ctx);
    // SAFETY: live request.
    let (count, eos) = unsafe {
        let s = (*r).headers_out.status;
        (hdr::response_pairs(r).len(), (*r).header_only() != 0 || (*r).headers_out.content_length_n == 0 || s == 204 || s == 304 || (100..200).contains(&s))
    };
    let mut stopped = ctx.st().local.is_some() || ctx.st().failed;
    if !stopped {
        let mut vms = ctx.slot.vms.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let link = {
                let mut st = ctx.st();
                if st.response_next >= links.len() {
                    break;
                }
                st.response_next += 1;
                links[st.response_next - 1]
            };
            match vms.vms[link.vm].on_response_headers(link.ctx, count, eos) {
                Ok(Verdict::Continue) => {}
                Ok(Verdict::Pause) => {
                    if !ctx.take_resume(StreamType::HttpResponse) {
                        ctx.st().response_headers_paused = true;
                        ctx.arm_pause_timer(link);
                        // SAFETY: live request: held back until the plugin continues.
                        unsafe { (*r).set_buffered((*r).buffered() | BUFFERED) };
                        return NGX_OK as ngx_int_t;
                    }
                }
                Ok(Verdict::Stop) => {
                    stopped = true;
                    break;
                }
                Err(e) => {
                    if ctx.on_failure(link, &e) {
                        stopped = true;
                        break;
                    }
                }
            }
        }
    }
    let wants_body = {
        let mut st = ctx.st();
        st.response_headers_paused = false;
        st.response_headers_done = true;
        st.wants_response_body
    };
    if stopped {
        replace_response(ctx, r);
    } else if wants_body {
        // SAFETY: live request: plugins may change the body's length.
        unsafe {
            hdr::clear_content_length(r);
            if !(*r).headers_out.accept_ranges.is_null() {
                (*(*r).headers_out.accept_ranges).hash = 0;
                (*r).headers_out.accept_ranges = std::ptr::null_mut();
            }
            (*r).set_allow_ranges(0);
        }
    }
    let _ = resumed;
    next_header(r)
}

/// A local response (or a failure) in the response phase replaces status,
/// headers and body of the response.
fn replace_response(ctx: &ReqCtx, r: *mut ngx_http_request_t) {
    let response = {
        let mut st = ctx.st();
        st.local_sent = true;
        match st.local.clone() {
            Some(l) if !st.failed => l,
            _ => LocalResponse { status: 503, details: String::new(), body: b"plugin failure\n".to_vec(), headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())], grpc_status: -1 },
        }
    };
    // SAFETY: live request, header not sent.
    unsafe {
        hdr::clear_response(r);
        let _ = hdr::remove_response_header(r, b"content-type");
        (*r).headers_out.status = response.status as ngx_uint_t;
        (*r).headers_out.status_line = ngx_str_t { len: 0, data: std::ptr::null_mut() };
        for (k, v) in &response.headers {
            if !k.starts_with(b":") && !k.eq_ignore_ascii_case(b"content-length") {
                let _ = hdr::add_response(r, k, v);
            }
        }
        hdr::clear_content_length(r);
        (*r).headers_out.content_length_n = response.body.len() as off_t;
    }
    ctx.st().replace_body = Some(response.body);
}

/// The bytes of a chain in pieces (a file buffer is read [`PIECE`] bytes at
/// a time, never whole: a static file may be gigabytes; small buffers are
/// joined up to that size), marking every buffer consumed; and whether it
/// ends the body.
unsafe fn drain(r: *mut ngx_http_request_t, mut cl: *mut ngx_chain_t) -> (Vec<Vec<u8>>, bool) {
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let push = |pieces: &mut Vec<Vec<u8>>, bytes: &[u8]| match pieces.last_mut() {
        Some(last) if last.len() + bytes.len() <= PIECE => last.extend_from_slice(bytes),
        _ => pieces.push(bytes.to_vec()),
    };
    let mut eos = false;
    // SAFETY: a chain given to the body filter; file buffers refer to open files.
    unsafe {
        while !cl.is_null() {
            let b = (*cl).buf;
            if (*b).in_file() != 0 && (*b).pos.is_null() || ((*b).in_file() != 0 && (*b).last == (*b).pos && (*b).file_last > (*b).file_pos) {
                let fd = (*(*b).file).fd;
                while (*b).file_pos < (*b).file_last {
                    let n = (((*b).file_last - (*b).file_pos) as usize).min(PIECE);
                    let mut buf = vec![0u8; n];
                    let got = libc::pread(fd, buf.as_mut_ptr() as *mut c_void, n, (*b).file_pos as libc::off_t);
                    if got <= 0 {
                        log(LogLevel::Error, &format!("[proxy_wasm] cannot read a response body buffer from its file: {}", std::io::Error::last_os_error()));
                        (*b).file_pos = (*b).file_last;
                        break;
                    }
                    buf.truncate(got as usize);
                    (*b).file_pos += got as off_t;
                    push(&mut pieces, &buf);
                }
            } else if !(*b).pos.is_null() && (*b).last > (*b).pos {
                push(&mut pieces, std::slice::from_raw_parts((*b).pos, (*b).last.offset_from((*b).pos) as usize));
                (*b).pos = (*b).last;
                if (*b).in_file() != 0 {
                    (*b).file_pos = (*b).file_last;
                }
            }
            if (*b).last_buf() != 0 || (r != (*r).main && (*b).last_in_chain() != 0) {
                eos = true;
            }
            cl = (*cl).next;
        }
    }
    (pieces, eos)
}

unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, input: *mut ngx_chain_t) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: live request.
        if unsafe { (*r).main } != r {
            return next_body(r, input);
        }
        let Some(ctx) = get_ctx(r) else { return next_body(r, input) };
        let (replace, held, wants, eos_sent) = {
            let st = ctx.st();
            (st.replace_body.is_some(), st.response_headers_paused, st.wants_response_body && st.response_headers_done, st.response_eos_sent)
        };
        if !replace && !held && !wants {
            return next_body(r, input);
        }
        // SAFETY: the chain given to this filter.
        let (pieces, eos) = unsafe { drain(r, input) };
        let eos = {
            let mut st = ctx.st();
            st.response_seen += pieces.iter().map(|p| p.len() as u64).sum::<u64>();
            eos || st.response_length.is_some_and(|n| st.response_seen >= n)
        };
        if replace {
            let body = {
                let mut st = ctx.st();
                if st.replaced_sent {
                    None
                } else {
                    st.replaced_sent = true;
                    st.replace_body.clone()
                }
            };
            return match body {
                // SAFETY: live request.
                Some(b) => unsafe { chain_of(r, &b, true) }.map_or(NGX_ERROR as ngx_int_t, |cl| next_body(r, cl)),
                None => next_body(r, std::ptr::null_mut()),
            };
        }
        if held {
            hold_response_body(ctx, pieces, eos);
            return NGX_OK as ngx_int_t;
        }
        if eos_sent {
            return next_body(r, std::ptr::null_mut());
        }
        if ctx.st().response_body_wait.is_some() {
            // Waiting for a plugin at the end of the body; nothing more comes.
            return NGX_OK as ngx_int_t;
        }
        if pieces.is_empty() && !eos {
            return next_body(r, input);
        }
        // Piece by piece through the chain, the last with end_of_stream.
        let n = pieces.len().max(1);
        let mut pieces = pieces.into_iter();
        let mut rc = NGX_OK as ngx_int_t;
        for i in 0..n {
            let last = i + 1 == n;
            rc = response_body(ctx, r, pieces.next().unwrap_or_default(), eos && last);
            let st = ctx.st();
            if rc == NGX_ERROR as ngx_int_t || st.response_body_wait.is_some() || st.response_eos_sent {
                break;
            }
        }
        rc
    });
    out.unwrap_or_else(|_| {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the body filter");
        NGX_ERROR as ngx_int_t
    })
}

/// The response body that arrives while `on_response_headers` is paused is
/// held until the plugin continues, within the pausing plugin's
/// `max_body_size`: past it the response (whose header is not sent yet) is
/// replaced by a 500, as Envoy does when a response body buffered before
/// its headers went out passes the buffer limit.
fn hold_response_body(ctx: &ReqCtx, pieces: Vec<Vec<u8>>, eos: bool) {
    let mut st = ctx.st();
    if st.local.is_some() || st.failed {
        // Answered already: the origin's body is not sent.
        return;
    }
    for p in &pieces {
        st.held_raw.extend_from_slice(p);
    }
    st.held_eos |= eos;
    let size = st.held_raw.len() as u64;
    let link = st.paused_by;
    drop(st);
    let (limit, name) = match link {
        Some(l) => (ctx.slot.set.plugins[l.plugin].config.max_body_size, ctx.plugin_name(l)),
        None => return,
    };
    if size <= limit {
        return;
    }
    {
        let mut st = ctx.st();
        st.held_raw = Vec::new();
        st.local = Some(LocalResponse::response_payload_too_large());
    }
    log(LogLevel::Warn, &format!("[proxy_wasm] {name}: the response body held while its on_response_headers is paused would reach {size} bytes, over its max_body_size ({limit} bytes): the response is replaced by a 500"));
    ctx.post_resume();
}

/// Runs a response chunk through the plugins and sends what comes out.
fn response_body(ctx: &ReqCtx, r: *mut ngx_http_request_t, data: Vec<u8>, eos: bool) -> ngx_int_t {
    let links = response_links(ctx);
    let result = feed(ctx, &links, 0, data, eos, StreamType::HttpResponse);
    emit(ctx, r, result, eos)
}

fn emit(ctx: &ReqCtx, r: *mut ngx_http_request_t, result: Feed, eos: bool) -> ngx_int_t {
    match result {
        Feed::Out(out) => {
            if out.is_empty() && !eos {
                return NGX_OK as ngx_int_t;
            }
            if eos {
                ctx.st().response_eos_sent = true;
                // SAFETY: live request.
                unsafe { (*r).set_buffered((*r).buffered() & !BUFFERED) };
            }
            // SAFETY: live request.
            match unsafe { chain_of(r, &out, eos) } {
                Some(cl) => next_body(r, cl),
                None => NGX_ERROR as ngx_int_t,
            }
        }
        Feed::Held => NGX_OK as ngx_int_t,
        Feed::Wait(stage) => {
            ctx.st().response_body_wait = Some(stage);
            // SAFETY: live request: the end of the body is held back.
            unsafe { (*r).set_buffered((*r).buffered() | BUFFERED) };
            NGX_OK as ngx_int_t
        }
        Feed::Stop => {
            log(LogLevel::Error, "[proxy_wasm] a plugin failed or closed the stream while the response body was being sent; the connection is closed");
            NGX_ERROR as ngx_int_t
        }
    }
}

/// Wakes nginx's writer so that a request held back by us can finish.
fn kick_writer(r: *mut ngx_http_request_t) {
    // SAFETY: live request and connection.
    unsafe {
        let c = (*r).connection;
        post_event((*c).write);
    }
}

fn resume_response_headers(ctx: &ReqCtx, r: *mut ngx_http_request_t) {
    {
        let st = ctx.st();
        if !(st.local.is_some() || st.failed || st.resumes.contains(&StreamType::HttpResponse)) {
            return;
        }
    }
    ctx.take_resume(StreamType::HttpResponse);
    ctx.st().response_headers_paused = false;
    let rc = continue_response_headers(ctx, r, true);
    if ctx.st().response_headers_paused {
        return;
    }
    // SAFETY: live request.
    unsafe { (*r).set_buffered((*r).buffered() & !BUFFERED) };
    if rc == NGX_ERROR as ngx_int_t {
        // SAFETY: live request.
        unsafe { ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t) };
        return;
    }
    let (raw, eos) = {
        let mut st = ctx.st();
        (std::mem::take(&mut st.held_raw), st.held_eos)
    };
    let (replace, wants) = {
        let st = ctx.st();
        (st.replace_body.is_some(), st.wants_response_body)
    };
    let rc = if replace {
        let body = ctx.st().replace_body.clone().unwrap_or_default();
        ctx.st().replaced_sent = true;
        // SAFETY: live request.
        unsafe { chain_of(r, &body, true) }.map_or(NGX_ERROR as ngx_int_t, |cl| next_body(r, cl))
    } else if wants && (!raw.is_empty() || eos) {
        response_body(ctx, r, raw, eos)
    } else if !raw.is_empty() || eos {
        // SAFETY: live request.
        unsafe { chain_of(r, &raw, eos) }.map_or(NGX_ERROR as ngx_int_t, |cl| next_body(r, cl))
    } else {
        NGX_OK as ngx_int_t
    };
    if rc == NGX_ERROR as ngx_int_t {
        // SAFETY: live request.
        unsafe { ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t) };
        return;
    }
    kick_writer(r);
}

fn resume_response_body(ctx: &ReqCtx, r: *mut ngx_http_request_t) {
    if !ctx.take_resume(StreamType::HttpResponse) {
        return;
    }
    let Some(stage) = ctx.st().response_body_wait.take() else { return };
    let links = response_links(ctx);
    let data = ctx.slot.vms.lock().unwrap_or_else(|p| p.into_inner()).vms[links[stage].vm].take_body(links[stage].ctx, StreamType::HttpResponse).unwrap_or_default();
    let result = feed(ctx, &links, stage + 1, data, true, StreamType::HttpResponse);
    // SAFETY: live request.
    unsafe { (*r).set_buffered((*r).buffered() & !BUFFERED) };
    let rc = emit(ctx, r, result, true);
    if rc == NGX_ERROR as ngx_int_t {
        // SAFETY: live request.
        unsafe { ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t) };
        return;
    }
    kick_writer(r);
}

// ------------------------------------------------------------------ log phase, metrics

pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let _ = std::panic::catch_unwind(|| {
        if let Some(ctx) = get_ctx(r) {
            finish(ctx);
        }
    });
    NGX_OK as ngx_int_t
}

/// `proxy_wasm_metrics`: the plugins' metrics in Prometheus text format.
pub unsafe extern "C" fn metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        let text = super::metrics::prometheus_text();
        // SAFETY: live request in the content phase.
        unsafe {
            let rc = ngx_http_discard_request_body(r);
            if rc != NGX_OK as ngx_int_t {
                return rc;
            }
            (*r).headers_out.status = 200;
            let _ = hdr::add_response(r, b"content-type", b"text/plain; version=0.0.4");
            (*r).headers_out.content_length_n = text.len() as off_t;
            send_response(r, text.as_bytes())
        }
    });
    out.unwrap_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)
}
