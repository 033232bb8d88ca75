//! The steps that answer a request themselves, at the end of the request body (after
//! TransformRequest and CallBackend, with the body as they left it):
//!
//! - Sink (`sink_matches`, then `sink_handle` when it matches): the link stands where a server
//!   sends the requests no route matched (NGINX: the location `error_page 404 = @sink` names;
//!   Traffic Server: the last, catch-all remap rule). Its input says why, as Otoroshi's reverse
//!   proxy does (`NgReverseProxy`, 404, `route not found`). A sink that does not match lets the
//!   request go on (to the next link, then to what the location or rule does).
//! - HandlesRequest (`handle_request`): the plugin answers every request of its chain, the
//!   origin is never called (Otoroshi's `WasmRequestHandler`).
//!
//! Both answers are the chain's local response (`otoroshi_wasm:<id>`); a trap fails the link
//! under the chain's failure policy, a failed call is Otoroshi's 500.

use std::sync::Arc;

use crate::extism::entity::Step;
use crate::extism::steps::input::{self, SinkReason};
use crate::extism::steps::{output, stream as steps_stream, StepFunction};

use super::{local, step_output, unreadable, EntityLink, ExtismStream, Offload, StepResult, Transaction};

/// Whether the entity answers requests itself: its request-body steps run at the request headers
/// when no body follows.
pub(super) fn answers_requests(entity: &EntityLink) -> bool {
    entity.has(Step::Sink) || entity.has(Step::HandlesRequest)
}

/// Sink then HandlesRequest, for the entity's steps among them; `Continue(None)` when neither
/// answers. Their calls run off the event loop for an entity that can make HTTP calls
/// ([`call_step`]): then this runs again when the server resumes the link, and the calls
/// already made are not made again.
pub(super) fn run(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    body: &[u8],
) -> StepResult {
    if entity.has(Step::Sink) {
        match sink(entity, off, tx, es, body) {
            StepResult::Continue(_) => {}
            other => return other,
        }
    }
    if entity.has(Step::HandlesRequest) {
        return handle_request(entity, off, tx, es, body);
    }
    StepResult::Continue(None)
}

fn sink(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    body: &[u8],
) -> StepResult {
    if es.is_done(StepFunction::SinkMatches) && !es.sink_matched {
        return StepResult::Continue(None);
    }
    let Ok(request) = steps_stream::request_parts(es.stream.as_ref(), tx.id()) else {
        return unreadable(entity, StepFunction::SinkMatches, "request headers");
    };
    let reason = SinkReason::no_route();
    let snowflake = tx.snowflake().to_owned();
    let config = &entity.plugin.context_text;
    if !es.is_done(StepFunction::SinkMatches) {
        let f = StepFunction::SinkMatches;
        let json = || input::sink_matches(&snowflake, &request, config, &tx.attrs.0, &reason);
        let out = match step_output(entity, off, es, f, json) {
            Ok(out) => out,
            Err(end) => return end,
        };
        if !output::sink_matches(out.as_deref(), &mut tx.attrs) {
            return StepResult::Continue(None);
        }
        es.sink_matched = true;
    }
    let f = StepFunction::SinkHandle;
    let json = || input::sink_handle(&snowflake, &request, config, &tx.attrs.0, &reason, body);
    let out = match step_output(entity, off, es, f, json) {
        Ok(out) => out,
        Err(end) => return end,
    };
    local(entity, output::sink_handle(out.as_deref(), &mut tx.attrs))
}

fn handle_request(
    entity: &Arc<EntityLink>,
    off: &Offload<'_>,
    tx: &mut Transaction,
    es: &mut ExtismStream,
    body: &[u8],
) -> StepResult {
    let f = StepFunction::HandleRequest;
    let Ok(request) = steps_stream::request_parts(es.stream.as_ref(), tx.id()) else {
        return unreadable(entity, f, "request headers");
    };
    let json = || input::handle_request(&request, body);
    let out = match step_output(entity, off, es, f, json) {
        Ok(out) => out,
        Err(end) => return end,
    };
    local(entity, output::handle_request(out.as_deref()))
}
