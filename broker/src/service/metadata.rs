//! Topics and consumer groups (RocketMQ's topic config and subscription group config), kept in
//! memory and persisted as `config/topics.json` and `config/subscriptionGroup.json`, written
//! atomically (and compactly) on every change that changes something; concurrent changes
//! share writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use crate::store::checkpoint::write_atomically;

/// What kind of messages a topic takes (RocketMQ 5 `message.type` of a topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TopicMessageType {
    Normal,
    Fifo,
    Delay,
    Transaction,
}

impl std::str::FromStr for TopicMessageType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "NORMAL" => Ok(Self::Normal),
            "FIFO" => Ok(Self::Fifo),
            "DELAY" => Ok(Self::Delay),
            "TRANSACTION" => Ok(Self::Transaction),
            _ => Err(format!(
                "unknown message type {s:?}: expected NORMAL, FIFO, DELAY or TRANSACTION"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicConfig {
    pub name: String,
    pub queues: u32,
    pub message_type: TopicMessageType,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupConfig {
    pub name: String,
    /// Deliveries before a message goes to `%DLQ%<group>` (RocketMQ's default: 16 retries).
    pub max_delivery_attempts: u32,
    /// Messages of one message group are delivered one at a time, in order.
    pub fifo: bool,
}

impl GroupConfig {
    pub fn new(name: &str) -> Self {
        GroupConfig {
            name: name.to_owned(),
            max_delivery_attempts: 16,
            fifo: false,
        }
    }
}

/// Why a topic or group definition is refused.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid name {0:?}: 1 to 127 characters of letters, digits, %, |, _ and -")]
    InvalidName(String),
    #[error("a topic needs 1 to 1024 queues, not {0}")]
    InvalidQueueCount(u32),
    #[error("max delivery attempts must be 1 to 1000, not {0}")]
    InvalidAttempts(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RocketMQ's name rule for topics and groups.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
}

/// One persisted table (topics or groups). Writers change the map, then persist; a writer
/// whose change a concurrent writer already saved returns without writing again, so a burst
/// of changes costs a few file writes, not one each.
struct Table<T> {
    file: &'static str,
    map: RwLock<BTreeMap<String, T>>,
    /// Bumped with every change, under the map's write lock.
    changes: AtomicU64,
    /// The change count the file holds; the mutex orders the writes.
    saved: Mutex<u64>,
}

impl<T: Clone + PartialEq + Serialize + for<'de> Deserialize<'de>> Table<T> {
    fn open(dir: &Path, file: &'static str, name: fn(&T) -> &str) -> Result<Self, StoreError> {
        let items: Vec<T> = load(&dir.join(file))?;
        Ok(Table {
            file,
            map: RwLock::new(
                items
                    .into_iter()
                    .map(|t| (name(&t).to_owned(), t))
                    .collect(),
            ),
            changes: AtomicU64::new(0),
            saved: Mutex::new(0),
        })
    }

    /// Inserts the items that differ from what is held; returns how many did.
    fn put(&self, dir: &Path, items: Vec<(String, T)>) -> Result<usize, StoreError> {
        let (changed, at) = {
            let mut map = self.map.write();
            let mut changed = 0;
            for (name, item) in items {
                if map.get(&name) != Some(&item) {
                    map.insert(name, item);
                    changed += 1;
                }
            }
            if changed == 0 {
                return Ok(0);
            }
            (changed, self.changes.fetch_add(1, Ordering::AcqRel) + 1)
        };
        let mut saved = self.saved.lock();
        if *saved >= at {
            return Ok(changed);
        }
        let (now, json) = {
            let map = self.map.read();
            let list: Vec<&T> = map.values().collect();
            (
                self.changes.load(Ordering::Acquire),
                serde_json::to_vec(&list).expect("configs serialize"),
            )
        };
        write_atomically(dir, self.file, &json)?;
        *saved = now;
        Ok(changed)
    }
}

pub struct Metadata {
    dir: PathBuf,
    topics: Table<TopicConfig>,
    groups: Table<GroupConfig>,
    /// Bumped by every topic change (store nodes re-register with the name servers on it).
    version: AtomicU64,
}

const TOPICS: &str = "topics.json";
const GROUPS: &str = "subscriptionGroup.json";

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            position: e.column() as u64,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

impl Metadata {
    pub fn open(dir: &Path) -> Result<Metadata, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        Ok(Metadata {
            dir: dir.to_owned(),
            topics: Table::open(dir, TOPICS, |t: &TopicConfig| &t.name)?,
            groups: Table::open(dir, GROUPS, |g: &GroupConfig| &g.name)?,
            version: Default::default(),
        })
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.topics.map.read().get(name).cloned()
    }

    pub fn topics(&self) -> Vec<TopicConfig> {
        self.topics.map.read().values().cloned().collect()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.map.read().len()
    }

    pub fn group(&self, name: &str) -> Option<GroupConfig> {
        self.groups.map.read().get(name).cloned()
    }

    pub fn groups(&self) -> Vec<GroupConfig> {
        self.groups.map.read().values().cloned().collect()
    }

    /// Changes with every topic created or updated.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Changes with every topic created or updated in memory (even when writing the file
    /// then failed): what replicas follow.
    pub fn topic_changes(&self) -> u64 {
        self.topics.changes.load(Ordering::Acquire)
    }

    /// Changes with every group created or updated in memory (even when writing the file
    /// then failed).
    pub fn group_changes(&self) -> u64 {
        self.groups.changes.load(Ordering::Acquire)
    }

    /// Creates or updates a topic.
    pub fn put_topic(&self, topic: TopicConfig) -> Result<(), MetadataError> {
        self.put_topics(vec![topic]).map(|_| ())
    }

    /// Creates or updates topics at once (one file write); all are checked first, and
    /// nothing is written when one is invalid. Returns how many changed.
    pub fn put_topics(&self, topics: Vec<TopicConfig>) -> Result<usize, MetadataError> {
        for topic in &topics {
            if !valid_name(&topic.name) {
                return Err(MetadataError::InvalidName(topic.name.clone()));
            }
            if !(1..=1024).contains(&topic.queues) {
                return Err(MetadataError::InvalidQueueCount(topic.queues));
            }
        }
        let changed = self.topics.put(
            &self.dir,
            topics.into_iter().map(|t| (t.name.clone(), t)).collect(),
        )?;
        if changed > 0 {
            self.version.fetch_add(1, Ordering::Release);
        }
        Ok(changed)
    }

    /// Creates or updates a consumer group.
    pub fn put_group(&self, group: GroupConfig) -> Result<(), MetadataError> {
        self.put_groups(vec![group]).map(|_| ())
    }

    /// Creates or updates groups at once; all are checked first. Returns how many changed.
    pub fn put_groups(&self, groups: Vec<GroupConfig>) -> Result<usize, MetadataError> {
        for group in &groups {
            if !valid_name(&group.name) {
                return Err(MetadataError::InvalidName(group.name.clone()));
            }
            if !(1..=1000).contains(&group.max_delivery_attempts) {
                return Err(MetadataError::InvalidAttempts(group.max_delivery_attempts));
            }
        }
        Ok(self.groups.put(
            &self.dir,
            groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
        )?)
    }

    /// The group, created with defaults on first use (RocketMQ's
    /// `autoCreateSubscriptionGroup`, on by default).
    pub fn group_or_create(&self, name: &str) -> Result<GroupConfig, MetadataError> {
        if let Some(g) = self.group(name) {
            return Ok(g);
        }
        let g = GroupConfig::new(name);
        self.put_group(g.clone())?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metadata::open(dir.path()).unwrap();
        m.put_topic(TopicConfig {
            name: "T".into(),
            queues: 4,
            message_type: TopicMessageType::Fifo,
        })
        .unwrap();
        assert!(matches!(
            m.put_topic(TopicConfig {
                name: "a/b".into(),
                queues: 4,
                message_type: TopicMessageType::Normal
            }),
            Err(MetadataError::InvalidName(_))
        ));
        assert!(
            m.put_topic(TopicConfig {
                name: "Z".into(),
                queues: 0,
                message_type: TopicMessageType::Normal
            })
            .is_err()
        );
        m.group_or_create("G").unwrap();
        drop(m);
        let m = Metadata::open(dir.path()).unwrap();
        assert_eq!(m.topic("T").unwrap().queues, 4);
        assert_eq!(m.group("G").unwrap().max_delivery_attempts, 16);
        assert!(m.topic("Z").is_none());
    }
}
