//! The proxy role: stateless compute. Serves the RocketMQ 5 gRPC protocol and forwards each
//! call over the remoting protocol to the store nodes the name servers route to. It keeps
//! nothing that a restart could lose: receipt handles and transaction ids name the store node
//! that issued them, so any proxy can ack a message another proxy delivered.
//!
//! - Routes come from the name servers (each asked in turn until one answers), cached for a
//!   few seconds and dropped when a store node stops answering.
//! - Sends pick the queue (by message group for FIFO messages, round robin otherwise) and move
//!   to another store node when one cannot be reached (not for FIFO messages, whose order
//!   belongs to one queue).
//! - Receives are pops on the store node of the assignment; a receipt handle is
//!   `<broker name>~<the store node's handle>`.
//! - gRPC clients' heartbeats are passed to every store node (auto-renewed invisible times
//!   depend on them); transactional messages carry the producer group
//!   [`PROXY_PRODUCER_GROUP`], so a store node's check-back reaches a proxy, which hands it to
//!   a gRPC producer of the topic over its Telemetry stream.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::protocol::grpc::backend::{
    Backend, OffsetPolicy, Pull, Pulled, QueueSet, Receive, Received, Result, Sent,
};
use crate::protocol::remoting::body::{
    self, ClusterInfo, HeartbeatData, ProducerData, SubscriptionGroupWrapper, TopicConfigWire,
    TopicRouteData, perm,
};
use crate::protocol::remoting::broker::POP_CK;
use crate::protocol::remoting::codec::DEFAULT_MAX_FRAME;
use crate::protocol::remoting::codes::{request as rq, response as rs};
use crate::protocol::remoting::conn::{self, Connection, Handler, Pool};
use crate::protocol::remoting::{Fields, RemotingCommand};
use crate::service::metadata::{self, GroupConfig, TopicMessageType};
use crate::service::transaction::CheckRequest;
use crate::service::{ServiceError, keys};
use crate::store::commitlog::now_millis;
use crate::store::record::{self, Entry};
use crate::store::{GetStatus, Message, StoredMessage};

/// The producer group of transactional messages sent through a proxy: store nodes send their
/// check-backs to a proxy that heartbeats with it.
pub const PROXY_PRODUCER_GROUP: &str = "rmq_proxy_producer";
/// A route this young is used as it is; an older one is used while a lookup in the
/// background replaces it (requests never wait for the name servers for a topic in use).
const ROUTE_TTL: Duration = Duration::from_secs(3);
/// A route this old is not used: the next request looks it up and waits. It is also how long
/// the name servers may be unreachable before requests for a topic fail, and an unused route
/// is forgotten after it (so that the cache holds the topics in use, not every topic asked).
const ROUTE_MAX_STALE: Duration = Duration::from_secs(60);
/// How often a route's lookup also asks a store node for the topic's message type.
const MESSAGE_TYPE_TTL: Duration = Duration::from_secs(30);
/// How long a store node asked for a topic's message type has before the next one is asked too.
const TYPE_HEDGE: Duration = Duration::from_millis(250);
const GROUP_TTL: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra connections to each store node for long polls (each holds up to 1,024).
const LONG_POLL_LANES: usize = 16;
const HEARTBEAT_PERIOD: Duration = Duration::from_secs(10);
/// A gRPC client unheard of for this long is no longer passed on to the store nodes.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const TRANSACTION_PREPARED: i32 = 0x4;
const HANDLE_SEPARATOR: char = '~';

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where the gRPC endpoint listens.
    pub grpc_listen: SocketAddr,
    /// Where the HTTP port (metrics, health) listens.
    pub http_listen: SocketAddr,
    /// The address clients are told to use (defaults to `grpc_listen`).
    pub advertise: Option<SocketAddr>,
    /// Name servers (`host:port`).
    pub namesrv: Vec<String>,
    /// Largest message body accepted.
    pub max_body_size: usize,
    /// TLS on the gRPC port (permissive by default) and, with a `ca`, on links to the name
    /// servers and store nodes.
    pub tls: crate::tls::TlsConfig,
    /// Authentication and authorization (RocketMQ ACL 2.0) of gRPC requests, against the
    /// users and policies of the store nodes; off by default. The administrator's
    /// credentials sign the proxy's own requests to store nodes.
    pub auth: crate::auth::guard::AuthConfig,
    /// The file this configuration was read from (followed for `auth` changes).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

impl ProxyConfig {
    /// Reads a YAML or JSON configuration file. Errors name the file and the bad field.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<ProxyConfig> {
        let mut cfg: ProxyConfig = super::read_file(path)?;
        cfg.source = Some(path.to_owned());
        Ok(cfg)
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8082)),
            advertise: None,
            namesrv: vec!["127.0.0.1:9876".into()],
            max_body_size: 4 * 1024 * 1024,
            tls: Default::default(),
            auth: Default::default(),
            source: None,
        }
    }
}

type Producers = Arc<Mutex<HashMap<String, (Vec<String>, mpsc::Sender<CheckRequest>)>>>;

/// Requests store nodes send to the proxy: transaction check-backs.
pub struct CheckBacks {
    producers: Producers,
}

impl Handler for CheckBacks {
    async fn request(
        self: Arc<Self>,
        _conn: Arc<Connection>,
        req: RemotingCommand,
    ) -> Option<RemotingCommand> {
        if req.code != rq::CHECK_TRANSACTION_STATE {
            return Some(conn::not_supported(&req));
        }
        let transaction_id = Fields(&req.ext_fields)
            .get("transactionId")
            .unwrap_or_default()
            .to_owned();
        let Ok(Entry::Message(message)) = record::decode(&req.body) else {
            tracing::warn!("transaction check-back with an undecodable message");
            return None;
        };
        let tx = self
            .producers
            .lock()
            .values()
            .find(|(topics, tx)| topics.contains(&message.topic) && !tx.is_closed())
            .map(|(_, tx)| tx.clone());
        match tx {
            Some(tx) => {
                let _ = tx.try_send(CheckRequest {
                    message,
                    transaction_id,
                });
            }
            None => {
                tracing::debug!(topic = %message.topic, "no producer of the topic on this proxy for a check-back")
            }
        }
        None
    }
}

struct Route {
    sets: Vec<QueueSet>,
    fetched: Instant,
    message_type: TopicMessageType,
    /// When `message_type` was read from a store node; None when none answered (asked again
    /// at the next lookup).
    typed: Option<Instant>,
}

type GroupTable = std::collections::BTreeMap<String, body::SubscriptionGroupWire>;

