//! Queue scale, at the size CI affords: 20,000 queues (2,500 topics x 8) on one store whose
//! ConsumeQueue descriptor cache holds 128 files, far fewer than the queues.
//!
//! A writer process puts one message into every queue, then is killed with SIGKILL. The store is
//! reopened here (crash recovery), every queue is read back, the store is closed cleanly and
//! reopened, and every queue is read again. Throughout, the number of open descriptors stays
//! bounded by the cache, not by the number of queues, and a reopened store opens no queue
//! before it is used. (Timings are measured by `scripts/bench-scale.sh`, not asserted here.)

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use broker::store::{FlushPolicy, GetStatus, MessageStore, StoreConfig};
use common::{body_for, message, seq_of, small_config};

const TOPICS: u64 = 2_500;
const QUEUES: u64 = 8;
const OPEN_FILES: usize = 128;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        consume_queue_open_files: OPEN_FILES,
        consume_queue_entries_per_file: 1_000,
        ..small_config(dir, FlushPolicy::AsyncFlush, 4 << 20)
    }
}

fn topic(seq: u64) -> String {
    format!("Scale-{}", seq % TOPICS)
}

fn queue_of(seq: u64) -> i32 {
    (seq / TOPICS % QUEUES) as i32
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The writer process: does nothing unless started by the test below.
#[test]
fn scale_writer_child() {
    let Ok(dir) = std::env::var("RMQ_SCALE_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = MessageStore::open(config(Path::new(&dir))).unwrap();
        let before = open_fds();
        for seq in 0..TOPICS * QUEUES {
            if seq == TOPICS * QUEUES * 3 / 5 {
                // A checkpoint after 12,000 messages: recovery re-dispatches the 8,000 after.
                store
                    .wait_dispatched(store.log_offsets().written)
                    .await
                    .unwrap();
                store.checkpoint().unwrap();
            }
            let m = message(&topic(seq), queue_of(seq), seq, 200);
            let r = store.put_message(&m).await.unwrap();
            assert_eq!(r.queue_offset, 0, "one message per queue");
        }
        store
            .wait_dispatched(store.log_offsets().written)
            .await
            .unwrap();
        let stats = store.queue_stats();
        println!(
            "WRITTEN {} {} {}",
            stats.open_queues,
            stats.open_files,
            open_fds() - before
        );
        // Wait to be killed.
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    });
}

/// Reads every queue back; returns the store's descriptor growth while doing so.
fn read_all(store: &MessageStore) -> usize {
    let before = open_fds();
    let mut grown = 0;
    for seq in 0..TOPICS * QUEUES {
        let got = store
            .get_message(&topic(seq), queue_of(seq), 0, 10)
            .unwrap();
        assert_eq!(got.status, GetStatus::Found, "message {seq}");
        assert_eq!(got.messages.len(), 1, "message {seq}: one per queue");
        assert_eq!(seq_of(&got.messages[0].body), Some(seq));
        assert_eq!(&got.messages[0].body[..], &body_for(seq, 200)[..]);
        grown = grown.max(open_fds().saturating_sub(before));
    }
    grown
}

#[test]
fn twenty_thousand_queues_on_a_bounded_set_of_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "scale_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RMQ_SCALE_CHILD", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut written = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("WRITTEN ").nth(1) {
            let v: Vec<usize> = rest.split(' ').map(|s| s.parse().unwrap()).collect();
            written = Some((v[0], v[1], v[2]));
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (queues, files, fds) = written.expect("the writer reported");
    assert_eq!(queues, (TOPICS * QUEUES) as usize);
    assert!(files <= OPEN_FILES, "{files} queue files open");
    assert!(
        fds <= OPEN_FILES + 32,
        "the writer's descriptors grew by {fds} over 20,000 queues"
    );

    // Crash recovery opens only the queues it re-dispatches to (those written after the last
    // checkpoint), not every queue on disk; then every message is there.
    let store = MessageStore::open(config(dir.path())).unwrap();
    let report = store.recovery_report();
    assert!(report.crashed);
    let stats = store.queue_stats();
    assert!(
        stats.open_queues < 10_000,
        "recovery opened {} queues re-dispatching from {} to {}",
        stats.open_queues,
        report.redispatched_from,
        report.end
    );
    let grown = read_all(&store);
    assert!(grown <= OPEN_FILES + 8, "descriptors grew by {grown}");
    let stats = store.queue_stats();
    assert_eq!(stats.open_queues + stats.unopened_queues, 20_000);
    assert!(stats.open_files <= OPEN_FILES);
    assert!(
        stats.file_opens >= 20_000,
        "files were opened again and again"
    );
    drop(store);

    // Clean restart: every queue known from one directory scan, none opened.
    let store = MessageStore::open(config(dir.path())).unwrap();
    assert!(!store.recovery_report().crashed);
    let stats = store.queue_stats();
    assert_eq!((stats.open_queues, stats.unopened_queues), (0, 20_000));
    let grown = read_all(&store);
    assert!(grown <= OPEN_FILES + 8, "descriptors grew by {grown}");
    assert_eq!(store.queue_stats().open_queues, 20_000);
}
