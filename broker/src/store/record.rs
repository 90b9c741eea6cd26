//! The CommitLog record: RocketMQ's on-disk message layout, encoded and validated here.
//!
//! Byte layout (big-endian), one record per message:
//!
//! ```text
//!  0  TOTALSIZE        i32   whole record, this field included
//!  4  MAGICCODE        i32   0xDAA320A7 (v1: 1-byte topic length) or 0xDAA320AB (v2: 2-byte)
//!  8  BODYCRC          i32   CRC-32/IEEE of the body (java.util.zip.CRC32)
//! 12  QUEUEID          i32
//! 16  FLAG             i32
//! 20  QUEUEOFFSET      i64   logical offset in its ConsumeQueue
//! 28  PHYSICALOFFSET   i64   offset of this record in the CommitLog
//! 36  SYSFLAG          i32   bit 4: born host is IPv6, bit 5: store host is IPv6
//! 40  BORNTIMESTAMP    i64
//! 48  BORNHOST         4+4 (IPv4 + port) or 16+4 (IPv6 + port)
//!  .  STORETIMESTAMP   i64
//!  .  STOREHOST        4+4 or 16+4
//!  .  RECONSUMETIMES   i32
//!  .  PREPARED TX OFF  i64
//!  .  BODY             i32 length + bytes
//!  .  TOPIC            u8 (v1) or i16 (v2) length + bytes
//!  .  PROPERTIES       i16 length + bytes (`key \x01 value \x02` repeated)
//! ```
//!
//! A blank record (`TOTALSIZE` = bytes left in the segment, magic 0xCBD43194) fills the tail of a
//! segment that the next record does not fit in. A zero `TOTALSIZE` marks the end of written data
//! in a (sparse, zero-filled) segment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;

pub const MAGIC_V1: u32 = 0xDAA3_20A7;
pub const MAGIC_V2: u32 = 0xDAA3_20AB;
pub const MAGIC_BLANK: u32 = 0xCBD4_3194;

/// `MessageSysFlag` bits that the store reads.
pub mod sys_flag {
    pub const COMPRESSED: i32 = 0x1;
    pub const MULTI_TAGS: i32 = 0x1 << 1;
    pub const TRANSACTION_PREPARED: i32 = 0x1 << 2;
    pub const TRANSACTION_COMMIT: i32 = 0x2 << 2;
    pub const TRANSACTION_ROLLBACK: i32 = 0x3 << 2;
    pub const TRANSACTION_MASK: i32 = 0x3 << 2;
    pub const BORN_HOST_V6: i32 = 0x1 << 4;
    pub const STORE_HOST_V6: i32 = 0x1 << 5;
}

/// Size of the blank marker's meaningful part: TOTALSIZE + MAGIC. A segment always keeps room
/// for it, so that every segment ends in either a blank record or unwritten zeros.
pub const BLANK_MARKER_LEN: usize = 8;

/// Offset of the QUEUEOFFSET field, patched by a replica or a rewrite.
const QUEUE_OFFSET_POS: usize = 20;
/// Offset of the PHYSICALOFFSET field.
const PHYSICAL_OFFSET_POS: usize = 28;
/// Offset of BORNHOST; everything before it has a fixed size.
const BORN_HOST_POS: usize = 48;
/// Longest topic name; RocketMQ's limit (`TopicValidator.TOPIC_MAX_LENGTH`).
pub const MAX_TOPIC_LEN: usize = 127;
/// Properties are stored with a 2-byte length.
pub const MAX_PROPERTIES_LEN: usize = i16::MAX as usize;

/// A message as a producer hands it to the store; the store adds offsets, store time and host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub queue_id: i32,
    pub flag: i32,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
    pub body: Bytes,
    /// Encoded properties (`key \x01 value \x02` ...), see [`crate::store::properties`].
    pub properties: Bytes,
}

impl Message {
    /// A message of `topic`'s queue 0 with a one-byte body and no properties (for tests).
    #[cfg(test)]
    pub fn tiny(topic: &str) -> Message {
        Message {
            topic: topic.into(),
            queue_id: 0,
            flag: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: "127.0.0.1:1".parse().expect("an address"),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: Bytes::from_static(b"x"),
            properties: Bytes::new(),
        }
    }

