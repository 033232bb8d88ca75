// Shared helpers of the Otoroshi test plugins written with the AssemblyScript PDK
// (@extism/as-pdk 1.0.0): reading the step's JSON context, answering in Otoroshi's
// JSON forms, the body forms, and the forced-failure modes.
//
// Every function here uses only the Extism ABI (module `extism:host/env`).

import { Host, Config, Memory, LogLevel } from "@extism/as-pdk";
import { alloc, error_set, length } from "@extism/as-pdk/lib/env";
import { JValue, parse } from "./json";
import * as base64 from "./base64";

export { JValue, parse } from "./json";

// The PDK's own Host.outputString allocates `s.length` bytes (UTF-16 code units)
// but stores the UTF-8 encoding, which is longer for non-ASCII text: always
// output through the encoded bytes instead.
export function outputString(s: string): void {
  Host.output(Uint8Array.wrap(String.UTF8.encode(s)));
}

export function outputJson(v: JValue): void {
  outputString(v.stringify());
}

// Sets the Extism error message (the host reports the call as failed).
export function setError(message: string): void {
  const m = Memory.allocateString(message);
  error_set(m.offset);
}

export function log(level: LogLevel, message: string): void {
  Host.log(level, message);
}

// The string held by a kernel handle returned by a host function; null for the
// 0 handle. A non-zero handle of length 0 is the empty string.
export function handleString(h: u64): string | null {
  if (h == 0) return null;
  const n = length(h);
  if (n == 0) return "";
  return new Memory(h, n).toString();
}

export function handleBytes(h: u64): Uint8Array | null {
  if (h == 0) return null;
  const n = length(h);
  if (n == 0) return new Uint8Array(0);
  return new Memory(h, n).toUint8Array();
}

// Abort handler (asc --use abort=...): records the message as the Extism error,
// then traps, so the host sees a failed call with a reason.
export function otoAbort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  const m = message === null ? "abort" : message;
  const f = fileName === null ? "?" : fileName;
  setError("abort: " + m + " at " + f + ":" + line.toString() + ":" + column.toString());
  unreachable();
}

// ------------------------------------------------------------- bytes helpers

