//! Request and response headers of an nginx request as Proxy-Wasm header
//! maps, pseudo-headers included.
//!
//! Request headers: `:method`, `:path` (the unparsed URI, with query),
//! `:authority` (Host), `:scheme`, then `headers_in.headers`. A removed
//! request header is taken out of the list (upstream modules send every
//! element), and the `headers_in` shortcuts are moved with it.
//!
//! Response headers: `:status`, `content-type` and `content-length` (nginx
//! keeps these outside the list), then `headers_out.headers` elements with a
//! non-zero hash (the header filter skips hash 0, which is how removal works).

use std::ptr;

use ngx::ffi::*;

use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::Status;

/// SAFETY for everything below: callers pass a live request of the current
/// worker; nginx is single-threaded, and strings are allocated from the
/// request's pool, which outlives every header that points to them.
unsafe fn pstr(r: *mut ngx_http_request_t, bytes: &[u8]) -> Result<ngx_str_t, Status> {
    // SAFETY: see above.
    unsafe {
        if bytes.is_empty() {
            return Ok(ngx_str_t { len: 0, data: ptr::null_mut() });
        }
        let p = ngx_pnalloc((*r).pool, bytes.len()) as *mut u8;
        if p.is_null() {
            return Err(Status::InternalFailure);
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        Ok(ngx_str_t { len: bytes.len(), data: p })
    }
}

fn bytes(s: &ngx_str_t) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The elements of an nginx list, in order, read as the walk goes (no copy).
struct Elements {
    part: *mut ngx_list_part_t,
    index: usize,
}

impl Iterator for Elements {
    type Item = *mut ngx_table_elt_t;

    fn next(&mut self) -> Option<*mut ngx_table_elt_t> {
        // SAFETY: `part` walks a live ngx_list_t of ngx_table_elt_t (see
        // `elements`); `index` stays below the part's element count.
        unsafe {
            while !self.part.is_null() {
                if self.index < (*self.part).nelts {
                    let h = ((*self.part).elts as *mut ngx_table_elt_t).add(self.index);
                    self.index += 1;
                    return Some(h);
                }
                self.part = (*self.part).next;
                self.index = 0;
            }
        }
        None
    }
}

/// Every element of a list, in order. The list must not gain or lose
/// elements while the walk is under way (callers collect first when they do).
unsafe fn elements(list: *mut ngx_list_t) -> Elements {
    // SAFETY: a live ngx_list_t (see the module note).
    Elements { part: unsafe { &mut (*list).part }, index: 0 }
}

/// The values of every element named `key` joined with ",", as a header map
/// lookup answers; `skip_removed` leaves out response elements with hash 0.
unsafe fn joined_value(list: *mut ngx_list_t, key: &[u8], skip_removed: bool) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    // SAFETY: a live list; nothing is added or removed during the walk.
    for h in unsafe { elements(list) } {
        // SAFETY: an element of that list.
        let h = unsafe { &*h };
        if (skip_removed && h.hash == 0) || !key_is(h, key) {
            continue;
        }
        match &mut out {
            Some(v) => {
                v.push(b',');
                v.extend_from_slice(h.value.as_bytes());
            }
            None => out = Some(h.value.as_bytes().to_vec()),
        }
    }
    out
}

unsafe fn push(
    r: *mut ngx_http_request_t,
    list: *mut ngx_list_t,
    key: &[u8],
    value: &[u8],
) -> Result<*mut ngx_table_elt_t, Status> {
    // SAFETY: see the module note.
    unsafe {
        let h = ngx_list_push(list) as *mut ngx_table_elt_t;
        if h.is_null() {
            return Err(Status::InternalFailure);
        }
        (*h).key = pstr(r, key)?;
        (*h).value = pstr(r, value)?;
        (*h).lowcase_key = ngx_pnalloc((*r).pool, key.len().max(1)) as *mut u8;
        if (*h).lowcase_key.is_null() {
            return Err(Status::InternalFailure);
        }
        (*h).hash = ngx_hash_strlow((*h).lowcase_key, (*h).key.data, key.len());
        if (*h).hash == 0 {
            (*h).hash = 1;
        }
        Ok(h)
    }
}

