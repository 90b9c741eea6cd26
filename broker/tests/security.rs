//! TLS and RocketMQ ACL 2.0 against the real `rmq-broker standalone`: the official clients
//! of every language sign with valid credentials over TLS and send and receive; a matrix of
//! bad credentials, missing permissions, plaintext against an enforcing port and a wrong CA is
//! refused with the right status, and nothing is written or delivered; a certificate
//! replaced on disk is picked up without dropping an established connection.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use broker::auth::guard::Credentials;
use broker::protocol::grpc::client::{receive_request, request, resource, sign};
use broker::protocol::grpc::pb::{self, Code, messaging_service_client::MessagingServiceClient};
use common::clients::{self, Client, check_send_receive_ack};
use common::process::BrokerProcess;

const ROOT: (&str, &str) = ("root", "root-secret-1");

struct Secure {
    _dir: tempfile::TempDir,
    broker: BrokerProcess,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A standalone broker with TLS (`mode`), authentication and authorization on, the
/// administrator `root`, and users: `alice` (publish and subscribe anywhere but topics
/// `Secret*`), `pubonly` (publish only), `off` (disabled).
fn secure(mode: &str, topics: &[&str]) -> Secure {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) =
        broker::tls::generate_pki(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
    let users = dir.path().join("users.yaml");
    std::fs::write(
        &users,
        r#"
users:
  alice: {password: alice-secret}
  pubonly: {password: pubonly-secret}
  off: {password: off-secret-1, userStatus: disable}
policies:
  alice:
    - {resource: "Topic:*", actions: [Pub, Sub]}
    - {resource: "Group:*", actions: [Sub]}
    - {resource: "Topic:Secret*", actions: [All], decision: Deny}
  pubonly:
    - {resource: "Topic:*", actions: [Pub]}
  off:
    - {resource: "*", actions: [All]}
"#,
    )
    .unwrap();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "tls: {{mode: {mode}, cert: {c}, key: {k}}}\nauth:\n  authentication: true\n  authorization: true\n  admin: {{accessKey: {ak}, secretKey: {sk}}}\n  initial: {u}\n",
            c = cert.display(),
            k = key.display(),
            ak = ROOT.0,
            sk = ROOT.1,
            u = users.display(),
        ),
    )
    .unwrap();
    let mut args = vec!["--config".to_owned(), config.display().to_string()];
    for t in topics {
        args.push("--topic".into());
        args.push(format!("{t}:4"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = BrokerProcess::start(&dir.path().join("data"), &args);
    Secure {
        _dir: dir,
        broker,
        ca,
        cert,
        key,
    }
}

fn tls_env<'a>(client: Client, ca: &'a str, ak: &'a str, sk: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("RMQ_TLS", "1"),
        ("RMQ_ACCESS_KEY", ak),
        ("RMQ_SECRET_KEY", sk),
    ];
    match client {
        Client::Python | Client::Node => env.push(("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ca)),
        Client::Rust => env.push(("SSL_CERT_FILE", ca)),
        // Java and Go trust any server certificate (their TLS does not verify).
        Client::Java | Client::Go => {}
    }
    env
}

fn with_credentials_over_tls(client: Client, name: &str) {
    let topic = format!("{name}SecTopic");
    let s = secure("enforcing", &[&topic]);
    let ca = s.ca.display().to_string();
    let v = clients::run(
        client,
        &s.broker,
        &["send_receive_ack", &topic, &format!("{name}SecGroup")],
        &tls_env(client, &ca, "alice", "alice-secret"),
    );
    check_send_receive_ack(&v);
    clients::record(client, "auth");
}

#[test]
fn java_with_credentials_over_tls() {
    with_credentials_over_tls(Client::Java, "Java");
}

#[test]
fn go_with_credentials_over_tls() {
    with_credentials_over_tls(Client::Go, "Go");
}

#[test]
fn python_with_credentials_over_tls() {
    with_credentials_over_tls(Client::Python, "Python");
}

#[test]
fn node_with_credentials_over_tls() {
    with_credentials_over_tls(Client::Node, "Node");
}

#[test]
fn rust_with_credentials_over_tls() {
    with_credentials_over_tls(Client::Rust, "Rust");
}

/// `rmq-broker admin` as the administrator.
fn admin(b: &BrokerProcess, args: &[&str]) -> serde_json::Value {
    admin_all(&[b], args)
}

/// Messages stored in a topic, over all its queues.
fn stored(b: &BrokerProcess, topic: &str) -> u64 {
    let v = admin(b, &["progress", "AnyGroup", topic]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|q| q["maxOffset"].as_u64().unwrap())
        .sum()
}

fn refused(client: Client, b: &BrokerProcess, args: &[&str], env: &[(&str, &str)], says: &[&str]) {
    let err = clients::run_result(client, b, args, env)
        .err()
        .unwrap_or_else(|| panic!("{client:?} {args:?} with {env:?} was not refused"));
    assert!(
        says.iter().any(|s| err.contains(s)),
        "{client:?} {args:?} with {env:?}: expected one of {says:?} in:\n{err}"
    );
}

#[test]
fn bad_credentials_missing_permissions_plaintext_and_a_wrong_ca_are_refused() {
    let s = secure("enforcing", &["Orders", "SecretPlans"]);
    let b = &s.broker;
    let ca = s.ca.display().to_string();
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_ca) = broker::tls::generate_pki(other.path(), &["127.0.0.1"]).unwrap();
    let other_ca = other_ca.display().to_string();
    let node = Client::Node;
    let send = ["send_only", "Orders", "G1"];
    let unauthenticated = ["40100", "UNAUTHORIZED", "Unauthorized"];
    let forbidden = ["40300", "FORBIDDEN", "Forbidden"];

    // Who: a wrong secret, an unknown key, no credentials at all, a disabled user.
    refused(
        node,
        b,
        &send,
        &tls_env(node, &ca, "alice", "wrong-secret"),
        &unauthenticated,
    );
    refused(
        node,
        b,
        &send,
        &tls_env(node, &ca, "mallory", "whatever"),
        &unauthenticated,
    );
    refused(
        node,
        b,
        &send,
        &[("RMQ_TLS", "1"), ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", &ca)],
        &unauthenticated,
    );
    refused(
        node,
        b,
        &send,
        &tls_env(node, &ca, "off", "off-secret-1"),
        &unauthenticated,
    );
    // Go sends an empty credential when it has none.
    refused(Client::Go, b, &send, &[], &unauthenticated);
    // What: a topic alice is denied; subscribing as a user who may only publish.
    refused(
        node,
        b,
        &["send_only", "SecretPlans", "G1"],
        &tls_env(node, &ca, "alice", "alice-secret"),
        &forbidden,
    );
    refused(
        Client::Java,
        b,
        &["send_only", "SecretPlans", "G1"],
        &tls_env(Client::Java, &ca, "alice", "alice-secret"),
        &forbidden,
    );
    // How: plaintext against an enforcing port, and a server certificate from another CA.
    refused(
        node,
        b,
        &send,
        &[
            ("RMQ_TLS", "0"),
            ("RMQ_ACCESS_KEY", "alice"),
            ("RMQ_SECRET_KEY", "alice-secret"),
        ],
        &[
            "UNAVAILABLE",
            "14",
            "ECONNRESET",
            "closed",
            "Connection dropped",
        ],
    );
    refused(
        node,
        b,
        &send,
        &tls_env(node, &other_ca, "alice", "alice-secret"),
        &["certificate", "self-signed", "UNAVAILABLE"],
    );
    refused(
        Client::Python,
        b,
        &send,
        &tls_env(Client::Python, &other_ca, "alice", "alice-secret"),
        &["certificate", "CERTIFICATE", "handshake", "failed to fetch"],
    );
    assert_eq!(stored(b, "Orders"), 0, "no refused send was written");
    assert_eq!(stored(b, "SecretPlans"), 0, "no refused send was written");

    // pubonly may publish but not subscribe: its messages stay, unread.
    let sent = clients::run(
        node,
        b,
        &send,
        &tls_env(node, &ca, "pubonly", "pubonly-secret"),
    );
    assert_eq!(clients::strings(&sent["sent"]).len(), 10);
    refused(
        node,
        b,
        &["receive_only", "Orders", "G1"],
        &tls_env(node, &ca, "pubonly", "pubonly-secret"),
        &forbidden,
    );
    let progress = admin(b, &["progress", "G1", "Orders"]);
    for q in progress.as_array().unwrap() {
        assert_eq!(q["committed"], 0, "nothing was delivered: {progress}");
        assert!(q["inFlight"].as_u64().unwrap_or(0) == 0, "{progress}");
    }
    // alice may: all 10 arrive.
    let got = clients::run(
        node,
        b,
        &["receive_only", "Orders", "G1"],
        &tls_env(node, &ca, "alice", "alice-secret"),
    );
    assert_eq!(got["received"].as_array().unwrap().len(), 10, "{got}");

    // Refusals are counted.
    let metrics = ureq_get(&format!("http://{}/metrics", b.http));
    assert!(
        metrics.contains(
            "rocketmq_auth_requests_total{protocol=\"grpc\",outcome=\"unauthenticated\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"forbidden\""), "{metrics}");
    // The admin API refuses unsigned requests.
    let out = Command::new(env!("CARGO_BIN_EXE_rmq-broker"))
        .args(["admin", "--server", &format!("http://{}", b.http), "users"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

fn ureq_get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// A gRPC channel over TLS trusting `ca` (tonic's own TLS is not built in).
async fn tls_channel(addr: &str, ca: &Path) -> Result<tonic::transport::Channel, String> {
    let cfg = broker::tls::TlsConfig {
        ca: Some(ca.to_owned()),
        ..Default::default()
    };
    let tls = broker::tls::ClientTls::new(&cfg, broker::protocol::grpc::listener::ALPN)
        .unwrap()
        .unwrap();
    let addr = addr.to_owned();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let (tls, addr) = (tls.clone(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let s = tls.connect("127.0.0.1", tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))
}

fn message(topic: &str, i: usize) -> pb::Message {
    pb::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: format!("RELOAD{i:026}"),
            body_encoding: pb::Encoding::Identity as i32,
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: format!("m{i}").into_bytes().into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_connections_and_established_ones_continue() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = secure("enforcing", &["Reload"]);
    let root = Credentials {
        access_key: ROOT.0.into(),
        secret_key: ROOT.1.into(),
    };
    let channel = tls_channel(&s.broker.endpoint(), &s.ca).await.unwrap();
    let mut client = MessagingServiceClient::new(channel);
    // Sends over one connection, all the time.
    let sender = {
        let root = root.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(8) {
                let mut r = request(
                    pb::SendMessageRequest {
                        messages: vec![message("Reload", sent)],
                    },
                    "reload-test",
                );
                sign(&mut r, &root);
                let resp = client
                    .send_message(r)
                    .await
                    .map_err(|e| format!("send {sent} failed: {e}"))?
                    .into_inner();
                let code = resp.status.unwrap_or_default().code;
                if code != Code::Ok as i32 {
                    return Err(format!("send {sent}: status {code}"));
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<usize, String>(sent)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Replace the certificate and key with ones from another CA (as a Secret update does).
    let next = tempfile::tempdir().unwrap();
    let (cert2, key2, ca2) =
        broker::tls::generate_pki(next.path(), &["localhost", "127.0.0.1"]).unwrap();
    std::fs::copy(&key2, &s.key).unwrap();
    std::fs::copy(&cert2, &s.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.broker.logs().contains("TLS certificate reloaded") {
        assert!(Instant::now() < deadline, "{}", s.broker.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New connections: the old CA no longer verifies the server, the new one does.
    let old = tls_channel(&s.broker.endpoint(), &s.ca).await;
    assert!(old.is_err(), "the old CA still verifies the server");
    let mut fresh =
        MessagingServiceClient::new(tls_channel(&s.broker.endpoint(), &ca2).await.unwrap());
    let mut r = request(
        receive_request(
            "Reload",
            "G",
            1,
            Duration::from_secs(30),
            Duration::from_secs(1),
        ),
        "reload-test-2",
    );
    sign(&mut r, &root);
    let mut stream = fresh.receive_message(r).await.unwrap().into_inner();
    let mut got = 0;
    while let Some(item) = stream.message().await.unwrap() {
        if let Some(pb::receive_message_response::Content::Message(_)) = item.content {
            got += 1;
        }
    }
    assert_eq!(got, 1, "a message over the new certificate");
    // The established connection never failed.
    let sent = sender.await.unwrap().unwrap();
    assert!(sent > 100, "only {sent} sends in 8 s");
}

/// `rmq-broker admin` as the administrator against several HTTP ports (users and policies are
/// written to each; reads ask the first); what it printed.
fn admin_all(servers: &[&BrokerProcess], args: &[&str]) -> serde_json::Value {
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.http))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_rmq-broker"))
        .arg("admin")
        .arg("--server")
        .arg(list.join(","))
        .args(["--access-key", ROOT.0, "--secret-key", ROOT.1])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_proxy_authenticates_against_the_store_nodes_users_and_signs_its_own_calls() {
    let auth: &[&str] = &[
        "--authentication",
        "--authorization",
        "--admin-access-key",
        ROOT.0,
        "--admin-secret-key",
        ROOT.1,
        "--topic",
        "ClusterSec:4",
    ];
    let cluster = common::remoting::Cluster::start(1, &[("broker-a", auth), ("broker-b", auth)]);
    let ns = cluster.namesrv();
    let mut proxy_args = vec!["--namesrv", &ns];
    proxy_args.extend_from_slice(&auth[..6]);
    let proxy = BrokerProcess::start_role("proxy", &cluster.dir.path().join("proxy"), &proxy_args);
    let stores: Vec<&BrokerProcess> = cluster.stores.iter().collect();
    admin_all(
        &stores,
        &["put-user", "carol", "--password", "carol-secret"],
    );
    admin_all(
        &stores,
        &[
            "put-acl",
            "carol",
            "--resource",
            "Topic:ClusterSec",
            "--resource",
            "Group:CG",
            "--actions",
            "Pub,Sub",
        ],
    );
    // The store nodes refuse unsigned remoting calls; the proxy signs its own.
    let env = [
        ("RMQ_ACCESS_KEY", "carol"),
        ("RMQ_SECRET_KEY", "carol-secret"),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        // The proxy refreshes users every 3 s.
        match clients::run_result(
            Client::Go,
            &proxy,
            &["send_receive_ack", "ClusterSec", "CG"],
            &env,
        ) {
            Ok(v) => break v,
            Err(e) if Instant::now() < deadline && e.contains("UNAUTHORIZED") => {
                std::thread::sleep(Duration::from_secs(1))
            }
            Err(e) => panic!("{e}\nproxy:\n{}\n{}", proxy.logs(), cluster.logs()),
        }
    };
    check_send_receive_ack(&v);
    // Another group is not carol's.
    refused(
        Client::Go,
        &proxy,
        &["receive_only", "ClusterSec", "OtherGroup"],
        &env,
        &[
            "40300",
            "FORBIDDEN",
            "PermissionDenied desc = access denied",
        ],
    );
    // A deleted user is refused once the proxy has refreshed.
    admin_all(&stores, &["delete-user", "carol"]);
    std::thread::sleep(Duration::from_secs(4));
    refused(
        Client::Go,
        &proxy,
        &["send_only", "ClusterSec", "CG"],
        &env,
        &["40100", "UNAUTHORIZED"],
    );
}

#[test]
fn mqadmin_manages_users_and_acls_with_credentials_and_is_refused_without() {
    let auth: &[&str] = &[
        "--authentication",
        "--authorization",
        "--admin-access-key",
        ROOT.0,
        "--admin-secret-key",
        ROOT.1,
    ];
    let cluster = common::remoting::Cluster::start(1, &[("broker-a", auth)]);
    let ns = cluster.namesrv();
    let root = Some(ROOT);
    let mq = |creds: Option<(&str, &str)>, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-n", &ns]);
        common::remoting::mqadmin_as(&cluster, creds, &all)
    };
    let ok = |creds, args: &[&str]| {
        mq(creds, args).unwrap_or_else(|e| panic!("mqadmin {args:?}: {e}\n{}", cluster.logs()))
    };
    // Unsigned: refused, and nothing created (mqadmin reports some refusals with exit
    // status 0: judge by the effect).
    let _ = mq(
        None,
        &["updateTopic", "-c", "DefaultCluster", "-t", "Unsigned"],
    );
    assert!(
        cluster.stores[0]
            .logs()
            .contains("no credentials: the request carries no AccessKey field"),
        "{}",
        cluster.logs()
    );
    let _ = mq(
        None,
        &[
            "createUser",
            "-c",
            "DefaultCluster",
            "-u",
            "mallory",
            "-p",
            "mallory-secret",
        ],
    );
    let topics = ok(root, &["topicList"]);
    assert!(!topics.contains("Unsigned"), "{topics}");
    // Signed as the administrator.
    ok(
        root,
        &[
            "updateTopic",
            "-c",
            "DefaultCluster",
            "-t",
            "MqSec",
            "-r",
            "4",
            "-w",
            "4",
        ],
    );
    ok(
        root,
        &[
            "createUser",
            "-c",
            "DefaultCluster",
            "-u",
            "dave",
            "-p",
            "dave-secret",
        ],
    );
    ok(
        root,
        &[
            "createAcl",
            "-c",
            "DefaultCluster",
            "-s",
            "User:dave",
            "-r",
            "Topic:MqSec,Group:DG",
            "-a",
            "Pub,Sub",
            "-d",
            "Allow",
        ],
    );
    let users = ok(root, &["listUser", "-c", "DefaultCluster"]);
    assert!(
        users.contains("dave") && !users.contains("mallory"),
        "{users}"
    );
    let acl = ok(root, &["getAcl", "-c", "DefaultCluster", "-s", "User:dave"]);
    assert!(
        acl.contains("Topic:MqSec") && acl.contains("Group:DG"),
        "{acl}"
    );
    // dave may not manage users.
    let err = mq(
        Some(("dave", "dave-secret")),
        &[
            "createUser",
            "-c",
            "DefaultCluster",
            "-u",
            "eve",
            "-p",
            "eve-secret",
        ],
    );
    assert!(
        err.is_err() || !err.as_ref().unwrap().contains("success"),
        "{err:?}"
    );
    let users = ok(root, &["listUser", "-c", "DefaultCluster"]);
    assert!(!users.contains("eve"), "{users}");
    // The ACL entry for one resource goes; the user stays.
    ok(
        root,
        &[
            "deleteAcl",
            "-c",
            "DefaultCluster",
            "-s",
            "User:dave",
            "-r",
            "Group:DG",
        ],
    );
    let acl = ok(root, &["getAcl", "-c", "DefaultCluster", "-s", "User:dave"]);
    assert!(
        acl.contains("Topic:MqSec") && !acl.contains("Group:DG"),
        "{acl}"
    );
    ok(root, &["deleteUser", "-c", "DefaultCluster", "-u", "dave"]);
    let users = ok(root, &["listUser", "-c", "DefaultCluster"]);
    assert!(!users.contains("dave"), "{users}");
}

#[test]
fn authentication_switches_on_and_to_migration_mode_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.yaml");
    let write = |auth: &str| {
        std::fs::write(
            &config,
            format!("tls: {{mode: disabled}}\nauth: {{admin: {{accessKey: {}, secretKey: {}}}{auth}}}\n", ROOT.0, ROOT.1),
        )
        .unwrap()
    };
    write("");
    let b = BrokerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap(), "--topic", "Switch:2"],
    );
    let send = ["send_only", "Switch", "G"];
    let plain = [("RMQ_TLS", "0")];
    clients::run(Client::Node, &b, &send, &plain);
    let mut accepted: u64 = 1;
    // On: unsigned requests are refused once the node has read the file (every 2 s).
    write(", authentication: true, authorization: true");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match clients::run_result(Client::Node, &b, &send, &plain) {
            Err(e)
                if e.contains("40100")
                    || e.contains("UNAUTHORIZED")
                    || e.contains("Unauthorized") =>
            {
                break;
            }
            Ok(_) if Instant::now() < deadline => accepted += 1,
            other => panic!("still accepted: {other:?}\n{}", b.logs()),
        }
    }
    assert!(b.logs().contains("authentication settings changed"));
    // The run during which the node read the file stored what it sent before (fewer than its
    // 10); nothing refused is stored.
    let before = stored(&b, "Switch");
    assert!(
        (10 * accepted..10 * accepted + 10).contains(&before),
        "only accepted sends are stored: {before} stored after {accepted} accepted runs"
    );
    // Migration mode: accepted again, and logged as what would be refused.
    write(", authentication: true, authorization: true, migration: true");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match clients::run_result(Client::Node, &b, &send, &plain) {
            Ok(_) => break,
            // Refused at its first send: stores nothing.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => panic!("not accepted in migration mode: {e}\n{}", b.logs()),
        }
    }
    assert!(
        b.logs()
            .contains("migration mode: this request would be refused")
    );
    assert_eq!(
        stored(&b, "Switch"),
        before + 10,
        "only accepted sends are stored"
    );
}

/// The Java remoting client (`rocketmq-client` 5.4.0) signing with `AclClientRPCHook`: a
/// push consumer and a lite pull consumer with a user allowed just their topic and group, on
/// a store node that authenticates and authorizes every request.
#[test]
fn the_java_remoting_client_signs_sends_and_consumes_with_a_users_permissions() {
    use common::remoting::{JavaClient, java_with_env};
    let auth: &[&str] = &[
        "--authentication",
        "--authorization",
        "--admin-access-key",
        ROOT.0,
        "--admin-secret-key",
        ROOT.1,
        "--topic",
        "RemSec:4",
        "--topic",
        "RemLite:4",
    ];
    let cluster = common::remoting::Cluster::start(1, &[("broker-a", auth)]);
    let stores: Vec<&BrokerProcess> = cluster.stores.iter().collect();
    admin_all(&stores, &["put-user", "erin", "--password", "erin-secret"]);
    admin_all(
        &stores,
        &[
            "put-acl",
            "erin",
            "--resource",
            "Topic:RemSec",
            "--resource",
            "Topic:RemLite",
            "--actions",
            "Pub,Sub,Get",
        ],
    );
    admin_all(
        &stores,
        &[
            "put-acl",
            "erin",
            "--resource",
            "Group:RG",
            "--actions",
            "Sub,Get,Update",
        ],
    );
    let env = [
        ("RMQ_ACCESS_KEY", "erin"),
        ("RMQ_SECRET_KEY", "erin-secret"),
    ];
    let v = java_with_env(
        JavaClient::V5,
        &cluster,
        &["send_push", "RemSec", "RG"],
        &env,
    );
    assert_eq!(v["received"].as_array().map(Vec::len), Some(20), "{v}");
    let v = java_with_env(
        JavaClient::V5,
        &cluster,
        &["lite_pull", "RemLite", "RG"],
        &env,
    );
    assert!(v.to_string().contains("m19"), "{v}");
    // Nothing reached the handlers unsigned, and nothing was refused.
    let metrics = ureq_get(&format!("http://{}/metrics", cluster.stores[0].http));
    assert!(
        metrics.contains("rocketmq_auth_requests_total{protocol=\"remoting\",outcome=\"allowed\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("outcome=\"forbidden\""),
        "{metrics}\n{}",
        cluster.logs()
    );
    assert!(
        !metrics.contains("outcome=\"unauthenticated\""),
        "{metrics}\n{}",
        cluster.logs()
    );
}
