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
