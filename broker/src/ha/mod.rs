//! Replication inside a broker group: one primary, any number of replicas, each with its own
//! store. A replica connects to its primary's HA port and receives CommitLog records from its
//! own written offset on; its dispatcher builds ConsumeQueues and indexes from them exactly as
//! the primary's did. Consumer offsets and topic/group metadata follow every second (timers and
//! transactions keep their progress as consumer offsets of system groups and their messages in
//! the CommitLog, so they follow too).
//!
//! The primary keeps the in-sync set (RocketMQ's SyncStateSet): a replica joins once it acked
//! everything the primary had when a chunk was cut at the head of the log, and leaves when it
//! has not been at the head for `maxLag`, or disconnects. Consumers never see past what every
//! in-sync replica holds (the confirm offset). With SYNC replication a put is acknowledged once
//! the in-sync replicas hold it (all of them with `allAckInSyncStateSet`, else
//! `inSyncReplicas - 1` of them); with fewer than `minInSyncReplicas` nodes in sync the primary
//! refuses puts rather than acknowledge what it could not replicate.
//!
//! Each primary term has an epoch; a replica cuts its log at the end of the last epoch it
//! shares with its primary before catching up (see [`epoch`]).

pub mod controlled;
pub mod epoch;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::store::consumer_offset::{ConsumerOffsetStore, OffsetTable};
use crate::store::{MessageStore, StoreError};
use epoch::EpochFile;
use wire::{Frame, Hello, Welcome, WireError};

/// Records per Data frame: about this many bytes (at least one whole record).
const CHUNK_BYTES: u64 = 1 << 20;
/// How often an idle link carries a heartbeat (and the confirm offset).
const BEAT_EVERY: Duration = Duration::from_millis(500);
/// How soon a changed confirm offset reaches replicas when no data flows.
const CONFIRM_EVERY: Duration = Duration::from_millis(20);
/// How often metadata and consumer offsets are sent when they changed.
const META_EVERY: Duration = Duration::from_secs(1);
/// A replica receiving a continuous stream acks at least this often.
const ACK_EVERY: Duration = Duration::from_millis(2);
/// A link that carried nothing for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicationMode {
    /// Acknowledge after the primary's own write/flush; replicas follow.
    #[default]
    Async,
    /// Acknowledge once the in-sync replicas hold the message.
    Sync,
}

/// A store node's replication settings (`ha` in its configuration).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HaConfig {
    /// Where the HA port listens (a primary serves its replicas there).
    pub listen: SocketAddr,
    /// `host:port` other nodes reach the HA port at (defaults to the listen address).
    pub advertise: Option<String>,
    /// Controllers' HTTP addresses: when set, they decide which node of the group is primary
    /// (and `primary` is ignored).
    pub controllers: Vec<String>,
    /// How often a node heartbeats to the controllers.
    #[serde(with = "crate::store::config::millis")]
    pub heartbeat_every: Duration,
    /// `host:port` of the primary's HA port; set on a replica.
    pub primary: Option<String>,
    pub replication: ReplicationMode,
    /// Fewest nodes in sync, the primary included, for the primary to accept puts.
    pub min_in_sync_replicas: usize,
    /// SYNC: wait for every in-sync replica (else for `inSyncReplicas - 1` of them).
    pub all_ack_in_sync_state_set: bool,
    /// SYNC without `allAckInSyncStateSet`: nodes, the primary included, that must hold a
    /// message before it is acknowledged.
    pub in_sync_replicas: usize,
    /// A replica that has not been at the head of the log for this long leaves the in-sync
    /// set (RocketMQ's `haMaxTimeSlaveNotCatchup`).
    #[serde(with = "crate::store::config::millis")]
    pub max_lag: Duration,
    /// How long a SYNC put waits for the replicas before failing.
    #[serde(with = "crate::store::config::millis")]
    pub sync_timeout: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 10913)),
            advertise: None,
            controllers: Vec::new(),
            heartbeat_every: Duration::from_millis(500),
            primary: None,
            replication: ReplicationMode::Async,
            min_in_sync_replicas: 1,
            all_ack_in_sync_state_set: false,
            in_sync_replicas: 1,
            max_lag: Duration::from_secs(15),
            sync_timeout: Duration::from_secs(3),
        }
    }
}

