//! The in-memory maps of `proxy_global_map_*` and `proxy_plugin_map_*`: bytes by key, one map
//! per plugin id and one named `global`, for the life of the process, as Otoroshi keeps them in
//! one JVM-wide `TrieMap` (so per NGINX worker and per Traffic Server process here; there is no
//! TTL and nothing is shared between processes, exactly as between Otoroshi instances).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

/// The map id Otoroshi uses for the global map.
pub const GLOBAL: &str = "global";

/// All maps of the process.
#[derive(Default)]
pub struct Maps {
    maps: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
    /// Bytes of keys and values held in all maps; writes past `max_bytes` are refused.
    bytes: Mutex<u64>,
    max_bytes: u64,
}

/// The maps of this process (every entity of every load, every Traffic Server thread), capped at
/// [`Maps::DEFAULT_MAX_BYTES`].
pub fn process_maps() -> Arc<Maps> {
    static MAPS: LazyLock<Arc<Maps>> = LazyLock::new(|| Arc::new(Maps::new(Maps::DEFAULT_MAX_BYTES)));
    MAPS.clone()
}

/// A write that would take the maps past their cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the in-memory maps are full ({0} bytes)")]
pub struct MapsFull(pub u64);

impl Maps {
    /// The cap servers use unless configured otherwise: `vm_config.limits.max_shared_data_size`'s
    /// default.
    pub const DEFAULT_MAX_BYTES: u64 = crate::config::Quotas::DEFAULT_MAX_SHARED_DATA_SIZE;

    #[must_use]
    pub fn new(max_bytes: u64) -> Maps {
        Maps { maps: Mutex::new(HashMap::new()), bytes: Mutex::new(0), max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Vec<u8>>>> {
        // Every update is one insert or remove: a poisoned lock still holds consistent maps.
        self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, u64> {
        self.bytes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set(&self, map: &str, key: &str, value: &[u8]) -> Result<(), MapsFull> {
        let mut maps = self.lock();
        let entries = maps.entry(map.to_owned()).or_default();
        let old = entries.get(key).map_or(0, |v| (key.len() + v.len()) as u64);
        let new = (key.len() + value.len()) as u64;
        let mut bytes = self.bytes();
        if *bytes - old + new > self.max_bytes {
            return Err(MapsFull(self.max_bytes));
        }
        *bytes = *bytes - old + new;
        entries.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    #[must_use]
    pub fn get(&self, map: &str, key: &str) -> Option<Vec<u8>> {
        self.lock().get(map).and_then(|m| m.get(key).cloned())
    }

    /// Removes `key`; like Otoroshi, this creates the map when it does not exist yet (so a later
    /// dump of it is `{}` rather than nothing).
    pub fn del(&self, map: &str, key: &str) {
        let mut maps = self.lock();
        if let Some(v) = maps.entry(map.to_owned()).or_default().remove(key) {
            *self.bytes() -= (key.len() + v.len()) as u64;
        }
    }

    /// Every entry of `map`, or `None` when the map was never written.
    #[must_use]
    pub fn dump(&self, map: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.lock().get(map).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_separate_per_id() {
        let m = Maps::new(1 << 20);
        m.set("p1", "k", b"a").unwrap();
        m.set(GLOBAL, "k", b"b").unwrap();
        assert_eq!(m.get("p1", "k"), Some(b"a".to_vec()));
        assert_eq!(m.get(GLOBAL, "k"), Some(b"b".to_vec()));
        assert_eq!(m.get("p2", "k"), None);
    }

    #[test]
    fn del_creates_an_empty_map_as_otoroshi_does() {
        let m = Maps::new(1 << 20);
        assert!(m.dump("p").is_none());
        m.del("p", "nothing");
        assert_eq!(m.dump("p").map(|d| d.len()), Some(0));
    }

    #[test]
    fn writes_past_the_cap_are_refused() {
        let m = Maps::new(4);
        m.set("p", "k", b"123").unwrap();
        assert_eq!(m.set("p", "j", b"1"), Err(MapsFull(4)));
        m.del("p", "k");
        m.set("p", "j", b"1").unwrap();
    }
}
