//! The store's configuration: one typed struct with RocketMQ's defaults, validated once at open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::index::IndexConfig;

/// When an append is acknowledged (RocketMQ's `flushDiskType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlushPolicy {
    /// Acknowledge after the bytes are durable; concurrent appends share one flush.
    SyncFlush,
    /// Acknowledge after the bytes are in the page cache; a background flusher makes them durable.
    AsyncFlush,
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlushPolicy::SyncFlush => "SYNC_FLUSH",
            FlushPolicy::AsyncFlush => "ASYNC_FLUSH",
        })
    }
}

impl std::str::FromStr for FlushPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "SYNC_FLUSH" | "SYNC" => Ok(FlushPolicy::SyncFlush),
            "ASYNC_FLUSH" | "ASYNC" => Ok(FlushPolicy::AsyncFlush),
            _ => Err(format!(
                "unknown flush policy {s:?}: expected SYNC_FLUSH or ASYNC_FLUSH"
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Root folder: `commitlog/`, `consumequeue/`, `index/`, `config/`, `checkpoint`, `abort`.
    pub root_dir: PathBuf,
    /// Bytes per CommitLog segment (RocketMQ: `mappedFileSizeCommitLog`, 1 GiB there; smaller
    /// here so that sealed segments tier to object storage sooner).
    pub segment_size: u64,
    pub flush_policy: FlushPolicy,
    /// ASYNC_FLUSH: how often the flusher looks at dirty bytes (`flushIntervalCommitLog`).
    #[serde(with = "millis")]
    pub flush_interval: Duration,
    /// ASYNC_FLUSH: flush only when at least this many 4 KiB pages are dirty
    /// (`flushCommitLogLeastPages`) ...
    pub flush_least_pages: u64,
    /// ... unless this long has passed since the last flush (`flushCommitLogThoroughInterval`).
    #[serde(with = "millis")]
    pub flush_thorough_interval: Duration,
    /// SYNC_FLUSH: how long an append waits for its flush before `FlushTimeout`
    /// (`syncFlushTimeout`).
    #[serde(with = "millis")]
    pub sync_flush_timeout: Duration,
    /// How often ConsumeQueues, indexes and consumer offsets are made durable and the
    /// checkpoint written.
    #[serde(with = "millis")]
    pub checkpoint_interval: Duration,
    /// How often ConsumeQueues and indexes are made durable. A checkpoint in between vouches
    /// only for what the last sync covered, and recovery after a crash rebuilds the rest from
    /// the CommitLog. Syncing every queue's file each second costs about one random disk write
    /// per busy queue per second (tens of thousands with 100,000 queues); Apache RocketMQ
    /// flushes its ConsumeQueues thoroughly every 60 s (`flushConsumeQueueThoroughInterval`).
    #[serde(with = "millis")]
    pub consume_queue_sync_interval: Duration,
    /// Entries per ConsumeQueue file (`mappedFileSizeConsumeQueue` / 20).
    pub consume_queue_entries_per_file: u64,
    /// ConsumeQueue files kept open at once, across all queues (least recently used closed
    /// first). Bounds descriptors whatever the number of queues. 0 (the default): half the
    /// process's open files limit, between 256 and 262,144 - under Kubernetes' usual limit of
    /// 1,048,576 that keeps 100,000 busy queues open without reopening files.
    pub consume_queue_open_files: usize,
    pub index: IndexConfig,
    /// Largest body accepted (`maxMessageSize`).
    pub max_message_size: usize,
    /// Segments older than this are deleted by retention (`fileReservedTime`, in hours there).
    #[serde(with = "millis")]
    pub file_reserved_time: Duration,
    /// Above this disk usage ratio, the oldest segments are deleted whatever their age
    /// (`diskMaxUsedSpaceRatio`, 0.75).
    pub disk_max_used_ratio: f64,
    /// How often retention runs (`cleanResourceInterval`).
    #[serde(with = "millis")]
    pub retention_interval: Duration,
    /// The address written into each record's STOREHOST (and so into offset message ids).
    pub store_host: SocketAddr,
    /// CommitLog segments deleted locally stay readable from a tier (object storage): keep
    /// the ConsumeQueue and index entries that point into them.
    pub tiered: bool,
    /// Where the CommitLog of an empty data folder starts (a tier restoring its history sets
    /// the end of what it holds; 0 otherwise).
    pub empty_start_offset: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            root_dir: PathBuf::from("data/store"),
            segment_size: 128 * 1024 * 1024,
            flush_policy: FlushPolicy::AsyncFlush,
            flush_interval: Duration::from_millis(500),
            flush_least_pages: 4,
            flush_thorough_interval: Duration::from_secs(10),
            sync_flush_timeout: Duration::from_secs(5),
            checkpoint_interval: Duration::from_secs(1),
            consume_queue_sync_interval: Duration::from_secs(10),
            consume_queue_entries_per_file: 300_000,
            consume_queue_open_files: 0,
            index: IndexConfig::default(),
            max_message_size: 4 * 1024 * 1024,
            file_reserved_time: Duration::from_secs(72 * 3600),
            disk_max_used_ratio: 0.75,
            retention_interval: Duration::from_secs(10),
            store_host: SocketAddr::from(([127, 0, 0, 1], 10911)),
            tiered: false,
            empty_start_offset: 0,
        }
    }
}