impl HaConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.min_in_sync_replicas == 0 || self.in_sync_replicas == 0 {
            return Err("minInSyncReplicas and inSyncReplicas must be at least 1".into());
        }
        if self.max_lag < Duration::from_millis(100) {
            return Err("maxLag must be at least 100 ms".into());
        }
        Ok(())
    }
}

/// What besides the CommitLog a replica takes from its primary (metadata, consumer offsets).
/// Every second the primary sends each replica what changed since its last frame on that link:
/// everything first, then only the changes (or, to a replica of an earlier version that takes
/// whole snapshots only, everything again whenever anything changed).
pub trait MetaSync: Send + Sync {
    /// Everything, as one frame.
    fn snapshot(&self) -> Bytes;
    /// The next frame for a link, or None when nothing changed since the last one.
    fn changes(&self, link: &mut MetaLink) -> Option<Bytes> {
        link.whole_if_changed(self.snapshot())
    }
    fn apply(&self, frame: &[u8]) -> Result<(), String>;
    /// The node became its group's primary, or stopped being it.
    fn on_role_change(&self) {}
}

/// What one replica link has been sent of the metadata.
#[derive(Default)]
pub struct MetaLink {
    /// The replica takes frames of changes (else whole snapshots only).
    pub deltas: bool,
    /// Checksum of the last whole snapshot sent.
    crc: Option<u32>,
    /// Versions (or checksums) of the parts last sent, by the implementation's own keys.
    versions: HashMap<&'static str, u64>,
    /// The consumer offsets as last sent.
    offsets: Option<OffsetTable>,
}

impl MetaLink {
    /// `snapshot` unless it is what was sent last.
    pub fn whole_if_changed(&mut self, snapshot: Bytes) -> Option<Bytes> {
        let crc = crc32fast::hash(&snapshot);
        (self.crc.replace(crc) != Some(crc)).then_some(snapshot)
    }

    /// Whether the part `key` changed since it was last sent (recording `version` as sent).
    pub fn part_changed(&mut self, key: &'static str, version: u64) -> bool {
        self.versions.insert(key, version) != Some(version)
    }

    /// The consumer offsets to send: the whole table on a link's first frame (or when the
    /// table lost entries, which a replica would otherwise keep), then what changed. The
    /// flag says whether it is the whole table.
    pub fn offsets(&mut self, offsets: &ConsumerOffsetStore) -> (OffsetTable, bool) {
        let changed = self.part_changed("offsets", offsets.version());
        if let Some(sent) = self.offsets.as_mut() {
            if !changed {
                return (OffsetTable::new(), false);
            }
            if let Some(changes) = offsets.changes_since(sent) {
                return (changes, false);
            }
        }
        let whole = offsets.table();
        self.offsets = Some(whole.clone());
        (whole, true)
    }
}

/// A metadata frame: the parts that changed since the link's last frame (all of them in a
/// whole snapshot). Earlier versions wrote and read `topics`, `groups`, `offsets` and `auth`,
/// always the whole of each.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MetaFrame<T, G, A> {
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<T>>,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<G>>,
    pub offsets: OffsetTable,
    /// `offsets` holds only the entries that changed (else it is the whole table).
    #[serde(
        default,
        rename = "offsetsChanged",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub offsets_changed: bool,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub auth: Option<A>,
}

impl<T, G, A> MetaFrame<T, G, A> {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.topics.is_none()
            && self.groups.is_none()
            && self.auth.is_none()
            && self.offsets_changed
            && self.offsets.is_empty()
    }

    /// Applies the offsets to a replica's table.
    pub fn apply_offsets(&mut self, store: &ConsumerOffsetStore) {
        let offsets = std::mem::take(&mut self.offsets);
        if self.offsets_changed {
            store.merge(offsets);
        } else {
            store.import(offsets);
        }
    }
}

/// Consumer offsets only (what a bare store replicates).
pub struct OffsetSync(pub Arc<MessageStore>);

type OffsetFrame = MetaFrame<(), (), ()>;

