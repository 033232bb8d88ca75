//! The compiled-module cache: a runtime's compiled (native) code for a module,
//! kept on disk so that later loads (a restart, a reload, every NGINX worker)
//! skip compiling. Only for plugins whose operator set
//! `vm_config.allow_precompiled: true`, since the cached code runs as native
//! code, and only for runtimes that compile (Wasmtime).
//!
//! Whoever can write a cache file can run native code in the server, so
//! nothing in the cache is taken on trust:
//! - A folder is used only when it, and every folder above it, can be changed
//!   by no one but this process's (effective) user and root (a folder above
//!   may be world-writable with the sticky bit, as `/tmp`); a missing cache
//!   folder is created 0700 (missing folders above it 0755). A folder that fails is not used, and why is logged
//!   once per process ([`cache_file::trusted_folder`]).
//! - Each folder has its own secret key, [`KEY_FILE`] (32 random bytes, mode
//!   0600, created with `O_EXCL`, owned by this user or root, readable by no
//!   one else). Each file carries an HMAC-SHA256, under that key, of its
//!   name (the module's sha256 and the engine's fingerprint) and payload, so
//!   a file copied from another host or folder, planted, or renamed to
//!   another module's name is refused with a warning and replaced.
//! - Files are opened with `O_NOFOLLOW` and judged by `fstat` on the opened
//!   descriptor (a regular file, owned by this user or root, writable by no
//!   one else), then read from that descriptor; they are written through a
//!   fresh `O_EXCL` temporary file (mode 0600) renamed into place.
//!
//! Each file also holds a checksum of its payload: a truncated or corrupt
//! file is reported as such. Wasmtime itself refuses code made by another
//! version or settings.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use sha2::{Digest, Sha256};

use crate::cache_file::{self, FolderError, OpenError};
use crate::runtime::{Engine, Module, RuntimeError};

/// Overrides the cache folder (the default is [`DEFAULT_DIR`], or
/// `proxy-wasm-host/compiled` in the system temporary folder when that
/// cannot be used).
pub const DIR_ENV: &str = "PROXY_WASM_HOST_COMPILED_CACHE";
pub const DEFAULT_DIR: &str = "/var/cache/proxy-wasm-host/compiled";
/// The name of a cache folder's key file.
pub const KEY_FILE: &str = "mac.key";

/// Files written by versions without a MAC: recognised, never loaded.
const MAGIC_V1: &[u8] = b"proxy-wasm-host compiled module v1\n";
const MAGIC: &[u8] = b"proxy-wasm-host compiled module v2\n";
const KEY_LEN: usize = 32;

/// How a module was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded from this cache file.
    Hit(PathBuf),
    /// Compiled, and stored in this file for next time.
    Stored(PathBuf),
    /// Compiled; not stored (why).
    NotStored(String),
}

/// Why a cache file is not loaded.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{} cannot be trusted: {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error("{} is not a compiled-module cache file", path.display())]
    Foreign { path: PathBuf },
    #[error("{} has no MAC (written by an older version of the host, or not by the host); not loaded", path.display())]
    NoMac { path: PathBuf },
    #[error("{} is truncated", path.display())]
    Truncated { path: PathBuf },
    #[error("{} is corrupt (checksum mismatch)", path.display())]
    Corrupt { path: PathBuf },
    #[error("{} was not written by this host for this module (its MAC does not match the key {}: copied from elsewhere, planted or renamed); not loaded", path.display(), key.display())]
    BadMac { path: PathBuf, key: PathBuf },
}

/// A cache folder fit for use: its path (symbolic links resolved) and key.
struct Folder {
    path: PathBuf,
    key: [u8; KEY_LEN],
}

