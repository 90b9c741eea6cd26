//! Tiered storage: sealed CommitLog segments move to object storage; the local disk keeps the
//! hot tail; every offset stays readable through the store's normal API.
//!
//! - **Upload**: a sealed segment (every byte flushed and dispatched) is streamed to
//!   `<prefix>/commitlog/<base, 20 digits>` (multipart above one part, optionally under a
//!   bandwidth cap), then its ConsumeQueue and index entries to `<prefix>/queues/<base>`
//!   ([`queues`]), then a new manifest version naming both is published with a create-only
//!   put ([`manifest`]).
//! - **Metadata**: topics, subscription groups and consumer offsets are snapshotted to
//!   `<prefix>/metadata/<version>.json` when they change (at most once per
//!   `metadataInterval`) and named by the manifest.
//! - **Eviction**: the store's retention hook lets a segment go only once a published manifest
//!   names it; the tier then evicts uploaded segments that fall out of the hot window
//!   (`hotWindowBytes` of the newest CommitLog bytes). ConsumeQueues and indexes stay local
//!   (the store runs with `tiered: true`), so lookups keep working.
//! - **Remote retention** (`remoteRetention`, `remoteMaxBytes`): the oldest segments leave the
//!   manifest first, then the store forgets their queue entries, then their objects are
//!   deleted; objects a crash left behind are deleted on the next start.
//! - **Cold reads**: offsets below the local CommitLog are read with ranged GETs of
//!   `readAheadBytes` chunks into a bounded in-memory cache, so a sequential consumer issues one
//!   GET per chunk, not one per message. A GET that fails is an error to the reader, which
//!   retries; a message is never skipped because the object store is down.
//! - **Restore**: on an empty data folder the newest metadata snapshot is written back and the
//!   ConsumeQueues and indexes are rebuilt from the queue objects (reading the segments only
//!   where none was saved); the CommitLog resumes after the tiered history.
//! - **Read-only adoption** ([`Tier::open_read_only`]): another node opens this node's
//!   manifest and serves its history without ever writing to the prefix.
//! - **Faults**: object-store errors fail the upload (the HTTP backends retry transient ones
//!   themselves with backoff first); the segment stays local and is tried again with growing
//!   pauses. Nothing local is deleted unless the manifest naming it is stored.
//!
//! All object-store calls run on the tier's own small runtime: the store's reads are
//! synchronous, and the HTTP clients must not outlive the runtime that made them.

pub mod manifest;
pub mod queues;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::store::commitlog::now_millis;
use crate::store::message_store::ColdReader;
use crate::store::{MessageStore, SegmentInfo};
use manifest::{Manifest, MetadataRef, ObjectRef, TieredSegment};

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("reading {path}: {source}")]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {key} is corrupt: {reason}")]
    CorruptManifest { key: String, reason: String },
    #[error(
        "manifest version {version} already exists: another writer uses this prefix; uploads stop until it is resolved"
    )]
    ManifestConflict { version: u64 },
    #[error("tier configuration: {0}")]
    Config(String),
}

/// Where tiered data goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum TierBackend {
    /// A local folder (the embedded default; also what tests use).
    Local { path: PathBuf },
    /// Objects in memory, lost at exit (tests).
    Memory,
    /// S3 or an S3-compatible store. Credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...), as a mounted Secret provides them.
    S3 {
        bucket: String,
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        region: Option<String>,
        /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need.
        #[serde(default)]
        path_style: bool,
        /// Allow `http://` endpoints.
        #[serde(default)]
        allow_http: bool,
    },
    /// Google Cloud Storage; credentials from the environment.
    Gcs { bucket: String },
    /// Azure Blob Storage; account and credentials from the environment.
    Azure { container: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TierConfig {
    pub backend: TierBackend,
    /// Key prefix of this node's objects (one writer per prefix).
    pub prefix: String,
    /// Newest CommitLog bytes kept locally once uploaded; older segments are evicted.
    pub hot_window_bytes: u64,
    /// Uploaded segments older than this are evicted even inside `hotWindowBytes` (0: by
    /// bytes only).
    #[serde(with = "crate::store::config::millis")]
    pub hot_window_age: Duration,
    /// How often sealed segments are looked for.
    #[serde(with = "crate::store::config::millis")]
    pub upload_interval: Duration,
    /// Multipart part size.
    pub part_size: usize,
    /// Parts of one upload in flight at once.
    pub upload_concurrency: usize,
    /// Bytes fetched per cold-read GET.
    pub read_ahead_bytes: usize,
    /// Cold-read cache size.
    pub cache_bytes: usize,
    /// Upload bandwidth cap in bytes per second (0: none).
    pub upload_bytes_per_second: u64,
    /// Remote retention by age: segments uploaded longer ago than this are deleted from the
    /// object store, oldest first (0: kept forever).
    #[serde(with = "crate::store::config::millis")]
    pub remote_retention: Duration,
    /// Remote retention by size: the oldest segments go while the tier holds more (0: no cap).
    pub remote_max_bytes: u64,
    /// How often changed metadata (topics, groups, consumer offsets) is snapshotted to the
    /// tier, for a restore on an empty disk.
    #[serde(with = "crate::store::config::millis")]
    pub metadata_interval: Duration,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            backend: TierBackend::Local {
                path: "data/tier".into(),
            },
            prefix: "broker-a".into(),
            hot_window_bytes: 1 << 30,
            hot_window_age: Duration::ZERO,
            upload_interval: Duration::from_secs(5),
            part_size: 16 << 20,
            upload_concurrency: 4,
            read_ahead_bytes: 4 << 20,
            cache_bytes: 64 << 20,
            upload_bytes_per_second: 0,
            remote_retention: Duration::ZERO,
            remote_max_bytes: 0,
            metadata_interval: Duration::from_secs(60),
        }
    }
}

impl TierConfig {
    pub fn build_store(&self) -> Result<Arc<dyn ObjectStore>, TierError> {
        // The cloud backends' HTTP stack and our TLS listener bring two rustls crypto
        // providers; name the process default (ignored if one is already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = |e: object_store::Error| TierError::Config(e.to_string());
        Ok(match &self.backend {
            TierBackend::Local { path } => {
                std::fs::create_dir_all(path).map_err(|source| TierError::Local {
                    path: path.clone(),
                    source,
                })?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(path).map_err(config)?,
                )
            }
            TierBackend::Memory => Arc::new(object_store::memory::InMemory::new()),
            TierBackend::S3 {
                bucket,
                endpoint,
                region,
                path_style,
                allow_http,
            } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(*allow_http)
                    .with_virtual_hosted_style_request(!path_style)
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                b = b.with_region(region.clone().unwrap_or_else(|| "us-east-1".into()));
                Arc::new(b.build().map_err(config)?)
            }
            TierBackend::Gcs { bucket } => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(config)?,
            ),
            TierBackend::Azure { container } => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .build()
                    .map_err(config)?,
            ),
        })
    }
}

/// Prometheus metrics of the tier.
pub struct TierMetrics {
    pub registry: Registry,
    pub uploaded_bytes: Counter,
    pub uploaded_segments: Counter,
    pub upload_errors: Counter,
    pub pending_segments: Gauge,
    pub pending_bytes: Gauge,
    /// Age of the oldest sealed segment not uploaded yet.
    pub upload_lag_seconds: Gauge,
    pub remote_segments: Gauge,
    pub remote_bytes: Gauge,
    pub evicted_segments: Counter,
    pub expired_segments: Counter,
    pub metadata_snapshots: Counter,
    pub cold_read_bytes: Counter,
    pub cold_read_latency: Histogram,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
}

