//! WASI preview 1, as much as a proxy filter needs, under both module names
//! (`wasi_snapshot_preview1` and the older `wasi_unstable`).
//!
//! Output to stdout/stderr becomes log lines; clocks and randomness are real;
//! the environment holds only what the plugin configuration lists; there are no
//! arguments or sockets, and no files unless the host state offers folders
//! ([`WasiState::wasi_files`]: an Otoroshi entity's `allowedPaths`, see
//! [`super::wasi_files`]; Proxy-Wasm plugins get none, as under Envoy). Each function answers what proxy-wasm-cpp-host
//! answers (`src/exports.cc`, `wasi_unstable_*`), except where
//! docs/compatibility.md says otherwise. Any other WASI function answers an
//! errno (NOTSUP) instead of trapping, whatever its signature.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::memory;
use super::state::HostState;
use super::wasi_files::{self, Files};
use crate::abi::LogLevel;
use crate::runtime::{Caller, FuncType, HostFn, Trap, Val, ValType};

pub const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

// errno values of WASI preview 1.
pub const ESUCCESS: i32 = 0;
pub const EBADF: i32 = 8;
pub const EFAULT: i32 = 21;
pub const EINVAL: i32 = 28;
pub const ENOENT: i32 = 44;
pub const ENOSYS: i32 = 52;
pub const ENOTSUP: i32 = 58;
/// What cpp-host's `fd_readdir` answers (its comment calls it ENOTDIR, which
/// is 54 in WASI; 20 is what plugins see there, so 20 is what we answer).
pub const READDIR_ERRNO: i32 = 20;
/// WASI `notcapable`: a capability the plugin was not granted.
pub const ENOTCAPABLE: i32 = 76;
pub const ESPIPE: i32 = 70;

/// The most a plugin may ask of `random_get` in one call, as the reference host allows.
pub const MAX_RANDOM_BYTES: u32 = 64 * 1024;

type R = Result<Option<Val>, Trap>;

/// What the WASI functions need of a host state: the Proxy-Wasm host's ([`HostState`]) and the
/// Extism host's (`crate::extism::state::ExtismState`, for entities with `wasi: true`).
pub trait WasiState: 'static {
    /// A line the plugin wrote to stdout (info) or stderr (error).
    fn wasi_log(&mut self, level: LogLevel, line: &str);
    /// The environment the plugin sees.
    fn wasi_environment(&self) -> &[(String, String)];
    /// `proc_exit(code)` was called (logged; the call then ends as a trap).
    fn wasi_exit(&mut self, code: i32);
    /// The folders the plugin may open files in, and its open files; `None`: no file system
    /// (the answers are then cpp-host's).
    fn wasi_files(&mut self) -> Option<&mut Files> {
        None
    }
}

impl WasiState for HostState {
    fn wasi_log(&mut self, level: LogLevel, line: &str) {
        self.plugin_log(level, line);
    }

    fn wasi_environment(&self) -> &[(String, String)] {
        &self.env.environment
    }

    fn wasi_exit(&mut self, code: i32) {
        self.exited = Some(code);
        let plugin = self.log_ref();
        self.env.server.log(&plugin, LogLevel::Error, &format!("the plugin called proc_exit({code})"));
    }
}

fn errno(e: i32) -> R {
    Ok(Some(Val::I32(e)))
}

fn u(a: &[Val], i: usize) -> u32 {
    a.get(i).map_or(0, |v| v.as_i32() as u32)
}

fn mem_result(r: Result<(), crate::abi::Status>) -> R {
    errno(if r.is_ok() { ESUCCESS } else { EFAULT })
}

/// The most iovecs one `fd_write` looks at (Linux's `IOV_MAX`).
pub const MAX_IOVECS: u32 = 1024;

/// Output to stdout (info) or stderr (error) becomes one log line per call.
/// At most [`MAX_LOG_LINE_BYTES`](super::exports::MAX_LOG_LINE_BYTES) bytes
/// from the first [`MAX_IOVECS`] iovecs are taken: a table of a million
/// iovecs naming the same large region must not make the host copy it a
/// million times. What is taken is reported in `nwritten`, a short write as
/// POSIX and WASI allow (wasi-libc and Rust's std write the rest with the
/// next call). Every iovec looked at must lie in memory (else EFAULT).
fn fd_write<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    write_iovecs(c, u(a, 0), u(a, 1), u(a, 2), u(a, 3))
}

