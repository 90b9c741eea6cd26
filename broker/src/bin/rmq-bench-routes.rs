//! `rmq-bench-routes`: route scale on a name server, and route and assignment queries on a
//! proxy, from many clients at once.
//!
//! 1. **Registration storm**: `--nodes` simulated store nodes (each its own connection) register
//!    `--topics` topics of `--queues` queues at once with REGISTER_BROKER, as a whole cluster
//!    starting together does. Prints the time until all are registered and the latency of each.
//! 2. **Steady state** (`--duration` s): `--route-clients` connections ask GET_ROUTEINFO_BY_TOPIC
//!    for random topics back to back, while every node heartbeats (QUERY_DATA_VERSION) each
//!    second and, each second, one node registers its whole table again with a new version (a
//!    topic changed). Prints route-query throughput and latency, and heartbeat and
//!    re-registration latency under that load: a stall shows as a max.
//! 3. **Client storm** (with `--proxy`): `--grpc-clients` clients, each on its own connection,
//!    all at once send QueryRoute and then QueryAssignment (topic i, group i % `--groups`), as
//!    that many official clients starting together do. Prints the time until all are served,
//!    errors, and latency.
//!
//! ```text
//! rmq-bench-routes --namesrv 127.0.0.1:9876 --nodes 20 --topics 12500 --proxy 127.0.0.1:8081
//! ```
//!
//! The simulated nodes advertise addresses nobody listens on; the name server does not dial
//! them. scripts/bench-routes.sh starts the name server, a store node and a proxy, and runs this.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;

use broker::protocol::grpc::client::{request, resource as res};
use broker::protocol::grpc::pb::{self, Code, messaging_service_client::MessagingServiceClient};
use broker::protocol::remoting::body::{
    self, DataVersion, RegisterBrokerBody, TopicConfigSerializeWrapper, TopicConfigWire,
};
use broker::protocol::remoting::codec::DEFAULT_MAX_FRAME;
use broker::protocol::remoting::codes::{request as rq, response as rs};
use broker::protocol::remoting::conn::{self, Connection, NoRequests};

#[path = "bench_common/mod.rs"]
mod common;
use common::Recorder;

