//! Per-endpoint pools of keep-alive HTTP/1.1 upstream connections.
//!
//! One pool per endpoint (carried across reloads with the endpoint's state), a plain vector of
//! idle senders behind an uncontended mutex: no hashing or lookup per request. A connection goes
//! back to the pool only once its response body was read to the end; anything else closes it.
//! The pool of an endpoint that left its cluster (DNS stopped returning it) is closed: its idle
//! connections close at once and the ones still in use close when their request ends.
//! New connections are where the circuit breakers bite: `max_connections` and
//! `max_pending_requests` are checked before connecting, and refuse at once rather than queue.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
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

use crate::stats::ClusterStats;
use crate::stream_info::Recorder;
use crate::upstream::cluster::Limits;

/// Idle connections older than this are closed instead of reused (upstreams often close at 60-75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// At most this many idle connections are kept per endpoint.
const MAX_IDLE: usize = 1024;

/// A request body sent upstream: streamed from the client, or buffered so it can be retried.
pub type UpBody = Either<Counted, Full<Bytes>>;

pin_project_lite::pin_project! {
    /// A client's request body streamed upstream. With a request record, counts its bytes
    /// (`%BYTES_RECEIVED%`) and keeps the record open until the body has gone up or was dropped.
    pub struct Counted {
        #[pin]
        inner: Incoming,
        rec: Option<Recorder>,
    }
}

impl Counted {
    /// Wraps `inner`. A body of undeclared length (chunked) has its data frames counted into
    /// `rec`'s received bytes; a declared length stays what the record shows.
    pub fn new(inner: Incoming, rec: Option<Recorder>) -> Counted {
        if let Some(r) = &rec {
            if !inner.is_end_stream() && inner.size_hint().exact().is_none() {
                r.stream_body();
            }
        }
        Counted { inner, rec }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let (Some(rec), Poll::Ready(Some(Ok(f)))) = (this.rec.as_ref(), &r) {
            if let Some(d) = f.data_ref() {
                // Ignored by the record unless the body was marked streamed (undeclared length).
                rec.received(d.len() as u64);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
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
    /// The endpoint's address (host names are resolved off the request path).
    pub addr: SocketAddr,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// The cluster's circuit-breaker limits.
    pub limits: &'a Limits,
    /// The cluster's statistics (open connections, pending requests).
    pub stats: &'a Arc<ClusterStats>,
}

/// Idle connections to one endpoint.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(SendRequest<UpBody>, Instant)>>,
    /// Set when the endpoint left its cluster: nothing is pooled any more.
    closed: AtomicBool,
}

/// A connection in use; returns itself to its pool via [`Lease::release`].
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    tx: SendRequest<UpBody>,
}

impl Lease {
    /// Puts the connection back for reuse (call only when the response was fully read).
    pub fn release(self, now: Instant) {
        if self.tx.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: a close racing with this release cannot leave a connection behind.
        if self.pool.closed.load(Relaxed) {
            return;
        }
        if idle.len() >= MAX_IDLE {
            idle.retain(|(tx, _)| !tx.is_closed());
        }
        if idle.len() < MAX_IDLE {
            idle.push((self.tx, now));
        }
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
    fn take(&self, now: Instant) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Most recently used first: it is the least likely to have been closed by the upstream.
        while let Some((tx, since)) = idle.pop() {
            if !tx.is_closed() && now.saturating_duration_since(since) < IDLE_TIMEOUT {
                return Some(tx);
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
    }

    /// Whether [`Pool::close`] was called.
    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Number of idle connections (for tests and admin).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Sends `req` on a pooled connection, or a new one to the target.
    pub async fn send(
        self: &Arc<Self>,
        t: &Target<'_>,
        mut req: Request<UpBody>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        // Reused connections may have been closed by the upstream while idle; a request that was
        // not written yet is moved to the next connection instead of failing.
        while let Some(mut tx) = self.take(now) {
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(tx))),
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
        let mut tx = Box::pin(self.connect(t)).await?;
        drop(pending);
        match tx.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(tx))),
            Err(e) => Err(SendError::Reset(e)),
        }
    }

    fn lease(self: &Arc<Self>, tx: SendRequest<UpBody>) -> Lease {
        Lease {
            pool: self.clone(),
            tx,
        }
    }

    async fn connect(&self, t: &Target<'_>) -> Result<SendRequest<UpBody>, SendError> {
        let stream = match tokio::time::timeout(t.connect_timeout, TcpStream::connect(t.addr)).await
        {
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
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
            stats.upstream_cx_active.dec();
        });
        Ok(tx)
    }
}
