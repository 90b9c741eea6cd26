//! Topics and consumer groups (RocketMQ's topic config and subscription group config), kept in
//! memory and persisted as `config/topics.json` and `config/subscriptionGroup.json`, written
//! atomically on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
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

pub struct Metadata {
    dir: PathBuf,
    topics: RwLock<BTreeMap<String, TopicConfig>>,
    groups: RwLock<BTreeMap<String, GroupConfig>>,
    /// Bumped by every topic change (store nodes re-register with the name servers on it).
    version: std::sync::atomic::AtomicU64,
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
        let topics: Vec<TopicConfig> = load(&dir.join(TOPICS))?;
        let groups: Vec<GroupConfig> = load(&dir.join(GROUPS))?;
        Ok(Metadata {
            dir: dir.to_owned(),
            topics: RwLock::new(topics.into_iter().map(|t| (t.name.clone(), t)).collect()),
            groups: RwLock::new(groups.into_iter().map(|g| (g.name.clone(), g)).collect()),
            version: Default::default(),
        })
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.topics.read().get(name).cloned()
    }

    pub fn topics(&self) -> Vec<TopicConfig> {
        self.topics.read().values().cloned().collect()
    }

    pub fn group(&self, name: &str) -> Option<GroupConfig> {
        self.groups.read().get(name).cloned()
    }

    pub fn groups(&self) -> Vec<GroupConfig> {
        self.groups.read().values().cloned().collect()
    }

    /// Changes with every topic created or updated.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Creates or updates a topic.
    pub fn put_topic(&self, topic: TopicConfig) -> Result<(), MetadataError> {
        if !valid_name(&topic.name) {
            return Err(MetadataError::InvalidName(topic.name));
        }
        if !(1..=1024).contains(&topic.queues) {
            return Err(MetadataError::InvalidQueueCount(topic.queues));
        }
        let mut topics = self.topics.write();
        topics.insert(topic.name.clone(), topic);
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        let list: Vec<_> = topics.values().collect();
        let json = serde_json::to_vec_pretty(&list).expect("topic configs serialize");
        write_atomically(&self.dir, TOPICS, &json)?;
        Ok(())
    }

    /// Creates or updates a consumer group.
    pub fn put_group(&self, group: GroupConfig) -> Result<(), MetadataError> {
        if !valid_name(&group.name) {
            return Err(MetadataError::InvalidName(group.name));
        }
        if !(1..=1000).contains(&group.max_delivery_attempts) {
            return Err(MetadataError::InvalidAttempts(group.max_delivery_attempts));
        }
        let mut groups = self.groups.write();
        groups.insert(group.name.clone(), group);
        let list: Vec<_> = groups.values().collect();
        let json = serde_json::to_vec_pretty(&list).expect("group configs serialize");
        write_atomically(&self.dir, GROUPS, &json)?;
        Ok(())
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
