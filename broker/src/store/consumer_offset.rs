//! Consumer progress: per consumer group, per (topic, queue), the next logical offset to
//! consume. Kept in memory, made durable by [`ConsumerOffsetStore::persist`] (called by the
//! store every checkpoint interval and at shutdown) as `config/consumerOffset.json`, RocketMQ's
//! file name and shape (`{"offsetTable": {"topic@group": {"0": 12, ...}}}`), written atomically;
//! the previous version is kept as `.bak` and used if the main file is unreadable.
//!
//! A crash loses at most one interval of commits, which consumers see as redelivery (at least
//! once), never as a skipped message.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::checkpoint::write_atomically;

/// Consumer offsets: "topic@group" -> queue id -> offset.
pub type OffsetTable = HashMap<String, HashMap<i32, u64>>;
use super::error::{IoContext, Result, StoreError};

const FILE: &str = "consumerOffset.json";

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OnDisk {
    offset_table: BTreeMap<String, BTreeMap<i32, u64>>,
}

#[derive(Default)]
struct Table {
    /// "topic@group" -> queue id -> offset, as RocketMQ keys it.
    offsets: HashMap<String, HashMap<i32, u64>>,
    version: u64,
    persisted_version: u64,
}

pub struct ConsumerOffsetStore {
    dir: PathBuf,
    table: Mutex<Table>,
    persist_lock: Mutex<()>,
}

fn key(topic: &str, group: &str) -> String {
    format!("{topic}@{group}")
}

