//! Black-box tests of `MessageStore`: append, read, segment roll, reopen, lookups, retention,
//! consumer offsets and bad input.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use broker::store::{FlushPolicy, GetStatus, MessageStore, StoreConfig, StoreError};
use common::{message, seq_of, small_config};

const TOPIC: &str = "TopicTest";
const QUEUES: i32 = 4;

async fn fill(store: &MessageStore, from: u64, to: u64, max_len: usize) -> u64 {
    let mut end = 0;
    for seq in from..to {
        let r = store
            .put_message(&message(TOPIC, (seq % QUEUES as u64) as i32, seq, max_len))
            .await
            .unwrap();
        end = r.physical_offset + u64::from(r.size);
    }
    store.wait_dispatched(end).await.unwrap();
    end
}

/// Reads every queue from its min offset and checks density and contents; returns seqs seen.
fn read_all(store: &MessageStore, max_len: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for q in 0..QUEUES {
        let mut offset = store.min_offset(TOPIC, q).unwrap();
        let max = store.max_offset(TOPIC, q).unwrap();
        while offset < max {
            let r = store.get_message(TOPIC, q, offset, 32).unwrap();
            assert_eq!(r.status, GetStatus::Found, "queue {q} at {offset}");
            for (i, m) in r.messages.iter().enumerate() {
                assert_eq!(m.queue_offset, offset + i as u64, "dense queue offsets");
                assert_eq!(m.queue_id, q);
                let seq = seq_of(&m.body).expect("body starts with its seq");
                assert_eq!(m.body, common::body_for(seq, max_len), "body of {seq}");
                assert_eq!(
                    m.property("UNIQ_KEY"),
                    Some(format!("UNIQ{seq:016X}").as_str())
                );
                seqs.push(seq);
            }
            assert_eq!(r.next_offset, offset + r.messages.len() as u64);
            offset = r.next_offset;
        }
    }
    seqs.sort_unstable();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_across_segment_rolls_and_clean_reopen() {
    for policy in [FlushPolicy::SyncFlush, FlushPolicy::AsyncFlush] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path(), policy, 64 * 1024);
        let store = MessageStore::open(cfg.clone()).unwrap();
        fill(&store, 0, 400, 1500).await;
        assert!(
            std::fs::read_dir(cfg.commitlog_dir()).unwrap().count() >= 4,
            "400 messages of up to 1.5 KiB roll 64 KiB segments"
        );
        assert_eq!(read_all(&store, 1500), (0..400).collect::<Vec<_>>());
        store.consumer_offsets().commit("G", TOPIC, 1, 42);
        store.shutdown().unwrap();
        drop(store);

        let store = MessageStore::open(cfg.clone()).unwrap();
        let report = store.recovery_report().clone();
        assert!(!report.crashed, "{report:?}");
        assert_eq!(report.records_scanned, 0, "a clean start scans nothing");
        assert_eq!(store.consumer_offsets().get("G", TOPIC, 1), Some(42));
        fill(&store, 400, 500, 1500).await;
        assert_eq!(read_all(&store, 1500), (0..500).collect::<Vec<_>>());
        assert_eq!(store.max_offset(TOPIC, 0).unwrap(), 125);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_append_is_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        MessageStore::open(small_config(dir.path(), FlushPolicy::SyncFlush, 1 << 20)).unwrap();
    let batch: Vec<_> = (0..10).map(|s| message(TOPIC, 2, s, 100)).collect();
    let results = store.put_messages(&batch).await.unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.queue_offset, i as u64);
        if i > 0 {
            let prev = &results[i - 1];
            assert_eq!(
                r.physical_offset,
                prev.physical_offset + u64::from(prev.size)
            );
        }
    }
    let offsets = store.log_offsets();
    assert!(offsets.flushed >= results[9].physical_offset + u64::from(results[9].size));
}

