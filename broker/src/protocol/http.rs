//! The HTTP port: Prometheus `/metrics`, health (`/healthz`, `/readyz`) and a small JSON admin
//! API for topics, consumer groups and consumer progress (what `rmq-broker admin` uses).
//!
//! ```text
//! GET  /admin/topics                      -> [TopicConfig]
//! PUT  /admin/topics/{name}               {"queues": 8, "messageType": "NORMAL"}
//! GET  /admin/groups                      -> [GroupConfig]
//! POST /admin/groups                      [{"name": "G", "maxDeliveryAttempts": 16, "fifo": false}]
//! PUT  /admin/groups/{name}               {"maxDeliveryAttempts": 16, "fifo": false}
//! GET  /admin/groups/{name}/progress?topic=T -> per queue: committed offset, max offset, lag
//! ```

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::auth::guard::Guard;
use crate::service::Broker;
use crate::service::metadata::{GroupConfig, TopicConfig, TopicMessageType};

/// Whether a process is ready for traffic: `Err` says why not (served as 503 on `/readyz`).
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

pub fn router(broker: Arc<Broker>, guard: Arc<Guard>) -> Router {
    router_with_readiness(broker, guard, Arc::new(|| Ok(())))
}

/// The router with `/readyz` answering from `ready` (a store node is ready once a name server
/// has its registration, which is what a rolling restart waits for).
pub fn router_with_readiness(broker: Arc<Broker>, guard: Arc<Guard>, ready: Readiness) -> Router {
    let admin = Router::new()
        .route("/admin/topics", get(list_topics).post(put_topics))
        .route("/admin/topics/{name}", get(get_topic).put(put_topic))
        .route("/admin/groups", get(list_groups).post(put_groups))
        .route("/admin/groups/{name}", get(get_group).put(put_group))
        .route("/admin/groups/{name}/progress", get(progress))
        .with_state(broker.clone())
        .merge(super::http_auth::routes(Arc::clone(&guard)))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            super::http_auth::admin_auth,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = Arc::clone(&ready);
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, "ok".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }),
        )
        .with_state(broker)
        .merge(admin)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn metrics(State(b): State<Arc<Broker>>) -> Response {
    let o = b.store.log_offsets();
    let m = &b.metrics;
    m.commitlog_min_offset.set(o.min as i64);
    m.commitlog_written_offset.set(o.written as i64);
    m.commitlog_flushed_offset.set(o.flushed as i64);
    m.commitlog_dispatched_offset.set(o.dispatched as i64);
    let q = b.store.queue_stats();
    m.consumequeue_queues.set(q.open_queues as i64);
    m.consumequeue_open_files.set(q.open_files as i64);
    m.consumequeue_file_opens.set(q.file_opens as i64);
    m.consumequeue_waiting_queues.set(q.waiting_queues as i64);
    m.checkpoint_seconds.set(q.last_checkpoint.as_secs_f64());
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

async fn list_topics(State(b): State<Arc<Broker>>) -> Json<Vec<TopicConfig>> {
    Json(b.metadata.topics())
}

async fn get_topic(State(b): State<Arc<Broker>>, Path(name): Path<String>) -> Response {
    match b.metadata.topic(&name) {
        Some(t) => Json(t).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("topic {name:?} does not exist"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TopicSpec {
    queues: u32,
    #[serde(default = "normal")]
    message_type: TopicMessageType,
}

fn normal() -> TopicMessageType {
    TopicMessageType::Normal
}

/// Creates or updates many topics with one file write (`POST /admin/topics`, a JSON list of
/// `{"name", "queues", "messageType"}`); nothing changes if one is invalid.
async fn put_topics(State(b): State<Arc<Broker>>, Json(topics): Json<Vec<NamedTopic>>) -> Response {
    let topics: Vec<TopicConfig> = topics
        .into_iter()
        .map(|t| TopicConfig {
            name: t.name,
            queues: t.queues,
            message_type: t.message_type,
        })
        .collect();
    let asked = topics.len();
    match tokio::task::spawn_blocking(move || b.metadata.put_topics(topics)).await {
        Ok(Ok(changed)) => {
            tracing::info!(asked, changed, "topics created or updated");
            Json(serde_json::json!({ "topics": asked, "changed": changed })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamedTopic {
    name: String,
    queues: u32,
    #[serde(default = "normal")]
    message_type: TopicMessageType,
}

async fn put_topic(
    State(b): State<Arc<Broker>>,
    Path(name): Path<String>,
    Json(spec): Json<TopicSpec>,
) -> Response {
    let t = TopicConfig {
        name,
        queues: spec.queues,
        message_type: spec.message_type,
    };
    match b.metadata.put_topic(t.clone()) {
        Ok(()) => {
            tracing::info!(topic = %t.name, queues = t.queues, message_type = ?t.message_type, "topic created or updated");
            Json(t).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn list_groups(State(b): State<Arc<Broker>>) -> Json<Vec<GroupConfig>> {
    Json(b.metadata.groups())
}

async fn get_group(State(b): State<Arc<Broker>>, Path(name): Path<String>) -> Response {
    match b.metadata.group(&name) {
        Some(g) => Json(g).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("group {name:?} does not exist"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupSpec {
    #[serde(default = "sixteen")]
    max_delivery_attempts: u32,
    #[serde(default)]
    fifo: bool,
}

fn sixteen() -> u32 {
    16
}

/// Creates or updates many groups with one file write (`POST /admin/groups`, a JSON list of
/// `{name, maxDeliveryAttempts, fifo}`); all are checked before any is written.
async fn put_groups(State(b): State<Arc<Broker>>, Json(groups): Json<Vec<NamedGroup>>) -> Response {
    let groups: Vec<GroupConfig> = groups
        .into_iter()
        .map(|g| GroupConfig {
            name: g.name,
            max_delivery_attempts: g.max_delivery_attempts,
            fifo: g.fifo,
        })
        .collect();
    let asked = groups.len();
    match tokio::task::spawn_blocking(move || b.metadata.put_groups(groups)).await {
        Ok(Ok(changed)) => {
            tracing::info!(asked, changed, "groups created or updated");
            Json(serde_json::json!({ "groups": asked, "changed": changed })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamedGroup {
    name: String,
    #[serde(default = "sixteen")]
    max_delivery_attempts: u32,
    #[serde(default)]
    fifo: bool,
}

async fn put_group(
    State(b): State<Arc<Broker>>,
    Path(name): Path<String>,
    Json(spec): Json<GroupSpec>,
) -> Response {
    let g = GroupConfig {
        name,
        max_delivery_attempts: spec.max_delivery_attempts,
        fifo: spec.fifo,
    };
    match b.metadata.put_group(g.clone()) {
        Ok(()) => Json(g).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ProgressQuery {
    topic: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueProgress {
    pub queue_id: i32,
    /// Everything below is acknowledged.
    pub committed: u64,
    pub max_offset: u64,
    pub lag: u64,
    /// Pop consumption on this node: the first offset never handed out, how many offsets
    /// above `committed` are acknowledged, how many messages are in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_above: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
}

async fn progress(
    State(b): State<Arc<Broker>>,
    Path(group): Path<String>,
    Query(q): Query<ProgressQuery>,
) -> Response {
    let Some(topic) = b.metadata.topic(&q.topic) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("topic {:?} does not exist", q.topic),
        );
    };
    let mut out = Vec::new();
    for id in 0..topic.queues as i32 {
        let max_offset = match b.store.max_offset(&topic.name, id) {
            Ok(m) => m,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let committed = b
            .store
            .consumer_offsets()
            .get(&group, &topic.name, id)
            .unwrap_or(0);
        let pop = b.pop.deliveries(&group, &topic.name, id);
        out.push(QueueProgress {
            queue_id: id,
            committed,
            max_offset,
            lag: max_offset.saturating_sub(committed),
            next: pop.map(|p| p.0),
            acknowledged_above: pop.map(|p| p.1),
            in_flight: pop.map(|p| p.2),
        });
    }
    Json(out).into_response()
}
