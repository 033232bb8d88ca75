// A small JSON document model for AssemblyScript (no JSON in its standard library).
//
// Parses into a tree of JValue (objects keep their key order), serialises back to
// compact JSON. Numbers are f64 (exact for the integers Otoroshi sends: statuses,
// signed bytes, lengths). Written for the Otoroshi test plugins: every parse error
// and every nesting deeper than MAX_DEPTH gives null, never a trap.

export const MAX_DEPTH: i32 = 256;

export enum Kind {
  Null,
  Bool,
  Num,
  Str,
  Arr,
  Obj,
}

export class JValue {
  kind: Kind = Kind.Null;
  b: bool = false;
  n: f64 = 0;
  s: string = "";
  items: Array<JValue> = [];
  keys: Array<string> = [];
  values: Array<JValue> = [];

  static nul(): JValue {
    return new JValue();
  }

  static bool(b: bool): JValue {
    const v = new JValue();
    v.kind = Kind.Bool;
    v.b = b;
    return v;
  }

  static num(n: f64): JValue {
    const v = new JValue();
    v.kind = Kind.Num;
    v.n = n;
    return v;
  }

  static str(s: string): JValue {
    const v = new JValue();
    v.kind = Kind.Str;
    v.s = s;
    return v;
  }

  static arr(): JValue {
    const v = new JValue();
    v.kind = Kind.Arr;
    return v;
  }

  static obj(): JValue {
    const v = new JValue();
    v.kind = Kind.Obj;
    return v;
  }

  isNull(): bool {
    return this.kind == Kind.Null;
  }

  isObj(): bool {
    return this.kind == Kind.Obj;
  }

  isArr(): bool {
    return this.kind == Kind.Arr;
  }

  isStr(): bool {
    return this.kind == Kind.Str;
  }

  // Object member (exact key), or null when absent or not an object.
  get(key: string): JValue | null {
    if (this.kind != Kind.Obj) return null;
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) return this.values[i];
    }
    return null;
  }

  // Nested object member: path("request", "headers").
  path2(a: string, b: string): JValue | null {
    const x = this.get(a);
    if (x === null) return null;
    return x.get(b);
  }

  // Sets (replaces or appends) an object member; returns this for chaining.
  set(key: string, value: JValue): JValue {
    if (this.kind != Kind.Obj) return this;
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) {
        this.values[i] = value;
        return this;
      }
    }
    this.keys.push(key);
    this.values.push(value);
    return this;
  }

  setStr(key: string, value: string): JValue {
    return this.set(key, JValue.str(value));
  }

  setNum(key: string, value: f64): JValue {
    return this.set(key, JValue.num(value));
  }

  setBool(key: string, value: bool): JValue {
    return this.set(key, JValue.bool(value));
  }

  // Removes an object member; true when it was there.
  remove(key: string): bool {
    if (this.kind != Kind.Obj) return false;
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) {
        this.keys.splice(i, 1);
        this.values.splice(i, 1);
        return true;
      }
    }
    return false;
  }

  push(value: JValue): JValue {
    if (this.kind == Kind.Arr) this.items.push(value);
    return this;
  }

  // The string value, or `fallback` for anything that is not a string.
  asString(fallback: string = ""): string {
    return this.kind == Kind.Str ? this.s : fallback;
  }

  asBool(fallback: bool = false): bool {
    return this.kind == Kind.Bool ? this.b : fallback;
  }

  asNum(fallback: f64 = 0): f64 {
    return this.kind == Kind.Num ? this.n : fallback;
  }

  // Shallow copy of an object or array (members shared).
  shallowCopy(): JValue {
    const v = new JValue();
    v.kind = this.kind;
    v.b = this.b;
    v.n = this.n;
    v.s = this.s;
    for (let i = 0; i < this.items.length; i++) v.items.push(this.items[i]);
    for (let i = 0; i < this.keys.length; i++) {
      v.keys.push(this.keys[i]);
      v.values.push(this.values[i]);
    }
    return v;
  }

  stringify(): string {
    const out = new Array<string>();
    write(this, out);
    return out.join("");
  }
}

