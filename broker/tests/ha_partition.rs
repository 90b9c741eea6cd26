//! A network partition, not a crash: the primary of a 3-node group (SYNC replication, every
//! in-sync replica acknowledges, minInSyncReplicas 2) is cut off from its replicas and from the
//! controllers by TCP links the test controls, while clients can still reach it. It must stop
//! acknowledging writes; the controllers elect another node, which acknowledges from then on;
//! once the links heal the old primary follows the new one and drops what it wrote while cut
//! off. Afterwards the history is checked as a Jepsen-style checker would: the acknowledged
//! set against every node's final log (each opened and recovered from its data directory after
//! a SIGKILL), and the final logs against each other.
//!
//! A second test delays links instead of cutting them: a slow replication link only slows
//! acknowledgements down; a primary whose heartbeats reach the controllers too late is replaced
//! while it can still talk to its replicas, and whatever either primary acknowledged is in every
//! final log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::protocol::remoting::codes::request as rq;
use broker::protocol::remoting::conn::{self, NoRequests, Pool};
use broker::store::{GetStatus, MessageStore, StoreConfig};
use common::process::{BrokerProcess, free_port, start_controllers};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GROUP: &str = "part-a";
const TOPIC: &str = "TopicPart";
const QUEUES: i32 = 4;

