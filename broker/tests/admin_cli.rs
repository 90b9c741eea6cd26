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
    // Many groups in one request; a bad one refuses the whole request.
    let post = |body: serde_json::Value| {
        ureq::post(&format!("http://{}/admin/groups", b.http))
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(body)
            .unwrap()
    };
    let mut r = post(serde_json::json!([{"name": "BatchA"}, {"name": "BatchB", "fifo": true}]));
    assert_eq!(
        r.status(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    let mut r =
        post(serde_json::json!([{"name": "BatchC"}, {"name": "Bad", "maxDeliveryAttempts": 0}]));
    assert_eq!(r.status(), 400);
    let body = r.body_mut().read_to_string().unwrap();
    assert!(
        body.contains("max delivery attempts must be 1 to 1000"),
        "{body}"
    );
    let groups = get(&format!("http://{}/admin/groups", b.http));
    assert!(
        groups.contains("BatchA") && groups.contains("BatchB") && !groups.contains("BatchC"),
        "{body}\n{groups}"
    );

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

#[test]
fn config_file_is_read_and_bad_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "store:\n  flushPolicy: SYNC_FLUSH\n  segmentSize: 1048576\nbroker:\n  autoCreateTopics: false\n\
         topics:\n  - name: FromFile\n    queues: 3\n    messageType: FIFO\ngroups:\n  - name: FileGroup\n    maxDeliveryAttempts: 4\n    fifo: true\n",
    )
    .unwrap();
    let b = BrokerProcess::start(
        &dir.path().join("data"),
        &["--config", good.to_str().unwrap()],
    );
    let (ok, out) = admin(&b, &["topic", "FromFile"]);
    assert!(
        ok && out.contains("\"queues\": 3") && out.contains("FIFO"),
        "{out}"
    );
    let (ok, out) = admin(&b, &["groups"]);
    assert!(
        ok && out.contains("FileGroup") && out.contains("\"maxDeliveryAttempts\": 4"),
        "{out}"
    );
    drop(b);

    for (text, names) in [
        ("store:\n  segmentSise: 1024\n", "segmentSise"),
        ("store:\n  segmentSize: 1024\n", "segmentSize"),
        ("store:\n  flushPolicy: SOMETIMES\n", "SOMETIMES"),
        ("grpcListen: not-an-address\n", "grpcListen"),
    ] {
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rmq-broker"))
            .args([
                "standalone",
                "--config",
                bad.to_str().unwrap(),
                "--data-dir",
            ])
            .arg(dir.path().join("unused"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(
            err.contains(names),
            "the error for {text:?} names the field: {err}"
        );
    }
}
