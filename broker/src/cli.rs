//! `rmq-broker admin`: the command-line tool for people. Topics, groups and consumer progress
//! go through the broker's HTTP admin API; `send` and `receive` go through the RocketMQ 5 gRPC
//! endpoint like any client.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;

use crate::auth::guard::Credentials;
use crate::protocol::grpc::client::{receive_request, request, resource as res};
use crate::protocol::grpc::pb::{self, Code, messaging_service_client::MessagingServiceClient};

#[derive(clap::Args)]
pub struct AdminArgs {
    /// The broker's HTTP port. Repeat it (or separate with commas) to change users and
    /// policies on every store node of a cluster; reads ask the first.
    #[arg(
        long,
        env = "RMQ_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub server: Vec<String>,
    /// Access key to sign requests with (when the broker authenticates).
    #[arg(long, env = "RMQ_ACCESS_KEY", requires = "secret_key")]
    pub access_key: Option<String>,
    /// Secret key to sign requests with.
    #[arg(
        long,
        env = "RMQ_SECRET_KEY",
        hide_env_values = true,
        requires = "access_key"
    )]
    pub secret_key: Option<String>,
    /// The broker's gRPC endpoint (for send and receive).
    #[arg(long, env = "RMQ_ENDPOINT", default_value = "127.0.0.1:8081")]
    pub endpoint: String,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// List topics.
    Topics,
    /// Show one topic.
    Topic { name: String },
    /// Create or update a topic.
    CreateTopic {
        name: String,
        #[arg(long, default_value_t = 8)]
        queues: u32,
        /// NORMAL, FIFO, DELAY or TRANSACTION.
        #[arg(long = "type", default_value = "NORMAL")]
        message_type: String,
    },
    /// List consumer groups.
    Groups,
    /// Create or update a consumer group.
    CreateGroup {
        name: String,
        #[arg(long, default_value_t = 16)]
        max_delivery_attempts: u32,
        #[arg(long)]
        fifo: bool,
    },
    /// A group's committed offsets and lag per queue of a topic.
    Progress { group: String, topic: String },
    /// Send one message.
    Send {
        topic: String,
        body: String,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        keys: Vec<String>,
        #[arg(long, default_value_t = 0)]
        queue: i32,
    },
    /// List users.
    Users,
    /// Show one user.
    User { name: String },
    /// Create a user, or change one (omit --password to keep the secret key).
    PutUser {
        name: String,
        /// The secret key.
        #[arg(long, env = "RMQ_NEW_USER_SECRET", hide_env_values = true)]
        password: Option<String>,
        /// Super or Normal.
        #[arg(long = "type", default_value = "Normal")]
        user_type: String,
        /// enable or disable.
        #[arg(long = "status", default_value = "enable")]
        user_status: String,
    },
    /// Delete a user and its policy.
    DeleteUser { name: String },
    /// Every user's policy.
    Acls,
    /// One user's policy.
    Acl { user: String },
    /// Add entries to a user's policy (one per resource; an entry for the same resource and
    /// decision is replaced).
    PutAcl {
        user: String,
        /// Cluster:name, Topic:name, Topic:prefix*, Topic:*, Group:... or *. Repeatable.
        #[arg(long = "resource", required = true)]
        resources: Vec<String>,
        /// Pub, Sub, Create, Update, Delete, Get, List, All (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
        /// Allow or Deny.
        #[arg(long, default_value = "Allow")]
        decision: String,
        /// Source addresses or CIDR ranges the entries apply to (comma-separated; any when
        /// absent).
        #[arg(long, value_delimiter = ',')]
        source_ips: Vec<String>,
    },
    /// Delete a user's policy, or only its entries for --resource.
    DeleteAcl {
        user: String,
        #[arg(long)]
        resource: Option<String>,
    },
    /// Receive messages for a group (and acknowledge them with --ack).
    Receive {
        topic: String,
        group: String,
        #[arg(long, default_value_t = 16)]
        max: i32,
        #[arg(long)]
        ack: bool,
        /// Seconds to wait for a message.
        #[arg(long, default_value_t = 5)]
        wait: u64,
    },
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn http(
    agent: &ureq::Agent,
    creds: Option<&Credentials>,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let headers = creds.map(crate::protocol::grpc::client::auth_headers);
    let with_auth = |mut r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
        for (k, v) in headers.iter().flatten() {
            r = r.header(*k, v);
        }
        r
    };
    let without_body = |mut r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
        for (k, v) in headers.iter().flatten() {
            r = r.header(*k, v);
        }
        r
    };
    let result = match (method, body) {
        ("PUT", Some(b)) => with_auth(agent.put(url)).send_json(b),
        ("DELETE", _) => without_body(agent.delete(url)).call(),
        _ => without_body(agent.get(url)).call(),
    };
    let mut resp = result.with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let text = resp
        .body_mut()
        .read_to_string()
        .context("reading the answer")?;
    if status == 204 {
        return Ok(Value::Null);
    }
    let v: Option<Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        // Our errors are JSON; a malformed request is answered in plain text.
        let msg = v
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .unwrap_or(&text);
        bail!("{status}: {msg}");
    }
    v.with_context(|| format!("the broker answered {text:?}"))
}

