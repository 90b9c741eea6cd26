//! Request signatures of RocketMQ ACL 2.0, as the official clients make them (see
//! `PROTOCOL.md` §8), and their verification: what every request is checked against before a
//! handler runs once authentication is on.
//!
//! - gRPC: headers `x-mq-date-time` (`yyyyMMdd'T'HHmmss'Z'`, UTC) and
//!   `authorization: MQv2-HMAC-SHA1 Credential=<accessKey>[/...], SignedHeaders=x-mq-date-time,
//!   Signature=<hex>`, the signature being HMAC-SHA1(secretKey, the date-time string). Apache
//!   does not bound the date's age; we do ([`MAX_CLOCK_SKEW`]), so a captured header cannot be
//!   replayed for long.
//! - Remoting: ext fields `AccessKey` (and `SecurityToken`) and `Signature` = Base64(HMAC-SHA1(
//!   secretKey, the values of every other ext field in key order, then the body)). Clients up to
//!   4.9.3 leave `_UNIQUE_KEY_QUERY` out of what they sign.
//!
//! Signatures are compared in constant time (`ring::hmac::verify`). Errors say what was wrong
//! without echoing secrets or signatures.

pub mod acl;
pub mod guard;
pub mod store;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use ring::hmac;

/// The only algorithm the clients use.
pub const ALGORITHM: &str = "MQv2-HMAC-SHA1";
/// gRPC header names.
pub const AUTHORIZATION: &str = "authorization";
pub const DATE_TIME: &str = "x-mq-date-time";
/// Remoting ext fields.
pub const ACCESS_KEY: &str = "AccessKey";
pub const SIGNATURE: &str = "Signature";
pub const SECURITY_TOKEN: &str = "SecurityToken";
/// Left out of the signed content by clients up to 4.9.3 (`MixAll.UNIQUE_MSG_QUERY_FLAG`).
const UNIQUE_KEY_QUERY: &str = "_UNIQUE_KEY_QUERY";
/// `MQVersion.Version.V4_9_3.ordinal()`.
const V4_9_3: i32 = 401;
/// How far a gRPC request's `x-mq-date-time` may be from this node's clock, give or take
/// the time zone: the Java, Go and Python clients stamp their *local* time with a `Z`, so a
/// client at UTC+14 sends a date 14 hours ahead, one at UTC-12 a date 12 hours behind. A
/// captured header can be replayed for about a day at most (Apache bounds it not at all).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
const MAX_BEHIND: Duration = Duration::from_secs(12 * 3600 + MAX_CLOCK_SKEW.as_secs());
const MAX_AHEAD: Duration = Duration::from_secs(14 * 3600 + MAX_CLOCK_SKEW.as_secs());

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: the request carries no {0}")]
    MissingCredentials(&'static str),
    #[error("malformed {header}: {reason}")]
    Malformed {
        header: &'static str,
        reason: String,
    },
    #[error("unsupported signature algorithm {0:?} (expected {ALGORITHM})")]
    UnsupportedAlgorithm(String),
    #[error("{DATE_TIME} is {skew_secs} s away from this node's clock (allowed: {} s behind to {} s ahead)", MAX_BEHIND.as_secs(), MAX_AHEAD.as_secs())]
    ClockSkew { skew_secs: i64 },
    #[error("the signature does not match (wrong secret key, or the request was altered)")]
    SignatureMismatch,
}

/// What a gRPC request's `authorization` header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcAuthorization {
    pub access_key: String,
    /// The signature's bytes (decoded from hex).
    pub signature: Vec<u8>,
}

fn malformed(header: &'static str, reason: impl Into<String>) -> AuthError {
    AuthError::Malformed {
        header,
        reason: reason.into(),
    }
}