impl MetaSync for OffsetSync {
    fn snapshot(&self) -> Bytes {
        let frame = OffsetFrame {
            offsets: self.0.consumer_offsets().table(),
            ..Default::default()
        };
        Bytes::from(serde_json::to_vec(&frame).expect("plain data"))
    }
    fn changes(&self, link: &mut MetaLink) -> Option<Bytes> {
        if !link.deltas {
            return link.whole_if_changed(self.snapshot());
        }
        let (offsets, whole) = link.offsets(self.0.consumer_offsets());
        let frame = OffsetFrame {
            offsets,
            offsets_changed: !whole,
            ..Default::default()
        };
        (!frame.is_empty()).then(|| Bytes::from(serde_json::to_vec(&frame).expect("plain data")))
    }
    fn apply(&self, frame: &[u8]) -> Result<(), String> {
        let mut frame: OffsetFrame = serde_json::from_slice(frame).map_err(|e| e.to_string())?;
        frame.apply_offsets(self.0.consumer_offsets());
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the primary refused this replica: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<std::io::Error> for HaError {
    fn from(e: std::io::Error) -> Self {
        HaError::Wire(WireError::Io(e))
    }
}

/// One replica as the primary sees it.
#[derive(Debug, Clone)]
struct Member {
    /// Its written offset, from its last ack.
    acked: u64,
    /// In the in-sync set (as approved by the controllers, when there are).
    in_sync: bool,
    /// What this primary judges: caught up recently and connected.
    want: bool,
    connected: bool,
    /// Last time it acked everything the primary had when a chunk was cut.
    caught_up_at: Instant,
    /// The end of the last chunk that reached the head of the primary's log.
    head_end: u64,
    /// Which connection owns this entry (a reconnect replaces it).
    link: u64,
}

/// What the primary reports about one replica.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub broker_id: i64,
    pub acked: u64,
    pub in_sync: bool,
}

/// The primary side: serves replicas and keeps the in-sync set.
pub struct Primary {
    store: Arc<MessageStore>,
    epochs: Arc<EpochFile>,
    cfg: HaConfig,
    group: String,
    meta: Arc<dyn MetaSync>,
    members: Mutex<HashMap<i64, Member>>,
    links: std::sync::atomic::AtomicU64,
    /// This node's broker id (in the in-sync sets sent for approval).
    self_id: i64,
    epoch: u64,
    approver: Option<Arc<dyn InSyncApprover>>,
    approving: std::sync::atomic::AtomicBool,
    /// Set when this term ends: nothing may change the store's replication state after.
    ended: std::sync::atomic::AtomicBool,
    /// Where CommitLog bytes evicted from the local disk are (the group's tier).
    cold: std::sync::OnceLock<Arc<dyn ColdLog>>,
    /// TLS on the HA port (the node's `tls` section).
    tls: std::sync::OnceLock<Arc<crate::tls::ServerTls>>,
    /// Bytes of metadata frames sent to replicas.
    meta_bytes: std::sync::atomic::AtomicU64,
}

/// CommitLog bytes the primary no longer holds locally (they were tiered and evicted): a
/// replica that was away for long, or starts empty, copies them from here.
pub trait ColdLog: Send + Sync {
    /// The oldest offset it holds, if any.
    fn start(&self) -> Option<u64>;
    /// Whole records from `offset` (about `max_bytes`; a segment's end marker ends a chunk),
    /// as `(end, bytes)`; `Ok(None)` when it does not hold `offset`.
    fn chunk(&self, offset: u64, max_bytes: u64) -> Result<Option<(u64, Bytes)>, String>;
}

/// Changes to the in-sync set go through the controllers when there are: a replica leaves or
/// joins only once they recorded it, so that an election never picks a node that missed an
/// acknowledged message.
pub trait InSyncApprover: Send + Sync {
    /// Asks for `in_sync` (the primary included) in `epoch`; answers the set now recorded.
    fn approve(
        &self,
        epoch: u64,
        in_sync: std::collections::BTreeSet<i64>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<std::collections::BTreeSet<i64>, String>>
                + Send,
        >,
    >;
}

impl Primary {
    /// Makes `store` the primary of `group` for `epoch` (0: keep the last epoch, or begin
    /// epoch 1 on a log without history).
    pub fn new(
        store: Arc<MessageStore>,
        epochs: Arc<EpochFile>,
        cfg: HaConfig,
        group: &str,
        epoch: u64,
        meta: Arc<dyn MetaSync>,
    ) -> Result<Arc<Primary>, HaError> {
        Self::with_approver(
            store,
            epochs,
            cfg,
            group,
            epoch,
            meta,
            0,
            None,
            &Default::default(),
        )
    }