/// A TCP forwarder that the test can cut or slow down: cutting closes every open connection
/// and refuses new ones until healed; a delay holds every chunk of bytes, both ways, that long
/// before passing it on (in order).
struct Link {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    open: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// Copies `from` to `to`, holding each chunk for the link's current delay (reader and writer
/// in one task: aborting it drops what was still held).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Acquire));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

impl Link {
    async fn new(target: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let open: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (c, o, d) = (Arc::clone(&cut), Arc::clone(&open), Arc::clone(&delay_ms));
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::Acquire) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let d = Arc::clone(&d);
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = outbound.into_split();
                        tokio::join!(
                            forward(ir, ow, Arc::clone(&d)),
                            forward(or, iw, Arc::clone(&d))
                        );
                    }
                });
                o.lock().push(task);
            }
        });
        Link {
            addr,
            cut,
            delay_ms,
            open,
        }
    }

    fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Release);
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for t in self.open.lock().drain(..) {
            t.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

struct Node {
    process: BrokerProcess,
    /// Replicas reach this node's HA port through it.
    ha_link: Link,
    /// This node reaches each controller through these.
    controller_links: Vec<Link>,
}

impl Node {
    fn cut(&self) {
        self.ha_link.cut();
        self.controller_links.iter().for_each(Link::cut);
    }
    fn heal(&self) {
        self.ha_link.heal();
        self.controller_links.iter().for_each(Link::heal);
    }
}

fn leader_group(controllers: &[String]) -> Option<Value> {
    controllers.iter().find_map(|addr| {
        let mut resp = ureq::get(&format!("http://{addr}/controller/state"))
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .call()
            .ok()?;
        let v: Value = resp.body_mut().read_json().ok()?;
        (v["isLeader"] == Value::Bool(true)).then(|| v["groups"][GROUP].clone())
    })
}

async fn wait_group(controllers: &[String], what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let c = controllers.to_vec();
        let g = tokio::task::spawn_blocking(move || leader_group(&c))
            .await
            .unwrap();
        if let Some(g) = g.as_ref().filter(|g| !g.is_null() && ok(g)) {
            return g.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends message `seq` to one node over remoting; Ok once acknowledged.
async fn send(pool: &Pool<NoRequests>, addr: &str, seq: u64) -> Result<(), String> {
    let fields = [
        ("a", "PartProducer".to_owned()),
        ("b", TOPIC.to_owned()),
        ("c", "TBW102".to_owned()),
        ("d", "4".to_owned()),
        ("e", (seq % QUEUES as u64).to_string()),
        ("f", "0".to_owned()),
        ("g", "0".to_owned()),
        ("h", "0".to_owned()),
        ("i", String::new()),
        ("j", "0".to_owned()),
        ("k", "false".to_owned()),
        ("m", "false".to_owned()),
    ];
    let mut req = conn::request(rq::SEND_MESSAGE_V2, fields);
    req.body = format!("part-{seq}").into_bytes().into();
    match pool.invoke(addr, req, Duration::from_secs(5)).await {
        Ok(r) if r.code == 0 => Ok(()),
        Ok(r) => Err(format!("code {}: {:?}", r.code, r.remark)),
        Err(e) => Err(e.to_string()),
    }
}

/// Message bodies by (queue, queue offset).
type FinalLog = BTreeMap<(i32, u64), String>;

/// Every message body in a node's queues, in (queue, offset) order, read from its data
/// directory after the node was killed.
fn final_log(dir: &std::path::Path) -> FinalLog {
    let store = MessageStore::open(StoreConfig {
        segment_size: 16 << 20,
        index: broker::store::index::IndexConfig {
            slots: 10007,
            max_entries: 100000,
        },
        ..StoreConfig::at(dir)
    })
    .unwrap();
    let mut out = BTreeMap::new();
    for q in 0..QUEUES {
        let mut offset = store.min_offset(TOPIC, q).unwrap();
        while offset < store.max_offset(TOPIC, q).unwrap() {
            let r = store.get_message(TOPIC, q, offset, 64).unwrap();
            assert_eq!(
                r.status,
                GetStatus::Found,
                "{} queue {q} at {offset}",
                dir.display()
            );
            for m in &r.messages {
                out.insert(
                    (q, m.queue_offset),
                    String::from_utf8_lossy(&m.body).into_owned(),
                );
            }
            offset = r.next_offset;
        }
    }
    out
}

/// Three controllers and a group of three nodes (SYNC, allAckInSyncStateSet,
/// minInSyncReplicas 2), each node behind its own links.
struct Group {
    _dir: tempfile::TempDir,
    _controllers: Vec<BrokerProcess>,
    controllers: Vec<String>,
    nodes: BTreeMap<i64, Node>,
    pool: Pool<NoRequests>,
}

impl Group {
    async fn start() -> Group {
        let dir = tempfile::tempdir().unwrap();
        let (controller_processes, caddrs) = start_controllers(dir.path(), 3, 1500);
        let controllers: Vec<String> = caddrs.iter().map(|a| a.to_string()).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=3i64 {
            let ha = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let ha_link = Link::new(ha).await;
            let mut controller_links = Vec::new();
            for a in &caddrs {
                controller_links.push(Link::new(*a).await);
            }
            let config = dir.path().join(format!("node-{id}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "store:\n  index: {{slots: 10007, maxEntries: 100000}}\nha:\n  listen: {ha}\n  advertise: {}\n  controllers: [{}]\n  replication: SYNC\n  \
                     allAckInSyncStateSet: true\n  minInSyncReplicas: 2\n  maxLag: 2000\n  \
                     syncTimeout: 2000\n  heartbeatEvery: 300\n",
                    ha_link.addr,
                    controller_links
                        .iter()
                        .map(|l| l.addr.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .unwrap();
            let process = BrokerProcess::start_role(
                "store",
                &dir.path().join(format!("node-{id}")),
                &[
                    "--config",
                    config.to_str().unwrap(),
                    "--broker-name",
                    GROUP,
                    "--broker-id",
                    &id.to_string(),
                    "--segment-size",
                    "16777216",
                    "--topic",
                    &format!("{TOPIC}:{QUEUES}"),
                ],
            );
            nodes.insert(
                id,
                Node {
                    process,
                    ha_link,
                    controller_links,
                },
            );
        }
        Group {
            _dir: dir,
            _controllers: controller_processes,
            controllers,
            nodes,
            pool: Pool::new(Arc::new(NoRequests), Duration::from_secs(2), 16 << 20),
        }
    }

    /// Starts the group and waits until it has a primary and 3 in-sync nodes; returns the
    /// primary's id and its epoch.
    async fn start_in_sync() -> (Group, i64, u64) {
        let group = Group::start().await;
        let g = wait_group(&group.controllers, "a primary with 3 in-sync nodes", |g| {
            g["inSync"].as_array().is_some_and(|s| s.len() == 3)
        })
        .await;
        let primary = g["primary"].as_i64().unwrap();
        let epoch = g["epoch"].as_u64().unwrap();
        (group, primary, epoch)
    }

    fn addr_of(&self, id: i64) -> String {
        self.nodes[&id].process.endpoint()
    }

    /// Kills every node and reads each one's final log from its data directory: they must
    /// be identical, and hold every acknowledged message. Returns the messages in them.
    fn check_final_logs(&mut self, acked: &BTreeSet<u64>) -> BTreeSet<u64> {
        let dirs: Vec<(i64, std::path::PathBuf)> = self
            .nodes
            .iter_mut()
            .map(|(id, n)| {
                n.process.kill();
                (*id, n.process.dir.clone())
            })
            .collect();
        let logs: Vec<(i64, FinalLog)> = dirs
            .into_iter()
            .map(|(id, d)| (id, final_log(&d)))
            .collect();
        let (_, reference) = &logs[0];
        for (id, log) in &logs {
            assert_eq!(
                log, reference,
                "node {id}'s final log differs from node {}'s",
                logs[0].0
            );
        }
        let in_log: BTreeSet<u64> = reference
            .values()
            .map(|b| b.trim_start_matches("part-").parse().unwrap())
            .collect();
        let lost: Vec<_> = acked.difference(&in_log).collect();
        assert!(
            lost.is_empty(),
            "acknowledged but missing from the final logs: {lost:?}"
        );
        in_log
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_stops_acknowledging_and_its_divergent_writes_are_dropped() {
    let (mut group, old, epoch) = Group::start_in_sync().await;
    let controllers = group.controllers.clone();
    let pool = &group.pool;
    let nodes = &group.nodes;
    let addr_of = |id: i64| group.addr_of(id);

    // History: (node, seq, acknowledged?, sent after the cut?).
    let mut acked = BTreeSet::new();
    let mut seq = 0u64;
    for _ in 0..200 {
        send(pool, &addr_of(old), seq)
            .await
            .expect("the primary acknowledges");
        acked.insert(seq);
        seq += 1;
    }

    // Cut the primary off from its replicas and the controllers; clients still reach it.
    nodes[&old].cut();
    let cut_at = Instant::now();
    let mut acked_by_old_after_cut = Vec::new();
    let mut attempted_on_old = Vec::new();
    while cut_at.elapsed() < Duration::from_secs(6) {
        let s = seq;
        seq += 1;
        attempted_on_old.push(s);
        if send(pool, &addr_of(old), s).await.is_ok() {
            acked_by_old_after_cut.push(s);
            acked.insert(s);
        }
    }
    assert!(
        acked_by_old_after_cut.is_empty(),
        "the cut-off primary acknowledged {} writes: {acked_by_old_after_cut:?}",
        acked_by_old_after_cut.len()
    );

    let g = wait_group(&controllers, "a new primary with 2 in-sync nodes", |g| {
        g["epoch"].as_u64().unwrap() > epoch
            && g["primary"].as_i64() != Some(old)
            && g["inSync"].as_array().is_some_and(|s| s.len() >= 2)
    })
    .await;
    let new = g["primary"].as_i64().unwrap();
    let mut written_on_new = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while written_on_new < 200 {
        assert!(
            Instant::now() < deadline,
            "the new primary {new} did not take 200 writes"
        );
        if send(pool, &addr_of(new), seq).await.is_ok() {
            acked.insert(seq);
            written_on_new += 1;
        }
        seq += 1;
    }

    // Heal: the old primary follows the new one and drops what it wrote while cut off.
    nodes[&old].heal();
    wait_group(&controllers, "all 3 nodes in sync again", |g| {
        g["inSync"].as_array().is_some_and(|s| s.len() == 3) && g["primary"].as_i64() == Some(new)
    })
    .await;
    // The nodes confirm the in-sync set before replicas have dispatched the last bytes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let in_log = group.check_final_logs(&acked);
    let kept_from_cut: Vec<_> = attempted_on_old
        .iter()
        .filter(|s| in_log.contains(s))
        .collect();
    assert!(
        kept_from_cut.is_empty(),
        "writes refused by the cut-off primary survived in the logs: {kept_from_cut:?}"
    );
    eprintln!(
        "acknowledged {}, refused by the cut-off primary {}, final log {} messages on each of 3 nodes",
        acked.len(),
        attempted_on_old.len(),
        in_log.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_links_slow_acknowledgements_and_a_late_primary_loses_nothing() {
    let (mut group, old, epoch) = Group::start_in_sync().await;
    let controllers = group.controllers.clone();
    let mut acked = BTreeSet::new();
    let mut seq = 0u64;

    // 1. 100 ms each way on the replication link: SYNC sends are still acknowledged, each after
    // at least one delayed round trip.
    group.nodes[&old].ha_link.delay(Duration::from_millis(100));
    let start = Instant::now();
    for _ in 0..20 {
        send(&group.pool, &group.addr_of(old), seq)
            .await
            .expect("acknowledged over a slow link");
        acked.insert(seq);
        seq += 1;
    }
    let per_send = start.elapsed() / 20;
    assert!(
        per_send >= Duration::from_millis(100),
        "a SYNC send waits for the replicas: {per_send:?}"
    );

    // 2. The primary loses the controllers while its replication link stays slow (300 ms):
    // it keeps acknowledging only what its replicas hold, a new primary is elected, and from
    // then on the old one cannot complete a SYNC send (the new primary stopped following it,
    // and shrinking the in-sync set needs the controllers).
    group.nodes[&old].ha_link.delay(Duration::from_millis(300));
    group.nodes[&old]
        .controller_links
        .iter()
        .for_each(Link::cut);
    let mut acked_by_old = 0;
    let mut acked_by_new = 0;
    let mut new = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_look = Instant::now();
    while acked_by_new < 100 {
        assert!(
            Instant::now() < deadline,
            "no new primary took 100 writes: new {new:?}, {acked_by_new} acknowledged"
        );
        // The old primary is tried on every round until a new one is known, then on every
        // tenth (a refused SYNC send costs its whole timeout).
        if new.is_none() || seq.is_multiple_of(10) {
            if send(&group.pool, &group.addr_of(old), seq).await.is_ok() {
                acked.insert(seq);
                acked_by_old += 1;
            }
            seq += 1;
        }
        if new.is_none() && last_look.elapsed() > Duration::from_millis(300) {
            last_look = Instant::now();
            let c = controllers.clone();
            new = tokio::task::spawn_blocking(move || leader_group(&c))
                .await
                .unwrap()
                .filter(|g| g["epoch"].as_u64() > Some(epoch))
                .and_then(|g| g["primary"].as_i64())
                .filter(|p| *p != old);
        }
        if let Some(n) = new
            && send(&group.pool, &group.addr_of(n), seq).await.is_ok()
        {
            acked.insert(seq);
            acked_by_new += 1;
        }
        seq += 1;
    }
    let new = new.unwrap();

    // 3. Heal: the old primary follows the new one; every acknowledged write is in every log.
    group.nodes[&old].ha_link.delay(Duration::ZERO);
    group.nodes[&old].heal();
    wait_group(&controllers, "all 3 nodes in sync again", |g| {
        g["inSync"].as_array().is_some_and(|s| s.len() == 3) && g["primary"].as_i64() == Some(new)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let in_log = group.check_final_logs(&acked);
    eprintln!(
        "slow links: {per_send:?} per SYNC send at 100 ms; the old primary acknowledged {acked_by_old} \
         while cut from the controllers, the new one {acked_by_new}; final log {} messages on each of 3 nodes",
        in_log.len()
    );
}
