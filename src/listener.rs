//! Accepting connections before anything else has looked at them: a cap on open
//! connections, TLS handshakes with a timeout, and a timeout on connections that
//! say nothing (a client that opens a socket and never speaks, or stops speaking).
//! Every listener of the gateway (gRPC, admin, webhooks) accepts through here.
//!
//! A connection gets `handshake_timeout` to complete its TLS handshake and send
//! its first bytes, then `idle_timeout` between bytes read or written (HTTP/2
//! keepalive pings count, so a live connection is never idle for long).
//!
//! At the cap, the gRPC listener closes a new connection at once; the HTTP/1
//! listeners (admin, webhooks: one request at a time per connection, senders
//! that reconnect) shed instead: the connection idle the longest, with no
//! request in progress, is closed to admit the new one, so connections that
//! only sit there cannot keep the port from a sender who has something to say.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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

/// What the slot table knows of one open connection.
#[derive(Default)]
struct Tracked {
    /// When bytes last went either way (milliseconds since the table's start).
    last_active_ms: AtomicU64,
    /// Requests in progress on it (HTTP/1: zero or one).
    busy: AtomicU32,
    /// Closed to make room: its next read or write fails.
    shed: AtomicBool,
    /// Woken when it is shed (its reader is parked waiting for bytes).
    waker: AtomicWaker,
}

/// What to do with a new connection when the cap is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtCap {
    /// Close the new one.
    Refuse,
    /// Close the connection idle the longest that has no request in progress.
    ShedIdlest,
}

/// The open connections of one listener, at most `max`.
struct Slots {
    max: usize,
    at_cap: AtCap,
    start: Instant,
    table: Mutex<SlotTable>,
}

#[derive(Default)]
struct SlotTable {
    next: u64,
    open: HashMap<u64, Arc<Tracked>>,
}

/// A connection's place under the cap; given back when dropped.
struct Slot {
    id: u64,
    slots: Arc<Slots>,
    tracked: Arc<Tracked>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.slots.table.lock() {
            t.open.remove(&self.id);
        }
    }
}

/// The result of asking for a slot.
enum Admission {
    Admitted(Slot),
    /// Admitted, after closing the idlest connection.
    AdmittedShedding(Slot),
    Refused,
}

impl Slots {
    fn new(max: usize, at_cap: AtCap) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            at_cap,
            start: Instant::now(),
            table: Mutex::new(SlotTable::default()),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn admit(self: &Arc<Self>) -> Admission {
        let Ok(mut t) = self.table.lock() else {
            return Admission::Refused;
        };
        let mut shed = false;
        if t.open.len() >= self.max {
            if self.at_cap == AtCap::Refuse {
                return Admission::Refused;
            }
            // O(cap) at the cap only; caps are hundreds.
            let idlest = t
                .open
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, c)| c.last_active_ms.load(Ordering::Relaxed))
                .map(|(id, c)| (*id, Arc::clone(c)));
            let Some((id, victim)) = idlest else {
                return Admission::Refused;
            };
            victim.shed.store(true, Ordering::Release);
            victim.waker.wake();
            t.open.remove(&id);
            shed = true;
        }
        let id = t.next;
        t.next += 1;
        let tracked = Arc::new(Tracked::default());
        tracked
            .last_active_ms
            .store(self.now_ms(), Ordering::Relaxed);
        t.open.insert(id, Arc::clone(&tracked));
        let slot = Slot {
            id,
            slots: Arc::clone(self),
            tracked,
        };
        if shed {
            Admission::AdmittedShedding(slot)
        } else {
            Admission::Admitted(slot)
        }
    }
}

/// Marks a connection busy while a request is served on it (not shed).
pub(crate) struct BusyGuard(Arc<Tracked>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A handle on one connection's slot, for the request path.
#[derive(Clone)]
pub(crate) struct ConnHandle(Arc<Tracked>);

impl ConnHandle {
    pub(crate) fn busy(&self) -> BusyGuard {
        self.0.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(Arc::clone(&self.0))
    }
}

/// One accepted connection: its stream, its slot under the cap, and its timer.
pub struct Conn {
    io: Io,
    peer: PeerInfo,
    slot: Slot,
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

    pub(crate) fn handle(&self) -> ConnHandle {
        ConnHandle(Arc::clone(&self.slot.tracked))
    }

    /// Some bytes went one way or the other: push the timer back (at most once a
    /// second, so a busy connection does not touch the timer wheel per read).
    fn active(&mut self) {
        let now = Instant::now();
        if !self.spoke || now.duration_since(self.pushed) >= Duration::from_secs(1) {
            self.spoke = true;
            self.pushed = now;
            self.timer.as_mut().reset(now + self.idle_timeout);
            let ms = self.slot.slots.now_ms();
            self.slot
                .tracked
                .last_active_ms
                .store(ms, Ordering::Relaxed);
        }
    }

    /// Whether the connection was closed to make room for another.
    fn was_shed(&self) -> bool {
        self.slot.tracked.shed.load(Ordering::Acquire)
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

fn shed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was idle the longest when the cap was reached: closed to admit another",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.was_shed() {
            return Poll::Ready(Err(shed()));
        }
        self.slot.tracked.waker.register(cx.waker());
        if self.was_shed() {
            return Poll::Ready(Err(shed()));
        }
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
        if self.was_shed() {
            return Poll::Ready(Err(shed()));
        }
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

    /// Vectored writes pass through: without them h2 writes each DATA frame in
    /// two `send`s (its head and first KiB copied into its buffer, then the
    /// rest), and with TCP_NODELAY the first goes out as a segment of its own.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.was_shed() {
            return Poll::Ready(Err(shed()));
        }
        let polled = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
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

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
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
    accept_with(name, listener, tls, limits, AtCap::Refuse, metrics)
}

