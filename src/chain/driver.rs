//! The chain's work while it holds its VMs: calling the links of a phase in
//! order, and what each outcome does (continue, pause, answer, fail).

use crate::abi::{LogLevel, MapType, StreamType};
use crate::host::LocalResponse;
use crate::loader::PluginVms;
use crate::vm::{Verdict, Vm, VmError};

use super::extism::{Offload, StepResult};
use super::flow::{body_too_large_response, failure_response, Flow, Phase};
use super::generations::PluginSet;
use super::link::{dir_index, Link};
use super::policy::{on_failure, OnFailure};
use super::server::ChainServer;
use super::State;

/// What the pause timer must do once the VMs are released.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Timer {
    Keep,
    Arm(std::time::Duration),
    Cancel,
}

/// What one callback came to, the plugin's requests (local response,
/// close, resume) taken into account: they override its verdict.
pub(super) enum Outcome {
    Continue,
    Pause,
    Local(LocalResponse),
    Closed,
    Failed(VmError),
}

/// Body bytes going down a chain: the server's chunk as given, or a buffer a
/// link let through (possibly edited).
pub(super) enum Data<'c> {
    Borrowed(&'c [u8]),
    Owned(Vec<u8>),
}

impl Data<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Borrowed(b) => b,
            Data::Owned(v) => v,
        }
    }

    fn into_vec(self) -> Vec<u8> {
        match self {
            Data::Borrowed(b) => b.to_vec(),
            Data::Owned(v) => v,
        }
    }
}

/// The chain's parts, borrowed for one batch of callbacks with its VMs held.
pub(super) struct Driver<'a, S: ChainServer> {
    pub links: &'a mut [Link],
    pub st: &'a mut State,
    pub vms: &'a mut PluginVms,
    pub set: &'a PluginSet,
    pub server: &'a S,
    pub timer: Timer,
    /// Per link, the state of an Otoroshi entity's link.
    pub extism: &'a mut [Option<super::extism::ExtismStream>],
    pub tx: &'a mut super::extism::Transaction,
}

