//! The `checkpoint` file: how far each structure is known to be durable, so that recovery after
//! a crash starts there instead of at the beginning. And the `abort` marker: present while the
//! store runs, removed at clean shutdown.
//!
//! Layout (big-endian, 40 bytes): magic `RMQCKPT1` (8), CommitLog flushed offset (8), offset up
//! to which ConsumeQueues are durable (8), offset up to which indexes are durable (8), CRC-32 of
//! the preceding 32 bytes (4), zero padding (4). Written to a temporary file, synced, renamed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{IoContext, Result};
use super::segment::sync_dir;

const MAGIC: &[u8; 8] = b"RMQCKPT1";
const LEN: usize = 40;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Everything in the CommitLog below this is durable.
    pub commitlog: u64,
    /// ConsumeQueue entries for every record below this are durable.
    pub consume_queue: u64,
    /// Index entries for every record below this are durable.
    pub index: u64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.commitlog.to_be_bytes());
        b[16..24].copy_from_slice(&self.consume_queue.to_be_bytes());
        b[24..32].copy_from_slice(&self.index.to_be_bytes());
        let crc = crc32fast::hash(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.len() != LEN || &b[0..8] != MAGIC {
            return None;
        }
        let crc = u32::from_be_bytes(b[32..36].try_into().ok()?);
        if crc != crc32fast::hash(&b[0..32]) {
            return None;
        }
        let u = |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().expect("8 bytes"));
        Some(Checkpoint {
            commitlog: u(8..16),
            consume_queue: u(16..24),
            index: u(24..32),
        })
    }

    /// Reads the checkpoint; `Ok(None)` if it is missing or damaged (recovery then scans
    /// everything).
    pub fn load(root: &Path) -> Result<Option<Checkpoint>> {
        let path = root.join("checkpoint");
        match std::fs::read(&path) {
            Ok(b) => {
                let cp = Checkpoint::decode(&b);
                if cp.is_none() {
                    tracing::warn!(
                        ?path,
                        "checkpoint file is damaged; recovery will scan the whole CommitLog"
                    );
                }
                Ok(cp)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(super::error::StoreError::io(path, e)),
        }
    }

    /// Durably replaces the checkpoint.
    pub fn store(&self, root: &Path) -> Result<()> {
        write_atomically(root, "checkpoint", &self.encode())
    }
}

/// Writes `name` in `dir` so that after a crash it holds either the old or the new contents:
/// temporary file, fsync, rename, fsync of the folder.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(contents).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, &path).at(&path)?;
    sync_dir(dir)
}

/// The `abort` marker: its presence at start means the previous run did not shut down cleanly.
pub struct AbortMarker {
    path: PathBuf,
}

impl AbortMarker {
    /// Creates the marker; returns it and whether one was already there (a crash).
    pub fn create(root: &Path) -> Result<(AbortMarker, bool)> {
        let path = root.join("abort");
        let crashed = path.exists();
        File::create(&path).and_then(|f| f.sync_all()).at(&path)?;
        sync_dir(root)?;
        Ok((AbortMarker { path }, crashed))
    }

    /// Removes the marker: the shutdown was clean.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_file(&self.path).at(&self.path)?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
        let cp = Checkpoint {
            commitlog: 1,
            consume_queue: 2,
            index: 3,
        };
        cp.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(cp));
        let path = dir.path().join("checkpoint");
        let mut b = std::fs::read(&path).unwrap();
        b[9] ^= 1;
        std::fs::write(&path, b).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
    }

    #[test]
    fn abort_marker() {
        let dir = tempfile::tempdir().unwrap();
        let (m, crashed) = AbortMarker::create(dir.path()).unwrap();
        assert!(!crashed);
        drop(m);
        let (m, crashed) = AbortMarker::create(dir.path()).unwrap();
        assert!(crashed, "not removed: the previous run crashed");
        m.remove().unwrap();
        let (_, crashed) = AbortMarker::create(dir.path()).unwrap();
        assert!(!crashed);
    }
}
