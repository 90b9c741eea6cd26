//! The controller (RocketMQ 5 controller mode): for every broker group it keeps the primary,
//! the epoch and the in-sync set, elects a new primary from the in-sync set when the primary
//! stops heartbeating, and answers the nodes' heartbeats with their group's state. Controllers
//! agree through Raft (openraft); 3 of them survive the loss of one.
//!
//! Only decisions go through Raft (a node joining a group, an election, a change of the
//! in-sync set); each is a compare-and-set on the group's epoch, so a retried or stale request
//! is refused rather than applied twice. Liveness (heartbeats, each node's log end) is soft
//! state that every controller keeps from the heartbeats it receives: nodes heartbeat to every
//! controller, so a new leader knows who is alive once one timeout has passed.

pub mod network;
pub mod raft_store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{ClientWriteError, ForwardToLeader, InitializeError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use raft_store::{LogStore, StateMachineStore};

pub type NodeId = u64;

openraft::declare_raft_types!(
    pub CtrlTC:
        D = CtrlRequest,
        R = CtrlResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<CtrlTC>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type CtrlRaft = openraft::Raft<CtrlTC>;

/// A node of a broker group, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    /// The node's HA port (`host:port`), where replicas connect when it is primary.
    pub ha_addr: String,
    /// Its remoting address (what it registers with the name servers).
    pub addr: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupState {
    /// Bumped by every election (RocketMQ's master epoch).
    pub epoch: u64,
    pub primary: Option<i64>,
    /// The primary and the replicas that hold everything acknowledged (SyncStateSet).
    pub in_sync: BTreeSet<i64>,
    pub members: BTreeMap<i64, MemberInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControllerState {
    pub groups: BTreeMap<String, GroupState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CtrlRequest {
    Register {
        group: String,
        broker_id: i64,
        member: MemberInfo,
    },
    Elect {
        group: String,
        expected_epoch: u64,
        primary: i64,
    },
    AlterInSync {
        group: String,
        epoch: u64,
        primary: i64,
        in_sync: BTreeSet<i64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CtrlResponse {
    None,
    Group(GroupState),
    Rejected(String),
}

impl ControllerState {
    /// Applies a committed request. Refusals are answers, never errors (an error would stop
    /// the Raft node).
    pub fn apply(&mut self, req: &CtrlRequest) -> CtrlResponse {
        match req {
            CtrlRequest::Register {
                group,
                broker_id,
                member,
            } => {
                let g = self.groups.entry(group.clone()).or_default();
                g.members.insert(*broker_id, member.clone());
                CtrlResponse::Group(g.clone())
            }
            CtrlRequest::Elect {
                group,
                expected_epoch,
                primary,
            } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return CtrlResponse::Rejected(format!("unknown group {group}"));
                };
                if g.epoch != *expected_epoch {
                    return CtrlResponse::Rejected(format!(
                        "epoch is {}, not {expected_epoch}",
                        g.epoch
                    ));
                }
                if !g.members.contains_key(primary) {
                    return CtrlResponse::Rejected(format!("{primary} is not a member"));
                }
                g.epoch += 1;
                g.primary = Some(*primary);
                g.in_sync = BTreeSet::from([*primary]);
                CtrlResponse::Group(g.clone())
            }
            CtrlRequest::AlterInSync {
                group,
                epoch,
                primary,
                in_sync,
            } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return CtrlResponse::Rejected(format!("unknown group {group}"));
                };
                if g.epoch != *epoch || g.primary != Some(*primary) {
                    return CtrlResponse::Rejected(format!(
                        "stale: the group is at epoch {} with primary {:?}",
                        g.epoch, g.primary
                    ));
                }
                if !in_sync.contains(primary) || !in_sync.iter().all(|i| g.members.contains_key(i))
                {
                    return CtrlResponse::Rejected(
                        "the in-sync set must hold the primary and members only".into(),
                    );
                }
                g.in_sync = in_sync.clone();
                CtrlResponse::Group(g.clone())
            }
        }
    }
}

/// A controller's settings (`controller` role).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// This controller's Raft id (a key of `peers`).
    pub id: NodeId,
    /// Every controller: id -> `host:port` of its HTTP port (Raft and the nodes' API).
    pub peers: BTreeMap<NodeId, String>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A node silent for this long is dead (a primary is replaced).
    #[serde(with = "crate::store::config::millis")]
    pub node_timeout: Duration,
    /// Elect a node from outside the in-sync set when no member of it is alive (may lose
    /// acknowledged messages; off by default).
    pub unclean_election: bool,
    /// Raft heartbeat; elections time out after 4-8 of these.
    #[serde(with = "crate::store::config::millis")]
    pub raft_heartbeat: Duration,
    /// TLS on the HTTP port, next to plaintext (the other controllers, the store nodes and
    /// the operator call it in plaintext).
    pub tls: crate::tls::TlsConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            id: 1,
            peers: BTreeMap::from([(1, "127.0.0.1:9878".into())]),
            listen: SocketAddr::from(([0, 0, 0, 0], 9878)),
            data_dir: "data/controller".into(),
            node_timeout: Duration::from_secs(3),
            unclean_election: false,
            raft_heartbeat: Duration::from_millis(250),
            tls: crate::tls::TlsConfig {
                mode: crate::tls::TlsMode::Disabled,
                ..Default::default()
            },
        }
    }
}

