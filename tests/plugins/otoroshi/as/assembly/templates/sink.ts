// Wasmo template "Sink" (OTOROSHI_WASM_SINK), AssemblyScript PDK. Step Sink,
// exports `sink_matches` (always true: this sink takes every unmatched request)
// and `sink_handle`: status 200, JSON body
// {"WASM_SINK_RESPONSE": "Unknown path and domain for <path>"}.

import { Host } from "@extism/as-pdk";
import { JValue, outputJson, parse, setError } from "../lib/kit";

export function sink_matches(): i32 {
  outputJson(JValue.obj().setBool("result", true));
  return 0;
}

export function sink_handle(): i32 {
  const context = parse(Host.inputString());
  if (context === null) {
    setError("input is not JSON");
    return 1;
  }
  const path = context.path2("request", "path");
  const p = path === null ? "" : path.asString();
  outputJson(
    JValue.obj()
      .setNum("status", 200)
      .set("headers", JValue.obj().setStr("Content-Type", "application/json"))
      .set("body_json", JValue.obj().setStr("WASM_SINK_RESPONSE", "Unknown path and domain for " + p)),
  );
  return 0;
}
