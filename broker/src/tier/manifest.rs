//! The manifest: which CommitLog segments a node has in object storage, with their offset
//! ranges and checksums. Each version is its own immutable object,
//! `<prefix>/manifest/<version, 20 digits>.json`, written with a create-only put: two writers
//! on one prefix can never silently overwrite each other (the second gets a conflict). The
//! newest version is the one with the highest number.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::TierError;

/// One CommitLog segment held in object storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TieredSegment {
    /// CommitLog offset of its first byte.
    pub base: u64,
    /// Bytes in the object.
    pub len: u64,
    /// Object key.
    pub key: String,
    /// CRC-32/IEEE of the whole object.
    pub crc32: u32,
    /// When the upload completed (ms since the epoch).
    pub uploaded_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub version: u64,
    /// Ordered by `base`, not overlapping.
    pub segments: Vec<TieredSegment>,
}

impl Manifest {
    pub fn contains(&self, base: u64) -> bool {
        self.segments
            .binary_search_by_key(&base, |s| s.base)
            .is_ok()
    }

    /// The segment holding `offset`.
    pub fn segment_for(&self, offset: u64) -> Option<&TieredSegment> {
        let i = self.segments.partition_point(|s| s.base <= offset);
        let s = self.segments.get(i.checked_sub(1)?)?;
        (offset < s.base + s.len).then_some(s)
    }

    /// The CommitLog offset right after the last tiered byte (0 when empty).
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.base + s.len)
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// This manifest with one more segment, as the next version.
    pub fn with(&self, segment: TieredSegment) -> Manifest {
        let mut next = self.clone();
        next.version += 1;
        let i = next.segments.partition_point(|s| s.base < segment.base);
        next.segments.insert(i, segment);
        next
    }
}

pub fn manifest_dir(prefix: &str) -> Path {
    Path::from(format!("{prefix}/manifest"))
}

fn manifest_key(prefix: &str, version: u64) -> Path {
    Path::from(format!("{prefix}/manifest/{version:020}.json"))
}

/// The newest manifest under `prefix`, or an empty one (version 0) when there is none.
pub async fn load_latest(store: &dyn ObjectStore, prefix: &str) -> Result<Manifest, TierError> {
    use futures_util::StreamExt;
    let mut newest: Option<Path> = None;
    let mut listing = store.list(Some(&manifest_dir(prefix)));
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let is_manifest = meta
            .location
            .filename()
            .is_some_and(|f| f.ends_with(".json"));
        if is_manifest && newest.as_ref().is_none_or(|n| meta.location > *n) {
            newest = Some(meta.location);
        }
    }
    let Some(key) = newest else {
        return Ok(Manifest::default());
    };
    let bytes = store.get(&key).await?.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| TierError::CorruptManifest {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Writes `manifest` as its version's object; fails with [`TierError::ManifestConflict`] if
/// that version already exists (another writer got there first).
pub async fn publish(
    store: &dyn ObjectStore,
    prefix: &str,
    manifest: &Manifest,
) -> Result<(), TierError> {
    let key = manifest_key(prefix, manifest.version);
    let body = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.put_opts(&key, PutPayload::from(body), opts).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(TierError::ManifestConflict {
            version: manifest.version,
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn seg(base: u64, len: u64) -> TieredSegment {
        TieredSegment {
            base,
            len,
            key: format!("p/commitlog/{base:020}"),
            crc32: 0,
            uploaded_ms: 0,
        }
    }

    #[test]
    fn segments_stay_ordered_and_are_found_by_offset() {
        let m = Manifest::default().with(seg(200, 100)).with(seg(0, 100));
        assert_eq!(m.version, 2);
        assert_eq!(m.segments[0].base, 0);
        assert_eq!(m.segment_for(150), None);
        assert_eq!(m.segment_for(250).unwrap().base, 200);
        assert_eq!(m.segment_for(99).unwrap().base, 0);
        assert_eq!(m.segment_for(300), None);
        assert!(m.contains(200) && !m.contains(100));
        assert_eq!(m.end(), 300);
    }

    #[tokio::test]
    async fn the_newest_version_wins_and_a_second_writer_gets_a_conflict() {
        let store = InMemory::new();
        assert_eq!(load_latest(&store, "n").await.unwrap(), Manifest::default());
        let v1 = Manifest::default().with(seg(0, 10));
        publish(&store, "n", &v1).await.unwrap();
        let v2 = v1.with(seg(10, 10));
        publish(&store, "n", &v2).await.unwrap();
        assert_eq!(load_latest(&store, "n").await.unwrap(), v2);
        // A writer that still holds v1 tries to publish its own v2.
        let other = v1.with(seg(10, 99));
        let err = publish(&store, "n", &other).await.unwrap_err();
        assert!(
            matches!(err, TierError::ManifestConflict { version: 2 }),
            "{err}"
        );
        assert_eq!(load_latest(&store, "n").await.unwrap(), v2);
        // Another prefix is another node.
        assert_eq!(load_latest(&store, "m").await.unwrap(), Manifest::default());
    }
}
