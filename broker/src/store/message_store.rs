//! `MessageStore`: the store's public API, and the threads behind it (flusher, dispatcher,
//! housekeeper for checkpoints and retention).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::checkpoint::{AbortMarker, Checkpoint};
use super::commitlog::{Appended, CommitLog, Prepared};
use super::config::{FlushPolicy, StoreConfig};
use super::consume_queue::ConsumeQueueStore;
use super::consumer_offset::ConsumerOffsetStore;
use super::dispatch::QueueEntry;
use super::error::{IoContext, Result, StoreError};
use super::flush::Signal;
use super::index::IndexService;
use super::properties;
use super::record::{self, Entry, MAX_PROPERTIES_LEN, MAX_TOPIC_LEN, Message, StoredMessage};
use super::recovery::{self, RecoveryReport};
use super::retention::{self, RetentionHook, RetentionReport, SegmentInfo};
use super::{dispatch, flush};

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub physical_offset: u64,
    pub queue_offset: u64,
    pub size: u32,
    pub store_timestamp: i64,
}

impl From<Appended> for PutResult {
    fn from(a: Appended) -> Self {
        PutResult {
            physical_offset: a.physical_offset,
            queue_offset: a.queue_offset,
            size: a.size,
            store_timestamp: a.store_timestamp,
        }
    }
}

/// Outcome of a queue read, as RocketMQ's `GetMessageStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    Found,
    /// The queue has never had a message.
    NoMatchedLogicQueue,
    /// The queue exists but holds nothing readable.
    NoMessageInQueue,
    /// Below the queue's min offset: start again at `next_offset`.
    OffsetTooSmall,
    /// Exactly at the queue's end: nothing new yet.
    OffsetOverflowOne,
    /// Past the queue's end.
    OffsetOverflowBadly,
    /// The queue entries point at CommitLog data no longer held locally.
    OffsetFoundNull,
}

#[derive(Debug, Clone)]
pub struct GetResult {
    pub status: GetStatus,
    pub messages: Vec<StoredMessage>,
    /// Where the next read of this queue should start.
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// The ConsumeQueues' footprint.
#[derive(Debug, Clone, Copy)]
pub struct QueueStats {
    /// Queues opened since start (each costs memory, never a descriptor of its own).
    pub open_queues: usize,
    /// Queues found on disk at start and not used since.
    pub unopened_queues: usize,
    /// ConsumeQueue files open now, at most `open_files_limit`.
    pub open_files: usize,
    pub open_files_limit: usize,
    /// Queue files opened since start (cache misses).
    pub file_opens: u64,
    /// Queues with entries waiting in memory for their file (the next sync writes them).
    pub waiting_queues: usize,
    pub last_checkpoint: Duration,
}

/// The CommitLog's positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    /// First byte held locally.
    pub min: u64,
    /// End of the last complete record.
    pub written: u64,
    /// Durable up to here.
    pub flushed: u64,
    /// Safe to hand to consumers up to here.
    pub confirmed: u64,
    /// ConsumeQueues and indexes are built up to here.
    pub dispatched: u64,
    /// Flushes that made new bytes durable since the store opened.
    pub flushes: u64,
}

/// State shared by the API and the background threads.
pub struct Inner {
    pub(crate) config: StoreConfig,
    pub(crate) commitlog: CommitLog,
    pub(crate) queues: ConsumeQueueStore,
    pub(crate) index: IndexService,
    pub(crate) offsets: ConsumerOffsetStore,
    pub(crate) dispatched: AtomicU64,
    pub(crate) dispatched_tx: watch::Sender<u64>,
    pub(crate) flushed_tx: watch::Sender<u64>,
    pub(crate) flush_signal: Signal,
    pub(crate) dispatch_signal: Signal,
    pub(crate) housekeeping_signal: Signal,
    pub(crate) shutdown: AtomicBool,
    pub(crate) flusher_done: AtomicBool,
    pub(crate) retention_hook: RwLock<Option<RetentionHook>>,
    pub(crate) cold_reader: RwLock<Option<Arc<dyn ColdReader>>>,
    pub(crate) replication: Replication,
    /// Held by the dispatcher while it dispatches a batch, and by a truncation.
    pub(crate) dispatch_lock: Mutex<()>,
    /// How long the last checkpoint took, in microseconds.
    checkpoint_micros: AtomicU64,
    /// One checkpoint at a time (the housekeeping thread's, an API call's, shutdown's): they
    /// write the same temporary file.
    checkpoint_lock: Mutex<()>,
    /// When ConsumeQueues and indexes were last synced, and the dispatch position that sync
    /// covered (what checkpoints vouch for until the next one).
    queues_synced: Mutex<Option<(Instant, u64)>>,
    /// Receives waiting for new messages, by topic.
    pub(crate) topic_waiters: TopicWaiters,
}

