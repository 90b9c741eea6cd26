//! The store's cost per message as queues grow: 1 KiB messages sent uniformly over N queues
//! (N/8 topics of 8 queues), for N = 8, 10,000 and 100,000.
//!
//! ```text
//! cargo bench -p broker --bench store_queues            # 10 s per case
//! RMQ_BENCH_SECS=30 RMQ_BENCH_QUEUES=8,100000 cargo bench -p broker --bench store_queues
//! ```
//!
//! Each case opens a fresh store (ASYNC_FLUSH, default ConsumeQueue descriptor cache, which
//! is half the open files limit), puts one message into every queue first (and a checkpoint
//! writes them, so the measured part creates no file), then lets 4 producers append for the
//! given time, waits until every message is dispatched into its ConsumeQueue and index, and
//! makes them durable with a checkpoint (the queue files synced). A case also stops after
//! `RMQ_BENCH_MAX_MB` (default 2048) MB of messages: under ASYNC_FLUSH the store writes at
//! page-cache speed. It prints appends/s with the dispatch included, the process CPU time per
//! message (appending, dispatching, checkpoints), ConsumeQueue files reopened per message, and
//! memory. The gRPC layer is left out: this isolates what the number of queues costs the
//! store. Results also go to `target/bench-results/store_queues.md`; data goes under
//! `RMQ_BENCH_DIR` (default `target/bench-data`) and is deleted after each case.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::store::FlushPolicy;

mod common;
use common::{case_dir, data_dir, env_u64, message, open_store, proc_status_kib, write_results};

const BODY: usize = 1024;
const PRODUCERS: u64 = 4;

/// The process's user + system CPU time so far (from /proc/self/stat, in clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

struct Run {
    appends: u64,
    elapsed: Duration,
    cpu: Duration,
    reopens: u64,
    cache: usize,
    anon_kib: u64,
}

fn run(dir: &Path, queues: u64, secs: u64, max_appends: u64) -> Run {
    let (rt, store) = open_store(dir, FlushPolicy::AsyncFlush);
    let topics: Arc<Vec<String>> = Arc::new(
        (0..queues.div_ceil(8))
            .map(|t| format!("Topic-{t}"))
            .collect(),
    );
    let per_topic = queues.min(8);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let result = rt.block_on(async {
        // Every queue gets its file first.
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            let (store, topics) = (Arc::clone(&store), Arc::clone(&topics));
            tasks.push(tokio::spawn(async move {
                for q in (p..queues).step_by(PRODUCERS as usize) {
                    let msg = message(&topics[(q / 8) as usize], (q % 8) as i32, q, BODY);
                    store.put_message(&msg).await.expect("warm-up append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("warm-up producer");
        }
        store
            .wait_dispatched(store.log_offsets().written)
            .await
            .expect("dispatched");
        store.checkpoint().expect("checkpoint");
        let opens0 = store.queue_stats().file_opens;
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            let (store, topics) = (Arc::clone(&store), Arc::clone(&topics));
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            tasks.push(tokio::spawn(async move {
                // xorshift: queues in no order a cache could exploit.
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (p + 1);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if count.fetch_add(1, Ordering::Relaxed) >= max_appends {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let q = x % queues;
                    let topic = &topics[(q / 8) as usize];
                    let msg = message(topic, (q % per_topic) as i32, x, BODY);
                    store.put_message(&msg).await.expect("append");
                    n += 1;
                }
                n
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut appends = 0;
        for t in tasks {
            appends += t.await.expect("producer");
        }
        store
            .wait_dispatched(store.log_offsets().written)
            .await
            .expect("dispatched");
        // What the next sync of the queues costs belongs to these messages too.
        store.checkpoint().expect("checkpoint");
        let stats = store.queue_stats();
        Run {
            appends,
            elapsed: t0.elapsed(),
            cpu: cpu_time() - cpu0,
            reopens: stats.file_opens - opens0,
            cache: stats.open_files_limit,
            anon_kib: proc_status_kib("RssAnon:"),
        }
    });
    store.shutdown().expect("shutdown");
    result
}

fn main() {
    let secs = env_u64("RMQ_BENCH_SECS", 10);
    let max_mb = env_u64("RMQ_BENCH_MAX_MB", 2048);
    // A record is the body plus about 200 bytes of header, properties and topic.
    let max_appends = max_mb * 1_000_000 / (BODY as u64 + 200);
    let cases: Vec<u64> = std::env::var("RMQ_BENCH_QUEUES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![8, 10_000, 100_000]);
    // As the broker does at start: the descriptor cache is sized from the open files limit.
    if let Ok(l) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .ok_or(())
    {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(l),
                maximum: Some(l),
            },
        );
    }
    let base = data_dir();
    let header = "| queues | appends/s (dispatched) | CPU us/message | reopens/message | descriptor cache | anon RSS MiB |";
    let mut rows = vec![header.to_owned(), "|---|---|---|---|---|---|".to_owned()];
    println!(
        "store queue-count benchmark: {BODY}-byte bodies, {PRODUCERS} producers, {secs} s per case, data in {}",
        base.display()
    );
    println!("{header}");
    for queues in cases {
        let dir = case_dir(&base);
        let r = run(dir.path(), queues.max(1), secs, max_appends);
        let n = r.appends.max(1) as f64;
        let row = format!(
            "| {queues} | {:.0} | {:.1} | {:.3} | {} | {:.1} |",
            r.appends as f64 / r.elapsed.as_secs_f64(),
            r.cpu.as_secs_f64() * 1e6 / n,
            r.reopens as f64 / n,
            r.cache,
            r.anon_kib as f64 / 1024.0,
        );
        println!("{row}");
        rows.push(row);
    }
    write_results(
        "store_queues",
        &format!("store_queues ({secs} s per case, {BODY}-byte bodies, {PRODUCERS} producers)"),
        &rows,
    );
}