/// The gRPC backend of a proxy: store nodes over the remoting protocol.
pub struct Remote {
    namesrv: Vec<String>,
    pool: Pool<CheckBacks>,
    producers: Producers,
    /// Broker name -> address of its primary.
    addrs: Mutex<HashMap<String, String>>,
    /// When `addrs` was last taken from the name servers: a primary moves without the old
    /// address failing (a restarted node comes back on it as a replica).
    addrs_at: Mutex<Option<Instant>>,
    /// Set while `addrs` is looked up in the background.
    brokers_refreshing: std::sync::atomic::AtomicBool,
    /// Store nodes found unreachable so far: a lookup that began before one was does not
    /// cache what it got.
    node_losses: std::sync::atomic::AtomicU64,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    /// Held while a topic's route is looked up.
    route_fetches: SingleFlight,
    /// Topics whose route is being looked up in the background.
    route_refreshes: Mutex<std::collections::HashSet<String>>,
    /// This proxy, for the tasks it spawns.
    me: std::sync::Weak<Remote>,
    /// The subscription groups of a store node, as last fetched (every GROUP_TTL at most).
    groups: Mutex<Option<(Instant, Arc<GroupTable>)>>,
    /// Held while the group table is fetched: a storm of clients in new groups costs one
    /// fetch of the table, not one each.
    group_fetch: tokio::sync::Mutex<()>,
    clients: Mutex<HashMap<String, Instant>>,
    /// Rotates the first name server asked.
    next: AtomicUsize,
    /// Round robin of sends over a topic's queues and of receives over its store nodes,
    /// one counter per topic (and group), so that no other request moves it: a shared counter
    /// bumped by route refreshes too could step by a multiple of the node count and send every
    /// receive of a group to the same node.
    turns: Turns,
    /// Spreads long polls over the store connections' lanes.
    long_polls: AtomicUsize,
    max_body_size: usize,
    client_id: String,
    metrics: ProxyMetrics,
}

/// One lookup per key at a time: tasks that miss the same key wait for the first one's
/// lookup instead of each making their own; different keys never wait on each other.
#[derive(Default)]
struct SingleFlight(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Runs a closure when dropped (however the scope it lives in ends).
struct Cleared<F: FnMut()>(F);

impl<F: FnMut()> Drop for Cleared<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Holds a key of a [`SingleFlight`] until dropped.
struct Flight<'a> {
    owner: &'a SingleFlight,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl SingleFlight {
    async fn hold(&self, key: &str) -> Flight<'_> {
        let lock = Arc::clone(self.0.lock().entry(key.to_owned()).or_default());
        let guard = Arc::clone(&lock).lock_owned().await;
        Flight {
            owner: self,
            key: key.to_owned(),
            lock,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.owner.0.lock();
        // Only the map's reference and ours: nobody waits, the entry goes.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

/// Round-robin counters, one per key (a topic, or a topic and a group) up to hash collisions
/// among [`Turns::STRIPES`] stripes.
struct Turns([AtomicUsize; Turns::STRIPES]);

impl Default for Turns {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicUsize::new(0)))
    }
}

impl Turns {
    const STRIPES: usize = 1024;

    /// The key's next turn.
    fn next(&self, key: &[&str]) -> usize {
        use std::hash::{BuildHasher, Hasher};
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
        for part in key {
            h.write(part.as_bytes());
            h.write_u8(0xff);
        }
        self.0[h.finish() as usize % Self::STRIPES].fetch_add(1, Ordering::Relaxed)
    }
}

/// Label set of the forwarded-request counter: the remoting request code and its outcome
/// (`ok`, `refused` for a non-success answer, `unreachable`).
type CallLabels = Vec<(String, String)>;

/// Prometheus metrics of a proxy.
struct ProxyMetrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_latency: Histogram,
    route_lookups: Family<CallLabels, Counter>,
    routes: Gauge,
    store_nodes: Gauge,
    clients: Gauge,
    transactional_producers: Gauge,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let m = ProxyMetrics {
            registry: Registry::with_prefix("rocketmq_proxy"),
            calls: Family::default(),
            call_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            route_lookups: Family::default(),
            routes: Gauge::default(),
            store_nodes: Gauge::default(),
            clients: Gauge::default(),
            transactional_producers: Gauge::default(),
        };
        let mut registry = m.registry;
        registry.register(
            "upstream_calls",
            "Requests forwarded to store nodes, by remoting request code and outcome",
            m.calls.clone(),
        );
        registry.register(
            "upstream_call_latency_seconds",
            "Round trip of a request forwarded to a store node",
            m.call_latency.clone(),
        );
        registry.register(
            "route_lookups",
            "Topic routes asked of the name servers, by how (a request waiting for it, or in \
             the background while the cached one is used) and outcome",
            m.route_lookups.clone(),
        );
        registry.register(
            "routes",
            "Topic routes cached (topics in use in the last minute)",
            m.routes.clone(),
        );
        registry.register(
            "store_nodes",
            "Store nodes this proxy knows",
            m.store_nodes.clone(),
        );
        registry.register(
            "clients",
            "gRPC clients heard from in the last 30 s",
            m.clients.clone(),
        );
        registry.register(
            "transactional_producers",
            "gRPC producers with a Telemetry stream (transaction check-backs)",
            m.transactional_producers.clone(),
        );
        ProxyMetrics { registry, ..m }
    }
}

fn upstream(broker: &str, r: &RemotingCommand) -> ServiceError {
    ServiceError::Upstream {
        broker: broker.to_owned(),
        code: r.code,
        remark: r.remark.clone().unwrap_or_default(),
    }
}

fn message_type_of(t: &TopicConfigWire) -> TopicMessageType {
    t.attributes
        .get("+message.type")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if t.order {
            TopicMessageType::Fifo
        } else {
            TopicMessageType::Normal
        })
}

/// The records of a pull or pop response body.
fn decode_records(body: &Bytes) -> Result<Vec<StoredMessage>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        match record::decode(&body.slice(pos..)) {
            Ok(Entry::Message(m)) => {
                pos += m.total_size as usize;
                out.push(m);
            }
            _ => {
                return Err(ServiceError::Unavailable(
                    "a store node sent a malformed message body".into(),
                ));
            }
        }
    }
    Ok(out)
}

fn split_handle(handle: &str) -> Result<(&str, &str)> {
    handle
        .split_once(HANDLE_SEPARATOR)
        .filter(|(b, h)| !b.is_empty() && !h.is_empty())
        .ok_or(ServiceError::InvalidReceiptHandle)
}

