//! Message properties as RocketMQ stores them: `key \x01 value \x02` repeated, UTF-8.

use bytes::Bytes;

pub const NAME_VALUE_SEPARATOR: char = '\u{1}';
pub const PROPERTY_SEPARATOR: char = '\u{2}';

/// Well-known property keys the store reads.
pub const KEYS: &str = "KEYS";
pub const TAGS: &str = "TAGS";
pub const UNIQ_KEY: &str = "UNIQ_KEY";

/// Encodes properties in order.
pub fn encode<'a>(props: impl IntoIterator<Item = (&'a str, &'a str)>) -> Bytes {
    let mut s = String::new();
    for (k, v) in props {
        s.push_str(k);
        s.push(NAME_VALUE_SEPARATOR);
        s.push_str(v);
        s.push(PROPERTY_SEPARATOR);
    }
    Bytes::from(s)
}

/// `props` with one more `key = value` pair appended.
pub fn with(props: &[u8], key: &str, value: &str) -> Bytes {
    let mut v = Vec::with_capacity(props.len() + key.len() + value.len() + 2);
    v.extend_from_slice(props);
    v.extend_from_slice(key.as_bytes());
    v.push(NAME_VALUE_SEPARATOR as u8);
    v.extend_from_slice(value.as_bytes());
    v.push(PROPERTY_SEPARATOR as u8);
    Bytes::from(v)
}

/// Iterates over (key, value) pairs; malformed pairs (no separator, bad UTF-8) are skipped.
pub fn iter(props: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    props
        .split(|b| *b == PROPERTY_SEPARATOR as u8)
        .filter_map(|pair| {
            let sep = pair.iter().position(|b| *b == NAME_VALUE_SEPARATOR as u8)?;
            let key = std::str::from_utf8(&pair[..sep]).ok()?;
            let value = std::str::from_utf8(&pair[sep + 1..]).ok()?;
            Some((key, value))
        })
}

/// The value of `key`, if present.
pub fn get<'a>(props: &'a [u8], key: &str) -> Option<&'a str> {
    iter(props).find(|(k, _)| *k == key).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_get() {
        let p = encode([("TAGS", "a"), ("KEYS", "k1 k2"), ("UNIQ_KEY", "ID")]);
        assert_eq!(&p[..], b"TAGS\x01a\x02KEYS\x01k1 k2\x02UNIQ_KEY\x01ID\x02");
        assert_eq!(get(&p, "KEYS"), Some("k1 k2"));
        assert_eq!(get(&p, "NOPE"), None);
        assert_eq!(get(b"garbage\x02\xff\x01x\x02", "garbage"), None);
        assert_eq!(get(b"", "TAGS"), None);
    }
}
