//! The operator's Prometheus metrics and per-cluster error backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    /// Requests this replica sent to the Kubernetes API, by verb.
    pub api_requests: Family<Vec<(String, String)>, Counter>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let errors = Counter::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let leader = Gauge::default();
        let api_requests = Family::default();
        let mut r = Registry::with_prefix("rocketmq_operator");
        r.register(
            "api_requests",
            "Requests sent to the Kubernetes API (verb: get, list, watch, create, update, patch, delete)",
            api_requests.clone(),
        );
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
            api_requests,
            failures: Arc::default(),
        }
    }
}

/// The verb of a Kubernetes API request, as the API server's audit log names it.
pub fn verb<B>(req: &http::Request<B>) -> &'static str {
    let query = req.uri().query().unwrap_or("");
    match *req.method() {
        http::Method::GET if query.contains("watch=true") || query.contains("watch=1") => "watch",
        http::Method::GET if is_collection(req.uri().path()) => "list",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// Whether an API path names a collection (`/api/v1/namespaces/ns/pods`) rather than one
/// object (`.../pods/name`, `.../pods/name/status`).
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.first() {
        Some(&"api") => parts.get(2..),
        Some(&"apis") => parts.get(3..),
        _ => None,
    }
    .unwrap_or(&[]);
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        _ => rest,
    };
    rest.len() == 1
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

    #[test]
    fn requests_are_named_by_verb() {
        let req = |m: &str, uri: &str| {
            http::Request::builder()
                .method(m)
                .uri(uri)
                .body(())
                .unwrap()
        };
        let sts = "/apis/apps/v1/namespaces/mq/statefulsets";
        assert_eq!(verb(&req("GET", sts)), "list");
        assert_eq!(
            verb(&req("GET", &format!("{sts}?labelSelector=a%3Db"))),
            "list"
        );
        assert_eq!(verb(&req("GET", &format!("{sts}/demo-broker"))), "get");
        assert_eq!(
            verb(&req("GET", &format!("{sts}?watch=true&resourceVersion=5"))),
            "watch"
        );
        assert_eq!(verb(&req("GET", "/api/v1/pods")), "list");
        assert_eq!(verb(&req("GET", "/api/v1/namespaces/mq/pods/p-0")), "get");
        assert_eq!(verb(&req("PATCH", &format!("{sts}/demo-broker"))), "patch");
        assert_eq!(
            verb(&req(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/mq/leases/l"
            )),
            "update"
        );
        assert_eq!(
            verb(&req(
                "DELETE",
                "/apis/networking.k8s.io/v1/namespaces/mq/networkpolicies/x"
            )),
            "delete"
        );
    }
}
