//! Remoting connections. Either side of a connection may send requests: clients send most of
//! them, but a broker also calls its clients (transaction check-backs, "consumer ids changed")
//! and a proxy is a client of the brokers. So servers and clients share one [`Connection`]:
//! a reader task that decodes frames, runs each request in its own task through a
//! [`Handler`] (so a long-polling pull does not hold up the connection) and completes pending
//! calls with their responses by `opaque`; and a writer task that batches outgoing frames.
//!
//! A malformed frame closes the connection (the peer cannot be resynchronised), after a log
//! line naming the peer and the fault. Requests in flight per connection are bounded: past the
//! bound the reader stops reading, which pushes back on the peer through TCP.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::codec::{self, FLAG_ONEWAY, RemotingCommand};
use super::codes::response;

/// Requests one connection may have running at once before the reader stops reading.
const MAX_IN_FLIGHT: usize = 1024;
/// Outgoing frames queued per connection.
const OUTGOING: usize = 4096;
/// Bytes the writer gathers before one write.
const WRITE_BATCH: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RemotingError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(String),
    #[error("connection to {0} is closed")]
    Closed(String),
    #[error("no response from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

/// What a side of a connection does with the requests it receives.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request; the returned response (if any) is sent back with the request's
    /// `opaque`. Oneway requests' responses are dropped.
    fn request(
        self: Arc<Self>,
        conn: Arc<Connection>,
        request: RemotingCommand,
    ) -> impl Future<Output = Option<RemotingCommand>> + Send + 'static;

    /// The connection closed (either side, or a fault).
    fn closed(&self, _conn: &Arc<Connection>) {}
}

/// A handler for the client side of connections that expect no requests from the server.
pub struct NoRequests;

impl Handler for NoRequests {
    fn request(
        self: Arc<Self>,
        _conn: Arc<Connection>,
        request: RemotingCommand,
    ) -> impl Future<Output = Option<RemotingCommand>> + Send + 'static {
        std::future::ready(Some(not_supported(&request)))
    }
}

