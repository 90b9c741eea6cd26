//! openraft storage for the controllers: the Raft log as an fsynced JSON-lines journal
//! (replayed on open, compacted after purges) and the state machine with its snapshot in a
//! JSON file written atomically.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{ControllerState, CtrlResponse, CtrlTC, NodeId};

#[derive(Serialize)]
enum RecRef<'a> {
    Vote(&'a Vote<NodeId>),
    Committed(&'a Option<LogId<NodeId>>),
    Append(&'a Entry<CtrlTC>),
    Truncate(u64),
    Purge(&'a LogId<NodeId>),
}

#[derive(Deserialize)]
enum Rec {
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    Append(Entry<CtrlTC>),
    Truncate(u64),
    Purge(LogId<NodeId>),
}

struct LogInner {
    path: PathBuf,
    file: File,
    records: u64,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    log: BTreeMap<u64, Entry<CtrlTC>>,
}

/// The Raft log, vote and committed pointer, in `raft-log.jsonl`.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

fn encode(buf: &mut Vec<u8>, r: &RecRef<'_>) -> io::Result<()> {
    serde_json::to_writer(&mut *buf, r)?;
    buf.push(b'\n');
    Ok(())
}

fn sync_parent(p: &Path) -> io::Result<()> {
    File::open(p.parent().unwrap_or(Path::new(".")))?.sync_all()
}

impl LogInner {
    fn write(&mut self, recs: &[RecRef<'_>]) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in recs {
            encode(&mut buf, r)?;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.records += recs.len() as u64;
        Ok(())
    }

    fn replay(&mut self, r: Rec) {
        match r {
            Rec::Vote(v) => self.vote = Some(v),
            Rec::Committed(c) => self.committed = c,
            Rec::Append(e) => {
                self.log.insert(e.log_id.index, e);
            }
            Rec::Truncate(i) => {
                let _ = self.log.split_off(&i);
            }
            Rec::Purge(id) => {
                self.log = self.log.split_off(&(id.index + 1));
                self.last_purged = Some(id);
            }
        }
    }

    /// Rewrites the journal as vote + committed + purge marker + live entries.
    fn compact(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(v) = &self.vote {
            encode(&mut buf, &RecRef::Vote(v))?;
        }
        encode(&mut buf, &RecRef::Committed(&self.committed))?;
        if let Some(p) = &self.last_purged {
            encode(&mut buf, &RecRef::Purge(p))?;
        }
        for e in self.log.values() {
            encode(&mut buf, &RecRef::Append(e))?;
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        sync_parent(&self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.records = 2 + self.log.len() as u64;
        Ok(())
    }
}

impl LogStore {
    /// Opens the journal, dropping a torn last record (a crash mid-write); refuses garbage in
    /// the middle.
    pub fn open(path: PathBuf) -> io::Result<LogStore> {
        let mut st = LogInner {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            path,
            records: 0,
            vote: None,
            committed: None,
            last_purged: None,
            log: BTreeMap::new(),
        };
        let bytes = std::fs::read(&st.path)?;
        let mut good = 0usize;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if line.last() != Some(&b'\n') {
                break;
            }
            let rec: Rec = serde_json::from_slice(&line[..line.len() - 1]).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", st.path.display()),
                )
            })?;
            st.replay(rec);
            st.records += 1;
            good += line.len();
        }
        if good < bytes.len() {
            st.file.set_len(good as u64)?;
            st.file.sync_all()?;
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(st)),
        })
    }
}

impl RaftLogReader<CtrlTC> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<CtrlTC>>, StorageError<NodeId>> {
        Ok(self
            .inner
            .lock()
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<CtrlTC> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<CtrlTC>, StorageError<NodeId>> {
        let g = self.inner.lock();
        let last = g
            .log
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(g.last_purged);
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut g = self.inner.lock();
        g.write(&[RecRef::Vote(vote)])
            .map_err(|e| StorageIOError::write_vote(&e))?;
        g.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().vote)
    }

