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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::abi::LogLevel;
use crate::config::FailurePolicy;
use crate::extism::call::CallError;
use crate::extism::entity::document::Settings;
use crate::extism::entity::Entity;
use crate::extism::entity::Step;
use crate::extism::opa::{decide, OpaError, OpaVerdict};
use crate::extism::otoroshi::datastore::InProcessDataStore;
use crate::extism::otoroshi::maps::Maps;
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
    /// (NGINX can; Traffic Server sends them before its response transform sees the body): if
    /// not, TransformResponse runs at the end of the body and only its body applies.
    pub hold_response_headers: bool,
    /// Its schedule when `otoroshi.jobs` runs it as a job (`jobs`).
    pub job: Option<crate::extism::entity::document::JobSettings>,
    pool: Mutex<Pool>,
    callbacks: Callbacks,
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
        EntityLink {
            pool: Mutex::new(Pool::new(plugin.clone())),
            plugin,
            failure_policy: FailurePolicy::FailClosed,
            pause_timeout: crate::config::PluginConfig::DEFAULT_PAUSE_TIMEOUT,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            hold_response_headers: true,
            job: None,
            callbacks,
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

/// The most bytes the in-process data store and the in-memory maps hold (each).
pub const DATA_CAP: u64 = 16 << 20;

/// The entities of a load, compiled, linked (only what each grants) and instantiated once as a
/// check, as links for [`super::PluginSet::with_entities`]. They run on `otoroshi.runtime`, else
/// on the runtime of the load's first Proxy-Wasm plugin, else on Wasmtime. The data store and
/// the maps are this process's (one NGINX worker, or all Traffic Server threads); `http_request`
/// and `proxy_http_call` have no client (the calls run on the event loop), so they fail the call.
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
        http: None,
        datastore: Arc::new(InProcessDataStore::new(DATA_CAP)),
        maps: Arc::new(Maps::new(DATA_CAP)),
    });
    let plugins = load_entities(entities, &settings, engine.as_ref(), &services)?;
    for p in plugins.iter().filter(|p| p.makes_http_calls) {
        services.host.log(
            &p.name,
            LogLevel::Warn,
            "imports http_request or proxy_http_call: entity calls run on the event loop in this build, \
             with no HTTP client, so those calls end the plugin's call (docs/otoroshi.md)",
        );
    }
    let mut links = Vec::with_capacity(plugins.len());
    for plugin in plugins {
        let mut link = EntityLink::new(plugin);
        link.hold_response_headers = hold_response_headers;
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
}