/// A stopping primary asks for its role to move to `to`, an in-sync replica holding its whole
/// log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    pub group: String,
    pub epoch: u64,
    pub from: i64,
    pub to: i64,
}

/// What a node sends every heartbeat interval to every controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub group: String,
    pub broker_id: i64,
    pub member: MemberInfo,
    /// The node's epoch (last in its history) and log end: election prefers the longest log.
    pub epoch: u64,
    pub written: u64,
    /// A replica whose link to its primary is down.
    #[serde(default)]
    pub primary_link_down: bool,
    /// ... and whose last attempt to reconnect was refused (nothing listens there).
    #[serde(default)]
    pub primary_refused: bool,
    /// How often this node heartbeats.
    #[serde(default = "default_heartbeat_every_ms")]
    pub heartbeat_every_ms: u64,
}

fn default_heartbeat_every_ms() -> u64 {
    500
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatReply {
    pub is_leader: bool,
    /// The leader's HTTP address, when known.
    pub leader: Option<String>,
    pub group: Option<GroupState>,
}

/// The primary asks to change its group's in-sync set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlterInSync {
    pub group: String,
    pub epoch: u64,
    pub primary: i64,
    pub in_sync: BTreeSet<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AlterReply {
    pub group: Option<GroupState>,
    pub error: Option<String>,
    pub leader: Option<String>,
}

#[derive(Debug, Clone)]
struct Liveness {
    seen: Instant,
    epoch: u64,
    written: u64,
    /// A replica reports its primary unreachable.
    link_down: bool,
    /// ... and its HA port closed.
    refused: bool,
    /// The node's heartbeat interval.
    every: Duration,
}

pub struct Controller {
    pub raft: CtrlRaft,
    sm: StateMachineStore,
    cfg: ControllerConfig,
    live: Mutex<HashMap<(String, i64), Liveness>>,
    /// Since when this controller leads (elections wait one node timeout after that).
    leading_since: Mutex<Option<Instant>>,
}

pub enum WriteOutcome {
    Done(CtrlResponse),
    NotLeader(Option<String>),
}

impl Controller {
    /// Opens this controller's Raft log and state, starts Raft and, on a first start, forms
    /// the cluster from `peers` (every controller does the same; the same membership makes it
    /// harmless).
    pub async fn start(cfg: ControllerConfig) -> anyhow::Result<Arc<Controller>> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let hb = cfg.raft_heartbeat.as_millis() as u64;
        let config = Arc::new(
            Config {
                cluster_name: "rmq-controller".into(),
                heartbeat_interval: hb,
                election_timeout_min: hb * 4,
                election_timeout_max: hb * 8,
                install_snapshot_timeout: 5_000,
                snapshot_max_chunk_size: 1 << 20,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(1_000),
                max_in_snapshot_log_to_keep: 100,
                ..Default::default()
            }
            .validate()?,
        );
        let log = LogStore::open(cfg.data_dir.join("raft-log.jsonl"))?;
        let sm = StateMachineStore::open(&cfg.data_dir)?;
        let net = network::HttpNetwork {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(500))
                .build()?,
        };
        let raft = openraft::Raft::new(cfg.id, config, net, log, sm.clone()).await?;
        if !raft.is_initialized().await? {
            let members: BTreeMap<NodeId, BasicNode> = cfg
                .peers
                .iter()
                .map(|(i, a)| (*i, BasicNode::new(a)))
                .collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Arc::new(Controller {
            raft,
            sm,
            cfg,
            live: Mutex::new(HashMap::new()),
            leading_since: Mutex::new(None),
        }))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader's HTTP address, if one is known.
    pub fn leader(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    pub fn state(&self) -> ControllerState {
        self.sm.read(|s| s.clone())
    }

    pub async fn write(&self, req: CtrlRequest) -> anyhow::Result<WriteOutcome> {
        match self.raft.client_write(req).await {
            Ok(r) => Ok(WriteOutcome::Done(r.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
                leader_node,
                ..
            }))) => Ok(WriteOutcome::NotLeader(leader_node.map(|n| n.addr))),
            Err(e) => Err(e.into()),
        }
    }

    async fn heartbeat(&self, hb: Heartbeat) -> HeartbeatReply {
        self.live.lock().insert(
            (hb.group.clone(), hb.broker_id),
            Liveness {
                seen: Instant::now(),
                epoch: hb.epoch,
                written: hb.written,
                link_down: hb.primary_link_down,
                refused: hb.primary_link_down && hb.primary_refused,
                every: Duration::from_millis(hb.heartbeat_every_ms.clamp(50, 60_000)),
            },
        );
        let known = self.sm.read(|s| {
            s.groups
                .get(&hb.group)
                .and_then(|g| g.members.get(&hb.broker_id))
                .cloned()
        });
        if self.is_leader() && known.as_ref() != Some(&hb.member) {
            let req = CtrlRequest::Register {
                group: hb.group.clone(),
                broker_id: hb.broker_id,
                member: hb.member.clone(),
            };
            match self.write(req).await {
                Ok(WriteOutcome::Done(_)) => {
                    tracing::info!(group = %hb.group, id = hb.broker_id, ha = %hb.member.ha_addr, "node registered")
                }
                Ok(WriteOutcome::NotLeader(_)) => {}
                Err(e) => tracing::warn!(error = %e, "registering a node failed"),
            }
        }
        // A replica that lost its primary may complete the evidence for an election: hold
        // it now, so that this reply already carries the outcome.
        if hb.primary_link_down && self.is_leader() {
            self.elect_if_needed(&hb.group).await;
        }
        HeartbeatReply {
            is_leader: self.is_leader(),
            leader: self.leader(),
            group: self.sm.read(|s| s.groups.get(&hb.group).cloned()),
        }
    }

    async fn alter(&self, req: AlterInSync) -> AlterReply {
        let write = CtrlRequest::AlterInSync {
            group: req.group,
            epoch: req.epoch,
            primary: req.primary,
            in_sync: req.in_sync,
        };
        match self.write(write).await {
            Ok(WriteOutcome::Done(CtrlResponse::Group(g))) => AlterReply {
                group: Some(g),
                ..AlterReply::default()
            },
            Ok(WriteOutcome::Done(CtrlResponse::Rejected(e))) => AlterReply {
                error: Some(e),
                ..AlterReply::default()
            },
            Ok(WriteOutcome::Done(CtrlResponse::None)) => AlterReply::default(),
            Ok(WriteOutcome::NotLeader(leader)) => AlterReply {
                error: Some("not the leader".into()),
                leader,
                ..AlterReply::default()
            },
            Err(e) => AlterReply {
                error: Some(e.to_string()),
                ..AlterReply::default()
            },
        }
    }

    async fn handover(&self, req: Handover) -> AlterReply {
        let refuse = |e: String| AlterReply {
            error: Some(e),
            leader: self.leader(),
            ..AlterReply::default()
        };
        if !self.is_leader() {
            return refuse("not the leader".into());
        }
        let g = self.sm.read(|s| s.groups.get(&req.group).cloned());
        let Some(g) = g else {
            return refuse(format!("unknown group {}", req.group));
        };
        if g.epoch != req.epoch || g.primary != Some(req.from) {
            return refuse(format!(
                "stale: the group is at epoch {} with primary {:?}",
                g.epoch, g.primary
            ));
        }
        if req.to == req.from || !g.in_sync.contains(&req.to) {
            return refuse(format!("{} is not an in-sync replica", req.to));
        }
        let write = CtrlRequest::Elect {
            group: req.group.clone(),
            expected_epoch: req.epoch,
            primary: req.to,
        };
        match self.write(write).await {
            Ok(WriteOutcome::Done(CtrlResponse::Group(after))) => {
                tracing::warn!(group = %req.group, old = req.from, new = req.to, epoch = after.epoch, "primary handed over");
                AlterReply {
                    group: Some(after),
                    ..AlterReply::default()
                }
            }
            Ok(WriteOutcome::Done(other)) => refuse(format!("{other:?}")),
            Ok(WriteOutcome::NotLeader(leader)) => AlterReply {
                error: Some("not the leader".into()),
                leader,
                ..AlterReply::default()
            },
            Err(e) => refuse(e.to_string()),
        }
    }

    /// On the leader, every 100 ms: replaces dead primaries. Waits one node timeout after
    /// becoming leader, so that every live node has heartbeated to it.
    pub async fn run_elections(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            {
                let mut since = self.leading_since.lock();
                match (self.is_leader(), *since) {
                    (false, _) => *since = None,
                    (true, None) => *since = Some(Instant::now()),
                    (true, Some(_)) => {}
                }
            }
            for name in self.state().groups.into_keys() {
                if !self.elect_if_needed(&name).await {
                    break;
                }
            }
        }
    }

    /// Elects a new primary for `name` if its primary is dead (see [`Self::pick_primary`]).
    /// Only on a leader that has led for a node timeout. False when leadership was lost.
    async fn elect_if_needed(&self, name: &str) -> bool {
        let settled = self
            .leading_since
            .lock()
            .is_some_and(|t| t.elapsed() >= self.cfg.node_timeout);
        if !settled {
            return true;
        }
        let Some(g) = self.state().groups.get(name).cloned() else {
            return true;
        };
        let Some(new) = self.pick_primary(name, &g) else {
            return true;
        };
        let req = CtrlRequest::Elect {
            group: name.to_owned(),
            expected_epoch: g.epoch,
            primary: new,
        };
        match self.write(req).await {
            Ok(WriteOutcome::Done(CtrlResponse::Group(after))) => {
                tracing::warn!(group = %name, old = ?g.primary, new, epoch = after.epoch, "elected a new primary")
            }
            Ok(WriteOutcome::Done(other)) => {
                tracing::info!(group = %name, ?other, "election not applied")
            }
            Ok(WriteOutcome::NotLeader(_)) => return false,
            Err(e) => tracing::warn!(group = %name, error = %e, "election failed"),
        }
        true
    }

    /// The node to make primary of `group`, if its primary is missing or dead: the live
    /// in-sync member with the longest log (only an in-sync member holds everything
    /// acknowledged); any live member for a group that never had a primary, or with unclean
    /// election. A primary is dead when silent for the node timeout, or sooner when every live
    /// in-sync replica has lost its link to it and it missed its last heartbeat (a process that
    /// dies closes its connections at once; a primary still heartbeating is never replaced
    /// this way).
    fn pick_primary(&self, name: &str, g: &GroupState) -> Option<i64> {
        let live = self.live.lock();
        let alive = |id: &i64| {
            live.get(&(name.to_owned(), *id))
                .filter(|l| l.seen.elapsed() < self.cfg.node_timeout)
                .cloned()
        };
        if let Some(p) = g.primary
            && let Some(l) = alive(&p)
        {
            let reporters: Vec<Liveness> = g
                .in_sync
                .iter()
                .filter(|i| **i != p)
                .filter_map(alive)
                .collect();
            let lost_by_all = !reporters.is_empty()
                && reporters.iter().all(|r| r.link_down && r.epoch >= g.epoch);
            // Nobody listens on its HA port any more: the process is gone.
            let refused_by_all = lost_by_all && reporters.iter().all(|r| r.refused);
            if !(refused_by_all || lost_by_all && l.seen.elapsed() > l.every * 3 / 2) {
                return None;
            }
        }
        let pool: Vec<i64> = if g.epoch == 0
            || self.cfg.unclean_election && !g.in_sync.iter().any(|i| alive(i).is_some())
        {
            g.members.keys().copied().collect()
        } else {
            g.in_sync.iter().copied().collect()
        };
        pool.into_iter()
            .filter(|id| Some(*id) != g.primary || g.epoch == 0)
            .filter_map(|id| alive(&id).map(|l| (id, l)))
            .max_by(|(a, la), (b, lb)| {
                (la.epoch, la.written, std::cmp::Reverse(*a)).cmp(&(
                    lb.epoch,
                    lb.written,
                    std::cmp::Reverse(*b),
                ))
            })
            .map(|(id, _)| id)
    }

    /// The HTTP routes: Raft between controllers, and the nodes' API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/controller/heartbeat", post(heartbeat_route))
            .route("/controller/in-sync", post(alter_route))
            .route("/controller/state", get(state_route))
            .route("/controller/handover", post(handover_route))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz_route))
            .route("/metrics", get(metrics_route))
            .with_state(Arc::clone(self))
            .merge(network::raft_router(self.raft.clone()))
    }
}