    async fn save_committed(
        &mut self,
        c: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut g = self.inner.lock();
        g.write(&[RecRef::Committed(&c)])
            .map_err(|e| StorageIOError::write(&e))?;
        g.committed = c;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<CtrlTC>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<CtrlTC>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<CtrlTC>> = entries.into_iter().collect();
        let mut g = self.inner.lock();
        let recs: Vec<RecRef<'_>> = entries.iter().map(RecRef::Append).collect();
        g.write(&recs).map_err(|e| StorageIOError::write_logs(&e))?;
        drop(recs);
        for e in entries {
            g.log.insert(e.log_id.index, e);
        }
        // The write above was synced: durable now.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut g = self.inner.lock();
        g.write(&[RecRef::Truncate(log_id.index)])
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let _ = g.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut g = self.inner.lock();
        g.write(&[RecRef::Purge(&log_id)])
            .map_err(|e| StorageIOError::write_logs(&e))?;
        g.replay(Rec::Purge(log_id));
        if g.records > 4 * (g.log.len() as u64 + 16) {
            g.compact().map_err(|e| StorageIOError::write_logs(&e))?;
        }
        Ok(())
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct SmInner {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    state: ControllerState,
    snapshot: Option<StoredSnapshot>,
    snapshot_idx: u64,
    snap_path: PathBuf,
}

/// The controllers' replicated state, restored from its snapshot on open (openraft then
/// re-applies the committed log after it).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<SmInner>>,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

impl StateMachineStore {
    pub fn open(dir: &Path) -> io::Result<StateMachineStore> {
        let snap_path = dir.join("snapshot.json");
        let mut sm = SmInner {
            last_applied: None,
            last_membership: Default::default(),
            state: Default::default(),
            snapshot: None,
            snapshot_idx: 0,
            snap_path,
        };
        if sm.snap_path.exists() {
            let s: StoredSnapshot = serde_json::from_slice(&std::fs::read(&sm.snap_path)?)?;
            sm.state = serde_json::from_slice(&s.data)?;
            sm.last_applied = s.meta.last_log_id;
            sm.last_membership = s.meta.last_membership.clone();
            sm.snapshot = Some(s);
        }
        Ok(StateMachineStore {
            inner: Arc::new(Mutex::new(sm)),
        })
    }

    pub fn read<T>(&self, f: impl FnOnce(&ControllerState) -> T) -> T {
        f(&self.inner.lock().state)
    }
}

impl RaftSnapshotBuilder<CtrlTC> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<CtrlTC>, StorageError<NodeId>> {
        let mut g = self.inner.lock();
        let data =
            serde_json::to_vec(&g.state).map_err(|e| StorageIOError::read_state_machine(&e))?;
        g.snapshot_idx += 1;
        let snapshot_id = match g.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.snapshot_idx),
            None => format!("--{}", g.snapshot_idx),
        };
        let meta = SnapshotMeta {
            last_log_id: g.last_applied,
            last_membership: g.last_membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let json = serde_json::to_vec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        write_atomic(&g.snap_path, &json)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        g.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<CtrlTC> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let g = self.inner.lock();
        Ok((g.last_applied, g.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CtrlResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<CtrlTC>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        for ent in entries {
            g.last_applied = Some(ent.log_id);
            // One response per entry, whatever its kind.
            out.push(match ent.payload {
                EntryPayload::Blank => CtrlResponse::None,
                EntryPayload::Normal(req) => g.state.apply(&req),
                EntryPayload::Membership(m) => {
                    g.last_membership = StoredMembership::new(Some(ent.log_id), m);
                    CtrlResponse::None
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state: ControllerState = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let json = serde_json::to_vec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut g = self.inner.lock();
        write_atomic(&g.snap_path, &json)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        g.state = state;
        g.last_applied = meta.last_log_id;
        g.last_membership = meta.last_membership.clone();
        g.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<CtrlTC>>, StorageError<NodeId>> {
        Ok(self.inner.lock().snapshot.clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