/// Batches are encoded into a staging buffer and written with one `pwrite` per segment: a
/// batch that spans segment rolls, or outgrows the buffer's limit, still lands contiguously, in
/// order, readable before and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_spanning_segment_rolls_and_the_staging_limit_read_back() {
    // 64 KiB segments roll inside every batch; 4 MiB ones take the 100 x 15 KiB (average)
    // batch only after the staging buffer was written out at its 1 MiB limit.
    for (policy, segment) in [
        (FlushPolicy::SyncFlush, 64 * 1024),
        (FlushPolicy::AsyncFlush, 64 * 1024),
        (FlushPolicy::SyncFlush, 4 << 20),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path(), policy, segment);
        let store = MessageStore::open(cfg.clone()).unwrap();
        let mut seq = 0;
        let mut end = 0;
        for size in [1500, 30_000] {
            let batch: Vec<_> = (seq..seq + 100)
                .map(|s| message(TOPIC, (s % QUEUES as u64) as i32, s, size))
                .collect();
            seq += 100;
            let results = store.put_messages(&batch).await.unwrap();
            for pair in results.windows(2) {
                let gap =
                    pair[1].physical_offset - (pair[0].physical_offset + u64::from(pair[0].size));
                assert!(
                    gap == 0 || pair[1].physical_offset % segment == 0,
                    "contiguous, or the next record starts a segment: {pair:?}"
                );
            }
            let last = results.last().unwrap();
            end = last.physical_offset + u64::from(last.size);
        }
        store.wait_dispatched(end).await.unwrap();
        let expect: Vec<u64> = (0..seq).collect();
        assert_eq!(read_all_sizes(&store, &[1500, 30_000]), expect);
        store.shutdown().unwrap();
        drop(store);
        let store = MessageStore::open(cfg).unwrap();
        assert_eq!(read_all_sizes(&store, &[1500, 30_000]), expect);
    }
}

