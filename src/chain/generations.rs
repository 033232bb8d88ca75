//! The VMs of one server thread (Traffic Server) or worker (NGINX) for one
//! plugin set, as a series of generations.
//!
//! Transactions start on the current generation and keep it (an `Arc`) until
//! they end. A generation is replaced when it must be (a [`RecycleReason`]):
//! a plugin with `failure_policy: reload` failed in it (with back-off), an
//! instance passed its `vm_config.kill_options`, or the configuration was
//! reloaded. A replaced generation is *retired*: no new transaction uses it,
//! its plugins are shut down (`proxy_on_done`, `proxy_on_delete`) once the
//! last transaction on it ended.

use std::fmt;
use std::ops::DerefMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::abi::LogLevel;
use crate::config::FailurePolicy;
use crate::host::ServerHost;
use crate::loader::{LoadedPlugin, PluginError, PluginVms, ReloadBackoff, VmKey};
use crate::vm::{Vm, VmError};

use super::link::Callbacks;
use super::server::ChainVms;

/// The plugins of one configuration (NGINX's `proxy_wasm_config`, Traffic
/// Server's plugin.config or one remap rule), with what the chain and the
/// recycling need to know of them, computed once.
pub struct PluginSet {
    pub plugins: Vec<LoadedPlugin>,
    /// Otoroshi entities a chain can name: plugin index `plugins.len() + i` is entity `i`.
    pub entities: Vec<Arc<super::extism::EntityLink>>,
    callbacks: Vec<Callbacks>,
    shortest_unused: Option<Duration>,
    /// Some plugin has `kill_options.max_calls` or `max_memory_usage`.
    checks_usage: bool,
}

impl PluginSet {
    pub fn new(plugins: Vec<LoadedPlugin>) -> PluginSet {
        let callbacks = plugins.iter().map(Callbacks::of).collect();
        let shortest_unused = plugins.iter().filter_map(|p| p.config.vm.kill_options.max_unused_duration).min();
        let checks_usage = plugins.iter().any(|p| {
            p.config.vm.kill_options.max_calls.is_some() || p.config.vm.kill_options.max_memory_usage.is_some()
        });
        PluginSet { plugins, entities: Vec::new(), callbacks, shortest_unused, checks_usage }
    }

    /// The set with Otoroshi entities after its plugins (index `plugins.len() + i` in a chain).
    #[must_use]
    pub fn with_entities(mut self, entities: Vec<Arc<super::extism::EntityLink>>) -> PluginSet {
        self.entities = entities;
        self
    }

    /// The entity a chain's plugin index names, if it names one.
    #[inline]
    pub fn entity(&self, plugin: usize) -> Option<&Arc<super::extism::EntityLink>> {
        plugin.checked_sub(self.plugins.len()).and_then(|i| self.entities.get(i))
    }

    /// The chain's rules for plugin index `plugin` (a Proxy-Wasm plugin or an entity).
    #[inline]
    pub fn rules(&self, plugin: usize) -> super::extism::Rules<'_> {
        match self.plugins.get(plugin) {
            Some(p) => super::extism::Rules {
                name: &p.config.name,
                failure_policy: p.config.failure_policy,
                pause_timeout: p.config.pause_timeout,
                max_body_size: p.config.max_body_size,
            },
            None => self.entity(plugin).map(|e| e.rules()).unwrap_or(super::extism::Rules {
                name: "?",
                failure_policy: FailurePolicy::FailClosed,
                pause_timeout: crate::config::PluginConfig::DEFAULT_PAUSE_TIMEOUT,
                max_body_size: 0,
            }),
        }
    }

    /// The stream callbacks plugin `plugin` takes.
    #[inline]
    pub fn callbacks(&self, plugin: usize) -> Callbacks {
        self.callbacks.get(plugin).copied().or_else(|| self.entity(plugin).map(|e| e.callbacks())).unwrap_or_default()
    }

    /// The shortest `kill_options.max_unused_duration`: the server checks
    /// idle generations (`Generations::sweep_idle`) about twice as often.
    pub fn shortest_unused_duration(&self) -> Option<Duration> {
        self.shortest_unused
    }

    pub fn name(&self, plugin: usize) -> &str {
        self.rules(plugin).name
    }

    /// "a, b, c": the plugins' names, for log lines.
    pub fn names(&self) -> String {
        self.plugins.iter().map(|p| p.config.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// How a generation's VMs are held. Traffic Server needs a lock (a
/// transaction may move to another thread, which then waits for the VMs);
/// an NGINX worker and the C API use them from one thread and must never
/// wait: [`Exclusive`] refuses a second use instead.
pub trait VmsCell: Send + Sync + 'static {
    type Guard<'a>: DerefMut<Target = PluginVms>
    where
        Self: 'a;
    fn new(vms: PluginVms) -> Self;
    /// `None`: in use, and this cell does not wait.
    fn lock(&self) -> Option<Self::Guard<'_>>;
}

/// Waits for the VMs (a poisoned lock is taken over: a panic in a server
/// callback must not make the VMs unusable for every later transaction).
impl VmsCell for Mutex<PluginVms> {
    type Guard<'a> = MutexGuard<'a, PluginVms>;

    fn new(vms: PluginVms) -> Self {
        Mutex::new(vms)
    }

    fn lock(&self) -> Option<MutexGuard<'_, PluginVms>> {
        Some(Mutex::lock(self).unwrap_or_else(|p| p.into_inner()))
    }
}