impl Remote {
    pub fn new(
        namesrv: Vec<String>,
        max_body_size: usize,
        client_id: String,
        tls: Option<crate::tls::ClientTls>,
    ) -> Arc<Remote> {
        let producers: Producers = Arc::default();
        Arc::new_cyclic(|me| Remote {
            me: me.clone(),
            route_refreshes: Mutex::default(),
            namesrv,
            pool: Pool::new(
                Arc::new(CheckBacks {
                    producers: Arc::clone(&producers),
                }),
                Duration::from_secs(3),
                DEFAULT_MAX_FRAME,
            )
            .with_tls(tls),
            producers,
            addrs: Mutex::default(),
            addrs_at: Mutex::default(),
            brokers_refreshing: Default::default(),
            node_losses: Default::default(),
            routes: Mutex::default(),
            route_fetches: SingleFlight::default(),
            groups: Mutex::default(),
            group_fetch: tokio::sync::Mutex::new(()),
            clients: Mutex::default(),
            long_polls: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            turns: Turns::default(),
            max_body_size,
            client_id,
            metrics: ProxyMetrics::default(),
        })
    }

    /// Asks the name servers in turn (starting at a rotating one) until one answers.
    async fn ask_namesrv(&self, req: RemotingCommand) -> Result<RemotingCommand> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..self.namesrv.len() {
            let addr = &self.namesrv[(start + i) % self.namesrv.len()];
            match self.pool.invoke(addr, req.clone(), CALL_TIMEOUT).await {
                Ok(r) => return Ok(r),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(ServiceError::Unavailable(format!(
            "no name server answered: {}",
            errors.join("; ")
        )))
    }

    /// A topic's route: the cached one while it is young enough (looked up again in the
    /// background once older than [`ROUTE_TTL`]), else from the name servers.
    async fn route_of(&self, topic: &str) -> Result<Arc<Route>> {
        let cached = self.routes.lock().get(topic).map(Arc::clone);
        if let Some(r) = cached {
            let age = r.fetched.elapsed();
            if age < ROUTE_TTL {
                return Ok(r);
            }
            if age < ROUTE_MAX_STALE {
                self.refresh_route(topic);
                return Ok(r);
            }
        }
        if !metadata::valid_name(topic) {
            return Err(ServiceError::IllegalTopic(topic.to_owned()));
        }
        // Clients of one topic starting together wait for one lookup, not one each.
        let _fetching = self.route_fetches.hold(topic).await;
        let cached = self.routes.lock().get(topic).map(Arc::clone);
        if let Some(r) = cached.as_ref().filter(|r| r.fetched.elapsed() < ROUTE_TTL) {
            return Ok(Arc::clone(r));
        }
        let result = self.fetch_route(topic, cached.as_deref()).await;
        self.count_lookup("request", &result);
        result
    }

    /// Looks a topic's route up in the background, unless that is under way. The cached
    /// route stays in use meanwhile, and when the lookup fails (dropped when the name servers
    /// say the topic is gone).
    fn refresh_route(&self, topic: &str) {
        let mut refreshing = self.route_refreshes.lock();
        if refreshing.contains(topic) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let topic = topic.to_owned();
        refreshing.insert(topic.clone());
        drop(refreshing);
        tokio::spawn(async move {
            // Cleared however the task ends.
            let _done = Cleared(|| {
                me.route_refreshes.lock().remove(&topic);
            });
            {
                let _fetching = me.route_fetches.hold(&topic).await;
                let cached = me.routes.lock().get(&topic).map(Arc::clone);
                if cached
                    .as_ref()
                    .is_some_and(|r| r.fetched.elapsed() < ROUTE_TTL)
                {
                    // A request looked it up meanwhile.
                } else {
                    let result = me.fetch_route(&topic, cached.as_deref()).await;
                    me.count_lookup("background", &result);
                    match result {
                        Ok(_) => {}
                        Err(ServiceError::TopicNotFound(_)) => {
                            me.routes.lock().remove(&topic);
                        }
                        Err(e) => {
                            tracing::warn!(%topic, error = %e, "looking up a route failed; the cached one stays in use")
                        }
                    }
                }
            }
        });
    }

    fn count_lookup(&self, how: &str, result: &Result<Arc<Route>>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(ServiceError::TopicNotFound(_)) => "not_found",
            Err(_) => "failed",
        };
        self.metrics
            .route_lookups
            .get_or_create(&vec![
                ("how".to_owned(), how.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .inc();
    }

    /// Asks the name servers for a topic's route, and a store node for its message type
    /// (unless `previous` read it recently), and caches the result.
    async fn fetch_route(&self, topic: &str, previous: Option<&Route>) -> Result<Arc<Route>> {
        // A store node found unreachable while the name servers are asked: their answer may
        // predate that, and must not put the node back into the caches.
        let losses = self.node_losses.load(Ordering::Acquire);
        let r = self
            .ask_namesrv(conn::request(
                rq::GET_ROUTEINFO_BY_TOPIC,
                [("topic", topic.to_owned())],
            ))
            .await?;
        if r.code == rs::TOPIC_NOT_EXIST {
            return Err(ServiceError::TopicNotFound(topic.to_owned()));
        }
        if r.code != rs::SUCCESS {
            return Err(upstream("name server", &r));
        }
        let data: TopicRouteData = body::from_body(&r.body).map_err(|e| {
            ServiceError::Unavailable(format!("malformed route from a name server: {e}"))
        })?;
        if self.node_losses.load(Ordering::Acquire) == losses {
            let mut addrs = self.addrs.lock();
            for b in &data.broker_datas {
                if let Some(a) = b.broker_addrs.get(&0) {
                    addrs.insert(b.broker_name.clone(), a.clone());
                }
            }
        }
        // The topic's message type lives in its config on the store nodes. When none answers,
        // the last one known stays (normal for a topic never typed) until the next lookup.
        let (message_type, typed) = match previous {
            Some(p) if p.typed.is_some_and(|t| t.elapsed() < MESSAGE_TYPE_TTL) => {
                (p.message_type, p.typed)
            }
            _ => match self.message_type_of(topic, &data).await {
                Some(t) => (t, Some(Instant::now())),
                None => (
                    previous.map_or(TopicMessageType::Normal, |p| p.message_type),
                    None,
                ),
            },
        };
        let mut sets: Vec<QueueSet> = data
            .queue_datas
            .iter()
            // A group between primaries stays in the route (its calls fail until one is
            // elected): a route without it makes clients drop its queues until their next
            // route refresh.
            .filter(|q| {
                data.broker_datas
                    .iter()
                    .any(|b| b.broker_name == q.broker_name)
            })
            .map(|q| QueueSet {
                broker: q.broker_name.clone(),
                queues: q.write_queue_nums.max(q.read_queue_nums).max(0) as u32,
                message_type,
                perm: q.perm,
            })
            .collect();
        sets.sort_by(|a, b| a.broker.cmp(&b.broker));
        let route = Arc::new(Route {
            sets,
            fetched: Instant::now(),
            message_type,
            typed,
        });
        if self.node_losses.load(Ordering::Acquire) == losses {
            self.routes
                .lock()
                .insert(topic.to_owned(), Arc::clone(&route));
        }
        Ok(route)
    }

    /// A topic's message type, from the first of its store nodes that answers. The nodes are
    /// asked one after another, the next one as soon as the last fails or has been silent for
    /// [`TYPE_HEDGE`] (the earlier calls stay open): a node that hangs (a partitioned zone,
    /// a stopped process) delays the answer by that much, not by a whole call timeout.
    async fn message_type_of(
        &self,
        topic: &str,
        data: &TopicRouteData,
    ) -> Option<TopicMessageType> {
        use futures_util::StreamExt;
        let mut nodes = data
            .queue_datas
            .iter()
            .filter_map(|q| self.addr_of(&q.broker_name));
        let mut asking = futures_util::stream::FuturesUnordered::new();
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            if let Some(addr) = nodes.next() {
                let req = conn::request(rq::GET_TOPIC_CONFIG, [("topic", topic.to_owned())]);
                asking.push(async move {
                    match self.pool.invoke(&addr, req, CALL_TIMEOUT).await {
                        Ok(r) if r.code == rs::SUCCESS => {
                            body::from_body::<TopicConfigWire>(&r.body)
                                .ok()
                                .map(|t| message_type_of(&t))
                        }
                        _ => None,
                    }
                });
            } else if asking.is_empty() {
                return None;
            }
            let hedge = tokio::time::sleep(TYPE_HEDGE);
            tokio::select! {
                Some(answer) = asking.next() => {
                    if answer.is_some() {
                        return answer;
                    }
                }
                () = hedge => {}
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// Forgets routes no request used for [`ROUTE_MAX_STALE`] (a route in use is looked up
    /// again every [`ROUTE_TTL`]).
    fn forget_unused_routes(&self) {
        let mut routes = self.routes.lock();
        routes.retain(|_, r| r.fetched.elapsed() < ROUTE_MAX_STALE);
        self.metrics.routes.set(routes.len() as i64);
    }

    fn addr_of(&self, broker: &str) -> Option<String> {
        self.addrs.lock().get(broker).cloned()
    }

    /// The address of a broker's primary: as known, looked up again in the background when
    /// older than [`ROUTE_TTL`]; asked of the name servers (and waited for) when unknown.
    async fn resolve(&self, broker: &str) -> Result<String> {
        let fresh = self
            .addrs_at
            .lock()
            .is_some_and(|at| at.elapsed() < ROUTE_TTL);
        if let Some(a) = self.addr_of(broker) {
            if !fresh {
                self.refresh_brokers_in_background();
            }
            return Ok(a);
        }
        self.refresh_brokers().await?;
        self.addr_of(broker).ok_or_else(|| {
            ServiceError::Unavailable(format!(
                "store node {broker:?} is not registered with any name server"
            ))
        })
    }

    fn refresh_brokers_in_background(&self) {
        if self.brokers_refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            self.brokers_refreshing.store(false, Ordering::Release);
            return;
        };
        tokio::spawn(async move {
            let _done = Cleared(|| me.brokers_refreshing.store(false, Ordering::Release));
            if let Err(e) = me.refresh_brokers().await {
                tracing::warn!(error = %e, "looking up store nodes failed; the known addresses stay in use");
            }
        });
    }

    async fn refresh_brokers(&self) -> Result<()> {
        let losses = self.node_losses.load(Ordering::Acquire);
        let r = self
            .ask_namesrv(conn::request(rq::GET_BROKER_CLUSTER_INFO, []))
            .await?;
        let info: ClusterInfo = body::from_body(&r.body).map_err(|e| {
            ServiceError::Unavailable(format!("malformed cluster info from a name server: {e}"))
        })?;
        if self.node_losses.load(Ordering::Acquire) != losses {
            // A node was found unreachable meanwhile: this answer may still list it.
            return Ok(());
        }
        *self.addrs_at.lock() = Some(Instant::now());
        let mut addrs = self.addrs.lock();
        addrs.clear();
        for (name, b) in info.broker_addr_table {
            if let Some(a) = b.broker_addrs.get(&0) {
                addrs.insert(name, a.clone());
            }
        }
        Ok(())
    }

    /// The users and policies of the store nodes (the first one that answers, in name order;
    /// every node holds the same, as mqadmin and `rmq-broker admin` write them to all).
    async fn fetch_auth(&self) -> Result<crate::auth::store::AuthState> {
        use crate::protocol::remoting::auth::{AUTH_LIST_ACL, AUTH_LIST_USER, state_from};
        self.refresh_brokers().await?;
        let mut addrs: Vec<(String, String)> = self.addrs.lock().clone().into_iter().collect();
        addrs.sort();
        let mut last = None;
        for (_, addr) in addrs {
            let users = self
                .pool
                .invoke(&addr, conn::request(AUTH_LIST_USER, []), CALL_TIMEOUT)
                .await;
            let acls = self
                .pool
                .invoke(&addr, conn::request(AUTH_LIST_ACL, []), CALL_TIMEOUT)
                .await;
            match (users, acls) {
                (Ok(u), Ok(a)) if u.code == rs::SUCCESS && a.code == rs::SUCCESS => {
                    return state_from(&u.body, &a.body).map_err(ServiceError::Unavailable);
                }
                (Ok(r), _) | (_, Ok(r)) if r.code != rs::SUCCESS => {
                    last = Some(upstream("store node", &r));
                }
                (Err(e), _) | (_, Err(e)) => {
                    last = Some(ServiceError::Unavailable(format!("{addr}: {e}")));
                }
                _ => {}
            }
        }
        Err(last
            .unwrap_or_else(|| ServiceError::Unavailable("no store node is registered".to_owned())))
    }

    /// Calls a store node; a failure to reach it forgets cached routes, so the next call
    /// sees the name servers' view.
    async fn call(
        &self,
        broker: &str,
        req: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand> {
        let addr = self.resolve(broker).await?;
        let code = req.code.to_string();
        let started = Instant::now();
        let result = if req.code == rq::POP_MESSAGE || req.code == rq::PULL_MESSAGE {
            // Long polls: up to LONG_POLL_LANES x 1,024 may wait on a store node at once,
            // on their own connections.
            let spread = self
                .long_polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.pool
                .invoke_held(&addr, req, timeout, LONG_POLL_LANES, spread)
                .await
        } else {
            self.pool.invoke(&addr, req, timeout).await
        };
        self.metrics
            .call_latency
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(r) if r.code == rs::SUCCESS => "ok",
            Ok(_) => "refused",
            Err(_) => "unreachable",
        };
        self.metrics
            .calls
            .get_or_create(&vec![
                ("code".to_owned(), code),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .inc();
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                // Routes through this node are looked up again; the others stay cached (a
                // node down must not send every topic's clients to the name servers at once).
                self.node_losses.fetch_add(1, Ordering::AcqRel);
                self.routes
                    .lock()
                    .retain(|_, r| !r.sets.iter().any(|s| s.broker == broker));
                self.addrs.lock().remove(broker);
                Err(ServiceError::Unavailable(format!(
                    "store node {broker} at {addr}: {e}"
                )))
            }
        }
    }

    fn send_request(
        &self,
        topic: &str,
        queue_id: i32,
        msgs: &[(Message, TopicMessageType)],
    ) -> RemotingCommand {
        let first = &msgs[0].0;
        let transactional = first.property_value(keys::TRAN_MSG) == Some("true");
        let fields = [
            ("a", PROXY_PRODUCER_GROUP.to_owned()),
            ("b", topic.to_owned()),
            ("c", "TBW102".to_owned()),
            ("d", "4".to_owned()),
            ("e", queue_id.to_string()),
            (
                "f",
                if transactional {
                    TRANSACTION_PREPARED
                } else {
                    0
                }
                .to_string(),
            ),
            ("g", first.born_timestamp.to_string()),
            ("h", first.flag.to_string()),
            ("i", String::from_utf8_lossy(&first.properties).into_owned()),
            ("j", "0".to_owned()),
            ("k", "false".to_owned()),
            ("m", (msgs.len() > 1).to_string()),
        ];
        if msgs.len() == 1 {
            let mut req = conn::request(rq::SEND_MESSAGE_V2, fields);
            req.body = first.body.clone();
            return req;
        }
        let mut body = BytesMut::new();
        for (m, _) in msgs {
            let size = 20 + m.body.len() + 2 + m.properties.len();
            body.put_i32(size as i32);
            body.put_i32(0);
            body.put_i32(0);
            body.put_i32(m.flag);
            body.put_i32(m.body.len() as i32);
            body.put_slice(&m.body);
            body.put_i16(m.properties.len() as i16);
            body.put_slice(&m.properties);
        }
        let mut req = conn::request(rq::SEND_BATCH_MESSAGE, fields);
        req.body = body.freeze();
        req
    }

    fn encode_metrics(&self) -> String {
        let m = &self.metrics;
        m.store_nodes.set(self.addrs.lock().len() as i64);
        m.routes.set(self.routes.lock().len() as i64);
        m.clients.set(self.clients.lock().len() as i64);
        m.transactional_producers
            .set(self.producers.lock().len() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Passes live gRPC clients to every store node, and registers this proxy as the
    /// producer that takes transaction check-backs.
    async fn heartbeat(&self) {
        if self.refresh_brokers().await.is_err() {
            return;
        }
        let clients: Vec<String> = {
            let mut c = self.clients.lock();
            c.retain(|_, seen| seen.elapsed() < CLIENT_TIMEOUT);
            c.keys().cloned().collect()
        };
        let addrs: Vec<String> = self.addrs.lock().values().cloned().collect();
        let mut bodies = vec![body::to_body(&HeartbeatData {
            client_id: self.client_id.clone(),
            producer_data_set: vec![ProducerData {
                group_name: PROXY_PRODUCER_GROUP.to_owned(),
            }],
            consumer_data_set: Vec::new(),
        })];
        for c in clients {
            bodies.push(body::to_body(&HeartbeatData {
                client_id: c,
                ..HeartbeatData::default()
            }));
        }
        // Every client to every store node, 256 calls at a time: 10,000 clients take about
        // 40 round trips per node, well within the heartbeat period.
        for addr in &addrs {
            for chunk in bodies.chunks(256) {
                let calls = chunk.iter().map(|b| {
                    let mut req = conn::request(rq::HEART_BEAT, []);
                    req.body = b.clone();
                    self.pool.invoke(addr, req, CALL_TIMEOUT)
                });
                let failed = futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .find_map(Result::err);
                if let Some(e) = failed {
                    tracing::debug!(addr, error = %e, "heartbeat to a store node failed");
                    break;
                }
            }
        }
    }
}

impl Backend for Remote {
    fn max_body_size(&self) -> usize {
        self.max_body_size
    }

    async fn route(&self, topic: &str) -> Result<Vec<QueueSet>> {
        let r = self.route_of(topic).await?;
        if r.sets.is_empty() {
            return Err(ServiceError::TopicNotFound(topic.to_owned()));
        }
        Ok(r.sets.clone())
    }

    async fn group(&self, name: &str) -> Result<GroupConfig> {
        if !metadata::valid_name(name) {
            return Err(ServiceError::IllegalGroup(name.to_owned()));
        }
        let config = |table: &GroupTable| {
            let mut c = GroupConfig::new(name);
            if let Some(g) = table.get(name) {
                c.max_delivery_attempts = (g.retry_max_times.max(0) as u32) + 1;
                c.fifo = g.consume_message_orderly;
            }
            c
        };
        let fresh = || {
            self.groups
                .lock()
                .as_ref()
                .filter(|(at, _)| at.elapsed() < GROUP_TTL)
                .map(|(_, t)| Arc::clone(t))
        };
        if let Some(t) = fresh() {
            return Ok(config(&t));
        }
        let _fetching = self.group_fetch.lock().await;
        if let Some(t) = fresh() {
            return Ok(config(&t));
        }
        let brokers: Vec<String> = {
            if self.addrs.lock().is_empty() {
                let _ = self.refresh_brokers().await;
            }
            self.addrs.lock().keys().cloned().collect()
        };
        // The first store node that answers gives the table; a group it does not hold gets
        // the defaults, as does every group while no node answers.
        let mut table = GroupTable::default();
        for b in brokers {
            let req = conn::request(rq::GET_ALL_SUBSCRIPTIONGROUP_CONFIG, []);
            if let Ok(r) = self.call(&b, req, CALL_TIMEOUT).await
                && r.code == rs::SUCCESS
                && let Ok(w) = body::from_body::<SubscriptionGroupWrapper>(&r.body)
            {
                table = w.subscription_group_table;
                break;
            }
        }
        let found = config(&table);
        *self.groups.lock() = Some((Instant::now(), Arc::new(table)));
        Ok(found)
    }

    fn client_seen(&self, client_id: &str) {
        self.clients
            .lock()
            .insert(client_id.to_owned(), Instant::now());
    }

    fn client_gone(&self, client_id: &str) {
        self.clients.lock().remove(client_id);
    }

    async fn send(&self, msgs: Vec<(Message, TopicMessageType)>) -> Result<Vec<Sent>> {
        let Some((first, _)) = msgs.first() else {
            return Ok(Vec::new());
        };
        let topic = first.topic.clone();
        if msgs.iter().any(|(m, _)| m.topic != topic) {
            return Err(ServiceError::MessageTypeConflict(
                "a batch must be of one topic".into(),
            ));
        }
        let route = self.route_of(&topic).await?;
        for (m, t) in &msgs {
            if m.body.is_empty() {
                return Err(ServiceError::BodyEmpty);
            }
            if m.body.len() > self.max_body_size {
                return Err(ServiceError::BodyTooLarge {
                    size: m.body.len(),
                    max: self.max_body_size,
                });
            }
            let topic_type = route
                .sets
                .first()
                .map_or(TopicMessageType::Normal, |s| s.message_type);
            if *t != topic_type {
                return Err(ServiceError::MessageTypeConflict(format!(
                    "topic {topic:?} takes {topic_type:?} messages, this one is {t:?}"
                )));
            }
        }
        let writable: Vec<(&str, i32)> = route
            .sets
            .iter()
            .filter(|s| s.perm & perm::WRITE != 0)
            .flat_map(|s| (0..s.queues as i32).map(move |q| (s.broker.as_str(), q)))
            .collect();
        if writable.is_empty() {
            return Err(ServiceError::TopicNotFound(topic));
        }
        // FIFO: a message group always maps to the same queue, and never moves.
        let group = first.property_value(keys::SHARDING_KEY).map(str::to_owned);
        let start = match &group {
            Some(g) => {
                let h = g
                    .bytes()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
                (h % writable.len() as u64) as usize
            }
            None => self.turns.next(&[&topic]) % writable.len(),
        };
        let attempts = if group.is_some() { 1 } else { 3 };
        let mut failed: Vec<&str> = Vec::new();
        let mut last_error = None;
        for i in 0..writable.len() {
            if failed.len() >= attempts {
                break;
            }
            let (broker, queue) = writable[(start + i) % writable.len()];
            if failed.contains(&broker) {
                continue;
            }
            let req = self.send_request(&topic, queue, &msgs);
            let r = match self.call(broker, req, CALL_TIMEOUT).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(broker, error = %e, "send failed; trying another store node");
                    failed.push(broker);
                    last_error = Some(e);
                    continue;
                }
            };
            if r.code == rs::SYSTEM_BUSY || r.code == rs::SERVICE_NOT_AVAILABLE {
                failed.push(broker);
                last_error = Some(upstream(broker, &r));
                continue;
            }
            if r.code != rs::SUCCESS {
                return Err(match r.code {
                    rs::TOPIC_NOT_EXIST => ServiceError::TopicNotFound(topic),
                    _ => upstream(broker, &r),
                });
            }
            let f = Fields(&r.ext_fields);
            let first_offset: u64 = f.parse_or("queueOffset", 0).unwrap_or(0);
            let transaction_id = f.get("transactionId").map(str::to_owned);
            return Ok((0..msgs.len() as u64)
                .map(|i| Sent {
                    queue_offset: first_offset + i,
                    transaction_id: transaction_id.clone(),
                })
                .collect());
        }
        Err(last_error
            .unwrap_or_else(|| ServiceError::Unavailable("no store node to send to".into())))
    }

    async fn receive(&self, r: Receive) -> Result<Vec<Received>> {
        let broker = match r.broker.clone() {
            Some(b) => b,
            None => {
                let route = self.route_of(&r.topic).await?;
                let readable: Vec<&QueueSet> = route
                    .sets
                    .iter()
                    .filter(|s| s.perm & perm::READ != 0)
                    .collect();
                if readable.is_empty() {
                    return Err(ServiceError::TopicNotFound(r.topic.clone()));
                }
                readable[self.turns.next(&[&r.topic, &r.group]) % readable.len()]
                    .broker
                    .clone()
            }
        };
        let mut fields = vec![
            ("consumerGroup", r.group.clone()),
            ("topic", r.topic.clone()),
            ("queueId", "-1".to_owned()),
            ("maxMsgNums", r.max.to_string()),
            ("invisibleTime", r.invisible.as_millis().to_string()),
            ("pollTime", r.long_polling.as_millis().to_string()),
            ("bornTime", now_millis().to_string()),
            ("initMode", "0".to_owned()),
            ("expType", "TAG".to_owned()),
            ("exp", r.expression.clone()),
            ("order", "false".to_owned()),
        ];
        if let Some(c) = &r.auto_renew_for {
            fields.push(("autoRenewFor", c.to_string()));
        }
        let resp = self
            .call(
                &broker,
                conn::request(rq::POP_MESSAGE, fields),
                r.long_polling + CALL_TIMEOUT,
            )
            .await?;
        match resp.code {
            rs::SUCCESS => {}
            rs::POLLING_TIMEOUT | rs::PULL_NOT_FOUND => return Ok(Vec::new()),
            rs::TOPIC_NOT_EXIST => return Err(ServiceError::TopicNotFound(r.topic)),
            _ => return Err(upstream(&broker, &resp)),
        }
        decode_records(&resp.body)?
            .into_iter()
            .map(|message| {
                let handle = message.property(POP_CK).ok_or_else(|| {
                    ServiceError::Unavailable("a popped message without its receipt handle".into())
                })?;
                Ok(Received {
                    handle: format!("{broker}{HANDLE_SEPARATOR}{handle}"),
                    attempt: message.reconsume_times.max(0) as u32 + 1,
                    message,
                })
            })
            .collect()
    }

    async fn ack(&self, group: &str, handles: Vec<String>) -> Result<Vec<bool>> {
        // One ACK_MESSAGE per handle, all in flight at once on the multiplexed connections.
        let acks = handles.iter().map(|h| async move {
            let Ok((broker, inner)) = split_handle(h) else {
                return Ok(false);
            };
            let req = conn::request(
                rq::ACK_MESSAGE,
                [
                    ("consumerGroup", group.to_owned()),
                    ("extraInfo", inner.to_owned()),
                ],
            );
            let r = self.call(broker, req, CALL_TIMEOUT).await?;
            Ok(r.code == rs::SUCCESS)
        });
        futures_util::future::join_all(acks)
            .await
            .into_iter()
            .collect()
    }

    async fn change_invisible(&self, group: &str, handle: &str, d: Duration) -> Result<String> {
        let (broker, inner) = split_handle(handle)?;
        let req = conn::request(
            rq::CHANGE_MESSAGE_INVISIBLETIME,
            [
                ("consumerGroup", group.to_owned()),
                ("extraInfo", inner.to_owned()),
                ("invisibleTime", d.as_millis().to_string()),
            ],
        );
        let r = self.call(broker, req, CALL_TIMEOUT).await?;
        if r.code != rs::SUCCESS {
            let remark = r.remark.clone().unwrap_or_default();
            return Err(if remark.contains("receipt handle") {
                ServiceError::InvalidReceiptHandle
            } else if remark.contains("invisible") {
                ServiceError::IllegalInvisibleTime(d)
            } else {
                upstream(broker, &r)
            });
        }
        let new = Fields(&r.ext_fields).get("extraInfo").ok_or_else(|| {
            ServiceError::Unavailable("no new receipt handle in the answer".into())
        })?;
        Ok(format!("{broker}{HANDLE_SEPARATOR}{new}"))
    }

    async fn forward_to_dead_letter_queue(&self, group: &str, handle: &str) -> Result<()> {
        let (broker, inner) = split_handle(handle)?;
        let req = conn::request(
            rq::CONSUMER_SEND_MSG_BACK,
            [
                ("group", group.to_owned()),
                ("extraInfo", inner.to_owned()),
                ("offset", "0".to_owned()),
                ("delayLevel", "-1".to_owned()),
            ],
        );
        let r = self.call(broker, req, CALL_TIMEOUT).await?;
        if r.code != rs::SUCCESS {
            return Err(upstream(broker, &r));
        }
        Ok(())
    }

    async fn pull(&self, p: Pull<'_>) -> Result<Pulled> {
        let sys_flag = if p.wait.is_zero() { 4 } else { 4 | 2 };
        let req = conn::request(
            rq::PULL_MESSAGE,
            [
                ("consumerGroup", p.group.to_owned()),
                ("topic", p.topic.to_owned()),
                ("queueId", p.queue_id.to_string()),
                ("queueOffset", p.offset.to_string()),
                ("maxMsgNums", p.max.to_string()),
                ("sysFlag", sys_flag.to_string()),
                ("commitOffset", "-1".to_owned()),
                ("suspendTimeoutMillis", p.wait.as_millis().to_string()),
                ("subscription", p.expression.to_owned()),
                ("subVersion", "0".to_owned()),
                ("expressionType", "TAG".to_owned()),
            ],
        );
        let r = self.call(p.broker, req, p.wait + CALL_TIMEOUT).await?;
        let next_offset: u64 = Fields(&r.ext_fields)
            .parse_or("nextBeginOffset", p.offset)
            .unwrap_or(p.offset);
        let (status, messages) = match r.code {
            rs::SUCCESS => (GetStatus::Found, decode_records(&r.body)?),
            rs::PULL_NOT_FOUND => (GetStatus::OffsetOverflowOne, Vec::new()),
            rs::PULL_RETRY_IMMEDIATELY => (GetStatus::Found, Vec::new()),
            rs::PULL_OFFSET_MOVED if p.offset > next_offset => {
                (GetStatus::OffsetOverflowBadly, Vec::new())
            }
            rs::PULL_OFFSET_MOVED => (GetStatus::OffsetTooSmall, Vec::new()),
            rs::TOPIC_NOT_EXIST => return Err(ServiceError::TopicNotFound(p.topic.to_owned())),
            _ => return Err(upstream(p.broker, &r)),
        };
        Ok(Pulled {
            status,
            messages: messages
                .into_iter()
                .filter(|m| p.filter.matches(m.property(crate::store::properties::TAGS)))
                .collect(),
            next_offset,
        })
    }

    async fn commit_offset(
        &self,
        broker: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: u64,
    ) -> Result<()> {
        let req = conn::request(
            rq::UPDATE_CONSUMER_OFFSET,
            [
                ("consumerGroup", group.to_owned()),
                ("topic", topic.to_owned()),
                ("queueId", queue_id.to_string()),
                ("commitOffset", offset.to_string()),
            ],
        );
        let r = self.call(broker, req, CALL_TIMEOUT).await?;
        if r.code != rs::SUCCESS {
            return Err(upstream(broker, &r));
        }
        Ok(())
    }

    async fn get_offset(
        &self,
        broker: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Result<Option<u64>> {
        let req = conn::request(
            rq::QUERY_CONSUMER_OFFSET,
            [
                ("consumerGroup", group.to_owned()),
                ("topic", topic.to_owned()),
                ("queueId", queue_id.to_string()),
                ("setZeroIfNotFound", "false".to_owned()),
            ],
        );
        let r = self.call(broker, req, CALL_TIMEOUT).await?;
        match r.code {
            rs::SUCCESS => Ok(Fields(&r.ext_fields).parse("offset").ok()),
            rs::QUERY_NOT_FOUND => Ok(None),
            _ => Err(upstream(broker, &r)),
        }
    }

    async fn query_offset(
        &self,
        broker: &str,
        topic: &str,
        queue_id: i32,
        policy: OffsetPolicy,
    ) -> Result<u64> {
        let mut fields = vec![
            ("topic", topic.to_owned()),
            ("queueId", queue_id.to_string()),
        ];
        let code = match policy {
            OffsetPolicy::Beginning => rq::GET_MIN_OFFSET,
            OffsetPolicy::End => rq::GET_MAX_OFFSET,
            OffsetPolicy::Timestamp(t) => {
                fields.push(("timestamp", t.to_string()));
                rq::SEARCH_OFFSET_BY_TIMESTAMP
            }
        };
        let r = self
            .call(broker, conn::request(code, fields), CALL_TIMEOUT)
            .await?;
        if r.code != rs::SUCCESS {
            return Err(upstream(broker, &r));
        }
        Fields(&r.ext_fields)
            .parse("offset")
            .map_err(|e| ServiceError::Unavailable(e.to_string()))
    }

    async fn end_transaction(&self, transaction_id: &str, commit: bool) -> Result<()> {
        let invalid = || ServiceError::InvalidTransactionId(transaction_id.to_owned());
        // The transaction id is the half message's offset message id: it names the store
        // node that holds it and where.
        let (addr, offset) = record::parse_offset_msg_id(transaction_id).ok_or_else(invalid)?;
        let req = conn::request(
            rq::END_TRANSACTION,
            [
                ("producerGroup", PROXY_PRODUCER_GROUP.to_owned()),
                ("tranStateTableOffset", "0".to_owned()),
                ("commitLogOffset", offset.to_string()),
                (
                    "commitOrRollback",
                    if commit { "8" } else { "12" }.to_owned(),
                ),
                ("fromTransactionCheck", "false".to_owned()),
                ("msgId", String::new()),
                ("transactionId", transaction_id.to_owned()),
            ],
        );
        let addr = addr.to_string();
        let r = self
            .pool
            .invoke(&addr, req, CALL_TIMEOUT)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("store node at {addr}: {e}")))?;
        match r.code {
            rs::SUCCESS => Ok(()),
            _ if r
                .remark
                .as_deref()
                .is_some_and(|m| m.contains("transaction")) =>
            {
                Err(ServiceError::InvalidTransactionId(
                    r.remark.unwrap_or_default(),
                ))
            }
            _ => Err(upstream(&addr, &r)),
        }
    }

    fn register_producer(
        &self,
        client_id: &str,
        topics: Vec<String>,
        tx: mpsc::Sender<CheckRequest>,
    ) {
        self.producers
            .lock()
            .insert(client_id.to_owned(), (topics, tx));
    }

    fn unregister_producer(&self, client_id: &str) {
        self.producers.lock().remove(client_id);
    }
}

/// Runs a proxy until `shutdown` resolves.
pub async fn run(
    cfg: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let guard = super::auth_guard(&cfg.auth, None, cfg.source.clone(), |c: &ProxyConfig| {
        c.auth.clone()
    })?;
    let endpoint =
        super::GrpcEndpoint::bind(cfg.grpc_listen, cfg.advertise, &cfg.tls, Arc::clone(&guard))
            .await?;
    let (local, advertised) = (endpoint.local, endpoint.advertised);
    let client_tls = crate::tls::ClientTls::new(&cfg.tls, &[])
        .context("setting up TLS for links to name servers and store nodes")?;
    let remote = Remote::new(
        cfg.namesrv.clone(),
        cfg.max_body_size,
        format!("proxy@{advertised}"),
        client_tls,
    );
    remote.pool.set_credentials(guard.internal_credentials());
    tracing::info!(grpc = %local, %advertised, namesrv = ?cfg.namesrv, tls = ?cfg.tls.mode, authentication = cfg.auth.authentication, authorization = cfg.auth.authorization, "proxy listening");
    // Users and policies follow the store nodes' (every 3 s).
    let auth_refresh = {
        let (r, guard) = (Arc::clone(&remote), Arc::clone(&guard));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3));
            loop {
                tick.tick().await;
                r.pool.set_credentials(guard.internal_credentials());
                if !guard.is_enabled() {
                    continue;
                }
                match r.fetch_auth().await {
                    Ok(state) => {
                        if let Err(e) = guard.users.replace(state) {
                            tracing::warn!(error = %e, "keeping users and policies");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "fetching users and policies from the store nodes failed; keeping the last ones")
                    }
                }
            }
        })
    };
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding the HTTP port {}", cfg.http_listen))?;
    tracing::info!(http = %http_listener.local_addr()?, "HTTP (metrics, health) listening");
    let http_listener = crate::tls::HttpListener::new(http_listener, &cfg.tls)?;
    let http = {
        let (r, guard) = (Arc::clone(&remote), Arc::clone(&guard));
        let router = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let (r, guard) = (Arc::clone(&r), Arc::clone(&guard));
                    async move {
                        let own = r.encode_metrics();
                        let own = own.strip_suffix("# EOF\n").unwrap_or(&own).to_owned();
                        own + &guard.encode_metrics()
                    }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/readyz", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, router).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    let heartbeats = {
        let r = Arc::clone(&remote);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_PERIOD);
            loop {
                tick.tick().await;
                r.forget_unused_routes();
                r.heartbeat().await;
            }
        })
    };
    endpoint.serve(Arc::clone(&remote), shutdown).await?;
    heartbeats.abort();
    auth_refresh.abort();
    http.abort();
    remote.pool.close_all();
    tracing::info!("proxy stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_takes_every_turn_whatever_other_keys_do() {
        let turns = Turns::default();
        let mut seen = [0; 3];
        for i in 0..30 {
            // Other topics and groups interleave in a pattern of period 3.
            for _ in 0..(i % 3) {
                turns.next(&["other", "G"]);
            }
            seen[turns.next(&["E2E", "G"]) % 3] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }

    /// A name server and a store node in one: the route of every topic names a store node
    /// `hung` first and `live` (this server) second; topic configs are FIFO.
    struct NameServerAndNode {
        hung: String,
        live: String,
    }

    impl Handler for NameServerAndNode {
        async fn request(
            self: Arc<Self>,
            _conn: Arc<Connection>,
            request: RemotingCommand,
        ) -> Option<RemotingCommand> {
            let mut r = RemotingCommand::response_to(&request, rs::SUCCESS, "");
            r.body = match request.code {
                rq::GET_ROUTEINFO_BY_TOPIC => {
                    let node = |name: &str, addr: &str| body::BrokerData {
                        cluster: "C".into(),
                        broker_name: name.into(),
                        broker_addrs: [(0, addr.to_owned())].into(),
                        enable_acting_master: false,
                    };
                    let queues = |name: &str| body::QueueData {
                        broker_name: name.into(),
                        read_queue_nums: 4,
                        write_queue_nums: 4,
                        ..Default::default()
                    };
                    body::to_body(&TopicRouteData {
                        queue_datas: vec![queues("hung"), queues("live")],
                        broker_datas: vec![node("hung", &self.hung), node("live", &self.live)],
                        ..Default::default()
                    })
                }
                rq::GET_TOPIC_CONFIG => body::to_body(&TopicConfigWire {
                    topic_name: "T".into(),
                    attributes: [("+message.type".to_owned(), "FIFO".to_owned())].into(),
                    ..Default::default()
                }),
                _ => return Some(conn::not_supported(&request)),
            };
            Some(r)
        }
    }

    #[tokio::test]
    async fn a_hung_store_node_does_not_hold_up_a_topics_message_type() {
        // Accepts connections (the kernel does) and never answers.
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap().to_string();
        let handler = NameServerAndNode {
            hung: hung.local_addr().unwrap().to_string(),
            live: live.clone(),
        };
        tokio::spawn(conn::serve(
            listener,
            Arc::new(handler),
            1 << 20,
            None,
            std::future::pending(),
        ));
        let remote = Remote::new(vec![live], 1 << 20, "test".into(), None);
        let started = Instant::now();
        let route = remote.fetch_route("T", None).await.unwrap();
        assert_eq!(route.message_type, TopicMessageType::Fifo);
        assert!(route.typed.is_some());
        // Asking the nodes strictly in turn waited out the hung node's whole call timeout.
        assert!(started.elapsed() < CALL_TIMEOUT, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn one_lookup_per_key_at_a_time_and_no_entry_left_behind() {
        let flights = Arc::new(SingleFlight::default());
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (flights, running, most) = (
                    Arc::clone(&flights),
                    Arc::clone(&running),
                    Arc::clone(&most),
                );
                tokio::spawn(async move {
                    let key = if i % 2 == 0 { "A" } else { "B" };
                    let _f = flights.hold(key).await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // A and B overlap; two holders of one key never do.
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(flights.len(), 0);
    }
}
