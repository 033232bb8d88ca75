// The as-filter protocol (tests/plugins/README.md, "as-filter"), without the
// SDK: shared by every AssemblyScript SDK build of the filter (index.ts for
// @solo-io/proxy-runtime 0.1.8, sdk-0.1.1/assembly/index.ts for 0.1.1), which
// only glue it to their SDK's classes. Compiles with AssemblyScript 0.9 and 0.14.

export class Settings {
  raw: string = "";
  tag: string = "assemblyscript";
  localPath: string = "/as-local";
  localStatus: u32 = 403;
  reject: bool = false;
}

// Header-safe copy: printable ASCII only, at most 256 characters.
export function headerSafe(s: string): string {
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
export function parseSettings(raw: string): Settings {
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

// Whether a request is answered locally: its path (without the query) is
// `local_path`, or it has a non-empty `x-as-local` header.
export function wantsLocal(settings: Settings, path: string, xAsLocal: string): bool {
  let q = path.indexOf("?");
  if (q >= 0) path = path.substring(0, q);
  return path == settings.localPath || xAsLocal.length > 0;
}

export const LOCAL_BODY = "local response from as-filter\n";

export function configuredMessage(s: Settings): string {
  return "as-filter: configured, tag=" + s.tag + " local_path=" + s.localPath;
}

export function rejectedMessage(raw: string): string {
  return "as-filter: configuration rejected: " + raw;
}
