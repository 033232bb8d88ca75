// as-filter: a small proxy-wasm-host test filter written with the
// AssemblyScript SDK (@solo-io/proxy-runtime 0.1.8, ABI 0.2.0).
// Protocol: see tests/plugins/README.md ("as-filter"); the protocol itself is
// in filter.ts, shared with the build for SDK 0.1.1 (../sdk-0.1.1).

// The ABI entry points (proxy_on_*, malloc, proxy_abi_version_0_2_0).
export * from "@solo-io/proxy-runtime/proxy";

import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues,
  GrpcStatusValues, HeaderPair, Headers, LogLevelValues, log, stream_context,
  send_local_response,
} from "@solo-io/proxy-runtime";
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";
import {
  Settings, parseSettings, headerSafe, wantsLocal, LOCAL_BODY, configuredMessage, rejectedMessage,
} from "./filter";

function pair(k: string, v: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(k), String.UTF8.encode(v));
}

class AsFilterRoot extends RootContext {
  settings: Settings = new Settings();

  // The SDK's own onConfigure (which most 0.1.8 filters keep, see
  // SdkConfigureRoot below) passes the configuration size where
  // proxy_get_buffer_bytes' return-size pointer belongs, and then takes the
  // buffer left over from its previous read (the plugin_root_id property's,
  // read when it created this root context) and frees it a second time. With
  // a non-empty root id and an empty configuration that corrupts the
  // AssemblyScript heap, on Envoy as here (a host that writes nothing for a
  // zero-length read, as proxy-wasm-cpp-host did before its PR #303): a later
  // callback may abort in ~lib/rt/pure.ts. It also loses a non-empty
  // configuration. So this root reads its configuration itself, through the
  // SDK's get_buffer_bytes, which passes the right pointers.
  onConfigure(configuration_size: u32): bool {
    let raw = "";
    if (configuration_size > 0) {
      raw = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
    }
    let s = parseSettings(raw);
    if (s.reject) {
      log(LogLevelValues.error, rejectedMessage(raw));
      return false;
    }
    this.settings = s;
    log(LogLevelValues.info, configuredMessage(s));
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
    let xAsLocal = stream_context.headers.request.get("x-as-local");
    if (wantsLocal(this.settings, path, xAsLocal)) {
      let headers: Headers = [];
      headers.push(pair("x-proxy-wasm", this.settings.tag));
      headers.push(pair("x-as-local", "1"));
      headers.push(pair("content-type", "text/plain"));
      send_local_response(this.settings.localStatus, "as-filter", String.UTF8.encode(LOCAL_BODY),
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