    /// As [`Primary::new`], for node `self_id`, with in-sync changes approved by `approver`.
    #[allow(clippy::too_many_arguments)]
    pub fn with_approver(
        store: Arc<MessageStore>,
        epochs: Arc<EpochFile>,
        cfg: HaConfig,
        group: &str,
        epoch: u64,
        meta: Arc<dyn MetaSync>,
        self_id: i64,
        approver: Option<Arc<dyn InSyncApprover>>,
        in_sync: &std::collections::BTreeSet<i64>,
    ) -> Result<Arc<Primary>, HaError> {
        let written = store.log_offsets().written;
        if epoch > epochs.last_epoch() || epochs.last_epoch() == 0 {
            epochs.begin(epoch.max(1), written)?;
        }
        store.promote()?;
        let primary_epochs = Arc::clone(&epochs);
        store.set_sync_replication(cfg.replication == ReplicationMode::Sync, cfg.sync_timeout);
        let primary = Arc::new(Primary {
            store,
            epochs,
            cfg,
            group: group.to_owned(),
            meta,
            members: Mutex::new(HashMap::new()),
            links: Default::default(),
            self_id,
            epoch: primary_epochs.last_epoch(),
            approver,
            approving: Default::default(),
            ended: Default::default(),
            cold: Default::default(),
            tls: Default::default(),
            meta_bytes: Default::default(),
        });
        {
            // Replicas the controllers hold in sync count as such until they are recorded out
            // (they get `maxLag` to reconnect and catch up).
            let mut members = primary.members.lock();
            for id in in_sync.iter().filter(|i| **i != self_id) {
                members.insert(
                    *id,
                    Member {
                        acked: 0,
                        in_sync: true,
                        want: true,
                        connected: false,
                        caught_up_at: Instant::now(),
                        head_end: u64::MAX,
                        link: 0,
                    },
                );
            }
            primary.recompute(&members);
        }
        tracing::info!(
            group,
            epoch = primary.epochs.last_epoch(),
            written,
            "serving as the primary"
        );
        Ok(primary)
    }

