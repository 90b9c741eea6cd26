//! `rmq-bench`: a gRPC load generator for any RocketMQ 5 endpoint (this broker or Apache's
//! proxy). Producers send fixed-size messages carrying their send time; consumers receive and
//! ack them. Prints send throughput and latency, end-to-end latency (send to receive), consumer
//! throughput, and, with `--broker-pid` (repeatable: a proxy and its store nodes), the peak RSS
//! and CPU seconds per million messages of those processes. `--json` writes the same as JSON.
//!
//! ```text
//! rmq-bench --endpoint 127.0.0.1:8081 --topic BenchTopic --producers 8 --consumers 2 --duration 20
//! rmq-bench --topic Cold --producers 0 --consumers 4 --expect 100000   # read what is stored
//! ```
//!
//! Each producer and consumer announces itself over a Telemetry stream first, as the official
//! clients do (Apache's proxy refuses receives from a client whose settings it has not seen).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use broker::protocol::grpc::client::{receive_request, resource as res};
use broker::protocol::grpc::pb::{self, Code, messaging_service_client::MessagingServiceClient};

#[path = "bench_common/mod.rs"]
mod common;
use common::Recorder;

#[derive(Parser, Clone)]
#[command(name = "rmq-bench", about = "RocketMQ 5 gRPC load generator")]
struct Args {
    /// host:port of the gRPC endpoint (plaintext).
    #[arg(long, default_value = "127.0.0.1:8081")]
    endpoint: String,
    /// Topic to use; it must exist, with at least `--queues` queues. With `--topics N` above 1,
    /// the topics are `<topic>-0` .. `<topic>-<N-1>`.
    #[arg(long, default_value = "BenchTopic")]
    topic: String,
    /// Number of topics; producers spread their sends evenly over every queue of all of them,
    /// and consumers share the topics (each receives from its own, in turn).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Create the topics first (`--topics` of `--queues` queues) through this node's HTTP
    /// admin API, e.g. `http://127.0.0.1:8080` (this broker only).
    #[arg(long)]
    create_topics: Option<String>,
    /// gRPC connections to open (all at once); producers, consumers and idle consumers take
    /// them in turn. Each connection is its own TCP connection and HTTP/2 session.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Consumers that only hold long-polling receives on `--idle-topic` (nothing is sent
    /// there), in group `<group>-idle`.
    #[arg(long, default_value_t = 0)]
    idle_consumers: usize,
    /// Topic of the idle consumers; it must exist.
    #[arg(long, default_value = "IdleTopic")]
    idle_topic: String,
    /// Messages a consumer asks for in each receive (the official clients' default is 32;
    /// 1 makes every message pay a whole receive and ack, as with many quiet topics).
    #[arg(long, default_value_t = 32)]
    receive_batch: i32,
    /// Long polling of each receive, in milliseconds (Apache's proxy refuses less than 5 s).
    #[arg(long, default_value_t = 5000)]
    long_polling_ms: u64,
    /// Queues of each topic to spread sends over.
    #[arg(long, default_value_t = 8)]
    queues: i32,
    #[arg(long, default_value = "BenchGroup")]
    group: String,
    /// Consumer groups: with N above 1, topic i is consumed by group `<group>-<i % N>`.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent producers (each sends synchronously, one message at a time). 0: consume only.
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Concurrent consumers (receive up to `--receive-batch`, then ack them in one call); more
    /// consumers than topics share them, several to a topic in its group.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Ack every received message in its own call, all of a receive's at once, as the
    /// official clients do (their ack takes one message), instead of one call per receive.
    #[arg(long)]
    ack_each: bool,
    /// Seconds to send for; consumers keep going until they caught up (at most 10 s more,
    /// receiving without long polling then).
    /// With `--producers 0`, the longest to wait for `--expect` messages.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Messages per send call (one `SendMessageRequest` carrying a batch; same topic and queue).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Total messages per second over all producers (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// With `--producers 0`: stop once this many messages were received.
    #[arg(long, default_value_t = 0)]
    expect: u64,
    /// Stop sending after this many messages over all producers (0: send for `--duration`).
    /// `--messages <topics x queues>` puts one message into every queue.
    #[arg(long, default_value_t = 0)]
    messages: u64,
    /// Process ids whose peak RSS and CPU time to report (the broker, or a proxy and its
    /// store nodes); repeat the flag for several.
    #[arg(long)]
    broker_pid: Vec<u32>,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Connect with TLS, verifying the server against this PEM CA.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Sign every request as this user (RocketMQ ACL 2.0), as the official clients do.
    #[arg(long, env = "RMQ_ACCESS_KEY", requires = "secret_key")]
    access_key: Option<String>,
    #[arg(
        long,
        env = "RMQ_SECRET_KEY",
        hide_env_values = true,
        requires = "access_key"
    )]
    secret_key: Option<String>,
}

