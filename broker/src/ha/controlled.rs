//! A node whose role the controllers decide (RocketMQ 5 controller mode). It heartbeats to
//! every controller and follows the leader's answer: primary of its group for the answered
//! epoch, or replica of the answered primary. A node that loses the primary role (it was cut
//! off and a replica was elected) stops serving replicas, refuses writes, and follows the new
//! primary, cutting whatever it wrote that the new primary does not have.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::epoch::EpochFile;
use super::{ColdLog, HaConfig, InSyncApprover, MetaSync, Primary, PrimaryLink, Replica};
use crate::controller::{
    AlterInSync, AlterReply, GroupState, Handover, Heartbeat, HeartbeatReply, MemberInfo,
};
use crate::store::MessageStore;

/// What a node currently is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", tag = "role")]
pub enum Role {
    /// No answer from a controller leader yet.
    #[default]
    Waiting,
    Primary {
        epoch: u64,
    },
    Replica {
        epoch: u64,
        primary: i64,
    },
}

pub struct ControlledNode {
    pub store: Arc<MessageStore>,
    pub epochs: Arc<EpochFile>,
    pub ha: HaConfig,
    pub group: String,
    pub broker_id: i64,
    pub member: MemberInfo,
    pub meta: Arc<dyn MetaSync>,
    /// The controllers' HTTP addresses.
    pub controllers: Vec<String>,
    pub heartbeat_every: Duration,
    /// The id to register with the name servers under: 0 while primary.
    pub registered_id: Arc<AtomicI64>,
    /// Called when the role changes (re-register at once).
    pub on_change: Arc<dyn Fn() + Send + Sync>,
    pub role: watch::Sender<Role>,
    /// The group's tier, for replicas that need bytes this node evicted while primary.
    pub cold: Option<Arc<dyn ColdLog>>,
    /// TLS on the HA port and on the link to the primary.
    pub tls: HaTls,
}

