//! Retention: deletes the oldest CommitLog segments once they are older than
//! `file_reserved_time`, or, whatever their age, one at a time while the disk is fuller than
//! `disk_max_used_ratio` (RocketMQ's `fileReservedTime` and `diskMaxUsedSpaceRatio`). Never the
//! segment being written, never one with bytes not yet flushed or dispatched, and never one that
//! the retention hook (tiering: "not uploaded yet") wants kept. ConsumeQueue and index files
//! that only point into deleted segments go with them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::error::{Result, StoreError};
use super::message_store::Inner;

/// What retention tells the hook about a segment it would delete.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub base: u64,
    pub end: u64,
    pub path: PathBuf,
}

/// Asked before a segment is deleted: `true` allows it.
pub type RetentionHook = Arc<dyn Fn(&SegmentInfo) -> bool + Send + Sync>;

#[derive(Debug, Default, Clone)]
pub struct RetentionReport {
    pub deleted: Vec<PathBuf>,
    /// Segments that were due but that the hook kept.
    pub kept_by_hook: usize,
    /// The CommitLog's first local offset afterwards.
    pub min_offset: u64,
}

/// Fraction of the file system holding `path` that is in use.
pub fn disk_usage_ratio(path: &Path) -> Result<f64> {
    let st = rustix::fs::statvfs(path).map_err(|e| StoreError::io(path, e.into()))?;
    if st.f_blocks == 0 {
        return Ok(0.0);
    }
    Ok(1.0 - st.f_bavail as f64 / st.f_blocks as f64)
}

pub fn run(inner: &Inner, now: SystemTime, usage_ratio: f64) -> Result<RetentionReport> {
    let cfg = &inner.config;
    let hook = inner.retention_hook.read().clone();
    let dispatched = inner.dispatched.load(Ordering::Acquire);
    let mut forced_budget = usize::from(usage_ratio >= cfg.disk_max_used_ratio);
    let mut kept_by_hook = 0;
    let (deleted, min_offset) = inner.commitlog.delete_oldest(|seg| {
        if seg.end() > dispatched {
            return false;
        }
        let expired = seg
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= cfg.file_reserved_time);
        if !expired && forced_budget == 0 {
            return false;
        }
        if let Some(hook) = &hook {
            let info = SegmentInfo {
                base: seg.base(),
                end: seg.end(),
                path: seg.path().to_owned(),
            };
            if !hook(&info) {
                kept_by_hook += 1;
                tracing::warn!(segment = ?info.path, "retention: segment due for deletion is kept by the retention hook");
                return false;
            }
        }
        if !expired {
            forced_budget -= 1;
        }
        tracing::info!(segment = ?seg.path(), expired, usage_ratio, "retention: deleting CommitLog segment");
        true
    })?;
    if !deleted.is_empty() && !cfg.tiered {
        inner.queues.delete_before(min_offset)?;
        inner.index.delete_files_before(min_offset)?;
    }
    Ok(RetentionReport {
        deleted,
        kept_by_hook,
        min_offset,
    })
}

/// Deletes the oldest local segments that end at or below `keep_from` (a tier's hot window),
/// with the same guards as retention: never the segment being written, never unflushed or
/// undispatched bytes, never one the hook keeps.
pub fn evict(inner: &Inner, keep_from: u64) -> Result<RetentionReport> {
    let hook = inner.retention_hook.read().clone();
    let dispatched = inner.dispatched.load(Ordering::Acquire);
    let mut kept_by_hook = 0;
    let (deleted, min_offset) = inner.commitlog.delete_oldest(|seg| {
        if seg.end() > dispatched || seg.end() > keep_from {
            return false;
        }
        if let Some(hook) = &hook {
            let info = SegmentInfo {
                base: seg.base(),
                end: seg.end(),
                path: seg.path().to_owned(),
            };
            if !hook(&info) {
                kept_by_hook += 1;
                return false;
            }
        }
        tracing::info!(segment = ?seg.path(), "evicting CommitLog segment (held by the tier)");
        true
    })?;
    if !deleted.is_empty() && !inner.config.tiered {
        inner.queues.delete_before(min_offset)?;
        inner.index.delete_files_before(min_offset)?;
    }
    Ok(RetentionReport {
        deleted,
        kept_by_hook,
        min_offset,
    })
}
