//! The header-map wire format ("pairs") shared by the header hostcalls.
//!
//! Little-endian: `u32 count`, then `count` × (`u32 key_len`, `u32 value_len`), then
//! each key and value, each followed by a NUL byte. An empty map is encoded as
//! nothing at all (size 0): the Rust SDK rejects a map that is only a count.

use super::Status;

/// Limits on pairs a plugin sends us, as the reference host applies them, so
/// that a hostile module cannot make us allocate without bound.
pub const MAX_PAIRS_SIZE: usize = 1 << 20;
pub const MAX_PAIRS_COUNT: usize = 1024;

pub type Pair = (Vec<u8>, Vec<u8>);

/// Encodes pairs; an empty list becomes an empty byte string.
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = vec![0; encoded_len(pairs)];
    encode_into(pairs, &mut out);
    out
}

/// The size of [`encode`]'s result.
pub fn encoded_len<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> usize {
    if pairs.is_empty() {
        return 0;
    }
    4 + pairs.iter().map(|(k, v)| 8 + k.as_ref().len() + v.as_ref().len() + 2).sum::<usize>()
}

/// Writes [`encode`]'s result into `out`, which is [`encoded_len`] bytes long
/// (the hostcalls encode straight into the guest's memory).
pub fn encode_into<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)], out: &mut [u8]) {
    if pairs.is_empty() {
        return;
    }
    let (table, mut data) = out.split_at_mut(4 + pairs.len() * 8);
    table[..4].copy_from_slice(&(pairs.len() as u32).to_le_bytes());
    for ((k, v), lens) in pairs.iter().zip(table[4..].chunks_exact_mut(8)) {
        let (k, v) = (k.as_ref(), v.as_ref());
        lens[..4].copy_from_slice(&(k.len() as u32).to_le_bytes());
        lens[4..].copy_from_slice(&(v.len() as u32).to_le_bytes());
        for part in [k, v] {
            let (dst, rest) = data.split_at_mut(part.len() + 1);
            dst[..part.len()].copy_from_slice(part);
            dst[part.len()] = 0;
            data = rest;
        }
    }
}

/// Decodes pairs sent by a plugin. Malformed or oversized input is BAD_ARGUMENT.
pub fn decode(bytes: &[u8]) -> Result<Vec<Pair>, Status> {
    if bytes.len() > MAX_PAIRS_SIZE {
        return Err(Status::BadArgument);
    }
    decode_within(bytes, MAX_PAIRS_COUNT)
}

/// Decodes pairs a server built (the C API's header maps and call answers):
/// as [`decode`], without its size limits, which exist against hostile
/// modules; a server's own maps may be large. Malformed input is BAD_ARGUMENT.
pub fn decode_unlimited(bytes: &[u8]) -> Result<Vec<Pair>, Status> {
    decode_within(bytes, usize::MAX)
}

/// Where each key and value of an encoding lies in it (byte ranges, without
/// their NUL bytes), validating it as [`decode_unlimited`] does: for a reader
/// that borrows instead of copying (the C API's `pwh_pairs_get`).
pub fn spans(bytes: &[u8]) -> Result<Vec<(Span, Span)>, Status> {
    let mut walk = Walk::new(bytes, usize::MAX)?;
    let mut out = Vec::with_capacity(walk.count);
    while let Some(pair) = walk.next_pair()? {
        out.push(pair);
    }
    Ok(out)
}

/// A byte range of an encoding.
pub type Span = std::ops::Range<usize>;

fn decode_within(bytes: &[u8], max_count: usize) -> Result<Vec<Pair>, Status> {
    let mut walk = Walk::new(bytes, max_count)?;
    let mut out = Vec::with_capacity(walk.count);
    while let Some((key, value)) = walk.next_pair()? {
        out.push((bytes[key].to_vec(), bytes[value].to_vec()));
    }
    Ok(out)
}

/// Validates an encoding pair by pair: one reader for every decoder, so that
/// they accept exactly the same inputs.
struct Walk<'a> {
    bytes: &'a [u8],
    count: usize,
    next: usize,
    /// Where the next key starts.
    pos: usize,
}