    /// Bytes of metadata frames sent to replicas so far.
    pub fn meta_bytes_sent(&self) -> u64 {
        self.meta_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serves replicas what was evicted locally from `cold` (the group's tier).
    pub fn set_cold_log(&self, cold: Arc<dyn ColdLog>) {
        let _ = self.cold.set(cold);
    }

    /// Serves the HA port with TLS as `tls` says.
    pub fn set_tls(&self, tls: Option<Arc<crate::tls::ServerTls>>) {
        if let Some(t) = tls {
            let _ = self.tls.set(t);
        }
    }

    /// The oldest CommitLog offset this primary can send: its local log's, or the tier's.
    fn oldest(&self, local_min: u64) -> u64 {
        self.cold
            .get()
            .and_then(|c| c.start())
            .map_or(local_min, |s| s.min(local_min))
    }

    /// The in-sync replicas and their acks.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        let mut out: Vec<_> = self
            .members
            .lock()
            .iter()
            .map(|(id, m)| ReplicaStatus {
                broker_id: *id,
                acked: m.acked,
                in_sync: m.in_sync,
            })
            .collect();
        out.sort_by_key(|r| r.broker_id);
        out
    }

    /// Pushes the in-sync set's consequences into the store: the count (puts refused below
    /// the minimum), the confirm offset, and what SYNC puts wait for.
    fn recompute(&self, members: &HashMap<i64, Member>) {
        if self.ended.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        // Acknowledgements wait for every approved member, and for members whose joining is
        // being approved: once the controllers record one, an election may pick it, so it
        // must already hold everything acknowledged.
        let mut acked: Vec<u64> = members
            .values()
            .filter(|m| m.in_sync || m.want)
            .map(|m| m.acked)
            .collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let in_sync = members.values().filter(|m| m.in_sync).count() + 1;
        self.store
            .set_in_sync(in_sync, self.cfg.min_in_sync_replicas);
        let min_acked = acked.last().copied().unwrap_or(u64::MAX);
        self.store.set_confirm_limit(min_acked);
        let replicated = if self.cfg.all_ack_in_sync_state_set {
            min_acked
        } else {
            match self.cfg.in_sync_replicas - 1 {
                0 => u64::MAX,
                k => acked.get(k - 1).copied().unwrap_or(0),
            }
        };
        self.store.set_replicated(replicated);
    }

    /// Applies `f` to the members, then brings the in-sync set in line with what this primary
    /// judges (at once without controllers; through them otherwise).
    fn update(self: &Arc<Self>, f: &mut dyn FnMut(&mut HashMap<i64, Member>)) {
        let mut members = self.members.lock();
        f(&mut members);
        let differs = members.values().any(|m| m.want != m.in_sync);
        match &self.approver {
            None => {
                for (id, m) in members.iter_mut() {
                    if m.want != m.in_sync {
                        m.in_sync = m.want;
                        tracing::info!(group = %self.group, replica = id, in_sync = m.in_sync, acked = m.acked, "in-sync set changed");
                    }
                }
                members.retain(|_, m| m.connected || m.in_sync);
            }
            Some(approver) if differs => {
                use std::sync::atomic::Ordering;
                if !self.approving.swap(true, Ordering::AcqRel) {
                    let mut want: std::collections::BTreeSet<i64> = members
                        .iter()
                        .filter(|(_, m)| m.want)
                        .map(|(id, _)| *id)
                        .collect();
                    want.insert(self.self_id);
                    let ask = approver.approve(self.epoch, want);
                    let me = Arc::clone(self);
                    tokio::spawn(async move {
                        let result = ask.await;
                        me.approving.store(false, Ordering::Release);
                        match result {
                            Ok(set) => me.update(&mut |members| {
                                for (id, m) in members.iter_mut() {
                                    let now = set.contains(id);
                                    if now != m.in_sync {
                                        m.in_sync = now;
                                        tracing::info!(group = %me.group, replica = id, in_sync = now, acked = m.acked, "in-sync set changed (recorded by the controllers)");
                                    }
                                }
                                members.retain(|_, m| m.connected || m.in_sync);
                            }),
                            Err(e) => {
                                tracing::warn!(group = %me.group, error = %e, "the controllers did not record the in-sync set change; retrying")
                            }
                        }
                    });
                }
            }
            Some(_) => members.retain(|_, m| m.connected || m.in_sync),
        }
        self.recompute(&members);
    }

    /// Accepts replicas on `listener` until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: Arc<TcpListener>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let lag = {
            let me = Arc::clone(&self);
            tokio::spawn(async move { me.watch_lag().await })
        };
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => {
                    let _members = self.members.lock();
                    self.ended.store(true, std::sync::atomic::Ordering::Release);
                    break;
                }
            };
            match accepted {
                Ok((conn, peer)) => {
                    let me = Arc::clone(&self);
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let conn = match crate::tls::accept(conn, me.tls.get().map(|t| &**t)).await
                        {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "replication link refused");
                                return;
                            }
                        };
                        if let Err(e) = me.serve_replica(conn, shutdown).await {
                            tracing::warn!(%peer, error = %e, "replication link closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a replica failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        lag.abort();
    }

    /// Drops replicas that have not been at the head of the log for `maxLag`.
    async fn watch_lag(self: &Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let max_lag = self.cfg.max_lag;
            let pending = self
                .members
                .lock()
                .values()
                .any(|m| (m.want && m.caught_up_at.elapsed() > max_lag) || m.want != m.in_sync);
            if pending {
                self.update(&mut |members| {
                    for m in members.values_mut() {
                        if m.want && m.caught_up_at.elapsed() > max_lag {
                            m.want = false;
                        }
                    }
                });
            }
        }
    }

    fn welcome(&self, hello: &Hello) -> Welcome {
        let ours = self.epochs.entries();
        let offsets = self.store.log_offsets();
        let refuse = |error: String| Welcome {
            error: Some(error),
            ..Welcome::default()
        };
        if hello.group != self.group {
            return refuse(format!(
                "this is the primary of {:?}, not of {:?}",
                self.group, hello.group
            ));
        }
        if hello.segment_size != self.store.config().segment_size {
            return refuse(format!(
                "segment size {} differs from the primary's {}",
                hello.segment_size,
                self.store.config().segment_size
            ));
        }
        // With a tier, the whole history: what was evicted locally is read back from it.
        let oldest = self.oldest(offsets.min);
        if hello.empty {
            return Welcome {
                epochs: ours,
                start: oldest,
                ..Welcome::default()
            };
        }
        let agreed = epoch::agreed_end(&ours, offsets.written, &hello.epochs, hello.end);
        if agreed < oldest {
            return refuse(format!(
                "the replica's log agrees with the primary's only up to {agreed}, below the \
                 oldest byte the primary can send ({oldest}); empty the replica's data \
                 directory to copy the group's log afresh"
            ));
        }
        Welcome {
            epochs: ours,
            truncate_to: (agreed < hello.end).then_some(agreed),
            start: agreed,
            error: None,
        }
    }

