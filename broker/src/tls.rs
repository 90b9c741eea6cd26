//! TLS for the listeners (gRPC and remoting) and the links between nodes, with the modes
//! RocketMQ users know:
//!
//! - `disabled`: plaintext only;
//! - `permissive`: TLS and plaintext on the same port (the first byte of a connection
//!   decides: 0x16 starts a TLS handshake);
//! - `enforcing`: TLS only; a plaintext connection is closed.
//!
//! Optionally mutual TLS (`clientAuth: required`, or `optional`): clients present a
//! certificate signed by `ca`. Certificates, keys and the CA are PEM files, re-read when they
//! change (a Kubernetes Secret update) without a restart: new connections get the new
//! certificate, established ones keep theirs. A node links to another with TLS when it has a
//! `ca` to verify the peer with; the peer's certificate must name the host it was dialled by.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a new connection may take to show its first byte and finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// TLS handshakes one listener runs at once. In a reconnect storm of thousands of TLS clients
/// the others wait their turn (within HANDSHAKE_TIMEOUT), so the handshakes' CPU and memory
/// stay bounded and established connections keep being served.
const MAX_HANDSHAKES: usize = 64;
/// How often certificate files are checked for changes.
const RELOAD_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Disabled,
    #[default]
    Permissive,
    Enforcing,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "disabled" => Ok(TlsMode::Disabled),
            "permissive" => Ok(TlsMode::Permissive),
            "enforcing" => Ok(TlsMode::Enforcing),
            _ => Err(format!(
                "unknown TLS mode {s:?}: expected disabled, permissive or enforcing"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "required" => Ok(ClientAuth::Required),
            _ => Err(format!(
                "unknown client authentication {s:?}: expected none, optional or required"
            )),
        }
    }
}

/// A node's TLS settings (the `tls` section of its configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// PEM certificate chain; with `key`. A self-signed certificate when both are absent.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA certificates: verify client certificates (mutual TLS) and the peers this node
    /// links to. Without it, links to other nodes are plaintext.
    pub ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

impl TlsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            anyhow::bail!("tls: cert and key go together (both or neither)");
        }
        if self.client_auth != ClientAuth::None && self.ca.is_none() {
            anyhow::bail!("tls: clientAuth needs a ca to verify client certificates with");
        }
        Ok(())
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

fn roots(ca: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| anyhow::anyhow!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key to serve: from the files, or self-signed for `localhost`
/// and the listen address.
fn identity(
    cfg: &TlsConfig,
    listen: SocketAddr,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => Ok((read_certs(cert)?, read_key(key)?)),
        _ => {
            let mut names = vec!["localhost".to_owned()];
            if !listen.ip().is_unspecified() {
                names.push(listen.ip().to_string());
            }
            let generated = rcgen::generate_simple_self_signed(names)?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                generated.signing_key.serialize_der(),
            ));
            Ok((vec![generated.cert.der().clone()], key))
        }
    }
}

fn server_config(
    cfg: &TlsConfig,
    listen: SocketAddr,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (certs, key) = identity(cfg, listen)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match (cfg.client_auth, &cfg.ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            );
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn modified(path: &Option<PathBuf>) -> Option<SystemTime> {
    path.as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
}

/// The server side of TLS for one listener, reloaded when its files change.
pub struct ServerTls {
    cfg: TlsConfig,
    listen: SocketAddr,
    alpn: Vec<&'static [u8]>,
    current: RwLock<(Arc<rustls::ServerConfig>, [Option<SystemTime>; 3])>,
    handshakes: tokio::sync::Semaphore,
    /// Handshakes run or running, and the most run at once (tests read them).
    handshake_stats: parking_lot::Mutex<(usize, usize, usize)>,
}

/// Counts a handshake as running until dropped.
struct Running<'a>(&'a ServerTls);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.handshake_stats.lock().1 -= 1;
    }
}

