//! The roles the `rmq-broker` binary can run.

pub mod namesrv;
pub mod proxy;
pub mod standalone;
pub mod store;
