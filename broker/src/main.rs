//! `rmq-broker`: one binary, one role per subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use broker::role::standalone::{self, StandaloneConfig};
use broker::service::BrokerConfig;
use broker::service::metadata::{GroupConfig, TopicConfig, TopicMessageType};
use broker::store::{FlushPolicy, StoreConfig};

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
    /// Command-line tool: topics, groups, progress, send and receive against a running broker.
    Admin(broker::cli::AdminArgs),
}

#[derive(clap::Args)]
struct StandaloneArgs {
    /// Folder for all data (CommitLog, ConsumeQueues, indexes, offsets, topics).
    #[arg(long, env = "RMQ_DATA_DIR", default_value = "data/standalone")]
    data_dir: PathBuf,
    /// Address of the RocketMQ 5 gRPC endpoint.
    #[arg(long, env = "RMQ_GRPC_LISTEN", default_value = "0.0.0.0:8081")]
    grpc_listen: SocketAddr,
    /// Address of the HTTP port: Prometheus /metrics, /healthz, /readyz and the admin API.
    #[arg(long, env = "RMQ_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,
    /// Address given to clients in routes (default: the listen address, loopback if it is 0.0.0.0).
    #[arg(long, env = "RMQ_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// SYNC_FLUSH (acknowledge after fsync) or ASYNC_FLUSH.
    #[arg(long, env = "RMQ_FLUSH_POLICY", default_value = "ASYNC_FLUSH")]
    flush_policy: FlushPolicy,
    /// Bytes per CommitLog segment.
    #[arg(long, env = "RMQ_SEGMENT_SIZE", default_value_t = StoreConfig::default().segment_size)]
    segment_size: u64,
    /// Create (or update) a topic at start: NAME[:QUEUES[:TYPE]], TYPE one of NORMAL, FIFO,
    /// DELAY, TRANSACTION. Repeatable.
    #[arg(long = "topic", value_parser = parse_topic)]
    topics: Vec<TopicConfig>,
    /// Create (or update) a consumer group at start: NAME[:MAX_DELIVERY_ATTEMPTS[:fifo]].
    /// Repeatable.
    #[arg(long = "group", value_parser = parse_group)]
    groups: Vec<GroupConfig>,
    /// Serve plaintext only on the gRPC port (by default TLS and plaintext share it).
    #[arg(long, env = "RMQ_NO_TLS")]
    no_tls: bool,
    /// PEM certificate chain for TLS (with --tls-key); self-signed when absent.
    #[arg(long, env = "RMQ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "RMQ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Milliseconds a transaction may stay undecided before the broker checks back with a
    /// producer of its topic (and between checks).
    #[arg(
        long,
        env = "RMQ_TRANSACTION_CHECK_INTERVAL_MS",
        default_value_t = 10_000
    )]
    transaction_check_interval_ms: u64,
    /// Create unknown topics on first use instead of answering TOPIC_NOT_FOUND.
    #[arg(long, env = "RMQ_AUTO_CREATE_TOPICS")]
    auto_create_topics: bool,
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().role {
        Role::Standalone(args) => run_standalone(args),
        Role::Admin(args) => broker::cli::run(args),
    }
}

fn run_standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let cfg = StandaloneConfig {
        store: StoreConfig {
            root_dir: args.data_dir,
            flush_policy: args.flush_policy,
            segment_size: args.segment_size,
            ..StoreConfig::default()
        },
        broker: BrokerConfig {
            auto_create_topics: args.auto_create_topics,
            transaction_check_interval: std::time::Duration::from_millis(
                args.transaction_check_interval_ms,
            ),
            ..BrokerConfig::default()
        },
        grpc_listen: args.grpc_listen,
        http_listen: args.http_listen,
        advertise: args.advertise,
        topics: args.topics,
        groups: args.groups,
        tls: !args.no_tls,
        tls_cert_and_key: args.tls_cert.zip(args.tls_key),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(standalone::run(cfg, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }))
}
