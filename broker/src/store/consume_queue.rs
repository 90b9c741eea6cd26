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
//!
//! Built for nodes with 100,000 queues and more:
//! - Files are read and written with positioned I/O, never mapped, so a queue holds no
//!   mapping; their descriptors live in one store-wide LRU ([`OpenFiles`]) whose capacity,
//!   not the number of queues, bounds how many are open.
//! - Queues are opened on first use, outside the store-wide map lock; a queue that is not on
//!   disk is known from one directory scan at start, without a syscall per lookup.
//! - Durability is batched: writes only mark their file dirty and new directories are recorded;
//!   the checkpoint syncs them all at once (one `syncfs` when many are dirty) before it records
//!   how far the queues are built. A crash before that re-dispatches from the older checkpoint.
//! - Writes wait when they would reopen a file: a new entry whose file is not among the cached
//!   descriptors stays in memory (a queue keeps its newest entries there anyway, and readers
//!   take them from there) until the queue has [`RECENT_ENTRIES`] waiting, its file is open
//!   again, or the next sync writes every queue's waiting entries back, each queue's in one
//!   write. With more queues than descriptors that is one open per queue per sync, not one per
//!   message; the checkpoint vouches only for what was written back and synced.
//! - Repairs that touch every queue (truncation after a crash or a diverged log, retention)
//!   are applied to open queues at once and to the others when they are first opened.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use super::error::{IoContext, Result, StoreError};
use super::segment::{file_name, parse_file_name, sync_dir};

pub const ENTRY_SIZE: u64 = 20;

/// Above this many dirty files, a checkpoint syncs the whole file system once (`syncfs`)
/// rather than each file.
const SYNCFS_ABOVE: usize = 64;

/// Stripes of the per-queue open lock: two threads never open the same queue at once, and
/// opening one queue blocks no lookup of another.
const OPEN_STRIPES: usize = 64;

/// How many of its newest entries a queue keeps in memory: consumers that keep up read them
/// from there, neither opening the file (with more queues than cached descriptors, a reopen)
/// nor reading it. 8 entries are 192 bytes per queue written to.
const RECENT_ENTRIES: usize = 8;

/// Writes of up to this many entries are encoded in a buffer on the stack.
const STACK_ENTRIES: usize = 16;

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

/// (queue serial, first logical offset of the file): a file in the descriptor cache.
type FileKey = (u64, u64);

/// The store-wide cache of open ConsumeQueue files, least recently used evicted first. An
/// evicted file is reopened on its next use; a thread still reading it keeps its descriptor
/// until it is done.
pub struct OpenFiles {
    lru: Mutex<LruCache<FileKey, Arc<File>>>,
    opens: AtomicU64,
}

impl OpenFiles {
    fn new(capacity: usize) -> OpenFiles {
        OpenFiles {
            lru: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("at least 1"),
            )),
            opens: AtomicU64::new(0),
        }
    }

    fn get(&self, key: FileKey, path: &Path, create: bool) -> Result<Arc<File>> {
        if let Some(f) = self.lru.lock().get(&key) {
            return Ok(Arc::clone(f));
        }
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(path)
                .at(path)?,
        );
        self.opens.fetch_add(1, Ordering::Relaxed);
        let mut lru = self.lru.lock();
        if let Some(f) = lru.get(&key) {
            return Ok(Arc::clone(f));
        }
        lru.put(key, Arc::clone(&file));
        Ok(file)
    }

    /// The file's descriptor: the cached one, or a fresh one that is cached only while the
    /// cache has room (a write-back touches every queue once and would push out the files
    /// readers use).
    fn get_uncached(&self, key: FileKey, path: &Path, create: bool) -> Result<Arc<File>> {
        if let Some(f) = self.lru.lock().peek(&key) {
            return Ok(Arc::clone(f));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .at(path)?;
        self.opens.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(file);
        let mut lru = self.lru.lock();
        if lru.len() < lru.cap().get() {
            lru.put(key, Arc::clone(&file));
        }
        Ok(file)
    }

    /// Whether writing to the file would (re)open it: it is not cached and the cache is full.
    fn would_open(&self, key: FileKey) -> bool {
        let lru = self.lru.lock();
        lru.len() == lru.cap().get() && !lru.contains(&key)
    }

    fn forget(&self, key: FileKey) {
        self.lru.lock().pop(&key);
    }

    /// Descriptors held by the cache now.
    pub fn open_count(&self) -> usize {
        self.lru.lock().len()
    }

    /// The cache's bound.
    pub fn capacity(&self) -> usize {
        self.lru.lock().cap().get()
    }

    /// Files opened since start (misses).
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }
}

