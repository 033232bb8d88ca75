//! Small helpers: status names, header-safe text, shared-data counters,
//! header-map serialisation.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// The marker used in reports for "no value" (NOT_FOUND, null data, ...).
pub const NONE: &str = "(none)";

/// Spec name of a raw `proxy_status_t`.
pub fn status_name(st: u32) -> String {
    let s = match st {
        0 => "OK",
        1 => "NOT_FOUND",
        2 => "BAD_ARGUMENT",
        3 => "SERIALIZATION_FAILURE",
        4 => "PARSE_FAILURE",
        5 => "BAD_EXPRESSION",
        6 => "INVALID_MEMORY_ACCESS",
        7 => "EMPTY",
        8 => "CAS_MISMATCH",
        9 => "RESULT_MISMATCH",
        10 => "INTERNAL_FAILURE",
        11 => "BROKEN_CONNECTION",
        12 => "UNIMPLEMENTED",
        other => return format!("STATUS_{}", other),
    };
    s.to_string()
}

/// Spec name of an SDK `Status` (by its code: the enum's variants differ
/// between SDK releases).
pub fn sdk_status_name(st: Status) -> String {
    status_name(st as u32)
}

/// Makes arbitrary bytes safe for an HTTP header value: lossy UTF-8, every
/// byte outside printable ASCII (0x20..=0x7e) becomes '_', at most `max`
/// characters.
pub fn header_safe(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max));
    for &b in bytes.iter().take(max) {
        if (0x20..=0x7e).contains(&b) {
            out.push(b as char);
        } else {
            out.push('_');
        }
    }
    out
}

pub fn opt_text(v: Option<&[u8]>, max: usize) -> String {
    match v {
        Some(b) => header_safe(b, max),
        None => NONE.to_string(),
    }
}

/// Integer-valued properties are 8-byte little-endian; anything else is shown
/// as text.
pub fn property_int_or_text(v: Option<&[u8]>) -> String {
    match v {
        Some(b) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a).to_string()
        }
        other => opt_text(other, 256),
    }
}

/// A property value for the `x-pw-prop-paths` reports: header-safe text
/// (`(none)` if absent), plus ` int=<n>` for 8 bytes (little-endian, Envoy's
/// integers, timestamps and durations) and ` bool=<b>` for 1 byte.
pub fn render_property(v: Option<&[u8]>) -> String {
    let mut out = opt_text(v, 128);
    match v {
        Some(b) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            out.push_str(&format!(" int={}", i64::from_le_bytes(a)));
        }
        Some(b) if b.len() == 1 => out.push_str(&format!(" bool={}", b[0] != 0)),
        _ => {}
    }
    out
}

pub fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.trim().parse::<u64>().ok()
}

/// Atomically adds `by` to the decimal counter stored in shared data `key`,
/// retrying on CAS_MISMATCH. Returns (new value, retries).
pub fn incr_shared(key: &str, by: u64) -> Result<(u64, u32), String> {
    let mut retries = 0u32;
    loop {
        let (value, cas) = match hostcalls::get_shared_data(key) {
            Ok(x) => x,
            Err(st) => return Err(sdk_status_name(st)),
        };
        let current = value.as_deref().and_then(parse_u64).unwrap_or(0);
        let next = current.wrapping_add(by);
        let text = next.to_string();
        match hostcalls::set_shared_data(key, Some(text.as_bytes()), cas) {
            Ok(()) => return Ok((next, retries)),
            Err(Status::CasMismatch) if retries < 10_000 => retries += 1,
            Err(st) => return Err(sdk_status_name(st)),
        }
    }
}

/// Best-effort counter bump used by lifecycle callbacks (nothing to report to).
pub fn bump(key: &str) {
    let _ = incr_shared(key, 1);
}

/// Unconditional shared-data write (cas 0).
pub fn put(key: &str, value: &[u8]) {
    let _ = hostcalls::set_shared_data(key, Some(value), None);
}

/// Serialises header pairs in the Proxy-Wasm map format (used for raw gRPC
/// metadata and to compute the expected `proxy_get_header_map_size`).
pub fn serialize_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The pairs of a serialised header map (names as lossy UTF-8); a short or
/// malformed map gives the pairs read so far.
#[allow(dead_code)]
pub fn deserialize_pairs(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut out = Vec::new();
    let n = match word(0) {
        Some(n) => n,
        None => return out,
    };
    let mut at = 4 + 8 * n;
    for i in 0..n {
        let (k, v) = match (word(4 + 8 * i), word(8 + 8 * i)) {
            (Some(k), Some(v)) => (k, v),
            _ => break,
        };
        let (key, value) = match (data.get(at..at + k), data.get(at + k + 1..at + k + 1 + v)) {
            (Some(key), Some(value)) => (key, value),
            _ => break,
        };
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
        at += k + 1 + v + 1;
    }
    out
}

/// Size of the serialised form of `pairs` (what `proxy_get_header_map_size`
/// must return for a non-empty map).
pub fn serialized_size(pairs: &[(String, Vec<u8>)]) -> usize {
    4 + pairs.iter().map(|(k, v)| 8 + k.len() + 1 + v.len() + 1).sum::<usize>()
}

pub fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

#[cfg(test)]
mod tests {
    use super::{deserialize_pairs, serialize_pairs};

    #[test]
    fn deserialize_pairs_reads_what_serialize_pairs_writes() {
        let data = serialize_pairs(&[(b":status", b"200"), (b"x-empty", b""), (b"x-bin", b"\x00\xff")]);
        assert_eq!(
            deserialize_pairs(&data),
            vec![(":status".to_string(), b"200".to_vec()), ("x-empty".to_string(), vec![]), ("x-bin".to_string(), vec![0, 0xff])]
        );
    }

    #[test]
    fn deserialize_pairs_stops_at_a_truncated_map() {
        let data = serialize_pairs(&[(b"a", b"1"), (b"b", b"2")]);
        assert_eq!(deserialize_pairs(&data[..data.len() - 2]), vec![("a".to_string(), b"1".to_vec())]);
        assert!(deserialize_pairs(&[]).is_empty());
        assert!(deserialize_pairs(&[5, 0, 0]).is_empty());
    }
}
