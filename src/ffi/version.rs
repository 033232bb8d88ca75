//! `pwh_version`.

use std::ffi::c_char;
use std::ptr;

use super::guard;

/// The library version (`"0.1.0"`), a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn pwh_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    guard(ptr::null(), || VERSION.as_ptr().cast())
}
