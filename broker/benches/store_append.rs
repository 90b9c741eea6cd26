//! Append benchmark of the store, side by side with the raw disk.
//!
//! ```text
//! cargo bench -p broker --bench store_append            # 5 s per case
//! RMQ_BENCH_SECS=20 cargo bench -p broker --bench store_append
//! ```
//!
//! For 1 KiB bodies and 1, 4 and 16 concurrent producers, under ASYNC_FLUSH and SYNC_FLUSH, it
//! prints appends/s, MB/s, append latency percentiles and memory, then writes the same bytes
//! to a plain file on the same disk with `write` + `fsync` per batch, the batch being the
//! store's own average bytes per flush in that case (so both make the same bytes durable with
//! the same number of syncs), and prints the ratio store/raw. Results also go to
//! `target/bench-results/store_append.md`. Data goes under `RMQ_BENCH_DIR` (default
//! `target/bench-data`), which should be on the disk you care about. A case stops after its
//! time or after `RMQ_BENCH_MAX_MB` (default 2048) MB of records, whichever comes first: under
//! ASYNC_FLUSH the store writes at page-cache speed and would otherwise fill the disk. Each
//! case's data is deleted when it ends.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::store::{FlushPolicy, record};

mod common;
use common::{case_dir, data_dir, env_u64, message, open_store, proc_status_kib, write_results};

const BODY: usize = 1024;

struct StoreRun {
    appends: u64,
    bytes: u64,
    elapsed: Duration,
    flushes: u64,
    latencies_ns: Vec<u64>,
    rss_kib: u64,
    anon_kib: u64,
}

fn run_store(
    dir: &Path,
    policy: FlushPolicy,
    producers: usize,
    secs: u64,
    max_bytes: u64,
) -> StoreRun {
    let (rt, store) = open_store(dir, policy);
    let stop = Arc::new(AtomicBool::new(false));
    let record_len = record::encoded_len(
        &message("BenchTopic", 0, 0, BODY),
        &store.config().store_host,
    ) as u64;
    let max_appends = max_bytes / record_len;
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let results: Vec<Vec<u64>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for p in 0..producers {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            let count = Arc::clone(&count);
            tasks.push(tokio::spawn(async move {
                let msg = message("BenchTopic", (p % 8) as i32, 0, BODY);
                let mut lat = Vec::with_capacity(1 << 20);
                while !stop.load(Ordering::Relaxed) {
                    if count.fetch_add(1, Ordering::Relaxed) >= max_appends {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    let t = Instant::now();
                    if let Err(e) = store.put_message(&msg).await {
                        eprintln!("append failed, stopping this case: {e}");
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("producer"));
        }
        out
    });
    let elapsed = started.elapsed();
    let rss_kib = proc_status_kib("VmRSS:");
    let anon_kib = proc_status_kib("RssAnon:");
    let flushes = store.log_offsets().flushes;
    store.shutdown().expect("shutdown");
    let mut latencies_ns: Vec<u64> = results.into_iter().flatten().collect();
    latencies_ns.sort_unstable();
    let appends = latencies_ns.len() as u64;
    StoreRun {
        appends,
        bytes: appends * record_len,
        elapsed,
        flushes,
        latencies_ns,
        rss_kib,
        anon_kib,
    }
}

/// Writes `total` bytes to a fresh file with one `write` + `fsync` per `batch` bytes.
fn run_raw(dir: &Path, total: u64, batch: u64) -> Duration {
    let path = dir.join("raw.bin");
    let mut f = std::fs::File::create(&path).expect("raw file");
    let buf = vec![b'r'; batch as usize];
    let started = Instant::now();
    let mut written = 0;
    while written < total {
        let n = batch.min(total - written) as usize;
        f.write_all(&buf[..n]).expect("raw write");
        f.sync_data().expect("raw fsync");
        written += n as u64;
    }
    let elapsed = started.elapsed();
    drop(f);
    let _ = std::fs::remove_file(path);
    elapsed
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let secs = env_u64("RMQ_BENCH_SECS", 5);
    let max_bytes = env_u64("RMQ_BENCH_MAX_MB", 2048) * 1_000_000;
    let base = data_dir();
    let header = "| policy | producers | appends/s | MB/s | p50 us | p99 us | p999 us | appends/flush | raw MB/s (same bytes, same syncs) | store/raw | RSS MiB (anon) |";
    let mut rows = vec![
        header.to_owned(),
        "|---|---|---|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    println!(
        "store append benchmark: {BODY}-byte bodies, {secs} s or {} MB per case, data in {}",
        max_bytes / 1_000_000,
        base.display()
    );
    println!("{header}");
    for policy in [FlushPolicy::AsyncFlush, FlushPolicy::SyncFlush] {
        for producers in [1usize, 4, 16] {
            let dir = case_dir(&base);
            let s = run_store(dir.path(), policy, producers, secs, max_bytes);
            let per_flush = s.bytes / s.flushes.max(1);
            let raw = run_raw(dir.path(), s.bytes, per_flush.max(1));
            let mb = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
            let store_mb = mb(s.bytes, s.elapsed);
            let raw_mb = mb(s.bytes, raw);
            let row = format!(
                "| {policy} | {producers} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} ({}) |",
                s.appends as f64 / s.elapsed.as_secs_f64(),
                store_mb,
                pct(&s.latencies_ns, 0.50),
                pct(&s.latencies_ns, 0.99),
                pct(&s.latencies_ns, 0.999),
                s.appends as f64 / s.flushes.max(1) as f64,
                raw_mb,
                store_mb / raw_mb,
                s.rss_kib / 1024,
                s.anon_kib / 1024,
            );
            println!("{row}");
            rows.push(row);
        }
    }
    write_results(
        "store_append",
        &format!("store_append ({secs} s per case, {BODY}-byte bodies)"),
        &rows,
    );
}
