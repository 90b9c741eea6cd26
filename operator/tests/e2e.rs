//! End-to-end on a real control plane: kube-apiserver, etcd, kube-controller-manager,
//! kube-scheduler and KWOK nodes started by `e2e/run.sh` (which sets `RMQ_E2E_KUBECONFIG`);
//! skipped when run without it. Every assertion reads what the API server holds (`kubectl
//! get -o json`). KWOK pods do not run containers, so the data plane is real local processes
//! started from the configuration the operator rendered into the ConfigMap, and the operator
//! reaches those store nodes' HTTP ports through `RMQ_OPERATOR_STORE_ENDPOINTS`.
//!
//! One scenario in order: helm install of the chart; the operator runs with the chart's
//! ServiceAccount token (so its RBAC is what is tested); invalid resources are refused with
//! their validation messages; the example cluster becomes Ready with the expected objects;
//! the rendered configuration runs a working cluster that the official Python client produces
//! to and consumes from; `kubectl scale` out; a scale-in held while the leaving node has
//! unconsumed messages, then completed; a configuration change rolls name servers, then store
//! nodes, then proxies; the operator killed mid-reconcile converges after a restart; the API
//! server restarted; deleting the resource garbage-collects what it owned.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NS: &str = "mq";
const OP_NS: &str = "rmq-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[path = "../../broker/tests/common/ports.rs"]
mod ports;
use ports::free_port;

struct Env {
    kubeconfig: PathBuf,
    bin: PathBuf,
    /// Logs and files of this run, inside e2e/run.sh's work folder (kept on failure).
    work: Work,
}

struct Work(PathBuf);

impl Work {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Env {
    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_as(&self.kubeconfig, args)
    }

    fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?} failed: {e}"))
    }

    /// An object as JSON, or `None` when it does not exist.
    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.kubectl(&["get", kind, name, "-n", NS, "-o", "json"])
            .ok()
            .map(|s| serde_json::from_str(&s).unwrap())
    }

    fn cluster(&self) -> Value {
        self.get("rmq", "demo").expect("the RocketMQCluster exists")
    }

    /// A merge patch of a RocketMQCluster's spec.
    fn patch(&self, name: &str, patch: &str) {
        self.ok(&[
            "patch", "rmq", name, "-n", NS, "--type", "merge", "-p", patch,
        ]);
    }

    fn apply(&self, yaml: &str) -> Result<String, String> {
        let path = self.work.path().join(format!("apply-{}.yaml", free_port()));
        std::fs::write(&path, yaml).unwrap();
        self.kubectl(&["apply", "-n", NS, "-f", path.to_str().unwrap()])
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `secs` with `what` and the
/// last thing `f` saw.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {secs} s waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn condition(c: &Value, type_: &str) -> String {
    c["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["type"] == type_)
        .map(|x| {
            format!(
                "{}: {}",
                x["status"].as_str().unwrap_or(""),
                x["message"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_default()
}

fn is_ready(c: &Value) -> bool {
    condition(c, "Ready").starts_with("True")
        && c["status"]["observedGeneration"] == c["metadata"]["generation"]
}

/// A local process with its log in the work folder; killed when dropped.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
}

impl Proc {
    fn start(bin: &Path, args: &[String], env: &[(&str, String)], log: PathBuf) -> Proc {
        let mut p = Proc {
            child: None,
            log,
            cmd: std::iter::once(bin.display().to_string())
                .chain(args.iter().cloned())
                .collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(&self.cmd[0])
                .args(&self.cmd[1..])
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start a process"),
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the process again if it has exited, as the kubelet restarts a container.
    /// Returns whether it had exited.
    fn revive(&mut self) -> bool {
        let exited = self
            .child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some());
        if exited {
            self.spawn();
        }
        exited
    }

    /// A line of /proc/PID/status in MiB (`VmRSS`, `VmHWM`); None once the process is gone.
    fn memory_mib(&self, field: &str) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    /// SIGTERM, as the kubelet stops a container, and waits (up to 30 s) for the exit.
    fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_listening(addr: SocketAddr, p: &Proc) {
    wait_for(
        30,
        &format!("{} to listen on {addr}", p.cmd.join(" ")),
        || {
            TcpStream::connect(addr)
                .map(|_| ())
                .map_err(|e| format!("{e}\n{}", p.logs()))
        },
    );
}

/// The Python client (installed by scripts/setup-clients.sh) against a gRPC endpoint.
fn python(endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let home = tempfile::tempdir().unwrap();
    let cache = std::env::var("HOME")
        .map(PathBuf::from)
        .unwrap()
        .join(".cache/rocketmq-k8s");
    let out = Command::new(cache.join("python-client-5.1.2/bin/python"))
        .arg(repo().join("broker/tests/clients/python_client.py"))
        .arg(args[0])
        .arg(endpoint)
        .args(&args[1..])
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().rev().find(|l| l.starts_with('{')) {
        Some(l) if out.status.success() => serde_json::from_str(l).unwrap(),
        _ => panic!(
            "Python client {args:?} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn ids(v: &Value, key: &str) -> std::collections::BTreeSet<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.get("id").unwrap_or(m).as_str().unwrap().to_owned())
        .collect()
}

/// The data plane: local processes started from the ConfigMap the operator rendered.
struct DataPlane {
    dir: PathBuf,
    broker_bin: PathBuf,
    namesrv: Proc,
    namesrv_addr: SocketAddr,
    stores: BTreeMap<String, (Proc, SocketAddr, SocketAddr)>,
    store_env: Vec<(String, String)>,
    proxy: Proc,
    proxy_addr: SocketAddr,
}

impl DataPlane {
    fn start(
        e: &Env,
        cluster: &str,
        store_http: &BTreeMap<String, SocketAddr>,
        nodes: usize,
        store_env: &[(&str, String)],
    ) -> DataPlane {
        let cm = e
            .get("configmap", &format!("{cluster}-config"))
            .expect("the ConfigMap exists");
        let dir = e.work.path().join(format!("dataplane-{cluster}"));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["namesrv.yaml", "store.yaml", "proxy.yaml"] {
            let text = cm["data"][file].as_str().expect("every role has its file");
            std::fs::write(dir.join(file), text).unwrap();
        }
        let broker_bin = Path::new(env!("CARGO_BIN_EXE_rmq-operator")).with_file_name("rmq-broker");
        assert!(
            broker_bin.exists(),
            "{} is missing: build it with `cargo build -p broker --bin rmq-broker`",
            broker_bin.display()
        );
        let namesrv_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let s = |x: &str| x.to_owned();
        let namesrv = Proc::start(
            &broker_bin,
            &[
                s("namesrv"),
                s("--config"),
                dir.join("namesrv.yaml").display().to_string(),
                s("--listen"),
                namesrv_addr.to_string(),
                s("--http-listen"),
                format!("127.0.0.1:{}", free_port()),
            ],
            &[],
            dir.join("namesrv.log"),
        );
        wait_listening(namesrv_addr, &namesrv);
        let mut dp = DataPlane {
            dir,
            broker_bin,
            namesrv,
            namesrv_addr,
            stores: BTreeMap::new(),
            store_env: store_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            proxy: Proc {
                child: None,
                log: PathBuf::new(),
                cmd: Vec::new(),
                env: Vec::new(),
            },
            proxy_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        for i in 0..nodes {
            dp.start_store(&format!("{cluster}-broker-{i}"), store_http);
        }
        let proxy = Proc::start(
            &dp.broker_bin,
            &[
                s("proxy"),
                s("--config"),
                dp.dir.join("proxy.yaml").display().to_string(),
                s("--grpc-listen"),
                dp.proxy_addr.to_string(),
                s("--http-listen"),
                format!("127.0.0.1:{}", free_port()),
                s("--namesrv"),
                dp.namesrv_addr.to_string(),
            ],
            &[],
            dp.dir.join("proxy.log"),
        );
        wait_listening(dp.proxy_addr, &proxy);
        dp.proxy = proxy;
        dp
    }

    /// A store node named like the pod, with the rendered store.yaml (name server, listen
    /// and data folder overridden for loopback), and the test topic.
    fn start_store(&mut self, name: &str, store_http: &BTreeMap<String, SocketAddr>) {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        self.run_store(name, listen, store_http[name]);
        // Clients look routes up through the name server: wait until it routes the topic to
        // every node started so far.
        let want = self.stores.len();
        wait_for(
            30,
            "the name server to route E2E to every store node",
            || {
                let n = route_brokers(&self.namesrv_addr.to_string(), "E2E");
                if n == want {
                    Ok(())
                } else {
                    Err(format!("{n} of {want}"))
                }
            },
        );
    }

    /// Starts (or restarts, after its pod was replaced) a store node with the current
    /// store.yaml.
    fn run_store(&mut self, name: &str, listen: SocketAddr, http: SocketAddr) {
        let env: Vec<(&str, String)> = self
            .store_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let p = Proc::start(
            &self.broker_bin,
            &[
                "store".into(),
                "--config".into(),
                self.dir.join("store.yaml").display().to_string(),
                "--broker-name".into(),
                name.into(),
                "--listen".into(),
                listen.to_string(),
                "--http-listen".into(),
                http.to_string(),
                "--data-dir".into(),
                self.dir.join(name).display().to_string(),
                "--namesrv".into(),
                self.namesrv_addr.to_string(),
            ],
            &env,
            self.dir.join(format!("{name}.log")),
        );
        // Both ports: the HTTP port may open after the remoting one.
        wait_listening(listen, &p);
        wait_listening(http, &p);
        ureq::put(&format!("http://{http}/admin/topics/E2E"))
            .send_json(serde_json::json!({"queues": 4}))
            .expect("create the test topic");
        self.stores.insert(name.to_owned(), (p, listen, http));
    }

    /// Re-reads the store nodes' file from the ConfigMap (a replaced pod mounts the newest).
    fn refresh_store_config(&self, e: &Env, cluster: &str) {
        let cm = e
            .get("configmap", &format!("{cluster}-config"))
            .expect("the ConfigMap exists");
        std::fs::write(
            self.dir.join("store.yaml"),
            cm["data"]["store.yaml"].as_str().unwrap(),
        )
        .unwrap();
    }

    /// Per store node: messages stored and group G's progress on topic E2E.
    fn progress(&self) -> String {
        let mut out = String::new();
        for (name, (_, _, http)) in &self.stores {
            let p = ureq::get(&format!("http://{http}/admin/groups/G/progress?topic=E2E"))
                .call()
                .map(|mut r| r.body_mut().read_to_string().unwrap_or_default())
                .unwrap_or_else(|e| e.to_string());
            out.push_str(&format!("{name}: stored {}, progress {p}\n", stored(*http)));
        }
        out
    }

    fn endpoint(&self) -> String {
        self.proxy_addr.to_string()
    }

    fn logs(&self) -> String {
        let mut out = format!(
            "---- namesrv\n{}\n---- proxy\n{}\n",
            self.namesrv.logs(),
            self.proxy.logs()
        );
        for (name, (p, _, _)) in &self.stores {
            out.push_str(&format!("---- {name}\n{}\n", p.logs()));
        }
        out
    }
}

/// How many store nodes the name server routes `topic` to.
fn route_brokers(namesrv: &str, topic: &str) -> usize {
    use broker::protocol::remoting::body::from_body;
    use broker::protocol::remoting::codes::{request, response};
    use broker::protocol::remoting::conn::{self, NoRequests, Pool};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = Pool::new(
            std::sync::Arc::new(NoRequests),
            Duration::from_secs(2),
            1 << 24,
        );
        let req = conn::request(
            request::GET_ROUTEINFO_BY_TOPIC,
            [("topic", topic.to_owned())],
        );
        match pool.invoke(namesrv, req, Duration::from_secs(3)).await {
            Ok(r) if r.code == response::SUCCESS => from_body::<Value>(&r.body)
                .ok()
                .and_then(|v| v["brokerDatas"].as_array().map(Vec::len))
                .unwrap_or(0),
            _ => 0,
        }
    })
}

/// A process's Prometheus metrics, or `None` while it does not answer.
fn metrics_text(http: SocketAddr) -> Option<String> {
    ureq::get(&format!("http://{http}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
}

/// Messages of topic E2E a store node holds, from its metrics.
fn stored(http: SocketAddr) -> u64 {
    let text = metrics_text(http).expect("the store node serves its metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("rocketmq_messages_sent_total{topic=\"E2E\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The template hash each role's workload currently carries.
fn hashes(e: &Env) -> [Option<String>; 3] {
    let h = |kind: &str, name: &str| {
        e.get(kind, name).and_then(|o| {
            o["spec"]["template"]["metadata"]["annotations"]["rocketmq.rs/config-hash"]
                .as_str()
                .map(str::to_owned)
        })
    };
    [
        h("statefulset", "demo-namesrv"),
        h("statefulset", "demo-broker"),
        h("deployment", "demo-proxy"),
    ]
}

#[test]
fn operator_end_to_end_on_a_real_control_plane() {
    let Ok(kubeconfig) = std::env::var("RMQ_E2E_KUBECONFIG") else {
        eprintln!(
            "skipped: run e2e/run.sh (it starts a control plane and sets RMQ_E2E_KUBECONFIG)"
        );
        return;
    };
    let e = Env {
        kubeconfig: kubeconfig.into(),
        bin: std::env::var("RMQ_E2E_K8S_BIN")
            .expect("e2e/run.sh sets RMQ_E2E_K8S_BIN")
            .into(),
        work: Work(
            PathBuf::from(
                std::env::var("RMQ_E2E_WORKDIR").expect("e2e/run.sh sets RMQ_E2E_WORKDIR"),
            )
            .join("test"),
        ),
    };
    std::fs::create_dir_all(e.work.path()).unwrap();
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("e2e [{:>5.1} s] {what}", t0.elapsed().as_secs_f64());

    // 1. helm install of the chart: CRD, RBAC, ServiceAccount, the operator's Deployment.
    step("helm install");
    let out = Command::new(e.bin.join("helm"))
        .args([
            "install",
            "rmq",
            repo().join("charts/rocketmq-operator").to_str().unwrap(),
        ])
        .args([
            "--namespace",
            OP_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "120s",
        ])
        .arg("--kubeconfig")
        .arg(&e.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = String::from_utf8_lossy(&out.stdout);
    assert!(
        notes.contains("kubectl apply"),
        "NOTES.txt tells what to do next: {notes}"
    );
    let crd: Value =
        serde_json::from_str(&e.ok(&["get", "crd", "rocketmqclusters.rocketmq.rs", "-o", "json"]))
            .unwrap();
    assert!(
        crd["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True"),
        "{crd}"
    );
    let dep: Value = serde_json::from_str(&e.ok(&[
        "get",
        "deployment",
        "rmq-rocketmq-operator",
        "-n",
        OP_NS,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        dep["status"]["readyReplicas"], 1,
        "KWOK makes the operator pod ready: {dep}"
    );

    // 2. The operator runs here, as the chart's ServiceAccount (its token, not the admin's).
    step("operator starts with the chart's ServiceAccount");
    let token = e.ok(&[
        "create",
        "token",
        "rmq-rocketmq-operator",
        "-n",
        OP_NS,
        "--duration",
        "2h",
    ]);
    let admin: String = std::fs::read_to_string(&e.kubeconfig).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("the kubeconfig names the server")
        .to_owned();
    let ca = admin
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("certificate-authority: ")
                .or_else(|| l.trim().strip_prefix("certificate-authority-data: "))
        })
        .expect("the kubeconfig names the CA")
        .to_owned();
    let ca_line = if admin.contains("certificate-authority-data:") {
        format!("certificate-authority-data: {ca}")
    } else {
        format!("certificate-authority: {ca}")
    };
    let sa_kubeconfig = e.work.path().join("operator.kubeconfig");
    std::fs::write(
        &sa_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    {ca_line}\nusers:\n- name: operator\n  user:\n    token: {}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: operator}}\ncurrent-context: e2e\n",
            token.trim()
        ),
    )
    .unwrap();
    // Least privilege: the operator's account cannot read Secrets.
    assert!(
        e.kubectl_as(&sa_kubeconfig, &["get", "secrets", "-n", NS])
            .is_err()
    );
    let store_http: BTreeMap<String, SocketAddr> = ["demo", "tiered"]
        .iter()
        .flat_map(|c| (0..3).map(move |i| format!("{c}-broker-{i}")))
        .chain((0..3).map(|i| format!("ha-broker-0-{i}")))
        .chain((0..3).map(|i| format!("ha-controller-{i}")))
        .map(|name| (name, SocketAddr::from(([127, 0, 0, 1], free_port()))))
        .collect();
    let endpoints = store_http
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let op_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let operator_env = vec![
        ("KUBECONFIG", sa_kubeconfig.display().to_string()),
        ("POD_NAMESPACE", OP_NS.to_owned()),
        ("POD_NAME", "e2e-operator".to_owned()),
        ("RMQ_OPERATOR_HTTP_LISTEN", op_http.to_string()),
        ("RMQ_OPERATOR_STORE_ENDPOINTS", endpoints),
        (
            "RUST_LOG",
            "info,kube_runtime=debug,kube_lease_manager=debug".to_owned(),
        ),
    ];
    let op_bin = PathBuf::from(env!("CARGO_BIN_EXE_rmq-operator"));
    let mut operator = Proc::start(
        &op_bin,
        &["run".into()],
        &operator_env,
        e.work.path().join("operator.log"),
    );
    wait_listening(op_http, &operator);
    // A second replica waits on the Lease as a standby.
    let op2_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut standby_env = operator_env.clone();
    for (k, v) in standby_env.iter_mut() {
        match *k {
            "POD_NAME" => *v = "e2e-operator-2".to_owned(),
            "RMQ_OPERATOR_HTTP_LISTEN" => *v = op2_http.to_string(),
            _ => {}
        }
    }
    let mut standby = Proc::start(
        &op_bin,
        &["run".into()],
        &standby_env,
        e.work.path().join("operator-2.log"),
    );
    wait_listening(op2_http, &standby);
    let leader = |http: SocketAddr| -> Option<f64> {
        let text = metrics_text(http)?;
        text.lines()
            .find_map(|l| l.strip_prefix("rocketmq_operator_leader "))
            .and_then(|v| v.trim().parse().ok())
    };
    wait_for(20, "one leader among the two replicas", || {
        match (leader(op_http), leader(op2_http)) {
            (Some(1.0), Some(0.0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // 3. Invalid resources are refused by the API server with a readable message.
    step("invalid resources are refused");
    e.ok(&["create", "namespace", NS]);
    let bad = e
        .apply("apiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {name: bad}\nspec:\n  tieredStorage: {enabled: true, backend: s3}\n")
        .unwrap_err();
    assert!(bad.contains("tieredStorage.bucket is required"), "{bad}");
    let bad = e
        .apply("apiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {name: bad}\nspec:\n  broker: {replicas: 101}\n")
        .unwrap_err();
    assert!(
        bad.contains("spec.broker.replicas") && bad.contains("100"),
        "{bad}"
    );
    let bad = e
        .apply("apiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {name: bad}\nspec:\n  broker: {storage: {size: lots}}\n")
        .unwrap_err();
    assert!(bad.contains("storage.size must be a quantity"), "{bad}");
    let bad = e
        .apply("apiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {name: bad}\nspec:\n  security: {authentication: true}\n")
        .unwrap_err();
    assert!(bad.contains("security.adminSecretRef"), "{bad}");
    assert!(e.get("rmq", "bad").is_none());

    // 4. The example cluster: the expected objects, then Ready once KWOK runs the pods.
    step("kubectl apply of the example");
    e.ok(&[
        "apply",
        "-n",
        NS,
        "-f",
        repo()
            .join("examples/rocketmqcluster.yaml")
            .to_str()
            .unwrap(),
    ]);
    let c = wait_for(90, "the example to become Ready", || {
        let c = e.cluster();
        if is_ready(&c) {
            Ok(c)
        } else {
            Err(c.to_string())
        }
    });
    assert_eq!(c["status"]["broker"]["readyReplicas"], 2, "{c}");
    assert_eq!(c["status"]["proxy"]["readyReplicas"], 2, "{c}");
    assert_eq!(c["status"]["nameServer"]["readyReplicas"], 2, "{c}");
    assert_eq!(c["status"]["endpoint"], "demo-proxy.mq.svc:8081");
    for (kind, name) in [
        ("statefulset", "demo-namesrv"),
        ("statefulset", "demo-broker"),
        ("deployment", "demo-proxy"),
        ("configmap", "demo-config"),
        ("service", "demo-proxy"),
        ("service", "demo-namesrv"),
        ("service", "demo-namesrv-headless"),
        ("service", "demo-broker-headless"),
        ("poddisruptionbudget", "demo-namesrv"),
        ("poddisruptionbudget", "demo-broker"),
        ("poddisruptionbudget", "demo-proxy"),
        ("serviceaccount", "demo-rocketmq"),
    ] {
        let o = e
            .get(kind, name)
            .unwrap_or_else(|| panic!("{kind}/{name} missing"));
        assert_eq!(
            o["metadata"]["ownerReferences"][0]["name"], "demo",
            "{kind}/{name}"
        );
    }
    // A NetworkPolicy follows spec.security.networkPolicy (no pod restarts: the
    // configuration does not change).
    step("a NetworkPolicy on and off");
    e.patch("demo", r#"{"spec":{"security":{"networkPolicy":true}}}"#);
    let np = wait_for(60, "the NetworkPolicy", || {
        e.get("networkpolicy", "demo-rocketmq")
            .ok_or_else(|| "not yet".to_owned())
    });
    assert_eq!(np["metadata"]["ownerReferences"][0]["name"], "demo", "{np}");
    assert_eq!(
        np["spec"]["ingress"][1]["ports"].as_array().map(Vec::len),
        Some(3),
        "{np}"
    );
    e.patch("demo", r#"{"spec":{"security":null}}"#);
    wait_for(60, "the NetworkPolicy to go", || {
        match e.get("networkpolicy", "demo-rocketmq") {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    });
    let sts = e.get("statefulset", "demo-broker").unwrap();
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    let pvcs = e.ok(&[
        "get",
        "pvc",
        "-n",
        NS,
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(
        pvcs.split_whitespace().filter(|p| *p == "Bound").count(),
        2,
        "{pvcs}"
    );
    let table = e.ok(&["get", "rmq", "-n", NS]);
    assert!(
        table.contains("READY")
            && table.contains("2/2")
            && table.contains("demo-proxy.mq.svc:8081"),
        "{table}"
    );
    // Hand edits of what the operator owns are undone (a settled pass applies nothing, so
    // this is the watches noticing the change), and a deleted object comes back.
    step("owned objects edited and deleted by hand");
    e.ok(&[
        "patch",
        "pdb",
        "demo-proxy",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"maxUnavailable":3}}"#,
    ]);
    e.ok(&[
        "label",
        "service",
        "demo-proxy",
        "-n",
        NS,
        "--overwrite",
        "app.kubernetes.io/name=edited",
    ]);
    e.ok(&["delete", "configmap", "demo-config", "-n", NS]);
    wait_for(30, "the edits undone", || {
        let pdb = e.get("poddisruptionbudget", "demo-proxy");
        let svc = e.get("service", "demo-proxy");
        let cm = e.get("configmap", "demo-config");
        match (pdb, svc, cm) {
            (Some(pdb), Some(svc), Some(_))
                if pdb["spec"]["maxUnavailable"] == 1
                    && svc["metadata"]["labels"]["app.kubernetes.io/name"] == "rocketmq" =>
            {
                Ok(())
            }
            (pdb, svc, cm) => Err(format!(
                "pdb {:?}, service labels {:?}, configmap there: {}",
                pdb.map(|p| p["spec"]["maxUnavailable"].clone()),
                svc.map(|s| s["metadata"]["labels"].clone()),
                cm.is_some()
            )),
        }
    });

    // 5. The rendered configuration runs a working cluster.
    step("data plane from the rendered ConfigMap");
    let mut dp = DataPlane::start(&e, "demo", &store_http, 2, &[]);
    let sent = python(&dp.endpoint(), &["send", "E2E", "G", "20"], &[]);
    let got = python(&dp.endpoint(), &["receive_ack", "E2E", "G", "20"], &[]);
    assert_eq!(ids(&got, "received"), ids(&sent, "sent"), "{}", dp.logs());

    // 6. Scale out with `kubectl scale` (the scale subresource).
    step("kubectl scale --replicas=3");
    e.ok(&["scale", "rmq/demo", "-n", NS, "--replicas=3"]);
    wait_for(60, "3 ready store nodes", || {
        let c = e.cluster();
        if is_ready(&c) && c["status"]["broker"]["readyReplicas"] == 3 {
            Ok(())
        } else {
            Err(c["status"].to_string())
        }
    });
    assert_eq!(
        e.get("statefulset", "demo-broker").unwrap()["spec"]["replicas"],
        3
    );
    dp.start_store("demo-broker-2", &store_http);
    // The proxy caches routes for 3 s.
    std::thread::sleep(Duration::from_secs(4));
    let leaving_http = dp.stores["demo-broker-2"].2;
    // Once routes include the new node, round robin over its 12 queues reaches it; the group
    // consumes there too (so the node knows the group's progress).
    wait_for(60, "demo-broker-2 to take and deliver messages", || {
        let sent = python(&dp.endpoint(), &["send", "E2E", "G", "12"], &[]);
        let got = python(&dp.endpoint(), &["receive_ack", "E2E", "G", "12"], &[]);
        assert_eq!(
            ids(&got, "received"),
            ids(&sent, "sent"),
            "{}\n{}",
            dp.progress(),
            dp.logs()
        );
        let n = stored(leaving_http);
        if n > 0 {
            Ok(())
        } else {
            Err(format!("{n} stored on demo-broker-2"))
        }
    });
    let before = stored(leaving_http);
    let sent = python(&dp.endpoint(), &["send", "E2E", "G", "60"], &[]);
    assert!(
        stored(leaving_http) > before,
        "some of the 60 went to demo-broker-2"
    );

    // 7. Scale in: held while the leaving node has messages no consumer has read (no tiered
    // storage here), completed once they are consumed.
    step("scale in to 2: drain first");
    e.patch("demo", r#"{"spec":{"broker":{"replicas":2}}}"#);
    let c = wait_for(30, "demo-broker-2 to be draining", || {
        let c = e.cluster();
        let draining = c["status"]["storeNodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == "demo-broker-2" && n["state"] == "Draining");
        if draining {
            Ok(c)
        } else {
            Err(c["status"].to_string())
        }
    });
    assert!(
        condition(&c, "Progressing").contains("waiting until consumers have read"),
        "{c}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        e.get("statefulset", "demo-broker").unwrap()["spec"]["replicas"],
        3,
        "not shrunk while draining"
    );
    let got = python(&dp.endpoint(), &["receive_ack", "E2E", "G", "60"], &[]);
    assert_eq!(ids(&got, "received"), ids(&sent, "sent"), "{}", dp.logs());
    wait_for(60, "the StatefulSet to shrink after the drain", || {
        let c = e.cluster();
        let replicas = e.get("statefulset", "demo-broker").unwrap()["spec"]["replicas"].clone();
        if replicas == 2 && is_ready(&c) {
            Ok(())
        } else {
            Err(format!("replicas {replicas}; {}", c["status"]))
        }
    });
    let events = e.ok(&["get", "events", "-n", NS, "-o", "json"]);
    assert!(events.contains("StoreNodeRemoved"), "{events}");

    // 8. A configuration change rolls name servers, then store nodes, then proxies.
    step("image change rolls roles in order");
    let before = hashes(&e);
    e.patch(
        "demo",
        r#"{"spec":{"image":"ghcr.io/rocketmq-rs/rmq-broker:0.1.1"}}"#,
    );
    let mut changed_at: [Option<Instant>; 3] = [None; 3];
    wait_for(120, "every role to roll", || {
        let now = hashes(&e);
        for i in 0..3 {
            if changed_at[i].is_none() && now[i] != before[i] {
                changed_at[i] = Some(Instant::now());
            }
        }
        if changed_at.iter().all(Option::is_some) && is_ready(&e.cluster()) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let [ns_t, br_t, px_t] = changed_at.map(Option::unwrap);
    assert!(
        ns_t < br_t && br_t < px_t,
        "order: namesrv {ns_t:?}, broker {br_t:?}, proxy {px_t:?}"
    );

    // 9. The leading replica killed mid-reconcile: the standby takes the Lease over (within
    // its 15 s duration) and the cluster converges; the killed one restarts as a standby.
    step("operator killed mid-reconcile");
    e.patch("demo", r#"{"spec":{"proxy":{"replicas":3}}}"#);
    std::thread::sleep(Duration::from_millis(150));
    operator.kill();
    operator.spawn();
    wait_for(90, "3 ready proxies after the restart", || {
        let c = e.cluster();
        if is_ready(&c) && c["status"]["proxy"]["readyReplicas"] == 3 {
            Ok(())
        } else {
            Err(c["status"].to_string())
        }
    });

    // 10. The API server restarts; the operator reconnects and keeps reconciling.
    step("kube-apiserver restart");
    let out = Command::new("bash")
        .arg(repo().join("e2e/cluster.sh"))
        .arg("restart-apiserver")
        .arg(std::env::var("RMQ_E2E_WORKDIR").expect("e2e/run.sh sets RMQ_E2E_WORKDIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    e.patch("demo", r#"{"spec":{"proxy":{"replicas":2}}}"#);
    wait_for(120, "2 proxies after the API server restart", || {
        let c = e.cluster();
        let d = e.get("deployment", "demo-proxy").unwrap();
        if is_ready(&c) && d["spec"]["replicas"] == 2 {
            Ok(())
        } else {
            Err(format!("{}\n{}", c["status"], operator.logs()))
        }
    });
    // A leader whose Lease renewal failed while the API server was away exits so that the
    // other replica takes over; its Deployment would start it again as a standby.
    for (name, p) in [("first", &mut operator), ("second", &mut standby)] {
        if p.revive() {
            eprintln!(
                "e2e: the {name} operator replica exited during the API server restart; restarted"
            );
        }
    }

    // 11. Deleting the resource garbage-collects everything it owned.
    step("delete the resource");
    e.ok(&["delete", "rmq", "demo", "-n", NS, "--wait=true"]);
    wait_for(90, "owned objects to be garbage-collected", || {
        let left: Vec<_> = [
            ("statefulset", "demo-namesrv"),
            ("statefulset", "demo-broker"),
            ("deployment", "demo-proxy"),
            ("configmap", "demo-config"),
            ("service", "demo-proxy"),
        ]
        .into_iter()
        .filter(|(k, n)| e.get(k, n).is_some())
        .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    drop(dp);

    // 12. Scale-in without moving data: with tiered storage the leaving node's history goes to
    // object storage and a remaining node serves it read-only.
    step("tiered cluster: scale in hands the history over");
    tiered_scale_in(&e, &store_http);

    // 13. Broker groups with replicas: zone spread, a PDB per group, controllers, status from
    // real controllers and store nodes, and a rolling upgrade that restarts the primary last.
    step("broker groups: spread, status, rolling upgrade");
    broker_groups(&e, &store_http);

    // 14. Scale: 20 store nodes (E2E_STORE_NODES, E2E_CLUSTERS: scripts/bench-operator.sh
    // runs 100 and 50); once Ready, the operator's API traffic stays flat.
    step("store nodes at scale: time to Ready, steady API request rate");
    let (lead, lead_proc) = if leader(op_http) == Some(1.0) {
        (op_http, &operator)
    } else {
        (op2_http, &standby)
    };
    store_nodes_at_scale(&e, lead, lead_proc);

    let metrics = metrics_text(op_http).expect("the operator serves its metrics");
    assert!(
        metrics.contains("rocketmq_operator_reconciles_total"),
        "{metrics}"
    );
    // The first replica was killed and restarted: the standby took over the Lease.
    assert_eq!(
        leader(op_http).unwrap_or(0.0) + leader(op2_http).unwrap_or(0.0),
        1.0,
        "exactly one replica leads"
    );
    step("done");
}

/// Sum of the samples of a metric (all label sets) on an operator's `/metrics`.
fn operator_metric(http: SocketAddr, name: &str) -> f64 {
    let text = metrics_text(http).expect("the operator serves its metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a count"))
    })
}

/// One cluster of E2E_STORE_NODES (default 20) store nodes on the KWOK nodes, next to
/// E2E_CLUSTERS - 1 (default none) clusters of one node each: Ready (time printed), then 30 s
/// of steady state in which the operator neither rewrites a resource's status nor reconciles
/// more than its resync period asks, and its Kubernetes API requests stay within what those
/// resyncs need. Prints an `e2e-scale:` JSON line (scripts/bench-operator.sh keeps it).
fn store_nodes_at_scale(e: &Env, lead: SocketAddr, lead_proc: &Proc) {
    let nodes = env_count("E2E_STORE_NODES", 20);
    let small = env_count("E2E_CLUSTERS", 1).saturating_sub(1);
    let rss_before = lead_proc.memory_mib("VmRSS");
    let started = Instant::now();
    let mut manifest = format!(
        "apiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {{name: big}}\nspec:\n  nameServer: {{replicas: 1}}\n  proxy: {{replicas: 1}}\n  broker:\n    replicas: {nodes}\n    storage: {{size: 1Gi}}\n"
    );
    let names: Vec<String> = std::iter::once("big".to_owned())
        .chain((0..small).map(|i| format!("small-{i}")))
        .collect();
    for name in &names[1..] {
        manifest.push_str(&format!(
            "---\napiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {{name: {name}}}\nspec:\n  nameServer: {{replicas: 1}}\n  proxy: {{replicas: 1}}\n  broker:\n    replicas: 1\n    storage: {{size: 1Gi}}\n"
        ));
    }
    e.apply(&manifest).unwrap();
    let c = wait_for(600, "the clusters to be Ready", || {
        let c = e.get("rmq", "big").expect("the cluster exists");
        if !is_ready(&c) {
            return Err(format!("big: {}", c["status"]));
        }
        let list: Value = serde_json::from_str(&e.ok(&["get", "rmq", "-n", NS, "-o", "json"]))
            .map_err(|e| e.to_string())?;
        let waiting: Vec<&str> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| !is_ready(c))
            .filter_map(|c| c["metadata"]["name"].as_str())
            .filter(|n| names.iter().any(|m| m == n))
            .collect();
        if waiting.is_empty() {
            Ok(c)
        } else {
            Err(format!("not Ready: {waiting:?}"))
        }
    });
    assert_eq!(c["status"]["broker"]["readyReplicas"], nodes, "{c}");
    let ready_secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let clusters = e
        .ok(&["get", "rmq", "-A", "-o", "name"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let versions = || -> BTreeMap<String, String> {
        let list: Value =
            serde_json::from_str(&e.ok(&["get", "rmq", "-n", NS, "-o", "json"])).unwrap();
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["metadata"]["name"].as_str().unwrap().to_owned(),
                    c["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect()
    };
    let before = versions();
    let reconciles = operator_metric(lead, "rocketmq_operator_reconciles_total");
    let requests = operator_metric(lead, "rocketmq_operator_api_requests_total");
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let reconciles = operator_metric(lead, "rocketmq_operator_reconciles_total") - reconciles;
    let requests = operator_metric(lead, "rocketmq_operator_api_requests_total") - requests;
    let after = versions();
    let (rss, hwm) = (lead_proc.memory_mib("VmRSS"), lead_proc.memory_mib("VmHWM"));
    let mib = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
    println!(
        "e2e: {nodes} store nodes and {small} more clusters Ready in {ready_secs:.1} s; steady \
         state over {} s with {clusters} clusters: {reconciles} reconciles, {requests} API \
         requests ({:.1} per minute); operator RSS {} MiB (peak {}, {} before)",
        window.as_secs(),
        requests * 60.0 / window.as_secs_f64(),
        mib(rss),
        mib(hwm),
        mib(rss_before),
    );
    println!(
        "e2e-scale: {}",
        serde_json::json!({
            "store_nodes": nodes,
            "clusters": clusters,
            "ready_seconds": ready_secs,
            "steady_window_seconds": window.as_secs(),
            "reconciles": reconciles,
            "api_requests": requests,
            "api_requests_per_minute": requests * 60.0 / window.as_secs_f64(),
            "operator_rss_mib_before": rss_before,
            "operator_rss_mib": rss,
            "operator_peak_rss_mib": hwm,
        })
    );
    let churned: Vec<&String> = before
        .iter()
        .filter(|(name, v)| names.contains(name) && after.get(*name) != Some(v))
        .map(|(name, _)| name)
        .collect();
    assert!(
        churned.is_empty(),
        "rewritten at steady state (status churn): {churned:?}"
    );
    // The resync period is 60 s: in 30 s each cluster reconciles about once, not in a loop.
    assert!(
        reconciles <= 2.0 * clusters as f64,
        "{reconciles} reconciles of {clusters} clusters in 30 s"
    );
    // A settled pass applies nothing: it reads the name servers' and store nodes'
    // StatefulSets and the proxies' Deployment afresh (three requests); the Lease is renewed
    // every few seconds.
    assert!(
        requests <= 4.0 * reconciles + 30.0,
        "{requests} API requests for {reconciles} reconciles in 30 s"
    );
    for name in &names {
        e.ok(&["delete", "rmq", name, "-n", NS, "--wait=false"]);
    }
}

/// s3s-fs (scripts/setup-s3.sh) on loopback; killed when dropped.
/// (server, its folder, kept until the server stops, its address)
struct S3(Child, #[allow(dead_code)] tempfile::TempDir, SocketAddr);

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_s3() -> S3 {
    let out = Command::new("bash")
        .arg(repo().join("scripts/setup-s3.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("tier")).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--access-key", "AK", "--secret-key", "SK"])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(20, "s3s-fs to listen", || {
        TcpStream::connect(addr)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    S3(child, root, addr)
}

fn tiered_scale_in(e: &Env, store_http: &BTreeMap<String, SocketAddr>) {
    let s3 = start_s3();
    e.ok(&[
        "create",
        "secret",
        "generic",
        "s3-creds",
        "-n",
        NS,
        "--from-literal=AWS_ACCESS_KEY_ID=AK",
        "--from-literal=AWS_SECRET_ACCESS_KEY=SK",
    ]);
    e.apply(&format!(
        "apiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {{name: tiered}}\nspec:\n  nameServer: {{replicas: 1}}\n  proxy: {{replicas: 1}}\n  broker: {{replicas: 2, segmentSize: 4194304, flushPolicy: SYNC_FLUSH, storage: {{size: 10Gi}}}}\n  tieredStorage:\n    enabled: true\n    backend: s3\n    bucket: tier\n    endpoint: http://{}\n    credentialsSecretRef: {{name: s3-creds}}\n    hotRetentionBytes: 0\n",
        s3.2
    ))
    .unwrap();
    let get = || e.get("rmq", "tiered").expect("the tiered cluster exists");
    wait_for(90, "the tiered cluster to become Ready", || {
        let c = get();
        if is_ready(&c) {
            Ok(())
        } else {
            Err(c["status"].to_string())
        }
    });
    let sts = e.get("statefulset", "tiered-broker").unwrap();
    let env = &sts["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"];
    assert_eq!(
        env, "s3-creds",
        "the credentials Secret reaches the store nodes"
    );
    let creds = [
        ("AWS_ACCESS_KEY_ID", "AK".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "SK".to_owned()),
    ];
    let mut dp = DataPlane::start(e, "tiered", store_http, 2, &creds);
    let sent = python(&dp.endpoint(), &["send", "E2E", "P", "40"], &[]);
    let leaving = dp.stores["tiered-broker-1"].2;
    assert!(stored(leaving) > 0, "{}", dp.progress());
    // A settled tiered cluster reports each node's tiering lag, read from the node: the
    // messages just sent are in the active segment, which is not tiered yet.
    wait_for(50, "the status to show the tiering lag", || {
        let c = get();
        let lag = c["status"]["storeNodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == "tiered-broker-1"))
            .map(|n| n["untieredBytes"].clone())
            .unwrap_or_default();
        match lag.as_i64() {
            Some(b) if b > 0 => Ok(()),
            _ => Err(c["status"]["storeNodes"].to_string()),
        }
    });

    e.ok(&["scale", "rmq/tiered", "-n", NS, "--replicas=1"]);
    let c = wait_for(90, "the scale-in to finish", || {
        let c = get();
        let replicas = e.get("statefulset", "tiered-broker").unwrap()["spec"]["replicas"].clone();
        if replicas == 1 {
            Ok(c)
        } else {
            Err(format!("replicas {replicas}; {}", c["status"]))
        }
    });
    let retired = &c["status"]["retiredStoreNodes"][0];
    assert_eq!(retired["name"], "tiered-broker-1", "{c}");
    assert_eq!(retired["adoptedBy"], "tiered-broker-0", "{c}");
    let node: Value = ureq::get(&format!("http://{leaving}/admin/node"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(node["drained"], true, "{node}");
    assert_eq!(node["untieredBytes"], 0, "{node}");

    // The leaving pod is gone with its disk; the adopting pod was replaced and starts with the
    // new configuration (which names the adoption).
    let (mut p, _, _) = dp.stores.remove("tiered-broker-1").unwrap();
    p.kill();
    std::fs::remove_dir_all(dp.dir.join("tiered-broker-1")).unwrap();
    let (mut p, listen, http) = dp.stores.remove("tiered-broker-0").unwrap();
    p.kill();
    dp.refresh_store_config(e, "tiered");
    let config = std::fs::read_to_string(dp.dir.join("store.yaml")).unwrap();
    assert!(config.contains("brokerName: tiered-broker-1"), "{config}");
    dp.run_store("tiered-broker-0", listen, http);
    wait_for(30, "the adopted node to be routed", || {
        let n = route_brokers(&dp.namesrv_addr.to_string(), "E2E");
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} store nodes route E2E"))
        }
    });
    std::thread::sleep(Duration::from_secs(4));
    // Every message, including those the removed node held, reads back.
    let got = python(&dp.endpoint(), &["receive_ack", "E2E", "Q", "40"], &[]);
    assert_eq!(ids(&got, "received"), ids(&sent, "sent"), "{}", dp.logs());
    wait_for(60, "the tiered cluster to settle", || {
        let c = get();
        if is_ready(&c) {
            Ok(())
        } else {
            Err(c["status"].to_string())
        }
    });
    // An impossible request is held, not executed: the last store node serves the removed
    // node's history, so it cannot go.
    e.ok(&["scale", "rmq/tiered", "-n", NS, "--replicas=0"]);
    wait_for(30, "the scale to 0 to be held", || {
        let c = get();
        let degraded = condition(&c, "Degraded");
        if degraded.starts_with("True") && degraded.contains("keep at least one store node") {
            Ok(())
        } else {
            Err(c["status"].to_string())
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        e.get("statefulset", "tiered-broker").unwrap()["spec"]["replicas"],
        1
    );
    let events = e.ok(&["get", "events", "-n", NS, "-o", "json"]);
    assert!(events.contains("ScaleInHeld"), "{events}");
    e.ok(&["delete", "rmq", "tiered", "-n", NS, "--wait=true"]);
}

/// Pods of a label selector in the test namespace: name -> (uid, node, ready).
fn pods(e: &Env, selector: &str) -> BTreeMap<String, (String, String, bool)> {
    let list: Value =
        serde_json::from_str(&e.ok(&["get", "pods", "-n", NS, "-l", selector, "-o", "json"]))
            .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (
                p["metadata"]["name"].as_str().unwrap().to_owned(),
                (
                    p["metadata"]["uid"].as_str().unwrap().to_owned(),
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
                    ready,
                ),
            )
        })
        .collect()
}

/// A `broker.ha` cluster: one group of a primary and two replicas, three controllers. KWOK
/// runs the pods; real controllers and store nodes run here from the rendered ConfigMap, each
/// standing for its pod (the operator reaches them through `RMQ_OPERATOR_STORE_ENDPOINTS`),
/// and the test plays the kubelet: when the operator replaces a pod, the process is stopped
/// with SIGTERM and started again.
fn broker_groups(e: &Env, endpoints: &BTreeMap<String, SocketAddr>) {
    let head =
        "apiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {name: bad}\nspec:\n";
    let bad = e
        .apply(&format!(
            "{head}  broker: {{ha: {{replicasPerGroup: 1, minInSyncReplicas: 3}}}}\n"
        ))
        .unwrap_err();
    assert!(bad.contains("cannot exceed replicasPerGroup + 1"), "{bad}");
    let bad = e
        .apply(&format!(
            "{head}  broker: {{ha: {{}}}}\n  tieredStorage: {{enabled: true, backend: s3}}\n"
        ))
        .unwrap_err();
    assert!(bad.contains("tieredStorage.bucket is required"), "{bad}");

    e.apply(
        "apiVersion: rocketmq.rs/v1alpha1\nkind: RocketMQCluster\nmetadata: {name: ha}\nspec:\n  nameServer: {replicas: 1}\n  proxy: {replicas: 1}\n  broker:\n    replicas: 1\n    storage: {size: 1Gi}\n    ha: {replicasPerGroup: 2, controllers: {replicas: 3}}\n",
    )
    .unwrap();
    let get_ha = || e.get("rmq", "ha").expect("the cluster exists");
    wait_for(120, "the replicated cluster to be Ready", || {
        let c = get_ha();
        if is_ready(&c) {
            Ok(())
        } else {
            Err(c["status"].to_string())
        }
    });
    // Each member of the group in its own zone; one PDB for the group.
    let group_sel = "app.kubernetes.io/instance=ha,rocketmq.rs/group=0";
    let members = pods(e, group_sel);
    assert_eq!(members.len(), 3, "{members:?}");
    let zones: std::collections::BTreeSet<String> = members
        .values()
        .map(|(_, node, _)| {
            e.ok(&[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.metadata.labels.topology\\.kubernetes\\.io/zone}",
            ])
        })
        .collect();
    assert_eq!(
        zones.len(),
        3,
        "members spread over 3 zones: {members:?} {zones:?}"
    );
    let pdb = e
        .get("poddisruptionbudget", "ha-broker-0")
        .expect("a PDB per group");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["rocketmq.rs/group"],
        "0"
    );
    assert!(e.get("poddisruptionbudget", "ha-broker").is_none());
    assert_eq!(
        e.get("statefulset", "ha-controller").unwrap()["status"]["readyReplicas"],
        3
    );

    // The data plane: controllers, a name server and the group's three members.
    let cm = e.get("configmap", "ha-config").expect("the ConfigMap");
    let dir = e.work.path().join("dataplane-ha");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["namesrv.yaml", "store.yaml", "controller.yaml"] {
        std::fs::write(dir.join(file), cm["data"][file].as_str().unwrap()).unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_rmq-operator")).with_file_name("rmq-broker");
    let s = |x: &str| x.to_owned();
    let ctl: Vec<SocketAddr> = (0..3)
        .map(|i| endpoints[&format!("ha-controller-{i}")])
        .collect();
    let peers = ctl
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{i}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let _controllers: Vec<Proc> = ctl
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Proc::start(
                &bin,
                &[
                    s("controller"),
                    s("--config"),
                    dir.join("controller.yaml").display().to_string(),
                    s("--id"),
                    i.to_string(),
                    s("--peer"),
                    peers.clone(),
                    s("--listen"),
                    a.to_string(),
                    s("--data-dir"),
                    dir.join(format!("controller-{i}")).display().to_string(),
                ],
                &[],
                dir.join(format!("controller-{i}.log")),
            )
        })
        .collect();
    let namesrv_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _namesrv = Proc::start(
        &bin,
        &[
            s("namesrv"),
            s("--config"),
            dir.join("namesrv.yaml").display().to_string(),
            s("--listen"),
            namesrv_addr.to_string(),
            s("--http-listen"),
            format!("127.0.0.1:{}", free_port()),
        ],
        &[],
        dir.join("namesrv.log"),
    );
    let controllers = ctl
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut stores: Vec<Proc> = (0..3)
        .map(|i| {
            let ha = format!("127.0.0.1:{}", free_port());
            Proc::start(
                &bin,
                &[
                    s("store"),
                    s("--config"),
                    dir.join("store.yaml").display().to_string(),
                    s("--broker-name"),
                    s("ha-broker-0"),
                    s("--pod-index"),
                    i.to_string(),
                    s("--listen"),
                    format!("127.0.0.1:{}", free_port()),
                    s("--http-listen"),
                    endpoints[&format!("ha-broker-0-{i}")].to_string(),
                    s("--data-dir"),
                    dir.join(format!("ha-broker-0-{i}")).display().to_string(),
                    s("--namesrv"),
                    namesrv_addr.to_string(),
                    s("--ha-listen"),
                    ha.clone(),
                    s("--ha-advertise"),
                    ha,
                    s("--controller"),
                    controllers.clone(),
                ],
                &[],
                dir.join(format!("ha-broker-0-{i}.log")),
            )
        })
        .collect();
    let logs = |stores: &[Proc]| {
        stores
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let l = p.logs();
                let tail: Vec<_> = l.lines().rev().take(20).collect();
                format!(
                    "---- ha-broker-0-{i}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let group = |c: &Value| c["status"]["groups"][0].clone();
    let before = wait_for(
        90,
        "the status to show the group's primary and in-sync set",
        || {
            let c = get_ha();
            let g = group(&c);
            if g["primary"].is_string() && g["inSync"].as_array().is_some_and(|s| s.len() == 3) {
                Ok(g)
            } else {
                Err(format!("{}\n{}", c["status"], logs(&stores)))
            }
        },
    );
    assert_eq!(before["name"], "ha-broker-0");
    assert!(before["epoch"].as_i64().unwrap() >= 1, "{before}");
    let primary = before["primary"].as_str().unwrap().to_owned();

    // A rolling upgrade: replicas first, each back in sync before the next, the primary last;
    // the stopping primary hands its role over.
    e.patch(
        "ha",
        r#"{"spec":{"image":"ghcr.io/rocketmq-rs/rmq-broker:0.1.1"}}"#,
    );
    let mut replaced: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let now = pods(e, group_sel);
        for (name, (uid, _, _)) in &now {
            if replaced.contains(name) || members.get(name).is_some_and(|(u, _, _)| u == uid) {
                continue;
            }
            let i: usize = name.rsplit('-').next().unwrap().parse().unwrap();
            stores[i].terminate();
            stores[i].spawn();
            replaced.push(name.clone());
        }
        let c = get_ha();
        if replaced.len() == 3
            && is_ready(&c)
            && group(&c)["inSync"].as_array().is_some_and(|s| s.len() == 3)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rolling upgrade did not finish: replaced {replaced:?}; {}\n{}",
            c["status"],
            logs(&stores)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        replaced.last(),
        Some(&primary),
        "replicas restart before the primary: {replaced:?}"
    );
    // The status follows the controllers' view at its next refresh.
    let after = wait_for(60, "the moved role in the status", || {
        let g = group(&get_ha());
        if g["primary"] != before["primary"] {
            Ok(g)
        } else {
            Err(g.to_string())
        }
    });
    assert!(
        after["epoch"].as_i64() > before["epoch"].as_i64(),
        "{after}"
    );
    let i: usize = primary.rsplit('-').next().unwrap().parse().unwrap();
    assert!(
        stores[i].logs().contains("handed the primary role over"),
        "{}",
        logs(&stores)
    );
    let events = e.ok(&["get", "events", "-n", NS, "-o", "json"]);
    assert!(events.contains("RestartingMember"), "{events}");
    e.ok(&["delete", "rmq", "ha", "-n", NS, "--wait=true"]);
}
