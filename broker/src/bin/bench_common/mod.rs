//! What the load generators share: a latency recorder and its summary.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;

#[derive(Default)]
pub struct Recorder {
    latencies_us: Mutex<Vec<u64>>,
    pub count: AtomicU64,
    /// Nanoseconds since the run's start of the last record.
    pub last_ns: AtomicU64,
}

pub struct Summary {
    pub count: usize,
    pub per_sec: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Recorder {
    pub fn record(&self, us: u64, since_start: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last_ns
            .fetch_max(since_start.as_nanos() as u64, Ordering::Relaxed);
        self.latencies_us.lock().push(us);
    }

    /// Percentiles in milliseconds; the rate over `secs`.
    pub fn summary(&self, secs: f64) -> Summary {
        let mut l = std::mem::take(&mut *self.latencies_us.lock());
        l.sort_unstable();
        let p = |q: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
            l[i] as f64 / 1000.0
        };
        Summary {
            count: l.len(),
            per_sec: l.len() as f64 / secs.max(1e-9),
            p50: p(0.5),
            p99: p(0.99),
            p999: p(0.999),
            max: l.last().copied().unwrap_or(0) as f64 / 1000.0,
        }
    }
}

impl Summary {
    pub fn line(&self, what: &str) -> String {
        format!(
            "{what}: {} msgs, {:.0} msg/s, latency ms p50 {:.2} p99 {:.2} p999 {:.2} max {:.2}",
            self.count, self.per_sec, self.p50, self.p99, self.p999, self.max
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "count": self.count, "perSec": self.per_sec,
            "p50Ms": self.p50, "p99Ms": self.p99, "p999Ms": self.p999, "maxMs": self.max,
        })
    }
}
