//! Plugin metrics: counters, gauges and histograms, process-wide and keyed by
//! name, so every instance of a plugin adds to the same series. Servers read
//! them with [`Metrics::snapshot`] to export them (ATS stats, Prometheus text).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

/// Metrics as the hostcalls and exporters see them. [`Metrics`] is the
/// in-process registry; the NGINX module keeps them in a shared-memory zone
/// (`shm_store`), so that every worker adds to the same series.
pub trait MetricStore: Send + Sync {
    /// Defines a metric for the plugins of `vm_id`, or returns the id of the
    /// one already defined with that name (by any VM). Redefining a name with
    /// another type is BadArgument; a new name past `max_metrics` metrics
    /// first defined by `vm_id` is TooManyMetrics.
    fn define_within(&self, kind: MetricType, name: &str, vm_id: &str, max_metrics: u32) -> Result<u32, SharedError>;
    /// [`MetricStore::define_within`] without a cap.
    fn define(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        self.define_within(kind, name, "", u32::MAX).map_err(|e| e.status())
    }
    /// Adds to a counter (non-negative only) or a gauge; BAD_ARGUMENT for a histogram.
    fn increment(&self, id: u32, delta: i64) -> Result<(), Status>;
    /// Sets a counter or gauge to `value`, or records a histogram sample.
    fn record(&self, id: u32, value: u64) -> Result<(), Status>;
    /// A counter's or gauge's value; a histogram has no single value (BAD_ARGUMENT).
    fn get(&self, id: u32) -> Result<i64, Status>;
    fn snapshot(&self) -> Vec<MetricSnapshot>;
}

impl MetricStore for Metrics {
    fn define_within(&self, kind: MetricType, name: &str, vm_id: &str, max_metrics: u32) -> Result<u32, SharedError> {
        Metrics::define_within(self, kind, name, vm_id, max_metrics)
    }
    fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        Metrics::increment(self, id, delta)
    }
    fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        Metrics::record(self, id, value)
    }
    fn get(&self, id: u32) -> Result<i64, Status> {
        Metrics::get(self, id)
    }
    fn snapshot(&self) -> Vec<MetricSnapshot> {
        Metrics::snapshot(self)
    }
}

use crate::abi::{MetricType, Status};
use crate::shared::SharedError;

/// Histogram bucket upper bounds (inclusive), Prometheus-style; the last bucket is +Inf.
pub const HISTOGRAM_BOUNDS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

struct Metric {
    name: String,
    kind: MetricType,
    value: AtomicI64,
    count: AtomicU64,
    sum: AtomicU64,
    buckets: [AtomicU64; HISTOGRAM_BOUNDS.len() + 1],
}

/// A read-out of one metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSnapshot {
    pub id: u32,
    pub name: String,
    pub kind: MetricType,
    /// Counter or gauge value; 0 for histograms.
    pub value: i64,
    /// Histogram sample count, sum, and cumulative bucket counts (last is +Inf).
    pub count: u64,
    pub sum: u64,
    pub buckets: Vec<u64>,
}

#[derive(Default)]
pub struct Metrics {
    metrics: RwLock<Vec<Arc<Metric>>>,
    by_name: RwLock<HashMap<String, u32>>,
    /// Metrics each vm_id defined first (for `max_metrics`).
    per_vm: Mutex<HashMap<String, u32>>,
}

impl Metrics {
    /// Defines a metric, or returns the id of the one already defined with that
    /// name. Redefining a name with another type is BAD_ARGUMENT.
    pub fn define(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        self.define_within(kind, name, "", u32::MAX).map_err(|e| e.status())
    }

    /// [`MetricStore::define_within`]: `vm_id` defines at most `max_metrics` names.
    pub fn define_within(
        &self,
        kind: MetricType,
        name: &str,
        vm_id: &str,
        max_metrics: u32,
    ) -> Result<u32, SharedError> {
        if name.is_empty() {
            return Err(SharedError::BadArgument);
        }
        let mut by_name = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        let mut metrics = self.metrics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = by_name.get(name) {
            return if metrics[index(id)].kind == kind { Ok(id) } else { Err(SharedError::BadArgument) };
        }
        let mut per_vm = self.per_vm.lock().unwrap_or_else(|p| p.into_inner());
        let defined = per_vm.entry(vm_id.to_string()).or_insert(0);
        if *defined >= max_metrics {
            return Err(SharedError::TooManyMetrics { vm_id: vm_id.to_string(), limit: max_metrics });
        }
        *defined += 1;
        metrics.push(Arc::new(Metric {
            name: name.to_string(),
            kind,
            value: AtomicI64::new(0),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            buckets: Default::default(),
        }));
        let id = metrics.len() as u32;
        by_name.insert(name.to_string(), id);
        Ok(id)
    }

    fn get_metric(&self, id: u32) -> Result<Arc<Metric>, Status> {
        let metrics = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        id.checked_sub(1).and_then(|i| metrics.get(i as usize)).cloned().ok_or(Status::NotFound)
    }

