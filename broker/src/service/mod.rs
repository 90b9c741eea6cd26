//! Messaging semantics on top of the store: topics and groups, send, pop-mode receive with
//! invisible time and redelivery, ack, dead-letter queues. Knows nothing of wire formats (the
//! protocol layer converts) and touches no file directly (the store does).

pub mod filter;
pub mod metadata;
pub mod metrics;
pub mod pop;
pub mod timer;
pub mod transaction;

use std::sync::Arc;
use std::time::Duration;

use crate::store::commitlog::now_millis;
use crate::store::{Message, MessageStore, PutResult, StoreError, properties};
use filter::{FilterError, TagFilter};
use metadata::{GroupConfig, Metadata, MetadataError, TopicConfig, TopicMessageType};
use pop::{AckOutcome, Delivery, PopService, ReceiptHandle};

/// Property keys the service sets (RocketMQ's names).
pub mod keys {
    pub const SHARDING_KEY: &str = "__SHARDINGKEY";
    pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
    pub const TRAN_MSG: &str = "TRAN_MSG";
    pub const DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
    pub const DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// The broker name clients see in routes.
    pub broker_name: String,
    /// Create a topic on first use (RocketMQ's `autoCreateTopicEnable`; off by default).
    pub auto_create_topics: bool,
    /// Queues of an auto-created topic.
    pub default_queues: u32,
    /// Largest body accepted from clients.
    pub max_body_size: usize,
    /// How long a transaction may stay undecided before the broker checks back with its
    /// producer, and the time between checks.
    #[serde(with = "crate::store::config::millis")]
    pub transaction_check_interval: Duration,
    /// Message counters with a series per topic and per (topic, group) (on by default); off,
    /// one series each, for nodes with so many topics that scraping them all costs too much.
    pub metrics_per_topic: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            broker_name: "broker-a".into(),
            auto_create_topics: false,
            default_queues: 8,
            max_body_size: 4 * 1024 * 1024,
            transaction_check_interval: Duration::from_secs(10),
            metrics_per_topic: true,
        }
    }
}

/// Errors of the messaging layer; the protocol edge maps each to a wire status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("topic {0:?} does not exist; create it first (or enable topic auto-creation)")]
    TopicNotFound(String),
    #[error("invalid topic name {0:?}")]
    IllegalTopic(String),
    #[error("invalid consumer group name {0:?}")]
    IllegalGroup(String),
    #[error("queue {queue} does not exist in topic {topic:?} ({queues} queues)")]
    NoSuchQueue {
        topic: String,
        queue: i32,
        queues: u32,
    },
    #[error("message body is empty")]
    BodyEmpty,
    #[error("message body of {size} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { size: usize, max: usize },
    #[error("{0}")]
    MessageTypeConflict(String),
    #[error("{0}")]
    IllegalDeliveryTime(String),
    #[error("unknown or finished transaction: {0}")]
    InvalidTransactionId(String),
    #[error("{0} is not supported by this broker yet")]
    Unsupported(&'static str),
    #[error("invalid receipt handle")]
    InvalidReceiptHandle,
    #[error("invalid invisible duration {0:?}: must be between 1 s and 12 h")]
    IllegalInvisibleTime(Duration),
    /// A store node refused a forwarded request (its remoting response code and remark).
    #[error("store node {broker} answered code {code}: {remark}")]
    Upstream {
        broker: String,
        code: i32,
        remark: String,
    },
    /// No store node could be reached for the request.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The messaging service of one broker (standalone: the only one).
pub struct Broker {
    pub store: Arc<MessageStore>,
    pub metadata: Metadata,
    pub pop: PopService,
    pub config: BrokerConfig,
    pub metrics: metrics::Metrics,
    pub(crate) timer: timer::TimerState,
    pub(crate) transactions: transaction::TransactionState,
    /// When each client was last heard from (any RPC with its client id).
    clients: parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// A receive: which group wants which messages, how long they stay invisible.
pub struct ReceiveRequest<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    /// `None`: any queue of the topic.
    pub queue_id: Option<i32>,
    pub max: usize,
    pub invisible: Duration,
    pub filter: TagFilter,
    /// How long to wait for a message when there is none.
    pub long_polling: Duration,
    /// The receiving client, when it asked the broker to keep renewing the invisible time
    /// (push consumers) until it acks.
    pub auto_renew_for: Option<Arc<str>>,
}

const MIN_INVISIBLE: Duration = Duration::from_secs(1);
/// How far each renewal moves an auto-renewed delivery's invisible time.
pub const AUTO_RENEW_EXTENSION: Duration = Duration::from_secs(60);
/// A client silent this long is forgotten (its auto-renewed deliveries stopped being renewed
/// after 30 s already).
pub const CLIENT_FORGOTTEN: Duration = Duration::from_secs(300);
const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);

