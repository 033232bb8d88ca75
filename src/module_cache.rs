//! The compiled-module cache: a runtime's compiled (native) code for a module,
//! kept on disk so that later loads (a restart, a reload, every NGINX worker)
//! skip compiling. Only for plugins whose operator set
//! `vm_config.allow_precompiled: true`, since the cached code runs as native
//! code, and only for runtimes that compile (Wasmtime).
//!
//! Files are named by the module's sha256 and the engine's fingerprint
//! (runtime version and settings). Each holds a checksum of its payload: a
//! file that is truncated, corrupt or made by another engine is ignored with a
//! warning (and replaced), never loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::runtime::{Engine, Module, RuntimeError};

/// Overrides the cache folder (the default is [`DEFAULT_DIR`], or
/// `proxy-wasm-host/compiled` in the system temporary folder when that
/// cannot be written).
pub const DIR_ENV: &str = "PROXY_WASM_HOST_COMPILED_CACHE";
pub const DEFAULT_DIR: &str = "/var/cache/proxy-wasm-host/compiled";

const MAGIC: &[u8] = b"proxy-wasm-host compiled module v1\n";

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

/// The payload of a cache file, if the file is whole and ours.
fn read_checked(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let rest = data.strip_prefix(MAGIC).ok_or_else(|| format!("{} is not a compiled-module cache file", path.display()))?;
    if rest.len() < 32 {
        return Err(format!("{} is truncated", path.display()));
    }
    let (sum, payload) = rest.split_at(32);
    if sha256(payload) != sum {
        return Err(format!("{} is corrupt (checksum mismatch)", path.display()));
    }
    Ok(Some(payload.to_vec()))
}

fn write_atomically(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("module"), std::process::id()));
    let mut data = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&sha256(payload));
    data.extend_from_slice(payload);
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The module for `wasm`: from the cache when a valid entry exists, else
/// compiled (and stored). Problems with the cache are reported through
/// `warn` and never stop the load; a compile error is returned as such.
pub fn load_or_compile(engine: &dyn Engine, wasm: &[u8], warn: &mut dyn FnMut(&str)) -> Result<(Arc<dyn Module>, Outcome), RuntimeError> {
    let Some(fingerprint) = engine.compiled_code_fingerprint() else {
        return Ok((engine.compile(wasm)?, Outcome::NotStored(format!("{} does not compile to native code", engine.name()))));
    };
    let name = format!("{}-{fingerprint}.cwasm", hex(&sha256(wasm)));
    let folders = folders();
    for dir in &folders {
        let path = dir.join(&name);
        match read_checked(&path) {
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
    for dir in &folders {
        let path = dir.join(&name);
        match write_atomically(&path, &payload) {
            Ok(()) => return Ok((module, Outcome::Stored(path))),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    let why = format!("cannot write the compiled-module cache ({})", failures.join("; "));
    warn(&why);
    Ok((module, Outcome::NotStored(why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_back_only_if_whole_and_ours() {
        let dir = std::env::temp_dir().join(format!("pwh-module-cache-unit-{}", std::process::id()));
        let path = dir.join("m.cwasm");
        write_atomically(&path, b"native code").unwrap();
        assert_eq!(read_checked(&path).unwrap().as_deref(), Some(&b"native code"[..]));
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert!(read_checked(&path).unwrap_err().contains("checksum mismatch"));
        std::fs::write(&path, b"something else").unwrap();
        assert!(read_checked(&path).unwrap_err().contains("not a compiled-module cache file"));
        assert_eq!(read_checked(&dir.join("absent")).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
