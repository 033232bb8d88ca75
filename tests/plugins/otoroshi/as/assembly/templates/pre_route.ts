// Wasmo template "Pre route" (OTOROSHI_WASM_PRE_ROUTE), AssemblyScript PDK.
// Step PreRoute, export `execute`. Lets the request go on when its header `bar` is
// `foo`; otherwise short-circuits with the error form: status 401, text/plain,
// body "you're not authorized".

import { Host } from "@extism/as-pdk";
import { JValue, outputJson, parse, setError } from "../lib/kit";

export function execute(): i32 {
  const context = parse(Host.inputString());
  if (context === null) {
    setError("input is not JSON");
    return 1;
  }
  const headers = context.path2("request", "headers");
  const bar: JValue | null = headers === null ? null : headers.get("bar");
  if (bar !== null && bar.asString() == "foo") {
    outputJson(JValue.obj().setBool("error", false));
  } else {
    outputJson(
      JValue.obj()
        .setBool("error", true)
        .setNum("status", 401)
        .set("headers", JValue.obj().setStr("Content-Type", "text/plain"))
        .setStr("body", "you're not authorized"),
    );
  }
  return 0;
}
