//! The gRPC port's connections, sorted by the listener's TLS mode (see [`crate::tls`]):
//! with `permissive`, TLS and plaintext share the port (the Java and Go clients connect with
//! TLS by default, the Python, Node.js and Rust ones without).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::{ServerTls, Stream};

/// gRPC speaks HTTP/2.
pub const ALPN: &[&[u8]] = &[b"h2"];

impl Connected for Stream {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

/// Accepts connections, sorts each into TLS or plaintext off the accept loop (a slow client
/// cannot hold up others), and yields them to tonic.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> ReceiverStream<io::Result<Stream>> {
    let (tx, rx) = mpsc::channel(128);
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
            let conn_tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match crate::tls::accept(stream, tls.as_deref()).await {
                    Ok(conn) => {
                        let _ = conn_tx.send(Ok(conn)).await;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection dropped before gRPC started")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
