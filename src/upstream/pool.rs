//! Per-endpoint pools of upstream connections: keep-alive HTTP/1.1 here (Tern's own client,
//! [`crate::http1::client`]), multiplexed HTTP/2 in [`super::h2`]; [`Pool::send`] takes the
//! cluster's protocol (for `auto`, what ALPN chose last for the endpoint).
//!
//! One pool per endpoint (carried across reloads with the endpoint's state), a plain vector of
//! idle connections behind an uncontended mutex: no hashing or lookup per request. An HTTP/1.1
//! connection has no task of its own: the request's task writes the request and reads the
//! response, and the connection travels in the response body ([`UpResp::H1`]). It goes back to
//! the pool only once both directions are complete: its response body read to the end with
//! nothing after it, and the request's body sent whole ([`Exchange`]), so a stalled upload never
//! delays the next request on that connection. A request body that outlasts its response
//! finishes in a task of its own on a connection that then closes ([`Lease::finish_upload`]);
//! anything else closes it at once (its response body is dropped). An idle connection is checked
//! before reuse: one the upstream closed, or that has bytes nobody asked for, is closed instead
//! (a connection closed while idle stays counted until the pool next looks at it). The pool of
//! an endpoint that left its cluster (DNS stopped returning it) is closed: its idle connections
//! close at once and the ones still in use close when their request ends.
//! New connections are where the circuit breakers bite: `max_connections` and
//! `max_pending_requests` are checked before connecting, and refuse at once rather than queue.
//! The cluster's [`ConnOptions`] bound reuse: a connection idle longer than `idle_timeout` is
//! closed when the pool next looks at it (the next request to that endpoint) instead of being
//! used, and one that has served `max_requests_per_connection` requests is closed when its last
//! response ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::body::{ClientBody, Exchange};
use super::connect::{ConnectError, Connector};
use super::h2::{H2Pool, Protocol, Sent, Stream};
use crate::http1::client::{self, BodyError, Conn, ResponseBody};
use crate::message::{Request, Response};
use crate::stats::ClusterStats;
use crate::tls::client::UpStream;
use crate::upstream::cluster::{ConnOptions, Endpoint, Limits};

/// At most this many idle connections are kept per endpoint.
const MAX_IDLE: usize = 1024;

/// A request body sent upstream: streamed from the client, or in memory (none, or buffered so it
/// can be retried).
pub type UpBody = Either<ClientBody, Full<Bytes>>;

/// Counts an upstream HTTP/1.1 connection in `upstream_cx_active` for as long as it lives.
#[derive(Debug)]
pub struct Open(Arc<ClusterStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.upstream_cx_active.dec();
    }
}

/// An upstream HTTP/1.1 connection (Tern's own client, driven by the request's task).
pub type H1Conn = Conn<UpStream, Open>;

/// An HTTP/1.1 response body, read from its connection.
pub type H1Body = ResponseBody<UpStream, Open, UpBody>;

/// An upstream response body: HTTP/1.1 (Tern's engine) or HTTP/2 (hyper).
pub enum UpResp {
    /// Read from an HTTP/1.1 connection.
    H1(H1Body),
    /// An HTTP/2 stream.
    H2(Incoming),
}

/// Why an upstream response body ended early.
#[derive(Debug)]
pub enum UpRespError {
    /// HTTP/1.1: the connection, the framing, or the request body still going up.
    H1(BodyError),
    /// HTTP/2: hyper's error (a reset stream, a GOAWAY).
    H2(hyper::Error),
}

impl std::fmt::Display for UpRespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpRespError::H1(e) => e.fmt(f),
            UpRespError::H2(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for UpRespError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpRespError::H1(e) => Some(e),
            UpRespError::H2(e) => Some(e),
        }
    }
}

impl UpRespError {
    /// Whether the upstream broke the body's framing (a bad chunk): a protocol error, not a
    /// connection that ended.
    pub fn is_framing(&self) -> bool {
        matches!(self, UpRespError::H1(BodyError::Framing(e)) if *e != crate::http1::FramingError::Incomplete)
    }
}