impl Default for TierMetrics {
    fn default() -> Self {
        let mut m = TierMetrics {
            registry: Registry::with_prefix("rocketmq_tier"),
            uploaded_bytes: Counter::default(),
            uploaded_segments: Counter::default(),
            upload_errors: Counter::default(),
            pending_segments: Gauge::default(),
            pending_bytes: Gauge::default(),
            upload_lag_seconds: Gauge::default(),
            remote_segments: Gauge::default(),
            remote_bytes: Gauge::default(),
            evicted_segments: Counter::default(),
            expired_segments: Counter::default(),
            metadata_snapshots: Counter::default(),
            cold_read_bytes: Counter::default(),
            cold_read_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "uploaded_bytes",
            "CommitLog bytes uploaded",
            m.uploaded_bytes.clone(),
        );
        r.register(
            "uploaded_segments",
            "CommitLog segments uploaded",
            m.uploaded_segments.clone(),
        );
        r.register(
            "upload_errors",
            "Failed segment uploads (retried)",
            m.upload_errors.clone(),
        );
        r.register(
            "pending_segments",
            "Sealed segments not uploaded yet",
            m.pending_segments.clone(),
        );
        r.register(
            "pending_bytes",
            "Bytes of sealed segments not uploaded yet",
            m.pending_bytes.clone(),
        );
        r.register(
            "upload_lag_seconds",
            "Age of the oldest sealed segment not uploaded yet",
            m.upload_lag_seconds.clone(),
        );
        r.register(
            "remote_segments",
            "Segments in the manifest",
            m.remote_segments.clone(),
        );
        r.register(
            "remote_bytes",
            "Bytes in the manifest",
            m.remote_bytes.clone(),
        );
        r.register(
            "evicted_segments",
            "Local segments deleted after upload",
            m.evicted_segments.clone(),
        );
        r.register(
            "expired_segments",
            "Segments deleted from the object store by remote retention",
            m.expired_segments.clone(),
        );
        r.register(
            "metadata_snapshots",
            "Metadata snapshots uploaded",
            m.metadata_snapshots.clone(),
        );
        r.register(
            "cold_read_bytes",
            "Bytes fetched for cold reads",
            m.cold_read_bytes.clone(),
        );
        r.register(
            "cold_read_latency_seconds",
            "Latency of one cold-read GET",
            m.cold_read_latency.clone(),
        );
        r.register(
            "cache_hits",
            "Cold reads served from the cache",
            m.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Cold reads that needed a GET",
            m.cache_misses.clone(),
        );
        m
    }
}

impl TierMetrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Chunks fetched ahead of a reader, concurrently (one GET is bound by the server's latency).
const PREFETCH_CHUNKS: u64 = 3;

/// (segment base, chunk index).
type ChunkKey = (u64, u64);
/// One chunk's GET, shared by everyone who wants the chunk while it runs.
type ChunkCell = tokio::sync::OnceCell<Option<Bytes>>;

/// Cold-read chunks, least recently inserted out first.
#[derive(Default)]
struct Cache {
    chunks: HashMap<(u64, u64), Bytes>,
    order: VecDeque<(u64, u64)>,
    bytes: usize,
}

/// Owns the runtime the object-store calls run on; shuts it down without blocking.
struct TierRuntime(Option<tokio::runtime::Runtime>);

impl Drop for TierRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// One node's tier: its manifest, uploads, evictions and cold reads.
pub struct Tier {
    cfg: TierConfig,
    store: Arc<dyn ObjectStore>,
    manifest: Arc<RwLock<Manifest>>,
    cache: Arc<Mutex<Cache>>,
    /// Chunks being fetched (by a read or a prefetch); a second reader waits for the same GET.
    pending: Arc<Mutex<HashMap<ChunkKey, Arc<ChunkCell>>>>,
    runtime: TierRuntime,
    pub metrics: TierMetrics,
    /// When each sealed segment was first seen not uploaded (for the lag gauge).
    first_seen: Mutex<HashMap<u64, Instant>>,
    /// Another node's tier opened for reads: never uploads, expires or publishes.
    read_only: bool,
    /// When metadata was last snapshotted.
    last_snapshot: Mutex<Option<Instant>>,
    /// Held by whatever publishes a manifest version (uploads, retention, metadata), so that
    /// this process never races itself to the next version.
    writer: tokio::sync::Mutex<()>,
    /// Whether this node writes the tier: always for a lone node; only while primary for a
    /// member of a replicated group (the others follow the manifest the primary publishes).
    writing: std::sync::atomic::AtomicBool,
    /// The manifest may be behind the object store (this node just became the writer, or a
    /// publish lost a race): reload it before the next write.
    stale: std::sync::atomic::AtomicBool,
    /// Appended to the object keys this node writes as a group's primary, so that a deposed
    /// primary still uploading can never overwrite an object the current primary's manifest
    /// references (only manifests are conditional writes).
    key_tag: Mutex<Option<String>>,
}

/// The metadata files a snapshot holds (in the store's config folder).
const METADATA_FILES: [&str; 3] = [
    "topics.json",
    "subscriptionGroup.json",
    "consumerOffset.json",
];

/// A metadata snapshot object: file name -> contents.
#[derive(Serialize, Deserialize)]
struct MetadataSnapshot {
    files: std::collections::BTreeMap<String, String>,
}

/// What [`Tier::restore`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    /// Segments whose saved queue entries were applied.
    pub from_entries: usize,
    /// Segments whose messages were read back instead.
    pub from_messages: usize,
    /// Queue entries restored.
    pub entries: usize,
}

impl Tier {
    /// Opens this node's tier and reads its newest manifest.
    pub fn open(cfg: TierConfig) -> Result<Arc<Tier>, TierError> {
        Self::open_mode(cfg, false)
    }

    /// Opens another node's tier to serve reads of its history (read-only adoption): it never
    /// writes to the object store, so the owner (if it still runs) is not disturbed.
    pub fn open_read_only(cfg: TierConfig) -> Result<Arc<Tier>, TierError> {
        Self::open_mode(cfg, true)
    }