/// The credentials every request is signed with, if any.
static CREDENTIALS: std::sync::OnceLock<broker::auth::guard::Credentials> =
    std::sync::OnceLock::new();

/// A request with the official clients' headers, signed when credentials are set.
fn request<T>(message: T, client_id: &str) -> tonic::Request<T> {
    let mut r = broker::protocol::grpc::client::request(message, client_id);
    if let Some(c) = CREDENTIALS.get() {
        broker::protocol::grpc::client::sign(&mut r, c);
    }
    r
}

impl Args {
    fn group_name(&self, topic: usize) -> String {
        if self.groups <= 1 {
            self.group.clone()
        } else {
            format!("{}-{}", self.group, topic % self.groups)
        }
    }

    fn topic_name(&self, i: usize) -> String {
        if self.topics <= 1 {
            self.topic.clone()
        } else {
            format!("{}-{}", self.topic, i % self.topics)
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// (RSS KiB, anonymous RSS KiB, CPU seconds) of a process.
fn proc_stats(pid: u32) -> Option<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    Some((field("VmRSS:"), field("RssAnon:"), ticks / 100.0))
}

/// The summed (RSS KiB, anonymous KiB, CPU s) of the watched processes.
fn procs_stats(pids: &[u32]) -> (u64, u64, f64) {
    pids.iter()
        .filter_map(|p| proc_stats(*p))
        .fold((0, 0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

/// Samples the watched processes' RSS every 100 ms and keeps the peak (RSS, anonymous) KiB.
fn watch_peak(pids: Vec<u32>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let mut peak = (0, 0);
        while !stop.load(Ordering::Relaxed) && !pids.is_empty() {
            let (rss, anon, _) = procs_stats(&pids);
            peak = (peak.0.max(rss), peak.1.max(anon));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    })
}

/// Opens the client's Telemetry stream and announces its settings; the returned sender keeps
/// the stream open. Commands the server sends back are read and dropped.
async fn announce(
    mut c: MessagingServiceClient<Channel>,
    client_id: &str,
    pub_sub: pb::settings::PubSub,
    client_type: pb::ClientType,
) -> anyhow::Result<mpsc::Sender<pb::TelemetryCommand>> {
    let (tx, rx) = mpsc::channel(4);
    let settings_group = match &pub_sub {
        pb::settings::PubSub::Subscription(sub) => sub.group.as_ref().map(|g| g.name.clone()),
        _ => None,
    };
    let settings = pb::Settings {
        client_type: Some(client_type as i32),
        request_timeout: Some(prost_types::Duration {
            seconds: 3,
            nanos: 0,
        }),
        user_agent: Some(pb::Ua {
            language: pb::Language::Rust as i32,
            version: env!("CARGO_PKG_VERSION").into(),
            platform: std::env::consts::OS.into(),
            hostname: "rmq-bench".into(),
        }),
        pub_sub: Some(pub_sub),
        ..Default::default()
    };
    tx.send(pb::TelemetryCommand {
        status: None,
        command: Some(pb::telemetry_command::Command::Settings(settings)),
    })
    .await?;
    let mut replies = c
        .telemetry(request(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            client_id,
        ))
        .await
        .context("opening the Telemetry stream")?
        .into_inner();
    // The server answers with its merged settings.
    tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .context("no settings back over Telemetry in 5 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = replies.message().await {} });
    // Heartbeats every 10 s, as the official clients send: Apache's proxy forgets the settings
    // of a consumer whose channel no heartbeat registered (then its receives fail).
    let group = match &settings_group {
        Some(g) => res(g),
        None => None,
    };
    let id = client_id.to_owned();
    tokio::spawn(async move {
        loop {
            let hb = pb::HeartbeatRequest {
                group: group.clone(),
                client_type: client_type as i32,
            };
            let _ = c.heartbeat(request(hb, &id)).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    Ok(tx)
}

struct Run {
    started: Instant,
    /// The first error a server answered with, to print.
    first_error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    rec: Arc<Recorder>,
    errors: Arc<AtomicU64>,
    calls: Arc<Calls>,
}

/// The consumers' RPCs: how many receives it took per message is what separates a few busy
/// queues from many quiet ones.
#[derive(Default)]
struct Calls {
    receives: AtomicU64,
    empty_receives: AtomicU64,
    acks: AtomicU64,
    /// Set once the producers stopped: consumers then receive without long polling, so that
    /// each sweeps its topics at once rather than waiting out each empty one in turn.
    catching_up: AtomicBool,
    /// Empty receives made while catching up (not in `receives`).
    catch_up_receives: AtomicU64,
}

async fn produce(
    mut c: MessagingServiceClient<Channel>,
    args: Args,
    id: usize,
    run: Run,
) -> anyhow::Result<()> {
    let client_id = format!("bench-producer-{id}-{}", std::process::id());
    let topics: Vec<String> = (0..args.topics.max(1))
        .map(|i| args.topic_name(i))
        .collect();
    let publishing = pb::settings::PubSub::Publishing(pb::Publishing {
        topics: topics.iter().map(|t| res(t).expect("named")).collect(),
        max_body_size: 0,
        validate_message_type: false,
    });
    let _telemetry = announce(c.clone(), &client_id, publishing, pb::ClientType::Producer).await?;
    let padding = vec![b'x'; args.size.saturating_sub(8)];
    let per_call = (args.producers * args.batch.max(1)) as f64;
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(per_call / args.rate as f64));
    let mut next = Instant::now();
    let mut seq = 0u64;
    // Producers take turns along one sequence, so N messages reach N different queues.
    let mut call = 0u64;
    while !run.stop.load(Ordering::Relaxed) {
        let k = (call * args.producers as u64 + id as u64) * args.batch.max(1) as u64;
        if args.messages > 0 && k >= args.messages {
            break;
        }
        call += 1;
        if let Some(i) = interval {
            next += i;
            tokio::time::sleep_until(next.into()).await;
        }
        // Every (topic, queue) pair in turn: topic first, then queue, so that a run reaches
        // all of them whatever the counts.
        let topic = &topics[(k % topics.len() as u64) as usize];
        let queue_id = ((k / topics.len() as u64) % args.queues as u64) as i32;
        let messages: Vec<pb::Message> = (0..args.batch.max(1))
            .map(|_| {
                let mut body = BytesMut::with_capacity(args.size.max(8));
                body.put_u64(now_nanos());
                body.put_slice(&padding);
                let m = pb::Message {
                    topic: res(topic),
                    user_properties: Default::default(),
                    system_properties: Some(pb::SystemProperties {
                        message_id: format!("BENCH{id:04X}{seq:016X}"),
                        queue_id,
                        body_encoding: pb::Encoding::Identity as i32,
                        message_type: pb::MessageType::Normal as i32,
                        ..Default::default()
                    }),
                    body: body.freeze(),
                };
                seq += 1;
                m
            })
            .collect();
        let n = messages.len();
        let mut r = request(pb::SendMessageRequest { messages }, &client_id);
        r.set_timeout(Duration::from_secs(3));
        let t = Instant::now();
        match c.send_message(r).await {
            Ok(r)
                if r.get_ref()
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == Code::Ok as i32) =>
            {
                let us = t.elapsed().as_micros() as u64;
                for _ in 0..n {
                    run.rec.record(us, run.started.elapsed());
                }
            }
            other => {
                run.errors.fetch_add(1, Ordering::Relaxed);
                run.first_error.lock().get_or_insert_with(|| match other {
                    Ok(r) => format!("send: {:?}", r.get_ref().status),
                    Err(e) => format!("send: {e}"),
                });
            }
        }
    }
    Ok(())
}

async fn consume(
    mut c: MessagingServiceClient<Channel>,
    args: Args,
    id: usize,
    run: Run,
) -> anyhow::Result<()> {
    let client_id = format!("bench-consumer-{id}-{}", std::process::id());
    // This consumer's topics: every `consumers`-th one; with more consumers than topics, one
    // topic, shared with the other consumers of its group.
    let topics = args.topics.max(1);
    let mine: Vec<(String, String)> = if args.consumers > topics {
        vec![(args.topic_name(id % topics), args.group_name(id % topics))]
    } else {
        (id..topics)
            .step_by(args.consumers.max(1))
            .map(|i| (args.topic_name(i), args.group_name(i)))
            .collect()
    };
    let subscription = pb::settings::PubSub::Subscription(pb::Subscription {
        group: res(&mine[0].1),
        subscriptions: mine
            .iter()
            .map(|(topic, _)| pb::SubscriptionEntry {
                topic: res(topic),
                expression: Some(pb::FilterExpression {
                    r#type: pb::FilterType::Tag as i32,
                    expression: "*".into(),
                }),
            })
            .collect(),
        ..Default::default()
    });
    let long_polling = Duration::from_millis(args.long_polling_ms);
    let mut turn = 0usize;
    let _telemetry = announce(
        c.clone(),
        &client_id,
        subscription,
        pb::ClientType::SimpleConsumer,
    )
    .await?;
    while !run.stop.load(Ordering::Relaxed) {
        let (topic, group) = &mine[turn % mine.len()];
        turn += 1;
        let catching_up = run.calls.catching_up.load(Ordering::Relaxed);
        let r = receive_request(
            topic,
            group,
            args.receive_batch.max(1),
            Duration::from_secs(30),
            if catching_up {
                Duration::ZERO
            } else {
                long_polling
            },
        );
        // A deadline, as the official clients set: long polling plus the request timeout
        // (Apache's proxy derives its polling time from it).
        let mut r = request(r, &client_id);
        r.set_timeout(long_polling + Duration::from_secs(3));
        if !catching_up {
            run.calls.receives.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(resp) = c.receive_message(r).await else {
            run.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = resp.into_inner();
        let mut entries = Vec::new();
        while let Ok(Some(item)) = stream.message().await {
            if let Some(pb::receive_message_response::Content::Status(st)) = &item.content
                && st.code != Code::Ok as i32
                && st.code != Code::MessageNotFound as i32
            {
                run.errors.fetch_add(1, Ordering::Relaxed);
                run.first_error
                    .lock()
                    .get_or_insert_with(|| format!("receive: {} {}", st.code, st.message));
            }
            if let Some(pb::receive_message_response::Content::Message(m)) = item.content {
                let body: Bytes = m.body;
                if body.len() >= 8 {
                    let sent = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
                    run.rec.record(
                        now_nanos().saturating_sub(sent) / 1000,
                        run.started.elapsed(),
                    );
                }
                let sp = m.system_properties.unwrap_or_default();
                entries.push(pb::AckMessageEntry {
                    message_id: sp.message_id,
                    receipt_handle: sp.receipt_handle.unwrap_or_default(),
                    lite_topic: None,
                });
            }
        }
        // While catching up, an empty receive is only the sweep (counted apart).
        let counter = match (catching_up, entries.is_empty()) {
            (true, true) => Some(&run.calls.catch_up_receives),
            (true, false) => Some(&run.calls.receives),
            (false, true) => Some(&run.calls.empty_receives),
            (false, false) => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if !entries.is_empty() {
            let calls: Vec<Vec<pb::AckMessageEntry>> = if args.ack_each {
                entries.into_iter().map(|e| vec![e]).collect()
            } else {
                vec![entries]
            };
            run.calls
                .acks
                .fetch_add(calls.len() as u64, Ordering::Relaxed);
            let acks = calls.into_iter().map(|entries| {
                let mut c = c.clone();
                let ack = pb::AckMessageRequest {
                    group: res(group),
                    topic: res(topic),
                    entries,
                };
                let r = request(ack, &client_id);
                async move { c.ack_message(r).await }
            });
            for r in futures_util::future::join_all(acks).await {
                if r.is_err() {
                    run.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// Creates the run's topics through the HTTP admin API, 2,000 per request.
async fn create_topics(admin: &str, args: &Args) -> anyhow::Result<()> {
    let names: Vec<String> = (0..args.topics.max(1))
        .map(|i| args.topic_name(i))
        .collect();
    let http = reqwest::Client::new();
    let started = Instant::now();
    for chunk in names.chunks(2000) {
        let body: Vec<_> = chunk
            .iter()
            .map(|n| json!({ "name": n, "queues": args.queues }))
            .collect();
        let mut req = http.post(format!("{admin}/admin/topics")).json(&body);
        if let Some(c) = CREDENTIALS.get() {
            for (k, v) in broker::protocol::grpc::client::auth_headers(c) {
                req = req.header(k, v);
            }
        }
        let resp = req.send().await.context("creating topics")?;
        if !resp.status().is_success() {
            bail!(
                "creating topics: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
    }
    println!(
        "created {} topics of {} queues in {:.2} s",
        names.len(),
        args.queues,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One gRPC connection to the endpoint (TLS when `--tls-ca` is given).
async fn connect(args: &Args) -> anyhow::Result<MessagingServiceClient<Channel>> {
    let endpoint = Channel::from_shared(format!("http://{}", args.endpoint))?;
    let channel = match &args.tls_ca {
        None => endpoint.connect().await,
        Some(ca) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let cfg = broker::tls::TlsConfig {
                ca: Some(ca.clone()),
                ..Default::default()
            };
            let tls = broker::tls::ClientTls::new(&cfg, broker::protocol::grpc::listener::ALPN)?
                .context("a CA is given")?;
            let addr = args.endpoint.clone();
            endpoint
                .connect_with_connector(tower::service_fn(move |_| {
                    let (tls, addr) = (tls.clone(), addr.clone());
                    async move {
                        let tcp = tokio::net::TcpStream::connect(&addr).await?;
                        tcp.set_nodelay(true)?;
                        let s = tls.connect(broker::tls::host_of(&addr), tcp).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }))
                .await
        }
    }
    .with_context(|| format!("connecting to {}", args.endpoint))?;
    Ok(MessagingServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// The load generator shares the machine with the broker it measures: glibc's allocator
/// would spend CPU the broker could use (the broker uses mimalloc too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.queues < 1 || (args.producers == 0 && args.consumers == 0 && args.idle_consumers == 0) {
        bail!("--queues must be positive, and there must be producers or consumers");
    }
    if args.producers == 0 && args.expect == 0 {
        bail!("--producers 0 (consume only) needs --expect N");
    }
    if let (Some(access_key), Some(secret_key)) = (args.access_key.clone(), args.secret_key.clone())
    {
        let _ = CREDENTIALS.set(broker::auth::guard::Credentials {
            access_key,
            secret_key,
        });
    }
    let opened = Instant::now();
    // All connections at once, as clients reconnecting after a restart do.
    let clients: Vec<MessagingServiceClient<Channel>> =
        futures_util::future::join_all((0..args.connections.max(1)).map(|_| connect(&args)))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let connect_secs = opened.elapsed().as_secs_f64();
    if clients.len() > 1 {
        println!(
            "connections: {} opened at once in {connect_secs:.2} s",
            clients.len()
        );
    }
    let client_for = |i: usize| clients[i % clients.len()].clone();
    let stop_send = Arc::new(AtomicBool::new(false));
    let stop_recv = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let sends = Arc::new(Recorder::default());
    let e2e = Arc::new(Recorder::default());
    let send_errors = Arc::new(AtomicU64::new(0));
    let recv_errors = Arc::new(AtomicU64::new(0));
    let before = procs_stats(&args.broker_pid);
    let peak = watch_peak(args.broker_pid.clone(), Arc::clone(&stop_watch));
    let started = Instant::now();
    let first_error = Arc::new(Mutex::new(None));
    let calls = Arc::new(Calls::default());
    let run = |stop: &Arc<AtomicBool>, rec: &Arc<Recorder>, errors: &Arc<AtomicU64>| Run {
        started,
        first_error: Arc::clone(&first_error),
        stop: Arc::clone(stop),
        rec: Arc::clone(rec),
        errors: Arc::clone(errors),
        calls: Arc::clone(&calls),
    };
    if let Some(admin) = &args.create_topics {
        create_topics(admin, &args).await?;
    }
    let consumers: Vec<_> = (0..args.consumers)
        .map(|id| {
            tokio::spawn(consume(
                client_for(args.producers + id),
                args.clone(),
                id,
                run(&stop_recv, &e2e, &recv_errors),
            ))
        })
        .collect();
    let producers: Vec<_> = (0..args.producers)
        .map(|id| {
            tokio::spawn(produce(
                client_for(id),
                args.clone(),
                id,
                run(&stop_send, &sends, &send_errors),
            ))
        })
        .collect();
    // Idle consumers: a long-polling receive each, on a topic nothing is sent to, held for the
    // whole run (what thousands of mostly idle clients cost a proxy).
    let idle_errors = Arc::new(AtomicU64::new(0));
    let idle: Vec<_> = (0..args.idle_consumers)
        .map(|i| {
            let (mut c, args) = (
                client_for(args.producers + args.consumers + i),
                args.clone(),
            );
            let (stop, errors, first_error) = (
                Arc::clone(&stop_recv),
                Arc::clone(&idle_errors),
                Arc::clone(&first_error),
            );
            tokio::spawn(async move {
                let client_id = format!("bench-idle-{i}-{}", std::process::id());
                let polling = Duration::from_millis(args.long_polling_ms);
                while !stop.load(Ordering::Relaxed) {
                    let r = receive_request(
                        &args.idle_topic,
                        &format!("{}-idle", args.group),
                        1,
                        Duration::from_secs(30),
                        polling,
                    );
                    let mut r = request(r, &client_id);
                    r.set_timeout(polling + Duration::from_secs(5));
                    let failed = match c.receive_message(r).await {
                        Ok(resp) => {
                            let mut s = resp.into_inner();
                            let mut bad = None;
                            loop {
                                match s.message().await {
                                    Ok(Some(item)) => {
                                        if let Some(pb::receive_message_response::Content::Status(
                                            st,
                                        )) = item.content
                                            && st.code != Code::Ok as i32
                                            && st.code != Code::MessageNotFound as i32
                                        {
                                            bad = Some(format!(
                                                "idle receive: {} {}",
                                                st.code, st.message
                                            ));
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(e) => {
                                        bad = Some(format!("idle receive: {e}"));
                                        break;
                                    }
                                }
                            }
                            bad
                        }
                        Err(e) => Some(format!("idle receive: {e}")),
                    };
                    if let Some(e) = failed {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            })
        })
        .collect();
    let deadline = started + Duration::from_secs(args.duration);
    if args.producers > 0 {
        while Instant::now() < deadline && !producers.iter().all(|p| p.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        while e2e.count.load(Ordering::Relaxed) < args.expect && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop_send.store(true, Ordering::Relaxed);
    for p in producers {
        p.await??;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let sent = sends.count.load(Ordering::Relaxed);
    calls.catching_up.store(true, Ordering::Relaxed);
    let catch_up = Instant::now() + Duration::from_secs(10);
    while args.producers > 0
        && args.consumers > 0
        && e2e.count.load(Ordering::Relaxed) < sent
        && Instant::now() < catch_up
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_recv.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await??;
    }
    // Idle receives end at their long-polling time; do not wait for them.
    for i in &idle {
        i.abort();
    }
    if args.idle_consumers > 0 {
        println!(
            "idle consumers: {} on {} connections, receive errors: {}",
            args.idle_consumers,
            clients.len(),
            idle_errors.load(Ordering::Relaxed)
        );
    }
    stop_watch.store(true, Ordering::Relaxed);
    let (peak_rss, peak_anon) = peak.await?;
    let after = procs_stats(&args.broker_pid);

    println!(
        "rmq-bench: {} B bodies, {} topic(s) x {} queues, {} producers, {} consumers, {} s{}, endpoint {}",
        args.size,
        args.topics.max(1),
        args.queues,
        args.producers,
        args.consumers,
        args.duration,
        if args.rate > 0 {
            format!(", {} msg/s fixed", args.rate)
        } else {
            String::new()
        },
        args.endpoint
    );
    let send = sends.summary(send_secs);
    // Consumers are measured until their last message: they may finish before or after the
    // producers.
    let received_secs = Duration::from_nanos(e2e.last_ns.load(Ordering::Relaxed)).as_secs_f64();
    let received = e2e.summary(received_secs);
    if args.producers > 0 {
        println!("{}", send.line("send"));
        println!("send errors: {}", send_errors.load(Ordering::Relaxed));
    }
    if args.consumers > 0 {
        println!("{}", received.line("end-to-end (send to receive)"));
        println!(
            "consume: {} msgs, {:.0} msg/s; receive/ack errors: {}",
            received.count,
            received.per_sec,
            recv_errors.load(Ordering::Relaxed)
        );
        let (receives, empty, acks) = (
            calls.receives.load(Ordering::Relaxed),
            calls.empty_receives.load(Ordering::Relaxed),
            calls.acks.load(Ordering::Relaxed),
        );
        println!(
            "consumer calls: {receives} receives ({empty} empty), {acks} acks; {:.2} messages per non-empty receive",
            received.count as f64 / (receives - empty).max(1) as f64
        );
        println!(
            "after the producers stopped: {} empty receives without long polling (not counted above)",
            calls.catch_up_receives.load(Ordering::Relaxed)
        );
        let send_calls = sent.div_ceil(args.batch.max(1) as u64);
        if args.producers > 0 && received.count > 0 {
            println!(
                "calls per message (sends, receives and acks): {:.2}",
                (send_calls + receives + acks) as f64 / received.count as f64
            );
        }
    }
    if let Some(e) = first_error.lock().as_ref() {
        println!("first error: {e}");
    }
    let messages = if args.producers > 0 {
        sent
    } else {
        received.count as u64
    };
    let cpu = after.2 - before.2;
    let per_million = if messages > 0 {
        cpu / messages as f64 * 1e6
    } else {
        0.0
    };
    if !args.broker_pid.is_empty() {
        println!(
            "broker: peak RSS {} MiB (anonymous {} MiB), CPU {:.1} s, {:.1} CPU s per million messages",
            peak_rss / 1024,
            peak_anon / 1024,
            cpu,
            per_million
        );
    }
    if let Some(path) = &args.json {
        let out = json!({
            "endpoint": args.endpoint, "size": args.size, "topics": args.topics.max(1),
            "queues": args.queues, "producers": args.producers, "consumers": args.consumers,
            "durationSecs": args.duration, "rate": args.rate,
            "connections": clients.len(), "connectSecs": connect_secs,
            "idleConsumers": args.idle_consumers, "idleErrors": idle_errors.load(Ordering::Relaxed),
            "send": send.json(), "sendErrors": send_errors.load(Ordering::Relaxed),
            "endToEnd": received.json(), "receiveErrors": recv_errors.load(Ordering::Relaxed),
            "receives": calls.receives.load(Ordering::Relaxed),
            "emptyReceives": calls.empty_receives.load(Ordering::Relaxed),
            "catchUpReceives": calls.catch_up_receives.load(Ordering::Relaxed),
            "acks": calls.acks.load(Ordering::Relaxed), "ackEach": args.ack_each,
            "firstError": first_error.lock().clone(),
            "broker": (!args.broker_pid.is_empty()).then(|| json!({
                "peakRssMiB": peak_rss / 1024, "peakAnonMiB": peak_anon / 1024,
                "cpuSecs": cpu, "cpuSecsPerMillion": per_million,
            })),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
