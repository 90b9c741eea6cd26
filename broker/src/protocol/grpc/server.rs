//! `apache.rocketmq.v2.MessagingService` over tonic: converts between the wire types and the
//! service layer, and maps errors to the protocol's status codes. Holds no state of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use super::auth::{Wants, settings_wants};
use super::backend::{Backend, OffsetPolicy, Pull, QueueSet, Receive, Received};
use super::pb::{self, Code, messaging_service_server::MessagingService};
use crate::auth::guard::{Guard, Proof, Refused, Want};
use crate::service::filter::{FilterError, TagFilter};
use crate::service::metadata::TopicMessageType;
use crate::service::transaction::CheckRequest;
use crate::service::{ServiceError, keys};
use crate::store::record::sys_flag;
use crate::store::{GetStatus, Message, StoreError, StoredMessage, properties};

type GrpcResult<T> = Result<Response<T>, GrpcStatus>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, GrpcStatus>> + Send>>;

/// Largest gRPC message the server decodes: a batch of 4 MiB messages fits.
pub const MAX_DECODING_MESSAGE_SIZE: usize = 130 * 1024 * 1024;

/// Invisible time of a receive that names none (Apache proxy's `defaultInvisibleTimeMills`).
const DEFAULT_INVISIBLE: Duration = Duration::from_secs(60);

pub struct GrpcService<B> {
    backend: Arc<B>,
    /// Address put into routes when the client did not say which one it used.
    advertised: SocketAddr,
    /// Authentication and authorization, before any handler runs.
    guard: Arc<Guard>,
}

impl<B: Backend> GrpcService<B> {
    pub fn new(backend: Arc<B>, advertised: SocketAddr, guard: Arc<Guard>) -> Self {
        GrpcService {
            backend,
            advertised,
            guard,
        }
    }

    /// Checks a request's credentials and what it touches; the refusal is the status to
    /// answer with (UNAUTHORIZED or FORBIDDEN, as Apache's proxy answers).
    fn authorize<T: Wants>(&self, req: &Request<T>) -> Result<(), pb::Status> {
        if !self.guard.is_enabled() {
            return Ok(());
        }
        self.check(req, &req.get_ref().wants())
    }

    /// The user a request's `authorization` header names (once it has been checked).
    fn guard_user<T>(&self, req: &Request<T>) -> Option<String> {
        let h = req
            .metadata()
            .get(crate::auth::AUTHORIZATION)?
            .to_str()
            .ok()?;
        crate::auth::parse_authorization(h)
            .ok()
            .map(|a| a.access_key)
    }

    fn check<T>(&self, req: &Request<T>, wants: &[Want]) -> Result<(), pb::Status> {
        let header = |k: &str| req.metadata().get(k).and_then(|v| v.to_str().ok());
        let proof = Proof::Grpc {
            authorization: header(crate::auth::AUTHORIZATION),
            date_time: header(crate::auth::DATE_TIME),
        };
        let source = req.remote_addr().map(|a| a.ip());
        match self.guard.check("grpc", proof, source, wants) {
            Ok(_) => Ok(()),
            Err(e @ Refused::Unauthenticated(_)) => Err(status(Code::Unauthorized, e.to_string())),
            Err(e @ Refused::Forbidden(_)) => Err(status(Code::Forbidden, e.to_string())),
        }
    }
}

/// Answers a refused request with a response that carries only the status.
macro_rules! refuse_unless_authorized {
    ($self:ident, $req:ident, $resp:ident) => {
        if let Err(s) = $self.authorize(&$req) {
            // Some responses have only the status.
            #[allow(clippy::needless_update)]
            let response = pb::$resp {
                status: Some(s),
                ..Default::default()
            };
            return Ok(Response::new(response));
        }
    };
}

fn status(code: Code, message: impl Into<String>) -> pb::Status {
    pb::Status {
        code: code as i32,
        message: message.into(),
    }
}

fn ok() -> pb::Status {
    status(Code::Ok, "OK")
}

/// The wire status code for a service error.
fn code_of(e: &ServiceError) -> Code {
    match e {
        ServiceError::TopicNotFound(_) => Code::TopicNotFound,
        ServiceError::IllegalTopic(_) => Code::IllegalTopic,
        ServiceError::IllegalGroup(_) => Code::IllegalConsumerGroup,
        ServiceError::NoSuchQueue { .. } => Code::BadRequest,
        ServiceError::BodyEmpty => Code::MessageBodyEmpty,
        ServiceError::BodyTooLarge { .. } => Code::MessageBodyTooLarge,
        ServiceError::MessageTypeConflict(_) => Code::MessagePropertyConflictWithType,
        ServiceError::Unsupported(_) => Code::NotImplemented,
        ServiceError::IllegalDeliveryTime(_) => Code::IllegalDeliveryTime,
        ServiceError::InvalidTransactionId(_) => Code::InvalidTransactionId,
        ServiceError::InvalidReceiptHandle => Code::InvalidReceiptHandle,
        ServiceError::IllegalInvisibleTime(_) => Code::IllegalInvisibleTime,
        ServiceError::Filter(_) => Code::IllegalFilterExpression,
        ServiceError::Metadata(_) => Code::BadRequest,
        ServiceError::Unavailable(_) => Code::ProxyTimeout,
        // Remoting codes: MESSAGE_ILLEGAL, SUBSCRIPTION_PARSE_FAILED.
        ServiceError::Upstream { code: 13 | 23, .. } => Code::BadRequest,
        ServiceError::Upstream { code: 2 | 14, .. } => Code::TooManyRequests,
        ServiceError::Upstream { .. } => Code::InternalServerError,
        ServiceError::Store(StoreError::MessageTooLarge { .. }) => Code::MessageBodyTooLarge,
        ServiceError::Store(StoreError::PropertiesTooLarge { .. }) => {
            Code::MessagePropertiesTooLarge
        }
        ServiceError::Store(StoreError::InvalidTopic { .. }) => Code::IllegalTopic,
        ServiceError::Store(StoreError::InvalidQueueId(_)) => Code::BadRequest,
        ServiceError::Store(StoreError::MalformedProperties) => Code::IllegalMessagePropertyKey,
        ServiceError::Store(StoreError::FlushTimeout(_)) => Code::MasterPersistenceTimeout,
        ServiceError::Store(StoreError::NotPrimary)
        | ServiceError::Store(StoreError::NotEnoughInSyncReplicas { .. }) => Code::HaNotAvailable,
        ServiceError::Store(StoreError::ReplicationTimeout(_)) => Code::SlavePersistenceTimeout,
        ServiceError::Store(_) => Code::InternalServerError,
    }
}

