//! The dispatcher ("reput" in RocketMQ): reads CommitLog records from where it left off up to
//! the confirmed offset and builds ConsumeQueue entries and index entries from them. It reads
//! only the log, so a replica that appends replicated bytes builds its queues the same way, and
//! recovery re-dispatches with the same code.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::consume_queue::{ConsumeQueue, CqEntry};
use super::error::{Result, StoreError};
use super::index::{IndexEntry, java_string_hash};
use super::message_store::Inner;
use super::properties;
use super::record::{Entry, StoredMessage};

/// Records handled per round before queues and indexes are written.
const BATCH: usize = 4096;

/// Tag hash code stored in a ConsumeQueue entry: Java `String.hashCode` of the tags, 0 without.
pub fn tag_code(props: &[u8]) -> i64 {
    properties::get(props, properties::TAGS).map_or(0, |t| i64::from(java_string_hash(t)))
}

/// The entry at `offset`: from the local CommitLog, or below it from the cold reader (a tier).
fn read_any(
    inner: &Inner,
    offset: u64,
    limit: u64,
) -> std::result::Result<Option<Entry>, super::record::RecordError> {
    if offset < inner.commitlog.min_offset()
        && let Some(cold) = inner.cold_reader.read().clone()
    {
        return match cold.read_record(offset) {
            Ok(Some(bytes)) => match super::record::decode(&bytes) {
                Ok(e) => Ok(Some(e)),
                Err(super::record::RecordError::End) => Ok(None),
                Err(e) => Err(e),
            },
            Ok(None) => Ok(None),
            Err(reason) => Err(super::record::RecordError::Unreadable(reason)),
        };
    }
    inner.commitlog.read_entry(offset, limit)
}

/// What the dispatcher takes from one message record: enough to rebuild its ConsumeQueue and
/// index entries without the record (a tier stores these next to each segment it uploads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub topic: String,
    pub queue_id: i32,
    pub queue_offset: u64,
    pub physical_offset: u64,
    pub size: u32,
    pub tag_code: i64,
    pub store_timestamp: i64,
    /// Index keys, without the topic: the unique key and each of `KEYS`.
    pub keys: Vec<String>,
}