/// VMs used by one thread that never waits for them: a use while another
/// is in progress (a server callback calling back in) gets `None`. One
/// uncontended compare-and-swap per use.
pub struct Exclusive(Mutex<PluginVms>);

impl VmsCell for Exclusive {
    type Guard<'a> = MutexGuard<'a, PluginVms>;

    fn new(vms: PluginVms) -> Self {
        Exclusive(Mutex::new(vms))
    }

    fn lock(&self) -> Option<MutexGuard<'_, PluginVms>> {
        match self.0.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// One generation of VMs of a plugin set on one thread or worker.
pub struct Generation<C: VmsCell = Mutex<PluginVms>> {
    set: Arc<PluginSet>,
    vms: C,
    /// 1 for the first generation of a [`Generations`], then 2, 3...
    number: u64,
    retired: AtomicBool,
    /// Its plugins were shut down (`proxy_on_done`): it is only kept while
    /// a plugin's `proxy_done` is awaited.
    shut_down: AtomicBool,
}

impl<C: VmsCell> Generation<C> {
    pub fn set(&self) -> &Arc<PluginSet> {
        &self.set
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    /// Replaced: no new transaction starts on it. Its ticks should stop.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub fn lock(&self) -> Option<C::Guard<'_>> {
        self.vms.lock()
    }

    /// Runs an event outside any transaction (a tick, a queue notification,
    /// an `http_call` answer) on VM `vm`, unless that VM failed (a failed
    /// instance is never entered again) or the VMs are in use on this
    /// thread. `None` when it did not run; otherwise the callback's result,
    /// whose error the server logs.
    pub fn with_vm<R>(&self, vm: usize, f: impl FnOnce(&mut Vm) -> Result<R, VmError>) -> Option<Result<R, VmError>> {
        let mut vms = self.vms.lock()?;
        let vm = vms.vms.get_mut(vm).filter(|vm| vm.failure().is_none())?;
        Some(f(vm))
    }
}

impl<C: VmsCell> ChainVms for Arc<Generation<C>> {
    type Guard<'a> = C::Guard<'a>;

    fn plugins(&self) -> &PluginSet {
        &self.set
    }

    fn lock(&self) -> Option<C::Guard<'_>> {
        self.vms.lock()
    }
}

/// Why a generation was replaced.
#[derive(Debug, Clone, PartialEq)]
pub enum RecycleReason {
    /// A plugin with `failure_policy: reload` failed (trapped, hit its time
    /// or memory limit) in the generation.
    Failure { plugin: String },
    /// `kill_options.max_calls`: the instance ran this many callbacks.
    MaxCalls { plugin: String, calls: u64, max: u64 },
    /// `kill_options.max_memory_usage`: the instance's linear memory passed
    /// `fraction` of its maximum (`limit` bytes).
    MaxMemoryUsage { plugin: String, bytes: u64, fraction: f64, maximum: u64 },
    /// `kill_options.max_unused_duration`: no transaction started for `idle`.
    MaxUnusedDuration { plugin: String, idle: Duration, max: Duration },
    /// The configuration was reloaded (new plugins take over).
    ConfigurationReload,
    /// The server shuts down.
    Shutdown,
}

