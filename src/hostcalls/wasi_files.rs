//! Host folders a plugin may open through WASI (an Otoroshi entity's `allowedPaths`): the
//! preopened folders and the files opened under them, per instance.
//!
//! Every path a plugin opens is taken relative to one preopened folder and must stay inside
//! it: absolute paths, `..` that climbs out and symbolic links that lead out are refused with
//! WASI's `notcapable`. A folder is read-only unless its entry says `rw:` (then files under
//! it may be created, truncated and written). Folders cannot be listed (`fd_readdir`) or
//! opened as handles; files can be read, written (in a writable folder), sought and stat'ed.

use std::collections::BTreeMap;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// WASI errno values used here (preview 1).
pub mod errno {
    pub const ACCES: i32 = 2;
    pub const BADF: i32 = 8;
    pub const EXIST: i32 = 20;
    pub const INVAL: i32 = 28;
    pub const IO: i32 = 29;
    pub const ISDIR: i32 = 31;
    pub const MFILE: i32 = 33;
    pub const NOENT: i32 = 44;
    pub const NOTDIR: i32 = 54;
    pub const ROFS: i32 = 69;
    pub const NOTCAPABLE: i32 = 76;
}

/// The most files one instance keeps open at once.
pub const MAX_OPEN_FILES: usize = 64;

// `path_open` flags (WASI preview 1).
const O_CREAT: u32 = 1;
const O_DIRECTORY: u32 = 2;
const O_EXCL: u32 = 4;
const O_TRUNC: u32 = 8;
const FDFLAG_APPEND: u32 = 1;
/// `rights::fd_write`.
const RIGHT_FD_WRITE: u64 = 1 << 6;

/// One host folder offered to the plugin under a guest name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The name the plugin sees (`/data`): wasi-libc matches absolute paths against it.
    pub guest: String,
    /// The host folder, canonical (symbolic links resolved).
    pub host: PathBuf,
    pub writable: bool,
}

impl Preopen {
    /// Reads an `allowedPaths` entry: host folder (relative ones against `base`; `ro:` / `rw:`
    /// prefix, read-only when none) to guest name.
    ///
    /// # Errors
    /// When the host folder does not exist or is not a folder.
    pub fn new(host: &str, guest: &str, base: &Path) -> Result<Preopen, String> {
        let (writable, path) = match host.split_once(':') {
            Some(("rw", p)) => (true, p),
            Some(("ro", p)) => (false, p),
            _ => (false, host),
        };
        let path = base.join(path);
        let host_dir = path.canonicalize().map_err(|e| format!("host folder {}: {e}", path.display()))?;
        if !host_dir.is_dir() {
            return Err(format!("host folder {}: not a folder", path.display()));
        }
        let guest = if guest.is_empty() { "/".to_owned() } else { guest.to_owned() };
        Ok(Preopen { guest, host: host_dir, writable })
    }
}

