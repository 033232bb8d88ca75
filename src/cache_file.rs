//! Files of the on-disk caches (compiled modules, remote code): read without
//! following symbolic links and checked on the opened descriptor, written
//! through a fresh temporary file that is renamed into place.
//!
//! A cache folder may be reachable by other local users (the system
//! temporary folder, a folder an operator made group-writable): a path that is
//! checked and then opened can be swapped in between, and a write through a
//! planted symbolic link would overwrite whatever it points at. So every file
//! is opened once with `O_NOFOLLOW` and judged by `fstat` on that descriptor,
//! and every write goes to a file created with `O_EXCL | O_NOFOLLOW`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a cache file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// There is no such file.
    #[error("{} does not exist", path.display())]
    NotFound { path: PathBuf },
    /// The name is a symbolic link: not followed.
    #[error("{} is a symbolic link (not followed)", path.display())]
    Symlink { path: PathBuf },
    /// Not a regular file (a folder, a FIFO, a device).
    #[error("{} is not a regular file", path.display())]
    NotRegular { path: PathBuf },
    /// Any other failure to open or read it.
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Why a cache folder is not used.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// Someone other than this user or root could have written it (or what
    /// is in it): never used.
    #[error("{0}")]
    Untrusted(String),
    /// It cannot be created, read or written (permissions, a read-only file system).
    #[error("{0}")]
    Unavailable(String),
}

/// The effective user id of this process: the user whose files it may trust
/// besides root's.
#[must_use]
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Opens `path` for reading without following a symbolic link in its last
/// component (`O_NOFOLLOW`) and without blocking on a FIFO (`O_NONBLOCK`),
/// and returns it with the `fstat` of the opened descriptor, which must be a
/// regular file. Judge the file by that metadata and read from the returned
/// `File`, never by its path again.
///
/// # Errors
/// As [`OpenError`] says.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), OpenError> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
        |source| match source.raw_os_error() {
            Some(libc::ELOOP) => OpenError::Symlink { path: path.to_path_buf() },
            Some(libc::ENOENT) => OpenError::NotFound { path: path.to_path_buf() },
            _ => OpenError::Io { path: path.to_path_buf(), source },
        },
    )?;
    let meta = file.metadata().map_err(|source| OpenError::Io { path: path.to_path_buf(), source })?;
    if !meta.file_type().is_file() {
        return Err(OpenError::NotRegular { path: path.to_path_buf() });
    }
    Ok((file, meta))
}

/// Reads all of an opened file.
///
/// # Errors
/// A read error, naming `path`.
pub fn read_all(mut file: File, meta: &Metadata, path: &Path) -> Result<Vec<u8>, OpenError> {
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut data).map_err(|source| OpenError::Io { path: path.to_path_buf(), source })?;
    Ok(data)
}

/// Why a file or folder is not trusted: it is not owned by this process's
/// user or root, or others may change it. `None` when it is trusted.
/// `sticky_ok` accepts a folder writable by others when its sticky bit is
/// set (as `/tmp`): others cannot rename or remove what they do not own there.
#[must_use]
pub fn distrust(meta: &Metadata, euid: u32, sticky_ok: bool) -> Option<String> {
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    if uid != euid && uid != 0 {
        return Some(format!("it is owned by user {uid}, not by this process's user ({euid}) or root"));
    }
    if mode & 0o022 != 0 && !(sticky_ok && mode & 0o1000 != 0) {
        return Some(format!(
            "it is writable by {} (mode {mode:04o})",
            if mode & 0o002 != 0 { "others" } else { "its group" }
        ));
    }
    None
}

/// Makes sure `dir` is a folder that only this process's user or root can
/// change, and that so is every folder above it (a folder above may be
/// writable by others only with its sticky bit set, as `/tmp`), and every
/// symbolic link on the way is owned by this user or root. Missing folders
/// are created, each after its parent was checked: the folder itself with
/// mode 0700, folders above it 0755. Returns the
/// folder's path with symbolic links resolved, under which nobody else can
/// rename, replace or add anything.
///
/// # Errors
/// Why the folder is not trusted, or cannot be created, naming the folder.
pub fn trusted_folder(dir: &Path, euid: u32) -> Result<PathBuf, FolderError> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| FolderError::Unavailable(format!("cannot resolve {}: {e}", dir.display())))?
            .join(dir)
    };
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, &absolute);
    let mut resolved = PathBuf::from("/");
    let root =
        fs::symlink_metadata(&resolved).map_err(|e| FolderError::Unavailable(format!("cannot inspect /: {e}")))?;
    if let Some(why) = distrust(&root, euid, true) {
        return Err(FolderError::Untrusted(format!("/ cannot be trusted: {why}")));
    }
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&name);
        let meta = match fs::symlink_metadata(&next) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The folder itself is private; folders above it only need
                // to be closed to writers (another cache, e.g. remote code in
                // /var/cache/proxy-wasm-host, may share them with NGINX workers).
                let mode = if pending.is_empty() { 0o700 } else { 0o755 };
                match fs::DirBuilder::new().mode(mode).create(&next) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(FolderError::Unavailable(format!("cannot create {}: {e}", next.display()))),
                }
                fs::symlink_metadata(&next)
                    .map_err(|e| FolderError::Unavailable(format!("cannot inspect {}: {e}", next.display())))?
            }
            Err(e) => return Err(FolderError::Unavailable(format!("cannot inspect {}: {e}", next.display()))),
        };
        if meta.file_type().is_symlink() {
            if meta.uid() != euid && meta.uid() != 0 {
                return Err(FolderError::Untrusted(format!(
                    "{} is a symbolic link owned by user {}, not by this process's user ({euid}) or root",
                    next.display(),
                    meta.uid()
                )));
            }
            links += 1;
            if links > 40 {
                return Err(FolderError::Unavailable(format!("{}: too many levels of symbolic links", dir.display())));
            }
            let target = fs::read_link(&next).map_err(|e| {
                FolderError::Unavailable(format!("cannot read the symbolic link {}: {e}", next.display()))
            })?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            let mut rest = VecDeque::new();
            push_components(&mut rest, &target);
            rest.extend(pending.drain(..));
            pending = rest;
            continue;
        }
        if !meta.is_dir() {
            return Err(FolderError::Untrusted(format!("{} is not a folder", next.display())));
        }
        let last = pending.is_empty();
        if let Some(why) = distrust(&meta, euid, !last) {
            return Err(FolderError::Untrusted(format!("{} cannot be trusted: {why}", next.display())));
        }
        resolved = next;
    }
    Ok(resolved)
}

