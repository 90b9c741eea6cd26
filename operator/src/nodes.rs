//! The operator's calls to store nodes' HTTP admin API (`/admin/node`, see the broker's
//! `role::drain`): drain before removal, serve again when a scale-in is undone, and read
//! each node's tiering lag for the status.

use std::collections::HashMap;
use std::time::Duration;

use broker::role::drain::NodeStatus;

use crate::crd::RocketMQCluster;
use crate::render::{self, Role, STORE_HTTP_PORT};

pub struct NodeClient {
    /// Broker name -> `host:port` of its HTTP port, replacing the pod's DNS name (for running
    /// the operator outside the cluster, and for e2e tests whose pods are simulated).
    overrides: HashMap<String, String>,
    agent: ureq::Agent,
}

impl NodeClient {
    /// `overrides`: `name=host:port` pairs, comma-separated (`RMQ_OPERATOR_STORE_ENDPOINTS`).
    pub fn new(overrides: &str) -> NodeClient {
        let overrides = overrides
            .split(',')
            .filter_map(|p| p.trim().split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(true)
            .build()
            .into();
        NodeClient { overrides, agent }
    }

    fn url(&self, c: &RocketMQCluster, ordinal: i32, path: &str) -> String {
        let n = render::names(c);
        let name = n.store_node(ordinal);
        let host =
            self.overrides.get(&name).cloned().unwrap_or_else(|| {
                format!("{}:{STORE_HTTP_PORT}", n.pod_host(Role::Broker, ordinal))
            });
        format!("http://{host}{path}")
    }

    /// One call to a node's admin API, off the async runtime (ureq blocks): `POST` when
    /// `post`, else `GET` with a short timeout (a resync asks every node, and an unreachable
    /// node only leaves its lag unknown).
    async fn call(&self, post: bool, url: String) -> Result<NodeStatus, String> {
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let method = if post { "POST" } else { "GET" };
            let sent = if post {
                agent.post(&url).send_empty()
            } else {
                agent
                    .get(&url)
                    .config()
                    .timeout_global(Some(Duration::from_secs(2)))
                    .build()
                    .call()
            };
            sent.map_err(|e| format!("{method} {url}: {e}"))?
                .body_mut()
                .read_json::<NodeStatus>()
                .map_err(|e| format!("{method} {url}: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Where a store node stands, without changing anything.
    pub async fn status(&self, c: &RocketMQCluster, ordinal: i32) -> Result<NodeStatus, String> {
        self.call(false, self.url(c, ordinal, "/admin/node")).await
    }

    /// Asks a store node to drain (idempotent) and returns where it stands.
    pub async fn drain(&self, c: &RocketMQCluster, ordinal: i32) -> Result<NodeStatus, String> {
        self.call(true, self.url(c, ordinal, "/admin/node/drain"))
            .await
    }

    /// Tells a store node to take writes again.
    pub async fn serve(&self, c: &RocketMQCluster, ordinal: i32) -> Result<NodeStatus, String> {
        self.call(true, self.url(c, ordinal, "/admin/node/serve"))
            .await
    }
}
