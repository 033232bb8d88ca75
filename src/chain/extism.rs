//! An Otoroshi WASM plugin entity as a link of the chain: its callbacks are the steps it lists.
//!
//! - request headers: PreRoute, then ValidateAccess (an OPA policy with `opa: true`);
//! - end of the request body: TransformRequest, with the whole body (the link holds the body
//!   until its end, as a Proxy-Wasm link that pauses mid-body does), then CallBackend (the
//!   plugin's answer is the chain's local response instead of the origin's, unless it delegates);
//! - response headers: TransformResponse holds them (the chain waits, its pause owner is this
//!   link) until the end of the response body, then runs with the headers and the whole body;
//!   the changed headers go on and the new body follows them.
//!
//! A trap (an endless loop past `callback_timeout` included) is a failure of the link: the
//! chain's failure policy applies. A failed call or a denial is Otoroshi's answer, as the chain's
//! local response (`otoroshi_wasm:<id>`). Instances come from the entity's pool, taken for one
//! call only.
//!
//! An entity that can make outgoing HTTP calls (`http_request`, `proxy_http_call`: see
//! [`ExtismPlugin::makes_http_calls`]) never runs on the event loop: each of its calls is work
//! the server runs on another thread ([`super::ChainServer::run_off_loop`]), the link waiting
//! meanwhile as a paused link does (bounded by its `pause_timeout`). When the call returned, the
//! server resumes the link on the transaction's thread, the step runs again, finds the call's
//! result and applies it (the steps it already finished are not run again).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::abi::{LogLevel, StreamType};
use crate::config::FailurePolicy;
use crate::extism::call::CallError;
use crate::extism::entity::document::Settings;
use crate::extism::entity::Entity;
use crate::extism::entity::Step;
use crate::extism::http::{off_the_event_loop, OffLoopHttpClient};
use crate::extism::opa::{decide, OpaError, OpaVerdict};
use crate::extism::plugin::{engine, load_entities, ExtismPlugin, Kind, PluginError, Pool};
use crate::extism::state::{ExtismHost, Services};
use crate::extism::steps::output::{self, Attrs, BackendVerdict, Gate, RequestVerdict, ResponseVerdict};
use crate::extism::steps::route::{self, RouteInfo, Snowflake, Target};
use crate::extism::steps::view::{PluginRequest, RequestParts};
use crate::extism::steps::{input, stream as steps_stream, StepFunction};
use crate::host::{HttpStream, LocalResponse};
use crate::runtime::Trap;
use crate::vm::VmError;

use super::flow::Phase;
use super::link::Callbacks;
use super::server::OffLoop;

mod handlers;
pub mod jobs;
pub mod routing;

/// The chain's rules for one link: what the chain reads of a plugin's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub name: &'a str,
    pub failure_policy: FailurePolicy,
    pub pause_timeout: Duration,
    pub max_body_size: u64,
}

/// An entity of the plugin set: the compiled plugin, its pool, and the chain's rules for it.
pub struct EntityLink {
    pub plugin: Arc<ExtismPlugin>,
    /// A trap of the plugin: the transaction gets 503 (`fail_closed`) unless this says otherwise.
    pub failure_policy: FailurePolicy,
    /// How long the response headers wait for the end of the body (TransformResponse).
    pub pause_timeout: Duration,
    /// The most body bytes held for TransformRequest / TransformResponse.
    pub max_body_size: u64,
    /// Whether the server can hold the response headers while it reads the response body
    /// (NGINX can; Traffic Server reads no body while its response header hook is held): if
    /// not, TransformResponse runs at the end of the body (and only its body applies unless
    /// `response_headers_at_body_end`).
    pub hold_response_headers: bool,
    /// When the headers are not held: whether the server still sends them only once the step
    /// ran (Traffic Server's response transform holds its output, and with it the client's
    /// response header, until the end of the body), so its status, headers and cookies apply
    /// at the end of the body too.
    pub response_headers_at_body_end: bool,
    /// Its schedule when `otoroshi.jobs` runs it as a job (`jobs`).
    pub job: Option<crate::extism::entity::document::JobSettings>,
    pool: Mutex<Pool>,
    callbacks: Callbacks,
    /// The `route` of its step inputs ([`RouteInfo::json`] as text): the same for every request.
    route_json: String,
}

impl std::fmt::Debug for EntityLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityLink").field("plugin", &self.plugin.id).finish_non_exhaustive()
    }
}

/// The most body bytes held for a transformer by default (as for Proxy-Wasm plugins).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 16 << 20;