    async fn serve_replica(
        self: Arc<Self>,
        conn: crate::tls::Stream,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), HaError> {
        let (r, w) = tokio::io::split(conn);
        let mut r = BufReader::new(r);
        let mut w = BufWriter::with_capacity(64 << 10, w);
        let hello = match tokio::time::timeout(IDLE_TIMEOUT, Frame::read(&mut r)).await {
            Ok(Ok(Some(Frame::Hello(h)))) => h,
            Ok(Ok(other)) => {
                return Err(HaError::Protocol(format!("expected Hello, got {other:?}")));
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(HaError::Protocol("no Hello within the idle timeout".into())),
        };
        let welcome = self.welcome(&hello);
        Frame::Welcome(welcome.clone()).write(&mut w).await?;
        tokio::io::AsyncWriteExt::flush(&mut w).await?;
        if let Some(error) = welcome.error {
            return Err(HaError::Refused(error));
        }
        let id = hello.broker_id;
        let link = self
            .links
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        tracing::info!(group = %self.group, replica = id, start = welcome.start, truncate_to = ?welcome.truncate_to, "replica connected");
        self.update(&mut |members| {
            let (in_sync, want, since) = members
                .get(&id)
                .map_or((false, false, Instant::now()), |m| {
                    (m.in_sync, m.want, m.caught_up_at)
                });
            members.insert(
                id,
                Member {
                    acked: welcome.start,
                    in_sync,
                    want,
                    connected: true,
                    caught_up_at: since,
                    head_end: u64::MAX,
                    link,
                },
            );
        });
        // Acks, read concurrently with sending.
        let acks = {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(IDLE_TIMEOUT, Frame::read(&mut r)).await {
                        Ok(Ok(Some(Frame::Ack { written }))) => me.on_ack(id, link, written),
                        Ok(Ok(None)) => return Ok(()),
                        Ok(Ok(Some(other))) => {
                            return Err(HaError::Protocol(format!("expected Ack, got {other:?}")));
                        }
                        Ok(Err(e)) => return Err(HaError::from(e)),
                        Err(_) => return Err(HaError::Protocol("replica silent".into())),
                    }
                }
            })
        };
        let sent = tokio::select! {
            r = self.send_loop(id, link, welcome.start, hello.meta_changes, &mut w) => r,
            r = acks => r.unwrap_or_else(|e| Err(HaError::Protocol(e.to_string()))),
            _ = shutdown.changed() => Ok(()),
        };
        self.update(&mut |members| {
            if let Some(m) = members.get_mut(&id).filter(|m| m.link == link) {
                m.connected = false;
                m.want = false;
            }
        });
        tracing::info!(group = %self.group, replica = id, "replica disconnected");
        sent
    }

    fn on_ack(self: &Arc<Self>, id: i64, link: u64, written: u64) {
        let mut members = self.members.lock();
        let Some(m) = members.get_mut(&id).filter(|m| m.link == link) else {
            return;
        };
        m.acked = written;
        let mut joins = false;
        if written >= m.head_end {
            m.caught_up_at = Instant::now();
            joins = !m.want;
            m.want = true;
        }
        if joins {
            tracing::info!(group = %self.group, replica = id, acked = written, "replica caught up");
            drop(members);
            self.update(&mut |_| {});
        } else if m.in_sync {
            self.recompute(&members);
        }
    }

    async fn send_loop<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        id: i64,
        link: u64,
        start: u64,
        meta_changes: bool,
        w: &mut W,
    ) -> Result<(), HaError> {
        use tokio::io::AsyncWriteExt;
        let mut pos = start;
        let mut last_confirm = u64::MAX;
        let mut last_beat = Instant::now();
        let mut last_meta = Instant::now() - META_EVERY;
        let mut meta = MetaLink {
            deltas: meta_changes,
            ..MetaLink::default()
        };
        loop {
            let changed = self.store.written_changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if last_meta.elapsed() >= META_EVERY {
                last_meta = Instant::now();
                if let Some(frame) = self.meta.changes(&mut meta) {
                    self.meta_bytes
                        .fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Frame::Meta(frame).write(w).await?;
                }
            }
            let offsets = self.store.log_offsets();
            let mut chunk = self.store.read_chunk(pos, CHUNK_BYTES)?;
            if chunk.is_none()
                && pos < offsets.min
                && let Some(cold) = self.cold.get().cloned()
            {
                // Catch-up from the tier: bytes this primary already evicted.
                chunk = tokio::task::spawn_blocking(move || cold.chunk(pos, CHUNK_BYTES))
                    .await
                    .map_err(|e| HaError::Protocol(e.to_string()))?
                    .map_err(|e| {
                        HaError::Protocol(format!("reading offset {pos} from the tier: {e}"))
                    })?;
            }
            if let Some((end, records)) = chunk {
                if end >= offsets.written
                    && let Some(m) = self.members.lock().get_mut(&id).filter(|m| m.link == link)
                {
                    m.head_end = end;
                }
                last_confirm = offsets.confirmed;
                Frame::Data {
                    offset: pos,
                    confirm: last_confirm,
                    records,
                }
                .write(w)
                .await?;
                pos = end;
                last_beat = Instant::now();
                // Keep filling the socket while there is more; flush when caught up.
                if end < offsets.written {
                    continue;
                }
                w.flush().await?;
                continue;
            }
            if pos >= offsets.written
                && let Some(m) = self.members.lock().get_mut(&id).filter(|m| m.link == link)
                && m.head_end == u64::MAX
            {
                // Nothing to send at all: the replica is at the head already.
                m.head_end = pos;
            }
            if offsets.confirmed != last_confirm || last_beat.elapsed() >= BEAT_EVERY {
                last_confirm = offsets.confirmed;
                last_beat = Instant::now();
                Frame::Beat {
                    confirm: last_confirm,
                }
                .write(w)
                .await?;
                w.flush().await?;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(CONFIRM_EVERY) => {}
            }
        }
    }
}

