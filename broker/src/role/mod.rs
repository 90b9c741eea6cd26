//! The roles the `rmq-broker` binary can run.

pub mod standalone;
