//! RocketMQ's remoting protocol frame codec (the TCP protocol of name servers and brokers).
//! Encode and decode only; `conn` runs connections over it.
//!
//! Frame (big-endian):
//!
//! ```text
//! int32  length of everything after this field
//! int32  serialize type << 24 | header length   (type 0: JSON header, 1: ROCKETMQ binary)
//! bytes  header
//! bytes  body (the rest)
//! ```
//!
//! ROCKETMQ binary header (codes above i16, such as the pop codes, only fit the JSON form, which
//! is what the Java clients send by default): code i16, language u8, version i16, opaque i32, flag i32,
//! remark (i32 length + UTF-8), extFields (i32 total length, then per entry: i16 key length,
//! key, i32 value length, value). JSON header: an object with `code`, `language` (name),
//! `version`, `opaque`, `flag`, `remark`, `extFields` and `serializeTypeCurrentRPC`.
//!
//! Decoding never trusts a length: a frame longer than the configured maximum, a header longer
//! than its frame or a field longer than its header is an error (the caller closes the
//! connection), and nothing is allocated before the bytes it describes have arrived.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// RocketMQ's default `com.rocketmq.remoting.frameMaxLength`.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Flag bit 0: this command is a response.
pub const FLAG_RESPONSE: i32 = 1;
/// Flag bit 1: the request expects no response.
pub const FLAG_ONEWAY: i32 = 1 << 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerializeType {
    Json,
    RocketMq,
}

/// RocketMQ's `LanguageCode`, by ordinal.
const LANGUAGES: [&str; 14] = [
    "JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO", "PHP",
    "OMS", "RUST", "NODE_JS",
];

fn language_code(name: &str) -> u8 {
    LANGUAGES.iter().position(|l| *l == name).unwrap_or(7) as u8
}

fn language_name(code: u8) -> &'static str {
    LANGUAGES.get(usize::from(code)).copied().unwrap_or("OTHER")
}

/// One request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotingCommand {
    pub code: i32,
    pub language: String,
    pub version: i32,
    /// Request id, echoed by the response.
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    /// The command's custom header, as strings.
    pub ext_fields: HashMap<String, String>,
    pub serialize_type: SerializeType,
    pub body: Bytes,
}

impl RemotingCommand {
    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    /// A response to `request` with the given code and remark, in the request's header format.
    pub fn response_to(
        request: &RemotingCommand,
        code: i32,
        remark: impl Into<String>,
    ) -> RemotingCommand {
        RemotingCommand {
            code,
            language: "RUST".into(),
            version: request.version,
            opaque: request.opaque,
            flag: FLAG_RESPONSE,
            remark: Some(remark.into()),
            ext_fields: HashMap::new(),
            serialize_type: request.serialize_type,
            body: Bytes::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("frame length {0} is too small for a header length field")]
    TooSmall(usize),
    #[error("header of {header} bytes does not fit in a frame of {frame} bytes")]
    HeaderOverrun { header: usize, frame: usize },
    #[error("unknown serialize type {0}")]
    UnknownSerializeType(u8),
    #[error("malformed header: {0}")]
    BadHeader(String),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonHeader {
    code: i32,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    version: i32,
    #[serde(default)]
    opaque: i32,
    #[serde(default)]
    flag: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remark: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ext_fields: Option<HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serialize_type_current_rpc: Option<String>,
}

/// Appends one encoded frame to `out`.
pub fn encode(cmd: &RemotingCommand, out: &mut BytesMut) {
    let header = match cmd.serialize_type {
        SerializeType::Json => serde_json::to_vec(&JsonHeader {
            code: cmd.code,
            language: Some(cmd.language.clone()),
            version: cmd.version,
            opaque: cmd.opaque,
            flag: cmd.flag,
            remark: cmd.remark.clone(),
            ext_fields: (!cmd.ext_fields.is_empty()).then(|| cmd.ext_fields.clone()),
            serialize_type_current_rpc: Some("JSON".into()),
        })
        .expect("a header of strings and numbers serializes"),
        SerializeType::RocketMq => {
            let mut h = Vec::with_capacity(64);
            h.put_i16(cmd.code as i16);
            h.put_u8(language_code(&cmd.language));
            h.put_i16(cmd.version as i16);
            h.put_i32(cmd.opaque);
            h.put_i32(cmd.flag);
            let remark = cmd.remark.as_deref().unwrap_or_default().as_bytes();
            h.put_i32(remark.len() as i32);
            h.put_slice(remark);
            let mut ext = Vec::new();
            for (k, v) in &cmd.ext_fields {
                ext.put_i16(k.len() as i16);
                ext.put_slice(k.as_bytes());
                ext.put_i32(v.len() as i32);
                ext.put_slice(v.as_bytes());
            }
            h.put_i32(ext.len() as i32);
            h.put_slice(&ext);
            h
        }
    };
    let type_byte: u32 = match cmd.serialize_type {
        SerializeType::Json => 0,
        SerializeType::RocketMq => 1,
    };
    out.reserve(8 + header.len() + cmd.body.len());
    out.put_i32((4 + header.len() + cmd.body.len()) as i32);
    out.put_u32(type_byte << 24 | header.len() as u32);
    out.put_slice(&header);
    out.put_slice(&cmd.body);
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if n > self.0.len() {
            return Err(FrameError::BadHeader(format!(
                "field of {n} bytes past the end of the header"
            )));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn i16(&mut self) -> Result<i16, FrameError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, FrameError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn len(&mut self) -> Result<usize, FrameError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| FrameError::BadHeader(format!("negative length {n}")))
    }
    fn string(&mut self, n: usize) -> Result<String, FrameError> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| FrameError::BadHeader("text is not UTF-8".into()))
    }
}

