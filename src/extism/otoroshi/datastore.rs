//! The data store behind `proxy_datastore_*` and `proxy_plugin_datastore_*`: keys with
//! millisecond TTLs and Redis semantics (Otoroshi's `RawDataStore`, Redis in most deployments).
//!
//! [`DataStore`] is what a server provides: NGINX backs it with its shared-memory zone so that all
//! workers see the same keys, Traffic Server with one store per process ([`InProcessDataStore`]).
//! Keys reach the store already prefixed (see [`key_prefix`]).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Why a data store operation failed. The plugin's call fails with this message, as it does in
/// Otoroshi when the store's future fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataStoreError {
    #[error("the data store is full ({0} bytes)")]
    Full(u64),
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
    #[error("invalid expire time in set")]
    InvalidTtl,
    /// The shared-memory zone refused the write (full, or too small for the value).
    #[error("{0}")]
    Zone(String),
}

/// A key-value store with TTLs. Every method is atomic on its own.
pub trait DataStore: Send + Sync {
    /// The value of a live key.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// `SET key value [PX ttl]`: replaces the value and its TTL (none when `ttl` is `None`).
    fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, DataStoreError>;
    /// `SET key value NX [PX ttl]`: only when the key does not exist; whether it was set.
    fn setnx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, DataStoreError>;
    /// `DEL keys...`: how many existed.
    fn del(&self, keys: &[String]) -> u64;
    /// `INCRBY key incr`: the new value (a missing key counts as 0; the TTL is kept).
    fn incrby(&self, key: &str, incr: i64) -> Result<i64, DataStoreError>;
    /// `EXISTS key`.
    fn exists(&self, key: &str) -> bool;
    /// `PTTL key`: milliseconds left, -1 for a key without TTL, -2 for a missing key.
    fn pttl(&self, key: &str) -> i64;
    /// `PEXPIRE key ms`: whether the key exists (a TTL of 0 or less deletes it).
    fn pexpire(&self, key: &str, ms: i64) -> bool;
    /// `KEYS pattern` (Redis glob: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\` escapes).
    fn keys(&self, pattern: &str) -> Vec<String>;
    /// Values of the keys matching `pattern` (Otoroshi's `allMatching`: `KEYS` then `MGET`,
    /// keys that vanished in between left out).
    fn all_matching(&self, pattern: &str) -> Vec<Vec<u8>> {
        self.keys(pattern).iter().filter_map(|k| self.get(k)).collect()
    }
}

/// Otoroshi's key prefix: `<storageRoot>:` for the global store, `<storageRoot>:wasm:<pluginId>:`
/// for a plugin's own.
#[must_use]
pub fn key_prefix(storage_root: &str, plugin_id: Option<&str>) -> String {
    match plugin_id {
        Some(id) => format!("{storage_root}:wasm:{id}:"),
        None => format!("{storage_root}:"),
    }
}

/// Redis's `stringmatchlen`: `*`, `?`, `[...]` with `^` negation and ranges, `\` escaping.
#[must_use]
pub fn redis_glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while pi < p.len() || ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' if ti < t.len() => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' if ti < t.len() => {
                    let (matched, next) = redis_class(p, pi, t[ti]);
                    if matched {
                        pi = next;
                        ti += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() && ti < t.len() && p[pi + 1] == t[ti] => {
                    pi += 2;
                    ti += 1;
                    continue;
                }
                c if !matches!(c, b'*' | b'?' | b'[' | b'\\') && ti < t.len() && c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                // A trailing lone backslash matches a backslash, as in Redis.
                b'\\' if pi + 1 == p.len() && ti < t.len() && t[ti] == b'\\' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) if st < t.len() => {
                star = Some((sp, st + 1));
                pi = sp + 1;
                ti = st + 1;
            }
            _ => return false,
        }
    }
    true
}