fn req<T>(t: T, creds: Option<&Credentials>) -> tonic::Request<T> {
    let mut r = request(t, "rmq-broker-admin");
    if let Some(c) = creds {
        crate::protocol::grpc::client::sign(&mut r, c);
    }
    r
}

fn check(status: &Option<pb::Status>) -> anyhow::Result<()> {
    let s = status.clone().unwrap_or_default();
    if s.code != Code::Ok as i32 {
        let name = Code::try_from(s.code)
            .map_or_else(|_| s.code.to_string(), |c| c.as_str_name().to_owned());
        bail!("{name}: {}", s.message);
    }
    Ok(())
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let creds =
        args.access_key
            .clone()
            .zip(args.secret_key.clone())
            .map(|(access_key, secret_key)| Credentials {
                access_key,
                secret_key,
            });
    let creds = creds.as_ref();
    let servers: Vec<String> = args
        .server
        .iter()
        .map(|s| s.trim_end_matches('/').to_owned())
        .collect();
    let base = servers
        .first()
        .map(String::as_str)
        .unwrap_or("http://127.0.0.1:8080");
    let get = |path: &str| http(&agent, creds, "GET", &format!("{base}{path}"), None);
    // Users and policies change on every server given.
    let on_all = |method: &str, path: &str, body: Option<Value>| -> anyhow::Result<Value> {
        let mut last = Value::Null;
        for s in &servers {
            last = http(&agent, creds, method, &format!("{s}{path}"), body.clone())
                .with_context(|| format!("on {s}"))?;
        }
        Ok(last)
    };
    match args.command {
        AdminCommand::Topics => print(&get("/admin/topics")?),
        AdminCommand::Topic { name } => print(&get(&format!("/admin/topics/{name}"))?),
        AdminCommand::CreateTopic {
            name,
            queues,
            message_type,
        } => print(&http(
            &agent,
            creds,
            "PUT",
            &format!("{base}/admin/topics/{name}"),
            Some(
                serde_json::json!({ "queues": queues, "messageType": message_type.to_ascii_uppercase() }),
            ),
        )?),
        AdminCommand::Groups => print(&get("/admin/groups")?),
        AdminCommand::CreateGroup {
            name,
            max_delivery_attempts,
            fifo,
        } => print(&http(
            &agent,
            creds,
            "PUT",
            &format!("{base}/admin/groups/{name}"),
            Some(serde_json::json!({ "maxDeliveryAttempts": max_delivery_attempts, "fifo": fifo })),
        )?),
        AdminCommand::Progress { group, topic } => print(&get(&format!(
            "/admin/groups/{group}/progress?topic={topic}"
        ))?),
        AdminCommand::Users => print(&get("/admin/users")?),
        AdminCommand::User { name } => print(&get(&format!("/admin/users/{name}"))?),
        AdminCommand::PutUser {
            name,
            password,
            user_type,
            user_status,
        } => print(&on_all(
            "PUT",
            &format!("/admin/users/{name}"),
            Some(serde_json::json!({
                "password": password.unwrap_or_default(),
                "userType": user_type,
                "userStatus": user_status,
            })),
        )?),
        AdminCommand::DeleteUser { name } => {
            on_all("DELETE", &format!("/admin/users/{name}"), None)?;
            println!("deleted user {name}");
        }
        AdminCommand::Acls => print(&get("/admin/acls")?),
        AdminCommand::Acl { user } => print(&get(&format!("/admin/acls/{user}"))?),
        AdminCommand::PutAcl {
            user,
            resources,
            actions,
            decision,
            source_ips,
        } => {
            let entries: Vec<Value> = resources
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "resource": r,
                        "actions": actions,
                        "decision": decision,
                        "sourceIps": source_ips,
                    })
                })
                .collect();
            print(&on_all(
                "PUT",
                &format!("/admin/acls/{user}"),
                Some(Value::Array(entries)),
            )?)
        }
        AdminCommand::DeleteAcl { user, resource } => {
            let query = resource
                .map(|r| format!("?resource={}", r.replace('*', "%2A").replace(':', "%3A")))
                .unwrap_or_default();
            on_all("DELETE", &format!("/admin/acls/{user}{query}"), None)?;
            println!("deleted the policy entries of {user}");
        }
        AdminCommand::Send { .. } | AdminCommand::Receive { .. } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(grpc(&args.endpoint, creds, args.command))?;
        }
    }
    Ok(())
}

