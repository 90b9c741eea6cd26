//! Drives a running broker with the official Rust client (crates.io `rocketmq` 5.0.0) with its
//! default settings (plaintext). Usage: rust-client SCENARIO ENDPOINT TOPIC GROUP; prints one
//! JSON line. Scenarios: `send_receive_ack` (10 messages with tag, key and a user property;
//! SimpleConsumer receive + ack), `send_only` (those 10 messages; prints `{"sent":[ids]}`),
//! `receive_only` (receives and acks what arrives within RMQ_RECEIVE_DEADLINE_SECS, default 5,
//! s; prints `{"received":[..]}`).
//!
//! Environment: RMQ_ACCESS_KEY and RMQ_SECRET_KEY sign requests with these credentials;
//! RMQ_TLS=1 / RMQ_TLS=0 turns TLS on / off (default off); with TLS the server certificate is
//! verified against the system roots, or the PEM file SSL_CERT_FILE names. Any error (a refused
//! request too) is a panic: printed to stderr, exit status 101.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::error::ClientError;
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::MessageBuilder;
use rocketmq::{Producer, SimpleConsumer};

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether `e` is the server refusing the request (UNAUTHORIZED, FORBIDDEN).
fn refused(e: &ClientError) -> bool {
    e.context()
        .iter()
        .any(|(k, v)| *k == "code" && (v == "UNAUTHORIZED" || v == "FORBIDDEN"))
}

/// Sends the 10 messages of `send_receive_ack`; returns their ids, quoted.
async fn send(client_option: &ClientOption, topic: &str) -> Vec<String> {
    let mut producer_option = ProducerOption::default();
    producer_option.set_topics(vec![topic]);
    let mut producer = Producer::new(producer_option, client_option.clone()).expect("producer");
    producer.start().await.expect("producer start");
    let mut sent = Vec::new();
    for i in 0..10 {
        let message = MessageBuilder::builder()
            .set_topic(topic)
            .set_tag("TagA")
            .set_keys(vec![format!("key-{i}")])
            .set_properties(HashMap::from([("idx", i.to_string())]))
            .set_body(format!("hello-{i}").into_bytes())
            .build()
            .expect("message");
        let receipt = producer.send(message).await.expect("send");
        sent.push(quote(receipt.message_id()));
    }
    producer.shutdown().await.expect("producer shutdown");
    sent
}

/// Receives and acks until `want` messages arrived or `deadline` passed; returns them as JSON.
async fn receive(
    client_option: &ClientOption,
    topic: &str,
    group: &str,
    want: usize,
    deadline: Instant,
) -> Vec<String> {
    let mut consumer_option = SimpleConsumerOption::default();
    consumer_option.set_topics(vec![topic]);
    consumer_option.set_consumer_group(group);
    let mut consumer =
        SimpleConsumer::new(consumer_option, client_option.clone()).expect("consumer");
    consumer.start().await.expect("consumer start");
    let mut received = Vec::new();
    let all = FilterExpression::new(FilterType::Tag, "*");
    while received.len() < want && Instant::now() < deadline {
        let messages = match consumer.receive(topic, &all).await {
            Ok(messages) => messages,
            Err(e) if refused(&e) => panic!("receive: {e:?}"),
            Err(_) => continue,
        };
        for m in messages {
            let keys: Vec<String> = m.keys().iter().map(|k| quote(k)).collect();
            received.push(format!(
                "{{\"id\":{},\"body\":{},\"tag\":{},\"keys\":[{}],\"props\":{{\"idx\":{}}},\"attempt\":{}}}",
                quote(m.message_id()),
                quote(&String::from_utf8_lossy(m.body())),
                quote(m.tag().unwrap_or("")),
                keys.join(","),
                quote(m.properties().get("idx").map(String::as_str).unwrap_or("")),
                m.delivery_attempt()
            ));
            consumer.ack(&m).await.expect("ack");
        }
    }
    let _ = consumer.shutdown().await;
    received
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() == 5,
        "usage: rust-client send_receive_ack|send_only|receive_only ENDPOINT TOPIC GROUP"
    );
    let (scenario, endpoint, topic, group) = (&args[1], &args[2], &args[3], &args[4]);
    let mut client_option = ClientOption::default();
    client_option.set_access_url(endpoint.as_str());
    if let Ok(access_key) = std::env::var("RMQ_ACCESS_KEY") {
        client_option.set_access_key(access_key);
        client_option.set_secret_key(std::env::var("RMQ_SECRET_KEY").unwrap_or_default());
    }
    match std::env::var("RMQ_TLS").as_deref() {
        Ok("1") => client_option.set_enable_tls(true),
        Ok("0") => client_option.set_enable_tls(false),
        _ => {}
    }

    match scenario.as_str() {
        "send_receive_ack" => {
            let sent = send(&client_option, topic).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            let received = receive(&client_option, topic, group, 10, deadline).await;
            println!(
                "{{\"sent\":[{}],\"received\":[{}]}}",
                sent.join(","),
                received.join(",")
            );
        }
        "send_only" => {
            let sent = send(&client_option, topic).await;
            println!("{{\"sent\":[{}]}}", sent.join(","));
        }
        "receive_only" => {
            let secs = std::env::var("RMQ_RECEIVE_DEADLINE_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(5);
            let deadline = Instant::now() + Duration::from_secs(secs);
            // Long polls shorter than the default 40 s, so that the deadline holds.
            client_option.set_long_polling_timeout(Duration::from_secs(2));
            let received = receive(&client_option, topic, group, usize::MAX, deadline).await;
            println!("{{\"received\":[{}]}}", received.join(","));
        }
        _ => panic!("unknown scenario {scenario}"),
    }
}
