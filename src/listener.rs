//! Accept loops: one per bound address, serving HTTP/1.1 (Tern's engine, [`crate::http1`]) +
//! HTTP/2 (hyper's server; told apart by the connection preface, prior knowledge or ALPN over
//! TLS) or TCP, after the PROXY protocol header and the TLS handshake when configured.
//!
//! A listener keeps its socket across reloads while its address stays configured; what it does
//! with each connection is read from the current snapshot at accept time. At accept, a connection
//! over a limit (memory overload, the global or the listener's connection limit) is closed at
//! once, so established connections never pay for a flood; a failing `accept` (out of
//! descriptors) pauses the loop instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::Either;
use futures_util::task::AtomicWaker;
use http::HeaderValue;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http1::request::{self, Reject};
use crate::http1::server::{self, End, RequestBody};
use crate::proxy::{self, Conn, ReqBody};
use crate::snapshot::{ConnLimits, ListenerKind};
use crate::state::Shared;
use crate::stats::ListenerStats;
use crate::timer::now_ms;
use crate::timer::{Alarm, LazyTimer};
use crate::tls::server::{DownStream, DownstreamTls, Failure, TlsInfo};

/// A running accept loop.
#[derive(Debug)]
pub struct Running {
    /// Stops accepting and starts the drain.
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Wraps a task that ends when `stop` is cancelled.
    pub(crate) fn new(stop: CancellationToken, task: JoinHandle<()>) -> Running {
        Running { stop, task }
    }

