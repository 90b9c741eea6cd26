//! What the store benchmarks share: settings from the environment, where data and results go,
//! and the process's memory. Each benchmark uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::store::{FlushPolicy, Message, MessageStore, StoreConfig, properties};

/// A message of `body` bytes to `topic`/`queue_id` with tag `bench`, its unique key made from
/// `key`.
pub fn message(topic: &str, queue_id: i32, key: u64, body: usize) -> Message {
    Message {
        topic: topic.into(),
        queue_id,
        flag: 0,
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000,
        born_host: SocketAddr::from(([127, 0, 0, 1], 50000)),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        body: vec![b'x'; body].into(),
        properties: properties::encode([
            ("UNIQ_KEY", format!("7F000001{key:028X}").as_str()),
            ("TAGS", "bench"),
        ]),
    }
}

/// A number from the environment variable `name`, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Cargo's target folder (`CARGO_TARGET_DIR`, or the workspace's `target`).
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

/// Where cases put their data: `RMQ_BENCH_DIR`, or `bench-data` in the target folder.
pub fn data_dir() -> PathBuf {
    let base = std::env::var("RMQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| target_dir().join("bench-data"));
    std::fs::create_dir_all(&base).expect("bench dir");
    remove_abandoned(&base);
    base
}

/// A fresh folder for one case under `base`, deleted when dropped. Its name carries this
/// process's id, so that a later run can delete what a killed one left (gigabytes).
#[allow(dead_code)] // not every bench uses it
pub fn case_dir(base: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("run-{}-", std::process::id()))
        .tempdir_in(base)
        .expect("temp dir")
}

/// Deletes the case folders of benchmark processes that no longer run.
fn remove_abandoned(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting {} (left by a killed run)", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A field of /proc/self/status in KiB (`VmRSS:`, `RssAnon:`), 0 when absent.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Writes a results table to `bench-results/<name>.md` in the target folder and says where.
pub fn write_results(name: &str, title: &str, rows: &[String]) {
    let out = target_dir().join("bench-results");
    std::fs::create_dir_all(&out).expect("results dir");
    let file = out.join(format!("{name}.md"));
    std::fs::write(&file, format!("# {title}\n\n{}\n", rows.join("\n"))).expect("write results");
    println!("results written to {}", file.display());
}

/// A runtime of 2 workers and a store at `dir` with the given flush policy.
pub fn open_store(dir: &Path, policy: FlushPolicy) -> (tokio::runtime::Runtime, Arc<MessageStore>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = MessageStore::open(StoreConfig {
        flush_policy: policy,
        ..StoreConfig::at(dir)
    })
    .expect("open store");
    (rt, Arc::new(store))
}
