//! The roles the `rmq-broker` binary can run.

pub mod namesrv;
pub mod standalone;
pub mod store;