impl QueueEntry {
    fn of(m: StoredMessage) -> QueueEntry {
        let mut keys = Vec::new();
        for (key, value) in properties::iter(&m.properties) {
            if key == properties::UNIQ_KEY {
                keys.push(value.to_owned());
            } else if key == properties::KEYS {
                keys.extend(
                    value
                        .split(' ')
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        QueueEntry {
            tag_code: tag_code(&m.properties),
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            physical_offset: m.physical_offset,
            size: m.total_size,
            store_timestamp: m.store_timestamp,
            topic: m.topic,
            keys,
        }
    }
}

/// Reads the records in `[from, limit)`, at most `max` of them. Returns their queue entries
/// and the offset reached.
pub fn scan(inner: &Inner, from: u64, limit: u64, max: usize) -> Result<(Vec<QueueEntry>, u64)> {
    let log = &inner.commitlog;
    let mut offset = from;
    let mut out = Vec::new();
    while offset < limit && out.len() < max {
        match read_any(inner, offset, limit) {
            Ok(Some(Entry::Message(m))) => {
                if m.physical_offset != offset {
                    return Err(StoreError::Corrupt {
                        path: log.dir().to_owned(),
                        position: offset,
                        reason: format!("record says it is at offset {}", m.physical_offset),
                    });
                }
                offset += u64::from(m.total_size);
                out.push(QueueEntry::of(m));
            }
            Ok(Some(Entry::Blank(_))) => offset = log.next_segment_start(offset),
            Ok(None) => {
                // At a segment boundary the next segment may simply be next; anything else
                // below `limit` is a hole, which the append path never produces.
                let next = log.next_segment_start(offset);
                if offset.is_multiple_of(log.segment_size()) || next > limit {
                    break;
                }
                return Err(StoreError::Corrupt {
                    path: log.dir().to_owned(),
                    position: offset,
                    reason: "no record where the CommitLog says data was written".into(),
                });
            }
            Err(super::record::RecordError::Unreadable(reason)) => {
                return Err(StoreError::TierUnavailable {
                    physical_offset: offset,
                    reason,
                });
            }
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: log.dir().to_owned(),
                    position: offset,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok((out, offset))
}

/// Writes the ConsumeQueue and index entries of `entries` (in CommitLog order).
pub fn apply(inner: &Inner, entries: &[QueueEntry]) -> Result<()> {
    let mut per_queue: HashMap<*const ConsumeQueue, (Arc<ConsumeQueue>, u64, Vec<CqEntry>)> =
        HashMap::new();
    let mut keys: Vec<(String, u64, i64)> = Vec::new();
    for m in entries {
        let q = inner.queues.queue(&m.topic, m.queue_id)?;
        let entry = CqEntry {
            physical_offset: m.physical_offset,
            size: m.size,
            tag_code: m.tag_code,
        };
        let slot = per_queue
            .entry(Arc::as_ptr(&q))
            .or_insert_with(|| (Arc::clone(&q), m.queue_offset, Vec::new()));
        if slot.1 + slot.2.len() as u64 != m.queue_offset {
            // Not contiguous with what this batch holds for the queue: write what we have
            // first (the queue checks order and reports gaps).
            let (q, first, entries) =
                std::mem::replace(slot, (Arc::clone(&q), m.queue_offset, Vec::new()));
            q.append(first, &entries)?;
        }
        slot.2.push(entry);
        for k in &m.keys {
            keys.push((
                format!("{}#{}", m.topic, k),
                m.physical_offset,
                m.store_timestamp,
            ));
        }
    }
    for (_, (q, first, entries)) in per_queue {
        q.append(first, &entries)?;
    }
    inner
        .topic_waiters
        .notify(entries.iter().map(|m| m.topic.as_str()));
    if !keys.is_empty() {
        let entries: Vec<IndexEntry<'_>> = keys
            .iter()
            .map(|(k, p, t)| IndexEntry {
                key: k,
                physical_offset: *p,
                store_timestamp: *t,
            })
            .collect();
        inner.index.put_batch(&entries)?;
    }
    Ok(())
}

/// Dispatches records in `[from, limit)`, at most `BATCH` of them. Returns the offset reached.
pub fn dispatch_batch(inner: &Inner, from: u64, limit: u64) -> Result<u64> {
    let (entries, reached) = scan(inner, from, limit, BATCH)?;
    apply(inner, &entries)?;
    Ok(reached)
}

/// Dispatches everything in `[from, limit)` (used by recovery before the store opens).
pub fn dispatch_all(inner: &Inner, mut from: u64, limit: u64) -> Result<u64> {
    while from < limit {
        let next = dispatch_batch(inner, from, limit)?;
        if next == from {
            break;
        }
        from = next;
    }
    Ok(from)
}

/// Body of the dispatcher thread; returns after shutdown once it has caught up.
pub fn run(inner: Arc<Inner>) {
    loop {
        let stopping = inner.shutdown.load(Ordering::Acquire);
        let guard = inner.dispatch_lock.lock();
        let from = inner.dispatched.load(Ordering::Acquire);
        let limit = inner.confirmed();
        if from >= limit {
            drop(guard);
            if stopping && inner.flusher_done.load(Ordering::Acquire) {
                return;
            }
            inner.dispatch_signal.wait(Duration::from_millis(50));
            continue;
        }
        let result = dispatch_batch(&inner, from, limit);
        if let Ok(next) = result
            && next > from
        {
            inner.dispatched.store(next, Ordering::Release);
            inner.dispatched_tx.send_replace(next);
        }
        drop(guard);
        match result {
            Ok(next) if next == from => {
                // A segment boundary whose next segment is not there yet: wait for it.
                inner.dispatch_signal.wait(Duration::from_millis(10));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, offset = from, "dispatch failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
                if stopping {
                    return;
                }
            }
        }
    }
}