/// A Redis `[...]` class at `p[start]`; an unclosed class runs to the end of the pattern.
fn redis_class(p: &[u8], start: usize, c: u8) -> (bool, usize) {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    while i < p.len() && p[i] != b']' {
        if p[i] == b'\\' && i + 1 < p.len() {
            matched |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let (a, b) = if p[i] <= p[i + 2] { (p[i], p[i + 2]) } else { (p[i + 2], p[i]) };
            matched |= (a..=b).contains(&c);
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    (matched != negated, (i + 1).min(p.len()))
}

static INSTALLED: RwLock<Option<Arc<dyn DataStore>>> = RwLock::new(None);

/// Makes `store` the data store of every entity loaded afterwards in this process (an NGINX
/// worker installs the shared-memory zone's before it loads its entities).
pub fn set_process_datastore(store: Arc<dyn DataStore>) {
    *INSTALLED.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store);
}

/// The data store of this process: the one installed with [`set_process_datastore`], else one
/// [`InProcessDataStore`] for the whole process (every Traffic Server thread, every load and
/// reload, every remap rule), capped at [`InProcessDataStore::DEFAULT_MAX_BYTES`].
pub fn process_datastore() -> Arc<dyn DataStore> {
    static STORE: LazyLock<Arc<InProcessDataStore>> =
        LazyLock::new(|| Arc::new(InProcessDataStore::new(InProcessDataStore::DEFAULT_MAX_BYTES)));
    if let Some(s) = INSTALLED.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
        return s.clone();
    }
    STORE.clone()
}

/// Milliseconds on some monotonic clock; tests drive their own.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Entry {
    value: Vec<u8>,
    /// Milliseconds on the store's clock.
    expires_at: Option<u64>,
}

struct Inner {
    entries: HashMap<String, Entry>,
    /// Bytes of keys and values held.
    bytes: u64,
    /// Writes since the last sweep of expired keys.
    writes: u32,
}

/// A [`DataStore`] in this process's memory (one per Traffic Server process; per NGINX worker
/// only where no shared zone is configured). Expired keys are dropped when met and by a sweep
/// every 1024 writes; `max_bytes` caps keys plus values.
pub struct InProcessDataStore {
    inner: Mutex<Inner>,
    max_bytes: u64,
    clock: Clock,
}

impl InProcessDataStore {
    /// The cap servers use unless configured otherwise: `vm_config.limits.max_shared_data_size`'s
    /// default.
    pub const DEFAULT_MAX_BYTES: u64 = crate::config::Quotas::DEFAULT_MAX_SHARED_DATA_SIZE;

    #[must_use]
    pub fn new(max_bytes: u64) -> InProcessDataStore {
        let start = Instant::now();
        InProcessDataStore::with_clock(max_bytes, Arc::new(move || start.elapsed().as_millis() as u64))
    }

    #[must_use]
    pub fn with_clock(max_bytes: u64, clock: Clock) -> InProcessDataStore {
        InProcessDataStore {
            inner: Mutex::new(Inner { entries: HashMap::new(), bytes: 0, writes: 0 }),
            max_bytes,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent entries (every update is one insert or
        // remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ttl_deadline(&self, ttl: Option<Duration>) -> Result<Option<u64>, DataStoreError> {
        match ttl {
            None => Ok(None),
            Some(d) if d.is_zero() => Err(DataStoreError::InvalidTtl),
            Some(d) => Ok(Some((self.clock)().saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64))),
        }
    }
}

impl Inner {
    fn live(&mut self, key: &str, now: u64) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| e.expires_at.is_some_and(|at| at <= now)) {
            self.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(e) => {
                self.bytes -= (key.len() + e.value.len()) as u64;
                true
            }
            None => false,
        }
    }

    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        expires_at: Option<u64>,
        max: u64,
        now: u64,
    ) -> Result<(), DataStoreError> {
        self.writes += 1;
        if self.writes >= 1024 {
            self.writes = 0;
            self.entries.retain(|_, e| e.expires_at.is_none_or(|at| at > now));
            self.bytes = self.entries.iter().map(|(k, e)| (k.len() + e.value.len()) as u64).sum();
        }
        let old = self.entries.get(key).map_or(0, |e| (key.len() + e.value.len()) as u64);
        let new = (key.len() + value.len()) as u64;
        if self.bytes - old + new > max {
            return Err(DataStoreError::Full(max));
        }
        self.bytes = self.bytes - old + new;
        self.entries.insert(key.to_owned(), Entry { value, expires_at });
        Ok(())
    }
}

