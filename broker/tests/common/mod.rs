//! Helpers shared by the store's black-box tests.
#![allow(dead_code)]

pub mod clients;
pub mod ports;
pub mod process;
pub mod remoting;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use broker::store::index::IndexConfig;
use broker::store::properties;
use broker::store::{FlushPolicy, Message, StoreConfig};

/// A store configuration with small files, so that tests roll segments and queue files often.
pub fn small_config(dir: &Path, policy: FlushPolicy, segment_size: u64) -> StoreConfig {
    StoreConfig {
        segment_size,
        flush_policy: policy,
        flush_interval: Duration::from_millis(20),
        checkpoint_interval: Duration::from_millis(50),
        // Checkpoints that vouch for an older queue sync, and syncs, both within a test.
        consume_queue_sync_interval: Duration::from_millis(150),
        consume_queue_entries_per_file: 64,
        index: IndexConfig {
            slots: 97,
            max_entries: 500,
        },
        ..StoreConfig::at(dir)
    }
}

/// Deterministic body for message number `seq`: its length and bytes derive from `seq`, so a
/// reader can check a message without knowing what the writer sent.
pub fn body_for(seq: u64, max_len: usize) -> Vec<u8> {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let len = (x % max_len as u64) as usize;
    let mut out = Vec::with_capacity(len + 16);
    out.extend_from_slice(format!("{seq}:").as_bytes());
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(b'a' + (x % 26) as u8);
    }
    out
}

pub fn message(topic: &str, queue_id: i32, seq: u64, max_len: usize) -> Message {
    let uniq = format!("UNIQ{seq:016X}");
    let keys = format!("order-{seq} k{}", seq % 7);
    let tag = format!("tag{}", seq % 3);
    Message {
        topic: topic.to_owned(),
        queue_id,
        flag: 0,
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000 + seq as i64,
        born_host: SocketAddr::from(([127, 0, 0, 1], 40000)),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        body: body_for(seq, max_len).into(),
        properties: properties::encode([
            (properties::UNIQ_KEY, uniq.as_str()),
            (properties::KEYS, keys.as_str()),
            (properties::TAGS, tag.as_str()),
        ]),
    }
}

/// The sequence number a message body starts with.
pub fn seq_of(body: &[u8]) -> Option<u64> {
    let colon = body.iter().position(|b| *b == b':')?;
    std::str::from_utf8(&body[..colon]).ok()?.parse().ok()
}

/// Small deterministic PRNG (xorshift64*) so failures replay from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from `RMQ_TEST_SEED` or the clock, printed so that a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("RMQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seed: {seed} (replay with RMQ_TEST_SEED={seed})");
    seed
}