impl Broker {
    pub fn open(store: Arc<MessageStore>, config: BrokerConfig) -> Result<Broker> {
        let metadata = Metadata::open(&store.config().config_dir())?;
        let pop = PopService::open(Arc::clone(&store))?;
        for system_topic in [timer::TIMER_TOPIC, transaction::HALF_TOPIC] {
            if metadata.topic(system_topic).is_none() {
                metadata.put_topic(TopicConfig {
                    name: system_topic.to_owned(),
                    queues: 1,
                    message_type: TopicMessageType::Normal,
                })?;
            }
        }
        Ok(Broker {
            store,
            metadata,
            pop,
            metrics: metrics::Metrics::new(config.metrics_per_topic),
            config,
            timer: timer::TimerState::default(),
            transactions: transaction::TransactionState::default(),
            clients: Default::default(),
        })
    }

    /// The topic, created with defaults if it is missing and auto-creation is on.
    pub fn topic(&self, name: &str) -> Result<TopicConfig> {
        if !metadata::valid_name(name) {
            return Err(ServiceError::IllegalTopic(name.to_owned()));
        }
        if let Some(t) = self.metadata.topic(name) {
            return Ok(t);
        }
        if !self.config.auto_create_topics {
            return Err(ServiceError::TopicNotFound(name.to_owned()));
        }
        let t = TopicConfig {
            name: name.to_owned(),
            queues: self.config.default_queues,
            message_type: TopicMessageType::Normal,
        };
        self.metadata.put_topic(t.clone())?;
        tracing::info!(topic = name, queues = t.queues, "auto-created topic");
        Ok(t)
    }

    pub fn group(&self, name: &str) -> Result<GroupConfig> {
        if !metadata::valid_name(name) {
            return Err(ServiceError::IllegalGroup(name.to_owned()));
        }
        Ok(self.metadata.group_or_create(name)?)
    }

    /// Records that a client is alive (it sent a request).
    pub fn client_seen(&self, client_id: &str) {
        let mut clients = self.clients.lock();
        match clients.get_mut(client_id) {
            Some(t) => *t = std::time::Instant::now(),
            None => {
                clients.insert(client_id.to_owned(), std::time::Instant::now());
            }
        }
    }

    /// A client said goodbye: stop renewing its deliveries.
    pub fn client_gone(&self, client_id: &str) {
        self.clients.lock().remove(client_id);
    }

