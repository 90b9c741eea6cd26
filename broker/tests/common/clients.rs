//! Runs the official RocketMQ clients (installed by `scripts/setup-clients.sh`) against a
//! broker process. Each client's side of a scenario is a script in `tests/clients/`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use super::process::BrokerProcess;

#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// PyPI rocketmq-python-client 5.1.2.
    Python,
    /// npm rocketmq-client-nodejs 1.0.8.
    Node,
    /// Maven rocketmq-client-java 5.2.0, with its default TLS.
    Java,
    /// Go module github.com/apache/rocketmq-clients/golang/v5 v5.1.4, with its default TLS.
    Go,
    /// crates.io rocketmq 5.0.0.
    Rust,
}

/// A driver binary that `scripts/setup-clients.sh` built into a folder named by `prefix` and a
/// hash of the driver's source (the newest one).
fn built_driver(prefix: &str, binary: &str) -> PathBuf {
    let dir = std::fs::read_dir(cache())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("setup-clients.sh builds {binary}"));
    dir.path().join(binary)
}

/// A folder for this test process's compiled Java classes, `<temp>/<prefix>-<pid>`; folders
/// of earlier test processes that have exited are removed first (every test binary compiles
/// its own copy, and nothing else would clean them up).
pub fn class_dir(prefix: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let out = tmp.join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    out
}

/// `tests/clients/JavaClient.java` compiled once per test process.
fn java_classes() -> &'static PathBuf {
    static CLASSES: OnceLock<PathBuf> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let out = class_dir("rmq-java-client");
        let status = Command::new("javac")
            .arg("-d")
            .arg(&out)
            .arg("-cp")
            .arg(cache().join("java-client-5.2.0/lib/rocketmq-client-java-5.2.0.jar"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/JavaClient.java"
            ))
            .status()
            .expect("run javac");
        assert!(status.success(), "javac failed");
        out
    })
}

pub fn cache() -> &'static PathBuf {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let out = Command::new("bash")
            .arg(format!("{root}/scripts/setup-clients.sh"))
            .output()
            .expect("run scripts/setup-clients.sh");
        assert!(
            out.status.success(),
            "scripts/setup-clients.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::env::var("RMQ_CLIENT_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/rocketmq-k8s")
            })
    })
}

/// The longest a client scenario may run.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs one scenario; returns the last JSON line the client printed.
pub fn run(client: Client, broker: &BrokerProcess, args: &[&str], env: &[(&str, &str)]) -> Value {
    match run_result(client, broker, args, env) {
        Ok(v) => v,
        Err(e) => panic!(
            "{client:?} scenario {args:?} failed {e}\nbroker log:\n{}",
            broker.logs()
        ),
    }
}

/// Runs one scenario; the last JSON line the client printed, or what it said when it failed.
pub fn run_result(
    client: Client,
    broker: &BrokerProcess,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Value, String> {
    let home = tempfile::tempdir().unwrap(); // clients log under ~/logs
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let mut cmd = match client {
        Client::Python => {
            let mut c = Command::new(cache().join("python-client-5.1.2/bin/python"));
            c.arg(format!("{scripts}/python_client.py"));
            c
        }
        Client::Java => {
            let mut c = Command::new("java");
            let cp = format!(
                "{}/*:{}",
                cache().join("java-client-5.2.0/lib").display(),
                java_classes().display()
            );
            c.arg("-cp").arg(cp).arg("JavaClient");
            c
        }
        Client::Go => Command::new(built_driver("go-client-v5.1.4-", "goclient")),
        Client::Rust => Command::new(built_driver("rust-client-5.0.0-", "rust-client")),
        Client::Node => {
            let mut c = Command::new("node");
            c.arg(format!("{scripts}/node_client.js"))
                .env("NODE_PATH", cache().join("node-client-1.0.8/node_modules"));
            c
        }
    };
    let out_file = home.path().join("stdout");
    let err_file = home.path().join("stderr");
    let mut child = cmd
        .arg(args[0])
        .arg(broker.endpoint())
        .args(&args[1..])
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .expect("run the client");
    // A client that hangs fails the test instead of holding it forever.
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_file).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
    let Some(status) = status else {
        return Err(format!(
            "(killed after {CLIENT_TIMEOUT:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ));
    };
    let last = stdout.lines().rev().find(|l| l.starts_with('{'));
    match last {
        Some(l) if status.success() => Ok(serde_json::from_str(l).unwrap()),
        _ => Err(format!("({status}):\nstdout:\n{stdout}\nstderr:\n{stderr}")),
    }
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// Checks the output of the `send_receive_ack` scenario (the same in every client): each of
/// the 10 messages received once, with its body, tag, key and user property.
pub fn check_send_receive_ack(v: &Value) {
    let mut sent = strings(&v["sent"]);
    let received = v["received"].as_array().unwrap();
    assert_eq!(received.len(), 10, "{v}");
    let mut got: Vec<String> = received
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    sent.sort();
    got.sort();
    assert_eq!(got, sent, "every sent message is received once");
    for m in received {
        let body = m["body"].as_str().unwrap();
        let i = body.strip_prefix("hello-").unwrap();
        assert_eq!(m["tag"], "TagA");
        assert_eq!(m["keys"][0], format!("key-{i}"));
        assert_eq!(m["props"]["idx"], i);
        assert_eq!(m["attempt"], 1);
    }
}

/// Records that `client` passed a test of `feature`, for the README's compatibility matrix
/// (`scripts/compat-matrix.py`).
pub fn record(client: Client, feature: &str) {
    let name = match client {
        Client::Python => "python",
        Client::Node => "node",
        Client::Java => "java",
        Client::Go => "go",
        Client::Rust => "rust",
    };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("compat")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(feature), b"").unwrap();
}
