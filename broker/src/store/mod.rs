//! The storage layer of a RocketMQ broker: CommitLog, ConsumeQueues, IndexFiles, flush,
//! checkpoint and crash recovery, retention and consumer offsets, in RocketMQ's on-disk layout.
//!
//! Owns files, offsets, flush and recovery; knows nothing of gRPC or Kubernetes. The entry
//! point is [`MessageStore`]. Life of a message: [`MessageStore::put_message`] encodes it into
//! the current CommitLog segment under the append lock (`commitlog`), the flusher makes it
//! durable (`flush`), the dispatcher adds its ConsumeQueue and index entries (`dispatch`), and
//! [`MessageStore::get_message`] reads it back by queue offset through its ConsumeQueue.

pub mod checkpoint;
pub mod commitlog;
pub mod config;
pub mod consume_queue;
pub mod consumer_offset;
pub mod dispatch;
pub mod error;
pub mod flush;
pub mod index;
pub mod message_store;
pub mod properties;
pub mod record;
pub mod recovery;
pub mod retention;
pub mod segment;

pub use config::{FlushPolicy, StoreConfig};
pub use dispatch::QueueEntry;
pub use error::StoreError;
pub use message_store::{GetResult, GetStatus, LogOffsets, MessageStore, PutResult, QueueStats};
pub use record::{Message, StoredMessage};
pub use recovery::RecoveryReport;
pub use retention::{RetentionHook, RetentionReport, SegmentInfo};
