//! Otoroshi's data store (`proxy_datastore_*`, `proxy_plugin_datastore_*`) in the shared block,
//! so that every NGINX worker sees the same keys, with Redis's semantics and millisecond TTLs.
//!
//! The keys are shared-data entries of one reserved vm_id, [`DATASTORE_VM_ID`] (a NUL byte
//! first: no Proxy-Wasm plugin reads or writes them by accident), so they use the block's hash
//! buckets, allocator, lock, undo journal, checks and per-vm_id byte count (the store's cap) as
//! shared data does. A value is stored as `[expires_at: u64 LE, 0 = none][bytes]`, the deadline
//! in milliseconds of `CLOCK_MONOTONIC`, which all processes of the machine share. Every
//! operation is one update under the lock (an `incrby`, a `setnx` are atomic across workers);
//! an expired key is removed when an operation meets it, when a scan (`keys`, `all_matching`)
//! sees it, and by a sweep every 1024 writes of a process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::region::{corrupt, Corrupt, Fail, Tx, DATA_BUCKETS, OFF_BUCKETS};
use super::{ShmStore, D_BYTES, D_NEXT, D_PAYER, U_BYTES, U_HELD};
use crate::extism::otoroshi::datastore::{redis_glob, Clock, DataStore, DataStoreError};
use crate::shared::{SharedError, Writer};

/// The vm_id the data store's entries are kept under.
pub const DATASTORE_VM_ID: &str = "\0otoroshi:datastore";

/// What an update does with the key it looked at.
enum Op {
    Keep,
    Put(Vec<u8>, Option<u64>),
    Delete,
}

/// A live key's value and deadline.
type Current<'a> = Option<(&'a [u8], Option<u64>)>;

impl ShmStore {
    /// The value and deadline of a data-store entry.
    fn ds_read(&self, e: u32) -> Result<(Vec<u8>, Option<u64>), Corrupt> {
        let (vl, kl, val) = self.data_lengths(e)?;
        let raw = self.region.bytes(e + D_BYTES + vl + kl, val as usize)?;
        if raw.len() < 8 {
            return corrupt(format!("data store entry {e} is shorter than its deadline"));
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&raw[..8]);
        let at = u64::from_le_bytes(at);
        Ok((raw[8..].to_vec(), (at != 0).then_some(at)))
    }

    /// Unlinks and frees the entry of (`vm_id`, `key`); whoever paid for it gets its bytes back.
    fn remove_tx(&self, tx: &Tx, vm_id: &str, key: &[u8]) -> Result<bool, Fail> {
        let r = &self.region;
        let (_, link, Some(e)) = self.find_data(vm_id, key)? else { return Ok(false) };
        let (_, kl, val) = self.data_lengths(e)?;
        let payer = r.load(e + D_PAYER)?;
        r.record(payer, U_BYTES as u64)?;
        let left = r
            .load(payer + U_HELD)?
            .checked_sub(kl + val)
            .ok_or_else(|| Corrupt(format!("usage record {payer} counts fewer bytes than an entry it paid for")))?;
        tx.set(link, r.load(e + D_NEXT)?)?;
        tx.set(payer + U_HELD, left)?;
        tx.free(e)?;
        Ok(true)
    }

