//! Route scale at the size CI affords, through the real binaries: `rmq-bench-routes`
//! registers 2,000 topics from 10 simulated store nodes at once on a real name server, asks
//! routes from 8 connections while the nodes heartbeat and re-register, then starts 300 gRPC
//! clients at once on a real proxy (QueryRoute, QueryAssignment over 100 groups). Every
//! registration, heartbeat and query must succeed, and the proxy must fetch the group table a
//! few times, not once per group. (Throughput and latency: `scripts/bench-routes.sh`.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::remoting::Cluster;
use serde_json::Value;

fn metrics(http: SocketAddr) -> String {
    let mut s = TcpStream::connect(http).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The sum of a counter's samples whose labels contain all of `labels`.
fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn registrations_route_queries_and_a_client_storm() {
    let cluster = Cluster::start(1, &[("broker-a", &[])]);
    cluster.wait_registered(1);
    let proxy = cluster.start_proxy(0);
    let out = tempfile::NamedTempFile::new().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_rmq-bench-routes"))
        .args([
            "--namesrv",
            &cluster.namesrv(),
            "--proxy",
            &proxy.endpoint(),
        ])
        .args(["--nodes", "10", "--topics", "2000", "--route-clients", "8"])
        .args([
            "--duration",
            "3",
            "--grpc-clients",
            "300",
            "--groups",
            "100",
        ])
        .arg("--json")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        cluster.logs()
    );
    let r: Value = serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap();
    assert_eq!(r["registrationStorm"]["latency"]["count"], 10, "{r}");
    let steady = &r["steady"];
    assert_eq!(steady["routeQueryErrors"], 0, "{r}");
    assert_eq!(steady["backgroundErrors"], 0, "{r}");
    assert!(steady["routeQueries"]["count"].as_u64().unwrap() > 0, "{r}");
    assert!(steady["heartbeats"]["count"].as_u64().unwrap() >= 9, "{r}");
    assert!(
        steady["reregistrations"]["count"].as_u64().unwrap() >= 1,
        "{r}"
    );
    let storm = &r["clientStorm"];
    assert_eq!(storm["errors"], 0, "{r}");
    assert_eq!(storm["queryRoute"]["count"], 300, "{r}");
    assert_eq!(storm["queryAssignment"]["count"], 300, "{r}");
    // 100 groups: the table is fetched once per cache miss storm, not once per group. Each
    // fetch tries the simulated nodes (unreachable) before the real one answers.
    let text = metrics(proxy.http);
    let fetched = counter(
        &text,
        "rocketmq_proxy_upstream_calls",
        &["code=\"201\"", "outcome=\"ok\""],
    );
    assert!(
        (1.0..=5.0).contains(&fetched),
        "{fetched} group table fetches for 100 groups:\n{text}"
    );
}