impl StoreConfig {
    /// A configuration rooted at `dir`, other fields at their defaults.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            root_dir: dir.into(),
            ..StoreConfig::default()
        }
    }

    /// Checks every field once; the error names the field.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<()> {
            Err(StoreError::Config {
                field,
                reason: reason.into(),
            })
        }
        if self.segment_size < 64 * 1024 {
            return bad("segmentSize", "must be at least 64 KiB");
        }
        if self.segment_size > (1 << 40) {
            return bad("segmentSize", "must be at most 1 TiB");
        }
        if self.max_message_size == 0 {
            return bad("maxMessageSize", "must be positive");
        }
        if self.consume_queue_entries_per_file == 0 {
            return bad("consumeQueueEntriesPerFile", "must be positive");
        }
        if self.index.slots == 0 || self.index.max_entries < 2 {
            return bad("index", "slots must be positive and maxEntries at least 2");
        }
        if !(self.disk_max_used_ratio > 0.0 && self.disk_max_used_ratio <= 1.0) {
            return bad("diskMaxUsedRatio", "must be in (0, 1]");
        }
        for (field, d) in [
            ("flushInterval", self.flush_interval),
            ("checkpointInterval", self.checkpoint_interval),
            ("consumeQueueSyncInterval", self.consume_queue_sync_interval),
            ("retentionInterval", self.retention_interval),
            ("syncFlushTimeout", self.sync_flush_timeout),
        ] {
            if d.is_zero() {
                return bad(field, "must be positive");
            }
        }
        Ok(())
    }

    /// `consume_queue_open_files`, resolved from the open files limit when 0.
    pub fn consume_queue_open_files(&self) -> usize {
        if self.consume_queue_open_files > 0 {
            return self.consume_queue_open_files;
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        (limit as usize / 2).clamp(256, 262_144)
    }

    pub fn commitlog_dir(&self) -> PathBuf {
        self.root_dir.join("commitlog")
    }
    pub fn consume_queue_dir(&self) -> PathBuf {
        self.root_dir.join("consumequeue")
    }
    pub fn index_dir(&self) -> PathBuf {
        self.root_dir.join("index")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.root_dir.join("config")
    }
}

/// Durations as integer milliseconds in config files.
pub(crate) mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_errors_name_the_field() {
        StoreConfig::default().validate().unwrap();
        let cfg = StoreConfig {
            segment_size: 10,
            ..StoreConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("segmentSize"), "{err}");
        assert_eq!("sync_flush".parse(), Ok(FlushPolicy::SyncFlush));
        assert!("sometimes".parse::<FlushPolicy>().is_err());
    }
}
