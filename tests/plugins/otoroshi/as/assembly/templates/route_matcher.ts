// Wasmo template "Route matcher" (OTOROSHI_WASM_ROUTE_MATCHER), AssemblyScript PDK.
// Step MatchRoute, export `execute`. The route matches when the request header
// `foo` is `bar`.

import { Host } from "@extism/as-pdk";
import { JValue, outputJson, parse, setError } from "../lib/kit";

export function execute(): i32 {
  const context = parse(Host.inputString());
  if (context === null) {
    setError("input is not JSON");
    return 1;
  }
  const headers = context.path2("request", "headers");
  const foo: JValue | null = headers === null ? null : headers.get("foo");
  outputJson(JValue.obj().setBool("result", foo !== null && foo.asString() == "bar"));
  return 0;
}
