//! The official Python client (PyPI `rocketmq-python-client`, installed by
//! `scripts/setup-clients.sh`) against the real `rmq-broker standalone` on loopback.
//! The client side of each scenario is `tests/clients/python_client.py`.

mod common;

use common::clients::{self, Client, check_send_receive_ack, strings};
use common::process::BrokerProcess;
use serde_json::Value;

fn run(broker: &BrokerProcess, args: &[&str], env: &[(&str, &str)]) -> Value {
    clients::run(Client::Python, broker, args, env)
}

#[test]
fn python_send_receive_ack() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--topic", "PyTopic:4"]);
    let v = run(&broker, &["send_receive_ack", "PyTopic", "PyGroup"], &[]);
    check_send_receive_ack(&v);
    clients::record(Client::Python, "send");
    clients::record(Client::Python, "simple");
}

#[test]
fn python_unacked_is_redelivered_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["--topic", "RetryTopic:1", "--group", "RetryGroup:2"],
    );
    let sent = strings(&run(&broker, &["send", "RetryTopic", "RetryGroup", "1"], &[])["sent"]);
    let quick = [
        ("RMQ_INVISIBLE_SECS", "2"),
        ("RMQ_RECEIVE_DEADLINE_SECS", "20"),
    ];
    let first = run(
        &broker,
        &["receive_no_ack", "RetryTopic", "RetryGroup", "1"],
        &quick,
    );
    assert_eq!(first["received"][0]["id"], sent[0].as_str());
    assert_eq!(first["received"][0]["attempt"], 1);
    // Not acked: visible again after its invisible time, with the next attempt number.
    let second = run(
        &broker,
        &["receive_no_ack", "RetryTopic", "RetryGroup", "1"],
        &quick,
    );
    assert_eq!(second["received"][0]["id"], sent[0].as_str());
    assert_eq!(second["received"][0]["attempt"], 2);
    // Attempts used up (max 2): the next receive moves it to %DLQ%RetryGroup instead.
    let none = run(
        &broker,
        &["receive_no_ack", "RetryTopic", "RetryGroup", "1"],
        &[
            ("RMQ_INVISIBLE_SECS", "2"),
            ("RMQ_RECEIVE_DEADLINE_SECS", "8"),
        ],
    );
    assert_eq!(none["received"].as_array().unwrap().len(), 0, "{none}");
    let dlq = run(
        &broker,
        &["receive_ack", "%DLQ%RetryGroup", "DlqReader", "1"],
        &quick,
    );
    assert_eq!(dlq["received"][0]["id"], sent[0].as_str(), "{dlq}");
    clients::record(Client::Python, "dlq");
}

#[test]
fn python_acked_progress_survives_a_broker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["--topic", "KillTopic:2", "--flush-policy", "SYNC_FLUSH"],
    );
    let sent = strings(&run(&broker, &["send", "KillTopic", "KillGroup", "6"], &[])["sent"]);
    let first = run(
        &broker,
        &["receive_some", "KillTopic", "KillGroup", "6", "3"],
        &[("RMQ_INVISIBLE_SECS", "60")],
    );
    let acked = strings(&first["acked"]);
    assert_eq!(strings(&first["received"]).len(), 6);
    broker.kill_and_restart(); // SIGKILL in the middle of the consume
    let quick = [
        ("RMQ_INVISIBLE_SECS", "30"),
        ("RMQ_RECEIVE_DEADLINE_SECS", "20"),
    ];
    let again = run(
        &broker,
        &["receive_ack", "KillTopic", "KillGroup", "3"],
        &quick,
    );
    let mut redelivered: Vec<String> = again["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> = sent
        .iter()
        .filter(|id| !acked.contains(id))
        .cloned()
        .collect();
    redelivered.sort();
    expected.sort();
    assert_eq!(
        redelivered, expected,
        "exactly the unacked messages come back"
    );
    let rest = run(
        &broker,
        &["receive_no_ack", "KillTopic", "KillGroup", "1"],
        &[("RMQ_RECEIVE_DEADLINE_SECS", "6")],
    );
    assert_eq!(
        rest["received"].as_array().unwrap().len(),
        0,
        "acked messages never come back: {rest}"
    );
    clients::record(Client::Python, "restart");
}

#[test]
fn python_errors_for_unknown_topic_and_oversized_body() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--topic", "ErrTopic:1"]);
    let v = run(&broker, &["unknown_topic", "NoSuchTopic", "G"], &[]);
    let err = v["error"]
        .as_str()
        .expect("sending to an unknown topic fails");
    assert!(err.contains("NoSuchTopic"), "{err}");
    let v = run(&broker, &["oversized", "ErrTopic", "G"], &[]);
    let err = v["error"].as_str().expect("a 5 MiB body is refused");
    assert!(
        err.contains("4194304"),
        "the limit comes from the broker's settings: {err}"
    );
    clients::record(Client::Python, "errors");
}
