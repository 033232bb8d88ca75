//! Proxy-Wasm wire formats a plugin (or a server, through the C API) controls:
//! header pairs (`abi::pairs` and the C API's own reader in `ffi`) and
//! property paths (`abi::property_path`).

use crate::engine::{self, Case, Rng};
use proxy_wasm_host::abi::pairs::{self, Pair, MAX_PAIRS_COUNT, MAX_PAIRS_SIZE};
use proxy_wasm_host::abi::property_path;
use proxy_wasm_host::abi::Status;
use proxy_wasm_host::ffi::{self, pwh_bytes};

fn bytes_of(b: &[u8]) -> pwh_bytes {
    pwh_bytes { ptr: b.as_ptr(), len: b.len() }
}

/// The C API's reading of a pairs encoding: `pwh_pairs_count`, then
/// `pwh_pairs_get` for each index (and one past the end).
fn ffi_decode(b: &[u8]) -> Result<Vec<Pair>, String> {
    // SAFETY: `b` is readable for its length; the out-parameters are locals.
    let count = unsafe { ffi::pwh_pairs_count(bytes_of(b)) };
    if count < 0 {
        return Err("malformed".into());
    }
    let mut out = Vec::new();
    for i in 0..=count as usize {
        let mut k = pwh_bytes { ptr: std::ptr::null(), len: 0 };
        let mut v = pwh_bytes { ptr: std::ptr::null(), len: 0 };
        // SAFETY: as above.
        let st = unsafe { ffi::pwh_pairs_get(bytes_of(b), i, &mut k, &mut v) };
        if i == count as usize {
            if st != ffi::pwh_status::NotFound as i32 {
                return Err(format!("pwh_pairs_get past the last pair ({i}) answered {st}, expected NOT_FOUND"));
            }
            break;
        }
        if st != 0 {
            return Err(format!("pwh_pairs_get({i}) of a map pwh_pairs_count accepted answered {st}"));
        }
        let range = b.as_ptr_range();
        for (what, s) in [("key", k), ("value", v)] {
            // The returned spans must lie inside the encoding, each followed by its NUL.
            let (start, end) = (s.ptr as usize, s.ptr as usize + s.len);
            if s.len > 0 && (start < range.start as usize || end >= range.end as usize) {
                return Err(format!("pwh_pairs_get({i}) {what} points outside the encoding"));
            }
        }
        // SAFETY: checked above to lie inside `b`.
        let (key, value) = unsafe { (slice(k), slice(v)) };
        out.push((key, value));
    }
    Ok(out)
}

/// # Safety
/// `s` points into a live slice (or is empty).
unsafe fn slice(s: pwh_bytes) -> Vec<u8> {
    if s.len == 0 {
        return Vec::new();
    }
    // SAFETY: caller's contract.
    unsafe { std::slice::from_raw_parts(s.ptr, s.len) }.to_vec()
}

/// The C API's writer: `pwh_pairs_add` one pair at a time.
fn ffi_encode(list: &[Pair]) -> Vec<u8> {
    let buf = ffi::pwh_buffer_new();
    for (k, v) in list {
        // SAFETY: `buf` is live; key and value are readable and do not alias it.
        let st = unsafe { ffi::pwh_pairs_add(buf, bytes_of(k), bytes_of(v)) };
        assert_eq!(st, 0, "pwh_pairs_add");
    }
    // SAFETY: `buf` is live until freed below.
    let out = unsafe { std::slice::from_raw_parts(ffi::pwh_buffer_data(buf), ffi::pwh_buffer_len(buf)) }.to_vec();
    // SAFETY: allocated above, freed once.
    unsafe { ffi::pwh_buffer_free(buf) };
    out
}

fn header_bytes(rng: &mut Rng) -> Vec<u8> {
    let n = rng.len(40);
    match rng.below(4) {
        0 => rng.bytes(n),
        1 => rng.bytes_from(n, b"\0:abc-XYZ 019\r\n\xff"),
        _ => rng.bytes_from(n, b"abcdefghijklmnopqrstuvwxyz-:0123456789"),
    }
}