export function utf8(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

export function fromUtf8(b: Uint8Array): string {
  // Copy: the view may not start at offset 0 of its buffer.
  const copy = new Uint8Array(b.length);
  copy.set(b);
  return String.UTF8.decode(copy.buffer);
}

// Otoroshi sends bodies as JSON arrays of *signed* bytes (-128..127); unsigned
// values are accepted too.
export function bytesFromJson(v: JValue | null): Uint8Array | null {
  if (v === null || !v.isArr()) return null;
  const out = new Uint8Array(v.items.length);
  for (let i = 0; i < v.items.length; i++) {
    out[i] = <u8>(<i32>v.items[i].asNum(0) & 0xff);
  }
  return out;
}

// Bytes as Otoroshi writes them: a JSON array of signed bytes.
export function bytesToJson(b: Uint8Array): JValue {
  const a = JValue.arr();
  for (let i = 0; i < b.length; i++) a.items.push(JValue.num(<f64>(<i8>b[i])));
  return a;
}

// ------------------------------------------------------------- the context

export class Ctx {
  root: JValue;
  step: string;
  tag: string;

  constructor(root: JValue, step: string, defaultTag: string) {
    this.root = root;
    this.step = step;
    this.tag = defaultTag;
    const t = this.config("tag");
    if (t !== null) this.tag = t;
  }

  // Parses the input; on invalid JSON sets the error and returns null.
  static read(step: string, defaultTag: string): Ctx | null {
    const raw = Host.inputString();
    const v = parse(raw);
    if (v === null || !v.isObj()) {
      setError(step + ": input is not a JSON object (" + raw.length.toString() + " chars)");
      return null;
    }
    return new Ctx(v, step, defaultTag);
  }

  // Jobs get little input (Otoroshi sends {snowflake, attrs, global_config}):
  // anything that is not a JSON object is read as {}.
  static readLenient(step: string, defaultTag: string): Ctx {
    const v = parse(Host.inputString());
    return new Ctx(v === null || !v.isObj() ? JValue.obj() : v, step, defaultTag);
  }

  get(key: string): JValue | null {
    return this.root.get(key);
  }

  // The incoming request as Otoroshi describes it: `request` for most steps,
  // `raw_request` for CallBackend (where `request` is the outgoing one).
  rawRequest(): JValue {
    const raw = this.root.get("raw_request");
    if (raw !== null && raw.isObj()) return raw;
    const req = this.root.get("request");
    if (req !== null && req.isObj()) return req;
    return JValue.obj();
  }

  // A request header, case-insensitively, from `request.headers` then
  // `raw_request.headers`; null when absent.
  header(name: string): string | null {
    const lname = name.toLowerCase();
    const sources = ["request", "raw_request", "otoroshi_request"];
    for (let s = 0; s < sources.length; s++) {
      const h = this.root.path2(sources[s], "headers");
      if (h === null || !h.isObj()) continue;
      for (let i = 0; i < h.keys.length; i++) {
        if (h.keys[i].toLowerCase() == lname) {
          const v = h.values[i];
          if (v.isStr()) return v.s;
          if (v.isArr() && v.items.length > 0) return v.items[0].asString("");
          return "";
        }
      }
    }
    return null;
  }

  hasHeader(name: string): bool {
    return this.header(name) !== null;
  }

  headerOr(name: string, fallback: string): string {
    const v = this.header(name);
    return v === null ? fallback : v;
  }

  path(): string {
    const p = this.rawRequest().get("path");
    if (p !== null && p.isStr()) return p.s;
    return "";
  }

  method(): string {
    const m = this.rawRequest().get("method");
    if (m !== null && m.isStr()) return m.s;
    return "";
  }

  // A configuration value: Extism `config_get` first (the entity's `config`
  // map), then the context's `config.config.<key>`, then `config.<key>`.
  config(key: string): string | null {
    const v = Config.get(key);
    if (v !== null) return v;
    return this.contextConfig(key);
  }

  configFromExtism(key: string): string | null {
    return Config.get(key);
  }

  contextConfig(key: string): string | null {
    const c = this.root.get("config");
    if (c === null || !c.isObj()) return null;
    const inner = c.get("config");
    if (inner !== null && inner.isObj()) {
      const x = inner.get(key);
      if (x !== null) return x.isStr() ? x.s : x.stringify();
    }
    const y = c.get(key);
    if (y !== null) return y.isStr() ? y.s : y.stringify();
    return null;
  }

  configOr(key: string, fallback: string): string {
    const v = this.config(key);
    return v === null ? fallback : v;
  }

  // Headers every answer of the test plugins carries.
  baseHeaders(contentType: string): JValue {
    const h = JValue.obj();
    h.setStr("Content-Type", contentType);
    h.setStr("x-otoroshi-wasm", this.tag);
    h.setStr("x-otoroshi-step", this.step);
    return h;
  }

  // With the request header `x-check-context`, the names of the context fields
  // Otoroshi sends for this step that are missing (empty when none is);
  // otherwise null. Field lists: tests/plugins/otoroshi/README.md.
  missingFields(): string | null {
    if (!this.hasHeader("x-check-context")) return null;
    const missing = new Array<string>();
    const top = STEP_FIELDS.has(this.step) ? STEP_FIELDS.get(this.step) : "";
    const names = top.split(",");
    for (let i = 0; i < names.length; i++) {
      if (names[i].length > 0 && this.root.get(names[i]) === null) missing.push(names[i]);
    }
    const reqKey = this.step == "call_backend" ? "raw_request" : "request";
    const req = this.root.get(reqKey);
    if (req !== null && req.isObj()) {
      const rf = REQUEST_FIELDS.split(",");
      for (let i = 0; i < rf.length; i++) {
        if (req.get(rf[i]) === null) missing.push(reqKey + "." + rf[i]);
      }
    }
    const oreqKey = this.step == "call_backend" ? "request" : "otoroshi_request";
    const oreq = this.root.get(oreqKey);
    if ((this.step == "call_backend" || this.step == "transform_request") && oreq !== null && oreq.isObj()) {
      const ofs = OTOROSHI_REQUEST_FIELDS.split(",");
      for (let i = 0; i < ofs.length; i++) {
        if (oreq.get(ofs[i]) === null) missing.push(oreqKey + "." + ofs[i]);
      }
    }
    return missing.join(", ");
  }

  // True when `x-fail` names this step (or `*`); then performs the failure
  // mode of `x-fail-mode` and the caller must return the given code.
  forcedFailure(): i32 {
    const which = this.header("x-fail");
    if (which === null) return -1;
    const names = which.split(",");
    let hit = false;
    for (let i = 0; i < names.length; i++) {
      const n = names[i].trim();
      if (n == this.step || n == "*") hit = true;
    }
    if (!hit) return -1;
    return failWith(this.headerOr("x-fail-mode", "error"), this.step);
  }
}

// The top-level fields of each step's context, as Otoroshi builds them
// (next/plugins/api.scala `wasmJson`, plugins/wasm.scala).
const STEP_FIELDS = new Map<string, string>();
STEP_FIELDS.set("pre_route", "snowflake,request,config,global_config,attrs,route");
STEP_FIELDS.set("access", "snowflake,apikey,user,request,config,global_config,attrs,route");
STEP_FIELDS.set(
  "transform_request",
  "snowflake,raw_request,otoroshi_request,apikey,user,request,config,global_config,attrs,route,request_body_bytes",
);
STEP_FIELDS.set(
  "transform_response",
  "snowflake,raw_response,otoroshi_response,apikey,user,request,config,global_config,attrs,route,response_body_bytes",
);
STEP_FIELDS.set("matches_route", "snowflake,route,request,config,attrs");
STEP_FIELDS.set("find_route", "request,config,attrs");
STEP_FIELDS.set("sink_matches", "snowflake,request,config,attrs,origin,status,message");
STEP_FIELDS.set("sink_handle", "snowflake,request,config,attrs,origin,status,message,body_bytes");
STEP_FIELDS.set(
  "call_backend",
  "snowflake,backend,apikey,user,raw_request,config,global_config,attrs,route,request_body_bytes,request",
);
STEP_FIELDS.set("handle_request", "request");
const REQUEST_FIELDS = "id,method,headers,cookies,tls,uri,query,path,version,has_body,remote,client_cert_chain,path_params";
const OTOROSHI_REQUEST_FIELDS = "url,method,headers,query,version,client_cert_chain,backend,cookies";

let spins: u64 = 1;
const hoard = new Array<ArrayBuffer>();

// The failure modes shared by every step (and documented in the README).
// Returns the value the export must return.
export function failWith(mode: string, step: string): i32 {
  if (mode == "code") return 1;
  if (mode == "error-zero") {
    setError("forced failure in " + step + " (error set, returned 0)");
    return 0;
  }
  if (mode == "trap") {
    unreachable();
  }
  if (mode == "abort") {
    otoAbort("forced abort in " + step, "kit.ts", 0, 0);
  }
  if (mode == "garbage") {
    outputString("this is not JSON {");
    return 0;
  }
  if (mode == "empty") return 0;
  if (mode == "loop") {
    // Never ends for any practical purpose; the host's timeout must stop it.
    while (spins != 0) spins++;
    return 0;
  }
  if (mode == "alloc") {
    // Grows linear memory by 16 MiB steps until the host's cap stops it.
    while (true) hoard.push(new ArrayBuffer(16 << 20));
  }
  if (mode == "kernel-alloc") {
    const h = alloc(<u64>1 << 40);
    setError("forced failure in " + step + ": alloc(2^40) returned " + h.toString());
    return 1;
  }
  setError("forced failure in " + step);
  return 1;
}

// ------------------------------------------------------------- body forms

// Writes the body in the forms named by `forms` (comma-separated: str, body,
// json, base64, bytes, empty, none). With one form the content is written as is;
// with several, each carries a "<form>:" prefix so the precedence is visible.
// The json form is always {"form":"json","tag":<tag>,"body":<content>}.
export function putBody(out: JValue, forms: string, content: string, tag: string): void {
  const list = forms.split(",");
  const many = list.length > 1;
  for (let i = 0; i < list.length; i++) {
    const f = list[i].trim();
    const text = many ? f + ":" + content : content;
    if (f == "str") out.setStr("body_str", text);
    else if (f == "body") out.setStr("body", text);
    else if (f == "json") {
      const j = JValue.obj();
      j.setStr("form", "json");
      j.setStr("tag", tag);
      j.setStr("body", content);
      out.set("body_json", j);
    } else if (f == "base64") out.setStr("body_base64", base64.encode(utf8(text)));
    else if (f == "bytes") out.set("body_bytes", bytesToJson(utf8(text)));
    else if (f == "empty") out.setStr("body_str", "");
  }
}

export function b64(s: string): string {
  return base64.encode(utf8(s));
}

export function unb64(s: string): string | null {
  const b = base64.decode(s);
  if (b === null) return null;
  return fromUtf8(b);
}

export function parseIntOr(s: string | null, fallback: i32): i32 {
  if (s === null) return fallback;
  const t = s.trim();
  if (t.length == 0) return fallback;
  for (let i = 0; i < t.length; i++) {
    const c = t.charCodeAt(i);
    if (!((c >= 0x30 && c <= 0x39) || (i == 0 && c == 0x2d))) return fallback;
  }
  return I32.parseInt(t);
}

export function parseI64Or(s: string | null, fallback: i64): i64 {
  if (s === null) return fallback;
  const t = s.trim();
  if (t.length == 0) return fallback;
  for (let i = 0; i < t.length; i++) {
    const c = t.charCodeAt(i);
    if (!((c >= 0x30 && c <= 0x39) || (i == 0 && c == 0x2d))) return fallback;
  }
  return I64.parseInt(t);
}
