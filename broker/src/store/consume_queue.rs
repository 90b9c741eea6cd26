//! ConsumeQueues: per (topic, queue id), the list of that queue's messages as 20-byte entries,
//! so that a consumer reads a queue by logical offset without scanning the CommitLog.
//!
//! Entry layout (big-endian): CommitLog physical offset i64, record size i32, tag hash code i64
//! (Java `String.hashCode` of the `TAGS` property, 0 without tags). Files live in
//! `consumequeue/<topic>/<queueId>/`, each holding `entries_per_file` entries and named, like
//! RocketMQ's, by the byte offset of its first entry (logical offset x 20) as 20 digits.
//!
//! ConsumeQueues are derived data: the dispatcher builds them from the CommitLog, and recovery
//! repairs them from it (dropping entries past the CommitLog's end, re-dispatching the rest).
//! They are read and written with positioned I/O rather than mapped, so that a node with very
//! many queues holds no mapping per queue. Files are opened lazily.
//! TODO(scale issue): bound the number of open file descriptors with an LRU of open files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::error::{IoContext, Result};
use super::segment::{file_name, parse_file_name, sync_dir};

pub const ENTRY_SIZE: u64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    pub physical_offset: u64,
    pub size: u32,
    pub tag_code: i64,
}

impl CqEntry {
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.physical_offset.to_be_bytes());
        out[8..12].copy_from_slice(&self.size.to_be_bytes());
        out[12..20].copy_from_slice(&self.tag_code.to_be_bytes());
    }

    fn decode(b: &[u8]) -> CqEntry {
        CqEntry {
            physical_offset: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            size: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            tag_code: i64::from_be_bytes(b[12..20].try_into().expect("8 bytes")),
        }
    }

    /// A zero entry: never written by the dispatcher (a record has a positive size).
    fn is_empty(&self) -> bool {
        self.size == 0
    }
}

struct QueueState {
    /// First logical offset of each file -> the open file.
    files: BTreeMap<u64, File>,
    /// Smallest logical offset still readable.
    min: u64,
    /// Next logical offset to be written (one past the last entry).
    max: u64,
    /// Files written since the last sync.
    dirty: Vec<u64>,
}

/// One queue's ConsumeQueue.
pub struct ConsumeQueue {
    dir: PathBuf,
    entries_per_file: u64,
    state: Mutex<QueueState>,
}

impl ConsumeQueue {
    fn open(dir: PathBuf, entries_per_file: u64) -> Result<ConsumeQueue> {
        let mut files = BTreeMap::new();
        if dir.exists() {
            for entry in std::fs::read_dir(&dir).at(&dir)? {
                let entry = entry.at(&dir)?;
                let Some(byte_offset) = entry.file_name().to_str().and_then(parse_file_name) else {
                    continue;
                };
                let path = entry.path();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .at(&path)?;
                files.insert(byte_offset / ENTRY_SIZE, file);
            }
        }
        let mut state = QueueState {
            files,
            min: 0,
            max: 0,
            dirty: Vec::new(),
        };
        // The end is the last non-empty whole entry of the last file; a torn partial entry or
        // trailing zeros (a crash) do not count.
        while let Some((&first, file)) = state.files.last_key_value() {
            let path = dir.join(file_name(first * ENTRY_SIZE));
            let len = file.metadata().at(&path)?.len() / ENTRY_SIZE;
            let mut n = len.min(entries_per_file);
            while n > 0 {
                let e = read_entry(file, n - 1, &path)?;
                if !e.is_empty() {
                    break;
                }
                n -= 1;
            }
            if n == 0 && state.files.len() > 1 {
                let (first, _) = state.files.pop_last().expect("non-empty");
                std::fs::remove_file(dir.join(file_name(first * ENTRY_SIZE))).at(&path)?;
                continue;
            }
            file.set_len(n * ENTRY_SIZE).at(&path)?;
            state.max = first + n;
            break;
        }
        state.min = state.files.first_key_value().map_or(state.max, |(f, _)| *f);
        // Leading empty entries (a queue that starts inside its first file) are not readable.
        if let Some((&first, file)) = state.files.first_key_value() {
            let path = dir.join(file_name(first * ENTRY_SIZE));
            while state.min < state.max && state.min < first + entries_per_file {
                if !read_entry(file, state.min - first, &path)?.is_empty() {
                    break;
                }
                state.min += 1;
            }
        }
        Ok(ConsumeQueue {
            dir,
            entries_per_file,
            state: Mutex::new(state),
        })
    }

