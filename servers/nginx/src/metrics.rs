//! The plugins' metrics in Prometheus text format (`proxy_wasm_metrics`).

use std::ffi::{c_char, c_void};
use std::ptr;

use ngx::ffi::{ngx_command_t, ngx_conf_t};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use proxy_wasm_host::abi::MetricType;
use proxy_wasm_host::metrics::{MetricSnapshot, HISTOGRAM_BOUNDS};

/// Prometheus names keep letters, digits and `_`; anything else becomes `_`.
pub fn metric_name(name: &str) -> String {
    let mut s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// Renders metrics (already summed over workers) as Prometheus text.
pub fn render(metrics: &[MetricSnapshot]) -> String {
    let mut out = String::new();
    for m in metrics {
        let name = metric_name(&m.name);
        match m.kind {
            MetricType::Counter => out.push_str(&format!("# TYPE {name} counter\n{name} {}\n", m.value)),
            MetricType::Gauge => out.push_str(&format!("# TYPE {name} gauge\n{name} {}\n", m.value)),
            MetricType::Histogram => {
                out.push_str(&format!("# TYPE {name} histogram\n"));
                for (i, count) in m.buckets.iter().enumerate() {
                    let le = HISTOGRAM_BOUNDS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                    out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {count}\n"));
                }
                out.push_str(&format!("{name}_sum {}\n{name}_count {}\n", m.sum, m.count));
            }
        }
    }
    out
}

/// The text served by `proxy_wasm_metrics`.
pub fn prometheus_text() -> String {
    render(&proxy_wasm_host::metrics::process_metrics().snapshot())
}

/// `proxy_wasm_metrics`: the content handler that answers with [`prometheus_text`].
pub unsafe extern "C" fn metrics_handler(r: *mut ngx::ffi::ngx_http_request_t) -> ngx::ffi::ngx_int_t {
    use ngx::ffi::*;
    let out = std::panic::catch_unwind(|| {
        let text = prometheus_text();
        // SAFETY: live request in the content phase.
        unsafe {
            let rc = ngx_http_discard_request_body(r);
            if rc != NGX_OK as ngx_int_t {
                return rc;
            }
            (*r).headers_out.status = 200;
            let _ = super::headers::add_response(r, b"content-type", b"text/plain; version=0.0.4");
            (*r).headers_out.content_length_n = text.len() as off_t;
            super::local::send_response(r, text.as_bytes())
        }
    });
    out.unwrap_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t)
}

/// `proxy_wasm_metrics`: this location answers with the metrics.
pub unsafe extern "C" fn proxy_wasm_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    super::conf::catch(|| {
        // SAFETY: `conf` is this module's LocConf; `cf->ctx` is the location's
        // ngx_http_conf_ctx_t, whose loc_conf has the core module's slot.
        unsafe {
            let loc = &mut *(conf as *mut super::conf::LocConf);
            loc.metrics = true;
            let Some(clcf) = NgxHttpCoreModule::location_conf_mut(&*cf) else {
                return super::conf::conf_error(cf, "has no location to serve");
            };
            clcf.handler = Some(metrics_handler);
        }
        ptr::null_mut()
    })
}