impl<'a> Walk<'a> {
    /// Checks the count (at most `max_count`) and that the length table fits.
    fn new(bytes: &'a [u8], max_count: usize) -> Result<Walk<'a>, Status> {
        if bytes.is_empty() {
            return Ok(Walk { bytes, count: 0, next: 0, pos: 0 });
        }
        let count = read_u32(bytes, 0)? as usize;
        if count > max_count {
            return Err(Status::BadArgument);
        }
        let header_end = count.checked_mul(8).and_then(|n| n.checked_add(4)).ok_or(Status::BadArgument)?;
        if header_end > bytes.len() {
            return Err(Status::BadArgument);
        }
        Ok(Walk { bytes, count, next: 0, pos: header_end })
    }

    /// The key and value of the next pair, `None` after the last.
    fn next_pair(&mut self) -> Result<Option<(Span, Span)>, Status> {
        if self.next == self.count {
            return Ok(None);
        }
        let klen = read_u32(self.bytes, 4 + self.next * 8)? as usize;
        let vlen = read_u32(self.bytes, 8 + self.next * 8)? as usize;
        let key = take_nul_terminated(self.bytes, &mut self.pos, klen)?;
        let value = take_nul_terminated(self.bytes, &mut self.pos, vlen)?;
        self.next += 1;
        Ok(Some((key, value)))
    }
}

/// Whether every name and value can be written into an HTTP/1.1 message head as it is: names not
/// empty, and no CR, LF or NUL anywhere. A line break in a value would end its line early and let
/// the rest add headers, or a whole request of its own, that nobody asked for.
pub fn fit_for_http1(pairs: &[Pair]) -> bool {
    let clean = |b: &[u8]| !b.iter().any(|c| matches!(c, b'\r' | b'\n' | 0));
    pairs.iter().all(|(k, v)| !k.is_empty() && clean(k) && clean(v))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, Status> {
    let b = bytes.get(at..at + 4).ok_or(Status::BadArgument)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The `len` bytes at `*pos`, which must be followed by a NUL byte; moves `*pos` past it.
fn take_nul_terminated(bytes: &[u8], pos: &mut usize, len: usize) -> Result<Span, Status> {
    let end = pos.checked_add(len).ok_or(Status::BadArgument)?;
    if bytes.get(end) != Some(&0) {
        return Err(Status::BadArgument);
    }
    let span = *pos..end;
    *pos = end + 1;
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_map_is_zero_bytes() {
        assert!(encode::<&[u8], &[u8]>(&[]).is_empty());
        assert_eq!(decode(&[]).unwrap(), Vec::<Pair>::new());
    }

    #[test]
    fn round_trip_is_byte_exact() {
        let pairs = vec![(b":path".to_vec(), b"/a?b=1".to_vec()), (b"x".to_vec(), b"".to_vec())];
        let enc = encode(&pairs);
        let expected: Vec<u8> = [
            &2u32.to_le_bytes()[..],
            &5u32.to_le_bytes(),
            &6u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            b":path\0/a?b=1\0x\0\0",
        ]
        .concat();
        assert_eq!(enc, expected);
        assert_eq!(decode(&enc).unwrap(), pairs);
    }

    #[test]
    fn more_than_1_mib_of_pairs_is_bad_argument() {
        let big = encode(&[("k", vec![b'v'; MAX_PAIRS_SIZE])]);
        assert_eq!(decode(&big), Err(Status::BadArgument));
        let fits = encode(&[("k", vec![b'v'; MAX_PAIRS_SIZE - 16])]);
        assert_eq!(decode(&fits).map(|p| p.len()), Ok(1));
    }

    #[test]
    fn server_maps_have_no_size_limit_but_the_same_format() {
        let many: Vec<Pair> = (0..MAX_PAIRS_COUNT + 1).map(|i| (format!("k{i}").into_bytes(), Vec::new())).collect();
        let enc = encode(&many);
        assert_eq!(decode(&enc), Err(Status::BadArgument));
        assert_eq!(decode_unlimited(&enc).unwrap(), many);
        let big = encode(&[("k", vec![b'v'; MAX_PAIRS_SIZE])]);
        assert_eq!(decode_unlimited(&big).map(|p| p.len()), Ok(1));
        let spans = spans(&big).unwrap();
        assert_eq!((&big[spans[0].0.clone()], big[spans[0].1.clone()].len()), (&b"k"[..], MAX_PAIRS_SIZE));
        let good = encode(&[("k", "v")]);
        assert_eq!(decode_unlimited(&good[..good.len() - 1]), Err(Status::BadArgument));
        assert_eq!(super::spans(&[1]), Err(Status::BadArgument));
    }

    #[test]
    fn line_breaks_and_empty_names_do_not_fit_an_http1_head() {
        let ok = |k: &str, v: &str| fit_for_http1(&[(k.as_bytes().to_vec(), v.as_bytes().to_vec())]);
        assert!(ok(":path", "/a?b=c d"));
        assert!(ok("x-a", ""));
        assert!(!ok("x-a", "1\r\nInjected: 1"));
        assert!(!ok("x-a", "1\n"));
        assert!(!ok("x-a\r", "1"));
        assert!(!ok("x-a", "\0"));
        assert!(!ok("", "1"));
        assert!(fit_for_http1(&[]));
    }

    #[test]
    fn malformed_input_is_bad_argument() {
        let good = encode(&[("k", "v")]);
        assert_eq!(decode(&good[..good.len() - 1]), Err(Status::BadArgument));
        assert_eq!(decode(&[1]), Err(Status::BadArgument));
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge_count), Err(Status::BadArgument));
        let mut no_nul = good.clone();
        let n = no_nul.len();
        no_nul[n - 1] = b'x';
        assert_eq!(decode(&no_nul), Err(Status::BadArgument));
        let mut long_key = good;
        long_key[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&long_key), Err(Status::BadArgument));
    }
}