fn accept_with(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    at_cap: AtCap,
    metrics: Arc<Metrics>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    let slots = Slots::new(limits.max_connections, at_cap);
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
            let slot = match slots.admit() {
                Admission::Admitted(slot) => slot,
                Admission::AdmittedShedding(slot) => {
                    metrics.connection_shed(name);
                    tracing::debug!(listener = name, %remote, "connection cap reached: the idlest connection closed to admit this one");
                    slot
                }
                Admission::Refused => {
                    metrics.connection_refused(name);
                    tracing::debug!(listener = name, %remote, "connection cap reached: closed at once");
                    drop(tcp);
                    continue;
                }
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
                    slot,
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

/// A service that marks its connection busy while each request is served.
#[derive(Clone)]
struct MarkBusy<S> {
    inner: S,
    handle: ConnHandle,
}

impl<S, R> tower::Service<R> for MarkBusy<S>
where
    S: tower::Service<R> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let busy = self.handle.busy();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            drop(busy);
            answer
        })
    }
}

/// Serves an HTTP router (admin, webhooks) on connections accepted as
/// [`accept`] does, but shedding the idlest at the cap: HTTP/1 only, with a
/// request-header timeout (hyper starts it whenever it waits for a request's
/// head, so an idle keep-alive connection, or one that trickles its headers,
/// is closed after it too). (Prometheus, the kubelet and
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

    let mut conns = accept_with(
        name,
        listener,
        None,
        limits,
        AtCap::ShedIdlest,
        Arc::clone(&metrics),
    );
    tokio::spawn(async move {
        while let Some(conn) = conns.next().await {
            let Ok(conn) = conn else { continue };
            let remote = conn.peer().remote;
            let handle = conn.handle();
            let router = router.clone().layer(axum::Extension(conn.peer().clone()));
            // A request in progress keeps its connection from being shed.
            let service = TowerToHyperService::new(MarkBusy {
                inner: router,
                handle,
            });
            let timeout = limits.handshake_timeout;
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let mut builder = Builder::new(TokioExecutor::new()).http1_only();
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    // A request head before auth is held to 64 KiB (hyper's
                    // default is ~400 KiB), across every connection.
                    .max_buf_size(64 * 1024);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: Admission) -> Slot {
        match a {
            Admission::Admitted(s) | Admission::AdmittedShedding(s) => s,
            Admission::Refused => panic!("refused"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_idlest_free_connection_is_shed_and_a_busy_one_never() {
        let slots = Slots::new(2, AtCap::ShedIdlest);
        let old = slot(slots.admit());
        tokio::time::advance(Duration::from_secs(5)).await;
        let newer = slot(slots.admit());
        newer
            .tracked
            .last_active_ms
            .store(slots.now_ms(), Ordering::Relaxed);
        // The third sheds the idlest (the old one), not the newer.
        let third = match slots.admit() {
            Admission::AdmittedShedding(s) => s,
            _ => panic!("shed"),
        };
        assert!(old.tracked.shed.load(Ordering::Acquire));
        assert!(!newer.tracked.shed.load(Ordering::Acquire));
        drop(old);
        // Both open ones busy: nothing can be shed, the new one is refused.
        let _b1 = ConnHandle(Arc::clone(&newer.tracked)).busy();
        let _b2 = ConnHandle(Arc::clone(&third.tracked)).busy();
        assert!(matches!(slots.admit(), Admission::Refused));
        drop(_b2);
        assert!(matches!(slots.admit(), Admission::AdmittedShedding(_)));
        assert!(third.tracked.shed.load(Ordering::Acquire));
        // The gRPC listener refuses at the cap.
        let refuse = Slots::new(1, AtCap::Refuse);
        let _one = slot(refuse.admit());
        assert!(matches!(refuse.admit(), Admission::Refused));
    }

    #[tokio::test]
    async fn vectored_writes_pass_through_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let slots = Slots::new(1, AtCap::Refuse);
        let mut conn = Conn {
            io: Io::Plain(server),
            peer: PeerInfo {
                remote: None,
                certs: None,
            },
            slot: slot(slots.admit()),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(60))),
            idle_timeout: Duration::from_secs(60),
            spoke: true,
            pushed: Instant::now(),
        };
        // What hyper asks before it writes a frame's head and payload together.
        assert!(conn.is_write_vectored());
        let (head, payload) = ([1u8; 9], vec![2u8; 64 * 1024]);
        let mut sent = 0;
        while sent < head.len() + payload.len() {
            let bufs = if sent < head.len() {
                vec![io::IoSlice::new(&head[sent..]), io::IoSlice::new(&payload)]
            } else {
                vec![io::IoSlice::new(&payload[sent - head.len()..])]
            };
            sent += conn.write_vectored(&bufs).await.expect("write");
        }
        conn.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, [&head[..], &payload[..]].concat());
    }
}