impl fmt::Display for RecycleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecycleReason::Failure { plugin } => write!(f, "a failure of {plugin} (failure_policy: reload)"),
            RecycleReason::MaxCalls { plugin, calls, max } => {
                write!(f, "recycling: {plugin}: {calls} calls (kill_options.max_calls {max})")
            }
            RecycleReason::MaxMemoryUsage { plugin, bytes, fraction, maximum } => {
                write!(f, "recycling: {plugin}: {bytes} bytes of linear memory (kill_options.max_memory_usage {fraction} of {maximum})")
            }
            RecycleReason::MaxUnusedDuration { plugin, idle, max } => {
                write!(
                    f,
                    "recycling: {plugin}: unused for {:.1} s (kill_options.max_unused_duration {:.1} s)",
                    idle.as_secs_f64(),
                    max.as_secs_f64()
                )
            }
            RecycleReason::ConfigurationReload => f.write_str("a configuration reload"),
            RecycleReason::Shutdown => f.write_str("shutdown"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The VMs could not start: transactions fail closed unless every plugin
    /// of their chain fails open.
    #[error("cannot start the plugins: {0}")]
    Start(Box<PluginError>),
    /// The VMs are in use further up this thread's stack.
    #[error("the plugins' VMs are in use (a server callback called back into them)")]
    Busy,
}

/// What a server provides for its generations: a `ServerHost` per VM, and
/// hooks for starting and retiring a generation.
pub trait GenerationHost<C: VmsCell> {
    /// The `ServerHost` of VM `vm` (0, 1, ... in order) of a generation being started.
    fn server_host(&mut self, vm: usize, key: &VmKey) -> Arc<dyn ServerHost>;
    /// The generation started (e.g. attach the server hosts made for it).
    fn started(&mut self, _generation: &Arc<Generation<C>>) {}
    /// The generation was retired: no new transaction uses it (e.g. stop its ticks).
    fn retired(&mut self, _generation: &Arc<Generation<C>>, _reason: &RecycleReason) {}
    fn log(&mut self, level: LogLevel, message: &str);
}

/// The generations of one plugin set on one thread or worker.
pub struct Generations<C: VmsCell = Mutex<PluginVms>> {
    set: Arc<PluginSet>,
    current: Option<Arc<Generation<C>>>,
    /// Replaced, waiting for their last transaction to end.
    retired: Vec<Arc<Generation<C>>>,
    backoff: ReloadBackoff,
    /// When the current generation last admitted a transaction; only kept
    /// (a clock read per transaction) when a plugin has `max_unused_duration`.
    last_used: Option<Instant>,
    started: u64,
}

impl<C: VmsCell> Generations<C> {
    pub fn new(set: Arc<PluginSet>) -> Generations<C> {
        Generations {
            set,
            current: None,
            retired: Vec::new(),
            backoff: ReloadBackoff::default(),
            last_used: None,
            started: 0,
        }
    }

    pub fn set(&self) -> &Arc<PluginSet> {
        &self.set
    }

    /// The current generation, as it is (no checks, nothing started).
    pub fn peek(&self) -> Option<&Arc<Generation<C>>> {
        self.current.as_ref()
    }