    /// Stops accepting, lets open connections finish within `drain`, then closes what is left.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the drain is over.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Binds `addr` (with SO_REUSEADDR, so a restart does not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Starts accepting on an already bound socket.
pub fn spawn(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    drain: Duration,
) -> std::io::Result<Running> {
    let listener = TcpListener::from_std(listener)?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, shared, stop.clone(), drain));
    Ok(Running { stop, task })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    drain: Duration,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let tracker = TaskTracker::new();
    // Cancelled at drain: every HTTP connection finishes its in-flight requests and closes.
    let drain_all = CancellationToken::new();
    let kill = CancellationToken::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    let pause = backoff.failed("listener", local, &e, &shared.stats.server);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = stop.cancelled() => break,
                    }
                }
            },
            _ = stop.cancelled() => break,
        };
        backoff.succeeded("listener", local);
        let accepted = std::time::Instant::now();
        let snap = shared.snapshot.load();
        let Some(lr) = snap.listeners.get(&local) else {
            continue;
        };
        let stats = lr.stats.clone();
        // Refused connections are closed at once (dropped): they never reach the established ones.
        if shared.overload.overloaded() {
            stats.downstream_cx_overload_reject.inc();
            continue;
        }
        if lr
            .max_connections
            .is_some_and(|m| stats.downstream_cx_active.get() >= m as i64)
        {
            stats.downstream_cx_overflow.inc();
            continue;
        }
        let global = snap
            .config
            .overload
            .global_downstream_max_connections
            .as_ref();
        if !shared.overload.admit(global.map(|g| g.value)) {
            stats.downstream_global_cx_overflow.inc();
            continue;
        }
        let open = Open::new(shared.clone(), stats.clone());
        let _ = stream.set_nodelay(true);
        let tls = lr.tls.clone();
        match &lr.kind {
            ListenerKind::Http(_) => {
                let conn = Arc::new(Conn {
                    shared: shared.clone(),
                    local,
                    peer,
                    peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                        .unwrap_or(HeaderValue::from_static("unknown")),
                    direct: peer,
                    last_request_ms: AtomicU64::new(now_ms()),
                    requests: std::sync::atomic::AtomicU32::new(0),
                    timer: LazyTimer::default(),
                    tls: None,
                });
                let limits = lr.limits;
                let mut h2 = http2::Builder::new(TokioExecutor::new());
                h2.timer(TokioTimer::new())
                    .max_concurrent_streams(limits.h2_max_concurrent_streams)
                    .initial_stream_window_size(limits.h2_initial_stream_window_size)
                    .initial_connection_window_size(limits.h2_initial_connection_window_size)
                    .max_header_list_size(limits.max_request_headers_bytes)
                    .max_send_buf_size(limits.buffer_limit_bytes as usize);
                if let Some((interval, timeout)) = limits.h2_keepalive {
                    h2.keep_alive_interval(interval).keep_alive_timeout(timeout);
                }
                let h1 = server::Config {
                    limits: request::Limits {
                        max_head: limits.max_request_headers_bytes as usize,
                        max_headers: limits.max_headers_count as usize,
                        max_uri: request::MAX_URI,
                    },
                    header_timeout: lr.request_headers_timeout,
                    idle_timeout: lr.idle_timeout,
                    start: accepted,
                    timer: Some(conn.timer.clone()),
                };
                let timeouts = Timeouts {
                    idle: lr.idle_timeout,
                    headers: lr.request_headers_timeout,
                };
                let (kill, drain) = (kill.clone(), drain_all.clone());
                let pp = lr.proxy_protocol;
                tracker.spawn(async move {
                    let (mut stream, mut conn) = (stream, conn);
                    if let Some(pp) = &pp {
                        match crate::proxy_protocol::accept(&mut stream, pp, &stats, &kill).await {
                            Ok(source) => Conn::proxied(&mut conn, source),
                            // The connection's slot is given back when `open` drops.
                            Err(_) => return,
                        }
                    }
                    let stream = match &tls {
                        None => DownStream::Plain(stream),
                        Some(t) => match handshake(t, stream, &stats, &kill).await {
                            Some((s, info)) => {
                                Conn::secured(&mut conn, info);
                                DownStream::Tls(s)
                            }
                            None => return,
                        },
                    };
                    serve_http(stream, conn, h2, h1, timeouts, limits, drain, kill, &stats).await;
                    drop(open);
                });
            }
            ListenerKind::Tcp(routes) => {
                let routes = routes.clone();
                let kill = kill.clone();
                let pp = lr.proxy_protocol;
                tracker.spawn(async move {
                    let mut stream = stream;
                    if let Some(pp) = &pp {
                        if crate::proxy_protocol::accept(&mut stream, pp, &stats, &kill)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    match &tls {
                        // SNI passthrough: the ClientHello picks the cluster and goes upstream
                        // as it came, the TLS session is the upstream's.
                        None if routes.uses_sni() => {
                            let mut stream = stream;
                            let hello = tokio::select! {
                                h = crate::tcp::client_hello(&mut stream) => h,
                                _ = kill.cancelled() => None,
                            };
                            let Some((first, sni)) = hello else {
                                stats.downstream_cx_sni_error.inc();
                                return;
                            };
                            let Some(cluster) = routes.pick(sni.as_deref()).cloned() else {
                                stats.downstream_cx_sni_no_route.inc();
                                return;
                            };
                            tokio::select! {
                                _ = crate::tcp::proxy_with(stream, cluster, &first) => {}
                                _ = kill.cancelled() => {}
                            }
                        }
                        None => {
                            let Some(cluster) = routes.default.clone() else {
                                return;
                            };
                            tokio::select! {
                                _ = crate::tcp::proxy(stream, cluster) => {}
                                _ = kill.cancelled() => {}
                            }
                        }
                        // Terminated: the handshake's SNI picks the cluster of the plaintext.
                        Some(t) => {
                            let Some((s, info)) = handshake(t, stream, &stats, &kill).await else {
                                return;
                            };
                            let Some(cluster) = routes.pick(info.sni.as_deref()).cloned() else {
                                stats.downstream_cx_sni_no_route.inc();
                                return;
                            };
                            tokio::select! {
                                _ = crate::tcp::proxy(s, cluster) => {}
                                _ = kill.cancelled() => {}
                            }
                        }
                    }
                    drop(open);
                });
            }
        }
    }
    drop(listener);
    tracker.close();
    // HTTP connections finish their in-flight request and close; TCP ones get the drain time.
    drain_all.cancel();
    let drained = tokio::time::timeout(drain, tracker.wait()).await;
    if drained.is_err() {
        tracing::warn!(%local, open = tracker.len(), "drain timeout: closing remaining connections");
        kill.cancel();
        tracker.wait().await;
    }
    tracing::info!(%local, "listener stopped");
}

