//! Protocol-level tests: a gRPC client generated from the same `.proto` declarations talks to
//! the real `rmq-broker standalone` on loopback, checking status codes for bad input, the
//! Telemetry settings reply, FIFO delivery and the offset RPCs.

mod common;

use broker::protocol::grpc::pb::{self, Code, messaging_service_client::MessagingServiceClient};
use common::process::BrokerProcess;
use tonic::Request;
use tonic::transport::Channel;

async fn client(b: &BrokerProcess) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{}", b.endpoint()))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn req<T>(t: T) -> Request<T> {
    let mut r = Request::new(t);
    r.metadata_mut()
        .insert("x-mq-client-id", "test-client".parse().unwrap());
    r
}

fn res(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

fn code(s: &Option<pb::Status>) -> Code {
    Code::try_from(s.as_ref().unwrap().code).unwrap()
}

fn message(topic: &str, queue: i32, id: &str, body: &[u8], group: Option<&str>) -> pb::Message {
    pb::Message {
        topic: res(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: id.into(),
            queue_id: queue,
            message_group: group.map(str::to_owned),
            message_type: if group.is_some() {
                pb::MessageType::Fifo
            } else {
                pb::MessageType::Normal
            } as i32,
            body_encoding: pb::Encoding::Identity as i32,
            ..Default::default()
        }),
        body: body.to_vec().into(),
    }
}

async fn send(c: &mut MessagingServiceClient<Channel>, m: pb::Message) -> pb::SendMessageResponse {
    c.send_message(req(pb::SendMessageRequest { messages: vec![m] }))
        .await
        .unwrap()
        .into_inner()
}

/// Receives (short long-polling); returns (status code, messages).
async fn receive(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    max: i32,
    filter: Option<pb::FilterExpression>,
) -> (Code, Vec<pb::Message>) {
    let r = pb::ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(pb::MessageQueue {
            topic: res(topic),
            id: 0,
            ..Default::default()
        }),
        filter_expression: filter,
        batch_size: max,
        invisible_duration: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        attempt_id: None,
    };
    let mut stream = c.receive_message(req(r)).await.unwrap().into_inner();
    let mut status = Code::Unspecified;
    let mut messages = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        match item.content.unwrap() {
            pb::receive_message_response::Content::Status(s) => {
                status = Code::try_from(s.code).unwrap()
            }
            pb::receive_message_response::Content::Message(m) => messages.push(m),
            pb::receive_message_response::Content::DeliveryTimestamp(_) => {}
        }
    }
    (status, messages)
}

