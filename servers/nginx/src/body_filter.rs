//! The body filter: `on_response_body` (last plugin of the chain first), in
//! pieces of at most 64 KiB, the last with `end_of_stream` (also the piece
//! that completes a declared Content-Length, as Envoy's HTTP/1 codec
//! delivers it). What the plugins let through goes to the next filter; a
//! pause at the end of the body holds the response back (`r->buffered`).
//! A response whose headers a local response replaced gets that body.

use std::ffi::c_void;

use ngx::ffi::*;

use super::base::log;
use super::body_state::PIECE;
use super::context::{get_ctx, ReqCtx};
use super::filters::{fail, kick_writer, next_body, next_header, set_buffered};
use super::local::{chain_of, replace_response};
use proxy_wasm_host::abi::{LogLevel, StreamType};
use proxy_wasm_host::chain::{Flow, Phase};

pub unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, input: *mut ngx_chain_t) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: live request.
        if unsafe { (*r).main } != r {
            return next_body(r, input);
        }
        let Some(ctx) = get_ctx(r) else { return next_body(r, input) };
        if ctx.replace_body.borrow().is_some() {
            // The upstream's body is dropped.
            // SAFETY: the chain given to this filter.
            let _ = unsafe { drain(r, input) };
            return send_replacement(ctx, r);
        }
        let filtering = ctx.headers_held.get()
            || ctx
                .with_chain(|c| {
                    c.filters(Phase::ResponseBody)
                        || c.waiting().is_some()
                        || c.has_queued_body(StreamType::HttpResponse)
                })
                .unwrap_or(false);
        if !filtering {
            return pass_on(ctx, r, input);
        }
        // The usual case, the response's bytes in one memory buffer: the chain reads them where they
        // are (`drain` would copy them into two allocations).
        // SAFETY: the chain given to this filter. The piece stays valid while the chain runs below:
        // marking the buffer consumed only moves its `pos`, and nothing frees nginx's buffers
        // during a plugin's callback.
        if let Some((piece, eos)) = unsafe { single_piece(r, input) } {
            let pieces: &[&[u8]] = match &piece {
                Some(p) => std::slice::from_ref(p),
                None => &[],
            };
            return filter_input(ctx, r, input, pieces, eos);
        }
        // SAFETY: the chain given to this filter.
        let (pieces, eos) = unsafe { drain(r, input) };
        filter_input(ctx, r, input, &pieces, eos)
    });
    out.unwrap_or_else(|_| {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the body filter");
        NGX_ERROR as ngx_int_t
    })
}

/// The body filter's work once the input's bytes were taken (`pieces`, consumed in `input`;
/// `eos`: its buffers end the body): the end of the body declared by Content-Length, then the
/// chain.
fn filter_input<P: AsRef<[u8]>>(
    ctx: &ReqCtx,
    r: *mut ngx_http_request_t,
    input: *mut ngx_chain_t,
    pieces: &[P],
    eos: bool,
) -> ngx_int_t {
    if ctx.response_eos_sent.get() {
        return next_body(r, std::ptr::null_mut());
    }
    let seen = ctx.response_seen.get() + pieces.iter().map(|p| p.as_ref().len() as u64).sum::<u64>();
    ctx.response_seen.set(seen);
    let eos = eos || ctx.response_length.get().is_some_and(|n| seen >= n);
    if pieces.is_empty() && !eos && !ctx.headers_held.get() && !ctx.body_held.get() {
        return pass_on(ctx, r, input);
    }
    filter_pieces(ctx, r, pieces, eos)
}

/// Runs pieces through the chain (the last with `eos`; none: one empty
/// piece) and acts on each flow.
pub fn filter_pieces<P: AsRef<[u8]>>(ctx: &ReqCtx, r: *mut ngx_http_request_t, pieces: &[P], eos: bool) -> ngx_int_t {
    let n = pieces.len().max(1);
    let mut rc = NGX_OK as ngx_int_t;
    for i in 0..n {
        let piece = pieces.get(i).map_or(&[][..], AsRef::as_ref);
        let Some(flow) = ctx.with_chain(|c| c.on_response_body(piece, eos && i + 1 == n)) else {
            log(
                LogLevel::Critical,
                "[proxy_wasm] internal error: the request's chain is in use or gone in the body filter",
            );
            return NGX_ERROR as ngx_int_t;
        };
        rc = body_flow(ctx, r, flow);
        if rc == NGX_ERROR as ngx_int_t || ctx.body_held.get() || ctx.response_eos_sent.get() || ctx.replaced_sent.get()
        {
            break;
        }
    }
    rc
}