/// `fd_pwrite` on stdout/stderr: the offset means nothing for a log, so it is
/// `fd_write` (as in cpp-host).
fn fd_pwrite<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    if !is_std_out_or_err(u(a, 0)) {
        return file_iovecs(c, u(a, 0), u(a, 1), u(a, 2), Some(offset(a, 3)), u(a, 4), Direction::Write);
    }
    write_iovecs(c, u(a, 0), u(a, 1), u(a, 2), u(a, 4))
}

fn offset(a: &[Val], i: usize) -> u64 {
    a.get(i).map_or(0, |v| v.as_i64() as u64)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// `fd_read`, `fd_pread`, `fd_write` and `fd_pwrite` on a file opened under a folder the plugin
/// was given: the iovecs in order, stopping at a short transfer; the bytes moved go to
/// `result` (EFAULT if an iovec lies outside memory). Without a file system: ENOSYS for
/// reads (cpp-host) and EBADF for writes, as before files existed.
fn file_iovecs<S: WasiState>(
    c: &mut dyn Caller<S>,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    at: Option<u64>,
    result: u32,
    direction: Direction,
) -> R {
    let (mem, st) = c.memory_and_state();
    let Some(files) = st.wasi_files() else {
        return errno(if direction == Direction::Read { ENOSYS } else { EBADF });
    };
    let file = match files.file(fd) {
        Ok(file) => file,
        Err(e) => return errno(e),
    };
    let Some(table_len) = iovs_len.checked_mul(8) else { return errno(EFAULT) };
    let Ok(table) = memory::read(mem, iovs, table_len) else { return errno(EFAULT) };
    let mut moved: u64 = 0;
    for iov in table.chunks_exact(8).take(MAX_IOVECS as usize) {
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Ok(buf) = memory::slice_mut(mem, ptr, len) else { return errno(EFAULT) };
        let at = at.map(|o| o.saturating_add(moved));
        let done = match direction {
            Direction::Read => file.read(buf, at),
            Direction::Write => file.write(buf, at),
        };
        match done {
            Ok(n) => {
                moved += n as u64;
                if n < len as usize {
                    break;
                }
            }
            // What moved before the error is the answer (a short transfer).
            Err(_) if moved > 0 => break,
            Err(e) => return errno(e),
        }
    }
    mem_result(memory::write_u32(mem, result, moved.min(u32::MAX as u64) as u32))
}

fn fd_read<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    file_iovecs(c, u(a, 0), u(a, 1), u(a, 2), None, u(a, 3), Direction::Read)
}

fn fd_pread<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    file_iovecs(c, u(a, 0), u(a, 1), u(a, 2), Some(offset(a, 3)), u(a, 4), Direction::Read)
}

fn write_iovecs<S: WasiState>(c: &mut dyn Caller<S>, fd: u32, iovs: u32, iovs_len: u32, nwritten: u32) -> R {
    if fd != 1 && fd != 2 {
        return file_iovecs(c, fd, iovs, iovs_len, None, nwritten, Direction::Write);
    }
    let (mem, st) = c.memory_and_state();
    let Some(table_len) = iovs_len.checked_mul(8) else { return errno(EFAULT) };
    let Ok(table) = memory::slice(mem, iovs, table_len) else { return errno(EFAULT) };
    let cap = super::exports::MAX_LOG_LINE_BYTES as usize;
    let mut out = Vec::new();
    for iov in table.chunks_exact(8).take(MAX_IOVECS as usize) {
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        if memory::check(mem, ptr, len).is_err() {
            return errno(EFAULT);
        }
        let take = (len as usize).min(cap - out.len());
        if take > 0 {
            match memory::slice(mem, ptr, take as u32) {
                Ok(bytes) => out.extend_from_slice(bytes),
                Err(_) => return errno(EFAULT),
            }
        }
        if out.len() == cap {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out);
    let line = text.strip_suffix('\n').unwrap_or(&text);
    if !line.is_empty() {
        let level = if fd == 1 { LogLevel::Info } else { LogLevel::Error };
        st.wasi_log(level, line);
    }
    mem_result(memory::write_u32(mem, nwritten, out.len() as u32))
}

/// fd_fdstat_set_flags answers ENOSYS, as in cpp-host.
fn enosys<S: WasiState>(_c: &mut dyn Caller<S>, _a: &[Val]) -> R {
    errno(ENOSYS)
}

/// Closes an open file; any other descriptor is accepted too (cpp-host answers success).
fn fd_close<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    if let Some(files) = c.state().wasi_files() {
        files.close(u(a, 0));
    }
    errno(ESUCCESS)
}

