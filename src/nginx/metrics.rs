//! The plugins' metrics in Prometheus text format (`proxy_wasm_metrics`).

use crate::abi::MetricType;
use crate::metrics::{MetricSnapshot, HISTOGRAM_BOUNDS};

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
    render(&crate::metrics::process_metrics().snapshot())
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
