//! Extism plugin variables (`var_get`/`var_set`): bytes by name that outlive a call (the kernel is
//! reset before every call, the variables are not), capped as Extism caps them.

use std::collections::BTreeMap;

/// Extism's default cap on the variable store (`manifest.memory.max_var_bytes`).
pub const DEFAULT_MAX_VAR_BYTES: usize = 1024 * 1024;

/// What every entry costs in Extism's accounting besides its bytes: a `String` and a `Vec<u8>`
/// header (on a 64-bit host).
const ENTRY_OVERHEAD: usize = std::mem::size_of::<String>() + std::mem::size_of::<Vec<u8>>();

/// Why `var_set` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    /// The cap is 0: Extism's "Vars are disabled by this host".
    #[error("Vars are disabled by this host")]
    Disabled,
    /// Storing the value would take the store past its cap.
    #[error("Variable store is full")]
    Full,
}

/// The variables of one plugin instance.
#[derive(Debug, Clone)]
pub struct VarStore {
    vars: BTreeMap<String, Vec<u8>>,
    max_bytes: usize,
}

impl Default for VarStore {
    fn default() -> Self {
        VarStore::new(DEFAULT_MAX_VAR_BYTES)
    }
}

impl VarStore {
    #[must_use]
    pub fn new(max_bytes: usize) -> VarStore {
        VarStore { vars: BTreeMap::new(), max_bytes }
    }

    #[must_use]
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.vars.get(key).map(Vec::as_slice)
    }

    pub fn remove(&mut self, key: &str) {
        self.vars.remove(key);
    }

    /// Checks a `var_set` of `value_len` bytes under `key` against the cap, counting as Extism
    /// does: every entry already stored (the one being replaced included) plus the new one, each
    /// with [`ENTRY_OVERHEAD`].
    pub fn check(&self, key: &str, value_len: usize) -> Result<(), VarError> {
        if self.max_bytes == 0 {
            return Err(VarError::Disabled);
        }
        let stored: usize = self.vars.iter().map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD).sum();
        let size = stored.saturating_add(ENTRY_OVERHEAD + key.len()).saturating_add(value_len);
        if size > self.max_bytes {
            return Err(VarError::Full);
        }
        Ok(())
    }

    /// Stores `value` under `key` after [`Self::check`].
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), VarError> {
        self.check(key, value.len())?;
        self.vars.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_variable_is_read_back() {
        let mut v = VarStore::default();
        v.set("a", b"1").unwrap();
        assert_eq!(v.get("a"), Some(&b"1"[..]));
        v.remove("a");
        assert_eq!(v.get("a"), None);
    }

    #[test]
    fn the_store_refuses_past_one_mebibyte_by_default() {
        let mut v = VarStore::default();
        let big = vec![0u8; DEFAULT_MAX_VAR_BYTES - ENTRY_OVERHEAD - 1];
        v.set("k", &big).unwrap();
        assert_eq!(v.set("x", b"y"), Err(VarError::Full));
    }

    #[test]
    fn replacing_a_value_counts_the_old_one_as_extism_does() {
        let mut v = VarStore::new(200);
        v.set("k", &[0; 100]).unwrap();
        // 100 + 1 + 48 stored, plus 1 + 48 + 10 for the new value: 208 > 200.
        assert_eq!(v.set("k", &[0; 10]), Err(VarError::Full));
    }

    #[test]
    fn a_zero_cap_disables_variables() {
        assert_eq!(VarStore::new(0).set("k", b"v"), Err(VarError::Disabled));
    }
}
