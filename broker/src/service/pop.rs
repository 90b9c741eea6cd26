//! Pop consumption (what gRPC `ReceiveMessage` / `AckMessage` / `ChangeInvisibleDuration` do).
//!
//! Per (consumer group, topic, queue) the broker keeps: the *commit* offset (everything below it
//! is acknowledged; it is the group's consumer offset in the store), the offsets acknowledged
//! above it, the messages in flight with their invisibility deadline and delivery attempt, and
//! `next`, the first offset never handed out. A receive hands out expired in-flight messages
//! again (attempt + 1) and then new ones; an ack marks an offset done and moves the commit
//! offset over every done offset.
//!
//! Durability: every ack is appended to `popAck.log` before the ack is answered, and synced
//! first under SYNC_FLUSH (under ASYNC_FLUSH, like messages, it survives a killed process and
//! is synced at the next compaction); the log is compacted into the consumer offsets
//! periodically. After a restart the in-flight table is empty, so every message that was
//! received but not acknowledged is delivered again (at once rather than after its invisible
//! time, and with the attempt count starting over); an acknowledged one never is.
//!
//! FIFO groups: a queue with a message in flight hands out nothing else, so the messages of a
//! message group (which producers route to one queue) are consumed one at a time, in order,
//! and a failing message blocks its queue until it is acknowledged or dead-lettered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use parking_lot::Mutex;

use crate::store::checkpoint::write_atomically;
use crate::store::{GetStatus, MessageStore, StoreError, StoredMessage};

use super::filter::TagFilter;

const JOURNAL: &str = "popAck.log";

/// Identifies one delivery of one message. Opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptHandle {
    pub topic: String,
    pub queue_id: i32,
    pub offset: u64,
    /// When the message becomes visible again (ms since the epoch).
    pub deadline: i64,
    pub attempt: u32,
}

impl ReceiptHandle {
    pub fn encode(&self) -> String {
        let text = format!(
            "v1 {} {} {} {} {}",
            self.topic, self.queue_id, self.offset, self.deadline, self.attempt
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    pub fn decode(s: &str) -> Option<ReceiptHandle> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let mut it = text.split(' ');
        if it.next()? != "v1" {
            return None;
        }
        let h = ReceiptHandle {
            topic: it.next()?.to_owned(),
            queue_id: it.next()?.parse().ok()?,
            offset: it.next()?.parse().ok()?,
            deadline: it.next()?.parse().ok()?,
            attempt: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(h)
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    deadline: i64,
    attempt: u32,
    /// Client whose receive asked for auto-renewal: its invisible time is extended while the
    /// client is alive, until it acks or changes the invisible time itself.
    renew_for: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct QueueState {
    commit: u64,
    next: u64,
    done: BTreeSet<u64>,
    in_flight: BTreeMap<u64, InFlight>,
}

impl QueueState {
    fn mark_done(&mut self, offset: u64) {
        self.in_flight.remove(&offset);
        if offset >= self.commit {
            self.done.insert(offset);
        }
        while self.done.remove(&self.commit) {
            self.commit += 1;
        }
        self.next = self.next.max(self.commit);
    }

    /// Retention removed every offset below `min`: deliveries and acks below it are moot, and
    /// the group moves on to `min` (in one step however many messages were removed).
    fn retained_from(&mut self, min: u64) {
        if min <= self.commit {
            return;
        }
        self.in_flight = self.in_flight.split_off(&min);
        self.done = self.done.split_off(&min);
        self.commit = min;
        while self.done.remove(&self.commit) {
            self.commit += 1;
        }
        self.next = self.next.max(self.commit);
    }
}

type Key = (String, String, i32);

/// A [`Key`] borrowed from a request: finds a delivery state without allocating (a receive
/// looks at every queue of its topic, most of them with nothing new).
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str, i32);

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        self.2 == k.2 && self.1 == k.1 && self.0 == k.0
    }
}

type StateMap = hashbrown::HashMap<Key, QueueState>;

/// A message handed out by a receive.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: StoredMessage,
    pub handle: ReceiptHandle,
}

