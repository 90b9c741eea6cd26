//! The command-line tool and the HTTP port (admin API, metrics, health) against the real
//! broker binary.

mod common;

use std::process::Command;

use common::process::BrokerProcess;

fn admin(b: &BrokerProcess, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rmq-broker"))
        .arg("admin")
        .arg("--server")
        .arg(format!("http://{}", b.http))
        .arg("--endpoint")
        .arg(b.endpoint())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

#[test]
fn topics_groups_send_receive_progress_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&dir.path().join("data"), &[]);
    assert_eq!(get(&format!("http://{}/healthz", b.http)), "ok");

    let (ok, out) = admin(&b, &["create-topic", "CliTopic", "--queues", "2"]);
    assert!(ok, "{out}");
    let (ok, out) = admin(&b, &["create-topic", "Bad", "--queues", "0"]);
    assert!(!ok && out.contains("queues"), "a clear error: {out}");
    let (ok, out) = admin(&b, &["create-topic", "Bad", "--type", "SOMETIMES"]);
    assert!(!ok && out.contains("unknown variant"), "{out}");
    let (ok, out) = admin(&b, &["topics"]);
    assert!(
        ok && out.contains("CliTopic") && !out.contains("\"Bad\""),
        "{out}"
    );
    let (ok, out) = admin(
        &b,
        &["create-group", "CliGroup", "--max-delivery-attempts", "3"],
    );
    assert!(ok && out.contains("\"maxDeliveryAttempts\": 3"), "{out}");

    let (ok, out) = admin(
        &b,
        &["send", "CliTopic", "hello from the cli", "--tag", "t1"],
    );
    assert!(ok && out.contains("sent: message id"), "{out}");
    let (ok, out) = admin(&b, &["send", "NoTopic", "x"]);
    assert!(!ok && out.contains("TOPIC_NOT_FOUND"), "{out}");
    let (ok, out) = admin(&b, &["receive", "CliTopic", "CliGroup", "--ack"]);
    assert!(
        ok && out.contains("hello from the cli") && out.contains("acknowledged 1"),
        "{out}"
    );

    let (ok, out) = admin(&b, &["progress", "CliGroup", "CliTopic"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let committed: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["committed"].as_u64().unwrap())
        .sum();
    let lag: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["lag"].as_u64().unwrap())
        .sum();
    assert_eq!((committed, lag), (1, 0), "{out}");

    let metrics = get(&format!("http://{}/metrics", b.http));
    assert!(
        metrics.contains("rocketmq_messages_sent_total{topic=\"CliTopic\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rocketmq_messages_acked_total{topic=\"CliTopic\",group=\"CliGroup\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rocketmq_commitlog_written_offset"),
        "{metrics}"
    );
}