/// `key` in ASCII lower case, written in `buf` when it fits (every name the matches of this
/// module know does): a header read or write allocates nothing for the name's case.
fn lowercase<'b>(key: &[u8], buf: &'b mut [u8; 32]) -> std::borrow::Cow<'b, [u8]> {
    match buf.get_mut(..key.len()) {
        Some(out) => {
            for (o, k) in out.iter_mut().zip(key) {
                *o = k.to_ascii_lowercase();
            }
            std::borrow::Cow::Borrowed(out)
        }
        None => std::borrow::Cow::Owned(key.to_ascii_lowercase()),
    }
}

/// Whether the element is named `key` (ASCII case-insensitive). Compared
/// from the last byte: names in one list often share a prefix (`x-`,
/// `content-`, `accept-`) and differ at the end, so most elements are told
/// apart by their length or last byte.
fn key_is(h: &ngx_table_elt_t, key: &[u8]) -> bool {
    let name = h.key.as_bytes();
    name.len() == key.len() && name.iter().rev().zip(key.iter().rev()).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

// ------------------------------------------------------------------ request

fn scheme(r: &ngx_http_request_t) -> &'static [u8] {
    // SAFETY: the connection of a live request.
    if unsafe { !(*r.connection).ssl.is_null() } {
        b"https"
    } else {
        b"http"
    }
}

pub unsafe fn request_authority(r: *mut ngx_http_request_t) -> Vec<u8> {
    // SAFETY: see the module note.
    unsafe {
        let hi = &(*r).headers_in;
        if !hi.host.is_null() {
            bytes(&(*hi.host).value)
        } else {
            bytes(&hi.server)
        }
    }
}

pub unsafe fn request_pairs(r: *mut ngx_http_request_t) -> Vec<Pair> {
    // SAFETY: see the module note.
    unsafe {
        let mut pairs = vec![
            (b":method".to_vec(), bytes(&(*r).method_name)),
            (b":path".to_vec(), bytes(&(*r).unparsed_uri)),
            (b":authority".to_vec(), request_authority(r)),
            (b":scheme".to_vec(), scheme(&*r).to_vec()),
        ];
        for h in elements(&mut (*r).headers_in.headers) {
            pairs.push((bytes(&(*h).key), bytes(&(*h).value)));
        }
        pairs
    }
}

pub unsafe fn request_pair_count(r: *mut ngx_http_request_t) -> usize {
    // SAFETY: see the module note.
    unsafe { 4 + elements(&mut (*r).headers_in.headers).count() }
}

/// One request header's value without building the whole map (hostcalls
/// `get_header_map_value` on request headers).
pub unsafe fn request_value(r: *mut ngx_http_request_t, key: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: see the module note.
    unsafe {
        if key.starts_with(b":") {
            return match lowercase(key, &mut [0; 32]).as_ref() {
                b":method" => Some(bytes(&(*r).method_name)),
                b":path" => Some(bytes(&(*r).unparsed_uri)),
                b":authority" => Some(request_authority(r)),
                b":scheme" => Some(scheme(&*r).to_vec()),
                _ => None,
            };
        }
        joined_value(&mut (*r).headers_in.headers, key, false)
    }
}

