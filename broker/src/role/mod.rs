//! The roles the `rmq-broker` binary can run.

pub mod drain;
pub mod namesrv;
pub mod proxy;
pub mod standalone;
pub mod store;

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

/// A bound gRPC port: its address, the one clients are told, and its TLS setup.
pub struct GrpcEndpoint {
    listener: tokio::net::TcpListener,
    pub local: std::net::SocketAddr,
    pub advertised: std::net::SocketAddr,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl GrpcEndpoint {
    /// Binds `listen`; `advertise` defaults to it (loopback when it is 0.0.0.0). With `tls`,
    /// TLS and plaintext share the port (self-signed unless a certificate and key are given).
    pub async fn bind(
        listen: std::net::SocketAddr,
        advertise: Option<std::net::SocketAddr>,
        tls: bool,
        cert_and_key: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    ) -> anyhow::Result<GrpcEndpoint> {
        use anyhow::Context;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the gRPC port {listen}"))?;
        let local = listener.local_addr()?;
        let advertised = advertise.unwrap_or(if local.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], local.port()))
        } else {
            local
        });
        let tls = if tls {
            let paths = cert_and_key.map(|(c, k)| (c.as_path(), k.as_path()));
            Some(
                crate::protocol::grpc::listener::tls_config(paths, local)
                    .context("setting up TLS")?,
            )
        } else {
            None
        };
        Ok(GrpcEndpoint {
            listener,
            local,
            advertised,
            tls,
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
        let service = MessagingServiceServer::new(GrpcService::new(backend, self.advertised))
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_DECODING_MESSAGE_SIZE);
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                crate::protocol::grpc::listener::incoming(self.listener, self.tls),
                shutdown,
            )
            .await
            .context("serving gRPC")
    }
}