impl ServerTls {
    fn handshake_started(&self) -> Running<'_> {
        let mut st = self.handshake_stats.lock();
        st.0 += 1;
        st.1 += 1;
        st.2 = st.2.max(st.1);
        Running(self)
    }

    /// (handshakes started, the most that ran at once).
    pub fn handshake_counts(&self) -> (usize, usize) {
        let st = self.handshake_stats.lock();
        (st.0, st.2)
    }

    /// `None` when TLS is disabled.
    pub fn new(
        cfg: &TlsConfig,
        listen: SocketAddr,
        alpn: &[&'static [u8]],
    ) -> anyhow::Result<Option<Arc<ServerTls>>> {
        cfg.validate()?;
        if cfg.mode == TlsMode::Disabled {
            return Ok(None);
        }
        let config = server_config(cfg, listen, alpn)?;
        let stamps = Self::stamps(cfg);
        let tls = Arc::new(ServerTls {
            cfg: cfg.clone(),
            listen,
            alpn: alpn.to_vec(),
            current: RwLock::new((config, stamps)),
            handshakes: tokio::sync::Semaphore::new(MAX_HANDSHAKES),
            handshake_stats: parking_lot::Mutex::new((0, 0, 0)),
        });
        if cfg.cert.is_some() || cfg.ca.is_some() {
            let weak = Arc::downgrade(&tls);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RELOAD_PERIOD);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(tls) = weak.upgrade() else { return };
                    tls.reload_if_changed();
                }
            });
        }
        Ok(Some(tls))
    }

    fn stamps(cfg: &TlsConfig) -> [Option<SystemTime>; 3] {
        [modified(&cfg.cert), modified(&cfg.key), modified(&cfg.ca)]
    }

    pub fn mode(&self) -> TlsMode {
        self.cfg.mode
    }

    /// Re-reads the files if any changed; a bad new set is logged and the old one kept.
    pub fn reload_if_changed(&self) -> bool {
        let stamps = Self::stamps(&self.cfg);
        if self.current.read().1 == stamps {
            return false;
        }
        match server_config(&self.cfg, self.listen, &self.alpn) {
            Ok(config) => {
                *self.current.write() = (config, stamps);
                tracing::info!(listen = %self.listen, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Half-written files (a Secret being updated) fail here; the next check
                // retries.
                tracing::warn!(listen = %self.listen, error = %e, "TLS files changed but could not be loaded; keeping the current certificate");
                false
            }
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.read().0))
    }
}

/// Sorts an accepted connection by the listener's mode: TLS (handshake done), plaintext, or
/// refused (plaintext against `enforcing`).
pub async fn accept(stream: TcpStream, tls: Option<&ServerTls>) -> io::Result<Stream> {
    stream.set_nodelay(true)?;
    let Some(tls) = tls else {
        return Ok(Stream::Plain(stream));
    };
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no data from the client"))??;
    if n == 1 && first[0] == TLS_HANDSHAKE_RECORD {
        let acceptor = tls.acceptor();
        let handshake = async {
            let _permit = tls.handshakes.acquire().await.expect("never closed");
            let _running = tls.handshake_started();
            acceptor.accept(stream).await
        };
        let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(Stream::Server(Box::new(s)))
    } else if tls.mode() == TlsMode::Enforcing {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "plaintext connection refused: this port requires TLS",
        ))
    } else {
        Ok(Stream::Plain(stream))
    }
}

/// Accepts connections and sorts each by `tls`'s mode off the accept loop (a slow client
/// cannot hold up others); what survives comes out of the channel.
pub fn accept_all(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> tokio::sync::mpsc::Receiver<(Stream, SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                match accept(stream, tls.as_deref()).await {
                    Ok(s) => {
                        let _ = tx.send((s, peer)).await;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection dropped before its first request")
                    }
                }
            });
        }
    });
    rx
}

/// An HTTP port (metrics, health, admin API, controllers) for axum: with TLS on, it serves
/// TLS and plaintext side by side (never TLS only: the kubelet's probes, Prometheus and the
/// operator speak plaintext), sorting connections off the accept loop.
pub struct HttpListener {
    rx: tokio::sync::mpsc::Receiver<(Stream, SocketAddr)>,
    local: SocketAddr,
}