/// As [`read_all`], for messages written with one of several `max_len`s (seqs below 100 used
/// the first, and so on in hundreds).
fn read_all_sizes(store: &MessageStore, sizes: &[usize]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for q in 0..QUEUES {
        let mut offset = store.min_offset(TOPIC, q).unwrap();
        while offset < store.max_offset(TOPIC, q).unwrap() {
            let r = store.get_message(TOPIC, q, offset, 32).unwrap();
            assert_eq!(r.status, GetStatus::Found, "queue {q} at {offset}");
            for m in &r.messages {
                let seq = seq_of(&m.body).expect("body starts with its seq");
                assert_eq!(m.body, common::body_for(seq, sizes[(seq / 100) as usize]));
                seqs.push(seq);
            }
            offset = r.next_offset;
        }
    }
    seqs.sort_unstable();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_by_key_id_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        MessageStore::open(small_config(dir.path(), FlushPolicy::AsyncFlush, 1 << 20)).unwrap();
    let mut stamps = Vec::new();
    for seq in 0..60u64 {
        let r = store
            .put_message(&message(TOPIC, 0, seq, 200))
            .await
            .unwrap();
        stamps.push(r);
        if seq == 30 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let last = stamps.last().unwrap();
    store
        .wait_dispatched(last.physical_offset + u64::from(last.size))
        .await
        .unwrap();

    let found = store.lookup_by_key(TOPIC, "order-17", 10, 0, i64::MAX);
    assert_eq!(found.len(), 1);
    assert_eq!(seq_of(&found[0].body), Some(17));
    let k3: Vec<_> = store
        .lookup_by_key(TOPIC, "k3", 100, 0, i64::MAX)
        .iter()
        .map(|m| seq_of(&m.body).unwrap())
        .collect();
    let mut expected: Vec<u64> = (0..60).filter(|s| s % 7 == 3).collect();
    expected.reverse();
    assert_eq!(k3, expected, "every match, newest first");
    assert!(
        store
            .lookup_by_key("OtherTopic", "order-17", 10, 0, i64::MAX)
            .is_empty()
    );
    assert!(
        store
            .lookup_by_key(TOPIC, "order-999", 10, 0, i64::MAX)
            .is_empty()
    );

    let by_uniq = store
        .lookup_by_msg_id(TOPIC, &format!("UNIQ{:016X}", 44))
        .unwrap();
    assert_eq!(seq_of(&by_uniq.body), Some(44));
    let offset_id = by_uniq.offset_msg_id();
    assert_eq!(offset_id.len(), 32);
    let by_offset = store.lookup_by_msg_id(TOPIC, &offset_id).unwrap();
    assert_eq!(by_offset, by_uniq);
    assert!(store.lookup_by_msg_id(TOPIC, "NOPE").is_none());

    // Offsets by time: the first message stored at or after message 31's time is at most 31.
    let t31 = stamps[31].store_timestamp;
    let o = store.offset_by_time(TOPIC, 0, t31).unwrap();
    assert!(o <= 31 && stamps[o as usize].store_timestamp >= t31, "{o}");
    assert!(o > 0 && stamps[o as usize - 1].store_timestamp < t31);
    assert_eq!(store.offset_by_time(TOPIC, 0, 0).unwrap(), 0);
    assert_eq!(store.offset_by_time(TOPIC, 0, i64::MAX).unwrap(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        MessageStore::open(small_config(dir.path(), FlushPolicy::SyncFlush, 1 << 20)).unwrap();
    assert_eq!(
        store.get_message(TOPIC, 0, 0, 10).unwrap().status,
        GetStatus::NoMatchedLogicQueue
    );
    fill(&store, 0, 8, 100).await; // two per queue
    let r = store.get_message(TOPIC, 0, 2, 10).unwrap();
    assert_eq!((r.status, r.next_offset), (GetStatus::OffsetOverflowOne, 2));
    let r = store.get_message(TOPIC, 0, 9, 10).unwrap();
    assert_eq!(
        (r.status, r.next_offset),
        (GetStatus::OffsetOverflowBadly, 2)
    );
    let r = store.get_message(TOPIC, 0, 0, 1).unwrap();
    assert_eq!(
        (r.status, r.messages.len(), r.next_offset),
        (GetStatus::Found, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_message_size: 1024,
        ..small_config(dir.path(), FlushPolicy::SyncFlush, 1 << 20)
    };
    let store = MessageStore::open(cfg).unwrap();
    let mut m = message(TOPIC, 0, 1, 10);
    m.body = vec![0u8; 1025].into();
    let err = store.put_message(&m).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::MessageTooLarge {
                size: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    let mut m = message("../etc", 0, 1, 10);
    assert!(matches!(
        store.put_message(&m).await,
        Err(StoreError::InvalidTopic { .. })
    ));
    m.topic = "T".repeat(128);
    assert!(matches!(
        store.put_message(&m).await,
        Err(StoreError::InvalidTopic { .. })
    ));
    let mut m = message(TOPIC, -1, 1, 10);
    assert!(matches!(
        store.put_message(&m).await,
        Err(StoreError::InvalidQueueId(-1))
    ));
    m.queue_id = 0;
    m.properties = vec![b'x'; 40_000].into();
    assert!(matches!(
        store.put_message(&m).await,
        Err(StoreError::PropertiesTooLarge { .. })
    ));
    // A batch with one bad message appends none of it.
    let batch = vec![message(TOPIC, 0, 1, 10), message("bad topic", 0, 2, 10)];
    assert!(store.put_messages(&batch).await.is_err());
    assert_eq!(store.log_offsets().written, 0);
    assert_eq!(store.max_offset(TOPIC, 0).unwrap(), 0);

    // A second process (or handle) cannot open the same folder.
    let err = MessageStore::open(small_config(dir.path(), FlushPolicy::SyncFlush, 1 << 20))
        .err()
        .expect("folder is locked");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_body_with_default_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(StoreConfig {
        flush_policy: FlushPolicy::SyncFlush,
        ..StoreConfig::at(dir.path())
    })
    .unwrap();
    let mut m = message(TOPIC, 0, 1, 10);
    m.body = vec![7u8; 4 * 1024 * 1024].into();
    let r = store.put_message(&m).await.unwrap();
    store
        .wait_dispatched(r.physical_offset + u64::from(r.size))
        .await
        .unwrap();
    let got = store.get_message(TOPIC, 0, 0, 1).unwrap();
    assert_eq!(got.messages[0].body, m.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_disk_usage_and_hook() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        file_reserved_time: Duration::from_secs(3600),
        retention_interval: Duration::from_secs(3600), // only the explicit calls below
        ..small_config(dir.path(), FlushPolicy::SyncFlush, 64 * 1024)
    };
    let store = MessageStore::open(cfg.clone()).unwrap();
    fill(&store, 0, 400, 1500).await;
    let segments = || std::fs::read_dir(cfg.commitlog_dir()).unwrap().count();
    let before = segments();
    assert!(before >= 5);

    // Young segments on a roomy disk stay.
    let r = store.run_retention(SystemTime::now(), 0.1).unwrap();
    assert!(r.deleted.is_empty());

    // A full disk deletes the oldest segment, one per run, whatever its age.
    let r = store.run_retention(SystemTime::now(), 0.9).unwrap();
    assert_eq!(r.deleted.len(), 1);
    assert_eq!(segments(), before - 1);
    assert_eq!(r.min_offset, 64 * 1024);

    // The hook can keep segments (tiering: not uploaded yet).
    let asked = Arc::new(AtomicUsize::new(0));
    let asked2 = Arc::clone(&asked);
    store.set_retention_hook(Arc::new(move |seg| {
        asked2.fetch_add(1, Ordering::SeqCst);
        seg.base >= 3 * 64 * 1024 // only allow deleting from the third segment on
    }));
    let later = SystemTime::now() + Duration::from_secs(7200);
    let r = store.run_retention(later, 0.1).unwrap();
    assert_eq!(
        r.deleted.len(),
        0,
        "segment 1 is kept by the hook, and deletion is oldest-first"
    );
    assert_eq!(r.kept_by_hook, 1);
    assert!(asked.load(Ordering::SeqCst) >= 1);

    // Without a veto, every expired segment goes except the one being written.
    store.set_retention_hook(Arc::new(|_| true));
    let r = store.run_retention(later, 0.1).unwrap();
    assert_eq!(segments(), 1, "{r:?}");
    assert_eq!(r.min_offset, store.log_offsets().min);

    // Queues now start past the deleted data; reading below gets OffsetTooSmall.
    let seqs = read_all(&store, 1500);
    assert!(!seqs.is_empty() && seqs.len() < 400);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*seqs.last().unwrap(), 399, "newest messages survive");
    let min = store.min_offset(TOPIC, 0).unwrap();
    assert!(min > 0);
    let r = store.get_message(TOPIC, 0, 0, 4).unwrap();
    assert_eq!((r.status, r.next_offset), (GetStatus::OffsetTooSmall, min));
    assert!(
        store
            .lookup_by_key(TOPIC, "order-0", 1, 0, i64::MAX)
            .is_empty()
    );

    // Writing goes on, and a reopen keeps the new start.
    fill(&store, 400, 420, 1500).await;
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(cfg).unwrap();
    let after = read_all(&store, 1500);
    assert_eq!(after.len(), seqs.len() + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocketmq_sized_one_gib_segments_work() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_size: 1 << 30,
        ..small_config(dir.path(), FlushPolicy::SyncFlush, 1 << 30)
    };
    let store = MessageStore::open(cfg.clone()).unwrap();
    fill(&store, 0, 40, 1000).await;
    store.shutdown().unwrap();
    drop(store);
    let names: Vec<_> = std::fs::read_dir(cfg.commitlog_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["00000000000000000000".to_owned()]);
    let store = MessageStore::open(cfg).unwrap();
    assert_eq!(read_all(&store, 1000), (0..40).collect::<Vec<_>>());
}

/// Resident bytes of this process's mappings of files under `dir` (from /proc/self/smaps).
fn mapped_rss_under(dir: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some(path) = line
            .split_whitespace()
            .nth(5)
            .filter(|_| line.contains('-'))
        {
            inside = path.starts_with(dir.to_str().unwrap());
        } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
            total += kb
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_pages_far_behind_the_head_leave_the_resident_set_and_still_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_size: 1 << 30,
        ..small_config(dir.path(), FlushPolicy::SyncFlush, 1 << 30)
    };
    let store = MessageStore::open(cfg.clone()).unwrap();
    fill(&store, 0, 100, 1000).await;
    // A reader holds the first messages (zero-copy slices of the mapping) across the release.
    let held = store.get_message(TOPIC, 0, 0, 8).unwrap().messages;
    assert_eq!(held.len(), 8);
    // About 190 MiB more (bodies of up to 64 KiB).
    let end = fill(&store, 100, 6_100, 64 << 10).await;
    assert!(end > 150 << 20, "{end}");
    let rss = mapped_rss_under(dir.path());
    assert!(
        rss < 100 << 20,
        "{} MiB of the CommitLog stay resident after writing {} MiB",
        rss >> 20,
        end >> 20
    );
    // The held slices still read what they read, and a fresh read faults the pages back in.
    for m in &held {
        let seq = seq_of(&m.body).unwrap();
        assert_eq!(m.body, common::body_for(seq, 1000));
    }
    let again = store.get_message(TOPIC, 0, 0, 8).unwrap().messages;
    assert_eq!(
        again.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        held.iter().map(|m| m.body.clone()).collect::<Vec<_>>()
    );
    // A consumer reading everything from the start faults every page back in; a later flush
    // sweeps them out again.
    drop((held, again));
    assert_eq!(touch_all(&store), 6_100);
    assert!(
        mapped_rss_under(dir.path()) > 150 << 20,
        "the read faulted pages in"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    fill(&store, 6_100, 6_110, 1000).await;
    let rss = mapped_rss_under(dir.path());
    assert!(
        rss < 100 << 20,
        "{} MiB stay resident after a reader went over the history",
        rss >> 20
    );
}

/// Reads every message of every queue once, touching its body; returns how many.
fn touch_all(store: &MessageStore) -> usize {
    let mut n = 0;
    for q in 0..QUEUES {
        let mut offset = store.min_offset(TOPIC, q).unwrap();
        let max = store.max_offset(TOPIC, q).unwrap();
        while offset < max {
            let r = store.get_message(TOPIC, q, offset, 32).unwrap();
            for m in &r.messages {
                assert!(seq_of(&m.body).is_some());
                n += 1;
            }
            offset = r.next_offset;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_between_queue_syncs_vouch_only_for_the_last_sync() {
    use broker::store::checkpoint::Checkpoint;
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        consume_queue_sync_interval: Duration::from_secs(3600),
        ..small_config(dir.path(), FlushPolicy::SyncFlush, 1 << 20)
    };
    let store = MessageStore::open(config.clone()).unwrap();
    let opened = Checkpoint::load(dir.path())
        .unwrap()
        .expect("written at open");
    let end = fill(&store, 0, 200, 512).await;
    // The housekeeping thread's checkpoints follow the CommitLog, not the queues: they were
    // not synced since the store opened.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let cp = loop {
        let cp = Checkpoint::load(dir.path()).unwrap().unwrap();
        if cp.commitlog >= end {
            break cp;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint: {cp:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (cp.consume_queue, cp.index),
        (opened.consume_queue, opened.index)
    );
    // An explicit checkpoint syncs them and vouches for everything dispatched.
    store.checkpoint().unwrap();
    let cp = Checkpoint::load(dir.path()).unwrap().unwrap();
    assert_eq!((cp.commitlog, cp.consume_queue, cp.index), (end, end, end));
    store.shutdown().unwrap();
    drop(store);
    // (Recovery after a kill between queue syncs, which re-dispatches from the older position,
    // is what tests/crash.rs exercises.)
    let store = MessageStore::open(config).unwrap();
    assert_eq!(read_all(&store, 512), (0..200).collect::<Vec<_>>());
    store.shutdown().unwrap();
}
