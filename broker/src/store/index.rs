//! The message index: find CommitLog records by key (message keys, unique keys) and store time.
//!
//! This is RocketMQ's `IndexFile` layout. An index file is a fixed-size, memory-mapped hash table
//! with chaining, all integers big-endian:
//!
//! ```text
//! offset                               size  field
//! ------------------------------------ ----  ---------------------------------------------------
//! header (40 bytes)
//!   0                                     8  begin timestamp (i64, ms): store time of entry 1
//!   8                                     8  end timestamp (i64, ms): largest store time indexed
//!  16                                     8  begin physical offset (i64): smallest offset indexed
//!  24                                     8  end physical offset (i64): largest offset indexed
//!  32                                     4  hash slot count in use (i32)
//!  36                                     4  index count (i32): next entry to write, starts at 1
//! hash slots (slots x 4 bytes)
//!  40 + 4*s                               4  slot s: index of the newest entry whose key hash
//!                                            maps to s (i32), 0 = empty
//! entries (max_entries x 20 bytes; entry 0 is never written, so index 0 means "none")
//!  40 + 4*slots + 20*i                    4  key hash (i32): |Java String.hashCode(key)|,
//!                                            0 if the hash code is i32::MIN
//!  40 + 4*slots + 20*i + 4                8  physical offset of the record in the CommitLog (i64)
//!  40 + 4*slots + 20*i + 12               4  time delta (i32, seconds): floor((store timestamp -
//!                                            begin timestamp) / 1000), clamped to [0, i32::MAX]
//!  40 + 4*slots + 20*i + 16               4  previous entry index in the same slot (i32), 0 = end
//! ```
//!
//! A key goes to slot `hash % slots`; a new entry points at the slot's previous head, so walking
//! a slot yields its entries newest first. Keys themselves are not stored: a lookup returns
//! candidate offsets (possibly hash collisions) that the caller checks by reading the record.
//!
//! Files live in one directory and are named by their creation wall-clock time in ms as 20
//! zero-padded digits (e.g. `00000001764000000000`), strictly increasing, so name order is age
//! order. A file is full when its index count reaches `max_entries`; the next entry then starts a
//! new file. A file that fails validation on open is renamed to `<name>.corrupt` and left alone.
//!
//! Time filtering has one-second granularity: an entry's store time is only known to lie in
//! `[begin + delta*1000, begin + delta*1000 + 999]`, and a lookup keeps an entry when that
//! interval overlaps the requested range (so it may return records up to 999 ms outside it).
//! Like RocketMQ, a store timestamp earlier than the file's begin timestamp (the clock stepped
//! back) is indexed as the begin timestamp.
//!
//! Concurrency: all mutable state sits behind one `parking_lot::RwLock`; the dispatcher writes
//! under the write lock, lookups, `max_physical_offset` and `flush` take the read lock.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::MmapMut;
use parking_lot::RwLock;

use crate::store::error::{IoContext, Result, StoreError};
use crate::store::segment::preallocate;

const HEADER_SIZE: usize = 40;
const SLOT_SIZE: usize = 4;
const ENTRY_SIZE: usize = 20;
const NAME_LEN: usize = 20;
const CORRUPT_SUFFIX: &str = ".corrupt";

/// Java's `String.hashCode`: `h = 31*h + c` over the UTF-16 code units, wrapping `i32` arithmetic.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The hash stored in an entry: `abs(hashCode)`, or 0 when the hash code is `i32::MIN`.
fn key_hash(key: &str) -> i32 {
    java_string_hash(key).checked_abs().unwrap_or(0)
}

/// Size of the index files. Every file in the directory must match it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IndexConfig {
    /// Number of hash slots per file.
    pub slots: u32,
    /// Number of entries per file, counting the unused entry 0.
    pub max_entries: u32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            slots: 5_000_000,
            max_entries: 20_000_000,
        }
    }
}

/// A validated [`IndexConfig`] with the derived file layout.
#[derive(Debug, Clone, Copy)]
struct Layout {
    slots: u32,
    max_entries: u32,
    entries_start: usize,
    file_size: usize,
}

impl Layout {
    fn new(config: IndexConfig) -> Result<Self> {
        if config.slots == 0 || config.slots > i32::MAX as u32 {
            return Err(StoreError::Config {
                field: "index.slots",
                reason: format!("must be between 1 and {}, got {}", i32::MAX, config.slots),
            });
        }
        if config.max_entries < 2 || config.max_entries > i32::MAX as u32 {
            return Err(StoreError::Config {
                field: "index.max_entries",
                reason: format!(
                    "must be between 2 and {} (entry 0 is unused), got {}",
                    i32::MAX,
                    config.max_entries
                ),
            });
        }
        let entries_start = HEADER_SIZE as u64 + u64::from(config.slots) * SLOT_SIZE as u64;
        let file_size = entries_start + u64::from(config.max_entries) * ENTRY_SIZE as u64;
        let too_big = || StoreError::Config {
            field: "index",
            reason: format!("an index file of {file_size} bytes does not fit in memory"),
        };
        let file_size = usize::try_from(file_size).map_err(|_| too_big())?;
        if isize::try_from(file_size).is_err() {
            return Err(too_big());
        }
        Ok(Layout {
            slots: config.slots,
            max_entries: config.max_entries,
            entries_start: entries_start as usize,
            file_size,
        })
    }