/// What every queue of a store shares: the descriptor cache and what the next checkpoint
/// must make durable.
struct Shared {
    files: OpenFiles,
    /// Files written since the last sync.
    dirty: Mutex<HashMap<FileKey, PathBuf>>,
    /// Directories whose entries changed since the last sync (created queue folders, files).
    dirs: Mutex<HashSet<PathBuf>>,
}

struct QueueState {
    /// First logical offset of each file on disk.
    files: BTreeSet<u64>,
    /// Smallest logical offset still readable.
    min: u64,
    /// Next logical offset to be written (one past the last entry).
    max: u64,
    /// One past the last entry in the files: `[written, max)` wait in `recent` for a write.
    written: u64,
    /// The CommitLog start the last `delete_before` ran for.
    deleted_below: u64,
    /// The newest entries, up to [`RECENT_ENTRIES`]: those of `[max - len, max)`. They include
    /// every entry not written to the files yet.
    recent: VecDeque<CqEntry>,
}

impl QueueState {
    /// The entries not written to the files yet.
    fn waiting(&self) -> Vec<CqEntry> {
        let n = (self.max - self.written) as usize;
        self.recent
            .range(self.recent.len() - n..)
            .copied()
            .collect()
    }
}

/// One queue's ConsumeQueue.
pub struct ConsumeQueue {
    dir: PathBuf,
    serial: u64,
    entries_per_file: u64,
    shared: Arc<Shared>,
    state: Mutex<QueueState>,
    /// Entries wait in memory for a write (set and cleared under `state`).
    waiting: AtomicBool,
}