/// A TLS stream accepted by a listener.
type TlsStream = Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// The TLS handshake of an accepted connection, with the certificate its SNI picks, bounded by
/// [`tern_config::defaults::TLS_HANDSHAKE_TIMEOUT`] (a client that stays silent loses its slot)
/// and counted; `None` when it failed (the connection is closed).
async fn handshake(
    tls: &DownstreamTls,
    tcp: tokio::net::TcpStream,
    stats: &ListenerStats,
    kill: &CancellationToken,
) -> Option<(TlsStream, Arc<TlsInfo>)> {
    let accept = tokio::time::timeout(
        tern_config::defaults::TLS_HANDSHAKE_TIMEOUT,
        tls.acceptor().accept(tcp),
    );
    let r = tokio::select! {
        r = accept => r,
        _ = kill.cancelled() => return None,
    };
    match r {
        Ok(Ok(s)) => {
            let conn = s.get_ref().1;
            stats.ssl_handshake.inc();
            if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                stats.ssl_session_reused.inc();
            }
            let info = tls.info(conn);
            if tls.asks_client_cert && info.peer.is_none() {
                stats.ssl_no_certificate.inc();
            }
            Some((Box::new(s), Arc::new(info)))
        }
        Ok(Err(e)) => {
            stats.ssl_connection_error.inc();
            match Failure::of(&e) {
                Failure::NoCert => stats.ssl_fail_verify_no_cert.inc(),
                Failure::Verify => stats.ssl_fail_verify_error.inc(),
                Failure::Other => {}
            }
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            stats.ssl_connection_error.inc();
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// An admitted downstream connection: counted in its listener's `downstream_cx_active` and in
/// the process-wide total until dropped.
struct Open {
    shared: Arc<Shared>,
    stats: Arc<ListenerStats>,
}

impl Open {
    fn new(shared: Arc<Shared>, stats: Arc<ListenerStats>) -> Open {
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        shared.stats.server.total_connections.inc();
        Open { shared, stats }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.downstream_cx_active.dec();
        self.shared.stats.server.total_connections.dec();
        self.shared.overload.release();
    }
}

/// What an accept loop does when `accept` fails (out of descriptors, out of memory): it pauses
/// instead of spinning (10 ms, doubling up to 1 s, reset by the next accepted connection), counts
/// each failure, and logs once per episode, at most once a minute.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    failures: u64,
    pause: Duration,
    logged: Option<std::time::Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(60);

    /// Records a failed accept; returns how long to pause before the next one.
    pub(crate) fn failed(
        &mut self,
        what: &str,
        local: SocketAddr,
        e: &std::io::Error,
        stats: &crate::stats::ServerStats,
    ) -> Duration {
        stats.downstream_cx_accept_error.inc();
        if self.failures == 0 && self.logged.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(%local, error = %e, "{what}: accept failed; pausing accepts until it succeeds (further failures are only counted in downstream_cx_accept_error)");
            self.logged = Some(std::time::Instant::now());
        }
        self.failures += 1;
        self.pause = if self.failures == 1 {
            Self::FIRST
        } else {
            (self.pause * 2).min(Self::MAX)
        };
        self.pause
    }

    /// Records an accepted connection: the episode, if any, is over.
    pub(crate) fn succeeded(&mut self, what: &str, local: SocketAddr) {
        if self.failures > 0 {
            tracing::info!(%local, failures = self.failures, "{what}: accepting again");
            self.failures = 0;
        }
    }
}

/// A connection's timeouts.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// No request started for this long: closed gracefully.
    idle: Option<Duration>,
    /// No request within this time from accept: closed (HTTP/1 answers 408; later HTTP/1
    /// requests have it from the end of the previous response).
    headers: Option<Duration>,
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes show the HTTP/2 preface (`Ok(true)`) or an HTTP/1 request
/// (`Ok(false)`: as soon as a byte differs). `Err` when the client closed first.
async fn sniff(stream: &mut DownStream, buf: &mut BytesMut) -> std::io::Result<bool> {
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        if tokio::io::AsyncReadExt::read_buf(stream, buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream with bytes already read from it put back in front (the sniffed preface).
    struct Rewind {
        pre: bytes::Bytes,
        #[pin]
        stream: DownStream,
    }
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        this.stream.poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

/// Instant of a [`now_ms`] value.
fn instant_at(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms()))
}

