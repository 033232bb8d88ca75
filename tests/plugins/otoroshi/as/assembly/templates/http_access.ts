// Access control through an HTTP service, AssemblyScript PDK: Extism's `http_request`.
// Step ValidateAccess, export `execute` (entity: "functionName": "execute"; allowedHosts
// must name the service's host). Asks the service at config `auth_url` followed by the
// request's path (GET, header `x-auth-pdk: as`): a 2xx answer allows the request, any other
// status denies it with Otoroshi's error form, status 403, message "denied by the auth
// service (<status>): <its body>". The call blocks: the host runs it off the event loop.

import { Config, Host, Memory } from "@extism/as-pdk";
import { http_request } from "@extism/as-pdk/lib/env";
import { JValue, handleString, outputJson, parse, setError } from "../lib/kit";

// as-pdk 1.0.0 declares http_request but not the status of its answer.
@external("extism:host/env", "http_status_code")
declare function http_status_code(): i32;

export function execute(): i32 {
  const context = parse(Host.inputString());
  if (context === null) {
    setError("input is not JSON");
    return 1;
  }
  const base = Config.get("auth_url");
  if (base === null) {
    setError("config auth_url is not set");
    return 1;
  }
  const p = context.path2("request", "path");
  const path = p === null ? "/" : p.asString("/");
  const request = JValue.obj()
    .setStr("url", base + path)
    .setStr("method", "GET")
    .set("headers", JValue.obj().setStr("x-auth-pdk", "as"));
  const mem = Memory.allocateString(request.stringify());
  const body = handleString(http_request(mem.offset, 0));
  const status = http_status_code();
  if (status >= 200 && status < 300) {
    outputJson(JValue.obj().setBool("result", true));
  } else {
    const message = "denied by the auth service (" + status.toString() + "): " + (body === null ? "" : body);
    const error = JValue.obj().setStr("message", message).setNum("status", 403);
    outputJson(JValue.obj().setBool("result", false).set("error", error));
  }
  return 0;
}