impl DataStore for InProcessDataStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = (self.clock)();
        self.lock().live(key, now).map(|e| e.value.clone())
    }

    fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, DataStoreError> {
        let expires_at = self.ttl_deadline(ttl)?;
        let now = (self.clock)();
        self.lock().put(key, value.to_vec(), expires_at, self.max_bytes, now)?;
        Ok(true)
    }

    fn setnx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, DataStoreError> {
        let expires_at = self.ttl_deadline(ttl)?;
        let now = (self.clock)();
        let mut inner = self.lock();
        if inner.live(key, now).is_some() {
            return Ok(false);
        }
        inner.put(key, value.to_vec(), expires_at, self.max_bytes, now)?;
        Ok(true)
    }

    fn del(&self, keys: &[String]) -> u64 {
        let now = (self.clock)();
        let mut inner = self.lock();
        keys.iter().filter(|k| inner.live(k, now).is_some() && inner.remove(k)).count() as u64
    }

    fn incrby(&self, key: &str, incr: i64) -> Result<i64, DataStoreError> {
        let now = (self.clock)();
        let mut inner = self.lock();
        let (current, expires_at) = match inner.live(key, now) {
            Some(e) => {
                let n = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or(DataStoreError::NotAnInteger)?;
                (n, e.expires_at)
            }
            None => (0, None),
        };
        let next = current.checked_add(incr).ok_or(DataStoreError::Overflow)?;
        inner.put(key, next.to_string().into_bytes(), expires_at, self.max_bytes, now)?;
        Ok(next)
    }

    fn exists(&self, key: &str) -> bool {
        let now = (self.clock)();
        self.lock().live(key, now).is_some()
    }

    fn pttl(&self, key: &str) -> i64 {
        let now = (self.clock)();
        match self.lock().live(key, now) {
            None => -2,
            Some(Entry { expires_at: None, .. }) => -1,
            Some(Entry { expires_at: Some(at), .. }) => i64::try_from(*at - now).unwrap_or(i64::MAX),
        }
    }

    fn pexpire(&self, key: &str, ms: i64) -> bool {
        let now = (self.clock)();
        let mut inner = self.lock();
        if inner.live(key, now).is_none() {
            return false;
        }
        if ms <= 0 {
            inner.remove(key);
        } else if let Some(e) = inner.live(key, now) {
            e.expires_at = Some(now.saturating_add(ms as u64));
        }
        true
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let now = (self.clock)();
        let inner = self.lock();
        let mut keys: Vec<String> = inner
            .entries
            .iter()
            .filter(|(k, e)| e.expires_at.is_none_or(|at| at > now) && redis_glob(pattern, k))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn store() -> (InProcessDataStore, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1000));
        let clock = now.clone();
        (InProcessDataStore::with_clock(1 << 20, Arc::new(move || clock.load(Ordering::SeqCst))), now)
    }

    #[test]
    fn prefixes_are_otoroshis() {
        assert_eq!(key_prefix("otoroshi", None), "otoroshi:");
        assert_eq!(key_prefix("otoroshi", Some("p1")), "otoroshi:wasm:p1:");
    }

    #[test]
    fn a_key_with_a_ttl_expires() {
        let (s, now) = store();
        assert_eq!(s.set("k", b"v", Some(Duration::from_millis(50))), Ok(true));
        assert_eq!(s.pttl("k"), 50);
        now.fetch_add(49, Ordering::SeqCst);
        assert_eq!(s.get("k"), Some(b"v".to_vec()));
        now.fetch_add(1, Ordering::SeqCst);
        assert_eq!(s.get("k"), None);
        assert!(!s.exists("k"));
        assert_eq!(s.pttl("k"), -2);
    }

    #[test]
    fn pttl_is_minus_one_without_ttl_and_set_clears_a_ttl() {
        let (s, _) = store();
        s.set("k", b"v", Some(Duration::from_secs(1))).unwrap();
        s.set("k", b"w", None).unwrap();
        assert_eq!(s.pttl("k"), -1);
    }

    #[test]
    fn setnx_sets_only_a_missing_key() {
        let (s, now) = store();
        assert_eq!(s.setnx("k", b"1", Some(Duration::from_millis(10))), Ok(true));
        assert_eq!(s.setnx("k", b"2", None), Ok(false));
        assert_eq!(s.get("k"), Some(b"1".to_vec()));
        now.fetch_add(10, Ordering::SeqCst);
        assert_eq!(s.setnx("k", b"3", None), Ok(true));
    }

    #[test]
    fn incrby_counts_from_zero_and_keeps_the_ttl() {
        let (s, _) = store();
        assert_eq!(s.incrby("n", 5), Ok(5));
        s.pexpire("n", 100);
        assert_eq!(s.incrby("n", -7), Ok(-2));
        assert_eq!(s.pttl("n"), 100);
        s.set("t", b"text", None).unwrap();
        assert_eq!(s.incrby("t", 1), Err(DataStoreError::NotAnInteger));
        s.set("m", i64::MAX.to_string().as_bytes(), None).unwrap();
        assert_eq!(s.incrby("m", 1), Err(DataStoreError::Overflow));
    }

    #[test]
    fn del_counts_the_keys_that_existed() {
        let (s, _) = store();
        s.set("a", b"1", None).unwrap();
        s.set("b", b"1", None).unwrap();
        assert_eq!(s.del(&["a".into(), "b".into(), "c".into()]), 2);
        assert!(!s.exists("a"));
    }

    #[test]
    fn pexpire_of_a_missing_key_is_false_and_of_zero_deletes() {
        let (s, _) = store();
        assert!(!s.pexpire("x", 10));
        s.set("x", b"1", None).unwrap();
        assert!(s.pexpire("x", 0));
        assert!(!s.exists("x"));
    }

    #[test]
    fn keys_and_all_matching_use_redis_patterns() {
        let (s, _) = store();
        for k in ["otoroshi:a1", "otoroshi:a2", "otoroshi:b1", "other:a1"] {
            s.set(k, k.as_bytes(), None).unwrap();
        }
        assert_eq!(s.keys("otoroshi:a*"), vec!["otoroshi:a1", "otoroshi:a2"]);
        assert_eq!(s.keys("otoroshi:?1"), vec!["otoroshi:a1", "otoroshi:b1"]);
        assert_eq!(s.all_matching("otoroshi:[^a]*"), vec![b"otoroshi:b1".to_vec()]);
    }

    #[test]
    fn the_store_refuses_writes_past_its_cap() {
        let s = InProcessDataStore::new(10);
        assert_eq!(s.set("k", b"123456789", None), Ok(true));
        assert_eq!(s.set("j", b"1", None), Err(DataStoreError::Full(10)));
        // Replacing a value only counts the difference.
        assert_eq!(s.set("k", b"12345678", None), Ok(true));
    }

    #[test]
    fn a_zero_ttl_is_refused_as_redis_does() {
        let (s, _) = store();
        assert_eq!(s.set("k", b"v", Some(Duration::ZERO)), Err(DataStoreError::InvalidTtl));
    }

    #[test]
    fn redis_globs() {
        assert!(redis_glob("h?llo", "hello"));
        assert!(redis_glob("h*llo", "heeeello"));
        assert!(redis_glob("h[ae]llo", "hallo"));
        assert!(!redis_glob("h[^e]llo", "hello"));
        assert!(redis_glob("h[a-b]llo", "hbllo"));
        assert!(redis_glob("a\\*b", "a*b"));
        assert!(!redis_glob("a\\*b", "axb"));
        assert!(redis_glob("*", ""));
        assert!(!redis_glob("a", ""));
    }
}
