//! Accept loops: one per bound address, serving HTTP/1.1 + HTTP/2 (prior knowledge) or TCP.
//!
//! A listener keeps its socket across reloads while its address stays configured; what it does
//! with each connection is read from the current snapshot at accept time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{self, Conn};
use crate::snapshot::ListenerKind;
use crate::state::Shared;
use crate::stats::ListenerStats;
use crate::timer::now_ms;
use crate::timer::{Alarm, LazyTimer};

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
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let snap = shared.snapshot.load();
        let Some(lr) = snap.listeners.get(&local) else {
            continue;
        };
        let stats = lr.stats.clone();
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
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
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(conn.timer.clone())
                    .header_read_timeout(lr.request_headers_timeout);
                builder.http2().timer(TokioTimer::new());
                let idle_timeout = lr.idle_timeout;
                let (kill, drain) = (kill.clone(), drain_all.clone());
                let pp = lr.proxy_protocol;
                tracker.spawn(async move {
                    let (mut stream, mut conn) = (stream, conn);
                    if let Some(pp) = &pp {
                        match crate::proxy_protocol::accept(&mut stream, pp, &stats, &kill).await {
                            Ok(source) => Conn::proxied(&mut conn, source),
                            Err(_) => return stats.downstream_cx_active.dec(),
                        }
                    }
                    serve_http(stream, conn, builder, idle_timeout, drain, kill, &stats).await;
                    stats.downstream_cx_active.dec();
                });
            }
            ListenerKind::Tcp(cluster) => {
                let cluster = cluster.clone();
                let kill = kill.clone();
                let pp = lr.proxy_protocol;
                tracker.spawn(async move {
                    let mut stream = stream;
                    if let Some(pp) = &pp {
                        if crate::proxy_protocol::accept(&mut stream, pp, &stats, &kill)
                            .await
                            .is_err()
                        {
                            return stats.downstream_cx_active.dec();
                        }
                    }
                    tokio::select! {
                        _ = crate::tcp::proxy(stream, cluster) => {}
                        _ = kill.cancelled() => {}
                    }
                    stats.downstream_cx_active.dec();
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

/// What a client gets when its request headers do not arrive within `request_headers_timeout`.
const REQUEST_TIMEOUT_REPLY: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 24\r\nconnection: close\r\n\r\nrequest headers timeout\n";

/// Serves one HTTP connection until it ends, closing it gracefully on drain or when no request
/// has started for `idle_timeout` (in-flight requests and streams always finish first).
async fn serve_http(
    stream: tokio::net::TcpStream,
    conn: Arc<Conn>,
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Option<Duration>,
    drain: CancellationToken,
    kill: CancellationToken,
    stats: &ListenerStats,
) {
    let c = conn.clone();
    let svc = service_fn(move |req| proxy::handle(req, c.clone()));
    // A second handle on the socket, to answer 408 after hyper gives up on slow headers (hyper
    // itself only closes). Best effort: without it the connection is just closed.
    let raw = {
        use std::os::fd::AsFd;
        stream
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::net::TcpStream::from)
    };
    let fut = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(fut);
    let mut closing = false;
    let far = Duration::from_secs(365 * 24 * 3600);
    let idle = tokio::time::sleep(idle_timeout.unwrap_or(far));
    tokio::pin!(idle);
    let drained = drain.cancelled();
    tokio::pin!(drained);
    let killed = kill.cancelled();
    tokio::pin!(killed);
    // The drain, kill, idle and alarm futures are polled with their own waker, and only after it
    // fired: the socket wakes this task several times per request, and polling four more futures
    // on each of those wake-ups is a measurable part of a request's cost.
    let signal = Arc::new(Signal::default());
    let signal_waker = Waker::from(signal.clone());
    let mut alarm = Alarm::default();
    let r = std::future::poll_fn(|cx| loop {
        signal.task.register(cx.waker());
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        let mut scx = Context::from_waker(&signal_waker);
        alarm.update(&conn.timer, &mut scx);
        if !signal.fired.swap(false, Acquire) {
            return Poll::Pending;
        }
        // After the alarm, the connection is polled again: that checks the HTTP/1 deadlines.
        let mut again = alarm.fired(&conn.timer, &mut scx);
        if killed.as_mut().poll(&mut scx).is_ready() {
            return Poll::Ready(None);
        }
        if !closing && drained.as_mut().poll(&mut scx).is_ready() {
            fut.as_mut().graceful_shutdown();
            closing = true;
            again = true;
        }
        if let (false, Some(timeout)) = (closing, idle_timeout) {
            while idle.as_mut().poll(&mut scx).is_ready() {
                let since = Duration::from_millis(
                    now_ms().saturating_sub(conn.last_request_ms.load(Relaxed)),
                );
                if since >= timeout {
                    stats.downstream_cx_idle_timeout.inc();
                    fut.as_mut().graceful_shutdown();
                    closing = true;
                    again = true;
                    break;
                }
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + (timeout - since));
            }
        }
        if !again {
            return Poll::Pending;
        }
    })
    .await;
    let Some(Err(e)) = r else {
        return;
    };
    let timeout = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(|h| h.is_timeout());
    if timeout {
        stats.downstream_rq_header_timeout.inc();
        // Only when no request was served yet: an idle keep-alive connection that times out is
        // closed silently (a 408 there could be mistaken for the answer to the client's next
        // request).
        if conn.requests.load(Relaxed) == 0 {
            if let Some(mut raw) = raw {
                use std::io::Write;
                let _ = raw.write_all(REQUEST_TIMEOUT_REPLY);
            }
        }
    }
    tracing::debug!(error = %e, "connection error");
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
