//! The official Rust client (crates.io `rocketmq` 5.0.0, built by `scripts/setup-clients.sh`)
//! against the real `rmq-broker standalone` on loopback. The client side is
//! `tests/clients/rust/src/main.rs`.

mod common;

use common::clients::{self, Client, check_send_receive_ack};
use common::process::BrokerProcess;

#[test]
fn rust_send_receive_ack() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--topic", "RustTopic:4"]);
    let v = clients::run(
        Client::Rust,
        &broker,
        &["send_receive_ack", "RustTopic", "RustGroup"],
        &[],
    );
    check_send_receive_ack(&v);
    clients::record(Client::Rust, "send");
    clients::record(Client::Rust, "simple");
}