/// The `headers_in` fields that point into the list.
macro_rules! in_shortcuts {
    ($hi:expr) => {
        [
            &mut $hi.host,
            &mut $hi.connection,
            &mut $hi.if_modified_since,
            &mut $hi.if_unmodified_since,
            &mut $hi.if_match,
            &mut $hi.if_none_match,
            &mut $hi.user_agent,
            &mut $hi.referer,
            &mut $hi.content_length,
            &mut $hi.content_range,
            &mut $hi.content_type,
            &mut $hi.range,
            &mut $hi.if_range,
            &mut $hi.transfer_encoding,
            &mut $hi.te,
            &mut $hi.expect,
            &mut $hi.upgrade,
            &mut $hi.accept_encoding,
            &mut $hi.via,
            &mut $hi.authorization,
            &mut $hi.keep_alive,
            &mut $hi.x_real_ip,
            &mut $hi.accept,
            &mut $hi.accept_language,
            &mut $hi.depth,
            &mut $hi.destination,
            &mut $hi.overwrite,
            &mut $hi.date,
        ]
    };
}

/// Moves a pointer into a list part after element `gone` of that part was removed.
fn shift(p: &mut *mut ngx_table_elt_t, gone: *mut ngx_table_elt_t, end: *mut ngx_table_elt_t) -> bool {
    if *p == gone {
        *p = ptr::null_mut();
        return true;
    }
    if *p > gone && *p < end {
        // SAFETY: stays inside the same part's array.
        *p = unsafe { p.sub(1) };
    }
    false
}

unsafe fn fix_array(a: &mut ngx_array_t, gone: *mut ngx_table_elt_t, end: *mut ngx_table_elt_t) {
    if a.elts.is_null() {
        return;
    }
    // SAFETY: an array of ngx_table_elt_t pointers (cookies, x_forwarded_for in 1.22).
    unsafe {
        let elts = a.elts as *mut *mut ngx_table_elt_t;
        let mut i = 0;
        while i < a.nelts {
            if shift(&mut *elts.add(i), gone, end) {
                ptr::copy(elts.add(i + 1), elts.add(i), a.nelts - i - 1);
                a.nelts -= 1;
            } else {
                i += 1;
            }
        }
    }
}

/// Removes every request header named `key` from the list.
unsafe fn remove_request(r: *mut ngx_http_request_t, key: &[u8]) {
    // SAFETY: see the module note; elements are moved within their part and
    // every pointer into that part is moved with them.
    unsafe {
        let hi = &mut (*r).headers_in;
        let mut part: *mut ngx_list_part_t = &mut hi.headers.part;
        while !part.is_null() {
            let elts = (*part).elts as *mut ngx_table_elt_t;
            let mut i = 0;
            while i < (*part).nelts {
                let h = elts.add(i);
                if key_is(&*h, key) {
                    let end = elts.add((*part).nelts);
                    ptr::copy(elts.add(i + 1), h, (*part).nelts - i - 1);
                    (*part).nelts -= 1;
                    for p in in_shortcuts!(hi) {
                        shift(p, h, end);
                    }
                    fix_array(&mut hi.cookies, h, end);
                    fix_array(&mut hi.x_forwarded_for, h, end);
                } else {
                    i += 1;
                }
            }
            part = (*part).next;
        }
        if key.eq_ignore_ascii_case(b"content-length") {
            hi.content_length_n = -1;
        } else if key.eq_ignore_ascii_case(b"transfer-encoding") {
            hi.set_chunked(0);
        }
    }
}

/// Sets `:path`: the unparsed URI, the URI and the arguments.
unsafe fn set_path(r: *mut ngx_http_request_t, value: &[u8]) -> Result<(), Status> {
    if value.is_empty() || value[0] != b'/' {
        return Err(Status::BadArgument);
    }
    // SAFETY: see the module note.
    unsafe {
        let s = pstr(r, value)?;
        (*r).unparsed_uri = s;
        let q = value.iter().position(|b| *b == b'?');
        let path_len = q.unwrap_or(value.len());
        (*r).uri = ngx_str_t { len: path_len, data: s.data };
        (*r).args = match q {
            Some(i) => ngx_str_t { len: value.len() - i - 1, data: s.data.add(i + 1) },
            None => ngx_str_t { len: 0, data: ptr::null_mut() },
        };
        (*r).set_valid_unparsed_uri(1);
    }
    Ok(())
}

