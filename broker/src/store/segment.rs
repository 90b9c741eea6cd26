//! One CommitLog segment: a fixed-size file named by its 20-digit start offset, memory-mapped.
//!
//! Concurrency contract (the reason for the `unsafe` blocks here): a segment has one writer at a
//! time (the CommitLog's append lock, or recovery before anyone reads), which writes only at or
//! beyond the CommitLog's published write offset; readers only read below that offset, which is
//! published with `Release` after the bytes are written and loaded with `Acquire`. The written
//! and readable regions are therefore disjoint, and a byte is never written again once readable.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::error::{IoContext, Result, StoreError};

/// File name of the segment starting at `base`: 20 zero-padded digits, as RocketMQ names them.
pub fn file_name(base: u64) -> String {
    format!("{base:020}")
}

/// Parses a segment file name back into its start offset.
pub fn parse_file_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// fsyncs a directory, so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Reserves disk blocks for `[from, from + len)`. Writes through a mapping of a sparse file
/// allocate blocks at page-fault time, and a full disk then kills the process with SIGBUS;
/// with the blocks reserved up front, a full disk fails here instead, as a clean error.
pub(crate) fn preallocate(file: &File, path: &Path, from: u64, len: u64) -> Result<()> {
    use rustix::io::Errno;
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, len) {
        Ok(()) => Ok(()),
        // File systems without fallocate keep a sparse file.
        Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => Ok(()),
        Err(Errno::NOSPC) => Err(StoreError::DiskFull {
            path: path.to_owned(),
            needed: len,
        }),
        Err(e) => Err(StoreError::io(path, e.into())),
    }
}

#[derive(Debug)]
pub struct Segment {
    base: u64,
    size: u64,
    path: PathBuf,
    file: File,
    map: MmapRaw,
}

