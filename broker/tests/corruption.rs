//! Corruption test: damage the last CommitLog segment after a "crash" (the `abort` marker left
//! behind) by flipping bytes, cutting the file, or leaving garbage after the end; recovery must
//! truncate to the last valid record, say what it dropped, and leave a store that keeps
//! working with dense queue offsets.

mod common;

use std::fs::OpenOptions;
use std::path::Path;

use broker::store::segment::file_name;
use broker::store::{FlushPolicy, GetStatus, MessageStore, PutResult, StoreConfig};
use common::{Rng, body_for, message, seq_of, small_config};

const TOPIC: &str = "Damaged";
const QUEUES: i32 = 3;
const SEGMENT: u64 = 64 * 1024;

fn config(dir: &Path) -> StoreConfig {
    small_config(dir, FlushPolicy::SyncFlush, SEGMENT)
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipBodyByte,
    FlipHeaderSize,
    Truncate,
    GarbageAfterEnd,
}

fn write_messages(dir: &Path, n: u64) -> Vec<PutResult> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = MessageStore::open(config(dir)).unwrap();
    let results = rt.block_on(async {
        let mut out = Vec::new();
        for seq in 0..n {
            let m = message(TOPIC, (seq % QUEUES as u64) as i32, seq, 700);
            out.push(store.put_message(&m).await.unwrap());
        }
        out
    });
    store.shutdown().unwrap();
    results
}

fn damage_once(rng: &mut Rng, kind: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let n = 150 + rng.below(150);
    let written = write_messages(dir.path(), n);
    let end = written
        .last()
        .map(|r| r.physical_offset + u64::from(r.size))
        .unwrap();
    // Records of the last segment.
    let last_base = (end - 1) / SEGMENT * SEGMENT;
    let in_last: Vec<usize> = (0..written.len())
        .filter(|i| written[*i].physical_offset >= last_base)
        .collect();
    let victim = in_last[rng.below(in_last.len() as u64) as usize];
    let v = written[victim];
    let seg_path = config(dir.path())
        .commitlog_dir()
        .join(file_name(last_base));
    let rel = v.physical_offset - last_base;

    // The crash: the abort marker is still there.
    std::fs::write(dir.path().join("abort"), b"").unwrap();
    let mut bytes = std::fs::read(&seg_path).unwrap();
    let expected_end = match kind {
        Damage::FlipBodyByte => {
            // Layout tail: body, topic (1 + len), properties (2 + len).
            let body_len = body_for(victim as u64, 700).len() as u64;
            let body_start =
                rel + u64::from(v.size) - props_len(victim) - (TOPIC.len() as u64 + 1) - body_len;
            if body_len == 0 {
                return damage_once(rng, Damage::FlipHeaderSize);
            }
            let at = body_start + rng.below(body_len);
            bytes[at as usize] ^= 1 + rng.below(255) as u8;
            std::fs::write(&seg_path, &bytes).unwrap();
            v.physical_offset
        }
        Damage::FlipHeaderSize => {
            bytes[rel as usize + rng.below(8) as usize] ^= 0x40;
            std::fs::write(&seg_path, &bytes).unwrap();
            v.physical_offset
        }
        Damage::Truncate => {
            // Keep at least the size field, so the torn record leaves bytes to drop.
            let cut = rel + 4 + rng.below(u64::from(v.size) - 4);
            OpenOptions::new()
                .write(true)
                .open(&seg_path)
                .unwrap()
                .set_len(cut)
                .unwrap();
            v.physical_offset
        }
        Damage::GarbageAfterEnd => {
            let at = (end - last_base) as usize;
            let len = (SEGMENT as usize - at).min(100);
            for b in &mut bytes[at..at + len] {
                *b = 1 + rng.below(255) as u8;
            }
            std::fs::write(&seg_path, &bytes).unwrap();
            end
        }
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert!(report.crashed);
    assert_eq!(
        report.end, expected_end,
        "{kind:?} at record {victim}: {report:?}"
    );
    assert!(report.dropped_bytes > 0, "{kind:?}: {report:?}");
    if !matches!(kind, Damage::Truncate | Damage::GarbageAfterEnd) {
        assert!(report.stopped_at.is_some(), "{kind:?}: {report:?}");
    }
    assert_eq!(store.log_offsets().written, expected_end);

    // Everything before the damage reads back intact; nothing after it is visible.
    let survivors: Vec<&PutResult> = written
        .iter()
        .filter(|r| r.physical_offset < expected_end)
        .collect();
    let mut seen = 0;
    for q in 0..QUEUES {
        let expect_q = survivors
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i as u64 % QUEUES as u64) as i32 == q)
            .count() as u64;
        assert_eq!(
            store.max_offset(TOPIC, q).unwrap(),
            expect_q,
            "queue {q} after {kind:?}"
        );
        let r = store.get_message(TOPIC, q, 0, 1000).unwrap();
        if expect_q > 0 {
            assert_eq!(r.status, GetStatus::Found);
        }
        for (i, m) in r.messages.iter().enumerate() {
            assert_eq!(m.queue_offset, i as u64);
            let seq = seq_of(&m.body).unwrap();
            assert_eq!(m.body, body_for(seq, 700));
            seen += 1;
        }
    }
    assert_eq!(seen, survivors.len());

    // The store keeps working: new appends land at the end, queue offsets continue densely.
    rt.block_on(async {
        let q0 = store.max_offset(TOPIC, 0).unwrap();
        let r = store
            .put_message(&message(TOPIC, 0, 3 * 10_000, 700))
            .await
            .unwrap();
        assert_eq!(r.physical_offset, expected_end.max(r.physical_offset));
        assert_eq!(r.queue_offset, q0);
        store
            .wait_dispatched(r.physical_offset + u64::from(r.size))
            .await
            .unwrap();
        let got = store.get_message(TOPIC, 0, q0, 1).unwrap();
        assert_eq!(seq_of(&got.messages[0].body), Some(30_000));
    });
}

/// Length of the encoded properties of message `index` (as `common::message` builds them),
/// with their 2-byte length field.
fn props_len(index: usize) -> u64 {
    message(TOPIC, 0, index as u64, 700).properties.len() as u64 + 2
}

#[test]
fn recovery_truncates_to_the_last_valid_record() {
    let mut rng = Rng(common::seed());
    for round in 0..8 {
        for kind in [
            Damage::FlipBodyByte,
            Damage::FlipHeaderSize,
            Damage::Truncate,
            Damage::GarbageAfterEnd,
        ] {
            eprintln!("round {round}: {kind:?}");
            damage_once(&mut rng, kind);
        }
    }
}