/// TLS of the replication links: the HA port's, and the replica side's (with a CA).
#[derive(Clone, Default)]
pub struct HaTls {
    pub server: Option<Arc<crate::tls::ServerTls>>,
    pub client: Option<crate::tls::ClientTls>,
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// While primary: the replicas' acks (for a hand-over at shutdown).
    primary: Option<Arc<Primary>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Asks the controllers to record an in-sync set.
struct ControllerApprover {
    client: reqwest::Client,
    controllers: Vec<String>,
    group: String,
    primary: i64,
}

impl InSyncApprover for ControllerApprover {
    fn approve(
        &self,
        epoch: u64,
        in_sync: BTreeSet<i64>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<BTreeSet<i64>, String>> + Send>>
    {
        let client = self.client.clone();
        let targets = self.controllers.clone();
        let req = AlterInSync {
            group: self.group.clone(),
            epoch,
            primary: self.primary,
            in_sync,
        };
        Box::pin(async move {
            ask_leader(&client, targets, "/controller/in-sync", &req)
                .await
                .map(|g| g.in_sync)
        })
    }
}

/// Posts `req` to the controllers' leader: any controller first; a follower names the
/// leader, which is tried next. The group as the leader holds it after the change.
async fn ask_leader<T: Serialize>(
    client: &reqwest::Client,
    mut targets: Vec<String>,
    path: &str,
    req: &T,
) -> Result<GroupState, String> {
    let mut last = String::from("no controller answered");
    let mut i = 0;
    while i < targets.len() && i < 8 {
        let url = format!("http://{}{path}", targets[i]);
        i += 1;
        let reply = client
            .post(&url)
            .timeout(Duration::from_secs(3))
            .json(req)
            .send()
            .await;
        let reply: AlterReply = match reply {
            Ok(r) => match r.json().await {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            },
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        if let Some(g) = reply.group {
            return Ok(g);
        }
        if let Some(leader) = reply.leader
            && !targets[i..].contains(&leader)
        {
            targets.insert(i, leader);
        }
        last = reply.error.unwrap_or_default();
    }
    Err(last)
}

/// How long a stopping primary waits for an in-sync replica to hold everything it wrote.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

impl ControlledNode {
    /// Heartbeats and follows the controllers until `shutdown` turns true. `listener` is the
    /// HA port, served while this node is primary.
    pub async fn run(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let listener = Arc::new(listener);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("an HTTP client without TLS");
        // Until a leader answers, this node serves nothing and accepts no writes.
        self.store.set_replica(true);
        self.store
            .set_confirm_limit(self.store.log_offsets().dispatched);
        let mut running: Option<Running> = None;
        let link = Arc::new(PrimaryLink::default());
        let mut tick = tokio::time::interval(self.heartbeat_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // A replica that lost its primary says so at once.
                _ = link.down.notified() => {}
                _ = shutdown.changed() => break,
            }
            let link_down = matches!(*self.role.borrow(), Role::Replica { .. }) && !link.is_up();
            let refused = link_down && link.is_refused();
            let Some(group) = self.heartbeat(&client, link_down, refused).await else {
                continue;
            };
            let want = match group.primary {
                Some(p) if p == self.broker_id => Role::Primary { epoch: group.epoch },
                Some(p) => Role::Replica {
                    epoch: group.epoch,
                    primary: p,
                },
                None => continue,
            };
            if *self.role.borrow() == want {
                continue;
            }
            if let Some(r) = running.take() {
                r.stop().await;
            }
            self.meta.on_role_change();
            running = match &want {
                Role::Primary { epoch } => self.become_primary(&client, &listener, *epoch, &group),
                Role::Replica { epoch, primary } => {
                    link.set(false);
                    self.become_replica(*epoch, *primary, &group, Arc::clone(&link))
                }
                Role::Waiting => None,
            };
            if running.is_some() {
                tracing::warn!(group = %self.group, id = self.broker_id, role = ?want, "role changed");
                self.registered_id.store(
                    if matches!(want, Role::Primary { .. }) {
                        0
                    } else {
                        self.broker_id
                    },
                    Ordering::Release,
                );
                self.role.send_replace(want);
                (self.on_change)();
            }
        }
        if let Some(r) = running.take() {
            let role = self.role.borrow().clone();
            if let (Some(p), Role::Primary { epoch }) = (&r.primary, role) {
                self.hand_over(&client, p, epoch).await;
            }
            r.stop().await;
        }
    }

    /// A primary that stops (a restart, a rolling upgrade) moves its role to an in-sync
    /// replica at once instead of leaving the group without a primary until the controllers'
    /// node timeout: it refuses new writes, waits until an in-sync replica has acked
    /// everything it wrote, and asks the controllers to elect that replica (a compare-and-set
    /// on the epoch). Nothing acknowledged is lost: the new primary holds the whole log.
    async fn hand_over(&self, client: &reqwest::Client, primary: &Primary, epoch: u64) {
        self.store.set_replica(true);
        let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
        // A put that passed the primary check just before the fence may still be appending:
        // the log end must hold still for one round before a replica is judged caught up.
        let mut last_end = None;
        let to = loop {
            let written = self.store.log_offsets().written;
            let best = primary
                .replicas()
                .into_iter()
                .filter(|r| r.in_sync && r.acked >= written)
                .max_by_key(|r| r.acked);
            if let Some(r) = best.filter(|_| last_end == Some(written)) {
                break r.broker_id;
            }
            last_end = Some(written);
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(group = %self.group, written, replicas = ?primary.replicas(), "stopping without a hand-over: no in-sync replica holds the whole log; the controllers elect one after the node timeout");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let req = Handover {
            group: self.group.clone(),
            epoch,
            from: self.broker_id,
            to,
        };
        match ask_leader(
            client,
            self.controllers.clone(),
            "/controller/handover",
            &req,
        )
        .await
        {
            Ok(g) => {
                tracing::info!(group = %self.group, to, epoch = g.epoch, "handed the primary role over")
            }
            Err(e) => {
                tracing::warn!(group = %self.group, to, error = %e, "hand-over refused; the controllers elect after the node timeout")
            }
        }
    }

    /// One heartbeat to every controller; the leader's view of the group, if a leader
    /// answered.
    async fn heartbeat(
        &self,
        client: &reqwest::Client,
        link_down: bool,
        refused: bool,
    ) -> Option<GroupState> {
        let offsets = self.store.log_offsets();
        let hb = Heartbeat {
            group: self.group.clone(),
            broker_id: self.broker_id,
            member: self.member.clone(),
            epoch: self.epochs.last_epoch(),
            written: offsets.written,
            primary_link_down: link_down,
            primary_refused: refused,
            heartbeat_every_ms: self.heartbeat_every.as_millis() as u64,
        };
        let calls = self.controllers.iter().map(|c| {
            let req = client
                .post(format!("http://{c}/controller/heartbeat"))
                .timeout(Duration::from_secs(2))
                .json(&hb)
                .send();
            async move {
                match req.await {
                    Ok(r) => r.json::<HeartbeatReply>().await.ok(),
                    Err(_) => None,
                }
            }
        });
        let replies = futures_util::future::join_all(calls).await;
        replies
            .into_iter()
            .flatten()
            .find(|r| r.is_leader)
            .and_then(|r| r.group)
    }

    fn become_primary(
        &self,
        client: &reqwest::Client,
        listener: &Arc<TcpListener>,
        epoch: u64,
        group: &GroupState,
    ) -> Option<Running> {
        let approver = Arc::new(ControllerApprover {
            client: client.clone(),
            controllers: self.controllers.clone(),
            group: self.group.clone(),
            primary: self.broker_id,
        });
        let primary = match Primary::with_approver(
            Arc::clone(&self.store),
            Arc::clone(&self.epochs),
            self.ha.clone(),
            &self.group,
            epoch,
            Arc::clone(&self.meta),
            self.broker_id,
            Some(approver),
            &group.in_sync,
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "becoming the primary failed");
                return None;
            }
        };
        if let Some(cold) = &self.cold {
            primary.set_cold_log(Arc::clone(cold));
        }
        primary.set_tls(self.tls.server.clone());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(&primary).serve(Arc::clone(listener), rx));
        Some(Running {
            stop,
            task,
            primary: Some(primary),
        })
    }

    fn become_replica(
        &self,
        epoch: u64,
        primary: i64,
        group: &GroupState,
        link: Arc<PrimaryLink>,
    ) -> Option<Running> {
        let Some(info) = group.members.get(&primary) else {
            tracing::warn!(primary, "the elected primary is not a registered member");
            return None;
        };
        self.store.set_replica(true);
        let replica = Replica {
            store: Arc::clone(&self.store),
            epochs: Arc::clone(&self.epochs),
            group: self.group.clone(),
            broker_id: self.broker_id,
            primary: info.ha_addr.clone(),
            meta: Arc::clone(&self.meta),
            min_epoch: epoch,
            link: Some(link),
            tls: self.tls.client.clone(),
        };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(replica.run(rx));
        Some(Running {
            stop,
            task,
            primary: None,
        })
    }
}

/// The HA address to advertise: `advertise`, else the listener's (loopback for 0.0.0.0).
pub fn advertised(local: SocketAddr, advertise: Option<&str>) -> String {
    advertise.map(str::to_owned).unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            format!("127.0.0.1:{}", local.port())
        } else {
            local.to_string()
        }
    })
}
