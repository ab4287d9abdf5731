//! Per-endpoint pools of keep-alive HTTP/1.1 upstream connections.
//!
//! One pool per endpoint (carried across reloads with the endpoint's state), a plain vector of
//! idle senders behind an uncontended mutex: no hashing or lookup per request. A connection goes
//! back to the pool only once both directions are complete: its response body read to the end
//! and the request's body sent whole ([`Exchange`]), so a stalled upload never delays the next
//! request on that connection. A request body that outlasts its response finishes on a
//! connection that then closes ([`Lease::finish_upload`]); anything else closes it at once (its
//! task is aborted). The client's request body goes up
//! as a [`ClientBody`], which tells the client's faults ([`BodyFault`]) from the upstream's.
//! New connections are where the circuit breakers bite: `max_connections` and
//! `max_pending_requests` are checked before connecting, and refuse at once rather than queue.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::sync::atomic::{Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use futures_util::task::AtomicWaker;
use std::future::Future;

use crate::stats::{ClusterStats, ListenerStats};
use crate::stream_info::Recorder;
use crate::upstream::cluster::Limits;

/// Idle connections older than this are closed instead of reused (upstreams often close at 60-75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// At most this many idle connections are kept per endpoint.
const MAX_IDLE: usize = 1024;

/// A request body sent upstream: streamed from the client, or in memory (none, or buffered so it
/// can be retried).
pub type UpBody = Either<ClientBody, Full<Bytes>>;

/// What went wrong with a client's request body: the client's fault, never the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BodyFault {
    /// The body broke HTTP framing (a bad chunk).
    Malformed = 1,
    /// The client closed or reset before the body's end.
    Aborted = 2,
    /// No data for the stream idle timeout.
    Idle = 3,
    /// Not complete within the listener's `request_timeout`.
    Timeout = 4,
}

impl BodyFault {
    fn from_bits(b: u8) -> Option<BodyFault> {
        Some(match b {
            1 => BodyFault::Malformed,
            2 => BodyFault::Aborted,
            3 => BodyFault::Idle,
            4 => BodyFault::Timeout,
            _ => return None,
        })
    }

    /// What a body read error from the client's connection means: hyper reports a bad chunk as
    /// invalid data or input, anything else is the body ending early.
    fn of(e: &hyper::Error) -> BodyFault {
        use std::error::Error;
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        match io.map(std::io::Error::kind) {
            Some(std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput) => {
                BodyFault::Malformed
            }
            _ => BodyFault::Aborted,
        }
    }
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyFault::Malformed => "malformed request body",
            BodyFault::Aborted => "request body aborted by the client",
            BodyFault::Idle => "request body idle timeout",
            BodyFault::Timeout => "request timeout",
        })
    }
}

impl std::error::Error for BodyFault {}

/// How a streamed request body stands, shared by the body (polled by the upstream connection's
/// task), the request path (which starts the route timeout when it ends, and tells a client's
/// fault from an upstream failure) and the response (whose connection is reused only when the
/// request went up whole too).
#[derive(Debug, Default)]
pub struct Exchange {
    /// [`DONE`], [`WAITING`], [`RESPONDED`], and a [`BodyFault`] in the high bits.
    state: AtomicU8,
    /// Body bytes passed upstream so far.
    progress: AtomicU64,
    /// The request path, waiting for the body's end.
    waker: AtomicWaker,
}

/// The body's last byte went to the upstream connection.
const DONE: u8 = 1;
/// The body waits for the client (not for the upstream to take more).
const WAITING: u8 = 2;
/// Response headers arrived: `request_timeout` no longer applies.
const RESPONDED: u8 = 4;
const FAULT_SHIFT: u8 = 4;

impl Exchange {
    /// Whether the whole body went upstream.
    pub fn done(&self) -> bool {
        self.state.load(Acquire) & DONE != 0
    }

    /// The client's fault that ended the body, if one did.
    pub fn fault(&self) -> Option<BodyFault> {
        BodyFault::from_bits(self.state.load(Acquire) >> FAULT_SHIFT)
    }

    /// Whether the body is waiting for the client to send more.
    pub fn waiting_on_client(&self) -> bool {
        self.state.load(Acquire) & WAITING != 0
    }

    /// Body bytes passed upstream so far.
    pub fn progress(&self) -> u64 {
        self.progress.load(Relaxed)
    }

    /// The response started: the request is no longer bounded by `request_timeout`.
    pub fn responded(&self) {
        self.state.fetch_or(RESPONDED, Release);
    }

    /// Wakes `w` when the body ends or fails.
    pub fn register(&self, w: &std::task::Waker) {
        self.waker.register(w);
    }

    fn set(&self, bits: u8) {
        self.state.fetch_or(bits, AcqRel);
        self.waker.wake();
    }
}

/// The limits on a client's request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyLimits {
    /// The stream idle timeout: the longest wait for the next piece.
    pub idle: Option<Duration>,
    /// `request_timeout`: when the whole request must have arrived (until the response starts).
    pub deadline: Option<tokio::time::Instant>,
}

