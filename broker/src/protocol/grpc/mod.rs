//! The RocketMQ 5 gRPC protocol (`apache.rocketmq.v2.MessagingService`).

/// Types generated from `broker/proto/apache/rocketmq/v2/*.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("apache.rocketmq.v2");
}

pub mod auth;
pub mod backend;
pub mod client;
pub mod listener;
pub mod server;