fn folders() -> Vec<PathBuf> {
    match std::env::var_os(DIR_ENV) {
        Some(dir) if !dir.is_empty() => vec![PathBuf::from(dir)],
        _ => vec![PathBuf::from(DEFAULT_DIR), std::env::temp_dir().join("proxy-wasm-host").join("compiled")],
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`, for a key of at most 64 bytes.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    debug_assert!(key.len() <= 64);
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The MAC of a cache file: its name (which says the module and the engine)
/// and its payload, so an entry cannot stand in for another module's.
fn entry_mac(key: &[u8; KEY_LEN], name: &str, payload: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[MAGIC, &(name.len() as u64).to_le_bytes(), name.as_bytes(), payload])
}

/// Opens (or makes) the key of a trusted folder.
fn folder_key(dir: &Path, euid: u32) -> Result<[u8; KEY_LEN], FolderError> {
    let path = dir.join(KEY_FILE);
    // Twice: another process (an NGINX worker) may create it between our
    // look and our link.
    for _ in 0..2 {
        match cache_file::open_regular(&path) {
            Ok((file, meta)) => {
                let mode = std::os::unix::fs::MetadataExt::mode(&meta) & 0o777;
                if let Some(why) = cache_file::distrust(&meta, euid, false) {
                    return Err(FolderError::Untrusted(format!(
                        "its key file {} cannot be trusted: {why}",
                        path.display()
                    )));
                }
                if mode & 0o077 != 0 {
                    return Err(FolderError::Untrusted(format!(
                        "its key file {} is readable by others (mode {mode:04o}; expected 0600)",
                        path.display()
                    )));
                }
                let data =
                    cache_file::read_all(file, &meta, &path).map_err(|e| FolderError::Unavailable(e.to_string()))?;
                return <[u8; KEY_LEN]>::try_from(data.as_slice()).map_err(|_| {
                    FolderError::Untrusted(format!(
                        "its key file {} holds {} bytes, expected {KEY_LEN} (remove it to make a new key)",
                        path.display(),
                        data.len()
                    ))
                });
            }
            Err(OpenError::NotFound { .. }) => {
                let mut key = [0u8; KEY_LEN];
                getrandom::fill(&mut key)
                    .map_err(|e| FolderError::Unavailable(format!("no random numbers for a key: {e}")))?;
                let temporary = cache_file::write_temporary(dir, KEY_FILE, &key, 0o600).map_err(|e| {
                    FolderError::Unavailable(format!("cannot create its key file {}: {e}", path.display()))
                })?;
                // link(2) never replaces an existing name: of two processes
                // making a key at once, one wins and the other reads it.
                let linked = std::fs::hard_link(&temporary, &path);
                let _ = std::fs::remove_file(&temporary);
                match linked {
                    Ok(()) => return Ok(key),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => {
                        return Err(FolderError::Unavailable(format!(
                            "cannot create its key file {}: {e}",
                            path.display()
                        )))
                    }
                }
            }
            Err(e @ (OpenError::Symlink { .. } | OpenError::NotRegular { .. })) => {
                return Err(FolderError::Untrusted(format!("its key file {e}")))
            }
            Err(e) => return Err(FolderError::Unavailable(e.to_string())),
        }
    }
    Err(FolderError::Unavailable(format!("cannot create or read its key file {}", path.display())))
}

/// A folder checked for use (see the module documentation).
fn open_folder(dir: &Path, euid: u32) -> Result<Folder, FolderError> {
    let path = cache_file::trusted_folder(dir, euid)?;
    let key = folder_key(&path, euid)?;
    Ok(Folder { path, key })
}

/// The payload of a cache file, if it exists, is trusted, whole and ours.
fn read_entry(folder: &Folder, name: &str, euid: u32) -> Result<Option<Vec<u8>>, EntryError> {
    let path = folder.path.join(name);
    let (file, meta) = match cache_file::open_regular(&path) {
        Ok(opened) => opened,
        Err(OpenError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = cache_file::distrust(&meta, euid, false) {
        return Err(EntryError::Untrusted { path, why });
    }
    let data = cache_file::read_all(file, &meta, &path)?;
    let Some(rest) = data.strip_prefix(MAGIC) else {
        return Err(if data.starts_with(MAGIC_V1) { EntryError::NoMac { path } } else { EntryError::Foreign { path } });
    };
    if rest.len() < 64 {
        return Err(EntryError::Truncated { path });
    }
    let (sum, rest) = rest.split_at(32);
    let (mac, payload) = rest.split_at(32);
    if sha256(payload) != sum {
        return Err(EntryError::Corrupt { path });
    }
    if !same(mac, &entry_mac(&folder.key, name, payload)) {
        return Err(EntryError::BadMac { path, key: folder.path.join(KEY_FILE) });
    }
    Ok(Some(payload.to_vec()))
}

fn write_entry(folder: &Folder, name: &str, payload: &[u8]) -> std::io::Result<PathBuf> {
    let mut data = Vec::with_capacity(MAGIC.len() + 64 + payload.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&sha256(payload));
    data.extend_from_slice(&entry_mac(&folder.key, name, payload));
    data.extend_from_slice(payload);
    cache_file::write_atomically(&folder.path, name, &data, 0o600)
}

/// Passes `message` to `warn` the first time this process sees it, so a
/// folder's problem is logged once, not on every load or reload.
fn warn_once(warn: &mut dyn FnMut(&str), message: &str) {
    static REPORTED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);
    if REPORTED.lock().unwrap_or_else(|p| p.into_inner()).insert(message.to_string()) {
        warn(message);
    }
}

/// The module for `wasm`: from the cache when a valid entry exists, else
/// compiled (and stored). Problems with the cache are reported through
/// `warn` and never stop the load; a compile error is returned as such.
///
/// The folders are `$PROXY_WASM_HOST_COMPILED_CACHE`, else [`DEFAULT_DIR`]
/// then `proxy-wasm-host/compiled` in the system temporary folder.
///
/// # Errors
/// When the module does not compile.
pub fn load_or_compile<T>(
    engine: &dyn Engine<T>,
    wasm: &[u8],
    warn: &mut dyn FnMut(&str),
) -> Result<(Arc<dyn Module<T>>, Outcome), RuntimeError> {
    load_or_compile_in(engine, wasm, &folders(), warn)
}

/// [`load_or_compile`] with the cache folders to try, in order.
///
/// # Errors
/// When the module does not compile.
pub fn load_or_compile_in<T>(
    engine: &dyn Engine<T>,
    wasm: &[u8],
    dirs: &[PathBuf],
    warn: &mut dyn FnMut(&str),
) -> Result<(Arc<dyn Module<T>>, Outcome), RuntimeError> {
    let Some(fingerprint) = engine.compiled_code_fingerprint() else {
        return Ok((
            engine.compile(wasm)?,
            Outcome::NotStored(format!("{} does not compile to native code", engine.name())),
        ));
    };
    let name = format!("{}-{fingerprint}.cwasm", hex(&sha256(wasm)));
    let euid = cache_file::euid();
    let mut usable = Vec::new();
    let mut refused = Vec::new();
    for dir in dirs {
        match open_folder(dir, euid) {
            Ok(folder) => usable.push(folder),
            Err(e) => refused.push((dir, e)),
        }
    }
    // An untrusted folder may be an attack: always said (once). A default
    // folder this user cannot use is said only when no other one works.
    for (dir, e) in &refused {
        if matches!(e, FolderError::Untrusted(_)) || usable.is_empty() {
            warn_once(warn, &format!("compiled-module cache: not using the folder {}: {e}", dir.display()));
        }
    }
    if usable.is_empty() {
        let why = refused.iter().map(|(dir, e)| format!("{}: {e}", dir.display())).collect::<Vec<_>>().join("; ");
        return Ok((
            engine.compile(wasm)?,
            Outcome::NotStored(format!("no usable compiled-module cache folder ({why})")),
        ));
    }
    for folder in &usable {
        let path = folder.path.join(&name);
        match read_entry(folder, &name, euid) {
            Ok(Some(payload)) => match engine.deserialize(&payload) {
                Ok(module) => return Ok((module, Outcome::Hit(path))),
                Err(e) => warn(&format!("compiled-module cache: ignoring {}: {e}", path.display())),
            },
            Ok(None) => {}
            Err(e) => warn(&format!("compiled-module cache: ignoring {e}")),
        }
    }
    let module = engine.compile(wasm)?;
    let Some(payload) = module.serialize() else {
        return Ok((module, Outcome::NotStored(format!("{} cannot serialise this module", engine.name()))));
    };
    let mut failures = Vec::new();
    for folder in &usable {
        match write_entry(folder, &name, &payload) {
            Ok(path) => return Ok((module, Outcome::Stored(path))),
            Err(e) => failures.push(format!("{}: {e}", folder.path.join(&name).display())),
        }
    }
    let why = format!("cannot write the compiled-module cache ({})", failures.join("; "));
    warn(&why);
    Ok((module, Outcome::NotStored(why)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn folder(test: &str) -> Folder {
        let dir = std::env::temp_dir().join(format!("pwh-module-cache-unit-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        open_folder(&dir, cache_file::euid()).unwrap()
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], &[b"Hi ", b"There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_file_is_read_back_only_if_whole_and_ours() {
        let f = folder("whole");
        let euid = cache_file::euid();
        let path = write_entry(&f, "m.cwasm", b"native code").unwrap();
        assert_eq!(read_entry(&f, "m.cwasm", euid).unwrap().as_deref(), Some(&b"native code"[..]));
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert!(matches!(read_entry(&f, "m.cwasm", euid), Err(EntryError::Corrupt { .. })));
        std::fs::write(&path, b"something else").unwrap();
        assert!(matches!(read_entry(&f, "m.cwasm", euid), Err(EntryError::Foreign { .. })));
        assert_eq!(read_entry(&f, "absent", euid).unwrap(), None);
        let _ = std::fs::remove_dir_all(&f.path);
    }

    #[test]
    fn an_entry_under_another_name_or_key_is_refused() {
        let f = folder("mac");
        let euid = cache_file::euid();
        let path = write_entry(&f, "a.cwasm", b"module a").unwrap();
        std::fs::copy(&path, f.path.join("b.cwasm")).unwrap();
        assert!(matches!(read_entry(&f, "b.cwasm", euid), Err(EntryError::BadMac { .. })));
        let other = Folder { path: f.path.clone(), key: [7; KEY_LEN] };
        assert!(matches!(read_entry(&other, "a.cwasm", euid), Err(EntryError::BadMac { .. })));
        let _ = std::fs::remove_dir_all(&f.path);
    }

    #[test]
    fn the_key_is_made_once_0600_and_a_readable_one_is_refused() {
        let f = folder("key");
        let key = f.path.join(KEY_FILE);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(folder_key(&f.path, cache_file::euid()).unwrap(), f.key, "the same key on the next open");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = folder_key(&f.path, cache_file::euid()).unwrap_err();
        assert!(matches!(&e, FolderError::Untrusted(why) if why.contains("is readable by others (mode 0644")), "{e}");
        let _ = std::fs::remove_dir_all(&f.path);
    }
}
