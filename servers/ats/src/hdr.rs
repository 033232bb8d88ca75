//! Header maps of Traffic Server messages as Proxy-Wasm pairs, with the
//! pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`, `:status`)
//! mapped onto the request line, URL, Host header and status.

use std::os::raw::{c_char, c_int};

use super::sys::*;
use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::Status;

/// A message header: a buffer and the location of its HTTP header.
#[derive(Clone, Copy)]
pub struct Hdr {
    pub buf: TSMBuffer,
    pub loc: TSMLoc,
    pub is_request: bool,
}

/// The `len` bytes at `ptr` (empty for NULL or a length <= 0).
///
/// # Safety
/// Unless NULL, `ptr` is valid for reads of `len` bytes while the slice is used.
unsafe fn bytes<'a>(ptr: *const c_char, len: c_int) -> &'a [u8] {
    if ptr.is_null() || len <= 0 {
        &[]
    } else {
        // SAFETY: Traffic Server returned `ptr` valid for `len` bytes; the
        // caller copies before calling Traffic Server again.
        unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) }
    }
}

impl Hdr {
    fn url(&self) -> Option<TSMLoc> {
        let mut url: TSMLoc = TS_NULL_MLOC;
        // SAFETY: buf/loc are a live request header owned by the transaction.
        let r = unsafe { TSHttpHdrUrlGet(self.buf, self.loc, &mut url) };
        (r == TS_SUCCESS && !url.is_null()).then_some(url)
    }

    fn release(&self, loc: TSMLoc) {
        // SAFETY: `loc` was obtained from this buffer and is released once.
        unsafe { TSHandleMLocRelease(self.buf, self.loc, loc) };
    }

    fn method(&self) -> Vec<u8> {
        let mut len = 0;
        // SAFETY: live request header; the result is copied at once.
        unsafe { bytes(TSHttpHdrMethodGet(self.buf, self.loc, &mut len), len).to_vec() }
    }

    /// `:path`: "/" + path, plus "?" + query when there is one.
    fn path(&self) -> Vec<u8> {
        let Some(url) = self.url() else { return b"/".to_vec() };
        let mut out = b"/".to_vec();
        let (mut plen, mut qlen) = (0, 0);
        // SAFETY: `url` is a live URL of this buffer; results are copied at once.
        unsafe {
            out.extend_from_slice(bytes(TSUrlPathGet(self.buf, url, &mut plen), plen));
            let q = bytes(TSUrlHttpQueryGet(self.buf, url, &mut qlen), qlen);
            if !q.is_empty() {
                out.push(b'?');
                out.extend_from_slice(q);
            }
        }
        self.release(url);
        out
    }

    fn scheme(&self) -> Vec<u8> {
        let Some(url) = self.url() else { return b"http".to_vec() };
        let mut len = 0;
        // SAFETY: as in `path`.
        let s = unsafe { bytes(TSUrlSchemeGet(self.buf, url, &mut len), len).to_vec() };
        self.release(url);
        if s.is_empty() {
            b"http".to_vec()
        } else {
            s
        }
    }

    fn url_host(&self) -> Vec<u8> {
        let Some(url) = self.url() else { return Vec::new() };
        let mut len = 0;
        // SAFETY: as in `path`.
        let h = unsafe { bytes(TSUrlHostGet(self.buf, url, &mut len), len).to_vec() };
        self.release(url);
        h
    }

    pub fn status(&self) -> u32 {
        // SAFETY: live response header.
        unsafe { TSHttpHdrStatusGet(self.buf, self.loc) as u32 }
    }

    /// The pseudo-headers of this message, in the order Envoy lists them.
    fn pseudo(&self) -> Vec<Pair> {
        if self.is_request {
            let authority = self.value(b"host").unwrap_or_else(|| self.url_host());
            vec![
                (b":method".to_vec(), self.method()),
                (b":scheme".to_vec(), self.scheme()),
                (b":authority".to_vec(), authority),
                (b":path".to_vec(), self.path()),
            ]
        } else {
            vec![(b":status".to_vec(), self.status().to_string().into_bytes())]
        }
    }

