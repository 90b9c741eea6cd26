//! Tiering benchmark against a real S3-compatible server, side by side with that server's raw
//! speed.
//!
//! ```text
//! cargo bench -p broker --bench tier                 # 64 MB of 1 KiB messages
//! RMQ_BENCH_TIER_MB=256 cargo bench -p broker --bench tier
//! ```
//!
//! Starts `s3s-fs` (installed by `scripts/setup-s3.sh`) on loopback, writes 1 KiB messages into
//! a store with 16 MiB segments, then measures, in one run:
//! - upload: the tier uploading the sealed segments (multipart, 8 MiB parts, 4 in flight,
//!   manifest after each) vs. raw single PUTs of the same bytes by `object_store` (ratio);
//! - reads: every message read sequentially through the store while local (hot), then again
//!   after the segments were evicted, through a fresh tier with an empty cache (cold), with
//!   the latency of the first cold message;
//! - restore: ConsumeQueues and indexes of an emptied disk rebuilt from the queue objects
//!   uploaded next to each segment vs. by reading every message back from the tier.
//!
//! Results also go to `target/bench-results/tier.md`. Everything started is stopped at the end.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::store::{FlushPolicy, GetStatus, Message, MessageStore, StoreConfig};
use broker::tier::{Tier, TierBackend, TierConfig};
use object_store::ObjectStoreExt;

const BODY: usize = 1024;
const SEGMENT: u64 = 16 << 20;

mod common;
use common::message;

#[path = "../tests/common/ports.rs"]
mod ports;
use ports::free_port;

/// Reads every message of the topic in order; returns (messages, bytes, first-read latency).
fn read_all(store: &MessageStore) -> (u64, u64, Duration) {
    let mut n = 0;
    let mut bytes = 0;
    let mut first = None;
    for q in 0..4 {
        let mut offset = 0;
        loop {
            let started = Instant::now();
            let got = store.get_message("TierBench", q, offset, 32).unwrap();
            first.get_or_insert(started.elapsed());
            if got.status != GetStatus::Found {
                break;
            }
            n += got.messages.len() as u64;
            bytes += got
                .messages
                .iter()
                .map(|m| m.total_size as u64)
                .sum::<u64>();
            offset = got.next_offset;
        }
    }
    (n, bytes, first.unwrap_or_default())
}

