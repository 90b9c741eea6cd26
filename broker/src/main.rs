//! `rmq-broker`: one binary, one role per subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use broker::role::standalone::{self, StandaloneConfig};
use broker::service::metadata::{GroupConfig, TopicConfig, TopicMessageType};
use broker::store::FlushPolicy;

#[derive(Parser)]
#[command(name = "rmq-broker", version, about = "RocketMQ-compatible broker")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Store, messaging service and gRPC endpoint in one process, with embedded defaults.
    Standalone(StandaloneArgs),
    /// Store node (a RocketMQ broker): serves the remoting protocol and registers with the
    /// name servers.
    Store(StoreArgs),
    /// Proxy: stateless gRPC endpoint forwarding to the store nodes the name servers route to.
    Proxy(ProxyArgs),
    /// Name server: the route registry store nodes register with and clients ask for routes.
    Namesrv(NamesrvArgs),
    /// Controller: picks each broker group's primary and fails over to an in-sync replica;
    /// run 3 (Raft) to survive the loss of one.
    Controller(ControllerArgs),
    /// Command-line tool: topics, groups, progress, send and receive against a running broker.
    Admin(broker::cli::AdminArgs),
}

/// TLS and authentication, for every role that serves clients.
#[derive(clap::Args)]
struct SecurityArgs {
    /// Plaintext only (the same as --tls-mode disabled).
    #[arg(long, env = "RMQ_NO_TLS")]
    no_tls: bool,
    /// disabled, permissive (TLS and plaintext on one port) or enforcing (TLS only)
    /// [default: permissive].
    #[arg(long, env = "RMQ_TLS_MODE")]
    tls_mode: Option<broker::tls::TlsMode>,
    /// PEM certificate chain for TLS (with --tls-key); self-signed when absent. Re-read when
    /// the file changes.
    #[arg(long, env = "RMQ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "RMQ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: verify client certificates and the nodes this one links to (links
    /// use TLS only when this is given).
    #[arg(long, env = "RMQ_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by --tls-ca
    /// (none, optional, required) [default: none].
    #[arg(long, env = "RMQ_TLS_CLIENT_AUTH")]
    tls_client_auth: Option<broker::tls::ClientAuth>,
    /// Requests must be signed by a known user (RocketMQ ACL 2.0).
    #[arg(long, env = "RMQ_AUTHENTICATION")]
    authentication: bool,
    /// Requests must be allowed by the user's policy.
    #[arg(long, env = "RMQ_AUTHORIZATION")]
    authorization: bool,
    /// Log what authentication and authorization would refuse, refuse nothing.
    #[arg(long, env = "RMQ_AUTH_MIGRATION")]
    auth_migration: bool,
    /// Access key of the administrator (a super user; nodes also sign their requests to
    /// each other with it).
    #[arg(long, env = "RMQ_ADMIN_ACCESS_KEY", requires = "admin_secret_key")]
    admin_access_key: Option<String>,
    /// Secret key of the administrator.
    #[arg(
        long,
        env = "RMQ_ADMIN_SECRET_KEY",
        hide_env_values = true,
        requires = "admin_access_key"
    )]
    admin_secret_key: Option<String>,
}

impl SecurityArgs {
    /// Flags override the configuration file's `tls` and `auth` sections.
    fn apply(self, tls: &mut broker::tls::TlsConfig, auth: &mut broker::auth::guard::AuthConfig) {
        use broker::tls::TlsMode;
        if let Some(m) = self.tls_mode {
            tls.mode = m;
        }
        if self.no_tls {
            tls.mode = TlsMode::Disabled;
        }
        if let Some(c) = self.tls_cert {
            tls.cert = Some(c);
        }
        if let Some(k) = self.tls_key {
            tls.key = Some(k);
        }
        if let Some(ca) = self.tls_ca {
            tls.ca = Some(ca);
        }
        if let Some(a) = self.tls_client_auth {
            tls.client_auth = a;
        }
        auth.authentication |= self.authentication;
        auth.authorization |= self.authorization;
        auth.migration |= self.auth_migration;
        if let (Some(access_key), Some(secret_key)) = (self.admin_access_key, self.admin_secret_key)
        {
            auth.admin = Some(broker::auth::guard::Credentials {
                access_key,
                secret_key,
            });
        }
    }
}