    pub fn min_offset(&self) -> u64 {
        self.state.lock().min
    }

    /// One past the last entry.
    pub fn max_offset(&self) -> u64 {
        self.state.lock().max
    }

    /// Appends entries starting at logical offset `first`. Entries already present (a
    /// re-dispatch after a crash) are skipped; a gap (a bug, or a lost file) is filled with
    /// empty entries that readers skip, and logged.
    pub fn append(&self, first: u64, entries: &[CqEntry]) -> Result<()> {
        let mut st = self.state.lock();
        let mut offset = first;
        let mut entries = entries;
        if offset < st.max {
            let skip = (st.max - offset).min(entries.len() as u64) as usize;
            entries = &entries[skip..];
            offset += skip as u64;
        }
        if entries.is_empty() {
            return Ok(());
        }
        if offset > st.max && st.files.is_empty() {
            // A queue rebuilt from a tier whose oldest segments have expired: it starts here.
            st.min = offset;
            st.max = offset;
        }
        if offset > st.max {
            tracing::error!(dir = ?self.dir, expected = st.max, got = offset,
                "ConsumeQueue gap: filling with empty entries");
            let gap = vec![
                CqEntry {
                    physical_offset: 0,
                    size: 0,
                    tag_code: 0
                };
                (offset - st.max) as usize
            ];
            let at = st.max;
            self.write_locked(&mut st, at, &gap)?;
        }
        self.write_locked(&mut st, offset, entries)
    }

    fn write_locked(
        &self,
        st: &mut QueueState,
        mut offset: u64,
        mut entries: &[CqEntry],
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(entries.len().min(4096) * ENTRY_SIZE as usize);
        while !entries.is_empty() {
            let file_first = offset - offset % self.entries_per_file;
            let room = (file_first + self.entries_per_file - offset) as usize;
            let n = room.min(entries.len());
            if let std::collections::btree_map::Entry::Vacant(slot) = st.files.entry(file_first) {
                std::fs::create_dir_all(&self.dir).at(&self.dir)?;
                let path = self.dir.join(file_name(file_first * ENTRY_SIZE));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .at(&path)?;
                sync_dir(&self.dir)?;
                slot.insert(file);
            }
            buf.clear();
            buf.resize(n * ENTRY_SIZE as usize, 0);
            for (i, e) in entries[..n].iter().enumerate() {
                e.encode(&mut buf[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize]);
            }
            let file = &st.files[&file_first];
            let pos = (offset - file_first) * ENTRY_SIZE;
            file.write_all_at(&buf, pos)
                .at(&self.dir.join(file_name(file_first * ENTRY_SIZE)))?;
            if st.dirty.last() != Some(&file_first) {
                st.dirty.push(file_first);
            }
            offset += n as u64;
            entries = &entries[n..];
            st.max = offset;
        }
        Ok(())
    }

    /// Up to `max` entries from logical offset `from` (clamped to what exists). Empty entries
    /// are returned as they are; callers skip them.
    pub fn get(&self, from: u64, max: usize) -> Result<Vec<CqEntry>> {
        let st = self.state.lock();
        let from = from.max(st.min);
        let to = st.max.min(from.saturating_add(max as u64));
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        let mut offset = from;
        while offset < to {
            let file_first = offset - offset % self.entries_per_file;
            let n = (file_first + self.entries_per_file).min(to) - offset;
            let Some(file) = st.files.get(&file_first) else {
                break;
            };
            let mut buf = vec![0u8; (n * ENTRY_SIZE) as usize];
            let path = self.dir.join(file_name(file_first * ENTRY_SIZE));
            file.read_exact_at(&mut buf, (offset - file_first) * ENTRY_SIZE)
                .at(&path)?;
            out.extend(buf.chunks_exact(ENTRY_SIZE as usize).map(CqEntry::decode));
            offset += n;
        }
        Ok(out)
    }