/// What one receive on one queue produced.
#[derive(Debug, Default)]
pub struct Popped {
    pub deliveries: Vec<Delivery>,
    /// Messages whose delivery attempts are used up: the caller moves them to the DLQ, then
    /// acknowledges them with the handle given here.
    pub exhausted: Vec<Delivery>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    Acked,
    /// Already acknowledged (an ack is idempotent).
    AlreadyAcked,
    /// The handle names a message that was never delivered.
    InvalidHandle,
}

pub struct PopService {
    store: Arc<MessageStore>,
    dir: PathBuf,
    state: States,
    /// Acks recorded but not yet folded into the consumer offsets.
    journal: Mutex<File>,
    /// Group commit of the journal under SYNC_FLUSH (see [`PopService::journal_durable`]).
    sync: JournalSync,
}

/// Appends are numbered; `synced` is the highest number known durable. One waiter at a time
/// syncs (the leader) and covers every append written before it started; the others wait for
/// its result, so concurrent acks share one `fdatasync` instead of queueing one each behind
/// the journal lock.
struct JournalSync {
    written: AtomicU64,
    syncing: AtomicBool,
    synced: tokio::sync::watch::Sender<u64>,
}

/// Leadership of a journal sync, released on drop.
struct Leading<'a>(&'a AtomicBool);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Delivery states, sharded by queue so that receives and acks on different queues (and the
/// store reads a receive does while it holds its queue's state) do not wait on each other.
struct States(Vec<Mutex<StateMap>>);

const STATE_SHARDS: usize = 64;

impl States {
    fn new(all: HashMap<Key, QueueState>) -> States {
        let shards: Vec<Mutex<StateMap>> = (0..STATE_SHARDS).map(|_| Mutex::default()).collect();
        for (k, st) in all {
            shards[States::index(&k.0, &k.1, k.2)].lock().insert(k, st);
        }
        States(shards)
    }

    fn index(group: &str, topic: &str, queue_id: i32) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (group, topic, queue_id).hash(&mut h);
        h.finish() as usize % STATE_SHARDS
    }

    fn shard(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> parking_lot::MutexGuard<'_, StateMap> {
        self.0[States::index(group, topic, queue_id)].lock()
    }
}

fn key(group: &str, topic: &str, queue_id: i32) -> Key {
    (group.to_owned(), topic.to_owned(), queue_id)
}

