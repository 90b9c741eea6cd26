//! The operator's Prometheus metrics and per-cluster error backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Counter,
    errors: Counter,
    duration: Histogram,
    pub leader: Gauge,
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let errors = Counter::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let leader = Gauge::default();
        let mut r = Registry::with_prefix("rocketmq_operator");
        r.register("reconciles", "Reconcile passes", reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconcile passes that failed",
            errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the lease",
            leader.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            reconciles,
            errors,
            duration,
            leader,
            failures: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn observe(&self, took: Duration, key: &str, ok: bool) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if ok {
            self.failures.lock().expect("not poisoned").remove(key);
        } else {
            self.errors.inc();
        }
    }

    /// The pause before the next try after a failure of `key`: 1 s doubling up to 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().expect("not poisoned");
        let n = f.entry(key.to_owned()).or_default();
        *n = (*n + 1).min(10);
        Duration::from_secs((1u64 << (*n - 1)).min(300))
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_cluster_and_resets_on_success() {
        let m = Metrics::default();
        assert_eq!(m.backoff("a"), Duration::from_secs(1));
        assert_eq!(m.backoff("a"), Duration::from_secs(2));
        assert_eq!(m.backoff("b"), Duration::from_secs(1));
        m.observe(Duration::from_millis(5), "a", true);
        assert_eq!(m.backoff("a"), Duration::from_secs(1));
        for _ in 0..20 {
            m.backoff("c");
        }
        assert_eq!(m.backoff("c"), Duration::from_secs(300));
        m.observe(Duration::from_millis(5), "c", false);
        let text = m.encode();
        assert!(
            text.contains("rocketmq_operator_reconcile_errors_total 1"),
            "{text}"
        );
    }
}