impl EntityLink {
    #[must_use]
    pub fn new(plugin: Arc<ExtismPlugin>) -> EntityLink {
        let callbacks = Callbacks::of_steps(&plugin.steps);
        let route_json = route_info(&plugin).json().to_string();
        EntityLink {
            pool: Mutex::new(Pool::new(plugin.clone())),
            plugin,
            failure_policy: FailurePolicy::FailClosed,
            pause_timeout: crate::config::PluginConfig::DEFAULT_PAUSE_TIMEOUT,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            hold_response_headers: true,
            response_headers_at_body_end: false,
            job: None,
            callbacks,
            route_json,
        }
    }

    pub(crate) fn callbacks(&self) -> Callbacks {
        self.callbacks
    }

    pub(crate) fn rules(&self) -> Rules<'_> {
        Rules {
            name: &self.plugin.id,
            failure_policy: self.failure_policy,
            pause_timeout: self.pause_timeout,
            max_body_size: self.max_body_size,
        }
    }

    /// Instances made so far for this entity (a trapped or retired one is replaced).
    pub fn instances_created(&self) -> u64 {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).created
    }

    /// One call on an instance of the pool, the lock held only to take and give it back (another
    /// thread's call runs on another instance meanwhile).
    fn call(&self, function: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut instance = taken.map_err(|e| CallError::Trap { trap: Trap::new(e.to_string()), error: None })?;
        let r = instance.call(function, input);
        let trapped = matches!(&r, Err(e) if e.trap().is_some());
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).give_back(instance, trapped);
        r
    }

    fn evaluate(&self, input: &[u8]) -> Result<String, OpaError> {
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut instance = taken.map_err(|e| OpaError::Trap(Trap::new(e.to_string())))?;
        let r = instance.evaluate(input);
        let trapped = matches!(r, Err(OpaError::Trap(_)));
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).give_back(instance, trapped);
        r
    }

    fn export(&self, f: StepFunction) -> &str {
        f.export(self.plugin.function_name.as_deref())
    }

    fn has(&self, step: Step) -> bool {
        self.plugin.steps.contains(&step)
    }
}

/// A server's log as the entities' log (`log_*`, `proxy_log`, OPA's `opa_println`).
pub struct ServerLog(pub fn(LogLevel, &str));

impl ExtismHost for ServerLog {
    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        (self.0)(level, &format!("[proxy_wasm] otoroshi plugin {plugin}: {message}"));
    }
}

/// The most bytes the data store and the in-memory maps hold (each).
pub const DATA_CAP: u64 = 16 << 20;

/// The entities of a load, compiled, linked (only what each grants) and instantiated once as a
/// check, as links for [`super::PluginSet::with_entities`]. They run on `otoroshi.runtime`, else
/// on the runtime of the load's first Proxy-Wasm plugin, else on Wasmtime. The data store is the
/// process's (NGINX: the shared-memory zone's, all workers; Traffic Server: all threads), the maps
/// are the process's (one NGINX worker, or all Traffic Server threads); `http_request` and
/// `proxy_http_call` go through [`OffLoopHttpClient`] (`http://` only), which only calls out off
/// the event loop: the calls of an entity that imports them run on the server's threads.
///
/// # Errors
/// The first entity that cannot run, by id: a module that cannot be read or compiled, an import
/// the entity does not grant, an instance that cannot start.
pub fn load_entity_links(
    entities: &[Entity],
    settings: Option<&Settings>,
    plugins: &[crate::config::PluginConfig],
    host: Arc<dyn ExtismHost>,
    hold_response_headers: bool,
) -> Result<Vec<Arc<EntityLink>>, PluginError> {
    if entities.is_empty() {
        return Ok(Vec::new());
    }
    let settings = settings.cloned().unwrap_or_default();
    let runtime = settings.runtime.or_else(|| plugins.first().map(|p| p.vm.runtime)).unwrap_or_default();
    let engine = engine(runtime).ok_or(PluginError::Runtime(runtime))?;
    let services = Arc::new(Services {
        host,
        http: Some(Arc::new(OffLoopHttpClient)),
        // This process's: an NGINX worker installs the shared-memory zone's data store first.
        datastore: crate::extism::otoroshi::datastore::process_datastore(),
        maps: crate::extism::otoroshi::maps::process_maps(),
    });
    let plugins = load_entities(entities, &settings, engine.as_ref(), &services)?;
    for p in plugins.iter().filter(|p| p.makes_http_calls) {
        services.host.log(
            &p.name,
            LogLevel::Debug,
            "imports http_request or proxy_http_call: its calls run off the event loop (docs/otoroshi.md)",
        );
    }
    let mut links = Vec::with_capacity(plugins.len());
    for plugin in plugins {
        let mut link = EntityLink::new(plugin);
        link.hold_response_headers = hold_response_headers;
        link.response_headers_at_body_end = !hold_response_headers;
        link.job = settings.jobs.iter().find(|j| j.plugin == link.plugin.id).cloned();
        // The check: one instance (memoryPages, the initializer), kept in the pool.
        let instance = link.plugin.instantiate()?;
        link.pool.lock().unwrap_or_else(|p| p.into_inner()).give_back(instance, false);
        links.push(Arc::new(link));
    }
    Ok(links)
}

