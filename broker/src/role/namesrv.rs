//! The name server: the route registry of a cluster. Store nodes register (REGISTER_BROKER,
//! repeated as a heartbeat) with every name server; clients, proxies and admin tools ask any
//! of them for topic routes and cluster info. Name servers keep no shared state and never talk
//! to each other, as in RocketMQ: each holds what the brokers told it. A broker is dropped
//! when its connection closes or when it has been silent for its heartbeat timeout (120 s
//! unless it asked for another).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::protocol::remoting::body::{
    self, BrokerData, ClusterInfo, KvTable, QueueData, RegisterBrokerBody, TopicList,
    TopicRouteData,
};
use crate::protocol::remoting::codec::DEFAULT_MAX_FRAME;
use crate::protocol::remoting::codes::{request as rq, response as rs};
use crate::protocol::remoting::{Connection, FieldError, Fields, Handler, RemotingCommand, conn};

/// RocketMQ's default broker heartbeat timeout.
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NamesrvConfig {
    /// Where the remoting port listens (RocketMQ's default is 9876).
    pub listen: SocketAddr,
    /// Where the HTTP port (metrics, health) listens.
    pub http_listen: SocketAddr,
    /// How long a broker may stay silent before it is dropped, unless it registered with its
    /// own timeout.
    #[serde(with = "crate::store::config::millis")]
    pub broker_timeout: Duration,
    /// TLS on the remoting port (permissive by default). Requests are not authenticated
    /// here (routes are not secret; Apache RocketMQ's name server does not either).
    pub tls: crate::tls::TlsConfig,
}

impl NamesrvConfig {
    /// Reads a YAML or JSON configuration file. Errors name the file and the bad field.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<NamesrvConfig> {
        super::read_file(path)
    }
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        NamesrvConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9876)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 9877)),
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            tls: Default::default(),
        }
    }
}

struct LiveBroker {
    cluster: String,
    broker_name: String,
    broker_id: i64,
    last_seen: Instant,
    timeout: Duration,
    connection: u64,
    /// The topic table version of its last registration.
    data_version: body::DataVersion,
}

/// The route tables, as RocketMQ's `RouteInfoManager`.
#[derive(Default)]
pub struct Routes {
    /// topic -> broker name -> queues.
    topics: BTreeMap<String, BTreeMap<String, QueueData>>,
    brokers: BTreeMap<String, BrokerData>,
    clusters: BTreeMap<String, BTreeSet<String>>,
    /// By broker address.
    live: HashMap<String, LiveBroker>,
    /// Broker name -> the topics its primary last registered (some may have been deleted
    /// since): a registration or removal touches these, not every topic held.
    broker_topics: HashMap<String, Vec<String>>,
    kv: BTreeMap<(String, String), String>,
}

/// One registration, as the header and body of REGISTER_BROKER give it.
pub struct Registration {
    pub cluster: String,
    pub broker_name: String,
    pub broker_addr: String,
    pub broker_id: i64,
    pub timeout: Duration,
    pub topics: RegisterBrokerBody,
}