    /// The value of a property, if present.
    pub fn property_value(&self, key: &str) -> Option<&str> {
        crate::store::properties::get(&self.properties, key)
    }
}

/// What the store adds to a [`Message`] when it appends it.
#[derive(Debug, Clone, Copy)]
pub struct StoreStamp {
    pub physical_offset: u64,
    pub queue_offset: u64,
    pub store_timestamp: i64,
    pub store_host: SocketAddr,
}

/// A record read back from the CommitLog. `body` and `properties` are slices of the segment
/// (no copy) when the record was read from a mapped segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub total_size: u32,
    pub body_crc: u32,
    pub queue_id: i32,
    pub flag: i32,
    pub queue_offset: u64,
    pub physical_offset: u64,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    pub store_timestamp: i64,
    pub store_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
    pub body: Bytes,
    pub topic: String,
    pub properties: Bytes,
}

impl StoredMessage {
    /// RocketMQ's offset message id: store host IPv4 (or IPv6) + port + physical offset, as
    /// upper-case hex (32 chars for IPv4).
    pub fn offset_msg_id(&self) -> String {
        offset_msg_id(self.store_host, self.physical_offset)
    }

    /// The value of a property, if present.
    pub fn property(&self, key: &str) -> Option<&str> {
        crate::store::properties::get(&self.properties, key)
    }
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no record here (zero length): end of written data")]
    End,
    #[error("record claims {claimed} bytes but only {available} are left")]
    Truncated { claimed: usize, available: usize },
    #[error("bad magic code {0:#010x}")]
    BadMagic(u32),
    #[error("bad total size {0}")]
    BadSize(i64),
    #[error("field lengths add up to {computed} bytes but the record says {claimed}")]
    LengthMismatch { computed: usize, claimed: usize },
    #[error("body CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("topic is empty, not UTF-8 or contains NUL bytes")]
    BadTopic,
    #[error("properties do not end with the property separator (a torn tail)")]
    BadProperties,
    #[error("tiered storage cannot be read right now: {0}")]
    Unreadable(String),
}

/// What sits at a position of a segment.
#[allow(clippy::large_enum_variant)] // returned by value, not stored in bulk
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A valid message record of this many bytes.
    Message(StoredMessage),
    /// A blank record: the rest of the segment (this many bytes) is padding.
    Blank(u32),
}

fn host_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

fn uses_v2(topic_len: usize) -> bool {
    topic_len > MAX_TOPIC_LEN
}

/// The byte every encoded property list ends with.
pub const PROPERTY_SEPARATOR: u8 = 0x02;

/// Whether encoded properties are well-formed enough to store: empty, or ending with the
/// property separator (what RocketMQ's encoder always produces).
pub fn properties_well_formed(props: &[u8]) -> bool {
    props.last().is_none_or(|b| *b == PROPERTY_SEPARATOR)
}

/// Bytes that `msg` takes in the CommitLog once stored from `store_host`.
pub fn encoded_len(msg: &Message, store_host: &SocketAddr) -> usize {
    let topic_len_size = if uses_v2(msg.topic.len()) { 2 } else { 1 };
    BORN_HOST_POS
        + host_len(&msg.born_host)
        + 8
        + host_len(store_host)
        + 4
        + 8
        + 4
        + msg.body.len()
        + topic_len_size
        + msg.topic.len()
        + 2
        + msg.properties.len()
}

