//! The operator's calls to store nodes' HTTP admin API (`/admin/node`, see the broker's
//! `role::drain`): drain before removal, serve again when a scale-in is undone, and read
//! each node's tiering lag for the status. And to the controllers (with `broker.ha`): which
//! member of each broker group is primary, at which epoch, and which are in sync.

use std::collections::HashMap;
use std::time::Duration;

use std::collections::BTreeMap;

use broker::controller::GroupState;
use broker::role::drain::NodeStatus;
use serde::de::DeserializeOwned;

use crate::crd::RocketMQCluster;
use crate::render::{self, Role, STORE_HTTP_PORT};

pub struct NodeClient {
    /// Pod name -> `host:port` of its HTTP port, replacing the pod's DNS name (for running
    /// the operator outside the cluster, and for e2e tests whose pods are simulated).
    overrides: HashMap<String, String>,
    agent: ureq::Agent,
}

/// What the controllers hold (their `/controller/state`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerView {
    pub is_leader: bool,
    pub groups: BTreeMap<String, GroupState>,
}

impl NodeClient {
    /// `overrides`: `pod=host:port` pairs, comma-separated (`RMQ_OPERATOR_STORE_ENDPOINTS`,
    /// store nodes' and controllers' HTTP ports).
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
        self.pod_url(c, &render::names(c).store_node(ordinal), path)
    }

    /// A store pod's admin URL (any pod of the store nodes' headless Service).
    fn pod_url(&self, c: &RocketMQCluster, pod: &str, path: &str) -> String {
        let host = self.overrides.get(pod).cloned().unwrap_or_else(|| {
            format!("{}:{STORE_HTTP_PORT}", render::names(c).store_pod_host(pod))
        });
        format!("http://{host}{path}")
    }

    /// One call to a node's admin API, off the async runtime (ureq blocks): `POST` when
    /// `post`, else `GET` with a short timeout (a resync asks every node, and an unreachable
    /// node only leaves its lag unknown).
    async fn call<T: DeserializeOwned + Send + 'static>(
        &self,
        post: bool,
        url: String,
    ) -> Result<T, String> {
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
                .read_json::<T>()
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

    /// Drains a broker group through its primary (with `broker.ha`).
    pub async fn drain_pod(&self, c: &RocketMQCluster, pod: &str) -> Result<NodeStatus, String> {
        self.call(true, self.pod_url(c, pod, "/admin/node/drain"))
            .await
    }

    /// Tells a group's primary to take writes again (a scale-in undone).
    pub async fn serve_pod(&self, c: &RocketMQCluster, pod: &str) -> Result<NodeStatus, String> {
        self.call(true, self.pod_url(c, pod, "/admin/node/serve"))
            .await
    }

    /// The controllers' view of every group: the leader's when it answers, else the first
    /// controller that does (a follower's committed state, possibly a moment behind).
    pub async fn controller_view(&self, c: &RocketMQCluster) -> Result<ControllerView, String> {
        let n = render::names(c);
        let replicas = c
            .spec
            .broker
            .ha
            .as_ref()
            .map_or(0, |h| h.controllers.replicas);
        let mut fallback = None;
        let mut errors = Vec::new();
        for i in 0..replicas {
            let pod = format!("{}-{i}", n.of(Role::Controller));
            let host = self.overrides.get(&pod).cloned().unwrap_or_else(|| {
                format!(
                    "{}:{}",
                    n.pod_host(Role::Controller, i),
                    render::CONTROLLER_PORT
                )
            });
            match self
                .call::<ControllerView>(false, format!("http://{host}/controller/state"))
                .await
            {
                Ok(v) if v.is_leader => return Ok(v),
                Ok(v) => {
                    fallback.get_or_insert(v);
                }
                Err(e) => errors.push(e),
            }
        }
        fallback.ok_or_else(|| errors.join("; "))
    }
}