async fn heartbeat_route(
    State(c): State<Arc<Controller>>,
    Json(hb): Json<Heartbeat>,
) -> Json<HeartbeatReply> {
    Json(c.heartbeat(hb).await)
}

async fn alter_route(
    State(c): State<Arc<Controller>>,
    Json(req): Json<AlterInSync>,
) -> Json<AlterReply> {
    Json(c.alter(req).await)
}

async fn handover_route(
    State(c): State<Arc<Controller>>,
    Json(req): Json<Handover>,
) -> Json<AlterReply> {
    Json(c.handover(req).await)
}

/// Ready once a leader is known (this controller takes part in a working Raft group).
async fn readyz_route(State(c): State<Arc<Controller>>) -> (axum::http::StatusCode, String) {
    match c.leader() {
        Some(l) => (axum::http::StatusCode::OK, format!("leader {l}\n")),
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no leader elected\n".into(),
        ),
    }
}

/// Prometheus text: leadership, Raft term and applied index, and each group's epoch and
/// in-sync set size.
async fn metrics_route(State(c): State<Arc<Controller>>) -> String {
    use std::fmt::Write;
    let m = c.raft.metrics().borrow().clone();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP rmq_controller_leader 1 on the controller that leads the Raft group.\n# TYPE rmq_controller_leader gauge\nrmq_controller_leader {}",
        u8::from(c.is_leader())
    );
    let _ = writeln!(
        out,
        "# HELP rmq_controller_raft_term Current Raft term.\n# TYPE rmq_controller_raft_term gauge\nrmq_controller_raft_term {}",
        m.current_term
    );
    let _ = writeln!(
        out,
        "# HELP rmq_controller_raft_applied_index Last applied Raft log index.\n# TYPE rmq_controller_raft_applied_index gauge\nrmq_controller_raft_applied_index {}",
        m.last_applied.map_or(0, |l| l.index)
    );
    let groups = c.state().groups;
    let _ = writeln!(
        out,
        "# HELP rmq_controller_group_epoch Epoch of each broker group (bumped by every election).\n# TYPE rmq_controller_group_epoch gauge"
    );
    for (name, g) in &groups {
        let _ = writeln!(
            out,
            "rmq_controller_group_epoch{{group=\"{name}\"}} {}",
            g.epoch
        );
    }
    let _ = writeln!(
        out,
        "# HELP rmq_controller_group_in_sync Members in each group's in-sync set, the primary included.\n# TYPE rmq_controller_group_in_sync gauge"
    );
    for (name, g) in &groups {
        let _ = writeln!(
            out,
            "rmq_controller_group_in_sync{{group=\"{name}\"}} {}",
            g.in_sync.len()
        );
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateReply {
    id: NodeId,
    is_leader: bool,
    leader: Option<String>,
    groups: BTreeMap<String, GroupState>,
}

async fn state_route(State(c): State<Arc<Controller>>) -> Json<serde_json::Value> {
    Json(
        serde_json::to_value(StateReply {
            id: c.cfg.id,
            is_leader: c.is_leader(),
            leader: c.leader(),
            groups: c.state().groups,
        })
        .expect("plain data"),
    )
}

/// Runs a controller until `shutdown` resolves.
pub async fn run(
    cfg: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if !cfg.peers.contains_key(&cfg.id) {
        anyhow::bail!(
            "controller id {} is not one of the peers {:?}",
            cfg.id,
            cfg.peers
        );
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding the controller port {}", cfg.listen))?;
    let controller = Controller::start(cfg.clone()).await?;
    tracing::info!(id = cfg.id, listen = %listener.local_addr()?, peers = ?cfg.peers, "controller started");
    let elections = tokio::spawn(Arc::clone(&controller).run_elections());
    let router = controller.router();
    let listener = crate::tls::HttpListener::new(listener, &cfg.tls)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    elections.abort();
    controller.raft.shutdown().await.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: i64) -> MemberInfo {
        MemberInfo {
            ha_addr: format!("h{n}"),
            addr: format!("a{n}"),
        }
    }

    #[test]
    fn decisions_are_compare_and_set_on_the_epoch() {
        let mut s = ControllerState::default();
        for id in [1, 2, 3] {
            s.apply(&CtrlRequest::Register {
                group: "g".into(),
                broker_id: id,
                member: member(id),
            });
        }
        let elect = |s: &mut ControllerState, epoch, p| {
            s.apply(&CtrlRequest::Elect {
                group: "g".into(),
                expected_epoch: epoch,
                primary: p,
            })
        };
        assert!(
            matches!(elect(&mut s, 0, 1), CtrlResponse::Group(g) if g.epoch == 1 && g.primary == Some(1))
        );
        // A retry of the same election is refused: the epoch moved.
        assert!(matches!(elect(&mut s, 0, 2), CtrlResponse::Rejected(_)));
        let alter = |s: &mut ControllerState, epoch, p, set: &[i64]| {
            s.apply(&CtrlRequest::AlterInSync {
                group: "g".into(),
                epoch,
                primary: p,
                in_sync: set.iter().copied().collect(),
            })
        };
        assert!(
            matches!(alter(&mut s, 1, 1, &[1, 2, 3]), CtrlResponse::Group(g) if g.in_sync.len() == 3)
        );
        // Only the current primary, in the current epoch, with itself in the set.
        assert!(matches!(
            alter(&mut s, 1, 2, &[2]),
            CtrlResponse::Rejected(_)
        ));
        assert!(matches!(
            alter(&mut s, 0, 1, &[1]),
            CtrlResponse::Rejected(_)
        ));
        assert!(matches!(
            alter(&mut s, 1, 1, &[2]),
            CtrlResponse::Rejected(_)
        ));
        assert!(matches!(
            alter(&mut s, 1, 1, &[1, 9]),
            CtrlResponse::Rejected(_)
        ));
        // An election resets the set to the new primary.
        assert!(
            matches!(elect(&mut s, 1, 3), CtrlResponse::Group(g) if g.in_sync == BTreeSet::from([3]) && g.epoch == 2)
        );
    }
}
