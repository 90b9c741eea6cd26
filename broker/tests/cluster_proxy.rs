//! Cluster mode through proxies, black box: two name servers, two store nodes and two
//! `rmq-broker proxy` processes on loopback; the official gRPC clients (Python, Java) talk to
//! either proxy, which forward over the remoting protocol to the store nodes.

mod common;

use std::collections::BTreeSet;

use common::clients::{self, Client, check_send_receive_ack, strings};
use common::remoting::Cluster;

/// Messages a store node has stored for a topic, from its Prometheus metrics.
fn stored(http: std::net::SocketAddr, topic: &str) -> u64 {
    let text = ureq::get(&format!("http://{http}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let prefix = format!("rocketmq_messages_sent_total{{topic=\"{topic}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn ids(v: &serde_json::Value, key: &str) -> BTreeSet<String> {
    match key {
        "sent" => strings(&v["sent"]).into_iter().collect(),
        _ => v["received"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect(),
    }
}

#[test]
fn grpc_clients_through_either_proxy_survive_killed_nodes() {
    let flags: &[&str] = &[
        "--topic",
        "ProxyTopic:4",
        "--topic",
        "ProxyJava:4",
        "--topic",
        "ProxyTx:2:TRANSACTION",
        "--transaction-check-interval-ms",
        "2000",
        "--flush-policy",
        "SYNC_FLUSH",
    ];
    let mut cluster = Cluster::start(2, &[("broker-a", flags), ("broker-b", flags)]);
    let mut proxies = [cluster.start_proxy(0), cluster.start_proxy(1)];
    let topic = "ProxyTopic";

    // Produced through one proxy, consumed through the other; spread over both store nodes.
    let sent = clients::run(
        Client::Python,
        &proxies[0],
        &["send", topic, "PG", "20"],
        &[],
    );
    let got = clients::run(
        Client::Python,
        &proxies[1],
        &["receive_ack", topic, "PG", "20"],
        &[],
    );
    assert_eq!(ids(&got, "received"), ids(&sent, "sent"), "{got}");
    let (a, b) = (
        stored(cluster.stores[0].http, topic),
        stored(cluster.stores[1].http, topic),
    );
    assert!(a > 0 && b > 0 && a + b == 20, "broker-a {a}, broker-b {b}");
    // The proxy counts what it forwarded (SEND_MESSAGE_V2 = 310, POP_MESSAGE = 200050).
    let metrics = ureq::get(&format!("http://{}/metrics", proxies[0].http))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(r#"rocketmq_proxy_upstream_calls_total{code="310",outcome="ok"} 20"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("rocketmq_proxy_store_nodes 2"),
        "{metrics}"
    );

    // Produced by a remoting client straight to the store nodes, consumed over gRPC: the
    // message ids the remoting client got back are the ones the gRPC consumer sees.
    let v = common::remoting::java(&cluster, &["produce", topic, "RemotingProducer", "10", "r"]);
    let remoting_ids: BTreeSet<String> = strings(&v["ids"]).into_iter().collect();
    let got = clients::run(
        Client::Python,
        &proxies[0],
        &["receive_ack", topic, "PG", "10"],
        &[],
    );
    assert_eq!(ids(&got, "received"), remoting_ids, "{got}");

    // The Java client with its default TLS, through the second proxy.
    let v = clients::run(
        Client::Java,
        &proxies[1],
        &["send_receive_ack", "ProxyJava", "JG"],
        &[],
    );
    check_send_receive_ack(&v);

    // Transactions: commit and rollback through a proxy; the undecided one is checked back by
    // its store node, through a proxy, with the producer's Telemetry stream.
    let v = clients::run(
        Client::Java,
        &proxies[0],
        &["transaction", "ProxyTx", "TxG"],
        &[],
    );
    let mut got = strings(&v["received"]);
    got.sort();
    assert_eq!(got, ["checked", "committed"], "{v}");

    // A proxy killed and restarted loses nothing: it holds no state.
    proxies[0].kill();
    let sent = clients::run(
        Client::Python,
        &proxies[1],
        &["send", topic, "PG", "10"],
        &[],
    );
    proxies[0].restart();
    let got = clients::run(
        Client::Python,
        &proxies[0],
        &["receive_ack", topic, "PG", "10"],
        &[],
    );
    assert_eq!(ids(&got, "received"), ids(&sent, "sent"), "{got}");

    // A name server down: the proxies use the other one.
    cluster.namesrvs[1].kill();
    let sent = clients::run(
        Client::Python,
        &proxies[0],
        &["send", topic, "PG", "10"],
        &[],
    );
    let got = clients::run(
        Client::Python,
        &proxies[1],
        &["receive_ack", topic, "PG", "10"],
        &[],
    );
    assert_eq!(ids(&got, "received"), ids(&sent, "sent"), "{got}");
    cluster.namesrvs[1].restart();
    cluster.wait_registered(2);

    // A store node killed: sends move to the other; after its restart every acknowledged
    // message is delivered.
    cluster.stores[1].kill();
    let sent = clients::run(
        Client::Python,
        &proxies[0],
        &["send", topic, "PG", "20"],
        &[],
    );
    cluster.stores[1].restart();
    cluster.wait_registered(2);
    let got = clients::run(
        Client::Python,
        &proxies[1],
        &["receive_ack", topic, "PG", "20"],
        &[],
    );
    assert_eq!(
        ids(&got, "received"),
        ids(&sent, "sent"),
        "{got}\n{}",
        cluster.logs()
    );
}

#[test]
fn with_its_name_server_down_a_proxy_keeps_serving_the_topics_in_use() {
    let flags: &[&str] = &["--topic", "StaleTopic:4"];
    let mut cluster = Cluster::start(1, &[("broker-a", flags)]);
    let proxy = cluster.start_proxy(0);
    let topic = "StaleTopic";
    let mut sent = ids(
        &clients::run(Client::Python, &proxy, &["send", topic, "SG", "5"], &[]),
        "sent",
    );
    cluster.namesrvs[0].kill();
    // Past the 3 s after which the proxy looks its route and the store addresses up again:
    // the lookups fail, and the ones it has stay in use meanwhile.
    std::thread::sleep(std::time::Duration::from_secs(4));
    sent.extend(ids(
        &clients::run(Client::Python, &proxy, &["send", topic, "SG", "5"], &[]),
        "sent",
    ));
    let got = clients::run(
        Client::Python,
        &proxy,
        &["receive_ack", topic, "SG", "10"],
        &[],
    );
    assert_eq!(ids(&got, "received"), sent, "{got}");
    let metrics = ureq::get(&format!("http://{}/metrics", proxy.http))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let failed = r#"rocketmq_proxy_route_lookups_total{how="background",outcome="failed"} "#;
    assert!(
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix(failed))
            .any(|v| v.trim().parse::<u64>().unwrap() >= 1),
        "the route was looked up again, in the background, and that failed:\n{metrics}"
    );
    assert!(
        !metrics.contains(r#"rocketmq_proxy_route_lookups_total{how="request",outcome="failed"}"#),
        "no request waited for a lookup that failed:\n{metrics}"
    );
}