unsafe fn set_request_pseudo(r: *mut ngx_http_request_t, key: &[u8], value: &[u8]) -> Result<(), Status> {
    // SAFETY: see the module note.
    unsafe {
        match key {
            b":method" => (*r).method_name = pstr(r, value)?,
            b":path" => set_path(r, value)?,
            b":authority" => {
                replace_request(r, b"host", value)?;
                (*r).headers_in.server = pstr(r, value)?;
            }
            b":scheme" => {}
            _ => return Err(Status::BadArgument),
        }
    }
    Ok(())
}

pub unsafe fn add_request(r: *mut ngx_http_request_t, key: &[u8], value: &[u8]) -> Result<(), Status> {
    if key.starts_with(b":") {
        // SAFETY: forwarded.
        return unsafe { set_request_pseudo(r, &key.to_ascii_lowercase(), value) };
    }
    // SAFETY: see the module note.
    unsafe {
        let h = push(r, &mut (*r).headers_in.headers, key, value)?;
        let hi = &mut (*r).headers_in;
        match lowercase(key, &mut [0; 32]).as_ref() {
            b"content-length" if hi.content_length.is_null() => {
                hi.content_length = h;
                hi.content_length_n = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(-1);
            }
            b"host" if hi.host.is_null() => hi.host = h,
            b"user-agent" if hi.user_agent.is_null() => hi.user_agent = h,
            b"referer" if hi.referer.is_null() => hi.referer = h,
            _ => {}
        }
    }
    Ok(())
}

pub unsafe fn replace_request(r: *mut ngx_http_request_t, key: &[u8], value: &[u8]) -> Result<(), Status> {
    if key.starts_with(b":") {
        // SAFETY: forwarded.
        return unsafe { set_request_pseudo(r, &key.to_ascii_lowercase(), value) };
    }
    // SAFETY: see the module note.
    unsafe {
        let found = elements(&mut (*r).headers_in.headers).find(|h| key_is(&**h, key));
        match found {
            Some(h) => {
                // Later duplicates go; the first keeps its place (and shortcuts).
                let first = ((*h).key, (*h).lowcase_key, (*h).hash);
                remove_request(r, key);
                let h = push(r, &mut (*r).headers_in.headers, key, value)?;
                (*h).key = first.0;
                let hi = &mut (*r).headers_in;
                match lowercase(key, &mut [0; 32]).as_ref() {
                    b"content-length" => {
                        hi.content_length = h;
                        hi.content_length_n =
                            std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(-1);
                    }
                    b"host" => hi.host = h,
                    b"user-agent" => hi.user_agent = h,
                    b"referer" => hi.referer = h,
                    b"transfer-encoding" => hi.transfer_encoding = h,
                    _ => {}
                }
                Ok(())
            }
            None => add_request(r, key, value),
        }
    }
}

pub unsafe fn remove_request_header(r: *mut ngx_http_request_t, key: &[u8]) -> Result<(), Status> {
    if key.starts_with(b":") {
        return Err(Status::BadArgument);
    }
    // SAFETY: forwarded.
    unsafe { remove_request(r, key) };
    Ok(())
}

