//! Cluster mode on loopback: name servers and store nodes as real `rmq-broker` processes, and
//! the official remoting clients (Java `rocketmq-client`, Go `rocketmq-client-go/v2`, mqadmin
//! from `rocketmq-tools`) installed by `scripts/setup-clients.sh`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::clients::cache;
use super::process::BrokerProcess;
use broker::protocol::remoting::body::{ClusterInfo, from_body};
use broker::protocol::remoting::codes::request::GET_BROKER_CLUSTER_INFO;
use broker::protocol::remoting::conn::{self, NoRequests, Pool};

pub const JAVA_CLIENT: &str = "4.9.8";
pub const MQADMIN: &str = "5.4.0";

/// Name servers and store nodes, each its own process.
pub struct Cluster {
    pub namesrvs: Vec<BrokerProcess>,
    pub stores: Vec<BrokerProcess>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// `stores`: one entry per store node, its broker name and extra flags.
    pub fn start(namesrvs: usize, stores: &[(&str, &[&str])]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let namesrvs: Vec<BrokerProcess> = (0..namesrvs)
            .map(|i| {
                BrokerProcess::start_role("namesrv", &dir.path().join(format!("namesrv{i}")), &[])
            })
            .collect();
        let ns = namesrvs
            .iter()
            .map(|n| n.endpoint())
            .collect::<Vec<_>>()
            .join(";");
        let stores = stores
            .iter()
            .map(|(name, extra)| {
                let mut args = vec!["--broker-name", name, "--namesrv", &ns];
                args.extend_from_slice(extra);
                BrokerProcess::start_role("store", &dir.path().join(name), &args)
            })
            .collect();
        let c = Cluster {
            namesrvs,
            stores,
            dir,
        };
        c.wait_registered(c.stores.len());
        c
    }

    /// Starts a proxy of this cluster (TLS and plaintext on its gRPC port).
    pub fn start_proxy(&self, i: usize) -> BrokerProcess {
        let ns = self.namesrv();
        BrokerProcess::start_role(
            "proxy",
            &self.dir.path().join(format!("proxy{i}")),
            &["--namesrv", &ns],
        )
    }

    /// The name server list as clients take it (`a;b`).
    pub fn namesrv(&self) -> String {
        self.namesrvs
            .iter()
            .map(|n| n.endpoint())
            .collect::<Vec<_>>()
            .join(";")
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (kind, list) in [("namesrv", &self.namesrvs), ("store", &self.stores)] {
            for (i, p) in list.iter().enumerate() {
                out.push_str(&format!("---- {kind} {i} ----\n{}\n", p.logs()));
            }
        }
        out
    }

    /// Waits until every running name server lists `brokers` brokers.
    pub fn wait_registered(&self, brokers: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &self.namesrvs {
            loop {
                let got = cluster_info(&n.endpoint()).map_or(0, |c| c.broker_addr_table.len());
                if got == brokers {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "name server {} lists {got} brokers, not {brokers}:\n{}",
                    n.endpoint(),
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// GET_BROKER_CLUSTER_INFO from one name server, with our own remoting client.
pub fn cluster_info(namesrv: &str) -> Option<ClusterInfo> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = Pool::new(Arc::new(NoRequests), Duration::from_secs(1), 1 << 24);
        let r = pool
            .invoke(
                namesrv,
                conn::request(GET_BROKER_CLUSTER_INFO, []),
                Duration::from_secs(2),
            )
            .await
            .ok()?;
        from_body(&r.body).ok()
    })
}

/// Which Java remoting client a scenario runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JavaClient {
    /// Maven `rocketmq-client` 4.9.8.
    V4,
    /// Maven `rocketmq-client` 5.4.0 (from the mqadmin install, `rocketmq-tools` 5.4.0).
    V5,
}

fn java_lib(client: JavaClient) -> PathBuf {
    match client {
        JavaClient::V4 => cache().join(format!("remoting-client-{JAVA_CLIENT}/lib")),
        JavaClient::V5 => cache().join(format!("mqadmin-{MQADMIN}/lib")),
    }
}

/// `tests/clients/RemotingClient.java` compiled once per test process and client version.
/// 5.x moved `MessageModel` to another package; the driver's one import of it is rewritten.
fn java_classes(client: JavaClient) -> &'static PathBuf {
    static V4: OnceLock<PathBuf> = OnceLock::new();
    static V5: OnceLock<PathBuf> = OnceLock::new();
    let cell = match client {
        JavaClient::V4 => &V4,
        JavaClient::V5 => &V5,
    };
    cell.get_or_init(|| {
        let out = super::clients::class_dir(&format!("rmq-remoting-client-{client:?}"));
        let source = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/RemotingClient.java"
        ))
        .unwrap();
        let source = match client {
            JavaClient::V4 => source,
            JavaClient::V5 => source.replace(
                "org.apache.rocketmq.common.protocol.heartbeat",
                "org.apache.rocketmq.remoting.protocol.heartbeat",
            ),
        };
        let file = out.join("RemotingClient.java");
        std::fs::write(&file, source).unwrap();
        let status = Command::new("javac")
            .arg("-nowarn")
            .arg("-d")
            .arg(&out)
            .arg("-cp")
            .arg(format!("{}/*", java_lib(client).display()))
            .arg(&file)
            .status()
            .expect("run javac");
        assert!(status.success(), "javac failed for {client:?}");
        out
    })
}

