// as-filter built with the AssemblyScript SDK @solo-io/proxy-runtime 0.1.1
// (ABI 0.1.0) and AssemblyScript 0.9.4, the compiler that SDK release was
// made for. The protocol is ../../assembly/filter.ts; this file only glues it
// to the 0.1.1 API: contexts are wrapped by RootContextHelper/ContextHelper
// (AssemblyScript 0.9 has no virtual methods), onConfigure() reads the
// configuration with getConfiguration() (proxy_get_configuration), header
// callbacks have no end_of_stream. The SDK's send_local_response cannot send
// headers (its serializeHeaders makes a size table of 1 + n words for 1 + 2n
// entries and aborts with "Index out of range" on any header, on any host), so
// sendLocal() below serialises them and calls the SDK's import itself.

// The ABI entry points (proxy_on_*, malloc, proxy_abi_version_0_1_0).
export * from "@solo-io/proxy-runtime/proxy";

import {
  RootContext, Context, RootContextHelper, ContextHelper, registerRootContext,
  FilterHeadersStatusValues, HeaderPair, Headers, LogLevelValues, stream_context,
} from "@solo-io/proxy-runtime";
import { log, GrpcStatusValues } from "@solo-io/proxy-runtime/runtime";
import { proxy_send_local_response } from "@solo-io/proxy-runtime/imports";
import {
  Settings, parseSettings, headerSafe, wantsLocal, LOCAL_BODY, configuredMessage, rejectedMessage,
} from "../../assembly/filter";

function pair(k: string, v: string): HeaderPair {
  let p = new HeaderPair();
  p.key = String.UTF8.encode(k);
  p.value = String.UTF8.encode(v);
  return p;
}

// The header map in the ABI's format: count, (key size, value size) pairs,
// then each key and value followed by a NUL.
function serializeHeaders(headers: Headers): ArrayBuffer {
  let size = 4;
  for (let i = 0; i < headers.length; i++) {
    size += 8 + headers[i].key.byteLength + 1 + headers[i].value.byteLength + 1;
  }
  let out = new ArrayBuffer(size);
  let base = changetype<usize>(out);
  store<u32>(base, headers.length);
  let at: usize = 4;
  for (let i = 0; i < headers.length; i++) {
    store<u32>(base + at, headers[i].key.byteLength);
    store<u32>(base + at + 4, headers[i].value.byteLength);
    at += 8;
  }
  for (let i = 0; i < headers.length; i++) {
    let key = headers[i].key;
    memory.copy(base + at, changetype<usize>(key), key.byteLength);
    at += key.byteLength + 1;
    let value = headers[i].value;
    memory.copy(base + at, changetype<usize>(value), value.byteLength);
    at += value.byteLength + 1;
  }
  return out;
}

function sendLocal(status: u32, details: string, body: ArrayBuffer, headers: Headers): void {
  let d = String.UTF8.encode(details);
  let h = serializeHeaders(headers);
  proxy_send_local_response(status, changetype<usize>(d), d.byteLength, changetype<usize>(body), body.byteLength,
    changetype<usize>(h), h.byteLength, GrpcStatusValues.InvalidCode);
}

class AsFilterRoot extends RootContext {
  settings: Settings = new Settings();

  // As the SDK's README filter does.
  onConfigure(): bool {
    let raw = String.UTF8.decode(super.getConfiguration());
    let s = parseSettings(raw);
    if (s.reject) {
      log(LogLevelValues.error, rejectedMessage(raw));
      return false;
    }
    this.settings = s;
    log(LogLevelValues.info, configuredMessage(s));
    return true;
  }

  createContext(): Context {
    return ContextHelper.wrap(new AsFilter(this));
  }
}

class AsFilter extends Context {
  settings: Settings;

  constructor(root_context: AsFilterRoot) {
    super();
    this.settings = root_context.settings;
  }

  onRequestHeaders(a: u32): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-as-filter", this.settings.tag);
    let path = stream_context.headers.request.get(":path");
    let xAsLocal = stream_context.headers.request.get("x-as-local");
    if (wantsLocal(this.settings, path, xAsLocal)) {
      let headers: Headers = [];
      headers.push(pair("x-proxy-wasm", this.settings.tag));
      headers.push(pair("x-as-local", "1"));
      headers.push(pair("content-type", "text/plain"));
      sendLocal(this.settings.localStatus, "as-filter", String.UTF8.encode(LOCAL_BODY), headers);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-proxy-wasm", this.settings.tag);
    if (this.settings.raw.length > 0) {
      stream_context.headers.response.add("x-as-config", headerSafe(this.settings.raw));
    }
    return FilterHeadersStatusValues.Continue;
  }
}

// The SDK picks the root context factory by the `plugin_root_id` property.
registerRootContext(() => { return RootContextHelper.wrap(new AsFilterRoot()); }, "");
registerRootContext(() => { return RootContextHelper.wrap(new AsFilterRoot()); }, "as-filter");
