//! The queue object uploaded next to each CommitLog segment: the ConsumeQueue and index
//! entries of its messages, so that a node restoring from the tier (an emptied disk, or a node
//! adopting another's history) rebuilds its queues from about 60 bytes per message instead of
//! reading every message back.
//!
//! Layout (big-endian): `RMQQ`, format version (1 byte), entry count (u32), the entries, then a
//! CRC-32 of everything before it. An entry is: topic (u16 length + UTF-8), queue id (i32),
//! queue offset (u64), CommitLog offset (u64), record size (u32), tag code (i64), store
//! timestamp (i64), key count (u16), then each key (u16 length + UTF-8).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::store::QueueEntry;

const MAGIC: &[u8; 4] = b"RMQQ";
const VERSION: u8 = 1;

pub fn encode(entries: &[QueueEntry]) -> Bytes {
    let mut out = BytesMut::with_capacity(9 + entries.len() * 64);
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u32(entries.len() as u32);
    for e in entries {
        put_str(&mut out, &e.topic);
        out.put_i32(e.queue_id);
        out.put_u64(e.queue_offset);
        out.put_u64(e.physical_offset);
        out.put_u32(e.size);
        out.put_i64(e.tag_code);
        out.put_i64(e.store_timestamp);
        let keys: Vec<&String> = e.keys.iter().filter(|k| k.len() <= 0xFFFF).collect();
        out.put_u16(keys.len().min(0xFFFF) as u16);
        for k in keys.into_iter().take(0xFFFF) {
            put_str(&mut out, k);
        }
    }
    let crc = crc32fast::hash(&out);
    out.put_u32(crc);
    out.freeze()
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Topics are at most 127 bytes; keys longer than a u16 are not indexed (see `encode`).
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub fn decode(bytes: &[u8]) -> Result<Vec<QueueEntry>, String> {
    if bytes.len() < 13 || &bytes[..4] != MAGIC {
        return Err("not a queue object".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_be_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let mut b = &body[4..];
    let version = b.get_u8();
    if version != VERSION {
        return Err(format!("unknown format version {version}"));
    }
    let count = b.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let topic = get_str(&mut b)?;
        need(b, 4 + 8 + 8 + 4 + 8 + 8 + 2)?;
        let queue_id = b.get_i32();
        let queue_offset = b.get_u64();
        let physical_offset = b.get_u64();
        let size = b.get_u32();
        let tag_code = b.get_i64();
        let store_timestamp = b.get_i64();
        let nkeys = b.get_u16();
        let mut keys = Vec::with_capacity(nkeys as usize);
        for _ in 0..nkeys {
            keys.push(get_str(&mut b)?);
        }
        out.push(QueueEntry {
            topic,
            queue_id,
            queue_offset,
            physical_offset,
            size,
            tag_code,
            store_timestamp,
            keys,
        });
    }
    if b.has_remaining() {
        return Err(format!("{} bytes after the last entry", b.remaining()));
    }
    Ok(out)
}

fn need(b: &[u8], n: usize) -> Result<(), String> {
    if b.len() < n {
        return Err("truncated".into());
    }
    Ok(())
}

fn get_str(b: &mut &[u8]) -> Result<String, String> {
    need(b, 2)?;
    let len = b.get_u16() as usize;
    need(b, len)?;
    let s = std::str::from_utf8(&b[..len])
        .map_err(|_| "a string is not UTF-8".to_owned())?
        .to_owned();
    b.advance(len);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(i: u64) -> QueueEntry {
        QueueEntry {
            topic: format!("T{}", i % 3),
            queue_id: (i % 4) as i32,
            queue_offset: i / 4,
            physical_offset: i * 100,
            size: 100,
            tag_code: i as i64 - 5,
            store_timestamp: 1_700_000_000_000 + i as i64,
            keys: (0..i % 3).map(|k| format!("key-{i}-{k}")).collect(),
        }
    }

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let entries: Vec<QueueEntry> = (0..100).map(entry).collect();
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
        let mut bad = bytes.to_vec();
        bad[40] ^= 1;
        assert_eq!(decode(&bad).unwrap_err(), "checksum mismatch");
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(b"nope").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&data);
            let mut framed = b"RMQQ\x01".to_vec();
            framed.extend_from_slice(&data);
            let crc = crc32fast::hash(&framed);
            framed.extend_from_slice(&crc.to_be_bytes());
            let _ = decode(&framed);
        }
    }
}