/// Wakes the long-polling receives of a topic when messages are dispatched to it, and no
/// other: a node with 10,000 waiting consumers wakes only those with something to read.
#[derive(Default)]
pub(crate) struct TopicWaiters(Mutex<HashMap<String, watch::Sender<u64>>>);

impl TopicWaiters {
    fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        let mut map = self.0.lock();
        match map.get(topic) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(topic.to_owned(), tx);
                rx
            }
        }
    }

    /// Messages were dispatched to these topics (repeats allowed).
    pub(crate) fn notify<'a>(&self, topics: impl Iterator<Item = &'a str>) {
        let mut map = self.0.lock();
        if map.is_empty() {
            return;
        }
        let mut last = None;
        for topic in topics {
            if last == Some(topic) {
                continue;
            }
            last = Some(topic);
            if let Some(tx) = map.get(topic) {
                if tx.receiver_count() == 0 {
                    map.remove(topic);
                } else {
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }
}

/// The store's side of replication in a broker group (driven by `crate::ha`).
pub(crate) struct Replication {
    /// Dispatch (so consumers) never goes past this: the offset every in-sync replica holds
    /// (`u64::MAX`: no such limit).
    confirm_limit: AtomicU64,
    /// A replica refuses client writes; its log grows only from its primary.
    replica: AtomicBool,
    /// SYNC replication: a put is acknowledged once `acked` reaches its end.
    sync: AtomicBool,
    timeout: Mutex<std::time::Duration>,
    acked_tx: watch::Sender<u64>,
    /// Puts are refused while fewer than `min_in_sync` nodes (the primary included) are in
    /// sync.
    in_sync: AtomicUsize,
    min_in_sync: AtomicUsize,
    /// Woken whenever the written offset moves (replication senders wait on it).
    written: tokio::sync::Notify,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            confirm_limit: AtomicU64::new(u64::MAX),
            replica: AtomicBool::new(false),
            sync: AtomicBool::new(false),
            timeout: Mutex::new(std::time::Duration::from_secs(3)),
            acked_tx: watch::Sender::new(0),
            in_sync: AtomicUsize::new(1),
            min_in_sync: AtomicUsize::new(1),
            written: tokio::sync::Notify::new(),
        }
    }
}

/// Reads CommitLog bytes that are no longer held locally (tiered storage).
pub trait ColdReader: Send + Sync {
    /// The bytes of the record that starts at `physical_offset` (at least the whole record;
    /// more is allowed), `Ok(None)` when no tier holds it, an error when the tier holds it but
    /// cannot be read right now (the caller must not skip the message).
    fn read_record(
        &self,
        physical_offset: u64,
    ) -> std::result::Result<Option<bytes::Bytes>, String>;
}

impl Inner {
    /// What the dispatcher may hand to consumers: durable bytes under SYNC_FLUSH, written ones
    /// under ASYNC_FLUSH.
    pub(crate) fn confirmed(&self) -> u64 {
        let local = match self.config.flush_policy {
            FlushPolicy::SyncFlush => self.commitlog.flushed(),
            FlushPolicy::AsyncFlush => self.commitlog.written(),
        };
        local.min(self.replication.confirm_limit.load(Ordering::Acquire))
    }

