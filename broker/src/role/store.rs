//! The store role: one storage node (a RocketMQ broker) serving the remoting protocol, which
//! registers with every configured name server and keeps re-registering as its heartbeat
//! (every 30 s, and at once when its topics change).

use std::collections::HashMap;
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
    /// Other nodes' tiered history this node serves, read-only (a scale-in without moving
    /// data): each is registered under its own broker name, on its own port.
    pub adopt: Vec<AdoptConfig>,
    /// Replication in the broker group (`brokerName`): absent for a node without replicas.
    pub ha: Option<crate::ha::HaConfig>,
    /// TLS on the remoting port (permissive by default) and, with a `ca`, on links to the
    /// name servers.
    pub tls: crate::tls::TlsConfig,
    /// Authentication and authorization (RocketMQ ACL 2.0), off by default.
    pub auth: crate::auth::guard::AuthConfig,
    /// The file this configuration was read from (followed for `auth` changes).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

/// One adopted node: another store node's tier, served for reads under that node's name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptConfig {
    /// The adopted node's broker name (what its queues are routed by).
    pub broker_name: String,
    /// Where its remoting port listens.
    pub listen: SocketAddr,
    /// `host:port` clients should use for it (defaults to this node's advertised host with
    /// the `listen` port).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Only the store node with this broker name adopts it (one configuration file can serve
    /// a whole StatefulSet); every node that reads the entry when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The adopted node's tier: same object store and the node's prefix.
    pub tier: crate::tier::TierConfig,
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
            adopt: Vec::new(),
            ha: None,
            tls: Default::default(),
            auth: Default::default(),
            source: None,
        }
    }
}

impl StoreNodeConfig {
    /// Reads a YAML or JSON configuration file. Errors name the file and the bad field.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<StoreNodeConfig> {
        let mut cfg: StoreNodeConfig = super::read_config(path, |c: &StoreNodeConfig| &c.store)?;
        cfg.source = Some(path.to_owned());
        Ok(cfg)
    }
}

/// What a node tells the name servers about itself.
#[derive(Clone)]
struct Registration {
    broker_name: String,
    cluster: String,
    /// 0 for a primary; changes when the controllers move the primary role.
    broker_id: Arc<std::sync::atomic::AtomicI64>,
    advertised: String,
    namesrv: Vec<String>,
    heartbeat_timeout: Duration,
}

/// What each name server was last sent: the topic table version and the broker id.
type Registered = HashMap<String, (body::DataVersion, i64)>;

/// Asks a name server whether it holds `version` for this node (a heartbeat as well).
async fn holds_version(
    pool: &Pool<NoRequests>,
    addr: &str,
    reg: &Registration,
    version: &body::DataVersion,
    broker_id: i64,
) -> bool {
    let mut req = conn::request(
        rq::QUERY_DATA_VERSION,
        [
            ("brokerName", reg.broker_name.clone()),
            ("brokerAddr", reg.advertised.clone()),
            ("clusterName", reg.cluster.clone()),
            ("brokerId", broker_id.to_string()),
        ],
    );
    req.body = body::to_body(version);
    match pool.invoke(addr, req, CALL_TIMEOUT).await {
        Ok(r) => {
            r.code == rs::SUCCESS
                && r.ext_fields.get("changed").map(String::as_str) == Some("false")
        }
        Err(_) => false,
    }
}

