//! The store role: one storage node (a RocketMQ broker) serving the remoting protocol, which
//! registers with every configured name server and keeps re-registering as its heartbeat
//! (every 30 s, and at once when its topics change).

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::protocol::remoting::body::{self, RegisterBrokerBody};
use crate::protocol::remoting::broker::BrokerHandler;
use crate::protocol::remoting::codec::DEFAULT_MAX_FRAME;
use crate::protocol::remoting::codes::{request as rq, response as rs};
use crate::protocol::remoting::conn::{self, NoRequests, Pool};
use crate::service::metadata::{GroupConfig, TopicConfig};
use crate::service::{Broker, BrokerConfig};
use crate::store::{MessageStore, StoreConfig};

/// How often a store node re-registers (RocketMQ's `registerNameServerPeriod`).
const REGISTER_PERIOD: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// RocketMQ's default topic for auto-creation (`TopicValidator.AUTO_CREATE_TOPIC_KEY_TOPIC`).
pub const AUTO_CREATE_TOPIC: &str = "TBW102";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StoreNodeConfig {
    pub store: StoreConfig,
    /// `broker.brokerName` is this node's broker name.
    pub broker: BrokerConfig,
    /// The cluster this node belongs to (RocketMQ's `brokerClusterName`).
    pub cluster: String,
    /// 0 for a primary.
    pub broker_id: i64,
    /// Where the remoting port listens (RocketMQ's default is 10911).
    pub listen: SocketAddr,
    /// `host:port` that clients and proxies should use; may be a DNS name (a pod's stable
    /// name). Defaults to the listen address (loopback when that is 0.0.0.0).
    pub advertise: Option<String>,
    /// Name servers (`host:port`) to register with; each gets every registration.
    pub namesrv: Vec<String>,
    /// Where the HTTP port (metrics, health, admin API) listens.
    pub http_listen: SocketAddr,
    pub topics: Vec<TopicConfig>,
    pub groups: Vec<GroupConfig>,
    /// How long a name server waits for the next registration before dropping this node.
    #[serde(with = "crate::store::config::millis")]
    pub heartbeat_timeout: Duration,
    /// Tiered storage (off when absent); its prefix should name this node.
    pub tier: Option<crate::tier::TierConfig>,
}

impl Default for StoreNodeConfig {
    fn default() -> Self {
        StoreNodeConfig {
            store: StoreConfig {
                root_dir: "data/store".into(),
                ..StoreConfig::default()
            },
            broker: BrokerConfig::default(),
            cluster: "DefaultCluster".into(),
            broker_id: 0,
            listen: SocketAddr::from(([0, 0, 0, 0], 10911)),
            advertise: None,
            namesrv: vec!["127.0.0.1:9876".into()],
            http_listen: SocketAddr::from(([0, 0, 0, 0], 10912)),
            topics: Vec::new(),
            groups: Vec::new(),
            heartbeat_timeout: super::namesrv::DEFAULT_BROKER_TIMEOUT,
            tier: None,
        }
    }
}

impl StoreNodeConfig {
    /// Reads a YAML or JSON configuration file. Errors name the file and the bad field.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<StoreNodeConfig> {
        super::read_config(path, |c: &StoreNodeConfig| &c.store)
    }
}

/// Sends one registration to every name server; returns how many accepted it.
async fn register_all(
    pool: &Pool<NoRequests>,
    handler: &BrokerHandler,
    cfg: &StoreNodeConfig,
    advertised: &str,
) -> usize {
    let registration = RegisterBrokerBody {
        topic_config_serialize_wrapper: handler.topic_wrapper(),
        filter_server_list: Vec::new(),
    };
    let body = body::to_body(&registration);
    let mut accepted = 0;
    for addr in &cfg.namesrv {
        let mut req = conn::request(
            rq::REGISTER_BROKER,
            [
                ("brokerName", cfg.broker.broker_name.clone()),
                ("brokerAddr", advertised.to_owned()),
                ("clusterName", cfg.cluster.clone()),
                ("haServerAddr", advertised.to_owned()),
                ("brokerId", cfg.broker_id.to_string()),
                (
                    "heartbeatTimeoutMillis",
                    cfg.heartbeat_timeout.as_millis().to_string(),
                ),
                ("enableActingMaster", "false".to_owned()),
                ("compressed", "false".to_owned()),
                ("bodyCrc32", crc32fast::hash(&body).to_string()),
            ],
        );
        req.body = body.clone();
        match pool.invoke(addr, req, CALL_TIMEOUT).await {
            Ok(r) if r.code == rs::SUCCESS => accepted += 1,
            Ok(r) => {
                tracing::warn!(namesrv = %addr, code = r.code, remark = ?r.remark, "name server refused the registration")
            }
            Err(e) => {
                tracing::warn!(namesrv = %addr, error = %e, "registering with a name server failed; retrying")
            }
        }
    }
    accepted
}