/// The replica side: follows `primary` until `shutdown` turns true, reconnecting after
/// failures.
pub struct Replica {
    pub store: Arc<MessageStore>,
    pub epochs: Arc<EpochFile>,
    pub group: String,
    pub broker_id: i64,
    pub primary: String,
    pub meta: Arc<dyn MetaSync>,
    /// A primary whose history ends before this epoch is stale (a newer one was elected).
    pub min_epoch: u64,
    /// Whether the link to the primary is up (told to the controllers).
    pub link: Option<Arc<PrimaryLink>>,
    /// TLS to the primary's HA port (verifying its name), when the node has a CA.
    pub tls: Option<crate::tls::ClientTls>,
}

/// A replica's link to its primary, as its heartbeats report it: when every live in-sync
/// replica has lost the primary and the primary has missed its heartbeats, the controllers
/// replace it without waiting for the whole node timeout (a killed process closes its
/// connections at once).
#[derive(Default)]
pub struct PrimaryLink {
    up: std::sync::atomic::AtomicBool,
    /// The last attempt to reconnect was refused: nothing listens on the primary's HA port.
    refused: std::sync::atomic::AtomicBool,
    /// Woken when the link goes down (so that a heartbeat says so at once).
    pub down: tokio::sync::Notify,
}

impl PrimaryLink {
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set(&self, up: bool) {
        if up {
            self.refused
                .store(false, std::sync::atomic::Ordering::Release);
        }
        let was = self.up.swap(up, std::sync::atomic::Ordering::AcqRel);
        if was && !up {
            self.down.notify_one();
        }
    }

    pub fn is_refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_refused(&self, refused: bool) {
        let was = self
            .refused
            .swap(refused, std::sync::atomic::Ordering::AcqRel);
        if refused && !was {
            self.down.notify_one();
        }
    }
}

