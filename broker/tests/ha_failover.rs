//! Failover under load, multi-process on loopback: 3 controllers, a name server, 2 broker
//! groups of 3 store nodes each (SYNC replication, every in-sync replica acknowledges,
//! minInSyncReplicas 2) and a proxy; the official Java client sends and consumes through the
//! proxy the whole time. Round after round a primary is killed with SIGKILL (sometimes a replica
//! or the controllers' leader instead, and sometimes the primary is stopped with SIGTERM, as a
//! rolling upgrade does: it must hand its role to an in-sync replica itself) and restarted. Afterwards every acknowledged message
//! must have been consumed, and each failover must have finished in bounded time, with the
//! client never restarted.
//!
//! `RMQ_HA_ROUNDS` sets the number of rounds (20 by default; more for a long run).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::clients::{self, Client};
use common::process::{BrokerProcess, free_port, start_controllers};
use serde_json::Value;

const GROUPS: [&str; 2] = ["ha-a", "ha-b"];
const TOPIC: &str = "TopicHa";

struct Cluster {
    _dir: tempfile::TempDir,
    controllers: Vec<BrokerProcess>,
    controller_addrs: Vec<String>,
    _namesrv: BrokerProcess,
    stores: BTreeMap<(String, i64), BrokerProcess>,
    proxy: BrokerProcess,
}

fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (controllers, addrs) = start_controllers(dir.path(), 3, 1500);
    let controller_addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let namesrv = BrokerProcess::start_role("namesrv", &dir.path().join("namesrv"), &[]);
    let mut stores = BTreeMap::new();
    for group in GROUPS {
        for id in 1..=3i64 {
            let node = format!("{group}-{id}");
            let config = dir.path().join(format!("{node}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "heartbeatTimeout: 5000\nstore:\n  index: {{slots: 10007, maxEntries: 100000}}\nha:\n  listen: 127.0.0.1:{}\n  controllers: [{}]\n  \
                     replication: SYNC\n  allAckInSyncStateSet: true\n  minInSyncReplicas: 2\n  \
                     maxLag: 2000\n  syncTimeout: 3000\n  heartbeatEvery: 300\n",
                    free_port(),
                    controller_addrs.join(", ")
                ),
            )
            .unwrap();
            let store = BrokerProcess::start_role(
                "store",
                &dir.path().join(&node),
                &[
                    "--config",
                    config.to_str().unwrap(),
                    "--broker-name",
                    group,
                    "--broker-id",
                    &id.to_string(),
                    "--cluster",
                    "HaCluster",
                    "--namesrv",
                    &namesrv.endpoint(),
                    "--segment-size",
                    "16777216",
                    "--topic",
                    &format!("{TOPIC}:4"),
                    "--group",
                    "GHa",
                ],
            );
            stores.insert((group.to_owned(), id), store);
        }
    }
    let proxy = BrokerProcess::start_role(
        "proxy",
        &dir.path().join("proxy"),
        &["--namesrv", &namesrv.endpoint()],
    );
    Cluster {
        _dir: dir,
        controllers,
        controller_addrs,
        _namesrv: namesrv,
        stores,
        proxy,
    }
}

impl Cluster {
    /// The controllers' leader's view (index of the leader, its state).
    fn leader_state(&self) -> Option<(usize, Value)> {
        for (i, addr) in self.controller_addrs.iter().enumerate() {
            let Ok(mut resp) = ureq::get(&format!("http://{addr}/controller/state"))
                .config()
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .call()
            else {
                continue;
            };
            let Ok(v) = resp.body_mut().read_json::<Value>() else {
                continue;
            };
            if v["isLeader"] == Value::Bool(true) {
                return Some((i, v));
            }
        }
        None
    }