fn is_std_out_or_err(fd: u32) -> bool {
    fd == 1 || fd == 2
}

/// fd_allocate, fd_datasync, fd_sync, fd_fdstat_set_rights,
/// fd_filestat_set_size, fd_filestat_set_times: nothing to do for
/// stdout/stderr, EBADF for anything else (cpp-host).
fn std_fd_noop<S: WasiState>(_c: &mut dyn Caller<S>, a: &[Val]) -> R {
    errno(if is_std_out_or_err(u(a, 0)) { ESUCCESS } else { EBADF })
}

/// `fd_advise` is only a hint: success for any descriptor (cpp-host).
fn fd_advise<S: WasiState>(_c: &mut dyn Caller<S>, _a: &[Val]) -> R {
    errno(ESUCCESS)
}

/// There are no directories: 0 bytes read, and the reference host's errno.
fn fd_readdir<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    match memory::write_u32(c.memory_and_state().0, u(a, 4), 0) {
        Ok(()) => errno(READDIR_ERRNO),
        Err(_) => errno(EFAULT),
    }
}

/// stdout and stderr cannot be renumbered; other descriptors do not exist.
fn fd_renumber<S: WasiState>(_c: &mut dyn Caller<S>, a: &[Val]) -> R {
    errno(if is_std_out_or_err(u(a, 0)) && is_std_out_or_err(u(a, 1)) { ENOTSUP } else { EBADF })
}

/// The offset of stdout/stderr is 0; an open file's is its own.
fn fd_tell<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let fd = u(a, 0);
    if !is_std_out_or_err(fd) {
        let (mem, st) = c.memory_and_state();
        let Some(files) = st.wasi_files() else { return errno(EBADF) };
        return match files.file(fd).and_then(|f| f.seek(0, 1)) {
            Ok(at) => mem_result(memory::write_u64(mem, u(a, 1), at)),
            Err(e) => errno(e),
        };
    }
    mem_result(memory::write_u64(c.memory_and_state().0, u(a, 1), 0))
}

/// Opens a file under a folder the plugin was given; without any, nothing can be opened.
fn path_open<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let (mem, st) = c.memory_and_state();
    let Some(files) = st.wasi_files() else { return errno(ENOENT) };
    let Ok(path) = memory::read(mem, u(a, 2), u(a, 3)) else { return errno(EFAULT) };
    // dirfd, dirflags, path, path_len, oflags, rights_base, rights_inheriting, fdflags, fd_out.
    match files.open(u(a, 0), &path, u(a, 4), offset(a, 5), u(a, 7)) {
        Ok(fd) => match memory::write_u32(mem, u(a, 8), fd) {
            Ok(()) => errno(ESUCCESS),
            Err(_) => {
                files.close(fd);
                errno(EFAULT)
            }
        },
        Err(e) => errno(e),
    }
}

/// The metadata of a file or folder under a folder the plugin was given (NOTSUP without any).
fn path_filestat_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let (mem, st) = c.memory_and_state();
    let Some(files) = st.wasi_files() else { return errno(ENOTSUP) };
    let Ok(path) = memory::read(mem, u(a, 2), u(a, 3)) else { return errno(EFAULT) };
    match files.stat_path(u(a, 0), &path) {
        Ok(meta) => mem_result(memory::write(mem, u(a, 4), &wasi_files::filestat(&meta))),
        Err(e) => errno(e),
    }
}

/// The metadata of an open file or a given folder; EBADF for anything else (cpp-host).
fn fd_filestat_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let (mem, st) = c.memory_and_state();
    let Some(files) = st.wasi_files() else { return errno(EBADF) };
    let meta = match files.handle(u(a, 0)) {
        Some(wasi_files::Handle::File(f)) => f.metadata(),
        Some(wasi_files::Handle::Folder(p)) => std::fs::metadata(&p.host).map_err(|_| wasi_files::errno::IO),
        None => Err(EBADF),
    };
    match meta {
        Ok(meta) => mem_result(memory::write(mem, u(a, 1), &wasi_files::filestat(&meta))),
        Err(e) => errno(e),
    }
}

