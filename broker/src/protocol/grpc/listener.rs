//! The gRPC port's connections, sorted by the listener's TLS mode (see [`crate::tls`]):
//! with `permissive`, TLS and plaintext share the port (the Java and Go clients connect with
//! TLS by default, the Python, Node.js and Rust ones without).

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
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
) -> impl tokio_stream::Stream<Item = io::Result<Stream>> {
    use tokio_stream::StreamExt;
    ReceiverStream::new(crate::tls::accept_all(listener, tls)).map(|(s, _)| Ok(s))
}
