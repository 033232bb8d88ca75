//! The request body's state kept in the request context, and the cursor that
//! reads nginx's body buffers in pieces: plain data, below the context (which
//! holds it) and `request_body` (which drives it).

use std::ffi::c_void;

use ngx::ffi::*;

use super::base::log;
use proxy_wasm_host::abi::LogLevel;

/// Where the request body is for the chain.
#[derive(Default)]
pub struct RequestBody {
    /// `ngx_http_read_client_request_body` was called.
    pub read_started: bool,
    /// nginx has read the whole body.
    pub(super) ready: bool,
    /// Where the chain is in the body nginx read.
    pub(super) cursor: Option<BodyCursor>,
    /// The piece with `end_of_stream` went to the chain.
    pub(super) eos_fed: bool,
    /// What the chain let through, held until the whole body went through:
    /// it replaces nginx's request body at once (bounded by `max_body_size`).
    pub(super) out: Vec<u8>,
    /// The end of the body came out of the chain: `out` is the new body.
    pub(super) complete: bool,
    /// `out` replaced nginx's request body.
    pub(super) installed: bool,
}

/// The most bytes read from nginx's body buffers at once: a request body
/// nginx kept in a temporary file is read piece by piece as it goes through
/// the plugins, never whole.
pub const PIECE: usize = 64 * 1024;

/// A position in a chain of nginx buffers (memory or file).
pub struct BodyCursor {
    pub(super) cl: *mut ngx_chain_t,
    /// Bytes of the current buffer already taken.
    pub(super) offset: off_t,
}

impl BodyCursor {
    /// Bytes left in the buffer of `cl` after `offset`.
    ///
    /// # Safety
    /// `cl` is a live chain link of the request's body.
    unsafe fn left(cl: *mut ngx_chain_t, offset: off_t) -> off_t {
        // SAFETY: see above.
        unsafe {
            let b = (*cl).buf;
            if (*b).in_file() != 0 && !(*b).file.is_null() {
                ((*b).file_last - (*b).file_pos - offset).max(0)
            } else if !(*b).pos.is_null() && (*b).last > (*b).pos {
                ((*b).last.offset_from((*b).pos) as off_t - offset).max(0)
            } else {
                0
            }
        }
    }

    /// The next piece (at most [`PIECE`] bytes), `None` at the end.
    ///
    /// # Safety
    /// The request is live and its body buffers unchanged since the cursor was made.
    pub(super) unsafe fn next(&mut self) -> Option<Vec<u8>> {
        // SAFETY: see above; file buffers refer to the request's temporary file.
        unsafe {
            while !self.cl.is_null() {
                let left = Self::left(self.cl, self.offset);
                if left == 0 {
                    self.cl = (*self.cl).next;
                    self.offset = 0;
                    continue;
                }
                let b = (*self.cl).buf;
                let n = (left as usize).min(PIECE);
                if (*b).in_file() != 0 && !(*b).file.is_null() {
                    let mut buf = vec![0u8; n];
                    let got = libc::pread(
                        (*(*b).file).fd,
                        buf.as_mut_ptr() as *mut c_void,
                        n,
                        ((*b).file_pos + self.offset) as libc::off_t,
                    );
                    if got <= 0 {
                        log(
                            LogLevel::Error,
                            &format!(
                                "[proxy_wasm] cannot read the request body from nginx's temporary file: {}",
                                std::io::Error::last_os_error()
                            ),
                        );
                        self.cl = std::ptr::null_mut();
                        return None;
                    }
                    buf.truncate(got as usize);
                    self.offset += got as off_t;
                    return Some(buf);
                }
                let piece = std::slice::from_raw_parts((*b).pos.add(self.offset as usize), n).to_vec();
                self.offset += n as off_t;
                return Some(piece);
            }
            None
        }
    }

    /// Whether any byte is left.
    ///
    /// # Safety
    /// As [`BodyCursor::next`].
    pub(super) unsafe fn has_more(&self) -> bool {
        // SAFETY: see above.
        unsafe {
            let (mut cl, mut offset) = (self.cl, self.offset);
            while !cl.is_null() {
                if Self::left(cl, offset) > 0 {
                    return true;
                }
                cl = (*cl).next;
                offset = 0;
            }
            false
        }
    }
}
