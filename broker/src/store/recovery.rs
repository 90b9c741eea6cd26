//! Recovery at open: find where valid CommitLog data ends, cut everything after it, and bring
//! ConsumeQueues and indexes in line with the log.
//!
//! - Clean shutdown (no `abort` marker, a valid checkpoint whose CommitLog offset is followed by
//!   nothing): the checkpoint is the end. Nothing is scanned.
//! - Crash: scan forward from the smallest offset the checkpoint vouches for (everything below
//!   it was durable and dispatched), validating each record (magic, sizes, body CRC, its own
//!   physical offset). The first invalid record is the end: the segment is cut there and later
//!   segments are deleted. ConsumeQueue entries pointing at or past the end are dropped, and
//!   everything from the checkpoint's dispatch offset is dispatched again (already-present
//!   queue entries are skipped; index lookups verify the record, so stale or repeated index
//!   entries are harmless).

use std::path::PathBuf;

use super::checkpoint::Checkpoint;
use super::dispatch;
use super::error::Result;
use super::message_store::Inner;
use super::record::Entry;
use super::segment::Segment;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous run did not shut down cleanly.
    pub crashed: bool,
    /// Where the scan started (equal to `end` after a clean shutdown).
    pub scanned_from: u64,
    /// Valid records found by the scan.
    pub records_scanned: u64,
    /// End of valid data: the next append goes here.
    pub end: u64,
    /// Why the scan stopped, if it stopped at damaged data rather than at the end of the data.
    pub stopped_at: Option<String>,
    /// Non-zero bytes discarded after `end` (a torn or corrupted tail).
    pub dropped_bytes: u64,
    /// Segment files deleted because they lay after `end`.
    pub dropped_segments: Vec<PathBuf>,
    /// ConsumeQueue entries dropped because they pointed past `end`.
    pub dropped_queue_entries: u64,
    /// Where re-dispatching into ConsumeQueues and indexes started.
    pub redispatched_from: u64,
    /// The store had no CommitLog segment and no checkpoint: a new or emptied data folder.
    pub empty: bool,
}

/// Bytes from `from` (relative) to the last non-zero byte of the segment.
fn nonzero_extent(seg: &Segment, from: u64) -> u64 {
    const CHUNK: u64 = 1 << 20;
    let mut last_nonzero = None;
    let mut pos = from;
    while pos < seg.size() {
        let len = CHUNK.min(seg.size() - pos);
        // SAFETY: recovery runs before any writer or reader uses the segments.
        let chunk = unsafe { seg.read_slice(pos as usize, len as usize) };
        if let Some(i) = chunk.iter().rposition(|b| *b != 0) {
            last_nonzero = Some(pos + i as u64);
        }
        pos += len;
    }
    last_nonzero.map_or(0, |p| p + 1 - from)
}

pub fn recover(
    inner: &Inner,
    checkpoint: Option<Checkpoint>,
    crashed: bool,
) -> Result<RecoveryReport> {
    let log = &inner.commitlog;
    let segments = log.segments();
    let mut report = RecoveryReport {
        crashed,
        ..RecoveryReport::default()
    };
    let Some(first) = segments.first().map(|s| s.base()) else {
        // No local data: continue after whatever the checkpoint last saw (or, on an empty
        // folder, after the history a tier holds), at a segment start.
        report.empty = checkpoint.is_none();
        let end = checkpoint
            .map_or(inner.config.empty_start_offset, |c| c.commitlog)
            .div_ceil(log.segment_size())
            * log.segment_size();
        log.set_end(end)?;
        report.end = end;
        report.scanned_from = end;
        report.redispatched_from = end;
        return Ok(report);
    };
    let last_end = segments.last().map_or(first, |s| s.end());
    let in_range = |o: u64| o >= first && o <= last_end;

    // Clean: trust the checkpoint if nothing follows its CommitLog offset.
    if !crashed
        && let Some(cp) = checkpoint
        && in_range(cp.commitlog)
        && matches!(
            log.read_entry(cp.commitlog, u64::MAX),
            Ok(None) | Ok(Some(Entry::Blank(_)))
        )
    {
        let end = cp.commitlog;
        report.scanned_from = end;
        report.end = end;
        log.set_end(end)?;
        let from = cp.consume_queue.min(cp.index).min(end).max(first);
        report.redispatched_from = from;
        dispatch::dispatch_all(inner, from, end)?;
        return Ok(report);
    }
    if !crashed {
        tracing::warn!(
            "checkpoint missing or inconsistent after a clean shutdown; scanning the CommitLog"
        );
    }

    // Everything below the checkpoint was durable, but its segment is validated whole (as
    // RocketMQ rescans from a file start), so damage just before the checkpoint is caught too.
    let vouched = checkpoint
        .map(|c| c.commitlog.min(c.consume_queue).min(c.index))
        .filter(|o| in_range(*o))
        .unwrap_or(first);
    let scan_from = (vouched / log.segment_size() * log.segment_size()).max(first);
    report.scanned_from = scan_from;
    let mut offset = scan_from;
    loop {
        match log.read_entry(offset, u64::MAX) {
            Ok(Some(Entry::Message(m))) if m.physical_offset == offset => {
                offset += u64::from(m.total_size);
                report.records_scanned += 1;
            }
            Ok(Some(Entry::Message(m))) => {
                report.stopped_at = Some(format!(
                    "record at {offset} says it belongs at {}",
                    m.physical_offset
                ));
                break;
            }
            Ok(Some(Entry::Blank(_))) => {
                let next = log.next_segment_start(offset);
                if next >= last_end {
                    offset = next;
                    break;
                }
                offset = next;
            }
            Ok(None) => break,
            Err(e) => {
                report.stopped_at = Some(format!("{e} at offset {offset}"));
                break;
            }
        }
    }
    let end = offset;
    report.end = end;
    for seg in &segments {
        if seg.contains(end) {
            report.dropped_bytes += nonzero_extent(seg, end - seg.base());
        } else if seg.base() > end {
            report.dropped_bytes += nonzero_extent(seg, 0);
        }
    }
    drop(segments);
    report.dropped_segments = log.set_end(end)?;

    // Open queues are cut now, the others when they are first opened.
    report.dropped_queue_entries += inner.queues.truncate_beyond(end)?;
    let from = checkpoint
        .map_or(first, |c| c.consume_queue.min(c.index))
        .clamp(first, end);
    report.redispatched_from = from;
    let reached = dispatch::dispatch_all(inner, from, end)?;
    if reached != end {
        tracing::warn!(
            reached,
            end,
            "re-dispatch stopped before the end of the CommitLog"
        );
    }
    if report.stopped_at.is_some() || report.dropped_bytes > 0 {
        tracing::warn!(
            ?report,
            "recovered from a crash: a damaged or torn tail was dropped"
        );
    } else {
        tracing::info!(
            end,
            records = report.records_scanned,
            "recovered from a crash"
        );
    }
    Ok(report)
}