fn decode_header(kind: u8, header: &[u8], body: Bytes) -> Result<RemotingCommand, FrameError> {
    match kind {
        0 => {
            let h: JsonHeader =
                serde_json::from_slice(header).map_err(|e| FrameError::BadHeader(e.to_string()))?;
            Ok(RemotingCommand {
                code: h.code,
                language: h.language.unwrap_or_else(|| "OTHER".into()),
                version: h.version,
                opaque: h.opaque,
                flag: h.flag,
                remark: h.remark,
                ext_fields: h.ext_fields.unwrap_or_default(),
                serialize_type: SerializeType::Json,
                body,
            })
        }
        1 => {
            let mut c = Cursor(header);
            let code = i32::from(c.i16()?);
            let language = language_name(c.take(1)?[0]).to_owned();
            let version = i32::from(c.i16()?);
            let opaque = c.i32()?;
            let flag = c.i32()?;
            let remark_len = c.len()?;
            let remark = (remark_len > 0).then(|| c.string(remark_len)).transpose()?;
            let ext_len = c.len()?;
            let mut ext = Cursor(c.take(ext_len)?);
            let mut ext_fields = HashMap::new();
            while !ext.0.is_empty() {
                let klen = usize::try_from(ext.i16()?)
                    .map_err(|_| FrameError::BadHeader("negative key length".into()))?;
                let key = ext.string(klen)?;
                let vlen = ext.len()?;
                let value = ext.string(vlen)?;
                ext_fields.insert(key, value);
            }
            if !c.0.is_empty() {
                return Err(FrameError::BadHeader(format!(
                    "{} bytes after the header's fields",
                    c.0.len()
                )));
            }
            Ok(RemotingCommand {
                code,
                language,
                version,
                opaque,
                flag,
                remark,
                ext_fields,
                serialize_type: SerializeType::RocketMq,
                body,
            })
        }
        other => Err(FrameError::UnknownSerializeType(other)),
    }
}