impl Segment {
    /// Creates a new, zero-filled (sparse) segment file and makes its existence durable.
    pub fn create(dir: &Path, base: u64, size: u64) -> Result<Segment> {
        let path = dir.join(file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        file.set_len(size).at(&path)?;
        if let Err(e) = preallocate(&file, &path, 0, size) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        file.sync_all().at(&path)?;
        sync_dir(dir)?;
        Self::map(path, file, base, size)
    }

    /// Opens an existing segment. A file shorter than `size` (a crash while it was being
    /// created) is extended with zeros; a longer one is refused.
    pub fn open(path: &Path, base: u64, size: u64) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .at(path)?;
        let len = file.metadata().at(path)?.len();
        if len > size {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                position: size,
                reason: format!(
                    "segment file is {len} bytes, larger than the configured segment size {size}; \
                     was the store written with a different segment size?"
                ),
            });
        }
        if len < size {
            file.set_len(size).at(path)?;
            preallocate(&file, path, len, size - len)?;
            file.sync_all().at(path)?;
        }
        Self::map(path.to_owned(), file, base, size)
    }

    fn map(path: PathBuf, file: File, base: u64, size: u64) -> Result<Segment> {
        let len = usize::try_from(size).map_err(|_| StoreError::Config {
            field: "segment_size",
            reason: "does not fit in memory addresses".into(),
        })?;
        let map = MmapOptions::new().len(len).map_raw(&file).at(&path)?;
        Ok(Segment {
            base,
            size,
            path,
            file,
            map,
        })
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// One past the last offset this segment can hold.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the CommitLog offset falls in this segment.
    pub fn contains(&self, offset: u64) -> bool {
        offset >= self.base && offset < self.end()
    }

    /// Writes `bytes` at `pos` (relative to the segment start) with `pwrite`, not through the
    /// mapping: a first store into a mapped page of a preallocated file makes the kernel read
    /// (zero-fill) that page before the copy overwrites it, which cost more than half of the
    /// broker's CPU at high write rates. The page cache is shared, so readers of the mapping see
    /// these bytes once they are published.
    ///
    /// # Safety
    /// The caller is the segment's only writer, and no reader may read `[pos, pos + len)` until
    /// the caller publishes it (see the module docs). Panics if the range is out of bounds.
    pub unsafe fn write_at(&self, pos: usize, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        assert!(
            pos + bytes.len() <= self.map.len(),
            "write beyond segment end"
        );
        self.file.write_all_at(bytes, pos as u64).at(&self.path)
    }

    /// Shared view of `len` bytes at `pos`.
    ///
    /// # Safety
    /// The range must be published (fully written, never written again) per the module docs.
    pub unsafe fn read_slice(&self, pos: usize, len: usize) -> &[u8] {
        assert!(pos + len <= self.map.len(), "read beyond segment end");
        // SAFETY: in bounds (asserted); immutability per the caller's contract.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(pos), len) }
    }

    /// A zero-copy `Bytes` of a published range; it keeps the mapping alive (even after the
    /// file is deleted by retention) until dropped.
    ///
    /// # Safety
    /// As [`Segment::read_slice`].
    pub unsafe fn bytes(self: &Arc<Self>, pos: usize, len: usize) -> Bytes {
        assert!(pos + len <= self.map.len(), "read beyond segment end");
        Bytes::from_owner(SegmentSlice {
            segment: Arc::clone(self),
            pos,
            len,
        })
    }

    /// Makes `[from, to)` (relative positions) durable. Bytes are written with `pwrite`, so
    /// this syncs the file's data (only appends dirty a segment, and only in that range).
    pub fn flush(&self, from: usize, to: usize) -> Result<()> {
        if to > from {
            self.file.sync_data().at(&self.path)?;
        }
        Ok(())
    }

    /// Drops `[from, to)` (relative, page-aligned `from`) from this process's resident set.
    /// The range must be flushed; readers may still hold slices into it.
    pub fn release(&self, from: usize, to: usize) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        // SAFETY: this is a shared mapping of a regular file, and the range is flushed: after
        // MADV_DONTNEED a read faults the same bytes back in from the page cache (the file), so
        // slices handed to readers keep reading what they read before. Nothing writes the
        // range again (bytes below the write offset are never rewritten).
        unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
        }
        .at(&self.path)
    }

    /// Zeroes everything from `pos` on while the segment is mapped: the range is punched out
    /// (reads as zeros; the file keeps its size, so a mapping never faults past its end) and
    /// its blocks are reserved again. For a log cut while in use: no reader may hold the range.
    pub fn zero_range(&self, pos: u64) -> Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        if pos >= self.size {
            return Ok(());
        }
        let len = self.size - pos;
        match fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            pos,
            len,
        ) {
            Ok(()) => preallocate(&self.file, &self.path, pos, len)?,
            // Without hole punching, write the zeros.
            Err(_) => {
                use std::os::unix::fs::FileExt;
                let zeros = vec![0u8; 1 << 20];
                let mut at = pos;
                while at < self.size {
                    let n = (self.size - at).min(zeros.len() as u64) as usize;
                    self.file.write_all_at(&zeros[..n], at).at(&self.path)?;
                    at += n as u64;
                }
            }
        }
        self.file.sync_all().at(&self.path)
    }

    /// Last-modified time of the file (retention's age).
    pub fn modified(&self) -> Result<std::time::SystemTime> {
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .at(&self.path)
    }
}

/// The owner behind a zero-copy `Bytes` read from a segment.
struct SegmentSlice {
    segment: Arc<Segment>,
    pos: usize,
    len: usize,
}

impl AsRef<[u8]> for SegmentSlice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: created only by `Segment::bytes`, whose caller guaranteed the range is
        // published, hence immutable for the mapping's lifetime (which `segment` extends).
        unsafe { self.segment.read_slice(self.pos, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(file_name(1_073_741_824), "00000000001073741824");
        assert_eq!(parse_file_name("00000000001073741824"), Some(1_073_741_824));
        assert_eq!(parse_file_name("0000000000107374182x"), None);
        assert_eq!(parse_file_name("123"), None);
    }

    #[test]
    fn create_write_reopen_zero_range() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Arc::new(Segment::create(dir.path(), 4096, 4096).unwrap());
        unsafe { seg.write_at(0, b"hello") }.unwrap();
        seg.flush(0, 5).unwrap();
        let b = unsafe { seg.bytes(0, 5) };
        drop(seg);
        assert_eq!(&b[..], b"hello", "bytes outlive the segment handle");
        let path = dir.path().join(file_name(4096));
        let seg = Segment::open(&path, 4096, 4096).unwrap();
        assert_eq!(unsafe { seg.read_slice(0, 5) }, b"hello");
        seg.zero_range(2).unwrap();
        assert_eq!(unsafe { seg.read_slice(0, 5) }, b"he\0\0\0");
        assert!(Segment::open(&path, 4096, 1024).is_err());
    }
}
