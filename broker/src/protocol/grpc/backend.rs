//! What the gRPC endpoint needs from the messaging layer. Two implementations: [`Local`], the
//! messaging service in the same process (`standalone`), and the proxy's, which forwards to
//! store nodes over the remoting protocol (`crate::role::proxy`). The gRPC server converts
//! wire types and statuses and knows nothing of which one it talks to.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::service::filter::TagFilter;
use crate::service::metadata::{GroupConfig, TopicMessageType};
use crate::service::pop::{AckOutcome, ReceiptHandle};
use crate::service::transaction::CheckRequest;
use crate::service::{Broker, ReceiveRequest, ServiceError};
use crate::store::{GetStatus, Message, StoredMessage, properties};

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The queues of a topic on one broker.
#[derive(Debug, Clone)]
pub struct QueueSet {
    pub broker: String,
    pub queues: u32,
    pub message_type: TopicMessageType,
    /// RocketMQ permission bits (2 read, 4 write).
    pub perm: i32,
}

/// Where a sent message went.
#[derive(Debug, Clone)]
pub struct Sent {
    pub queue_offset: u64,
    /// Set for a transactional (half) message.
    pub transaction_id: Option<String>,
}

/// One delivered message with its receipt handle.
#[derive(Debug, Clone)]
pub struct Received {
    pub message: StoredMessage,
    pub handle: String,
    pub attempt: u32,
}

/// A receive, owned (it crosses tasks in the proxy).
#[derive(Debug, Clone)]
pub struct Receive {
    pub broker: Option<String>,
    pub group: String,
    pub topic: String,
    pub max: usize,
    pub invisible: Duration,
    pub filter: TagFilter,
    /// The filter's expression as the client wrote it (forwarded by the proxy).
    pub expression: String,
    pub long_polling: Duration,
    pub auto_renew_for: Option<Arc<str>>,
}

/// A queue read at an offset (lite pull consumers).
#[derive(Debug, Clone)]
pub struct Pulled {
    pub status: GetStatus,
    pub messages: Vec<StoredMessage>,
    pub next_offset: u64,
}

/// A read of one queue at an offset.
#[derive(Debug, Clone, Copy)]
pub struct Pull<'a> {
    pub broker: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub queue_id: i32,
    pub offset: u64,
    pub max: usize,
    pub filter: &'a TagFilter,
    /// The filter as the client wrote it (forwarded by the proxy).
    pub expression: &'a str,
    /// How long to wait for a message when there is none.
    pub wait: Duration,
}

#[derive(Debug, Clone, Copy)]
pub enum OffsetPolicy {
    Beginning,
    End,
    Timestamp(i64),
}