/// Keeps every name server registered; returns how many hold the current registration. A
/// name server that already holds the current topic table version only gets a
/// QUERY_DATA_VERSION (a few bytes) instead of the whole table (2 MB at 12,500 topics).
async fn register_all(
    pool: &Pool<NoRequests>,
    handler: &BrokerHandler,
    reg: &Registration,
    registered: &mut Registered,
) -> usize {
    let version = handler.data_version();
    let broker_id = reg.broker_id.load(std::sync::atomic::Ordering::Acquire);
    let mut accepted = 0;
    let mut pending = Vec::new();
    for addr in &reg.namesrv {
        if registered.get(addr) == Some(&(version.clone(), broker_id))
            && holds_version(pool, addr, reg, &version, broker_id).await
        {
            accepted += 1;
        } else {
            pending.push(addr);
        }
    }
    if pending.is_empty() {
        return accepted;
    }
    let wrapper = handler.topic_wrapper();
    let version = wrapper.data_version.clone();
    let registration = RegisterBrokerBody {
        topic_config_serialize_wrapper: wrapper,
        filter_server_list: Vec::new(),
    };
    let body = body::to_body(&registration);
    for addr in pending {
        let mut req = conn::request(
            rq::REGISTER_BROKER,
            [
                ("brokerName", reg.broker_name.clone()),
                ("brokerAddr", reg.advertised.clone()),
                ("clusterName", reg.cluster.clone()),
                ("haServerAddr", reg.advertised.clone()),
                ("brokerId", broker_id.to_string()),
                (
                    "heartbeatTimeoutMillis",
                    reg.heartbeat_timeout.as_millis().to_string(),
                ),
                ("enableActingMaster", "false".to_owned()),
                ("compressed", "false".to_owned()),
                ("bodyCrc32", crc32fast::hash(&body).to_string()),
            ],
        );
        req.body = body.clone();
        match pool.invoke(addr, req, CALL_TIMEOUT).await {
            Ok(r) if r.code == rs::SUCCESS => {
                accepted += 1;
                registered.insert(addr.clone(), (version.clone(), broker_id));
            }
            Ok(r) => {
                tracing::warn!(namesrv = %addr, broker = %reg.broker_name, code = r.code, remark = ?r.remark, "name server refused the registration")
            }
            Err(e) => {
                tracing::warn!(namesrv = %addr, broker = %reg.broker_name, error = %e, "registering with a name server failed; retrying")
            }
        }
    }
    accepted
}

/// Keeps a node registered: every 30 s, soon while a name server is missing, and at once when
/// its topics change or a name-server connection drops.
fn spawn_registration(
    pool: Arc<Pool<NoRequests>>,
    handler: Arc<BrokerHandler>,
    reg: Registration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_version = None;
        let mut registered = Registered::new();
        loop {
            let version = handler.broker.metadata.version();
            let accepted = register_all(&pool, &handler, &reg, &mut registered).await;
            handler
                .registered
                .store(accepted > 0, std::sync::atomic::Ordering::Release);
            if last_version != Some(version) && accepted > 0 {
                tracing::info!(
                    accepted,
                    of = reg.namesrv.len(),
                    broker = %reg.broker_name,
                    "registered with the name servers"
                );
                last_version = Some(version);
            }
            // Re-register well within the timeout the name servers were given, whatever it is.
            let period = REGISTER_PERIOD.min(reg.heartbeat_timeout / 3);
            let wait = if accepted < reg.namesrv.len() {
                Duration::from_secs(3).min(period)
            } else {
                period
            };
            let until = tokio::time::Instant::now() + wait;
            // Topics also change without the remoting port (auto-creation, the HTTP admin
            // API): look at the version every second. A lost connection to a name server
            // means it may have restarted empty: register again at once.
            while tokio::time::Instant::now() < until
                && handler.broker.metadata.version() == version
                && reg.namesrv.iter().all(|a| pool.is_open(a))
            {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = handler.topics_changed.notified() => break,
                }
            }
            // Gather a burst of topic changes into one registration: briefly for a small
            // table, up to a second for a large one (each copy is about 180 bytes a topic).
            let topics = handler.broker.metadata.topic_count();
            tokio::time::sleep(Duration::from_millis(50 + (topics as u64 / 10).min(950))).await;
        }
    })
}

async fn unregister_all(pool: &Pool<NoRequests>, reg: &Registration) {
    for addr in &reg.namesrv {
        let req = conn::request(
            rq::UNREGISTER_BROKER,
            [
                ("brokerName", reg.broker_name.clone()),
                ("brokerAddr", reg.advertised.clone()),
                ("clusterName", reg.cluster.clone()),
                (
                    "brokerId",
                    reg.broker_id
                        .load(std::sync::atomic::Ordering::Acquire)
                        .to_string(),
                ),
            ],
        );
        if let Err(e) = pool.invoke(addr, req, Duration::from_secs(1)).await {
            tracing::debug!(namesrv = %addr, error = %e, "unregistering failed");
        }
    }
}

/// The address clients are told to use for a listener, and the IP address message ids carry.
fn advertised_address(local: SocketAddr, advertise: Option<&str>) -> (String, SocketAddr) {
    let advertised = advertise.map(str::to_owned).unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            format!("127.0.0.1:{}", local.port())
        } else {
            local.to_string()
        }
    });
    let store_host = advertised
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or(local);
    (advertised, store_host)
}