/// The response to a request whose code this side does not serve.
pub fn not_supported(request: &RemotingCommand) -> RemotingCommand {
    RemotingCommand::response_to(
        request,
        response::REQUEST_CODE_NOT_SUPPORTED,
        format!("request code {} is not supported", request.code),
    )
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One TCP connection speaking the remoting protocol.
pub struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    out: mpsc::Sender<RemotingCommand>,
    pending: Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>>>,
    next_opaque: AtomicI32,
    closed: AtomicBool,
    close_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Connection {
    /// Starts the reader and writer tasks of an accepted or connected TCP stream.
    pub fn spawn<H: Handler>(stream: TcpStream, handler: Arc<H>, max_frame: usize) -> Arc<Self> {
        let _ = stream.set_nodelay(true);
        Self::spawn_stream(crate::tls::Stream::Plain(stream), handler, max_frame)
    }

    /// Starts the reader and writer tasks of a stream, TLS or not.
    pub fn spawn_stream<H: Handler>(
        stream: crate::tls::Stream,
        handler: Arc<H>,
        max_frame: usize,
    ) -> Arc<Self> {
        let peer = stream
            .tcp()
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (out, out_rx) = mpsc::channel(OUTGOING);
        let (close_tx, close_rx) = watch::channel(false);
        let conn = Arc::new(Connection {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            out,
            pending: Mutex::new(HashMap::new()),
            next_opaque: AtomicI32::new(1),
            closed: AtomicBool::new(false),
            close_tx,
        });
        let (reader, writer) = tokio::io::split(stream);
        tokio::spawn(write_loop(Arc::clone(&conn), writer, out_rx, close_rx));
        tokio::spawn(read_loop(Arc::clone(&conn), reader, handler, max_frame));
        conn
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the connection: pending calls fail, both tasks stop.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.close_tx.send(true);
            self.pending.lock().clear();
        }
    }

    /// Sends a request and waits for its response.
    pub async fn invoke(
        &self,
        mut request: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, RemotingError> {
        let opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        request.opaque = opaque;
        request.flag &= !FLAG_ONEWAY;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(opaque, tx);
        let closed = || RemotingError::Closed(self.peer.to_string());
        if self.is_closed() || self.out.send(request).await.is_err() {
            self.pending.lock().remove(&opaque);
            return Err(closed());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(closed()),
            Err(_) => {
                self.pending.lock().remove(&opaque);
                Err(RemotingError::Timeout {
                    addr: self.peer.to_string(),
                    timeout,
                })
            }
        }
    }

    /// Sends a request that expects no response.
    pub async fn oneway(&self, mut request: RemotingCommand) -> Result<(), RemotingError> {
        request.opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        request.flag |= FLAG_ONEWAY;
        if self.is_closed() || self.out.send(request).await.is_err() {
            return Err(RemotingError::Closed(self.peer.to_string()));
        }
        Ok(())
    }

    /// Queues a response (or any prepared command) as it is.
    async fn send(&self, command: RemotingCommand) {
        let _ = self.out.send(command).await;
    }
}

async fn write_loop(
    conn: Arc<Connection>,
    mut writer: tokio::io::WriteHalf<crate::tls::Stream>,
    mut rx: mpsc::Receiver<RemotingCommand>,
    mut close: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            c = rx.recv() => c,
            _ = close.changed() => None,
        };
        let Some(first) = first else { break };
        codec::encode(&first, &mut buf);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(c) => codec::encode(&c, &mut buf),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.write_all(&buf).await {
            tracing::debug!(peer = %conn.peer, error = %e, "remoting write failed; closing");
            break;
        }
        buf.clear();
        if buf.capacity() > 4 * WRITE_BATCH {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    conn.close();
    let _ = writer.shutdown().await;
}

async fn read_loop<H: Handler>(
    conn: Arc<Connection>,
    mut reader: tokio::io::ReadHalf<crate::tls::Stream>,
    handler: Arc<H>,
    max_frame: usize,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut close = conn.close_tx.subscribe();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'read: loop {
        loop {
            let command = match codec::decode(&mut buf, max_frame) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer = %conn.peer, error = %e, "malformed remoting frame; closing the connection");
                    break 'read;
                }
            };
            if command.is_response() {
                let waiter = conn.pending.lock().remove(&command.opaque);
                if let Some(tx) = waiter {
                    let _ = tx.send(command);
                }
                continue;
            }
            let permit = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
                _ = close.changed() => break 'read,
            };
            let (conn, handler) = (Arc::clone(&conn), Arc::clone(&handler));
            tokio::spawn(async move {
                let oneway = command.is_oneway();
                let opaque = command.opaque;
                if let Some(mut response) = handler.request(Arc::clone(&conn), command).await
                    && !oneway
                {
                    response.opaque = opaque;
                    response.flag |= codec::FLAG_RESPONSE;
                    conn.send(response).await;
                }
                drop(permit);
            });
        }
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(64 * 1024);
        }
        let n = tokio::select! {
            r = reader.read_buf(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "remoting read failed");
                    0
                }
            },
            _ = close.changed() => 0,
        };
        if n == 0 {
            break;
        }
    }
    conn.close();
    handler.closed(&conn);
}