/// What a descriptor of [`Files`] is.
pub enum Handle<'a> {
    Folder(&'a Preopen),
    File(&'a mut OpenFile),
}

pub struct OpenFile {
    file: File,
    writable: bool,
    append: bool,
}

/// The preopened folders (descriptors 3, 4, …) and the open files (after them) of one instance.
pub struct Files {
    preopens: Vec<Preopen>,
    open: BTreeMap<u32, OpenFile>,
}

impl Files {
    #[must_use]
    pub fn new(preopens: Vec<Preopen>) -> Files {
        Files { preopens, open: BTreeMap::new() }
    }

    fn first_file_fd(&self) -> u32 {
        3 + self.preopens.len() as u32
    }

    /// The preopened folder with descriptor `fd`.
    #[must_use]
    pub fn preopen(&self, fd: u32) -> Option<&Preopen> {
        fd.checked_sub(3).and_then(|i| self.preopens.get(i as usize))
    }

    /// What `fd` is, if anything.
    pub fn handle(&mut self, fd: u32) -> Option<Handle<'_>> {
        if let Some(i) = fd.checked_sub(3).filter(|i| (*i as usize) < self.preopens.len()) {
            return Some(Handle::Folder(&self.preopens[i as usize]));
        }
        self.open.get_mut(&fd).map(Handle::File)
    }

    /// The open file `fd` (`BADF` otherwise; `ISDIR` for a folder).
    pub fn file(&mut self, fd: u32) -> Result<&mut OpenFile, i32> {
        match self.handle(fd) {
            Some(Handle::File(f)) => Ok(f),
            Some(Handle::Folder(_)) => Err(errno::ISDIR),
            None => Err(errno::BADF),
        }
    }

    /// Closes an open file; `false` when `fd` is not one.
    pub fn close(&mut self, fd: u32) -> bool {
        self.open.remove(&fd).is_some()
    }

    /// The host path `path` names under the folder `dirfd`, inside it (symbolic links
    /// resolved). For a file that does not exist yet, its folder is resolved instead.
    fn resolve(&self, dirfd: u32, path: &[u8]) -> Result<(&Preopen, PathBuf), i32> {
        let Some(preopen) = self.preopen(dirfd) else {
            return Err(if self.open.contains_key(&dirfd) { errno::NOTDIR } else { errno::BADF });
        };
        let path = std::str::from_utf8(path).map_err(|_| errno::INVAL)?;
        if path.contains('\0') {
            return Err(errno::INVAL);
        }
        let mut inside = PathBuf::new();
        for component in Path::new(path).components() {
            match component {
                Component::Normal(c) => inside.push(c),
                Component::CurDir => {}
                Component::ParentDir => {
                    if !inside.pop() {
                        return Err(errno::NOTCAPABLE);
                    }
                }
                Component::RootDir | Component::Prefix(_) => return Err(errno::NOTCAPABLE),
            }
        }
        let joined = preopen.host.join(&inside);
        let real = match joined.canonicalize() {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A file to create: its folder must exist and be inside.
                let (Some(parent), Some(name)) = (joined.parent(), joined.file_name()) else {
                    return Err(errno::NOENT);
                };
                parent.canonicalize().map_err(|e| io_errno(&e))?.join(name)
            }
            Err(e) => return Err(io_errno(&e)),
        };
        if !real.starts_with(&preopen.host) {
            return Err(errno::NOTCAPABLE);
        }
        Ok((preopen, real))
    }

    /// `path_open` under the folder `dirfd`: the new descriptor.
    pub fn open(&mut self, dirfd: u32, path: &[u8], oflags: u32, rights: u64, fdflags: u32) -> Result<u32, i32> {
        let (preopen, real) = self.resolve(dirfd, path)?;
        let append = fdflags & FDFLAG_APPEND != 0;
        let writes = rights & RIGHT_FD_WRITE != 0 || oflags & (O_CREAT | O_TRUNC | O_EXCL) != 0 || append;
        if writes && !preopen.writable {
            return Err(errno::ROFS);
        }
        if real.is_dir() {
            // Folders cannot be used as handles here (no listing, no nested opens).
            return Err(if oflags & O_DIRECTORY != 0 { errno::NOTCAPABLE } else { errno::ISDIR });
        }
        if oflags & O_DIRECTORY != 0 {
            return Err(errno::NOTDIR);
        }
        if self.open.len() >= MAX_OPEN_FILES {
            return Err(errno::MFILE);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(writes && !append)
            .append(append)
            .create(oflags & O_CREAT != 0 && oflags & O_EXCL == 0)
            .create_new(oflags & O_CREAT != 0 && oflags & O_EXCL != 0)
            .truncate(oflags & O_TRUNC != 0)
            .open(&real)
            .map_err(|e| io_errno(&e))?;
        let mut fd = self.first_file_fd();
        while self.open.contains_key(&fd) {
            fd += 1;
        }
        self.open.insert(fd, OpenFile { file, writable: writes, append });
        Ok(fd)
    }

    /// `path_filestat_get`: the metadata of what `path` names under `dirfd`.
    pub fn stat_path(&self, dirfd: u32, path: &[u8]) -> Result<Metadata, i32> {
        let (_, real) = self.resolve(dirfd, path)?;
        std::fs::metadata(real).map_err(|e| io_errno(&e))
    }
}

impl OpenFile {
    pub fn read(&mut self, buf: &mut [u8], at: Option<u64>) -> Result<usize, i32> {
        match at {
            Some(offset) => self.file.read_at(buf, offset),
            None => self.file.read(buf),
        }
        .map_err(|e| io_errno(&e))
    }

    pub fn write(&mut self, bytes: &[u8], at: Option<u64>) -> Result<usize, i32> {
        if !self.writable {
            return Err(errno::BADF);
        }
        if at.is_some() && self.append {
            return Err(errno::INVAL);
        }
        match at {
            Some(offset) => self.file.write_at(bytes, offset),
            None => self.file.write(bytes),
        }
        .map_err(|e| io_errno(&e))
    }

    /// `fd_seek`: whence 0 = start, 1 = current, 2 = end.
    pub fn seek(&mut self, offset: i64, whence: u8) -> Result<u64, i32> {
        let to = match whence {
            0 => SeekFrom::Start(u64::try_from(offset).map_err(|_| errno::INVAL)?),
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            _ => return Err(errno::INVAL),
        };
        self.file.seek(to).map_err(|e| io_errno(&e))
    }

    pub fn metadata(&self) -> Result<Metadata, i32> {
        self.file.metadata().map_err(|e| io_errno(&e))
    }

    #[must_use]
    pub fn writable(&self) -> bool {
        self.writable
    }
}

