//! The official Java client (Maven `rocketmq-client-java`, installed by
//! `scripts/setup-clients.sh`) with its default settings, which means TLS, against the real
//! `rmq-broker standalone` on loopback. The client side is `tests/clients/JavaClient.java`.

mod common;

use common::clients::{self, Client, check_send_receive_ack};
use common::process::BrokerProcess;

#[test]
fn java_simple_consumer_over_default_tls() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--topic", "JavaTopic:4"]);
    let v = clients::run(
        Client::Java,
        &broker,
        &["send_receive_ack", "JavaTopic", "JavaGroup"],
        &[],
    );
    check_send_receive_ack(&v);
}

#[test]
fn java_push_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--topic", "JavaPush:4"]);
    let v = clients::run(
        Client::Java,
        &broker,
        &["push", "JavaPush", "JavaPushGroup"],
        &[],
    );
    check_send_receive_ack(&v);
}
