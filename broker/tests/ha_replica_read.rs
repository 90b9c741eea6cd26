//! Reads from replicas while a group has no primary (RocketMQ's slave-read): the official
//! Java remoting client (4.9.8) produces to a group of three (SYNC, every in-sync replica
//! acknowledges); then the controllers are stopped, so that nobody can elect a new primary,
//! and the primary is killed. Once the name server has dropped it, a new consumer group
//! reads every acknowledged message from a replica, with no primary anywhere.

mod common;

use std::time::{Duration, Instant};

use common::process::{BrokerProcess, free_port, start_controllers};
use common::remoting::{self, Cluster, cluster_info};
use serde_json::Value;

const GROUP: &str = "rr";
const TOPIC: &str = "TopicReplicaRead";

fn controller_state(addrs: &[std::net::SocketAddr]) -> Option<Value> {
    addrs.iter().find_map(|a| {
        let v: Value = ureq::get(&format!("http://{a}/controller/state"))
            .call()
            .ok()?
            .body_mut()
            .read_json()
            .ok()?;
        (v["isLeader"] == true).then(|| v["groups"][GROUP].clone())
    })
}

fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn consumers_read_from_a_replica_while_the_group_has_no_primary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut controllers, addrs) = start_controllers(dir.path(), 3, 1500);
    let controller_list = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let namesrv = BrokerProcess::start_role(
        "namesrv",
        &dir.path().join("namesrv"),
        &["--broker-timeout-ms", "3000"],
    );
    let stores: Vec<BrokerProcess> = (1..=3)
        .map(|id| {
            let config = dir.path().join(format!("{GROUP}-{id}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "heartbeatTimeout: 3000\nha:\n  listen: 127.0.0.1:{}\n  controllers: [{controller_list}]\n  \
                     replication: SYNC\n  allAckInSyncStateSet: true\n  minInSyncReplicas: 2\n  heartbeatEvery: 300\n",
                    free_port()
                ),
            )
            .unwrap();
            BrokerProcess::start_role(
                "store",
                &dir.path().join(format!("{GROUP}-{id}")),
                &[
                    "--config",
                    config.to_str().unwrap(),
                    "--broker-name",
                    GROUP,
                    "--broker-id",
                    &id.to_string(),
                    "--namesrv",
                    &namesrv.endpoint(),
                    "--topic",
                    &format!("{TOPIC}:4"),
                ],
            )
        })
        .collect();
    wait_until("a primary and 3 in-sync nodes", 60, || {
        controller_state(&addrs)
            .is_some_and(|g| g["inSync"].as_array().is_some_and(|s| s.len() == 3))
    });
    let primary = controller_state(&addrs).unwrap()["primary"]
        .as_i64()
        .unwrap();
    let cluster = Cluster {
        namesrvs: vec![namesrv],
        stores,
        dir,
    };
    wait_until("the name server to route to the primary", 20, || {
        cluster_info(&cluster.namesrv()).is_some_and(|c| {
            c.broker_addr_table
                .get(GROUP)
                .is_some_and(|b| b.broker_addrs.contains_key(&0) && b.broker_addrs.len() == 3)
        })
    });

    // A topic and a group created on the primary once its replicas are linked reach them
    // (metadata travels as changes after each link's first, whole, frame).
    let on_primary = cluster.stores[(primary - 1) as usize].http;
    ureq::put(&format!("http://{on_primary}/admin/topics/LateTopic"))
        .send_json(serde_json::json!({"queues": 2}))
        .unwrap();
    ureq::put(&format!("http://{on_primary}/admin/groups/LateGroup"))
        .send_json(serde_json::json!({"maxDeliveryAttempts": 3}))
        .unwrap();
    for (i, s) in cluster.stores.iter().enumerate() {
        if i as i64 == primary - 1 {
            continue;
        }
        wait_until("a new topic and group to reach a replica", 10, || {
            let has = |path: &str| {
                ureq::get(&format!("http://{}/admin/{path}", s.http))
                    .call()
                    .is_ok()
            };
            has("topics/LateTopic") && has("groups/LateGroup")
        });
    }

    let sent = remoting::java(&cluster, &["produce", TOPIC, "GProduce", "200"]);
    assert_eq!(sent["sent"], 200, "{sent}");
    // Every replica confirms what was acknowledged (the primary's confirm offset reaches them
    // within tens of milliseconds).
    std::thread::sleep(Duration::from_secs(1));

    // Nobody can elect: the controllers go first, then the primary.
    for c in &mut controllers {
        c.kill();
    }
    let mut cluster = cluster;
    cluster.stores[(primary - 1) as usize].kill();
    wait_until("the name server to drop the primary", 30, || {
        cluster_info(&cluster.namesrv()).is_some_and(|c| {
            c.broker_addr_table
                .get(GROUP)
                .is_some_and(|b| !b.broker_addrs.contains_key(&0) && !b.broker_addrs.is_empty())
        })
    });

    let got = remoting::java(&cluster, &["consume", TOPIC, "GReplicaRead", "200", "90"]);
    assert_eq!(got["distinct"], 200, "{got}");
}