    /// One atomic read-modify-write of a data-store key: `f` sees the live value (an expired one
    /// is absent, and removed unless `f` replaces it) and says what to do.
    fn ds_modify<T>(
        &self,
        key: &[u8],
        now: u64,
        max_bytes: u64,
        mut f: impl FnMut(Current<'_>) -> (Op, T),
    ) -> Result<T, SharedError> {
        self.update(|tx| {
            let found = match self.find_data(DATASTORE_VM_ID, key)?.2 {
                Some(e) => Some(self.ds_read(e)?),
                None => None,
            };
            let expired = matches!(found, Some((_, Some(at))) if at <= now);
            let live = found.as_ref().filter(|_| !expired).map(|(v, at)| (v.as_slice(), *at));
            let (op, out) = f(live);
            match op {
                Op::Keep if expired => {
                    self.remove_tx(tx, DATASTORE_VM_ID, key)?;
                }
                Op::Keep => {}
                Op::Put(value, at) => {
                    let mut stored = at.unwrap_or(0).to_le_bytes().to_vec();
                    stored.extend_from_slice(&value);
                    let writer = Writer { vm_id: DATASTORE_VM_ID, max_bytes };
                    self.set_tx(tx, DATASTORE_VM_ID, key, &stored, 0, writer)?;
                }
                Op::Delete => {
                    self.remove_tx(tx, DATASTORE_VM_ID, key)?;
                }
            }
            Ok(out)
        })
    }

    /// The live keys (with their values when `values`), and the expired ones, under one lock.
    #[allow(clippy::type_complexity)]
    fn ds_scan(&self, now: u64, values: bool) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>), SharedError> {
        let r = &self.region;
        self.update(|_| {
            let (mut live, mut expired) = (Vec::new(), Vec::new());
            let mut steps = 0;
            for bucket in 0..DATA_BUCKETS as u32 {
                let mut cur = r.load(OFF_BUCKETS + 4 * bucket)?;
                while cur != 0 {
                    steps += 1;
                    if steps > r.max_blocks() {
                        return Err(Corrupt(format!("shared data bucket {bucket} has a cycle")).into());
                    }
                    let (vl, kl, _) = self.data_lengths(cur)?;
                    if vl as usize == DATASTORE_VM_ID.len() && r.eq_bytes(cur + D_BYTES, DATASTORE_VM_ID.as_bytes())? {
                        let key = r.bytes(cur + D_BYTES + vl, kl as usize)?;
                        let (value, at) = self.ds_read(cur)?;
                        if at.is_some_and(|at| at <= now) {
                            expired.push(key);
                        } else {
                            live.push((key, if values { value } else { Vec::new() }));
                        }
                    }
                    cur = r.load(cur + D_NEXT)?;
                }
            }
            Ok((live, expired))
        })
    }
}

/// The data store of all processes mapping one block (NGINX: all workers of the zone).
pub struct ShmDataStore {
    store: Arc<ShmStore>,
    max_bytes: u64,
    clock: Clock,
    /// Writes by this process since its last sweep of expired keys.
    writes: AtomicU32,
}

/// Milliseconds of `CLOCK_MONOTONIC` (the same clock in every process of the machine).
fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000).saturating_add(ts.tv_nsec as u64 / 1_000_000)
}

impl ShmDataStore {
    /// `max_bytes` caps the keys and values the store holds together (the block may be smaller).
    #[must_use]
    pub fn new(store: Arc<ShmStore>, max_bytes: u64) -> ShmDataStore {
        ShmDataStore::with_clock(store, max_bytes, Arc::new(monotonic_ms))
    }

    #[must_use]
    pub fn with_clock(store: Arc<ShmStore>, max_bytes: u64, clock: Clock) -> ShmDataStore {
        ShmDataStore { store, max_bytes, clock, writes: AtomicU32::new(0) }
    }

    /// Milliseconds now, never 0 (0 stores "no deadline").
    fn now(&self) -> u64 {
        (self.clock)().max(1)
    }

    fn modify<T>(&self, key: &str, f: impl FnMut(Current<'_>) -> (Op, T)) -> Result<T, DataStoreError> {
        let now = self.now();
        self.store.ds_modify(key.as_bytes(), now, self.max_bytes, f).map_err(|e| self.error(e))
    }

    fn error(&self, e: SharedError) -> DataStoreError {
        match e {
            SharedError::OverQuota { .. } => DataStoreError::Full(self.max_bytes),
            SharedError::Full(message) => DataStoreError::Zone(message),
            other => DataStoreError::Zone(other.to_string()),
        }
    }

    fn deadline(&self, ttl: Option<Duration>) -> Result<Option<u64>, DataStoreError> {
        match ttl {
            None => Ok(None),
            Some(d) if d.is_zero() => Err(DataStoreError::InvalidTtl),
            Some(d) => Ok(Some(self.now().saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64))),
        }
    }