/// Serves one HTTP connection: HTTP/2 when it starts with the preface (hyper's server), else
/// HTTP/1 (Tern's engine). Until the first bytes tell which, the header timeout from accept
/// applies (a silent connection or a partial preface is closed and counted).
#[allow(clippy::too_many_arguments)]
async fn serve_http(
    mut stream: DownStream,
    conn: Arc<Conn>,
    h2: http2::Builder<TokioExecutor>,
    h1: server::Config,
    timeouts: Timeouts,
    limits: ConnLimits,
    drain: CancellationToken,
    kill: CancellationToken,
    stats: &Arc<ListenerStats>,
) {
    let mut buf = BytesMut::new();
    crate::http1::buffers::take(&mut buf);
    let far = h1.start + Duration::from_secs(365 * 24 * 3600);
    let header = timeouts.headers.map_or(far, |t| h1.start + t);
    let idle = timeouts.idle.map_or(far, |t| h1.start + t);
    let sniffed = tokio::select! {
        r = sniff(&mut stream, &mut buf) => r,
        _ = tokio::time::sleep_until(header.min(idle).into()) => {
            if header <= idle {
                stats.downstream_rq_header_timeout.inc();
            } else {
                stats.downstream_cx_idle_timeout.inc();
            }
            return;
        }
        _ = drain.cancelled() => return,
        _ = kill.cancelled() => return,
    };
    match sniffed {
        Ok(true) => {
            let io = Rewind {
                pre: buf.freeze(),
                stream,
            };
            serve_h2(io, conn, h2, timeouts, limits, drain, kill, stats).await
        }
        Ok(false) => serve_h1(stream, buf, conn, h1, drain, kill, stats).await,
        Err(_) => {}
    }
}

/// Serves an HTTP/1 connection with Tern's engine, running its lazy deadlines' alarm (the
/// header and idle timeouts, and the route timeouts of the requests it polls).
async fn serve_h1(
    stream: DownStream,
    buf: BytesMut,
    conn: Arc<Conn>,
    config: server::Config,
    drain: CancellationToken,
    kill: CancellationToken,
    stats: &Arc<ListenerStats>,
) {
    let c = conn.clone();
    // Not boxed: the request's future (about 3 KB) lives in the connection's, which holds that
    // much for its whole life, idle or not, as it holds its buffers; a box per request cost an
    // allocation too large for malloc's thread cache, and a copy of the whole future into it.
    let svc = move |req: crate::message::Request<RequestBody>, start| {
        proxy::handle(req.map(ReqBody::H1), c.clone(), start)
    };
    // The token is watched here, with the kill and the alarm; the engine sees an atomic flag.
    let draining = server::Drain::default();
    let fut = server::serve(stream, buf, config, draining.clone(), svc);
    tokio::pin!(fut);
    let killed = kill.cancelled();
    tokio::pin!(killed);
    let drained = drain.cancelled();
    tokio::pin!(drained);
    let mut drain_seen = false;
    let mut alarm = Alarm::default();
    // The kill and the alarm are polled with their own waker, and only after it fired: the
    // sockets wake this task several times per request.
    let signal = Arc::new(Signal::default());
    let signal_waker = Waker::from(signal.clone());
    let end = std::future::poll_fn(|cx| loop {
        signal.task.register(cx.waker());
        if let Poll::Ready(end) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(end));
        }
        let mut scx = Context::from_waker(&signal_waker);
        alarm.update(&conn.timer, &mut scx);
        if !signal.fired.swap(false, Acquire) {
            return Poll::Pending;
        }
        if killed.as_mut().poll(&mut scx).is_ready() {
            return Poll::Ready(None);
        }
        if !drain_seen && drained.as_mut().poll(&mut scx).is_ready() {
            drain_seen = true;
            draining.start();
            continue;
        }
        if !alarm.fired(&conn.timer, &mut scx) {
            return Poll::Pending;
        }
    })
    .await;
    match end {
        Some(End::FirstHeaderTimeout | End::HeaderTimeout) => {
            stats.downstream_rq_header_timeout.inc()
        }
        Some(End::Rejected(Reject::HeadersTooLarge)) => stats.downstream_rq_header_overflow.inc(),
        Some(End::Idle) => stats.downstream_cx_idle_timeout.inc(),
        Some(End::Io(e)) => tracing::debug!(error = %e, "connection error"),
        _ => {}
    }
}