/// Flags override the `--config` file, which overrides the defaults shown.
#[derive(clap::Args)]
struct StoreArgs {
    /// YAML or JSON file with the whole configuration; flags override it.
    #[arg(long, env = "RMQ_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    security: SecurityArgs,
    /// Folder for all data [default: data/store].
    #[arg(long, env = "RMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the remoting port [default: 0.0.0.0:10911].
    #[arg(long, env = "RMQ_LISTEN")]
    listen: Option<SocketAddr>,
    /// host:port clients should use (may be a DNS name) [default: the listen address].
    #[arg(long, env = "RMQ_ADVERTISE")]
    advertise: Option<String>,
    /// Name servers to register with: host:port, repeatable or separated by ';'
    /// [default: 127.0.0.1:9876].
    #[arg(long, env = "RMQ_NAMESRV")]
    namesrv: Vec<String>,
    /// Cluster name [default: DefaultCluster].
    #[arg(long, env = "RMQ_CLUSTER")]
    cluster: Option<String>,
    /// Broker name shared by a primary and its replicas [default: broker-a].
    #[arg(long, env = "RMQ_BROKER_NAME")]
    broker_name: Option<String>,
    /// Broker id: 0 for the primary [default: 0].
    #[arg(long, env = "RMQ_BROKER_ID")]
    broker_id: Option<i64>,
    /// The pod's StatefulSet ordinal: the broker id becomes ordinal + 1 (for a group whose
    /// primary the controllers pick; overrides --broker-id).
    #[arg(long, env = "RMQ_POD_INDEX")]
    pod_index: Option<i64>,
    /// `host:port` other members of the group reach this node's HA port at.
    #[arg(long, env = "RMQ_HA_ADVERTISE")]
    ha_advertise: Option<String>,
    /// Address of the HA port (replication inside the broker group).
    #[arg(long, env = "RMQ_HA_LISTEN")]
    ha_listen: Option<SocketAddr>,
    /// Controllers' HTTP addresses (`host:port`, repeatable or comma-separated); they pick
    /// the group's primary.
    #[arg(long = "controller", env = "RMQ_CONTROLLERS", value_delimiter = ',')]
    controllers: Vec<String>,
    /// Address of the HTTP port: /metrics, /healthz, /readyz, admin API [default: 0.0.0.0:10912].
    #[arg(long, env = "RMQ_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// SYNC_FLUSH (acknowledge after fsync) or ASYNC_FLUSH [default: ASYNC_FLUSH].
    #[arg(long, env = "RMQ_FLUSH_POLICY")]
    flush_policy: Option<FlushPolicy>,
    /// Bytes per CommitLog segment [default: 134217728].
    #[arg(long, env = "RMQ_SEGMENT_SIZE")]
    segment_size: Option<u64>,
    /// Create (or update) a topic at start: NAME[:QUEUES[:TYPE]]. Repeatable.
    #[arg(long = "topic", value_parser = parse_topic)]
    topics: Vec<TopicConfig>,
    /// Create (or update) a consumer group at start: NAME[:MAX_DELIVERY_ATTEMPTS[:fifo]].
    #[arg(long = "group", value_parser = parse_group)]
    groups: Vec<GroupConfig>,
    /// Create unknown topics on first use instead of answering TOPIC_NOT_EXIST.
    #[arg(long, env = "RMQ_AUTO_CREATE_TOPICS")]
    auto_create_topics: bool,
    /// Milliseconds a transaction may stay undecided before the store node checks back with
    /// a producer (and between checks) [default: 10000].
    #[arg(long, env = "RMQ_TRANSACTION_CHECK_INTERVAL_MS")]
    transaction_check_interval_ms: Option<u64>,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// YAML or JSON configuration file (camelCase fields); flags override it.
    #[arg(long, env = "RMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the RocketMQ 5 gRPC endpoint [default: 0.0.0.0:8081].
    #[arg(long, env = "RMQ_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Address of the HTTP port: /metrics, /healthz, /readyz [default: 0.0.0.0:8082].
    #[arg(long, env = "RMQ_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Address given to clients in routes [default: the listen address].
    #[arg(long, env = "RMQ_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Name servers: host:port, repeatable or separated by ';' [default: 127.0.0.1:9876].
    #[arg(long, env = "RMQ_NAMESRV")]
    namesrv: Vec<String>,
    #[command(flatten)]
    security: SecurityArgs,
}