#[derive(Parser, Clone)]
#[command(
    name = "rmq-bench-routes",
    about = "Route scale on a name server and a proxy"
)]
struct Args {
    /// host:port of the name server (remoting).
    #[arg(long, default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// Simulated store nodes, each registering every topic.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Topics each node registers (named `<topic-prefix>-<i>`).
    #[arg(long, default_value_t = 12_500)]
    topics: usize,
    #[arg(long, default_value = "ScaleTopic")]
    topic_prefix: String,
    #[arg(long, default_value_t = 8)]
    queues: i32,
    /// Cluster name of the simulated nodes.
    #[arg(long, default_value = "RouteBench")]
    cluster: String,
    /// Connections asking for routes back to back in the steady state.
    #[arg(long, default_value_t = 32)]
    route_clients: usize,
    /// Seconds of steady state.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// host:port of a proxy (gRPC) for the client storm; skipped without it.
    #[arg(long)]
    proxy: Option<String>,
    /// Clients of the storm, each on its own connection.
    #[arg(long, default_value_t = 2_000)]
    grpc_clients: usize,
    /// Topics the storm's clients ask about (client i: topic i % this); 0: all `--topics`.
    /// Few topics for many clients is many applications' clients starting together.
    #[arg(long, default_value_t = 0)]
    storm_topics: usize,
    /// Groups the storm's clients ask assignments for (`<group-prefix>-<i % groups>`).
    #[arg(long, default_value_t = 1_000)]
    groups: usize,
    #[arg(long, default_value = "ScaleGroup")]
    group_prefix: String,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// One simulated store node.
struct Node {
    name: String,
    addr: String,
    conn: Arc<Connection>,
    version: AtomicU64,
}

impl Node {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("brokerName", self.name.clone()),
            ("brokerAddr", self.addr.clone()),
            ("clusterName", String::new()),
            ("brokerId", "0".to_owned()),
        ]
    }

    fn data_version(&self) -> DataVersion {
        DataVersion {
            timestamp: 1,
            counter: self.version.load(Ordering::Relaxed) as i64,
            state_version: None,
        }
    }

    /// REGISTER_BROKER with the whole topic table.
    async fn register(
        &self,
        args: &Args,
        table: &TopicConfigSerializeWrapper,
    ) -> anyhow::Result<()> {
        let mut wrapper = table.clone();
        wrapper.data_version = self.data_version();
        let body = body::to_body(&RegisterBrokerBody {
            topic_config_serialize_wrapper: wrapper,
            filter_server_list: Vec::new(),
        });
        let mut fields = self.fields();
        fields[2].1 = args.cluster.clone();
        fields.extend([
            ("haServerAddr", self.addr.clone()),
            ("heartbeatTimeoutMillis", "120000".to_owned()),
            ("enableActingMaster", "false".to_owned()),
            ("compressed", "false".to_owned()),
            ("bodyCrc32", crc32fast::hash(&body).to_string()),
        ]);
        let mut req = conn::request(rq::REGISTER_BROKER, fields);
        req.body = body;
        let r = self.conn.invoke(req, TIMEOUT).await?;
        if r.code != rs::SUCCESS {
            bail!("{} refused: {} {:?}", self.name, r.code, r.remark);
        }
        Ok(())
    }

    /// QUERY_DATA_VERSION: the heartbeat of a node whose topics did not change.
    async fn heartbeat(&self, args: &Args) -> anyhow::Result<()> {
        let mut fields = self.fields();
        fields[2].1 = args.cluster.clone();
        let mut req = conn::request(rq::QUERY_DATA_VERSION, fields);
        req.body = body::to_body(&self.data_version());
        let r = self.conn.invoke(req, TIMEOUT).await?;
        if r.code != rs::SUCCESS || r.ext_fields.get("changed").map(String::as_str) != Some("false")
        {
            bail!(
                "{}: heartbeat answered {} {:?}",
                self.name,
                r.code,
                r.ext_fields
            );
        }
        Ok(())
    }
}

async fn connect(addr: &str) -> anyhow::Result<Arc<Connection>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(Connection::spawn(
        stream,
        Arc::new(NoRequests),
        DEFAULT_MAX_FRAME,
    ))
}

fn topic_table(args: &Args) -> TopicConfigSerializeWrapper {
    TopicConfigSerializeWrapper {
        topic_config_table: (0..args.topics)
            .map(|i| {
                let name = format!("{}-{i}", args.topic_prefix);
                let wire = TopicConfigWire {
                    topic_name: name.clone(),
                    read_queue_nums: args.queues,
                    write_queue_nums: args.queues,
                    ..TopicConfigWire::default()
                };
                (name, wire)
            })
            .collect(),
        data_version: DataVersion::default(),
    }
}

/// A cheap per-task random sequence (xorshift), enough to spread queries over topics.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn route_query(conn: &Connection, topic: String) -> anyhow::Result<()> {
    let r = conn
        .invoke(
            conn::request(rq::GET_ROUTEINFO_BY_TOPIC, [("topic", topic.clone())]),
            TIMEOUT,
        )
        .await?;
    if r.code != rs::SUCCESS || r.body.is_empty() {
        bail!("route of {topic}: {} {:?}", r.code, r.remark);
    }
    Ok(())
}