/// CRC-32/IEEE of a body, as RocketMQ stores and clients compare it.
pub fn body_crc(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

/// Builds the sys flag bits the hosts require.
fn effective_sys_flag(msg: &Message, store_host: &SocketAddr) -> i32 {
    let mut flag = msg.sys_flag & !(sys_flag::BORN_HOST_V6 | sys_flag::STORE_HOST_V6);
    if msg.born_host.is_ipv6() {
        flag |= sys_flag::BORN_HOST_V6;
    }
    if store_host.is_ipv6() {
        flag |= sys_flag::STORE_HOST_V6;
    }
    flag
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
    fn i32(&mut self, v: i32) {
        self.put(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.put(&v.to_be_bytes());
    }
    fn host(&mut self, addr: &SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => self.put(&ip.octets()),
            IpAddr::V6(ip) => self.put(&ip.octets()),
        }
        self.i32(i32::from(addr.port()));
    }
}

/// Encodes `msg` into `buf`, which must be exactly [`encoded_len`] bytes. `crc` is the body's
/// CRC, computed by the caller outside the append lock.
pub fn encode(buf: &mut [u8], msg: &Message, crc: u32, stamp: &StoreStamp) {
    let total = buf.len();
    debug_assert_eq!(total, encoded_len(msg, &stamp.store_host));
    let v2 = uses_v2(msg.topic.len());
    let mut w = Writer { buf, pos: 0 };
    // TOTALSIZE is written last (below): a writer killed mid-record leaves a zero size, which
    // readers and recovery take as the end of data, never as a record.
    w.i32(0);
    w.put(&(if v2 { MAGIC_V2 } else { MAGIC_V1 }).to_be_bytes());
    w.put(&crc.to_be_bytes());
    w.i32(msg.queue_id);
    w.i32(msg.flag);
    w.i64(stamp.queue_offset as i64);
    w.i64(stamp.physical_offset as i64);
    w.i32(effective_sys_flag(msg, &stamp.store_host));
    w.i64(msg.born_timestamp);
    w.host(&msg.born_host);
    w.i64(stamp.store_timestamp);
    w.host(&stamp.store_host);
    w.i32(msg.reconsume_times);
    w.i64(msg.prepared_transaction_offset);
    w.i32(msg.body.len() as i32);
    w.put(&msg.body);
    if v2 {
        w.put(&(msg.topic.len() as u16).to_be_bytes());
    } else {
        w.put(&[msg.topic.len() as u8]);
    }
    w.put(msg.topic.as_bytes());
    w.put(&(msg.properties.len() as u16).to_be_bytes());
    w.put(&msg.properties);
    debug_assert_eq!(w.pos, total);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::Release);
    w.buf[0..4].copy_from_slice(&(total as u32).to_be_bytes());
}

/// A stored message encoded again, byte for byte as it sits in the CommitLog (what RocketMQ's
/// pull responses carry and its clients' `MessageDecoder` reads).
pub fn encode_stored(m: &StoredMessage) -> Vec<u8> {
    let msg = Message {
        topic: m.topic.clone(),
        queue_id: m.queue_id,
        flag: m.flag,
        sys_flag: m.sys_flag,
        born_timestamp: m.born_timestamp,
        born_host: m.born_host,
        reconsume_times: m.reconsume_times,
        prepared_transaction_offset: m.prepared_transaction_offset,
        body: m.body.clone(),
        properties: m.properties.clone(),
    };
    let mut buf = vec![0; encoded_len(&msg, &m.store_host)];
    let stamp = StoreStamp {
        physical_offset: m.physical_offset,
        queue_offset: m.queue_offset,
        store_timestamp: m.store_timestamp,
        store_host: m.store_host,
    };
    encode(&mut buf, &msg, m.body_crc, &stamp);
    buf
}

/// Writes a blank record header at the start of `buf` covering `len` bytes.
pub fn encode_blank(buf: &mut [u8], len: u32) {
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    buf[4..8].copy_from_slice(&MAGIC_BLANK.to_be_bytes());
}

/// The PHYSICALOFFSET field of an encoded message record (`None` when too short).
pub fn physical_offset_of(record: &[u8]) -> Option<u64> {
    let field = record.get(PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8)?;
    Some(u64::from_be_bytes(field.try_into().expect("8 bytes")))
}