    /// One pseudo-header, as `pseudo` lists it, reading only what it needs
    /// (a property such as `request.path` takes one URL call, not all four).
    fn pseudo_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        match (key, self.is_request) {
            (b":method", true) => Some(self.method()),
            (b":scheme", true) => Some(self.scheme()),
            (b":authority", true) => Some(self.value(b"host").unwrap_or_else(|| self.url_host())),
            (b":path", true) => Some(self.path()),
            (b":status", false) => Some(self.status().to_string().into_bytes()),
            _ => None,
        }
    }

    /// The request's method is HEAD (its response has no body).
    pub fn is_head(&self) -> bool {
        let mut len = 0;
        // SAFETY: live request header; the bytes are compared at once.
        unsafe { bytes(TSHttpHdrMethodGet(self.buf, self.loc, &mut len), len) }.eq_ignore_ascii_case(b"HEAD")
    }

    /// How many pairs `pairs()` would return, without copying them.
    pub fn pair_count(&self) -> usize {
        let pseudo = if self.is_request { 4 } else { 1 };
        // SAFETY: live header.
        pseudo + unsafe { TSMimeHdrFieldsCount(self.buf, self.loc) }.max(0) as usize
    }

    /// Every field as one pair (duplicate fields stay separate), pseudo-headers first.
    pub fn pairs(&self) -> Vec<Pair> {
        let mut out = self.pseudo();
        // SAFETY: live header; each field handle is released after use.
        unsafe {
            let n = TSMimeHdrFieldsCount(self.buf, self.loc);
            for i in 0..n {
                let field = TSMimeHdrFieldGet(self.buf, self.loc, i);
                if field.is_null() {
                    continue;
                }
                let (mut nlen, mut vlen) = (0, 0);
                let name =
                    bytes(TSMimeHdrFieldNameGet(self.buf, self.loc, field, &mut nlen), nlen).to_ascii_lowercase();
                let value =
                    bytes(TSMimeHdrFieldValueStringGet(self.buf, self.loc, field, -1, &mut vlen), vlen).to_vec();
                self.release(field);
                out.push((name, value));
            }
        }
        out
    }

    fn find(&self, key: &[u8]) -> TSMLoc {
        // SAFETY: live header; `key` outlives the call.
        unsafe { TSMimeHdrFieldFind(self.buf, self.loc, key.as_ptr() as *const c_char, key.len() as c_int) }
    }

    /// A header's values (all duplicates, joined by ","), or a pseudo-header.
    pub fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        if key.starts_with(b":") {
            return self.pseudo_value(key);
        }
        let mut field = self.find(key);
        // One allocation for the usual single field; duplicates are appended to it.
        let mut out: Option<Vec<u8>> = None;
        while !field.is_null() {
            let mut len = 0;
            // SAFETY: `field` is a live field of this header, released below;
            // its value is copied before the next call into Traffic Server.
            unsafe {
                let v = bytes(TSMimeHdrFieldValueStringGet(self.buf, self.loc, field, -1, &mut len), len);
                match out.as_mut() {
                    None => out = Some(v.to_vec()),
                    Some(o) => {
                        o.push(b',');
                        o.extend_from_slice(v);
                    }
                }
                let next = TSMimeHdrFieldNextDup(self.buf, self.loc, field);
                self.release(field);
                field = next;
            }
        }
        out
    }

    fn set_pseudo(&self, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let ptr = value.as_ptr() as *const c_char;
        let len = value.len() as c_int;
        // SAFETY: live header and URL handles; `value` outlives each call.
        unsafe {
            match (key, self.is_request) {
                (b":method", true) => (TSHttpHdrMethodSet(self.buf, self.loc, ptr, len) == TS_SUCCESS)
                    .then_some(())
                    .ok_or(Status::BadArgument),
                (b":path", true) => {
                    let url = self.url().ok_or(Status::BadArgument)?;
                    let v = value.strip_prefix(b"/").unwrap_or(value);
                    let (path, query) = match v.iter().position(|b| *b == b'?') {
                        Some(i) => (&v[..i], &v[i + 1..]),
                        None => (v, &[][..]),
                    };
                    TSUrlPathSet(self.buf, url, path.as_ptr() as *const c_char, path.len() as c_int);
                    TSUrlHttpQuerySet(self.buf, url, query.as_ptr() as *const c_char, query.len() as c_int);
                    self.release(url);
                    Ok(())
                }
                (b":authority", true) => self.replace(b"host", value),
                (b":scheme", true) => {
                    let url = self.url().ok_or(Status::BadArgument)?;
                    TSUrlSchemeSet(self.buf, url, ptr, len);
                    self.release(url);
                    Ok(())
                }
                (b":status", false) => {
                    let code: i32 =
                        std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).ok_or(Status::BadArgument)?;
                    TSHttpHdrStatusSet(self.buf, self.loc, code as TSHttpStatus);
                    let reason = TSHttpHdrReasonLookup(code as TSHttpStatus);
                    if !reason.is_null() {
                        TSHttpHdrReasonSet(self.buf, self.loc, reason, libc::strlen(reason) as c_int);
                    }
                    Ok(())
                }
                _ => Err(Status::BadArgument),
            }
        }
    }

    pub fn add(&self, key: &[u8], value: &[u8]) -> Result<(), Status> {
        if key.starts_with(b":") {
            return self.set_pseudo(key, value);
        }
        let mut field: TSMLoc = TS_NULL_MLOC;
        // SAFETY: live header; the new field is appended then released.
        unsafe {
            if TSMimeHdrFieldCreateNamed(
                self.buf,
                self.loc,
                key.as_ptr() as *const c_char,
                key.len() as c_int,
                &mut field,
            ) != TS_SUCCESS
            {
                return Err(Status::BadArgument);
            }
            TSMimeHdrFieldValueStringInsert(
                self.buf,
                self.loc,
                field,
                -1,
                value.as_ptr() as *const c_char,
                value.len() as c_int,
            );
            TSMimeHdrFieldAppend(self.buf, self.loc, field);
            self.release(field);
        }
        Ok(())
    }

    pub fn remove(&self, key: &[u8]) -> Result<(), Status> {
        if key.starts_with(b":") {
            return Err(Status::BadArgument);
        }
        // One lookup by name, then along the duplicates: each lookup scans
        // the header, and W4-style filters remove many names per request.
        let mut field = self.find(key);
        while !field.is_null() {
            // SAFETY: `field` is a live field of this header; its next
            // duplicate is taken before it is destroyed (destroying one field
            // leaves the others, and their handles, in place).
            unsafe {
                let next = TSMimeHdrFieldNextDup(self.buf, self.loc, field);
                TSMimeHdrFieldDestroy(self.buf, self.loc, field);
                self.release(field);
                field = next;
            }
        }
        Ok(())
    }

    pub fn replace(&self, key: &[u8], value: &[u8]) -> Result<(), Status> {
        if key.starts_with(b":") {
            return self.set_pseudo(key, value);
        }
        self.remove(key)?;
        self.add(key, value)
    }

    /// Replaces every field; pseudo-headers in `pairs` set the request line/status.
    pub fn set_all(&self, pairs: &[Pair]) -> Result<(), Status> {
        // An unchanged scheme is left alone: setting it on the origin-form URL of a server
        // request would make Traffic Server send it in absolute form.
        let scheme = self.is_request.then(|| self.scheme());
        // SAFETY: live header; fields are destroyed from the end so indexes stay valid.
        unsafe {
            let n = TSMimeHdrFieldsCount(self.buf, self.loc);
            for i in (0..n).rev() {
                let field = TSMimeHdrFieldGet(self.buf, self.loc, i);
                if !field.is_null() {
                    TSMimeHdrFieldDestroy(self.buf, self.loc, field);
                    self.release(field);
                }
            }
        }
        for (k, v) in pairs {
            if k.as_slice() == b":scheme" && scheme.as_ref() == Some(v) {
                continue;
            }
            if k.starts_with(b":") {
                self.set_pseudo(k, v)?;
            } else {
                self.add(k, v)?;
            }
        }
        Ok(())
    }
}