    /// Makes ConsumeQueues, indexes and consumer offsets durable, then records how far.
    /// A checkpoint that makes everything dispatched so far durable.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        self.checkpoint_with(true, true)
    }

    /// A checkpoint. Consumer offsets are written only with `offsets` (the housekeeping thread
    /// writes them every [`OFFSETS_PERSIST_INTERVAL`], not every second: with 100,000 queues
    /// and 1,000 groups the table is megabytes, and the offsets are not what recovery starts
    /// from). ConsumeQueues and indexes are synced with `all`, or once
    /// `consume_queue_sync_interval` has passed since they last were; in between the
    /// checkpoint vouches for the dispatch position of their last sync.
    fn checkpoint_with(&self, offsets: bool, all: bool) -> Result<()> {
        let _one = self.checkpoint_lock.lock();
        let started = Instant::now();
        let mut synced = self.queues_synced.lock();
        let due = all
            || synced.is_none_or(|(at, _)| at.elapsed() >= self.config.consume_queue_sync_interval);
        let vouched = match *synced {
            Some((_, vouched)) if !due => vouched,
            _ => {
                let dispatched = self.dispatched.load(Ordering::Acquire);
                self.queues.sync_all()?;
                self.index.flush()?;
                *synced = Some((Instant::now(), dispatched));
                dispatched
            }
        };
        if offsets {
            self.offsets.persist()?;
        }
        Checkpoint {
            commitlog: self.commitlog.flushed(),
            consume_queue: vouched,
            index: vouched,
        }
        .store(&self.config.root_dir)?;
        self.checkpoint_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// How often the housekeeping thread writes the consumer offsets (Apache's
/// `flushConsumerOffsetInterval` is 5 s too). A crash loses at most this much of the offsets
/// pull consumers committed (they read those messages again); pop consumers' acks are in their
/// own log. A clean shutdown writes them.
const OFFSETS_PERSIST_INTERVAL: Duration = Duration::from_secs(5);

/// A RocketMQ message store on local disk.
pub struct MessageStore {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    abort: Mutex<Option<AbortMarker>>,
    _lock: std::fs::File,
    recovery: RecoveryReport,
}

fn validate(msg: &Message, max_body: usize) -> Result<()> {
    let topic = &msg.topic;
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(StoreError::InvalidTopic {
            topic: topic.clone(),
            reason: "length must be 1 to 127 characters",
        });
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
    {
        return Err(StoreError::InvalidTopic {
            topic: topic.clone(),
            reason: "only letters, digits and % | _ - are allowed",
        });
    }
    if !(0..=65535).contains(&msg.queue_id) {
        return Err(StoreError::InvalidQueueId(msg.queue_id));
    }
    if msg.body.len() > max_body {
        return Err(StoreError::MessageTooLarge {
            size: msg.body.len(),
            max: max_body,
        });
    }
    if msg.properties.len() > MAX_PROPERTIES_LEN {
        return Err(StoreError::PropertiesTooLarge {
            size: msg.properties.len(),
            max: MAX_PROPERTIES_LEN,
        });
    }
    if !record::properties_well_formed(&msg.properties) {
        return Err(StoreError::MalformedProperties);
    }
    Ok(())
}

impl MessageStore {
    /// Opens (or creates) the store at `config.root_dir`, recovering from a crash if the last
    /// run did not shut down cleanly, and starts its background threads.
    pub fn open(config: StoreConfig) -> Result<MessageStore> {
        config.validate()?;
        let root = config.root_dir.clone();
        std::fs::create_dir_all(&root).at(&root)?;
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        lock.try_lock().map_err(|_| StoreError::Config {
            field: "rootDir",
            reason: format!("{} is in use by another process", root.display()),
        })?;
        let checkpoint = Checkpoint::load(&root)?;
        let (abort, crashed) = AbortMarker::create(&root)?;
        let commitlog = CommitLog::load(
            &config.commitlog_dir(),
            config.segment_size,
            config.store_host,
        )?;
        let inner = Arc::new(Inner {
            queues: ConsumeQueueStore::new(
                &config.consume_queue_dir(),
                config.consume_queue_entries_per_file,
                config.consume_queue_open_files(),
            )?,
            index: IndexService::open(&config.index_dir(), config.index)?,
            offsets: ConsumerOffsetStore::open(&config.config_dir())?,
            commitlog,
            dispatched: AtomicU64::new(0),
            dispatched_tx: watch::Sender::new(0),
            flushed_tx: watch::Sender::new(0),
            flush_signal: Signal::default(),
            dispatch_signal: Signal::default(),
            housekeeping_signal: Signal::default(),
            shutdown: AtomicBool::new(false),
            flusher_done: AtomicBool::new(false),
            retention_hook: RwLock::new(None),
            cold_reader: RwLock::new(None),
            replication: Replication::default(),
            dispatch_lock: Mutex::new(()),
            checkpoint_micros: AtomicU64::new(0),
            checkpoint_lock: Mutex::new(()),
            queues_synced: Mutex::new(None),
            topic_waiters: TopicWaiters::default(),
            config,
        });
        if !inner.config.tiered {
            inner.queues.delete_before(inner.commitlog.min_offset())?;
        }
        let report = recovery::recover(&inner, checkpoint, crashed)?;
        inner.dispatched.store(report.end, Ordering::Release);
        inner.dispatched_tx.send_replace(report.end);
        inner.flushed_tx.send_replace(inner.commitlog.flushed());
        inner.checkpoint()?;
        let mut threads = Vec::new();
        for (name, body) in [
            ("rmq-flush", flush::run as fn(Arc<Inner>)),
            ("rmq-dispatch", dispatch::run),
            ("rmq-housekeeping", housekeeping),
        ] {
            let inner = Arc::clone(&inner);
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || body(inner))
                    .map_err(|e| StoreError::io(PathBuf::from(name), e))?,
            );
        }
        Ok(MessageStore {
            inner,
            threads: Mutex::new(threads),
            abort: Mutex::new(Some(abort)),
            _lock: lock,
            recovery: report,
        })
    }

    /// What recovery found and repaired when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Appends one message; returns once it is acknowledged under the flush policy.
    pub async fn put_message(&self, msg: &Message) -> Result<PutResult> {
        let prepared = [self.prepare(msg)?];
        let mut result = None;
        self.append(&prepared, &mut |a| result = Some(a))?;
        let appended = result.expect("one append per message");
        self.wait_acknowledgeable(appended.end()).await?;
        Ok(appended.into())
    }

    /// Appends a batch under one lock and one flush wait. A validation error appends nothing.
    pub async fn put_messages(&self, msgs: &[Message]) -> Result<Vec<PutResult>> {
        let prepared = msgs
            .iter()
            .map(|m| self.prepare(m))
            .collect::<Result<Vec<_>>>()?;
        let mut results = Vec::with_capacity(msgs.len());
        let mut end = 0;
        self.append(&prepared, &mut |a| {
            end = a.end();
            results.push(PutResult::from(a));
        })?;
        self.wait_acknowledgeable(end).await?;
        Ok(results)
    }

    /// Validates a message and computes what the append needs, outside the append lock.
    fn prepare<'a>(&self, msg: &'a Message) -> Result<Prepared<'a>> {
        validate(msg, self.inner.config.max_message_size)?;
        Ok(Prepared {
            message: msg,
            body_crc: record::body_crc(&msg.body),
            encoded_len: record::encoded_len(msg, &self.inner.config.store_host),
        })
    }

    fn append(
        &self,
        prepared: &[Prepared<'_>],
        on_appended: &mut dyn FnMut(Appended),
    ) -> Result<()> {
        let inner = &self.inner;
        if inner.shutdown.load(Ordering::Acquire) {
            return Err(StoreError::ShutDown);
        }
        let r = &inner.replication;
        if r.replica.load(Ordering::Acquire) {
            return Err(StoreError::NotPrimary);
        }
        let (in_sync, min) = (
            r.in_sync.load(Ordering::Acquire),
            r.min_in_sync.load(Ordering::Acquire),
        );
        if in_sync < min {
            return Err(StoreError::NotEnoughInSyncReplicas { in_sync, min });
        }
        // Open the queue before taking the CommitLog's writer lock: a first touch reads its
        // folder, which must not stall every other producer.
        let mut last: Option<(&str, i32)> = None;
        for p in prepared {
            let key = (p.message.topic.as_str(), p.message.queue_id);
            if last != Some(key) {
                inner.queues.existing(key.0, key.1)?;
                last = Some(key);
            }
        }
        let load = |topic: &str, queue_id: i32| -> Result<u64> {
            Ok(inner
                .queues
                .existing(topic, queue_id)?
                .map_or(0, |q| q.max_offset()))
        };
        let result = inner.commitlog.append(prepared, &load, on_appended);
        r.written.notify_waiters();
        result
    }

    /// Waits until bytes up to `end` may be acknowledged under the flush policy.
    async fn wait_acknowledgeable(&self, end: u64) -> Result<()> {
        let inner = &self.inner;
        match inner.config.flush_policy {
            FlushPolicy::SyncFlush => {
                inner.flush_signal.notify();
                let mut rx = inner.flushed_tx.subscribe();
                let wait = rx.wait_for(|flushed| *flushed >= end);
                match tokio::time::timeout(inner.config.sync_flush_timeout, wait).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) => Err(StoreError::ShutDown),
                    Err(_) => Err(StoreError::FlushTimeout(inner.config.sync_flush_timeout)),
                }
            }
            FlushPolicy::AsyncFlush => {
                inner.dispatch_signal.notify();
                Ok(())
            }
        }?;
        let r = &inner.replication;
        if r.sync.load(Ordering::Acquire) {
            let timeout = *r.timeout.lock();
            let mut rx = r.acked_tx.subscribe();
            let wait = rx.wait_for(|acked| *acked >= end);
            match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(StoreError::ShutDown),
                Err(_) => return Err(StoreError::ReplicationTimeout(timeout)),
            }
        }
        Ok(())
    }

    /// Makes this store a replica (client writes refused, the log grows from the primary
    /// only) or a primary.
    pub fn set_replica(&self, replica: bool) {
        self.inner
            .replication
            .replica
            .store(replica, Ordering::Release);
    }

    /// Whether the CommitLog holds no segment at all (a fresh store).
    pub fn log_is_empty(&self) -> bool {
        self.inner.commitlog.segments().is_empty()
    }

    pub fn is_replica(&self) -> bool {
        self.inner.replication.replica.load(Ordering::Acquire)
    }

    /// Consumers see nothing past `limit` (`u64::MAX`: no limit): what every in-sync replica
    /// holds, on a primary; the primary's confirm offset, on a replica.
    pub fn set_confirm_limit(&self, limit: u64) {
        let r = &self.inner.replication;
        let old = r.confirm_limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            self.inner.dispatch_signal.notify();
        }
    }

    /// SYNC replication (a put waits for the in-sync replicas, see
    /// [`MessageStore::set_replicated`]) or not, and how long a put waits.
    pub fn set_sync_replication(&self, sync: bool, timeout: std::time::Duration) {
        let r = &self.inner.replication;
        *r.timeout.lock() = timeout;
        r.sync.store(sync, Ordering::Release);
    }

    /// How far the replicas that a SYNC put waits for hold the log.
    pub fn set_replicated(&self, offset: u64) {
        self.inner.replication.acked_tx.send_if_modified(|v| {
            let changed = *v != offset;
            *v = offset;
            changed
        });
    }

    /// How many nodes (the primary included) are in sync, and the fewest that accept writes.
    pub fn set_in_sync(&self, in_sync: usize, min: usize) {
        let r = &self.inner.replication;
        r.in_sync.store(in_sync, Ordering::Release);
        r.min_in_sync.store(min, Ordering::Release);
    }

    /// Resolves once the written offset may have moved past what the caller saw.
    pub fn written_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.replication.written.notified()
    }

    /// A replication chunk from `offset`: whole records up to about `max_bytes` (see
    /// [`CommitLog::chunk_end`]), below `limit`. `Ok(None)`: nothing new yet.
    pub fn read_chunk(&self, offset: u64, max_bytes: u64) -> Result<Option<(u64, bytes::Bytes)>> {
        let log = &self.inner.commitlog;
        let end = log.chunk_end(offset, u64::MAX, max_bytes)?;
        if end <= offset {
            return Ok(None);
        }
        Ok(log.chunk_bytes(offset, end).map(|b| (end, b)))
    }

    /// Appends records replicated from the primary at `offset` (see
    /// [`CommitLog::append_raw`]); returns the new written offset.
    pub fn append_replicated(&self, offset: u64, bytes: &[u8]) -> Result<u64> {
        let inner = &self.inner;
        if inner.shutdown.load(Ordering::Acquire) {
            return Err(StoreError::ShutDown);
        }
        let was_empty = inner.commitlog.segments().is_empty();
        if was_empty {
            let _d = inner.dispatch_lock.lock();
            let end = inner.commitlog.append_raw(offset, bytes)?;
            inner.dispatched.store(offset, Ordering::Release);
            inner.dispatched_tx.send_replace(offset);
            inner.flushed_tx.send_replace(offset);
            drop(_d);
            inner.flush_signal.notify();
            inner.dispatch_signal.notify();
            return Ok(end);
        }
        let end = inner.commitlog.append_raw(offset, bytes)?;
        inner.replication.written.notify_waiters();
        inner.flush_signal.notify();
        inner.dispatch_signal.notify();
        Ok(end)
    }

    /// Cuts the log at `end` (a record boundary), with the queue entries beyond it: what a
    /// replica does when its log diverged from its primary's after a failover.
    pub fn truncate_to(&self, end: u64) -> Result<()> {
        let inner = &self.inner;
        let _d = inner.dispatch_lock.lock();
        let removed = inner.commitlog.truncate(end)?;
        let mut dropped = 0;
        if inner.dispatched.load(Ordering::Acquire) > end {
            dropped += inner.queues.truncate_beyond(end)?;
            inner.dispatched.store(end, Ordering::Release);
            inner.dispatched_tx.send_replace(end);
        }
        inner.flushed_tx.send_if_modified(|f| {
            let changed = *f > end;
            *f = (*f).min(end);
            changed
        });
        tracing::warn!(
            end,
            segments_removed = removed.len(),
            queue_entries_dropped = dropped,
            "CommitLog truncated (diverged from the primary)"
        );
        Ok(())
    }

    /// Turns a replica into the primary: the next queue offsets are taken from everything it
    /// holds (records past the dispatched offset included), then client writes are accepted.
    pub fn promote(&self) -> Result<()> {
        let inner = &self.inner;
        let from = inner.dispatched.load(Ordering::Acquire);
        let written = inner.commitlog.written();
        let mut next: std::collections::HashMap<(String, i32), u64> = Default::default();
        let mut at = from;
        while at < written {
            let (entries, reached) = dispatch::scan(inner, at, written, 4096)?;
            for e in entries {
                let slot = next.entry((e.topic, e.queue_id)).or_insert(0);
                *slot = (*slot).max(e.queue_offset + 1);
            }
            if reached == at {
                break;
            }
            at = reached;
        }
        inner.commitlog.seed_queue_offsets(&next);
        self.set_replica(false);
        Ok(())
    }

    /// Up to `max` messages of a queue from logical offset `offset`.
    pub fn get_message(
        &self,
        topic: &str,
        queue_id: i32,
        offset: u64,
        max: usize,
    ) -> Result<GetResult> {
        let Some(q) = self.inner.queues.existing(topic, queue_id)? else {
            return Ok(GetResult {
                status: GetStatus::NoMatchedLogicQueue,
                messages: Vec::new(),
                next_offset: 0,
                min_offset: 0,
                max_offset: 0,
            });
        };
        let (min, max_offset) = (q.min_offset(), q.max_offset());
        let result = |status, next_offset, messages| {
            Ok(GetResult {
                status,
                messages,
                next_offset,
                min_offset: min,
                max_offset,
            })
        };
        if min == max_offset {
            return result(GetStatus::NoMessageInQueue, min, Vec::new());
        }
        if offset < min {
            return result(GetStatus::OffsetTooSmall, min, Vec::new());
        }
        if offset == max_offset {
            return result(GetStatus::OffsetOverflowOne, offset, Vec::new());
        }
        if offset > max_offset {
            return result(GetStatus::OffsetOverflowBadly, max_offset, Vec::new());
        }
        let entries = q.get(offset, max)?;
        let mut messages = Vec::with_capacity(entries.len());
        let mut next = offset;
        for e in &entries {
            next += 1;
            if e.size == 0 {
                continue;
            }
            match self.read_message_checked(e.physical_offset) {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => continue,
                // A tier that cannot be read right now: hand out what was read and resume at
                // this entry later; never skip past it.
                Err(e) if messages.is_empty() => return Err(e),
                Err(_) => {
                    next -= 1;
                    break;
                }
            }
        }
        let status = if messages.is_empty() {
            GetStatus::OffsetFoundNull
        } else {
            GetStatus::Found
        };
        result(status, next, messages)
    }

    /// The message at a CommitLog offset, if it is valid and held locally or by a tier.
    pub fn read_message(&self, physical_offset: u64) -> Option<StoredMessage> {
        self.read_message_checked(physical_offset).ok().flatten()
    }

    /// Like [`Self::read_message`], but a tier that holds the offset and cannot be read right
    /// now is an error, not an absent message.
    pub fn read_message_checked(&self, physical_offset: u64) -> Result<Option<StoredMessage>> {
        let limit = self.inner.commitlog.written();
        match self.inner.commitlog.read_entry(physical_offset, limit) {
            Ok(Some(Entry::Message(m))) if m.physical_offset == physical_offset => Ok(Some(m)),
            _ if physical_offset < self.inner.commitlog.min_offset() => {
                let Some(cold) = self.inner.cold_reader.read().clone() else {
                    return Ok(None);
                };
                let bytes = cold.read_record(physical_offset).map_err(|reason| {
                    StoreError::TierUnavailable {
                        physical_offset,
                        reason,
                    }
                })?;
                let Some(bytes) = bytes else {
                    return Ok(None);
                };
                match record::decode(&bytes) {
                    Ok(Entry::Message(m)) if m.physical_offset == physical_offset => Ok(Some(m)),
                    _ => {
                        tracing::warn!(
                            physical_offset,
                            "a tier returned bytes that are not the record asked for"
                        );
                        Ok(None)
                    }
                }
            }
            _ => Ok(None),
        }
    }

    /// The ConsumeQueue and index entries of the messages in a local segment (what a tier
    /// uploads next to the segment, so that a restore need not read the messages).
    pub fn segment_queue_entries(&self, segment: &SegmentInfo) -> Result<Vec<QueueEntry>> {
        let (entries, _) = dispatch::scan(&self.inner, segment.base, segment.end, usize::MAX)?;
        Ok(entries)
    }

    /// Restores ConsumeQueue and index entries saved by [`Self::segment_queue_entries`]: a
    /// data folder that lost everything but a tier's history. Call before the store takes
    /// writes, segment by segment in CommitLog order, then [`Self::finish_restore`].
    pub fn restore_queue_entries(&self, entries: &[QueueEntry]) -> Result<()> {
        dispatch::apply(&self.inner, entries)
    }

    /// Like [`Self::restore_queue_entries`], but reads the messages in `[from, to)` through the
    /// cold reader (for segments whose entries were not saved). Returns the offset reached.
    pub fn restore_from_cold(&self, from: u64, to: u64) -> Result<u64> {
        if self.inner.cold_reader.read().is_none() {
            return Ok(from);
        }
        dispatch::dispatch_all(&self.inner, from, to.min(self.inner.commitlog.min_offset()))
    }

    /// Makes restored ConsumeQueues and indexes durable.
    pub fn finish_restore(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Forgets queue and index entries that point below `offset` (a tier expired that
    /// history). Only below the local CommitLog: local messages are never forgotten here.
    pub fn forget_before(&self, offset: u64) -> Result<()> {
        let offset = offset.min(self.inner.commitlog.min_offset());
        if offset == 0 {
            return Ok(());
        }
        self.inner.queues.delete_before(offset)?;
        self.inner.index.delete_files_before(offset)?;
        Ok(())
    }

    /// Installs the reader for offsets below the local CommitLog (tiered storage).
    pub fn set_cold_reader(&self, reader: Arc<dyn ColdReader>) {
        *self.inner.cold_reader.write() = Some(reader);
    }

    /// Sealed CommitLog segments (full, or sealed early by [`Self::seal_active_segment`])
    /// whose bytes are all flushed and dispatched: what a tier may upload.
    pub fn sealed_segments(&self) -> Vec<SegmentInfo> {
        let inner = &self.inner;
        let ready = inner
            .commitlog
            .flushed()
            .min(inner.dispatched.load(Ordering::Acquire));
        inner
            .commitlog
            .segments()
            .into_iter()
            .filter(|s| s.end() <= ready)
            .map(|s| SegmentInfo {
                base: s.base(),
                end: s.end(),
                path: s.path().to_owned(),
            })
            .collect()
    }

    /// Seals the segment being written now (the rest of it is left blank), so that a tier can
    /// take every byte written so far. Returns whether there was anything to seal.
    pub fn seal_active_segment(&self) -> Result<bool> {
        let sealed = self.inner.commitlog.roll()?;
        if sealed {
            self.inner.flush_signal.notify();
            self.inner.dispatch_signal.notify();
        }
        Ok(sealed)
    }

    /// Deletes local segments that end at or below `keep_from` and that the retention hook
    /// lets go (a tier's hot window).
    pub fn evict_before(&self, keep_from: u64) -> Result<RetentionReport> {
        retention::evict(&self.inner, keep_from)
    }

    /// Smallest readable logical offset of a queue (0 for an unknown queue).
    pub fn min_offset(&self, topic: &str, queue_id: i32) -> Result<u64> {
        Ok(self
            .inner
            .queues
            .existing(topic, queue_id)?
            .map_or(0, |q| q.min_offset()))
    }

    /// One past the last logical offset of a queue (0 for an unknown queue).
    pub fn max_offset(&self, topic: &str, queue_id: i32) -> Result<u64> {
        Ok(self
            .inner
            .queues
            .existing(topic, queue_id)?
            .map_or(0, |q| q.max_offset()))
    }

    /// The smallest logical offset whose message was stored at or after `timestamp` (ms); the
    /// queue's max offset if none was.
    pub fn offset_by_time(&self, topic: &str, queue_id: i32, timestamp: i64) -> Result<u64> {
        let Some(q) = self.inner.queues.existing(topic, queue_id)? else {
            return Ok(0);
        };
        let (mut lo, mut hi) = (q.min_offset(), q.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let stored_at = q
                .entry(mid)?
                .and_then(|e| self.read_message(e.physical_offset))
                .map(|m| m.store_timestamp);
            match stored_at {
                Some(ts) if ts >= timestamp => hi = mid,
                Some(_) => lo = mid + 1,
                // Unreadable (removed) entries count as older.
                None => lo = mid + 1,
            }
        }
        Ok(lo)
    }

    /// Messages of `topic` whose `KEYS` contain `key` (or whose unique id is `key`), newest
    /// first, stored between `begin` and `end` (ms).
    pub fn lookup_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin: i64,
        end: i64,
    ) -> Vec<StoredMessage> {
        let candidates = self.inner.index.query(
            &format!("{topic}#{key}"),
            max.saturating_mul(2).max(16),
            begin,
            end,
        );
        candidates
            .into_iter()
            .filter_map(|p| self.read_message(p))
            .filter(|m| {
                m.topic == topic
                    && (m.property(properties::UNIQ_KEY) == Some(key)
                        || m.property(properties::KEYS)
                            .is_some_and(|ks| ks.split(' ').any(|k| k == key)))
            })
            .take(max)
            .collect()
    }

    /// A message by id: RocketMQ's offset message id (store host + physical offset), or the
    /// producer's unique id (`UNIQ_KEY`) within `topic`.
    pub fn lookup_by_msg_id(&self, topic: &str, msg_id: &str) -> Option<StoredMessage> {
        if let Some((_, offset)) = record::parse_offset_msg_id(msg_id)
            && let Some(m) = self.read_message(offset)
            && m.topic == topic
        {
            return Some(m);
        }
        self.inner
            .index
            .query(&format!("{topic}#{msg_id}"), 16, 0, i64::MAX)
            .into_iter()
            .filter_map(|p| self.read_message(p))
            .find(|m| m.topic == topic && m.property(properties::UNIQ_KEY) == Some(msg_id))
    }

    pub fn consumer_offsets(&self) -> &ConsumerOffsetStore {
        &self.inner.offsets
    }

    pub fn log_offsets(&self) -> LogOffsets {
        let i = &self.inner;
        LogOffsets {
            min: i.commitlog.min_offset(),
            written: i.commitlog.written(),
            flushed: i.commitlog.flushed(),
            confirmed: i.confirmed(),
            dispatched: i.dispatched.load(Ordering::Acquire),
            flushes: i.commitlog.flushes(),
        }
    }

    /// How many queues and queue files the store holds open, and what its last checkpoint
    /// cost.
    pub fn queue_stats(&self) -> QueueStats {
        let q = &self.inner.queues;
        let (open, on_disk) = q.counts();
        QueueStats {
            open_queues: open,
            unopened_queues: on_disk,
            open_files: q.open_files().open_count(),
            open_files_limit: q.open_files().capacity(),
            file_opens: q.open_files().opens(),
            waiting_queues: q.waiting_count(),
            last_checkpoint: Duration::from_micros(
                self.inner.checkpoint_micros.load(Ordering::Relaxed),
            ),
        }
    }

    /// Watches the dispatched offset: messages below it are readable through their queues.
    pub fn dispatched(&self) -> watch::Receiver<u64> {
        self.inner.dispatched_tx.subscribe()
    }

    /// Changes when messages are dispatched to `topic` (a long-polling receive waits on it).
    pub fn watch_topic(&self, topic: &str) -> watch::Receiver<u64> {
        self.inner.topic_waiters.watch(topic)
    }

    /// Wakes the receives waiting on `topic` (a delivery became visible earlier than planned).
    pub fn wake_topic(&self, topic: &str) {
        self.inner.topic_waiters.notify(std::iter::once(topic));
    }

    /// Waits until everything appended so far is readable through its queue.
    pub async fn wait_dispatched(&self, offset: u64) -> Result<()> {
        let mut rx = self.dispatched();
        rx.wait_for(|d| *d >= offset)
            .await
            .map_err(|_| StoreError::ShutDown)?;
        Ok(())
    }

    /// Installs the hook that retention asks before deleting a segment (tiering keeps a
    /// segment until its upload is confirmed).
    pub fn set_retention_hook(&self, hook: RetentionHook) {
        *self.inner.retention_hook.write() = Some(hook);
    }

    /// Runs retention now, as if at wall-clock `now` with the disk `usage_ratio` full (the
    /// housekeeping thread calls this with the real clock and disk).
    pub fn run_retention(&self, now: SystemTime, usage_ratio: f64) -> Result<RetentionReport> {
        retention::run(&self.inner, now, usage_ratio)
    }

    /// Makes queues, indexes and consumer offsets durable and writes the checkpoint.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Stops the background threads after flushing and dispatching everything written, writes
    /// a final checkpoint and marks the shutdown clean.
    pub fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.shutdown.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        inner.flush_signal.notify();
        inner.dispatch_signal.notify();
        inner.housekeeping_signal.notify();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let name = t.thread().name().map(str::to_owned);
            let is_flusher = name.as_deref() == Some("rmq-flush");
            if t.join().is_err() {
                tracing::error!(thread = ?name, "store thread panicked");
            }
            if is_flusher {
                inner.flusher_done.store(true, Ordering::Release);
                inner.dispatch_signal.notify();
            }
        }
        inner.commitlog.flush()?;
        let dispatched = inner.dispatched.load(Ordering::Acquire);
        let end = dispatch::dispatch_all(inner, dispatched, inner.commitlog.written())?;
        inner.dispatched.store(end, Ordering::Release);
        inner.checkpoint()?;
        if let Some(abort) = self.abort.lock().take() {
            abort.remove()?;
        }
        tracing::info!(offset = end, "store shut down cleanly");
        Ok(())
    }
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "store shutdown failed; the next start will recover");
        }
    }
}

/// Body of the housekeeping thread: checkpoints and retention on their intervals.
fn housekeeping(inner: Arc<Inner>) {
    let cfg = &inner.config;
    let mut last_retention = Instant::now();
    let mut last_offsets = Instant::now();
    loop {
        inner.housekeeping_signal.wait(cfg.checkpoint_interval);
        if inner.shutdown.load(Ordering::Acquire) {
            return;
        }
        let offsets = last_offsets.elapsed() >= OFFSETS_PERSIST_INTERVAL;
        match inner.checkpoint_with(offsets, false) {
            Ok(()) if offsets => last_offsets = Instant::now(),
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "checkpoint failed"),
        }
        if last_retention.elapsed() >= cfg.retention_interval {
            last_retention = Instant::now();
            let usage = retention::disk_usage_ratio(&cfg.root_dir).unwrap_or(0.0);
            if let Err(e) = retention::run(&inner, SystemTime::now(), usage) {
                tracing::error!(error = %e, "retention failed");
            }
        }
    }
}