pub unsafe fn set_request_pairs(r: *mut ngx_http_request_t, pairs: &[Pair]) -> Result<(), Status> {
    // SAFETY: see the module note.
    unsafe {
        let names: Vec<Vec<u8>> = elements(&mut (*r).headers_in.headers).map(|h| bytes(&(*h).key)).collect();
        for n in names {
            remove_request(r, &n);
        }
        for (k, v) in pairs {
            if k.starts_with(b":") {
                set_request_pseudo(r, &k.to_ascii_lowercase(), v)?;
            } else {
                add_request(r, k, v)?;
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ response

pub unsafe fn response_pairs(r: *mut ngx_http_request_t) -> Vec<Pair> {
    // SAFETY: see the module note.
    unsafe {
        let ho = &mut (*r).headers_out;
        let mut pairs = vec![(b":status".to_vec(), ho.status.to_string().into_bytes())];
        if ho.content_type.len > 0 {
            let mut ct = bytes(&ho.content_type);
            if ho.charset.len > 0 && !ct.windows(8).any(|w| w.eq_ignore_ascii_case(b"charset=")) {
                ct.extend_from_slice(b"; charset=");
                ct.extend_from_slice(ho.charset.as_bytes());
            }
            pairs.push((b"content-type".to_vec(), ct));
        }
        if ho.content_length.is_null() && ho.content_length_n >= 0 {
            pairs.push((b"content-length".to_vec(), ho.content_length_n.to_string().into_bytes()));
        }
        for h in elements(&mut ho.headers) {
            if (*h).hash != 0 {
                pairs.push((bytes(&(*h).key), bytes(&(*h).value)));
            }
        }
        pairs
    }
}

/// How many pairs [`response_pairs`] would give, without building them (no
/// allocation, no number formatting): `num_headers` of `on_response_headers`.
pub unsafe fn response_pair_count(r: *mut ngx_http_request_t) -> usize {
    // SAFETY: see the module note.
    unsafe {
        let ho = &mut (*r).headers_out;
        let listed = elements(&mut ho.headers).filter(|h| (**h).hash != 0).count();
        1 + usize::from(ho.content_type.len > 0)
            + usize::from(ho.content_length.is_null() && ho.content_length_n >= 0)
            + listed
    }
}

/// One response header's value without building the whole map. The headers
/// nginx keeps outside the list take the map's path, so both agree.
pub unsafe fn response_value(r: *mut ngx_http_request_t, key: &[u8]) -> Option<Vec<u8>> {
    if key.starts_with(b":") || key.eq_ignore_ascii_case(b"content-type") || key.eq_ignore_ascii_case(b"content-length")
    {
        // SAFETY: forwarded.
        return proxy_wasm_host::host::value_in_pairs(&unsafe { response_pairs(r) }, key);
    }
    // SAFETY: see the module note.
    unsafe { joined_value(&mut (*r).headers_out.headers, key, true) }
}

macro_rules! out_shortcuts {
    ($ho:expr) => {
        [
            &mut $ho.server,
            &mut $ho.date,
            &mut $ho.content_length,
            &mut $ho.content_encoding,
            &mut $ho.location,
            &mut $ho.refresh,
            &mut $ho.last_modified,
            &mut $ho.content_range,
            &mut $ho.accept_ranges,
            &mut $ho.www_authenticate,
            &mut $ho.expires,
            &mut $ho.etag,
        ]
    };
}

/// `ngx_http_clear_content_length`.
pub unsafe fn clear_content_length(r: *mut ngx_http_request_t) {
    // SAFETY: see the module note.
    unsafe {
        let ho = &mut (*r).headers_out;
        ho.content_length_n = -1;
        if !ho.content_length.is_null() {
            (*ho.content_length).hash = 0;
            ho.content_length = ptr::null_mut();
        }
    }
}

unsafe fn remove_response(r: *mut ngx_http_request_t, key: &[u8]) {
    // SAFETY: see the module note.
    unsafe {
        match lowercase(key, &mut [0; 32]).as_ref() {
            b"content-type" => {
                let ho = &mut (*r).headers_out;
                ho.content_type = ngx_str_t { len: 0, data: ptr::null_mut() };
                ho.content_type_len = 0;
                ho.charset = ngx_str_t { len: 0, data: ptr::null_mut() };
                ho.content_type_lowcase = ptr::null_mut();
                return;
            }
            b"content-length" => {
                clear_content_length(r);
                return;
            }
            // nginx's header filter writes a Last-Modified of its own from
            // `last_modified_time` once the header's element is gone (the
            // proxy module sets both from the upstream's header), so removing
            // it clears the time too, as ngx_http_clear_last_modified does.
            b"last-modified" => (*r).headers_out.last_modified_time = -1,
            _ => {}
        }
        let ho = &mut (*r).headers_out;
        for h in elements(&mut ho.headers) {
            if (*h).hash != 0 && key_is(&*h, key) {
                (*h).hash = 0;
                for p in out_shortcuts!(ho) {
                    if *p == h {
                        *p = ptr::null_mut();
                    }
                }
            }
        }
    }
}

unsafe fn set_response_special(r: *mut ngx_http_request_t, key: &[u8], value: &[u8]) -> Result<bool, Status> {
    // SAFETY: see the module note.
    unsafe {
        let ho = &mut (*r).headers_out;
        match lowercase(key, &mut [0; 32]).as_ref() {
            b":status" => {
                let status: ngx_uint_t = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .filter(|s| (100..1000).contains(s))
                    .ok_or(Status::BadArgument)?;
                ho.status = status;
                ho.status_line = ngx_str_t { len: 0, data: ptr::null_mut() };
                Ok(true)
            }
            b"content-type" => {
                let s = pstr(r, value)?;
                ho.content_type = s;
                ho.content_type_len = value.iter().position(|b| *b == b';').unwrap_or(value.len());
                ho.charset = ngx_str_t { len: 0, data: ptr::null_mut() };
                ho.content_type_lowcase = ptr::null_mut();
                Ok(true)
            }
            b"content-length" => {
                let n: i64 =
                    std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok()).ok_or(Status::BadArgument)?;
                clear_content_length(r);
                (*r).headers_out.content_length_n = n as off_t;
                Ok(true)
            }
            k if k.starts_with(b":") => Err(Status::BadArgument),
            _ => Ok(false),
        }
    }
}

pub unsafe fn add_response(r: *mut ngx_http_request_t, key: &[u8], value: &[u8]) -> Result<(), Status> {
    // SAFETY: see the module note.
    unsafe {
        if set_response_special(r, key, value)? {
            return Ok(());
        }
        push(r, &mut (*r).headers_out.headers, key, value)?;
    }
    Ok(())
}

pub unsafe fn replace_response(r: *mut ngx_http_request_t, key: &[u8], value: &[u8]) -> Result<(), Status> {
    // SAFETY: see the module note.
    unsafe {
        if set_response_special(r, key, value)? {
            return Ok(());
        }
        let mut first = true;
        let mut found = false;
        for h in elements(&mut (*r).headers_out.headers) {
            if (*h).hash != 0 && key_is(&*h, key) {
                found = true;
                if first {
                    (*h).value = pstr(r, value)?;
                    first = false;
                } else {
                    (*h).hash = 0;
                }
            }
        }
        if !found {
            push(r, &mut (*r).headers_out.headers, key, value)?;
        }
    }
    Ok(())
}

pub unsafe fn remove_response_header(r: *mut ngx_http_request_t, key: &[u8]) -> Result<(), Status> {
    if key.starts_with(b":") {
        return Err(Status::BadArgument);
    }
    // SAFETY: forwarded.
    unsafe { remove_response(r, key) };
    Ok(())
}

pub unsafe fn set_response_pairs(r: *mut ngx_http_request_t, pairs: &[Pair]) -> Result<(), Status> {
    // SAFETY: see the module note.
    unsafe {
        for (k, _) in response_pairs(r) {
            if !k.starts_with(b":") {
                remove_response(r, &k);
            }
        }
        for (k, v) in pairs {
            add_response(r, k, v)?;
        }
    }
    Ok(())
}

/// Every list header of the response goes (for a local response in the response phase).
pub unsafe fn clear_response(r: *mut ngx_http_request_t) {
    // SAFETY: see the module note.
    unsafe {
        for (k, _) in response_pairs(r) {
            if !k.starts_with(b":") {
                remove_response(r, &k);
            }
        }
    }
}
