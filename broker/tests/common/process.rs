//! Runs the real `rmq-broker` binary on loopback for black-box tests.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct BrokerProcess {
    child: Option<Child>,
    /// `standalone`, `namesrv`, `store`, `proxy` or `controller`.
    role: &'static str,
    pub addr: SocketAddr,
    /// The HTTP port (metrics, health, admin API).
    pub http: SocketAddr,
    pub dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

pub use super::ports::free_port;

impl BrokerProcess {
    /// Starts `rmq-broker standalone` with data in `dir` and the extra arguments, and waits
    /// until its gRPC and HTTP ports accept connections.
    pub fn start(dir: &Path, extra: &[&str]) -> BrokerProcess {
        Self::start_role("standalone", dir, extra)
    }

    /// Starts `rmq-broker <role>` (`standalone`, `namesrv` or `store`); `addr` is its main
    /// port (gRPC or remoting). `dir` holds its data (and names its log, `dir.log`).
    pub fn start_role(role: &'static str, dir: &Path, extra: &[&str]) -> BrokerProcess {
        Self::start_role_env(role, dir, extra, &[])
    }

    /// As [`BrokerProcess::start_role`], with extra environment variables.
    pub fn start_role_env(
        role: &'static str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> BrokerProcess {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::start_at(role, dir, addr, extra, env)
    }

    /// As [`BrokerProcess::start_role_env`], on a main port chosen by the caller (controllers
    /// must know each other's ports before any starts).
    pub fn start_at(
        role: &'static str,
        dir: &Path,
        addr: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> BrokerProcess {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut b = BrokerProcess {
            child: None,
            role,
            addr,
            http,
            dir: dir.to_owned(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: dir.with_extension("log"),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmq-broker"));
        cmd.arg(self.role);
        match self.role {
            "standalone" => cmd.arg("--data-dir").arg(&self.dir).arg("--grpc-listen"),
            "store" => cmd.arg("--data-dir").arg(&self.dir).arg("--listen"),
            "proxy" => cmd.arg("--grpc-listen"),
            "controller" => cmd.arg("--data-dir").arg(&self.dir).arg("--listen"),
            _ => cmd.arg("--listen"),
        };
        cmd.arg(self.addr.to_string());
        if self.role != "controller" {
            cmd.arg("--http-listen").arg(self.http.to_string());
        }
        let child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("RUST_BACKTRACE", "0")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .spawn()
            .expect("start rmq-broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Both ports: the HTTP one may open a moment after the main one.
        let listening = |a: SocketAddr| TcpStream::connect(a).is_ok();
        while !listening(self.addr) || (self.role != "controller" && !listening(self.http)) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("rmq-broker exited with {status}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "rmq-broker did not listen in 30 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A handle on a process started elsewhere (for helpers that only need its endpoint).
    pub fn at_endpoint(addr: &str) -> BrokerProcess {
        BrokerProcess {
            child: None,
            role: "proxy",
            addr: addr.parse().expect("host:port"),
            http: addr.parse().expect("host:port"),
            dir: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
            log: PathBuf::from("/nonexistent"),
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then start again on the same folder and port.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILL; `restart` starts it again on the same folder and port.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM (a graceful stop, as Kubernetes does), and waits up to 30 s for the exit.
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not stop within 30 s of SIGTERM", self.role);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn();
    }
}

/// Starts `n` controllers (ids 1 to `n`) that know each other, with data under `dir`; returns
/// them and their addresses.
pub fn start_controllers(
    dir: &Path,
    n: usize,
    node_timeout_ms: u64,
) -> (Vec<BrokerProcess>, Vec<SocketAddr>) {
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let timeout = node_timeout_ms.to_string();
    let controllers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let id = (i + 1).to_string();
            BrokerProcess::start_at(
                "controller",
                &dir.join(format!("controller-{id}")),
                *a,
                &["--id", &id, "--peer", &peers, "--node-timeout-ms", &timeout],
                &[],
            )
        })
        .collect();
    (controllers, addrs)
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
