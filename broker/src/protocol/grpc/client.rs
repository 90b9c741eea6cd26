//! Small helpers for building requests with the generated client (used by `rmq-broker admin`
//! and `rmq-bench`).

use std::time::Duration;

use super::pb;

/// A topic or group name in no namespace.
pub fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.to_owned(),
    })
}

/// A request carrying the `x-mq-client-id` header every RPC needs.
pub fn request<T>(message: T, client_id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = client_id.parse() {
        r.metadata_mut().insert("x-mq-client-id", v);
    }
    r
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A pop receive of up to `batch` messages from any queue of `topic`.
pub fn receive_request(
    topic: &str,
    group: &str,
    batch: i32,
    invisible: Duration,
    long_polling: Duration,
) -> pb::ReceiveMessageRequest {
    pb::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(pb::MessageQueue {
            topic: resource(topic),
            id: -1,
            ..Default::default()
        }),
        filter_expression: Some(pb::FilterExpression {
            r#type: pb::FilterType::Tag as i32,
            expression: "*".into(),
        }),
        batch_size: batch,
        invisible_duration: Some(duration(invisible)),
        auto_renew: false,
        long_polling_timeout: Some(duration(long_polling)),
        attempt_id: None,
    }
}
