//! Cluster mode over the remoting protocol, black box: `rmq-broker namesrv` and
//! `rmq-broker store` processes on loopback, driven by software no one here wrote: the Java
//! `rocketmq-client` 4.9.8 (`tests/clients/RemotingClient.java`), the Go
//! `rocketmq-client-go/v2` (`tests/clients/go-remoting`) and mqadmin from `rocketmq-tools`
//! 5.4.0, all with default settings.

mod common;

use std::collections::BTreeSet;

use common::clients::strings;
use common::remoting::{self, Cluster, JavaClient};
use serde_json::Value;

fn sorted(v: &Value) -> Vec<String> {
    let mut s = strings(v);
    s.sort();
    s
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    v.sort();
    v
}

#[test]
fn java_remoting_client_scenarios() {
    let cluster = Cluster::start(1, &[("broker-a", &["--auto-create-topics"])]);

    // Sends auto-create the topic (through TBW102's route), a push consumer gets them all.
    let v = remoting::java(&cluster, &["send_push", "JPush", "JPushGroup"]);
    assert_eq!(sorted(&v["received"]), numbered("m", 20), "{v}");
    assert!(strings(&v["send_status"]).iter().all(|s| s == "SEND_OK"));
    assert_eq!(v["msg_ids_match"], true, "{v}");

    let v = remoting::java(&cluster, &["tag_filter", "JTags", "JTagsGroup"]);
    assert_eq!(sorted(&v["received"]), numbered("a", 10), "{v}");

    // Ordered consumption: queue locks, one queue per order id, each order in sequence.
    let v = remoting::java(&cluster, &["orderly", "JOrder", "JOrderGroup"]);
    let expected: Vec<i64> = (0..10).collect();
    for order in ["0", "1", "2"] {
        let got: Vec<i64> = v["orders"][order]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(got, expected, "order {order}: {v}");
    }

    let v = remoting::java(&cluster, &["broadcast", "JCast", "JCastGroup"]);
    assert_eq!(sorted(&v["consumer1"]), numbered("m", 10), "{v}");
    assert_eq!(sorted(&v["consumer2"]), numbered("m", 10), "{v}");

    let v = remoting::java(&cluster, &["lite_pull", "JLite", "JLiteGroup"]);
    assert_eq!(sorted(&v["received"]), numbered("m", 20), "{v}");

    // RECONSUME_LATER: sent back, redelivered from the retry topic after delay level 3
    // (10 s), with the original topic restored.
    let v = remoting::java(&cluster, &["retry", "JRetry", "JRetryGroup"]);
    let redelivered = v["redelivered"].as_array().unwrap();
    assert_eq!(redelivered.len(), 3, "{v}");
    for r in redelivered {
        assert_eq!(r["reconsume_times"], 1, "{v}");
        assert_eq!(r["topic"], "JRetry", "{v}");
        let delay = r["delay_ms"].as_i64().unwrap();
        assert!((9_000..30_000).contains(&delay), "{v}");
    }
}

/// The same driver on the 5.x Java client (`rocketmq-client` 5.4.0), whose lite pull consumer
/// uses LITE_PULL_MESSAGE.
#[test]
fn java_5x_remoting_client_scenarios() {
    let cluster = Cluster::start(1, &[("broker-a", &["--auto-create-topics"])]);
    let v = remoting::java_with(
        JavaClient::V5,
        &cluster,
        &["send_push", "J5Push", "J5PushGroup"],
    );
    assert_eq!(sorted(&v["received"]), numbered("m", 20), "{v}");
    assert_eq!(v["msg_ids_match"], true, "{v}");
    let v = remoting::java_with(
        JavaClient::V5,
        &cluster,
        &["orderly", "J5Order", "J5OrderGroup"],
    );
    let expected: Vec<i64> = (0..10).collect();
    for order in ["0", "1", "2"] {
        let got: Vec<i64> = v["orders"][order]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(got, expected, "order {order}: {v}");
    }
    let v = remoting::java_with(
        JavaClient::V5,
        &cluster,
        &["lite_pull", "J5Lite", "J5LiteGroup"],
    );
    assert_eq!(sorted(&v["received"]), numbered("m", 20), "{v}");
}

#[test]
fn go_remoting_client_scenarios() {
    let cluster = Cluster::start(
        1,
        &[("broker-a", &["--topic", "GoPush:4", "--topic", "GoOrder:4"])],
    );
    let v = remoting::go(&cluster, &["send_push", "GoPush", "GoPushGroup"]);
    assert_eq!(sorted(&v["received"]), numbered("m", 20), "{v}");
    let v = remoting::go(&cluster, &["orderly", "GoOrder", "GoOrderGroup"]);
    let expected: Vec<i64> = (0..10).collect();
    for order in ["0", "1", "2"] {
        let got: Vec<i64> = v["orders"][order]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(got, expected, "order {order}: {v}");
    }
}