    /// Counts a write; every 1024th removes the expired keys.
    fn wrote(&self) {
        if self.writes.fetch_add(1, Ordering::Relaxed) + 1 >= 1024 {
            self.writes.store(0, Ordering::Relaxed);
            if let Ok((_, expired)) = self.store.ds_scan(self.now(), false) {
                self.drop_expired(&expired);
            }
        }
    }

    /// Removes keys a scan found expired, one update each (each still expired then).
    fn drop_expired(&self, keys: &[Vec<u8>]) {
        for key in keys {
            let _ = self.store.ds_modify(key, self.now(), self.max_bytes, |_| (Op::Keep, ()));
        }
    }

    /// Keys (and values) matching `pattern`, sorted by key.
    fn matching(&self, pattern: &str, values: bool) -> Vec<(String, Vec<u8>)> {
        let Ok((live, expired)) = self.store.ds_scan(self.now(), values) else { return Vec::new() };
        self.drop_expired(&expired);
        let mut found: Vec<(String, Vec<u8>)> = live
            .into_iter()
            .filter_map(|(k, v)| String::from_utf8(k).ok().map(|k| (k, v)))
            .filter(|(k, _)| redis_glob(pattern, k))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }
}

impl DataStore for ShmDataStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.modify(key, |cur| (Op::Keep, cur.map(|(v, _)| v.to_vec()))).ok().flatten()
    }

    fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, DataStoreError> {
        let at = self.deadline(ttl)?;
        self.modify(key, |_| (Op::Put(value.to_vec(), at), true))?;
        self.wrote();
        Ok(true)
    }

    fn setnx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, DataStoreError> {
        let at = self.deadline(ttl)?;
        let set = self.modify(key, |cur| match cur {
            Some(_) => (Op::Keep, false),
            None => (Op::Put(value.to_vec(), at), true),
        })?;
        self.wrote();
        Ok(set)
    }

    fn del(&self, keys: &[String]) -> u64 {
        keys.iter()
            .filter(|k| {
                self.modify(k, |cur| match cur {
                    Some(_) => (Op::Delete, true),
                    None => (Op::Keep, false),
                })
                .unwrap_or(false)
            })
            .count() as u64
    }

    fn incrby(&self, key: &str, incr: i64) -> Result<i64, DataStoreError> {
        let r = self.modify(key, |cur| {
            let (n, at) = match cur {
                Some((v, at)) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) {
                    Some(n) => (n, at),
                    None => return (Op::Keep, Err(DataStoreError::NotAnInteger)),
                },
                None => (0, None),
            };
            match n.checked_add(incr) {
                Some(next) => (Op::Put(next.to_string().into_bytes(), at), Ok(next)),
                None => (Op::Keep, Err(DataStoreError::Overflow)),
            }
        })?;
        self.wrote();
        r
    }

    fn exists(&self, key: &str) -> bool {
        self.modify(key, |cur| (Op::Keep, cur.is_some())).unwrap_or(false)
    }

    fn pttl(&self, key: &str) -> i64 {
        let now = self.now();
        self.modify(key, |cur| {
            let ms = match cur {
                None => -2,
                Some((_, None)) => -1,
                Some((_, Some(at))) => i64::try_from(at.saturating_sub(now)).unwrap_or(i64::MAX),
            };
            (Op::Keep, ms)
        })
        .unwrap_or(-2)
    }

    fn pexpire(&self, key: &str, ms: i64) -> bool {
        let at = self.now().saturating_add(ms.max(0) as u64);
        self.modify(key, |cur| match cur {
            None => (Op::Keep, false),
            Some(_) if ms <= 0 => (Op::Delete, true),
            Some((v, _)) => (Op::Put(v.to_vec(), Some(at)), true),
        })
        .unwrap_or(false)
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        self.matching(pattern, false).into_iter().map(|(k, _)| k).collect()
    }

    /// One scan under the lock: the values of the keys matching at that moment.
    fn all_matching(&self, pattern: &str) -> Vec<Vec<u8>> {
        self.matching(pattern, true).into_iter().map(|(_, v)| v).collect()
    }
}