/// Rewrites the queue offset and physical offset of an encoded record in place.
pub fn patch_offsets(record: &mut [u8], queue_offset: u64, physical_offset: u64) {
    record[QUEUE_OFFSET_POS..QUEUE_OFFSET_POS + 8].copy_from_slice(&queue_offset.to_be_bytes());
    record[PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8]
        .copy_from_slice(&physical_offset.to_be_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn host(&mut self, v6: bool) -> Option<SocketAddr> {
        let ip = if v6 {
            let b: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            let b: [u8; 4] = self.take(4)?.try_into().expect("4 bytes");
            IpAddr::V4(Ipv4Addr::from(b))
        };
        let port = self.i32()?;
        Some(SocketAddr::new(ip, port as u16))
    }
}

/// Reads the TOTALSIZE and magic at the start of `buf` without validating the rest: what a
/// scanner needs to step over a record. `Ok(None)` means end of data (zeros).
pub fn peek_size(buf: &[u8]) -> Result<Option<(u32, u32)>, RecordError> {
    if buf.len() < 8 {
        if buf.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        return Err(RecordError::Truncated {
            claimed: 8,
            available: buf.len(),
        });
    }
    let size = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
    let magic = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
    if size == 0 && magic == 0 {
        return Ok(None);
    }
    Ok(Some((size, magic)))
}

/// Decodes and fully validates the entry at the start of `data` (magic, sizes, field lengths,
/// body CRC). `data` may extend past the record; only the record's bytes are looked at. Body,
/// properties are zero-copy slices of `data`.
pub fn decode(data: &Bytes) -> Result<Entry, RecordError> {
    let Some((size, magic)) = peek_size(data)? else {
        return Err(RecordError::End);
    };
    let size_usize = size as usize;
    if magic == MAGIC_BLANK {
        if size_usize < BLANK_MARKER_LEN || size_usize > data.len() {
            return Err(RecordError::BadSize(i64::from(size)));
        }
        return Ok(Entry::Blank(size));
    }
    if magic != MAGIC_V1 && magic != MAGIC_V2 {
        return Err(RecordError::BadMagic(magic));
    }
    if (size as i32) <= BORN_HOST_POS as i32 {
        return Err(RecordError::BadSize(i64::from(size as i32)));
    }
    if size_usize > data.len() {
        return Err(RecordError::Truncated {
            claimed: size_usize,
            available: data.len(),
        });
    }
    let buf = &data[..size_usize];
    let short = || RecordError::LengthMismatch {
        computed: usize::MAX,
        claimed: size_usize,
    };
    let mut r = Reader { buf, pos: 8 };
    let crc = r.u32().ok_or_else(short)?;
    let queue_id = r.i32().ok_or_else(short)?;
    let flag = r.i32().ok_or_else(short)?;
    let queue_offset = r.i64().ok_or_else(short)?;
    let physical_offset = r.i64().ok_or_else(short)?;
    let sys_flag = r.i32().ok_or_else(short)?;
    let born_timestamp = r.i64().ok_or_else(short)?;
    let born_host = r
        .host(sys_flag & sys_flag::BORN_HOST_V6 != 0)
        .ok_or_else(short)?;
    let store_timestamp = r.i64().ok_or_else(short)?;
    let store_host = r
        .host(sys_flag & sys_flag::STORE_HOST_V6 != 0)
        .ok_or_else(short)?;
    let reconsume_times = r.i32().ok_or_else(short)?;
    let prepared_transaction_offset = r.i64().ok_or_else(short)?;
    let body_len = r.i32().ok_or_else(short)?;
    if body_len < 0 {
        return Err(short());
    }
    let body_start = r.pos;
    r.take(body_len as usize).ok_or_else(short)?;
    let body_end = r.pos;
    let topic_len = if magic == MAGIC_V2 {
        usize::from(r.u16().ok_or_else(short)?)
    } else {
        usize::from(r.u8().ok_or_else(short)?)
    };
    let topic = r.take(topic_len).ok_or_else(short)?;
    // A torn tail reads as zeros: an empty topic or NUL in it is damage, not a name.
    if topic.is_empty() || topic.contains(&0) {
        return Err(RecordError::BadTopic);
    }
    let topic = std::str::from_utf8(topic)
        .map_err(|_| RecordError::BadTopic)?
        .to_owned();
    let props_len = usize::from(r.u16().ok_or_else(short)?);
    let props_start = r.pos;
    let props = r.take(props_len).ok_or_else(short)?;
    // Encoded properties end with the separator; zeros there are a torn tail (the body CRC
    // does not cover topic and properties).
    if props.last().is_some_and(|b| *b != PROPERTY_SEPARATOR) {
        return Err(RecordError::BadProperties);
    }
    if r.pos != size_usize {
        return Err(RecordError::LengthMismatch {
            computed: r.pos,
            claimed: size_usize,
        });
    }
    let computed = body_crc(&buf[body_start..body_end]);
    if computed != crc {
        return Err(RecordError::BadCrc {
            stored: crc,
            computed,
        });
    }
    Ok(Entry::Message(StoredMessage {
        total_size: size,
        body_crc: crc,
        queue_id,
        flag,
        queue_offset: queue_offset as u64,
        physical_offset: physical_offset as u64,
        sys_flag,
        born_timestamp,
        born_host,
        store_timestamp,
        store_host,
        reconsume_times,
        prepared_transaction_offset,
        body: data.slice(body_start..body_end),
        topic,
        properties: data.slice(props_start..props_start + props_len),
    }))
}

/// RocketMQ's offset message id for a record at `physical_offset` stored by `store_host`.
pub fn offset_msg_id(store_host: SocketAddr, physical_offset: u64) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(40);
    match store_host.ip() {
        IpAddr::V4(ip) => ip.octets().iter().for_each(|b| {
            let _ = write!(s, "{b:02X}");
        }),
        IpAddr::V6(ip) => ip.octets().iter().for_each(|b| {
            let _ = write!(s, "{b:02X}");
        }),
    }
    let _ = write!(
        s,
        "{:08X}{:016X}",
        u32::from(store_host.port()),
        physical_offset
    );
    s
}

