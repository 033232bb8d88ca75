// Wasmo template "Access control" (OTOROSHI_WASM_ACCESS_CONTROL), AssemblyScript PDK.
// Step ValidateAccess, export `execute` (entity: "functionName": "execute").
// Allows the request when its header `foo` is `bar`; otherwise denies it with
// Otoroshi's error form: message "you're not authorized", status 401.

import { Host } from "@extism/as-pdk";
import { JValue, outputJson, parse, setError } from "../lib/kit";

export function execute(): i32 {
  const context = parse(Host.inputString());
  if (context === null) {
    setError("input is not JSON");
    return 1;
  }
  const foo = context.path2("request", "headers");
  const value: JValue | null = foo === null ? null : foo.get("foo");
  if (value !== null && value.asString() == "bar") {
    outputJson(JValue.obj().setBool("result", true));
  } else {
    const error = JValue.obj().setStr("message", "you're not authorized").setNum("status", 401);
    outputJson(JValue.obj().setBool("result", false).set("error", error));
  }
  return 0;
}