fn namesrv_list(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|n| n.split([';', ',']))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// YAML or JSON configuration file (camelCase fields); flags override it.
    #[arg(long, env = "RMQ_CONFIG")]
    config: Option<PathBuf>,
    /// This controller's id, one of the `--peer` ids [default: 1].
    #[arg(long, env = "RMQ_CONTROLLER_ID")]
    id: Option<u64>,
    /// Every controller as `id=host:port` (repeat); the same list on each [default: 1=127.0.0.1:9878].
    #[arg(long = "peer", env = "RMQ_CONTROLLER_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Address of the HTTP port (Raft and the nodes' API) [default: 0.0.0.0:9878].
    #[arg(long, env = "RMQ_LISTEN")]
    listen: Option<SocketAddr>,
    /// Raft log and state [default: data/controller].
    #[arg(long, env = "RMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Milliseconds a node may stay silent before a new primary is elected [default: 3000].
    #[arg(long, env = "RMQ_NODE_TIMEOUT_MS")]
    node_timeout_ms: Option<u64>,
}

#[derive(clap::Args)]
struct NamesrvArgs {
    /// YAML or JSON configuration file (camelCase fields); flags override it.
    #[arg(long, env = "RMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the remoting port [default: 0.0.0.0:9876].
    #[arg(long, env = "RMQ_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the HTTP port: Prometheus /metrics, /healthz, /readyz [default: 0.0.0.0:9877].
    #[arg(long, env = "RMQ_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Milliseconds a store node may stay silent before it leaves the routes [default: 120000].
    #[arg(long, env = "RMQ_BROKER_TIMEOUT_MS")]
    broker_timeout_ms: Option<u64>,
}

/// Flags override the `--config` file, which overrides the defaults shown.
#[derive(clap::Args)]
struct StandaloneArgs {
    /// YAML or JSON file with the whole configuration (see README); flags override it.
    #[arg(long, env = "RMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Folder for all data (CommitLog, ConsumeQueues, indexes, offsets, topics)
    /// [default: data/standalone].
    #[arg(long, env = "RMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the RocketMQ 5 gRPC endpoint [default: 0.0.0.0:8081].
    #[arg(long, env = "RMQ_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Address of the HTTP port: Prometheus /metrics, /healthz, /readyz and the admin API
    /// [default: 0.0.0.0:8080].
    #[arg(long, env = "RMQ_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Address given to clients in routes (default: the listen address, loopback if it is 0.0.0.0).
    #[arg(long, env = "RMQ_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// SYNC_FLUSH (acknowledge after fsync) or ASYNC_FLUSH [default: ASYNC_FLUSH].
    #[arg(long, env = "RMQ_FLUSH_POLICY")]
    flush_policy: Option<FlushPolicy>,
    /// Bytes per CommitLog segment [default: 134217728].
    #[arg(long, env = "RMQ_SEGMENT_SIZE")]
    segment_size: Option<u64>,
    /// Create (or update) a topic at start: NAME[:QUEUES[:TYPE]], TYPE one of NORMAL, FIFO,
    /// DELAY, TRANSACTION. Repeatable.
    #[arg(long = "topic", value_parser = parse_topic)]
    topics: Vec<TopicConfig>,
    /// Create (or update) a consumer group at start: NAME[:MAX_DELIVERY_ATTEMPTS[:fifo]].
    /// Repeatable.
    #[arg(long = "group", value_parser = parse_group)]
    groups: Vec<GroupConfig>,
    #[command(flatten)]
    security: SecurityArgs,
    /// Milliseconds a transaction may stay undecided before the broker checks back with a
    /// producer of its topic (and between checks) [default: 10000].
    #[arg(long, env = "RMQ_TRANSACTION_CHECK_INTERVAL_MS")]
    transaction_check_interval_ms: Option<u64>,
    /// Create unknown topics on first use instead of answering TOPIC_NOT_FOUND.
    #[arg(long, env = "RMQ_AUTO_CREATE_TOPICS")]
    auto_create_topics: bool,
    /// Tier sealed CommitLog segments to this local folder (object storage in a folder; S3,
    /// GCS and Azure are set in the config file's `tier` section).
    #[arg(long, env = "RMQ_TIER_DIR")]
    tier_dir: Option<PathBuf>,
}