/// WASI `filestat` (64 bytes): device, inode, file type, links, size, access / modification /
/// status change times in nanoseconds.
#[must_use]
pub fn filestat(meta: &Metadata) -> [u8; 64] {
    let mut out = [0u8; 64];
    let ns = |s: i64, n: i64| (s.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(n.max(0) as u64);
    out[0..8].copy_from_slice(&meta.dev().to_le_bytes());
    out[8..16].copy_from_slice(&meta.ino().to_le_bytes());
    out[16] = filetype(meta);
    out[24..32].copy_from_slice(&meta.nlink().to_le_bytes());
    out[32..40].copy_from_slice(&meta.size().to_le_bytes());
    out[40..48].copy_from_slice(&ns(meta.atime(), meta.atime_nsec()).to_le_bytes());
    out[48..56].copy_from_slice(&ns(meta.mtime(), meta.mtime_nsec()).to_le_bytes());
    out[56..64].copy_from_slice(&ns(meta.ctime(), meta.ctime_nsec()).to_le_bytes());
    out
}

/// WASI file types: 3 = directory, 4 = regular file, 7 = symbolic link, 0 = unknown.
#[must_use]
pub fn filetype(meta: &Metadata) -> u8 {
    let t = meta.file_type();
    if t.is_dir() {
        3
    } else if t.is_file() {
        4
    } else if t.is_symlink() {
        7
    } else {
        0
    }
}

fn io_errno(e: &std::io::Error) -> i32 {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => errno::NOENT,
        PermissionDenied => errno::ACCES,
        AlreadyExists => errno::EXIST,
        InvalidInput => errno::INVAL,
        _ => match e.raw_os_error() {
            Some(libc::EISDIR) => errno::ISDIR,
            Some(libc::ENOTDIR) => errno::NOTDIR,
            Some(libc::EROFS) => errno::ROFS,
            _ => errno::IO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Dir, Files, Files) {
        let root = std::env::temp_dir().join(format!("pw-wasi-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::write(root.join("data/a.txt"), b"hello").unwrap();
        std::fs::write(root.join("data/sub/b.txt"), b"b").unwrap();
        std::fs::write(root.join("secret.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(root.join("secret.txt"), root.join("data/out")).unwrap();
        let ro = Files::new(vec![Preopen::new("data", "/data", &root).unwrap()]);
        let rw = Files::new(vec![Preopen::new("rw:data", "/data", &root).unwrap()]);
        (Dir(root), ro, rw)
    }

    #[test]
    fn a_file_inside_is_read() {
        let (_d, mut files, _) = setup("read");
        let fd = files.open(3, b"sub/../a.txt", 0, 1 << 1, 0).unwrap();
        assert_eq!(fd, 4);
        let mut buf = [0u8; 16];
        let n = files.file(fd).unwrap().read(&mut buf, None).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(files.file(fd).unwrap().read(&mut buf, Some(1)).unwrap(), 4);
        assert!(files.close(fd));
        assert_eq!(files.file(fd).err(), Some(errno::BADF));
    }

    #[test]
    fn paths_that_leave_the_folder_are_not_capable() {
        let (_d, mut files, _) = setup("escape");
        assert_eq!(files.open(3, b"../secret.txt", 0, 0, 0), Err(errno::NOTCAPABLE));
        assert_eq!(files.open(3, b"/etc/passwd", 0, 0, 0), Err(errno::NOTCAPABLE));
        assert_eq!(files.open(3, b"out", 0, 0, 0), Err(errno::NOTCAPABLE), "a symbolic link leading out");
        assert_eq!(files.open(3, b"missing", 0, 0, 0), Err(errno::NOENT));
        assert_eq!(files.open(9, b"a.txt", 0, 0, 0), Err(errno::BADF));
    }

    #[test]
    fn a_read_only_folder_refuses_writes_and_a_writable_one_takes_them() {
        let (d, mut ro, mut rw) = setup("write");
        assert_eq!(ro.open(3, b"new.txt", O_CREAT, RIGHT_FD_WRITE, 0), Err(errno::ROFS));
        assert_eq!(ro.open(3, b"a.txt", 0, RIGHT_FD_WRITE, 0), Err(errno::ROFS));
        let fd = rw.open(3, b"new.txt", O_CREAT | O_TRUNC, RIGHT_FD_WRITE, 0).unwrap();
        assert_eq!(rw.file(fd).unwrap().write(b"written", None), Ok(7));
        assert_eq!(std::fs::read(d.0.join("data/new.txt")).unwrap(), b"written");
        assert_eq!(rw.open(3, b"new.txt", O_CREAT | O_EXCL, RIGHT_FD_WRITE, 0), Err(errno::EXIST));
    }

    #[test]
    fn folders_are_not_handles_and_open_files_are_capped() {
        let (_d, mut files, _) = setup("cap");
        assert_eq!(files.open(3, b"sub", 0, 0, 0), Err(errno::ISDIR));
        assert_eq!(files.open(3, b"a.txt", O_DIRECTORY, 0, 0), Err(errno::NOTDIR));
        for _ in 0..MAX_OPEN_FILES {
            files.open(3, b"a.txt", 0, 0, 0).unwrap();
        }
        assert_eq!(files.open(3, b"a.txt", 0, 0, 0), Err(errno::MFILE));
        assert_eq!(filetype(&files.stat_path(3, b"sub").unwrap()), 3);
        assert_eq!(filestat(&files.stat_path(3, b"a.txt").unwrap())[32], 5);
    }
}
