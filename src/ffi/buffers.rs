//! `pwh_bytes` (borrowed) and `pwh_buffer` (owned) byte strings.

use std::ffi::c_char;
use std::ptr;

use super::{guard, pwh_status};

/// Borrowed bytes: `len` bytes at `ptr`, valid for the duration of one call.
/// `ptr` may be NULL when `len` is 0. Not NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pwh_bytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl pwh_bytes {
    pub(super) const EMPTY: pwh_bytes = pwh_bytes { ptr: ptr::null(), len: 0 };

    pub(super) fn of(bytes: &[u8]) -> pwh_bytes {
        pwh_bytes { ptr: bytes.as_ptr(), len: bytes.len() }
    }

    /// The borrowed slice, or `None` for a NULL pointer with a non-zero length
    /// (or a length no allocation can have).
    ///
    /// # Safety
    /// Unless NULL, `ptr` must be valid for reads of `len` bytes during `'a`.
    pub(super) unsafe fn as_slice<'a>(self) -> Option<&'a [u8]> {
        if self.len == 0 {
            return Some(&[]);
        }
        if self.ptr.is_null() || self.len > isize::MAX as usize {
            return None;
        }
        // SAFETY: non-null, length within isize::MAX, and the caller guarantees
        // the memory is readable for `len` bytes during 'a.
        Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }
}

/// # Safety
/// As [`pwh_bytes::as_slice`].
pub(super) unsafe fn bytes_arg<'a>(b: pwh_bytes, name: &str) -> Result<&'a [u8], String> {
    // SAFETY: forwarded from the caller.
    unsafe { b.as_slice() }.ok_or_else(|| format!("{name}: NULL pointer with non-zero length"))
}

/// An owned, growable byte buffer (a Rust `Vec<u8>`). Create with
/// `pwh_buffer_new`, free with `pwh_buffer_free`. Used for output parameters
/// (error messages, header maps, bodies, property values).
#[derive(Debug, Default)]
pub struct pwh_buffer {
    pub(super) bytes: Vec<u8>,
}

/// A new, empty buffer. Never NULL (allocation failure aborts the process).
#[no_mangle]
pub extern "C" fn pwh_buffer_new() -> *mut pwh_buffer {
    guard(ptr::null_mut(), || Box::into_raw(Box::default()))
}

/// Frees a buffer from `pwh_buffer_new`. NULL is ignored.
///
/// # Safety
/// `buf` must be NULL or a buffer from `pwh_buffer_new` that was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_free(buf: *mut pwh_buffer) {
    if buf.is_null() {
        return;
    }
    let free = || {
        // SAFETY: the pointer came from Box::into_raw in pwh_buffer_new and is freed only once (contract).
        drop(unsafe { Box::from_raw(buf) });
    };
    guard((), free)
}

/// The buffer's bytes; valid until the buffer is next changed or freed.
/// NULL when `buf` is NULL. Not NUL-terminated (see `pwh_buffer_cstr`).
///
/// # Safety
/// `buf` must be NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_data(buf: *const pwh_buffer) -> *const u8 {
    // SAFETY: NULL or a live buffer (contract); only read.
    let buf = unsafe { buf.as_ref() };
    guard(ptr::null(), || buf.map_or(ptr::null(), |b| b.bytes.as_ptr()))
}

/// The number of bytes in the buffer (0 when `buf` is NULL).
///
/// # Safety
/// `buf` must be NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_len(buf: *const pwh_buffer) -> usize {
    // SAFETY: NULL or a live buffer (contract); only read.
    let buf = unsafe { buf.as_ref() };
    guard(0, || buf.map_or(0, |b| b.bytes.len()))
}

/// The contents as a NUL-terminated string (a NUL is kept after the data, not
/// counted by `pwh_buffer_len`); valid until the buffer is next changed or
/// freed. Contents with an embedded NUL appear cut short. NULL when `buf` is NULL.
///
/// # Safety
/// `buf` must be NULL or a live buffer not used by another thread meanwhile.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_cstr(buf: *mut pwh_buffer) -> *const c_char {
    // SAFETY: NULL or a live, unaliased buffer (contract).
    let buf = unsafe { buf.as_mut() };
    guard(ptr::null(), || match buf {
        None => ptr::null(),
        Some(b) => {
            b.bytes.reserve(1);
            // Writes the terminator into spare capacity: the length is unchanged.
            b.bytes.spare_capacity_mut()[0].write(0);
            b.bytes.as_ptr().cast()
        }
    })
}

/// Replaces the buffer's contents with `len` bytes from `data` (`data` may be
/// NULL when `len` is 0). Returns `PWH_STATUS_OK`, or `PWH_STATUS_BAD_ARGUMENT`
/// for a NULL `buf` or NULL `data` with a non-zero `len`. C callbacks use it to
/// return data through their `pwh_buffer *out` parameter.
///
/// # Safety
/// `buf` must be NULL or a live buffer; `data` must be readable for `len` bytes
/// and must not point into `buf` itself.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_set(buf: *mut pwh_buffer, data: *const u8, len: usize) -> i32 {
    // SAFETY: NULL or a live, unaliased buffer (contract).
    let buf = unsafe { buf.as_mut() };
    // SAFETY: readable for `len` bytes (contract).
    let data = unsafe { pwh_bytes { ptr: data, len }.as_slice() };
    guard(pwh_status::InternalFailure as i32, || match (buf, data) {
        (Some(b), Some(d)) => {
            b.bytes.clear();
            b.bytes.extend_from_slice(d);
            pwh_status::Ok as i32
        }
        _ => pwh_status::BadArgument as i32,
    })
}

/// Appends `len` bytes from `data` to the buffer. Same results as `pwh_buffer_set`.
///
/// # Safety
/// As `pwh_buffer_set`.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_append(buf: *mut pwh_buffer, data: *const u8, len: usize) -> i32 {
    // SAFETY: NULL or a live, unaliased buffer (contract).
    let buf = unsafe { buf.as_mut() };
    // SAFETY: readable for `len` bytes (contract).
    let data = unsafe { pwh_bytes { ptr: data, len }.as_slice() };
    guard(pwh_status::InternalFailure as i32, || match (buf, data) {
        (Some(b), Some(d)) => {
            b.bytes.extend_from_slice(d);
            pwh_status::Ok as i32
        }
        _ => pwh_status::BadArgument as i32,
    })
}