function write(v: JValue, out: Array<string>): void {
  switch (v.kind) {
    case Kind.Null:
      out.push("null");
      break;
    case Kind.Bool:
      out.push(v.b ? "true" : "false");
      break;
    case Kind.Num:
      out.push(numberToString(v.n));
      break;
    case Kind.Str:
      writeString(v.s, out);
      break;
    case Kind.Arr:
      out.push("[");
      for (let i = 0; i < v.items.length; i++) {
        if (i > 0) out.push(",");
        write(v.items[i], out);
      }
      out.push("]");
      break;
    case Kind.Obj:
      out.push("{");
      for (let i = 0; i < v.keys.length; i++) {
        if (i > 0) out.push(",");
        writeString(v.keys[i], out);
        out.push(":");
        write(v.values[i], out);
      }
      out.push("}");
      break;
  }
}

export function numberToString(n: f64): string {
  if (!isFinite(n)) return "null";
  if (n == Math.floor(n) && Math.abs(n) < 9007199254740992.0) {
    return (<i64>n).toString();
  }
  return n.toString();
}

const HEX = "0123456789abcdef";

export function quote(s: string): string {
  const out = new Array<string>();
  writeString(s, out);
  return out.join("");
}

function writeString(s: string, out: Array<string>): void {
  out.push('"');
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    let esc: string | null = null;
    if (c == 0x22) esc = '\\"';
    else if (c == 0x5c) esc = "\\\\";
    else if (c == 0x0a) esc = "\\n";
    else if (c == 0x0d) esc = "\\r";
    else if (c == 0x09) esc = "\\t";
    else if (c < 0x20) {
      esc = "\\u00" + HEX.charAt(c >> 4) + HEX.charAt(c & 15);
    }
    if (esc !== null) {
      if (i > start) out.push(s.substring(start, i));
      out.push(esc);
      start = i + 1;
    }
  }
  if (start < s.length) out.push(s.substring(start));
  out.push('"');
}

// ---------------------------------------------------------------- parser

class Parser {
  s: string;
  i: i32 = 0;
  failed: bool = false;

  constructor(s: string) {
    this.s = s;
  }

  ws(): void {
    while (this.i < this.s.length) {
      const c = this.s.charCodeAt(this.i);
      if (c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d) this.i++;
      else break;
    }
  }

  fail(): JValue {
    this.failed = true;
    return JValue.nul();
  }

  literal(word: string, v: JValue): JValue {
    if (this.s.substr(this.i, word.length) == word) {
      this.i += word.length;
      return v;
    }
    return this.fail();
  }