fn error_status(e: &ServiceError) -> pb::Status {
    let code = code_of(e);
    if code == Code::InternalServerError {
        tracing::error!(error = %e, "request failed");
    }
    status(code, e.to_string())
}

fn client_id<T>(req: &Request<T>) -> Option<&str> {
    req.metadata()
        .get("x-mq-client-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

fn require_client_id<T>(req: &Request<T>) -> Result<(), pb::Status> {
    match client_id(req) {
        Some(_) => Ok(()),
        None => Err(status(
            Code::ClientIdRequired,
            "the x-mq-client-id header is required",
        )),
    }
}
fn name(r: &Option<pb::Resource>) -> &str {
    r.as_ref().map_or("", |r| r.name.as_str())
}

fn duration_of(d: &Option<prost_types::Duration>) -> Option<Duration> {
    d.as_ref().and_then(|d| {
        (d.seconds >= 0 && d.nanos >= 0).then(|| Duration::new(d.seconds as u64, d.nanos as u32))
    })
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn pb_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn millis_of(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// The gRPC deadline the client set (`grpc-timeout`), if any.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Properties the broker itself manages; everything else is a user property.
const SYSTEM_KEYS: &[&str] = &[
    properties::KEYS,
    properties::TAGS,
    properties::UNIQ_KEY,
    keys::SHARDING_KEY,
    keys::TIMER_DELIVER_MS,
    keys::TRAN_MSG,
    crate::service::timer::REAL_TOPIC,
    crate::service::timer::REAL_QID,
    crate::protocol::remoting::broker::POP_CK,
];

fn message_type_of(sp: &pb::SystemProperties) -> TopicMessageType {
    match pb::MessageType::try_from(sp.message_type).unwrap_or(pb::MessageType::Normal) {
        pb::MessageType::Fifo => TopicMessageType::Fifo,
        pb::MessageType::Delay => TopicMessageType::Delay,
        pb::MessageType::Transaction => TopicMessageType::Transaction,
        _ if sp.message_group.is_some() => TopicMessageType::Fifo,
        _ if sp.delivery_timestamp.is_some() => TopicMessageType::Delay,
        _ => TopicMessageType::Normal,
    }
}

/// Converts a wire message into what the store keeps; checks property keys.
fn to_store_message(
    m: pb::Message,
    born_host: SocketAddr,
) -> Result<(Message, String, TopicMessageType), pb::Status> {
    let sp = m.system_properties.unwrap_or_default();
    let topic = name(&m.topic).to_owned();
    let bad_text = |s: &str| s.contains(['\u{1}', '\u{2}']);
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(m.user_properties.len() + 4);
    for (k, v) in m.user_properties {
        if k.is_empty() || bad_text(&k) || SYSTEM_KEYS.contains(&k.as_str()) {
            return Err(status(
                Code::IllegalMessagePropertyKey,
                format!("user property key {k:?} is empty, reserved or has control characters"),
            ));
        }
        if bad_text(&v) {
            return Err(status(
                Code::BadRequest,
                format!("user property {k:?} has control characters"),
            ));
        }
        pairs.push((k, v));
    }
    if let Some(tag) = sp.tag.as_ref().filter(|t| !t.is_empty()) {
        if bad_text(tag) || tag.contains("||") || tag.trim().is_empty() {
            return Err(status(
                Code::IllegalMessageTag,
                format!("invalid tag {tag:?}"),
            ));
        }
        pairs.push((properties::TAGS.into(), tag.clone()));
    }
    if !sp.keys.is_empty() {
        if sp
            .keys
            .iter()
            .any(|k| k.is_empty() || bad_text(k) || k.contains(' '))
        {
            return Err(status(
                Code::IllegalMessageKey,
                "message keys must be non-empty words",
            ));
        }
        pairs.push((properties::KEYS.into(), sp.keys.join(" ")));
    }
    if sp.message_id.is_empty() || bad_text(&sp.message_id) {
        return Err(status(Code::IllegalMessageId, "message_id is required"));
    }
    pairs.push((properties::UNIQ_KEY.into(), sp.message_id.clone()));
    if let Some(g) = &sp.message_group {
        if g.is_empty() || bad_text(g) {
            return Err(status(
                Code::IllegalMessageGroup,
                format!("invalid message group {g:?}"),
            ));
        }
        pairs.push((keys::SHARDING_KEY.into(), g.clone()));
    }
    if let Some(t) = &sp.delivery_timestamp {
        pairs.push((keys::TIMER_DELIVER_MS.into(), millis_of(t).to_string()));
    }
    let message_type = message_type_of(&sp);
    if message_type == TopicMessageType::Transaction {
        pairs.push((keys::TRAN_MSG.into(), "true".into()));
    }
    let mut sys = 0;
    if pb::Encoding::try_from(sp.body_encoding) == Ok(pb::Encoding::Gzip) {
        sys |= sys_flag::COMPRESSED;
    }
    let msg = Message {
        topic,
        queue_id: sp.queue_id,
        flag: 0,
        sys_flag: sys,
        born_timestamp: sp.born_timestamp.as_ref().map_or(0, millis_of),
        born_host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        body: m.body,
        properties: properties::encode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    };
    Ok((msg, sp.message_id, message_type))
}

/// Converts a stored message to the wire, as a delivery (with handle) or a plain read.
fn to_pb_message(m: &StoredMessage, handle: Option<(&str, u32, Duration)>) -> pb::Message {
    let mut user_properties = HashMap::new();
    for (k, v) in properties::iter(&m.properties) {
        if !SYSTEM_KEYS.contains(&k) {
            user_properties.insert(k.to_owned(), v.to_owned());
        }
    }
    let group = m.property(keys::SHARDING_KEY).map(str::to_owned);
    let delivery = m
        .property(keys::TIMER_DELIVER_MS)
        .and_then(|v| v.parse::<i64>().ok());
    let message_type = if m.property(keys::TRAN_MSG).is_some() {
        pb::MessageType::Transaction
    } else if group.is_some() {
        pb::MessageType::Fifo
    } else if delivery.is_some() {
        pb::MessageType::Delay
    } else {
        pb::MessageType::Normal
    };
    let encoding = if m.sys_flag & sys_flag::COMPRESSED != 0 {
        pb::Encoding::Gzip
    } else {
        pb::Encoding::Identity
    };
    let sp = pb::SystemProperties {
        tag: m.property(properties::TAGS).map(str::to_owned),
        keys: m
            .property(properties::KEYS)
            .map(|k| {
                k.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        message_id: m
            .property(properties::UNIQ_KEY)
            .map(str::to_owned)
            .unwrap_or_else(|| m.offset_msg_id()),
        body_digest: Some(pb::Digest {
            r#type: pb::DigestType::Crc32 as i32,
            checksum: format!("{:08X}", m.body_crc),
        }),
        body_encoding: encoding as i32,
        message_type: message_type as i32,
        born_timestamp: Some(pb_timestamp(m.born_timestamp)),
        born_host: m.born_host.ip().to_string(),
        store_timestamp: Some(pb_timestamp(m.store_timestamp)),
        store_host: m.store_host.to_string(),
        delivery_timestamp: delivery.map(pb_timestamp),
        receipt_handle: handle.map(|(h, _, _)| h.to_owned()),
        queue_id: m.queue_id,
        queue_offset: Some(m.queue_offset as i64),
        invisible_duration: handle.map(|(_, _, d)| pb_duration(d)),
        delivery_attempt: handle.map(|(_, attempt, _)| attempt as i32),
        message_group: group,
        ..Default::default()
    };
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: m.topic.clone(),
        }),
        user_properties,
        system_properties: Some(sp),
        body: m.body.clone(),
    }
}

/// A half message as a producer's transaction checker sees it: in its real topic and queue.
fn check_message(half: &StoredMessage) -> pb::Message {
    let mut m = to_pb_message(half, None);
    if let Some(t) = half.property(crate::service::timer::REAL_TOPIC) {
        m.topic = Some(pb::Resource {
            resource_namespace: String::new(),
            name: t.to_owned(),
        });
    }
    if let Some(sp) = m.system_properties.as_mut() {
        sp.queue_id = half
            .property(crate::service::timer::REAL_QID)
            .and_then(|q| q.parse().ok())
            .unwrap_or(0);
    }
    m
}

/// The subscription filter of a receive or pull: tag expressions; SQL92 is refused.
fn tag_filter(f: Option<&pb::FilterExpression>) -> Result<TagFilter, ServiceError> {
    match f {
        Some(f) if f.r#type == pb::FilterType::Sql as i32 => {
            Err(FilterError::SqlUnsupported.into())
        }
        Some(f) => Ok(TagFilter::parse_tag(&f.expression)?),
        None => Ok(TagFilter::All),
    }
}

fn accept_types(t: TopicMessageType) -> Vec<i32> {
    vec![match t {
        TopicMessageType::Normal => pb::MessageType::Normal,
        TopicMessageType::Fifo => pb::MessageType::Fifo,
        TopicMessageType::Delay => pb::MessageType::Delay,
        TopicMessageType::Transaction => pb::MessageType::Transaction,
    } as i32]
}

impl<B: Backend> GrpcService<B> {
    fn endpoints(&self, requested: Option<pb::Endpoints>) -> pb::Endpoints {
        requested
            .filter(|e| !e.addresses.is_empty())
            .unwrap_or_else(|| pb::Endpoints {
                scheme: if self.advertised.is_ipv6() {
                    pb::AddressScheme::IPv6
                } else {
                    pb::AddressScheme::IPv4
                } as i32,
                addresses: vec![pb::Address {
                    host: self.advertised.ip().to_string(),
                    port: i32::from(self.advertised.port()),
                }],
            })
    }

    fn message_queue(
        topic: &str,
        id: i32,
        set: &QueueSet,
        endpoints: &pb::Endpoints,
    ) -> pb::MessageQueue {
        use crate::protocol::remoting::body::perm;
        let permission = match (set.perm & perm::READ != 0, set.perm & perm::WRITE != 0) {
            (true, true) => pb::Permission::ReadWrite,
            (true, false) => pb::Permission::Read,
            (false, true) => pb::Permission::Write,
            (false, false) => pb::Permission::None,
        };
        pb::MessageQueue {
            topic: Some(pb::Resource {
                resource_namespace: String::new(),
                name: topic.to_owned(),
            }),
            id,
            permission: permission as i32,
            broker: Some(pb::Broker {
                name: set.broker.clone(),
                id: 0,
                endpoints: Some(endpoints.clone()),
            }),
            accept_message_types: accept_types(set.message_type),
        }
    }

    /// The merged settings the broker answers a client's Telemetry settings with.
    async fn merged_settings(&self, s: pb::Settings) -> pb::Settings {
        let mut out = pb::Settings {
            client_type: s.client_type,
            access_point: s.access_point,
            request_timeout: s
                .request_timeout
                .or(Some(pb_duration(Duration::from_secs(3)))),
            user_agent: s.user_agent,
            metric: Some(pb::Metric {
                on: false,
                endpoints: None,
            }),
            ..Default::default()
        };
        match s.pub_sub {
            Some(pb::settings::PubSub::Subscription(sub)) => {
                let group = self.backend.group(name(&sub.group)).await.ok();
                let attempts = group.as_ref().map_or(16, |g| g.max_delivery_attempts);
                // RocketMQ's retry delays: 1s 5s 10s 30s 1m 2m ... 2h.
                let next = [
                    1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800,
                    3600, 7200,
                ]
                .iter()
                .map(|s| pb_duration(Duration::from_secs(*s)))
                .collect();
                out.backoff_policy = Some(pb::RetryPolicy {
                    max_attempts: attempts as i32,
                    strategy: Some(pb::retry_policy::Strategy::CustomizedBackoff(
                        pb::CustomizedBackoff { next },
                    )),
                });
                out.pub_sub = Some(pb::settings::PubSub::Subscription(pb::Subscription {
                    fifo: Some(group.as_ref().is_some_and(|g| g.fifo)),
                    receive_batch_size: Some(32),
                    long_polling_timeout: Some(pb_duration(Duration::from_secs(20))),
                    ..sub
                }));
            }
            Some(pb::settings::PubSub::Publishing(p)) => {
                out.backoff_policy = Some(pb::RetryPolicy {
                    max_attempts: 3,
                    strategy: Some(pb::retry_policy::Strategy::ExponentialBackoff(
                        pb::ExponentialBackoff {
                            initial: Some(pb_duration(Duration::from_millis(10))),
                            max: Some(pb_duration(Duration::from_secs(1))),
                            multiplier: 2.0,
                        },
                    )),
                });
                out.pub_sub = Some(pb::settings::PubSub::Publishing(pb::Publishing {
                    topics: p.topics,
                    max_body_size: self.backend.max_body_size() as i32,
                    validate_message_type: true,
                }));
            }
            None => {}
        }
        out
    }

    fn deliveries_to_stream(
        deliveries: Vec<Received>,
        invisible: Duration,
    ) -> BoxStream<pb::ReceiveMessageResponse> {
        use pb::receive_message_response::Content;
        let mut items = Vec::with_capacity(deliveries.len() + 2);
        if deliveries.is_empty() {
            items.push(Content::Status(status(
                Code::MessageNotFound,
                "no new message",
            )));
        } else {
            items.push(Content::Status(ok()));
            for d in &deliveries {
                items.push(Content::Message(to_pb_message(
                    &d.message,
                    Some((&d.handle, d.attempt, invisible)),
                )));
            }
            items.push(Content::DeliveryTimestamp(pb_timestamp(
                crate::store::commitlog::now_millis(),
            )));
        }
        Box::pin(tokio_stream::iter(
            items
                .into_iter()
                .map(|c| Ok(pb::ReceiveMessageResponse { content: Some(c) })),
        ))
    }
}

fn one_status<T>(content: T) -> BoxStream<T>
where
    T: Send + 'static,
{
    Box::pin(tokio_stream::iter([Ok(content)]))
}

#[tonic::async_trait]
impl<B: Backend> MessagingService for GrpcService<B> {
    async fn query_route(
        &self,
        req: Request<pb::QueryRouteRequest>,
    ) -> GrpcResult<pb::QueryRouteResponse> {
        refuse_unless_authorized!(self, req, QueryRouteResponse);
        if let Err(s) = require_client_id(&req) {
            return Ok(Response::new(pb::QueryRouteResponse {
                status: Some(s),
                message_queues: vec![],
            }));
        }
        let r = req.into_inner();
        let topic = name(&r.topic);
        let sets = match self.backend.route(topic).await {
            Ok(t) => t,
            Err(e) => {
                return Ok(Response::new(pb::QueryRouteResponse {
                    status: Some(error_status(&e)),
                    message_queues: vec![],
                }));
            }
        };
        let endpoints = self.endpoints(r.endpoints);
        let message_queues = sets
            .iter()
            .flat_map(|set| {
                (0..set.queues as i32).map(|id| Self::message_queue(topic, id, set, &endpoints))
            })
            .collect();
        Ok(Response::new(pb::QueryRouteResponse {
            status: Some(ok()),
            message_queues,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> GrpcResult<pb::HeartbeatResponse> {
        refuse_unless_authorized!(self, req, HeartbeatResponse);
        if let Some(id) = client_id(&req) {
            self.backend.client_seen(id);
        }
        let s = require_client_id(&req).err().unwrap_or_else(ok);
        Ok(Response::new(pb::HeartbeatResponse { status: Some(s) }))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> GrpcResult<pb::SendMessageResponse> {
        refuse_unless_authorized!(self, req, SendMessageResponse);
        if let Err(s) = require_client_id(&req) {
            return Ok(Response::new(pb::SendMessageResponse {
                status: Some(s),
                entries: vec![],
            }));
        }
        let peer = req
            .remote_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let r = req.into_inner();
        if r.messages.is_empty() {
            return Ok(Response::new(pb::SendMessageResponse {
                status: Some(status(Code::BadRequest, "no message to send")),
                entries: vec![],
            }));
        }
        let mut msgs = Vec::with_capacity(r.messages.len());
        let mut ids = Vec::with_capacity(r.messages.len());
        for m in r.messages {
            match to_store_message(m, peer) {
                Ok((msg, id, t)) => {
                    msgs.push((msg, t));
                    ids.push(id);
                }
                Err(s) => {
                    // A batch is all or nothing.
                    return Ok(Response::new(pb::SendMessageResponse {
                        status: Some(s.clone()),
                        entries: vec![pb::SendResultEntry {
                            status: Some(s),
                            ..Default::default()
                        }],
                    }));
                }
            }
        }
        match self.backend.send(msgs).await {
            Ok(results) => {
                let entries = results
                    .into_iter()
                    .zip(ids)
                    .map(|(r, id)| pb::SendResultEntry {
                        status: Some(ok()),
                        message_id: id,
                        transaction_id: r.transaction_id.unwrap_or_default(),
                        offset: r.queue_offset as i64,
                        recall_handle: String::new(),
                    })
                    .collect();
                Ok(Response::new(pb::SendMessageResponse {
                    status: Some(ok()),
                    entries,
                }))
            }
            Err(e) => {
                let s = error_status(&e);
                Ok(Response::new(pb::SendMessageResponse {
                    status: Some(s.clone()),
                    entries: vec![pb::SendResultEntry {
                        status: Some(s),
                        ..Default::default()
                    }],
                }))
            }
        }
    }

    async fn query_assignment(
        &self,
        req: Request<pb::QueryAssignmentRequest>,
    ) -> GrpcResult<pb::QueryAssignmentResponse> {
        refuse_unless_authorized!(self, req, QueryAssignmentResponse);
        if let Err(s) = require_client_id(&req) {
            return Ok(Response::new(pb::QueryAssignmentResponse {
                status: Some(s),
                assignments: vec![],
            }));
        }
        let r = req.into_inner();
        let topic = name(&r.topic);
        let result = match self.backend.route(topic).await {
            Ok(sets) => self.backend.group(name(&r.group)).await.map(|_| sets),
            Err(e) => Err(e),
        };
        let resp = match result {
            Ok(sets) => {
                let endpoints = self.endpoints(r.endpoints);
                // Pop mode: one assignment per readable broker; queue id -1 means "any queue".
                pb::QueryAssignmentResponse {
                    status: Some(ok()),
                    assignments: sets
                        .iter()
                        .filter(|set| set.perm & crate::protocol::remoting::body::perm::READ != 0)
                        .map(|set| pb::Assignment {
                            message_queue: Some(Self::message_queue(topic, -1, set, &endpoints)),
                        })
                        .collect(),
                }
            }
            Err(e) => pb::QueryAssignmentResponse {
                status: Some(error_status(&e)),
                assignments: vec![],
            },
        };
        Ok(Response::new(resp))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        req: Request<pb::ReceiveMessageRequest>,
    ) -> GrpcResult<Self::ReceiveMessageStream> {
        use pb::receive_message_response::Content;
        let fail = |s: pb::Status| {
            Ok(Response::new(one_status(pb::ReceiveMessageResponse {
                content: Some(Content::Status(s)),
            })))
        };
        if let Err(s) = self.authorize(&req) {
            return fail(s);
        }
        if let Err(s) = require_client_id(&req) {
            return fail(s);
        }
        let deadline = grpc_timeout(&req);
        let client: Option<Arc<str>> = client_id(&req).map(Arc::from);
        if let Some(c) = &client {
            self.backend.client_seen(c);
        }
        let r = req.into_inner();
        // Push consumers send none and ask for auto-renewal: like Apache's proxy, use its
        // default invisible time and keep extending it while the client is alive.
        let invisible = duration_of(&r.invisible_duration).unwrap_or(DEFAULT_INVISIBLE);
        let filter = match tag_filter(r.filter_expression.as_ref()) {
            Ok(f) => f,
            Err(e) => return fail(error_status(&e)),
        };
        let mut long_polling =
            duration_of(&r.long_polling_timeout).unwrap_or(Duration::from_secs(20));
        if let Some(d) = deadline {
            // Answer before the client gives up on the call.
            long_polling = long_polling.min(d.saturating_sub(Duration::from_millis(500)));
        }
        let topic = r
            .message_queue
            .as_ref()
            .map_or("", |q| name(&q.topic))
            .to_owned();
        // As in Apache's proxy, the queue in a receive only picks the broker: a pop reads every
        // queue of the topic on it, so a consumer never waits on an empty queue while another
        // one has messages.
        let broker = r
            .message_queue
            .as_ref()
            .and_then(|q| q.broker.as_ref())
            .map(|b| b.name.clone())
            .filter(|b| !b.is_empty());
        let request = Receive {
            broker,
            group: name(&r.group).to_owned(),
            topic,
            max: r.batch_size.clamp(1, 1024) as usize,
            invisible,
            filter,
            expression: r
                .filter_expression
                .as_ref()
                .map_or_else(|| "*".to_owned(), |f| f.expression.clone()),
            long_polling,
            auto_renew_for: if r.auto_renew { client } else { None },
        };
        match self.backend.receive(request).await {
            Ok(deliveries) => Ok(Response::new(Self::deliveries_to_stream(
                deliveries, invisible,
            ))),
            Err(e) => fail(error_status(&e)),
        }
    }

    async fn ack_message(
        &self,
        req: Request<pb::AckMessageRequest>,
    ) -> GrpcResult<pb::AckMessageResponse> {
        refuse_unless_authorized!(self, req, AckMessageResponse);
        if let Err(s) = require_client_id(&req) {
            return Ok(Response::new(pb::AckMessageResponse {
                status: Some(s),
                entries: vec![],
            }));
        }
        let r = req.into_inner();
        let group = name(&r.group).to_owned();
        let handles: Vec<String> = r.entries.iter().map(|e| e.receipt_handle.clone()).collect();
        let outcomes = match self.backend.ack(&group, handles).await {
            Ok(o) => o,
            Err(e) => {
                return Ok(Response::new(pb::AckMessageResponse {
                    status: Some(error_status(&e)),
                    entries: vec![],
                }));
            }
        };
        let entries: Vec<pb::AckMessageResultEntry> = r
            .entries
            .iter()
            .zip(outcomes)
            .map(|(e, acked)| {
                let s = if acked {
                    ok()
                } else {
                    status(Code::InvalidReceiptHandle, "invalid receipt handle")
                };
                pb::AckMessageResultEntry {
                    message_id: e.message_id.clone(),
                    receipt_handle: e.receipt_handle.clone(),
                    status: Some(s),
                }
            })
            .collect();
        let failed: Vec<_> = entries
            .iter()
            .filter(|e| e.status.as_ref().is_some_and(|s| s.code != Code::Ok as i32))
            .collect();
        let overall = if failed.is_empty() {
            ok()
        } else if failed.len() == entries.len() {
            failed[0].status.clone().expect("set above")
        } else {
            status(Code::MultipleResults, "some acks failed")
        };
        Ok(Response::new(pb::AckMessageResponse {
            status: Some(overall),
            entries,
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> GrpcResult<pb::ForwardMessageToDeadLetterQueueResponse> {
        refuse_unless_authorized!(self, req, ForwardMessageToDeadLetterQueueResponse);
        let s = match require_client_id(&req) {
            Err(s) => s,
            Ok(()) => {
                let r = req.into_inner();
                match self
                    .backend
                    .forward_to_dead_letter_queue(name(&r.group), &r.receipt_handle)
                    .await
                {
                    Ok(()) => ok(),
                    Err(e) => error_status(&e),
                }
            }
        };
        Ok(Response::new(pb::ForwardMessageToDeadLetterQueueResponse {
            status: Some(s),
        }))
    }

    type PullMessageStream = BoxStream<pb::PullMessageResponse>;

    async fn pull_message(
        &self,
        req: Request<pb::PullMessageRequest>,
    ) -> GrpcResult<Self::PullMessageStream> {
        use pb::pull_message_response::Content;
        let fail = |s: pb::Status| {
            Ok(Response::new(one_status(pb::PullMessageResponse {
                content: Some(Content::Status(s)),
            })))
        };
        if let Err(s) = self.authorize(&req) {
            return fail(s);
        }
        if let Err(s) = require_client_id(&req) {
            return fail(s);
        }
        let r = req.into_inner();
        let Some(q) = r.message_queue.as_ref() else {
            return fail(status(Code::BadRequest, "message_queue is required"));
        };
        let topic = name(&q.topic).to_owned();
        let broker = q.broker.as_ref().map_or("", |b| b.name.as_str()).to_owned();
        if r.offset < 0 {
            return fail(status(Code::IllegalOffset, "offset must not be negative"));
        }
        let filter = match tag_filter(r.filter_expression.as_ref()) {
            Ok(f) => f,
            Err(e) => return fail(error_status(&e)),
        };
        let wait = duration_of(&r.long_polling_timeout).unwrap_or(Duration::ZERO);
        let got = match self
            .backend
            .pull(Pull {
                broker: &broker,
                group: name(&r.group),
                topic: &topic,
                queue_id: q.id,
                offset: r.offset as u64,
                max: r.batch_size.clamp(1, 1024) as usize,
                filter: &filter,
                expression: r
                    .filter_expression
                    .as_ref()
                    .map_or("*", |f| f.expression.as_str()),
                wait,
            })
            .await
        {
            Ok(g) => g,
            Err(e) => return fail(error_status(&e)),
        };
        let mut items = Vec::new();
        let s = match got.status {
            GetStatus::Found if !got.messages.is_empty() => ok(),
            GetStatus::OffsetTooSmall | GetStatus::OffsetOverflowBadly => {
                status(Code::IllegalOffset, format!("{:?}", got.status))
            }
            _ => status(Code::MessageNotFound, "no new message"),
        };
        items.push(Content::Status(s));
        for m in &got.messages {
            items.push(Content::Message(to_pb_message(m, None)));
        }
        items.push(Content::NextOffset(got.next_offset as i64));
        Ok(Response::new(Box::pin(tokio_stream::iter(
            items
                .into_iter()
                .map(|c| Ok(pb::PullMessageResponse { content: Some(c) })),
        ))))
    }

    async fn update_offset(
        &self,
        req: Request<pb::UpdateOffsetRequest>,
    ) -> GrpcResult<pb::UpdateOffsetResponse> {
        refuse_unless_authorized!(self, req, UpdateOffsetResponse);
        let s = match require_client_id(&req) {
            Err(s) => s,
            Ok(()) => {
                let r = req.into_inner();
                let q = r.message_queue.unwrap_or_default();
                let broker = q.broker.as_ref().map_or("", |b| b.name.as_str());
                if r.offset < 0 {
                    status(Code::IllegalOffset, "offset must not be negative")
                } else {
                    match self
                        .backend
                        .commit_offset(
                            broker,
                            name(&r.group),
                            name(&q.topic),
                            q.id,
                            r.offset as u64,
                        )
                        .await
                    {
                        Err(e) => error_status(&e),
                        Ok(()) => ok(),
                    }
                }
            }
        };
        Ok(Response::new(pb::UpdateOffsetResponse { status: Some(s) }))
    }

    async fn get_offset(
        &self,
        req: Request<pb::GetOffsetRequest>,
    ) -> GrpcResult<pb::GetOffsetResponse> {
        refuse_unless_authorized!(self, req, GetOffsetResponse);
        if let Err(s) = require_client_id(&req) {
            return Ok(Response::new(pb::GetOffsetResponse {
                status: Some(s),
                offset: 0,
            }));
        }
        let r = req.into_inner();
        let q = r.message_queue.unwrap_or_default();
        let broker = q.broker.as_ref().map_or("", |b| b.name.as_str());
        let resp = match self
            .backend
            .get_offset(broker, name(&r.group), name(&q.topic), q.id)
            .await
        {
            Err(e) => pb::GetOffsetResponse {
                status: Some(error_status(&e)),
                offset: 0,
            },
            Ok(Some(o)) => pb::GetOffsetResponse {
                status: Some(ok()),
                offset: o as i64,
            },
            Ok(None) => pb::GetOffsetResponse {
                status: Some(status(
                    Code::OffsetNotFound,
                    "the group has no offset for this queue",
                )),
                offset: 0,
            },
        };
        Ok(Response::new(resp))
    }

    async fn query_offset(
        &self,
        req: Request<pb::QueryOffsetRequest>,
    ) -> GrpcResult<pb::QueryOffsetResponse> {
        refuse_unless_authorized!(self, req, QueryOffsetResponse);
        if let Err(s) = require_client_id(&req) {
            return Ok(Response::new(pb::QueryOffsetResponse {
                status: Some(s),
                offset: 0,
            }));
        }
        let r = req.into_inner();
        let q = r.message_queue.unwrap_or_default();
        let topic = name(&q.topic);
        let broker = q.broker.as_ref().map_or("", |b| b.name.as_str());
        let policy = match pb::QueryOffsetPolicy::try_from(r.query_offset_policy) {
            Ok(pb::QueryOffsetPolicy::Beginning) => OffsetPolicy::Beginning,
            Ok(pb::QueryOffsetPolicy::End) => OffsetPolicy::End,
            Ok(pb::QueryOffsetPolicy::Timestamp) => match &r.timestamp {
                Some(t) => OffsetPolicy::Timestamp(millis_of(t)),
                None => {
                    return Ok(Response::new(pb::QueryOffsetResponse {
                        status: Some(status(
                            Code::BadRequest,
                            "timestamp is required with the TIMESTAMP policy",
                        )),
                        offset: 0,
                    }));
                }
            },
            Err(_) => OffsetPolicy::End,
        };
        let resp = match self.backend.query_offset(broker, topic, q.id, policy).await {
            Ok(o) => pb::QueryOffsetResponse {
                status: Some(ok()),
                offset: o as i64,
            },
            Err(e) => pb::QueryOffsetResponse {
                status: Some(error_status(&e)),
                offset: 0,
            },
        };
        Ok(Response::new(resp))
    }

    async fn end_transaction(
        &self,
        req: Request<pb::EndTransactionRequest>,
    ) -> GrpcResult<pb::EndTransactionResponse> {
        refuse_unless_authorized!(self, req, EndTransactionResponse);
        if let Err(s) = require_client_id(&req) {
            return Ok(Response::new(pb::EndTransactionResponse {
                status: Some(s),
            }));
        }
        let r = req.into_inner();
        let s = match pb::TransactionResolution::try_from(r.resolution) {
            Ok(pb::TransactionResolution::Commit) => {
                self.backend.end_transaction(&r.transaction_id, true).await
            }
            Ok(pb::TransactionResolution::Rollback) => {
                self.backend.end_transaction(&r.transaction_id, false).await
            }
            _ => {
                return Ok(Response::new(pb::EndTransactionResponse {
                    status: Some(status(
                        Code::BadRequest,
                        "resolution must be COMMIT or ROLLBACK",
                    )),
                }));
            }
        }
        .map_or_else(|e| error_status(&e), |()| ok());
        Ok(Response::new(pb::EndTransactionResponse {
            status: Some(s),
        }))
    }

    type TelemetryStream = BoxStream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        req: Request<Streaming<pb::TelemetryCommand>>,
    ) -> GrpcResult<Self::TelemetryStream> {
        let client_id = req
            .metadata()
            .get("x-mq-client-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // The stream is authenticated once, when it opens; each settings command it carries
        // is authorized for that user.
        let user = if self.guard.is_enabled() {
            match self.check(&req, &[]) {
                Ok(()) => self.guard_user(&req),
                Err(s) if s.code == Code::Unauthorized as i32 => {
                    return Err(GrpcStatus::unauthenticated(s.message));
                }
                Err(s) => return Err(GrpcStatus::permission_denied(s.message)),
            }
        } else {
            None
        };
        let source = req.remote_addr().map(|a| a.ip());
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = GrpcService {
            backend: Arc::clone(&self.backend),
            advertised: self.advertised,
            guard: Arc::clone(&self.guard),
        };
        tokio::spawn(async move {
            let mut forwarder: Option<tokio::task::JoinHandle<()>> = None;
            while let Ok(Some(cmd)) = inbound.message().await {
                let refusal = match &cmd.command {
                    Some(pb::telemetry_command::Command::Settings(s)) => this
                        .guard
                        .authorize_as("grpc", user.as_deref(), source, &settings_wants(s))
                        .err(),
                    _ => None,
                };
                let reply = match cmd.command {
                    Some(pb::telemetry_command::Command::Settings(_)) if refusal.is_some() => {
                        pb::TelemetryCommand {
                            status: Some(status(
                                Code::Forbidden,
                                refusal.map(|e| e.to_string()).unwrap_or_default(),
                            )),
                            command: None,
                        }
                    }
                    Some(pb::telemetry_command::Command::Settings(s)) => {
                        // A producer: it may be asked to resolve orphaned transactions.
                        if let Some(pb::settings::PubSub::Publishing(p)) = &s.pub_sub
                            && !client_id.is_empty()
                        {
                            let topics = p.topics.iter().map(|t| t.name.clone()).collect();
                            let (check_tx, mut check_rx) = mpsc::channel::<CheckRequest>(64);
                            this.backend.register_producer(&client_id, topics, check_tx);
                            let out = tx.clone();
                            if let Some(f) = forwarder.take() {
                                f.abort();
                            }
                            forwarder = Some(tokio::spawn(async move {
                                while let Some(c) = check_rx.recv().await {
                                    let cmd = pb::TelemetryCommand {
                                        status: Some(ok()),
                                        command: Some(pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(
                                            pb::RecoverOrphanedTransactionCommand {
                                                message: Some(check_message(&c.message)),
                                                transaction_id: c.transaction_id,
                                            },
                                        )),
                                    };
                                    if out.send(Ok(cmd)).await.is_err() {
                                        break;
                                    }
                                }
                            }));
                        }
                        pb::TelemetryCommand {
                            status: Some(ok()),
                            command: Some(pb::telemetry_command::Command::Settings(
                                this.merged_settings(s).await,
                            )),
                        }
                    }
                    // Answers to commands we do not send, and anything unknown.
                    _ => continue,
                };
                // A refused stream gets one answer with the status (as Apache's proxy), then
                // ends with the reason as a gRPC error too (the Go client reads only that).
                let refused = reply
                    .command
                    .is_none()
                    .then(|| reply.status.clone().unwrap_or_default().message);
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
                if let Some(reason) = refused {
                    let _ = tx.send(Err(GrpcStatus::permission_denied(reason))).await;
                    break;
                }
            }
            if let Some(f) = forwarder {
                f.abort();
                this.backend.unregister_producer(&client_id);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn notify_client_termination(
        &self,
        req: Request<pb::NotifyClientTerminationRequest>,
    ) -> GrpcResult<pb::NotifyClientTerminationResponse> {
        refuse_unless_authorized!(self, req, NotifyClientTerminationResponse);
        if let Some(id) = client_id(&req) {
            self.backend.client_gone(id);
        }
        let s = require_client_id(&req).err().unwrap_or_else(ok);
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status: Some(s),
        }))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> GrpcResult<pb::ChangeInvisibleDurationResponse> {
        refuse_unless_authorized!(self, req, ChangeInvisibleDurationResponse);
        if let Err(s) = require_client_id(&req) {
            return Ok(Response::new(pb::ChangeInvisibleDurationResponse {
                status: Some(s),
                receipt_handle: String::new(),
            }));
        }
        let r = req.into_inner();
        let result = match duration_of(&r.invisible_duration) {
            None => Err(ServiceError::IllegalInvisibleTime(Duration::ZERO)),
            Some(d) => {
                self.backend
                    .change_invisible(name(&r.group), &r.receipt_handle, d)
                    .await
            }
        };
        let resp = match result {
            Ok(h) => pb::ChangeInvisibleDurationResponse {
                status: Some(ok()),
                receipt_handle: h,
            },
            Err(e) => pb::ChangeInvisibleDurationResponse {
                status: Some(error_status(&e)),
                receipt_handle: String::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn recall_message(
        &self,
        req: Request<pb::RecallMessageRequest>,
    ) -> GrpcResult<pb::RecallMessageResponse> {
        refuse_unless_authorized!(self, req, RecallMessageResponse);
        Ok(Response::new(pb::RecallMessageResponse {
            status: Some(status(
                Code::NotImplemented,
                "recalling delay messages is not supported by this broker yet",
            )),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        req: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> GrpcResult<pb::SyncLiteSubscriptionResponse> {
        refuse_unless_authorized!(self, req, SyncLiteSubscriptionResponse);
        Ok(Response::new(pb::SyncLiteSubscriptionResponse {
            status: Some(status(
                Code::NotImplemented,
                "lite topics are not supported by this broker yet",
            )),
        }))
    }
}
