//! The pairs encoding of header maps, for C: `pwh_pairs_*`. The format and
//! its validation are `abi::pairs`'s, without the limits it puts on plugin
//! input (`spans`, `decode_unlimited`): a server's own maps may be large.

use crate::abi::pairs;

use super::{guard, pwh_buffer, pwh_bytes, pwh_status};

/// The number of pairs in a pairs encoding, or -1 when it is malformed.
///
/// # Safety
/// `pairs` must be readable.
#[no_mangle]
pub unsafe extern "C" fn pwh_pairs_count(pairs: pwh_bytes) -> i64 {
    // SAFETY: readable for its length (contract).
    let pairs = unsafe { pairs.as_slice() };
    guard(-1, || match pairs.map(pairs::spans) {
        Some(Ok(spans)) => spans.len() as i64,
        _ => -1,
    })
}

/// Pair number `index` of a pairs encoding: `*key` and `*value` point into
/// `pairs` (each followed by a NUL byte, not counted in `len`). Returns
/// `PWH_STATUS_OK`, `PWH_STATUS_NOT_FOUND` past the last pair, or
/// `PWH_STATUS_BAD_ARGUMENT` for a malformed encoding or a NULL out-parameter.
///
/// # Safety
/// `pairs` must be readable; `key` and `value` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pwh_pairs_get(
    pairs: pwh_bytes,
    index: usize,
    key: *mut pwh_bytes,
    value: *mut pwh_bytes,
) -> i32 {
    // SAFETY: readable for its length (contract).
    let bytes = unsafe { pairs.as_slice() };
    // SAFETY: NULL or writable (contract); nothing else refers to them during the call.
    let (key, value) = unsafe { (key.as_mut(), value.as_mut()) };
    guard(pwh_status::InternalFailure as i32, || {
        let (Some(bytes), Some(key), Some(value)) = (bytes, key, value) else {
            return pwh_status::BadArgument as i32;
        };
        match pairs::spans(bytes) {
            Err(_) => pwh_status::BadArgument as i32,
            Ok(spans) => match spans.get(index) {
                None => pwh_status::NotFound as i32,
                Some((k, v)) => {
                    *key = pwh_bytes::of(&bytes[k.clone()]);
                    *value = pwh_bytes::of(&bytes[v.clone()]);
                    pwh_status::Ok as i32
                }
            },
        }
    })
}

/// Appends one pair to the pairs encoding held in `pairs` (an empty buffer is
/// the empty map). Returns `PWH_STATUS_OK`, or `PWH_STATUS_BAD_ARGUMENT` when
/// the buffer does not hold a valid encoding or an argument is NULL.
///
/// # Safety
/// `pairs` must be NULL or a live buffer; `key` and `value` must be readable
/// and must not point into `pairs`.
#[no_mangle]
pub unsafe extern "C" fn pwh_pairs_add(pairs: *mut pwh_buffer, key: pwh_bytes, value: pwh_bytes) -> i32 {
    // SAFETY: NULL or a live, unaliased buffer (contract).
    let buf = unsafe { pairs.as_mut() };
    // SAFETY: readable for their lengths (contract).
    let (key, value) = unsafe { (key.as_slice(), value.as_slice()) };
    guard(pwh_status::InternalFailure as i32, || {
        let (Some(buf), Some(key), Some(value)) = (buf, key, value) else {
            return pwh_status::BadArgument as i32;
        };
        match pairs::spans(&buf.bytes) {
            Err(_) => pwh_status::BadArgument as i32,
            Ok(spans) => {
                let old = &buf.bytes;
                let mut list: Vec<(&[u8], &[u8])> = spans.into_iter().map(|(k, v)| (&old[k], &old[v])).collect();
                list.push((key, value));
                buf.bytes = pairs::encode(&list);
                pwh_status::Ok as i32
            }
        }
    })
}