impl Routes {
    /// Adds or refreshes a broker and, for a primary, replaces its topics' queue data.
    pub fn register(&mut self, r: Registration, connection: u64, now: Instant) -> bool {
        self.clusters
            .entry(r.cluster.clone())
            .or_default()
            .insert(r.broker_name.clone());
        let data = self
            .brokers
            .entry(r.broker_name.clone())
            .or_insert_with(|| BrokerData {
                cluster: r.cluster.clone(),
                broker_name: r.broker_name.clone(),
                ..BrokerData::default()
            });
        // One address per id: a broker id moving to a new address replaces the old one.
        data.broker_addrs
            .retain(|id, addr| *id != r.broker_id && *addr != r.broker_addr);
        data.broker_addrs.insert(r.broker_id, r.broker_addr.clone());
        let first = self
            .live
            .insert(
                r.broker_addr.clone(),
                LiveBroker {
                    cluster: r.cluster.clone(),
                    broker_name: r.broker_name.clone(),
                    broker_id: r.broker_id,
                    last_seen: now,
                    timeout: r.timeout,
                    connection,
                    data_version: r.topics.topic_config_serialize_wrapper.data_version.clone(),
                },
            )
            .is_none();
        if r.broker_id == 0 {
            let table = &r.topics.topic_config_serialize_wrapper.topic_config_table;
            let before = self
                .broker_topics
                .remove(&r.broker_name)
                .unwrap_or_default();
            for name in before.iter().filter(|t| !table.contains_key(*t)) {
                self.drop_queues(name, &r.broker_name);
            }
            for (name, t) in table {
                self.topics.entry(name.clone()).or_default().insert(
                    r.broker_name.clone(),
                    QueueData {
                        broker_name: r.broker_name.clone(),
                        read_queue_nums: t.read_queue_nums,
                        write_queue_nums: t.write_queue_nums,
                        perm: t.perm,
                        topic_sys_flag: t.topic_sys_flag,
                    },
                );
            }
            self.broker_topics
                .insert(r.broker_name.clone(), table.keys().cloned().collect());
        }
        if first {
            tracing::info!(cluster = %r.cluster, broker = %r.broker_name, id = r.broker_id, addr = %r.broker_addr, topics = r.topics.topic_config_serialize_wrapper.topic_config_table.len(), "broker registered");
        }
        first
    }

    /// QUERY_DATA_VERSION: whether the broker at `addr` (as `broker_id`) registered another
    /// topic table than `version`. A known broker counts it as a heartbeat.
    pub fn query_data_version(
        &mut self,
        addr: &str,
        broker_id: i64,
        version: &body::DataVersion,
        connection: u64,
        now: Instant,
    ) -> (bool, Option<body::DataVersion>) {
        match self.live.get_mut(addr) {
            Some(live) => {
                live.last_seen = now;
                live.connection = connection;
                (
                    live.broker_id != broker_id || live.data_version != *version,
                    Some(live.data_version.clone()),
                )
            }
            None => (true, None),
        }
    }

    /// Drops a broker address, and the broker with its queues once it has no address left.
    pub fn remove(&mut self, addr: &str, why: &str) {
        let Some(live) = self.live.remove(addr) else {
            return;
        };
        tracing::warn!(broker = %live.broker_name, id = live.broker_id, addr, why, "broker removed from routes");
        let empty = match self.brokers.get_mut(&live.broker_name) {
            Some(data) => {
                data.broker_addrs.retain(|_, a| a != addr);
                data.broker_addrs.is_empty()
            }
            None => false,
        };
        // The queues follow the primary: without it, clients cannot write there.
        let primary_gone = live.broker_id == 0 || empty;
        if empty {
            self.brokers.remove(&live.broker_name);
            if let Some(names) = self.clusters.get_mut(&live.cluster) {
                names.remove(&live.broker_name);
                if names.is_empty() {
                    self.clusters.remove(&live.cluster);
                }
            }
        }
        if primary_gone && empty {
            for name in self
                .broker_topics
                .remove(&live.broker_name)
                .unwrap_or_default()
            {
                self.drop_queues(&name, &live.broker_name);
            }
        }
    }