fn parse_topic(s: &str) -> Result<TopicConfig, String> {
    let mut it = s.split(':');
    let name = it.next().unwrap_or_default().to_owned();
    let queues = match it.next() {
        Some(q) => q
            .parse()
            .map_err(|_| format!("queue count {q:?} is not a number"))?,
        None => 8,
    };
    let message_type = match it.next() {
        Some(t) => t.parse()?,
        None => TopicMessageType::Normal,
    };
    Ok(TopicConfig {
        name,
        queues,
        message_type,
    })
}

fn parse_group(s: &str) -> Result<GroupConfig, String> {
    let mut it = s.split(':');
    let mut g = GroupConfig::new(it.next().unwrap_or_default());
    if let Some(a) = it.next() {
        g.max_delivery_attempts = a
            .parse()
            .map_err(|_| format!("max delivery attempts {a:?} is not a number"))?;
    }
    if let Some(f) = it.next() {
        g.fifo = match f {
            "fifo" => true,
            "" | "normal" => false,
            _ => return Err(format!("{f:?}: expected fifo")),
        };
    }
    Ok(g)
}

/// mimalloc instead of glibc's malloc: the gRPC path (HTTP/2 frames, headers, protobuf
/// messages) allocates and frees small buffers on every request, and glibc's allocator was
/// 15% of the broker's CPU in the 100,000-queue benchmark (`broker/BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    broker::logs::init();
    broker::logs::raise_open_files_limit();
    match Cli::parse().role {
        Role::Standalone(args) => run_standalone(args),
        Role::Namesrv(args) => run_namesrv(args),
        Role::Controller(args) => run_controller(args),
        Role::Store(args) => run_store(args),
        Role::Proxy(args) => run_proxy(args),
        Role::Admin(args) => broker::cli::run(args),
    }
}

async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    use broker::role::store::StoreNodeConfig;
    let mut cfg = match &args.config {
        Some(path) => StoreNodeConfig::from_file(path)?,
        None => StoreNodeConfig::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.store.root_dir = d;
    }
    if let Some(a) = args.listen {
        cfg.listen = a;
    }
    if args.advertise.is_some() {
        cfg.advertise = args.advertise;
    }
    let namesrv = namesrv_list(&args.namesrv);
    if !namesrv.is_empty() {
        cfg.namesrv = namesrv;
    }
    if let Some(c) = args.cluster {
        cfg.cluster = c;
    }
    if let Some(n) = args.broker_name {
        cfg.broker.broker_name = n;
    }
    if let Some(id) = args.broker_id {
        cfg.broker_id = id;
    }
    if let Some(i) = args.pod_index {
        cfg.broker_id = i + 1;
    }
    if args.ha_advertise.is_some() || args.ha_listen.is_some() || !args.controllers.is_empty() {
        let Some(ha) = cfg.ha.as_mut() else {
            anyhow::bail!(
                "--ha-advertise, --ha-listen and --controller need an `ha` section in the configuration"
            );
        };
        if let Some(a) = args.ha_advertise {
            ha.advertise = Some(a);
        }
        if let Some(a) = args.ha_listen {
            ha.listen = a;
        }
        if !args.controllers.is_empty() {
            ha.controllers = args.controllers;
        }
    }
    if let Some(a) = args.http_listen {
        cfg.http_listen = a;
    }
    if let Some(p) = args.flush_policy {
        cfg.store.flush_policy = p;
    }
    if let Some(s) = args.segment_size {
        cfg.store.segment_size = s;
    }
    cfg.broker.auto_create_topics |= args.auto_create_topics;
    if let Some(ms) = args.transaction_check_interval_ms {
        cfg.broker.transaction_check_interval = std::time::Duration::from_millis(ms);
    }
    args.security.apply(&mut cfg.tls, &mut cfg.auth);
    cfg.topics.extend(args.topics);
    cfg.groups.extend(args.groups);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(broker::role::store::run(cfg, terminated()))
}

fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    use broker::role::proxy::ProxyConfig;
    let mut cfg = match &args.config {
        Some(path) => ProxyConfig::from_file(path)?,
        None => ProxyConfig::default(),
    };
    if let Some(a) = args.grpc_listen {
        cfg.grpc_listen = a;
    }
    if let Some(a) = args.http_listen {
        cfg.http_listen = a;
    }
    if args.advertise.is_some() {
        cfg.advertise = args.advertise;
    }
    let namesrv = namesrv_list(&args.namesrv);
    if !namesrv.is_empty() {
        cfg.namesrv = namesrv;
    }
    args.security.apply(&mut cfg.tls, &mut cfg.auth);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(broker::role::proxy::run(cfg, terminated()))
}

fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    use broker::controller::ControllerConfig;
    let mut cfg: ControllerConfig = match &args.config {
        Some(path) => broker::role::read_file(path)?,
        None => ControllerConfig::default(),
    };
    if let Some(id) = args.id {
        cfg.id = id;
    }
    if !args.peers.is_empty() {
        cfg.peers = args
            .peers
            .iter()
            .map(|p| {
                let (id, addr) = p
                    .split_once('=')
                    .with_context(|| format!("--peer {p:?}: expected id=host:port"))?;
                let id = id
                    .parse()
                    .with_context(|| format!("--peer {p:?}: the id is not a number"))?;
                Ok((id, addr.to_owned()))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(a) = args.listen {
        cfg.listen = a;
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(ms) = args.node_timeout_ms {
        cfg.node_timeout = std::time::Duration::from_millis(ms);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(broker::controller::run(cfg, terminated()))
}

fn run_namesrv(args: NamesrvArgs) -> anyhow::Result<()> {
    use broker::role::namesrv::NamesrvConfig;
    let mut cfg = match &args.config {
        Some(path) => NamesrvConfig::from_file(path)?,
        None => NamesrvConfig::default(),
    };
    if let Some(a) = args.listen {
        cfg.listen = a;
    }
    if let Some(a) = args.http_listen {
        cfg.http_listen = a;
    }
    if let Some(ms) = args.broker_timeout_ms {
        cfg.broker_timeout = std::time::Duration::from_millis(ms);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(broker::role::namesrv::run(cfg, terminated()))
}

fn run_standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(path) => StandaloneConfig::from_file(path)?,
        None => StandaloneConfig::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.store.root_dir = d;
    }
    if let Some(a) = args.grpc_listen {
        cfg.grpc_listen = a;
    }
    if let Some(a) = args.http_listen {
        cfg.http_listen = a;
    }
    if args.advertise.is_some() {
        cfg.advertise = args.advertise;
    }
    if let Some(p) = args.flush_policy {
        cfg.store.flush_policy = p;
    }
    if let Some(s) = args.segment_size {
        cfg.store.segment_size = s;
    }
    if let Some(ms) = args.transaction_check_interval_ms {
        cfg.broker.transaction_check_interval = std::time::Duration::from_millis(ms);
    }
    cfg.broker.auto_create_topics |= args.auto_create_topics;
    if let Some(path) = args.tier_dir {
        let tier = cfg.tier.get_or_insert_with(Default::default);
        tier.backend = broker::tier::TierBackend::Local { path };
    }
    args.security.apply(&mut cfg.tls, &mut cfg.auth);
    cfg.topics.extend(args.topics);
    cfg.groups.extend(args.groups);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(standalone::run(cfg, terminated()))
}
