//! The epoch history of a node's CommitLog: (epoch, start offset) pairs, one per term of a
//! primary (RocketMQ 5 controller mode keeps the same in its epoch file). Bytes from `start`
//! up to the next entry's start were written by the primary of that epoch. Two logs agree up
//! to the end of the last epoch they share, which is where a returning node cuts its log.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use crate::store::checkpoint::write_atomically;

const FILE: &str = "epochs.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochEntry {
    pub epoch: u64,
    pub start: u64,
}

/// The history, kept in `epochs.json` in the store's root (written atomically).
pub struct EpochFile {
    dir: PathBuf,
    entries: Mutex<Vec<EpochEntry>>,
}

impl EpochFile {
    pub fn open(dir: &Path) -> Result<EpochFile, StoreError> {
        let path = dir.join(FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                position: 0,
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io(path, e)),
        };
        Ok(EpochFile {
            dir: dir.to_owned(),
            entries: Mutex::new(entries),
        })
    }

    pub fn entries(&self) -> Vec<EpochEntry> {
        self.entries.lock().clone()
    }

    /// The latest epoch this log has seen (0: none).
    pub fn last_epoch(&self) -> u64 {
        self.entries.lock().last().map_or(0, |e| e.epoch)
    }

    fn store(&self, entries: &[EpochEntry]) -> Result<(), StoreError> {
        let json = serde_json::to_vec(entries).expect("plain data");
        write_atomically(&self.dir, FILE, &json)
    }

    /// This node becomes primary for `epoch`, writing from `start` on. Entries past `start`
    /// (an epoch this log never received bytes of) are dropped first.
    pub fn begin(&self, epoch: u64, start: u64) -> Result<(), StoreError> {
        let mut entries = self.entries.lock();
        let mut next = entries.clone();
        next.retain(|e| e.start <= start && e.epoch < epoch);
        if next.last().is_some_and(|e| e.start == start) {
            // The previous epoch wrote nothing here: this one starts at the same offset.
            next.pop();
        }
        next.push(EpochEntry { epoch, start });
        self.store(&next)?;
        *entries = next;
        Ok(())
    }

    /// A replica takes its primary's history for the part of the log it holds (`end`).
    pub fn adopt(&self, primary: &[EpochEntry], end: u64) -> Result<(), StoreError> {
        let mut entries = self.entries.lock();
        let next: Vec<_> = primary.iter().copied().filter(|e| e.start <= end).collect();
        if *entries != next {
            self.store(&next)?;
            *entries = next;
        }
        Ok(())
    }
}

/// Where a log with history `theirs` that ends at `their_end` stops agreeing with a log with
/// history `ours` that ends at `our_end`: the end of the last epoch both hold, capped by both
/// ends. A log without history agrees up to where `ours` begins (bytes from before replication
/// was turned on).
pub fn agreed_end(ours: &[EpochEntry], our_end: u64, theirs: &[EpochEntry], their_end: u64) -> u64 {
    let end_of = |h: &[EpochEntry], i: usize, end: u64| h.get(i + 1).map_or(end, |n| n.start);
    for (i, t) in theirs.iter().enumerate().rev() {
        if t.start > their_end {
            continue;
        }
        if let Some(j) = ours
            .iter()
            .position(|o| o.epoch == t.epoch && o.start == t.start)
        {
            return end_of(ours, j, our_end)
                .min(end_of(theirs, i, their_end))
                .min(their_end)
                .min(our_end);
        }
    }
    let first_ours = ours.first().map_or(our_end, |o| o.start);
    let first_theirs = theirs.first().map_or(their_end, |t| t.start).min(their_end);
    first_ours.min(first_theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(u64, u64)]) -> Vec<EpochEntry> {
        pairs
            .iter()
            .map(|&(epoch, start)| EpochEntry { epoch, start })
            .collect()
    }

    #[test]
    fn same_history_agrees_up_to_the_shorter_end() {
        let a = h(&[(1, 0), (2, 500)]);
        assert_eq!(agreed_end(&a, 900, &a, 700), 700);
        assert_eq!(agreed_end(&a, 600, &a, 700), 600);
    }

    #[test]
    fn an_old_primary_cuts_what_it_wrote_after_the_failover() {
        // A was primary in epoch 2 from 500 and wrote up to 900; B was elected at 800 (epoch
        // 3) and went on. A must cut at 800.
        let b = h(&[(1, 0), (2, 500), (3, 800)]);
        let a = h(&[(1, 0), (2, 500)]);
        assert_eq!(agreed_end(&b, 2000, &a, 900), 800);
        // A replica that missed epoch 3 but holds less than its start keeps everything.
        assert_eq!(agreed_end(&b, 2000, &a, 700), 700);
    }

    #[test]
    fn diverged_in_an_epoch_the_other_never_saw() {
        // C was elected in epoch 3 at 400 but never replicated; B is primary of epoch 4 from
        // 450. Their last shared epoch is 2, which ends at 400 for C and 450 for B.
        let b = h(&[(1, 0), (2, 100), (4, 450)]);
        let c = h(&[(1, 0), (2, 100), (3, 400)]);
        assert_eq!(agreed_end(&b, 1000, &c, 600), 400);
    }

    #[test]
    fn no_history_agrees_up_to_the_first_epoch() {
        let b = h(&[(1, 300)]);
        assert_eq!(agreed_end(&b, 1000, &[], 200), 200);
        assert_eq!(agreed_end(&b, 1000, &[], 500), 300);
        assert_eq!(agreed_end(&b, 1000, &h(&[(7, 0)]), 500), 0);
    }

    #[test]
    fn begin_and_adopt_persist() {
        let dir = tempfile::tempdir().unwrap();
        let f = EpochFile::open(dir.path()).unwrap();
        f.begin(1, 0).unwrap();
        f.begin(2, 100).unwrap();
        // Epoch 3 starting where 2 started (2 wrote nothing): 2 is replaced.
        f.begin(3, 100).unwrap();
        assert_eq!(f.entries(), h(&[(1, 0), (3, 100)]));
        let f = EpochFile::open(dir.path()).unwrap();
        assert_eq!(f.last_epoch(), 3);
        f.adopt(&h(&[(1, 0), (3, 100), (4, 900)]), 500).unwrap();
        assert_eq!(
            EpochFile::open(dir.path()).unwrap().entries(),
            h(&[(1, 0), (3, 100)])
        );
    }
}