fn push_components(queue: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(n) => queue.push_back(n.to_os_string()),
            Component::ParentDir => queue.push_back("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// Creates a new file in `dir` with `O_CREAT | O_EXCL | O_NOFOLLOW` and
/// `mode`, under a name nobody can have planted (random), writes `bytes`
/// and syncs it. Returns its path; the caller renames or links it into place
/// and removes it on failure.
///
/// # Errors
/// When no such file can be created or written.
pub fn write_temporary(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    // A name that exists (a stale file, something planted) is never opened:
    // O_EXCL fails and another random name is tried.
    for _ in 0..8 {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(format!("no random numbers: {e}")))?;
        let temporary = dir.join(format!(
            ".{name}.{}.{}.{:016x}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            u64::from_ne_bytes(random)
        ));
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&temporary);
            return Err(e);
        }
        return Ok(temporary);
    }
    Err(last.unwrap_or_else(|| io::Error::other("cannot create a temporary file")))
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in `dir` (see
/// [`write_temporary`]) renamed over the name, so a reader never sees half
/// a file and a symbolic link planted at the name is replaced, not followed.
///
/// # Errors
/// When the file cannot be written or renamed.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    let path = dir.join(name);
    let temporary = write_temporary(dir, name, bytes, mode)?;
    fs::rename(&temporary, &path).inspect_err(|_| {
        let _ = fs::remove_file(&temporary);
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pwh-cache-file-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn a_write_replaces_a_symlink_at_the_name_and_leaves_its_target_alone() {
        let d = scratch("symlink-name");
        fs::write(d.join("victim"), b"precious").unwrap();
        std::os::unix::fs::symlink(d.join("victim"), d.join("entry")).unwrap();
        let path = write_atomically(&d, "entry", b"new", 0o600).unwrap();
        assert_eq!(fs::read(d.join("victim")).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_symlink_is_not_opened() {
        let d = scratch("symlink-open");
        fs::write(d.join("real"), b"x").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        assert!(matches!(open_regular(&d.join("link")), Err(OpenError::Symlink { .. })));
        assert!(matches!(open_regular(&d.join("absent")), Err(OpenError::NotFound { .. })));
        assert!(matches!(open_regular(&d), Err(OpenError::NotRegular { .. })));
        let (file, meta) = open_regular(&d.join("real")).unwrap();
        assert_eq!(read_all(file, &meta, &d.join("real")).unwrap(), b"x");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_folders_are_created_0700_and_a_world_writable_one_is_refused() {
        let d = scratch("trusted");
        let made = trusted_folder(&d.join("a/b"), euid()).unwrap();
        assert_eq!(made, d.join("a/b"));
        assert_eq!(fs::metadata(d.join("a/b")).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(fs::metadata(d.join("a")).unwrap().mode() & 0o022, 0, "not writable by others");
        fs::set_permissions(d.join("a/b"), fs::Permissions::from_mode(0o1777)).unwrap();
        let why = trusted_folder(&d.join("a/b"), euid()).unwrap_err().to_string();
        assert!(why.contains("a/b cannot be trusted: it is writable by others (mode 1777)"), "{why}");
        // Above the folder, a sticky world-writable folder (as /tmp) is fine.
        fs::set_permissions(d.join("a/b"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(d.join("a"), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(trusted_folder(&d.join("a/b"), euid()).is_ok());
        fs::set_permissions(d.join("a"), fs::Permissions::from_mode(0o777)).unwrap();
        let why = trusted_folder(&d.join("a/b"), euid()).unwrap_err().to_string();
        assert!(why.contains("/a cannot be trusted: it is writable by others (mode 0777)"), "{why}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn symlinks_to_a_folder_are_resolved_and_checked() {
        let d = scratch("links");
        fs::create_dir(d.join("real")).unwrap();
        std::os::unix::fs::symlink("real", d.join("via")).unwrap();
        assert_eq!(trusted_folder(&d.join("via"), euid()).unwrap(), d.join("real"));
        fs::write(d.join("file"), b"").unwrap();
        assert!(trusted_folder(&d.join("file"), euid()).unwrap_err().to_string().contains("is not a folder"));
        let _ = fs::remove_dir_all(&d);
    }
}
