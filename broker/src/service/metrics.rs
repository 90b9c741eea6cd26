//! Prometheus metrics of the messaging service and the store, in RocketMQ's vocabulary.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub topic: String,
    pub group: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub messages_sent: Family<TopicLabel, Counter>,
    pub send_errors: Family<TopicLabel, Counter>,
    pub messages_received: Family<GroupLabels, Counter>,
    pub messages_redelivered: Family<GroupLabels, Counter>,
    pub messages_acked: Family<GroupLabels, Counter>,
    pub messages_dead_lettered: Family<GroupLabels, Counter>,
    pub timer_messages_delivered: Counter,
    pub send_latency: Histogram,
    pub commitlog_min_offset: Gauge,
    pub commitlog_written_offset: Gauge,
    pub commitlog_flushed_offset: Gauge,
    pub commitlog_dispatched_offset: Gauge,
    pub consumequeue_queues: Gauge,
    pub consumequeue_open_files: Gauge,
    pub consumequeue_file_opens: Gauge,
    pub consumequeue_waiting_queues: Gauge,
    pub checkpoint_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Totals over all topics (for RocketMQ's runtime info; not exported twice).
    pub put_total: Counter,
    pub get_total: Counter,
    extra: parking_lot::RwLock<Vec<ExtraMetrics>>,
    /// Message counters per topic and per (topic, group); else one series each.
    per_topic: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(true)
    }
}

impl Metrics {
    /// `per_topic`: the message counters have a series per topic and per (topic, group);
    /// without, one series each, with empty labels (Prometheus reads an empty label as none),
    /// so that a node with tens of thousands of topics exports a few hundred series.
    pub fn new(per_topic: bool) -> Self {
        let mut registry = Registry::with_prefix("rocketmq");
        let m = Metrics {
            messages_sent: Family::default(),
            send_errors: Family::default(),
            messages_received: Family::default(),
            messages_redelivered: Family::default(),
            messages_acked: Family::default(),
            messages_dead_lettered: Family::default(),
            timer_messages_delivered: Counter::default(),
            // 50 us .. ~3 s
            send_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            commitlog_min_offset: Gauge::default(),
            commitlog_written_offset: Gauge::default(),
            commitlog_flushed_offset: Gauge::default(),
            commitlog_dispatched_offset: Gauge::default(),
            consumequeue_queues: Gauge::default(),
            consumequeue_open_files: Gauge::default(),
            consumequeue_file_opens: Gauge::default(),
            consumequeue_waiting_queues: Gauge::default(),
            checkpoint_seconds: Gauge::default(),
            registry: Registry::default(),
            put_total: Counter::default(),
            get_total: Counter::default(),
            extra: Default::default(),
            per_topic,
        };
        registry.register(
            "messages_sent",
            "Messages stored by SendMessage",
            m.messages_sent.clone(),
        );
        registry.register(
            "send_errors",
            "SendMessage calls that failed",
            m.send_errors.clone(),
        );
        registry.register(
            "messages_received",
            "Messages handed out by ReceiveMessage",
            m.messages_received.clone(),
        );
        registry.register(
            "messages_redelivered",
            "Deliveries after the first (invisible time expired or nacked)",
            m.messages_redelivered.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages acknowledged",
            m.messages_acked.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages moved to a dead-letter queue",
            m.messages_dead_lettered.clone(),
        );
        registry.register(
            "timer_messages_delivered",
            "Delay messages moved to their topic when due",
            m.timer_messages_delivered.clone(),
        );
        registry.register(
            "send_latency_seconds",
            "Time to store a send batch under the flush policy",
            m.send_latency.clone(),
        );
        registry.register(
            "commitlog_min_offset",
            "First CommitLog byte held locally",
            m.commitlog_min_offset.clone(),
        );
        registry.register(
            "commitlog_written_offset",
            "End of the CommitLog",
            m.commitlog_written_offset.clone(),
        );
        registry.register(
            "commitlog_flushed_offset",
            "Durable end of the CommitLog",
            m.commitlog_flushed_offset.clone(),
        );
        registry.register(
            "commitlog_dispatched_offset",
            "CommitLog offset up to which ConsumeQueues and indexes are built",
            m.commitlog_dispatched_offset.clone(),
        );
        registry.register(
            "consumequeue_queues",
            "ConsumeQueues opened since start",
            m.consumequeue_queues.clone(),
        );
        registry.register(
            "consumequeue_open_files",
            "ConsumeQueue files open now (bounded by consumeQueueOpenFiles)",
            m.consumequeue_open_files.clone(),
        );
        registry.register(
            "consumequeue_file_opens",
            "ConsumeQueue files opened since start (descriptor cache misses)",
            m.consumequeue_file_opens.clone(),
        );
        registry.register(
            "consumequeue_waiting_queues",
            "ConsumeQueues whose newest entries wait in memory for their file (written at the next queue sync)",
            m.consumequeue_waiting_queues.clone(),
        );
        registry.register(
            "checkpoint_seconds",
            "Duration of the last checkpoint (queue, index and offset sync)",
            m.checkpoint_seconds.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// Another component's metrics, in the text exposition format (ending with `# EOF`).
pub type ExtraMetrics = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

impl Metrics {
    /// The text exposition format, with the metrics of components added by
    /// [`Metrics::add_source`] (the tier, for one).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        for extra in self.extra.read().iter() {
            let text = extra();
            if let Some(body) = out.strip_suffix("# EOF\n") {
                out = format!("{body}{text}");
            }
        }
        out
    }

    pub fn add_source(&self, source: ExtraMetrics) {
        self.extra.write().push(source);
    }
}

impl Metrics {
    /// The labels of a topic's series.
    pub fn topic(&self, t: &str) -> TopicLabel {
        TopicLabel {
            topic: if self.per_topic { t } else { "" }.to_owned(),
        }
    }

    /// The labels of a (topic, group) series.
    pub fn group(&self, t: &str, g: &str) -> GroupLabels {
        let (topic, group) = if self.per_topic { (t, g) } else { ("", "") };
        GroupLabels {
            topic: topic.to_owned(),
            group: group.to_owned(),
        }
    }
}