impl ConsumeQueue {
    fn open(
        dir: PathBuf,
        serial: u64,
        entries_per_file: u64,
        shared: Arc<Shared>,
    ) -> Result<ConsumeQueue> {
        let mut files = BTreeSet::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.at(&dir)?;
                    if let Some(byte_offset) = entry.file_name().to_str().and_then(parse_file_name)
                    {
                        files.insert(byte_offset / ENTRY_SIZE);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&dir, e)),
        }
        let q = ConsumeQueue {
            dir,
            serial,
            entries_per_file,
            shared,
            state: Mutex::new(QueueState {
                files,
                min: 0,
                max: 0,
                written: 0,
                deleted_below: 0,
                recent: VecDeque::new(),
            }),
            waiting: AtomicBool::new(false),
        };
        {
            let mut st = q.state.lock();
            // The end is the last non-empty whole entry of the last file; a torn partial entry
            // or trailing zeros (a crash) do not count.
            while let Some(&first) = st.files.last() {
                let file = q.file(first, false)?;
                let path = q.path(first);
                let len = file.metadata().at(&path)?.len();
                let mut n = (len / ENTRY_SIZE).min(entries_per_file);
                while n > 0 {
                    if !read_entry(&file, n - 1, &path)?.is_empty() {
                        break;
                    }
                    n -= 1;
                }
                if n == 0 && st.files.len() > 1 {
                    st.files.pop_last();
                    q.shared.files.forget((serial, first));
                    std::fs::remove_file(&path).at(&path)?;
                    continue;
                }
                if len != n * ENTRY_SIZE {
                    file.set_len(n * ENTRY_SIZE).at(&path)?;
                }
                st.max = first + n;
                break;
            }
            st.written = st.max;
            st.min = st.files.first().map_or(st.max, |f| *f);
            // Leading empty entries (a queue that starts inside its first file) are not
            // readable.
            if let Some(&first) = st.files.first() {
                let file = q.file(first, false)?;
                let path = q.path(first);
                while st.min < st.max && st.min < first + entries_per_file {
                    if !read_entry(&file, st.min - first, &path)?.is_empty() {
                        break;
                    }
                    st.min += 1;
                }
            }
        }
        Ok(q)
    }

    fn path(&self, first: u64) -> PathBuf {
        self.dir.join(file_name(first * ENTRY_SIZE))
    }

    fn file(&self, first: u64, create: bool) -> Result<Arc<File>> {
        self.shared
            .files
            .get((self.serial, first), &self.path(first), create)
    }

    fn remove_file(&self, st: &mut QueueState, first: u64) -> Result<()> {
        st.files.remove(&first);
        self.shared.files.forget((self.serial, first));
        self.shared.dirty.lock().remove(&(self.serial, first));
        let path = self.path(first);
        std::fs::remove_file(&path).at(&path)
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
            st.written = offset;
            st.recent.clear();
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

    /// Appends `entries` at `offset` (the queue's end). They wait in memory when their file
    /// is not open and the queue has room for them there; otherwise every waiting entry is
    /// written with them.
    fn write_locked(&self, st: &mut QueueState, offset: u64, entries: &[CqEntry]) -> Result<()> {
        debug_assert_eq!(offset, st.max);
        let waiting = (st.max - st.written) as usize + entries.len();
        let first_file = st.written - st.written % self.entries_per_file;
        let wait =
            waiting <= RECENT_ENTRIES && self.shared.files.would_open((self.serial, first_file));
        if !wait {
            let at = st.written;
            if at == st.max {
                self.write_entries(st, at, entries, true)?;
            } else {
                let mut all = st.waiting();
                all.extend_from_slice(entries);
                self.write_entries(st, at, &all, true)?;
            }
            st.written = offset + entries.len() as u64;
        }
        for e in entries {
            if st.recent.len() == RECENT_ENTRIES {
                st.recent.pop_front();
            }
            st.recent.push_back(*e);
        }
        st.max = offset + entries.len() as u64;
        self.waiting.store(st.written < st.max, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the entries waiting in memory to the files.
    fn write_back(&self) -> Result<()> {
        let mut st = self.state.lock();
        if st.written < st.max {
            let waiting = st.waiting();
            let at = st.written;
            self.write_entries(&mut st, at, &waiting, false)?;
            st.written = st.max;
        }
        self.waiting.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `entries` to the files from logical offset `offset`, creating files (and
    /// folders) as needed; `cache` keeps a descriptor it opens in the store's cache.
    fn write_entries(
        &self,
        st: &mut QueueState,
        mut offset: u64,
        mut entries: &[CqEntry],
        cache: bool,
    ) -> Result<()> {
        // Most writes carry a few entries: those are encoded on the stack.
        let mut stack = [0u8; STACK_ENTRIES * ENTRY_SIZE as usize];
        let mut heap = Vec::new();
        while !entries.is_empty() {
            let file_first = offset - offset % self.entries_per_file;
            let room = (file_first + self.entries_per_file - offset) as usize;
            let n = room.min(entries.len());
            let created = !st.files.contains(&file_first);
            if created {
                if st.files.is_empty() && !self.dir.is_dir() {
                    self.create_dirs()?;
                }
                self.shared.dirs.lock().insert(self.dir.clone());
            }
            let key = (self.serial, file_first);
            let file = if cache {
                self.file(file_first, created)?
            } else {
                self.shared
                    .files
                    .get_uncached(key, &self.path(file_first), created)?
            };
            st.files.insert(file_first);
            let len = n * ENTRY_SIZE as usize;
            let buf = if n <= STACK_ENTRIES {
                &mut stack[..len]
            } else {
                heap.clear();
                heap.resize(len, 0);
                &mut heap[..]
            };
            for (i, e) in entries[..n].iter().enumerate() {
                e.encode(&mut buf[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize]);
            }
            let pos = (offset - file_first) * ENTRY_SIZE;
            file.write_all_at(buf, pos)
                .map_err(|e| StoreError::io(self.path(file_first), e))?;
            self.shared
                .dirty
                .lock()
                .entry(key)
                .or_insert_with(|| self.path(file_first));
            offset += n as u64;
            entries = &entries[n..];
        }
        Ok(())
    }

    /// Creates the queue's folder (and its topic's), recording each new directory entry for
    /// the next sync.
    fn create_dirs(&self) -> Result<()> {
        let topic_dir = self
            .dir
            .parent()
            .expect("a queue folder has a topic folder");
        let mut dirs = self.shared.dirs.lock();
        if !topic_dir.is_dir() {
            std::fs::create_dir_all(topic_dir).at(topic_dir)?;
            if let Some(root) = topic_dir.parent() {
                dirs.insert(root.to_owned());
            }
        }
        match std::fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io(&self.dir, e)),
        }
        dirs.insert(topic_dir.to_owned());
        Ok(())
    }

    /// Up to `max` entries from logical offset `from` (clamped to what exists). Empty entries
    /// are returned as they are; callers skip them.
    pub fn get(&self, from: u64, max: usize) -> Result<Vec<CqEntry>> {
        let st = self.state.lock();
        self.get_locked(&st, from, max)
    }

    fn get_locked(&self, st: &QueueState, from: u64, max: usize) -> Result<Vec<CqEntry>> {
        let from = from.max(st.min);
        let to = st.max.min(from.saturating_add(max as u64));
        let recent_first = st.max - st.recent.len() as u64;
        if from >= recent_first && from <= st.max {
            return Ok(st
                .recent
                .range((from - recent_first) as usize..)
                .take(to.saturating_sub(from) as usize)
                .copied()
                .collect());
        }
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        let mut offset = from;
        // The files hold `[.., written)`; the rest waits in `recent` (read after them).
        let in_files = to.min(st.written);
        while offset < in_files {
            let file_first = offset - offset % self.entries_per_file;
            let n = (file_first + self.entries_per_file).min(in_files) - offset;
            if !st.files.contains(&file_first) {
                break;
            }
            let file = self.file(file_first, false)?;
            let mut buf = vec![0u8; (n * ENTRY_SIZE) as usize];
            file.read_exact_at(&mut buf, (offset - file_first) * ENTRY_SIZE)
                .map_err(|e| StoreError::io(self.path(file_first), e))?;
            out.extend(buf.chunks_exact(ENTRY_SIZE as usize).map(CqEntry::decode));
            offset += n;
        }
        if offset == in_files && offset < to {
            out.extend(
                st.recent
                    .range((offset - recent_first) as usize..)
                    .take((to - offset) as usize)
                    .copied(),
            );
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
        let mut st = self.state.lock();
        let mut dropped = 0;
        while st.max > st.min {
            let last = st.max - 1;
            let e = self.get_locked(&st, last, 1)?.into_iter().next();
            let keep = e.is_some_and(|e| {
                e.is_empty() || e.physical_offset + u64::from(e.size) <= commitlog_end
            });
            if keep {
                break;
            }
            st.max = last;
            st.recent.pop_back();
            dropped += 1;
            if last >= st.written {
                // It was waiting in memory only.
                continue;
            }
            st.written = last;
            let file_first = last - last % self.entries_per_file;
            if last == file_first && st.files.len() > 1 {
                self.remove_file(&mut st, file_first)?;
            } else if st.files.contains(&file_first) {
                let path = self.path(file_first);
                self.file(file_first, false)?
                    .set_len((last - file_first) * ENTRY_SIZE)
                    .at(&path)?;
            }
        }
        self.waiting.store(st.written < st.max, Ordering::Relaxed);
        Ok(dropped)
    }

    /// Retention: deletes whole files whose entries all point below `commitlog_min`, never the
    /// last file, and moves the min offset to the first entry at or above it.
    pub fn delete_before(&self, commitlog_min: u64) -> Result<()> {
        let mut st = self.state.lock();
        if commitlog_min <= st.deleted_below {
            return Ok(());
        }
        loop {
            let mut keys = st.files.iter();
            let (Some(&first), Some(&next)) = (keys.next(), keys.next()) else {
                break;
            };
            // The last entry of the first file decides.
            let Some(last) = self.get_locked(&st, next - 1, 1)?.into_iter().next() else {
                break;
            };
            if last.physical_offset >= commitlog_min {
                break;
            }
            self.remove_file(&mut st, first)?;
            st.min = st.min.max(next);
        }
        // Within the first file, skip the entries that point below the CommitLog's start.
        // Physical offsets grow along a queue, so a binary search finds the first one kept; a
        // run of empty entries (a filled gap) takes the place of the entry that follows it.
        let end = st.max.min(
            st.files
                .first()
                .map_or(st.max, |f| f + self.entries_per_file),
        );
        let (mut lo, mut hi) = (st.min, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let below = match self.first_non_empty(&st, mid, end)? {
                Some(e) => e.physical_offset < commitlog_min,
                None => true,
            };
            if below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        st.min = lo;
        st.deleted_below = commitlog_min;
        Ok(())
    }

    /// The first non-empty entry in `[from, to)`.
    fn first_non_empty(&self, st: &QueueState, from: u64, to: u64) -> Result<Option<CqEntry>> {
        let mut at = from;
        while at < to {
            let chunk = self.get_locked(st, at, (to - at).min(256) as usize)?;
            if chunk.is_empty() {
                break;
            }
            at += chunk.len() as u64;
            if let Some(e) = chunk.into_iter().find(|e| !e.is_empty()) {
                return Ok(Some(e));
            }
        }
        Ok(None)
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
    shared: Arc<Shared>,
    queues: RwLock<HashMap<String, HashMap<i32, Arc<ConsumeQueue>>>>,
    /// Queues found on disk at start and not opened yet; every other queue lives in `queues`.
    on_disk: Mutex<HashMap<String, HashSet<i32>>>,
    opening: Vec<Mutex<()>>,
    next_serial: AtomicU64,
    /// The CommitLog's first local offset: a queue opened later starts past entries below it.
    commitlog_min: AtomicU64,
    /// The CommitLog was cut here (crash recovery, a diverged replica): a queue opened later
    /// drops the entries past it. `u64::MAX` when it never was.
    commitlog_cut: AtomicU64,
}

impl ConsumeQueueStore {
    /// Opens the store; at most `open_files` queue files stay open at once.
    pub fn new(root: &Path, entries_per_file: u64, open_files: usize) -> Result<ConsumeQueueStore> {
        std::fs::create_dir_all(root).at(root)?;
        let mut on_disk: HashMap<String, HashSet<i32>> = HashMap::new();
        for topic in std::fs::read_dir(root).at(root)? {
            let topic = topic.at(root)?;
            let Ok(name) = topic.file_name().into_string() else {
                continue;
            };
            if !topic.file_type().at(&topic.path())?.is_dir() {
                continue;
            }
            let ids: HashSet<i32> = std::fs::read_dir(topic.path())
                .at(&topic.path())?
                .filter_map(|q| q.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .collect();
            if !ids.is_empty() {
                on_disk.insert(name, ids);
            }
        }
        Ok(ConsumeQueueStore {
            root: root.to_owned(),
            entries_per_file,
            shared: Arc::new(Shared {
                files: OpenFiles::new(open_files),
                dirty: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashSet::new()),
            }),
            queues: RwLock::new(HashMap::new()),
            on_disk: Mutex::new(on_disk),
            opening: (0..OPEN_STRIPES).map(|_| Mutex::new(())).collect(),
            next_serial: AtomicU64::new(0),
            commitlog_min: AtomicU64::new(0),
            commitlog_cut: AtomicU64::new(u64::MAX),
        })
    }

    fn queue_dir(&self, topic: &str, queue_id: i32) -> PathBuf {
        self.root.join(topic).join(queue_id.to_string())
    }

    fn cached(&self, topic: &str, queue_id: i32) -> Option<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .get(topic)
            .and_then(|t| t.get(&queue_id))
            .map(Arc::clone)
    }

    /// The queue, opened (or created in memory, files on first write) on first use. The
    /// opening (directory read, tail check, pending repairs) holds no store-wide lock.
    pub fn queue(&self, topic: &str, queue_id: i32) -> Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.cached(topic, queue_id) {
            return Ok(q);
        }
        let mut h = DefaultHasher::new();
        (topic, queue_id).hash(&mut h);
        let _opening = self.opening[(h.finish() as usize) % OPEN_STRIPES].lock();
        if let Some(q) = self.cached(topic, queue_id) {
            return Ok(q);
        }
        let q = Arc::new(ConsumeQueue::open(
            self.queue_dir(topic, queue_id),
            self.next_serial.fetch_add(1, Ordering::Relaxed),
            self.entries_per_file,
            Arc::clone(&self.shared),
        )?);
        let cut = self.commitlog_cut.load(Ordering::Acquire);
        if cut != u64::MAX {
            q.truncate_beyond(cut)?;
        }
        let commitlog_min = self.commitlog_min.load(Ordering::Acquire);
        if commitlog_min > 0 {
            q.delete_before(commitlog_min)?;
        }
        self.queues
            .write()
            .entry(topic.to_owned())
            .or_default()
            .insert(queue_id, Arc::clone(&q));
        let mut on_disk = self.on_disk.lock();
        if let Some(ids) = on_disk.get_mut(topic) {
            ids.remove(&queue_id);
            if ids.is_empty() {
                on_disk.remove(topic);
            }
        }
        Ok(q)
    }

    /// The queue if it exists in memory or on disk; never creates one, and answers "no" from
    /// memory.
    pub fn existing(&self, topic: &str, queue_id: i32) -> Result<Option<Arc<ConsumeQueue>>> {
        if let Some(q) = self.cached(topic, queue_id) {
            return Ok(Some(q));
        }
        let found = self
            .on_disk
            .lock()
            .get(topic)
            .is_some_and(|ids| ids.contains(&queue_id));
        if !found {
            // Opened (and so cached) by another thread since the first look, or absent.
            return Ok(self.cached(topic, queue_id));
        }
        self.queue(topic, queue_id).map(Some)
    }

    fn open_queues(&self) -> Vec<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .values()
            .flat_map(|qs| qs.values().map(Arc::clone))
            .collect()
    }

    /// Retention moved the CommitLog's start: drop queue files and entries that only point
    /// below it, in open queues now and in the others when they are opened.
    pub fn delete_before(&self, commitlog_min: u64) -> Result<()> {
        self.commitlog_min.store(commitlog_min, Ordering::Release);
        for q in self.open_queues() {
            q.delete_before(commitlog_min)?;
        }
        Ok(())
    }

    /// The CommitLog was cut at `end`: drop the queue entries past it, in open queues now and
    /// in the others when they are opened. Returns how many open-queue entries were dropped.
    pub fn truncate_beyond(&self, end: u64) -> Result<u64> {
        self.commitlog_cut.fetch_min(end, Ordering::AcqRel);
        let mut dropped = 0;
        for q in self.open_queues() {
            dropped += q.truncate_beyond(end)?;
        }
        Ok(dropped)
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

    /// Queues opened so far, and queues known on disk and not opened.
    pub fn counts(&self) -> (usize, usize) {
        let open = self.queues.read().values().map(HashMap::len).sum();
        let closed = self.on_disk.lock().values().map(HashSet::len).sum();
        (open, closed)
    }

    /// Open queues whose newest entries wait in memory for the next sync to write them.
    pub fn waiting_count(&self) -> usize {
        self.queues
            .read()
            .values()
            .flat_map(HashMap::values)
            .filter(|q| q.waiting.load(Ordering::Relaxed))
            .count()
    }

    pub fn open_files(&self) -> &OpenFiles {
        &self.shared.files
    }

    /// Writes every entry waiting in memory to its file, then makes every write and new
    /// directory since the last call durable: each dirty file's data, or, when many are dirty,
    /// the whole file system at once. Everything appended before the call is then durable.
    pub fn sync_all(&self) -> Result<()> {
        for q in self.open_queues() {
            if q.waiting.load(Ordering::Relaxed) {
                q.write_back()?;
            }
        }
        let dirty = std::mem::take(&mut *self.shared.dirty.lock());
        let dirs = std::mem::take(&mut *self.shared.dirs.lock());
        let result = self.sync(&dirty, &dirs);
        if result.is_err() {
            // Keep them for the next checkpoint, which will not be written before they are.
            self.shared.dirty.lock().extend(dirty);
            self.shared.dirs.lock().extend(dirs);
        }
        result
    }

    fn sync(&self, dirty: &HashMap<FileKey, PathBuf>, dirs: &HashSet<PathBuf>) -> Result<()> {
        if dirty.len() + dirs.len() > SYNCFS_ABOVE {
            let root = File::open(&self.root).at(&self.root)?;
            return rustix::fs::syncfs(&root).map_err(|e| StoreError::io(&self.root, e.into()));
        }
        for (key, path) in dirty {
            match self.shared.files.get(*key, path, false) {
                Ok(file) => file.sync_data().at(path)?,
                // Deleted since (retention, truncation): nothing to keep.
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Deepest first is not needed: each folder's own entry is synced with its parent.
        for dir in dirs {
            sync_dir(dir)?;
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
    fn the_newest_entries_are_read_from_memory_and_agree_with_the_files() {
        let dir = tempfile::tempdir().unwrap();
        // One cached descriptor: every file switch is a reopen.
        let store = ConsumeQueueStore::new(dir.path(), 4, 1).unwrap();
        let (a, b) = (store.queue("A", 0).unwrap(), store.queue("B", 0).unwrap());
        let entries: Vec<_> = (0..20).map(|i| e(i * 10)).collect();
        for (i, x) in entries.iter().enumerate() {
            a.append(i as u64, std::slice::from_ref(x)).unwrap();
            b.append(i as u64, std::slice::from_ref(x)).unwrap();
        }
        let opens = store.open_files().opens();
        assert_eq!(a.get(12, 32).unwrap(), entries[12..].to_vec());
        assert_eq!(a.get(15, 2).unwrap(), entries[15..17].to_vec());
        assert_eq!(a.entry(19).unwrap(), Some(entries[19]));
        assert!(a.get(20, 8).unwrap().is_empty());
        assert!(a.get(25, 8).unwrap().is_empty());
        assert_eq!(store.open_files().opens(), opens, "read from memory");
        assert_eq!(a.get(10, 32).unwrap(), entries[10..].to_vec());
        assert!(
            store.open_files().opens() > opens,
            "older entries come from the file"
        );
        // A cut CommitLog drops the newest entries from memory too.
        assert_eq!(a.truncate_beyond(175).unwrap(), 3);
        assert_eq!(a.get(12, 32).unwrap(), entries[12..17].to_vec());
        a.append(17, &[e(1000)]).unwrap();
        let mut want = entries[12..17].to_vec();
        want.push(e(1000));
        assert_eq!(a.get(12, 32).unwrap(), want);
        store.sync_all().unwrap();
        drop((a, b, store));
        let store = ConsumeQueueStore::new(dir.path(), 4, 1).unwrap();
        let a = store.existing("A", 0).unwrap().unwrap();
        assert_eq!(a.get(12, 32).unwrap(), want, "the files hold the same");
    }

    #[test]
    fn entries_whose_file_is_closed_wait_in_memory_until_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        // 100 queues, 4 cached descriptors.
        let store = ConsumeQueueStore::new(dir.path(), 4, 4).unwrap();
        let queues: Vec<_> = (0..100)
            .map(|id| store.queue(&format!("T{}", id % 10), id).unwrap())
            .collect();
        for round in 0..6u64 {
            for (id, q) in queues.iter().enumerate() {
                q.append(round, &[e(round * 1000 + id as u64)]).unwrap();
            }
        }
        // The first 4 queues' files filled the cache; after that nothing (re)opened a file.
        assert_eq!(store.open_files().opens(), 4);
        // Queues 0-3 filled their first file; their fifth entry is in the next, not cached.
        assert_eq!(
            store.waiting_count(),
            100,
            "every queue has entries waiting"
        );
        for (id, q) in queues.iter().enumerate() {
            let got = q.get(0, 100).unwrap();
            assert_eq!(got.len(), 6);
            assert_eq!(got[5], e(5000 + id as u64), "queue {id} reads what waits");
        }
        // A queue that fills its memory writes everything it holds, as one write per file.
        for round in 6..9u64 {
            queues[7].append(round, &[e(round * 1000 + 7)]).unwrap();
        }
        assert_eq!(store.open_files().opens(), 4 + 3, "9 entries, files of 4");
        assert_eq!(store.waiting_count(), 99, "queue 7 wrote what it held");
        // Dropped without a sync (a crash): the waiting entries are gone, the written stay.
        drop(queues);
        drop(store);
        let store = ConsumeQueueStore::new(dir.path(), 4, 4).unwrap();
        assert_eq!(store.counts(), (0, 5), "queues 0-3 and 7 reached the disk");
        assert_eq!(store.existing("T7", 7).unwrap().unwrap().max_offset(), 9);
        assert_eq!(store.existing("T1", 1).unwrap().unwrap().max_offset(), 4);
        // The sync writes every queue's waiting entries back, one open per file.
        let queues: Vec<_> = (0..100)
            .map(|id| store.queue(&format!("T{}", id % 10), id).unwrap())
            .collect();
        for (id, q) in queues.iter().enumerate() {
            let from = q.max_offset();
            q.append(from, &[e(1), e(2), e(3)]).unwrap();
            assert_eq!(q.max_offset(), from + 3, "queue {id}");
        }
        let opens = store.open_files().opens();
        store.sync_all().unwrap();
        assert!(
            store.open_files().opens() - opens <= 100,
            "one open per queue"
        );
        assert!(store.open_files().open_count() <= 4);
        assert_eq!(store.waiting_count(), 0, "the sync wrote every queue's");
        drop(queues);
        drop(store);
        let store = ConsumeQueueStore::new(dir.path(), 4, 4).unwrap();
        for id in 0..100 {
            let q = store
                .existing(&format!("T{}", id % 10), id)
                .unwrap()
                .unwrap();
            let want = match id {
                7 => 12,
                0..4 => 7,
                _ => 3,
            };
            assert_eq!(q.max_offset(), want, "queue {id}");
            assert_eq!(q.get(want - 3, 3).unwrap(), vec![e(1), e(2), e(3)]);
        }
    }

    #[test]
    fn append_get_roll_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 4, 1024).unwrap();
        let q = store.queue("T", 3).unwrap();
        let entries: Vec<_> = (0..10).map(|i| e(i * 10)).collect();
        q.append(0, &entries[..3]).unwrap();
        q.append(3, &entries[3..]).unwrap();
        q.append(5, &entries[5..7]).unwrap(); // re-dispatch: skipped
        assert_eq!(q.max_offset(), 10);
        assert_eq!(q.get(2, 5).unwrap(), entries[2..7].to_vec());
        assert_eq!(q.get(8, 100).unwrap(), entries[8..].to_vec());
        store.sync_all().unwrap();
        drop(store);
        let store = ConsumeQueueStore::new(dir.path(), 4, 1024).unwrap();
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
        let store = ConsumeQueueStore::new(dir.path(), 4, 1024).unwrap();
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
            let store = ConsumeQueueStore::new(dir.path(), 100, 1024).unwrap();
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
        let store = ConsumeQueueStore::new(dir.path(), 100, 1024).unwrap();
        let q = store.queue("T", 0).unwrap();
        assert_eq!(q.max_offset(), 2);
        q.append(2, &[e(20)]).unwrap();
        assert_eq!(q.get(0, 10).unwrap(), vec![e(0), e(10), e(20)]);
    }

    #[test]
    fn gap_is_filled_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 100, 1024).unwrap();
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
        let store = ConsumeQueueStore::new(dir.path(), 100, 1024).unwrap();
        let q = store.queue("T", 0).unwrap();
        q.append(250, &[e(20)]).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (250, 251));
        assert_eq!(q.entry(250).unwrap(), Some(e(20)));
        store.sync_all().unwrap();
        drop(store);
        let store = ConsumeQueueStore::new(dir.path(), 100, 1024).unwrap();
        let q = store.queue("T", 0).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (250, 251));
        assert_eq!(q.get(q.min_offset(), 100).unwrap(), vec![e(20)]);
    }

    #[test]
    fn many_queues_share_a_bounded_set_of_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 4, 16).unwrap();
        for round in 0..3u64 {
            for id in 0..500 {
                let q = store.queue(&format!("T{}", id % 50), id).unwrap();
                q.append(round * 3, &[e(round), e(round + 1), e(round + 2)])
                    .unwrap();
                assert!(store.open_files().open_count() <= 16);
            }
        }
        store.sync_all().unwrap();
        for id in 0..500 {
            let q = store.queue(&format!("T{}", id % 50), id).unwrap();
            assert_eq!(q.get(0, 100).unwrap().len(), 9, "queue {id}");
        }
        assert!(store.open_files().open_count() <= 16);
        assert!(store.open_files().opens() > 500 * 3, "files were reopened");
        drop(store);
        // After a restart every queue is known from one scan, opened only when used.
        let store = ConsumeQueueStore::new(dir.path(), 4, 16).unwrap();
        assert_eq!(store.counts(), (0, 500));
        assert!(
            store.existing("T1", 2).unwrap().is_none(),
            "T1 has 1, 51..."
        );
        let q = store.existing("T1", 51).unwrap().unwrap();
        assert_eq!(q.get(0, 100).unwrap()[8], e(4));
        assert_eq!(store.counts(), (1, 499));
    }

    #[test]
    fn cuts_and_retention_reach_queues_opened_later() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ConsumeQueueStore::new(dir.path(), 4, 8).unwrap();
            for id in 0..3 {
                let q = store.queue("T", id).unwrap();
                q.append(0, &(0..10).map(|i| e(i * 10)).collect::<Vec<_>>())
                    .unwrap();
            }
            store.sync_all().unwrap();
        }
        let store = ConsumeQueueStore::new(dir.path(), 4, 8).unwrap();
        let open = store.queue("T", 0).unwrap();
        assert_eq!(
            store.truncate_beyond(65).unwrap(),
            4,
            "only the open queue now"
        );
        assert_eq!(open.max_offset(), 6);
        store.delete_before(45).unwrap();
        let later = store.existing("T", 1).unwrap().unwrap();
        assert_eq!((later.min_offset(), later.max_offset()), (5, 6));
        assert_eq!(later.get(0, 10).unwrap(), vec![e(50)]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("T/1")).unwrap().count(),
            1,
            "files below 45 and past 65 are gone"
        );
    }

    #[test]
    fn retention_finds_the_first_kept_entry_across_a_filled_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsumeQueueStore::new(dir.path(), 1000, 8).unwrap();
        let q = store.queue("T", 0).unwrap();
        q.append(0, &(0..100).map(|i| e(i * 10)).collect::<Vec<_>>())
            .unwrap();
        q.append(150, &(150..300).map(|i| e(i * 10)).collect::<Vec<_>>())
            .unwrap(); // 100..150 are empty
        q.delete_before(995).unwrap();
        assert_eq!(q.min_offset(), 100, "the gap stands for entry 150");
        assert_eq!(q.entry(150).unwrap(), Some(e(1500)));
        q.delete_before(1505).unwrap();
        assert_eq!(q.min_offset(), 151);
        q.delete_before(100_000).unwrap();
        assert_eq!(q.min_offset(), 300, "nothing left to read");
    }
}
