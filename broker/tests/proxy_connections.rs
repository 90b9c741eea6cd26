//! Connection scale through a proxy, at the size CI affords: 1,200 gRPC clients, each on its
//! own TCP connection, hold long-polling receives on one `rmq-broker proxy` at once - more
//! than one proxy-to-store connection may carry (1,024 requests in flight) - while another
//! client sends. Every send must be acknowledged, every message delivered exactly once, and
//! no receive may fail. (Memory per connection is measured by `scripts/bench-connections.sh`.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use broker::protocol::grpc::client::{receive_request, request, resource};
use broker::protocol::grpc::pb::{self, Code, messaging_service_client::MessagingServiceClient};
use common::remoting::Cluster;
use tonic::transport::Channel;

const CLIENTS: usize = 1_200;
const TOPIC: &str = "ConnTopic";
const GROUP: &str = "ConnGroup";

async fn connect(endpoint: &str) -> MessagingServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    MessagingServiceClient::new(channel)
}

/// One long-polling receive of at most one message; its message id, if any.
async fn receive_one(
    mut c: MessagingServiceClient<Channel>,
    id: usize,
) -> Result<Option<String>, String> {
    let client = format!("conn-{id}");
    let r = receive_request(
        TOPIC,
        GROUP,
        1,
        Duration::from_secs(60),
        Duration::from_secs(20),
    );
    let mut r = request(r, &client);
    r.set_timeout(Duration::from_secs(30));
    let mut stream = c
        .receive_message(r)
        .await
        .map_err(|e| format!("receive {id}: {e}"))?
        .into_inner();
    let mut got = None;
    while let Some(item) = stream
        .message()
        .await
        .map_err(|e| format!("receive {id}: {e}"))?
    {
        match item.content {
            Some(pb::receive_message_response::Content::Status(s))
                if s.code != Code::Ok as i32 && s.code != Code::MessageNotFound as i32 =>
            {
                return Err(format!("receive {id}: {} {}", s.code, s.message));
            }
            Some(pb::receive_message_response::Content::Message(m)) => {
                got = m.system_properties.map(|p| p.message_id);
            }
            _ => {}
        }
    }
    Ok(got)
}

#[test]
fn twelve_hundred_long_polling_connections_through_one_proxy() {
    let flags: &[&str] = &["--topic", &format!("{TOPIC}:8")];
    let cluster = Cluster::start(1, &[("broker-a", flags)]);
    let proxy = cluster.start_proxy(0);
    let endpoint = proxy.endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut receivers = Vec::new();
        for id in 0..CLIENTS {
            let c = connect(&endpoint).await;
            receivers.push(tokio::spawn(receive_one(c, id)));
        }
        // Let every receive reach the store node and wait there.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let mut sender = connect(&endpoint).await;
        let mut sent = BTreeSet::new();
        for i in 0..CLIENTS {
            let id = format!("CONN{i:08}");
            let m = pb::Message {
                topic: resource(TOPIC),
                user_properties: Default::default(),
                system_properties: Some(pb::SystemProperties {
                    message_id: id.clone(),
                    queue_id: (i % 8) as i32,
                    body_encoding: pb::Encoding::Identity as i32,
                    message_type: pb::MessageType::Normal as i32,
                    ..Default::default()
                }),
                body: format!("body {i}").into_bytes().into(),
            };
            let mut r = request(pb::SendMessageRequest { messages: vec![m] }, "conn-sender");
            // Sends go on while 1,200 receives are held: they must not queue behind them.
            r.set_timeout(Duration::from_secs(5));
            let resp = sender
                .send_message(r)
                .await
                .unwrap_or_else(|e| panic!("send {i}: {e}"))
                .into_inner();
            assert_eq!(
                resp.status.as_ref().map(|s| s.code),
                Some(Code::Ok as i32),
                "send {i}: {resp:?}"
            );
            sent.insert(id);
        }

        let mut received = BTreeSet::new();
        let mut errors = Vec::new();
        for r in receivers {
            match r.await.unwrap() {
                Ok(Some(id)) => assert!(received.insert(id.clone()), "{id} delivered twice"),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        assert!(
            errors.is_empty(),
            "{} receives failed: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        // A receive that got nothing (its wake-up came after others took the messages) leaves
        // a message for a second round.
        let mut c = connect(&endpoint).await;
        while received.len() < sent.len() {
            let r = receive_request(
                TOPIC,
                GROUP,
                32,
                Duration::from_secs(60),
                Duration::from_secs(2),
            );
            let mut stream = c
                .receive_message(request(r, "conn-drain"))
                .await
                .unwrap()
                .into_inner();
            let mut n = 0;
            while let Some(item) = stream.message().await.unwrap() {
                if let Some(pb::receive_message_response::Content::Message(m)) = item.content {
                    let id = m.system_properties.unwrap().message_id;
                    assert!(received.insert(id.clone()), "{id} delivered twice");
                    n += 1;
                }
            }
            if n == 0 {
                break;
            }
        }
        assert_eq!(received, sent, "every message delivered exactly once");
    });
}
