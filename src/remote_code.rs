//! Remote plugin code (`vm_config.code.remote`): downloaded over plain HTTP with
//! [`crate::http_client`], pinned by its SHA-256, and cached on disk in a file
//! named after that hash, so that it is downloaded once, not on every start,
//! reload or NGINX worker.
//!
//! Nothing read from the network or the cache is trusted: every load hashes
//! the bytes it is about to use. A cache file whose hash is wrong (truncated,
//! corrupted, planted) or that is a symbolic link (not followed) is ignored
//! with a warning and downloaded again; a download whose hash is wrong
//! refuses the plugin. Files are written through a fresh `O_EXCL` temporary
//! file renamed into place ([`cache_file`]), never through a planted link.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache_file::{self, OpenError};
use crate::config::RemoteCode;
use crate::host::HttpCallRequest;
use crate::http_client;

/// Why remote code could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The download failed: connection, timeout, HTTP status, malformed response.
    #[error("cannot download {uri}: {message}")]
    Download {
        /// The URL as configured.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// The downloaded bytes do not have the configured SHA-256.
    #[error("the code downloaded from {uri} has sha256 {actual}; expected {expected}")]
    Mismatch {
        /// The URL as configured.
        uri: String,
        /// The configured hash, lowercase hex.
        expected: String,
        /// The hash of what was downloaded, lowercase hex.
        actual: String,
    },
}

/// Lowercase hex SHA-256 of `bytes`.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the module was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A verified cache file.
    Cache(PathBuf),
    /// Downloaded now (and cached in this file, when one of the folders was writable).
    Downloaded(Option<PathBuf>),
}

/// The folders tried, in order: `cache_dir` when configured, otherwise
/// [`RemoteCode::DEFAULT_CACHE_DIR`] then `proxy-wasm-host` in the system temporary folder.
#[must_use]
pub fn cache_dirs(remote: &RemoteCode) -> Vec<PathBuf> {
    match &remote.cache_dir {
        Some(dir) => vec![dir.clone()],
        None => vec![PathBuf::from(RemoteCode::DEFAULT_CACHE_DIR), std::env::temp_dir().join("proxy-wasm-host")],
    }
}

/// The cache file name for `remote`: `<sha256 hex>.wasm`.
#[must_use]
pub fn cache_file_name(remote: &RemoteCode) -> String {
    format!("{}.wasm", remote.sha256_hex())
}

/// The module of `remote`: from a cache file whose hash matches, or else
/// downloaded, checked and cached. Problems that do not prevent loading (a
/// corrupt cache file, a cache folder that cannot be written) are passed to
/// `warn`.
///
/// # Errors
/// When the download fails or its hash is not the configured one.
pub fn fetch(remote: &RemoteCode, warn: &mut dyn FnMut(String)) -> Result<(Vec<u8>, Origin), FetchError> {
    let expected = remote.sha256_hex();
    let dirs = cache_dirs(remote);
    let name = cache_file_name(remote);
    for dir in &dirs {
        let path = dir.join(&name);
        match read_cached(&path) {
            Ok(bytes) => {
                let actual = sha256_hex(&bytes);
                if actual == expected {
                    return Ok((bytes, Origin::Cache(path)));
                }
                warn(format!(
                    "ignoring cache file {} for {}: its sha256 is {actual}, expected {expected}; downloading it again",
                    path.display(),
                    remote.uri
                ));
                // A newer download replaces it below; removing it now keeps a
                // failed download from leaving the bad copy in place.
                let _ = fs::remove_file(&path);
            }
            Err(OpenError::NotFound { .. }) => {}
            Err(e @ OpenError::Symlink { .. }) => {
                warn(format!("ignoring cache file {} for {}: {e}; downloading it again", path.display(), remote.uri));
                // Removes the link itself, never what it points at.
                let _ = fs::remove_file(&path);
            }
            Err(e) => warn(format!("ignoring cache file {} for {}: {e}", path.display(), remote.uri)),
        }
    }
    let bytes = download(remote)?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(FetchError::Mismatch { uri: remote.uri.clone(), expected, actual });
    }
    let mut failures = Vec::new();
    for dir in &dirs {
        match store(dir, &name, &bytes) {
            Ok(path) => return Ok((bytes, Origin::Downloaded(Some(path)))),
            Err(e) => failures.push(format!("{}: {e}", dir.display())),
        }
    }
    warn(format!(
        "cannot cache the code downloaded from {} ({}); it will be downloaded again on the next load",
        remote.uri,
        failures.join("; ")
    ));
    Ok((bytes, Origin::Downloaded(None)))
}

/// The largest download answer accepted (headers and the module).
const MAX_MODULE_RESPONSE_BYTES: u64 = 64 << 20;

/// One GET, no redirects: the body of a 200 response.
fn download(remote: &RemoteCode) -> Result<Vec<u8>, FetchError> {
    let fail = |message: String| FetchError::Download { uri: remote.uri.clone(), message };
    let request = HttpCallRequest {
        upstream: remote.upstream.clone(),
        headers: vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), remote.path.clone().into_bytes()),
            (b":authority".to_vec(), remote.authority.clone().into_bytes()),
            (b"accept".to_vec(), b"application/wasm, */*".to_vec()),
            (b"user-agent".to_vec(), concat!("proxy-wasm-host/", env!("CARGO_PKG_VERSION")).as_bytes().to_vec()),
        ],
        body: Vec::new(),
        trailers: Vec::new(),
        timeout: Some(remote.timeout),
        max_response_size: MAX_MODULE_RESPONSE_BYTES,
    };
    let response = http_client::call(&request);
    if let Some((code, message)) = response.failure {
        let what = match code {
            http_client::FAILURE_TIMEOUT => {
                format!("no complete answer within {:?}", remote.timeout)
            }
            _ => message,
        };
        return Err(fail(what));
    }
    let status = response
        .headers
        .iter()
        .find(|(k, _)| k == b":status")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    if status != "200" {
        return Err(fail(format!(
            "the server answered with status {status}, expected 200 (redirects are not followed)"
        )));
    }
    Ok(response.body)
}

/// The bytes of a cache file, opened without following a symbolic link and
/// read only if it is a regular file (a FIFO or a device planted under the
/// name would block or never end).
fn read_cached(path: &Path) -> Result<Vec<u8>, OpenError> {
    let (file, meta) = cache_file::open_regular(path)?;
    cache_file::read_all(file, &meta, path)
}

/// Writes `bytes` to `dir/name` atomically (a fresh temporary file renamed
/// into place), so that a concurrent reader never sees half a file and a
/// symbolic link planted under either name is never written through. The
/// file is readable by all (0644): the code is checked against its sha256 on
/// every load, and NGINX workers running as another user than the process
/// that downloaded it (the configuration check) read it too.
fn store(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    cache_file::write_atomically(dir, name, bytes, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_inputs() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
