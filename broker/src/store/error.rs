//! The store's one error type. Mapped to wire codes at the protocol edge only.

use std::path::PathBuf;

/// Everything that can go wrong inside `broker::store`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    #[error("message properties of {size} bytes exceed the maximum of {max} bytes")]
    PropertiesTooLarge { size: usize, max: usize },
    #[error("message properties must be empty or end with the property separator \\u0002")]
    MalformedProperties,
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error("invalid queue id {0}: must be between 0 and 65535")]
    InvalidQueueId(i32),
    #[error("flush did not complete within {0:?}; the message is written but not yet durable")]
    FlushTimeout(std::time::Duration),
    #[error(
        "disk full: cannot reserve {needed} bytes for {path}; writes resume once retention frees space"
    )]
    DiskFull { path: PathBuf, needed: u64 },
    #[error("the store is shut down")]
    ShutDown,
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error(
        "the message at CommitLog offset {physical_offset} is in tiered storage, which cannot be read right now ({reason}); retry later"
    )]
    TierUnavailable {
        physical_offset: u64,
        reason: String,
    },
    #[error("this node is a replica in its broker group; writes go to the group's primary")]
    NotPrimary,
    #[error(
        "only {in_sync} of the broker group's nodes are in sync, fewer than minInSyncReplicas = {min}; writes are refused until replicas catch up"
    )]
    NotEnoughInSyncReplicas { in_sync: usize, min: usize },
    #[error(
        "the in-sync replicas did not confirm the message within {0:?}; it is written on the primary but not yet replicated"
    )]
    ReplicationTimeout(std::time::Duration),
    #[error("replication: {0}")]
    Replication(String),
    #[error("invalid store configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },
}

impl StoreError {
    /// Wraps an `io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| StoreError::io(path, e))
    }
}