async fn ack(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    m: &pb::Message,
) -> Code {
    let sp = m.system_properties.as_ref().unwrap();
    let r = c
        .ack_message(req(pb::AckMessageRequest {
            group: res(group),
            topic: res(topic),
            entries: vec![pb::AckMessageEntry {
                message_id: sp.message_id.clone(),
                receipt_handle: sp.receipt_handle.clone().unwrap(),
                lite_topic: None,
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    code(&r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_protocol_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&dir.path().join("data"), &["--topic", "Normal:2"]);
    let mut c = client(&b).await;

    // No client id.
    let r = c
        .query_route(Request::new(pb::QueryRouteRequest {
            topic: res("Normal"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::ClientIdRequired);

    // Unknown topic.
    let r = c
        .query_route(req(pb::QueryRouteRequest {
            topic: res("Nope"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::TopicNotFound);
    assert!(r.status.unwrap().message.contains("Nope"));
    let r = send(&mut c, message("Nope", 0, "id-1", b"x", None)).await;
    assert_eq!(code(&r.status), Code::TopicNotFound);

    // The route of a known topic points back at the broker.
    let r = c
        .query_route(req(pb::QueryRouteRequest {
            topic: res("Normal"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    assert_eq!(r.message_queues.len(), 2);
    let addr = &r.message_queues[0]
        .broker
        .as_ref()
        .unwrap()
        .endpoints
        .as_ref()
        .unwrap()
        .addresses[0];
    assert_eq!(format!("{}:{}", addr.host, addr.port), b.endpoint());

    // 5 MiB body: decoded (above tonic's 4 MiB default) and refused with the proper code.
    let r = send(
        &mut c,
        message("Normal", 0, "id-2", &vec![b'x'; 5 << 20], None),
    )
    .await;
    assert_eq!(code(&r.status), Code::MessageBodyTooLarge);
    let r = send(&mut c, message("Normal", 0, "id-3", b"", None)).await;
    assert_eq!(code(&r.status), Code::MessageBodyEmpty);
    let r = send(&mut c, message("Normal", 0, "id-4", b"x", Some("g1"))).await;
    assert_eq!(code(&r.status), Code::MessagePropertyConflictWithType);
    let r = send(&mut c, message("Normal", 7, "id-5", b"x", None)).await;
    assert_eq!(
        code(&r.status),
        Code::BadRequest,
        "queue 7 of a 2-queue topic"
    );
    let r = send(&mut c, message("Normal", 0, "", b"x", None)).await;
    assert_eq!(code(&r.status), Code::IllegalMessageId);

    // Receive: nothing there, SQL filter, bad invisible time.
    let (s, m) = receive(&mut c, "Normal", "G", 4, None).await;
    assert_eq!((s, m.len()), (Code::MessageNotFound, 0));
    let sql = pb::FilterExpression {
        r#type: pb::FilterType::Sql as i32,
        expression: "a > 1".into(),
    };
    let (s, _) = receive(&mut c, "Normal", "G", 4, Some(sql)).await;
    assert_eq!(s, Code::IllegalFilterExpression);
    let bad_group = receive(&mut c, "Normal", "bad group", 4, None).await.0;
    assert_eq!(bad_group, Code::IllegalConsumerGroup);

    // Ack with a handle that was never issued.
    let fake = pb::Message {
        system_properties: Some(pb::SystemProperties {
            receipt_handle: Some("not-a-handle".into()),
            ..Default::default()
        }),
        ..message("Normal", 0, "id", b"x", None)
    };
    assert_eq!(
        ack(&mut c, "Normal", "G", &fake).await,
        Code::InvalidReceiptHandle
    );

    // Not implemented yet: said so, not a bare internal error.
    let r = c
        .recall_message(req(pb::RecallMessageRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::NotImplemented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_answers_settings_for_producers_and_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(
        &dir.path().join("data"),
        &["--topic", "T:1", "--group", "G:5"],
    );
    let mut c = client(&b).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let producer = pb::Settings {
        client_type: Some(pb::ClientType::Producer as i32),
        pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing {
            topics: vec![res("T").unwrap()],
            max_body_size: 0,
            validate_message_type: false,
        })),
        ..Default::default()
    };
    let consumer = pb::Settings {
        client_type: Some(pb::ClientType::SimpleConsumer as i32),
        pub_sub: Some(pb::settings::PubSub::Subscription(pb::Subscription {
            group: res("G"),
            ..Default::default()
        })),
        ..Default::default()
    };
    for s in [producer, consumer] {
        tx.send(pb::TelemetryCommand {
            status: None,
            command: Some(pb::telemetry_command::Command::Settings(s)),
        })
        .await
        .unwrap();
    }
    let mut replies = c
        .telemetry(req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let first = replies.message().await.unwrap().unwrap();
    let Some(pb::telemetry_command::Command::Settings(s)) = first.command else {
        panic!("{first:?}")
    };
    let Some(pb::settings::PubSub::Publishing(p)) = s.pub_sub else {
        panic!()
    };
    assert_eq!(
        p.max_body_size,
        4 << 20,
        "0 would make clients reject every message"
    );
    assert!(matches!(
        s.backoff_policy.unwrap().strategy,
        Some(pb::retry_policy::Strategy::ExponentialBackoff(_))
    ));
    let second = replies.message().await.unwrap().unwrap();
    let Some(pb::telemetry_command::Command::Settings(s)) = second.command else {
        panic!()
    };
    assert_eq!(
        s.backoff_policy.unwrap().max_attempts,
        5,
        "the group's max delivery attempts"
    );
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_group_gets_one_message_group_in_order_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(
        &dir.path().join("data"),
        &["--topic", "Fifo:2:FIFO", "--group", "FG:16:fifo"],
    );
    let mut c = client(&b).await;
    for i in 0..3 {
        let r = send(
            &mut c,
            message(
                "Fifo",
                1,
                &format!("f{i}"),
                format!("{i}").as_bytes(),
                Some("order-1"),
            ),
        )
        .await;
        assert_eq!(code(&r.status), Code::Ok);
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (s, m) = receive(&mut c, "Fifo", "FG", 1, None).await;
        assert_eq!((s, m.len()), (Code::Ok, 1));
        // While it is in flight, nothing else of its queue is handed out.
        let (s, more) = receive(&mut c, "Fifo", "FG", 1, None).await;
        assert_eq!((s, more.len()), (Code::MessageNotFound, 0));
        assert_eq!(ack(&mut c, "Fifo", "FG", &m[0]).await, Code::Ok);
        seen.push(String::from_utf8(m[0].body.to_vec()).unwrap());
    }
    assert_eq!(seen, ["0", "1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filter_pull_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&dir.path().join("data"), &["--topic", "Tags:1"]);
    let mut c = client(&b).await;
    for (i, tag) in ["a", "b", "c", "a"].iter().enumerate() {
        let mut m = message("Tags", 0, &format!("t{i}"), tag.as_bytes(), None);
        m.system_properties.as_mut().unwrap().tag = Some((*tag).into());
        assert_eq!(code(&send(&mut c, m).await.status), Code::Ok);
    }
    let f = pb::FilterExpression {
        r#type: pb::FilterType::Tag as i32,
        expression: "a || c".into(),
    };
    // Dispatch is asynchronous: receive until the three matching messages arrived.
    let mut m = Vec::new();
    for _ in 0..10 {
        let (s, got) = receive(&mut c, "Tags", "TG", 10, Some(f.clone())).await;
        assert!(matches!(s, Code::Ok | Code::MessageNotFound), "{s:?}");
        m.extend(got);
        if m.len() >= 3 {
            break;
        }
    }
    let bodies: Vec<_> = m
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, ["a", "c", "a"]);
    let sp = m[0].system_properties.as_ref().unwrap();
    assert_eq!(sp.delivery_attempt, Some(1));
    assert_eq!(
        sp.body_digest.as_ref().unwrap().checksum,
        format!("{:08X}", crc32fast::hash(b"a"))
    );

    let mq = Some(pb::MessageQueue {
        topic: res("Tags"),
        id: 0,
        ..Default::default()
    });
    let end = c
        .query_offset(req(pb::QueryOffsetRequest {
            message_queue: mq.clone(),
            query_offset_policy: pb::QueryOffsetPolicy::End as i32,
            timestamp: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((code(&end.status), end.offset), (Code::Ok, 4));
    let mut pulled = c
        .pull_message(req(pb::PullMessageRequest {
            group: res("PG"),
            message_queue: mq.clone(),
            offset: 1,
            batch_size: 2,
            filter_expression: None,
            long_polling_timeout: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut items = Vec::new();
    while let Some(i) = pulled.message().await.unwrap() {
        items.push(i.content.unwrap());
    }
    assert!(
        matches!(
            items.last(),
            Some(pb::pull_message_response::Content::NextOffset(3))
        ),
        "{items:?}"
    );
    assert_eq!(items.len(), 4, "status, two messages, next offset");
    let r = c
        .update_offset(req(pb::UpdateOffsetRequest {
            group: res("PG"),
            message_queue: mq.clone(),
            offset: 3,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    let r = c
        .get_offset(req(pb::GetOffsetRequest {
            group: res("PG"),
            message_queue: mq,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((code(&r.status), r.offset), (Code::Ok, 3));
}

fn delayed(topic: &str, id: &str, deliver_ms: i64) -> pb::Message {
    let mut m = message(topic, 0, id, id.as_bytes(), None);
    let sp = m.system_properties.as_mut().unwrap();
    sp.message_type = pb::MessageType::Delay as i32;
    sp.delivery_timestamp = Some(prost_types::Timestamp {
        seconds: deliver_ms / 1000,
        nanos: ((deliver_ms % 1000) * 1_000_000) as i32,
    });
    m
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_messages_arrive_at_their_time_even_across_a_broker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BrokerProcess::start(&dir.path().join("data"), &["--topic", "Delayed:2:DELAY"]);
    let mut c = client(&b).await;
    let t0 = now_ms();
    let (t1, t2) = (t0 + 2500, t0 + 4500);
    for (id, t) in [("d1", t1), ("d2", t2)] {
        assert_eq!(
            code(&send(&mut c, delayed("Delayed", id, t)).await.status),
            Code::Ok
        );
    }
    let too_far = delayed("Delayed", "d3", t0 + 4 * 24 * 3600 * 1000);
    assert_eq!(
        code(&send(&mut c, too_far).await.status),
        Code::IllegalDeliveryTime
    );
    let (s, m) = receive(&mut c, "Delayed", "DG", 10, None).await;
    assert_eq!(
        (s, m.len()),
        (Code::MessageNotFound, 0),
        "not before their time"
    );

    // The timers must survive a SIGKILL of the broker.
    b.kill_and_restart();
    let mut c = client(&b).await;
    let mut got = Vec::new();
    let give_up = now_ms() + 20_000;
    while got.len() < 2 && now_ms() < give_up {
        let (_, m) = receive(&mut c, "Delayed", "DG", 10, None).await;
        let at = now_ms();
        for m in m {
            let sp = m.system_properties.as_ref().unwrap();
            let due = sp.delivery_timestamp.as_ref().unwrap().seconds * 1000;
            assert!(at >= due, "received at {at}, due at {due}");
            assert_eq!(sp.message_type, pb::MessageType::Delay as i32);
            assert!(
                !m.user_properties.contains_key("REAL_TOPIC"),
                "internal properties stay internal"
            );
            got.push((sp.message_id.clone(), at));
            assert_eq!(ack(&mut c, "Delayed", "DG", &m).await, Code::Ok);
        }
    }
    let ids: Vec<_> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["d1", "d2"], "each delivered once, in time order");
    assert!(got[0].1 >= t1 && got[1].1 >= t2);
}

fn transactional(topic: &str, id: &str) -> pb::Message {
    let mut m = message(topic, 0, id, id.as_bytes(), None);
    m.system_properties.as_mut().unwrap().message_type = pb::MessageType::Transaction as i32;
    m
}

async fn end(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    id: &str,
    tx: &str,
    commit: bool,
) -> Code {
    let r = c
        .end_transaction(req(pb::EndTransactionRequest {
            topic: res(topic),
            message_id: id.into(),
            transaction_id: tx.into(),
            resolution: if commit {
                pb::TransactionResolution::Commit
            } else {
                pb::TransactionResolution::Rollback
            } as i32,
            source: pb::TransactionSource::SourceClient as i32,
            trace_context: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    code(&r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_rollback_and_check_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(
        &dir.path().join("data"),
        &[
            "--topic",
            "Tx:1:TRANSACTION",
            "--transaction-check-interval-ms",
            "1000",
        ],
    );
    let mut c = client(&b).await;
    let r = send(&mut c, transactional("Tx", "commit-me")).await;
    assert_eq!(code(&r.status), Code::Ok);
    let tx1 = r.entries[0].transaction_id.clone();
    assert!(!tx1.is_empty());
    let r = send(&mut c, transactional("Tx", "roll-me-back")).await;
    let tx2 = r.entries[0].transaction_id.clone();
    let (s, _) = receive(&mut c, "Tx", "TxG", 10, None).await;
    assert_eq!(s, Code::MessageNotFound, "half messages are invisible");

    assert_eq!(end(&mut c, "Tx", "commit-me", &tx1, true).await, Code::Ok);
    assert_eq!(
        end(&mut c, "Tx", "roll-me-back", &tx2, false).await,
        Code::Ok
    );
    assert_eq!(
        end(&mut c, "Tx", "commit-me", &tx1, true).await,
        Code::InvalidTransactionId
    );
    assert_eq!(
        end(&mut c, "Tx", "x", "nonsense", true).await,
        Code::InvalidTransactionId
    );
    let (s, m) = receive(&mut c, "Tx", "TxG", 10, None).await;
    assert_eq!(s, Code::Ok);
    assert_eq!(m.len(), 1, "only the committed one");
    let sp = m[0].system_properties.as_ref().unwrap();
    assert_eq!(sp.message_id, "commit-me");
    assert_eq!(sp.message_type, pb::MessageType::Transaction as i32);

    // An undecided transaction: the broker asks the producer over its Telemetry stream.
    let (tel_tx, tel_rx) = tokio::sync::mpsc::channel(4);
    tel_tx
        .send(pb::TelemetryCommand {
            status: None,
            command: Some(pb::telemetry_command::Command::Settings(pb::Settings {
                client_type: Some(pb::ClientType::Producer as i32),
                pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing {
                    topics: vec![res("Tx").unwrap()],
                    max_body_size: 0,
                    validate_message_type: true,
                })),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut commands = c
        .telemetry(req(tokio_stream::wrappers::ReceiverStream::new(tel_rx)))
        .await
        .unwrap()
        .into_inner();
    let settings = commands.message().await.unwrap().unwrap();
    assert!(matches!(
        settings.command,
        Some(pb::telemetry_command::Command::Settings(_))
    ));
    let r = send(&mut c, transactional("Tx", "orphan")).await;
    let tx3 = r.entries[0].transaction_id.clone();
    let check = tokio::time::timeout(std::time::Duration::from_secs(10), commands.message())
        .await
        .expect("a check-back within 10 s")
        .unwrap()
        .unwrap();
    let Some(pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(cmd)) =
        check.command
    else {
        panic!("{check:?}")
    };
    assert_eq!(cmd.transaction_id, tx3);
    let m = cmd.message.unwrap();
    assert_eq!(
        m.topic.unwrap().name,
        "Tx",
        "the checker sees the real topic"
    );
    assert_eq!(m.system_properties.unwrap().message_id, "orphan");
    assert_eq!(end(&mut c, "Tx", "orphan", &tx3, true).await, Code::Ok);
    let (_, m) = receive(&mut c, "Tx", "TxG", 10, None).await;
    assert_eq!(
        m[0].system_properties.as_ref().unwrap().message_id,
        "orphan"
    );
    drop(tel_tx);
}