pin_project_lite::pin_project! {
    /// A client's request body on its way upstream: bounded by the stream idle timeout and
    /// `request_timeout` (armed only while it waits for the client), ended with a
    /// [`BodyFault`] for the client's faults, counted in the request record, and reporting its
    /// progress and end to its [`Exchange`].
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        rec: Option<Recorder>,
        exchange: Option<Arc<Exchange>>,
        limits: BodyLimits,
        stats: Arc<ListenerStats>,
        idle: Option<Pin<Box<tokio::time::Sleep>>>,
        // Data arrived since the idle timer was last armed.
        fresh: bool,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl ClientBody {
    /// Wraps `inner`. With `rec`, its data counts as the request's received bytes; with
    /// `exchange`, its progress, end and faults are reported there.
    pub fn new(
        inner: Incoming,
        rec: Option<Recorder>,
        exchange: Option<Arc<Exchange>>,
        limits: BodyLimits,
        stats: Arc<ListenerStats>,
    ) -> ClientBody {
        if let Some(r) = &rec {
            r.stream_body();
        }
        ClientBody {
            inner,
            rec,
            exchange,
            limits,
            stats,
            idle: None,
            fresh: false,
            deadline: None,
        }
    }
}

/// Ends a [`ClientBody`] with `fault`: counted, and reported to its exchange.
fn fail(stats: &ListenerStats, exchange: Option<&Arc<Exchange>>, fault: BodyFault) -> BodyFault {
    match fault {
        BodyFault::Malformed => stats.downstream_cx_protocol_error.inc(),
        BodyFault::Aborted => stats.downstream_rq_rx_reset.inc(),
        BodyFault::Idle => stats.downstream_rq_idle_timeout.inc(),
        BodyFault::Timeout => stats.downstream_rq_timeout.inc(),
    }
    if let Some(ex) = exchange {
        ex.set((fault as u8) << FAULT_SHIFT);
    }
    fault
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyFault;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let mut this = self.project();
        let ex = this.exchange.as_ref();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    if let Some(rec) = this.rec.as_ref() {
                        rec.received(n);
                    }
                    if let Some(ex) = ex {
                        ex.progress.fetch_add(n, Relaxed);
                        ex.state.fetch_and(!WAITING, Relaxed);
                    }
                }
                *this.fresh = true;
                if let Some(ex) = ex.filter(|_| this.inner.is_end_stream()) {
                    ex.set(DONE);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(None) => {
                if let Some(ex) = ex {
                    ex.set(DONE);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = BodyFault::of(&e);
                tracing::debug!(error = %e, %fault, "request body");
                Poll::Ready(Some(Err(fail(this.stats, ex, fault))))
            }
            Poll::Pending => {
                if let Some(ex) = ex {
                    ex.state.fetch_or(WAITING, Relaxed);
                }
                // Timers exist only while the body waits for the client.
                let responded = ex.is_some_and(|e| e.state.load(Acquire) & RESPONDED != 0);
                match this.limits.deadline {
                    Some(_) if responded => *this.deadline = None,
                    Some(at) => {
                        let s = this
                            .deadline
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                        if s.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Some(Err(fail(
                                this.stats,
                                ex,
                                BodyFault::Timeout,
                            ))));
                        }
                    }
                    None => {}
                }
                if let Some(idle) = this.limits.idle {
                    let at = tokio::time::Instant::now() + idle;
                    match this.idle.as_mut() {
                        None => *this.idle = Some(Box::pin(tokio::time::sleep_until(at))),
                        Some(s) if *this.fresh => s.as_mut().reset(at),
                        Some(_) => {}
                    }
                    *this.fresh = false;
                    if let Some(s) = this.idle.as_mut() {
                        if s.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Some(Err(fail(this.stats, ex, BodyFault::Idle))));
                        }
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if let Some(ex) = self.exchange.as_ref().filter(|_| end) {
            if !ex.done() {
                ex.set(DONE);
            }
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// TCP connect failed or timed out.
    Connect(String),
    /// The connection failed after it was established, before response headers.
    Reset(hyper::Error),
    /// `max_connections` reached.
    ConnectionOverflow,
    /// `max_pending_requests` reached.
    PendingOverflow,
}

/// Where and how to connect, and what to count.
pub struct Target<'a> {
    /// `host:port` as configured.
    pub addr: &'a str,
    /// The address when it is an IP literal.
    pub resolved: Option<SocketAddr>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// The cluster's circuit-breaker limits.
    pub limits: &'a Limits,
    /// The cluster's statistics (open connections, pending requests).
    pub stats: &'a Arc<ClusterStats>,
}

/// Idle connections to one endpoint, each with its task.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(SendRequest<UpBody>, AbortHandle, Instant)>>,
}