impl ExtismStream {
    pub(crate) fn new(stream: Box<dyn HttpStream>) -> ExtismStream {
        ExtismStream { stream, raw_request: None, body: Vec::new(), response_done: false }
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

fn route_of(entity: &EntityLink) -> RouteInfo {
    RouteInfo { id: entity.plugin.id.clone(), name: entity.plugin.name.clone(), ..Default::default() }
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
    entity: &EntityLink,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    phase: Phase,
    end_of_stream: bool,
    body: &[u8],
) -> StepResult {
    match phase {
        Phase::RequestHeaders => request_headers(entity, tx, es, end_of_stream),
        Phase::RequestBody => request_body_end(entity, tx, es, body),
        Phase::ResponseHeaders if !entity.has(Step::TransformResponse) || es.response_done => {
            StepResult::Continue(None)
        }
        // No body follows: the transformer runs now, with none.
        Phase::ResponseHeaders if end_of_stream => transform_response(entity, tx, es, &[]),
        Phase::ResponseHeaders if entity.hold_response_headers => StepResult::Pause,
        Phase::ResponseHeaders => StepResult::Continue(None),
        // The headers went on: the transformer runs at the end of the body; only its body applies.
        Phase::ResponseBody if entity.has(Step::TransformResponse) && !es.response_done => {
            transform_response(entity, tx, es, body)
        }
        Phase::ResponseBody => StepResult::Continue(None),
    }
}

fn request_headers(entity: &EntityLink, tx: &mut Transaction, es: &mut ExtismStream, eos: bool) -> StepResult {
    let Ok(request) = steps_stream::request_parts(es.stream.as_ref(), tx.id()) else {
        return unreadable(entity, StepFunction::PreRoute, "request headers");
    };
    if let Some(unmatched) = routing::gate(entity, tx, &request) {
        return unmatched;
    }
    let route = route_of(entity);
    for (step, f) in [(Step::PreRoute, StepFunction::PreRoute), (Step::ValidateAccess, StepFunction::Access)] {
        if !entity.has(step) {
            continue;
        }
        let snowflake = tx.snowflake().to_owned();
        let attrs = tx.attrs.json();
        let ctx = input::Context {
            snowflake: &snowflake,
            request: &request,
            route: &route,
            config: &entity.plugin.context_json,
            attrs: &attrs,
        };
        let gate = if step == Step::ValidateAccess && entity.plugin.kind == Kind::Opa {
            match entity.evaluate(input::access(&ctx).to_string().as_bytes()) {
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
            let json = if step == Step::PreRoute { input::pre_route(&ctx) } else { input::access(&ctx) };
            let out = entity.call(entity.export(f), json.to_string().as_bytes());
            if let Err(CallError::Trap { trap, .. }) = out {
                return failed(entity, f, trap);
            }
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
    es.raw_request = Some(request);
    if eos
        && (entity.has(Step::TransformRequest) || entity.has(Step::CallBackend) || handlers::answers_requests(entity))
    {
        // No body follows: the request-body steps run now, with none (a body a transformer gives
        // cannot be sent).
        return match request_body_end(entity, tx, es, &[]) {
            StepResult::Continue(_) => StepResult::Continue(None),
            other => other,
        };
    }
    StepResult::Continue(None)
}

/// The end of the request body: TransformRequest, then CallBackend with the body as transformed,
/// then Sink and HandlesRequest (`handlers`).
fn request_body_end(entity: &EntityLink, tx: &mut Transaction, es: &mut ExtismStream, body: &[u8]) -> StepResult {
    let new_body = match transform_request(entity, tx, es, body) {
        StepResult::Continue(b) => b,
        other => return other,
    };
    if entity.has(Step::CallBackend) {
        let sent = new_body.as_deref().unwrap_or(body);
        if let other @ (StepResult::Local(_) | StepResult::Failed(_)) = call_backend(entity, tx, es, sent) {
            return other;
        }
    }
    if handlers::answers_requests(entity) {
        let sent = new_body.as_deref().unwrap_or(body);
        if let other @ (StepResult::Local(_) | StepResult::Failed(_)) = handlers::run(entity, tx, es, sent) {
            return other;
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
fn call_backend(entity: &EntityLink, tx: &mut Transaction, es: &mut ExtismStream, body: &[u8]) -> StepResult {
    let f = StepFunction::CallBackend;
    let Ok(now) = steps_stream::request_parts(es.stream.as_ref(), tx.id()) else {
        return unreadable(entity, f, "request headers");
    };
    let backend = backend_of(&now).json();
    let request = PluginRequest::from_view(&now, Some(backend.clone()));
    let route = route_of(entity);
    let snowflake = tx.snowflake().to_owned();
    let attrs = tx.attrs.json();
    let raw = es.raw_request.clone().unwrap_or_else(|| now.clone());
    let ctx = input::Context {
        snowflake: &snowflake,
        request: &raw,
        route: &route,
        config: &entity.plugin.context_json,
        attrs: &attrs,
    };
    let json = input::call_backend(&ctx, &backend, &request, body);
    let out = entity.call(entity.export(f), json.to_string().as_bytes());
    if let Err(CallError::Trap { trap, .. }) = out {
        return failed(entity, f, trap);
    }
    match output::call_backend(out.as_deref(), &mut tx.attrs) {
        BackendVerdict::Delegate => StepResult::Continue(None),
        BackendVerdict::Respond(r) => local(entity, r),
    }
}

fn transform_request(entity: &EntityLink, tx: &mut Transaction, es: &mut ExtismStream, body: &[u8]) -> StepResult {
    let f = StepFunction::TransformRequest;
    if !entity.has(Step::TransformRequest) {
        return StepResult::Continue(None);
    }
    let Ok(now) = steps_stream::request_parts(es.stream.as_ref(), tx.id()) else {
        return unreadable(entity, f, "request headers");
    };
    let raw = PluginRequest::from_view(es.raw_request.as_ref().unwrap_or(&now), None);
    let otoroshi = PluginRequest::from_view(&now, None);
    let route = route_of(entity);
    let snowflake = tx.snowflake().to_owned();
    let attrs = tx.attrs.json();
    let ctx = input::Context {
        snowflake: &snowflake,
        request: &now,
        route: &route,
        config: &entity.plugin.context_json,
        attrs: &attrs,
    };
    let json = input::transform_request(&ctx, &raw, &otoroshi, body);
    let out = entity.call(entity.export(f), json.to_string().as_bytes());
    if let Err(CallError::Trap { trap, .. }) = out {
        return failed(entity, f, trap);
    }
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
    entity: &EntityLink,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    body: &[u8],
) -> StepResult {
    let f = StepFunction::TransformResponse;
    es.response_done = true;
    let (Ok(request), Ok(response)) =
        (steps_stream::request_parts(es.stream.as_ref(), tx.id()), steps_stream::response_parts(es.stream.as_ref()))
    else {
        return unreadable(entity, f, "response headers");
    };
    let route = route_of(entity);
    let snowflake = tx.snowflake().to_owned();
    let attrs = tx.attrs.json();
    let ctx = input::Context {
        snowflake: &snowflake,
        request: &request,
        route: &route,
        config: &entity.plugin.context_json,
        attrs: &attrs,
    };
    let json = input::transform_response(&ctx, &response, &response, body);
    let out = entity.call(entity.export(f), json.to_string().as_bytes());
    if let Err(CallError::Trap { trap, .. }) = out {
        return failed(entity, f, trap);
    }
    let verdict = output::transform_response(out.as_deref(), &mut tx.attrs);
    if !entity.hold_response_headers {
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
