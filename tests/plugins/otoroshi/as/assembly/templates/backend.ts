// Wasmo template "Backend" (OTOROSHI_WASM_BACKEND), AssemblyScript PDK.
// Step CallBackend, export `execute`. Answers instead of the origin: status 200,
// the request's headers plus `foo: bar` (a request header `foo` wins), and an HTML
// page in `body`.

import { Host } from "@extism/as-pdk";
import { JValue, outputJson, parse, setError } from "../lib/kit";

const PAGE = `<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
  </head>
  <body style="display: flex; align-items: center; justify-content: center; flex-direction: column; height: 100vh; font-family: monospace;">
    <h1>This HTML comes from the Wasmo plugin</h1>
    <img src="https://maif.github.io/wasmo/wasmo.png" style="width: 200;">
  </body>
</html>`;

export function execute(): i32 {
  const context = parse(Host.inputString());
  if (context === null) {
    setError("input is not JSON");
    return 1;
  }
  const headers = JValue.obj().setStr("foo", "bar");
  const incoming = context.path2("request", "headers");
  if (incoming !== null && incoming.isObj()) {
    for (let i = 0; i < incoming.keys.length; i++) headers.set(incoming.keys[i], incoming.values[i]);
  }
  outputJson(JValue.obj().set("headers", headers).setNum("status", 200).setStr("body", PAGE));
  return 0;
}
