//! `rmq-bench`: a gRPC load generator for any RocketMQ 5 endpoint (this broker or Apache's
//! proxy). Producers send fixed-size messages carrying their send time; consumers receive and
//! ack them. Prints send throughput and latency, end-to-end latency (send to receive), and,
//! with `--broker-pid`, the broker's RSS and CPU seconds per million messages.
//!
//! ```text
//! rmq-bench --endpoint 127.0.0.1:8081 --topic BenchTopic --producers 8 --consumers 2 --duration 20
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use parking_lot::Mutex;
use tonic::transport::Channel;

use broker::protocol::grpc::client::{receive_request, request, resource as res};
use broker::protocol::grpc::pb::{self, Code, messaging_service_client::MessagingServiceClient};

#[derive(Parser, Clone)]
#[command(name = "rmq-bench", about = "RocketMQ 5 gRPC load generator")]
struct Args {
    /// host:port of the gRPC endpoint (plaintext).
    #[arg(long, default_value = "127.0.0.1:8081")]
    endpoint: String,
    /// Topic to use; it must exist, with at least `--queues` queues.
    #[arg(long, default_value = "BenchTopic")]
    topic: String,
    /// Queues of the topic to spread sends over.
    #[arg(long, default_value_t = 8)]
    queues: i32,
    #[arg(long, default_value = "BenchGroup")]
    group: String,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent producers (each sends synchronously, one message at a time).
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Concurrent consumers (receive up to 32, then ack them in one call).
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Seconds to send for; consumers keep going until they caught up (at most 10 s more).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Total messages per second over all producers (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Process id of the broker, to report its memory and CPU.
    #[arg(long)]
    broker_pid: Option<u32>,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Recorder {
    latencies_us: Mutex<Vec<u64>>,
    count: AtomicU64,
}

impl Recorder {
    fn record(&self, us: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.latencies_us.lock().push(us);
    }

    fn summary(&self, what: &str, secs: f64) -> String {
        let mut l = std::mem::take(&mut *self.latencies_us.lock());
        l.sort_unstable();
        let p = |q: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
            l[i] as f64 / 1000.0
        };
        format!(
            "{what}: {} msgs, {:.0} msg/s, latency ms p50 {:.2} p99 {:.2} p999 {:.2} max {:.2}",
            l.len(),
            l.len() as f64 / secs,
            p(0.5),
            p(0.99),
            p(0.999),
            l.last().copied().unwrap_or(0) as f64 / 1000.0
        )
    }
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

async fn produce(
    mut c: MessagingServiceClient<Channel>,
    args: Args,
    id: usize,
    stop: Arc<AtomicBool>,
    rec: Arc<Recorder>,
    errors: Arc<AtomicU64>,
) {
    let client_id = format!("bench-producer-{id}");
    let padding = vec![b'x'; args.size.saturating_sub(8)];
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.producers as f64 / args.rate as f64));
    let mut next = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(i) = interval {
            next += i;
            tokio::time::sleep_until(next.into()).await;
        }
        let mut body = BytesMut::with_capacity(args.size.max(8));
        body.put_u64(now_nanos());
        body.put_slice(&padding);
        let m = pb::Message {
            topic: res(&args.topic),
            user_properties: Default::default(),
            system_properties: Some(pb::SystemProperties {
                message_id: format!("BENCH{id:04X}{seq:016X}"),
                queue_id: ((id as u64 + seq) % args.queues as u64) as i32,
                body_encoding: pb::Encoding::Identity as i32,
                message_type: pb::MessageType::Normal as i32,
                ..Default::default()
            }),
            body: body.freeze(),
        };
        seq += 1;
        let t = Instant::now();
        match c
            .send_message(request(
                pb::SendMessageRequest { messages: vec![m] },
                &client_id,
            ))
            .await
        {
            Ok(r)
                if r.get_ref()
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == Code::Ok as i32) =>
            {
                rec.record(t.elapsed().as_micros() as u64);
            }
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn consume(
    mut c: MessagingServiceClient<Channel>,
    args: Args,
    id: usize,
    stop: Arc<AtomicBool>,
    rec: Arc<Recorder>,
) {
    let client_id = format!("bench-consumer-{id}");
    while !stop.load(Ordering::Relaxed) {
        let r = receive_request(
            &args.topic,
            &args.group,
            32,
            Duration::from_secs(30),
            Duration::from_secs(1),
        );
        let Ok(resp) = c.receive_message(request(r, &client_id)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = resp.into_inner();
        let mut entries = Vec::new();
        while let Ok(Some(item)) = stream.message().await {
            if let Some(pb::receive_message_response::Content::Message(m)) = item.content {
                let body: Bytes = m.body;
                if body.len() >= 8 {
                    let sent = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
                    rec.record(now_nanos().saturating_sub(sent) / 1000);
                }
                let sp = m.system_properties.unwrap_or_default();
                entries.push(pb::AckMessageEntry {
                    message_id: sp.message_id,
                    receipt_handle: sp.receipt_handle.unwrap_or_default(),
                    lite_topic: None,
                });
            }
        }
        if !entries.is_empty() {
            let ack = pb::AckMessageRequest {
                group: res(&args.group),
                topic: res(&args.topic),
                entries,
            };
            let _ = c.ack_message(request(ack, &client_id)).await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.queues < 1 || args.producers == 0 {
        bail!("--queues and --producers must be positive");
    }
    let channel = Channel::from_shared(format!("http://{}", args.endpoint))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.endpoint))?;
    let client = MessagingServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let stop_send = Arc::new(AtomicBool::new(false));
    let stop_recv = Arc::new(AtomicBool::new(false));
    let sends = Arc::new(Recorder::default());
    let e2e = Arc::new(Recorder::default());
    let errors = Arc::new(AtomicU64::new(0));
    let before = args.broker_pid.and_then(proc_stats);
    let started = Instant::now();
    let mut producers = Vec::new();
    for id in 0..args.producers {
        producers.push(tokio::spawn(produce(
            client.clone(),
            args.clone(),
            id,
            Arc::clone(&stop_send),
            Arc::clone(&sends),
            Arc::clone(&errors),
        )));
    }
    let mut consumers = Vec::new();
    for id in 0..args.consumers {
        consumers.push(tokio::spawn(consume(
            client.clone(),
            args.clone(),
            id,
            Arc::clone(&stop_recv),
            Arc::clone(&e2e),
        )));
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop_send.store(true, Ordering::Relaxed);
    for p in producers {
        p.await?;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let sent = sends.count.load(Ordering::Relaxed);
    let catch_up = Instant::now() + Duration::from_secs(10);
    while args.consumers > 0
        && e2e.count.load(Ordering::Relaxed) < sent
        && Instant::now() < catch_up
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_recv.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await?;
    }
    let after = args.broker_pid.and_then(proc_stats);
    println!(
        "rmq-bench: {} B bodies, {} producers, {} consumers, {} s, endpoint {}",
        args.size, args.producers, args.consumers, args.duration, args.endpoint
    );
    println!("{}", sends.summary("send", send_secs));
    println!("send errors: {}", errors.load(Ordering::Relaxed));
    if args.consumers > 0 {
        println!("{}", e2e.summary("end-to-end (send to receive)", send_secs));
    }
    if let (Some((_, _, cpu0)), Some((rss, anon, cpu1))) = (before, after) {
        let per_million = if sent > 0 {
            (cpu1 - cpu0) / sent as f64 * 1e6
        } else {
            0.0
        };
        println!(
            "broker: RSS {} MiB (anonymous {} MiB), CPU {:.1} s, {:.1} CPU s per million messages sent",
            rss / 1024,
            anon / 1024,
            cpu1 - cpu0,
            per_million
        );
    }
    Ok(())
}