    /// Removes a broker's queues from a topic's route, and the topic once no broker has it.
    fn drop_queues(&mut self, topic: &str, broker: &str) {
        if let Some(queues) = self.topics.get_mut(topic) {
            queues.remove(broker);
            if queues.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// Drops brokers silent for longer than their timeout.
    pub fn expire(&mut self, now: Instant) -> usize {
        let dead: Vec<String> = self
            .live
            .iter()
            .filter(|(_, b)| now.duration_since(b.last_seen) > b.timeout)
            .map(|(a, _)| a.clone())
            .collect();
        for a in &dead {
            self.remove(a, "no heartbeat within its timeout");
        }
        dead.len()
    }

    /// Drops the brokers that registered over a connection that closed.
    pub fn connection_closed(&mut self, connection: u64) {
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(_, b)| b.connection == connection)
            .map(|(a, _)| a.clone())
            .collect();
        for a in &gone {
            self.remove(a, "its connection closed");
        }
    }

    pub fn route(&self, topic: &str) -> Option<TopicRouteData> {
        let queues = self.topics.get(topic)?;
        let queue_datas: Vec<QueueData> = queues.values().cloned().collect();
        let broker_datas: Vec<BrokerData> = queues
            .keys()
            .filter_map(|b| self.brokers.get(b).cloned())
            .collect();
        if broker_datas.is_empty() {
            return None;
        }
        Some(TopicRouteData {
            queue_datas,
            broker_datas,
            ..TopicRouteData::default()
        })
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            broker_addr_table: self.brokers.clone(),
            cluster_addr_table: self
                .clusters
                .iter()
                .map(|(c, names)| (c.clone(), names.iter().cloned().collect()))
                .collect(),
        }
    }

    fn topics_of_cluster(&self, cluster: &str) -> Vec<String> {
        let names = self.clusters.get(cluster);
        self.topics
            .iter()
            .filter(|(_, q)| q.keys().any(|b| names.is_some_and(|n| n.contains(b))))
            .map(|(t, _)| t.clone())
            .collect()
    }
}

#[derive(Default)]
struct Metrics {
    requests: Family<Vec<(String, String)>, Counter>,
    brokers: Gauge,
    topics: Gauge,
}

/// The name server's request handler and state.
pub struct Namesrv {
    routes: RwLock<Routes>,
    default_timeout: Duration,
    metrics: Metrics,
    registry: Registry,
}

impl Namesrv {
    pub fn new(default_timeout: Duration) -> Arc<Namesrv> {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("rocketmq_namesrv");
        registry.register(
            "requests",
            "Remoting requests served, by request code",
            metrics.requests.clone(),
        );
        registry.register(
            "live_brokers",
            "Broker addresses registered and alive",
            metrics.brokers.clone(),
        );
        registry.register(
            "topics",
            "Topics with at least one route",
            metrics.topics.clone(),
        );
        Arc::new(Namesrv {
            routes: RwLock::new(Routes::default()),
            default_timeout,
            metrics,
            registry,
        })
    }

