//! The remoting protocol of a store node (a RocketMQ broker): what 4.x/5.x remoting clients,
//! `mqadmin` and our proxies send. Converts request headers and bodies to calls on the
//! messaging service and back; keeps the per-connection client registry (consumers by group,
//! for rebalancing, and producers, for transaction check-backs) and the queue locks of ordered
//! consumers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::body::{
    self, ConsumerData, ConsumerIdList, HeartbeatData, KvTable, LockBatchRequestBody,
    LockBatchResponseBody, SubscriptionGroupWire, SubscriptionGroupWrapper,
    TopicConfigSerializeWrapper, TopicConfigWire, perm,
};
use super::codes::{request as rq, response as rs};
use super::conn::{self, Connection, Handler};
use super::{FieldError, Fields, RemotingCommand};
use crate::auth::guard::{Guard, Proof};
use crate::service::filter::TagFilter;
use crate::service::metadata::{GroupConfig, TopicConfig, TopicMessageType};
use crate::service::pop::{AckOutcome, ReceiptHandle};
use crate::service::transaction::CheckRequest;
use crate::service::{Broker, ServiceError, keys};
use crate::store::commitlog::now_millis;
use crate::store::{GetStatus, Message, StoredMessage, properties, record};

/// Message properties this layer reads or sets (RocketMQ's `MessageConst`).
mod prop {
    pub const DELAY: &str = "DELAY";
    pub const TIMER_DELAY_SEC: &str = "TIMER_DELAY_SEC";
    pub const TIMER_DELAY_MS: &str = "TIMER_DELAY_MS";
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    pub const REAL_QID: &str = "REAL_QID";
}

/// The property a popped message carries its receipt handle in (Apache's `POP_CK`; ours holds
/// this broker's own handle, which only our proxy reads).
pub const POP_CK: &str = "POP_CK";

/// RocketMQ's `messageDelayLevel` default: level n waits `DELAY_LEVELS[n - 1]` seconds.
const DELAY_LEVELS: [u64; 18] = [
    1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
];
/// Pull sys flag bits.
const PULL_COMMIT_OFFSET: i32 = 1;
const PULL_SUSPEND: i32 = 2;
const PULL_SUBSCRIPTION: i32 = 4;
/// Message sys flag: a transaction's prepared (half) message.
const TRANSACTION_PREPARED: i32 = 0x4;
/// END_TRANSACTION's `commitOrRollback`.
const TRANSACTION_COMMIT: i32 = 0x8;
const TRANSACTION_ROLLBACK: i32 = 0xC;
/// How long a queue lock lasts without renewal (clients renew every 20 s).
const LOCK_TTL: Duration = Duration::from_secs(60);
/// Longest a pull may be held open.
const MAX_SUSPEND: Duration = Duration::from_secs(30);
/// A client that has not sent a heartbeat for this long is dropped from its groups.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const RETRY_PREFIX: &str = "%RETRY%";
const DLQ_PREFIX: &str = "%DLQ%";

struct ConsumerEntry {
    conn: Arc<Connection>,
    data: ConsumerData,
    last_seen: Instant,
    language: String,
    version: i32,
}

#[derive(Default)]
struct Clients {
    /// group -> client id -> consumer.
    consumers: HashMap<String, BTreeMap<String, ConsumerEntry>>,
    /// group -> client id -> (connection, last heartbeat).
    producers: HashMap<String, HashMap<String, (Arc<Connection>, Instant)>>,
}

/// A refused request: the response code and a remark for the person reading the client's error.
#[derive(Debug)]
struct Refusal(i32, String);

impl From<FieldError> for Refusal {
    fn from(e: FieldError) -> Self {
        Refusal(rs::SYSTEM_ERROR, e.to_string())
    }
}

impl From<ServiceError> for Refusal {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::TopicNotFound(_) => rs::TOPIC_NOT_EXIST,
            ServiceError::IllegalTopic(_)
            | ServiceError::IllegalGroup(_)
            | ServiceError::NoSuchQueue { .. }
            | ServiceError::BodyEmpty
            | ServiceError::BodyTooLarge { .. }
            | ServiceError::MessageTypeConflict(_)
            | ServiceError::IllegalDeliveryTime(_) => rs::MESSAGE_ILLEGAL,
            ServiceError::Filter(_) => rs::SUBSCRIPTION_PARSE_FAILED,
            ServiceError::Metadata(_) => rs::SYSTEM_ERROR,
            // A replica, or a primary short of in-sync replicas (RocketMQ answers a put on a
            // slave with SERVICE_NOT_AVAILABLE): the client retries, elsewhere or later.
            ServiceError::Store(
                crate::store::StoreError::NotPrimary
                | crate::store::StoreError::NotEnoughInSyncReplicas { .. },
            ) => rs::SERVICE_NOT_AVAILABLE,
            _ => rs::SYSTEM_ERROR,
        };
        Refusal(code, e.to_string())
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Refusal::from(ServiceError::from(e))
    }
}

type Reply = Result<RemotingCommand, Refusal>;

/// (group, topic, queue id).
type LockKey = (String, String, i32);

/// The remoting side of one store node.
pub struct BrokerHandler {
    pub broker: Arc<Broker>,
    /// Authentication and authorization, before any handler runs.
    pub guard: Arc<Guard>,
    cluster: String,
    /// `host:port` clients are told to use.
    advertised: String,
    clients: Mutex<Clients>,
    /// (group, topic, queue) -> (client id, expiry).
    locks: Mutex<HashMap<LockKey, (String, Instant)>>,
    started: Instant,
    started_millis: i64,
    /// Woken when topics change, to re-register with the name servers at once.
    pub topics_changed: Notify,
    /// Producers' sends are refused and topics are registered readable only (a node serving
    /// another node's tiered history).
    read_only: std::sync::atomic::AtomicBool,
    /// A name server accepted the latest registration (readiness).
    pub registered: std::sync::atomic::AtomicBool,
}

fn ok(req: &RemotingCommand) -> RemotingCommand {
    let mut r = RemotingCommand::response_to(req, rs::SUCCESS, "");
    r.remark = None;
    r
}

fn ok_with(req: &RemotingCommand, fields: &[(&str, String)], body: Bytes) -> RemotingCommand {
    let mut r = ok(req);
    for (k, v) in fields {
        r.ext_fields.insert((*k).to_owned(), v.clone());
    }
    r.body = body;
    r
}

fn refuse(code: i32, remark: impl Into<String>) -> Refusal {
    Refusal(code, remark.into())
}