#[test]
fn mqadmin_manages_the_cluster() {
    let cluster = Cluster::start(1, &[("broker-a", &[]), ("broker-b", &[])]);
    let ns = cluster.namesrv();
    let out = remoting::mqadmin(
        &cluster,
        &[
            "updateTopic",
            "-n",
            &ns,
            "-c",
            "DefaultCluster",
            "-t",
            "AdminTopic",
            "-r",
            "4",
            "-w",
            "4",
        ],
    );
    assert_eq!(out.matches("create topic to").count(), 2, "{out}");
    cluster.wait_registered(2);

    let out = remoting::mqadmin(&cluster, &["topicList", "-n", &ns]);
    assert!(out.lines().any(|l| l.trim() == "AdminTopic"), "{out}");
    let out = remoting::mqadmin(&cluster, &["topicRoute", "-n", &ns, "-t", "AdminTopic"]);
    assert!(
        out.contains("broker-a") && out.contains("broker-b"),
        "{out}"
    );
    let out = remoting::mqadmin(&cluster, &["clusterList", "-n", &ns]);
    assert!(
        out.contains("DefaultCluster") && out.contains("broker-b"),
        "{out}"
    );

    let v = remoting::java(&cluster, &["send_push", "AdminTopic", "AdminGroup"]);
    assert_eq!(sorted(&v["received"]), numbered("m", 20), "{v}");
    let queues: BTreeSet<String> = strings(&v["queues"])
        .into_iter()
        .map(|q| q.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        queues,
        BTreeSet::from(["broker-a".into(), "broker-b".into()]),
        "{v}"
    );
    let out = remoting::mqadmin(
        &cluster,
        &["consumerProgress", "-n", &ns, "-g", "AdminGroup"],
    );
    assert!(out.contains("AdminTopic"), "{out}");
    assert!(out.contains("Diff Total: 0"), "{out}");
}

/// Killing a name server or a store node (kill -9, then restart) loses no acknowledged
/// message under SYNC_FLUSH, and the clients recover by themselves.
#[test]
fn a_topic_on_two_stores_survives_killed_nodes() {
    let store_flags: &[&str] = &["--topic", "Spread:4", "--flush-policy", "SYNC_FLUSH"];
    let mut cluster = Cluster::start(2, &[("broker-a", store_flags), ("broker-b", store_flags)]);

    let v = remoting::java(&cluster, &["produce", "Spread", "SpreadGroup", "40", "a"]);
    assert_eq!(v["sent"], 40, "{v}");

    // One name server down: clients use the other.
    cluster.namesrvs[0].kill();
    let v = remoting::java(&cluster, &["produce", "Spread", "SpreadGroup", "40", "b"]);
    assert_eq!(v["sent"], 40, "{v}");
    cluster.namesrvs[0].restart();
    cluster.wait_registered(2);

    // One store node killed: sends move to the other; after its restart, nothing it
    // acknowledged is missing.
    cluster.stores[1].kill();
    let v = remoting::java(&cluster, &["produce", "Spread", "SpreadGroup", "40", "c"]);
    assert_eq!(v["sent"], 40, "{v}");
    cluster.stores[1].restart();
    cluster.wait_registered(2);

    let v = remoting::java(&cluster, &["consume", "Spread", "SpreadGroup", "120"]);
    let got: BTreeSet<String> = strings(&v["received"]).into_iter().collect();
    let mut want = BTreeSet::new();
    for p in ["a", "b", "c"] {
        want.extend(numbered(p, 40));
    }
    assert_eq!(got, want, "{v}");
}

