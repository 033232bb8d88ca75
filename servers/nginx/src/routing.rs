//! The Otoroshi routing steps as NGINX variables, for `map`, `if` and `proxy_pass`:
//!
//! - `$proxy_wasm_match_<id>`: `1` when the entity's `matches_route` (MatchRoute) matches the
//!   request, else empty;
//! - `$proxy_wasm_route_<id>`: `host:port` of the first target of the route the entity's
//!   `find_route` (Router) found (`proxy_pass http://$proxy_wasm_route_<id>;`), else empty
//!   (not found).
//!
//! `<id>` is the entity's id with every character other than a letter, a digit or `_` written
//! `_` (nginx variable names have no `-`), compared without case (nginx lowercases them). Each is
//! evaluated at most once per request (nginx caches the value); a trap of the plugin leaves the
//! variable empty and is logged. The entity need not be in any chain, only in
//! `proxy_wasm_config`.

use ngx::ffi::*;

use super::base::log;
use super::headers::request_pairs;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::extism::routing;
use proxy_wasm_host::chain::EntityLink;
use proxy_wasm_host::extism::steps::stream::request_parts_from;

const MATCH_PREFIX: &[u8] = b"proxy_wasm_match_";
const ROUTE_PREFIX: &[u8] = b"proxy_wasm_route_";

/// Registers the two prefix variables (the module's preconfiguration).
pub unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    let r = std::panic::catch_unwind(|| {
        let variables: [(&[u8], ngx_http_get_variable_pt); 2] =
            [(MATCH_PREFIX, Some(match_variable)), (ROUTE_PREFIX, Some(route_variable))];
        for (prefix, handler) in variables {
            let mut name = ngx_str_t { len: prefix.len(), data: prefix.as_ptr() as *mut u_char };
            // SAFETY: configuration time; nginx copies the name into the configuration pool.
            let v = unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_PREFIX as ngx_uint_t) };
            if v.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            // SAFETY: the variable nginx just made.
            unsafe { (*v).get_handler = handler };
        }
        NGX_OK as ngx_int_t
    });
    r.unwrap_or(NGX_ERROR as ngx_int_t)
}

fn str_bytes(s: &ngx_str_t) -> &[u8] {
    if s.data.is_null() || s.len == 0 {
        return &[];
    }
    // SAFETY: an nginx string: `len` bytes at `data`.
    unsafe { std::slice::from_raw_parts(s.data, s.len) }
}

/// The entity a variable names (the text after its prefix), in this worker's plugins.
fn entity_named(suffix: &[u8]) -> Option<std::sync::Arc<EntityLink>> {
    let wanted = String::from_utf8_lossy(suffix).to_ascii_lowercase();
    super::worker::plugin_set()?.entities.iter().find(|e| routing::variable_name(&e.plugin.id) == wanted).cloned()
}

/// Sets `v` to `value` copied into the request's pool (`None`: not found).
///
/// # Safety
/// `r` and `v` are nginx's, live.
unsafe fn set_value(r: *mut ngx_http_request_t, v: *mut ngx_http_variable_value_t, value: Option<&[u8]>) -> ngx_int_t {
    // SAFETY: see above.
    unsafe {
        let v = &mut *v;
        v.set_no_cacheable(0);
        v.set_escape(0);
        let Some(value) = value else {
            v.set_not_found(1);
            return NGX_OK as ngx_int_t;
        };
        let data =
            if value.is_empty() { std::ptr::null_mut() } else { ngx_pnalloc((*r).pool, value.len()) as *mut u_char };
        if data.is_null() && !value.is_empty() {
            return NGX_ERROR as ngx_int_t;
        }
        if !value.is_empty() {
            std::ptr::copy_nonoverlapping(value.as_ptr(), data, value.len());
        }
        v.data = data;
        v.set_len(value.len() as u32);
        v.set_valid(1);
        v.set_not_found(0);
        NGX_OK as ngx_int_t
    }
}

/// What a variable's handler needs: the entity it names and the request as the steps read it.
///
/// # Safety
/// `r` is a live request, `data` the variable's name (an `ngx_str_t`, as nginx passes it to a
/// prefix variable's handler).
unsafe fn lookup(
    r: *mut ngx_http_request_t,
    data: usize,
    prefix: &[u8],
) -> Option<(std::sync::Arc<EntityLink>, proxy_wasm_host::extism::steps::view::RequestParts)> {
    // SAFETY: see above.
    let name = unsafe { str_bytes(&*(data as *const ngx_str_t)) };
    let suffix = name.get(prefix.len()..).filter(|s| !s.is_empty())?;
    let Some(entity) = entity_named(suffix) else {
        log(
            LogLevel::Warn,
            &format!(
                "[proxy_wasm] ${}: no Otoroshi entity of proxy_wasm_config has this id (written with `_` for \
                 characters other than letters, digits and `_`)",
                String::from_utf8_lossy(name)
            ),
        );
        return None;
    };
    // SAFETY: live request and connection.
    let request = unsafe {
        let pairs = request_pairs(r);
        let protocol = str_bytes(&(*r).http_protocol).to_vec();
        let address = str_bytes(&(*(*r).connection).addr_text).to_vec();
        request_parts_from(&pairs, Some(&protocol), Some(&address), routing::request_id())
    };
    Some((entity, request))
}

unsafe extern "C" fn match_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    data: usize,
) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: nginx calls a prefix variable's handler with its name as `data`.
        let Some((entity, request)) = (unsafe { lookup(r, data, MATCH_PREFIX) }) else {
            // SAFETY: nginx's request and value.
            return unsafe { set_value(r, v, Some(b"")) };
        };
        let matched = routing::matches_route(&entity, &request).unwrap_or_else(|e| {
            log(LogLevel::Error, &format!("[proxy_wasm] {e}"));
            false
        });
        // SAFETY: nginx's request and value.
        unsafe { set_value(r, v, Some(if matched { b"1" } else { b"" })) }
    });
    out.unwrap_or_else(|_| {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in $proxy_wasm_match_");
        NGX_ERROR as ngx_int_t
    })
}

unsafe extern "C" fn route_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    data: usize,
) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: nginx calls a prefix variable's handler with its name as `data`.
        let Some((entity, request)) = (unsafe { lookup(r, data, ROUTE_PREFIX) }) else {
            // SAFETY: nginx's request and value.
            return unsafe { set_value(r, v, None) };
        };
        let target = routing::find_route(&entity, &request).unwrap_or_else(|e| {
            log(LogLevel::Error, &format!("[proxy_wasm] {e}"));
            None
        });
        let value = target.map(|t| format!("{}:{}", t.hostname, t.port));
        // SAFETY: nginx's request and value.
        unsafe { set_value(r, v, value.as_deref().map(str::as_bytes)) }
    });
    out.unwrap_or_else(|_| {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in $proxy_wasm_route_");
        NGX_ERROR as ngx_int_t
    })
}
