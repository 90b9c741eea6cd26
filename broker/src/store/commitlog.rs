//! The CommitLog: every message of every topic, appended in arrival order to a chain of
//! fixed-size memory-mapped segments.
//!
//! Offsets: a message's *physical offset* is its byte position in this log; its *queue offset*
//! is its index in its (topic, queue) ConsumeQueue, assigned here under the append lock so that
//! queue offsets are dense and ordered like the log.
//!
//! Three positions are tracked separately: `written` (end of the last complete record, what
//! readers may read), `flushed` (what is durable) and, derived by the store, `confirmed` (what
//! is safe to dispatch to consumers: flushed under SYNC_FLUSH, written under ASYNC_FLUSH; later,
//! what replicas have acknowledged).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::error::{IoContext, Result, StoreError};
use super::record::{self, BLANK_MARKER_LEN, Entry, Message, RecordError, StoreStamp};
use super::segment::{self, Segment};

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub physical_offset: u64,
    pub queue_offset: u64,
    pub size: u32,
    pub store_timestamp: i64,
}

impl Appended {
    /// The CommitLog offset just past this record.
    pub fn end(&self) -> u64 {
        self.physical_offset + u64::from(self.size)
    }
}

/// A message ready to append: validated, with its body CRC computed outside the lock.
pub struct Prepared<'a> {
    pub message: &'a Message,
    pub body_crc: u32,
    pub encoded_len: usize,
}

/// Next queue offset per (topic, queue id). Loaded lazily from the ConsumeQueues: a queue that
/// is not in the table yet has no record beyond what its ConsumeQueue holds (the store
/// dispatches everything before it accepts writes).
#[derive(Default)]
struct QueueOffsetTable {
    topics: HashMap<String, HashMap<i32, u64>>,
}

impl QueueOffsetTable {
    fn slot(
        &mut self,
        topic: &str,
        queue_id: i32,
        load: &dyn Fn(&str, i32) -> Result<u64>,
    ) -> Result<&mut u64> {
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.to_owned(), HashMap::new());
        }
        let queues = self.topics.get_mut(topic).expect("inserted above");
        if let std::collections::hash_map::Entry::Vacant(v) = queues.entry(queue_id) {
            v.insert(load(topic, queue_id)?);
        }
        Ok(queues.get_mut(&queue_id).expect("inserted above"))
    }
}

struct WriteState {
    offset: u64,
    /// The last segment (the one being written), if any.
    current: Option<Arc<Segment>>,
    queue_offsets: QueueOffsetTable,
    /// Records encoded but not written yet: they start at `staged_at` in `current` and are
    /// written with one `pwrite` before anything is published.
    staged: Vec<u8>,
    staged_at: u64,
}

/// Staged bytes are written out once they reach this size, so that a batch of large messages
/// does not grow the staging buffer without bound.
const STAGE_LIMIT: usize = 1 << 20;

pub struct CommitLog {
    dir: PathBuf,
    segment_size: u64,
    store_host: SocketAddr,
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<WriteState>,
    flush_lock: Mutex<()>,
    written: AtomicU64,
    flushed: AtomicU64,
    flushes: AtomicU64,
    /// Below this offset, flushed pages have been unmapped from this process (see
    /// [`RESIDENT_BYTES`]).
    released: AtomicU64,
    /// When the last wide sweep ran (pages that readers faulted back in), for
    /// [`CommitLog::release_behind`].
    swept_at: Mutex<Instant>,
}