    /// Keeps auto-renewed deliveries invisible while their client is alive (seen within 30 s,
    /// three heartbeat periods), and forgets clients silent for [`CLIENT_FORGOTTEN`].
    pub fn renew_invisible_times(&self) -> usize {
        let renewed = {
            let clients = self.clients.lock();
            let alive = |c: &str| {
                clients
                    .get(c)
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(30))
            };
            self.pop.renew(
                now_millis(),
                20_000,
                AUTO_RENEW_EXTENSION.as_millis() as i64,
                alive,
            )
        };
        self.forget_clients_silent_for(CLIENT_FORGOTTEN);
        renewed
    }

    /// Drops clients not seen for `silence`: those that went away without a goodbye (killed,
    /// or restarted under a new id) would otherwise stay in the table for ever.
    fn forget_clients_silent_for(&self, silence: Duration) -> usize {
        let mut clients = self.clients.lock();
        let before = clients.len();
        clients.retain(|_, seen| seen.elapsed() < silence);
        before - clients.len()
    }

    /// Checks a message against its topic before it is stored, including that its type is the
    /// topic's (what the gRPC protocol requires).
    pub fn check_send(&self, msg: &Message, message_type: TopicMessageType) -> Result<()> {
        let topic = self.check_message(msg)?;
        if message_type != topic.message_type {
            return Err(ServiceError::MessageTypeConflict(format!(
                "topic {:?} takes {:?} messages, this one is {:?}",
                topic.name, topic.message_type, message_type
            )));
        }
        Ok(())
    }

    /// Checks a message's topic, queue, body and delivery time (not its type: the remoting
    /// protocol, like Apache's broker, accepts any message on any topic).
    pub fn check_message(&self, msg: &Message) -> Result<TopicConfig> {
        let topic = self.topic(&msg.topic)?;
        if msg.body.is_empty() {
            return Err(ServiceError::BodyEmpty);
        }
        if msg.body.len() > self.config.max_body_size {
            return Err(ServiceError::BodyTooLarge {
                size: msg.body.len(),
                max: self.config.max_body_size,
            });
        }
        if msg.queue_id < 0 || msg.queue_id as u32 >= topic.queues {
            return Err(ServiceError::NoSuchQueue {
                topic: topic.name,
                queue: msg.queue_id,
                queues: topic.queues,
            });
        }
        if let Some(deliver) = msg.property_value(keys::TIMER_DELIVER_MS) {
            let deliver: i64 = deliver.parse().map_err(|_| {
                ServiceError::IllegalDeliveryTime(format!("bad delivery time {deliver:?}"))
            })?;
            let latest = now_millis() + timer::MAX_DELAY.as_millis() as i64;
            if deliver > latest {
                return Err(ServiceError::IllegalDeliveryTime(format!(
                    "delivery time {deliver} is more than {} s ahead",
                    timer::MAX_DELAY.as_secs()
                )));
            }
        }
        Ok(topic)
    }

    /// Stores messages that passed [`Broker::check_send`]; those due later go to the timer.
    pub async fn send(&self, mut msgs: Vec<Message>) -> Result<Vec<PutResult>> {
        let now = now_millis();
        let topics: Vec<String> = msgs.iter().map(|m| m.topic.clone()).collect();
        for m in &mut msgs {
            if m.property_value(keys::TRAN_MSG) == Some("true") {
                self.route_half(m);
            } else {
                self.route_delayed(m, now);
            }
        }
        let started = std::time::Instant::now();
        let result = self.store.put_messages(&msgs).await;
        self.metrics
            .send_latency
            .observe(started.elapsed().as_secs_f64());
        if let Ok(r) = &result {
            self.metrics.put_total.inc_by(r.len() as u64);
        }
        let family = match &result {
            Ok(_) => &self.metrics.messages_sent,
            Err(_) => &self.metrics.send_errors,
        };
        for t in &topics {
            family.get_or_create(&self.metrics.topic(t)).inc();
        }
        Ok(result?)
    }

    /// Pop-mode receive with long polling.
    pub async fn receive(&self, req: &ReceiveRequest<'_>) -> Result<Vec<Delivery>> {
        // Deliveries are the primary's to hand out: a replica's view of them is stale.
        if self.store.is_replica() {
            return Err(ServiceError::Store(crate::store::StoreError::NotPrimary));
        }
        if req.invisible < MIN_INVISIBLE || req.invisible > MAX_INVISIBLE {
            return Err(ServiceError::IllegalInvisibleTime(req.invisible));
        }
        let topic = self.topic(req.topic)?;
        let group = self.group(req.group)?;
        let queues: Vec<i32> = match req.queue_id {
            Some(q) if q >= 0 && (q as u32) < topic.queues => vec![q],
            Some(q) if q >= 0 => {
                return Err(ServiceError::NoSuchQueue {
                    topic: topic.name,
                    queue: q,
                    queues: topic.queues,
                });
            }
            _ => (0..topic.queues as i32).collect(),
        };
        let give_up = tokio::time::Instant::now() + req.long_polling;
        let mut dispatched = self.store.watch_topic(&topic.name);
        let start = (now_millis() as usize) % queues.len().max(1);
        loop {
            let now = now_millis();
            let mut out = Vec::new();
            for i in 0..queues.len() {
                let q = queues[(start + i) % queues.len()];
                let popped = self.pop.pop(
                    &group.name,
                    group.max_delivery_attempts,
                    group.fifo,
                    &topic.name,
                    q,
                    req.max - out.len(),
                    req.invisible.as_millis() as i64,
                    &req.filter,
                    now,
                    req.auto_renew_for.clone(),
                )?;
                for d in popped.exhausted {
                    self.dead_letter(&group.name, &d).await?;
                }
                out.extend(popped.deliveries);
                if out.len() >= req.max {
                    break;
                }
            }
            if !out.is_empty() {
                let labels = self.metrics.group(&topic.name, &group.name);
                self.metrics.get_total.inc_by(out.len() as u64);
                self.metrics
                    .messages_received
                    .get_or_create(&labels)
                    .inc_by(out.len() as u64);
                let again = out.iter().filter(|d| d.handle.attempt > 1).count() as u64;
                if again > 0 {
                    self.metrics
                        .messages_redelivered
                        .get_or_create(&labels)
                        .inc_by(again);
                }
            }
            if !out.is_empty() || tokio::time::Instant::now() >= give_up {
                tracing::debug!(group = req.group, topic = req.topic, queue = ?req.queue_id, delivered = out.len(), "receive");
                return Ok(out);
            }
            // Wake on new messages in this topic, when the first delivery in flight becomes
            // visible again, and now and then for deliveries another receive hands out
            // meanwhile: every second while the group has messages in flight here, every 5 s
            // when it has none (so that thousands of idle receives cost little).
            let tick = match self.pop.next_deadline(&group.name, &topic.name, &queues) {
                Some(deadline) => {
                    let wait = Duration::from_millis((deadline - now_millis()).max(0) as u64 + 1);
                    tokio::time::Instant::now() + wait.min(Duration::from_secs(1))
                }
                None => tokio::time::Instant::now() + Duration::from_secs(5),
            };
            tokio::select! {
                _ = dispatched.changed() => {}
                _ = tokio::time::sleep_until(tick.min(give_up)) => {}
            }
        }
    }

    pub async fn ack(&self, group: &str, handles: &[ReceiptHandle]) -> Result<Vec<AckOutcome>> {
        if self.store.is_replica() {
            return Err(ServiceError::Store(crate::store::StoreError::NotPrimary));
        }
        let group = self.group(group)?;
        let outcomes = self.pop.ack(&group.name, handles).await?;
        for (h, o) in handles.iter().zip(&outcomes) {
            if *o == AckOutcome::Acked {
                self.metrics
                    .messages_acked
                    .get_or_create(&self.metrics.group(&h.topic, &group.name))
                    .inc();
            }
        }
        Ok(outcomes)
    }

    pub fn change_invisible(
        &self,
        group: &str,
        handle: &ReceiptHandle,
        invisible: Duration,
    ) -> Result<ReceiptHandle> {
        if invisible > MAX_INVISIBLE {
            return Err(ServiceError::IllegalInvisibleTime(invisible));
        }
        let group = self.group(group)?;
        self.pop
            .change_invisible(
                &group.name,
                handle,
                invisible.as_millis() as i64,
                now_millis(),
            )?
            .ok_or(ServiceError::InvalidReceiptHandle)
    }

    /// Moves a delivered message to `%DLQ%<group>` and acknowledges it.
    pub async fn forward_to_dead_letter_queue(
        &self,
        group: &str,
        handle: &ReceiptHandle,
    ) -> Result<()> {
        let got = self
            .store
            .get_message(&handle.topic, handle.queue_id, handle.offset, 1)?;
        let Some(message) = got
            .messages
            .into_iter()
            .find(|m| m.queue_offset == handle.offset)
        else {
            return Err(ServiceError::InvalidReceiptHandle);
        };
        self.dead_letter(
            group,
            &Delivery {
                message,
                handle: handle.clone(),
            },
        )
        .await
    }

    async fn dead_letter(&self, group: &str, d: &Delivery) -> Result<()> {
        let dlq = format!("%DLQ%{group}");
        if self.metadata.topic(&dlq).is_none() {
            self.metadata.put_topic(TopicConfig {
                name: dlq.clone(),
                queues: 1,
                message_type: TopicMessageType::Normal,
            })?;
        }
        let m = &d.message;
        let origin_id = m
            .property(properties::UNIQ_KEY)
            .map(str::to_owned)
            .unwrap_or_else(|| m.offset_msg_id());
        let props = properties::with(&m.properties, keys::DLQ_ORIGIN_TOPIC, &m.topic);
        let props = properties::with(&props, keys::DLQ_ORIGIN_MESSAGE_ID, &origin_id);
        let copy = Message {
            topic: dlq,
            queue_id: 0,
            flag: m.flag,
            sys_flag: m.sys_flag,
            born_timestamp: m.born_timestamp,
            born_host: m.born_host,
            reconsume_times: d.handle.attempt as i32,
            prepared_transaction_offset: 0,
            body: m.body.clone(),
            properties: props,
        };
        self.store.put_message(&copy).await?;
        self.pop.ack(group, std::slice::from_ref(&d.handle)).await?;
        self.metrics
            .messages_dead_lettered
            .get_or_create(&self.metrics.group(&m.topic, group))
            .inc();
        tracing::info!(group, topic = %m.topic, offset = m.queue_offset, attempts = d.handle.attempt, "message moved to the dead-letter queue");
        Ok(())
    }
}