fn random_pairs(rng: &mut Rng) -> Vec<Pair> {
    let n = match rng.below(20) {
        0 => rng.range(MAX_PAIRS_COUNT - 2, MAX_PAIRS_COUNT + 2),
        _ => rng.len(12),
    };
    (0..n).map(|_| (header_bytes(rng), header_bytes(rng))).collect()
}

fn check_round_trip(case: &mut Case) -> Result<(), String> {
    let mut list = random_pairs(&mut case.rng);
    if case.rng.chance(1, 40) {
        // A value that takes the encoding over the plugin-input limit.
        list.push((b"big".to_vec(), vec![b'v'; MAX_PAIRS_SIZE]));
    }
    let enc = pairs::encode(&list);
    case.note(format!("{} pairs, {} bytes encoded", list.len(), enc.len()));
    // pwh_pairs_add re-reads the whole map each time: small maps only.
    if list.len() <= 64 && enc.len() <= 1 << 16 && ffi_encode(&list) != enc {
        return Err("pwh_pairs_add does not build what pairs::encode builds".into());
    }
    if list.is_empty() != enc.is_empty() {
        return Err("an empty map must encode as zero bytes, and only an empty map".into());
    }
    let within_limits = list.len() <= MAX_PAIRS_COUNT && enc.len() <= MAX_PAIRS_SIZE;
    match pairs::decode(&enc) {
        Ok(back) if within_limits => {
            if back != list {
                return Err("decode(encode(pairs)) differs from pairs".into());
            }
        }
        Ok(_) => return Err(format!("an oversized map ({} pairs, {} bytes) was accepted", list.len(), enc.len())),
        Err(Status::BadArgument) if !within_limits => {}
        Err(s) => return Err(format!("a valid encoding was refused with {s:?}")),
    }
    // The C API reads the server's own maps: no limits there. pwh_pairs_get
    // reads the whole map for each index: every pair of small maps only.
    if list.len() <= 64 {
        if ffi_decode(&enc)? != list {
            return Err("the C API's reader differs from the list encoded".into());
        }
    } else {
        // SAFETY: `enc` is readable for its length.
        let count = unsafe { ffi::pwh_pairs_count(bytes_of(&enc)) };
        if count != list.len() as i64 {
            return Err(format!("pwh_pairs_count says {count} of {} pairs", list.len()));
        }
    }
    Ok(())
}

/// A valid encoding, then one malformation the ABI says must be refused.
fn check_malformed_is_refused(case: &mut Case) -> Result<(), String> {
    let rng = &mut case.rng;
    let mut list = random_pairs(rng);
    list.truncate(MAX_PAIRS_COUNT);
    if list.is_empty() {
        list.push((b"k".to_vec(), b"v".to_vec()));
    }
    let good = pairs::encode(&list);
    let count = list.len();
    let data_start = 4 + 8 * count;
    let mut bad = good.clone();
    let what = match rng.below(5) {
        0 => {
            bad.truncate(rng.range(1, good.len() - 1));
            "truncated"
        }
        1 => {
            // A NUL terminator replaced: the terminators follow each key and value.
            let mut nuls = Vec::new();
            let mut pos = data_start;
            for (k, v) in &list {
                pos += k.len();
                nuls.push(pos);
                pos += 1 + v.len();
                nuls.push(pos);
                pos += 1;
            }
            let at = *rng.pick(&nuls);
            bad[at] = rng.range(1, 255) as u8;
            "a terminator that is not NUL"
        }
        2 => {
            let n = rng.range(MAX_PAIRS_COUNT + 1, u32::MAX as usize) as u32;
            bad[..4].copy_from_slice(&n.to_le_bytes());
            "a count over the limit"
        }
        3 => {
            // More pairs announced than the size table has room for.
            let room = (good.len() - 4) / 8;
            if room + 1 > MAX_PAIRS_COUNT {
                return Ok(());
            }
            bad[..4].copy_from_slice(&(room as u32 + 1).to_le_bytes());
            "a count the encoding has no room for"
        }
        _ => {
            // A length pointing past the end.
            let i = rng.below(count);
            let field = 4 + 8 * i + 4 * rng.below(2);
            let len = (good.len() + rng.below(1 << 20)) as u32;
            let len = if rng.bool() { u32::MAX - rng.below(8) as u32 } else { len };
            bad[field..field + 4].copy_from_slice(&len.to_le_bytes());
            "a length past the end"
        }
    };
    case.note(format!("{what}: {count} pairs"));
    case.input(&bad);
    if bad.is_empty() {
        return Ok(());
    }
    if let Ok(v) = pairs::decode(&bad) {
        return Err(format!("{what}: malformed pairs accepted as {} pairs", v.len()));
    }
    if ffi_decode(&bad).is_ok() {
        return Err(format!("{what}: the C API accepted malformed pairs"));
    }
    Ok(())
}