/// How far behind the resident window a sweep looks for pages that readers faulted back in.
const SWEEP_BYTES: u64 = 1 << 30;
/// How often such a sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Flushed CommitLog bytes more than this far behind the write head are dropped from the
/// process's mapping after each flush (`MADV_DONTNEED`). They stay in the page cache and the
/// file, and a read faults them back in, so nothing changes for readers; but the broker's
/// resident memory stays bounded instead of growing with every mapped byte written, and the
/// kernel is free to evict those pages like any other cached file data.
const RESIDENT_BYTES: u64 = 64 << 20;

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl CommitLog {
    /// Maps every segment in `dir` (created if missing). Checks that segments are contiguous.
    /// Until [`CommitLog::set_end`] is called, everything mapped counts as written: recovery
    /// scans it and then sets the real end.
    pub fn load(dir: &Path, segment_size: u64, store_host: SocketAddr) -> Result<CommitLog> {
        std::fs::create_dir_all(dir).at(dir)?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name();
            match name.to_str().and_then(segment::parse_file_name) {
                Some(base) => bases.push(base),
                None => {
                    tracing::warn!(file = ?entry.path(), "ignoring a file that is not a CommitLog segment")
                }
            }
        }
        bases.sort_unstable();
        let mut segments = Vec::with_capacity(bases.len());
        for base in bases {
            let path = dir.join(segment::file_name(base));
            if base % segment_size != 0 {
                return Err(StoreError::Corrupt {
                    path,
                    position: 0,
                    reason: format!(
                        "segment start is not a multiple of the segment size {segment_size}"
                    ),
                });
            }
            if let Some(prev) = segments.last().map(|s: &Arc<Segment>| s.end())
                && prev != base
            {
                return Err(StoreError::Corrupt {
                    path,
                    position: 0,
                    reason: format!("segments are not contiguous: the previous one ends at {prev}"),
                });
            }
            segments.push(Arc::new(Segment::open(&path, base, segment_size)?));
        }
        let end = segments.last().map_or(0, |s| s.end());
        let start = segments.first().map_or(0, |s| s.base());
        let current = segments.last().cloned();
        let log = CommitLog {
            dir: dir.to_owned(),
            segment_size,
            store_host,
            segments: RwLock::new(segments),
            writer: Mutex::new(WriteState {
                offset: end,
                current,
                queue_offsets: QueueOffsetTable::default(),
                staged: Vec::new(),
                staged_at: end,
            }),
            flush_lock: Mutex::new(()),
            written: AtomicU64::new(end),
            flushed: AtomicU64::new(start),
            flushes: AtomicU64::new(0),
            released: AtomicU64::new(0),
            swept_at: Mutex::new(Instant::now()),
        };
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    pub fn store_host(&self) -> SocketAddr {
        self.store_host
    }

    /// Offset of the first byte still held locally.
    pub fn min_offset(&self) -> u64 {
        self.segments
            .read()
            .first()
            .map_or_else(|| self.written(), |s| s.base())
    }

    /// End of the last complete record: readers may read below it.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// What is durable.
    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// A snapshot of the segments, oldest first.
    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.read().clone()
    }

    /// Sets the end of valid data after recovery: the tail of the segment holding `end` is
    /// zeroed, later segments are deleted. Returns the deleted segment paths.
    pub fn set_end(&self, end: u64) -> Result<Vec<PathBuf>> {
        let mut writer = self.writer.lock();
        let mut segments = self.segments.write();
        let removed = self.cut_at(&mut segments, end)?;
        writer.offset = end;
        writer.staged_at = end;
        writer.current = segments.last().cloned();
        self.written.store(end, Ordering::Release);
        self.flushed.store(end, Ordering::Release);
        Ok(removed)
    }

    /// Deletes the segments that start past `end` and zeroes the one holding it from `end` on
    /// (in place, so mappings of it stay valid). Returns the deleted paths.
    fn cut_at(&self, segments: &mut Vec<Arc<Segment>>, end: u64) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        while let Some(last) = segments.last() {
            if last.base() <= end {
                break;
            }
            let last = segments.pop().expect("checked");
            std::fs::remove_file(last.path()).at(last.path())?;
            removed.push(last.path().to_owned());
        }
        if let Some(last) = segments.last()
            && last.contains(end)
        {
            last.zero_range(end - last.base())?;
        }
        if !removed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Appends messages under one lock acquisition, reporting each to `on_appended`.
    /// `next_queue_offset` loads a queue's next offset the first time a queue is seen. Sizes
    /// are checked before anything is written; a later error (disk full at a segment roll)
    /// leaves the messages before it appended and reported.
    pub fn append(
        &self,
        batch: &[Prepared<'_>],
        next_queue_offset: &dyn Fn(&str, i32) -> Result<u64>,
        on_appended: &mut dyn FnMut(Appended),
    ) -> Result<()> {
        for p in batch {
            if p.encoded_len + BLANK_MARKER_LEN > self.segment_size as usize {
                return Err(StoreError::MessageTooLarge {
                    size: p.encoded_len,
                    max: self.segment_size as usize - BLANK_MARKER_LEN,
                });
            }
        }
        let mut writer = self.writer.lock();
        let mut appended = Vec::with_capacity(batch.len());
        let mut result = Ok(());
        for p in batch {
            if !self.fits(&writer, p.encoded_len as u64)
                && let Err(e) = self.write_staged(&mut writer, batch, &mut appended)
            {
                result = Err(e);
                break;
            }
            match self.stage(&mut writer, p, next_queue_offset) {
                Ok(a) => appended.push(a),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            if writer.staged.len() >= STAGE_LIMIT
                && let Err(e) = self.write_staged(&mut writer, batch, &mut appended)
            {
                result = Err(e);
                break;
            }
        }
        if let Err(e) = self.write_staged(&mut writer, batch, &mut appended) {
            result = result.and(Err(e));
        }
        drop(writer);
        for a in appended {
            on_appended(a);
        }
        result
    }

    /// Encodes one record into the staging buffer and assigns its offsets.
    fn stage(
        &self,
        writer: &mut WriteState,
        p: &Prepared<'_>,
        next_queue_offset: &dyn Fn(&str, i32) -> Result<u64>,
    ) -> Result<Appended> {
        let len = p.encoded_len as u64;
        self.segment_for_write(writer, len)?;
        let queue_offset =
            writer
                .queue_offsets
                .slot(&p.message.topic, p.message.queue_id, next_queue_offset)?;
        let stamp = StoreStamp {
            physical_offset: writer.offset,
            queue_offset: *queue_offset,
            store_timestamp: now_millis(),
            store_host: self.store_host,
        };
        *queue_offset += 1;
        let at = writer.staged.len();
        writer.staged.resize(at + p.encoded_len, 0);
        record::encode(&mut writer.staged[at..], p.message, p.body_crc, &stamp);
        writer.offset += len;
        Ok(Appended {
            physical_offset: stamp.physical_offset,
            queue_offset: stamp.queue_offset,
            size: p.encoded_len as u32,
            store_timestamp: stamp.store_timestamp,
        })
    }

    /// Writes the staged records to the current segment and publishes them. If the write
    /// fails, the staged records are taken back (offsets and queue offsets as before them, and
    /// dropped from `appended`, whose tail they are) and the error is returned.
    fn write_staged(
        &self,
        writer: &mut WriteState,
        batch: &[Prepared<'_>],
        appended: &mut Vec<Appended>,
    ) -> Result<()> {
        if writer.staged.is_empty() {
            writer.staged_at = writer.offset;
            return Ok(());
        }
        let seg = writer
            .current
            .clone()
            .expect("staged records have a segment");
        let pos = (writer.staged_at - seg.base()) as usize;
        // SAFETY: we hold the append lock (sole writer) and write at the unpublished end.
        let written = unsafe { seg.write_at(pos, &writer.staged) };
        writer.staged.clear();
        if let Err(e) = written {
            let first = writer.staged_at;
            while let Some(a) = appended.last().filter(|a| a.physical_offset >= first) {
                let msg = batch[appended.len() - 1].message;
                if let Some(q) = writer
                    .queue_offsets
                    .topics
                    .get_mut(&msg.topic)
                    .and_then(|t| t.get_mut(&msg.queue_id))
                {
                    *q = a.queue_offset;
                }
                appended.pop();
            }
            writer.offset = first;
            return Err(e);
        }
        writer.staged_at = writer.offset;
        self.written.store(writer.offset, Ordering::Release);
        Ok(())
    }

    /// Whether the current segment can take `len` more bytes and still end with a blank marker.
    fn fits(&self, writer: &WriteState, len: u64) -> bool {
        writer.current.as_ref().is_some_and(|seg| {
            writer.offset < seg.end()
                && writer.offset - seg.base() + len + BLANK_MARKER_LEN as u64 <= seg.size()
        })
    }

    /// The segment the next `len` bytes go into, rolling (staged records written, blank marker,
    /// new segment) when the current one cannot hold them plus a blank marker.
    fn segment_for_write(&self, writer: &mut WriteState, len: u64) -> Result<()> {
        if self.fits(writer, len) {
            return Ok(());
        }
        assert!(
            writer.staged.is_empty(),
            "staged records are written before a roll"
        );
        if let Some(seg) = writer.current.clone()
            && writer.offset < seg.end()
        {
            let blank = seg.end() - writer.offset;
            let mut marker = [0u8; BLANK_MARKER_LEN];
            record::encode_blank(&mut marker, blank as u32);
            // SAFETY: sole writer; the blank region is beyond the published offset.
            unsafe { seg.write_at((writer.offset - seg.base()) as usize, &marker) }?;
            writer.offset = seg.end();
            // The blank is published together with the next record.
        }
        let base = writer.offset;
        debug_assert_eq!(base % self.segment_size, 0);
        let seg = Arc::new(Segment::create(&self.dir, base, self.segment_size)?);
        tracing::debug!(base, path = ?seg.path(), "rolled to a new CommitLog segment");
        self.segments.write().push(Arc::clone(&seg));
        writer.current = Some(seg);
        writer.staged_at = base;
        Ok(())
    }

    /// Where whole records end in `[offset, limit)`, going no further than `max_bytes` past
    /// `offset` (but always over at least one record): a replication chunk. A blank record
    /// ends the chunk at its segment's end. Returns the chunk's end, `offset` when nothing is
    /// there yet, an error for a record that cannot be stepped over.
    pub fn chunk_end(&self, offset: u64, limit: u64, max_bytes: u64) -> Result<u64> {
        let limit = limit.min(self.written());
        let Some(seg) = self.segment_for(offset) else {
            return Ok(offset);
        };
        let mut at = offset;
        while at < limit.min(seg.end()) {
            let pos = (at - seg.base()) as usize;
            let avail = (limit.min(seg.end()) - at) as usize;
            // SAFETY: below `written`, hence published.
            let head = unsafe { seg.read_slice(pos, avail.min(BLANK_MARKER_LEN)) };
            let corrupt = |reason: String| StoreError::Corrupt {
                path: seg.path().to_owned(),
                position: at - seg.base(),
                reason,
            };
            match record::peek_size(head).map_err(|e| corrupt(e.to_string()))? {
                None => break,
                Some((_, record::MAGIC_BLANK)) => return Ok(seg.end()),
                Some((size, _)) => {
                    let next = at + u64::from(size);
                    if size < BLANK_MARKER_LEN as u32 || next > seg.end() {
                        return Err(corrupt(format!("record size {size} out of bounds")));
                    }
                    if next > limit || (at > offset && next - offset > max_bytes) {
                        break;
                    }
                    at = next;
                }
            }
        }
        Ok(at)
    }

    /// The bytes a replica needs for `[offset, end)` (a chunk from [`CommitLog::chunk_end`]):
    /// the records, where a trailing blank is sent as its 8-byte marker only.
    pub fn chunk_bytes(&self, offset: u64, end: u64) -> Option<Bytes> {
        let seg = self.segment_for(offset)?;
        if end == seg.end() && end > offset {
            // Up to the last record, then the blank marker (if the segment ends in one).
            let mut at = offset;
            let mut last = offset;
            while let Some(len) = self.record_len_at(&seg, at) {
                last = at;
                at += len;
                if at >= end {
                    break;
                }
            }
            let marker_at = if at >= end { last } else { at };
            let bytes_end = (marker_at + BLANK_MARKER_LEN as u64).min(end);
            // SAFETY: below `written`, hence published.
            return Some(unsafe {
                seg.bytes(
                    (offset - seg.base()) as usize,
                    (bytes_end - offset) as usize,
                )
            });
        }
        self.read(offset, (end - offset) as u32)
    }

    /// The length of the record at `at` within `seg`, a blank counting to the segment's end.
    fn record_len_at(&self, seg: &Segment, at: u64) -> Option<u64> {
        if at + BLANK_MARKER_LEN as u64 > seg.end().min(self.written()) {
            return None;
        }
        // SAFETY: below `written`, hence published.
        let head = unsafe { seg.read_slice((at - seg.base()) as usize, BLANK_MARKER_LEN) };
        match record::peek_size(head) {
            Ok(Some((_, record::MAGIC_BLANK))) => Some(seg.end() - at),
            Ok(Some((size, _))) if size as usize >= BLANK_MARKER_LEN => Some(u64::from(size)),
            _ => None,
        }
    }

    /// Appends records copied from a primary's log, which start at `offset` (this log's
    /// written offset, or a segment start when this log holds nothing). `bytes` are whole
    /// message records, optionally ended by a blank marker, which fills the segment. Each
    /// record's stored physical offset must match where it lands. Returns the new written
    /// offset.
    pub fn append_raw(&self, offset: u64, bytes: &[u8]) -> Result<u64> {
        let mut writer = self.writer.lock();
        let empty = self.segments.read().is_empty();
        if offset != writer.offset && !(empty && offset.is_multiple_of(self.segment_size)) {
            return Err(StoreError::Replication(format!(
                "replicated bytes start at {offset}, but this log ends at {}",
                writer.offset
            )));
        }
        // Validate the chunk before writing anything.
        let seg_base = offset / self.segment_size * self.segment_size;
        let seg_end = seg_base + self.segment_size;
        let mut at = 0usize;
        let mut end = offset;
        while at < bytes.len() {
            let bad = |reason: String| {
                StoreError::Replication(format!(
                    "replicated record at {}: {reason}",
                    offset + at as u64
                ))
            };
            let (size, magic) = record::peek_size(&bytes[at..])
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad("zeros where a record was expected".into()))?;
            let here = offset + at as u64;
            if magic == record::MAGIC_BLANK {
                if here + u64::from(size) != seg_end || at + BLANK_MARKER_LEN != bytes.len() {
                    return Err(bad(format!(
                        "blank of {size} bytes does not end the segment"
                    )));
                }
                end = seg_end;
                at = bytes.len();
                continue;
            }
            let size = size as usize;
            if size < BLANK_MARKER_LEN || at + size > bytes.len() {
                return Err(bad(format!("size {size} does not fit the chunk")));
            }
            if record::physical_offset_of(&bytes[at..at + size]) != Some(here) {
                return Err(bad("its stored physical offset differs".into()));
            }
            if here + size as u64 + BLANK_MARKER_LEN as u64 > seg_end {
                return Err(bad("it crosses a segment end".into()));
            }
            at += size;
            end = here + size as u64;
        }
        if bytes.is_empty() {
            return Ok(writer.offset);
        }
        let seg = match writer.current.clone() {
            Some(seg) if seg.contains(offset) => seg,
            _ => {
                let seg = Arc::new(Segment::create(&self.dir, seg_base, self.segment_size)?);
                self.segments.write().push(Arc::clone(&seg));
                writer.current = Some(Arc::clone(&seg));
                seg
            }
        };
        // SAFETY: append lock held (sole writer); the range is beyond the published offset.
        unsafe { seg.write_at((offset - seg_base) as usize, bytes) }?;
        // Queue offsets come from the primary: what this log assigned before is stale.
        writer.queue_offsets = QueueOffsetTable::default();
        writer.offset = end;
        writer.staged_at = end;
        if empty {
            self.flushed.store(offset, Ordering::Release);
            self.released.store(offset, Ordering::Relaxed);
        }
        self.written.store(end, Ordering::Release);
        Ok(end)
    }

    /// Seeds the next queue offsets (a promoted replica: records not dispatched yet assigned
    /// offsets the ConsumeQueues do not show).
    pub fn seed_queue_offsets(&self, next: &HashMap<(String, i32), u64>) {
        let mut writer = self.writer.lock();
        writer.queue_offsets = QueueOffsetTable::default();
        for ((topic, queue), offset) in next {
            writer
                .queue_offsets
                .topics
                .entry(topic.clone())
                .or_default()
                .insert(*queue, *offset);
        }
    }

    /// Cuts the log at `end` (a record boundary at or below the written offset) while it is
    /// in use: a replica discarding what diverged from its primary. Bytes beyond `end` are
    /// zeroed in place (the file keeps its size, so mappings stay valid) and later segments
    /// are deleted. Nothing beyond `end` may have been handed to readers (it was never
    /// confirmed).
    pub fn truncate(&self, end: u64) -> Result<Vec<PathBuf>> {
        let mut writer = self.writer.lock();
        let _flush = self.flush_lock.lock();
        if end >= writer.offset {
            return Ok(Vec::new());
        }
        let removed = {
            let mut segments = self.segments.write();
            let removed = self.cut_at(&mut segments, end)?;
            writer.current = segments.last().cloned();
            removed
        };
        writer.offset = end;
        writer.staged_at = end;
        writer.queue_offsets = QueueOffsetTable::default();
        self.written.store(end, Ordering::Release);
        if self.flushed() > end {
            self.flushed.store(end, Ordering::Release);
        }
        if self.released.load(Ordering::Relaxed) > end {
            self.released.store(end / 4096 * 4096, Ordering::Relaxed);
        }
        Ok(removed)
    }

    /// Fills the rest of the segment being written with a blank record, so that it is sealed
    /// now rather than when it fills up (a node being drained hands its last bytes to a tier).
    /// The next append starts a new segment. Returns whether anything was sealed.
    pub fn roll(&self) -> Result<bool> {
        let mut writer = self.writer.lock();
        let Some(seg) = writer.current.clone() else {
            return Ok(false);
        };
        if writer.offset <= seg.base() || writer.offset >= seg.end() {
            return Ok(false);
        }
        let pos = writer.offset - seg.base();
        let blank = seg.end() - writer.offset;
        if blank >= BLANK_MARKER_LEN as u64 {
            let mut marker = [0u8; BLANK_MARKER_LEN];
            record::encode_blank(&mut marker, blank as u32);
            // SAFETY: sole writer; the blank region is beyond the published offset.
            unsafe { seg.write_at(pos as usize, &marker) }?;
        }
        writer.offset = seg.end();
        writer.staged_at = writer.offset;
        self.written.store(writer.offset, Ordering::Release);
        tracing::info!(base = seg.base(), blank, "CommitLog segment sealed early");
        Ok(true)
    }

    fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segments = self.segments.read();
        let first = segments.first()?.base();
        if offset < first {
            return None;
        }
        let idx = ((offset - first) / self.segment_size) as usize;
        segments.get(idx).filter(|s| s.contains(offset)).cloned()
    }

    /// `size` bytes at `offset`, zero-copy, if they are written and still held locally.
    pub fn read(&self, offset: u64, size: u32) -> Option<Bytes> {
        let end = offset.checked_add(u64::from(size))?;
        if end > self.written() {
            return None;
        }
        let seg = self.segment_for(offset)?;
        if end > seg.end() {
            return None;
        }
        // SAFETY: below `written`, hence published.
        Some(unsafe { seg.bytes((offset - seg.base()) as usize, size as usize) })
    }

    /// Decodes the entry at `offset` (a record boundary) without reading past `limit`.
    /// `Ok(None)`: nothing there (end of data, or not held locally).
    pub fn read_entry(
        &self,
        offset: u64,
        limit: u64,
    ) -> std::result::Result<Option<Entry>, RecordError> {
        let limit = limit.min(self.written());
        if offset >= limit {
            return Ok(None);
        }
        let Some(seg) = self.segment_for(offset) else {
            return Ok(None);
        };
        let end = limit.min(seg.end());
        // SAFETY: below `written`, hence published.
        let bytes = unsafe { seg.bytes((offset - seg.base()) as usize, (end - offset) as usize) };
        match record::decode(&bytes) {
            Ok(e) => Ok(Some(e)),
            Err(RecordError::End) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the segment after the one holding `offset` starts.
    pub fn next_segment_start(&self, offset: u64) -> u64 {
        (offset / self.segment_size + 1) * self.segment_size
    }

    /// Makes everything written so far durable. Returns the new flushed offset.
    pub fn flush(&self) -> Result<u64> {
        let _guard = self.flush_lock.lock();
        let target = self.written();
        let from = self.flushed();
        if target <= from {
            return Ok(from);
        }
        let segments = self.segments();
        for seg in segments
            .iter()
            .filter(|s| s.end() > from && s.base() < target)
        {
            let a = from.max(seg.base()) - seg.base();
            let b = target.min(seg.end()) - seg.base();
            seg.flush(a as usize, b as usize)?;
        }
        self.flushed.store(target, Ordering::Release);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.release_behind(target, &segments);
        Ok(target)
    }

    /// Unmaps flushed pages more than [`RESIDENT_BYTES`] behind `flushed` (under the flush
    /// lock). Best effort: a failing `madvise` only leaves the pages resident.
    fn release_behind(&self, flushed: u64, segments: &[Arc<Segment>]) {
        const PAGE: u64 = 4096;
        let until = flushed.saturating_sub(RESIDENT_BYTES) / PAGE * PAGE;
        let mut from = self.released.load(Ordering::Relaxed);
        // Consumers reading far behind fault pages back in; once a second, go back over the
        // last SWEEP_BYTES below the window too (cheap where nothing is resident).
        {
            let mut at = self.swept_at.lock();
            if at.elapsed() >= SWEEP_EVERY {
                *at = Instant::now();
                from = from.min(until.saturating_sub(SWEEP_BYTES) / PAGE * PAGE);
            }
        }
        if until <= from {
            return;
        }
        for seg in segments
            .iter()
            .filter(|s| s.end() > from && s.base() < until)
        {
            let a = from.max(seg.base()) - seg.base();
            let b = until.min(seg.end()) - seg.base();
            if let Err(e) = seg.release(a as usize, b as usize) {
                tracing::debug!(error = %e, "releasing flushed CommitLog pages failed");
            }
        }
        self.released.store(until, Ordering::Relaxed);
    }

    /// How many flushes made new bytes durable (group commit: appends per flush = appends /
    /// flushes).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Bytes written but not flushed.
    pub fn dirty(&self) -> u64 {
        self.written().saturating_sub(self.flushed())
    }

    /// Deletes the oldest segments for which `delete` says yes, stopping at the first no.
    /// Never deletes the segment being written. Returns (deleted paths, new min offset).
    pub fn delete_oldest(
        &self,
        mut delete: impl FnMut(&Segment) -> bool,
    ) -> Result<(Vec<PathBuf>, u64)> {
        let mut deleted = Vec::new();
        loop {
            let candidate = {
                let segments = self.segments.read();
                if segments.len() < 2 {
                    break;
                }
                Arc::clone(&segments[0])
            };
            // Never a segment that holds unflushed data either.
            if candidate.end() > self.flushed() || !delete(&candidate) {
                break;
            }
            std::fs::remove_file(candidate.path()).at(candidate.path())?;
            self.segments.write().remove(0);
            deleted.push(candidate.path().to_owned());
        }
        if !deleted.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok((deleted, self.min_offset()))
    }
}