    /// Retired generations still used by a transaction.
    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }

    /// No generation left (after `retire` and the end of their transactions).
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.retired.is_empty()
    }

    /// The generation a new transaction starts on: the current one, unless it
    /// must be replaced (see [`RecycleReason`]); a new one when there is none.
    /// A failed plugin that does not recycle (`fail_closed`, `fail_open`, or
    /// `reload` during its back-off) leaves the generation in place: the
    /// chain's admission applies the policy (see `Chain::new`).
    pub fn current(&mut self, host: &mut impl GenerationHost<C>) -> Result<Arc<Generation<C>>, GenerationError> {
        self.current_at(host, Instant::now)
    }

    /// [`Generations::current`] with the time taken from `clock`, read only
    /// when needed (a failure's back-off, `max_unused_duration`).
    pub fn current_at(
        &mut self,
        host: &mut impl GenerationHost<C>,
        clock: impl Fn() -> Instant,
    ) -> Result<Arc<Generation<C>>, GenerationError> {
        if !self.retired.is_empty() {
            self.sweep(host);
        }
        if let Some(generation) = self.current.clone() {
            match self.replacement(&generation, &clock)? {
                None => {
                    if self.set.shortest_unused.is_some() {
                        self.last_used = Some(clock());
                    }
                    return Ok(generation);
                }
                Some(reason) => self.retire(reason, host),
            }
        }
        self.start(host, &clock)
    }

    /// Why the current generation must be replaced now, if it must.
    fn replacement(
        &mut self,
        generation: &Generation<C>,
        clock: &impl Fn() -> Instant,
    ) -> Result<Option<RecycleReason>, GenerationError> {
        let set = &self.set;
        let mut vms = generation.lock().ok_or(GenerationError::Busy)?;
        let mut any_failed = false;
        let mut reload = None;
        for root in &vms.roots {
            if vms.vms[root.vm].failure().is_some() {
                any_failed = true;
                if set.plugins[root.plugin].config.failure_policy == FailurePolicy::Reload {
                    reload.get_or_insert(root.plugin);
                }
            }
        }
        if let Some(plugin) = reload {
            drop(vms);
            return Ok(self
                .backoff
                .try_reload(clock())
                .then(|| RecycleReason::Failure { plugin: set.name(plugin).to_string() }));
        }
        if any_failed || (!set.checks_usage && set.shortest_unused.is_none()) {
            return Ok(None);
        }
        let idle = match (set.shortest_unused, self.last_used) {
            (Some(_), Some(last)) => Some(clock().saturating_duration_since(last)),
            _ => None,
        };
        Ok(usage_reason(set, &mut vms, idle))
    }

    fn start(
        &mut self,
        host: &mut impl GenerationHost<C>,
        clock: &impl Fn() -> Instant,
    ) -> Result<Arc<Generation<C>>, GenerationError> {
        let mut vm = 0;
        let vms = PluginVms::start(&self.set.plugins, |key| {
            let server = host.server_host(vm, key);
            vm += 1;
            server
        })
        .map_err(|e| GenerationError::Start(Box::new(e)))?;
        self.started += 1;
        let generation = Arc::new(Generation {
            set: self.set.clone(),
            vms: C::new(vms),
            number: self.started,
            retired: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
        });
        host.started(&generation);
        self.current = Some(generation.clone());
        if self.set.shortest_unused.is_some() {
            self.last_used = Some(clock());
        }
        Ok(generation)
    }

    /// Takes the current generation out of service: new transactions get a
    /// new one; it is shut down once no transaction uses it.
    pub fn retire(&mut self, reason: RecycleReason, host: &mut impl GenerationHost<C>) {
        if let Some(generation) = self.current.take() {
            generation.retired.store(true, Ordering::Release);
            host.log(
                LogLevel::Info,
                &format!(
                    "instances of {} (generation {}) replaced after {reason}",
                    self.set.names(),
                    generation.number
                ),
            );
            host.retired(&generation, &reason);
            self.retired.push(generation);
        }
        self.sweep(host);
    }

    /// Shuts down retired generations no transaction uses any more. One
    /// whose plugin's `proxy_on_done` returned false (or a stream context
    /// of which still waits for `proxy_done`) is kept until that wait ends
    /// (`proxy_done`, or [`Generations::expire_awaiting_done`] past the
    /// plugin's `pause_timeout`).
    pub fn sweep(&mut self, host: &mut impl GenerationHost<C>) {
        let set = self.set.clone();
        self.retired.retain(|generation| {
            if Arc::strong_count(generation) > 1 {
                return true;
            }
            match generation.lock() {
                // Kept, shut down, while a context waits for its plugin's
                // `proxy_done` (see `expire_awaiting_done`); shutting down
                // again does not call a plugin twice.
                Some(mut vms) => {
                    if !generation.shut_down.swap(true, Ordering::AcqRel) {
                        shut_down(&set, &mut vms, host);
                    }
                    vms.awaiting_done()
                }
                None => true,
            }
        });
    }

    /// Ends the waits for `proxy_done` that are over in every generation
    /// (`PluginVms::expire_awaiting_done`), then lets go of the retired
    /// generations that waited only for that. Returns whether some context
    /// still waits (the server looks again later: a timer while this is true).
    pub fn expire_awaiting_done(&mut self, now: Instant, host: &mut impl GenerationHost<C>) -> bool {
        let mut waiting = false;
        for generation in self.current.iter().chain(self.retired.iter()) {
            if let Some(mut vms) = generation.lock() {
                vms.expire_awaiting_done(now);
                waiting |= vms.awaiting_done();
            }
        }
        self.sweep(host);
        waiting
    }

    /// The idle check (a server timer every half of
    /// `PluginSet::shortest_unused_duration`): retires the current generation
    /// when a plugin's `max_unused_duration` passed since its last
    /// transaction, so an idle thread or worker gives its memory back, and
    /// shuts down what can be. Returns the reason when it retired one.
    pub fn sweep_idle(&mut self, now: Instant, host: &mut impl GenerationHost<C>) -> Option<RecycleReason> {
        let idle = self.last_used.map(|last| now.saturating_duration_since(last));
        let reason = match (&self.current, idle) {
            (Some(_), Some(idle)) => self.set.plugins.iter().find_map(|p| {
                let max = p.config.vm.kill_options.max_unused_duration?;
                (idle >= max).then(|| RecycleReason::MaxUnusedDuration { plugin: p.config.name.clone(), idle, max })
            }),
            _ => None,
        };
        if let Some(reason) = &reason {
            self.retire(reason.clone(), host);
        } else {
            self.sweep(host);
        }
        reason
    }

    /// Shuts every generation down now (the server exits), used or not.
    pub fn shutdown(&mut self, host: &mut impl GenerationHost<C>) {
        if let Some(generation) = self.current.take() {
            generation.retired.store(true, Ordering::Release);
            host.retired(&generation, &RecycleReason::Shutdown);
            self.retired.push(generation);
        }
        let set = self.set.clone();
        for generation in std::mem::take(&mut self.retired) {
            if let Some(mut vms) = generation.lock() {
                shut_down(&set, &mut vms, host);
            }
        }
    }
}