/// What an entity's step came to, for the driver.
pub(super) enum StepResult {
    /// Go on; with a new body for the phase when the plugin gave one.
    Continue(Option<Vec<u8>>),
    /// TransformResponse holds the response headers until the end of the body.
    Pause,
    Local(LocalResponse),
    Failed(VmError),
    /// The step's call runs off the event loop: the link waits until the server resumes it, then
    /// runs again ([`ExtismStream::offloaded`]).
    Offloaded,
}

/// How an entity's step reaches its server to run a call off the event loop.
pub(super) struct Offload<'a> {
    pub run: &'a dyn Fn(OffLoop) -> Result<(), String>,
    /// The link's index in the chain (the server resumes it).
    pub link: u32,
}

/// A step's call running off the event loop, and its result once it returned.
pub(crate) struct Offloaded {
    step: StepFunction,
    result: Mutex<Option<Result<Vec<u8>, CallError>>>,
}

/// One link's state in one transaction.
pub(crate) struct ExtismStream {
    stream: Box<dyn HttpStream>,
    /// The request as it came (`raw_request` of TransformRequest).
    raw_request: Option<RequestParts>,
    /// The request body held until its end.
    pub(super) body: Vec<u8>,
    /// TransformResponse ran: the response body goes through unchanged.
    pub(super) response_done: bool,
    /// The call running off the event loop, if one does.
    offloaded: Option<Arc<Offloaded>>,
    /// The step functions that ran (bit `1 << f as u32`): a step run again after a call off the
    /// event loop skips them.
    done: u32,
    /// The body TransformRequest gave while CallBackend's call runs off the event loop.
    transformed: Option<Vec<u8>>,
    /// `sink_matches` answered true (Sink's handler runs, also after a call off the event loop).
    sink_matched: bool,
}

impl ExtismStream {
    pub(crate) fn new(stream: Box<dyn HttpStream>) -> ExtismStream {
        ExtismStream {
            stream,
            raw_request: None,
            body: Vec::new(),
            response_done: false,
            offloaded: None,
            done: 0,
            transformed: None,
            sink_matched: false,
        }
    }

    /// A call of this link runs (or ran, its result not taken yet) off the event loop.
    pub(super) fn offloaded(&self) -> bool {
        self.offloaded.is_some()
    }

    fn is_done(&self, f: StepFunction) -> bool {
        self.done & (1 << f as u32) != 0
    }
}

/// What a step's call came to.
enum Called {
    Done(Result<Vec<u8>, CallError>),
    /// The step stops here: its call went off the event loop, or could not.
    Stop(StepResult),
}

/// Calls the step function `f` with the input `input` builds: inline, or, for an entity that can
/// make HTTP calls, off the event loop (then `Stop(Offloaded)` until the server resumes the link
/// and the step runs again, which takes the result).
fn call_step(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    es: &mut ExtismStream,
    f: StepFunction,
    input: impl FnOnce() -> Vec<u8>,
) -> Called {
    if let Some(o) = es.offloaded.as_ref().filter(|o| o.step == f) {
        let Some(result) = o.result.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            // Woken before the call returned: it goes on waiting.
            return Called::Stop(StepResult::Offloaded);
        };
        es.offloaded = None;
        es.done |= 1 << f as u32;
        return Called::Done(result);
    }
    if !entity.plugin.makes_http_calls {
        es.done |= 1 << f as u32;
        return Called::Done(entity.call(entity.export(f), &input()));
    }
    let slot = Arc::new(Offloaded { step: f, result: Mutex::new(None) });
    let work = {
        let (entity, slot, export, input) = (entity.clone(), slot.clone(), entity.export(f).to_owned(), input());
        Box::new(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| off_the_event_loop(|| entity.call(&export, &input))))
                .unwrap_or_else(|_| {
                    Err(CallError::Trap {
                        trap: Trap::new("internal error (panic) in the plugin's call off the event loop"),
                        error: None,
                    })
                });
            *slot.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        })
    };
    let direction =
        if f == StepFunction::TransformResponse { StreamType::HttpResponse } else { StreamType::HttpRequest };
    match (off.run)(OffLoop { work, link: off.link, direction, owner: Arc::from(entity.plugin.id.as_str()) }) {
        Ok(()) => {
            es.offloaded = Some(slot);
            Called::Stop(StepResult::Offloaded)
        }
        Err(why) => {
            Called::Stop(failed(entity, f, Trap::new(format!("cannot run the call off the event loop: {why}"))))
        }
    }
}