async fn grpc(
    endpoint: &str,
    creds: Option<&Credentials>,
    command: AdminCommand,
) -> anyhow::Result<()> {
    let mut c = MessagingServiceClient::connect(format!("http://{endpoint}"))
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    match command {
        AdminCommand::Send {
            topic,
            body,
            tag,
            keys,
            queue,
        } => {
            let id = format!(
                "ADMIN{:032X}",
                crate::store::commitlog::now_millis() as u128 * 1000
                    + u128::from(std::process::id())
            );
            let m = pb::Message {
                topic: res(&topic),
                user_properties: Default::default(),
                system_properties: Some(pb::SystemProperties {
                    tag,
                    keys,
                    message_id: id,
                    queue_id: queue,
                    body_encoding: pb::Encoding::Identity as i32,
                    message_type: pb::MessageType::Normal as i32,
                    ..Default::default()
                }),
                body: body.into_bytes().into(),
            };
            let r = c
                .send_message(req(pb::SendMessageRequest { messages: vec![m] }, creds))
                .await?
                .into_inner();
            check(&r.status)?;
            for e in r.entries {
                println!(
                    "sent: message id {} at queue offset {}",
                    e.message_id, e.offset
                );
            }
        }
        AdminCommand::Receive {
            topic,
            group,
            max,
            ack,
            wait,
        } => {
            let r = receive_request(
                &topic,
                &group,
                max,
                Duration::from_secs(30),
                Duration::from_secs(wait),
            );
            let mut stream = c.receive_message(req(r, creds)).await?.into_inner();
            let mut handles = Vec::new();
            while let Some(item) = stream.message().await? {
                match item.content {
                    Some(pb::receive_message_response::Content::Status(s))
                        if s.code == Code::MessageNotFound as i32 =>
                    {
                        println!("no message");
                    }
                    Some(pb::receive_message_response::Content::Status(s)) => check(&Some(s))?,
                    Some(pb::receive_message_response::Content::Message(m)) => {
                        let sp = m.system_properties.unwrap_or_default();
                        println!(
                            "message {} queue {} offset {} attempt {} tag {:?}: {}",
                            sp.message_id,
                            sp.queue_id,
                            sp.queue_offset.unwrap_or(-1),
                            sp.delivery_attempt.unwrap_or(0),
                            sp.tag.unwrap_or_default(),
                            String::from_utf8_lossy(&m.body)
                        );
                        handles.push(pb::AckMessageEntry {
                            message_id: sp.message_id,
                            receipt_handle: sp.receipt_handle.unwrap_or_default(),
                            lite_topic: None,
                        });
                    }
                    _ => {}
                }
            }
            if ack && !handles.is_empty() {
                let n = handles.len();
                let r = c
                    .ack_message(req(
                        pb::AckMessageRequest {
                            group: res(&group),
                            topic: res(&topic),
                            entries: handles,
                        },
                        creds,
                    ))
                    .await?
                    .into_inner();
                check(&r.status)?;
                println!("acknowledged {n}");
            }
        }
        _ => unreachable!("only send and receive go over gRPC"),
    }
    Ok(())
}