/// One storm client: its own connection, QueryRoute, then QueryAssignment.
async fn storm_client(
    args: Arc<Args>,
    i: usize,
    route: Arc<Recorder>,
    assign: Arc<Recorder>,
) -> anyhow::Result<()> {
    let proxy = args.proxy.clone().expect("storm runs with a proxy");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect()
        .await?;
    let mut c = MessagingServiceClient::new(channel);
    let client_id = format!("route-bench-{i}-{}", std::process::id());
    let topics = if args.storm_topics == 0 {
        args.topics
    } else {
        args.storm_topics.min(args.topics)
    };
    let topic = format!("{}-{}", args.topic_prefix, i % topics.max(1));
    let group = format!("{}-{}", args.group_prefix, i % args.groups.max(1));
    let t = Instant::now();
    let r = c
        .query_route(request(
            pb::QueryRouteRequest {
                topic: res(&topic),
                endpoints: None,
            },
            &client_id,
        ))
        .await?
        .into_inner();
    let code = r.status.as_ref().map_or(-1, |s| s.code);
    if code != Code::Ok as i32 || r.message_queues.is_empty() {
        bail!(
            "QueryRoute {topic}: status {code} {:?}",
            r.status.map(|s| s.message)
        );
    }
    route.record(t.elapsed().as_micros() as u64, t.elapsed());
    let t = Instant::now();
    let r = c
        .query_assignment(request(
            pb::QueryAssignmentRequest {
                topic: res(&topic),
                group: res(&group),
                endpoints: None,
            },
            &client_id,
        ))
        .await?
        .into_inner();
    let code = r.status.as_ref().map_or(-1, |s| s.code);
    if code != Code::Ok as i32 || r.assignments.is_empty() {
        bail!(
            "QueryAssignment {topic}/{group}: status {code} {:?}",
            r.status.map(|s| s.message)
        );
    }
    assign.record(t.elapsed().as_micros() as u64, t.elapsed());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let table = Arc::new(topic_table(&args));
    let mut out = serde_json::Map::new();
    out.insert(
        "config".into(),
        json!({"nodes": args.nodes, "topics": args.topics, "queues": args.queues,
               "routeClients": args.route_clients, "duration": args.duration,
               "grpcClients": args.grpc_clients, "groups": args.groups,
               "stormTopics": args.storm_topics}),
    );

    // 1. Registration storm.
    let mut nodes = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        nodes.push(Arc::new(Node {
            name: format!("route-bench-{i}"),
            // Port 1 on 127.0.0.2: nothing listens there; the name server never dials it.
            addr: format!("127.0.0.2:{}", 1 + i),
            conn: connect(&args.namesrv).await?,
            version: AtomicU64::new(1),
        }));
    }
    let body_bytes = body::to_body(&RegisterBrokerBody {
        topic_config_serialize_wrapper: (*table).clone(),
        filter_server_list: Vec::new(),
    })
    .len();
    let registrations = Arc::new(Recorder::default());
    let started = Instant::now();
    let tasks: Vec<_> = nodes
        .iter()
        .map(|n| {
            let (n, args, table, rec) = (
                Arc::clone(n),
                Arc::clone(&args),
                Arc::clone(&table),
                Arc::clone(&registrations),
            );
            tokio::spawn(async move {
                let t = Instant::now();
                n.register(&args, &table).await?;
                rec.record(t.elapsed().as_micros() as u64, t.elapsed());
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let storm_secs = started.elapsed().as_secs_f64();
    let reg = registrations.summary(storm_secs);
    println!(
        "registration storm: {} nodes x {} topics ({:.1} MB each) registered in {:.2} s; per registration ms p50 {:.1} p99 {:.1} max {:.1}",
        args.nodes,
        args.topics,
        body_bytes as f64 / 1e6,
        storm_secs,
        reg.p50,
        reg.p99,
        reg.max
    );
    out.insert(
        "registrationStorm".into(),
        json!({"seconds": storm_secs, "bodyBytes": body_bytes, "latency": reg.json()}),
    );
    // The name server holds every topic.
    let probe = connect(&args.namesrv).await?;
    route_query(&probe, format!("{}-{}", args.topic_prefix, args.topics - 1)).await?;

    // 2. Steady state: route queries under heartbeats and re-registrations.
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(Recorder::default());
    let query_errors = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..args.route_clients {
        let conn = connect(&args.namesrv).await?;
        let (args, stop, rec, errors) = (
            Arc::clone(&args),
            Arc::clone(&stop),
            Arc::clone(&queries),
            Arc::clone(&query_errors),
        );
        clients.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                let topic = format!(
                    "{}-{}",
                    args.topic_prefix,
                    next_random(&mut seed) % args.topics as u64
                );
                let t = Instant::now();
                match route_query(&conn, topic).await {
                    Ok(()) => rec.record(t.elapsed().as_micros() as u64, t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let heartbeats = Arc::new(Recorder::default());
    let reregistrations = Arc::new(Recorder::default());
    let background_errors = Arc::new(AtomicU64::new(0));
    let steady = {
        let (nodes, args, table, stop) = (
            nodes.clone(),
            Arc::clone(&args),
            Arc::clone(&table),
            Arc::clone(&stop),
        );
        let (hb, rereg, errors) = (
            Arc::clone(&heartbeats),
            Arc::clone(&reregistrations),
            Arc::clone(&background_errors),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut turn = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                // One node's topics changed: it registers its whole table again.
                let changed = Arc::clone(&nodes[turn % nodes.len()]);
                turn += 1;
                changed.version.fetch_add(1, Ordering::Relaxed);
                let (a, t2, r2, e2) = (
                    Arc::clone(&args),
                    Arc::clone(&table),
                    Arc::clone(&rereg),
                    Arc::clone(&errors),
                );
                let node = Arc::clone(&changed);
                tokio::spawn(async move {
                    let t = Instant::now();
                    match node.register(&a, &t2).await {
                        Ok(()) => r2.record(t.elapsed().as_micros() as u64, t.elapsed()),
                        Err(_) => {
                            e2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                // The others heartbeat (the changed one would rightly answer "changed").
                for n in nodes.iter().filter(|n| !Arc::ptr_eq(n, &changed)) {
                    let (n, a, hb, errors) = (
                        Arc::clone(n),
                        Arc::clone(&args),
                        Arc::clone(&hb),
                        Arc::clone(&errors),
                    );
                    tokio::spawn(async move {
                        let t = Instant::now();
                        match n.heartbeat(&a).await {
                            Ok(()) => hb.record(t.elapsed().as_micros() as u64, t.elapsed()),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            }
        })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let _ = steady.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let secs = started.elapsed().as_secs_f64();
    let (q, hb, rr) = (
        queries.summary(secs),
        heartbeats.summary(secs),
        reregistrations.summary(secs),
    );
    println!(
        "{}",
        q.line(&format!(
            "route queries ({} connections)",
            args.route_clients
        ))
    );
    println!(
        "route query errors: {}; heartbeats: {} (ms p50 {:.2} p99 {:.2} max {:.2}); re-registrations of {} topics: {} (ms p50 {:.1} p99 {:.1} max {:.1}); heartbeat or registration errors: {}",
        query_errors.load(Ordering::Relaxed),
        hb.count,
        hb.p50,
        hb.p99,
        hb.max,
        args.topics,
        rr.count,
        rr.p50,
        rr.p99,
        rr.max,
        background_errors.load(Ordering::Relaxed)
    );
    out.insert(
        "steady".into(),
        json!({"seconds": secs, "routeQueries": q.json(), "routeQueryErrors": query_errors.load(Ordering::Relaxed),
               "heartbeats": hb.json(), "reregistrations": rr.json(),
               "backgroundErrors": background_errors.load(Ordering::Relaxed)}),
    );

    // 3. Client storm on the proxy.
    if args.proxy.is_some() {
        let (route, assign) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.grpc_clients)
            .map(|i| {
                tokio::spawn(storm_client(
                    Arc::clone(&args),
                    i,
                    Arc::clone(&route),
                    Arc::clone(&assign),
                ))
            })
            .collect();
        let mut errors = 0u64;
        let mut first_error = None;
        for t in tasks {
            if let Err(e) = t.await? {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let (r, a) = (route.summary(secs), assign.summary(secs));
        println!(
            "client storm: {} clients, each on its own connection, served in {secs:.2} s; errors {errors}{}",
            args.grpc_clients,
            first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        );
        println!("{}", r.line("QueryRoute"));
        println!("{}", a.line("QueryAssignment"));
        out.insert(
            "clientStorm".into(),
            json!({"clients": args.grpc_clients, "seconds": secs, "errors": errors, "firstError": first_error,
                   "queryRoute": r.json(), "queryAssignment": a.json()}),
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&serde_json::Value::Object(out))?,
        )?;
    }
    Ok(())
}
