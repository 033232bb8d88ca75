// Wasmo template "Request transformer" (OTOROSHI_WASM_REQUEST_TRANSFORMER),
// AssemblyScript PDK. Step TransformRequest, export `execute`. Answers the whole
// context back (as the template's `...context` does) with method POST, the
// outgoing request's headers plus `OTOROSHI_WASM_PLUGIN_ID` and
// `Content-Type: application/json`, and the body {"foo":"bar"} (body_json).

import { Host } from "@extism/as-pdk";
import { JValue, outputJson, parse, setError } from "../lib/kit";

export function execute(): i32 {
  const context = parse(Host.inputString());
  if (context === null || !context.isObj()) {
    setError("input is not a JSON object");
    return 1;
  }
  const out = context.shallowCopy();
  out.setStr("method", "POST");
  const headers = JValue.obj();
  const incoming = context.path2("otoroshi_request", "headers");
  if (incoming !== null && incoming.isObj()) {
    for (let i = 0; i < incoming.keys.length; i++) headers.set(incoming.keys[i], incoming.values[i]);
  }
  headers.setStr("OTOROSHI_WASM_PLUGIN_ID", "OTOROSHI_WASM_REQUEST_TRANSFORMER");
  headers.setStr("Content-Type", "application/json");
  out.set("headers", headers);
  out.set("body_json", JValue.obj().setStr("foo", "bar"));
  outputJson(out);
  return 0;
}