impl HttpListener {
    pub fn new(listener: tokio::net::TcpListener, tls: &TlsConfig) -> anyhow::Result<HttpListener> {
        let local = listener.local_addr()?;
        let cfg = TlsConfig {
            mode: match tls.mode {
                TlsMode::Disabled => TlsMode::Disabled,
                _ => TlsMode::Permissive,
            },
            // Optional client certificates at most: probes have none.
            client_auth: match tls.client_auth {
                ClientAuth::None => ClientAuth::None,
                _ => ClientAuth::Optional,
            },
            ..tls.clone()
        };
        let tls = ServerTls::new(&cfg, local, &[b"http/1.1"])?;
        let rx = accept_all(listener, tls);
        Ok(HttpListener { rx, local })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The client side of links between nodes.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// `None` when links stay plaintext (TLS disabled, or no CA to verify peers with). The
    /// node presents its own certificate when it has one (for peers that require mutual TLS).
    pub fn new(cfg: &TlsConfig, alpn: &[&[u8]]) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = (cfg.mode != TlsMode::Disabled)
            .then_some(cfg.ca.as_ref())
            .flatten()
        else {
            return Ok(None);
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca)?);
        let mut config = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Some(ClientTls {
            config: Arc::new(config),
        }))
    }

    /// A client configuration trusting only `ca` (tests, tools).
    pub fn with_ca(ca: &Path) -> anyhow::Result<ClientTls> {
        let cfg = TlsConfig {
            ca: Some(ca.to_owned()),
            ..TlsConfig::default()
        };
        Ok(ClientTls::new(&cfg, &[])?.expect("a CA is given"))
    }

    /// TLS over `stream`, verifying that the peer's certificate names `host`.
    pub async fn connect(&self, host: &str, stream: TcpStream) -> io::Result<Stream> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(Stream::Client(Box::new(s)))
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A connection of any kind.
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref().0,
            Stream::Client(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Server($s) => {
                let $s = $s.as_mut();
                $e
            }
            Stream::Client($s) => {
                let $s = $s.as_mut();
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }
}

