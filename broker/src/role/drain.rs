//! Draining a store node before it is removed (what the operator does on scale-in):
//!
//! ```text
//! GET  /admin/node         -> NodeStatus
//! POST /admin/node/drain   -> NodeStatus   (idempotent)
//! POST /admin/node/serve   -> NodeStatus   (cancels a drain)
//! ```
//!
//! A draining node refuses producers (NO_PERMISSION, and its topics are re-registered
//! read-only, so routes send new messages elsewhere) and keeps serving consumers. With a tier,
//! it seals its last segment early so that every written byte is uploaded; it is *drained* once
//! the tier holds everything written. Without one, it is drained once every subscribed topic's
//! messages are consumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::protocol::remoting::broker::BrokerHandler;
use crate::store::MessageStore;
use crate::tier::Tier;

pub struct NodeAdmin {
    pub handler: Arc<BrokerHandler>,
    pub store: Arc<MessageStore>,
    pub tier: Option<Arc<Tier>>,
    draining: AtomicBool,
    /// The tier holds a metadata snapshot taken since the drain began.
    metadata_handed_over: AtomicBool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub broker_name: String,
    pub draining: bool,
    /// Draining and nothing is left that only this node holds.
    pub drained: bool,
    /// CommitLog bytes written.
    pub written: u64,
    /// Whether the node tiers to object storage.
    pub tiered: bool,
    /// Written bytes the tier does not hold yet.
    pub untiered_bytes: u64,
    /// Messages of topics that consumers subscribe to, not consumed yet.
    pub unconsumed_messages: u64,
}

impl NodeAdmin {
    pub fn new(
        handler: Arc<BrokerHandler>,
        store: Arc<MessageStore>,
        tier: Option<Arc<Tier>>,
    ) -> Arc<NodeAdmin> {
        Arc::new(NodeAdmin {
            handler,
            store,
            tier,
            draining: AtomicBool::new(false),
            metadata_handed_over: AtomicBool::new(false),
        })
    }

    pub fn status(&self) -> NodeStatus {
        let written = self.store.log_offsets().written;
        let draining = self.draining.load(Ordering::Acquire);
        let tiered_end = self.tier.as_ref().map(|t| t.manifest().end());
        let untiered_bytes = tiered_end.map_or(written, |end| written.saturating_sub(end));
        let unconsumed_messages = self.unconsumed();
        let drained = draining
            && match tiered_end {
                Some(_) => untiered_bytes == 0 && self.metadata_handed_over.load(Ordering::Acquire),
                None => unconsumed_messages == 0,
            };
        NodeStatus {
            broker_name: self.handler.broker.config.broker_name.clone(),
            draining,
            drained,
            written,
            tiered: tiered_end.is_some(),
            untiered_bytes,
            unconsumed_messages,
        }
    }

    /// Per subscribed topic, the largest backlog of any group consuming it.
    fn unconsumed(&self) -> u64 {
        let offsets = self.store.consumer_offsets();
        let mut per_topic: std::collections::BTreeMap<String, u64> = Default::default();
        for (topic, group) in offsets.topics_and_groups() {
            let Some(t) = self.handler.broker.metadata.topic(&topic) else {
                continue;
            };
            let mut lag = 0;
            for q in 0..t.queues as i32 {
                let max = self.store.max_offset(&topic, q).unwrap_or(0);
                let done = offsets.get(&group, &topic, q).unwrap_or(0);
                lag += max.saturating_sub(done);
            }
            let slot = per_topic.entry(topic).or_default();
            *slot = (*slot).max(lag);
        }
        per_topic.values().sum()
    }

    /// Starts (or continues) draining; the work happens in [`Self::run`].
    pub fn drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            tracing::warn!("draining: producers are refused from now on");
        }
        self.handler.set_read_only(true);
    }

    pub fn serve(&self) {
        self.metadata_handed_over.store(false, Ordering::Release);
        if self.draining.swap(false, Ordering::AcqRel) {
            tracing::warn!("drain cancelled: taking writes again");
        }
        self.handler.set_read_only(false);
    }

    /// While draining with a tier: seals the segment being written whenever it holds bytes the
    /// tier does not, so that the upload loop takes them, and hands the latest metadata
    /// (topics, groups, consumer offsets) to the tier every few seconds.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_snapshot: Option<std::time::Instant> = None;
        loop {
            tick.tick().await;
            let Some(tier) = self
                .tier
                .clone()
                .filter(|_| self.draining.load(Ordering::Acquire))
            else {
                last_snapshot = None;
                continue;
            };
            let store = Arc::clone(&self.store);
            match tokio::task::spawn_blocking(move || store.seal_active_segment()).await {
                Ok(Err(e)) => tracing::error!(error = %e, "sealing the last segment failed"),
                Err(e) => tracing::error!(error = %e, "sealing task failed"),
                Ok(Ok(_)) => {}
            }
            if last_snapshot.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                // The offsets as of now, not as of the last periodic write.
                let store = Arc::clone(&self.store);
                match tokio::task::spawn_blocking(move || store.consumer_offsets().persist()).await
                {
                    Ok(Err(e)) => tracing::error!(error = %e, "writing consumer offsets failed"),
                    Err(e) => tracing::error!(error = %e, "consumer offsets task failed"),
                    Ok(Ok(())) => {}
                }
                let dir = self.store.config().config_dir();
                match tier.snapshot_metadata_now(&dir).await {
                    Ok(_) => {
                        last_snapshot = Some(std::time::Instant::now());
                        self.metadata_handed_over.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metadata snapshot for the drain failed; retrying")
                    }
                }
            }
        }
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/admin/node", get(status))
            .route("/admin/node/drain", post(drain))
            .route("/admin/node/serve", post(serve))
            .with_state(Arc::clone(self))
    }
}

async fn status(State(n): State<Arc<NodeAdmin>>) -> Json<NodeStatus> {
    Json(n.status())
}

async fn drain(State(n): State<Arc<NodeAdmin>>) -> Json<NodeStatus> {
    n.drain();
    Json(n.status())
}

async fn serve(State(n): State<Arc<NodeAdmin>>) -> Json<NodeStatus> {
    n.serve();
    Json(n.status())
}
