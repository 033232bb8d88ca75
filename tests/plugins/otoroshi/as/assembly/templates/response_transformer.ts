// Wasmo template "Response transformer" (OTOROSHI_WASM_RESPONSE_TRANSFORMER),
// AssemblyScript PDK. Step TransformResponse, export `execute`. Answers the whole
// context back (the template's `...context`) with status 200, headers = the
// request's headers plus `OTOROSHI_WASM_PLUGIN_ID` and
// `Content-Type: application/json` (as the Go and Rust templates do; the
// TypeScript one reads `otoroshi_request`, which a response context does not
// have), and the body {"foo":"bar"} (body_json).

import { Host } from "@extism/as-pdk";
import { JValue, outputJson, parse, setError } from "../lib/kit";

export function execute(): i32 {
  const context = parse(Host.inputString());
  if (context === null || !context.isObj()) {
    setError("input is not a JSON object");
    return 1;
  }
  const out = context.shallowCopy();
  out.setNum("status", 200);
  const headers = JValue.obj();
  const incoming = context.path2("request", "headers");
  if (incoming !== null && incoming.isObj()) {
    for (let i = 0; i < incoming.keys.length; i++) headers.set(incoming.keys[i], incoming.values[i]);
  }
  headers.setStr("OTOROSHI_WASM_PLUGIN_ID", "OTOROSHI_WASM_RESPONSE_TRANSFORMER");
  headers.setStr("Content-Type", "application/json");
  out.set("headers", headers);
  out.set("body_json", JValue.obj().setStr("foo", "bar"));
  outputJson(out);
  return 0;
}