/// The send header's fields by their v1 names; SEND_MESSAGE_V2 (and batches sent with it)
/// use single letters.
fn send_field(v2: bool, name: &'static str) -> &'static str {
    if !v2 {
        return name;
    }
    match name {
        "producerGroup" => "a",
        "topic" => "b",
        "defaultTopic" => "c",
        "defaultTopicQueueNums" => "d",
        "queueId" => "e",
        "sysFlag" => "f",
        "bornTimestamp" => "g",
        "flag" => "h",
        "properties" => "i",
        "reconsumeTimes" => "j",
        "unitMode" => "k",
        "maxReconsumeTimes" => "l",
        "batch" => "m",
        other => other,
    }
}

/// One message of a batch body, as `MessageDecoder.encodeMessage` writes it: total size,
/// magic, body CRC, flag, body (with length), properties (with 2-byte length).
fn decode_batch(mut body: Bytes) -> Result<Vec<(i32, Bytes, Bytes)>, Refusal> {
    let bad = |why: &str| refuse(rs::MESSAGE_ILLEGAL, format!("malformed batch body: {why}"));
    let mut out = Vec::new();
    while body.has_remaining() {
        if body.remaining() < 20 {
            return Err(bad("truncated message header"));
        }
        let total = body.get_i32();
        if total < 22 || total as usize - 4 > body.remaining() {
            return Err(bad("message size past the end of the body"));
        }
        let mut m = body.split_to(total as usize - 4);
        let _magic = m.get_i32();
        let _crc = m.get_i32();
        let flag = m.get_i32();
        let body_len = m.get_i32();
        if body_len < 0 || body_len as usize + 2 > m.remaining() {
            return Err(bad("body length past the end of the message"));
        }
        let msg_body = m.split_to(body_len as usize);
        let props_len = m.get_i16();
        if props_len < 0 || props_len as usize != m.remaining() {
            return Err(bad("properties length does not match the message size"));
        }
        out.push((flag, msg_body, m));
    }
    if out.is_empty() {
        return Err(bad("no messages"));
    }
    Ok(out)
}

/// When a message with a delay level or delay property is due, as `TIMER_DELIVER_MS`.
fn deliver_at(props: &[u8], now: i64) -> Result<Option<i64>, Refusal> {
    let get = |k| properties::get(props, k).filter(|v| !v.is_empty());
    if get(keys::TIMER_DELIVER_MS).is_some() {
        return Ok(None);
    }
    let parse = |k: &str, v: &str| {
        v.parse::<i64>().map_err(|_| {
            refuse(
                rs::MESSAGE_ILLEGAL,
                format!("property {k} = {v:?} is not a number"),
            )
        })
    };
    if let Some(v) = get(prop::DELAY) {
        let level = parse(prop::DELAY, v)?;
        if level <= 0 {
            return Ok(None);
        }
        let idx = (level as usize).min(DELAY_LEVELS.len()) - 1;
        return Ok(Some(now + DELAY_LEVELS[idx] as i64 * 1000));
    }
    if let Some(v) = get(prop::TIMER_DELAY_SEC) {
        return Ok(Some(now + parse(prop::TIMER_DELAY_SEC, v)? * 1000));
    }
    if let Some(v) = get(prop::TIMER_DELAY_MS) {
        return Ok(Some(now + parse(prop::TIMER_DELAY_MS, v)?));
    }
    Ok(None)
}

fn wire_topic(t: &TopicConfig) -> TopicConfigWire {
    let mut attributes = HashMap::new();
    if t.message_type != TopicMessageType::Normal {
        let name = match t.message_type {
            TopicMessageType::Fifo => "FIFO",
            TopicMessageType::Delay => "DELAY",
            TopicMessageType::Transaction => "TRANSACTION",
            TopicMessageType::Normal => "NORMAL",
        };
        attributes.insert("+message.type".to_owned(), name.to_owned());
    }
    TopicConfigWire {
        topic_name: t.name.clone(),
        read_queue_nums: t.queues as i32,
        write_queue_nums: t.queues as i32,
        perm: if t.name == crate::role::store::AUTO_CREATE_TOPIC {
            perm::READ_WRITE | perm::INHERIT
        } else {
            perm::READ_WRITE
        },
        order: t.message_type == TopicMessageType::Fifo,
        attributes,
        ..TopicConfigWire::default()
    }
}

/// `MessageQueue` as fastjson writes it when it is a map key: an object, unquoted.
fn mq_key(topic: &str, broker: &str, queue: i32) -> String {
    let v = serde_json::json!({"brokerName": broker, "queueId": queue, "topic": topic});
    v.to_string()
}

impl BrokerHandler {
    pub fn new(
        broker: Arc<Broker>,
        cluster: &str,
        advertised: &str,
        guard: Arc<Guard>,
    ) -> Arc<BrokerHandler> {
        Arc::new(BrokerHandler {
            broker,
            guard,
            cluster: cluster.to_owned(),
            advertised: advertised.to_owned(),
            clients: Mutex::new(Clients::default()),
            locks: Mutex::new(HashMap::new()),
            started: Instant::now(),
            started_millis: now_millis(),
            topics_changed: Notify::new(),
            read_only: Default::default(),
            registered: Default::default(),
        })
    }

    /// Refuses (or accepts again) producers' sends; topics are then registered read-only, so
    /// name servers route producers elsewhere.
    pub fn set_read_only(&self, read_only: bool) {
        use std::sync::atomic::Ordering;
        if self.read_only.swap(read_only, Ordering::AcqRel) != read_only {
            self.topics_changed.notify_one();
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(std::sync::atomic::Ordering::Acquire)
    }

    fn name(&self) -> &str {
        &self.broker.config.broker_name
    }

    /// The topic table as REGISTER_BROKER and GET_ALL_TOPIC_CONFIG carry it.
    pub fn topic_wrapper(&self) -> TopicConfigSerializeWrapper {
        let topic_config_table = self
            .broker
            .metadata
            .topics()
            .iter()
            .map(|t| {
                let mut wire = wire_topic(t);
                if self.is_read_only() {
                    wire.perm = perm::READ;
                }
                (t.name.clone(), wire)
            })
            .collect();
        TopicConfigSerializeWrapper {
            topic_config_table,
            data_version: self.data_version(),
        }
    }

    /// Identifies the topic table registered: equal versions mean equal tables, so a name
    /// server that holds this version needs no new copy. The timestamp is this process's
    /// start (stable while it runs); the counter moves with every topic change and with the
    /// read-only switch (which changes every topic's permission).
    pub fn data_version(&self) -> body::DataVersion {
        body::DataVersion {
            timestamp: self.started_millis,
            counter: ((self.broker.metadata.version() as i64) << 1)
                | i64::from(self.is_read_only()),
            state_version: None,
        }
    }

    /// Creates a topic the broker manages itself (retry and dead-letter topics) if missing.
    fn ensure_system_topic(&self, name: &str) -> Result<(), Refusal> {
        if self.broker.metadata.topic(name).is_none() {
            self.broker
                .metadata
                .put_topic(TopicConfig {
                    name: name.to_owned(),
                    queues: 1,
                    message_type: TopicMessageType::Normal,
                })
                .map_err(ServiceError::from)?;
            self.topics_changed.notify_one();
        }
        Ok(())
    }

    async fn dispatch(self: &Arc<Self>, conn: &Arc<Connection>, req: &RemotingCommand) -> Reply {
        match req.code {
            rq::SEND_MESSAGE | rq::SEND_MESSAGE_V2 | rq::SEND_BATCH_MESSAGE
                if self.is_read_only() =>
            {
                Err(refuse(
                    rs::NO_PERMISSION,
                    format!(
                        "the broker[{}] sending message is forbidden: it serves tiered history read-only",
                        self.name()
                    ),
                ))
            }
            rq::SEND_MESSAGE | rq::SEND_MESSAGE_V2 => self.send(conn, req, false).await,
            rq::SEND_BATCH_MESSAGE => self.send(conn, req, true).await,
            rq::PULL_MESSAGE | rq::LITE_PULL_MESSAGE => self.pull(req).await,
            rq::QUERY_CONSUMER_OFFSET => self.query_offset(req),
            rq::UPDATE_CONSUMER_OFFSET => {
                let f = Fields(&req.ext_fields);
                let offset: i64 = f.parse("commitOffset")?;
                if offset >= 0 {
                    self.broker.store.consumer_offsets().commit(
                        f.str("consumerGroup")?,
                        f.str("topic")?,
                        f.parse("queueId")?,
                        offset as u64,
                    );
                }
                Ok(ok(req))
            }
            rq::GET_MAX_OFFSET | rq::GET_MIN_OFFSET => {
                let f = Fields(&req.ext_fields);
                let (topic, queue) = (f.str("topic")?, f.parse("queueId")?);
                let offset = if req.code == rq::GET_MAX_OFFSET {
                    self.broker.store.max_offset(topic, queue)?
                } else {
                    self.broker.store.min_offset(topic, queue)?
                };
                Ok(ok_with(
                    req,
                    &[("offset", offset.to_string())],
                    Bytes::new(),
                ))
            }
            rq::SEARCH_OFFSET_BY_TIMESTAMP => {
                let f = Fields(&req.ext_fields);
                let offset = self.broker.store.offset_by_time(
                    f.str("topic")?,
                    f.parse("queueId")?,
                    f.parse("timestamp")?,
                )?;
                Ok(ok_with(
                    req,
                    &[("offset", offset.to_string())],
                    Bytes::new(),
                ))
            }
            rq::GET_EARLIEST_MSG_STORETIME => {
                let f = Fields(&req.ext_fields);
                let (topic, queue) = (f.str("topic")?, f.parse("queueId")?);
                let min = self.broker.store.min_offset(topic, queue)?;
                let got = self.broker.store.get_message(topic, queue, min, 1)?;
                let t = got.messages.first().map_or(-1, |m| m.store_timestamp);
                Ok(ok_with(req, &[("timestamp", t.to_string())], Bytes::new()))
            }
            rq::VIEW_MESSAGE_BY_ID => {
                let offset: u64 = Fields(&req.ext_fields).parse("offset")?;
                match self.broker.store.read_message(offset) {
                    Some(m) => Ok(ok_with(req, &[], record::encode_stored(&m).into())),
                    None => Err(refuse(
                        rs::SYSTEM_ERROR,
                        format!("no message at commit log offset {offset}"),
                    )),
                }
            }
            rq::QUERY_MESSAGE => self.query_message(req),
            rq::HEART_BEAT => self.heartbeat(conn, req).await,
            rq::UNREGISTER_CLIENT => {
                let f = Fields(&req.ext_fields);
                let client = f.str("clientID")?;
                if let Some(g) = f.get("consumerGroup").filter(|g| !g.is_empty()) {
                    let removed = self
                        .clients
                        .lock()
                        .consumers
                        .get_mut(g)
                        .and_then(|m| m.remove(client))
                        .is_some();
                    if removed {
                        self.notify_group_changed(g).await;
                    }
                }
                self.broker.client_gone(client);
                if let Some(g) = f.get("producerGroup").filter(|g| !g.is_empty()) {
                    if let Some(m) = self.clients.lock().producers.get_mut(g) {
                        m.remove(client);
                    }
                    self.broker.unregister_producer(client);
                }
                Ok(ok(req))
            }
            rq::GET_CONSUMER_LIST_BY_GROUP => {
                let group = Fields(&req.ext_fields).str("consumerGroup")?;
                let ids = self.consumer_ids(group);
                if ids.is_empty() {
                    return Err(refuse(
                        rs::SYSTEM_ERROR,
                        format!("no consumer for this group, {group}"),
                    ));
                }
                Ok(ok_with(
                    req,
                    &[],
                    body::to_body(&ConsumerIdList {
                        consumer_id_list: ids,
                    }),
                ))
            }
            rq::CONSUMER_SEND_MSG_BACK if req.ext_fields.contains_key("extraInfo") => {
                // A popped message by receipt handle (what our proxy forwards): to the DLQ.
                let f = Fields(&req.ext_fields);
                let h = ReceiptHandle::decode(f.str("extraInfo")?)
                    .ok_or_else(|| refuse(rs::SYSTEM_ERROR, "invalid receipt handle"))?;
                self.broker
                    .forward_to_dead_letter_queue(f.str("group")?, &h)
                    .await?;
                Ok(ok(req))
            }
            rq::CONSUMER_SEND_MSG_BACK => self.send_back(req).await,
            rq::POP_MESSAGE => self.pop(req).await,
            rq::ACK_MESSAGE => {
                let f = Fields(&req.ext_fields);
                let h = ReceiptHandle::decode(f.str("extraInfo")?)
                    .ok_or_else(|| refuse(rs::SYSTEM_ERROR, "invalid receipt handle"))?;
                match self
                    .broker
                    .ack(f.str("consumerGroup")?, &[h])
                    .await?
                    .first()
                {
                    Some(AckOutcome::Acked | AckOutcome::AlreadyAcked) => Ok(ok(req)),
                    _ => Err(refuse(rs::SYSTEM_ERROR, "invalid receipt handle")),
                }
            }
            rq::CHANGE_MESSAGE_INVISIBLETIME => {
                let f = Fields(&req.ext_fields);
                let h = ReceiptHandle::decode(f.str("extraInfo")?)
                    .ok_or_else(|| refuse(rs::SYSTEM_ERROR, "invalid receipt handle"))?;
                let invisible = Duration::from_millis(f.parse("invisibleTime")?);
                let new = self
                    .broker
                    .change_invisible(f.str("consumerGroup")?, &h, invisible)?;
                Ok(ok_with(
                    req,
                    &[
                        ("extraInfo", new.encode()),
                        ("popTime", now_millis().to_string()),
                        ("invisibleTime", invisible.as_millis().to_string()),
                        ("reviveQid", "0".to_owned()),
                    ],
                    Bytes::new(),
                ))
            }
            rq::END_TRANSACTION => self.end_transaction(req).await,
            rq::LOCK_BATCH_MQ => self.lock(req, true),
            rq::UNLOCK_BATCH_MQ => self.lock(req, false),
            rq::UPDATE_AND_CREATE_TOPIC => self.create_topic(req),
            rq::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP => {
                let wire: SubscriptionGroupWire = body::from_body(&req.body).map_err(|e| {
                    refuse(rs::SYSTEM_ERROR, format!("malformed group config: {e}"))
                })?;
                let mut g = self
                    .broker
                    .metadata
                    .group(&wire.group_name)
                    .unwrap_or_else(|| GroupConfig::new(&wire.group_name));
                g.max_delivery_attempts = (wire.retry_max_times.max(0) as u32).saturating_add(1);
                g.fifo = wire.consume_message_orderly;
                self.broker
                    .metadata
                    .put_group(g)
                    .map_err(ServiceError::from)?;
                Ok(ok(req))
            }
            rq::GET_TOPIC_CONFIG => {
                let topic = self.broker.topic(Fields(&req.ext_fields).str("topic")?)?;
                Ok(ok_with(req, &[], body::to_body(&wire_topic(&topic))))
            }
            rq::GET_ALL_TOPIC_CONFIG => Ok(ok_with(req, &[], body::to_body(&self.topic_wrapper()))),
            rq::GET_ALL_SUBSCRIPTIONGROUP_CONFIG => {
                let subscription_group_table = self
                    .broker
                    .metadata
                    .groups()
                    .into_iter()
                    .map(|g| {
                        let wire = SubscriptionGroupWire {
                            group_name: g.name.clone(),
                            consume_message_orderly: g.fifo,
                            retry_max_times: g.max_delivery_attempts as i32 - 1,
                            ..SubscriptionGroupWire::default()
                        };
                        (g.name, wire)
                    })
                    .collect();
                let wrapper = SubscriptionGroupWrapper {
                    subscription_group_table,
                    data_version: body::DataVersion::default(),
                };
                Ok(ok_with(req, &[], body::to_body(&wrapper)))
            }
            rq::GET_BROKER_RUNTIME_INFO => {
                Ok(ok_with(req, &[], body::to_body(&self.runtime_info())))
            }
            rq::GET_TOPIC_STATS_INFO => self.topic_stats(req),
            rq::GET_CONSUME_STATS => self.consume_stats(req),
            rq::GET_CONSUMER_CONNECTION_LIST => self.consumer_connections(req),
            rq::GET_PRODUCER_CONNECTION_LIST => {
                let group = Fields(&req.ext_fields).str("producerGroup")?;
                let set: Vec<serde_json::Value> = self
                    .clients
                    .lock()
                    .producers
                    .get(group)
                    .map(|m| {
                        m.iter()
                            .map(|(id, (c, _))| {
                                serde_json::json!({"clientId": id, "clientAddr": c.peer.to_string(), "language": "JAVA", "version": 0})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let body = serde_json::json!({ "connectionSet": set });
                Ok(ok_with(req, &[], body.to_string().into()))
            }
            rq::QUERY_TOPIC_CONSUME_BY_WHO => {
                let topic = Fields(&req.ext_fields).str("topic")?;
                let mut groups: Vec<String> = self
                    .clients
                    .lock()
                    .consumers
                    .iter()
                    .filter(|(_, m)| {
                        m.values().any(|c| {
                            c.data
                                .subscription_data_set
                                .iter()
                                .any(|s| s.topic == topic)
                        })
                    })
                    .map(|(g, _)| g.clone())
                    .collect();
                for (t, g) in self.broker.store.consumer_offsets().topics_and_groups() {
                    if t == topic && !groups.contains(&g) {
                        groups.push(g);
                    }
                }
                groups.sort();
                let body = serde_json::json!({ "groupList": groups });
                Ok(ok_with(req, &[], body.to_string().into()))
            }
            rq::GET_ALL_CONSUMER_OFFSET => {
                // The table in one pass, shaped as RocketMQ's consumerOffset.json (it was one
                // scan of the table per (topic, group) pair: quadratic in the pairs).
                let body = self.broker.store.consumer_offsets().encode();
                Ok(ok_with(req, &[], body.into()))
            }
            rq::GET_ALL_DELAY_OFFSET => Ok(ok_with(req, &[], Bytes::from_static(b"{}"))),
            _ => {
                tracing::debug!(code = req.code, peer = %conn.peer, "request code not supported");
                Ok(conn::not_supported(req))
            }
        }
    }

    async fn send(&self, conn: &Arc<Connection>, req: &RemotingCommand, batch: bool) -> Reply {
        let f = Fields(&req.ext_fields);
        let v2 = req.code == rq::SEND_MESSAGE_V2 || f.get("b").is_some();
        let k = |name| send_field(v2, name);
        let group = f.str(k("producerGroup"))?;
        let mut topic = f.str(k("topic"))?.to_owned();
        let mut queue_id: i32 = f.parse_or(k("queueId"), -1)?;
        let sys_flag: i32 = f.parse_or(k("sysFlag"), 0)?;
        let born_timestamp: i64 = f.parse_or(k("bornTimestamp"), now_millis())?;
        let flag: i32 = f.parse_or(k("flag"), 0)?;
        let header_props = f.get(k("properties")).unwrap_or_default();
        let reconsume_times: i32 = f.parse_or(k("reconsumeTimes"), 0)?;
        let max_reconsume: i32 = f.parse_or(k("maxReconsumeTimes"), 16)?;

        if let Some(g) = topic.strip_prefix(RETRY_PREFIX) {
            // A consumer sending a message back through SEND_MESSAGE: past its retries, it
            // goes to the group's dead-letter queue.
            let g = g.to_owned();
            self.ensure_system_topic(&topic)?;
            if reconsume_times > max_reconsume {
                topic = format!("{DLQ_PREFIX}{g}");
                self.ensure_system_topic(&topic)?;
                queue_id = 0;
            }
        }
        let config = self.broker.topic(&topic)?;
        if queue_id < 0 || queue_id as u32 >= config.queues {
            queue_id = (now_millis() as u64 % u64::from(config.queues)) as i32;
        }
        let entries = if batch {
            decode_batch(req.body.clone())?
        } else {
            vec![(
                flag,
                req.body.clone(),
                Bytes::copy_from_slice(header_props.as_bytes()),
            )]
        };
        let now = now_millis();
        let mut msgs = Vec::with_capacity(entries.len());
        for (flag, msg_body, props) in entries {
            // Java clients drop the separator after the last property; the store keeps it.
            let mut props = props;
            if !record::properties_well_formed(&props) {
                let mut p = BytesMut::with_capacity(props.len() + 1);
                p.extend_from_slice(&props);
                p.extend_from_slice(&[properties::PROPERTY_SEPARATOR as u8]);
                props = p.freeze();
            }
            if let Some(at) = deliver_at(&props, now)? {
                props = properties::with(&props, keys::TIMER_DELIVER_MS, &at.to_string());
            }
            if sys_flag & TRANSACTION_PREPARED != 0 {
                props = properties::with(&props, keys::TRAN_MSG, "true");
                if properties::get(&props, crate::service::transaction::PRODUCER_GROUP).is_none() {
                    props = properties::with(
                        &props,
                        crate::service::transaction::PRODUCER_GROUP,
                        group,
                    );
                }
            }
            let msg = Message {
                topic: topic.clone(),
                queue_id,
                flag,
                sys_flag,
                born_timestamp,
                born_host: conn.peer,
                reconsume_times,
                prepared_transaction_offset: 0,
                body: msg_body,
                properties: props,
            };
            self.broker.check_message(&msg)?;
            msgs.push(msg);
        }
        let results = self.broker.send(msgs).await?;
        let ids: Vec<String> = results
            .iter()
            .map(|r| self.broker.transaction_id(r.physical_offset))
            .collect();
        let first = results.first().map_or(0, |r| r.queue_offset);
        let mut fields = vec![
            ("msgId", ids.join(",")),
            ("queueId", queue_id.to_string()),
            ("queueOffset", first.to_string()),
            ("MSG_REGION", "DefaultRegion".to_owned()),
            ("TRACE_ON", "true".to_owned()),
        ];
        if sys_flag & TRANSACTION_PREPARED != 0 {
            fields.push(("transactionId", ids[0].clone()));
        }
        Ok(ok_with(req, &fields, Bytes::new()))
    }

    /// The subscription a pull filters with: the request's, or the one the group's heartbeat
    /// registered for the topic, or everything.
    fn pull_filter(
        &self,
        f: &Fields<'_>,
        sys_flag: i32,
        group: &str,
        topic: &str,
    ) -> Result<TagFilter, Refusal> {
        let expression_type = f.get("expressionType").unwrap_or("TAG");
        if !expression_type.eq_ignore_ascii_case("TAG") {
            return Err(refuse(
                rs::SUBSCRIPTION_PARSE_FAILED,
                format!("filter expression type {expression_type} is not supported; use TAG"),
            ));
        }
        let expression = if sys_flag & PULL_SUBSCRIPTION != 0 {
            f.get("subscription").map(str::to_owned)
        } else {
            let clients = self.clients.lock();
            clients.consumers.get(group).and_then(|m| {
                m.values().find_map(|c| {
                    c.data
                        .subscription_data_set
                        .iter()
                        .find(|s| s.topic == topic)
                        .map(|s| s.sub_string.clone())
                })
            })
        };
        let expression = expression.unwrap_or_else(|| "*".to_owned());
        TagFilter::parse_tag(&expression)
            .map_err(|e| refuse(rs::SUBSCRIPTION_PARSE_FAILED, e.to_string()))
    }

    async fn pull(&self, req: &RemotingCommand) -> Reply {
        let f = Fields(&req.ext_fields);
        let group = f.str("consumerGroup")?;
        let topic = f.str("topic")?;
        let queue_id: i32 = f.parse("queueId")?;
        let offset: i64 = f.parse("queueOffset")?;
        let max: i32 = f.parse_or("maxMsgNums", 32)?;
        let sys_flag: i32 = f.parse_or("sysFlag", 0)?;
        let commit_offset: i64 = f.parse_or("commitOffset", -1)?;
        let suspend_ms: u64 = f.parse_or("suspendTimeoutMillis", 0)?;
        let config = self.broker.topic(topic)?;
        if queue_id < 0 || queue_id as u32 >= config.queues {
            return Err(refuse(
                rs::SYSTEM_ERROR,
                format!(
                    "queueId[{queue_id}] is illegal, topic: [{topic}] topicConfig.readQueueNums: [{}]",
                    config.queues
                ),
            ));
        }
        let filter = self.pull_filter(&f, sys_flag, group, topic)?;
        if sys_flag & PULL_COMMIT_OFFSET != 0 && commit_offset >= 0 {
            self.broker.store.consumer_offsets().commit(
                group,
                topic,
                queue_id,
                commit_offset as u64,
            );
        }
        let offset = offset.max(0) as u64;
        let max = max.clamp(1, 1024) as usize;
        let give_up = tokio::time::Instant::now()
            + if sys_flag & PULL_SUSPEND != 0 {
                Duration::from_millis(suspend_ms).min(MAX_SUSPEND)
            } else {
                Duration::ZERO
            };
        let mut dispatched = self.broker.store.watch_topic(topic);
        loop {
            let got = self
                .broker
                .store
                .get_message(topic, queue_id, offset, max)?;
            let fields = |next: u64| {
                vec![
                    ("nextBeginOffset", next.to_string()),
                    ("minOffset", got.min_offset.to_string()),
                    ("maxOffset", got.max_offset.to_string()),
                    ("suggestWhichBrokerId", "0".to_owned()),
                ]
            };
            let respond = |code: i32, next: u64, body: Bytes| {
                let mut r = ok_with(req, &fields(next), body);
                r.code = code;
                Ok(r)
            };
            let waiting = matches!(
                got.status,
                GetStatus::OffsetOverflowOne
                    | GetStatus::NoMessageInQueue
                    | GetStatus::NoMatchedLogicQueue
            ) && (got.status == GetStatus::OffsetOverflowOne || offset == 0);
            match got.status {
                GetStatus::Found => {
                    let mut body = BytesMut::new();
                    let mut n = 0u64;
                    for m in &got.messages {
                        if filter.matches(m.property(properties::TAGS)) {
                            body.extend_from_slice(&record::encode_stored(m));
                            n += 1;
                        }
                    }
                    if n == 0 {
                        return respond(rs::PULL_RETRY_IMMEDIATELY, got.next_offset, Bytes::new());
                    }
                    self.broker
                        .metrics
                        .messages_received
                        .get_or_create(&self.broker.metrics.group(topic, group))
                        .inc_by(n);
                    self.broker.metrics.get_total.inc_by(n);
                    return respond(rs::SUCCESS, got.next_offset, body.freeze());
                }
                _ if waiting => {
                    if tokio::time::Instant::now() >= give_up {
                        return respond(rs::PULL_NOT_FOUND, offset, Bytes::new());
                    }
                }
                GetStatus::OffsetFoundNull => {
                    return respond(rs::PULL_NOT_FOUND, got.next_offset, Bytes::new());
                }
                _ => return respond(rs::PULL_OFFSET_MOVED, got.next_offset, Bytes::new()),
            }
            tokio::select! {
                _ = dispatched.changed() => {}
                _ = tokio::time::sleep_until(give_up) => {}
            }
        }
    }

    fn query_offset(&self, req: &RemotingCommand) -> Reply {
        let f = Fields(&req.ext_fields);
        let (group, topic) = (f.str("consumerGroup")?, f.str("topic")?);
        let queue: i32 = f.parse("queueId")?;
        if let Some(o) = self
            .broker
            .store
            .consumer_offsets()
            .get(group, topic, queue)
        {
            return Ok(ok_with(req, &[("offset", o.to_string())], Bytes::new()));
        }
        // A new group on a queue that still holds its first message starts there (Apache's
        // broker does the same while the first message is on disk).
        let zero_if_not_found = f.get("setZeroIfNotFound") != Some("false");
        if zero_if_not_found && self.broker.store.min_offset(topic, queue)? == 0 {
            return Ok(ok_with(req, &[("offset", "0".to_owned())], Bytes::new()));
        }
        Err(refuse(
            rs::QUERY_NOT_FOUND,
            "Not found, maybe this group consumer boot first",
        ))
    }

    fn query_message(&self, req: &RemotingCommand) -> Reply {
        let f = Fields(&req.ext_fields);
        let topic = f.str("topic")?;
        let key = f.str("key")?;
        let max: usize = f.parse_or("maxNum", 32)?;
        let begin: i64 = f.parse_or("beginTimestamp", 0)?;
        let end: i64 = f.parse_or("endTimestamp", i64::MAX)?;
        let found: Vec<StoredMessage> = if f.get("_UNIQUE_KEY_QUERY") == Some("true") {
            self.broker
                .store
                .lookup_by_msg_id(topic, key)
                .into_iter()
                .collect()
        } else {
            self.broker.store.lookup_by_key(topic, key, max, begin, end)
        };
        if found.is_empty() {
            return Err(refuse(
                rs::QUERY_NOT_FOUND,
                "can not find message, maybe time range not correct",
            ));
        }
        let mut body = Vec::new();
        for m in &found {
            body.extend_from_slice(&record::encode_stored(m));
        }
        let last = found.iter().map(|m| m.store_timestamp).max().unwrap_or(0);
        Ok(ok_with(
            req,
            &[
                ("indexLastUpdateTimestamp", last.to_string()),
                ("indexLastUpdatePhyoffset", "0".to_owned()),
            ],
            body.into(),
        ))
    }

    fn consumer_ids(&self, group: &str) -> Vec<String> {
        let clients = self.clients.lock();
        clients
            .consumers
            .get(group)
            .map(|m| {
                m.iter()
                    .filter(|(_, c)| !c.conn.is_closed())
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tells every consumer of a group to rebalance now (NOTIFY_CONSUMER_IDS_CHANGED).
    async fn notify_group_changed(&self, group: &str) {
        let conns: Vec<Arc<Connection>> = self
            .clients
            .lock()
            .consumers
            .get(group)
            .map(|m| m.values().map(|c| Arc::clone(&c.conn)).collect())
            .unwrap_or_default();
        for c in conns {
            let req = conn::request(
                rq::NOTIFY_CONSUMER_IDS_CHANGED,
                [("consumerGroup", group.to_owned())],
            );
            let _ = c.oneway(req).await;
        }
    }

    async fn heartbeat(self: &Arc<Self>, conn: &Arc<Connection>, req: &RemotingCommand) -> Reply {
        let hb: HeartbeatData = body::from_body(&req.body)
            .map_err(|e| refuse(rs::SYSTEM_ERROR, format!("malformed heartbeat body: {e}")))?;
        // Keeps the client's auto-renewed pops invisible (clients behind a proxy included).
        self.broker.client_seen(&hb.client_id);
        let now = Instant::now();
        let mut changed_groups = Vec::new();
        for c in &hb.consumer_data_set {
            self.broker.group(&c.group_name)?;
            if c.message_model != "BROADCASTING" {
                self.ensure_system_topic(&format!("{RETRY_PREFIX}{}", c.group_name))?;
            }
            let mut clients = self.clients.lock();
            let members = clients.consumers.entry(c.group_name.clone()).or_default();
            let entry = ConsumerEntry {
                conn: Arc::clone(conn),
                data: c.clone(),
                last_seen: now,
                language: req.language.clone(),
                version: req.version,
            };
            let previous = members.insert(hb.client_id.clone(), entry);
            let changed = match previous {
                None => true,
                Some(p) => {
                    p.conn.id != conn.id || p.data.subscription_data_set != c.subscription_data_set
                }
            };
            if changed {
                changed_groups.push(c.group_name.clone());
            }
        }
        for p in &hb.producer_data_set {
            let fresh = self
                .clients
                .lock()
                .producers
                .entry(p.group_name.clone())
                .or_default()
                .insert(hb.client_id.clone(), (Arc::clone(conn), now))
                .is_none_or(|(c, _)| c.id != conn.id);
            if fresh {
                self.register_checks(conn, &hb.client_id, &p.group_name);
            }
        }
        for g in changed_groups {
            tracing::info!(group = %g, client = %hb.client_id, peer = %conn.peer, "consumer joined or changed its subscription");
            self.notify_group_changed(&g).await;
        }
        Ok(ok(req))
    }

    /// Routes transaction check-backs for `group`'s half messages to this producer connection
    /// (CHECK_TRANSACTION_STATE, oneway, with the half message as the body).
    fn register_checks(&self, conn: &Arc<Connection>, client_id: &str, group: &str) {
        let (tx, mut rx) = mpsc::channel::<CheckRequest>(64);
        self.broker.register_group_producer(client_id, group, tx);
        let conn = Arc::clone(conn);
        tokio::spawn(async move {
            while let Some(check) = rx.recv().await {
                if conn.is_closed() {
                    break;
                }
                let half = &check.message;
                let mut real = half.clone();
                real.topic = half
                    .property(prop::REAL_TOPIC)
                    .unwrap_or_default()
                    .to_owned();
                real.queue_id = half
                    .property(prop::REAL_QID)
                    .and_then(|q| q.parse().ok())
                    .unwrap_or(0);
                let uniq = half
                    .property(properties::UNIQ_KEY)
                    .unwrap_or_default()
                    .to_owned();
                let mut req = conn::request(
                    rq::CHECK_TRANSACTION_STATE,
                    [
                        ("tranStateTableOffset", half.queue_offset.to_string()),
                        ("commitLogOffset", half.physical_offset.to_string()),
                        ("msgId", uniq),
                        ("transactionId", check.transaction_id.clone()),
                        ("offsetMsgId", half.offset_msg_id()),
                    ],
                );
                req.body = record::encode_stored(&real).into();
                if conn.oneway(req).await.is_err() {
                    break;
                }
            }
        });
    }

    /// POP_MESSAGE: a pop-mode receive with long polling. Each message carries its receipt
    /// handle in [`POP_CK`] and its delivery attempt as `reconsumeTimes + 1`.
    async fn pop(&self, req: &RemotingCommand) -> Reply {
        let f = Fields(&req.ext_fields);
        let group = f.str("consumerGroup")?;
        let topic = f.str("topic")?;
        let queue: i32 = f.parse_or("queueId", -1)?;
        let expression_type = f.get("expType").unwrap_or("TAG");
        if !expression_type.eq_ignore_ascii_case("TAG") {
            return Err(refuse(
                rs::SUBSCRIPTION_PARSE_FAILED,
                format!("filter expression type {expression_type} is not supported; use TAG"),
            ));
        }
        let filter = TagFilter::parse_tag(f.get("exp").unwrap_or("*"))
            .map_err(|e| refuse(rs::SUBSCRIPTION_PARSE_FAILED, e.to_string()))?;
        let auto_renew_for: Option<Arc<str>> = f.get("autoRenewFor").map(Arc::from);
        if let Some(c) = &auto_renew_for {
            self.broker.client_seen(c);
        }
        let invisible = Duration::from_millis(f.parse("invisibleTime")?);
        let request = crate::service::ReceiveRequest {
            group,
            topic,
            queue_id: (queue >= 0).then_some(queue),
            max: f.parse_or::<usize>("maxMsgNums", 32)?.clamp(1, 1024),
            invisible,
            filter,
            long_polling: Duration::from_millis(f.parse_or("pollTime", 0)?).min(MAX_SUSPEND),
            auto_renew_for,
        };
        let deliveries = self.broker.receive(&request).await?;
        let mut body = BytesMut::new();
        for d in &deliveries {
            let mut m = d.message.clone();
            m.properties = properties::with(&m.properties, POP_CK, &d.handle.encode());
            m.reconsume_times = d.handle.attempt.saturating_sub(1) as i32;
            body.extend_from_slice(&record::encode_stored(&m));
        }
        let fields = [
            ("popTime", now_millis().to_string()),
            ("invisibleTime", invisible.as_millis().to_string()),
            ("reviveQid", "0".to_owned()),
            ("restNum", "0".to_owned()),
        ];
        let mut r = ok_with(req, &fields, body.freeze());
        if deliveries.is_empty() {
            r.code = rs::POLLING_TIMEOUT;
            r.remark = Some("no new message".into());
        }
        Ok(r)
    }

    async fn send_back(&self, req: &RemotingCommand) -> Reply {
        let f = Fields(&req.ext_fields);
        let group = f.str("group")?;
        let offset: u64 = f.parse("offset")?;
        let delay_level: i32 = f.parse_or("delayLevel", 0)?;
        let g = self.broker.group(group)?;
        let max_reconsume: i32 = f.parse_or(
            "maxReconsumeTimes",
            g.max_delivery_attempts.saturating_sub(1) as i32,
        )?;
        let Some(m) = self.broker.store.read_message(offset) else {
            return Err(refuse(
                rs::SYSTEM_ERROR,
                format!("look message by offset failed, {offset}"),
            ));
        };
        let mut props = m.properties.clone();
        if properties::get(&props, prop::RETRY_TOPIC).is_none() {
            props = properties::with(&props, prop::RETRY_TOPIC, &m.topic);
        }
        if properties::get(&props, prop::ORIGIN_MESSAGE_ID).is_none() {
            let origin = f
                .get("originMsgId")
                .map(str::to_owned)
                .unwrap_or_else(|| m.offset_msg_id());
            props = properties::with(&props, prop::ORIGIN_MESSAGE_ID, &origin);
        }
        let reconsume_times = m.reconsume_times + 1;
        let (topic, at) = if reconsume_times > max_reconsume || delay_level < 0 {
            (format!("{DLQ_PREFIX}{group}"), None)
        } else {
            // As Apache's broker: the first retry waits level 3 (10 s), each next one longer.
            let level = if delay_level == 0 {
                3 + m.reconsume_times
            } else {
                delay_level
            };
            let idx = (level.max(1) as usize).min(DELAY_LEVELS.len()) - 1;
            (
                format!("{RETRY_PREFIX}{group}"),
                Some(now_millis() + DELAY_LEVELS[idx] as i64 * 1000),
            )
        };
        self.ensure_system_topic(&topic)?;
        if let Some(at) = at {
            props = properties::with(&props, keys::TIMER_DELIVER_MS, &at.to_string());
        } else {
            tracing::info!(group, topic = %m.topic, offset, reconsume_times, "message moved to the dead-letter queue");
        }
        let msg = Message {
            topic,
            queue_id: 0,
            flag: m.flag,
            sys_flag: m.sys_flag,
            born_timestamp: m.born_timestamp,
            born_host: m.born_host,
            reconsume_times,
            prepared_transaction_offset: 0,
            body: m.body.clone(),
            properties: props,
        };
        self.broker.send(vec![msg]).await?;
        Ok(ok(req))
    }

    async fn end_transaction(&self, req: &RemotingCommand) -> Reply {
        let f = Fields(&req.ext_fields);
        let kind: i32 = f.parse("commitOrRollback")?;
        let offset: u64 = f.parse("commitLogOffset")?;
        let commit = match kind {
            TRANSACTION_COMMIT => true,
            TRANSACTION_ROLLBACK => false,
            // "Unknown": the producer does not know yet; the broker checks back later.
            _ => return Ok(ok(req)),
        };
        let id = self.broker.transaction_id(offset);
        match self.broker.end_transaction(&id, commit).await {
            Ok(()) => Ok(ok(req)),
            Err(e @ ServiceError::InvalidTransactionId(_)) => {
                Err(refuse(rs::SYSTEM_ERROR, e.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn lock(&self, req: &RemotingCommand, lock: bool) -> Reply {
        let body: LockBatchRequestBody = body::from_body(&req.body)
            .map_err(|e| refuse(rs::SYSTEM_ERROR, format!("malformed lock body: {e}")))?;
        let now = Instant::now();
        let mut locks = self.locks.lock();
        let mut granted = Vec::new();
        for mq in body.mq_set {
            let key = (body.consumer_group.clone(), mq.topic.clone(), mq.queue_id);
            if lock {
                let free = match locks.get(&key) {
                    None => true,
                    Some((holder, expiry)) => *holder == body.client_id || *expiry <= now,
                };
                if free {
                    locks.insert(key, (body.client_id.clone(), now + LOCK_TTL));
                    granted.push(mq);
                }
            } else if locks.get(&key).is_some_and(|(h, _)| *h == body.client_id) {
                locks.remove(&key);
            }
        }
        let response = LockBatchResponseBody {
            lock_ok_mq_set: granted,
        };
        Ok(ok_with(
            req,
            &[],
            if lock {
                body::to_body(&response)
            } else {
                Bytes::new()
            },
        ))
    }

    fn create_topic(&self, req: &RemotingCommand) -> Reply {
        let f = Fields(&req.ext_fields);
        let name = f.str("topic")?;
        let read: u32 = f.parse_or("readQueueNums", 8)?;
        let write: u32 = f.parse_or("writeQueueNums", 8)?;
        let existing = self.broker.metadata.topic(name);
        let mut message_type = existing
            .as_ref()
            .map_or(TopicMessageType::Normal, |t| t.message_type);
        if f.get("order") == Some("true") {
            message_type = TopicMessageType::Fifo;
        }
        if let Some(attrs) = f.get("attributes") {
            // "+message.type=FIFO,+other=x" (5.x mqadmin -a).
            for a in attrs.split(',') {
                if let Some(v) = a.trim().strip_prefix("+message.type=") {
                    message_type = v.parse().map_err(|e: String| refuse(rs::SYSTEM_ERROR, e))?;
                }
            }
        }
        let topic = TopicConfig {
            name: name.to_owned(),
            queues: read.max(write),
            message_type,
        };
        self.broker
            .metadata
            .put_topic(topic)
            .map_err(|e| refuse(rs::SYSTEM_ERROR, e.to_string()))?;
        tracing::info!(
            topic = name,
            queues = read.max(write),
            ?message_type,
            "topic created or updated over remoting"
        );
        self.topics_changed.notify_one();
        Ok(ok(req))
    }

    fn runtime_info(&self) -> KvTable {
        let o = self.broker.store.log_offsets();
        let m = &self.broker.metrics;
        let put = m.put_total.get();
        let got = m.get_total.get();
        let mut t = BTreeMap::new();
        let mut put_kv = |k: &str, v: String| {
            t.insert(k.to_owned(), v);
        };
        put_kv("brokerVersionDesc", "V5_3_0".into());
        put_kv("brokerVersion", conn::ROCKETMQ_VERSION.to_string());
        put_kv(
            "bootTimestamp",
            (now_millis() - self.started.elapsed().as_millis() as i64).to_string(),
        );
        put_kv(
            "runtime",
            format!("[ {} seconds ]", self.started.elapsed().as_secs()),
        );
        put_kv("msgPutTotalTodayNow", put.to_string());
        put_kv("msgGetTotalTodayNow", got.to_string());
        put_kv("msgPutTotalYesterdayMorning", "0".into());
        put_kv("msgGetTotalYesterdayMorning", "0".into());
        put_kv("msgPutTotalTodayMorning", "0".into());
        put_kv("msgGetTotalTodayMorning", "0".into());
        put_kv("putTps", "0.0 0.0 0.0".into());
        put_kv("getTransferredTps", "0.0 0.0 0.0".into());
        put_kv("getTransferedTps", "0.0 0.0 0.0".into());
        put_kv("commitLogMinOffset", o.min.to_string());
        put_kv("commitLogMaxOffset", o.written.to_string());
        put_kv("commitLogDiskRatio", "0.0".into());
        put_kv("commitLogDirCapacity", "Total : 0, Free : 0.".into());
        put_kv(
            "dispatchBehindBytes",
            o.written.saturating_sub(o.dispatched).to_string(),
        );
        put_kv("pageCacheLockTimeMills", "0".into());
        put_kv("sendThreadPoolQueueSize", "0".into());
        put_kv("pullThreadPoolQueueSize", "0".into());
        put_kv("earliestMessageTimeStamp", "0".into());
        put_kv(
            "remainHowManyDataToFlush",
            format!("{} B", o.written.saturating_sub(o.flushed)),
        );
        put_kv("brokerName", self.name().to_owned());
        put_kv("brokerAddr", self.advertised.clone());
        put_kv("cluster", self.cluster.clone());
        KvTable { table: t }
    }

    fn topic_stats(&self, req: &RemotingCommand) -> Reply {
        let topic = Fields(&req.ext_fields).str("topic")?;
        let config = self.broker.topic(topic)?;
        let mut entries = Vec::new();
        for q in 0..config.queues as i32 {
            let min = self.broker.store.min_offset(topic, q)?;
            let max = self.broker.store.max_offset(topic, q)?;
            entries.push(format!(
                "{}:{}",
                mq_key(topic, self.name(), q),
                serde_json::json!({"minOffset": min, "maxOffset": max, "lastUpdateTimestamp": 0})
            ));
        }
        let body = format!("{{\"offsetTable\":{{{}}}}}", entries.join(","));
        Ok(ok_with(req, &[], body.into()))
    }

    fn consume_stats(&self, req: &RemotingCommand) -> Reply {
        let f = Fields(&req.ext_fields);
        let group = f.str("consumerGroup")?;
        let only = f.get("topic").filter(|t| !t.is_empty());
        let offsets = self.broker.store.consumer_offsets().group_offsets(group);
        let mut entries = Vec::new();
        for (topic, q, committed) in offsets {
            if only.is_some_and(|t| t != topic) {
                continue;
            }
            let max = self.broker.store.max_offset(&topic, q)?;
            entries.push(format!(
                "{}:{}",
                mq_key(&topic, self.name(), q),
                serde_json::json!({"brokerOffset": max, "consumerOffset": committed, "pullOffset": committed, "lastTimestamp": 0})
            ));
        }
        if entries.is_empty() && only.is_some() {
            return Err(refuse(
                rs::SYSTEM_ERROR,
                format!(
                    "group {group} has no offsets on topic {}",
                    only.unwrap_or_default()
                ),
            ));
        }
        let body = format!(
            "{{\"consumeTps\":0.0,\"offsetTable\":{{{}}}}}",
            entries.join(",")
        );
        Ok(ok_with(req, &[], body.into()))
    }

    fn consumer_connections(&self, req: &RemotingCommand) -> Reply {
        let group = Fields(&req.ext_fields).str("consumerGroup")?;
        let clients = self.clients.lock();
        let Some(members) = clients.consumers.get(group).filter(|m| !m.is_empty()) else {
            return Err(refuse(
                206, // CONSUMER_NOT_ONLINE
                format!("the consumer group[{group}] not online"),
            ));
        };
        let mut set = Vec::new();
        let mut subscriptions = BTreeMap::new();
        let mut first: Option<&ConsumerData> = None;
        for (id, c) in members {
            set.push(serde_json::json!({
                "clientId": id,
                "clientAddr": c.conn.peer.to_string(),
                "language": c.language,
                "version": c.version,
            }));
            for s in &c.data.subscription_data_set {
                subscriptions.insert(s.topic.clone(), s.clone());
            }
            first.get_or_insert(&c.data);
        }
        let first = first.expect("members is not empty");
        let body = serde_json::json!({
            "connectionSet": set,
            "subscriptionTable": subscriptions,
            "consumeType": first.consume_type,
            "messageModel": first.message_model,
            "consumeFromWhere": first.consume_from_where,
        });
        Ok(ok_with(req, &[], body.to_string().into()))
    }

    /// Drops consumers and producers whose connection closed or who stopped heartbeating, and
    /// expired queue locks; tells the groups that changed.
    pub async fn scan_clients(&self) {
        let now = Instant::now();
        let mut changed = Vec::new();
        {
            let mut clients = self.clients.lock();
            for (g, members) in clients.consumers.iter_mut() {
                let before = members.len();
                members.retain(|_, c| {
                    !c.conn.is_closed() && now.duration_since(c.last_seen) < CLIENT_TIMEOUT
                });
                if members.len() != before {
                    changed.push(g.clone());
                }
            }
            clients.consumers.retain(|_, m| !m.is_empty());
            for members in clients.producers.values_mut() {
                members.retain(|_, (c, seen)| {
                    !c.is_closed() && now.duration_since(*seen) < CLIENT_TIMEOUT
                });
            }
            clients.producers.retain(|_, m| !m.is_empty());
        }
        self.locks.lock().retain(|_, (_, expiry)| *expiry > now);
        for g in changed {
            tracing::info!(group = %g, "consumer left; asking the group to rebalance");
            self.notify_group_changed(&g).await;
        }
    }
}

impl Handler for BrokerHandler {
    async fn request(
        self: Arc<Self>,
        conn: Arc<Connection>,
        req: RemotingCommand,
    ) -> Option<RemotingCommand> {
        if self.guard.is_enabled()
            && let Err(e) = self.guard.check(
                "remoting",
                Proof::Remoting {
                    fields: &req.ext_fields,
                    version: req.version,
                    body: &req.body,
                },
                Some(conn.peer.ip()),
                &super::auth::wants(&req),
            )
        {
            return Some(RemotingCommand::response_to(
                &req,
                rs::NO_PERMISSION,
                e.to_string(),
            ));
        }
        if let Some(r) = super::auth::handle(&self.guard, &req) {
            return Some(r);
        }
        let response = match self.dispatch(&conn, &req).await {
            Ok(r) => r,
            Err(Refusal(code, remark)) => {
                tracing::debug!(code = req.code, peer = %conn.peer, response = code, %remark, "remoting request refused");
                RemotingCommand::response_to(&req, code, remark)
            }
        };
        Some(response)
    }

    fn closed(&self, conn: &Arc<Connection>) {
        let mut clients = self.clients.lock();
        let mut gone = Vec::new();
        for members in clients.producers.values_mut() {
            members.retain(|id, (c, _)| {
                let keep = c.id != conn.id;
                if !keep {
                    gone.push(id.clone());
                }
                keep
            });
        }
        // Consumers on the connection leave their groups now; the rest of each group is told
        // to rebalance (rather than at the next client scan).
        let mut notify = Vec::new();
        for (g, members) in clients.consumers.iter_mut() {
            let before = members.len();
            members.retain(|_, c| c.conn.id != conn.id);
            if members.len() != before {
                let rest: Vec<Arc<Connection>> =
                    members.values().map(|c| Arc::clone(&c.conn)).collect();
                notify.push((g.clone(), rest));
            }
        }
        clients.consumers.retain(|_, m| !m.is_empty());
        drop(clients);
        for id in gone {
            self.broker.unregister_producer(&id);
        }
        if !notify.is_empty() {
            tokio::spawn(async move {
                for (group, conns) in notify {
                    tracing::info!(%group, "consumer connection closed; asking the group to rebalance");
                    for c in conns {
                        let req = conn::request(
                            rq::NOTIFY_CONSUMER_IDS_CHANGED,
                            [("consumerGroup", group.clone())],
                        );
                        let _ = c.oneway(req).await;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn batch_entry(body: &[u8], props: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let total = 4 + 4 + 4 + 4 + 4 + body.len() + 2 + props.len();
        b.put_i32(total as i32);
        b.put_i32(0);
        b.put_i32(0);
        b.put_i32(7);
        b.put_i32(body.len() as i32);
        b.put_slice(body);
        b.put_i16(props.len() as i16);
        b.put_slice(props);
        b
    }

    #[test]
    fn batch_bodies_decode_and_truncations_are_refused() {
        let mut all = batch_entry(b"one", b"UNIQ_KEY\x01a\x02");
        all.extend(batch_entry(b"two", b""));
        let got = decode_batch(Bytes::from(all.clone())).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 7);
        assert_eq!(&got[0].1[..], b"one");
        assert_eq!(&got[0].2[..], b"UNIQ_KEY\x01a\x02");
        assert_eq!(&got[1].1[..], b"two");
        for cut in 1..all.len() {
            if cut == all.len() / 2 + 1 {
                continue;
            }
            let r = decode_batch(Bytes::from(all[..cut].to_vec()));
            if let Ok(v) = r {
                // Only a cut exactly between the two messages parses.
                assert_eq!(v.len(), 1, "cut at {cut}");
            }
        }
        assert!(decode_batch(Bytes::new()).is_err());
    }

    #[test]
    fn delay_levels_and_delay_properties_become_delivery_times() {
        let p = properties::encode([(prop::DELAY, "3")]);
        assert_eq!(deliver_at(&p, 1000).unwrap(), Some(11_000));
        let p = properties::encode([(prop::DELAY, "99")]);
        assert_eq!(deliver_at(&p, 0).unwrap(), Some(7_200_000));
        let p = properties::encode([(prop::TIMER_DELAY_SEC, "2")]);
        assert_eq!(deliver_at(&p, 0).unwrap(), Some(2000));
        let p = properties::encode([(prop::DELAY, "x")]);
        assert!(deliver_at(&p, 0).is_err());
        assert_eq!(deliver_at(b"", 0).unwrap(), None);
    }

    #[test]
    fn v2_send_headers_use_letters() {
        assert_eq!(send_field(true, "topic"), "b");
        assert_eq!(send_field(false, "topic"), "topic");
        assert_eq!(send_field(true, "maxReconsumeTimes"), "l");
    }
}
