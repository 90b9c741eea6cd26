//! Tiered storage against a real S3-compatible server: `s3s-fs` from crates.io (installed by
//! `scripts/setup-s3.sh`) on loopback, the real `rmq-broker standalone` with small segments
//! and a small hot window, and the official Python client reading from offset 0 after the
//! early segments were evicted locally, before and after a `kill -9`.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::clients::{self, Client, strings};
use common::process::{BrokerProcess, free_port};

struct S3Server {
    child: Child,
    bin: String,
    addr: SocketAddr,
    root: tempfile::TempDir,
}

impl S3Server {
    fn spawn(bin: &str, addr: SocketAddr, root: &std::path::Path) -> Child {
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--access-key", "AK", "--secret-key", "SK"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// The server goes away (kill -9); the objects stay in its folder.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.child = Self::spawn(&self.bin, self.addr, self.root.path());
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_s3(bucket: &str) -> S3Server {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/setup-s3.sh"
        ))
        .output()
        .expect("run scripts/setup-s3.sh");
    assert!(
        out.status.success(),
        "setup-s3.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(bucket)).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = S3Server::spawn(&bin, addr, root.path());
    S3Server {
        child,
        bin,
        addr,
        root,
    }
}

fn metric(http: SocketAddr, name: &str) -> f64 {
    let text = ureq::get(&format!("http://{http}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits until the broker's local CommitLog starts at `bytes` or later (segments evicted).
fn wait_for_eviction(broker: &BrokerProcess, bytes: f64, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while metric(broker.http, "rocketmq_commitlog_min_offset") < bytes {
        assert!(
            Instant::now() < deadline,
            "{what}: uploaded {}, evicted {}\n{}",
            metric(broker.http, "rocketmq_tier_uploaded_segments_total"),
            metric(broker.http, "rocketmq_tier_evicted_segments_total"),
            broker.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `n` messages of about 1 KB with the Python client; returns their ids.
fn send(broker: &BrokerProcess, n: &str) -> BTreeSet<String> {
    let v = clients::run(
        Client::Python,
        broker,
        &["send", "Cold", "G", n, "1000"],
        &[],
    );
    strings(&v["sent"]).into_iter().collect()
}

/// Receives (and acks) up to `n` messages as `group`; returns their ids.
fn receive(broker: &BrokerProcess, group: &str, n: &str, env: &[(&str, &str)]) -> BTreeSet<String> {
    let v = clients::run(
        Client::Python,
        broker,
        &["receive_ack", "Cold", group, n],
        env,
    );
    received_ids(&v)
}

fn received_ids(v: &serde_json::Value) -> BTreeSet<String> {
    v["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn tiered_broker(s3: &S3Server, dir: &std::path::Path) -> BrokerProcess {
    tiered_broker_at(s3.addr, dir)
}

fn tiered_broker_at(endpoint: SocketAddr, dir: &std::path::Path) -> BrokerProcess {
    let config = dir.join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "store:\n  segmentSize: 65536\n  flushPolicy: SYNC_FLUSH\n\
             tier:\n  backend:\n    type: s3\n    bucket: tier\n    endpoint: http://{}\n    pathStyle: true\n    allowHttp: true\n\
             \x20 prefix: standalone-test\n  hotWindowBytes: 65536\n  uploadInterval: 200\n  readAheadBytes: 32768\n",
            endpoint
        ),
    )
    .unwrap();
    let env = [("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")];
    BrokerProcess::start_role_env(
        "standalone",
        &dir.join("data"),
        &["--config", config.to_str().unwrap(), "--topic", "Cold:2"],
        &env,
    )
}

#[test]
fn cold_offsets_are_read_from_s3_by_an_official_client() {
    let s3 = start_s3("tier");
    let dir = tempfile::tempdir().unwrap();
    let mut broker = tiered_broker(&s3, dir.path());
    let sent = send(&broker, "400");
    assert_eq!(sent.len(), 400);

    // The early segments go to S3 and leave the disk.
    wait_for_eviction(&broker, 65536.0 * 3.0, 60, "segments were not evicted");
    assert!(metric(broker.http, "rocketmq_tier_uploaded_bytes_total") >= 65536.0 * 3.0);

    // A new group reads everything from offset 0: the first messages only S3 has.
    assert_eq!(receive(&broker, "G1", "400", &[]), sent);
    assert!(metric(broker.http, "rocketmq_tier_cold_read_bytes_total") > 0.0);

    // kill -9 and restart: the manifest is read back and cold reads still work.
    broker.kill_and_restart();
    assert_eq!(
        receive(&broker, "G2", "400", &[]),
        sent,
        "{}",
        broker.logs()
    );
}

/// The S3 server dies before the uploads: nothing is evicted, uploads fail and are retried,
/// and once the server is back the segments go up, leave the disk, and read back.
#[test]
fn an_unreachable_object_store_never_costs_local_data() {
    let mut s3 = start_s3("tier");
    let dir = tempfile::tempdir().unwrap();
    let broker = tiered_broker(&s3, dir.path());
    s3.stop();
    let sent = send(&broker, "300");
    // Each failed upload first runs through the S3 client's own 10 retries, whose jittered
    // backoff grows to 15 s: one failure takes 1 to about 55 s.
    let deadline = Instant::now() + Duration::from_secs(150);
    while metric(broker.http, "rocketmq_tier_upload_errors_total") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "no failed upload was counted\n{}",
            broker.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(broker.http, "rocketmq_commitlog_min_offset"), 0.0);
    assert_eq!(
        metric(broker.http, "rocketmq_tier_evicted_segments_total"),
        0.0
    );
    assert_eq!(receive(&broker, "G1", "300", &[]), sent);

    s3.restart();
    wait_for_eviction(
        &broker,
        65536.0 * 2.0,
        90,
        "not uploaded after the server came back",
    );
    assert_eq!(receive(&broker, "G2", "300", &[]), sent);
}

/// The data folder is lost: a broker started on an empty folder with the same tier reads its
/// history back from S3 (what was uploaded: the hot tail that never left the disk is gone
/// with it, which replication, not tiering, protects), and new writes continue after it.
#[test]
fn an_empty_data_folder_restores_the_tiered_history() {
    let s3 = start_s3("tier");
    let dir = tempfile::tempdir().unwrap();
    let mut broker = tiered_broker(&s3, dir.path());
    let sent = send(&broker, "400");
    wait_for_eviction(&broker, 65536.0 * 4.0, 60, "segments were not evicted");
    broker.kill();
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    broker.restart();
    let env = [("RMQ_RECEIVE_DEADLINE_SECS", "15")];
    let got = receive(&broker, "G1", "400", &env);
    assert!(got.is_subset(&sent));
    // At least the 4 evicted segments (56 messages of about 1.1 KiB in each 64 KiB segment)
    // come back; segments uploaded but not yet evicted at the kill come back too.
    assert!(
        got.len() >= 4 * 50,
        "only {} of 400 restored\n{}",
        got.len(),
        broker.logs()
    );
    // Writes continue after the restored history and are delivered to the same group.
    let more = send(&broker, "20");
    assert_eq!(receive(&broker, "G1", "20", &env), more);
}

/// A proxy in front of S3 answers every third request with 503 SlowDown or 500
/// InternalError and delays others: uploads, manifests and cold reads retry through it, and every message
/// still reads back from offset 0.
#[test]
fn injected_5xx_and_delays_are_retried() {
    let s3 = start_s3("tier");
    let dir = tempfile::tempdir().unwrap();
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let stats = dir.path().join("fault-stats");
    let mut proxy = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/s3_fault_proxy.py"
        ))
        .args([
            &proxy_addr.port().to_string(),
            &s3.addr.port().to_string(),
            "3",
            "200",
        ])
        .arg(&stats)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the fault proxy");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(proxy_addr).is_err() {
        assert!(Instant::now() < deadline, "the fault proxy did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let broker = tiered_broker_at(proxy_addr, dir.path());
    let sent = send(&broker, "300");
    wait_for_eviction(
        &broker,
        65536.0 * 3.0,
        120,
        "not evicted through the faulty proxy",
    );
    assert_eq!(receive(&broker, "G1", "300", &[]), sent);
    let text = std::fs::read_to_string(&stats).unwrap_or_default();
    let faults: u64 = text
        .split_whitespace()
        .skip_while(|w| *w != "faults")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = proxy.kill();
    let _ = proxy.wait();
    eprintln!("fault proxy: {text}");
    assert!(
        faults >= 3,
        "too few faults were injected to test anything: {text}"
    );
}

/// The YAML tier section of a store node whose objects live under `prefix`.
fn tier_yaml(s3: &S3Server, prefix: &str, indent: &str) -> String {
    format!(
        "{indent}backend:\n{indent}  type: s3\n{indent}  bucket: tier\n{indent}  endpoint: http://{}\n{indent}  pathStyle: true\n{indent}  allowHttp: true\n\
         {indent}prefix: {prefix}\n{indent}hotWindowBytes: 65536\n{indent}uploadInterval: 200\n{indent}readAheadBytes: 32768\n{indent}metadataInterval: 200\n",
        s3.addr
    )
}

/// One remoting request to `addr` with our own client; returns the response code and body.
fn remoting_call(addr: &str, code: i32, fields: Vec<(&'static str, String)>) -> (i32, Vec<u8>) {
    use broker::protocol::remoting::conn::{self, NoRequests, Pool};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = Pool::new(
            std::sync::Arc::new(NoRequests),
            Duration::from_secs(2),
            1 << 24,
        );
        let r = pool
            .invoke(addr, conn::request(code, fields), Duration::from_secs(5))
            .await
            .expect("the remoting call is answered");
        (r.code, r.body.to_vec())
    })
}

/// Scale-in without moving data: a store node is drained (producers refused, its last segment
/// sealed early and uploaded) and removed for good (kill -9, data folder deleted). Another
/// store node adopts its tier read-only: it registers the removed node's broker name with
/// read-only queues, and an official client reads every message of the removed node through a
/// proxy; producers are refused there.
#[test]
fn another_node_adopts_a_removed_nodes_tiered_history() {
    use broker::protocol::remoting::codes::{request as rq, response as rs};
    let s3 = start_s3("tier");
    let dir = tempfile::tempdir().unwrap();
    let env = [("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")];
    let namesrv = BrokerProcess::start_role("namesrv", &dir.path().join("namesrv"), &[]);
    let ns = namesrv.endpoint();
    let a_yaml = dir.path().join("a.yaml");
    std::fs::write(
        &a_yaml,
        format!(
            "store:\n  segmentSize: 65536\n  flushPolicy: SYNC_FLUSH\ntier:\n{}",
            tier_yaml(&s3, "store-a", "  ")
        ),
    )
    .unwrap();
    let mut a = BrokerProcess::start_role_env(
        "store",
        &dir.path().join("a"),
        &[
            "--broker-name",
            "store-a",
            "--namesrv",
            &ns,
            "--config",
            a_yaml.to_str().unwrap(),
            "--topic",
            "Cold:2",
        ],
        &env,
    );
    let proxy = BrokerProcess::start_role("proxy", &dir.path().join("proxy"), &["--namesrv", &ns]);
    let sent = send(&proxy, "400");
    assert_eq!(sent.len(), 400);
    wait_for_eviction(&a, 65536.0 * 4.0, 60, "segments were not evicted");
    // Its metadata (the topic) is in the tier too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(a.http, "rocketmq_tier_metadata_snapshots_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no metadata snapshot\n{}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Scale-in: the node is drained (producers refused, its last segment sealed and tiered),
    // then removed for good.
    let drain = |path: &str| -> serde_json::Value {
        ureq::post(&format!("http://{}{path}", a.http))
            .send_empty()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let status = drain("/admin/node/drain");
    assert_eq!(status["draining"], true, "{status}");
    let (code, _) = remoting_call(
        &a.endpoint(),
        rq::SEND_MESSAGE,
        vec![("topic", "Cold".to_owned())],
    );
    assert_eq!(code, rs::NO_PERMISSION);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value = ureq::get(&format!("http://{}/admin/node", a.http))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        if status["drained"] == true {
            assert_eq!(status["untieredBytes"], 0, "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: {status}\n{}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    a.kill();
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();

    let manifests_before = manifests(&s3, "store-a");
    let adopted_port = free_port();
    let b_yaml = dir.path().join("b.yaml");
    std::fs::write(
        &b_yaml,
        format!(
            "adopt:\n- brokerName: store-a\n  listen: 127.0.0.1:{adopted_port}\n  tier:\n{}",
            tier_yaml(&s3, "store-a", "    ")
        ),
    )
    .unwrap();
    let b = BrokerProcess::start_role_env(
        "store",
        &dir.path().join("b"),
        &[
            "--broker-name",
            "store-b",
            "--namesrv",
            &ns,
            "--config",
            b_yaml.to_str().unwrap(),
        ],
        &env,
    );
    // The name server routes the topic to the adopted node, readable only (PermName.READ).
    let deadline = Instant::now() + Duration::from_secs(20);
    let route = loop {
        let (code, body) = remoting_call(
            &ns,
            rq::GET_ROUTEINFO_BY_TOPIC,
            vec![("topic", "Cold".to_owned())],
        );
        if code == rs::SUCCESS {
            break broker::protocol::remoting::body::from_body::<serde_json::Value>(&body).unwrap();
        }
        assert!(Instant::now() < deadline, "no route to Cold\n{}", b.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    let queue = &route["queueDatas"][0];
    assert_eq!(queue["brokerName"], "store-a", "{route}");
    assert_eq!(queue["perm"], 4, "{route}");
    let adopted = format!("127.0.0.1:{adopted_port}");
    assert_eq!(
        route["brokerDatas"][0]["brokerAddrs"]["0"],
        adopted.as_str()
    );

    // Every message the drained node held reads back through the proxy from offset 0.
    let got = receive(&proxy, "G1", "400", &[]);
    assert_eq!(got, sent, "{}", b.logs());
    // Producers are refused with NO_PERMISSION, as RocketMQ refuses a read-only broker.
    let (code, _) = remoting_call(
        &adopted,
        rq::SEND_MESSAGE,
        vec![("topic", "Cold".to_owned())],
    );
    assert_eq!(code, rs::NO_PERMISSION);
    // The adopting node never writes to the adopted prefix.
    assert_eq!(manifests(&s3, "store-a"), manifests_before, "{}", b.logs());
}

/// The manifest versions stored under a node's prefix (s3s-fs keeps objects as files).
fn manifests(s3: &S3Server, prefix: &str) -> BTreeSet<String> {
    std::fs::read_dir(s3.root.path().join("tier").join(prefix).join("manifest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect()
}