/// Acts on what the chain said of a piece of the response body.
fn body_flow(ctx: &ReqCtx, r: *mut ngx_http_request_t, flow: Flow) -> ngx_int_t {
    match flow {
        Flow::Forward { data, end_of_stream } => emit(ctx, r, &data, end_of_stream),
        Flow::Buffered | Flow::Continue => NGX_OK as ngx_int_t,
        Flow::Wait => {
            ctx.body_held.set(true);
            set_buffered(r, true);
            NGX_OK as ngx_int_t
        }
        Flow::Respond(response) if ctx.headers_held.get() => {
            // The body queued while the response headers waited passed the
            // pause owner's max_body_size: the chain answers instead (500).
            ctx.headers_held.set(false);
            set_buffered(r, false);
            replace_response(ctx, r, response);
            if next_header(r) == NGX_ERROR as ngx_int_t {
                return NGX_ERROR as ngx_int_t;
            }
            send_replacement(ctx, r)
        }
        Flow::Respond(_) | Flow::Abort | Flow::Reset => NGX_ERROR as ngx_int_t,
    }
}

/// Sends what the chain let through to the next filter.
fn emit(ctx: &ReqCtx, r: *mut ngx_http_request_t, data: &[u8], eos: bool) -> ngx_int_t {
    if data.is_empty() && !eos {
        return NGX_OK as ngx_int_t;
    }
    if eos {
        ctx.response_eos_sent.set(true);
        ctx.body_held.set(false);
        set_buffered(r, false);
    }
    // SAFETY: live request.
    match unsafe { chain_of(r, data, eos) } {
        Some(cl) => pass_on(ctx, r, cl),
        None => NGX_ERROR as ngx_int_t,
    }
}

/// The body of a local response that replaced the response, once.
pub fn send_replacement(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    if ctx.replaced_sent.replace(true) {
        return next_body(r, std::ptr::null_mut());
    }
    let body = ctx.replace_body.borrow().clone().unwrap_or_default();
    // SAFETY: live request.
    unsafe { chain_of(r, &body, true) }.map_or(NGX_ERROR as ngx_int_t, |cl| pass_on(ctx, r, cl))
}

/// Passes `cl` to the next filter, counting its bytes (`response.size`).
fn pass_on(ctx: &ReqCtx, r: *mut ngx_http_request_t, cl: *mut ngx_chain_t) -> ngx_int_t {
    let mut bytes = 0u64;
    let mut link = cl;
    // SAFETY: a chain given to (or made by) this filter: its links and buffers are live.
    unsafe {
        while !link.is_null() {
            let b = (*link).buf;
            if !b.is_null() {
                bytes += if (*b).in_file() != 0 && ((*b).pos.is_null() || (*b).last == (*b).pos) {
                    ((*b).file_last - (*b).file_pos).max(0) as u64
                } else if !(*b).pos.is_null() {
                    (*b).last.offset_from((*b).pos).max(0) as u64
                } else {
                    0
                };
            }
            link = (*link).next;
        }
    }
    ctx.response_sent.set(ctx.response_sent.get() + bytes);
    next_body(r, cl)
}

/// The chain's resume or pause timeout for the response body: what a plugin
/// let through goes on, or the response is cut.
pub fn resumed(ctx: &ReqCtx, r: *mut ngx_http_request_t, flow: Flow) {
    match flow {
        Flow::Wait | Flow::Buffered => {}
        Flow::Abort | Flow::Reset | Flow::Respond(_) => {
            ctx.body_held.set(false);
            fail(r);
        }
        flow => {
            if body_flow(ctx, r, flow) == NGX_ERROR as ngx_int_t {
                fail(r);
                return;
            }
            kick_writer(r);
        }
    }
}