impl ConsumerOffsetStore {
    /// Loads `dir/consumerOffset.json` (or its `.bak` if the main file is damaged).
    pub fn open(dir: &Path) -> Result<ConsumerOffsetStore> {
        std::fs::create_dir_all(dir).at(dir)?;
        let main = dir.join(FILE);
        let bak = dir.join(format!("{FILE}.bak"));
        let on_disk = match Self::read(&main) {
            Ok(Some(t)) => t,
            Ok(None) => Self::read(&bak).ok().flatten().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "consumer offsets unreadable; trying the backup");
                Self::read(&bak)?.ok_or(e)?
            }
        };
        let offsets = on_disk
            .offset_table
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        Ok(ConsumerOffsetStore {
            dir: dir.to_owned(),
            table: Mutex::new(Table {
                offsets,
                ..Table::default()
            }),
            persist_lock: Mutex::new(()),
        })
    }

    fn read(path: &Path) -> Result<Option<OnDisk>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path: path.to_owned(),
                    position: e.column() as u64,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    /// Records that `group` has consumed `topic`/`queue_id` up to (not including) `offset`.
    pub fn commit(&self, group: &str, topic: &str, queue_id: i32, offset: u64) {
        let mut t = self.table.lock();
        let k = key(topic, group);
        match t.offsets.get_mut(&k) {
            Some(q) => {
                q.insert(queue_id, offset);
            }
            None => {
                t.offsets.insert(k, HashMap::from([(queue_id, offset)]));
            }
        }
        t.version += 1;
    }

    /// The committed offset, if the group has one for this queue.
    pub fn get(&self, group: &str, topic: &str, queue_id: i32) -> Option<u64> {
        self.table
            .lock()
            .offsets
            .get(&key(topic, group))
            .and_then(|q| q.get(&queue_id).copied())
    }

    /// A copy of the whole table: what a primary sends a replica first.
    pub fn table(&self) -> OffsetTable {
        self.table.lock().offsets.clone()
    }

    /// The table's version: it changes with every commit.
    pub fn version(&self) -> u64 {
        self.table.lock().version
    }

    /// The entries that differ from `sent` (a copy of what a replica was sent), and `sent`
    /// brought up to date; None when an entry of `sent` is no longer in the table (the whole
    /// table must be sent then).
    pub fn changes_since(&self, sent: &mut OffsetTable) -> Option<OffsetTable> {
        let t = self.table.lock();
        let mut changes = OffsetTable::new();
        let mut entries = 0;
        for (k, q) in &t.offsets {
            entries += q.len();
            match sent.get_mut(k) {
                Some(was) => {
                    for (id, o) in q {
                        if was.insert(*id, *o) != Some(*o) {
                            changes.entry(k.clone()).or_default().insert(*id, *o);
                        }
                    }
                }
                None => {
                    sent.insert(k.clone(), q.clone());
                    changes.insert(k.clone(), q.clone());
                }
            }
        }
        // `sent` now holds every entry of the table: more means it held one the table lost.
        let held: usize = sent.values().map(HashMap::len).sum();
        (held == entries).then_some(changes)
    }

    /// Merges a primary's changed entries into the table (see [`Self::changes_since`]).
    pub fn merge(&self, changes: OffsetTable) {
        if changes.is_empty() {
            return;
        }
        let mut t = self.table.lock();
        for (k, q) in changes {
            t.offsets.entry(k).or_default().extend(q);
        }
        t.version += 1;
    }

    /// Replaces the table with a primary's (a replica follows its primary's progress).
    pub fn import(&self, offsets: OffsetTable) {
        let mut t = self.table.lock();
        if offsets != t.offsets {
            t.offsets = offsets;
            t.version += 1;
        }
    }

    /// Every (topic, queue id, offset) the group has committed.
    pub fn group_offsets(&self, group: &str) -> Vec<(String, i32, u64)> {
        let suffix = format!("@{group}");
        let t = self.table.lock();
        let mut out: Vec<_> = t
            .offsets
            .iter()
            .filter_map(|(k, q)| k.strip_suffix(&suffix).map(|topic| (topic, q)))
            .flat_map(|(topic, q)| q.iter().map(move |(id, o)| (topic.to_owned(), *id, *o)))
            .collect();
        out.sort();
        out
    }

    /// Every (topic, group) pair with committed offsets.
    pub fn topics_and_groups(&self) -> Vec<(String, String)> {
        let t = self.table.lock();
        let mut out: Vec<_> = t
            .offsets
            .keys()
            .filter_map(|k| k.split_once('@'))
            .map(|(topic, group)| (topic.to_owned(), group.to_owned()))
            .collect();
        out.sort();
        out
    }

    /// The whole table as RocketMQ writes `consumerOffset.json` and answers
    /// GET_ALL_CONSUMER_OFFSET: `{"offsetTable":{"topic@group":{"0":12,...}}}`, compact (one
    /// pass over the table; 12,500 topics x 8 queues of offsets is megabytes).
    /// The copy is taken under the table's lock; the encoding is done outside it, so that
    /// commits (acks) do not wait for it.
    pub fn encode(&self) -> Vec<u8> {
        let snapshot = Self::snapshot(&self.table.lock());
        Self::encode_snapshot(&snapshot)
    }

    fn snapshot(t: &Table) -> OnDisk {
        OnDisk {
            offset_table: t
                .offsets
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|(a, b)| (*a, *b)).collect()))
                .collect(),
        }
    }

    fn encode_snapshot(snapshot: &OnDisk) -> Vec<u8> {
        serde_json::to_vec(snapshot).expect("a map of numbers serializes")
    }

    /// Writes the table if it changed since the last call.
    pub fn persist(&self) -> Result<()> {
        let _guard = self.persist_lock.lock();
        let (snapshot, version) = {
            let t = self.table.lock();
            if t.version == t.persisted_version {
                return Ok(());
            }
            (Self::snapshot(&t), t.version)
        };
        let json = Self::encode_snapshot(&snapshot);
        let main = self.dir.join(FILE);
        if main.exists() {
            // The current file becomes the backup by a rename (no copy); if the process dies
            // before the new file is in place, the loader falls back to it.
            let bak = self.dir.join(format!("{FILE}.bak"));
            std::fs::rename(&main, &bak).at(&bak)?;
        }
        write_atomically(&self.dir, FILE, &json)?;
        self.table.lock().persisted_version = version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_sent_what_changed_and_the_whole_table_when_entries_went() {
        let dir = tempfile::tempdir().unwrap();
        let primary = ConsumerOffsetStore::open(dir.path()).unwrap();
        let replica = ConsumerOffsetStore::open(&dir.path().join("replica")).unwrap();
        primary.commit("G", "T", 0, 5);
        primary.commit("G", "T", 1, 7);
        let mut sent = primary.table();
        replica.import(sent.clone());
        assert_eq!(primary.changes_since(&mut sent), Some(OffsetTable::new()));

        primary.commit("G", "T", 1, 8);
        primary.commit("H", "T", 0, 1);
        let changes = primary.changes_since(&mut sent).unwrap();
        assert_eq!(
            changes,
            OffsetTable::from([
                ("T@G".to_owned(), HashMap::from([(1, 8)])),
                ("T@H".to_owned(), HashMap::from([(0, 1)])),
            ])
        );
        replica.merge(changes);
        assert_eq!(replica.table(), primary.table());
        assert_eq!(sent, primary.table());

        // The table was replaced without an entry the replica holds: only the whole table
        // makes the replica drop it.
        primary.import(OffsetTable::from([(
            "T@G".to_owned(),
            HashMap::from([(0, 5)]),
        )]));
        assert_eq!(primary.changes_since(&mut sent), None);
    }

    #[test]
    fn commit_persist_reload_and_backup() {
        let dir = tempfile::tempdir().unwrap();
        let s = ConsumerOffsetStore::open(dir.path()).unwrap();
        s.commit("G", "T", 0, 5);
        s.commit("G", "T", 1, 7);
        s.commit("H", "T", 0, 1);
        s.persist().unwrap();
        s.commit("G", "T", 0, 6);
        s.persist().unwrap();
        drop(s);
        let s = ConsumerOffsetStore::open(dir.path()).unwrap();
        assert_eq!(s.get("G", "T", 0), Some(6));
        assert_eq!(s.get("G", "T", 2), None);
        assert_eq!(
            s.group_offsets("G"),
            vec![("T".into(), 0, 6), ("T".into(), 1, 7)]
        );
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(
            text.contains("\"offsetTable\"") && text.contains("T@G"),
            "{text}"
        );
        // What the admin API answers (GET_ALL_CONSUMER_OFFSET) is what was written.
        assert_eq!(s.encode(), text.as_bytes());
        assert_eq!(
            text,
            r#"{"offsetTable":{"T@G":{"0":6,"1":7},"T@H":{"0":1}}}"#
        );
        // A damaged main file falls back to the previous version.
        std::fs::write(dir.path().join(FILE), b"{ not json").unwrap();
        let s = ConsumerOffsetStore::open(dir.path()).unwrap();
        assert_eq!(s.get("G", "T", 0), Some(5));
    }
}