/// A message held in a system topic (timer, half messages), sent back to its real topic and
/// queue (`REAL_TOPIC` / `REAL_QID`).
fn real_message(m: &crate::store::StoredMessage, prepared_transaction_offset: i64) -> Message {
    Message {
        topic: m.property(timer::REAL_TOPIC).unwrap_or_default().to_owned(),
        queue_id: m
            .property(timer::REAL_QID)
            .and_then(|q| q.parse().ok())
            .unwrap_or(0),
        flag: m.flag,
        sys_flag: m.sys_flag,
        born_timestamp: m.born_timestamp,
        born_host: m.born_host,
        reconsume_times: m.reconsume_times,
        prepared_transaction_offset,
        body: m.body.clone(),
        properties: m.properties.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Broker {
        fn known_clients(&self) -> usize {
            self.clients.lock().len()
        }
    }

    #[test]
    fn without_per_topic_metrics_the_counters_have_one_series() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for per_topic in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store =
                Arc::new(MessageStore::open(crate::store::StoreConfig::at(dir.path())).unwrap());
            let config = BrokerConfig {
                metrics_per_topic: per_topic,
                ..BrokerConfig::default()
            };
            let broker = Broker::open(store, config).unwrap();
            let topics = ["A", "B", "C"];
            for t in topics {
                broker
                    .metadata
                    .put_topic(TopicConfig {
                        name: t.into(),
                        queues: 1,
                        message_type: TopicMessageType::Normal,
                    })
                    .unwrap();
                rt.block_on(broker.send(vec![Message::tiny(t)])).unwrap();
            }
            let text = broker.metrics.encode();
            let sent: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("rocketmq_messages_sent_total"))
                .collect();
            if per_topic {
                assert_eq!(sent.len(), 3, "{text}");
                assert!(sent.contains(&r#"rocketmq_messages_sent_total{topic="B"} 1"#));
            } else {
                assert_eq!(
                    sent,
                    [r#"rocketmq_messages_sent_total{topic=""} 3"#],
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn clients_that_vanish_without_a_goodbye_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(MessageStore::open(crate::store::StoreConfig::at(dir.path())).unwrap());
        let broker = Broker::open(store, BrokerConfig::default()).unwrap();
        for i in 0..1000 {
            broker.client_seen(&format!("client-{i}"));
        }
        broker.client_gone("client-0");
        assert_eq!(broker.known_clients(), 999);
        // A regular pass keeps clients seen recently.
        broker.renew_invisible_times();
        assert_eq!(broker.known_clients(), 999);
        std::thread::sleep(Duration::from_millis(20));
        broker.client_seen("client-1");
        assert_eq!(
            broker.forget_clients_silent_for(Duration::from_millis(10)),
            998
        );
        assert_eq!(broker.known_clients(), 1, "the one seen again stays");
    }
}