/// Parses an offset message id back into (store host, physical offset).
pub fn parse_offset_msg_id(id: &str) -> Option<(SocketAddr, u64)> {
    let ip_hex = match id.len() {
        32 => 8,
        56 => 32,
        _ => return None,
    };
    if !id.is_ascii() {
        return None;
    }
    let bytes: Vec<u8> = (0..ip_hex)
        .step_by(2)
        .map(|i| u8::from_str_radix(&id[i..i + 2], 16).ok())
        .collect::<Option<_>>()?;
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
    };
    let port = u32::from_str_radix(&id[ip_hex..ip_hex + 8], 16).ok()?;
    let offset = u64::from_str_radix(&id[ip_hex + 8..], 16).ok()?;
    Some((SocketAddr::new(ip, u16::try_from(port).ok()?), offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(ip.into()), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(ip.into()), port)),
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..2048),
            1 => Just(Vec::new()),
            1 => (any::<u8>(), Just(4 * 1024 * 1024)).prop_map(|(b, n)| vec![b; n]),
        ]
    }

    prop_compose! {
        fn message()(
            topic in "[a-zA-Z0-9_%-]{1,300}",
            queue_id in 0..1024i32,
            flag in any::<i32>(),
            sys in any::<i32>(),
            born_timestamp in any::<i64>(),
            born_host in addr(),
            reconsume_times in any::<i32>(),
            prepared in any::<i64>(),
            body in body(),
            props in proptest::collection::vec(any::<u8>(), 0..4096),
            big_props in any::<bool>(),
        ) -> Message {
            let mut properties = if big_props { vec![b'p'; MAX_PROPERTIES_LEN] } else { props };
            if let Some(last) = properties.last_mut() {
                *last = PROPERTY_SEPARATOR;
            }
            Message {
                topic, queue_id, flag, sys_flag: sys, born_timestamp, born_host, reconsume_times,
                prepared_transaction_offset: prepared, body: body.into(), properties: properties.into(),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trip(msg in message(), store_host in addr(), phys in any::<u64>(), qo in any::<u64>(), ts in any::<i64>()) {
            let stamp = StoreStamp { physical_offset: phys, queue_offset: qo, store_timestamp: ts, store_host };
            let len = encoded_len(&msg, &store_host);
            let mut buf = vec![0u8; len + 13];
            encode(&mut buf[..len], &msg, body_crc(&msg.body), &stamp);
            let data = Bytes::from(buf);
            let Entry::Message(m) = decode(&data).unwrap() else { panic!("not a message") };
            prop_assert_eq!(m.total_size as usize, len);
            prop_assert_eq!(&m.topic, &msg.topic);
            prop_assert_eq!(&m.body, &msg.body);
            prop_assert_eq!(&m.properties, &msg.properties);
            prop_assert_eq!(m.queue_id, msg.queue_id);
            prop_assert_eq!(m.flag, msg.flag);
            prop_assert_eq!(m.queue_offset, qo);
            prop_assert_eq!(m.physical_offset, phys);
            prop_assert_eq!(m.born_timestamp, msg.born_timestamp);
            prop_assert_eq!(m.born_host, msg.born_host);
            prop_assert_eq!(m.store_timestamp, ts);
            prop_assert_eq!(m.store_host, store_host);
            prop_assert_eq!(m.reconsume_times, msg.reconsume_times);
            prop_assert_eq!(m.prepared_transaction_offset, msg.prepared_transaction_offset);
            prop_assert_eq!(m.sys_flag & !(sys_flag::BORN_HOST_V6 | sys_flag::STORE_HOST_V6),
                msg.sys_flag & !(sys_flag::BORN_HOST_V6 | sys_flag::STORE_HOST_V6));
        }

        /// Any single corrupted byte or truncation is detected, never decoded as a different
        /// valid message (body CRC and length checks).
        #[test]
        fn damage_is_detected(msg in message(), pos in any::<prop::sample::Index>(), xor in 1u8..=255, cut in any::<bool>()) {
            let host: SocketAddr = "10.0.0.1:10911".parse().unwrap();
            let stamp = StoreStamp { physical_offset: 0, queue_offset: 0, store_timestamp: 1, store_host: host };
            let len = encoded_len(&msg, &host);
            let mut buf = vec![0u8; len];
            encode(&mut buf, &msg, body_crc(&msg.body), &stamp);
            let at = pos.index(len);
            if cut {
                buf.truncate(at);
            } else {
                buf[at] ^= xor;
            }
            let data = Bytes::from(buf);
            match decode(&data) {
                Err(_) => {}
                Ok(Entry::Blank(_)) => {}
                Ok(Entry::Message(m)) => {
                    // The body is covered by its CRC and every length by the total size: only
                    // fixed-size header fields, topic or property bytes can change unnoticed
                    // (as in RocketMQ's format), never the body or the record's extent.
                    prop_assert!(!cut);
                    prop_assert_eq!(&m.body, &msg.body);
                    prop_assert_eq!(m.total_size as usize, len);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A writer killed mid-record leaves a zeroed tail (segments are zero-filled): that
        /// must never decode as a message, wherever the cut is.
        #[test]
        fn torn_tail_is_never_a_record(msg in message(), cut in any::<prop::sample::Index>()) {
            let host: SocketAddr = "10.0.0.1:10911".parse().unwrap();
            let stamp = StoreStamp { physical_offset: 0, queue_offset: 0, store_timestamp: 1, store_host: host };
            let len = encoded_len(&msg, &host);
            let mut buf = vec![0u8; len + 64];
            encode(&mut buf[..len], &msg, body_crc(&msg.body), &stamp);
            let at = cut.index(len);
            buf[at..].fill(0);
            let decoded = decode(&Bytes::from(buf));
            prop_assert!(!matches!(decoded, Ok(Entry::Message(_))), "cut at {} of {}: {:?}", at, len, decoded.map(|_| ()));
        }
    }

    #[test]
    fn blank_and_end() {
        let mut buf = vec![0u8; 64];
        assert_eq!(decode(&Bytes::from(buf.clone())), Err(RecordError::End));
        encode_blank(&mut buf, 64);
        assert_eq!(decode(&Bytes::from(buf)), Ok(Entry::Blank(64)));
    }

    #[test]
    fn offset_msg_id_round_trip() {
        let host: SocketAddr = "192.168.1.10:10911".parse().unwrap();
        let id = offset_msg_id(host, 0x1234_5678_9abc);
        assert_eq!(id, "C0A8010A00002A9F0000123456789ABC");
        assert_eq!(parse_offset_msg_id(&id), Some((host, 0x1234_5678_9abc)));
        let v6: SocketAddr = "[::1]:8081".parse().unwrap();
        assert_eq!(parse_offset_msg_id(&offset_msg_id(v6, 7)), Some((v6, 7)));
        assert_eq!(parse_offset_msg_id("nothex"), None);
    }
}