/// A new CA and a certificate it signed for `names` (host names or IP addresses), written as
/// `tls.crt`, `tls.key` and `ca.crt` in `dir` (the keys cert-manager writes): for tests and
/// for trying TLS out.
pub fn generate_pki(dir: &Path, names: &[&str]) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rmq-broker test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    let (c, k, a) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    std::fs::write(&a, ca.pem())?;
    Ok((c, k, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        generate_pki(dir, &["localhost", "127.0.0.1"]).unwrap()
    }

    /// An enforcing listener's configuration; mutual TLS when given the CA.
    fn enforcing(cert: &Path, key: &Path, ca: Option<&Path>) -> TlsConfig {
        TlsConfig {
            mode: TlsMode::Enforcing,
            cert: Some(cert.to_owned()),
            key: Some(key.to_owned()),
            ca: ca.map(Path::to_owned),
            client_auth: if ca.is_some() {
                ClientAuth::Required
            } else {
                ClientAuth::None
            },
        }
    }

    async fn serve_once(tls: Arc<ServerTls>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let tls = Arc::clone(&tls);
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    if let Ok(mut s) = accept(s, Some(&tls)).await {
                        let _ = s.write_all(if s.is_tls() { b"tls" } else { b"txt" }).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    async fn read_all(mut s: impl AsyncRead + Unpin) -> io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handshake_storm_is_served_a_bounded_number_at_a_time() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = pki(dir.path());
        let cfg = enforcing(&cert, &key, None);
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tls = ServerTls::new(&cfg, listen, &[]).unwrap().unwrap();
        let addr = serve_once(Arc::clone(&tls)).await;
        let client = Arc::new(ClientTls::with_ca(&ca).unwrap());
        const CLIENTS: usize = 300;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let client = Arc::clone(&client);
                tokio::spawn(async move {
                    let s = client
                        .connect("127.0.0.1", TcpStream::connect(addr).await?)
                        .await?;
                    read_all(s).await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), b"tls", "every client is served");
        }
        let (started, most) = tls.handshake_counts();
        assert_eq!(started, CLIENTS);
        assert!(
            (1..=MAX_HANDSHAKES).contains(&most),
            "{most} handshakes at once, limit {MAX_HANDSHAKES}"
        );
    }

    #[tokio::test]
    async fn modes_verification_and_reload() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = pki(dir.path());
        let mut cfg = TlsConfig {
            mode: TlsMode::Permissive,
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            ca: None,
            client_auth: ClientAuth::None,
        };
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let permissive = serve_once(ServerTls::new(&cfg, listen, &[]).unwrap().unwrap()).await;
        cfg.mode = TlsMode::Enforcing;
        let enforcing_tls = ServerTls::new(&cfg, listen, &[]).unwrap().unwrap();
        let enforcing = serve_once(Arc::clone(&enforcing_tls)).await;
        let client = ClientTls::with_ca(&ca).unwrap();

        let plain = TcpStream::connect(permissive).await.unwrap();
        use tokio::io::AsyncWriteExt;
        let mut plain = plain;
        plain.write_all(b"x").await.unwrap();
        assert_eq!(read_all(plain).await.unwrap(), b"txt");
        let s = client
            .connect("127.0.0.1", TcpStream::connect(permissive).await.unwrap())
            .await
            .unwrap();
        assert_eq!(read_all(s).await.unwrap(), b"tls");

        let mut plain = TcpStream::connect(enforcing).await.unwrap();
        plain.write_all(b"x").await.unwrap();
        assert_eq!(
            read_all(plain).await.unwrap_or_default(),
            b"",
            "enforcing closes plaintext"
        );
        let s = client
            .connect("localhost", TcpStream::connect(enforcing).await.unwrap())
            .await
            .unwrap();
        assert_eq!(read_all(s).await.unwrap(), b"tls");

        // A name the certificate does not carry, and a CA that did not sign it, fail.
        assert!(
            client
                .connect("example.com", TcpStream::connect(enforcing).await.unwrap())
                .await
                .is_err()
        );
        let other = tempfile::tempdir().unwrap();
        let (_, _, other_ca) = pki(other.path());
        let stranger = ClientTls::with_ca(&other_ca).unwrap();
        let err = stranger
            .connect("127.0.0.1", TcpStream::connect(enforcing).await.unwrap())
            .await
            .err()
            .expect("a certificate from another CA is refused");
        assert!(err.to_string().contains("certificate"), "{err}");

        // New files (another CA): reloaded; the old CA's clients now fail, the new one's pass.
        std::thread::sleep(Duration::from_millis(20));
        for (from, to) in [
            (other.path().join("tls.crt"), &cert),
            (other.path().join("tls.key"), &key),
        ] {
            std::fs::copy(from, to).unwrap();
        }
        assert!(enforcing_tls.reload_if_changed());
        assert!(!enforcing_tls.reload_if_changed(), "no change, no reload");
        assert!(
            stranger
                .connect("127.0.0.1", TcpStream::connect(enforcing).await.unwrap())
                .await
                .is_ok()
        );
        // A broken file is not taken; the current certificate stays.
        std::fs::write(&cert, "garbage").unwrap();
        assert!(!enforcing_tls.reload_if_changed());
        assert!(
            stranger
                .connect("127.0.0.1", TcpStream::connect(enforcing).await.unwrap())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = pki(dir.path());
        let cfg = enforcing(&cert, &key, Some(&ca));
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let addr = serve_once(ServerTls::new(&cfg, listen, &[]).unwrap().unwrap()).await;
        // Without a certificate: the handshake (or the first read) fails.
        let anonymous = ClientTls::with_ca(&ca).unwrap();
        let r = match anonymous
            .connect("127.0.0.1", TcpStream::connect(addr).await.unwrap())
            .await
        {
            Ok(s) => read_all(s).await,
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "{r:?}");
        // With the node's own certificate (signed by the CA): accepted.
        let node = ClientTls::new(&cfg, &[]).unwrap().unwrap();
        let s = node
            .connect("127.0.0.1", TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
        assert_eq!(read_all(s).await.unwrap(), b"tls");
    }

    #[tokio::test]
    async fn http_ports_serve_tls_and_plaintext_even_when_enforcing() {
        use tokio::io::AsyncWriteExt;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = pki(dir.path());
        let cfg = enforcing(&cert, &key, Some(&ca));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let listener = HttpListener::new(l, &cfg).unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(get).await.unwrap();
        let text = String::from_utf8(read_all(plain).await.unwrap()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{text}"
        );
        // TLS without a client certificate (probes have none): served too.
        let mut s = ClientTls::with_ca(&ca)
            .unwrap()
            .connect("127.0.0.1", TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
        s.write_all(get).await.unwrap();
        let text = String::from_utf8(read_all(s).await.unwrap()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{text}"
        );
    }
}