    fn slot_pos(&self, hash: i32) -> usize {
        // `hash` is non-negative for entries we write; `unsigned_abs` keeps corrupt input in range.
        HEADER_SIZE + (hash.unsigned_abs() % self.slots) as usize * SLOT_SIZE
    }

    /// Position of entry `index`, which must be in `1..max_entries`.
    fn entry_pos(&self, index: i32) -> usize {
        self.entries_start + index as usize * ENTRY_SIZE
    }
}

fn get_i32(buf: &[u8], pos: usize) -> i32 {
    buf.get(pos..pos + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_be_bytes)
}

fn get_i64(buf: &[u8], pos: usize) -> i64 {
    buf.get(pos..pos + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i64::from_be_bytes)
}

fn put_i32(buf: &mut [u8], pos: usize, v: i32) {
    buf[pos..pos + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_i64(buf: &mut [u8], pos: usize, v: i64) {
    buf[pos..pos + 8].copy_from_slice(&v.to_be_bytes());
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Header {
    begin_timestamp: i64,
    end_timestamp: i64,
    begin_phy_offset: i64,
    end_phy_offset: i64,
    hash_slot_count: i32,
    index_count: i32,
}

impl Header {
    fn decode(buf: &[u8]) -> Header {
        Header {
            begin_timestamp: get_i64(buf, 0),
            end_timestamp: get_i64(buf, 8),
            begin_phy_offset: get_i64(buf, 16),
            end_phy_offset: get_i64(buf, 24),
            hash_slot_count: get_i32(buf, 32),
            index_count: get_i32(buf, 36),
        }
    }

    fn encode(&self, buf: &mut [u8]) {
        put_i64(buf, 0, self.begin_timestamp);
        put_i64(buf, 8, self.end_timestamp);
        put_i64(buf, 16, self.begin_phy_offset);
        put_i64(buf, 24, self.end_phy_offset);
        put_i32(buf, 32, self.hash_slot_count);
        put_i32(buf, 36, self.index_count);
    }

    fn empty() -> Header {
        Header {
            index_count: 1,
            ..Header::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.index_count <= 1
    }

    /// Why this header cannot belong to a file of `layout`, if it cannot.
    fn inconsistency(&self, layout: &Layout) -> Option<(u64, String)> {
        if self.index_count < 1 || self.index_count as u32 > layout.max_entries {
            return Some((
                36,
                format!(
                    "index count {} outside 1..={}",
                    self.index_count, layout.max_entries
                ),
            ));
        }
        if self.hash_slot_count < 0 || self.hash_slot_count as u32 > layout.slots {
            return Some((
                32,
                format!(
                    "hash slot count {} outside 0..={}",
                    self.hash_slot_count, layout.slots
                ),
            ));
        }
        if self.is_empty() {
            return None;
        }
        if self.begin_phy_offset < 0 || self.end_phy_offset < self.begin_phy_offset {
            return Some((
                16,
                format!(
                    "physical offset range [{}, {}] is invalid",
                    self.begin_phy_offset, self.end_phy_offset
                ),
            ));
        }
        if self.end_timestamp < self.begin_timestamp {
            return Some((
                0,
                format!(
                    "timestamp range [{}, {}] is invalid",
                    self.begin_timestamp, self.end_timestamp
                ),
            ));
        }
        None
    }
}

/// One key to index: the key text (already prefixed by the caller, e.g. "TopicA#order-1"),
/// the record's physical offset in the CommitLog and its store timestamp in ms.
#[derive(Debug, Clone, Copy)]
pub struct IndexEntry<'a> {
    pub key: &'a str,
    pub physical_offset: u64,
    pub store_timestamp: i64,
}

/// One mapped index file.
struct IndexFile {
    path: PathBuf,
    name: u64,
    mmap: MmapMut,
    header: Header,
    /// Changed since the last msync.
    dirty: AtomicBool,
}

fn file_name(name: u64) -> String {
    format!("{name:0width$}", width = NAME_LEN)
}

/// Parses `<20 digits>` (an index file) or `<20 digits>.corrupt...` (a set-aside file).
fn parse_name(name: &str) -> Option<(u64, bool)> {
    let digits = name.get(..NAME_LEN)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = digits.parse().ok()?;
    match &name[NAME_LEN..] {
        "" => Some((value, false)),
        rest if rest.starts_with(CORRUPT_SUFFIX) => Some((value, true)),
        _ => None,
    }
}

enum Opened {
    Ok(IndexFile),
    Corrupt { position: u64, reason: String },
}

fn map_file(file: &File, path: &Path) -> Result<MmapMut> {
    // SAFETY: index files are private to this store: only this service opens them, and it never
    // truncates a mapped file. All access to the mapping goes through the service's RwLock.
    unsafe { MmapMut::map_mut(file) }.at(path)
}

impl IndexFile {
    fn create(dir: &Path, name: u64, layout: &Layout) -> Result<IndexFile> {
        let path = dir.join(file_name(name));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        // Blocks are reserved up front (see `segment::preallocate`): a full disk fails here,
        // not with SIGBUS on a later write through the mapping.
        let mapped = file
            .set_len(layout.file_size as u64)
            .at(&path)
            .and_then(|()| preallocate(&file, &path, 0, layout.file_size as u64))
            .and_then(|()| map_file(&file, &path));
        let mut mmap = match mapped {
            Ok(mmap) => mmap,
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let header = Header::empty();
        header.encode(&mut mmap[..HEADER_SIZE]);
        Ok(IndexFile {
            path,
            name,
            mmap,
            header,
            dirty: AtomicBool::new(true),
        })
    }

    fn open(path: PathBuf, name: u64, layout: &Layout) -> Result<Opened> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        let len = file.metadata().at(&path)?.len();
        if len != layout.file_size as u64 {
            return Ok(Opened::Corrupt {
                position: 0,
                reason: format!(
                    "file is {len} bytes, the index configuration needs {}",
                    layout.file_size
                ),
            });
        }
        let mut mmap = map_file(&file, &path)?;
        let mut header = Header::decode(&mmap[..HEADER_SIZE]);
        let mut dirty = false;
        if header == Header::default() {
            // Created but the header never reached the disk: an empty file.
            header = Header::empty();
            header.encode(&mut mmap[..HEADER_SIZE]);
            dirty = true;
        }
        if let Some((position, reason)) = header.inconsistency(layout) {
            return Ok(Opened::Corrupt { position, reason });
        }
        Ok(Opened::Ok(IndexFile {
            path,
            name,
            mmap,
            header,
            dirty: AtomicBool::new(dirty),
        }))
    }

    fn is_full(&self, layout: &Layout) -> bool {
        self.header.index_count as u32 >= layout.max_entries
    }

    /// Appends one entry; the caller checked that the file is not full.
    fn put(&mut self, layout: &Layout, hash: i32, offset: i64, timestamp: i64) {
        let index = self.header.index_count;
        let h = &mut self.header;
        if h.is_empty() {
            h.begin_timestamp = timestamp;
            h.end_timestamp = timestamp;
            h.begin_phy_offset = offset;
            h.end_phy_offset = offset;
        } else {
            h.end_timestamp = h.end_timestamp.max(timestamp);
            h.begin_phy_offset = h.begin_phy_offset.min(offset);
            h.end_phy_offset = h.end_phy_offset.max(offset);
        }
        let delta = timestamp
            .saturating_sub(h.begin_timestamp)
            .div_euclid(1000)
            .clamp(0, i64::from(i32::MAX)) as i32;

        let slot_pos = layout.slot_pos(hash);
        let head = get_i32(&self.mmap, slot_pos);
        // A slot pointing past the written entries (torn write before a crash) starts a new chain.
        let prev = if head > 0 && head < index { head } else { 0 };
        if head == 0 && (h.hash_slot_count as u32) < layout.slots {
            h.hash_slot_count += 1;
        }

        let pos = layout.entry_pos(index);
        put_i32(&mut self.mmap, pos, hash);
        put_i64(&mut self.mmap, pos + 4, offset);
        put_i32(&mut self.mmap, pos + 12, delta);
        put_i32(&mut self.mmap, pos + 16, prev);
        put_i32(&mut self.mmap, slot_pos, index);
        h.index_count = index + 1;
        let header = *h;
        header.encode(&mut self.mmap[..HEADER_SIZE]);
        self.dirty.store(true, Ordering::Release);
    }

    fn overlaps(&self, begin_ts: i64, end_ts: i64) -> bool {
        !self.header.is_empty()
            && self.header.begin_timestamp <= end_ts
            && self.header.end_timestamp >= begin_ts
    }

    /// Walks the chain for `hash`, newest first, adding unseen offsets to `out` until it has
    /// `max` entries. Out-of-range pointers end the chain.
    #[allow(clippy::too_many_arguments)]
    fn lookup(
        &self,
        layout: &Layout,
        hash: i32,
        begin_ts: i64,
        end_ts: i64,
        max: usize,
        seen: &mut HashSet<u64>,
        out: &mut Vec<u64>,
    ) {
        let count = self.header.index_count;
        let mut index = get_i32(&self.mmap, layout.slot_pos(hash));
        let mut steps = 0u32;
        while index > 0 && index < count && steps < layout.max_entries && out.len() < max {
            steps += 1;
            let pos = layout.entry_pos(index);
            let entry_hash = get_i32(&self.mmap, pos);
            let offset = get_i64(&self.mmap, pos + 4);
            let delta = get_i32(&self.mmap, pos + 12);
            let prev = get_i32(&self.mmap, pos + 16);
            if entry_hash == hash && offset >= 0 {
                let earliest = self
                    .header
                    .begin_timestamp
                    .saturating_add(i64::from(delta) * 1000);
                if earliest <= end_ts
                    && earliest.saturating_add(999) >= begin_ts
                    && seen.insert(offset as u64)
                {
                    out.push(offset as u64);
                }
            }
            // Chains only point backwards; anything else is corruption and ends the walk.
            if prev >= index {
                break;
            }
            index = prev;
        }
    }
}

struct Inner {
    /// Oldest first.
    files: Vec<IndexFile>,
    /// Largest file name seen in the directory, including set-aside files.
    last_name: u64,
    /// Start a new file for the next entry even if the newest one has room.
    roll_next: bool,
}

/// The index files of one store, oldest first; see the module docs for the format.
pub struct IndexService {
    dir: PathBuf,
    layout: Layout,
    inner: RwLock<Inner>,
    /// Files were created, renamed or deleted since the last flush.
    dir_dirty: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Renames `path` to `<path>.corrupt` (or `.corrupt.N` if taken); never overwrites anything.
fn set_aside(path: &Path) -> Result<PathBuf> {
    let base = path.as_os_str().to_owned();
    for attempt in 0..1000u32 {
        let mut target = base.clone();
        target.push(CORRUPT_SUFFIX);
        if attempt > 0 {
            target.push(format!(".{attempt}"));
        }
        let target = PathBuf::from(target);
        if target.exists() {
            continue;
        }
        fs::rename(path, &target).at(path)?;
        return Ok(target);
    }
    Err(StoreError::io(
        path,
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "too many set-aside copies of this index file",
        ),
    ))
}

impl IndexService {
    /// Opens every index file in `dir` (creating `dir` if missing). A file whose header is
    /// inconsistent (index count > max_entries, size not matching the config) is reported with a
    /// tracing::warn and renamed to `<name>.corrupt` (never silently deleted), and indexing goes on
    /// in a new file.
    pub fn open(dir: &Path, config: IndexConfig) -> Result<Self> {
        let layout = Layout::new(config)?;
        fs::create_dir_all(dir).at(dir)?;

        let mut candidates = Vec::new();
        let mut last_name = 0u64;
        for entry in fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let Some((name, corrupt)) = entry.file_name().to_str().and_then(parse_name) else {
                continue;
            };
            last_name = last_name.max(name);
            if corrupt {
                continue;
            }
            let path = entry.path();
            if !entry.file_type().at(&path)?.is_file() {
                tracing::warn!(path = %path.display(), "ignoring non-file in the index directory");
                continue;
            }
            candidates.push((name, path));
        }
        candidates.sort_unstable();

        let mut files: Vec<IndexFile> = Vec::with_capacity(candidates.len());
        let mut newest_corrupt = None;
        let mut dir_dirty = false;
        for (name, path) in candidates {
            match IndexFile::open(path.clone(), name, &layout)? {
                Opened::Ok(file) => files.push(file),
                Opened::Corrupt { position, reason } => {
                    let err = StoreError::Corrupt {
                        path: path.clone(),
                        position,
                        reason,
                    };
                    let target = set_aside(&path)?;
                    tracing::warn!(
                        error = %err,
                        moved_to = %target.display(),
                        "index file is inconsistent; set it aside, indexing continues in a new file"
                    );
                    newest_corrupt = Some(name);
                    dir_dirty = true;
                }
            }
        }
        let roll_next = match (newest_corrupt, files.last()) {
            (Some(corrupt), Some(newest)) => corrupt > newest.name,
            (Some(_), None) => true,
            (None, _) => false,
        };
        Ok(IndexService {
            dir: dir.to_path_buf(),
            layout,
            inner: RwLock::new(Inner {
                files,
                last_name,
                roll_next,
            }),
            dir_dirty: AtomicBool::new(dir_dirty),
        })
    }

    /// Adds all entries under one write lock; rolls to a new file when the current one is full.
    /// Updates header begin/end timestamps and physical offsets.
    pub fn put_batch(&self, entries: &[IndexEntry<'_>]) -> Result<()> {
        if let Some(bad) = entries
            .iter()
            .find(|e| i64::try_from(e.physical_offset).is_err())
        {
            return Err(StoreError::Corrupt {
                path: self.dir.clone(),
                position: bad.physical_offset,
                reason: format!(
                    "physical offset {} of key {:?} does not fit an index entry (i64)",
                    bad.physical_offset, bad.key
                ),
            });
        }
        let mut inner = self.inner.write();
        for entry in entries {
            let needs_new =
                inner.roll_next || inner.files.last().is_none_or(|f| f.is_full(&self.layout));
            if needs_new {
                let name = now_ms().max(inner.last_name.saturating_add(1));
                let file = IndexFile::create(&self.dir, name, &self.layout)?;
                tracing::debug!(path = %file.path.display(), "created index file");
                inner.files.push(file);
                inner.last_name = name;
                inner.roll_next = false;
                self.dir_dirty.store(true, Ordering::Release);
            }
            let file = inner
                .files
                .last_mut()
                .expect("a file with room was just ensured");
            file.put(
                &self.layout,
                key_hash(entry.key),
                entry.physical_offset as i64,
                entry.store_timestamp,
            );
        }
        Ok(())
    }

    /// Candidate physical offsets for `key` stored between begin_ts and end_ts (ms, inclusive),
    /// newest first, at most `max`, searching files newest first and skipping files whose
    /// [begin, end] timestamp range does not overlap. Candidates can be hash collisions; the caller
    /// reads the record and checks the key. Deduplicate offsets.
    pub fn query(&self, key: &str, max: usize, begin_ts: i64, end_ts: i64) -> Vec<u64> {
        let mut out = Vec::new();
        if max == 0 || begin_ts > end_ts {
            return out;
        }
        let hash = key_hash(key);
        let mut seen = HashSet::new();
        let inner = self.inner.read();
        for file in inner.files.iter().rev() {
            if out.len() >= max {
                break;
            }
            if file.overlaps(begin_ts, end_ts) {
                file.lookup(
                    &self.layout,
                    hash,
                    begin_ts,
                    end_ts,
                    max,
                    &mut seen,
                    &mut out,
                );
            }
        }
        out
    }

    /// The largest physical offset indexed so far (header end offset of the newest file), 0 if none.
    pub fn max_physical_offset(&self) -> u64 {
        // The newest file normally has it; taking the max over all files also covers a newest file
        // that is still empty (e.g. after a corrupt file was set aside).
        let inner = self.inner.read();
        inner
            .files
            .iter()
            .filter(|f| !f.header.is_empty())
            .map(|f| f.header.end_phy_offset.max(0) as u64)
            .max()
            .unwrap_or(0)
    }

    /// msync every file that has changed since the last flush.
    pub fn flush(&self) -> Result<()> {
        let inner = self.inner.read();
        for file in &inner.files {
            if file.dirty.swap(false, Ordering::AcqRel)
                && let Err(e) = file.mmap.flush()
            {
                file.dirty.store(true, Ordering::Release);
                return Err(StoreError::io(&file.path, e));
            }
        }
        if self.dir_dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all())
        {
            self.dir_dirty.store(true, Ordering::Release);
            return Err(StoreError::io(&self.dir, e));
        }
        Ok(())
    }

    /// Retention: deletes whole files whose end physical offset is < `min_physical_offset`
    /// (the CommitLog no longer has those records), never the newest file. Returns how many were deleted.
    pub fn delete_files_before(&self, min_physical_offset: u64) -> Result<usize> {
        let mut inner = self.inner.write();
        let mut deleted = 0;
        let mut i = 0;
        while i + 1 < inner.files.len() {
            let file = &inner.files[i];
            if (file.header.end_phy_offset.max(0) as u64) < min_physical_offset {
                match fs::remove_file(&file.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io(&file.path, e)),
                }
                tracing::info!(
                    path = %file.path.display(),
                    end_offset = file.header.end_phy_offset,
                    "deleted index file"
                );
                inner.files.remove(i);
                self.dir_dirty.store(true, Ordering::Release);
                deleted += 1;
            } else {
                i += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SMALL: IndexConfig = IndexConfig {
        slots: 64,
        max_entries: 100,
    };

    fn e(key: &str, physical_offset: u64, store_timestamp: i64) -> IndexEntry<'_> {
        IndexEntry {
            key,
            physical_offset,
            store_timestamp,
        }
    }

    fn all(index: &IndexService, key: &str) -> Vec<u64> {
        index.query(key, usize::MAX, i64::MIN, i64::MAX)
    }

    fn index_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn java_hash_matches_java() {
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99162322);
        assert_eq!(java_string_hash("TagA"), 2598919);
        // Wraps like Java, and works on UTF-16 code units (a surrogate pair is two units).
        assert_eq!(java_string_hash("hello world, this wraps"), {
            let mut h = 0i32;
            for c in "hello world, this wraps".encode_utf16() {
                h = h.wrapping_mul(31).wrapping_add(i32::from(c));
            }
            h
        });
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE in Java.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(key_hash("polygenelubricants"), 0);
    }

    #[test]
    fn put_query_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let index = IndexService::open(dir.path(), SMALL).unwrap();
        assert!(all(&index, "T#a").is_empty());
        assert_eq!(index.max_physical_offset(), 0);
        index
            .put_batch(&[
                e("T#a", 0, 1_000),
                e("T#b", 100, 1_001),
                e("T#a", 200, 1_002),
                e("T#c", 300, 1_003),
            ])
            .unwrap();
        assert_eq!(all(&index, "T#a"), vec![200, 0]);
        assert_eq!(all(&index, "T#b"), vec![100]);
        assert_eq!(all(&index, "T#c"), vec![300]);
        assert!(all(&index, "T#d").is_empty());
        assert_eq!(index.max_physical_offset(), 300);
        index.flush().unwrap();
        index.flush().unwrap();
        assert_eq!(index_files(dir.path()).len(), 1);
        assert_eq!(index_files(dir.path())[0].len(), NAME_LEN);
    }

    #[test]
    fn header_and_entry_bytes_follow_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let index = IndexService::open(dir.path(), SMALL).unwrap();
        index
            .put_batch(&[e("k", 7, 5_000), e("k", 9, 7_500)])
            .unwrap();
        index.flush().unwrap();
        let name = &index_files(dir.path())[0];
        let bytes = fs::read(dir.path().join(name)).unwrap();
        let layout = Layout::new(SMALL).unwrap();
        assert_eq!(bytes.len(), 40 + 64 * 4 + 100 * 20);
        let h = Header::decode(&bytes);
        assert_eq!(
            h,
            Header {
                begin_timestamp: 5_000,
                end_timestamp: 7_500,
                begin_phy_offset: 7,
                end_phy_offset: 9,
                hash_slot_count: 1,
                index_count: 3,
            }
        );
        let hash = java_string_hash("k");
        assert_eq!(get_i32(&bytes, layout.slot_pos(hash)), 2);
        let p = layout.entry_pos(2);
        assert_eq!(get_i32(&bytes, p), hash);
        assert_eq!(get_i64(&bytes, p + 4), 9);
        assert_eq!(get_i32(&bytes, p + 12), 2);
        assert_eq!(get_i32(&bytes, p + 16), 1);
    }

    #[test]
    fn collisions_return_all_matches_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            slots: 3,
            max_entries: 1000,
        };
        let index = IndexService::open(dir.path(), config).unwrap();
        let keys: Vec<String> = (0..20).map(|i| format!("Topic#key-{i}")).collect();
        let mut batch = Vec::new();
        for round in 0..10u64 {
            for (i, key) in keys.iter().enumerate() {
                batch.push(e(key, round * 100 + i as u64, 1_000 + round as i64));
            }
        }
        index.put_batch(&batch).unwrap();
        for (i, key) in keys.iter().enumerate() {
            let expected: Vec<u64> = (0..10u64).rev().map(|r| r * 100 + i as u64).collect();
            assert_eq!(all(&index, key), expected, "{key}");
        }
        // A true Java hash collision: both keys are candidates for either.
        assert_eq!(java_string_hash("Aa"), java_string_hash("BB"));
        index
            .put_batch(&[e("Aa", 5_000, 2_000), e("BB", 5_001, 2_000)])
            .unwrap();
        assert_eq!(all(&index, "Aa"), vec![5_001, 5_000]);
        assert_eq!(all(&index, "BB"), vec![5_001, 5_000]);
    }

    #[test]
    fn max_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let index = IndexService::open(dir.path(), SMALL).unwrap();
        let batch: Vec<_> = (0..250u64).map(|i| e("k", i * 10, 1_000)).collect();
        index.put_batch(&batch).unwrap();
        assert_eq!(
            index.query("k", 5, i64::MIN, i64::MAX),
            vec![2490, 2480, 2470, 2460, 2450]
        );
        assert!(index.query("k", 0, i64::MIN, i64::MAX).is_empty());
        // Across files (99 entries each) too.
        let got = index.query("k", 120, i64::MIN, i64::MAX);
        assert_eq!(got.len(), 120);
        assert_eq!(got, (130..250u64).rev().map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(all(&index, "k").len(), 250);
    }

    #[test]
    fn time_range_filter() {
        let dir = tempfile::tempdir().unwrap();
        let index = IndexService::open(dir.path(), SMALL).unwrap();
        let base = 1_764_000_000_000i64;
        let batch: Vec<_> = (0..10u64)
            .map(|i| e("k", i, base + i as i64 * 10_000))
            .collect();
        index.put_batch(&batch).unwrap();
        assert_eq!(
            index.query("k", 100, base + 20_000, base + 50_000),
            vec![5, 4, 3, 2]
        );
        assert_eq!(
            index.query("k", 100, base + 21_000, base + 49_999),
            vec![4, 3]
        );
        // Within the second of an entry, it stays a candidate.
        assert_eq!(
            index.query("k", 100, base + 20_999, base + 30_000),
            vec![3, 2]
        );
        assert_eq!(index.query("k", 100, base + 90_000, i64::MAX), vec![9]);
        assert!(index.query("k", 100, base + 91_000, i64::MAX).is_empty());
        assert!(index.query("k", 100, i64::MIN, base - 1).is_empty());
        assert!(
            index
                .query("k", 100, base + 50_000, base + 20_000)
                .is_empty()
        );
        // Sub-second store times: 1 s granularity may add candidates but never loses one.
        index.put_batch(&[e("s", 100, base + 95_300)]).unwrap();
        assert_eq!(
            index.query("s", 10, base + 95_300, base + 95_300),
            vec![100]
        );
        assert!(index.query("s", 10, base + 96_000, i64::MAX).is_empty());
    }

    #[test]
    fn skips_files_outside_the_time_range() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            slots: 4,
            max_entries: 5,
        };
        let index = IndexService::open(dir.path(), config).unwrap();
        // 4 entries per file: file 0 covers t=0..3 s, file 1 t=100..103 s, file 2 t=200..203 s.
        let mut batch = Vec::new();
        for f in 0..3u64 {
            for i in 0..4u64 {
                batch.push(e("k", f * 10 + i, (f * 100_000 + i * 1_000) as i64));
            }
        }
        index.put_batch(&batch).unwrap();
        assert_eq!(index_files(dir.path()).len(), 3);
        assert_eq!(
            index.query("k", 100, 100_000, 150_000),
            vec![13, 12, 11, 10]
        );
        assert_eq!(index.query("k", 100, 3_000, 100_000), vec![10, 3]);
    }

    #[test]
    fn rolls_to_new_files_and_queries_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            slots: 64,
            max_entries: 10,
        };
        let index = IndexService::open(dir.path(), config).unwrap();
        for i in 0..30u64 {
            let key = if i % 3 == 0 { "A" } else { "B" };
            index.put_batch(&[e(key, i, 1_000 + i as i64)]).unwrap();
        }
        // 9 usable entries per file.
        let names = index_files(dir.path());
        assert_eq!(names.len(), 4);
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        let a: Vec<u64> = (0..30u64).rev().filter(|i| i % 3 == 0).collect();
        let b: Vec<u64> = (0..30u64).rev().filter(|i| i % 3 != 0).collect();
        assert_eq!(all(&index, "A"), a);
        assert_eq!(all(&index, "B"), b);
        assert_eq!(index.max_physical_offset(), 29);
    }

    #[test]
    fn data_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            slots: 16,
            max_entries: 10,
        };
        {
            let index = IndexService::open(dir.path(), config).unwrap();
            let batch: Vec<_> = (0..12u64).map(|i| e("k", i, 1_000)).collect();
            index.put_batch(&batch).unwrap();
            index.flush().unwrap();
        }
        let index = IndexService::open(dir.path(), config).unwrap();
        assert_eq!(all(&index, "k"), (0..12u64).rev().collect::<Vec<_>>());
        assert_eq!(index.max_physical_offset(), 11);
        // Continues in the newest, non-full file.
        index.put_batch(&[e("k", 12, 2_000)]).unwrap();
        assert_eq!(index_files(dir.path()).len(), 2);
        drop(index);
        let index = IndexService::open(dir.path(), config).unwrap();
        assert_eq!(all(&index, "k"), (0..13u64).rev().collect::<Vec<_>>());
    }

    #[test]
    fn re_putting_offsets_does_not_duplicate_results() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            slots: 8,
            max_entries: 7,
        };
        let index = IndexService::open(dir.path(), config).unwrap();
        let batch: Vec<_> = (0..10u64)
            .map(|i| e(if i % 2 == 0 { "x" } else { "y" }, i * 8, 1_000 + i as i64))
            .collect();
        index.put_batch(&batch).unwrap();
        // The dispatcher replays after a crash, partly across a roll.
        index.put_batch(&batch[4..]).unwrap();
        index.put_batch(&batch).unwrap();
        assert_eq!(all(&index, "x"), vec![64, 48, 32, 16, 0]);
        assert_eq!(all(&index, "y"), vec![72, 56, 40, 24, 8]);
        assert_eq!(index.query("x", 3, i64::MIN, i64::MAX), vec![64, 48, 32]);
        assert_eq!(index.max_physical_offset(), 72);
    }

    #[test]
    fn corrupt_header_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = IndexService::open(dir.path(), SMALL).unwrap();
            index.put_batch(&[e("k", 1, 1_000)]).unwrap();
            index.flush().unwrap();
        }
        let name = index_files(dir.path())[0].clone();
        let path = dir.path().join(&name);
        let mut bytes = fs::read(&path).unwrap();
        put_i32(&mut bytes, 36, 101); // index count > max_entries
        fs::write(&path, &bytes).unwrap();
        // And a file of the wrong size, newer than the first.
        let short = format!("{:020}", name.parse::<u64>().unwrap() + 5);
        fs::write(dir.path().join(&short), [0u8; 100]).unwrap();

        let index = IndexService::open(dir.path(), SMALL).unwrap();
        assert!(all(&index, "k").is_empty());
        assert_eq!(index.max_physical_offset(), 0);
        let names = index_files(dir.path());
        assert_eq!(
            names,
            vec![format!("{name}.corrupt"), format!("{short}.corrupt")]
        );
        assert_eq!(fs::read(dir.path().join(&names[0])).unwrap(), bytes);

        index.put_batch(&[e("k", 2, 2_000)]).unwrap();
        assert_eq!(all(&index, "k"), vec![2]);
        let names = index_files(dir.path());
        assert_eq!(names.len(), 3);
        // The new file sorts after the set-aside ones.
        assert!(names[2] > short && names[2].len() == NAME_LEN);
        drop(index);

        // Setting aside the same name again never overwrites the first copy.
        fs::write(dir.path().join(&name), [1u8; 3]).unwrap();
        let index = IndexService::open(dir.path(), SMALL).unwrap();
        assert_eq!(all(&index, "k"), vec![2]);
        assert!(dir.path().join(format!("{name}.corrupt.1")).exists());
        assert_eq!(fs::read(dir.path().join(&names[0])).unwrap(), bytes);
    }

    #[test]
    fn garbage_entries_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            slots: 4,
            max_entries: 50,
        };
        {
            let index = IndexService::open(dir.path(), config).unwrap();
            let batch: Vec<_> = (0..40u64).map(|i| e("k", i, 1_000)).collect();
            index.put_batch(&batch).unwrap();
            index.flush().unwrap();
        }
        let name = index_files(dir.path())[0].clone();
        let path = dir.path().join(&name);
        let layout = Layout::new(config).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        // Fill slots and entries with patterns: cycles, huge and negative pointers.
        let mut x: u32 = 12345;
        for pos in (HEADER_SIZE..layout.file_size).step_by(4) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let v = match x % 5 {
                0 => -1,
                1 => i32::MAX,
                2 => (x % 45) as i32,
                3 => java_string_hash("k"),
                _ => x as i32,
            };
            put_i32(&mut bytes, pos, v);
        }
        fs::write(&path, &bytes).unwrap();
        let index = IndexService::open(dir.path(), config).unwrap();
        for key in ["k", "a", "b", "c"] {
            let got = index.query(key, 1000, i64::MIN, i64::MAX);
            assert!(got.len() <= 50);
            let got = index.query(key, 1000, 0, 10_000);
            assert!(got.len() <= 50);
        }
        // Still writable.
        index.put_batch(&[e("k", 99, 2_000)]).unwrap();
        assert_eq!(index.query("k", 1, i64::MIN, i64::MAX), vec![99]);
    }

    #[test]
    fn delete_files_before_keeps_newest() {
        let dir = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            slots: 8,
            max_entries: 5,
        };
        let index = IndexService::open(dir.path(), config).unwrap();
        // Files of 4 entries: offsets 0..=3, 4..=7, 8..=11, 12..=13.
        let batch: Vec<_> = (0..14u64).map(|i| e("k", i, 1_000)).collect();
        index.put_batch(&batch).unwrap();
        assert_eq!(index_files(dir.path()).len(), 4);
        assert_eq!(index.delete_files_before(3).unwrap(), 0);
        assert_eq!(index.delete_files_before(4).unwrap(), 1);
        assert_eq!(all(&index, "k"), (4..14u64).rev().collect::<Vec<_>>());
        assert_eq!(index.delete_files_before(1_000).unwrap(), 2);
        assert_eq!(index_files(dir.path()).len(), 1);
        assert_eq!(all(&index, "k"), vec![13, 12]);
        assert_eq!(index.delete_files_before(u64::MAX).unwrap(), 0);
        assert_eq!(index.max_physical_offset(), 13);
        index.flush().unwrap();
    }

    #[test]
    fn rejects_bad_config_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        for config in [
            IndexConfig {
                slots: 0,
                max_entries: 10,
            },
            IndexConfig {
                slots: 10,
                max_entries: 1,
            },
        ] {
            assert!(matches!(
                IndexService::open(dir.path(), config),
                Err(StoreError::Config { .. })
            ));
        }
        let index = IndexService::open(dir.path(), SMALL).unwrap();
        assert!(index.put_batch(&[e("k", u64::MAX, 0)]).is_err());
        assert!(index_files(dir.path()).is_empty());
    }

    #[test]
    fn concurrent_queries_during_puts() {
        let dir = tempfile::tempdir().unwrap();
        let index = IndexService::open(dir.path(), SMALL).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..500u64 {
                    index.put_batch(&[e("k", i, 1_000 + i as i64)]).unwrap();
                }
            });
            s.spawn(|| {
                for _ in 0..200 {
                    let got = index.query("k", 10, i64::MIN, i64::MAX);
                    assert!(got.windows(2).all(|w| w[0] > w[1]));
                }
            });
        });
        assert_eq!(all(&index, "k").len(), 500);
    }

    proptest! {
        #[test]
        fn query_returns_every_offset_put(
            ops in prop::collection::vec((0..25usize, 0..50u64, 0..2_500i64), 1..300),
            chunk in 1..40usize,
            window in (0..400_000i64, 0..400_000i64),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let config = IndexConfig { slots: 8, max_entries: 30 };
            let keys: Vec<String> = (0..25).map(|i| format!("Topic#{i}")).collect();
            let mut offset = 0u64;
            let mut ts = 1_764_000_000_000i64;
            let mut puts = Vec::new();
            for &(k, d_off, d_ts) in &ops {
                offset += d_off;
                ts += d_ts;
                puts.push((k, offset, ts));
            }
            let index = IndexService::open(dir.path(), config).unwrap();
            let batch: Vec<_> = puts.iter().map(|&(k, o, t)| e(&keys[k], o, t)).collect();
            for c in batch.chunks(chunk) {
                index.put_batch(c).unwrap();
            }
            let (a, b) = window;
            let (lo, hi) = (1_764_000_000_000 + a.min(b), 1_764_000_000_000 + a.max(b));
            for (k, key) in keys.iter().enumerate() {
                let got = all(&index, key);
                let unique: HashSet<u64> = got.iter().copied().collect();
                prop_assert_eq!(unique.len(), got.len(), "duplicates for {}", key);
                prop_assert!(got.windows(2).all(|w| w[0] > w[1]), "not newest first: {:?}", got);
                for &(pk, o, _) in &puts {
                    if pk == k {
                        prop_assert!(unique.contains(&o), "{} missing offset {}", key, o);
                    }
                }
                let in_window: HashSet<u64> = index.query(key, usize::MAX, lo, hi).into_iter().collect();
                for &(pk, o, t) in &puts {
                    if pk == k && (lo..=hi).contains(&t) {
                        prop_assert!(in_window.contains(&o), "{} missing offset {} at {}", key, o, t);
                    }
                }
            }
            prop_assert_eq!(index.max_physical_offset(), offset);
        }
    }
}