/// Whether buffer `b` holds its bytes in a file only (`drain` reads them from there).
///
/// # Safety
/// `b` is a live buffer of a chain given to the body filter.
unsafe fn file_only(b: *const ngx_buf_t) -> bool {
    // SAFETY: see above.
    unsafe {
        (*b).in_file() != 0 && (*b).pos.is_null()
            || ((*b).in_file() != 0 && (*b).last == (*b).pos && (*b).file_last > (*b).file_pos)
    }
}

/// The bytes of a chain whose data is in at most one buffer, in memory, as `drain` would give
/// them (`None` inside: no bytes) but not copied, every buffer marked consumed as `drain` does;
/// and whether it ends the body. `None` (nothing consumed) for any other chain.
///
/// # Safety
/// `cl` is the chain given to the body filter; the returned bytes are its buffer's, valid until
/// nginx reuses or frees that buffer (not while the filter runs).
unsafe fn single_piece<'a>(r: *mut ngx_http_request_t, cl: *mut ngx_chain_t) -> Option<(Option<&'a [u8]>, bool)> {
    let mut data: Option<*mut ngx_buf_t> = None;
    let mut eos = false;
    // SAFETY: see above: the chain's links and buffers are live.
    unsafe {
        let mut link = cl;
        while !link.is_null() {
            let b = (*link).buf;
            if file_only(b) {
                return None;
            }
            if !(*b).pos.is_null() && (*b).last > (*b).pos {
                if data.is_some() {
                    return None;
                }
                data = Some(b);
            }
            if (*b).last_buf() != 0 || (r != (*r).main && (*b).last_in_chain() != 0) {
                eos = true;
            }
            link = (*link).next;
        }
        let piece = data.map(|b| {
            let bytes = std::slice::from_raw_parts((*b).pos, (*b).last.offset_from((*b).pos) as usize);
            (*b).pos = (*b).last;
            if (*b).in_file() != 0 {
                (*b).file_pos = (*b).file_last;
            }
            bytes
        });
        Some((piece, eos))
    }
}

/// The bytes of a chain in pieces (a file buffer is read [`PIECE`] bytes at
/// a time, never whole: a static file may be gigabytes; small buffers are
/// joined up to that size), marking every buffer consumed; and whether it
/// ends the body.
unsafe fn drain(r: *mut ngx_http_request_t, mut cl: *mut ngx_chain_t) -> (Vec<Vec<u8>>, bool) {
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let push = |pieces: &mut Vec<Vec<u8>>, bytes: &[u8]| match pieces.last_mut() {
        Some(last) if last.len() + bytes.len() <= PIECE => last.extend_from_slice(bytes),
        _ => pieces.push(bytes.to_vec()),
    };
    let mut eos = false;
    // SAFETY: a chain given to the body filter; file buffers refer to open files.
    unsafe {
        while !cl.is_null() {
            let b = (*cl).buf;
            if file_only(b) {
                let fd = (*(*b).file).fd;
                while (*b).file_pos < (*b).file_last {
                    let n = (((*b).file_last - (*b).file_pos) as usize).min(PIECE);
                    let mut buf = vec![0u8; n];
                    let got = libc::pread(fd, buf.as_mut_ptr() as *mut c_void, n, (*b).file_pos as libc::off_t);
                    if got <= 0 {
                        log(
                            LogLevel::Error,
                            &format!(
                                "[proxy_wasm] cannot read a response body buffer from its file: {}",
                                std::io::Error::last_os_error()
                            ),
                        );
                        (*b).file_pos = (*b).file_last;
                        break;
                    }
                    buf.truncate(got as usize);
                    (*b).file_pos += got as off_t;
                    push(&mut pieces, &buf);
                }
            } else if !(*b).pos.is_null() && (*b).last > (*b).pos {
                push(&mut pieces, std::slice::from_raw_parts((*b).pos, (*b).last.offset_from((*b).pos) as usize));
                (*b).pos = (*b).last;
                if (*b).in_file() != 0 {
                    (*b).file_pos = (*b).file_last;
                }
            }
            if (*b).last_buf() != 0 || (r != (*r).main && (*b).last_in_chain() != 0) {
                eos = true;
            }
            cl = (*cl).next;
        }
    }
    (pieces, eos)
}
