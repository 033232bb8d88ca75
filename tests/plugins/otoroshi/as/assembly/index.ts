// Otoroshi test plugin, AssemblyScript PDK (@extism/as-pdk 1.0.0): one module that
// exports every proxy-engine step under Otoroshi's default function names.
// Imports only the Extism ABI (`extism:host/env`); the protocol (which request
// header makes each step do what) is in tests/plugins/otoroshi/README.md.

import { Ctx, setError } from "./lib/kit";
import * as steps from "./lib/steps";

const TAG = "assemblyscript";

// Reads the context, honours `x-fail`, runs the step. 0 = success.
function run(step: string, body: (ctx: Ctx) => void): i32 {
  const ctx = Ctx.read(step, TAG);
  if (ctx === null) return 1;
  const forced = ctx.forcedFailure();
  if (forced >= 0) return forced;
  const missing = ctx.missingFields();
  if (missing !== null && missing.length > 0) {
    setError(step + ": context lacks " + missing);
    return 1;
  }
  body(ctx);
  return 0;
}

export function pre_route(): i32 {
  return run("pre_route", (c: Ctx): void => steps.preRoute(c));
}

export function access(): i32 {
  return run("access", (c: Ctx): void => steps.access(c));
}

export function transform_request(): i32 {
  return run("transform_request", (c: Ctx): void => steps.transformRequest(c));
}

export function transform_response(): i32 {
  return run("transform_response", (c: Ctx): void => steps.transformResponse(c));
}

export function matches_route(): i32 {
  return run("matches_route", (c: Ctx): void => steps.matchesRoute(c));
}

export function find_route(): i32 {
  return run("find_route", (c: Ctx): void => steps.findRoute(c));
}

export function sink_matches(): i32 {
  return run("sink_matches", (c: Ctx): void => steps.sinkMatches(c));
}

export function sink_handle(): i32 {
  return run("sink_handle", (c: Ctx): void => steps.sinkHandle(c));
}

export function call_backend(): i32 {
  return run("call_backend", (c: Ctx): void => steps.callBackend(c));
}

export function handle_request(): i32 {
  return run("handle_request", (c: Ctx): void => steps.handleRequest(c));
}

export function job_start(): i32 {
  return steps.job(Ctx.readLenient("job_start", TAG));
}

export function job_run(): i32 {
  return steps.job(Ctx.readLenient("job_run", TAG));
}

export function job_stop(): i32 {
  return steps.job(Ctx.readLenient("job_stop", TAG));
}