/// How the client frames its request body, as received (before any plugin
/// touched the headers): Content-Length and Transfer-Encoding.
#[derive(Clone, Default)]
pub struct Framing {
    pub content_length: Option<Vec<u8>>,
    pub transfer_encoding: Option<Vec<u8>>,
}

impl Framing {
    pub fn read(h: &Hdr) -> Framing {
        Framing { content_length: h.value(b"content-length"), transfer_encoding: h.value(b"transfer-encoding") }
    }

    /// Neither Content-Length nor Transfer-Encoding: nothing to restore.
    pub fn is_empty(&self) -> bool {
        self.content_length.is_none() && self.transfer_encoding.is_none()
    }

    /// Puts Transfer-Encoding / Content-Length back on `h` as they were
    /// received, if a plugin changed them.
    pub fn restore(&self, h: &Hdr) -> Result<(), Status> {
        if let Some(te) = &self.transfer_encoding {
            if h.value(b"transfer-encoding").as_ref() != Some(te) {
                h.replace(b"transfer-encoding", te)?;
            }
        } else if let Some(cl) = &self.content_length {
            if h.value(b"content-length").as_ref() != Some(cl) {
                h.replace(b"content-length", cl)?;
            }
        }
        Ok(())
    }

    pub fn chunked(&self) -> bool {
        self.transfer_encoding.as_ref().is_some_and(|v| v.to_ascii_lowercase().windows(7).any(|w| w == b"chunked"))
    }

    /// No body follows the request headers.
    pub fn no_body(&self) -> bool {
        let length = self
            .content_length
            .as_ref()
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        !self.chunked() && length == 0
    }
}