/// [`call_step`] for a step that acts on its output: the output (or the call's error that is not
/// a trap: Otoroshi's error forms read it), or what the step ends with: the link failed by a trap,
/// or the call gone off the event loop.
fn step_output(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    es: &mut ExtismStream,
    f: StepFunction,
    input: impl FnOnce() -> Vec<u8>,
) -> Result<Result<Vec<u8>, CallError>, StepResult> {
    match call_step(entity, off, es, f, input) {
        Called::Done(Err(CallError::Trap { trap, .. })) => Err(failed(entity, f, trap)),
        Called::Done(out) => Ok(out),
        Called::Stop(result) => Err(result),
    }
}

/// What the entities of one transaction share: its id, snowflake and attributes (Otoroshi's
/// request attributes, which every plugin's outputs change and later inputs carry). Made for
/// every chain, so it costs nothing until an entity runs (id and snowflake are taken then).
#[derive(Default)]
pub(crate) struct Transaction {
    id: u64,
    snowflake: String,
    pub(super) attrs: Attrs,
}

fn snowflakes() -> &'static Snowflake {
    static S: std::sync::OnceLock<Snowflake> = std::sync::OnceLock::new();
    S.get_or_init(|| Snowflake::new(u64::from(std::process::id()) & 0x3ff))
}

impl Transaction {
    /// The transaction's number (the input's `request.id`), unique in the process.
    fn id(&mut self) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        if self.id == 0 {
            self.id = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        self.id
    }

    fn snowflake(&mut self) -> &str {
        if self.snowflake.is_empty() {
            self.snowflake = snowflakes().next();
        }
        &self.snowflake
    }
}

/// The route of an entity's step inputs: the server routes, so the entity names it.
fn route_info(plugin: &ExtismPlugin) -> RouteInfo {
    RouteInfo { id: plugin.id.clone(), name: plugin.name.clone(), ..Default::default() }
}

fn failed(entity: &EntityLink, f: StepFunction, trap: Trap) -> StepResult {
    StepResult::Failed(VmError::Trap { plugin: entity.plugin.id.clone(), callback: f.default_name(), trap })
}

fn local(entity: &EntityLink, r: route::LocalResponse) -> StepResult {
    StepResult::Local(steps_stream::local_response(r, &entity.plugin.id))
}

/// A stream that cannot be read (the server refused): the link fails.
fn unreadable(entity: &EntityLink, f: StepFunction, what: &str) -> StepResult {
    failed(entity, f, Trap::new(format!("cannot read the {what} of the transaction")))
}

/// Runs the steps of `phase` (for a body phase, only at its end, with the whole body).
pub(super) fn run(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    phase: Phase,
    end_of_stream: bool,
    body: &[u8],
) -> StepResult {
    match phase {
        Phase::RequestHeaders => request_headers(entity, off, tx, es, end_of_stream),
        Phase::RequestBody => request_body_end(entity, off, tx, es, body),
        Phase::ResponseHeaders if !entity.has(Step::TransformResponse) || es.response_done => {
            StepResult::Continue(None)
        }
        // No body follows: the transformer runs now, with none.
        Phase::ResponseHeaders if end_of_stream => transform_response(entity, off, tx, es, &[]),
        Phase::ResponseHeaders if entity.hold_response_headers => StepResult::Pause,
        Phase::ResponseHeaders => StepResult::Continue(None),
        // The headers went on: the transformer runs at the end of the body; only its body applies.
        Phase::ResponseBody if entity.has(Step::TransformResponse) && !es.response_done => {
            transform_response(entity, off, tx, es, body)
        }
        Phase::ResponseBody => StepResult::Continue(None),
    }
}