/// Takes one complete frame off the front of `buf`; `Ok(None)` until a whole frame arrived.
/// The body is a zero-copy slice of `buf`'s storage.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<RemotingCommand>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = i32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
    let length = usize::try_from(length).map_err(|_| FrameError::TooSmall(0))?;
    if length > max_frame {
        return Err(FrameError::TooLarge(length, max_frame));
    }
    if length < 4 {
        return Err(FrameError::TooSmall(length));
    }
    if buf.len() < 4 + length {
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + length).freeze();
    frame.advance(4);
    let word = frame.get_u32();
    let kind = (word >> 24) as u8;
    let header_len = (word & 0x00FF_FFFF) as usize;
    if header_len > frame.len() {
        return Err(FrameError::HeaderOverrun {
            header: header_len,
            frame: length,
        });
    }
    let header = frame.split_to(header_len);
    decode_header(kind, &header, frame).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    prop_compose! {
        fn command()(
            code in any::<i16>(),
            lang in 0usize..LANGUAGES.len(),
            version in any::<i16>(),
            opaque in any::<i32>(),
            flag in 0i32..4,
            remark in proptest::option::of("[a-zA-Z0-9 ]{0,40}"),
            ext in proptest::collection::hash_map("[a-zA-Z]{1,12}", "[ -~]{0,30}", 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            json in any::<bool>(),
        ) -> RemotingCommand {
            RemotingCommand {
                code: i32::from(code),
                language: LANGUAGES[lang].to_owned(),
                version: i32::from(version),
                opaque,
                flag,
                remark: remark.filter(|r| !r.is_empty()),
                ext_fields: ext,
                serialize_type: if json { SerializeType::Json } else { SerializeType::RocketMq },
                body: body.into(),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn round_trip_in_pieces(cmds in proptest::collection::vec(command(), 1..4), split in any::<prop::sample::Index>()) {
            let mut wire = BytesMut::new();
            for c in &cmds {
                encode(c, &mut wire);
            }
            // Arrives in two pieces: nothing is decoded from a partial frame.
            let at = split.index(wire.len());
            let mut buf = BytesMut::from(&wire[..at]);
            let mut got = Vec::new();
            while let Some(c) = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
                got.push(c);
            }
            buf.extend_from_slice(&wire[at..]);
            while let Some(c) = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
                got.push(c);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, cmds);
        }

        /// Random bytes: an error or a wait for more, never a panic or a huge allocation.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..16 {
                match decode(&mut buf, 4096) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]);
        assert_eq!(
            decode(&mut buf, DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge(0x7fff_ffff, DEFAULT_MAX_FRAME))
        );
        let mut buf = BytesMut::from(&[0x80, 0, 0, 0][..]);
        assert!(
            decode(&mut buf, DEFAULT_MAX_FRAME).is_err(),
            "negative length"
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert_eq!(
            decode(&mut buf, DEFAULT_MAX_FRAME),
            Err(FrameError::TooSmall(2))
        );
        // Header length larger than the frame.
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 1, 0, 0, 9, 0, 0, 0, 0][..]);
        assert!(matches!(
            decode(&mut buf, DEFAULT_MAX_FRAME),
            Err(FrameError::HeaderOverrun { .. })
        ));
        // Binary header whose remark length points past the header.
        let mut h = BytesMut::new();
        h.put_i16(10);
        h.put_u8(0);
        h.put_i16(0);
        h.put_i32(1);
        h.put_i32(0);
        h.put_i32(1_000_000);
        let mut f = BytesMut::new();
        f.put_i32(4 + h.len() as i32);
        f.put_u32(1 << 24 | h.len() as u32);
        f.put_slice(&h);
        assert!(matches!(
            decode(&mut f, DEFAULT_MAX_FRAME),
            Err(FrameError::BadHeader(_))
        ));
    }

    #[test]
    fn json_header_as_java_sends_it() {
        let header = br#"{"code":105,"extFields":{"topic":"TopicTest"},"flag":0,"language":"JAVA","opaque":7,"serializeTypeCurrentRPC":"JSON","version":401}"#;
        let mut f = BytesMut::new();
        f.put_i32(4 + header.len() as i32);
        f.put_u32(header.len() as u32);
        f.put_slice(header);
        let c = decode(&mut f, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((c.code, c.opaque, c.version), (105, 7, 401));
        assert_eq!(c.ext_fields["topic"], "TopicTest");
        assert!(!c.is_response());
        let r = RemotingCommand::response_to(&c, 0, "ok");
        assert!(r.is_response() && r.opaque == 7);
    }
}