/// A node served next to this one from another node's tier.
struct Adopted {
    listener: tokio::net::TcpListener,
    handler: Arc<BrokerHandler>,
    store: Arc<MessageStore>,
    reg: Registration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens another node's tier read-only and a local store for it under
/// `<rootDir>/adopted/<brokerName>`: its metadata (topics, groups, consumer offsets) and its
/// ConsumeQueues come from the tier on the first start, its messages are read from the tier.
async fn adopt(
    a: &AdoptConfig,
    cfg: &StoreNodeConfig,
    guard: &Arc<crate::auth::guard::Guard>,
) -> anyhow::Result<Adopted> {
    let what = || format!("adopting {} (prefix {})", a.broker_name, a.tier.prefix);
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {} for {}", a.listen, a.broker_name))?;
    let local = listener.local_addr()?;
    let advertise = a.advertise.clone().or_else(|| {
        // The node's own advertised host (a pod's DNS name) with this listener's port.
        let own = cfg.advertise.as_deref()?;
        let host = own.rsplit_once(':').map_or(own, |(h, _)| h);
        Some(format!("{host}:{}", local.port()))
    });
    let (advertised, store_host) = advertised_address(local, advertise.as_deref());
    let tier = crate::tier::Tier::open_read_only(a.tier.clone()).with_context(what)?;
    let mut store_cfg = StoreConfig {
        root_dir: cfg.store.root_dir.join("adopted").join(&a.broker_name),
        store_host,
        tiered: true,
        empty_start_offset: tier.manifest().end(),
        ..cfg.store.clone()
    };
    tier.restore_metadata(&store_cfg.config_dir())
        .with_context(what)?;
    store_cfg.empty_start_offset = tier.manifest().end();
    let store = Arc::new(MessageStore::open(store_cfg).with_context(what)?);
    tier.attach(&store).with_context(what)?;
    if store.recovery_report().empty && tier.manifest().end() > 0 {
        let s = Arc::clone(&store);
        let t = Arc::clone(&tier);
        tokio::task::spawn_blocking(move || t.restore(&s))
            .await
            .context("joining the restore")?
            .with_context(what)?;
    }
    let broker = Arc::new(
        Broker::open(
            Arc::clone(&store),
            BrokerConfig {
                broker_name: a.broker_name.clone(),
                auto_create_topics: false,
                ..cfg.broker.clone()
            },
        )
        .with_context(what)?,
    );
    let handler = BrokerHandler::new(broker, &cfg.cluster, &advertised, Arc::clone(guard));
    handler.set_read_only(true);
    let m = tier.manifest();
    tracing::info!(broker = %a.broker_name, remoting = %a.listen, %advertised, segments = m.segments.len(), tiered_bytes = m.bytes(), "serving an adopted node's tiered history (read-only)");
    let tasks = super::standalone::spawn_service_tasks(&handler.broker);
    Ok(Adopted {
        listener,
        handler,
        store,
        reg: Registration {
            broker_name: a.broker_name.clone(),
            cluster: cfg.cluster.clone(),
            broker_id: Arc::new(0.into()),
            advertised,
            namesrv: cfg.namesrv.clone(),
            heartbeat_timeout: cfg.heartbeat_timeout,
        },
        tasks,
    })
}

/// What a replica takes from its primary besides the CommitLog: topics, groups and consumer
/// offsets.
struct BrokerMeta(Arc<Broker>, Arc<crate::auth::guard::Guard>);

type MetaFrame = crate::ha::MetaFrame<TopicConfig, GroupConfig, crate::auth::store::AuthState>;

fn encode(frame: &MetaFrame) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(frame).expect("plain data"))
}

impl crate::ha::MetaSync for BrokerMeta {
    fn snapshot(&self) -> bytes::Bytes {
        encode(&MetaFrame {
            topics: Some(self.0.metadata.topics()),
            groups: Some(self.0.metadata.groups()),
            offsets: self.0.store.consumer_offsets().table(),
            offsets_changed: false,
            auth: Some(self.1.users.state()),
        })
    }

    fn changes(&self, link: &mut crate::ha::MetaLink) -> Option<bytes::Bytes> {
        if !link.deltas {
            return link.whole_if_changed(self.snapshot());
        }
        // Each version is read before its part: a change made in between bumps it again and
        // is sent next time.
        let m = &self.0.metadata;
        let topics = link
            .part_changed("topics", m.topic_changes())
            .then(|| m.topics());
        let groups = link
            .part_changed("groups", m.group_changes())
            .then(|| m.groups());
        let auth = self.1.users.state();
        let auth_crc = crc32fast::hash(&serde_json::to_vec(&auth).expect("plain data"));
        let auth = link
            .part_changed("auth", u64::from(auth_crc))
            .then_some(auth);
        let (offsets, whole) = link.offsets(self.0.store.consumer_offsets());
        let frame = MetaFrame {
            topics,
            groups,
            offsets,
            offsets_changed: !whole,
            auth,
        };
        (!frame.is_empty()).then(|| encode(&frame))
    }