fn request_headers(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    eos: bool,
) -> StepResult {
    let Ok(request) = steps_stream::request_parts(es.stream.as_ref(), tx.id()) else {
        return unreadable(entity, StepFunction::PreRoute, "request headers");
    };
    // MatchRoute runs inline, once (a step run again after a call off the event loop skips it).
    if !es.is_done(StepFunction::MatchesRoute) {
        if let Some(unmatched) = routing::gate(entity, tx, &request) {
            return unmatched;
        }
        es.done |= 1 << StepFunction::MatchesRoute as u32;
    }
    for (step, f) in [(Step::PreRoute, StepFunction::PreRoute), (Step::ValidateAccess, StepFunction::Access)] {
        if !entity.has(step) || es.is_done(f) {
            continue;
        }
        tx.snowflake();
        let ctx = input::Context {
            snowflake: &tx.snowflake,
            request: &request,
            route: &entity.route_json,
            config: &entity.plugin.context_text,
            attrs: &tx.attrs.0,
        };
        let gate = if step == Step::ValidateAccess && entity.plugin.kind == Kind::Opa {
            match entity.evaluate(&input::access(&ctx)) {
                Ok(result) => match decide(&result) {
                    OpaVerdict::Allowed => Gate::Continue,
                    OpaVerdict::Denied { status, message } => {
                        Gate::Respond(route::LocalResponse::otoroshi_error(status, &message, &request.headers))
                    }
                },
                Err(OpaError::Trap(trap)) => return failed(entity, f, trap),
                Err(e) => Gate::Respond(route::LocalResponse::otoroshi_error(400, &e.to_string(), &request.headers)),
            }
        } else {
            let json = || if step == Step::PreRoute { input::pre_route(&ctx) } else { input::access(&ctx) };
            let out = match step_output(entity, off, es, f, json) {
                Ok(out) => out,
                Err(end) => return end,
            };
            let result = out.as_deref();
            if step == Step::PreRoute {
                output::pre_route(result, &mut tx.attrs)
            } else {
                output::access(result, &mut tx.attrs, &request.headers)
            }
        };
        if let Gate::Respond(r) = gate {
            return local(entity, r);
        }
    }
    if es.raw_request.is_none() {
        es.raw_request = Some(request);
    }
    if eos
        && (entity.has(Step::TransformRequest) || entity.has(Step::CallBackend) || handlers::answers_requests(entity))
    {
        // No body follows: the request-body steps run now, with none (a body a transformer gives
        // cannot be sent).
        return match request_body_end(entity, off, tx, es, &[]) {
            StepResult::Continue(_) => StepResult::Continue(None),
            other => other,
        };
    }
    StepResult::Continue(None)
}

/// The end of the request body: TransformRequest, then CallBackend with the body as transformed,
/// then Sink and HandlesRequest (`handlers`).
fn request_body_end(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    body: &[u8],
) -> StepResult {
    let new_body = if es.is_done(StepFunction::TransformRequest) {
        es.transformed.take()
    } else {
        match transform_request(entity, off, tx, es, body) {
            StepResult::Continue(b) => b,
            other => return other,
        }
    };
    if entity.has(Step::CallBackend) && !es.is_done(StepFunction::CallBackend) {
        let sent = new_body.as_deref().unwrap_or(body);
        match call_backend(entity, off, tx, es, sent) {
            StepResult::Offloaded => {
                es.transformed = new_body;
                return StepResult::Offloaded;
            }
            other @ (StepResult::Local(_) | StepResult::Failed(_)) => return other,
            _ => {}
        }
    }
    if handlers::answers_requests(entity) {
        let sent = new_body.as_deref().unwrap_or(body);
        match handlers::run(entity, off, tx, es, sent) {
            StepResult::Offloaded => {
                es.transformed = new_body;
                return StepResult::Offloaded;
            }
            other @ (StepResult::Local(_) | StepResult::Failed(_)) => return other,
            _ => {}
        }
    }
    StepResult::Continue(new_body)
}

/// The backend the request goes to, as far as the chain knows it: the request's authority (the
/// server picks the real upstream).
fn backend_of(request: &RequestParts) -> Target {
    let host = request.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map_or("localhost", |(_, v)| v);
    let (hostname, port) = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => (h, p.parse().ok()),
        _ => (host, None),
    };
    let default = if request.secure { 443 } else { 80 };
    Target { hostname: hostname.to_owned(), port: port.unwrap_or(default), tls: request.secure }
}