/// Hostile input on a live store node: random bytes, huge length prefixes, truncated and
/// overrunning headers, and well-formed frames with random codes and fields. Each gets an
/// error response or a closed connection; the node keeps serving. `RMQ_FUZZ_CASES` sets the
/// number of connections (default 300; CI runs the default, a longer soak can raise it).
#[test]
fn hostile_frames_never_take_a_store_node_down() {
    use broker::protocol::remoting::codec::{self, RemotingCommand, SerializeType};
    use std::io::{Read, Write};
    use std::time::Duration;

    let cluster = Cluster::start(1, &[("broker-a", &["--topic", "Fuzz:2"])]);
    let addr = cluster.stores[0].addr;
    let mut rng = common::Rng(common::seed());
    let cases: usize = std::env::var("RMQ_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let codes = [
        10, 11, 14, 15, 17, 21, 28, 29, 30, 31, 33, 34, 35, 36, 37, 38, 41, 42, 200, 208, 310, 320,
        351, 200050, 200051, 200053, 9999, -1,
    ];
    let names = [
        "topic",
        "queueId",
        "b",
        "e",
        "consumerGroup",
        "queueOffset",
        "maxMsgNums",
        "sysFlag",
        "offset",
        "group",
        "extraInfo",
        "invisibleTime",
        "commitLogOffset",
        "commitOrRollback",
    ];
    let mut answered = 0;
    for _ in 0..cases {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut out = Vec::new();
        let expect_answer = match rng.below(5) {
            0 => {
                let n = rng.below(4096) as usize;
                out.extend((0..n).map(|_| rng.next() as u8));
                false
            }
            1 => {
                out.extend_from_slice(&(0x7000_0000u32 + rng.below(1 << 20) as u32).to_be_bytes());
                out.extend((0..64).map(|_| rng.next() as u8));
                false
            }
            2 => {
                // Header length beyond the frame.
                out.extend_from_slice(&12u32.to_be_bytes());
                out.extend_from_slice(&(1000 + rng.below(1 << 20) as u32).to_be_bytes());
                out.extend_from_slice(&[b'{'; 8]);
                false
            }
            3 => {
                let mut ext = std::collections::HashMap::new();
                for _ in 0..rng.below(6) {
                    let k = names[rng.below(names.len() as u64) as usize];
                    let v = match rng.below(3) {
                        0 => "Fuzz".to_owned(),
                        1 => (rng.next() as i64).to_string(),
                        _ => String::from_utf8_lossy(&[rng.next() as u8; 3]).into_owned(),
                    };
                    ext.insert(k.to_owned(), v);
                }
                let cmd = RemotingCommand {
                    code: codes[rng.below(codes.len() as u64) as usize],
                    language: "JAVA".into(),
                    version: 0,
                    opaque: rng.next() as i32,
                    flag: 0,
                    remark: None,
                    ext_fields: ext,
                    serialize_type: if rng.below(2) == 0 {
                        SerializeType::Json
                    } else {
                        SerializeType::RocketMq
                    },
                    body: (0..rng.below(256)).map(|_| rng.next() as u8).collect(),
                };
                let mut buf = bytes::BytesMut::new();
                codec::encode(&cmd, &mut buf);
                out.extend_from_slice(&buf);
                true
            }
            _ => {
                // A JSON header cut short.
                let header = br#"{"code":10,"extFields":{"topic":"Fu"#;
                out.extend_from_slice(&((4 + header.len() + 10) as u32).to_be_bytes());
                out.extend_from_slice(&(header.len() as u32 + 10).to_be_bytes());
                out.extend_from_slice(header);
                false
            }
        };
        if s.write_all(&out).is_err() {
            continue;
        }
        if expect_answer {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_ok() {
                answered += 1;
            }
        } else {
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    eprintln!("{cases} hostile connections, {answered} well-formed frames answered");
    // Still serving, and the process is alive.
    let info = remoting::cluster_info(&cluster.namesrv()).expect("name server answers");
    assert_eq!(info.broker_addr_table.len(), 1);
    let v = remoting::java(&cluster, &["produce", "Fuzz", "FuzzGroup", "5"]);
    assert_eq!(v["sent"], 5, "{v}");
    assert!(answered > 0, "no well-formed frame was answered");
}

/// A store node's `/readyz` says 503 until a name server has its registration (what a rolling
/// restart waits for), then 200.
#[test]
fn a_store_node_is_ready_once_a_name_server_has_it() {
    use common::process::BrokerProcess;
    let dir = tempfile::tempdir().unwrap();
    // A name server's address, with nothing listening there yet.
    let mut namesrv = BrokerProcess::start_role("namesrv", &dir.path().join("namesrv"), &[]);
    let namesrv_addr = namesrv.endpoint();
    namesrv.kill();
    let store = BrokerProcess::start_role(
        "store",
        &dir.path().join("store"),
        &["--broker-name", "ready-a", "--namesrv", &namesrv_addr],
    );
    let readyz = || {
        let mut r = ureq::get(&format!("http://{}/readyz", store.http))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, body) = readyz();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not registered"), "{body}");
    namesrv.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while readyz().0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "still not ready: {:?}\n{}",
            readyz(),
            store.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
