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

    /// The whole table ("topic@group" -> queue id -> offset) and its version: what a
    /// primary sends its replicas.
    pub fn export(&self) -> (u64, BTreeMap<String, BTreeMap<i32, u64>>) {
        let t = self.table.lock();
        let table = t
            .offsets
            .iter()
            .map(|(k, q)| (k.clone(), q.iter().map(|(i, o)| (*i, *o)).collect()))
            .collect();
        (t.version, table)
    }

    /// Replaces the table with a primary's (a replica follows its primary's progress).
    pub fn import(&self, table: BTreeMap<String, BTreeMap<i32, u64>>) {
        let mut t = self.table.lock();
        let offsets: HashMap<String, HashMap<i32, u64>> = table
            .into_iter()
            .map(|(k, q)| (k, q.into_iter().collect()))
            .collect();
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