/// `proxy_on_done` (then `proxy_on_delete`) of every plugin; a failed
/// instance is dropped without calling it.
fn shut_down<C: VmsCell>(set: &PluginSet, vms: &mut PluginVms, host: &mut impl GenerationHost<C>) {
    for (plugin, result) in vms.shutdown() {
        match result {
            Ok(_) | Err(VmError::Failed(_)) => {}
            Err(e) => host.log(LogLevel::Warn, &format!("{}: shutting down old instances: {e}", set.name(plugin))),
        }
    }
}

/// The first `kill_options` limit an instance passed, in plugin order.
fn usage_reason(set: &PluginSet, vms: &mut PluginVms, idle: Option<Duration>) -> Option<RecycleReason> {
    let roots = vms.roots.clone();
    for root in roots {
        let plugin = &set.plugins[root.plugin].config;
        let kill = plugin.vm.kill_options;
        if let Some(max) = kill.max_calls {
            let calls = vms.vms[root.vm].calls();
            if calls >= max {
                return Some(RecycleReason::MaxCalls { plugin: plugin.name.clone(), calls, max });
            }
        }
        if let Some(fraction) = kill.max_memory_usage {
            let maximum = vms.max_memory(root.vm);
            let bytes = vms.vms[root.vm].memory_size() as u64;
            if bytes >= (maximum as f64 * fraction) as u64 {
                return Some(RecycleReason::MaxMemoryUsage { plugin: plugin.name.clone(), bytes, fraction, maximum });
            }
        }
        if let (Some(max), Some(idle)) = (kill.max_unused_duration, idle) {
            if idle >= max {
                return Some(RecycleReason::MaxUnusedDuration { plugin: plugin.name.clone(), idle, max });
            }
        }
    }
    None
}
