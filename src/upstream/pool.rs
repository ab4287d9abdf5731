//! Per-endpoint pools of upstream connections: keep-alive HTTP/1.1 here, multiplexed HTTP/2 in
//! [`super::h2`]; [`Pool::send`] takes the cluster's protocol (for `auto`, what ALPN chose last
//! for the endpoint).
//!
//! One pool per endpoint (carried across reloads with the endpoint's state), a plain vector of
//! idle senders behind an uncontended mutex: no hashing or lookup per request. A connection goes
//! back to the pool only once both directions are complete: its response body read to the end
//! and the request's body sent whole ([`Exchange`]), so a stalled upload never delays the next
//! request on that connection. A request body that outlasts its response finishes on a
//! connection that then closes ([`Lease::finish_upload`]); anything else closes it at once (its
//! task is aborted). The pool of an endpoint that left its cluster (DNS stopped returning it) is
//! closed: its idle connections close at once and the ones still in use close when their request
//! ends.
//! New connections are where the circuit breakers bite: `max_connections` and
//! `max_pending_requests` are checked before connecting, and refuse at once rather than queue.
//! The cluster's [`ConnOptions`] bound reuse: a connection idle longer than `idle_timeout` is
//! closed when the pool next looks at it (the next request to that endpoint) instead of being
//! used, and one that has served `max_requests_per_connection` requests is closed when its last
//! response ends.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;

use super::body::{ClientBody, Exchange};
use super::connect::{ConnectError, Connector};
use super::h2::{H2Pool, Protocol, Sent, Stream};
use crate::stats::ClusterStats;
use crate::tls::client::UpStream;
use crate::upstream::cluster::{ConnOptions, Endpoint, Limits};

/// Read and write buffer limit of an upstream HTTP/1 connection: what one response may hold in
/// the proxy while its client reads slowly.
const UPSTREAM_BUF_SIZE: usize = 64 * 1024;
/// At most this many idle connections are kept per endpoint.
const MAX_IDLE: usize = 1024;

/// A request body sent upstream: streamed from the client, or in memory (none, or buffered so it
/// can be retried).
pub type UpBody = Either<ClientBody, Full<Bytes>>;

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// TCP connect failed or timed out.
    Connect(String),
    /// The TLS handshake failed (verification, or the protocol).
    Tls(String),
    /// The connection failed after it was established, before response headers.
    Reset(hyper::Error),
    /// `max_connections` reached.
    ConnectionOverflow,
    /// `max_pending_requests` reached.
    PendingOverflow,
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

/// One idle connection: its sender, its task, when it went idle, requests it has served, its
/// TLS version.
type Idle = (
    SendRequest<UpBody>,
    AbortHandle,
    Instant,
    u32,
    Option<&'static str>,
);

/// Idle HTTP/1.1 connections to one endpoint, each with its task, and its HTTP/2 connections.
#[derive(Debug, Default)]
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

/// What [`Pool::send`] returns, as a boxed future (HTTP/2 and HTTP/1.1 call each other).
type Boxed<'a> = std::pin::Pin<
    Box<dyn Future<Output = Result<(Response<Incoming>, Lease), SendError>> + Send + 'a>,
>;

const LEARNED_H1: u8 = 1;
const LEARNED_H2: u8 = 2;

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

/// A connection in use, or an HTTP/2 stream; an HTTP/1.1 connection returns itself to its pool
/// via [`Lease::release`]. Dropped otherwise, it closes its connection at once, even
/// mid-exchange: hyper alone would keep a connection that still writes a request body to an
/// upstream that stopped reading, and with it the client's body and connection. An HTTP/2 stream
/// dropped early is reset by hyper (`CANCEL`); its connection carries on.
#[derive(Debug)]
pub struct Lease(Kind);

#[derive(Debug)]
enum Kind {
    H1(H1Lease),
    H2(Stream),
}

/// An HTTP/1.1 connection in use.
#[derive(Debug)]
struct H1Lease {
    pool: Arc<Pool>,
    tx: SendRequest<UpBody>,
    task: CloseOnDrop,
    /// Requests sent on the connection, this one included.
    uses: u32,
    /// Whether it may serve another request (`max_requests_per_connection`).
    reusable: bool,
    /// The connection's TLS version (`None`: plain TCP).
    tls_version: Option<&'static str>,
}

