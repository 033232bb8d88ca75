//! The step inputs written straight as JSON text. Building a `serde_json::Value` tree (B-tree
//! maps, a `String` per key and value) and then serialising it was most of the host's cost of a
//! step call (docs/benchmarks.md, W3-oto); the text here is the same bytes serde_json writes for
//! those trees: keys of an object in sorted order (serde_json's `Map` is a B-tree map), strings
//! escaped as serde_json escapes them (`\"`, `\\`, the short escapes `\b \f \n \r \t`, other
//! control characters as `\u00xx` in lowercase hex, everything else, non-ASCII included, as
//! it is), integers in decimal. The tests of this module and of `input` compare both.

use serde_json::{Map, Value};

/// What `byte` is written as inside a string: 0 for itself, else the escape's letter (`u` for
/// the `\u00xx` form), serde_json's table.
const fn escape(byte: u8) -> u8 {
    match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0..=0x1f => b'u',
        _ => 0,
    }
}

const ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = escape(i as u8);
        i += 1;
    }
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `text` as a JSON string, quotes included.
pub fn string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Runs of bytes that need no escape are copied at once.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let e = ESCAPES[b as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match e {
            b'u' => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]),
            _ => out.extend_from_slice(&[b'\\', e]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// An unsigned integer in decimal.
pub fn u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

pub fn bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A value that is still a tree (the rare parts: certificates, path parameters, a backend).
pub fn value(out: &mut Vec<u8>, v: &Value) {
    // Writing into a Vec cannot fail, and a `Value` always serialises (its keys are strings,
    // its numbers finite): there is no error to handle.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// A map of values (attributes, a query).
pub fn map(out: &mut Vec<u8>, m: &Map<String, Value>) {
    if m.is_empty() {
        out.extend_from_slice(b"{}");
        return;
    }
    // As for `value`: cannot fail.
    let _ = serde_json::to_writer(&mut *out, m);
}

/// Bytes as Play writes an `Array[Byte]`: signed, `[104,-56]`.
pub fn signed_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // At most 5 bytes per element (`-128,`).
    out.reserve(bytes.len() * 5 + 2);
    out.push(b'[');
    for (i, &b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let n = b as i8;
        if n < 0 {
            out.push(b'-');
        }
        u64(out, u64::from(n.unsigned_abs()));
    }
    out.push(b']');
}

/// An object being written: keys must come in sorted (byte) order, as serde_json's maps write them.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Object<'a> {
        out.push(b'{');
        Object { out, first: true }
    }

    /// Writes `key` and returns the buffer for its value.
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        string(self.out, key);
        self.out.push(b':');
        self.out
    }

    /// A key whose value is JSON text already (a value written once and kept).
    pub fn raw(&mut self, key: &str, json: &str) {
        self.key(key).extend_from_slice(json.as_bytes());
    }

    pub fn str(&mut self, key: &str, v: &str) {
        let out = self.key(key);
        string(out, v);
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        // Every ASCII character, DEL, and non-ASCII text of 2, 3 and 4 bytes per character.
        let mut all: String = (0u8..=0x7f).map(char::from).collect();
        all.push_str("é ü 中文 ☃ 😀 \u{2028}\u{2029} \u{fffd}");
        for s in [all.as_str(), "", "plain", "\"", "\\", "a\u{0}b", "\u{1f}\u{7f}", "tab\there\r\n"] {
            assert_eq!(text(|o| string(o, s)), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn integers_and_byte_arrays_are_serde_jsons() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(text(|o| u64(o, n)), serde_json::to_string(&n).unwrap());
        }
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(
            text(|o| signed_bytes(o, &bytes)),
            serde_json::to_string(&crate::extism::body::signed_bytes(&bytes)).unwrap()
        );
        assert_eq!(text(|o| signed_bytes(o, &[])), "[]");
    }

    #[test]
    fn objects_separate_their_keys() {
        let t = text(|o| {
            let mut obj = Object::new(o);
            obj.str("a", "x");
            obj.raw("b", "{\"c\":1}");
            bool(obj.key("d"), true);
            obj.end();
        });
        assert_eq!(t, r#"{"a":"x","b":{"c":1},"d":true}"#);
        assert_eq!(text(|o| Object::new(o).end()), "{}");
        let mut m = Map::new();
        assert_eq!(text(|o| map(o, &m)), "{}");
        m.insert("k\n".into(), Value::from(vec![1, 2]));
        assert_eq!(text(|o| map(o, &m)), r#"{"k\n":[1,2]}"#);
    }
}