/// CallBackend: the plugin answers (the chain's local response) or delegates to the origin.
fn call_backend(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    body: &[u8],
) -> StepResult {
    let f = StepFunction::CallBackend;
    let Ok(now) = steps_stream::request_parts(es.stream.as_ref(), tx.id()) else {
        return unreadable(entity, f, "request headers");
    };
    let backend = backend_of(&now).json();
    let request = PluginRequest::from_view(&now, Some(backend.clone()));
    tx.snowflake();
    // Written before the call (the call borrows the stream state the request is kept in): a step
    // resumed after its call off the event loop writes it once more and does not use it.
    let raw = es.raw_request.take();
    let ctx = input::Context {
        snowflake: &tx.snowflake,
        request: raw.as_ref().unwrap_or(&now),
        route: &entity.route_json,
        config: &entity.plugin.context_text,
        attrs: &tx.attrs.0,
    };
    let json = input::call_backend(&ctx, &backend, &request, body);
    es.raw_request = raw;
    let json = || json;
    let out = match step_output(entity, off, es, f, json) {
        Ok(out) => out,
        Err(end) => return end,
    };
    match output::call_backend(out.as_deref(), &mut tx.attrs) {
        BackendVerdict::Delegate => StepResult::Continue(None),
        BackendVerdict::Respond(r) => local(entity, r),
    }
}

fn transform_request(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    body: &[u8],
) -> StepResult {
    let f = StepFunction::TransformRequest;
    if !entity.has(Step::TransformRequest) {
        return StepResult::Continue(None);
    }
    let Ok(now) = steps_stream::request_parts(es.stream.as_ref(), tx.id()) else {
        return unreadable(entity, f, "request headers");
    };
    let raw = PluginRequest::from_view(es.raw_request.as_ref().unwrap_or(&now), None);
    let otoroshi = PluginRequest::from_view(&now, None);
    tx.snowflake();
    let ctx = input::Context {
        snowflake: &tx.snowflake,
        request: &now,
        route: &entity.route_json,
        config: &entity.plugin.context_text,
        attrs: &tx.attrs.0,
    };
    let json = || input::transform_request(&ctx, &raw, &otoroshi, body);
    let out = match step_output(entity, off, es, f, json) {
        Ok(out) => out,
        Err(end) => return end,
    };
    match output::transform_request(out.as_deref(), &mut tx.attrs) {
        RequestVerdict::Respond(r) => local(entity, r),
        RequestVerdict::Continue(changes) => match steps_stream::apply_request(es.stream.as_mut(), changes) {
            Ok(new_body) => StepResult::Continue(new_body),
            Err(status) => failed(entity, f, Trap::new(format!("the server refused the request changes: {status:?}"))),
        },
    }
}

/// TransformResponse with the response headers held and the whole body.
pub(super) fn transform_response(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    body: &[u8],
) -> StepResult {
    let f = StepFunction::TransformResponse;
    let (Ok(request), Ok(response)) =
        (steps_stream::request_parts(es.stream.as_ref(), tx.id()), steps_stream::response_parts(es.stream.as_ref()))
    else {
        es.response_done = true;
        return unreadable(entity, f, "response headers");
    };
    tx.snowflake();
    let ctx = input::Context {
        snowflake: &tx.snowflake,
        request: &request,
        route: &entity.route_json,
        config: &entity.plugin.context_text,
        attrs: &tx.attrs.0,
    };
    let json = || input::transform_response(&ctx, &response, &response, body);
    let out = match call_step(entity, off, es, f, json) {
        Called::Done(out) => out,
        Called::Stop(result) => return result,
    };
    es.response_done = true;
    if let Err(CallError::Trap { trap, .. }) = out {
        return failed(entity, f, trap);
    }
    let verdict = output::transform_response(out.as_deref(), &mut tx.attrs);
    if !entity.hold_response_headers && !entity.response_headers_at_body_end {
        // The response headers are gone: an error form cannot answer, a new body still applies.
        return match verdict {
            ResponseVerdict::Continue(changes) => StepResult::Continue(changes.body),
            ResponseVerdict::Respond(r) => {
                failed(entity, f, Trap::new(format!("answered {} after the response headers left", r.status)))
            }
        };
    }
    match verdict {
        ResponseVerdict::Respond(r) => local(entity, r),
        ResponseVerdict::Continue(changes) => match steps_stream::apply_response(es.stream.as_mut(), changes) {
            Ok(new_body) => StepResult::Continue(new_body),
            Err(status) => failed(entity, f, Trap::new(format!("the server refused the response changes: {status:?}"))),
        },
    }
}
