//! Drives a running broker with the official Rust client (crates.io `rocketmq` 5.0.0) with its
//! default settings (plaintext). Usage: rust-client send_receive_ack ENDPOINT TOPIC GROUP;
//! prints one JSON line.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::MessageBuilder;
use rocketmq::{Producer, SimpleConsumer};

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(args.len() == 5 && args[1] == "send_receive_ack", "usage: rust-client send_receive_ack ENDPOINT TOPIC GROUP");
    let (endpoint, topic, group) = (&args[2], &args[3], &args[4]);
    let mut client_option = ClientOption::default();
    client_option.set_access_url(endpoint.as_str());

    let mut producer_option = ProducerOption::default();
    producer_option.set_topics(vec![topic.as_str()]);
    let mut producer = Producer::new(producer_option, client_option.clone()).expect("producer");
    producer.start().await.expect("producer start");
    let mut sent = Vec::new();
    for i in 0..10 {
        let message = MessageBuilder::builder()
            .set_topic(topic.as_str())
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

    let mut consumer_option = SimpleConsumerOption::default();
    consumer_option.set_topics(vec![topic.as_str()]);
    consumer_option.set_consumer_group(group.as_str());
    let mut consumer = SimpleConsumer::new(consumer_option, client_option).expect("consumer");
    consumer.start().await.expect("consumer start");
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let all = FilterExpression::new(FilterType::Tag, "*");
    while received.len() < 10 && Instant::now() < deadline {
        let Ok(messages) = consumer.receive(topic.as_str(), &all).await else {
            continue;
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
    println!("{{\"sent\":[{}],\"received\":[{}]}}", sent.join(","), received.join(","));
}