    fn group(&self, group: &str) -> Option<Value> {
        self.leader_state()
            .map(|(_, v)| v["groups"][group].clone())
            .filter(|g| !g.is_null())
    }

    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut(&Self) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !ok(self) {
            if start.elapsed() > timeout {
                let mut logs = String::new();
                for ((g, id), s) in &self.stores {
                    let l = s.logs();
                    let tail: Vec<_> = l.lines().rev().take(15).collect();
                    logs += &format!(
                        "\n--- {g}-{id}\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                panic!(
                    "timed out after {timeout:?} waiting for {what}; controllers: {:?}{logs}",
                    self.leader_state()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    fn fully_in_sync(&self, group: &str) -> bool {
        self.group(group)
            .is_some_and(|g| g["inSync"].as_array().is_some_and(|s| s.len() == 3))
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn acknowledged_messages_survive_repeated_primary_kills() {
    let rounds: usize = std::env::var("RMQ_HA_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let mut cluster = start();
    for group in GROUPS {
        cluster.wait_for(
            &format!("{group} to elect a primary and sync"),
            Duration::from_secs(60),
            |c| c.fully_in_sync(group),
        );
    }
    let stop = cluster._dir.path().join("stop");
    let client = {
        let proxy_addr = cluster.proxy.endpoint();
        let stop = stop.to_str().unwrap().to_owned();
        let proxy = BrokerProcess::at_endpoint(&proxy_addr);
        std::thread::spawn(move || {
            clients::run(Client::Java, &proxy, &["chaos", TOPIC, "GHa", &stop], &[])
        })
    };
    // Let the client get going before the first kill.
    std::thread::sleep(Duration::from_secs(5));
    let mut failovers = Vec::new();
    let mut handovers = Vec::new();
    for round in 0..rounds {
        let group = GROUPS[round % 2];
        let state = cluster.group(group).expect("the controllers answer");
        let primary = state["primary"].as_i64().expect("a primary");
        let epoch = state["epoch"].as_u64().unwrap();
        match round % 10 {
            7 => {
                // A replica instead.
                let replica = (1..=3).find(|i| *i != primary).unwrap();
                let node = cluster
                    .stores
                    .get_mut(&(group.to_owned(), replica))
                    .unwrap();
                node.kill();
                std::thread::sleep(Duration::from_millis(500));
                node.restart();
            }
            3 => {
                // A graceful stop: the primary hands over before it exits, without waiting
                // for the controllers' node timeout.
                let key = (group.to_owned(), primary);
                let start = Instant::now();
                cluster.stores.get_mut(&key).unwrap().terminate();
                let log = cluster.stores[&key].logs();
                assert!(
                    log.contains("handed the primary role over"),
                    "round {round}: {group}-{primary} stopped without a hand-over:\n{}",
                    log.lines()
                        .filter(|l| l.contains("WARN"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                cluster.wait_for(
                    &format!("round {round}: {group} to follow the hand-over"),
                    Duration::from_secs(20),
                    |c| {
                        c.group(group).is_some_and(|g| {
                            g["epoch"].as_u64().unwrap() > epoch
                                && g["primary"].as_i64() != Some(primary)
                        })
                    },
                );
                handovers.push(start.elapsed());
                cluster.stores.get_mut(&key).unwrap().restart();
            }
            9 => {
                // The controllers' leader.
                let (leader, _) = cluster.leader_state().unwrap();
                cluster.controllers[leader].kill();
                cluster.wait_for("another controller to lead", Duration::from_secs(20), |c| {
                    c.leader_state().is_some_and(|(i, _)| i != leader)
                });
                cluster.controllers[leader].restart();
            }
            _ => {
                let node = cluster
                    .stores
                    .get_mut(&(group.to_owned(), primary))
                    .unwrap();
                node.kill();
                let took = cluster.wait_for(
                    &format!("round {round}: {group} to replace primary {primary}"),
                    Duration::from_secs(20),
                    |c| {
                        c.group(group).is_some_and(|g| {
                            g["epoch"].as_u64().unwrap() > epoch
                                && g["primary"].as_i64() != Some(primary)
                                && g["inSync"].as_array().is_some_and(|s| s.len() >= 2)
                        })
                    },
                );
                failovers.push(took);
                cluster
                    .stores
                    .get_mut(&(group.to_owned(), primary))
                    .unwrap()
                    .restart();
            }
        }
        cluster.wait_for(
            &format!("round {round}: {group} back to 3 in-sync nodes"),
            Duration::from_secs(60),
            |c| c.fully_in_sync(group),
        );
        eprintln!(
            "round {round} ({group}) done; epoch now {:?}",
            cluster.group(group).map(|g| g["epoch"].clone())
        );
    }
    std::fs::write(&stop, b"").unwrap();
    let result = client.join().expect("the client thread");
    let acked: HashSet<String> = clients::strings(&result["acked"]).into_iter().collect();
    let received: HashSet<String> = clients::strings(&result["received"]).into_iter().collect();
    let lost: Vec<_> = acked.difference(&received).take(20).collect();
    let n = failovers.len();
    let (min, med, max) = (
        percentile(&mut failovers, 0.0),
        percentile(&mut failovers, 0.5),
        percentile(&mut failovers, 1.0),
    );
    eprintln!("graceful hand-overs (SIGTERM to a new primary): {handovers:?}");
    eprintln!(
        "{rounds} rounds, {n} primary kills: failover (kill to a new primary with an in-sync \
         replica) min {min:?} median {med:?} max {max:?}; {} acknowledged, {} received, {} \
         deliveries, {} send errors",
        acked.len(),
        received.len(),
        result["deliveries"],
        result["sendErrors"]
    );
    assert!(
        acked.len() > 1000,
        "the client kept sending through the kills: {}",
        acked.len()
    );
    if !lost.is_empty() {
        // What the nodes hold, for the failure message.
        for ((g, id), s) in &cluster.stores {
            let get = |path: &str| {
                ureq::get(&format!("http://{}{path}", s.http))
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok())
                    .unwrap_or_default()
            };
            eprintln!(
                "--- {g}-{id}: node {}\nprogress {}",
                get("/admin/node"),
                get("/admin/groups/GHa/progress?topic=TopicHa")
            );
        }
        for (name, log) in cluster
            .stores
            .iter()
            .map(|((g, id), s)| (format!("{g}-{id}"), s.logs()))
            .chain([("proxy".to_owned(), cluster.proxy.logs())])
        {
            let interesting: Vec<_> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("role changed"))
                .collect();
            let tail = &interesting[interesting.len().saturating_sub(25)..];
            eprintln!("--- {name} log (warnings, last 25):\n{}", tail.join("\n"));
        }
        if std::env::var("RMQ_HA_KEEP").is_ok() {
            eprintln!(
                "keeping the cluster for 600 s (RMQ_HA_KEEP); proxy {}",
                cluster.proxy.endpoint()
            );
            for ((g, id), s) in &cluster.stores {
                eprintln!("{g}-{id}: remoting {} http {}", s.endpoint(), s.http);
            }
            std::thread::sleep(Duration::from_secs(600));
        }
        eprintln!("receive errors: {}", result["receiveErrors"]);
        let mut missing: Vec<_> = acked.difference(&received).cloned().collect();
        missing.sort();
        eprintln!(
            "missing (first 50 sorted): {:?}",
            &missing[..missing.len().min(50)]
        );
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged messages were never delivered, e.g. {lost:?}",
        acked.difference(&received).count()
    );
}