/// The messaging operations behind the gRPC protocol.
pub trait Backend: Send + Sync + 'static {
    fn max_body_size(&self) -> usize;
    /// The brokers holding queues of a topic.
    fn route(&self, topic: &str) -> impl Future<Output = Result<Vec<QueueSet>>> + Send;
    fn group(&self, name: &str) -> impl Future<Output = Result<GroupConfig>> + Send;
    fn client_seen(&self, client_id: &str);
    fn client_gone(&self, client_id: &str);
    /// Checks and stores messages (all of one topic); a batch is all or nothing.
    fn send(
        &self,
        msgs: Vec<(Message, TopicMessageType)>,
    ) -> impl Future<Output = Result<Vec<Sent>>> + Send;
    fn receive(&self, r: Receive) -> impl Future<Output = Result<Vec<Received>>> + Send;
    /// One outcome per handle: `true` when acknowledged (now or before).
    fn ack(
        &self,
        group: &str,
        handles: Vec<String>,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    fn change_invisible(
        &self,
        group: &str,
        handle: &str,
        invisible: Duration,
    ) -> impl Future<Output = Result<String>> + Send;
    fn forward_to_dead_letter_queue(
        &self,
        group: &str,
        handle: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    fn pull(&self, p: Pull<'_>) -> impl Future<Output = Result<Pulled>> + Send;
    fn commit_offset(
        &self,
        broker: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    fn get_offset(
        &self,
        broker: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> impl Future<Output = Result<Option<u64>>> + Send;
    fn query_offset(
        &self,
        broker: &str,
        topic: &str,
        queue_id: i32,
        policy: OffsetPolicy,
    ) -> impl Future<Output = Result<u64>> + Send;
    fn end_transaction(
        &self,
        transaction_id: &str,
        commit: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A producer's Telemetry stream: check-backs of the topics' orphaned transactions go to
    /// `tx`.
    fn register_producer(
        &self,
        client_id: &str,
        topics: Vec<String>,
        tx: mpsc::Sender<CheckRequest>,
    );
    fn unregister_producer(&self, client_id: &str);
}

/// The messaging service in this process.
pub struct Local(pub Arc<Broker>);

impl Backend for Local {
    fn max_body_size(&self) -> usize {
        self.0.config.max_body_size
    }

    async fn route(&self, topic: &str) -> Result<Vec<QueueSet>> {
        let t = self.0.topic(topic)?;
        Ok(vec![QueueSet {
            broker: self.0.config.broker_name.clone(),
            queues: t.queues,
            message_type: t.message_type,
            perm: crate::protocol::remoting::body::perm::READ_WRITE,
        }])
    }

    async fn group(&self, name: &str) -> Result<GroupConfig> {
        self.0.group(name)
    }

    fn client_seen(&self, client_id: &str) {
        self.0.client_seen(client_id);
    }

    fn client_gone(&self, client_id: &str) {
        self.0.client_gone(client_id);
    }

    async fn send(&self, msgs: Vec<(Message, TopicMessageType)>) -> Result<Vec<Sent>> {
        for (m, t) in &msgs {
            self.0.check_send(m, *t)?;
        }
        let transactional: Vec<bool> = msgs
            .iter()
            .map(|(m, _)| m.property_value(crate::service::keys::TRAN_MSG) == Some("true"))
            .collect();
        let results = self
            .0
            .send(msgs.into_iter().map(|(m, _)| m).collect())
            .await?;
        Ok(results
            .iter()
            .zip(transactional)
            .map(|(r, tx)| Sent {
                queue_offset: r.queue_offset,
                transaction_id: tx.then(|| self.0.transaction_id(r.physical_offset)),
            })
            .collect())
    }

    async fn receive(&self, r: Receive) -> Result<Vec<Received>> {
        let request = ReceiveRequest {
            group: &r.group,
            topic: &r.topic,
            queue_id: None,
            max: r.max,
            invisible: r.invisible,
            filter: r.filter.clone(),
            long_polling: r.long_polling,
            auto_renew_for: r.auto_renew_for.clone(),
        };
        Ok(self
            .0
            .receive(&request)
            .await?
            .into_iter()
            .map(|d| Received {
                handle: d.handle.encode(),
                attempt: d.handle.attempt,
                message: d.message,
            })
            .collect())
    }

    async fn ack(&self, group: &str, handles: Vec<String>) -> Result<Vec<bool>> {
        let decoded: Vec<Option<ReceiptHandle>> =
            handles.iter().map(|h| ReceiptHandle::decode(h)).collect();
        let valid: Vec<ReceiptHandle> = decoded.iter().flatten().cloned().collect();
        let mut outcomes = self.0.ack(group, &valid).await?.into_iter();
        Ok(decoded
            .iter()
            .map(|h| {
                h.is_some()
                    && matches!(
                        outcomes.next(),
                        Some(AckOutcome::Acked | AckOutcome::AlreadyAcked)
                    )
            })
            .collect())
    }

    async fn change_invisible(&self, group: &str, handle: &str, d: Duration) -> Result<String> {
        let h = ReceiptHandle::decode(handle).ok_or(ServiceError::InvalidReceiptHandle)?;
        Ok(self.0.change_invisible(group, &h, d)?.encode())
    }

    async fn forward_to_dead_letter_queue(&self, group: &str, handle: &str) -> Result<()> {
        let h = ReceiptHandle::decode(handle).ok_or(ServiceError::InvalidReceiptHandle)?;
        self.0.forward_to_dead_letter_queue(group, &h).await
    }

    async fn pull(&self, p: Pull<'_>) -> Result<Pulled> {
        let Pull {
            topic,
            queue_id,
            offset,
            max,
            filter,
            wait,
            ..
        } = p;
        self.0.topic(topic)?;
        let give_up = tokio::time::Instant::now() + wait;
        let mut dispatched = self.0.store.watch_topic(topic);
        loop {
            let got = self.0.store.get_message(topic, queue_id, offset, max)?;
            let waiting = matches!(
                got.status,
                GetStatus::OffsetOverflowOne
                    | GetStatus::NoMessageInQueue
                    | GetStatus::NoMatchedLogicQueue
            );
            if waiting && tokio::time::Instant::now() < give_up {
                tokio::select! {
                    _ = dispatched.changed() => {}
                    _ = tokio::time::sleep_until(give_up) => {}
                }
                continue;
            }
            return Ok(Pulled {
                status: got.status,
                messages: got
                    .messages
                    .into_iter()
                    .filter(|m| filter.matches(m.property(properties::TAGS)))
                    .collect(),
                next_offset: got.next_offset,
            });
        }
    }

    async fn commit_offset(
        &self,
        _broker: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: u64,
    ) -> Result<()> {
        let g = self.0.group(group)?;
        self.0
            .store
            .consumer_offsets()
            .commit(&g.name, topic, queue_id, offset);
        Ok(())
    }

    async fn get_offset(
        &self,
        _broker: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Result<Option<u64>> {
        Ok(self.0.store.consumer_offsets().get(group, topic, queue_id))
    }

    async fn query_offset(
        &self,
        _broker: &str,
        topic: &str,
        queue_id: i32,
        policy: OffsetPolicy,
    ) -> Result<u64> {
        let store = &self.0.store;
        Ok(match policy {
            OffsetPolicy::Beginning => store.min_offset(topic, queue_id)?,
            OffsetPolicy::End => store.max_offset(topic, queue_id)?,
            OffsetPolicy::Timestamp(t) => store.offset_by_time(topic, queue_id, t)?,
        })
    }

    async fn end_transaction(&self, transaction_id: &str, commit: bool) -> Result<()> {
        self.0.end_transaction(transaction_id, commit).await
    }

    fn register_producer(
        &self,
        client_id: &str,
        topics: Vec<String>,
        tx: mpsc::Sender<CheckRequest>,
    ) {
        self.0.register_producer(client_id, topics, tx);
    }

    fn unregister_producer(&self, client_id: &str) {
        self.0.unregister_producer(client_id);
    }
}