impl Lease {
    /// Puts the connection back for reuse (call only when the response was fully read and the
    /// request fully sent); an HTTP/2 stream frees its slot.
    pub fn release(self, now: Instant) {
        match self.0 {
            Kind::H1(l) => l.release(now),
            Kind::H2(_) => {}
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
    pub fn finish_upload(self, ex: Arc<Exchange>, idle: Option<Duration>) {
        match self.0 {
            Kind::H1(l) => l.finish_upload(ex, idle),
            Kind::H2(_) => {}
        }
    }
}

impl H1Lease {
    fn release(self, now: Instant) {
        let H1Lease {
            pool,
            tx,
            mut task,
            uses,
            reusable,
            tls_version,
        } = self;
        if tx.is_closed() {
            return;
        }
        if !reusable {
            // Its last request is done: dropping the sender lets hyper close it.
            task.0.take();
            return;
        }
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: a close racing with this release cannot leave a connection behind.
        if pool.closed.load(Relaxed) {
            return;
        }
        if idle.len() >= MAX_IDLE {
            idle.retain(|(tx, ..)| !tx.is_closed());
        }
        if let (true, Some(handle)) = (idle.len() < MAX_IDLE, task.0.take()) {
            idle.push((tx, handle, now, uses, tls_version));
        }
    }
}

impl H1Lease {
    fn finish_upload(self, ex: Arc<Exchange>, idle: Option<Duration>) {
        let H1Lease { tx, mut task, .. } = self;
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
    fn take(self: &Arc<Self>, now: Instant, o: &ConnOptions) -> Option<H1Lease> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Most recently used first: it is the least likely to have been closed by the upstream.
        while let Some((tx, task, since, uses, tls)) = idle.pop() {
            // Dropped unless reused: a stale connection closes with its lease.
            let lease = self.lease(tx, task, uses + 1, o, tls);
            let fresh = o
                .idle_timeout
                .is_none_or(|t| now.saturating_duration_since(since) < t);
            if !lease.tx.is_closed() && fresh {
                return Some(lease);
            }
        }
        None
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
    pub async fn send(
        self: &Arc<Self>,
        t: &Target<'_>,
        mut req: Request<UpBody>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        // HTTP/2 is boxed and HTTP/1.1 inline: an HTTP/1.1 request's future stays as it was.
        match t.options.protocol {
            Protocol::Http1 => {}
            Protocol::Auto if self.learned.load(Relaxed) != LEARNED_H2 => {}
            Protocol::Http2 | Protocol::Auto => return self.send_h2(t, req, None).await,
        }
        // Reused connections may have been closed by the upstream while idle; a request that was
        // not written yet is moved to the next connection instead of failing.
        while let Some(mut lease) = self.take(now, t.options) {
            if lease.tx.ready().await.is_err() {
                continue;
            }
            match lease.tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease(Kind::H1(lease)))),
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
        // Boxed: the cold connect path would otherwise enlarge every request's future.
        self.send_new(t, req).await
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
            let (tx, task, tls) = self.handshake(t, stream).await?;
            // Counted since the connect began; the connection's task uncounts it when it ends.
            std::mem::forget(connecting);
            let mut lease = self.lease(tx, task, 1, t.options, tls);
            drop(pending);
            match lease.tx.send_request(req).await {
                Ok(resp) => Ok((resp, Lease(Kind::H1(lease)))),
                Err(e) => Err(SendError::Reset(e)),
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
                Sent::Response(resp, stream) => Ok((resp, Lease(Kind::H2(stream)))),
                // ALPN chose HTTP/1.1 (`auto`), and the endpoint is known as HTTP/1.1 now.
                Sent::Http1(req) => self.send(t, req, Instant::now()).await,
            }
        })
    }

    fn lease(
        self: &Arc<Self>,
        tx: SendRequest<UpBody>,
        task: AbortHandle,
        uses: u32,
        o: &ConnOptions,
        tls_version: Option<&'static str>,
    ) -> H1Lease {
        H1Lease {
            pool: self.clone(),
            tx,
            task: CloseOnDrop(Some(task)),
            uses,
            reusable: o.max_requests_per_connection.is_none_or(|m| uses < m),
            tls_version,
        }
    }

    /// Sets up HTTP/1.1 on a connected stream and starts the connection's task.
    async fn handshake(
        &self,
        t: &Target<'_>,
        stream: UpStream,
    ) -> Result<(SendRequest<UpBody>, AbortHandle, Option<&'static str>), SendError> {
        let tls = stream.tls_version();
        // hyper's default buffer limit (~400 KB) let a stalled download pin two read buffers of
        // that size; 64 KiB also bounds a response head like Envoy's `max_response_headers_kb`.
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_BUF_SIZE)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let stats = t.stats.clone();
        stats.upstream_cx_http1_total.inc();
        let task = tokio::spawn(async move {
            // Counted down however the task ends, aborted included.
            let _open = GaugeGuard(&stats.upstream_cx_active);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok((tx, task.abort_handle(), tls))
    }
}
