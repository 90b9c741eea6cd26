//! Tiered storage: sealed CommitLog segments move to object storage; the local disk keeps the
//! hot tail; every offset stays readable through the store's normal API.
//!
//! - **Upload**: a sealed segment (every byte flushed and dispatched) is streamed to
//!   `<prefix>/commitlog/<base, 20 digits>` (multipart above one part), then a new manifest
//!   version naming it is published with a create-only put ([`manifest`]).
//! - **Eviction**: the store's retention hook lets a segment go only once a published manifest
//!   names it; the tier then evicts uploaded segments that fall out of the hot window
//!   (`hotWindowBytes` of the newest CommitLog bytes). ConsumeQueues and indexes stay local
//!   (the store runs with `tiered: true`), so lookups keep working.
//! - **Cold reads**: offsets below the local CommitLog are read with ranged GETs of
//!   `readAheadBytes` chunks into a bounded in-memory cache, so a sequential consumer issues one
//!   GET per chunk, not one per message.
//! - **Faults**: object-store errors fail the upload (the HTTP backends retry transient ones
//!   themselves with backoff first); the segment stays local and is tried again with growing
//!   pauses. Nothing local is deleted unless the manifest naming it is stored.
//!
//! All object-store calls run on the tier's own small runtime: the store's reads are
//! synchronous, and the HTTP clients must not outlive the runtime that made them.

pub mod manifest;

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
use manifest::{Manifest, TieredSegment};

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
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            backend: TierBackend::Local {
                path: "data/tier".into(),
            },
            prefix: "broker-a".into(),
            hot_window_bytes: 1 << 30,
            upload_interval: Duration::from_secs(5),
            part_size: 16 << 20,
            upload_concurrency: 4,
            read_ahead_bytes: 4 << 20,
            cache_bytes: 64 << 20,
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
    /// Age of the oldest sealed segment not uploaded yet.
    pub upload_lag_seconds: Gauge,
    pub remote_segments: Gauge,
    pub remote_bytes: Gauge,
    pub evicted_segments: Counter,
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
            upload_lag_seconds: Gauge::default(),
            remote_segments: Gauge::default(),
            remote_bytes: Gauge::default(),
            evicted_segments: Counter::default(),
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
}

