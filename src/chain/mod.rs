//! The filter chain: one transaction through the plugins of one
//! configuration, by the same rules on every server (Traffic Server, NGINX,
//! a C server through `pwh_chain_*`).
//!
//! - Order: request headers and bodies go through the links in order;
//!   response headers and bodies in reverse, through the links that saw the
//!   request headers (Envoy's encoder filters).
//! - Pauses: a Pause from a headers callback, or from a body callback at the
//!   end of the body, makes the chain wait for that link (its *pause owner*)
//!   for at most its `pause_timeout`; the body of a direction whose headers
//!   wait is queued, not filtered (Envoy's StopAllIteration). A Pause before
//!   the end of a body buffers: the link gets the cumulative body next time.
//! - Resumes: `proxy_continue_stream` takes effect when the callback that
//!   asked returned; inside a callback that then pauses it cancels the
//!   pause. Only the pause owner's resume counts; a resume of a direction
//!   that does not wait is a no-op (idempotent). From another event (a tick,
//!   an `http_call` answer) the server is asked to run [`Chain::resume`].
//! - Local responses stop the chain whatever the callback returned; they
//!   are refused (BAD_ARGUMENT) once the response headers left the chain.
//! - Failures: the plugin's failure policy (`policy`): `fail_open` skips the
//!   plugin, `fail_closed` and `reload` answer 503 (abort once the response
//!   headers are out) and skip the rest of the chain.
//! - Bodies: what a link lets through goes on, edited; a link never holds
//!   more than its plugin's `max_body_size` (request: 413, response: cut).
//! - The end: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` of every
//!   link once ([`Chain::finish`], also on drop).
//!
//! The server calls the phase methods as its hooks fire and acts on the
//! [`Flow`] each returns; it provides a [`ChainServer`] (pause timer, wake-up,
//! log). The VMs come from a [`generations::Generation`] (or any [`ChainVms`]).
//! `docs/adr/0001-one-filter-chain.md` explains the design.

mod driver;
pub mod extism;
pub mod flow;
pub mod generations;
pub mod link;
pub mod policy;
pub mod server;
pub mod signals;
pub mod stream;

pub use extism::EntityLink;
pub use flow::{Flow, Phase};
pub use generations::{
    Exclusive, Generation, GenerationError, GenerationHost, Generations, PluginSet, RecycleReason, VmsCell,
};
pub use link::{Callbacks, Link};
pub use server::{offload_done, ChainServer, ChainVms, OffLoop};
pub use signals::Signals;

use crate::abi::{LogLevel, StreamType};
use crate::config::FailurePolicy;
use crate::host::HttpStream;
use crate::vm::VmError;

use driver::{Data, Driver, Timer};
use link::dir_index;
use stream::ChainStream;

/// The most links a kept vector may hold (a longer chain's is freed).
const SPARE_LINKS_MAX: usize = 64;

thread_local! {
    /// The link vector of a finished chain of this thread, kept for the
    /// next one: a server thread (an NGINX worker, a Traffic Server exec
    /// thread) runs one transaction after another, so the vector is not
    /// allocated and freed per transaction.
    static SPARE_LINKS: std::cell::Cell<Vec<Link>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Why a transaction cannot start on its chain: the server answers 503.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A plugin of the chain cannot run and does not fail open: it failed
    /// earlier (`fail_closed`, or `reload` waiting for its back-off) or its
    /// stream context could not be created.
    #[error("{name}: {why}; the transaction gets 503 (failure policy)")]
    Refused { plugin: usize, name: String, why: String },
    #[error("no plugin with index {0} in this plugin set")]
    UnknownPlugin(usize),
    #[error("the plugins' VMs are in use (a server callback called back into them)")]
    Busy,
}

/// Where the chain waits: the phase, the pause owner (link index) and its
/// position in the phase's order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    pub phase: Phase,
    pub link: usize,
    pub pos: usize,
}

/// Body bytes of a direction whose headers have not gone through the chain.
#[derive(Debug, Default)]
struct Queue {
    data: Vec<u8>,
    eos: bool,
}

