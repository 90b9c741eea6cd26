//! Crash test for tiering: a writer process appends (SYNC_FLUSH) while its tier uploads sealed
//! segments, publishes manifests and evicts local segments, and is killed with SIGKILL at
//! random moments, again and again, on one store folder and one bucket (a local folder through
//! `object_store`). After each kill the store and tier are reopened and checked: every
//! acknowledged append is readable, byte-identical, at the offsets it was acknowledged with,
//! from whichever tier holds it now; every queue is dense; no message appears twice.
//!
//! `RMQ_TIER_CRASH_KILLS` sets the number of kills (default 12); `RMQ_TEST_SEED` replays.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use broker::store::{FlushPolicy, GetStatus, MessageStore};
use broker::tier::{Tier, TierBackend, TierConfig};
use common::{Rng, body_for, message, seq_of, small_config};

const TOPIC: &str = "TierCrash";
const QUEUES: i32 = 2;
const MAX_BODY: usize = 2000;
const SEGMENT: u64 = 64 * 1024;

fn open(dir: &Path) -> (MessageStore, Arc<Tier>) {
    let mut cfg = small_config(&dir.join("data"), FlushPolicy::SyncFlush, SEGMENT);
    cfg.tiered = true;
    let store = MessageStore::open(cfg).expect("recovery opens the store");
    let tier = Tier::open(TierConfig {
        backend: TierBackend::Local {
            path: dir.join("bucket"),
        },
        prefix: "crash".into(),
        hot_window_bytes: SEGMENT,
        upload_interval: Duration::from_millis(20),
        read_ahead_bytes: 16 * 1024,
        ..TierConfig::default()
    })
    .expect("the tier opens");
    tier.attach(&store).unwrap();
    (store, tier)
}

/// The writer process. Does nothing unless started by the kill loop.
#[test]
fn tier_crash_writer_child() {
    let Ok(dir) = std::env::var("RMQ_TIER_CRASH_CHILD") else {
        return;
    };
    let run: u64 = std::env::var("RMQ_TIER_CRASH_RUN")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (store, tier) = open(Path::new(&dir));
        let store = Arc::new(store);
        tokio::spawn(Arc::clone(&tier).run(Arc::clone(&store)));
        println!("READY");
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..1_000_000u64 {
            if Instant::now() > deadline {
                break;
            }
            let seq = run * 1_000_000 + i;
            let m = message(TOPIC, (seq % QUEUES as u64) as i32, seq, MAX_BODY);
            let r = store.put_message(&m).await.unwrap();
            println!(
                "ACK {seq} {} {} {}",
                m.queue_id, r.queue_offset, r.physical_offset
            );
        }
    });
}

struct Ack {
    seq: u64,
    queue_id: i32,
    queue_offset: u64,
    physical_offset: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut it = line[line.find("ACK ")? + 4..].split(' ');
    Some(Ack {
        seq: it.next()?.parse().ok()?,
        queue_id: it.next()?.parse().ok()?,
        queue_offset: it.next()?.parse().ok()?,
        physical_offset: it.next()?.parse().ok()?,
    })
}

/// Reopens store and tier and checks everything; returns the local CommitLog's min offset.
fn verify(dir: &Path, acked: &[Ack]) -> u64 {
    let (store, _tier) = open(dir);
    for a in acked {
        let r = store
            .get_message(TOPIC, a.queue_id, a.queue_offset, 1)
            .unwrap();
        assert_eq!(r.status, GetStatus::Found, "acked seq {} lost", a.seq);
        let m = &r.messages[0];
        assert_eq!(
            m.physical_offset, a.physical_offset,
            "acked seq {} moved",
            a.seq
        );
        assert_eq!(
            m.body,
            body_for(a.seq, MAX_BODY),
            "acked seq {} damaged",
            a.seq
        );
    }
    let mut seen = HashSet::new();
    for q in 0..QUEUES {
        let max = store.max_offset(TOPIC, q).unwrap();
        let mut offset = 0;
        while offset < max {
            let r = store.get_message(TOPIC, q, offset, 64).unwrap();
            assert_eq!(
                r.status,
                GetStatus::Found,
                "queue {q} offset {offset} of {max}"
            );
            assert_eq!(
                r.messages.len() as u64,
                r.next_offset - offset,
                "holes in queue {q}"
            );
            for m in &r.messages {
                let seq = seq_of(&m.body).expect("torn body");
                assert_eq!(m.body, body_for(seq, MAX_BODY));
                assert!(seen.insert(seq), "seq {seq} appears twice");
            }
            offset = r.next_offset;
        }
    }
    let min = store.log_offsets().min;
    store.shutdown().unwrap();
    min
}

#[test]
fn sigkill_during_uploads_manifests_and_evictions_loses_nothing() {
    if std::env::var("RMQ_TIER_CRASH_CHILD").is_ok() {
        return;
    }
    let kills: u64 = std::env::var("RMQ_TIER_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut rng = Rng(common::seed());
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked = Vec::new();
    let mut evicted = 0;
    for run in 1..=kills {
        let mut child = Command::new(&exe)
            .args([
                "tier_crash_writer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RMQ_TIER_CRASH_CHILD", dir.path())
            .env("RMQ_TIER_CRASH_RUN", run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the writer starts");
            let ready = line.contains("READY");
            lines.push(line);
            if ready {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        acked.extend(lines.iter().filter_map(|l| parse_ack(l)));
        let min = verify(dir.path(), &acked);
        evicted = evicted.max(min);
        eprintln!(
            "run {run}: {} acks in total, local CommitLog from {min}",
            acked.len()
        );
    }
    assert!(
        evicted > 0,
        "no segment was ever evicted: the test tested nothing"
    );
}
