//! A RocketMQ-compatible message broker. See `shared/ARCHITECTURE.md` for the layer map:
//! `store` owns files, offsets, flush and recovery; the protocol, service and tiering layers
//! build on its public API.

pub mod auth;
pub mod cli;
pub mod controller;
pub mod ha;
pub mod logs;
pub mod protocol;
pub mod role;
pub mod service;
pub mod store;
pub mod tier;
pub mod tls;