    fn open_mode(cfg: TierConfig, read_only: bool) -> Result<Arc<Tier>, TierError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tier-io")
            .enable_all()
            .build()
            .map_err(|e| TierError::Config(format!("starting the tier runtime: {e}")))?;
        let store = cfg.build_store()?;
        let tier = Arc::new(Tier {
            store,
            manifest: Arc::default(),
            cache: Arc::default(),
            pending: Arc::default(),
            runtime: TierRuntime(Some(runtime)),
            metrics: TierMetrics::default(),
            first_seen: Mutex::default(),
            read_only,
            last_snapshot: Mutex::default(),
            writer: tokio::sync::Mutex::new(()),
            writing: std::sync::atomic::AtomicBool::new(!read_only),
            stale: std::sync::atomic::AtomicBool::new(false),
            key_tag: Mutex::new(None),
            cfg,
        });
        let m = tier.block_on({
            let (store, prefix) = (Arc::clone(&tier.store), tier.cfg.prefix.clone());
            async move { manifest::load_latest(store.as_ref(), &prefix).await }
        })?;
        tracing::info!(prefix = %tier.cfg.prefix, version = m.version, segments = m.segments.len(), end = m.end(), read_only, "tier manifest loaded");
        tier.set_manifest(m);
        Ok(tier)
    }

    pub fn config(&self) -> &TierConfig {
        &self.cfg
    }

    /// Makes this node the tier's writer (a group's primary) or a follower of the manifest
    /// another node publishes. A new writer reloads the manifest before its first write, and
    /// tags the objects it writes.
    pub fn set_writer(&self, on: bool) {
        use std::sync::atomic::Ordering;
        if self.read_only {
            return;
        }
        let was = self.writing.swap(on, Ordering::AcqRel);
        if on && !was {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            *self.key_tag.lock() = Some(format!("{:x}", nanos ^ u64::from(std::process::id())));
            self.stale.store(true, Ordering::Release);
        }
        if on != was {
            tracing::info!(prefix = %self.cfg.prefix, writer = on, "tier role changed");
        }
    }

    pub fn is_writer(&self) -> bool {
        self.writing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads the newest manifest from the object store; true when it is newer than ours.
    pub async fn reload(&self) -> Result<bool, TierError> {
        let (store, prefix) = (Arc::clone(&self.store), self.cfg.prefix.clone());
        let m = self
            .on_tier(async move { manifest::load_latest(store.as_ref(), &prefix).await })
            .await?;
        if m.version > self.manifest.read().version {
            self.set_manifest(m);
            return Ok(true);
        }
        Ok(false)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.0.as_ref().expect("set until drop").handle()
    }

    /// Runs `f` on the tier's runtime and waits for it, from any thread.
    fn block_on<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.handle().spawn(f);
        let wait = || self.handle().block_on(task).expect("tier task panicked");
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            Ok(_) => std::thread::scope(|s| s.spawn(wait).join().expect("tier wait panicked")),
            Err(_) => wait(),
        }
    }

    /// Runs `f` on the tier's runtime, awaiting it from another runtime.
    async fn on_tier<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(f).await.expect("tier task panicked")
    }

    fn set_manifest(&self, m: Manifest) {
        self.metrics.remote_segments.set(m.segments.len() as i64);
        self.metrics.remote_bytes.set(m.bytes() as i64);
        *self.manifest.write() = m;
    }

    pub fn manifest(&self) -> Manifest {
        self.manifest.read().clone()
    }

    /// Publishes `next` (create-only), makes it current, and now and then prunes old versions.
    async fn publish(&self, next: Manifest) -> Result<(), TierError> {
        debug_assert!(!self.read_only, "a read-only tier never publishes");
        let (store, prefix) = (Arc::clone(&self.store), self.cfg.prefix.clone());
        let version = next.version;
        self.on_tier({
            let (store, prefix, next) = (Arc::clone(&store), prefix.clone(), next.clone());
            async move { manifest::publish(store.as_ref(), &prefix, &next).await }
        })
        .await?;
        self.set_manifest(next);
        if version.is_multiple_of(manifest::KEEP_VERSIONS) {
            match self
                .on_tier(async move { manifest::prune(store.as_ref(), &prefix, version).await })
                .await
            {
                Ok(n) if n > 0 => tracing::debug!(deleted = n, "old manifest versions pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning old manifest versions failed"),
            }
        }
        Ok(())
    }

    /// Connects the tier to a store: retention may delete only uploaded segments, reads below
    /// the local CommitLog come from the tier, and history the tier expired is forgotten.
    pub fn attach(self: &Arc<Self>, store: &MessageStore) -> Result<(), crate::store::StoreError> {
        if !self.read_only {
            let manifest = Arc::clone(&self.manifest);
            store.set_retention_hook(Arc::new(move |info: &SegmentInfo| {
                manifest.read().contains(info.base)
            }));
        }
        store.set_cold_reader(Arc::clone(self) as Arc<dyn ColdReader>);
        store.forget_before(self.manifest.read().expired_before)
    }

    fn segment_key(&self, base: u64) -> String {
        self.object_key("commitlog", base)
    }

    fn queues_key(&self, base: u64) -> String {
        self.object_key("queues", base)
    }

    fn object_key(&self, dir: &str, base: u64) -> String {
        match self.key_tag.lock().as_deref() {
            Some(tag) => format!("{}/{dir}/{base:020}.{tag}", self.cfg.prefix),
            None => format!("{}/{dir}/{base:020}", self.cfg.prefix),
        }
    }

    /// Uploads every sealed segment not in the manifest yet (the segment, then its queue
    /// entries), publishing a manifest version after each. Returns how many were uploaded.
    pub async fn upload_sealed(&self, store: &MessageStore) -> Result<usize, TierError> {
        if self.read_only || !self.is_writer() {
            return Ok(0);
        }
        let _writer = self.writer.lock().await;
        let sealed = store.sealed_segments();
        // A group's primary uploads only what its in-sync replicas hold: a primary deposed
        // while cut off cannot confirm what it wrote since, so it never publishes a diverged
        // segment.
        let confirmed = match self.key_tag.lock().is_some() {
            true => store.log_offsets().confirmed,
            false => u64::MAX,
        };
        let pending: Vec<SegmentInfo> = {
            let m = self.manifest.read();
            sealed
                .into_iter()
                .filter(|s| !m.contains(s.base) && s.end <= confirmed)
                .collect()
        };
        self.metrics.pending_segments.set(pending.len() as i64);
        let mut pending_bytes: u64 = pending.iter().map(|p| p.end - p.base).sum();
        self.metrics.pending_bytes.set(pending_bytes as i64);
        {
            let mut first_seen = self.first_seen.lock();
            first_seen.retain(|base, _| pending.iter().any(|p| p.base == *base));
            for p in &pending {
                first_seen.entry(p.base).or_insert_with(Instant::now);
            }
            let lag = first_seen.values().map(|t| t.elapsed().as_secs()).max();
            self.metrics.upload_lag_seconds.set(lag.unwrap_or(0) as i64);
        }
        let mut uploaded = 0;
        for seg in pending {
            let started = Instant::now();
            let key = self.segment_key(seg.base);
            let (len, crc32) = self
                .on_tier({
                    let store = Arc::clone(&self.store);
                    let (path, key) = (seg.path.clone(), key.clone());
                    let (part, concurrency) = (self.cfg.part_size, self.cfg.upload_concurrency);
                    let rate = self.cfg.upload_bytes_per_second;
                    async move { upload_file(store, &path, &key, part, concurrency, rate).await }
                })
                .await?;
            let entries = blocking(|| store.segment_queue_entries(&seg)).map_err(|e| {
                TierError::Config(format!(
                    "reading the queue entries of segment {}: {e}",
                    seg.base
                ))
            })?;
            let body = queues::encode(&entries);
            let queues = ObjectRef {
                key: self.queues_key(seg.base),
                len: body.len() as u64,
                crc32: crc32fast::hash(&body),
            };
            self.on_tier({
                let (store, key) = (Arc::clone(&self.store), Path::from(queues.key.as_str()));
                async move { store.put(&key, PutPayload::from(body)).await }
            })
            .await?;
            let next = self.manifest().with(TieredSegment {
                base: seg.base,
                len,
                key,
                crc32,
                uploaded_ms: now_millis(),
                queues: Some(queues),
            });
            let version = next.version;
            self.publish(next).await?;
            tracing::info!(
                base = seg.base,
                len,
                entries = entries.len(),
                version,
                secs = started.elapsed().as_secs_f64(),
                "segment uploaded to the tier"
            );
            self.metrics.uploaded_bytes.inc_by(len);
            self.metrics.uploaded_segments.inc();
            pending_bytes = pending_bytes.saturating_sub(seg.end - seg.base);
            self.metrics.pending_bytes.set(pending_bytes as i64);
            uploaded += 1;
        }
        self.metrics.pending_segments.set(0);
        self.metrics.pending_bytes.set(0);
        Ok(uploaded)
    }

    /// Deletes local segments outside the hot window that the manifest holds.
    pub fn evict(&self, store: &MessageStore) -> Result<usize, crate::store::StoreError> {
        if self.read_only {
            return Ok(0);
        }
        let written = store.log_offsets().written;
        let mut keep_from = written.saturating_sub(self.cfg.hot_window_bytes);
        if !self.cfg.hot_window_age.is_zero() {
            let cutoff = now_millis() - self.cfg.hot_window_age.as_millis() as i64;
            let m = self.manifest.read();
            if let Some(old) = m.segments.iter().rev().find(|s| s.uploaded_ms <= cutoff) {
                keep_from = keep_from.max(old.base + old.len);
            }
        }
        let report = store.evict_before(keep_from)?;
        self.metrics
            .evicted_segments
            .inc_by(report.deleted.len() as u64);
        Ok(report.deleted.len())
    }

    /// Remote retention: drops the oldest tiered segments that are older than
    /// `remoteRetention` or beyond `remoteMaxBytes`, never one still held locally. The manifest
    /// without them is published first, then the store forgets their queue entries, then the
    /// objects are deleted (a crash in between leaves objects that [`Self::collect_garbage`]
    /// removes). Returns how many segments went.
    pub async fn expire(&self, store: &MessageStore) -> Result<usize, TierError> {
        let (age, max_bytes) = (self.cfg.remote_retention, self.cfg.remote_max_bytes);
        if self.read_only || !self.is_writer() || (age.is_zero() && max_bytes == 0) {
            return Ok(0);
        }
        let _writer = self.writer.lock().await;
        let m = self.manifest();
        let local_min = store.log_offsets().min;
        let now = now_millis();
        let mut total = m.bytes();
        let mut cut = None;
        let mut doomed = Vec::new();
        for s in &m.segments {
            let old = !age.is_zero() && now - s.uploaded_ms >= age.as_millis() as i64;
            let big = max_bytes > 0 && total > max_bytes;
            if !(old || big) || s.base + s.len > local_min {
                break;
            }
            total -= s.len;
            cut = Some(s.base + s.len);
            doomed.push(s.clone());
        }
        let Some(cut) = cut else {
            return Ok(0);
        };
        self.publish(m.expired(cut)).await?;
        blocking(|| store.forget_before(cut))
            .map_err(|e| TierError::Config(format!("forgetting queue entries below {cut}: {e}")))?;
        for s in &doomed {
            self.delete_segment_objects(s).await;
        }
        tracing::info!(
            segments = doomed.len(),
            expired_before = cut,
            "remote retention deleted tiered segments"
        );
        self.metrics.expired_segments.inc_by(doomed.len() as u64);
        Ok(doomed.len())
    }

    async fn delete_segment_objects(&self, s: &TieredSegment) {
        let mut keys = vec![s.key.clone()];
        keys.extend(s.queues.as_ref().map(|q| q.key.clone()));
        for key in keys {
            let store = Arc::clone(&self.store);
            let path = Path::from(key.as_str());
            match self.on_tier(async move { store.delete(&path).await }).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(%key, error = %e, "deleting an expired object failed; it is removed on the next start")
                }
            }
        }
    }

    /// Deletes segment and queue objects that no manifest needs any more: below the expired
    /// offset (a crash between publishing and deleting). Runs when the upload loop starts.
    pub async fn collect_garbage(&self) -> Result<usize, TierError> {
        use futures_util::StreamExt;
        let floor = self.manifest.read().expired_before;
        if self.read_only || floor == 0 {
            return Ok(0);
        }
        let (store, prefix) = (Arc::clone(&self.store), self.cfg.prefix.clone());
        self.on_tier(async move {
            let mut doomed = Vec::new();
            for dir in ["commitlog", "queues"] {
                let dir = Path::from(format!("{prefix}/{dir}"));
                let mut listing = store.list(Some(&dir));
                while let Some(meta) = listing.next().await {
                    let meta = meta?;
                    if manifest::key_number(&meta.location).is_some_and(|base| base < floor) {
                        doomed.push(meta.location);
                    }
                }
            }
            for key in &doomed {
                match store.delete(key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok::<usize, TierError>(doomed.len())
        })
        .await
    }

    /// Uploads a snapshot of the metadata files in `config_dir` when they changed since the
    /// last one (at most once per `metadataInterval`). Returns whether one was taken.
    pub async fn snapshot_metadata(&self, config_dir: &std::path::Path) -> Result<bool, TierError> {
        if self
            .last_snapshot
            .lock()
            .is_some_and(|t| t.elapsed() < self.cfg.metadata_interval)
        {
            return Ok(false);
        }
        self.snapshot_metadata_now(config_dir).await
    }

    /// Like [`Self::snapshot_metadata`], without waiting for `metadataInterval` (a node being
    /// drained hands over its latest metadata).
    pub async fn snapshot_metadata_now(
        &self,
        config_dir: &std::path::Path,
    ) -> Result<bool, TierError> {
        if self.read_only || !self.is_writer() {
            return Ok(false);
        }
        let _writer = self.writer.lock().await;
        let mut files = std::collections::BTreeMap::new();
        for name in METADATA_FILES {
            let path = config_dir.join(name);
            match tokio::fs::read_to_string(&path).await {
                Ok(text) => {
                    files.insert(name.to_owned(), text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(TierError::Local { path, source }),
            }
        }
        let body = serde_json::to_vec(&MetadataSnapshot { files }).expect("serializes");
        let m = self.manifest();
        let content_crc32 = crc32fast::hash(&body);
        *self.last_snapshot.lock() = Some(Instant::now());
        if m.metadata.as_ref().map(|r| r.content_crc32) == Some(content_crc32) {
            return Ok(false);
        }
        let key = manifest::metadata_key(&self.cfg.prefix, m.version + 1);
        let object = ObjectRef {
            key: key.clone(),
            len: body.len() as u64,
            crc32: content_crc32,
        };
        self.on_tier({
            let store = Arc::clone(&self.store);
            async move { store.put(&Path::from(key), PutPayload::from(body)).await }
        })
        .await?;
        self.publish(m.with_metadata(MetadataRef {
            object,
            content_crc32,
            taken_ms: now_millis(),
        }))
        .await?;
        self.metrics.metadata_snapshots.inc();
        Ok(true)
    }

    /// Writes the newest metadata snapshot into `config_dir` when that folder holds none of
    /// the metadata files (an emptied disk, or a node adopting another's history). Call
    /// before the store and the messaging service open. Returns whether files were written.
    pub fn restore_metadata(&self, config_dir: &std::path::Path) -> Result<bool, TierError> {
        let Some(r) = self.manifest.read().metadata.clone() else {
            return Ok(false);
        };
        if METADATA_FILES
            .iter()
            .any(|f| config_dir.join(f).exists() || config_dir.join(format!("{f}.bak")).exists())
        {
            return Ok(false);
        }
        let body = self.block_on({
            let (store, key) = (Arc::clone(&self.store), Path::from(r.object.key.as_str()));
            async move { store.get(&key).await?.bytes().await }
        })?;
        let corrupt = |reason: String| TierError::CorruptManifest {
            key: r.object.key.clone(),
            reason,
        };
        if crc32fast::hash(&body) != r.object.crc32 {
            return Err(corrupt("checksum mismatch".into()));
        }
        let snapshot: MetadataSnapshot =
            serde_json::from_slice(&body).map_err(|e| corrupt(e.to_string()))?;
        let local = |path: PathBuf| move |source| TierError::Local { path, source };
        std::fs::create_dir_all(config_dir).map_err(local(config_dir.to_owned()))?;
        for (name, text) in &snapshot.files {
            if !METADATA_FILES.contains(&name.as_str()) {
                continue;
            }
            let path = config_dir.join(name);
            let tmp = config_dir.join(format!("{name}.restore"));
            std::fs::write(&tmp, text).map_err(local(tmp.clone()))?;
            std::fs::rename(&tmp, &path).map_err(local(path.clone()))?;
        }
        tracing::warn!(files = snapshot.files.len(), taken_ms = r.taken_ms, dir = %config_dir.display(), "metadata restored from the tier");
        Ok(true)
    }

    /// Rebuilds the ConsumeQueues and indexes of the tiered history into `store` (opened on
    /// an empty data folder with this tier attached): from each segment's saved queue entries,
    /// or by reading its messages back where none were saved.
    pub fn restore(&self, store: &MessageStore) -> Result<RestoreReport, TierError> {
        let m = self.manifest();
        let mut report = RestoreReport::default();
        let failed = |e: crate::store::StoreError| TierError::Config(format!("restoring: {e}"));
        for seg in &m.segments {
            let entries = match &seg.queues {
                Some(q) => match self.fetch_queues(q) {
                    Ok(entries) => Some(entries),
                    Err(e) => {
                        tracing::warn!(key = %q.key, error = %e, "saved queue entries unusable; reading the segment's messages instead");
                        None
                    }
                },
                None => None,
            };
            match entries {
                Some(entries) => {
                    store.restore_queue_entries(&entries).map_err(failed)?;
                    report.entries += entries.len();
                    report.from_entries += 1;
                }
                None => {
                    store
                        .restore_from_cold(seg.base, seg.base + seg.len)
                        .map_err(failed)?;
                    report.from_messages += 1;
                }
            }
        }
        store.finish_restore().map_err(failed)?;
        tracing::info!(
            ?report,
            end = m.end(),
            "ConsumeQueues and indexes restored from the tier"
        );
        Ok(report)
    }

    fn fetch_queues(&self, q: &ObjectRef) -> Result<Vec<crate::store::QueueEntry>, TierError> {
        let body = self.block_on({
            let (store, key) = (Arc::clone(&self.store), Path::from(q.key.as_str()));
            async move { store.get(&key).await?.bytes().await }
        })?;
        let corrupt = |reason: String| TierError::CorruptManifest {
            key: q.key.clone(),
            reason,
        };
        if crc32fast::hash(&body) != q.crc32 {
            return Err(corrupt("checksum mismatch".into()));
        }
        queues::decode(&body).map_err(corrupt)
    }

    /// The upload, eviction, retention and metadata loop; runs until the task is dropped.
    /// Failures are logged, counted and retried with growing pauses (up to a minute).
    pub async fn run(self: Arc<Self>, store: Arc<MessageStore>) {
        if self.read_only {
            return;
        }
        match self.collect_garbage().await {
            Ok(n) if n > 0 => tracing::info!(
                deleted = n,
                "expired tier objects left by an earlier run deleted"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "looking for expired tier objects failed"),
        }
        let config_dir = store.config().config_dir();
        let mut pause = self.cfg.upload_interval;
        loop {
            tokio::time::sleep(pause).await;
            if !self.is_writer() {
                // A replica: follow the primary's manifest, forget what it expired, and drop
                // local segments it holds (outside the hot window).
                pause = self.cfg.upload_interval;
                match self.reload().await {
                    Ok(_) => {
                        let cut = self.manifest.read().expired_before;
                        if let Err(e) = blocking(|| store.forget_before(cut)) {
                            tracing::warn!(error = %e, "forgetting expired history failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the group's tier manifest failed")
                    }
                }
                let (s, me) = (Arc::clone(&store), Arc::clone(&self));
                match tokio::task::spawn_blocking(move || me.evict(&s)).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "tier eviction failed"),
                    Err(e) => tracing::error!(error = %e, "tier eviction task failed"),
                    Ok(Ok(_)) => {}
                }
                continue;
            }
            if self.stale.swap(false, std::sync::atomic::Ordering::AcqRel)
                && let Err(e) = self.reload().await
            {
                self.stale.store(true, std::sync::atomic::Ordering::Release);
                self.metrics.upload_errors.inc();
                pause = (pause * 2).min(Duration::from_secs(60));
                tracing::warn!(error = %e, "reading the tier manifest before writing failed");
                continue;
            }
            match self.upload_sealed(&store).await {
                Ok(_) => pause = self.cfg.upload_interval,
                Err(e) => {
                    self.metrics.upload_errors.inc();
                    // In a group another writer may have published meanwhile: start from its
                    // manifest.
                    if self.key_tag.lock().is_some() {
                        self.stale.store(true, std::sync::atomic::Ordering::Release);
                    }
                    pause = (pause * 2).min(Duration::from_secs(60));
                    tracing::warn!(error = %e, retry_in = ?pause, "tier upload failed; the segment stays local");
                    continue;
                }
            }
            let s = Arc::clone(&store);
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.evict(&s)).await {
                Ok(Err(e)) => tracing::error!(error = %e, "tier eviction failed"),
                Err(e) => tracing::error!(error = %e, "tier eviction task failed"),
                Ok(Ok(_)) => {}
            }
            if let Err(e) = self.expire(&store).await {
                tracing::warn!(error = %e, "remote retention failed; retried on the next round");
            }
            if let Err(e) = self.snapshot_metadata(&config_dir).await {
                tracing::warn!(error = %e, "metadata snapshot failed; retried on the next round");
            }
        }
    }

    /// One read-ahead chunk of a tiered segment, from the cache or a ranged GET. Either way the
    /// next chunks are fetched in the background, so a sequential reader finds them ready.
    /// `Ok(None)` past the segment's end; an error when the GET failed.
    fn chunk(&self, seg: &TieredSegment, index: u64) -> Result<Option<Bytes>, String> {
        let cached = self.cache.lock().chunks.get(&(seg.base, index)).cloned();
        let got = match cached {
            Some(b) => {
                self.metrics.cache_hits.inc();
                b
            }
            None => {
                self.metrics.cache_misses.inc();
                let Some(fetch) = self.fetch_chunk(seg, index) else {
                    return Ok(None);
                };
                self.block_on(fetch).ok_or_else(|| {
                    format!(
                        "GET of {} failed (see the log; retried by the next read)",
                        seg.key
                    )
                })?
            }
        };
        for ahead in 1..=PREFETCH_CHUNKS {
            self.prefetch(seg, index + ahead);
        }
        Ok(Some(got))
    }

    fn prefetch(&self, seg: &TieredSegment, index: u64) {
        let key = (seg.base, index);
        if self.cache.lock().chunks.contains_key(&key) || self.pending.lock().contains_key(&key) {
            return;
        }
        if let Some(fetch) = self.fetch_chunk(seg, index) {
            self.handle().spawn(fetch);
        }
    }

    /// The GET of one chunk, shared with any other reader of it, filling the cache.
    fn fetch_chunk(
        &self,
        seg: &TieredSegment,
        index: u64,
    ) -> Option<impl std::future::Future<Output = Option<Bytes>> + Send + 'static> {
        let size = self.cfg.read_ahead_bytes as u64;
        let start = index * size;
        if start >= seg.len {
            return None;
        }
        let end = (start + size).min(seg.len);
        let key = (seg.base, index);
        let cell = Arc::clone(self.pending.lock().entry(key).or_default());
        let store = Arc::clone(&self.store);
        let path = Path::from(seg.key.as_str());
        let (cache, pending) = (Arc::clone(&self.cache), Arc::clone(&self.pending));
        let cap = self.cfg.cache_bytes;
        let latency = self.metrics.cold_read_latency.clone();
        let read_bytes = self.metrics.cold_read_bytes.clone();
        Some(async move {
            let bytes = cell
                .get_or_init(|| async {
                    let started = Instant::now();
                    match store.get_range(&path, start..end).await {
                        Ok(b) => {
                            latency.observe(started.elapsed().as_secs_f64());
                            read_bytes.inc_by(b.len() as u64);
                            Some(b)
                        }
                        Err(e) => {
                            tracing::warn!(key = %path, start, end, error = %e, "cold read failed");
                            None
                        }
                    }
                })
                .await
                .clone();
            if let Some(b) = &bytes {
                let mut cache = cache.lock();
                if cache.chunks.insert(key, b.clone()).is_none() {
                    cache.order.push_back(key);
                    cache.bytes += b.len();
                }
                while cache.bytes > cap {
                    let Some(old) = cache.order.pop_front() else {
                        break;
                    };
                    if let Some(b) = cache.chunks.remove(&old) {
                        cache.bytes -= b.len();
                    }
                }
            }
            pending.lock().remove(&key);
            bytes
        })
    }

    /// `len` bytes of a tiered segment from segment-relative position `at`, across chunks.
    fn read_at(&self, seg: &TieredSegment, at: u64, len: usize) -> Result<Option<Bytes>, String> {
        let size = self.cfg.read_ahead_bytes as u64;
        let mut out = BytesMut::with_capacity(len);
        let mut pos = at;
        while out.len() < len {
            let Some(chunk) = self.chunk(seg, pos / size)? else {
                return Ok(None);
            };
            let within = (pos % size) as usize;
            if within >= chunk.len() {
                return Ok(None);
            }
            let take = (len - out.len()).min(chunk.len() - within);
            if out.is_empty() && take == len {
                return Ok(Some(chunk.slice(within..within + take)));
            }
            out.extend_from_slice(&chunk[within..within + take]);
            pos += take as u64;
        }
        Ok(Some(out.freeze()))
    }
}