impl Body for UpResp {
    type Data = Bytes;
    type Error = UpRespError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpRespError>>> {
        match self.get_mut() {
            UpResp::H1(b) => Pin::new(b).poll_frame(cx).map_err(UpRespError::H1),
            UpResp::H2(b) => Pin::new(b).poll_frame(cx).map_err(UpRespError::H2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpResp::H1(b) => b.is_end_stream(),
            UpResp::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpResp::H1(b) => b.size_hint(),
            UpResp::H2(b) => b.size_hint(),
        }
    }
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// TCP connect failed or timed out.
    Connect(String),
    /// The TLS handshake failed (verification, or the protocol).
    Tls(String),
    /// The connection failed after it was established, before response headers (HTTP/2).
    Reset(hyper::Error),
    /// The connection failed or closed before response headers: HTTP/1.1, or every HTTP/2
    /// connection tried went away before taking the request (a request body that failed is told
    /// by its exchange).
    Closed(String),
    /// The HTTP/1.1 response head was refused: malformed, or framing that cannot be trusted.
    Protocol(String),
    /// `max_connections` reached.
    ConnectionOverflow,
    /// `max_pending_requests` reached.
    PendingOverflow,
}

impl From<client::SendError<UpBody>> for SendError {
    fn from(e: client::SendError<UpBody>) -> SendError {
        match e {
            client::SendError::Head(h) => SendError::Protocol(h.to_string()),
            e => SendError::Closed(e.to_string()),
        }
    }
}

/// Where and how to connect, and what to count.
pub struct Target<'a> {
    /// The endpoint (its address: host names are resolved off the request path).
    pub endpoint: &'a Endpoint,
    /// How the cluster connects (timeout, TLS, socket options).
    pub connector: Connector<'a>,
    /// The cluster's circuit-breaker limits.
    pub limits: &'a Limits,
    /// The cluster's statistics (open connections, pending requests).
    pub stats: &'a Arc<ClusterStats>,
    /// Reuse limits and socket options.
    pub options: &'a ConnOptions,
}

/// One idle connection: when it went idle, requests it has served, its TLS version.
type Idle = (Box<H1Conn>, Instant, u32, Option<&'static str>);

/// Idle HTTP/1.1 connections to one endpoint, and its HTTP/2 connections.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// Set when the endpoint left its cluster: nothing is pooled any more.
    closed: AtomicBool,
    /// The HTTP/2 connections.
    pub h2: H2Pool,
    /// `auto`: what ALPN chose for the endpoint's last new connection ([`LEARNED_H1`],
    /// [`LEARNED_H2`]; 0: not known yet).
    learned: AtomicU8,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .field("closed", &self.closed.load(Relaxed))
            .field("h2", &self.h2)
            .finish()
    }
}

/// What [`Pool::send`] returns, as a boxed future (HTTP/2 and HTTP/1.1 call each other).
type Boxed<'a> =
    Pin<Box<dyn Future<Output = Result<(Response<UpResp>, Lease), SendError>> + Send + 'a>>;

const LEARNED_H1: u8 = 1;
const LEARNED_H2: u8 = 2;

/// A connection in use, or an HTTP/2 stream. An HTTP/1.1 connection itself travels in its
/// response body ([`UpResp::H1`]); [`Lease::release`] takes it from there back to its pool.
/// Dropped otherwise, the body closes its connection at once, even mid-exchange. An HTTP/2
/// stream dropped early is reset by hyper (`CANCEL`); its connection carries on.
#[derive(Debug)]
pub struct Lease(Kind);

#[derive(Debug)]
enum Kind {
    H1(H1Lease),
    H2(Stream),
}

/// What the pool knows of an HTTP/1.1 connection in use.
#[derive(Debug)]
struct H1Lease {
    pool: Arc<Pool>,
    /// Requests sent on the connection, this one included.
    uses: u32,
    /// Whether it may serve another request (`max_requests_per_connection`).
    reusable: bool,
    /// The connection's TLS version (`None`: plain TCP).
    tls_version: Option<&'static str>,
}

impl Lease {
    /// Puts the connection of `body` back for reuse (call only when the response was fully
    /// read and the request fully sent; the body tells whether its connection is clean); an
    /// HTTP/2 stream frees its slot.
    pub fn release(self, body: &mut UpResp, now: Instant) {
        if let (Kind::H1(l), UpResp::H1(b)) = (self.0, body) {
            if let Some(conn) = b.take_reusable() {
                l.release(conn, now);
            }
        }
    }

    /// The connection's TLS version (`%UPSTREAM_TLS_VERSION%`), `None` for plain TCP.
    pub fn tls_version(&self) -> Option<&'static str> {
        match &self.0 {
            Kind::H1(l) => l.tls_version,
            Kind::H2(s) => s.tls_version(),
        }
    }

    /// The connection carries this exchange to its end, then closes instead of being reused
    /// (HTTP/1.1; an HTTP/2 response's framing is the protocol's own).
    pub fn no_reuse(self) -> Lease {
        match self.0 {
            Kind::H1(mut l) => {
                l.reusable = false;
                Lease(Kind::H1(l))
            }
            k => Lease(k),
        }
    }

    /// Lets the connection finish sending a request body that outlasts its complete response
    /// (an early answer), then close; it is never reused. An upstream that stops taking the body
    /// for `idle` while the client is not the one holding it up gets its connection closed then;
    /// a client that stalls is cut by its body's own timers. Without `idle`, nothing bounds it.
    /// On HTTP/2 the body goes on on its own stream (hyper's task) and the slot is freed.
    pub fn finish_upload(self, body: &mut UpResp, ex: Arc<Exchange>, idle: Option<Duration>) {
        let (Kind::H1(_), UpResp::H1(b)) = (self.0, body) else {
            return;
        };
        let Some((mut conn, upload)) = b.take_upload() else {
            return;
        };
        // The rest of the body goes up in a task of its own (the request's is done); the
        // connection closes when it ends, or when the upstream stops taking the body.
        tokio::spawn(async move {
            let finish = upload.finish(&mut conn);
            let Some(idle) = idle else {
                finish.await;
                return;
            };
            let stalled = async {
                let mut seen = ex.progress();
                loop {
                    tokio::time::sleep(idle).await;
                    if ex.done() || ex.fault().is_some() {
                        // The body's end (or fault) is in; the write finishes or fails.
                        return std::future::pending::<()>().await;
                    }
                    let now = ex.progress();
                    if now == seen && !ex.waiting_on_client() {
                        return;
                    }
                    seen = now;
                }
            };
            tokio::select! {
                _ = finish => {}
                () = stalled => {}
            }
        });
    }
}

