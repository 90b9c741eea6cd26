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
    clients::record(Client::Java, "send");
    clients::record(Client::Java, "simple");
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
    clients::record(Client::Java, "push");
}

fn bodies(v: &serde_json::Value) -> Vec<String> {
    common::clients::strings(&v["received"])
}

#[test]
fn java_fifo_message_group_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &[
            "--topic",
            "JavaFifo:4:FIFO",
            "--group",
            "JavaFifoGroup:16:fifo",
        ],
    );
    let v = clients::run(
        Client::Java,
        &broker,
        &["fifo", "JavaFifo", "JavaFifoGroup"],
        &[],
    );
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&v), expected);
    clients::record(Client::Java, "fifo");
}

#[test]
fn java_delay_messages_arrive_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--topic", "JavaDelay:2:DELAY"]);
    let v = clients::run(
        Client::Java,
        &broker,
        &["delay", "JavaDelay", "JavaDelayGroup"],
        &[],
    );
    let mut got = bodies(&v);
    got.sort();
    assert_eq!(got, ["d0", "d1", "d2"]);
    assert!(
        v["early_ms"].as_i64().unwrap() <= 0,
        "received before the delivery time: {v}"
    );
    clients::record(Client::Java, "delay");
}

#[test]
fn java_transactions_commit_rollback_and_check_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &[
            "--topic",
            "JavaTx:2:TRANSACTION",
            "--transaction-check-interval-ms",
            "2000",
        ],
    );
    let v = clients::run(
        Client::Java,
        &broker,
        &["transaction", "JavaTx", "JavaTxGroup"],
        &[],
    );
    let mut got = bodies(&v);
    got.sort();
    assert_eq!(
        got,
        ["checked", "committed"],
        "the rolled-back one never arrives: {v}"
    );
    clients::record(Client::Java, "transaction");
}
