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
    /// The segment's ConsumeQueue and index entries ([`super::queues`]); absent for segments
    /// uploaded before they were saved (a restore then reads the messages instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<ObjectRef>,
}

/// An immutable object the manifest points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub key: String,
    pub len: u64,
    pub crc32: u32,
}

/// A snapshot of the node's metadata files (topics, subscription groups, consumer offsets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataRef {
    pub object: ObjectRef,
    /// CRC-32 of the files' contents (to tell whether they changed since).
    pub content_crc32: u32,
    pub taken_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub version: u64,
    /// Ordered by `base`, not overlapping.
    pub segments: Vec<TieredSegment>,
    /// Remote retention removed everything below this CommitLog offset.
    #[serde(default)]
    pub expired_before: u64,
    /// The newest metadata snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataRef>,
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

    /// The next version without the segments that end at or below `offset`.
    pub fn expired(&self, offset: u64) -> Manifest {
        let mut next = self.clone();
        next.version += 1;
        next.segments.retain(|s| s.base + s.len > offset);
        next.expired_before = next.expired_before.max(offset);
        next
    }

    /// The next version with a new metadata snapshot.
    pub fn with_metadata(&self, metadata: MetadataRef) -> Manifest {
        let mut next = self.clone();
        next.version += 1;
        next.metadata = Some(metadata);
        next
    }
}

/// Manifest versions kept in the store; older ones are deleted (with the metadata snapshots
/// only they referenced).
pub const KEEP_VERSIONS: u64 = 16;

/// The number at the end of a versioned or offset-named key (`.../00000000000000000042.json`).
pub fn key_number(key: &Path) -> Option<u64> {
    let name = key.filename()?;
    name.split('.').next()?.parse().ok()
}

/// Loads one manifest version.
pub async fn load(
    store: &dyn ObjectStore,
    prefix: &str,
    version: u64,
) -> Result<Manifest, TierError> {
    let key = manifest_key(prefix, version);
    let bytes = store.get(&key).await?.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| TierError::CorruptManifest {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Deletes manifest versions older than the [`KEEP_VERSIONS`] newest and the metadata
/// snapshots that none of the kept versions names. Best effort: a failure leaves garbage for
/// the next call, never a dangling reference.
pub async fn prune(store: &dyn ObjectStore, prefix: &str, newest: u64) -> Result<usize, TierError> {
    use futures_util::StreamExt;
    let Some(oldest_kept) = newest.checked_sub(KEEP_VERSIONS - 1).filter(|v| *v > 0) else {
        return Ok(0);
    };
    // Metadata snapshots are named by the manifest version that introduced them; the oldest
    // kept manifest names the oldest snapshot still needed.
    let keep_metadata_from = match load(store, prefix, oldest_kept).await {
        Ok(m) => m
            .metadata
            .and_then(|r| key_number(&Path::from(r.object.key)))
            .unwrap_or(oldest_kept),
        Err(TierError::ObjectStore(object_store::Error::NotFound { .. })) => oldest_kept,
        Err(e) => return Err(e),
    };
    let mut doomed = Vec::new();
    for (dir, keep_from) in [
        (manifest_dir(prefix), oldest_kept),
        (metadata_dir(prefix), keep_metadata_from),
    ] {
        let mut listing = store.list(Some(&dir));
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if key_number(&meta.location).is_some_and(|n| n < keep_from) {
                doomed.push(meta.location);
            }
        }
    }
    for key in &doomed {
        match store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(doomed.len())
}

pub fn metadata_dir(prefix: &str) -> Path {
    Path::from(format!("{prefix}/metadata"))
}

pub fn metadata_key(prefix: &str, version: u64) -> String {
    format!("{prefix}/metadata/{version:020}.json")
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
            queues: None,
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
        // Expiry drops whole segments and remembers where history now starts.
        let v3 = v2.expired(15);
        assert_eq!(v3.segments.len(), 1);
        assert_eq!((v3.version, v3.expired_before, v3.end()), (3, 15, 20));
        // Another prefix is another node.
        assert_eq!(load_latest(&store, "m").await.unwrap(), Manifest::default());
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_versions_and_the_metadata_they_name() {
        let store = InMemory::new();
        let mut m = Manifest::default();
        for i in 0..40u64 {
            m = if i % 10 == 0 {
                let key = metadata_key("n", m.version + 1);
                store
                    .put(&Path::from(key.as_str()), PutPayload::from_static(b"{}"))
                    .await
                    .unwrap();
                m.with_metadata(MetadataRef {
                    object: ObjectRef {
                        key,
                        len: 2,
                        crc32: 0,
                    },
                    content_crc32: i as u32,
                    taken_ms: 0,
                })
            } else {
                m.with(seg(i * 10, 10))
            };
            publish(&store, "n", &m).await.unwrap();
        }
        let deleted = prune(&store, "n", m.version).await.unwrap();
        // Versions 1..=24 go; snapshots 1 and 11 go, 21 (named by version 25..30) and 31 stay.
        assert_eq!(deleted, 24 + 2);
        assert_eq!(load_latest(&store, "n").await.unwrap(), m);
        let kept = load(&store, "n", m.version - KEEP_VERSIONS + 1)
            .await
            .unwrap();
        let snapshot = kept.metadata.unwrap().object.key;
        assert!(store.head(&Path::from(snapshot.as_str())).await.is_ok());
        assert!(load(&store, "n", 24).await.is_err());
        assert_eq!(prune(&store, "n", m.version).await.unwrap(), 0);
    }
}