/// A group's primary serves replicas the CommitLog bytes it no longer holds locally from here.
impl crate::ha::ColdLog for Tier {
    fn start(&self) -> Option<u64> {
        self.manifest.read().segments.first().map(|s| s.base)
    }

    fn chunk(&self, from: u64, max_bytes: u64) -> Result<Option<(u64, Bytes)>, String> {
        use crate::store::record::{BLANK_MARKER_LEN, MAGIC_BLANK};
        let Some(seg) = self.manifest.read().segment_for(from).cloned() else {
            return Ok(None);
        };
        let seg_end = seg.base + seg.len;
        let mut out = BytesMut::new();
        let mut at = from;
        while at < seg_end {
            let Some(head) = self.read_at(&seg, at - seg.base, BLANK_MARKER_LEN)? else {
                break;
            };
            let size = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as u64;
            let magic = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
            if magic == MAGIC_BLANK {
                // The segment's end: the marker tells the replica to roll over.
                out.extend_from_slice(&head);
                at = seg_end;
                break;
            }
            if size == 0 {
                break;
            }
            if size < BLANK_MARKER_LEN as u64 || at + size > seg_end {
                return Err(format!(
                    "tiered segment {} has a record of {size} bytes at {at}",
                    seg.key
                ));
            }
            if !out.is_empty() && at + size - from > max_bytes {
                break;
            }
            let Some(record) = self.read_at(&seg, at - seg.base, size as usize)? else {
                break;
            };
            out.extend_from_slice(&record);
            at += size;
        }
        Ok((!out.is_empty()).then(|| (at, out.freeze())))
    }
}