/// A folder the plugin was given: its prestat (tag 0 = directory, then its name's length).
/// Without any, EBADF ends wasi-libc's scan at once.
fn fd_prestat_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let (mem, st) = c.memory_and_state();
    let Some(preopen) = st.wasi_files().and_then(|f| f.preopen(u(a, 0)).cloned()) else { return errno(EBADF) };
    let mut prestat = [0u8; 8];
    prestat[4..8].copy_from_slice(&(preopen.guest.len() as u32).to_le_bytes());
    mem_result(memory::write(mem, u(a, 1), &prestat))
}

/// The name of a folder the plugin was given (ENOSYS without any, as in cpp-host).
fn fd_prestat_dir_name<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let (mem, st) = c.memory_and_state();
    let Some(files) = st.wasi_files() else { return errno(ENOSYS) };
    let Some(preopen) = files.preopen(u(a, 0)) else { return errno(EBADF) };
    let name = preopen.guest.as_bytes();
    if (u(a, 2) as usize) < name.len() {
        return errno(EINVAL);
    }
    mem_result(memory::write(mem, u(a, 1), name))
}

/// Writes 0 to the length result, then answers NOTSUP (cpp-host).
fn path_readlink<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    zero_then_notsup(c, &[(u(a, 5), 4)])
}

fn sock_accept<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    zero_then_notsup(c, &[(u(a, 2), 4)])
}

fn sock_recv<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    // The received size (u32) and the output flags (u16).
    zero_then_notsup(c, &[(u(a, 4), 4), (u(a, 5), 2)])
}

fn sock_send<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    zero_then_notsup(c, &[(u(a, 4), 4)])
}

/// There are no sockets or links: the result slots are zeroed (EFAULT if one
/// is out of bounds) and the answer is NOTSUP, as in cpp-host.
fn zero_then_notsup<S: WasiState>(c: &mut dyn Caller<S>, slots: &[(u32, u32)]) -> R {
    let mem = c.memory_and_state().0;
    for &(ptr, len) in slots {
        match memory::slice_mut(mem, ptr, len) {
            Ok(s) => s.fill(0),
            Err(_) => return errno(EFAULT),
        }
    }
    errno(ENOTSUP)
}

fn fd_seek<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let fd = u(a, 0);
    if fd <= 2 {
        return errno(ESPIPE);
    }
    let (mem, st) = c.memory_and_state();
    let Some(files) = st.wasi_files() else { return errno(EBADF) };
    let whence = u(a, 2) as u8;
    match files.file(fd).and_then(|f| f.seek(offset(a, 1) as i64, whence)) {
        Ok(at) => mem_result(memory::write_u64(mem, u(a, 3), at)),
        Err(e) => errno(e),
    }
}

/// stdin/stdout/stderr are character devices; a given folder is a directory, an open file a
/// regular file (with the write right when opened for writing).
fn fd_fdstat_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let fd = u(a, 0);
    if fd > 2 {
        let (mem, st) = c.memory_and_state();
        let Some(files) = st.wasi_files() else { return errno(EBADF) };
        let (filetype, rights) = match files.handle(fd) {
            // Every right: what a folder allows is checked by path_open itself.
            Some(wasi_files::Handle::Folder(_)) => (3u8, (1u64 << 29) - 1),
            // fd_read, fd_seek, fd_tell, fd_filestat_get (+ fd_write).
            Some(wasi_files::Handle::File(f)) => {
                (4u8, (1 << 1) | (1 << 2) | (1 << 5) | (1 << 21) | if f.writable() { 1 << 6 } else { 0 })
            }
            None => return errno(EBADF),
        };
        let mut stat = [0u8; 24];
        stat[0] = filetype;
        stat[8..16].copy_from_slice(&rights.to_le_bytes());
        stat[16..24].copy_from_slice(&rights.to_le_bytes());
        return mem_result(memory::write(mem, u(a, 1), &stat));
    }
    // fdstat: filetype u8 (2 = character device), pad, flags u16, rights u64 x2.
    let mut stat = [0u8; 24];
    stat[0] = 2;
    let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 }; // fd_read / fd_write
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    mem_result(memory::write(c.memory_and_state().0, u(a, 1), &stat))
}

fn environ_sizes_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let (mem, st) = c.memory_and_state();
    let count = st.wasi_environment().len() as u32;
    let size: usize = st.wasi_environment().iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    mem_result(memory::write_u32(mem, u(a, 0), count).and_then(|_| memory::write_u32(mem, u(a, 1), size as u32)))
}

