//! The flusher: makes CommitLog bytes durable per the flush policy, and releases appends that
//! wait for durability. Under SYNC_FLUSH this is group commit: while one flush runs, more
//! appends land, and the next flush covers all of them, so many appends share one `msync`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::config::FlushPolicy;
use super::message_store::Inner;

/// A wake-up flag between threads: `notify` sets it, `wait` sleeps until it is set (or a
/// timeout) and clears it. Notifications while nobody waits are not lost.
///
/// `notify` runs on every append, from many producers at once: while the flag is already
/// set (the thread has not taken the last notification yet), it returns after one atomic swap,
/// without the lock or a futex wake.
#[derive(Default)]
pub struct Signal {
    pending: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Signal {
    pub fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // The waiter checks the flag under the lock before it sleeps: taking the lock here
            // means it is either not yet checking (and will see the flag) or already asleep.
            let _guard = self.lock.lock();
            self.cv.notify_one();
        }
    }

    /// Returns whether a notification arrived.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut guard = self.lock.lock();
        if !self.pending.load(Ordering::Acquire) {
            self.cv.wait_for(&mut guard, timeout);
        }
        self.pending.swap(false, Ordering::AcqRel)
    }
}

/// Body of the flusher thread; returns after shutdown, once everything written is flushed.
pub fn run(inner: Arc<Inner>) {
    let cfg = &inner.config;
    let mut last_flush = Instant::now();
    let mut failures_while_stopping = 0;
    loop {
        let stopping = inner.shutdown.load(Ordering::Acquire);
        let due = match cfg.flush_policy {
            FlushPolicy::SyncFlush => {
                if !stopping && inner.commitlog.dirty() == 0 {
                    inner.flush_signal.wait(Duration::from_millis(100));
                }
                inner.commitlog.dirty() > 0
            }
            FlushPolicy::AsyncFlush => {
                if !stopping {
                    inner.flush_signal.wait(cfg.flush_interval);
                }
                let dirty = inner.commitlog.dirty();
                stopping
                    || dirty >= cfg.flush_least_pages * 4096
                    || (dirty > 0 && last_flush.elapsed() >= cfg.flush_thorough_interval)
            }
        };
        if due {
            match inner.commitlog.flush() {
                Ok(flushed) => {
                    last_flush = Instant::now();
                    inner.flushed_tx.send_replace(flushed);
                    if cfg.flush_policy == FlushPolicy::SyncFlush {
                        inner.dispatch_signal.notify();
                    }
                }
                Err(e) => {
                    // Waiting appends time out with FlushTimeout; keep trying, but do not hold
                    // up a shutdown forever (the next start then recovers from the checkpoint).
                    tracing::error!(error = %e, "CommitLog flush failed");
                    if stopping {
                        failures_while_stopping += 1;
                        if failures_while_stopping >= 3 {
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if stopping && inner.commitlog.dirty() == 0 {
            inner.dispatch_signal.notify();
            return;
        }
    }
}