/// Per direction (index 0 request, 1 response) unless said otherwise.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Headers callbacks run so far (the cursor), in the phase's order.
    next: [usize; 2],
    /// `num_headers` and `end_of_stream` the server gave for the headers.
    headers: [(usize, bool); 2],
    headers_done: [bool; 2],
    /// How many links the response goes through: those that saw the
    /// request headers, fixed when the response headers arrive.
    response_links: Option<usize>,
    wait: Option<Wait>,
    queued: [Queue; 2],
    /// The end of the body went through the chain.
    ended: [bool; 2],
    /// The chain answered, aborted or reset this direction: it no longer filters it.
    stopped: [bool; 2],
    finished: bool,
}

impl State {
    #[inline]
    fn order_len(&self, dir: StreamType, links: usize) -> usize {
        match dir {
            StreamType::HttpResponse => self.response_links.unwrap_or(0),
            _ => links,
        }
    }

    /// The link at `pos` in the order of `dir` (response: last first).
    #[inline]
    fn link_at(&self, dir: StreamType, pos: usize, links: usize) -> Option<usize> {
        let n = self.order_len(dir, links);
        (pos < n).then(|| if dir == StreamType::HttpResponse { n - 1 - pos } else { pos })
    }

    #[inline]
    fn position_of(&self, dir: StreamType, link: usize) -> usize {
        match dir {
            StreamType::HttpResponse => self.response_links.unwrap_or(0).saturating_sub(link + 1),
            _ => link,
        }
    }

    /// Records that the chain answered (`Respond`: that direction), aborted or
    /// reset (both directions). Returns whether it was waiting (its pause
    /// timer must be cancelled).
    fn stop(&mut self, phase: Phase, flow: &Flow, signals: &Signals) -> bool {
        match flow {
            Flow::Respond(_) => {
                self.stopped[dir_index(phase.direction())] = true;
                if phase.direction() == StreamType::HttpResponse {
                    signals.release_response();
                }
            }
            Flow::Abort | Flow::Reset => {
                self.stopped = [true, true];
                signals.release_response();
            }
            _ => return false,
        }
        let waited = self.wait.take().is_some();
        if waited {
            signals.set_waiting(false);
        }
        waited
    }
}

/// One transaction's chain of plugins.
pub struct Chain<S: ChainServer, G: ChainVms> {
    vms: G,
    server: S,
    links: Vec<Link>,
    st: State,
    /// Per link, the state of an Otoroshi entity's link (`None` for Proxy-Wasm links).
    extism: Vec<Option<extism::ExtismStream>>,
    tx: extism::Transaction,
}