/// Accepts connections until `shutdown` resolves, sorting each by the listener's TLS mode
/// off the accept loop.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    max_frame: usize,
    tls: Option<Arc<crate::tls::ServerTls>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (handler, tls) = (Arc::clone(&handler), tls.clone());
                    tokio::spawn(async move {
                        match crate::tls::accept(stream, tls.as_deref()).await {
                            Ok(s) => {
                                Connection::spawn_stream(s, handler, max_frame);
                            }
                            Err(e) => tracing::info!(%peer, error = %e, "remoting connection refused"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a remoting connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
}

/// Client connections by address (`host:port`, DNS names allowed), opened on first use and
/// reopened after they close.
pub struct Pool<H: Handler> {
    handler: Arc<H>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    connect_timeout: Duration,
    max_frame: usize,
    /// TLS to the peers (verifying the name they were dialled by).
    tls: Option<crate::tls::ClientTls>,
    /// Requests are signed with these (RocketMQ ACL 2.0), as a node's own.
    credentials: parking_lot::RwLock<Option<crate::auth::guard::Credentials>>,
}

impl<H: Handler> Pool<H> {
    pub fn new(handler: Arc<H>, connect_timeout: Duration, max_frame: usize) -> Self {
        Pool {
            handler,
            connections: Mutex::new(HashMap::new()),
            connect_timeout,
            max_frame,
            tls: None,
            credentials: parking_lot::RwLock::new(None),
        }
    }

    /// Connects with TLS.
    pub fn with_tls(mut self, tls: Option<crate::tls::ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Signs every request with `credentials` (or stops signing with `None`).
    pub fn set_credentials(&self, credentials: Option<crate::auth::guard::Credentials>) {
        *self.credentials.write() = credentials;
    }

    fn sign(&self, request: &mut RemotingCommand) {
        if let Some(c) = self.credentials.read().as_ref() {
            c.sign(request);
        }
    }

    /// The open connection to `addr`, connecting if there is none.
    pub async fn connection(&self, addr: &str) -> Result<Arc<Connection>, RemotingError> {
        self.connection_on(addr, 0).await
    }

    /// The open connection `lane` to `addr` (lane 0 is [`Pool::connection`]'s): requests held
    /// for a long time (long polls) go to other lanes, so that they neither wait behind nor
    /// use up the in-flight limit of the connection that carries everything else.
    async fn connection_on(
        &self,
        addr: &str,
        lane: usize,
    ) -> Result<Arc<Connection>, RemotingError> {
        let key = if lane == 0 {
            addr.to_owned()
        } else {
            format!("{addr}#{lane}")
        };
        if let Some(c) = self.connections.lock().get(&key)
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RemotingError::ConnectTimeout(addr.to_owned()))?
            .map_err(|source| RemotingError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let conn = match &self.tls {
            None => Connection::spawn(stream, Arc::clone(&self.handler), self.max_frame),
            Some(tls) => {
                let _ = stream.set_nodelay(true);
                let stream = tls
                    .connect(crate::tls::host_of(addr), stream)
                    .await
                    .map_err(|source| RemotingError::Connect {
                        addr: addr.to_owned(),
                        source,
                    })?;
                Connection::spawn_stream(stream, Arc::clone(&self.handler), self.max_frame)
            }
        };
        let mut connections = self.connections.lock();
        match connections.get(&key) {
            // Another task connected meanwhile: use its connection, drop ours.
            Some(c) if !c.is_closed() => {
                conn.close();
                Ok(Arc::clone(c))
            }
            _ => {
                connections.insert(key, Arc::clone(&conn));
                Ok(conn)
            }
        }
    }

    /// Whether an open connection to `addr` exists (without connecting).
    pub fn is_open(&self, addr: &str) -> bool {
        self.connections
            .lock()
            .get(addr)
            .is_some_and(|c| !c.is_closed())
    }

    /// Sends `request` to `addr` and waits for the response.
    pub async fn invoke(
        &self,
        addr: &str,
        mut request: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, RemotingError> {
        self.sign(&mut request);
        let conn = self.connection(addr).await?;
        let result = conn.invoke(request, timeout).await;
        if matches!(result, Err(RemotingError::Timeout { .. })) {
            tracing::debug!(addr, "remoting call timed out");
        }
        result
    }

    /// Sends a request that the peer may hold (a long poll) on one of `lanes` extra
    /// connections to `addr`, chosen by `spread`: each connection carries at most
    /// `MAX_IN_FLIGHT` (1,024) such requests, so `lanes` x 1,024 may wait at once.
    pub async fn invoke_held(
        &self,
        addr: &str,
        mut request: RemotingCommand,
        timeout: Duration,
        lanes: usize,
        spread: usize,
    ) -> Result<RemotingCommand, RemotingError> {
        self.sign(&mut request);
        let conn = self.connection_on(addr, 1 + spread % lanes.max(1)).await?;
        conn.invoke(request, timeout).await
    }

    /// Sends a request that expects no response.
    pub async fn oneway(
        &self,
        addr: &str,
        mut request: RemotingCommand,
    ) -> Result<(), RemotingError> {
        self.sign(&mut request);
        self.connection(addr).await?.oneway(request).await
    }

    /// Closes every connection.
    pub fn close_all(&self) {
        for (_, c) in self.connections.lock().drain() {
            c.close();
        }
    }
}

/// A new request with the given code and header fields, JSON header, empty body.
pub fn request(
    code: i32,
    fields: impl IntoIterator<Item = (&'static str, String)>,
) -> RemotingCommand {
    RemotingCommand {
        code,
        language: "RUST".into(),
        version: ROCKETMQ_VERSION,
        opaque: 0,
        flag: 0,
        remark: None,
        ext_fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        serialize_type: codec::SerializeType::Json,
        body: bytes::Bytes::new(),
    }
}

/// The `version` this side puts in requests: RocketMQ's `MQVersion` ordinal of V5_3_0 (the
/// peer reads it to pick request formats; values at or above 5.x get the 5.x ones).
pub const ROCKETMQ_VERSION: i32 = 475;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::remoting::codes::request::{GET_MAX_OFFSET, HEART_BEAT};

    struct Echo;

    impl Handler for Echo {
        async fn request(
            self: Arc<Self>,
            _conn: Arc<Connection>,
            request: RemotingCommand,
        ) -> Option<RemotingCommand> {
            if request.code == HEART_BEAT {
                // Slow request: must not hold up the others on the connection.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let mut r = RemotingCommand::response_to(&request, 0, "ok");
            r.ext_fields = request.ext_fields.clone();
            Some(r)
        }
    }

    #[tokio::test]
    async fn concurrent_calls_match_their_responses_and_slow_ones_do_not_block() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(
            listener,
            Arc::new(Echo),
            1 << 20,
            None,
            std::future::pending(),
        ));
        let pool = Arc::new(Pool::new(
            Arc::new(NoRequests),
            Duration::from_secs(1),
            1 << 20,
        ));
        let slow = {
            let (pool, addr) = (Arc::clone(&pool), addr.clone());
            tokio::spawn(async move {
                pool.invoke(&addr, request(HEART_BEAT, []), Duration::from_secs(5))
                    .await
            })
        };
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let (pool, addr) = (Arc::clone(&pool), addr.clone());
                tokio::spawn(async move {
                    let r = pool
                        .invoke(
                            &addr,
                            request(GET_MAX_OFFSET, [("i", i.to_string())]),
                            Duration::from_secs(5),
                        )
                        .await
                        .unwrap();
                    assert_eq!(r.ext_fields["i"], i.to_string());
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        // All answered while the slow one is still running.
        assert!(!slow.is_finished(), "{:?}", started.elapsed());
        assert_eq!(slow.await.unwrap().unwrap().code, 0);
    }

    #[tokio::test]
    async fn garbage_closes_the_connection_and_fails_pending_calls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(Echo),
            1 << 20,
            None,
            std::future::pending(),
        ));
        let mut raw = TcpStream::connect(addr).await.unwrap();
        // A length prefix far above the limit: refused before anything is allocated.
        raw.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), raw.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // The server still serves others.
        let pool = Pool::new(Arc::new(NoRequests), Duration::from_secs(1), 1 << 20);
        let r = pool
            .invoke(
                &addr.to_string(),
                request(GET_MAX_OFFSET, []),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(r.code, 0);
    }

    #[tokio::test]
    async fn a_call_to_a_dead_peer_fails_fast() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = Pool::new(Arc::new(NoRequests), Duration::from_secs(1), 1 << 20);
        let err = pool
            .invoke(&addr, request(GET_MAX_OFFSET, []), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, RemotingError::Connect { .. }), "{err}");
    }
}