fn last_json(what: &str, out: std::process::Output, cluster: &Cluster) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with('{'));
    match last {
        Some(l) if out.status.success() => serde_json::from_str(l).unwrap(),
        _ => panic!(
            "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\ncluster logs:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        ),
    }
}

/// Runs a scenario of the Java remoting client driver (4.9.8): `args` = scenario, topic,
/// group, ...
pub fn java(cluster: &Cluster, args: &[&str]) -> Value {
    java_with(JavaClient::V4, cluster, args)
}

pub fn java_with(client: JavaClient, cluster: &Cluster, args: &[&str]) -> Value {
    java_with_env(client, cluster, args, &[])
}

/// As [`java_with`], with extra environment variables (`RMQ_ACCESS_KEY`/`RMQ_SECRET_KEY`
/// sign every request).
pub fn java_with_env(
    client: JavaClient,
    cluster: &Cluster,
    args: &[&str],
    env: &[(&str, &str)],
) -> Value {
    let home = tempfile::tempdir().unwrap();
    let cp = format!(
        "{}:{}/*",
        java_classes(client).display(),
        java_lib(client).display()
    );
    let out = Command::new("java")
        .arg(format!("-Duser.home={}", home.path().display()))
        .arg("-cp")
        .arg(cp)
        .arg("RemotingClient")
        .arg(cluster.namesrv())
        .args(args)
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .output()
        .expect("run java");
    last_json(
        &format!("Java rocketmq-client {client:?} {args:?}"),
        out,
        cluster,
    )
}

/// Runs a scenario of the Go remoting client driver (`tests/clients/go-remoting`).
pub fn go(cluster: &Cluster, args: &[&str]) -> Value {
    let home = tempfile::tempdir().unwrap();
    let bin = std::fs::read_dir(cache())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("go-remoting-client-")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .expect("setup-clients.sh builds the Go remoting driver")
        .path()
        .join("goremoting");
    let out = Command::new(bin)
        .arg(cluster.namesrv())
        .args(args)
        .env("HOME", home.path())
        .output()
        .expect("run the Go driver");
    last_json(&format!("Go rocketmq-client-go/v2 {args:?}"), out, cluster)
}

/// Runs an mqadmin command (`rocketmq-tools`); returns its stdout. Panics if it fails.
pub fn mqadmin(cluster: &Cluster, args: &[&str]) -> String {
    mqadmin_as(cluster, None, args).unwrap_or_else(|e| {
        panic!(
            "mqadmin {args:?} failed {e}\ncluster logs:\n{}",
            cluster.logs()
        )
    })
}

/// Runs an mqadmin command signed with `credentials` (access key, secret key: written to
/// `$ROCKETMQ_HOME/conf/tools.yml`, where mqadmin reads them); its stdout, or what it said
/// when it failed.
pub fn mqadmin_as(
    _cluster: &Cluster,
    credentials: Option<(&str, &str)>,
    args: &[&str],
) -> Result<String, String> {
    let home = tempfile::tempdir().unwrap();
    if let Some((ak, sk)) = credentials {
        std::fs::create_dir_all(home.path().join("conf")).unwrap();
        std::fs::write(
            home.path().join("conf/tools.yml"),
            format!("accessKey: {ak}\nsecretKey: {sk}\n"),
        )
        .unwrap();
    }
    let out = Command::new("java")
        .arg(format!("-Duser.home={}", home.path().display()))
        .arg("-cp")
        .arg(format!(
            "{}/*",
            cache().join(format!("mqadmin-{MQADMIN}/lib")).display()
        ))
        .arg("org.apache.rocketmq.tools.command.MQAdminStartup")
        .args(args)
        .env("HOME", home.path())
        .env("ROCKETMQ_HOME", home.path())
        .output()
        .expect("run mqadmin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