/// Serves one HTTP/2 connection until it ends, closing it gracefully on drain or when no request
/// has started for `idle_timeout` (in-flight streams always finish first), and at once when no
/// request arrived within `request_headers_timeout` of accept.
#[allow(clippy::too_many_arguments)]
async fn serve_h2(
    io: Rewind,
    conn: Arc<Conn>,
    builder: http2::Builder<TokioExecutor>,
    timeouts: Timeouts,
    limits: ConnLimits,
    drain: CancellationToken,
    kill: CancellationToken,
    stats: &Arc<ListenerStats>,
) {
    let c = conn.clone();
    let max_headers = limits.max_headers_count as usize;
    let st = stats.clone();
    // hyper's `http` types are converted at this edge, both ways.
    let svc = service_fn(move |req: http::Request<Incoming>| {
        if req.headers().len() > max_headers {
            st.downstream_rq_header_overflow.inc();
            return Either::Left(std::future::ready(Ok::<_, std::convert::Infallible>(
                http::Response::from(proxy::LocalReply::TooManyHeaders.response()),
            )));
        }
        let req = crate::message::Request::from(req).map(ReqBody::H2);
        Either::Right(futures_util::FutureExt::map(
            proxy::handle(req, c.clone(), std::time::Instant::now()),
            |r| Ok(http::Response::from(r)),
        ))
    });
    let signal = Arc::new(Signal::default());
    let fut = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(fut);
    let mut closing = false;
    let far = Duration::from_secs(365 * 24 * 3600);
    let header_deadline = timeouts
        .headers
        .map(|t| conn.last_request_ms.load(Relaxed) + t.as_millis() as u64);
    // The next idle or header deadline, in `now_ms` terms.
    let next_deadline = || {
        let idle = timeouts
            .idle
            .map(|t| conn.last_request_ms.load(Relaxed) + t.as_millis() as u64);
        let header = header_deadline.filter(|_| conn.requests.load(Relaxed) == 0);
        match (idle, header) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    };
    // One timer for both: the header deadline while no request came, then the idle one.
    let timer = tokio::time::sleep_until(
        next_deadline().map_or_else(|| tokio::time::Instant::now() + far, instant_at),
    );
    tokio::pin!(timer);
    let drained = drain.cancelled();
    tokio::pin!(drained);
    let killed = kill.cancelled();
    tokio::pin!(killed);
    // The drain, kill and timer futures are polled with their own waker, and only after it
    // fired: the socket wakes this task several times per request.
    let signal_waker = Waker::from(signal.clone());
    let r = std::future::poll_fn(|cx| loop {
        signal.task.register(cx.waker());
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if !signal.fired.swap(false, Acquire) {
            return Poll::Pending;
        }
        let mut scx = Context::from_waker(&signal_waker);
        let mut again = false;
        if killed.as_mut().poll(&mut scx).is_ready() {
            return Poll::Ready(None);
        }
        if !closing && drained.as_mut().poll(&mut scx).is_ready() {
            fut.as_mut().graceful_shutdown();
            closing = true;
            again = true;
        }
        while !closing && timer.as_mut().poll(&mut scx).is_ready() {
            let now = now_ms();
            let first = conn.requests.load(Relaxed) == 0;
            if first && header_deadline.is_some_and(|d| now >= d) {
                stats.downstream_rq_header_timeout.inc();
                return Poll::Ready(None);
            }
            if let Some(timeout) = timeouts.idle {
                let since = now.saturating_sub(conn.last_request_ms.load(Relaxed));
                if since >= timeout.as_millis() as u64 {
                    stats.downstream_cx_idle_timeout.inc();
                    fut.as_mut().graceful_shutdown();
                    closing = true;
                    again = true;
                    break;
                }
            }
            let at = next_deadline().map_or_else(|| tokio::time::Instant::now() + far, instant_at);
            timer.as_mut().reset(at);
        }
        if !again {
            return Poll::Pending;
        }
    })
    .await;
    if let Some(Err(e)) = r {
        tracing::debug!(error = %e, "connection error");
    }
}

/// Wakes a connection's task for its drain, kill and idle futures, and records that one of them
/// may be ready.
#[derive(Debug)]
struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Default for Signal {
    fn default() -> Signal {
        // Set at first, so the first poll registers the drain, kill and idle futures.
        Signal {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Release);
        self.task.wake();
    }
}
