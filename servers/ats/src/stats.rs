//! Plugin metrics as Traffic Server stats (`proxy_wasm.<metric name>`),
//! readable with `traffic_ctl metric get` and `stats_over_http`. Counters and
//! gauges map to one stat; a histogram to `<name>.count` and `<name>.sum`.
//!
//! The values live in the core's process-wide registry; they are copied into
//! Traffic Server's stats at most every 200 ms, when a transaction closes or a
//! tick runs (metrics only change while plugins run).

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::sys::*;
use proxy_wasm_host::abi::MetricType;
use proxy_wasm_host::metrics::process_metrics;

const SYNC_INTERVAL_MS: u64 = 200;

static STAT_IDS: LazyLock<Mutex<HashMap<String, std::os::raw::c_int>>> = LazyLock::new(Default::default);
static LAST_SYNC_MS: AtomicU64 = AtomicU64::new(0);

/// Stat names keep letters, digits, `_`, `-` and `.`; anything else becomes `_`.
pub fn stat_name(metric: &str) -> String {
    let clean: String =
        metric.chars().map(|c| if c.is_ascii_alphanumeric() || "_-.".contains(c) { c } else { '_' }).collect();
    format!("proxy_wasm.{clean}")
}

fn set(ids: &mut HashMap<String, std::os::raw::c_int>, name: String, value: i64) {
    let id = match ids.get(&name) {
        Some(id) => *id,
        None => {
            let Ok(c) = CString::new(name.clone()) else { return };
            let mut id = -1;
            // SAFETY: `c` is a NUL-terminated name that outlives the calls.
            unsafe {
                if TSStatFindName(c.as_ptr(), &mut id) != TS_SUCCESS {
                    id = TSStatCreate(c.as_ptr(), TS_RECORDDATATYPE_INT, TS_STAT_NON_PERSISTENT, TS_STAT_SYNC_SUM);
                }
            }
            if id < 0 {
                return;
            }
            ids.insert(name, id);
            id
        }
    };
    // SAFETY: `id` is a stat created or found above.
    unsafe { TSStatIntSet(id, value) };
}

/// Copies the metrics into stats, unless that was done very recently.
pub fn sync_soon() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let last = LAST_SYNC_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < SYNC_INTERVAL_MS
        || LAST_SYNC_MS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    sync();
}

pub fn sync() {
    let snapshot = process_metrics().snapshot();
    let mut ids = STAT_IDS.lock().unwrap_or_else(|p| p.into_inner());
    for m in snapshot {
        match m.kind {
            MetricType::Counter | MetricType::Gauge => set(&mut ids, stat_name(&m.name), m.value),
            MetricType::Histogram => {
                set(&mut ids, format!("{}.count", stat_name(&m.name)), m.count as i64);
                set(&mut ids, format!("{}.sum", stat_name(&m.name)), m.sum as i64);
            }
        }
    }
}
