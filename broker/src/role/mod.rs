//! The roles the `rmq-broker` binary can run.

pub mod drain;
pub mod namesrv;
pub mod proxy;
pub mod standalone;
pub mod store;

/// Binds a client-facing TCP port with a listen backlog of 4,096 (the kernel caps it at
/// `net.core.somaxconn`): the standard library's 128 drops SYNs when thousands of clients
/// reconnect at once, and each dropped SYN costs its client a retry 1 s, 3 s, ... later.
pub async fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Reads a role's YAML or JSON configuration file and validates its store section. Errors name
/// the file and the bad field.
pub fn read_config<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    store: impl Fn(&T) -> &crate::store::StoreConfig,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let cfg: T = read_file(path)?;
    store(&cfg)
        .validate()
        .with_context(|| format!("{}: store", path.display()))?;
    Ok(cfg)
}

/// Reads a YAML or JSON configuration file. Errors name the file and the bad field.
pub fn read_file<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Opens a node's users and policies (in `config_dir`, or in memory for a proxy), creates
/// the `initial` ones, and starts following the configuration file's `auth` section.
pub fn auth_guard<T: serde::de::DeserializeOwned + Send + 'static>(
    config: &crate::auth::guard::AuthConfig,
    config_dir: Option<&std::path::Path>,
    config_file: Option<std::path::PathBuf>,
    section: fn(&T) -> crate::auth::guard::AuthConfig,
) -> anyhow::Result<std::sync::Arc<crate::auth::guard::Guard>> {
    use crate::auth::store::AuthStore;
    use anyhow::Context;
    let users = match config_dir {
        Some(dir) => AuthStore::open(dir).context("opening users and policies")?,
        None => AuthStore::in_memory(),
    };
    let guard = crate::auth::guard::Guard::new(config.clone(), std::sync::Arc::new(users));
    if let Some(initial) = &config.initial {
        crate::auth::guard::apply_initial(&guard.users, initial)?;
    }
    if let Some(path) = config_file {
        tokio::spawn(follow_auth_section(
            path,
            section,
            std::sync::Arc::downgrade(&guard),
        ));
    }
    Ok(guard)
}

/// Applies edits of the configuration file's `auth` section (switching authentication,
/// authorization and migration mode without a restart). Flags given at start hold until the
/// section itself changes; an administrator given by flags stays unless the file names one.
async fn follow_auth_section<T: serde::de::DeserializeOwned>(
    path: std::path::PathBuf,
    section: fn(&T) -> crate::auth::guard::AuthConfig,
    guard: std::sync::Weak<crate::auth::guard::Guard>,
) {
    let read = || read_file::<T>(&path).map(|c| section(&c));
    let mut last = read().ok();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let Some(guard) = guard.upgrade() else { return };
        match read() {
            Ok(now) if Some(&now) != last.as_ref() => {
                let mut next = now.clone();
                if next.admin.is_none() {
                    next.admin = guard.settings().admin;
                }
                guard.set_settings(next);
                last = Some(now);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the configuration failed; keeping the current authentication settings")
            }
        }
    }
}

/// A bound gRPC port: its address, the one clients are told, its TLS setup and the
/// authentication step its requests pass.
pub struct GrpcEndpoint {
    listener: tokio::net::TcpListener,
    pub local: std::net::SocketAddr,
    pub advertised: std::net::SocketAddr,
    tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    guard: std::sync::Arc<crate::auth::guard::Guard>,
}

impl GrpcEndpoint {
    /// Binds `listen`; `advertise` defaults to it (loopback when it is 0.0.0.0). TLS as `tls`
    /// says (self-signed unless a certificate and key are given).
    pub async fn bind(
        listen: std::net::SocketAddr,
        advertise: Option<std::net::SocketAddr>,
        tls: &crate::tls::TlsConfig,
        guard: std::sync::Arc<crate::auth::guard::Guard>,
    ) -> anyhow::Result<GrpcEndpoint> {
        use anyhow::Context;
        let listener = crate::role::listen(listen)
            .await
            .with_context(|| format!("binding the gRPC port {listen}"))?;
        let local = listener.local_addr()?;
        let advertised = advertise.unwrap_or(if local.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], local.port()))
        } else {
            local
        });
        let tls = crate::tls::ServerTls::new(tls, local, crate::protocol::grpc::listener::ALPN)
            .context("setting up TLS for the gRPC port")?;
        Ok(GrpcEndpoint {
            listener,
            local,
            advertised,
            tls,
            guard,
        })
    }

    /// Serves the RocketMQ 5 gRPC protocol over `backend` until `shutdown` resolves.
    pub async fn serve<B: crate::protocol::grpc::backend::Backend>(
        self,
        backend: std::sync::Arc<B>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        use crate::protocol::grpc::pb::messaging_service_server::MessagingServiceServer;
        use crate::protocol::grpc::server::{GrpcService, MAX_DECODING_MESSAGE_SIZE};
        use anyhow::Context;
        let service =
            MessagingServiceServer::new(GrpcService::new(backend, self.advertised, self.guard))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_DECODING_MESSAGE_SIZE);
        tonic::transport::Server::builder()
            // Half-dead client connections (a client host gone without a FIN) are found and
            // closed instead of piling up.
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(service)
            .serve_with_incoming_shutdown(
                crate::protocol::grpc::listener::incoming(self.listener, self.tls),
                shutdown,
            )
            .await
            .context("serving gRPC")
    }
}
