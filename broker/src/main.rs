//! `rmq-broker`: one binary, one role per subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use broker::store::{FlushPolicy, MessageStore, StoreConfig};

#[derive(Parser)]
#[command(name = "rmq-broker", version, about = "RocketMQ-compatible broker")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Name server, proxy and store in one process, with embedded defaults.
    Standalone(StandaloneArgs),
}

#[derive(clap::Args)]
struct StandaloneArgs {
    /// Folder for all data (CommitLog, ConsumeQueues, indexes, offsets).
    #[arg(long, env = "RMQ_DATA_DIR", default_value = "data/standalone")]
    data_dir: PathBuf,
    /// SYNC_FLUSH (acknowledge after fsync) or ASYNC_FLUSH.
    #[arg(long, env = "RMQ_FLUSH_POLICY", default_value = "ASYNC_FLUSH")]
    flush_policy: FlushPolicy,
    /// Bytes per CommitLog segment.
    #[arg(long, env = "RMQ_SEGMENT_SIZE", default_value_t = StoreConfig::default().segment_size)]
    segment_size: u64,
    /// Address recorded as each message's store host.
    #[arg(long, env = "RMQ_STORE_HOST", default_value = "127.0.0.1:10911")]
    store_host: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().role {
        Role::Standalone(args) => standalone(args),
    }
}

fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let config = StoreConfig {
        root_dir: args.data_dir,
        flush_policy: args.flush_policy,
        segment_size: args.segment_size,
        store_host: args.store_host,
        ..StoreConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let store = MessageStore::open(config.clone())
            .with_context(|| format!("opening the store at {}", config.root_dir.display()))?;
        let r = store.recovery_report();
        let offsets = store.log_offsets();
        tracing::info!(
            data_dir = %config.root_dir.display(),
            flush_policy = ?config.flush_policy,
            crashed_before = r.crashed,
            commitlog_min = offsets.min,
            commitlog_end = offsets.written,
            "store open"
        );
        tracing::warn!(
            "the gRPC endpoint is not implemented yet: this build runs the store only (see the gRPC issue)"
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        tracing::info!("shutting down");
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .context("joining shutdown")??;
        Ok(())
    })
}