impl PopService {
    /// Opens the pop state next to the store's consumer offsets, replaying the ack log.
    pub fn open(store: Arc<MessageStore>) -> Result<PopService, StoreError> {
        let dir = store.config().config_dir();
        let path = dir.join(JOURNAL);
        let mut state: HashMap<Key, QueueState> = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                // A torn last line (crash mid-write) is simply not an ack.
                let mut it = line.split(' ');
                let (Some(g), Some(t), Some(q), Some(o), None) =
                    (it.next(), it.next(), it.next(), it.next(), it.next())
                else {
                    continue;
                };
                let (Ok(q), Ok(o)) = (q.parse::<i32>(), o.parse::<u64>()) else {
                    continue;
                };
                let k = key(g, t, q);
                if !state.contains_key(&k) {
                    let commit = store.consumer_offsets().get(g, t, q).unwrap_or(0);
                    state.insert(
                        k.clone(),
                        QueueState {
                            commit,
                            next: commit,
                            ..QueueState::default()
                        },
                    );
                }
                state.get_mut(&k).expect("inserted").mark_done(o);
            }
        }
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let service = PopService {
            store,
            dir,
            state: States::new(state),
            journal: Mutex::new(journal),
            sync: JournalSync {
                written: AtomicU64::new(0),
                syncing: AtomicBool::new(false),
                synced: tokio::sync::watch::Sender::new(0),
            },
        };
        service.compact()?;
        Ok(service)
    }

    fn queue_state<'a>(
        &self,
        states: &'a mut StateMap,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Result<&'a mut QueueState, StoreError> {
        let k = KeyRef(group, topic, queue_id);
        if !states.contains_key(&k) {
            // A new group starts at the queue's first message still held.
            let commit = match self.store.consumer_offsets().get(group, topic, queue_id) {
                Some(c) => c,
                None => self.store.min_offset(topic, queue_id)?,
            };
            states.insert(
                key(group, topic, queue_id),
                QueueState {
                    commit,
                    next: commit,
                    ..QueueState::default()
                },
            );
        }
        Ok(states.get_mut(&k).expect("inserted above"))
    }

    /// Hands out up to `max` messages of one queue, invisible until `now + invisible_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn pop(
        &self,
        group: &str,
        max_attempts: u32,
        fifo: bool,
        topic: &str,
        queue_id: i32,
        max: usize,
        invisible_ms: i64,
        filter: &TagFilter,
        now: i64,
        renew_for: Option<Arc<str>>,
    ) -> Result<Popped, StoreError> {
        let mut out = Popped::default();
        let mut states = self.state.shard(group, topic, queue_id);
        let st = self.queue_state(&mut states, group, topic, queue_id)?;
        let deadline = now + invisible_ms;
        // Expired deliveries first, oldest offset first.
        let expired: Vec<(u64, InFlight)> = st
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(o, f)| (*o, f.clone()))
            .collect();
        for (offset, flight) in expired {
            if out.deliveries.len() >= max {
                break;
            }
            let Some(message) = self.read(topic, queue_id, offset)? else {
                st.mark_done(offset); // no longer held: nothing to deliver
                continue;
            };
            let attempt = flight.attempt + 1;
            let handle = ReceiptHandle {
                topic: topic.to_owned(),
                queue_id,
                offset,
                deadline,
                attempt,
            };
            if flight.attempt >= max_attempts {
                st.in_flight.insert(
                    offset,
                    InFlight {
                        deadline,
                        attempt: flight.attempt,
                        renew_for: None,
                    },
                );
                out.exhausted.push(Delivery {
                    message,
                    handle: ReceiptHandle {
                        attempt: flight.attempt,
                        ..handle
                    },
                });
                continue;
            }
            st.in_flight.insert(
                offset,
                InFlight {
                    deadline,
                    attempt,
                    renew_for: renew_for.clone(),
                },
            );
            out.deliveries.push(Delivery { message, handle });
        }
        if fifo && !st.in_flight.is_empty() {
            return Ok(out);
        }
        while out.deliveries.len() < max {
            let want = max - out.deliveries.len();
            let got = self.store.get_message(topic, queue_id, st.next, want)?;
            match got.status {
                GetStatus::Found => {}
                GetStatus::OffsetTooSmall => {
                    // Retention removed what the group had not consumed: skip ahead, and
                    // commit that (or the group's stored offset would stay behind the queue).
                    let commit = st.commit;
                    st.retained_from(got.next_offset);
                    if st.commit != commit {
                        self.store
                            .consumer_offsets()
                            .commit(group, topic, queue_id, st.commit);
                    }
                    continue;
                }
                GetStatus::OffsetFoundNull => {
                    // Entries (at most `want`) whose messages are gone: done, like acks.
                    let commit = st.commit;
                    for o in st.next..got.next_offset {
                        st.mark_done(o);
                    }
                    st.next = got.next_offset.max(st.next);
                    if st.commit != commit {
                        self.store
                            .consumer_offsets()
                            .commit(group, topic, queue_id, st.commit);
                    }
                    continue;
                }
                _ => break,
            }
            if got.next_offset <= st.next {
                break;
            }
            st.next = got.next_offset;
            for message in got.messages {
                let offset = message.queue_offset;
                if st.done.contains(&offset) || st.in_flight.contains_key(&offset) {
                    continue;
                }
                if !filter.matches(message.property(crate::store::properties::TAGS)) {
                    st.mark_done(offset);
                    continue;
                }
                st.in_flight.insert(
                    offset,
                    InFlight {
                        deadline,
                        attempt: 1,
                        renew_for: renew_for.clone(),
                    },
                );
                out.deliveries.push(Delivery {
                    handle: ReceiptHandle {
                        topic: topic.to_owned(),
                        queue_id,
                        offset,
                        deadline,
                        attempt: 1,
                    },
                    message,
                });
            }
        }
        Ok(out)
    }

    fn read(
        &self,
        topic: &str,
        queue_id: i32,
        offset: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let got = self.store.get_message(topic, queue_id, offset, 1)?;
        Ok(got
            .messages
            .into_iter()
            .next()
            .filter(|m| m.queue_offset == offset))
    }

    /// Acknowledges deliveries of one group. The acks are durable when this returns (under
    /// SYNC_FLUSH, synced to disk; under ASYNC_FLUSH, in the page cache).
    pub async fn ack(
        &self,
        group: &str,
        handles: &[ReceiptHandle],
    ) -> Result<Vec<AckOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(handles.len());
        let mut lines = String::new();
        {
            for h in handles {
                let mut states = self.state.shard(group, &h.topic, h.queue_id);
                let st = self.queue_state(&mut states, group, &h.topic, h.queue_id)?;
                let outcome = if h.offset < st.commit || st.done.contains(&h.offset) {
                    AckOutcome::AlreadyAcked
                } else if h.offset >= st.next && !st.in_flight.contains_key(&h.offset) {
                    AckOutcome::InvalidHandle
                } else {
                    st.mark_done(h.offset);
                    self.store
                        .consumer_offsets()
                        .commit(group, &h.topic, h.queue_id, st.commit);
                    lines.push_str(&format!(
                        "{group} {} {} {}\n",
                        h.topic, h.queue_id, h.offset
                    ));
                    AckOutcome::Acked
                };
                outcomes.push(outcome);
            }
        }
        if let Some(seq) = self.append_journal(&lines)? {
            self.journal_durable(seq).await?;
        }
        Ok(outcomes)
    }

    /// Appends ack lines to the journal (page cache); returns the append's number, or `None`
    /// when there was nothing to write.
    fn append_journal(&self, lines: &str) -> Result<Option<u64>, StoreError> {
        if lines.is_empty() {
            return Ok(None);
        }
        let mut journal = self.journal.lock();
        journal
            .write_all(lines.as_bytes())
            .map_err(|e| StoreError::io(self.dir.join(JOURNAL), e))?;
        Ok(Some(self.sync.written.fetch_add(1, Ordering::AcqRel) + 1))
    }

    fn sync_journal_now(&self) -> Result<(), StoreError> {
        let file = self.journal.lock().try_clone();
        file.and_then(|f| f.sync_data())
            .map_err(|e| StoreError::io(self.dir.join(JOURNAL), e))
    }

    /// Waits until journal append `seq` is durable. Acks are as durable as messages: synced
    /// under SYNC_FLUSH; under ASYNC_FLUSH the page cache holds them (a killed process loses
    /// nothing) until the next compaction syncs.
    async fn journal_durable(&self, seq: u64) -> Result<(), StoreError> {
        if self.store.config().flush_policy != crate::store::FlushPolicy::SyncFlush {
            return Ok(());
        }
        let sync = &self.sync;
        let mut rx = sync.synced.subscribe();
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            if sync
                .syncing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // The leader: everything written so far is in the file this syncs. The guard
                // hands leadership back even if this task is cancelled mid-sync.
                let leading = Leading(&sync.syncing);
                let target = sync.written.load(Ordering::Acquire);
                let file = self.journal.lock().try_clone();
                let path = self.dir.join(JOURNAL);
                let synced = match file {
                    Ok(f) => tokio::task::spawn_blocking(move || f.sync_data())
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                    Err(e) => Err(e),
                };
                // Cleared before the result is published: a waiter that subscribed after this
                // either sees the new value or becomes the next leader.
                drop(leading);
                match synced {
                    Ok(()) => {
                        sync.synced.send_if_modified(|v| {
                            let newer = target > *v;
                            *v = (*v).max(target);
                            newer
                        });
                    }
                    Err(e) => {
                        // Wake the others so that one of them tries again.
                        sync.synced.send_modify(|_| {});
                        return Err(StoreError::io(&path, e));
                    }
                }
            } else {
                // Bounded, in case a leader's task is cancelled before publishing.
                let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
            }
        }
    }

    /// Marks an offset done for a system group that consumes without deliveries (the timer),
    /// durably, like an ack.
    pub fn mark_done(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: u64,
    ) -> Result<(), StoreError> {
        {
            let mut states = self.state.shard(group, topic, queue_id);
            let st = self.queue_state(&mut states, group, topic, queue_id)?;
            if offset < st.commit || st.done.contains(&offset) {
                return Ok(());
            }
            st.mark_done(offset);
            self.store
                .consumer_offsets()
                .commit(group, topic, queue_id, st.commit);
        }
        self.append_journal(&format!("{group} {topic} {queue_id} {offset}\n"))?;
        if self.store.config().flush_policy == crate::store::FlushPolicy::SyncFlush {
            self.sync_journal_now()?;
        }
        Ok(())
    }

    /// A group's progress on a queue: its commit offset and the offsets done above it.
    pub fn progress(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Result<(u64, BTreeSet<u64>), StoreError> {
        let mut states = self.state.shard(group, topic, queue_id);
        let st = self.queue_state(&mut states, group, topic, queue_id)?;
        Ok((st.commit, st.done.clone()))
    }

    /// What the delivery state of a queue holds, if any: (first offset never handed out,
    /// offsets acknowledged above the commit offset, messages in flight).
    pub fn deliveries(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Option<(u64, usize, usize)> {
        let states = self.state.shard(group, topic, queue_id);
        let st = states.get(&KeyRef(group, topic, queue_id))?;
        Some((st.next, st.done.len(), st.in_flight.len()))
    }

    /// The earliest invisibility deadline among a group's deliveries on these queues: when a
    /// waiting receive should look again for a message to redeliver.
    pub fn next_deadline(&self, group: &str, topic: &str, queues: &[i32]) -> Option<i64> {
        queues
            .iter()
            .filter_map(|&q| {
                let states = self.state.shard(group, topic, q);
                let st = states.get(&KeyRef(group, topic, q))?;
                st.in_flight.values().map(|f| f.deadline).min()
            })
            .min()
    }

    /// Moves a delivery's invisibility deadline; returns the handle to use from now on, or
    /// `None` if the handle is stale (acknowledged, or delivered again since).
    pub fn change_invisible(
        &self,
        group: &str,
        handle: &ReceiptHandle,
        invisible_ms: i64,
        now: i64,
    ) -> Result<Option<ReceiptHandle>, StoreError> {
        let mut states = self.state.shard(group, &handle.topic, handle.queue_id);
        let st = self.queue_state(&mut states, group, &handle.topic, handle.queue_id)?;
        let Some(flight) = st.in_flight.get_mut(&handle.offset) else {
            return Ok(None);
        };
        if flight.attempt != handle.attempt {
            return Ok(None);
        }
        // The client now manages this delivery's invisible time (a nack's backoff).
        flight.renew_for = None;
        let earlier = now + invisible_ms < flight.deadline;
        flight.deadline = now + invisible_ms;
        let handle = ReceiptHandle {
            deadline: flight.deadline,
            ..handle.clone()
        };
        drop(states);
        if earlier {
            // Waiting receives planned their next look for the old deadline.
            self.store.wake_topic(&handle.topic);
        }
        Ok(Some(handle))
    }

    /// Extends the invisible time of auto-renewed deliveries that would expire within
    /// `margin_ms`, for clients that `alive` says are still there. Returns how many.
    pub fn renew(
        &self,
        now: i64,
        margin_ms: i64,
        extend_ms: i64,
        alive: impl Fn(&str) -> bool,
    ) -> usize {
        let mut n = 0;
        for shard in &self.state.0 {
            for st in shard.lock().values_mut() {
                for f in st.in_flight.values_mut() {
                    if let Some(client) = &f.renew_for
                        && f.deadline - now < margin_ms
                        && alive(client)
                    {
                        f.deadline = now + extend_ms;
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Forgets every queue's delivery state and the acks above the commit offsets: a node
    /// whose role in its broker group changed takes its progress from the consumer offsets
    /// (the primary's, replicated), and what it handed out in an earlier term is delivered
    /// again rather than trusted.
    pub fn reset(&self) -> Result<(), StoreError> {
        for shard in &self.state.0 {
            shard.lock().clear();
        }
        self.compact()
    }

    /// Folds the ack log into the consumer offsets: persists them, then rewrites the log with
    /// only the acks above each commit offset.
    pub fn compact(&self) -> Result<(), StoreError> {
        let mut journal = self.journal.lock();
        self.store.consumer_offsets().persist()?;
        let mut text = String::new();
        for shard in &self.state.0 {
            for ((g, t, q), st) in shard.lock().iter() {
                for o in &st.done {
                    text.push_str(&format!("{g} {t} {q} {o}\n"));
                }
            }
        }
        write_atomically(&self.dir, JOURNAL, text.as_bytes())?;
        let path = self.dir.join(JOURNAL);
        *journal = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_round_trip() {
        let h = ReceiptHandle {
            topic: "%RETRY%g|x".into(),
            queue_id: 3,
            offset: 99,
            deadline: 1_700_000_000_123,
            attempt: 2,
        };
        assert_eq!(ReceiptHandle::decode(&h.encode()), Some(h));
        assert_eq!(ReceiptHandle::decode("garbage!"), None);
        assert_eq!(ReceiptHandle::decode(""), None);
    }

    fn current_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Stores `n` one-byte messages in queue 0 of topic `T` and waits until they are dispatched.
    fn put_dispatched(rt: &tokio::runtime::Runtime, store: &MessageStore, n: usize) {
        let msg = crate::store::Message::tiny("T");
        let r = rt.block_on(store.put_messages(&vec![msg; n])).unwrap();
        let last = &r[n - 1];
        rt.block_on(store.wait_dispatched(last.physical_offset + u64::from(last.size)))
            .unwrap();
    }

    #[test]
    fn auto_renewed_deliveries_stay_invisible_while_the_client_lives() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(MessageStore::open(crate::store::StoreConfig::at(dir.path())).unwrap());
        let rt = current_thread_runtime();
        put_dispatched(&rt, &store, 2);
        let pop = PopService::open(Arc::clone(&store)).unwrap();
        let all = TagFilter::All;
        let client: Arc<str> = Arc::from("c1");
        let p = |max, now, renew: Option<Arc<str>>| {
            pop.pop("G", 16, false, "T", 0, max, 1_000, &all, now, renew)
                .unwrap()
        };
        assert_eq!(p(1, 0, Some(Arc::clone(&client))).deliveries.len(), 1);
        assert_eq!(p(1, 0, None).deliveries.len(), 1);
        // Only the auto-renewed delivery of a live client is extended.
        assert_eq!(pop.renew(900, 20_000, 60_000, |c| c == "c1"), 1);
        let later = p(10, 5_000, None);
        assert_eq!(
            later.deliveries.len(),
            1,
            "the other one expired and comes back"
        );
        assert_eq!(later.deliveries[0].handle.offset, 1);
        assert_eq!(later.deliveries[0].handle.attempt, 2);
        // A dead client's deliveries are not renewed.
        assert_eq!(pop.renew(61_000, 20_000, 60_000, |_| false), 0);
        assert_eq!(p(10, 62_000, None).deliveries[0].handle.offset, 0);
    }

    #[test]
    fn concurrent_acks_under_sync_flush_are_all_journaled_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::store::StoreConfig::at(dir.path());
        cfg.flush_policy = crate::store::FlushPolicy::SyncFlush;
        let store = Arc::new(MessageStore::open(cfg).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        const N: usize = 200;
        put_dispatched(&rt, &store, N);
        let pop = Arc::new(PopService::open(Arc::clone(&store)).unwrap());
        let got = pop
            .pop("G", 16, false, "T", 0, N, 60_000, &TagFilter::All, 0, None)
            .unwrap();
        assert_eq!(got.deliveries.len(), N);
        let acks = got.deliveries.into_iter().map(|d| {
            let pop = Arc::clone(&pop);
            rt.spawn(async move { pop.ack("G", &[d.handle]).await })
        });
        let outcomes: Vec<_> = rt.block_on(async {
            let mut out = Vec::new();
            for a in acks.collect::<Vec<_>>() {
                out.push(a.await.unwrap().unwrap());
            }
            out
        });
        assert!(outcomes.iter().all(|o| o == &[AckOutcome::Acked]));
        let written = pop.sync.written.load(Ordering::Acquire);
        assert_eq!(written, N as u64);
        assert_eq!(*pop.sync.synced.borrow(), written, "every ack is synced");
        // What was synced is the journal: one line per ack, each offset once.
        let text = std::fs::read_to_string(store.config().config_dir().join(JOURNAL)).unwrap();
        let offsets: BTreeSet<u64> = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(text.lines().count(), N);
        assert_eq!(offsets, (0..N as u64).collect());
    }

    #[test]
    fn a_group_behind_retention_moves_on_and_commits_where_the_queue_starts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            MessageStore::open(crate::store::StoreConfig {
                segment_size: 64 * 1024,
                flush_policy: crate::store::FlushPolicy::SyncFlush,
                retention_interval: std::time::Duration::from_secs(3600),
                ..crate::store::StoreConfig::at(dir.path())
            })
            .unwrap(),
        );
        let rt = current_thread_runtime();
        put_dispatched(&rt, &store, 3000);
        let pop = PopService::open(Arc::clone(&store)).unwrap();
        let p = |max| {
            pop.pop(
                "G",
                16,
                false,
                "T",
                0,
                max,
                60_000,
                &TagFilter::All,
                0,
                None,
            )
            .unwrap()
        };
        // Two deliveries in flight, then retention removes them and more (a full disk).
        assert_eq!(p(2).deliveries.len(), 2);
        for _ in 0..2 {
            store
                .run_retention(std::time::SystemTime::now(), 0.95)
                .unwrap();
        }
        let min = store.min_offset("T", 0).unwrap();
        assert!(min > 2, "retention removed the first segments");
        let got = p(4);
        assert_eq!(
            got.deliveries
                .iter()
                .map(|d| d.handle.offset)
                .collect::<Vec<_>>(),
            (min..min + 4).collect::<Vec<_>>(),
            "the next receive starts where the queue now starts"
        );
        assert_eq!(pop.progress("G", "T", 0).unwrap(), (min, BTreeSet::new()));
        assert_eq!(
            store.consumer_offsets().get("G", "T", 0),
            Some(min),
            "the skip is committed, not only known in memory"
        );
        // An ack for a delivery retention removed changes nothing.
        let early = ReceiptHandle {
            topic: "T".into(),
            queue_id: 0,
            offset: 0,
            deadline: 60_000,
            attempt: 1,
        };
        assert_eq!(
            rt.block_on(pop.ack("G", &[early])).unwrap(),
            vec![AckOutcome::AlreadyAcked]
        );
    }

    #[test]
    fn retention_past_deliveries_in_flight_drops_them_in_one_step() {
        let mut st = QueueState {
            next: 10,
            ..QueueState::default()
        };
        for o in [0, 4, 12] {
            st.in_flight.insert(
                o,
                InFlight {
                    deadline: 0,
                    attempt: 1,
                    renew_for: None,
                },
            );
        }
        st.mark_done(2);
        st.mark_done(6);
        st.retained_from(5);
        assert_eq!(st.commit, 5);
        assert_eq!(st.in_flight.keys().copied().collect::<Vec<_>>(), vec![12]);
        assert_eq!(st.done.iter().copied().collect::<Vec<_>>(), vec![6]);
        st.retained_from(1_000_000_000);
        assert_eq!((st.commit, st.next), (1_000_000_000, 1_000_000_000));
        assert!(st.in_flight.is_empty() && st.done.is_empty());
    }

    #[test]
    fn commit_moves_over_done_offsets() {
        let mut st = QueueState {
            next: 5,
            ..QueueState::default()
        };
        st.mark_done(1);
        assert_eq!(st.commit, 0);
        st.mark_done(0);
        assert_eq!(st.commit, 2);
        st.mark_done(3);
        st.mark_done(2);
        assert_eq!(st.commit, 4);
        assert!(st.done.is_empty());
    }
}
