//! Transactional messages. A transactional send stores a *half* message in
//! `RMQ_SYS_TRANS_HALF_TOPIC` (its real destination in `REAL_TOPIC` / `REAL_QID`), invisible to
//! consumers. `EndTransaction` with COMMIT puts it into its real topic; ROLLBACK discards it.
//! A half message without a decision after the check interval is checked back: the broker asks
//! a producer of its topic, over that producer's Telemetry stream, for the outcome; after
//! `MAX_CHECKS` unanswered checks it is discarded. Decisions are recorded like consumer
//! progress (group `rmq_sys_trans`, durable ack log), so a restart neither loses a pending half
//! message nor revives a decided one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::timer::{REAL_QID, REAL_TOPIC};
use super::{Broker, Result, ServiceError, real_message};
use crate::store::commitlog::now_millis;
use crate::store::{GetStatus, Message, StoredMessage, properties, record};

pub const HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// The property naming a transactional message's producer group.
pub const PRODUCER_GROUP: &str = "PGROUP";
const TRANS_GROUP: &str = "rmq_sys_trans";
/// Unanswered check-backs before a half message is discarded (`transactionCheckMax`).
pub const MAX_CHECKS: u32 = 15;

/// A check-back for a producer: the half message (with its real topic) and its transaction id.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    pub message: StoredMessage,
    pub transaction_id: String,
}

struct Pending {
    next_check: i64,
    checks: u32,
}

/// A connected producer: the topics it publishes and where its check-backs go.
type Producer = (Vec<String>, mpsc::Sender<CheckRequest>);

#[derive(Default)]
pub struct TransactionState {
    /// Half messages without a decision, by offset in the half topic.
    pending: Mutex<BTreeMap<u64, Pending>>,
    scanned: Mutex<Option<u64>>,
    /// Producers with an open Telemetry stream, by client id.
    producers: Mutex<HashMap<String, Producer>>,
    /// Remoting producers, by client id: their producer group (what half messages carry in
    /// `PGROUP`) and where their check-backs go.
    group_producers: Mutex<HashMap<String, (String, mpsc::Sender<CheckRequest>)>>,
}

impl Broker {
    /// Rewrites a transactional message (`TRAN_MSG`) into a half message.
    pub(crate) fn route_half(&self, msg: &mut Message) {
        let props = properties::with(&msg.properties, REAL_TOPIC, &msg.topic);
        msg.properties = properties::with(&props, REAL_QID, &msg.queue_id.to_string());
        msg.topic = HALF_TOPIC.to_owned();
        msg.queue_id = 0;
    }

    /// The transaction id of a half message stored at `physical_offset`.
    pub fn transaction_id(&self, physical_offset: u64) -> String {
        record::offset_msg_id(self.store.config().store_host, physical_offset)
    }

    /// A producer's Telemetry stream opened (or its settings changed).
    pub fn register_producer(
        &self,
        client_id: &str,
        topics: Vec<String>,
        tx: mpsc::Sender<CheckRequest>,
    ) {
        self.transactions
            .producers
            .lock()
            .insert(client_id.to_owned(), (topics, tx));
    }

    pub fn unregister_producer(&self, client_id: &str) {
        self.transactions.producers.lock().remove(client_id);
        self.transactions.group_producers.lock().remove(client_id);
    }

    /// A remoting producer of `group` is connected (its heartbeat named the group).
    pub fn register_group_producer(
        &self,
        client_id: &str,
        group: &str,
        tx: mpsc::Sender<CheckRequest>,
    ) {
        self.transactions
            .group_producers
            .lock()
            .insert(client_id.to_owned(), (group.to_owned(), tx));
    }

    fn half_message(&self, transaction_id: &str) -> Result<StoredMessage> {
        let invalid = || ServiceError::InvalidTransactionId(transaction_id.to_owned());
        let (_, offset) = record::parse_offset_msg_id(transaction_id).ok_or_else(invalid)?;
        let m = self.store.read_message(offset).ok_or_else(invalid)?;
        if m.topic != HALF_TOPIC {
            return Err(invalid());
        }
        let (commit, done) = self.pop.progress(TRANS_GROUP, HALF_TOPIC, 0)?;
        if m.queue_offset < commit || done.contains(&m.queue_offset) {
            return Err(ServiceError::InvalidTransactionId(format!(
                "{transaction_id} was already committed or rolled back"
            )));
        }
        Ok(m)
    }