fn environ_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let (mem, st) = c.memory_and_state();
    let (mut ptrs, mut buf) = (u(a, 0), u(a, 1));
    for (k, v) in st.wasi_environment().to_vec() {
        let entry = format!("{k}={v}\0");
        let r = memory::write_u32(mem, ptrs, buf).and_then(|_| memory::write(mem, buf, entry.as_bytes()));
        if r.is_err() {
            return errno(EFAULT);
        }
        ptrs = ptrs.wrapping_add(4);
        buf = buf.wrapping_add(entry.len() as u32);
    }
    errno(ESUCCESS)
}

fn args_sizes_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let mem = c.memory_and_state().0;
    mem_result(memory::write_u32(mem, u(a, 0), 0).and_then(|_| memory::write_u32(mem, u(a, 1), 0)))
}

fn args_get<S: WasiState>(_c: &mut dyn Caller<S>, _a: &[Val]) -> R {
    errno(ESUCCESS)
}

fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Realtime (0) and monotonic (1) clocks; the CPU-time clocks are NOTSUP, as
/// in cpp-host and the ABI spec.
fn clock_time_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let now = match u(a, 0) {
        0 => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        1 => monotonic_ns(),
        _ => return errno(ENOTSUP),
    };
    mem_result(memory::write_u64(c.memory_and_state().0, u(a, 2), now))
}

fn clock_res_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    if u(a, 0) > 1 {
        return errno(ENOTSUP);
    }
    mem_result(memory::write_u64(c.memory_and_state().0, u(a, 1), 1))
}

fn random_get<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let (ptr, len) = (u(a, 0), u(a, 1));
    if len > MAX_RANDOM_BYTES {
        return errno(EINVAL);
    }
    let mem = c.memory_and_state().0;
    let Ok(buf) = memory::slice_mut(mem, ptr, len) else { return errno(EFAULT) };
    match getrandom::fill(buf) {
        Ok(()) => errno(ESUCCESS),
        Err(_) => errno(EINVAL),
    }
}

fn proc_exit<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    let code = u(a, 0) as i32;
    c.state().wasi_exit(code);
    Err(Trap::new(format!("proc_exit({code})")))
}

fn sched_yield<S: WasiState>(_c: &mut dyn Caller<S>, _a: &[Val]) -> R {
    errno(ESUCCESS)
}

/// No event ever fires: a filter must not block. Go's runtime calls this.
fn poll_oneoff<S: WasiState>(c: &mut dyn Caller<S>, a: &[Val]) -> R {
    mem_result(memory::write_u32(c.memory_and_state().0, u(a, 3), 0))
}

/// Any WASI function we do not provide: answers NOTSUP.
pub fn unsupported(_c: &mut dyn Caller<HostState>, _a: &[Val]) -> R {
    errno(ENOTSUP)
}

use ValType::{I32, I64};

/// A WASI function, checked against the calling plugin's
/// `capability_restriction_config`: denied, it answers ENOTCAPABLE
/// (`proc_exit` just returns).
macro_rules! wasi_fn {
    ($name:literal, $params:expr, $func:path) => {
        ($name, $params, {
            fn checked(c: &mut dyn Caller<HostState>, a: &[Val]) -> R {
                if crate::hostcalls::exports::capability_denied(c, $name) {
                    return if $name == "proc_exit" { Ok(None) } else { errno(ENOTCAPABLE) };
                }
                $func(c, a)
            }
            HostFn::Caller(checked)
        })
    };
}

/// The WASI functions we implement: name, parameters, function. All return an errno (i32),
/// except `proc_exit`, which returns nothing. One list gives the Proxy-Wasm table
/// ([`FUNCTIONS`], checked against `capability_restriction_config`) and the table for any other
/// [`WasiState`] ([`resolve_for`]).
macro_rules! wasi_table {
    ($(($name:literal, $params:expr, $func:ident),)*) => {
        pub static FUNCTIONS: &[(&str, &[ValType], HostFn<HostState>)] = &[$(wasi_fn!($name, $params, $func)),*];

        /// A WASI function for a host state other than the Proxy-Wasm host's (no capability
        /// restrictions there): its parameters and the function.
        fn generic_entry<S: WasiState>(name: &str) -> Option<(&'static [ValType], HostFn<S>)> {
            match name {
                $($name => Some(($params, HostFn::Caller($func::<S>))),)*
                _ => None,
            }
        }
    };
}