/// Arbitrary bytes (random or mutated encodings): no panic, and both readers
/// agree; what is accepted re-encodes to something that decodes the same.
fn check_random_bytes(case: &mut Case) -> Result<(), String> {
    let rng = &mut case.rng;
    let bytes = if rng.bool() {
        let n = rng.len(256);
        rng.bytes(n)
    } else {
        let mut list = random_pairs(rng);
        list.truncate(64);
        let mut b = pairs::encode(&list);
        rng.mutate(&mut b, 1 << 16);
        b
    };
    case.input(&bytes);
    let ours = pairs::decode(&bytes);
    let theirs = ffi_decode(&bytes);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) if a != b => return Err("pairs::decode and the C API read different pairs".into()),
        (Ok(_), Err(_)) => return Err("pairs::decode accepts what the C API refuses".into()),
        (Err(_), Ok(b)) if bytes.len() <= MAX_PAIRS_SIZE && b.len() <= MAX_PAIRS_COUNT => {
            return Err("the C API accepts what pairs::decode refuses (within the limits)".into())
        }
        (Err(s), _) if *s != Status::BadArgument => return Err(format!("refused with {s:?}, expected BadArgument")),
        _ => {}
    }
    if let Ok(list) = ours {
        if pairs::decode(&pairs::encode(&list)) != Ok(list) {
            return Err("re-encoding what was decoded does not decode the same".into());
        }
    }
    Ok(())
}

/// One target for the ABI's encodings: each case is one of the pairs checks
/// or the property-path check.
#[test]
fn fuzz_pairs_and_property_paths() {
    engine::run("abi_encodings", |case| match case.rng.below(4) {
        0 => check_round_trip(case),
        1 => check_malformed_is_refused(case),
        2 => check_random_bytes(case),
        _ => check_property_paths(case),
    });
}

/// Property paths: both forms (Rust SDK: no trailing NUL; C++ SDK: one) give
/// the segments back; any bytes split without panic and join back.
fn check_property_paths(case: &mut Case) -> Result<(), String> {
    {
        let rng = &mut case.rng;
        let n = rng.range(1, 6);
        let segments: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let len = rng.len(24);
                rng.bytes(len).into_iter().map(|b| if b == 0 { b'.' } else { b }).collect()
            })
            .collect();
        let joined = segments.join(&b"\0"[..]);
        let mut cpp = joined.clone();
        cpp.push(0);
        let single_empty = segments.len() == 1 && segments[0].is_empty();
        let expect: Vec<&[u8]> = if single_empty { vec![] } else { segments.iter().map(|s| s.as_slice()).collect() };
        if property_path::split(&cpp) != expect {
            return Err("the C++ SDK form (trailing NUL) does not give the segments back".into());
        }
        if !segments.last().is_some_and(|s| s.is_empty()) && property_path::split(&joined) != expect {
            return Err("the Rust SDK form (no trailing NUL) does not give the segments back".into());
        }
        case.input(&joined);
        // Arbitrary bytes.
        let rng = &mut case.rng;
        let len = rng.len(64);
        let raw = rng.bytes_from(len, b"\0\0ab.\xff");
        let split = property_path::split(&raw);
        let stripped = raw.strip_suffix(&[0]).unwrap_or(&raw);
        if split.join(&b"\0"[..]) != stripped {
            return Err(format!("split does not join back: b\"{}\"", engine::escape(&raw)));
        }
        let _ = property_path::dotted(&raw);
        Ok(())
    }
}