    fn apply(&self, frame: &[u8]) -> Result<(), String> {
        let mut f: MetaFrame = serde_json::from_slice(frame).map_err(|e| e.to_string())?;
        let m = &self.0.metadata;
        // Every part is applied even when another fails (the link then restarts, and its
        // first frame is whole again).
        let mut failed = Vec::new();
        if let Some(topics) = f.topics.take()
            && let Err(e) = m.put_topics(topics)
        {
            failed.push(format!("topics: {e}"));
        }
        if let Some(groups) = f.groups.take()
            && let Err(e) = m.put_groups(groups)
        {
            failed.push(format!("groups: {e}"));
        }
        f.apply_offsets(self.0.store.consumer_offsets());
        if let Some(auth) = f.auth
            && let Err(e) = self.1.users.replace(auth)
        {
            failed.push(format!("users: {e}"));
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    fn on_role_change(&self) {
        if let Err(e) = self.0.pop.reset() {
            tracing::warn!(error = %e, "resetting the delivery state failed");
        }
    }
}

/// Starts replication for a node in a broker group: the HA port of a primary, or the link of
/// a replica to its primary.
#[allow(clippy::too_many_arguments)]
async fn start_ha(
    ha: &crate::ha::HaConfig,
    handler: &Arc<BrokerHandler>,
    store: &Arc<MessageStore>,
    root: &std::path::Path,
    (broker_id, registered_id, advertised): (i64, &Arc<std::sync::atomic::AtomicI64>, &str),
    tier: Option<Arc<crate::tier::Tier>>,
    tls: &crate::tls::TlsConfig,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    ha.validate()
        .map_err(|e| anyhow::anyhow!("invalid ha configuration: {e}"))?;
    let ha_tls = crate::ha::controlled::HaTls {
        server: crate::tls::ServerTls::new(tls, ha.listen, &[])
            .context("setting up TLS for the HA port")?,
        client: crate::tls::ClientTls::new(tls, &[])
            .context("setting up TLS for the link to the primary")?,
    };
    let broker = &handler.broker;
    let epochs = Arc::new(crate::ha::epoch::EpochFile::open(root)?);
    let meta = Arc::new(BrokerMeta(Arc::clone(broker), Arc::clone(&handler.guard)));
    let group = broker.config.broker_name.clone();
    if !ha.controllers.is_empty() {
        let listener = tokio::net::TcpListener::bind(ha.listen)
            .await
            .with_context(|| format!("binding the HA port {}", ha.listen))?;
        let ha_addr =
            crate::ha::controlled::advertised(listener.local_addr()?, ha.advertise.as_deref());
        tracing::info!(ha = %ha_addr, controllers = ?ha.controllers, "HA port listening; the controllers pick the primary");
        let h = Arc::clone(handler);
        let node = crate::ha::controlled::ControlledNode {
            store: Arc::clone(store),
            epochs,
            ha: ha.clone(),
            group,
            broker_id,
            member: crate::controller::MemberInfo {
                ha_addr,
                addr: advertised.to_owned(),
            },
            meta,
            controllers: ha.controllers.clone(),
            heartbeat_every: ha.heartbeat_every,
            registered_id: Arc::clone(registered_id),
            on_change: Arc::new(move || h.topics_changed.notify_one()),
            role: tokio::sync::watch::Sender::new(Default::default()),
            cold: tier.clone().map(|t| t as Arc<dyn crate::ha::ColdLog>),
            tls: ha_tls,
        };
        // The tier follows the role: only the primary writes it.
        if let Some(tier) = tier {
            let mut role = node.role.subscribe();
            tokio::spawn(async move {
                while role.changed().await.is_ok() {
                    let primary = matches!(
                        *role.borrow_and_update(),
                        crate::ha::controlled::Role::Primary { .. }
                    );
                    tier.set_writer(primary);
                }
            });
        }
        return Ok(tokio::spawn(node.run(listener, stopped)));
    }
    Ok(match &ha.primary {
        None => {
            let listener = tokio::net::TcpListener::bind(ha.listen)
                .await
                .with_context(|| format!("binding the HA port {}", ha.listen))?;
            tracing::info!(ha = %listener.local_addr()?, replication = ?ha.replication, "HA port listening (primary)");
            let primary =
                crate::ha::Primary::new(Arc::clone(store), epochs, ha.clone(), &group, 0, meta)?;
            primary.set_tls(ha_tls.server);
            if let Some(tier) = tier {
                tier.set_writer(true);
                primary.set_cold_log(tier);
            }
            tokio::spawn(primary.serve(Arc::new(listener), stopped))
        }
        Some(addr) => {
            let replica = crate::ha::Replica {
                store: Arc::clone(store),
                epochs,
                group,
                broker_id,
                primary: addr.clone(),
                meta,
                min_epoch: 0,
                link: None,
                tls: ha_tls.client,
            };
            tokio::spawn(replica.run(stopped))
        }
    })
}

/// Runs a store node until `shutdown` resolves.
pub async fn run(
    mut cfg: StoreNodeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = super::listen(cfg.listen)
        .await
        .with_context(|| format!("binding the remoting port {}", cfg.listen))?;
    let local = listener.local_addr()?;
    // Message ids carry the store host as an IP address: the advertised name, resolved.
    let (advertised, store_host) = advertised_address(local, cfg.advertise.as_deref());
    cfg.store.store_host = store_host;
    // One configuration file serves a whole StatefulSet: `{brokerName}` in a tier prefix is
    // this node's name.
    let name = cfg.broker.broker_name.clone();
    if let Some(t) = &mut cfg.tier {
        t.prefix = t.prefix.replace("{brokerName}", &name);
    }
    cfg.adopt
        .retain(|a| a.node.as_ref().is_none_or(|n| *n == name) && a.broker_name != name);
    // In a replicated group the members share one tier (the group's broker name in the
    // prefix): only the primary writes it, the others follow its manifest; a member with an
    // empty data folder copies the group's log from the primary (which reads what it evicted
    // back from the tier) instead of restoring from the tier itself.
    let tier = match cfg.ha.is_some() {
        true => cfg
            .tier
            .clone()
            .map(|t| {
                let tier = crate::tier::Tier::open(t).context("opening the tier")?;
                tier.set_writer(false);
                cfg.store.tiered = true;
                anyhow::Ok(tier)
            })
            .transpose()?,
        false => super::standalone::open_tier(cfg.tier.clone(), &mut cfg.store)?,
    };
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
    broker
        .metadata
        .put_topics(cfg.topics.clone())
        .context("creating the configured topics")?;
    broker
        .metadata
        .put_groups(cfg.groups.clone())
        .context("creating the configured groups")?;
    if cfg.broker.auto_create_topics && broker.metadata.topic(AUTO_CREATE_TOPIC).is_none() {
        // Producers look this topic up for routes to topics that do not exist yet, then send
        // to a broker that has it; the send creates the topic (RocketMQ's TBW102).
        broker.metadata.put_topic(TopicConfig {
            name: AUTO_CREATE_TOPIC.to_owned(),
            queues: cfg.broker.default_queues,
            message_type: crate::service::metadata::TopicMessageType::Normal,
        })?;
    }
    let guard = super::auth_guard(
        &cfg.auth,
        Some(&cfg.store.config_dir()),
        cfg.source.clone(),
        |c: &StoreNodeConfig| c.auth.clone(),
    )?;
    {
        let guard = Arc::clone(&guard);
        broker
            .metrics
            .add_source(Arc::new(move || guard.encode_metrics()));
    }
    let tls = crate::tls::ServerTls::new(&cfg.tls, local, &[])
        .context("setting up TLS for the remoting port")?;
    let client_tls = crate::tls::ClientTls::new(&cfg.tls, &[])
        .context("setting up TLS for links to the name servers")?;
    let handler = BrokerHandler::new(
        Arc::clone(&broker),
        &cfg.cluster,
        &advertised,
        Arc::clone(&guard),
    );
    tracing::info!(remoting = %local, %advertised, cluster = %cfg.cluster, broker = %cfg.broker.broker_name, id = cfg.broker_id, namesrv = ?cfg.namesrv, "store node listening");

    let mut tasks = super::standalone::spawn_service_tasks(&broker);
    let tier = match super::standalone::start_tier(tier, &store, cfg.ha.is_none())? {
        Some((tier, task)) => {
            let t = Arc::clone(&tier);
            broker
                .metrics
                .add_source(Arc::new(move || t.metrics.encode()));
            tasks.push(task);
            Some(tier)
        }
        None => None,
    };
    let node = super::drain::NodeAdmin::new(Arc::clone(&handler), Arc::clone(&store), tier);
    tasks.push(tokio::spawn(Arc::clone(&node).run()));

    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding the HTTP port {}", cfg.http_listen))?;
    tracing::info!(http = %http_listener.local_addr()?, "HTTP (metrics, health, admin) listening");
    let http_listener = crate::tls::HttpListener::new(http_listener, &cfg.tls)?;
    let http = {
        let registered = Arc::clone(&handler);
        let ready: crate::protocol::http::Readiness = Arc::new(move || {
            if registered
                .registered
                .load(std::sync::atomic::Ordering::Acquire)
            {
                Ok(())
            } else {
                Err("not registered with any name server yet".to_owned())
            }
        });
        let router = crate::protocol::http::router_with_readiness(
            Arc::clone(&broker),
            Arc::clone(&guard),
            ready,
        )
        .merge(node.router());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, router).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    let pool = Arc::new(
        Pool::new(Arc::new(NoRequests), CALL_TIMEOUT, DEFAULT_MAX_FRAME).with_tls(client_tls),
    );
    pool.set_credentials(guard.internal_credentials());
    let controlled = cfg.ha.as_ref().is_some_and(|h| !h.controllers.is_empty());
    if controlled && cfg.broker_id < 1 {
        anyhow::bail!(
            "brokerId must be 1 or more when the controllers pick the primary (a node registers \
             as 0 while it is primary)"
        );
    }
    let reg = Registration {
        broker_name: cfg.broker.broker_name.clone(),
        cluster: cfg.cluster.clone(),
        broker_id: Arc::new(cfg.broker_id.into()),
        advertised: advertised.clone(),
        namesrv: cfg.namesrv.clone(),
        heartbeat_timeout: cfg.heartbeat_timeout,
    };
    tasks.push(spawn_registration(
        Arc::clone(&pool),
        Arc::clone(&handler),
        reg.clone(),
    ));
    tasks.push(spawn_client_scan(Arc::clone(&handler)));

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut ha_task = None;
    if let Some(ha) = &cfg.ha {
        ha_task = Some(
            start_ha(
                ha,
                &handler,
                &store,
                &cfg.store.root_dir,
                (cfg.broker_id, &reg.broker_id, &advertised),
                node.tier.clone(),
                &cfg.tls,
                stopped.clone(),
            )
            .await?,
        );
    }
    let mut adopted = Vec::new();
    for a in &cfg.adopt {
        let mut node = adopt(a, &cfg, &guard).await?;
        node.tasks.push(spawn_registration(
            Arc::clone(&pool),
            Arc::clone(&node.handler),
            node.reg.clone(),
        ));
        node.tasks
            .push(spawn_client_scan(Arc::clone(&node.handler)));
        let mut stopped = stopped.clone();
        let serve = conn::serve(
            node.listener,
            Arc::clone(&node.handler),
            DEFAULT_MAX_FRAME,
            tls.clone(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        );
        node.tasks.push(tokio::spawn(serve));
        adopted.push((node.reg, node.handler, node.store, node.tasks));
    }

    conn::serve(
        listener,
        Arc::clone(&handler),
        DEFAULT_MAX_FRAME,
        tls,
        shutdown,
    )
    .await;
    let _ = stop.send(true);
    // A primary hands its role to an in-sync replica before it goes (bounded).
    if let Some(t) = ha_task
        && tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
    {
        tracing::warn!("replication did not stop within 10 s");
    }
    for t in tasks {
        t.abort();
    }
    http.abort();
    tracing::info!("shutting down: leaving the name servers");
    unregister_all(&pool, &reg).await;
    let mut stores = vec![(broker, store)];
    for (reg, handler, store, tasks) in adopted {
        for t in tasks {
            t.abort();
        }
        unregister_all(&pool, &reg).await;
        stores.push((Arc::clone(&handler.broker), store));
    }
    pool.close_all();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for (broker, store) in stores {
            broker.pop.compact()?;
            store.shutdown()?;
        }
        Ok(())
    })
    .await
    .context("joining shutdown")??;
    Ok(())
}

/// Drops clients whose heartbeats stopped (every 10 s).
fn spawn_client_scan(handler: Arc<BrokerHandler>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            handler.scan_clients().await;
        }
    })
}