wasi_table! {
    ("fd_write", &[I32, I32, I32, I32], fd_write),
    ("fd_pwrite", &[I32, I32, I32, I64, I32], fd_pwrite),
    ("fd_read", &[I32, I32, I32, I32], fd_read),
    ("fd_pread", &[I32, I32, I32, I64, I32], fd_pread),
    ("fd_close", &[I32], fd_close),
    ("fd_seek", &[I32, I64, I32, I32], fd_seek),
    ("fd_tell", &[I32, I32], fd_tell),
    ("fd_fdstat_get", &[I32, I32], fd_fdstat_get),
    ("fd_fdstat_set_flags", &[I32, I32], enosys),
    ("fd_fdstat_set_rights", &[I32, I64, I64], std_fd_noop),
    ("fd_advise", &[I32, I64, I64, I32], fd_advise),
    ("fd_allocate", &[I32, I64, I64], std_fd_noop),
    ("fd_datasync", &[I32], std_fd_noop),
    ("fd_sync", &[I32], std_fd_noop),
    ("fd_filestat_set_size", &[I32, I64], std_fd_noop),
    ("fd_filestat_set_times", &[I32, I64, I64, I32], std_fd_noop),
    ("fd_readdir", &[I32, I32, I32, I64, I32], fd_readdir),
    ("fd_renumber", &[I32, I32], fd_renumber),
    ("fd_prestat_get", &[I32, I32], fd_prestat_get),
    ("fd_prestat_dir_name", &[I32, I32, I32], fd_prestat_dir_name),
    ("fd_filestat_get", &[I32, I32], fd_filestat_get),
    ("path_open", &[I32, I32, I32, I32, I32, I64, I64, I32, I32], path_open),
    ("path_filestat_get", &[I32, I32, I32, I32, I32], path_filestat_get),
    ("path_readlink", &[I32, I32, I32, I32, I32, I32], path_readlink),
    ("sock_accept", &[I32, I32, I32], sock_accept),
    ("sock_recv", &[I32, I32, I32, I32, I32, I32], sock_recv),
    ("sock_send", &[I32, I32, I32, I32, I32], sock_send),
    ("environ_sizes_get", &[I32, I32], environ_sizes_get),
    ("environ_get", &[I32, I32], environ_get),
    ("args_sizes_get", &[I32, I32], args_sizes_get),
    ("args_get", &[I32, I32], args_get),
    ("clock_time_get", &[I32, I64, I32], clock_time_get),
    ("clock_res_get", &[I32, I32], clock_res_get),
    ("random_get", &[I32, I32], random_get),
    ("proc_exit", &[I32], proc_exit),
    ("sched_yield", &[], sched_yield),
    ("poll_oneoff", &[I32, I32, I32, I32], poll_oneoff),
}

/// Resolves a WASI import: our implementation when the signature matches,
/// `Err` with the expected signature when it does not, and the errno answer
/// for functions we do not implement.
pub fn resolve(name: &str, ty: &FuncType) -> Result<HostFn<HostState>, FuncType> {
    match FUNCTIONS.iter().find(|(n, _, _)| *n == name) {
        Some((n, params, f)) => {
            let results = if *n == "proc_exit" { vec![] } else { vec![I32] };
            let expected = FuncType { params: params.to_vec(), results };
            if &expected == ty {
                Ok(*f)
            } else {
                Err(expected)
            }
        }
        None => Ok(HostFn::Caller(unsupported)),
    }
}

/// [`resolve`] for any [`WasiState`]: the same functions and answers, without the Proxy-Wasm
/// capability checks.
pub fn resolve_for<S: WasiState>(name: &str, ty: &FuncType) -> Result<HostFn<S>, FuncType> {
    match generic_entry::<S>(name) {
        Some((params, f)) => {
            let results = if name == "proc_exit" { vec![] } else { vec![I32] };
            let expected = FuncType { params: params.to_vec(), results };
            if &expected == ty {
                Ok(f)
            } else {
                Err(expected)
            }
        }
        None => Ok(HostFn::Caller(unsupported_any::<S>)),
    }
}

fn unsupported_any<S: WasiState>(_c: &mut dyn Caller<S>, _a: &[Val]) -> R {
    errno(ENOTSUP)
}