  value(depth: i32): JValue {
    if (depth > MAX_DEPTH) return this.fail();
    this.ws();
    if (this.i >= this.s.length) return this.fail();
    const c = this.s.charCodeAt(this.i);
    if (c == 0x7b) return this.object(depth);
    if (c == 0x5b) return this.array(depth);
    if (c == 0x22) {
      const str = this.string();
      return this.failed ? JValue.nul() : JValue.str(str);
    }
    if (c == 0x74) return this.literal("true", JValue.bool(true));
    if (c == 0x66) return this.literal("false", JValue.bool(false));
    if (c == 0x6e) return this.literal("null", JValue.nul());
    if (c == 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
    return this.fail();
  }

  number(): JValue {
    const start = this.i;
    if (this.s.charCodeAt(this.i) == 0x2d) this.i++;
    let digits = 0;
    while (this.i < this.s.length) {
      const c = this.s.charCodeAt(this.i);
      if (c >= 0x30 && c <= 0x39) {
        digits++;
        this.i++;
      } else if (c == 0x2e || c == 0x65 || c == 0x45 || c == 0x2b || c == 0x2d) {
        this.i++;
      } else break;
    }
    if (digits == 0) return this.fail();
    const n = parseFloat(this.s.substring(start, this.i));
    if (isNaN(n)) return this.fail();
    return JValue.num(n);
  }

  hex4(): i32 {
    if (this.i + 4 > this.s.length) {
      this.failed = true;
      return 0;
    }
    let v = 0;
    for (let k = 0; k < 4; k++) {
      const c = this.s.charCodeAt(this.i + k);
      let d = -1;
      if (c >= 0x30 && c <= 0x39) d = c - 0x30;
      else if (c >= 0x61 && c <= 0x66) d = c - 0x61 + 10;
      else if (c >= 0x41 && c <= 0x46) d = c - 0x41 + 10;
      if (d < 0) {
        this.failed = true;
        return 0;
      }
      v = (v << 4) | d;
    }
    this.i += 4;
    return v;
  }

  // At an opening quote; returns the decoded string (sets failed on error).
  string(): string {
    this.i++; // opening quote
    const parts = new Array<string>();
    let start = this.i;
    while (true) {
      if (this.i >= this.s.length) {
        this.failed = true;
        return "";
      }
      const c = this.s.charCodeAt(this.i);
      if (c == 0x22) {
        if (this.i > start) parts.push(this.s.substring(start, this.i));
        this.i++;
        return parts.join("");
      }
      if (c < 0x20) {
        this.failed = true;
        return "";
      }
      if (c == 0x5c) {
        if (this.i > start) parts.push(this.s.substring(start, this.i));
        this.i++;
        if (this.i >= this.s.length) {
          this.failed = true;
          return "";
        }
        const e = this.s.charCodeAt(this.i);
        this.i++;
        if (e == 0x22) parts.push('"');
        else if (e == 0x5c) parts.push("\\");
        else if (e == 0x2f) parts.push("/");
        else if (e == 0x62) parts.push("\b");
        else if (e == 0x66) parts.push("\f");
        else if (e == 0x6e) parts.push("\n");
        else if (e == 0x72) parts.push("\r");
        else if (e == 0x74) parts.push("\t");
        else if (e == 0x75) {
          const u = this.hex4();
          if (this.failed) return "";
          parts.push(String.fromCharCode(u));
        } else {
          this.failed = true;
          return "";
        }
        start = this.i;
        continue;
      }
      this.i++;
    }
  }

  array(depth: i32): JValue {
    this.i++; // [
    const v = JValue.arr();
    this.ws();
    if (this.i < this.s.length && this.s.charCodeAt(this.i) == 0x5d) {
      this.i++;
      return v;
    }
    while (true) {
      const item = this.value(depth + 1);
      if (this.failed) return JValue.nul();
      v.items.push(item);
      this.ws();
      if (this.i >= this.s.length) return this.fail();
      const c = this.s.charCodeAt(this.i);
      this.i++;
      if (c == 0x2c) continue;
      if (c == 0x5d) return v;
      return this.fail();
    }
  }

  object(depth: i32): JValue {
    this.i++; // {
    const v = JValue.obj();
    this.ws();
    if (this.i < this.s.length && this.s.charCodeAt(this.i) == 0x7d) {
      this.i++;
      return v;
    }
    while (true) {
      this.ws();
      if (this.i >= this.s.length || this.s.charCodeAt(this.i) != 0x22) return this.fail();
      const key = this.string();
      if (this.failed) return JValue.nul();
      this.ws();
      if (this.i >= this.s.length || this.s.charCodeAt(this.i) != 0x3a) return this.fail();
      this.i++;
      const item = this.value(depth + 1);
      if (this.failed) return JValue.nul();
      // Duplicate keys: the last one wins, as in most JSON readers.
      v.set(key, item);
      this.ws();
      if (this.i >= this.s.length) return this.fail();
      const c = this.s.charCodeAt(this.i);
      this.i++;
      if (c == 0x2c) continue;
      if (c == 0x7d) return v;
      return this.fail();
    }
  }
}

// Parses a whole document; null when it is not valid JSON.
export function parse(s: string): JValue | null {
  const p = new Parser(s);
  const v = p.value(0);
  if (p.failed) return null;
  p.ws();
  if (p.i != s.length) return null;
  return v;
}