    /// The entry at one logical offset.
    pub fn entry(&self, offset: u64) -> Result<Option<CqEntry>> {
        Ok(self
            .get(offset, 1)?
            .into_iter()
            .next()
            .filter(|e| !e.is_empty()))
    }

    /// Drops entries that point at or past `commitlog_end` (the CommitLog was truncated there).
    /// Returns how many were dropped.
    pub fn truncate_beyond(&self, commitlog_end: u64) -> Result<u64> {
        let mut dropped = 0;
        loop {
            let last = {
                let st = self.state.lock();
                if st.max == st.min {
                    break;
                }
                st.max - 1
            };
            let e = self.get(last, 1)?.into_iter().next();
            let keep = e.is_some_and(|e| {
                e.is_empty() || e.physical_offset + u64::from(e.size) <= commitlog_end
            });
            if keep {
                break;
            }
            let mut st = self.state.lock();
            st.max = last;
            dropped += 1;
            let file_first = last - last % self.entries_per_file;
            let path = self.dir.join(file_name(file_first * ENTRY_SIZE));
            if last == file_first && st.files.len() > 1 {
                st.files.remove(&file_first);
                std::fs::remove_file(&path).at(&path)?;
            } else if let Some(f) = st.files.get(&file_first) {
                f.set_len((last - file_first) * ENTRY_SIZE).at(&path)?;
            }
        }
        Ok(dropped)
    }

    /// Retention: deletes whole files whose entries all point below `commitlog_min`, never the
    /// last file, and moves the min offset to the first entry at or above it.
    pub fn delete_before(&self, commitlog_min: u64) -> Result<()> {
        loop {
            let (first, next) = {
                let st = self.state.lock();
                let mut keys = st.files.keys();
                match (keys.next(), keys.next()) {
                    (Some(&a), Some(&b)) => (a, b),
                    _ => break,
                }
            };
            // The last entry of the first file decides.
            let Some(last) = self.get(next - 1, 1)?.into_iter().next() else {
                break;
            };
            if last.physical_offset >= commitlog_min {
                break;
            }
            let mut st = self.state.lock();
            st.files.remove(&first);
            st.dirty.retain(|f| *f != first);
            st.min = st.min.max(next);
            let path = self.dir.join(file_name(first * ENTRY_SIZE));
            std::fs::remove_file(&path).at(&path)?;
        }
        // Within the first file, skip entries that point below the CommitLog's start.
        let (min, max) = {
            let st = self.state.lock();
            (st.min, st.max)
        };
        let mut new_min = min;
        while new_min < max {
            match self.get(new_min, 1)?.first() {
                Some(e) if e.is_empty() || e.physical_offset < commitlog_min => new_min += 1,
                _ => break,
            }
            if new_min - min > self.entries_per_file {
                break;
            }
        }
        self.state.lock().min = new_min;
        Ok(())
    }

    /// fsyncs the files written since the last call.
    pub fn sync(&self) -> Result<()> {
        let dirty: Vec<(u64, File)> = {
            let mut st = self.state.lock();
            let dirty = std::mem::take(&mut st.dirty);
            dirty
                .into_iter()
                .filter_map(|f| {
                    st.files
                        .get(&f)
                        .and_then(|file| file.try_clone().ok())
                        .map(|file| (f, file))
                })
                .collect()
        };
        for (first, file) in dirty {
            file.sync_data()
                .at(&self.dir.join(file_name(first * ENTRY_SIZE)))?;
        }
        Ok(())
    }
}

