//! Delay / timer messages: a message with a delivery time in the future is stored in the system
//! topic `rmq_sys_wheel_timer` (with its real destination in `REAL_TOPIC` / `REAL_QID`) and
//! re-put into its real topic when due. Progress through the timer topic is kept like a
//! consumer group's (`rmq_sys_timer`, durable ack log), so timers survive restarts and crashes;
//! a crash between the re-put and the progress record delivers a message twice, never zero
//! times. Pending timers are held in memory, ordered by delivery time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Broker, Result, keys, real_message};
use crate::store::commitlog::now_millis;
use crate::store::{GetStatus, Message, properties};

pub const TIMER_TOPIC: &str = "rmq_sys_wheel_timer";
const TIMER_GROUP: &str = "rmq_sys_timer";
pub const REAL_TOPIC: &str = "REAL_TOPIC";
pub const REAL_QID: &str = "REAL_QID";
/// Longest delay accepted (RocketMQ's `timerMaxDelaySec` default: 3 days).
pub const MAX_DELAY: Duration = Duration::from_secs(3 * 24 * 3600);
/// How often due timers are looked for: the delivery precision.
const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct TimerState {
    /// (delivery time ms, offset in the timer topic) of every timer not yet fired.
    pending: Mutex<BTreeSet<(i64, u64)>>,
    /// Timer topic offsets below this have been looked at.
    scanned: Mutex<Option<u64>>,
}

impl Broker {
    /// If `msg` is due later, rewrites it into the timer topic.
    pub(crate) fn route_delayed(&self, msg: &mut Message, now: i64) {
        let Some(deliver) = msg
            .property_value(keys::TIMER_DELIVER_MS)
            .and_then(|v| v.parse::<i64>().ok())
        else {
            return;
        };
        if deliver <= now {
            return;
        }
        let props = properties::with(&msg.properties, REAL_TOPIC, &msg.topic);
        msg.properties = properties::with(&props, REAL_QID, &msg.queue_id.to_string());
        msg.topic = TIMER_TOPIC.to_owned();
        msg.queue_id = 0;
    }

    /// Looks at timer messages appended since the last scan.
    fn scan_timers(&self) -> Result<()> {
        let mut scanned = self.timer.scanned.lock();
        let (commit, done) = self.pop.progress(TIMER_GROUP, TIMER_TOPIC, 0)?;
        let mut offset = scanned.unwrap_or(commit).max(commit);
        loop {
            let got = self.store.get_message(TIMER_TOPIC, 0, offset, 256)?;
            if got.status != GetStatus::Found {
                if matches!(
                    got.status,
                    GetStatus::OffsetTooSmall | GetStatus::OffsetFoundNull
                ) && got.next_offset > offset
                {
                    offset = got.next_offset;
                    continue;
                }
                break;
            }
            let mut pending = self.timer.pending.lock();
            for m in &got.messages {
                if done.contains(&m.queue_offset) {
                    continue;
                }
                let deliver = m
                    .property(keys::TIMER_DELIVER_MS)
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
                pending.insert((deliver, m.queue_offset));
            }
            offset = got.next_offset;
        }
        *scanned = Some(offset);
        Ok(())
    }

    /// Re-puts every due timer into its real topic.
    async fn fire_due_timers(&self, now: i64) -> Result<usize> {
        let due: Vec<(i64, u64)> = {
            let pending = self.timer.pending.lock();
            pending.range(..(now + 1, 0)).copied().collect()
        };
        for (deliver, offset) in &due {
            let got = self.store.get_message(TIMER_TOPIC, 0, *offset, 1)?;
            if let Some(m) = got.messages.into_iter().find(|m| m.queue_offset == *offset) {
                self.store.put_message(&real_message(&m, 0)).await?;
            }
            self.pop.mark_done(TIMER_GROUP, TIMER_TOPIC, 0, *offset)?;
            self.metrics.timer_messages_delivered.inc();
            self.timer.pending.lock().remove(&(*deliver, *offset));
        }
        Ok(due.len())
    }
}

/// The timer loop; runs until the task is dropped.
pub async fn run(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = broker.scan_timers() {
            tracing::error!(error = %e, "scanning timer messages failed");
            continue;
        }
        match broker.fire_due_timers(now_millis()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(fired = n, "delivered due timer messages"),
            Err(e) => tracing::error!(error = %e, "delivering due timer messages failed"),
        }
    }
}