/// Runs a store node until `shutdown` resolves.
pub async fn run(
    mut cfg: StoreNodeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding the remoting port {}", cfg.listen))?;
    let local = listener.local_addr()?;
    let advertised = cfg.advertise.clone().unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            format!("127.0.0.1:{}", local.port())
        } else {
            local.to_string()
        }
    });
    // Message ids carry the store host as an IP address: resolve the advertised name.
    let store_host = advertised
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or(local);
    cfg.store.store_host = store_host;
    let tier = super::standalone::open_tier(cfg.tier.clone())?;
    if let Some(t) = &tier {
        cfg.store.tiered = true;
        cfg.store.empty_start_offset = t.manifest().end();
    }
    let store = Arc::new(
        MessageStore::open(cfg.store.clone())
            .with_context(|| format!("opening the store at {}", cfg.store.root_dir.display()))?,
    );
    let r = store.recovery_report();
    tracing::info!(
        data_dir = %cfg.store.root_dir.display(),
        flush_policy = %cfg.store.flush_policy,
        crashed_before = r.crashed,
        commitlog_end = r.end,
        "store open"
    );
    let broker = Arc::new(
        Broker::open(Arc::clone(&store), cfg.broker.clone())
            .context("opening the messaging service")?,
    );
    for t in &cfg.topics {
        broker
            .metadata
            .put_topic(t.clone())
            .with_context(|| format!("creating topic {}", t.name))?;
    }
    for g in &cfg.groups {
        broker
            .metadata
            .put_group(g.clone())
            .with_context(|| format!("creating group {}", g.name))?;
    }
    if cfg.broker.auto_create_topics && broker.metadata.topic(AUTO_CREATE_TOPIC).is_none() {
        // Producers look this topic up for routes to topics that do not exist yet, then send
        // to a broker that has it; the send creates the topic (RocketMQ's TBW102).
        broker.metadata.put_topic(TopicConfig {
            name: AUTO_CREATE_TOPIC.to_owned(),
            queues: cfg.broker.default_queues,
            message_type: crate::service::metadata::TopicMessageType::Normal,
        })?;
    }
    let handler = BrokerHandler::new(Arc::clone(&broker), &cfg.cluster, &advertised);
    tracing::info!(remoting = %local, %advertised, cluster = %cfg.cluster, broker = %cfg.broker.broker_name, id = cfg.broker_id, namesrv = ?cfg.namesrv, "store node listening");

    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding the HTTP port {}", cfg.http_listen))?;
    tracing::info!(http = %http_listener.local_addr()?, "HTTP (metrics, health, admin) listening");
    let http = {
        let router = crate::protocol::http::router(Arc::clone(&broker));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, router).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    let mut tasks = super::standalone::spawn_service_tasks(&broker);
    if let Some((tier, task)) = super::standalone::start_tier(tier, &store)? {
        broker
            .metrics
            .add_source(Arc::new(move || tier.metrics.encode()));
        tasks.push(task);
    }
    let pool = Arc::new(Pool::new(
        Arc::new(NoRequests),
        CALL_TIMEOUT,
        DEFAULT_MAX_FRAME,
    ));
    tasks.push({
        let (pool, handler, cfg, advertised) = (
            Arc::clone(&pool),
            Arc::clone(&handler),
            cfg.clone(),
            advertised.clone(),
        );
        tokio::spawn(async move {
            let mut last_version = None;
            loop {
                let version = handler.broker.metadata.version();
                let accepted = register_all(&pool, &handler, &cfg, &advertised).await;
                if last_version != Some(version) && accepted > 0 {
                    tracing::info!(
                        accepted,
                        of = cfg.namesrv.len(),
                        "registered with the name servers"
                    );
                    last_version = Some(version);
                }
                // Retry soon while a name server is missing; otherwise on the period or on
                // a topic change (coalescing bursts of them).
                let wait = if accepted < cfg.namesrv.len() {
                    Duration::from_secs(3)
                } else {
                    REGISTER_PERIOD
                };
                let until = tokio::time::Instant::now() + wait;
                // Topics also change without the remoting port (auto-creation, the HTTP
                // admin API): look at the version every second. A lost connection to a name
                // server means it may have restarted empty: register again at once.
                while tokio::time::Instant::now() < until
                    && handler.broker.metadata.version() == version
                    && cfg.namesrv.iter().all(|a| pool.is_open(a))
                {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = handler.topics_changed.notified() => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });
    tasks.push({
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                handler.scan_clients().await;
            }
        })
    });

    conn::serve(listener, Arc::clone(&handler), DEFAULT_MAX_FRAME, shutdown).await;
    for t in tasks {
        t.abort();
    }
    http.abort();
    tracing::info!("shutting down: leaving the name servers");
    for addr in &cfg.namesrv {
        let req = conn::request(
            rq::UNREGISTER_BROKER,
            [
                ("brokerName", cfg.broker.broker_name.clone()),
                ("brokerAddr", advertised.clone()),
                ("clusterName", cfg.cluster.clone()),
                ("brokerId", cfg.broker_id.to_string()),
            ],
        );
        if let Err(e) = pool.invoke(addr, req, Duration::from_secs(1)).await {
            tracing::debug!(namesrv = %addr, error = %e, "unregistering failed");
        }
    }
    pool.close_all();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        broker.pop.compact()?;
        store.shutdown()?;
        Ok(())
    })
    .await
    .context("joining shutdown")??;
    Ok(())
}
