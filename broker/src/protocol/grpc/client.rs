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

/// A request carrying the headers the official clients send: `x-mq-client-id` (every RPC
/// needs it), and the language, protocol and client version that Apache's proxy reads.
pub fn request<T>(message: T, client_id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    let md = r.metadata_mut();
    if let Ok(v) = client_id.parse() {
        md.insert("x-mq-client-id", v);
    }
    md.insert(
        "x-mq-language",
        tonic::metadata::MetadataValue::from_static("RUST"),
    );
    md.insert(
        "x-mq-protocol",
        tonic::metadata::MetadataValue::from_static("v2"),
    );
    md.insert(
        "x-mq-client-version",
        tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")),
    );
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

/// The `authorization` and `x-mq-date-time` headers a signed request carries (RocketMQ ACL
/// 2.0, as the official clients sign), dated now.
pub fn auth_headers(creds: &crate::auth::guard::Credentials) -> [(&'static str, String); 2] {
    let now = crate::store::commitlog::now_millis() / 1000;
    let date = jiff::Timestamp::from_second(now)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_default();
    let signature = crate::auth::grpc_signature(&creds.secret_key, &date);
    [
        (
            crate::auth::AUTHORIZATION,
            format!(
                "{} Credential={}, SignedHeaders={}, Signature={signature}",
                crate::auth::ALGORITHM,
                creds.access_key,
                crate::auth::DATE_TIME
            ),
        ),
        (crate::auth::DATE_TIME, date),
    ]
}

/// Signs a gRPC request.
pub fn sign<T>(r: &mut tonic::Request<T>, creds: &crate::auth::guard::Credentials) {
    for (k, v) in auth_headers(creds) {
        if let Ok(v) = v.parse() {
            r.metadata_mut().insert(k, v);
        }
    }
}
