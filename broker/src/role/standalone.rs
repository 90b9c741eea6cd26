//! Standalone: store, messaging service and the gRPC endpoint in one process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::service::metadata::{GroupConfig, TopicConfig};
use crate::service::{Broker, BrokerConfig};
use crate::store::{MessageStore, StoreConfig};

/// The standalone role's whole configuration: the YAML (or JSON) file `--config` reads, field
/// names in camelCase. Flags given on the command line override it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StandaloneConfig {
    pub store: StoreConfig,
    pub broker: BrokerConfig,
    /// Where the gRPC endpoint listens.
    pub grpc_listen: SocketAddr,
    /// Where the HTTP port (metrics, health, admin API) listens.
    pub http_listen: SocketAddr,
    /// The address clients are told to use (defaults to `grpc_listen`).
    pub advertise: Option<SocketAddr>,
    /// Topics and groups to create (or update) at start.
    pub topics: Vec<TopicConfig>,
    pub groups: Vec<GroupConfig>,
    /// TLS on the gRPC port (permissive by default: the Java and Go clients use TLS unless
    /// told otherwise, the others do not).
    pub tls: crate::tls::TlsConfig,
    /// Authentication and authorization (RocketMQ ACL 2.0), off by default.
    pub auth: crate::auth::guard::AuthConfig,
    /// The file this configuration was read from (followed for `auth` changes).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
    /// Tiered storage: sealed CommitLog segments move to object storage (off when absent).
    pub tier: Option<crate::tier::TierConfig>,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig {
            store: StoreConfig {
                root_dir: "data/standalone".into(),
                ..StoreConfig::default()
            },
            broker: BrokerConfig::default(),
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            advertise: None,
            topics: Vec::new(),
            groups: Vec::new(),
            tls: Default::default(),
            auth: Default::default(),
            source: None,
            tier: None,
        }
    }
}

impl StandaloneConfig {
    /// Reads a YAML or JSON configuration file. Errors name the file and the bad field.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<StandaloneConfig> {
        let mut cfg: StandaloneConfig = super::read_config(path, |c: &StandaloneConfig| &c.store)?;
        cfg.source = Some(path.to_owned());
        Ok(cfg)
    }
}

/// Runs until `shutdown` resolves, then stops cleanly (the store flushes and checkpoints).
pub async fn run(
    cfg: StandaloneConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut store_cfg = cfg.store.clone();
    let tier = open_tier(cfg.tier.clone(), &mut store_cfg)?;
    let store = Arc::new(
        MessageStore::open(store_cfg)
            .with_context(|| format!("opening the store at {}", cfg.store.root_dir.display()))?,
    );
    let tier_task = start_tier(tier, &store, true)?;
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
        .put_topics(cfg.topics)
        .context("creating the configured topics")?;
    broker
        .metadata
        .put_groups(cfg.groups)
        .context("creating the configured groups")?;
    let guard = super::auth_guard(
        &cfg.auth,
        Some(&cfg.store.config_dir()),
        cfg.source.clone(),
        |c: &StandaloneConfig| c.auth.clone(),
    )?;
    let endpoint =
        super::GrpcEndpoint::bind(cfg.grpc_listen, cfg.advertise, &cfg.tls, Arc::clone(&guard))
            .await?;
    let (local, advertised) = (endpoint.local, endpoint.advertised);
    tracing::info!(grpc = %local, %advertised, tls = ?cfg.tls.mode, authentication = cfg.auth.authentication, authorization = cfg.auth.authorization, "gRPC endpoint listening");
    {
        let guard = Arc::clone(&guard);
        broker
            .metrics
            .add_source(Arc::new(move || guard.encode_metrics()));
    }

    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding the HTTP port {}", cfg.http_listen))?;
    tracing::info!(http = %http_listener.local_addr()?, "HTTP (metrics, health, admin) listening");
    let http_listener = crate::tls::HttpListener::new(http_listener, &cfg.tls)?;
    let http = {
        let router = crate::protocol::http::router(Arc::clone(&broker), Arc::clone(&guard));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, router).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    let tasks = spawn_service_tasks(&broker);
    if let Some((tier, _)) = &tier_task {
        let tier = Arc::clone(tier);
        broker
            .metrics
            .add_source(Arc::new(move || tier.metrics.encode()));
    }
    endpoint
        .serve(
            Arc::new(crate::protocol::grpc::backend::Local(Arc::clone(&broker))),
            shutdown,
        )
        .await?;
    for t in tasks {
        t.abort();
    }
    if let Some((_, task)) = tier_task {
        task.abort();
    }
    http.abort();
    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        broker.pop.compact()?;
        store.shutdown()?;
        Ok(())
    })
    .await
    .context("joining shutdown")??;
    Ok(())
}

/// The messaging service's background work: timers, transaction check-backs, renewal of
/// auto-renewed invisible times, compaction of the pop ack log. Abort the handles to stop.
pub fn spawn_service_tasks(broker: &Arc<Broker>) -> Vec<tokio::task::JoinHandle<()>> {
    let compactor = {
        let broker = Arc::clone(broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let b = Arc::clone(&broker);
                match tokio::task::spawn_blocking(move || b.pop.compact()).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "compacting the pop ack log failed"),
                    Err(e) => tracing::error!(error = %e, "pop compaction task failed"),
                    Ok(Ok(())) => {}
                }
            }
        })
    };
    let timers = tokio::spawn(crate::service::timer::run(Arc::clone(broker)));
    let transactions = tokio::spawn(crate::service::transaction::run(Arc::clone(broker)));
    let renewer = {
        let broker = Arc::clone(broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let n = broker.renew_invisible_times();
                if n > 0 {
                    tracing::debug!(renewed = n, "extended auto-renewed invisible times");
                }
            }
        })
    };
    vec![compactor, timers, transactions, renewer]
}

/// Opens the tier, if configured, before the store: an empty data folder resumes after the
/// tier's history, with its metadata (topics, groups, consumer offsets) restored from the
/// tier's newest snapshot into the store's config folder.
pub fn open_tier(
    cfg: Option<crate::tier::TierConfig>,
    store: &mut StoreConfig,
) -> anyhow::Result<Option<Arc<crate::tier::Tier>>> {
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let tier = crate::tier::Tier::open(cfg).context("opening the tier")?;
    store.tiered = true;
    store.empty_start_offset = tier.manifest().end();
    tier.restore_metadata(&store.config_dir())
        .context("restoring metadata from the tier")?;
    Ok(Some(tier))
}

/// Attaches the tier to the store, rebuilds an emptied data folder's ConsumeQueues and
/// indexes from it (when `restore`: not on a member of a replicated group, which copies the
/// group's log from its primary), and starts its upload loop.
pub fn start_tier(
    tier: Option<Arc<crate::tier::Tier>>,
    store: &Arc<MessageStore>,
    restore: bool,
) -> anyhow::Result<Option<(Arc<crate::tier::Tier>, tokio::task::JoinHandle<()>)>> {
    let Some(tier) = tier else {
        return Ok(None);
    };
    tier.attach(store).context("attaching the tier")?;
    let end = tier.manifest().end();
    if restore && store.recovery_report().empty && end > 0 {
        tracing::warn!(
            end,
            "empty data folder: restoring ConsumeQueues and indexes from the tier"
        );
        tier.restore(store).context("restoring from the tier")?;
    }
    let task = tokio::spawn(Arc::clone(&tier).run(Arc::clone(store)));
    Ok(Some((tier, task)))
}