impl ColdReader for Tier {
    fn read_record(&self, physical_offset: u64) -> Result<Option<Bytes>, String> {
        let Some(seg) = self.manifest.read().segment_for(physical_offset).cloned() else {
            return Ok(None);
        };
        let at = physical_offset - seg.base;
        let Some(head) = self.read_at(&seg, at, 8)? else {
            return Ok(None);
        };
        let size = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        if size < 8 || at + size as u64 > seg.len {
            return Ok(None);
        }
        self.read_at(&seg, at, size)
    }
}

/// Runs blocking store work from async code without stalling the other tasks of a
/// multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Streams a local file to `key`: one put when it fits in a part, multipart otherwise.
/// Returns its length and CRC-32.
async fn upload_file(
    store: Arc<dyn ObjectStore>,
    path: &std::path::Path,
    key: &str,
    part_size: usize,
    concurrency: usize,
    bytes_per_second: u64,
) -> Result<(u64, u32), TierError> {
    let started = Instant::now();
    // Keeps the average rate at or below the cap: after `sent` bytes, wait until the time
    // that many bytes are allowed to take has passed.
    let pace = |sent: u64| {
        let due = (bytes_per_second > 0)
            .then(|| Duration::from_secs_f64(sent as f64 / bytes_per_second as f64))
            .and_then(|d| d.checked_sub(started.elapsed()));
        async move {
            if let Some(wait) = due {
                tokio::time::sleep(wait).await;
            }
        }
    };
    let local = |source| TierError::Local {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    let len = file.metadata().await.map_err(local)?.len();
    let location = Path::from(key);
    let mut crc = crc32fast::Hasher::new();
    if len as usize <= part_size {
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf).await.map_err(local)?;
        crc.update(&buf);
        pace(len).await;
        store.put(&location, PutPayload::from(buf)).await?;
        return Ok((len, crc.finalize()));
    }
    let upload = store.put_multipart(&location).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
    let mut buf = vec![0u8; part_size.min(8 << 20)];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(local)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        pace(total).await;
        writer.wait_for_capacity(concurrency).await?;
        writer.write(&buf[..n]);
        total += n as u64;
    }
    writer.finish().await?;
    Ok((total, crc.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GetStatus, StoreConfig};
    use std::net::SocketAddr;

    fn message(i: u64) -> crate::store::Message {
        crate::store::Message {
            topic: "T".into(),
            queue_id: (i % 2) as i32,
            flag: 0,
            sys_flag: 0,
            born_timestamp: 1,
            born_host: SocketAddr::from(([127, 0, 0, 1], 1)),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: format!("body-{i}-{}", "x".repeat((i % 300) as usize)).into(),
            properties: crate::store::properties::encode([("KEYS", "k")]),
        }
    }

    fn open(dir: &std::path::Path) -> MessageStore {
        MessageStore::open(StoreConfig {
            segment_size: 64 * 1024,
            tiered: true,
            flush_policy: crate::store::FlushPolicy::SyncFlush,
            ..StoreConfig::at(dir)
        })
        .unwrap()
    }

    /// Waits until everything written is dispatched (sealed segments become uploadable).
    async fn settle(store: &MessageStore) {
        for _ in 0..500 {
            let o = store.log_offsets();
            if o.dispatched == o.written && o.flushed == o.written {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the store did not settle: {:?}", store.log_offsets());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evicted_segments_are_read_back_from_the_tier_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TierConfig {
            backend: TierBackend::Local {
                path: dir.path().join("bucket"),
            },
            prefix: "node-a".into(),
            hot_window_bytes: 64 * 1024,
            part_size: 16 * 1024,
            read_ahead_bytes: 8 * 1024,
            cache_bytes: 32 * 1024,
            ..TierConfig::default()
        };
        let data = dir.path().join("data");
        let n = 2000u64;
        {
            let store = open(&data);
            let tier = Tier::open(cfg.clone()).unwrap();
            tier.attach(&store).unwrap();
            for i in 0..n {
                store.put_message(&message(i)).await.unwrap();
            }
            settle(&store).await;
            // Not uploaded yet: nothing may be evicted.
            assert_eq!(tier.evict(&store).unwrap(), 0);
            let uploaded = tier.upload_sealed(&store).await.unwrap();
            assert!(uploaded >= 5, "{uploaded}");
            assert!(tier.evict(&store).unwrap() >= 4);
            assert!(store.log_offsets().min > 0);
            store.shutdown().unwrap();
        }
        // A new process: the manifest is read back, cold offsets come from the tier.
        let store = open(&data);
        let tier = Tier::open(cfg).unwrap();
        assert!(tier.manifest().segments.len() >= 5);
        tier.attach(&store).unwrap();
        let mut seen = 0;
        for q in 0..2 {
            let mut offset = 0;
            loop {
                let got = store.get_message("T", q, offset, 64).unwrap();
                if got.status != GetStatus::Found {
                    break;
                }
                for m in &got.messages {
                    let i = seen_index(&m.body);
                    assert_eq!(m.body, message(i).body);
                    seen += 1;
                }
                offset = got.next_offset;
            }
        }
        assert_eq!(seen, n);
        // Sequential reads: far fewer GETs than messages.
        let misses = tier.metrics.cache_misses.get();
        assert!(
            misses > 0 && misses < n / 10,
            "{misses} GETs for {n} messages"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_emptied_data_folder_restores_its_history_from_the_tier() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TierConfig {
            backend: TierBackend::Local {
                path: dir.path().join("bucket"),
            },
            prefix: "node-a".into(),
            hot_window_bytes: 0,
            ..TierConfig::default()
        };
        let data = dir.path().join("data");
        let n = 1000u64;
        {
            let store = open(&data);
            let tier = Tier::open(cfg.clone()).unwrap();
            tier.attach(&store).unwrap();
            for i in 0..n {
                store.put_message(&message(i)).await.unwrap();
            }
            settle(&store).await;
            tier.upload_sealed(&store).await.unwrap();
            store.shutdown().unwrap();
        }
        let tiered_end = Tier::open(cfg.clone()).unwrap().manifest().end();
        assert!(tiered_end > 0);
        // The disk is lost: only the tier remains.
        std::fs::remove_dir_all(&data).unwrap();
        let tier = Tier::open(cfg).unwrap();
        let store = MessageStore::open(StoreConfig {
            segment_size: 64 * 1024,
            tiered: true,
            flush_policy: crate::store::FlushPolicy::SyncFlush,
            empty_start_offset: tier.manifest().end(),
            ..StoreConfig::at(&data)
        })
        .unwrap();
        assert!(store.recovery_report().empty);
        tier.attach(&store).unwrap();
        let report = tier.restore(&store).unwrap();
        assert!(
            report.from_entries > 0 && report.from_messages == 0,
            "{report:?}"
        );
        let mut restored = 0;
        for q in 0..2 {
            let mut offset = 0;
            loop {
                let got = store.get_message("T", q, offset, 64).unwrap();
                if got.status != GetStatus::Found {
                    break;
                }
                for m in &got.messages {
                    assert_eq!(m.body, message(seen_index(&m.body)).body);
                    assert!(m.physical_offset < tiered_end);
                }
                restored += got.messages.len() as u64;
                offset = got.next_offset;
            }
        }
        // Everything in the uploaded segments is back (the unsealed tail was local only).
        assert!(restored > 0 && restored < n, "{restored}");
        // New writes continue after the tiered history, with the queue offsets after it.
        let next = store.max_offset("T", (n % 2) as i32).unwrap();
        let r = store.put_message(&message(n)).await.unwrap();
        assert!(r.physical_offset >= tiered_end);
        assert_eq!(r.queue_offset, next);
        assert!(store.lookup_by_key("T", "k", 10, 0, i64::MAX).len() == 10);
    }

    fn seen_index(body: &[u8]) -> u64 {
        let s = std::str::from_utf8(body).unwrap();
        s.split('-').nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn an_s3_tier_reads_from_yaml_and_typos_are_refused() {
        let yaml = "backend:\n  type: s3\n  bucket: b\n  endpoint: http://h:1\n  pathStyle: true\n  allowHttp: true\nprefix: p\nhotWindowBytes: 10\nuploadInterval: 200\n";
        let cfg: TierConfig = serde_saphyr::from_str(yaml).unwrap();
        assert!(matches!(
            cfg.backend,
            TierBackend::S3 {
                path_style: true,
                allow_http: true,
                ..
            }
        ));
        assert_eq!(cfg.upload_interval, Duration::from_millis(200));
        assert!(
            serde_saphyr::from_str::<TierConfig>("backend:\n  type: s3\n  bukket: b\n").is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_evicted_while_uploads_fail() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TierConfig {
            backend: TierBackend::Local {
                path: dir.path().join("bucket"),
            },
            prefix: "node-a".into(),
            hot_window_bytes: 0,
            ..TierConfig::default()
        };
        let store = open(&dir.path().join("data"));
        let tier = Tier::open(cfg).unwrap();
        tier.attach(&store).unwrap();
        for i in 0..500 {
            store.put_message(&message(i)).await.unwrap();
        }
        settle(&store).await;
        // Make the bucket unwritable: the segment object path is taken by a file.
        std::fs::create_dir_all(dir.path().join("bucket/node-a")).unwrap();
        std::fs::write(
            dir.path().join("bucket/node-a/commitlog"),
            b"a file, not a folder",
        )
        .unwrap();
        assert!(tier.upload_sealed(&store).await.is_err());
        assert_eq!(tier.evict(&store).unwrap(), 0);
        assert_eq!(store.log_offsets().min, 0);
        let got = store.get_message("T", 0, 0, 1).unwrap();
        assert_eq!(got.status, GetStatus::Found);
    }

    fn local_tier(dir: &std::path::Path, prefix: &str) -> TierConfig {
        TierConfig {
            backend: TierBackend::Local {
                path: dir.join("bucket"),
            },
            prefix: prefix.into(),
            hot_window_bytes: 0,
            read_ahead_bytes: 8 * 1024,
            ..TierConfig::default()
        }
    }

    /// Writes `n` messages, uploads every sealed segment and evicts them all.
    async fn fill_and_tier(store: &MessageStore, tier: &Tier, n: u64) {
        for i in 0..n {
            store.put_message(&message(i)).await.unwrap();
        }
        settle(store).await;
        tier.upload_sealed(store).await.unwrap();
        tier.evict(store).unwrap();
    }

    fn objects(dir: &std::path::Path, sub: &str) -> usize {
        std::fs::read_dir(dir.join("bucket/node-a").join(sub)).map_or(0, |d| d.count())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_retention_deletes_the_oldest_segments_in_manifest_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = local_tier(dir.path(), "node-a");
        let data = dir.path().join("data");
        let store = open(&data);
        let tier = Tier::open(cfg.clone()).unwrap();
        tier.attach(&store).unwrap();
        fill_and_tier(&store, &tier, 2000).await;
        let before = tier.manifest();
        assert!(before.segments.len() >= 5);
        // Nothing is configured: nothing expires.
        assert_eq!(tier.expire(&store).await.unwrap(), 0);
        assert_eq!(store.min_offset("T", 0).unwrap(), 0);

        // Keep at most two segments' worth.
        cfg.remote_max_bytes = 2 * 64 * 1024;
        drop(tier);
        let tier = Tier::open(cfg.clone()).unwrap();
        tier.attach(&store).unwrap();
        let expired = tier.expire(&store).await.unwrap();
        let after = tier.manifest();
        assert_eq!(expired, before.segments.len() - after.segments.len());
        assert!(after.bytes() <= cfg.remote_max_bytes && expired > 0);
        assert_eq!(after.expired_before, after.segments[0].base);
        assert_eq!(objects(dir.path(), "commitlog"), after.segments.len());
        assert_eq!(objects(dir.path(), "queues"), after.segments.len());
        // Consumers start where the history now starts; what is left reads back.
        let min = store.min_offset("T", 0).unwrap();
        assert!(min > 0);
        let got = store.get_message("T", 0, 0, 10).unwrap();
        assert_eq!(got.status, GetStatus::OffsetTooSmall);
        let got = store.get_message("T", 0, min, 10).unwrap();
        assert_eq!(got.status, GetStatus::Found);
        assert!(got.messages[0].physical_offset >= after.expired_before);

        // A crash between publishing and deleting leaves objects: the next start removes them.
        let leftover = dir
            .path()
            .join("bucket/node-a/commitlog/00000000000000000000");
        std::fs::write(&leftover, b"left by a crash").unwrap();
        assert_eq!(tier.collect_garbage().await.unwrap(), 1);
        assert!(!leftover.exists());
        // A restart on the same disk forgets the expired history too.
        drop(tier);
        store.shutdown().unwrap();
        drop(store);
        let store = open(&data);
        let tier = Tier::open(cfg).unwrap();
        tier.attach(&store).unwrap();
        assert_eq!(store.min_offset("T", 0).unwrap(), min);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metadata_is_snapshotted_and_restored_on_an_empty_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TierConfig {
            metadata_interval: Duration::ZERO,
            ..local_tier(dir.path(), "node-a")
        };
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("topics.json"), br#"[{"name":"T"}]"#).unwrap();
        std::fs::write(config.join("consumerOffset.json"), br#"{"offsetTable":{}}"#).unwrap();
        let tier = Tier::open(cfg.clone()).unwrap();
        assert!(tier.snapshot_metadata(&config).await.unwrap());
        // Unchanged: no new snapshot.
        assert!(!tier.snapshot_metadata(&config).await.unwrap());
        std::fs::write(
            config.join("consumerOffset.json"),
            br#"{"offsetTable":{"T@G":{"0":5}}}"#,
        )
        .unwrap();
        assert!(tier.snapshot_metadata(&config).await.unwrap());
        assert_eq!(tier.metrics.metadata_snapshots.get(), 2);
        // Files present: a restore leaves them alone.
        let tier = Tier::open(cfg).unwrap();
        assert!(!tier.restore_metadata(&config).unwrap());
        // An empty disk gets the newest snapshot.
        let fresh = dir.path().join("fresh/config");
        assert!(tier.restore_metadata(&fresh).unwrap());
        assert_eq!(
            std::fs::read(fresh.join("consumerOffset.json")).unwrap(),
            br#"{"offsetTable":{"T@G":{"0":5}}}"#
        );
        assert_eq!(
            std::fs::read(fresh.join("topics.json")).unwrap(),
            br#"[{"name":"T"}]"#
        );
        assert!(!fresh.join("subscriptionGroup.json").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_only_tier_serves_another_nodes_history_and_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_tier(dir.path(), "node-a");
        let n = 1500;
        {
            let store = open(&dir.path().join("a"));
            let tier = Tier::open(cfg.clone()).unwrap();
            tier.attach(&store).unwrap();
            fill_and_tier(&store, &tier, n).await;
            store.shutdown().unwrap();
        }
        let listing = |d: &std::path::Path| {
            let mut names: Vec<_> = walk(&d.join("bucket"));
            names.sort();
            names
        };
        let before = listing(dir.path());
        let adopted = Tier::open_read_only(cfg.clone()).unwrap();
        let end = adopted.manifest().end();
        let store = MessageStore::open(StoreConfig {
            segment_size: 64 * 1024,
            tiered: true,
            empty_start_offset: end,
            ..StoreConfig::at(dir.path().join("b"))
        })
        .unwrap();
        adopted.attach(&store).unwrap();
        let report = adopted.restore(&store).unwrap();
        assert_eq!(report.from_messages, 0);
        let mut read = 0;
        for q in 0..2 {
            let got = store.get_message("T", q, 0, 10_000).unwrap();
            for m in &got.messages {
                assert_eq!(m.body, message(seen_index(&m.body)).body);
            }
            read += got.messages.len();
        }
        assert_eq!(read, report.entries);
        assert!(read as u64 > n / 2, "{read}");
        // Writes to the adopting store stay local; the adopted tier uploads nothing.
        for i in 0..300 {
            store.put_message(&message(n + i)).await.unwrap();
        }
        settle(&store).await;
        assert_eq!(adopted.upload_sealed(&store).await.unwrap(), 0);
        assert_eq!(adopted.evict(&store).unwrap(), 0);
        assert!(
            !adopted
                .snapshot_metadata(&dir.path().join("b/config"))
                .await
                .unwrap()
        );
        assert_eq!(listing(dir.path()), before);
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_tier_stops_consumers_instead_of_skipping_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("data"));
        let tier = Tier::open(local_tier(dir.path(), "node-a")).unwrap();
        tier.attach(&store).unwrap();
        fill_and_tier(&store, &tier, 1000).await;
        let first = tier.manifest().segments[0].key.clone();
        let object = dir.path().join("bucket").join(&first);
        let moved = dir.path().join("moved");
        std::fs::rename(&object, &moved).unwrap();
        let err = store.get_message("T", 0, 0, 10).unwrap_err();
        assert!(
            matches!(err, crate::store::StoreError::TierUnavailable { .. }),
            "{err}"
        );
        std::fs::rename(&moved, &object).unwrap();
        let got = store.get_message("T", 0, 0, 10).unwrap();
        assert_eq!((got.status, got.messages.len()), (GetStatus::Found, 10));
        assert_eq!(seen_index(&got.messages[0].body), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_keep_to_the_bandwidth_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("segment");
        std::fs::write(&file, vec![7u8; 300 * 1024]).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let started = Instant::now();
        let (len, _) = upload_file(Arc::clone(&store), &file, "k", 64 * 1024, 2, 1 << 20)
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(len, 300 * 1024);
        // 300 KiB at 1 MiB/s: the last part may start only after about 0.23 s.
        assert!(secs >= 0.2, "{secs}");
        let started = Instant::now();
        upload_file(store, &file, "k2", 64 * 1024, 2, 0)
            .await
            .unwrap();
        assert!(started.elapsed().as_secs_f64() < 0.2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_older_than_the_hot_age_are_evicted_inside_the_byte_window() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TierConfig {
            hot_window_bytes: 1 << 30,
            ..local_tier(dir.path(), "node-a")
        };
        let store = open(&dir.path().join("data"));
        let tier = Tier::open(cfg.clone()).unwrap();
        tier.attach(&store).unwrap();
        fill_and_tier(&store, &tier, 1000).await;
        // Inside a 1 GiB window: nothing leaves.
        assert_eq!(store.log_offsets().min, 0);
        drop(tier);
        let tier = Tier::open(TierConfig {
            hot_window_age: Duration::from_millis(1),
            ..cfg
        })
        .unwrap();
        tier.attach(&store).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(tier.evict(&store).unwrap() >= 3);
        assert_eq!(store.log_offsets().min, tier.manifest().end());
    }
}
