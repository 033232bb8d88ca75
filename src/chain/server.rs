//! What a chain needs from its server, and how it reaches its VMs.

use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Duration;

use crate::abi::{LogLevel, StreamType};
use crate::loader::PluginVms;

use super::generations::PluginSet;
use super::signals::Signals;

/// The server side of one transaction's chain: a cheap handle (a pointer to
/// the server's request context, an `Arc`), cloned into every link's stream
/// so that a plugin resuming from a tick or an `http_call` answer can wake
/// the transaction.
///
/// Everything that hands control back to the server (pass the headers on,
/// answer, forward body bytes, hold the response) is a [`super::Flow`] the
/// chain returns; these methods are only the side effects that cannot
/// re-enter the chain.
pub trait ChainServer: Clone + Send + 'static {
    /// The transaction's [`Signals`], embedded in the server's own request
    /// context (one per chain; every clone of the handle gives the same).
    fn signals(&self) -> &Signals;

    /// A link paused: call `Chain::on_pause_timeout` after `timeout` unless
    /// cancelled first. Replaces a timer still armed. Called with the VMs
    /// released.
    fn arm_pause_timer(&mut self, timeout: Duration);

    /// The pause ended: the armed timer (if any) must not fire.
    fn cancel_pause_timer(&mut self);

    /// A plugin resumed, answered or closed the stream from outside the
    /// chain's own calls (a tick, a queue, an `http_call` answer) while the
    /// chain waits: arrange for `Chain::resume` to run on the transaction's
    /// thread soon. Called from inside a VM call (the VMs are in use): post
    /// an event or schedule a continuation, never run the chain here.
    fn schedule_resume(&self);

    /// A line for the server's log about `plugin` (its name).
    fn log(&self, plugin: &str, level: LogLevel, message: &str);

    /// Runs `job.work` on a thread that is not the transaction's event loop (an Otoroshi
    /// entity's call that may block on an outgoing HTTP call: NGINX's thread pool, Traffic
    /// Server's task threads). Once the work returned (or panicked), the server calls
    /// [`offload_done`] on the transaction's thread, unless the transaction is gone: then
    /// nothing reaches the chain and the work's result is dropped with it. Called with the VMs
    /// held, from a chain call. `Err`: the work cannot be run off the event loop (why), and did
    /// not run; the chain fails the link.
    fn run_off_loop(&self, job: OffLoop) -> Result<(), String> {
        drop(job);
        Err("this server runs no plugin call off its event loop".into())
    }
}

/// Work a chain gives its server to run off the event loop ([`ChainServer::run_off_loop`]).
pub struct OffLoop {
    pub work: Box<dyn FnOnce() + Send + 'static>,
    /// The link that waits for the work, and the direction it waits in.
    pub link: u32,
    pub direction: StreamType,
    /// The plugin whose call it is (an entity's id): a server that keeps threads per plugin
    /// runs it on that plugin's.
    pub owner: Arc<str>,
}

impl std::fmt::Debug for OffLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffLoop").field("link", &self.link).field("direction", &self.direction).finish_non_exhaustive()
    }
}

/// The work of an [`OffLoop`] job returned: on the transaction's thread, the link that waits for
/// it resumes (the chain's wake-up runs `Chain::resume`, which picks up the result). Harmless
/// when the chain no longer waits for it (its pause timed out, it answered).
pub fn offload_done<S: ChainServer>(server: &S, link: u32, direction: StreamType) {
    if server.signals().request_resume(link, direction) {
        server.schedule_resume();
    }
}

/// The VMs a chain's stream contexts live in, with the plugins they run:
/// normally an `Arc<Generation>` (see `super::generations`), which also keeps
/// the generation in service until the chain is gone.
pub trait ChainVms {
    type Guard<'a>: DerefMut<Target = PluginVms>
    where
        Self: 'a;

    fn plugins(&self) -> &PluginSet;

    /// The VMs, for one batch of callbacks. `None` when they are in use
    /// further up this thread's stack (a server callback calling back in):
    /// the chain then fails the call as an internal error instead of
    /// deadlocking or aliasing them.
    fn lock(&self) -> Option<Self::Guard<'_>>;
}