impl Tier {
    /// Opens the tier and reads its newest manifest.
    pub fn open(cfg: TierConfig) -> Result<Arc<Tier>, TierError> {
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
            cfg,
        });
        let m = tier.block_on({
            let (store, prefix) = (Arc::clone(&tier.store), tier.cfg.prefix.clone());
            async move { manifest::load_latest(store.as_ref(), &prefix).await }
        })?;
        tracing::info!(prefix = %tier.cfg.prefix, version = m.version, segments = m.segments.len(), end = m.end(), "tier manifest loaded");
        tier.set_manifest(m);
        Ok(tier)
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

    /// Connects the tier to a store: retention may delete only uploaded segments, and reads
    /// below the local CommitLog come from the tier.
    pub fn attach(self: &Arc<Self>, store: &MessageStore) {
        let manifest = Arc::clone(&self.manifest);
        store.set_retention_hook(Arc::new(move |info: &SegmentInfo| {
            manifest.read().contains(info.base)
        }));
        store.set_cold_reader(Arc::clone(self) as Arc<dyn ColdReader>);
    }

    fn segment_key(&self, base: u64) -> String {
        format!("{}/commitlog/{base:020}", self.cfg.prefix)
    }

    /// Uploads every sealed segment not in the manifest yet, publishing a manifest version
    /// after each. Returns how many were uploaded.
    pub async fn upload_sealed(&self, store: &MessageStore) -> Result<usize, TierError> {
        let sealed = store.sealed_segments();
        let pending: Vec<SegmentInfo> = {
            let m = self.manifest.read();
            sealed.into_iter().filter(|s| !m.contains(s.base)).collect()
        };
        self.metrics.pending_segments.set(pending.len() as i64);
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
                    async move { upload_file(store, &path, &key, part, concurrency).await }
                })
                .await?;
            let next = self.manifest().with(TieredSegment {
                base: seg.base,
                len,
                key,
                crc32,
                uploaded_ms: now_millis(),
            });
            self.on_tier({
                let (store, prefix, next) = (
                    Arc::clone(&self.store),
                    self.cfg.prefix.clone(),
                    next.clone(),
                );
                async move { manifest::publish(store.as_ref(), &prefix, &next).await }
            })
            .await?;
            tracing::info!(
                base = seg.base,
                len,
                version = next.version,
                secs = started.elapsed().as_secs_f64(),
                "segment uploaded to the tier"
            );
            self.set_manifest(next);
            self.metrics.uploaded_bytes.inc_by(len);
            self.metrics.uploaded_segments.inc();
            uploaded += 1;
        }
        self.metrics.pending_segments.set(0);
        Ok(uploaded)
    }

    /// Deletes local segments outside the hot window that the manifest holds.
    pub fn evict(&self, store: &MessageStore) -> Result<usize, crate::store::StoreError> {
        let written = store.log_offsets().written;
        let keep_from = written.saturating_sub(self.cfg.hot_window_bytes);
        let report = store.evict_before(keep_from)?;
        self.metrics
            .evicted_segments
            .inc_by(report.deleted.len() as u64);
        Ok(report.deleted.len())
    }

    /// The upload and eviction loop; runs until the task is dropped. Failures are logged,
    /// counted and retried with growing pauses (up to a minute).
    pub async fn run(self: Arc<Self>, store: Arc<MessageStore>) {
        let mut pause = self.cfg.upload_interval;
        loop {
            tokio::time::sleep(pause).await;
            match self.upload_sealed(&store).await {
                Ok(_) => pause = self.cfg.upload_interval,
                Err(e) => {
                    self.metrics.upload_errors.inc();
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
        }
    }

    /// One read-ahead chunk of a tiered segment, from the cache or a ranged GET. Either way the
    /// next chunks are fetched in the background, so a sequential reader finds them ready.
    fn chunk(&self, seg: &TieredSegment, index: u64) -> Option<Bytes> {
        let cached = self.cache.lock().chunks.get(&(seg.base, index)).cloned();
        let got = match cached {
            Some(b) => {
                self.metrics.cache_hits.inc();
                Some(b)
            }
            None => {
                self.metrics.cache_misses.inc();
                let fetch = self.fetch_chunk(seg, index)?;
                self.block_on(fetch)
            }
        };
        for ahead in 1..=PREFETCH_CHUNKS {
            self.prefetch(seg, index + ahead);
        }
        got
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
    fn read_at(&self, seg: &TieredSegment, at: u64, len: usize) -> Option<Bytes> {
        let size = self.cfg.read_ahead_bytes as u64;
        let mut out = BytesMut::with_capacity(len);
        let mut pos = at;
        while out.len() < len {
            let chunk = self.chunk(seg, pos / size)?;
            let within = (pos % size) as usize;
            if within >= chunk.len() {
                return None;
            }
            let take = (len - out.len()).min(chunk.len() - within);
            if out.is_empty() && take == len {
                return Some(chunk.slice(within..within + take));
            }
            out.extend_from_slice(&chunk[within..within + take]);
            pos += take as u64;
        }
        Some(out.freeze())
    }
}

impl ColdReader for Tier {
    fn read_record(&self, physical_offset: u64) -> Option<Bytes> {
        let seg = self.manifest.read().segment_for(physical_offset)?.clone();
        let at = physical_offset - seg.base;
        let head = self.read_at(&seg, at, 8)?;
        let size = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        if size < 8 || at + size as u64 > seg.len {
            return None;
        }
        self.read_at(&seg, at, size)
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
) -> Result<(u64, u32), TierError> {
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
            tier.attach(&store);
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
        tier.attach(&store);
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
            tier.attach(&store);
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
        tier.attach(&store);
        store.rebuild_from_cold(tier.manifest().end()).unwrap();
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
        tier.attach(&store);
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
}
