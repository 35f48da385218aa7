//! Accepting connections before anything else has looked at them: a cap on open
//! connections, TLS handshakes with a timeout, and a timeout on connections that
//! say nothing (a client that opens a socket and never speaks, or stops speaking).
//! Every listener of the gateway (gRPC, admin, webhooks) accepts through here.
//!
//! A connection gets `handshake_timeout` to complete its TLS handshake and send
//! its first bytes, then `idle_timeout` between bytes read or written (HTTP/2
//! keepalive pings count, so a live connection is never idle for long).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;

/// The bounds of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// For the TLS handshake and the first bytes.
    pub handshake_timeout: Duration,
    /// Between bytes read or written, afterwards.
    pub idle_timeout: Duration,
}

/// Who is on the other end of a connection, as requests see it (in their
/// extensions): the address, and the client certificate chain of an mTLS
/// connection.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl PeerInfo {
    /// The client's leaf certificate (mTLS).
    pub fn leaf_cert(&self) -> Option<&[u8]> {
        self.certs.as_ref()?.first().map(|c| c.as_ref())
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection: its stream, its slot under the cap, and its timer.
pub struct Conn {
    io: Io,
    peer: PeerInfo,
    _slot: OwnedSemaphorePermit,
    timer: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// Whether the first bytes arrived (until then, the handshake timeout runs).
    spoke: bool,
    /// When the timer was last pushed back (it is not moved for every read).
    pushed: Instant,
}

impl Conn {
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Some bytes went one way or the other: push the timer back (at most once a
    /// second, so a busy connection does not touch the timer wheel per read).
    fn active(&mut self) {
        let now = Instant::now();
        if !self.spoke || now.duration_since(self.pushed) >= Duration::from_secs(1) {
            self.spoke = true;
            self.pushed = now;
            self.timer.as_mut().reset(now + self.idle_timeout);
        }
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }
}

fn idle() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the connection said nothing for too long",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        };
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 && self.spoke {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// Accepts connections on `listener` within `limits`, with TLS when `tls` is
/// given; handshakes run side by side, so a slow one holds up no other. `name`
/// labels the listener in logs and metrics.
pub fn accept(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                metrics.connection_refused(name);
                tracing::debug!(listener = name, %remote, "connection cap reached: closed at once");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tx, tls, metrics) = (tx.clone(), tls.clone(), Arc::clone(&metrics));
            tokio::spawn(async move {
                let deadline = Instant::now() + limits.handshake_timeout;
                let (io, certs) = match tls {
                    None => (Io::Plain(tcp), None),
                    Some(acceptor) => {
                        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                let certs = s.get_ref().1.peer_certificates().map(|c| {
                                    Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())
                                });
                                (Io::Tls(Box::new(s)), certs)
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(listener = name, %remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                metrics.connection_timed_out(name);
                                tracing::debug!(listener = name, %remote, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                let conn = Conn {
                    io,
                    peer: PeerInfo {
                        remote: Some(remote),
                        certs,
                    },
                    _slot: slot,
                    timer: Box::pin(tokio::time::sleep_until(deadline)),
                    idle_timeout: limits.idle_timeout,
                    spoke: false,
                    pushed: Instant::now(),
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Serves an HTTP router (admin, webhooks) on connections from [`accept`]:
/// HTTP/1 only, with a request-header timeout. (Prometheus, the kubelet and
/// CorrigoPro speak HTTP/1.1; HTTP/2 would let one connection past the
/// connection cap carry many streams, each with its own body and checks.) Runs
/// until the process ends.
pub fn serve_http(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use tokio_stream::StreamExt;

    let mut conns = accept(name, listener, None, limits, Arc::clone(&metrics));
    tokio::spawn(async move {
        while let Some(conn) = conns.next().await {
            let Ok(conn) = conn else { continue };
            let remote = conn.peer().remote;
            let service = TowerToHyperService::new(
                router.clone().layer(axum::Extension(conn.peer().clone())),
            );
            let timeout = limits.handshake_timeout;
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let mut builder = Builder::new(TokioExecutor::new()).http1_only();
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout);
                if let Err(e) = builder.serve_connection(TokioIo::new(conn), service).await {
                    if e.to_string().contains("read header") || e.to_string().contains("timed out")
                    {
                        metrics.connection_timed_out(name);
                    }
                    tracing::debug!(listener = name, remote = ?remote, error = %e, "connection ended with an error");
                }
            });
        }
    });
}