/// Parses `MQv2-HMAC-SHA1 Credential=<ak>[/...], SignedHeaders=..., Signature=<hex>` (items in
/// any order, spaces around them ignored; unknown items ignored, as Apache does).
pub fn parse_authorization(header: &str) -> Result<GrpcAuthorization, AuthError> {
    let header_name = AUTHORIZATION;
    let (algorithm, rest) = header
        .trim()
        .split_once(' ')
        .ok_or_else(|| malformed(header_name, "expected `<algorithm> <items>`"))?;
    if algorithm != ALGORITHM {
        return Err(AuthError::UnsupportedAlgorithm(
            algorithm.chars().take(40).collect(),
        ));
    }
    let mut access_key = None;
    let mut signature = None;
    for item in rest.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| malformed(header_name, "an item is not `key=value`"))?;
        match key.trim() {
            "Credential" => {
                let ak = value.trim().split('/').next().unwrap_or_default();
                if ak.is_empty() {
                    // What the Go and Python clients send when they have no credentials.
                    return Err(AuthError::MissingCredentials(
                        "access key (Credential is empty)",
                    ));
                }
                access_key = Some(ak.to_owned());
            }
            "Signature" => {
                let hex = value.trim();
                signature = Some(
                    decode_hex(hex)
                        .ok_or_else(|| malformed(header_name, "Signature is not hex"))?,
                );
            }
            _ => {}
        }
    }
    Ok(GrpcAuthorization {
        access_key: access_key.ok_or_else(|| malformed(header_name, "no Credential"))?,
        signature: signature.ok_or_else(|| malformed(header_name, "no Signature"))?,
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses `yyyyMMdd'T'HHmmss'Z'` (UTC) into seconds since the epoch; RFC 3339 too (what the
/// Rust client 5.0.0 sends).
pub fn parse_date_time(s: &str) -> Result<i64, AuthError> {
    let bad = || malformed(DATE_TIME, "expected yyyyMMddTHHmmssZ (UTC)");
    if s.len() > 16 && s.as_bytes().get(4) == Some(&b'-') {
        return s
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .map_err(|_| bad());
    }
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let digits = |r: std::ops::Range<usize>| -> Result<i64, AuthError> {
        let part = &s[r];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    let date = jiff::civil::Date::new(year as i16, month as i8, day as i8).map_err(|_| bad())?;
    let time =
        jiff::civil::Time::new(hour as i8, minute as i8, second as i8, 0).map_err(|_| bad())?;
    let ts = date
        .to_datetime(time)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|_| bad())?
        .timestamp();
    Ok(ts.as_second())
}

fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes())
}

/// The signature a gRPC client sends: upper-case hex of HMAC-SHA1(secret, date-time).
pub fn grpc_signature(secret: &str, date_time: &str) -> String {
    hmac::sign(&key(secret), date_time.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// Checks a gRPC request's signature and date (`now`: seconds since the epoch).
pub fn verify_grpc(
    secret: &str,
    auth: &GrpcAuthorization,
    date_time: &str,
    now: i64,
) -> Result<(), AuthError> {
    let at = parse_date_time(date_time)?;
    let skew = at - now;
    if skew < -(MAX_BEHIND.as_secs() as i64) || skew > MAX_AHEAD.as_secs() as i64 {
        return Err(AuthError::ClockSkew { skew_secs: skew });
    }
    hmac::verify(&key(secret), date_time.as_bytes(), &auth.signature)
        .map_err(|_| AuthError::SignatureMismatch)
}

/// The bytes a remoting client signs: the values of every ext field but `Signature` (and
/// `_UNIQUE_KEY_QUERY` from clients up to 4.9.3), in key order, then the body.
pub fn remoting_content(fields: &HashMap<String, String>, version: i32, body: &[u8]) -> Vec<u8> {
    let mut keys: Vec<&String> = fields
        .keys()
        .filter(|k| k.as_str() != SIGNATURE)
        .filter(|k| !(version <= V4_9_3 && k.as_str() == UNIQUE_KEY_QUERY))
        .collect();
    // Java's TreeMap orders String keys by UTF-16 code units; for the ASCII names RocketMQ
    // uses that is byte order.
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        out.extend_from_slice(fields[k].as_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// The signature a remoting client sends: Base64(HMAC-SHA1(secret, content)).
pub fn remoting_signature(secret: &str, content: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key(secret), content).as_ref())
}

/// The access key of a signed remoting request.
pub fn remoting_access_key(fields: &HashMap<String, String>) -> Result<&str, AuthError> {
    fields
        .get(ACCESS_KEY)
        .map(String::as_str)
        .filter(|k| !k.is_empty())
        .ok_or(AuthError::MissingCredentials("AccessKey"))
}

/// Checks a remoting request's `Signature`.
pub fn verify_remoting(
    secret: &str,
    fields: &HashMap<String, String>,
    version: i32,
    body: &[u8],
) -> Result<(), AuthError> {
    let signature = fields
        .get(SIGNATURE)
        .ok_or(AuthError::MissingCredentials("Signature"))?;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| malformed("Signature", "not Base64"))?;
    hmac::verify(
        &key(secret),
        &remoting_content(fields, version, body),
        &sent,
    )
    .map_err(|_| AuthError::SignatureMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_grpc_header_as_the_java_client_writes_it_verifies() {
        // HMAC-SHA1("secret", "20261130T093000Z"), computed independently (Python's hmac).
        let date = "20261130T093000Z";
        let sig = grpc_signature("secret", date);
        assert_eq!(sig, "25B25EF1EB520FC96EDDF28AED73B7A9EAF23D99");
        let header = format!(
            "MQv2-HMAC-SHA1 Credential=ak1/extra, SignedHeaders=x-mq-date-time, Signature={sig}"
        );
        let auth = parse_authorization(&header).unwrap();
        assert_eq!(auth.access_key, "ak1");
        let now = parse_date_time(date).unwrap();
        verify_grpc("secret", &auth, date, now + 60).unwrap();
        assert_eq!(
            verify_grpc("wrong", &auth, date, now),
            Err(AuthError::SignatureMismatch)
        );
        // A client stamping its local time (UTC+8) with a Z: accepted; a day-old date is not.
        verify_grpc("secret", &auth, date, now - 8 * 3600).unwrap();
        assert!(matches!(
            verify_grpc("secret", &auth, date, now + 86400),
            Err(AuthError::ClockSkew { skew_secs: -86400 })
        ));
        // The Rust client's RFC 3339 form.
        assert_eq!(
            parse_date_time("2026-11-30T09:30:00.123456789Z").unwrap(),
            now
        );
        // Another date with the same signature: refused.
        assert_eq!(
            verify_grpc("secret", &auth, "20261130T093001Z", now),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn malformed_grpc_headers_are_refused_with_a_reason() {
        for (h, want) in [
            ("", "malformed"),
            ("MQv2-HMAC-SHA1", "malformed"),
            ("AWS4-HMAC-SHA256 Credential=a, Signature=00", "unsupported"),
            ("MQv2-HMAC-SHA1 Credential=, Signature=00", "no credentials"),
            ("MQv2-HMAC-SHA1 Credential=a", "no Signature"),
            ("MQv2-HMAC-SHA1 Signature=00", "no Credential"),
            ("MQv2-HMAC-SHA1 Credential=a, Signature=zz", "not hex"),
            ("MQv2-HMAC-SHA1 Credential=a, Signature=0", "not hex"),
            ("MQv2-HMAC-SHA1 Credential", "key=value"),
        ] {
            let e = parse_authorization(h).unwrap_err().to_string();
            assert!(e.contains(want), "{h:?}: {e}");
        }
        for d in [
            "",
            "20261130093000Z",
            "20261330T093000Z",
            "20261130T250000Z",
            "2026113OT093000Z",
            "+0261130T093000Z",
        ] {
            assert!(parse_date_time(d).is_err(), "{d:?}");
        }
        assert_eq!(parse_date_time("19700101T000001Z"), Ok(1));
    }

    #[test]
    fn a_remoting_signature_covers_fields_in_key_order_and_the_body() {
        let fields: HashMap<String, String> = [
            ("b", "2"),
            ("AccessKey", "ak"),
            ("a", "1"),
            ("_UNIQUE_KEY_QUERY", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // Byte order of the keys: "AccessKey" < "_UNIQUE_KEY_QUERY" < "a" < "b".
        assert_eq!(remoting_content(&fields, 475, b"body"), b"akfalse12body");
        assert_eq!(remoting_content(&fields, 401, b"body"), b"ak12body");
        let mut signed = fields.clone();
        let sig = remoting_signature("sk", &remoting_content(&fields, 475, b"body"));
        // Base64(HMAC-SHA1("sk", "akfalse12body")), computed independently (Python's hmac).
        assert_eq!(sig, "tomoPfJY1Hl6fBd7M+/KveZCycc=");
        signed.insert(SIGNATURE.into(), sig);
        verify_remoting("sk", &signed, 475, b"body").unwrap();
        assert_eq!(
            verify_remoting("sk", &signed, 475, b"bodY"),
            Err(AuthError::SignatureMismatch)
        );
        assert_eq!(
            verify_remoting("other", &signed, 475, b"body"),
            Err(AuthError::SignatureMismatch)
        );
        assert_eq!(remoting_access_key(&signed), Ok("ak"));
        assert_eq!(
            verify_remoting("sk", &fields, 475, b"body"),
            Err(AuthError::MissingCredentials("Signature"))
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(h in ".{0,200}", d in ".{0,40}") {
            let _ = parse_authorization(&h);
            let _ = parse_date_time(&d);
        }

        #[test]
        fn grpc_signatures_round_trip_and_any_flip_fails(
            secret in "[ -~]{1,40}",
            ak in "[A-Za-z0-9]{1,20}",
            secs in 0i64..4_000_000_000,
            flip in 0usize..20,
        ) {
            let date = jiff::Timestamp::from_second(secs).unwrap().strftime("%Y%m%dT%H%M%SZ").to_string();
            let sig = grpc_signature(&secret, &date);
            let auth = parse_authorization(&format!("MQv2-HMAC-SHA1 Credential={ak}, SignedHeaders=x-mq-date-time, Signature={sig}")).unwrap();
            prop_assert_eq!(&auth.access_key, &ak);
            prop_assert!(verify_grpc(&secret, &auth, &date, secs).is_ok());
            let mut bad = auth.clone();
            bad.signature[flip] ^= 1;
            prop_assert_eq!(verify_grpc(&secret, &bad, &date, secs), Err(AuthError::SignatureMismatch));
        }

        #[test]
        fn remoting_signatures_do_not_depend_on_field_order(
            fields in proptest::collection::vec(("[A-Za-z]{1,8}", "[ -~]{0,12}"), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let forward: HashMap<String, String> = fields.iter().cloned().collect();
            let backward: HashMap<String, String> = fields.iter().rev().cloned().collect::<Vec<_>>().into_iter().rev().collect();
            let a = remoting_signature("sk", &remoting_content(&forward, 475, &body));
            let b = remoting_signature("sk", &remoting_content(&backward, 475, &body));
            prop_assert_eq!(a, b);
        }
    }
}