impl<S: ChainServer> Driver<'_, S> {
    fn name(&self, li: usize) -> &str {
        self.set.name(self.links[li].plugin)
    }

    fn log(&self, li: usize, level: LogLevel, message: &str) {
        self.server.log(self.name(li), level, message);
    }

    /// Calls one link's callback; the plugin's requests during it decide
    /// before its verdict (a local response or a close ignores it, a resume
    /// it asked for turns its Pause into Continue).
    fn call(&mut self, li: usize, phase: Phase, f: impl FnOnce(&mut Vm, u32) -> Result<Verdict, VmError>) -> Outcome {
        let link = self.links[li];
        let result = f(&mut self.vms.vms[link.vm], link.ctx);
        let signals = self.server.signals();
        let resumed = signals.take_resumes_of(li as u32, phase.direction());
        match result {
            Err(e) => {
                signals.drop_local();
                Outcome::Failed(e)
            }
            Ok(_) if signals.closed() => Outcome::Closed,
            Ok(_) if signals.has_local() => Outcome::Local(signals.take_local().unwrap_or_else(failure_response)),
            Ok(Verdict::Pause) if !resumed => Outcome::Pause,
            Ok(_) => Outcome::Continue,
        }
    }

    /// Runs an Otoroshi entity's steps for `phase` (see `super::extism`).
    fn run_entity(&mut self, li: usize, phase: Phase, eos: bool, body: &[u8]) -> StepResult {
        let Some(entity) = self.links[li].entity.and_then(|e| self.set.entities.get(e)) else {
            return StepResult::Continue(None);
        };
        let Some(es) = self.extism.get_mut(li).and_then(Option::as_mut) else {
            return StepResult::Continue(None);
        };
        let server = self.server;
        let run = |job| server.run_off_loop(job);
        let off = Offload { run: &run, link: li as u32 };
        super::extism::run(entity, &off, self.tx, es, phase, eos, body)
    }

    /// The entity link `li` holds `body` (the end of a body) while its call runs off the event
    /// loop: the chain waits for it.
    fn hold_for_entity(&mut self, phase: Phase, li: usize, pos: usize, body: Vec<u8>) -> Flow {
        self.links[li].held[dir_index(phase.direction())] = body.len() as u64;
        if let Some(es) = self.extism.get_mut(li).and_then(Option::as_mut) {
            es.body = body;
        }
        self.wait(phase, li, pos)
    }

    /// The entity link the chain waits for was resumed while a call of it ran off the event
    /// loop: its step runs again, takes the call's result, and the chain goes on after it (or
    /// waits again for its next call).
    fn continue_entity(&mut self, wait: super::Wait) -> Flow {
        let (li, phase) = (wait.link, wait.phase);
        if phase == Phase::ResponseHeaders && self.st.queued[1].eos {
            // TransformResponse with the whole body, the response headers held.
            return self.entity_response_ready(wait);
        }
        self.leave_wait();
        if phase.is_body() {
            let whole = self.extism.get_mut(li).and_then(Option::as_mut).map(|es| std::mem::take(&mut es.body));
            let whole = whole.unwrap_or_default();
            self.links[li].held[dir_index(phase.direction())] = 0;
            return match self.run_entity(li, phase, true, &whole) {
                StepResult::Continue(new_body) => {
                    self.feed(phase, wait.pos + 1, Data::Owned(new_body.unwrap_or(whole)), true)
                }
                StepResult::Pause => self.feed(phase, wait.pos + 1, Data::Owned(whole), true),
                StepResult::Offloaded => self.hold_for_entity(phase, li, wait.pos, whole),
                StepResult::Local(response) => self.stop(phase, Flow::Respond(response)),
                StepResult::Failed(e) => match self.fail(li, phase, e) {
                    Some(flow) => flow,
                    None => self.feed(phase, wait.pos + 1, Data::Owned(whole), true),
                },
            };
        }
        let eos = self.st.headers[dir_index(phase.direction())].1;
        match self.run_entity(li, phase, eos, &[]) {
            StepResult::Continue(_) => self.headers(phase),
            StepResult::Pause | StepResult::Offloaded => self.wait(phase, li, wait.pos),
            StepResult::Local(response) => self.stop(phase, Flow::Respond(response)),
            StepResult::Failed(e) => match self.fail(li, phase, e) {
                Some(flow) => flow,
                None => self.headers(phase),
            },
        }
    }

    /// The end of the response body came while an entity's TransformResponse held the response
    /// headers: it runs with the whole body; the new body replaces the queued one, and the chain
    /// goes on after the link at the server's wake-up (`Chain::resume`), as if it had resumed.
    pub fn entity_response_ready(&mut self, wait: super::Wait) -> Flow {
        let li = wait.link;
        let body = std::mem::take(&mut self.st.queued[1].data);
        let server = self.server;
        let run = |job| server.run_off_loop(job);
        let off = Offload { run: &run, link: li as u32 };
        let result = match (
            self.links[li].entity.and_then(|e| self.set.entities.get(e)),
            self.extism.get_mut(li).and_then(Option::as_mut),
        ) {
            (Some(entity), Some(es)) => super::extism::transform_response(entity, &off, self.tx, es, &body),
            _ => StepResult::Continue(None),
        };
        let new_body = match result {
            StepResult::Continue(new_body) => new_body,
            StepResult::Pause => None,
            // The call runs off the event loop: the headers wait on with the body queued; the
            // call's return resumes the link (`continue_entity`).
            StepResult::Offloaded => {
                self.st.queued[1].data = body;
                return Flow::Buffered;
            }
            StepResult::Local(response) => return self.stop(wait.phase, Flow::Respond(response)),
            StepResult::Failed(e) => match self.fail(li, wait.phase, e) {
                Some(flow) => return flow,
                None => None,
            },
        };
        self.st.queued[1].data = new_body.unwrap_or(body);
        self.server.signals().request_resume(li as u32, StreamType::HttpResponse);
        Flow::Buffered
    }

    /// A link failed: logged, and its plugin's failure policy applied.
    /// `None`: the transaction goes on without it.
    fn fail(&mut self, li: usize, phase: Phase, e: VmError) -> Option<Flow> {
        let policy = self.set.rules(self.links[li].plugin).failure_policy;
        self.log(li, LogLevel::Error, &format!("{}: {e}", phase.name()));
        self.links[li].failed = true;
        match on_failure(policy, phase, self.server.signals().response_released()) {
            OnFailure::Skip => None,
            OnFailure::Stop(flow) => Some(self.stop(phase, flow)),
        }
    }

    /// The chain answers, aborts or resets: see [`State::stop`].
    pub fn stop(&mut self, phase: Phase, flow: Flow) -> Flow {
        if self.st.stop(phase, &flow, self.server.signals()) {
            self.timer = Timer::Cancel;
        }
        flow
    }

    /// Link `li` (at `pos` in the phase's order) paused: the chain waits for
    /// it, at most its `pause_timeout`.
    fn wait(&mut self, phase: Phase, li: usize, pos: usize) -> Flow {
        let timeout = self.set.rules(self.links[li].plugin).pause_timeout;
        self.st.wait = Some(super::Wait { phase, link: li, pos });
        self.server.signals().set_waiting(true);
        self.timer = Timer::Arm(timeout);
        Flow::Wait
    }

    fn leave_wait(&mut self) {
        if self.st.wait.take().is_some() {
            self.server.signals().set_waiting(false);
            self.timer = Timer::Cancel;
        }
    }

    /// Runs the headers callbacks of `phase` from the phase's cursor on.
    pub fn headers(&mut self, phase: Phase) -> Flow {
        let dir = phase.direction();
        let d = dir_index(dir);
        let eos = self.st.headers[d].1;
        let map =
            if dir == StreamType::HttpResponse { MapType::HttpResponseHeaders } else { MapType::HttpRequestHeaders };
        loop {
            let pos = self.st.next[d];
            let Some(li) = self.st.link_at(dir, pos, self.links.len()) else {
                self.st.headers_done[d] = true;
                if dir == StreamType::HttpResponse {
                    self.server.signals().release_response();
                }
                return Flow::Continue;
            };
            self.st.next[d] += 1;
            let link = self.links[li];
            if link.failed || !link.callbacks.has(phase) {
                continue;
            }
            let outcome = if link.entity.is_some() {
                match self.run_entity(li, phase, eos, &[]) {
                    StepResult::Continue(_) => Outcome::Continue,
                    StepResult::Pause | StepResult::Offloaded => Outcome::Pause,
                    StepResult::Local(response) => Outcome::Local(response),
                    StepResult::Failed(e) => Outcome::Failed(e),
                }
            } else {
                // An earlier link edited the map: this one is told its size as it is now.
                let edited = self.server.signals().take_headers_edited(dir);
                let counted = std::cell::Cell::new(None);
                let count = self.st.headers[d].0;
                let outcome = self.call(li, phase, |vm, ctx| {
                    let count = match edited.then(|| vm.header_count(ctx, map)).flatten() {
                        Some(n) => {
                            counted.set(Some(n));
                            n
                        }
                        None => count,
                    };
                    match dir {
                        StreamType::HttpResponse => vm.on_response_headers(ctx, count, eos),
                        _ => vm.on_request_headers(ctx, count, eos),
                    }
                });
                if let Some(n) = counted.get() {
                    self.st.headers[d].0 = n;
                }
                outcome
            };
            match outcome {
                Outcome::Continue => {}
                Outcome::Pause => return self.wait(phase, li, pos),
                Outcome::Local(response) => return self.stop(phase, Flow::Respond(response)),
                Outcome::Closed => return self.stop(phase, Flow::Reset),
                Outcome::Failed(e) => {
                    if let Some(flow) = self.fail(li, phase, e) {
                        return flow;
                    }
                }
            }
        }
    }

    fn take_body(&mut self, li: usize, dir: StreamType) -> Vec<u8> {
        let link = self.links[li];
        self.links[li].held[dir_index(dir)] = 0;
        if link.entity.is_some() {
            // An entity's link holds its body itself.
            return self
                .extism
                .get_mut(li)
                .and_then(Option::as_mut)
                .map(|es| std::mem::take(&mut es.body))
                .unwrap_or_default();
        }
        self.vms.vms[link.vm].take_body(link.ctx, dir).unwrap_or_default()
    }

    /// Runs body bytes through the links of `phase` from position `from` on.
    pub fn feed(&mut self, phase: Phase, from: usize, mut data: Data<'_>, eos: bool) -> Flow {
        let dir = phase.direction();
        let d = dir_index(dir);
        let n = self.st.order_len(dir, self.links.len());
        for pos in from..n {
            let Some(li) = self.st.link_at(dir, pos, self.links.len()) else { break };
            let link = self.links[li];
            if link.failed || !link.callbacks.has(phase) {
                continue;
            }
            let limit = self.set.rules(link.plugin).max_body_size;
            let len = data.bytes().len() as u64;
            if link.held[d].saturating_add(len) > limit {
                return self.too_large(phase, li, limit);
            }
            if link.entity.is_some() {
                let Some(es) = self.extism.get_mut(li).and_then(Option::as_mut) else { continue };
                // The response body passes when TransformResponse ran with it (headers held).
                if phase == Phase::ResponseBody && es.response_done {
                    continue;
                }
                // A transformer needs the whole body: the link holds it until its end.
                let held = &mut es.body;
                held.extend_from_slice(data.bytes());
                if !eos {
                    self.links[li].held[d] += len;
                    self.server.signals().set_holding(true);
                    return Flow::Buffered;
                }
                let whole = std::mem::take(held);
                self.links[li].held[d] = 0;
                match self.run_entity(li, phase, eos, &whole) {
                    StepResult::Continue(new_body) => data = Data::Owned(new_body.unwrap_or(whole)),
                    StepResult::Pause => data = Data::Owned(whole),
                    StepResult::Offloaded => return self.hold_for_entity(phase, li, pos, whole),
                    StepResult::Local(response) => return self.stop(phase, Flow::Respond(response)),
                    StepResult::Failed(e) => match self.fail(li, phase, e) {
                        Some(flow) => return flow,
                        None => data = Data::Owned(whole),
                    },
                }
                continue;
            }
            let outcome = self.call(li, phase, |vm, ctx| match dir {
                StreamType::HttpResponse => vm.on_response_body(ctx, data.bytes(), eos),
                _ => vm.on_request_body(ctx, data.bytes(), eos),
            });
            match outcome {
                Outcome::Continue => data = Data::Owned(self.take_body(li, dir)),
                Outcome::Pause => {
                    self.links[li].held[d] += len;
                    if eos {
                        return self.wait(phase, li, pos);
                    }
                    self.server.signals().set_holding(true);
                    return Flow::Buffered;
                }
                Outcome::Local(response) => return self.stop(phase, Flow::Respond(response)),
                Outcome::Closed => return self.stop(phase, Flow::Reset),
                Outcome::Failed(e) => match self.fail(li, phase, e) {
                    Some(flow) => return flow,
                    // What the failed plugin held goes on as it was given.
                    None => data = Data::Owned(self.take_body(li, dir)),
                },
            }
        }
        if eos {
            self.st.ended[d] = true;
        }
        let holding = self.links.iter().any(|l| l.held != [0, 0]);
        self.server.signals().set_holding(holding);
        Flow::Forward { data: data.into_vec(), end_of_stream: eos }
    }

    /// A link would hold more than its plugin's `max_body_size`: a request
    /// gets 413, a response (its headers are out) is cut.
    fn too_large(&mut self, phase: Phase, li: usize, limit: u64) -> Flow {
        if phase.direction() == StreamType::HttpRequest {
            self.log(
                li,
                LogLevel::Warn,
                &format!("the request body passed max_body_size ({limit} bytes) held for the plugin; answering 413"),
            );
            self.stop(phase, Flow::Respond(body_too_large_response()))
        } else {
            self.log(li, LogLevel::Warn, &format!("the response body passed max_body_size ({limit} bytes) held for the plugin; the response is cut (connection closed)"));
            self.stop(phase, Flow::Abort)
        }
    }

    /// The link the chain waits for resumed: the chain goes on after it.
    pub fn continue_wait(&mut self, wait: super::Wait) -> Flow {
        if self.extism.get(wait.link).and_then(Option::as_ref).is_some_and(|es| es.offloaded()) {
            return self.continue_entity(wait);
        }
        self.leave_wait();
        if wait.phase.is_body() {
            let data = self.take_body(wait.link, wait.phase.direction());
            self.feed(wait.phase, wait.pos + 1, Data::Owned(data), true)
        } else {
            self.headers(wait.phase)
        }
    }

    /// Link `li`, which paused before the end of the body, resumed from
    /// another event: what it held goes on (as Envoy's continueDecoding after
    /// StopIterationAndBuffer).
    pub fn flush_held(&mut self, phase: Phase, li: usize) -> Flow {
        let dir = phase.direction();
        let data = self.take_body(li, dir);
        let pos = self.st.position_of(dir, li);
        self.feed(phase, pos + 1, Data::Owned(data), false)
    }
}