fn read_entry(file: &File, index: u64, path: &Path) -> Result<CqEntry> {
    let mut buf = [0u8; ENTRY_SIZE as usize];
    file.read_exact_at(&mut buf, index * ENTRY_SIZE).at(path)?;
    Ok(CqEntry::decode(&buf))
}

/// All ConsumeQueues of a store.
pub struct ConsumeQueueStore {
    root: PathBuf,
    entries_per_file: u64,
    queues: RwLock<HashMap<String, HashMap<i32, Arc<ConsumeQueue>>>>,
    /// The CommitLog's first local offset: a queue opened later starts past entries below it.
    commitlog_min: AtomicU64,
}

impl ConsumeQueueStore {
    pub fn new(root: &Path, entries_per_file: u64) -> Result<ConsumeQueueStore> {
        std::fs::create_dir_all(root).at(root)?;
        Ok(ConsumeQueueStore {
            root: root.to_owned(),
            entries_per_file,
            queues: RwLock::new(HashMap::new()),
            commitlog_min: AtomicU64::new(0),
        })
    }

    fn queue_dir(&self, topic: &str, queue_id: i32) -> PathBuf {
        self.root.join(topic).join(queue_id.to_string())
    }

    /// The queue, opened (or created in memory, files on first write) on first use.
    pub fn queue(&self, topic: &str, queue_id: i32) -> Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.queues.read().get(topic).and_then(|t| t.get(&queue_id)) {
            return Ok(Arc::clone(q));
        }
        let mut queues = self.queues.write();
        if let Some(q) = queues.get(topic).and_then(|t| t.get(&queue_id)) {
            return Ok(Arc::clone(q));
        }
        let q = Arc::new(ConsumeQueue::open(
            self.queue_dir(topic, queue_id),
            self.entries_per_file,
        )?);
        let commitlog_min = self.commitlog_min.load(Ordering::Acquire);
        if commitlog_min > 0 {
            q.delete_before(commitlog_min)?;
        }
        queues
            .entry(topic.to_owned())
            .or_default()
            .insert(queue_id, Arc::clone(&q));
        Ok(q)
    }

    /// The queue if it exists in memory or on disk; never creates one.
    pub fn existing(&self, topic: &str, queue_id: i32) -> Result<Option<Arc<ConsumeQueue>>> {
        if let Some(q) = self.queues.read().get(topic).and_then(|t| t.get(&queue_id)) {
            return Ok(Some(Arc::clone(q)));
        }
        if !self.queue_dir(topic, queue_id).is_dir() {
            return Ok(None);
        }
        self.queue(topic, queue_id).map(Some)
    }

    /// Retention moved the CommitLog's start: drop queue files and entries that only point
    /// below it, in open queues now and in the others when they are opened.
    pub fn delete_before(&self, commitlog_min: u64) -> Result<()> {
        self.commitlog_min.store(commitlog_min, Ordering::Release);
        for (_, _, q) in self.all() {
            q.delete_before(commitlog_min)?;
        }
        Ok(())
    }

    /// Opens every queue on disk (crash recovery needs to look at all of them).
    pub fn load_all(&self) -> Result<usize> {
        let mut n = 0;
        for topic in std::fs::read_dir(&self.root).at(&self.root)? {
            let topic = topic.at(&self.root)?;
            let Some(topic_name) = topic.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !topic.path().is_dir() {
                continue;
            }
            for q in std::fs::read_dir(topic.path()).at(&topic.path())? {
                let q = q.at(&topic.path())?;
                if let Some(id) = q.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                    self.queue(&topic_name, id)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Every queue opened so far.
    pub fn all(&self) -> Vec<(String, i32, Arc<ConsumeQueue>)> {
        self.queues
            .read()
            .iter()
            .flat_map(|(t, qs)| {
                qs.iter()
                    .map(move |(id, q)| (t.clone(), *id, Arc::clone(q)))
            })
            .collect()
    }

    /// Topics and their queue ids known on disk or in memory.
    pub fn sync_all(&self) -> Result<()> {
        for (_, _, q) in self.all() {
            q.sync()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(p: u64) -> CqEntry {
        CqEntry {
            physical_offset: p,
            size: 10,
            tag_code: p as i64 * 7,
        }
    }

    #[test]
    fn append_get_roll_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 4).unwrap();
        let q = store.queue("T", 3).unwrap();
        let entries: Vec<_> = (0..10).map(|i| e(i * 10)).collect();
        q.append(0, &entries[..3]).unwrap();
        q.append(3, &entries[3..]).unwrap();
        q.append(5, &entries[5..7]).unwrap(); // re-dispatch: skipped
        assert_eq!(q.max_offset(), 10);
        assert_eq!(q.get(2, 5).unwrap(), entries[2..7].to_vec());
        assert_eq!(q.get(8, 100).unwrap(), entries[8..].to_vec());
        q.sync().unwrap();
        drop(store);
        let store = ConsumeQueueStore::new(dir.path(), 4).unwrap();
        let q = store.existing("T", 3).unwrap().unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (0, 10));
        assert_eq!(q.get(0, 100).unwrap(), entries);
        assert!(store.existing("T", 4).unwrap().is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("T/3")).unwrap().count(),
            3,
            "10 entries at 4 per file"
        );
    }

    #[test]
    fn truncate_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 4).unwrap();
        let q = store.queue("T", 0).unwrap();
        let entries: Vec<_> = (0..10).map(|i| e(i * 10)).collect();
        q.append(0, &entries).unwrap();
        assert_eq!(
            q.truncate_beyond(65).unwrap(),
            4,
            "entries at 60..90 end past 65"
        );
        assert_eq!(q.max_offset(), 6);
        q.append(6, &[e(60)]).unwrap();
        assert_eq!(q.entry(6).unwrap(), Some(e(60)));
        q.delete_before(45).unwrap();
        assert_eq!(
            q.min_offset(),
            5,
            "first file (0..4) deleted, then 40 < 45 skipped"
        );
        assert_eq!(
            q.get(0, 1).unwrap(),
            vec![e(50)],
            "reads below min are clamped"
        );
    }

    #[test]
    fn torn_tail_ignored_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ConsumeQueueStore::new(dir.path(), 100).unwrap();
            store
                .queue("T", 0)
                .unwrap()
                .append(0, &[e(0), e(10)])
                .unwrap();
        }
        let path = dir.path().join("T/0").join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 20]); // zero entry
        bytes.extend_from_slice(&[1u8; 7]); // torn partial entry
        std::fs::write(&path, bytes).unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 100).unwrap();
        let q = store.queue("T", 0).unwrap();
        assert_eq!(q.max_offset(), 2);
        q.append(2, &[e(20)]).unwrap();
        assert_eq!(q.get(0, 10).unwrap(), vec![e(0), e(10), e(20)]);
    }

    #[test]
    fn gap_is_filled_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 100).unwrap();
        let q = store.queue("T", 0).unwrap();
        q.append(0, &[e(0)]).unwrap();
        q.append(3, &[e(30)]).unwrap();
        assert_eq!(q.max_offset(), 4);
        assert_eq!(q.entry(1).unwrap(), None);
        assert_eq!(q.entry(3).unwrap(), Some(e(30)));
    }

    #[test]
    fn an_empty_queue_starts_where_its_first_entry_is() {
        // A queue rebuilt from a tier whose oldest segments expired.
        let dir = tempfile::tempdir().unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 100).unwrap();
        let q = store.queue("T", 0).unwrap();
        q.append(250, &[e(20)]).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (250, 251));
        assert_eq!(q.entry(250).unwrap(), Some(e(20)));
        q.sync().unwrap();
        drop(store);
        let store = ConsumeQueueStore::new(dir.path(), 100).unwrap();
        let q = store.queue("T", 0).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (250, 251));
        assert_eq!(q.get(q.min_offset(), 100).unwrap(), vec![e(20)]);
    }
}