fn main() {
    let mb: u64 = std::env::var("RMQ_BENCH_TIER_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    // Before any thread exists: the S3 client reads its credentials from the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "AK");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "SK");
    }
    let setup = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/setup-s3.sh"
        ))
        .output()
        .expect("run scripts/setup-s3.sh");
    assert!(setup.status.success(), "setup-s3.sh failed");
    let bin = String::from_utf8(setup.stdout).unwrap().trim().to_owned();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("s3");
    std::fs::create_dir_all(root.join("bench")).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut s3 = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--access-key", "AK", "--secret-key", "SK"])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    while TcpStream::connect(addr).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tier_cfg = TierConfig {
        backend: TierBackend::S3 {
            bucket: "bench".into(),
            endpoint: Some(format!("http://{addr}")),
            region: None,
            path_style: true,
            allow_http: true,
        },
        prefix: "node".into(),
        hot_window_bytes: 0,
        part_size: 8 << 20,
        upload_concurrency: 4,
        read_ahead_bytes: 4 << 20,
        cache_bytes: 64 << 20,
        ..TierConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = work.path().join("data");
    let store = Arc::new(
        MessageStore::open(StoreConfig {
            segment_size: SEGMENT,
            flush_policy: FlushPolicy::AsyncFlush,
            tiered: true,
            ..StoreConfig::at(&data)
        })
        .unwrap(),
    );
    let count = mb * 1_000_000 / (BODY as u64 + 100);
    rt.block_on(async {
        for chunk in (0..count).collect::<Vec<_>>().chunks(64) {
            let batch: Vec<Message> = chunk
                .iter()
                .map(|i| message("TierBench", (i % 4) as i32, *i, BODY))
                .collect();
            store.put_messages(&batch).await.unwrap();
        }
        loop {
            let o = store.log_offsets();
            if o.dispatched == o.written {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    store.checkpoint().unwrap();
    // Sealed segments need their bytes flushed: wait for the periodic flush.
    while store.sealed_segments().len() < (store.log_offsets().written / SEGMENT) as usize {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sealed = store.sealed_segments();
    let sealed_bytes: u64 = sealed.iter().map(|s| s.end - s.base).sum();

    // Raw PUTs of the same bytes (read into memory first, not timed).
    let raw_store = tier_cfg.build_store().unwrap();
    let files: Vec<Vec<u8>> = sealed
        .iter()
        .map(|s| std::fs::read(&s.path).unwrap())
        .collect();
    let started = Instant::now();
    rt.block_on(async {
        for (i, f) in files.iter().enumerate() {
            let key = object_store::path::Path::from(format!("raw/{i}"));
            raw_store.put(&key, f.clone().into()).await.unwrap();
        }
    });
    let raw_secs = started.elapsed().as_secs_f64();
    drop(files);

    let tier = rt.block_on(async { Tier::open(tier_cfg.clone()).unwrap() });
    tier.attach(&store).unwrap();
    let started = Instant::now();
    let uploaded = rt.block_on(tier.upload_sealed(&store)).unwrap();
    let upload_secs = started.elapsed().as_secs_f64();
    assert_eq!(uploaded, sealed.len());

    let started = Instant::now();
    let (hot_n, hot_bytes, hot_first) = read_all(&store);
    let hot_secs = started.elapsed().as_secs_f64();

    tier.evict(&store).unwrap();
    drop(tier);
    let cold_tier = rt.block_on(async { Tier::open(tier_cfg.clone()).unwrap() });
    cold_tier.attach(&store).unwrap();
    let started = Instant::now();
    let (cold_n, cold_bytes, cold_first) = read_all(&store);
    let cold_secs = started.elapsed().as_secs_f64();
    let gets = cold_tier.metrics.cache_misses.get();

    // Restoring an emptied disk: from the queue objects saved next to each segment, vs. by
    // reading every message back through the tier (what a segment without one needs).
    let manifest = cold_tier.manifest();
    let queue_bytes: u64 = manifest
        .segments
        .iter()
        .filter_map(|s| s.queues.as_ref().map(|q| q.len))
        .sum();
    let fresh = |name: &str| {
        MessageStore::open(StoreConfig {
            segment_size: SEGMENT,
            tiered: true,
            empty_start_offset: manifest.end(),
            ..StoreConfig::at(work.path().join(name))
        })
        .unwrap()
    };
    let restore_tier = rt.block_on(async { Tier::open(tier_cfg.clone()).unwrap() });
    let by_entries = fresh("restore-entries");
    restore_tier.attach(&by_entries).unwrap();
    let started = Instant::now();
    let report = restore_tier.restore(&by_entries).unwrap();
    let entries_secs = started.elapsed().as_secs_f64();
    let by_messages = fresh("restore-messages");
    restore_tier.attach(&by_messages).unwrap();
    let started = Instant::now();
    by_messages.restore_from_cold(0, manifest.end()).unwrap();
    by_messages.finish_restore().unwrap();
    let messages_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        by_entries.max_offset("TierBench", 0).unwrap(),
        by_messages.max_offset("TierBench", 0).unwrap()
    );
    let _ = s3.kill();
    let _ = s3.wait();

    let mbps = |b: u64, s: f64| b as f64 / s / 1e6;
    let rows = [
        "| measure | this tier | reference | ratio |".to_owned(),
        "|---|---|---|---|".to_owned(),
        format!(
            "| upload of {} sealed segments ({:.0} MB) | {:.1} MB/s | raw PUT {:.1} MB/s | {:.2} |",
            sealed.len(),
            sealed_bytes as f64 / 1e6,
            mbps(sealed_bytes, upload_secs),
            mbps(sealed_bytes, raw_secs),
            raw_secs / upload_secs,
        ),
        format!(
            "| sequential read, {} x 1 KiB messages | cold {:.0} msg/s ({:.1} MB/s), {} GETs | hot {:.0} msg/s ({:.1} MB/s) | {:.2} |",
            cold_n,
            cold_n as f64 / cold_secs,
            mbps(cold_bytes, cold_secs),
            gets,
            hot_n as f64 / hot_secs,
            mbps(hot_bytes, hot_secs),
            (cold_n as f64 / cold_secs) / (hot_n as f64 / hot_secs),
        ),
        format!(
            "| first message | cold {:.2} ms | hot {:.3} ms | |",
            cold_first.as_secs_f64() * 1e3,
            hot_first.as_secs_f64() * 1e3
        ),
        format!(
            "| restore of {} queue entries onto an empty disk | {:.2} s from queue objects ({:.1} MB, {:.1}% of the segments) | {:.2} s reading the messages back | {:.1}x faster |",
            report.entries,
            entries_secs,
            queue_bytes as f64 / 1e6,
            100.0 * queue_bytes as f64 / sealed_bytes as f64,
            messages_secs,
            messages_secs / entries_secs,
        ),
    ];
    let text = rows.join("\n");
    println!("tier benchmark against s3s-fs on loopback, {mb} MB of {BODY}-byte messages\n{text}");
    assert_eq!(hot_n, cold_n, "cold reads returned every message");
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_owned());
    let out = PathBuf::from(target).join("bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("tier.md"), format!("# tier ({mb} MB)\n\n{text}\n")).unwrap();
}
