// as-filter: a small proxy-wasm-host test filter written with the
// AssemblyScript SDK (@solo-io/proxy-runtime 0.1.8, ABI 0.2.0).
// Protocol: see tests/plugins/README.md ("as-filter").

// The ABI entry points (proxy_on_*, malloc, proxy_abi_version_0_2_0).
export * from "@solo-io/proxy-runtime/proxy";

import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues,
  GrpcStatusValues, HeaderPair, Headers, LogLevelValues, log, stream_context,
  send_local_response,
} from "@solo-io/proxy-runtime";
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";

class Settings {
  raw: string = "";
  tag: string = "assemblyscript";
  localPath: string = "/as-local";
  localStatus: u32 = 403;
  reject: bool = false;
}

// Header-safe copy: printable ASCII only, at most 256 characters.
function headerSafe(s: string): string {
  let out = "";
  let n = s.length < 256 ? s.length : 256;
  for (let i = 0; i < n; i++) {
    let c = s.charCodeAt(i);
    // Map the code, not the string: AssemblyScript 0.14's reference counting
    // mishandles `out += cond ? String.fromCharCode(c) : "_"` (a fresh string in
    // one branch, a static one in the other) and aborts in ~lib/rt/pure.ts.
    if (c < 0x20 || c > 0x7e) c = 0x5f; // '_'
    out += String.fromCharCode(c);
  }
  return out;
}

// Configuration text: "key=value" items separated by ';' or newlines.
// Keys: tag, local_path, local_status, reject. Unknown keys are ignored.
function parseSettings(raw: string): Settings {
  let s = new Settings();
  s.raw = raw;
  let items = raw.replaceAll("\n", ";").split(";");
  for (let i = 0; i < items.length; i++) {
    let item = items[i].trim();
    if (item.length == 0) continue;
    let eq = item.indexOf("=");
    let key = eq < 0 ? item : item.substring(0, eq).trim();
    let value = eq < 0 ? "" : item.substring(eq + 1).trim();
    if (key == "tag") {
      s.tag = value;
    } else if (key == "local_path") {
      s.localPath = value;
    } else if (key == "local_status") {
      let st = I32.parseInt(value);
      if (st >= 200 && st <= 599) {
        s.localStatus = <u32>st;
      } else {
        s.reject = true;
      }
    } else if (key == "reject") {
      s.reject = true;
    }
  }
  return s;
}

function pair(k: string, v: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(k), String.UTF8.encode(v));
}

class AsFilterRoot extends RootContext {
  settings: Settings = new Settings();

  // Reads the plugin configuration itself: the SDK's default onConfigure
  // passes the configuration size as the return-size pointer.
  onConfigure(configuration_size: u32): bool {
    let raw = "";
    if (configuration_size > 0) {
      raw = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
    }
    let s = parseSettings(raw);
    if (s.reject) {
      log(LogLevelValues.error, "as-filter: configuration rejected: " + raw);
      return false;
    }
    this.settings = s;
    log(LogLevelValues.info, "as-filter: configured, tag=" + s.tag + " local_path=" + s.localPath);
    return true;
  }

  createContext(context_id: u32): Context {
    return new AsFilter(context_id, this);
  }
}

class AsFilter extends Context {
  settings: Settings;

  constructor(context_id: u32, root_context: AsFilterRoot) {
    super(context_id, root_context);
    this.settings = root_context.settings;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-as-filter", this.settings.tag);

    let path = stream_context.headers.request.get(":path");
    let q = path.indexOf("?");
    if (q >= 0) path = path.substring(0, q);
    let wantLocal = stream_context.headers.request.get("x-as-local");
    if (path == this.settings.localPath || wantLocal.length > 0) {
      let headers: Headers = [];
      headers.push(pair("x-proxy-wasm", this.settings.tag));
      headers.push(pair("x-as-local", "1"));
      headers.push(pair("content-type", "text/plain"));
      send_local_response(this.settings.localStatus, "as-filter", String.UTF8.encode("local response from as-filter\n"),
        headers, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-proxy-wasm", this.settings.tag);
    if (this.settings.raw.length > 0) {
      stream_context.headers.response.add("x-as-config", headerSafe(this.settings.raw));
    }
    return FilterHeadersStatusValues.Continue;
  }
}

// The SDK's own onConfigure, untouched, as most AssemblyScript filters use it
// (root id "sdk-configure"): it passes the configuration size where the size
// pointer belongs, so with an empty configuration that pointer is null.
class SdkConfigureRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new SdkConfigureFilter(context_id, this);
  }
}

class SdkConfigureFilter extends Context {
  constructor(context_id: u32, root_context: SdkConfigureRoot) {
    super(context_id, root_context);
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-proxy-wasm", "sdk-configure");
    return FilterHeadersStatusValues.Continue;
  }
}

// The SDK picks the root context factory by the `plugin_root_id` property.
registerRootContext((context_id: u32) => { return new AsFilterRoot(context_id); }, "");
registerRootContext((context_id: u32) => { return new AsFilterRoot(context_id); }, "as-filter");
registerRootContext((context_id: u32) => { return new SdkConfigureRoot(context_id); }, "sdk-configure");
