//! What each gRPC request touches, for authorization (Apache's proxy checks the same):
//! sends and transaction ends publish to their topics; receives, acks, offsets and the like
//! subscribe to the topic and the consumer group; a route lookup needs either.

use super::pb;
use crate::auth::guard::{PUB, PUB_OR_SUB, SUB, Want};

fn name(r: &Option<pb::Resource>) -> &str {
    r.as_ref().map_or("", |r| r.name.as_str())
}

fn queue_topic(q: &Option<pb::MessageQueue>) -> &str {
    q.as_ref().map_or("", |q| name(&q.topic))
}

/// The resources a request touches and the actions that allow it.
pub trait Wants {
    fn wants(&self) -> Vec<Want>;
}

fn sub(topic: &str, group: &str) -> Vec<Want> {
    vec![Want::topic(topic, SUB), Want::group(group, SUB)]
}

impl Wants for pb::QueryRouteRequest {
    fn wants(&self) -> Vec<Want> {
        vec![Want::topic(name(&self.topic), PUB_OR_SUB)]
    }
}

impl Wants for pb::HeartbeatRequest {
    fn wants(&self) -> Vec<Want> {
        match &self.group {
            Some(g) if !g.name.is_empty() => vec![Want::group(&g.name, SUB)],
            _ => vec![],
        }
    }
}

impl Wants for pb::SendMessageRequest {
    fn wants(&self) -> Vec<Want> {
        let mut topics: Vec<&str> = self.messages.iter().map(|m| name(&m.topic)).collect();
        topics.sort_unstable();
        topics.dedup();
        topics.into_iter().map(|t| Want::topic(t, PUB)).collect()
    }
}

impl Wants for pb::QueryAssignmentRequest {
    fn wants(&self) -> Vec<Want> {
        sub(name(&self.topic), name(&self.group))
    }
}

impl Wants for pb::ReceiveMessageRequest {
    fn wants(&self) -> Vec<Want> {
        sub(queue_topic(&self.message_queue), name(&self.group))
    }
}

impl Wants for pb::AckMessageRequest {
    fn wants(&self) -> Vec<Want> {
        sub(name(&self.topic), name(&self.group))
    }
}

impl Wants for pb::ForwardMessageToDeadLetterQueueRequest {
    fn wants(&self) -> Vec<Want> {
        sub(name(&self.topic), name(&self.group))
    }
}

impl Wants for pb::ChangeInvisibleDurationRequest {
    fn wants(&self) -> Vec<Want> {
        sub(name(&self.topic), name(&self.group))
    }
}

impl Wants for pb::EndTransactionRequest {
    fn wants(&self) -> Vec<Want> {
        vec![Want::topic(name(&self.topic), PUB)]
    }
}

impl Wants for pb::NotifyClientTerminationRequest {
    fn wants(&self) -> Vec<Want> {
        match &self.group {
            Some(g) if !g.name.is_empty() => vec![Want::group(&g.name, SUB)],
            _ => vec![],
        }
    }
}

impl Wants for pb::PullMessageRequest {
    fn wants(&self) -> Vec<Want> {
        sub(queue_topic(&self.message_queue), name(&self.group))
    }
}

impl Wants for pb::UpdateOffsetRequest {
    fn wants(&self) -> Vec<Want> {
        sub(queue_topic(&self.message_queue), name(&self.group))
    }
}

impl Wants for pb::GetOffsetRequest {
    fn wants(&self) -> Vec<Want> {
        sub(queue_topic(&self.message_queue), name(&self.group))
    }
}

impl Wants for pb::QueryOffsetRequest {
    fn wants(&self) -> Vec<Want> {
        vec![Want::topic(queue_topic(&self.message_queue), SUB)]
    }
}

impl Wants for pb::RecallMessageRequest {
    fn wants(&self) -> Vec<Want> {
        vec![Want::topic(name(&self.topic), PUB)]
    }
}

impl Wants for pb::SyncLiteSubscriptionRequest {
    fn wants(&self) -> Vec<Want> {
        sub(name(&self.topic), name(&self.group))
    }
}

/// What a Telemetry settings command declares: the topics a producer publishes to, or the
/// group and topics a consumer subscribes to.
pub fn settings_wants(s: &pb::Settings) -> Vec<Want> {
    match &s.pub_sub {
        Some(pb::settings::PubSub::Publishing(p)) => {
            p.topics.iter().map(|t| Want::topic(&t.name, PUB)).collect()
        }
        Some(pb::settings::PubSub::Subscription(sub)) => {
            let mut w: Vec<Want> = sub
                .subscriptions
                .iter()
                .map(|e| Want::topic(name(&e.topic), SUB))
                .collect();
            if let Some(g) = &sub.group {
                w.push(Want::group(&g.name, SUB));
            }
            w
        }
        None => vec![],
    }
}