    /// COMMIT puts the half message into its real topic; ROLLBACK discards it.
    pub async fn end_transaction(&self, transaction_id: &str, commit: bool) -> Result<()> {
        let half = self.half_message(transaction_id)?;
        if commit {
            self.store
                .put_message(&real_message(&half, half.physical_offset as i64))
                .await?;
        }
        self.pop
            .mark_done(TRANS_GROUP, HALF_TOPIC, 0, half.queue_offset)?;
        self.transactions.pending.lock().remove(&half.queue_offset);
        tracing::debug!(transaction_id, commit, "transaction ended");
        Ok(())
    }

    fn scan_halves(&self, now: i64) -> Result<()> {
        let mut scanned = self.transactions.scanned.lock();
        let (commit, done) = self.pop.progress(TRANS_GROUP, HALF_TOPIC, 0)?;
        let mut offset = scanned.unwrap_or(commit).max(commit);
        loop {
            let got = self.store.get_message(HALF_TOPIC, 0, offset, 256)?;
            if got.status != GetStatus::Found {
                break;
            }
            let mut pending = self.transactions.pending.lock();
            for m in &got.messages {
                if !done.contains(&m.queue_offset) {
                    let first_check = m.store_timestamp.max(now - 1)
                        + self.config.transaction_check_interval.as_millis() as i64;
                    pending.entry(m.queue_offset).or_insert(Pending {
                        next_check: first_check,
                        checks: 0,
                    });
                }
            }
            offset = got.next_offset;
        }
        *scanned = Some(offset);
        Ok(())
    }

    /// Sends check-backs for half messages whose check time has come.
    fn check_orphans(&self, now: i64) -> Result<()> {
        let due: Vec<u64> = self
            .transactions
            .pending
            .lock()
            .iter()
            .filter(|(_, p)| p.next_check <= now)
            .map(|(o, _)| *o)
            .collect();
        for offset in due {
            let got = self.store.get_message(HALF_TOPIC, 0, offset, 1)?;
            let Some(half) = got.messages.into_iter().find(|m| m.queue_offset == offset) else {
                self.transactions.pending.lock().remove(&offset);
                continue;
            };
            let checks = {
                let mut pending = self.transactions.pending.lock();
                let Some(p) = pending.get_mut(&offset) else {
                    continue;
                };
                p.checks += 1;
                p.next_check = now + self.config.transaction_check_interval.as_millis() as i64;
                p.checks
            };
            if checks > MAX_CHECKS {
                tracing::warn!(
                    offset,
                    "transaction never resolved after {MAX_CHECKS} checks: discarding the half message"
                );
                self.pop.mark_done(TRANS_GROUP, HALF_TOPIC, 0, offset)?;
                self.transactions.pending.lock().remove(&offset);
                continue;
            }
            let topic = half.property(REAL_TOPIC).unwrap_or_default().to_owned();
            let producer = self
                .transactions
                .producers
                .lock()
                .values()
                .find(|(topics, _)| topics.contains(&topic))
                .map(|(_, tx)| tx.clone())
                .or_else(|| {
                    // Remoting producers of the half message's group (proxies among them, each
                    // holding only some producers): each check asks the next one.
                    let group = half.property(PRODUCER_GROUP)?;
                    let producers = self.transactions.group_producers.lock();
                    let mut candidates: Vec<_> = producers
                        .iter()
                        .filter(|(_, (g, tx))| g == group && !tx.is_closed())
                        .collect();
                    candidates.sort_by_key(|(id, _)| id.as_str());
                    let n = candidates.len();
                    (n > 0).then(|| candidates[checks as usize % n].1.1.clone())
                });
            match producer {
                Some(tx) => {
                    let request = CheckRequest {
                        transaction_id: self.transaction_id(half.physical_offset),
                        message: half,
                    };
                    let _ = tx.try_send(request);
                }
                None => tracing::debug!(
                    offset,
                    topic,
                    "no producer of the topic is connected for a transaction check"
                ),
            }
        }
        Ok(())
    }
}

/// The check-back loop; runs until the task is dropped.
pub async fn run(broker: std::sync::Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = now_millis();
        if let Err(e) = broker
            .scan_halves(now)
            .and_then(|()| broker.check_orphans(now))
        {
            tracing::error!(error = %e, "transaction check failed");
        }
    }
}
