//! The replication link between a primary and a replica: length-prefixed frames over one TCP
//! connection that the replica opens.
//!
//! ```text
//! frame    = length:u32 (of kind + payload) kind:u8 payload
//! Hello    replica -> primary  JSON {group, brokerId, epochs, end, empty}
//! Welcome  primary -> replica  JSON {epochs, truncateTo, start, segmentSize} or {error}
//! Data     primary -> replica  offset:u64 confirm:u64 records...
//! Beat     primary -> replica  confirm:u64 (when there is nothing to send)
//! Meta     primary -> replica  JSON: the primary's metadata and consumer offsets, whole or
//!                              what changed since the link's last Meta (`metaChanges`)
//! Ack      replica -> primary  written:u64
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::epoch::EpochEntry;

/// The largest frame accepted (a chunk is at most a few MiB: whole records, one of which may
/// be as large as the largest message).
pub const MAX_FRAME: usize = 64 << 20;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const DATA: u8 = 3;
const BEAT: u8 = 4;
const META: u8 = 5;
const ACK: u8 = 6;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub group: String,
    pub broker_id: i64,
    pub epochs: Vec<EpochEntry>,
    /// The replica's written offset.
    pub end: u64,
    /// The replica holds no CommitLog segment.
    pub empty: bool,
    pub segment_size: u64,
    /// The replica takes metadata frames of changes (earlier versions take whole snapshots).
    #[serde(default)]
    pub meta_changes: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    pub epochs: Vec<EpochEntry>,
    /// Cut the log here before anything else (it diverged).
    pub truncate_to: Option<u64>,
    /// Data frames start here.
    pub start: u64,
    /// Set when the primary refuses the replica; nothing else is meaningful then.
    pub error: Option<String>,
}

#[derive(Debug)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Data {
        offset: u64,
        confirm: u64,
        records: Bytes,
    },
    Beat {
        confirm: u64,
    },
    Meta(Bytes),
    Ack {
        written: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn json<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("plain data"))
}

impl Frame {
    /// Writes the frame (header and payload) without copying the records.
    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> Result<(), WireError> {
        let mut head = BytesMut::with_capacity(32);
        let body: Bytes = match self {
            Frame::Hello(h) => json(h),
            Frame::Welcome(h) => json(h),
            Frame::Meta(b) => b.clone(),
            Frame::Data { records, .. } => records.clone(),
            _ => Bytes::new(),
        };
        let (kind, fixed) = match self {
            Frame::Hello(_) => (HELLO, 0),
            Frame::Welcome(_) => (WELCOME, 0),
            Frame::Meta(_) => (META, 0),
            Frame::Data { .. } => (DATA, 16),
            Frame::Beat { .. } | Frame::Ack { .. } => (
                if matches!(self, Frame::Beat { .. }) {
                    BEAT
                } else {
                    ACK
                },
                8,
            ),
        };
        head.put_u32((1 + fixed + body.len()) as u32);
        head.put_u8(kind);
        match self {
            Frame::Data {
                offset, confirm, ..
            } => {
                head.put_u64(*offset);
                head.put_u64(*confirm);
            }
            Frame::Beat { confirm } => head.put_u64(*confirm),
            Frame::Ack { written } => head.put_u64(*written),
            _ => {}
        }
        w.write_all(&head).await?;
        if !body.is_empty() {
            w.write_all(&body).await?;
        }
        Ok(())
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, WireError> {
        let len = match r.read_u32().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if len == 0 || len > MAX_FRAME {
            return Err(WireError::Malformed(format!(
                "frame length {len} (at most {MAX_FRAME})"
            )));
        }
        let mut buf = BytesMut::zeroed(len);
        r.read_exact(&mut buf).await?;
        let mut buf = buf.freeze();
        let kind = buf.get_u8();
        let need = |buf: &Bytes, n: usize| {
            if buf.remaining() < n {
                Err(WireError::Malformed(format!("frame kind {kind} too short")))
            } else {
                Ok(())
            }
        };
        let parse = |b: &Bytes| -> Result<serde_json::Value, WireError> {
            serde_json::from_slice(b).map_err(|e| WireError::Malformed(e.to_string()))
        };
        Ok(Some(match kind {
            HELLO => Frame::Hello(
                serde_json::from_value(parse(&buf)?)
                    .map_err(|e| WireError::Malformed(e.to_string()))?,
            ),
            WELCOME => Frame::Welcome(
                serde_json::from_value(parse(&buf)?)
                    .map_err(|e| WireError::Malformed(e.to_string()))?,
            ),
            DATA => {
                need(&buf, 16)?;
                let offset = buf.get_u64();
                let confirm = buf.get_u64();
                Frame::Data {
                    offset,
                    confirm,
                    records: buf,
                }
            }
            BEAT => {
                need(&buf, 8)?;
                Frame::Beat {
                    confirm: buf.get_u64(),
                }
            }
            META => Frame::Meta(buf),
            ACK => {
                need(&buf, 8)?;
                Frame::Ack {
                    written: buf.get_u64(),
                }
            }
            other => return Err(WireError::Malformed(format!("unknown frame kind {other}"))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_refused() {
        let frames = vec![
            Frame::Hello(Hello {
                group: "g".into(),
                broker_id: 1,
                epochs: vec![EpochEntry { epoch: 1, start: 0 }],
                end: 42,
                empty: false,
                segment_size: 1 << 20,
                meta_changes: true,
            }),
            Frame::Welcome(Welcome {
                start: 7,
                truncate_to: Some(7),
                ..Welcome::default()
            }),
            Frame::Data {
                offset: 5,
                confirm: 3,
                records: Bytes::from_static(b"abc"),
            },
            Frame::Beat { confirm: 9 },
            Frame::Meta(Bytes::from_static(b"{}")),
            Frame::Ack { written: 11 },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            f.write(&mut buf).await.unwrap();
        }
        let mut r = &buf[..];
        let mut got = Vec::new();
        while let Some(f) = Frame::read(&mut r).await.unwrap() {
            got.push(format!("{f:?}"));
        }
        assert_eq!(
            got,
            frames.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>()
        );

        for bad in [
            &[0u8, 0, 0, 0][..],
            &[0, 0, 0, 1, 99],
            &[0, 0, 0, 3, DATA, 0, 0],
            &[0, 0, 0, 3, HELLO, b'{', b'x'],
            &[0xff, 0xff, 0xff, 0xff],
        ] {
            let mut r = bad;
            assert!(Frame::read(&mut r).await.is_err(), "{bad:?}");
        }
    }
}