impl Replica {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.store.set_replica(true);
        // Until the primary vouches for it, nothing beyond what consumers could already see
        // (the log may have diverged).
        self.store
            .set_confirm_limit(self.store.log_offsets().dispatched);
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.follow() => r,
                _ = shutdown.changed() => return,
            };
            if let Some(link) = &self.link {
                link.set(false);
                let refused = matches!(&result, Err(HaError::Wire(WireError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused);
                link.set_refused(refused);
            }
            if let Err(e) = result {
                tracing::warn!(primary = %self.primary, error = %e, "replication from the primary stopped; reconnecting");
            }
            if started.elapsed() > Duration::from_secs(5) {
                // A link that was up: the first retry at once (a dead primary's port refuses).
                backoff = Duration::from_millis(20);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One connection: handshake, cut the log if it diverged, then apply what arrives.
    pub async fn follow(&self) -> Result<(), HaError> {
        let conn = TcpStream::connect(&self.primary).await?;
        conn.set_nodelay(true)?;
        let conn = match &self.tls {
            Some(tls) => {
                tls.connect(crate::tls::host_of(&self.primary), conn)
                    .await?
            }
            None => crate::tls::Stream::Plain(conn),
        };
        let (r, w) = tokio::io::split(conn);
        let mut r = BufReader::with_capacity(256 << 10, r);
        let mut w = BufWriter::new(w);
        let offsets = self.store.log_offsets();
        let hello = Hello {
            group: self.group.clone(),
            broker_id: self.broker_id,
            epochs: self.epochs.entries(),
            end: offsets.written,
            empty: self.store.log_is_empty(),
            segment_size: self.store.config().segment_size,
            meta_changes: true,
        };
        Frame::Hello(hello).write(&mut w).await?;
        tokio::io::AsyncWriteExt::flush(&mut w).await?;
        let welcome = match tokio::time::timeout(IDLE_TIMEOUT, Frame::read(&mut r)).await {
            Ok(Ok(Some(Frame::Welcome(w)))) => w,
            Ok(Ok(other)) => {
                return Err(HaError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(HaError::Protocol(
                    "no Welcome within the idle timeout".into(),
                ));
            }
        };
        if let Some(error) = welcome.error {
            return Err(HaError::Refused(error));
        }
        let theirs = welcome.epochs.last().map_or(0, |e| e.epoch);
        if theirs < self.min_epoch {
            return Err(HaError::Refused(format!(
                "{} is at epoch {theirs}, older than epoch {}: not the current primary",
                self.primary, self.min_epoch
            )));
        }
        if let Some(end) = welcome.truncate_to {
            tracing::warn!(group = %self.group, from = offsets.written, to = end, "the log diverged from the primary's; cutting it");
            self.store.truncate_to(end)?;
        }
        self.epochs.adopt(&welcome.epochs, u64::MAX)?;
        tracing::info!(group = %self.group, primary = %self.primary, start = welcome.start, "following the primary");
        if let Some(link) = &self.link {
            link.set(true);
        }
        let mut last_ack = Instant::now();
        loop {
            let frame = match tokio::time::timeout(IDLE_TIMEOUT, Frame::read(&mut r)).await {
                Ok(f) => f?,
                Err(_) => return Err(HaError::Protocol("the primary went silent".into())),
            };
            match frame {
                Some(Frame::Data {
                    offset,
                    confirm,
                    records,
                }) => {
                    let written = self.store.append_replicated(offset, &records)?;
                    self.store.set_confirm_limit(confirm.min(written));
                    // Ack once the socket has no more data queued (one ack per burst), and at
                    // least every few milliseconds of a continuous stream.
                    if r.buffer().is_empty() || last_ack.elapsed() >= ACK_EVERY {
                        last_ack = Instant::now();
                        Frame::Ack { written }.write(&mut w).await?;
                        tokio::io::AsyncWriteExt::flush(&mut w).await?;
                    }
                }
                Some(Frame::Beat { confirm }) => {
                    let written = self.store.log_offsets().written;
                    self.store.set_confirm_limit(confirm.min(written));
                    Frame::Ack { written }.write(&mut w).await?;
                    tokio::io::AsyncWriteExt::flush(&mut w).await?;
                }
                Some(Frame::Meta(frame)) => {
                    if let Err(e) = self.meta.apply(&frame) {
                        // Later frames carry only what changes after this one: the link
                        // restarts, and its first frame is whole.
                        return Err(HaError::Protocol(format!(
                            "applying the primary's metadata failed: {e}"
                        )));
                    }
                }
                Some(other) => {
                    return Err(HaError::Protocol(format!("unexpected frame {other:?}")));
                }
                None => return Err(HaError::Protocol("the primary closed the link".into())),
            }
        }
    }
}