/// Aborts a connection's task when dropped, unless defused: the connection closes at once.
#[derive(Debug)]
struct CloseOnDrop(Option<AbortHandle>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A connection in use; returns itself to its pool via [`Lease::release`]. Dropped otherwise,
/// it closes its connection at once, even mid-exchange: hyper alone would keep a connection
/// that still writes a request body to an upstream that stopped reading, and with it the
/// client's body and connection.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    tx: SendRequest<UpBody>,
    task: CloseOnDrop,
}

impl Lease {
    /// Puts the connection back for reuse (call only when the response was fully read and the
    /// request fully sent).
    pub fn release(self, now: Instant) {
        let Lease { pool, tx, mut task } = self;
        if tx.is_closed() {
            return;
        }
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.retain(|(tx, ..)| !tx.is_closed());
        }
        if let (true, Some(handle)) = (idle.len() < MAX_IDLE, task.0.take()) {
            idle.push((tx, handle, now));
        }
    }
}

impl Lease {
    /// Lets the connection finish sending a request body that outlasts its complete response
    /// (an early answer), then close; it is never reused. An upstream that stops taking the body
    /// for `idle` while the client is not the one holding it up gets its connection closed then;
    /// a client that stalls is cut by its body's own timers. Without `idle`, nothing bounds it.
    pub fn finish_upload(self, ex: Arc<Exchange>, idle: Option<Duration>) {
        let Lease { tx, mut task, .. } = self;
        // No more requests on it: hyper closes the connection once the body is sent.
        drop(tx);
        let (Some(idle), Some(handle)) = (idle, task.0.take()) else {
            return;
        };
        tokio::spawn(async move {
            let mut seen = ex.progress();
            loop {
                tokio::time::sleep(idle).await;
                if ex.done() || ex.fault().is_some() || handle.is_finished() {
                    return;
                }
                let now = ex.progress();
                if now == seen && !ex.waiting_on_client() {
                    handle.abort();
                    return;
                }
                seen = now;
            }
        });
    }
}

/// Decrements a gauge when dropped.
struct GaugeGuard<'a>(&'a crate::stats::Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Pool {
    fn take(self: &Arc<Self>, now: Instant) -> Option<Lease> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Most recently used first: it is the least likely to have been closed by the upstream.
        while let Some((tx, task, since)) = idle.pop() {
            let lease = self.lease(tx, task);
            if !lease.tx.is_closed() && now.saturating_duration_since(since) < IDLE_TIMEOUT {
                return Some(lease);
            }
        }
        None
    }

    /// Number of idle connections (for tests and admin).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Sends `req` on a pooled connection, or a new one to the target. The connection is the
    /// future's until it returns: dropped before (a timeout), it is closed.
    pub async fn send(
        self: &Arc<Self>,
        t: &Target<'_>,
        mut req: Request<UpBody>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        // Reused connections may have been closed by the upstream while idle; a request that was
        // not written yet is moved to the next connection instead of failing.
        while let Some(mut lease) = self.take(now) {
            if lease.tx.ready().await.is_err() {
                continue;
            }
            match lease.tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, lease)),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Reset(e.into_error())),
                },
            }
        }
        if t.stats.upstream_cx_active.get() >= t.limits.max_connections {
            t.stats.upstream_cx_overflow.inc();
            return Err(SendError::ConnectionOverflow);
        }
        if t.stats.upstream_rq_pending_active.get() >= t.limits.max_pending_requests {
            t.stats.upstream_rq_pending_overflow.inc();
            return Err(SendError::PendingOverflow);
        }
        t.stats.upstream_rq_pending_active.inc();
        let pending = GaugeGuard(&t.stats.upstream_rq_pending_active);
        // Boxed: the cold connect path would otherwise enlarge every request's future.
        let (tx, task) = Box::pin(self.connect(t)).await?;
        let mut lease = self.lease(tx, task);
        drop(pending);
        match lease.tx.send_request(req).await {
            Ok(resp) => Ok((resp, lease)),
            Err(e) => Err(SendError::Reset(e)),
        }
    }

    fn lease(self: &Arc<Self>, tx: SendRequest<UpBody>, task: AbortHandle) -> Lease {
        Lease {
            pool: self.clone(),
            tx,
            task: CloseOnDrop(Some(task)),
        }
    }

    async fn connect(
        &self,
        t: &Target<'_>,
    ) -> Result<(SendRequest<UpBody>, AbortHandle), SendError> {
        let connect = async {
            match t.resolved {
                Some(sa) => TcpStream::connect(sa).await,
                None => TcpStream::connect(t.addr).await,
            }
        };
        let stream = match tokio::time::timeout(t.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "timed out after {:?}",
                    t.connect_timeout
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let stats = t.stats.clone();
        stats.upstream_cx_active.inc();
        let task = tokio::spawn(async move {
            // Counted down however the task ends, aborted included.
            let _open = GaugeGuard(&stats.upstream_cx_active);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok((tx, task.abort_handle()))
    }
}