impl H1Lease {
    fn release(self, conn: Box<H1Conn>, now: Instant) {
        let H1Lease {
            pool,
            uses,
            reusable,
            tls_version,
            ..
        } = self;
        if !reusable {
            // Its last request is done (`max_requests_per_connection`): it closes.
            return;
        }
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: a close racing with this release cannot leave a connection behind.
        if pool.closed.load(Relaxed) || idle.len() >= MAX_IDLE {
            return;
        }
        idle.push((conn, now, uses, tls_version));
    }
}

pin_project_lite::pin_project! {
    /// What [`Pool::send`] returns: an exchange on an idle HTTP/1.1 connection (moved to the
    /// next connections, boxed, if that one turns out closed before a byte went out), or a boxed
    /// one (HTTP/2, a new connection).
    #[project = SendingProj]
    enum Sending<'a, F> {
        Reused {
            #[pin]
            fut: F,
            lease: Option<H1Lease>,
            pool: &'a Arc<Pool>,
            t: &'a Target<'a>,
            now: Instant,
        },
        Other {
            fut: Boxed<'a>,
        },
    }
}

impl<'a, F> Future for Sending<'a, F>
where
    F: Future<Output = Result<Response<H1Body>, client::SendError<UpBody>>>,
{
    type Output = Result<(Response<UpResp>, Lease), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (pool, t, now, req) = match self.as_mut().project() {
            SendingProj::Other { fut } => return fut.as_mut().poll(cx),
            SendingProj::Reused {
                fut,
                lease,
                pool,
                t,
                now,
            } => match std::task::ready!(fut.poll(cx)) {
                Ok(resp) => {
                    let lease = lease.take().expect("polled after it completed");
                    return Poll::Ready(Ok((resp.map(UpResp::H1), Lease(Kind::H1(lease)))));
                }
                Err(client::SendError::Unsent(req)) => (*pool, *t, *now, req),
                Err(e) => return Poll::Ready(Err(e.into())),
            },
        };
        let fut = pool.send_fresh(t, req, now);
        self.set(Sending::Other { fut });
        self.poll(cx)
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
    /// An idle connection that can carry a request: not idle longer than `idle_timeout`, not
    /// closed by the upstream, nothing unasked to read. The others close.
    fn take(self: &Arc<Self>, now: Instant, o: &ConnOptions) -> Option<(Box<H1Conn>, H1Lease)> {
        loop {
            // Most recently used first: it is the least likely to have been closed by the
            // upstream. Checked outside the lock.
            let (mut conn, since, uses, tls) = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.pop()?
            };
            // `now - since < t`, without the subtraction's cost.
            let fresh = o
                .idle_timeout
                .is_none_or(|t| since.checked_add(t).is_none_or(|due| now < due));
            if fresh && conn.is_idle_ok() {
                return Some((conn, self.lease(uses + 1, o, tls)));
            }
        }
    }

    /// Closes the idle connections and keeps no more (the endpoint left its cluster).
    pub fn close(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Relaxed);
        let closing = std::mem::take(&mut *idle);
        drop(idle);
        drop(closing);
        self.h2.close();
    }

    /// Remembers what ALPN chose for the endpoint (`auto`).
    pub(super) fn learn(&self, p: Protocol) {
        let v = match p {
            Protocol::Http2 => LEARNED_H2,
            _ => LEARNED_H1,
        };
        self.learned.store(v, Relaxed);
    }

    /// Whether it was closed.
    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Number of idle connections (for tests and admin).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Sends `req` on a pooled connection, or a new one to the target, in the cluster's
    /// protocol. The connection (HTTP/2: the stream) is the future's until it returns: dropped
    /// before (a timeout), it is closed (reset).
    ///
    /// The common case (HTTP/1.1 on an idle connection) is [`client::send`]'s future with the
    /// lease beside it, nothing more; HTTP/2, new connections and a retry on the next idle
    /// connection are boxed, so they do not enlarge every request's future.
    pub fn send<'a>(
        self: &'a Arc<Self>,
        t: &'a Target<'a>,
        req: Request<UpBody>,
        now: Instant,
    ) -> impl Future<Output = Result<(Response<UpResp>, Lease), SendError>> + Send + 'a {
        match t.options.protocol {
            Protocol::Http1 => {}
            Protocol::Auto if self.learned.load(Relaxed) != LEARNED_H2 => {}
            Protocol::Http2 | Protocol::Auto => {
                return Sending::Other {
                    fut: self.send_h2(t, req, None),
                }
            }
        }
        match self.take(now, t.options) {
            Some((conn, lease)) => Sending::Reused {
                fut: client::send(conn, req),
                lease: Some(lease),
                pool: self,
                t,
                now,
            },
            None => Sending::Other {
                fut: self.send_fresh(t, req, now),
            },
        }
    }

    /// [`Self::send`] once the first idle connection turned out closed (or there was none):
    /// the next idle ones, then a new connection.
    fn send_fresh<'a>(
        self: &'a Arc<Self>,
        t: &'a Target<'a>,
        mut req: Request<UpBody>,
        now: Instant,
    ) -> Boxed<'a> {
        Box::pin(async move {
            // Reused connections may have been closed by the upstream while idle; a request
            // that was not written yet is moved to the next connection instead of failing.
            while let Some((conn, lease)) = self.take(now, t.options) {
                match client::send(conn, req).await {
                    Ok(resp) => return Ok((resp.map(UpResp::H1), Lease(Kind::H1(lease)))),
                    Err(client::SendError::Unsent(r)) => req = r,
                    Err(e) => return Err(e.into()),
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
            self.send_new(t, req).await
        })
    }

    /// [`Self::send`] on a new connection (HTTP/1.1, or what ALPN chose for `auto`).
    fn send_new<'a>(self: &'a Arc<Self>, t: &'a Target<'_>, req: Request<UpBody>) -> Boxed<'a> {
        Box::pin(async move {
            t.stats.upstream_rq_pending_active.inc();
            let pending = GaugeGuard(&t.stats.upstream_rq_pending_active);
            // A connection counts toward `max_connections` from the moment its connect begins
            // (Envoy's), else requests arriving while it connects each open another.
            t.stats.upstream_cx_active.inc();
            let connecting = GaugeGuard(&t.stats.upstream_cx_active);
            let stream = t
                .connector
                .connect_http(t.endpoint)
                .await
                .map_err(|e| match e {
                    ConnectError::Tcp(e) => SendError::Connect(e),
                    ConnectError::Tls(e) => SendError::Tls(e),
                })?;
            if t.options.protocol == Protocol::Auto {
                let h2 = stream.alpn() == Some(b"h2");
                self.learn(if h2 { Protocol::Http2 } else { Protocol::Http1 });
                if h2 {
                    // The HTTP/2 pool counts the connection it adopts.
                    drop((pending, connecting));
                    return self.send_h2(t, req, Some(stream)).await;
                }
            }
            let tls = stream.tls_version();
            t.stats.upstream_cx_http1_total.inc();
            // Counted since the connect began; the connection uncounts itself when it closes.
            std::mem::forget(connecting);
            let conn = Box::new(Conn::new(stream, Open(t.stats.clone())));
            let lease = self.lease(1, t.options, tls);
            drop(pending);
            match client::send(conn, req).await {
                Ok(resp) => Ok((resp.map(UpResp::H1), Lease(Kind::H1(lease)))),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// [`Self::send`] on HTTP/2, with `adopt` (a connection ALPN made HTTP/2) as its new one.
    fn send_h2<'a>(
        self: &'a Arc<Self>,
        t: &'a Target<'_>,
        req: Request<UpBody>,
        adopt: Option<UpStream>,
    ) -> Boxed<'a> {
        Box::pin(async move {
            let closed = self.closed.load(Relaxed);
            match self.h2.send(t, req, adopt, closed).await? {
                Sent::Response(resp, stream) => Ok((resp.map(UpResp::H2), Lease(Kind::H2(stream)))),
                // ALPN chose HTTP/1.1 (`auto`), and the endpoint is known as HTTP/1.1 now.
                Sent::Http1(req) => self.send(t, req, Instant::now()).await,
            }
        })
    }

    fn lease(
        self: &Arc<Self>,
        uses: u32,
        o: &ConnOptions,
        tls_version: Option<&'static str>,
    ) -> H1Lease {
        H1Lease {
            pool: self.clone(),
            uses,
            reusable: o.max_requests_per_connection.is_none_or(|m| uses < m),
            tls_version,
        }
    }
}