impl<S: ChainServer, G: ChainVms> Chain<S, G> {
    /// Creates the stream contexts of `plugins` (indexes into the plugin set,
    /// in request order), each with the server's stream `stream(plugin)`.
    ///
    /// Admission: a plugin whose VM failed earlier is left out when it fails
    /// open and refuses the transaction otherwise; so does a stream context
    /// that cannot be created. A refused transaction gets 503; the contexts
    /// already created are finished first.
    pub fn new<H: HttpStream + 'static>(
        vms: G,
        plugins: impl IntoIterator<Item = usize>,
        server: S,
        stream: impl FnMut(usize) -> H,
    ) -> Result<Chain<S, G>, ChainError> {
        let mut slot = None;
        Self::new_in(&mut slot, vms, plugins, server, stream)?;
        // `new_in` filled the slot when it returned Ok.
        slot.ok_or(ChainError::Busy)
    }

    /// [`Chain::new`] written into `slot` (whose chain, if any, is dropped first): a server that
    /// keeps the chain in its own request context builds it there, instead of moving the
    /// returned value in (two copies of the whole `Chain` per transaction, measured on NGINX).
    pub fn new_in<H: HttpStream + 'static>(
        slot: &mut Option<Chain<S, G>>,
        vms: G,
        plugins: impl IntoIterator<Item = usize>,
        server: S,
        mut stream: impl FnMut(usize) -> H,
    ) -> Result<&mut Chain<S, G>, ChainError> {
        *slot = None;
        let plugins = plugins.into_iter();
        let mut links: Vec<Link> = SPARE_LINKS.with(|s| s.take());
        links.reserve(plugins.size_hint().0);
        let mut extism: Vec<Option<extism::ExtismStream>> = Vec::new();
        {
            let set = vms.plugins();
            let mut guard = vms.lock().ok_or(ChainError::Busy)?;
            let vms_now = &mut *guard;
            let refuse = |vms_now: &mut crate::loader::PluginVms, links: &[Link], error: ChainError| {
                for link in links.iter().filter(|l| l.entity.is_none()) {
                    let _ = vms_now.vms[link.vm].finish_stream(link.ctx);
                }
                Err(error)
            };
            for plugin in plugins {
                if let Some(entity) = set.entity(plugin) {
                    let link_stream = ChainStream::new(stream(plugin), server.clone(), links.len() as u32);
                    links.push(Link {
                        plugin,
                        vm: usize::MAX,
                        ctx: 0,
                        callbacks: entity.callbacks(),
                        failed: false,
                        held: [0, 0],
                        entity: Some(plugin - set.plugins.len()),
                    });
                    extism.resize_with(links.len() - 1, || None);
                    extism.push(Some(extism::ExtismStream::new(Box::new(link_stream))));
                    continue;
                }
                let Some(root) = vms_now
                    .roots
                    .get(plugin)
                    .copied()
                    .filter(|r| r.plugin == plugin)
                    .or_else(|| vms_now.roots.iter().find(|r| r.plugin == plugin).copied())
                else {
                    return refuse(vms_now, &links, ChainError::UnknownPlugin(plugin));
                };
                let config = &set.plugins[plugin].config;
                let fails_open = config.failure_policy == FailurePolicy::FailOpen;
                if vms_now.vms[root.vm].failure().is_some() {
                    if fails_open {
                        continue;
                    }
                    return refuse(
                        vms_now,
                        &links,
                        ChainError::Refused { plugin, name: config.name.clone(), why: "failed earlier".into() },
                    );
                }
                let link_stream = ChainStream::new(stream(plugin), server.clone(), links.len() as u32);
                match vms_now.vms[root.vm].create_stream(root.root_context_id, Box::new(link_stream)) {
                    Ok(ctx) => links.push(Link {
                        plugin,
                        vm: root.vm,
                        ctx,
                        callbacks: set.callbacks(plugin),
                        failed: false,
                        held: [0, 0],
                        entity: None,
                    }),
                    Err(e) => {
                        server.log(&config.name, LogLevel::Error, &format!("cannot create a stream context: {e}"));
                        if !fails_open {
                            return refuse(
                                vms_now,
                                &links,
                                ChainError::Refused {
                                    plugin,
                                    name: config.name.clone(),
                                    why: format!("cannot create a stream context: {e}"),
                                },
                            );
                        }
                    }
                }
            }
        }
        // Only a chain with an entity has per-link entity state (no allocation otherwise).
        if !extism.is_empty() {
            extism.resize_with(links.len(), || None);
        }
        Ok(slot.insert(Chain { vms, server, links, st: State::default(), extism, tx: extism::Transaction::default() }))
    }

    pub fn links(&self) -> &[Link] {
        &self.links
    }

    pub fn server(&self) -> &S {
        &self.server
    }

    pub fn server_mut(&mut self) -> &mut S {
        &mut self.server
    }

    pub fn vms(&self) -> &G {
        &self.vms
    }

    /// Whether some link of the chain takes the callback of `phase`: when
    /// none does (and nothing waits), the server may skip the phase (no body
    /// transform, no body filter work).
    pub fn filters(&self, phase: Phase) -> bool {
        self.links.iter().any(|l| !l.failed && l.callbacks.has(phase))
    }

    /// How many request body bytes a server may hold for this chain before the request gets 413:
    /// the smallest `max_body_size` of the links that take the request body, with that plugin's
    /// index in the set (`None`: no link takes it). A server that must hold the whole body
    /// (Traffic Server, to send it on with its length; NGINX, to replace it) checks this.
    pub fn request_body_limit(&self) -> Option<(u64, usize)> {
        let set = self.vms.plugins();
        self.links
            .iter()
            .filter(|l| !l.failed && l.callbacks.has(Phase::RequestBody))
            .map(|l| (set.rules(l.plugin).max_body_size, l.plugin))
            .min_by_key(|(limit, _)| *limit)
    }

    /// The most body bytes of `direction` one link may hold (the smallest
    /// `max_body_size` of the links that take that body), for a server that
    /// reads a body whole before the chain sees it; `None`: no link takes it.
    pub fn body_limit(&self, direction: StreamType) -> Option<u64> {
        let phase = Phase::body(direction);
        let set = self.vms.plugins();
        self.links
            .iter()
            .filter(|l| !l.failed && l.callbacks.has(phase))
            .map(|l| set.rules(l.plugin).max_body_size)
            .min()
    }

    /// The phase the chain waits in, if it waits.
    pub fn waiting(&self) -> Option<Phase> {
        self.st.wait.map(|w| w.phase)
    }

    /// The link the chain waits for (its pause owner).
    pub fn pause_owner(&self) -> Option<&Link> {
        self.st.wait.map(|w| &self.links[w.link])
    }

    /// The headers of `direction` went through every link.
    pub fn headers_done(&self, direction: StreamType) -> bool {
        self.st.headers_done[dir_index(direction)]
    }

    /// Body bytes of `direction` are queued (they came while its headers
    /// waited); `on_*_body` with an empty chunk runs them.
    pub fn has_queued_body(&self, direction: StreamType) -> bool {
        let q = &self.st.queued[dir_index(direction)];
        !q.data.is_empty() || q.eos
    }

    /// The response headers have left the chain: local responses are refused from now on.
    pub fn response_released(&self) -> bool {
        self.server.signals().response_released()
    }

    pub fn is_finished(&self) -> bool {
        self.st.finished
    }

    // ------------------------------------------------------------ driving

    /// Runs `run` with the VMs held, then applies the pause timer and asks
    /// for a wake-up if resumes are left to look at.
    fn drive(&mut self, phase: Phase, run: impl FnOnce(&mut Driver<'_, S>) -> Flow) -> Flow {
        let Chain { vms, server, links, st, extism, tx } = self;
        let set = vms.plugins();
        let Some(mut guard) = vms.lock() else {
            server.log(
                "",
                LogLevel::Error,
                &format!(
                    "{}: the plugins' VMs are in use (a server callback called back into the chain); internal error",
                    phase.name()
                ),
            );
            let flow = if phase == Phase::ResponseBody || server.signals().response_released() {
                Flow::Abort
            } else {
                Flow::Respond(flow::failure_response())
            };
            if st.stop(phase, &flow, server.signals()) {
                server.cancel_pause_timer();
            }
            return flow;
        };
        // Resumes asked for from other events before this call are for
        // `resume` (a wake-up is on its way): the callbacks run now only
        // take the ones asked for during them. Usually there are none: then
        // neither is taken nor put back (a call each per phase otherwise).
        let earlier = server.signals().has_pending().then(|| server.signals().take_pending());
        server.signals().set_driving(true);
        let mut driver = Driver { links, st, vms: &mut guard, set, server: &*server, timer: Timer::Keep, extism, tx };
        let flow = run(&mut driver);
        let timer = driver.timer;
        server.signals().set_driving(false);
        if let Some(earlier) = earlier {
            server.signals().restore_pending(earlier);
        }
        drop(guard);
        match timer {
            Timer::Keep => {}
            Timer::Arm(timeout) => server.arm_pause_timer(timeout),
            Timer::Cancel => server.cancel_pause_timer(),
        }
        // Resumes asked for during the calls that none of them took (another
        // link's, from a shared VM): `resume` looks at them.
        if server.signals().has_pending() && server.signals().claim_wake() {
            server.schedule_resume();
        }
        flow
    }

    /// Answers, aborts or resets without the VMs.
    fn stop_now(&mut self, phase: Phase, flow: Flow) -> Flow {
        if self.st.stop(phase, &flow, self.server.signals()) {
            self.server.cancel_pause_timer();
        }
        flow
    }

    /// A close or a local response a plugin sent from another event while
    /// the chain did not wait: it takes effect at the chain's next phase.
    fn requests_from_outside(&mut self, phase: Phase) -> Option<Flow> {
        let signals = self.server.signals();
        if signals.closed() {
            return Some(self.stop_now(phase, Flow::Reset));
        }
        if signals.has_local() {
            let local = signals.take_local()?;
            if phase != Phase::ResponseBody && !signals.response_released() {
                return Some(self.stop_now(phase, Flow::Respond(local)));
            }
        }
        None
    }

    /// Whether a link in the order of `phase` takes its callback.
    fn takes(&self, phase: Phase) -> bool {
        let dir = phase.direction();
        (0..self.st.order_len(dir, self.links.len()))
            .filter_map(|pos| self.st.link_at(dir, pos, self.links.len()))
            .any(|li| !self.links[li].failed && self.links[li].callbacks.has(phase))
    }

    /// `on_request_headers` in chain order. `end_of_stream`: no body follows.
    /// Calling it again (a phase handler run again) changes nothing.
    pub fn on_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Flow {
        self.headers(Phase::RequestHeaders, num_headers, end_of_stream)
    }

    /// `on_response_headers`, last link first, over the links that saw the
    /// request headers. A request-side wait ends here (the response came).
    pub fn on_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Flow {
        if let Some(w) = self.st.wait.filter(|w| w.phase.direction() == StreamType::HttpRequest) {
            let _ = w;
            self.st.wait = None;
            self.server.signals().set_waiting(false);
            self.server.cancel_pause_timer();
        }
        if self.st.response_links.is_none() {
            self.st.response_links = Some(self.st.next[0]);
        }
        self.headers(Phase::ResponseHeaders, num_headers, end_of_stream)
    }

    fn headers(&mut self, phase: Phase, num_headers: usize, end_of_stream: bool) -> Flow {
        let d = dir_index(phase.direction());
        if self.st.finished || self.st.stopped[d] || self.st.headers_done[d] {
            return Flow::Continue;
        }
        if self.st.wait.is_some_and(|w| w.phase == phase) {
            return Flow::Wait;
        }
        if let Some(flow) = self.requests_from_outside(phase) {
            return flow;
        }
        self.st.headers[d] = (num_headers, end_of_stream);
        if !self.takes(phase) {
            // No link takes the callback: no VM is entered (the links still
            // saw the request, for the order of the response).
            self.st.next[d] = self.st.order_len(phase.direction(), self.links.len());
            self.st.headers_done[d] = true;
            if phase == Phase::ResponseHeaders {
                self.server.signals().release_response();
            }
            return Flow::Continue;
        }
        self.drive(phase, |d| d.headers(phase))
    }

    /// `on_request_body` with one more chunk (`end_of_stream` on the last,
    /// which may be empty). Chunks that come while the request headers wait
    /// are queued and run once they went through (call again with an empty
    /// chunk to run them).
    pub fn on_request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Flow {
        self.body(Phase::RequestBody, chunk, end_of_stream)
    }

    /// `on_response_body`, last link first (see [`Chain::on_request_body`]).
    pub fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Flow {
        self.body(Phase::ResponseBody, chunk, end_of_stream)
    }

    fn body(&mut self, phase: Phase, chunk: &[u8], end_of_stream: bool) -> Flow {
        let d = dir_index(phase.direction());
        if self.st.finished || self.st.stopped[d] || self.st.ended[d] {
            return Flow::Forward { data: chunk.to_vec(), end_of_stream };
        }
        // The headers said no body follows (Content-Length: 0, a 204...): a server that still
        // hands over an empty last piece gets it back, and no plugin is called, as Envoy calls
        // no body callback for a stream that ended with its headers.
        if self.st.headers[d].1 && chunk.is_empty() {
            return Flow::Forward { data: Vec::new(), end_of_stream };
        }
        if let Some(flow) = self.requests_from_outside(phase) {
            return flow;
        }
        if !self.st.headers_done[d] || self.st.wait.is_some_and(|w| w.phase.direction() == phase.direction()) {
            if let Some(flow) = self.queue_over_limit(phase, chunk.len()) {
                return flow;
            }
            let q = &mut self.st.queued[d];
            q.data.extend_from_slice(chunk);
            q.eos |= end_of_stream;
            // An Otoroshi TransformResponse holds the response headers until the end of the body.
            if let Some(w) = self.st.wait.filter(|w| {
                w.phase == Phase::ResponseHeaders
                    && self.st.queued[d].eos
                    && self.links[w.link].entity.is_some()
                    && self.extism.get(w.link).and_then(Option::as_ref).is_some_and(|es| !es.response_done)
            }) {
                return self.drive(phase, |driver| driver.entity_response_ready(w));
            }
            return Flow::Buffered;
        }
        let queued = std::mem::take(&mut self.st.queued[d]);
        let eos = end_of_stream || queued.eos;
        let data = if queued.data.is_empty() {
            Data::Borrowed(chunk)
        } else {
            let mut all = queued.data;
            all.extend_from_slice(chunk);
            Data::Owned(all)
        };
        if !self.takes(phase) {
            self.st.ended[d] |= eos;
            return Flow::Forward {
                data: match data {
                    Data::Borrowed(b) => b.to_vec(),
                    Data::Owned(v) => v,
                },
                end_of_stream: eos,
            };
        }
        self.drive(phase, |driver| driver.feed(phase, 0, data, eos))
    }

    /// Body bytes queued while the chain waits (its headers, or the end of
    /// the body) are bounded by the pause owner's `max_body_size`, as what a
    /// link holds is (Envoy's buffer limit while a filter stops iteration):
    /// past it a request gets 413, a response whose headers have not left the
    /// chain 500 (`LocalResponse::response_payload_too_large`), else it is
    /// cut (`Abort`). `None`: the chunk fits.
    fn queue_over_limit(&mut self, phase: Phase, chunk: usize) -> Option<Flow> {
        let wait = self.st.wait.filter(|w| w.phase.direction() == phase.direction())?;
        let plugin = self.links[wait.link].plugin;
        let config = self.vms.plugins().rules(plugin);
        let limit = config.max_body_size;
        let size = (self.st.queued[dir_index(phase.direction())].data.len() as u64).saturating_add(chunk as u64);
        if size <= limit {
            return None;
        }
        let (flow, what) = if phase.direction() == StreamType::HttpRequest {
            (Flow::Respond(flow::body_too_large_response()), "answering 413")
        } else if !self.server.signals().response_released() {
            (Flow::Respond(crate::host::LocalResponse::response_payload_too_large()), "answering 500")
        } else {
            (Flow::Abort, "the response is cut (connection closed)")
        };
        let message = format!(
            "the {} that came while its {} waited passed max_body_size ({limit} bytes); {what}",
            phase.name(),
            wait.phase.name()
        );
        self.server.log(config.name, LogLevel::Warn, &message);
        self.st.queued[dir_index(phase.direction())] = Queue::default();
        Some(self.stop_now(phase, flow))
    }

    /// The server's wake-up (after `ChainServer::schedule_resume`): goes on
    /// where the chain waits if its pause owner resumed, answers if a plugin
    /// sent a local response, resets if one closed the stream, or passes on
    /// what a link held mid-body when that link resumed. Returns the phase
    /// and what to do, or `None` when there is nothing to do (a resume that
    /// was a no-op: the wake-up is harmless).
    pub fn resume(&mut self) -> Option<(Phase, Flow)> {
        let signals = self.server.signals();
        signals.woken();
        let pending = signals.take_pending();
        if self.st.finished {
            return None;
        }
        let phase_now = self.st.wait.map(|w| w.phase);
        if signals.closed() && self.st.stopped != [true, true] {
            let phase = phase_now.unwrap_or(if self.st.headers_done[0] {
                Phase::ResponseHeaders
            } else {
                Phase::RequestHeaders
            });
            return Some((phase, self.stop_now(phase, Flow::Reset)));
        }
        if let Some(w) = self.st.wait {
            if signals.has_local() && !signals.response_released() {
                if let Some(local) = signals.take_local() {
                    return Some((w.phase, self.stop_now(w.phase, Flow::Respond(local))));
                }
            }
            if pending.contains(&(w.link as u32, w.phase.direction())) {
                return Some((w.phase, self.drive(w.phase, |d| d.continue_wait(w))));
            }
            return None;
        }
        // A local response while the request body is held mid-way answers now.
        if signals.has_local() && !self.st.stopped[0] && self.links.iter().any(|l| l.held[0] > 0) {
            if let Some(local) = signals.take_local() {
                return Some((Phase::RequestBody, self.stop_now(Phase::RequestBody, Flow::Respond(local))));
            }
        }
        for (link, dir) in pending {
            let (li, d) = (link as usize, dir_index(dir));
            if li < self.links.len() && self.links[li].held[d] > 0 && !self.st.stopped[d] && !self.st.ended[d] {
                let phase = Phase::body(dir);
                return Some((phase, self.drive(phase, |driver| driver.flush_held(phase, li))));
            }
        }
        None
    }

    /// The pause timer fired: past its owner's `pause_timeout`, a wait
    /// becomes a 504 (or an aborted response once its headers are out), as
    /// Envoy ends a stream past its idle timeout. A resume or an answer
    /// already on its way wins over the timer. `None`: nothing waits (a
    /// timer that fired after the wait ended).
    pub fn on_pause_timeout(&mut self) -> Option<(Phase, Flow)> {
        let wait = self.st.wait?;
        let signals = self.server.signals();
        if signals.closed() || signals.has_local() || signals.has_pending() {
            let resumed = self.resume();
            if resumed.is_some() || self.st.wait.is_none() {
                return resumed;
            }
        }
        let link = self.links[wait.link];
        let config = self.vms.plugins().rules(link.plugin);
        let abort = wait.phase == Phase::ResponseBody || self.server.signals().response_released();
        let what = if abort { "aborting the response" } else { "answering 504" };
        self.server.log(
            config.name,
            LogLevel::Warn,
            &format!(
                "kept the {} paused for {:?} (pause_timeout) without continuing it; {what}",
                wait.phase.name(),
                config.pause_timeout
            ),
        );
        let flow = if abort { Flow::Abort } else { Flow::Respond(crate::host::LocalResponse::pause_timeout()) };
        Some((wait.phase, self.stop_now(wait.phase, flow)))
    }

    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` of every link, once
    /// (also for a transaction that never got far; a link whose VM failed is
    /// dropped without calling it). A plugin whose `on_done` returns false
    /// keeps its context until `proxy_done`; its stream is detached.
    ///
    /// Returns whether such a context now waits for its `proxy_done` (the
    /// server bounds the wait: `Generations::expire_awaiting_done`); false
    /// when called again.
    pub fn finish(&mut self) -> bool {
        if std::mem::replace(&mut self.st.finished, true) {
            return false;
        }
        let signals = self.server.signals();
        let _ = signals.take_pending();
        if self.st.wait.take().is_some() {
            signals.set_waiting(false);
            self.server.cancel_pause_timer();
        }
        let Chain { vms, server, links, .. } = self;
        let set = vms.plugins();
        let Some(mut guard) = vms.lock() else {
            server.log("", LogLevel::Error, "cannot end the plugins' stream contexts: their VMs are in use (a server callback called back into the chain)");
            return false;
        };
        let mut awaiting_done = false;
        for link in links.iter().filter(|l| l.entity.is_none()) {
            match guard.vms[link.vm].finish_stream(link.ctx) {
                Ok(done) => awaiting_done |= !done,
                Err(VmError::Failed(_)) => {}
                Err(e) => server.log(set.name(link.plugin), LogLevel::Error, &e.to_string()),
            }
        }
        awaiting_done
    }
}

impl<S: ChainServer, G: ChainVms> Drop for Chain<S, G> {
    fn drop(&mut self) {
        self.finish();
        let mut links = std::mem::take(&mut self.links);
        if links.capacity() <= SPARE_LINKS_MAX {
            links.clear();
            SPARE_LINKS.with(|s| {
                let spare = s.take();
                s.set(if spare.capacity() >= links.capacity() { spare } else { links });
            });
        }
    }
}