    pub fn routes(&self) -> parking_lot::RwLockReadGuard<'_, Routes> {
        self.routes.read()
    }

    fn encode_metrics(&self) -> String {
        {
            let r = self.routes.read();
            self.metrics.brokers.set(r.live.len() as i64);
            self.metrics.topics.set(r.topics.len() as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    fn serve_request(
        &self,
        conn: &Connection,
        req: &RemotingCommand,
    ) -> Result<RemotingCommand, FieldError> {
        let f = Fields(&req.ext_fields);
        let ok = |body: bytes::Bytes| {
            let mut r = RemotingCommand::response_to(req, rs::SUCCESS, "");
            r.remark = None;
            r.body = body;
            r
        };
        Ok(match req.code {
            rq::REGISTER_BROKER => {
                let topics: RegisterBrokerBody = if req.body.is_empty() {
                    RegisterBrokerBody::default()
                } else if f.get("compressed") == Some("true") {
                    return Ok(RemotingCommand::response_to(
                        req,
                        rs::SYSTEM_ERROR,
                        "compressed registrations are not supported; register with compressedRegister=false",
                    ));
                } else {
                    match body::from_body(&req.body) {
                        Ok(b) => b,
                        Err(e) => {
                            return Ok(RemotingCommand::response_to(
                                req,
                                rs::SYSTEM_ERROR,
                                format!("malformed registration body: {e}"),
                            ));
                        }
                    }
                };
                let timeout = match f.parse_or("heartbeatTimeoutMillis", 0u64)? {
                    0 => self.default_timeout,
                    ms => Duration::from_millis(ms),
                };
                let registration = Registration {
                    cluster: f.str("clusterName")?.to_owned(),
                    broker_name: f.str("brokerName")?.to_owned(),
                    broker_addr: f.str("brokerAddr")?.to_owned(),
                    broker_id: f.parse("brokerId")?,
                    timeout,
                    topics,
                };
                let mut routes = self.routes.write();
                let primary = routes
                    .brokers
                    .get(&registration.broker_name)
                    .and_then(|b| b.broker_addrs.get(&0).cloned());
                routes.register(registration, conn.id, Instant::now());
                let mut r = ok(body::to_body(&KvTable::default()));
                if let Some(p) = primary {
                    r.ext_fields.insert("masterAddr".into(), p);
                }
                r
            }
            rq::QUERY_DATA_VERSION => {
                let version: body::DataVersion = match body::from_body(&req.body) {
                    Ok(v) => v,
                    Err(e) => {
                        return Ok(RemotingCommand::response_to(
                            req,
                            rs::SYSTEM_ERROR,
                            format!("malformed data version: {e}"),
                        ));
                    }
                };
                let (changed, held) = self.routes.write().query_data_version(
                    f.str("brokerAddr")?,
                    f.parse("brokerId")?,
                    &version,
                    conn.id,
                    Instant::now(),
                );
                let mut r = ok(held.map_or_else(bytes::Bytes::new, |v| body::to_body(&v)));
                r.ext_fields.insert("changed".into(), changed.to_string());
                r
            }
            rq::UNREGISTER_BROKER => {
                self.routes
                    .write()
                    .remove(f.str("brokerAddr")?, "it unregistered");
                ok(bytes::Bytes::new())
            }
            rq::GET_ROUTEINFO_BY_TOPIC => {
                let topic = f.str("topic")?;
                match self.routes.read().route(topic) {
                    Some(route) => ok(body::to_body(&route)),
                    None => RemotingCommand::response_to(
                        req,
                        rs::TOPIC_NOT_EXIST,
                        format!("No topic route info in name server for the topic: {topic}"),
                    ),
                }
            }
            rq::GET_BROKER_CLUSTER_INFO => ok(body::to_body(&self.routes.read().cluster_info())),
            rq::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => {
                let topic_list = self.routes.read().topics.keys().cloned().collect();
                ok(body::to_body(&TopicList {
                    topic_list,
                    broker_addr: None,
                }))
            }
            rq::GET_TOPICS_BY_CLUSTER => {
                let topic_list = self.routes.read().topics_of_cluster(f.str("cluster")?);
                ok(body::to_body(&TopicList {
                    topic_list,
                    broker_addr: None,
                }))
            }
            rq::DELETE_TOPIC_IN_NAMESRV => {
                let topic = f.str("topic")?;
                let mut routes = self.routes.write();
                match f.get("clusterName") {
                    Some(cluster) if !cluster.is_empty() => {
                        let names = routes.clusters.get(cluster).cloned().unwrap_or_default();
                        if let Some(q) = routes.topics.get_mut(topic) {
                            q.retain(|b, _| !names.contains(b));
                            if q.is_empty() {
                                routes.topics.remove(topic);
                            }
                        }
                    }
                    _ => {
                        routes.topics.remove(topic);
                    }
                }
                ok(bytes::Bytes::new())
            }
            rq::PUT_KV_CONFIG => {
                let key = (f.str("namespace")?.to_owned(), f.str("key")?.to_owned());
                self.routes
                    .write()
                    .kv
                    .insert(key, f.str("value")?.to_owned());
                ok(bytes::Bytes::new())
            }
            rq::GET_KV_CONFIG => {
                let key = (f.str("namespace")?.to_owned(), f.str("key")?.to_owned());
                match self.routes.read().kv.get(&key) {
                    Some(v) => {
                        let mut r = ok(bytes::Bytes::new());
                        r.ext_fields.insert("value".into(), v.clone());
                        r
                    }
                    None => RemotingCommand::response_to(
                        req,
                        rs::QUERY_NOT_FOUND,
                        format!("No config item, Namespace: {} Key: {}", key.0, key.1),
                    ),
                }
            }
            _ => conn::not_supported(req),
        })
    }
}

impl Handler for Namesrv {
    fn request(
        self: Arc<Self>,
        conn: Arc<Connection>,
        req: RemotingCommand,
    ) -> impl Future<Output = Option<RemotingCommand>> + Send + 'static {
        self.metrics
            .requests
            .get_or_create(&vec![("code".to_owned(), req.code.to_string())])
            .inc();
        let response = match self.serve_request(&conn, &req) {
            Ok(r) => r,
            Err(e) => RemotingCommand::response_to(&req, rs::SYSTEM_ERROR, e.to_string()),
        };
        if response.code != rs::SUCCESS {
            tracing::debug!(code = req.code, peer = %conn.peer, response = response.code, remark = ?response.remark, "name server request refused");
        }
        std::future::ready(Some(response))
    }

    fn closed(&self, conn: &Arc<Connection>) {
        self.routes.write().connection_closed(conn.id);
    }
}

/// Runs a name server until `shutdown` resolves.
pub async fn run(
    cfg: NamesrvConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let namesrv = Namesrv::new(cfg.broker_timeout);
    let listener = super::listen(cfg.listen)
        .await
        .with_context(|| format!("binding the name server port {}", cfg.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "name server listening");
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding the HTTP port {}", cfg.http_listen))?;
    tracing::info!(http = %http_listener.local_addr()?, "HTTP (metrics, health) listening");
    let http_listener = crate::tls::HttpListener::new(http_listener, &cfg.tls)?;
    let http = {
        let n = Arc::clone(&namesrv);
        let router = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let n = Arc::clone(&n);
                    async move { n.encode_metrics() }
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
    let expiry = {
        let n = Arc::clone(&namesrv);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                n.routes.write().expire(Instant::now());
            }
        })
    };
    let tls = crate::tls::ServerTls::new(&cfg.tls, listener.local_addr()?, &[])
        .context("setting up TLS for the name server port")?;
    conn::serve(listener, namesrv, DEFAULT_MAX_FRAME, tls, shutdown).await;
    expiry.abort();
    http.abort();
    tracing::info!("name server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::remoting::body::TopicConfigWire;

    fn registration(name: &str, addr: &str, id: i64, topics: &[(&str, i32)]) -> Registration {
        let mut body = RegisterBrokerBody::default();
        for (t, q) in topics {
            body.topic_config_serialize_wrapper
                .topic_config_table
                .insert(
                    (*t).to_owned(),
                    TopicConfigWire {
                        topic_name: (*t).to_owned(),
                        read_queue_nums: *q,
                        write_queue_nums: *q,
                        ..TopicConfigWire::default()
                    },
                );
        }
        Registration {
            cluster: "c".into(),
            broker_name: name.into(),
            broker_addr: addr.into(),
            broker_id: id,
            timeout: Duration::from_secs(120),
            topics: body,
        }
    }

    #[test]
    fn a_topic_on_two_brokers_routes_to_both_until_one_goes() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(registration("a", "h:1", 0, &[("T", 4)]), 1, t0);
        r.register(registration("b", "h:2", 0, &[("T", 2), ("U", 1)]), 2, t0);
        let route = r.route("T").unwrap();
        assert_eq!(route.queue_datas.len(), 2);
        assert_eq!(route.broker_datas.len(), 2);
        assert_eq!(r.cluster_info().cluster_addr_table["c"], ["a", "b"]);

        r.connection_closed(2);
        let route = r.route("T").unwrap();
        assert_eq!(route.broker_datas.len(), 1);
        assert_eq!(route.broker_datas[0].broker_name, "a");
        assert!(r.route("U").is_none());
    }

    #[test]
    fn silent_brokers_expire_and_heartbeats_keep_them() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(registration("a", "h:1", 0, &[("T", 4)]), 1, t0);
        r.register(registration("b", "h:2", 0, &[("T", 4)]), 2, t0);
        let later = t0 + Duration::from_secs(100);
        r.register(registration("a", "h:1", 0, &[("T", 4)]), 1, later);
        assert_eq!(r.expire(t0 + Duration::from_secs(121)), 1);
        assert_eq!(r.route("T").unwrap().broker_datas[0].broker_name, "a");
        assert_eq!(r.expire(t0 + Duration::from_secs(219)), 0);
        assert_eq!(r.expire(t0 + Duration::from_secs(221)), 1);
        assert!(r.route("T").is_none());
    }

    #[test]
    fn a_data_version_query_is_a_heartbeat_and_says_whether_the_table_changed() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        let v = |counter| body::DataVersion {
            timestamp: 7,
            counter,
            state_version: None,
        };
        assert_eq!(r.query_data_version("h:1", 0, &v(2), 1, t0), (true, None));
        let mut reg = registration("a", "h:1", 0, &[("T", 4)]);
        reg.topics.topic_config_serialize_wrapper.data_version = v(2);
        r.register(reg, 1, t0);
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            r.query_data_version("h:1", 0, &v(2), 1, later),
            (false, Some(v(2)))
        );
        assert!(
            r.query_data_version("h:1", 0, &v(4), 1, later).0,
            "a newer table"
        );
        assert!(
            r.query_data_version("h:1", 1, &v(2), 1, later).0,
            "another role"
        );
        assert_eq!(
            r.expire(t0 + Duration::from_secs(121)),
            0,
            "the query kept it alive"
        );
        assert_eq!(r.route("T").unwrap().broker_datas.len(), 1);
    }

    #[test]
    fn a_primary_re_registering_replaces_its_topics() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(registration("a", "h:1", 0, &[("T", 4), ("U", 4)]), 1, t0);
        r.register(registration("a", "h:1", 0, &[("T", 8)]), 1, t0);
        assert!(r.route("U").is_none());
        assert_eq!(r.route("T").unwrap().queue_datas[0].write_queue_nums, 8);
        // A secondary does not change the queues.
        r.register(registration("a", "h:9", 1, &[]), 3, t0);
        assert_eq!(r.route("T").unwrap().broker_datas[0].broker_addrs.len(), 2);
        assert_eq!(r.route("T").unwrap().queue_datas[0].write_queue_nums, 8);
    }

    #[test]
    fn a_registration_touches_only_its_brokers_topics() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(registration("a", "h:1", 0, &[("T", 4), ("U", 4)]), 1, t0);
        r.register(registration("b", "h:2", 0, &[("U", 2), ("V", 2)]), 2, t0);
        // `a` drops U: U stays on `b`; T stays on `a`.
        r.register(registration("a", "h:1", 0, &[("T", 4)]), 1, t0);
        let u = r.route("U").unwrap();
        assert_eq!(u.queue_datas.len(), 1);
        assert_eq!(u.queue_datas[0].broker_name, "b");
        assert_eq!(r.route("T").unwrap().queue_datas[0].broker_name, "a");
        // A topic deleted from the name server, then dropped by its broker: no trace, no error.
        r.topics.remove("V");
        r.register(registration("b", "h:2", 0, &[("U", 2)]), 2, t0);
        assert!(r.route("V").is_none());
        // `b` goes: its topics go with it, `a`'s stay.
        r.remove("h:2", "test");
        assert!(r.route("U").is_none());
        assert!(r.route("T").is_some());
        assert_eq!(r.topics.len(), 1);
    }
}