    /// Adds to a counter (a positive delta only, as Envoy's
    /// `Context::incrementMetric`) or a gauge; BAD_ARGUMENT for a histogram.
    pub fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        let m = self.get_metric(id)?;
        match m.kind {
            MetricType::Counter if delta <= 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                m.value.fetch_add(delta, Ordering::Relaxed);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    /// Adds `value` to a counter, sets a gauge to it, or records a histogram
    /// sample (Envoy's `Context::recordMetric`).
    pub fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        let m = self.get_metric(id)?;
        match m.kind {
            MetricType::Counter => {
                m.value.fetch_add(value as i64, Ordering::Relaxed);
            }
            MetricType::Gauge => m.value.store(value as i64, Ordering::Relaxed),
            MetricType::Histogram => {
                m.count.fetch_add(1, Ordering::Relaxed);
                m.sum.fetch_add(value, Ordering::Relaxed);
                let bucket = HISTOGRAM_BOUNDS.iter().position(|b| value <= *b).unwrap_or(HISTOGRAM_BOUNDS.len());
                m.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A counter's or gauge's value; a histogram has no single value (BAD_ARGUMENT).
    pub fn get(&self, id: u32) -> Result<i64, Status> {
        let m = self.get_metric(id)?;
        match m.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(m.value.load(Ordering::Relaxed)),
        }
    }

    pub fn snapshot(&self) -> Vec<MetricSnapshot> {
        let metrics = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut running = 0;
                let buckets = m
                    .buckets
                    .iter()
                    .map(|b| {
                        running += b.load(Ordering::Relaxed);
                        running
                    })
                    .collect();
                MetricSnapshot {
                    id: i as u32 + 1,
                    name: m.name.clone(),
                    kind: m.kind,
                    value: m.value.load(Ordering::Relaxed),
                    count: m.count.load(Ordering::Relaxed),
                    sum: m.sum.load(Ordering::Relaxed),
                    buckets,
                }
            })
            .collect()
    }
}

fn index(id: u32) -> usize {
    id as usize - 1
}

static INSTALLED: RwLock<Option<Arc<dyn MetricStore>>> = RwLock::new(None);

/// Makes `store` the registry of every VM created afterwards in this process
/// and of the exporters (an NGINX worker installs its shared-memory zone's).
pub fn set_process_metrics(store: Arc<dyn MetricStore>) {
    *INSTALLED.write().unwrap_or_else(|p| p.into_inner()) = Some(store);
}

/// The registry every VM in this process uses unless the server supplies one.
pub fn process_metrics() -> Arc<dyn MetricStore> {
    static METRICS: LazyLock<Arc<Metrics>> = LazyLock::new(Default::default);
    if let Some(m) = INSTALLED.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return m.clone();
    }
    METRICS.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn define_is_idempotent_per_name_and_type() {
        let m = Metrics::default();
        let a = m.define(MetricType::Counter, "a").unwrap();
        assert_eq!(m.define(MetricType::Counter, "a"), Ok(a));
        assert_eq!(m.define(MetricType::Gauge, "a"), Err(Status::BadArgument));
    }

    #[test]
    fn a_vm_id_defines_at_most_max_metrics_names() {
        let m = Metrics::default();
        m.define_within(MetricType::Counter, "a", "vm", 2).unwrap();
        m.define_within(MetricType::Counter, "b", "vm", 2).unwrap();
        assert_eq!(
            m.define_within(MetricType::Counter, "c", "vm", 2),
            Err(SharedError::TooManyMetrics { vm_id: "vm".into(), limit: 2 })
        );
        // Names already defined (by anyone) do not count; other vm_ids have their own count.
        assert!(m.define_within(MetricType::Counter, "a", "vm", 2).is_ok());
        assert!(m.define_within(MetricType::Counter, "c", "other", 2).is_ok());
        assert!(m.define_within(MetricType::Counter, "c", "vm", 2).is_ok());
        assert_eq!(m.snapshot().len(), 3);
    }

    #[test]
    fn counters_gauges_histograms() {
        let m = Metrics::default();
        let c = m.define(MetricType::Counter, "c").unwrap();
        let g = m.define(MetricType::Gauge, "g").unwrap();
        let h = m.define(MetricType::Histogram, "h").unwrap();
        m.increment(c, 2).unwrap();
        assert_eq!(m.increment(c, -1), Err(Status::BadArgument));
        assert_eq!(m.increment(c, 0), Err(Status::BadArgument));
        m.increment(g, -5).unwrap();
        m.record(h, 7).unwrap();
        m.record(h, 20000).unwrap();
        assert_eq!(m.get(c), Ok(2));
        m.record(c, 4).unwrap();
        assert_eq!(m.get(c), Ok(6), "recording a counter adds to it");
        assert_eq!(m.get(g), Ok(-5));
        assert_eq!(m.get(h), Err(Status::BadArgument));
        assert_eq!(m.get(99), Err(Status::NotFound));
        let snap = m.snapshot();
        assert_eq!(snap[2].count, 2);
        assert_eq!(snap[2].sum, 20007);
        assert_eq!(*snap[2].buckets.last().unwrap(), 2);
    }
}
