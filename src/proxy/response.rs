//! The response phase: an upstream response body streamed to the client, with the stream idle
//! timeout, the endpoint counted as busy until it ends, its connection back to the pool only
//! when read to the end, and the request's end recorded (latency, record) when it ends or drops.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};

use crate::stats::{ClusterStats, ListenerStats, RouteStats};
use crate::stream_info::{Flags, Recorder};
use crate::upstream::cluster::ActiveRequest;
use crate::upstream::pool::Lease;

/// A lazily armed body idle timer: no timer exists while data keeps arriving.
pub struct IdleTimer {
    pub(super) timeout: Duration,
    pub(super) sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) stats: Arc<ListenerStats>,
}

/// The error a body ends with when the stream idle timeout expires.
#[derive(Debug)]
pub struct StreamIdleTimeout;

impl std::fmt::Display for StreamIdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream idle timeout")
    }
}

impl std::error::Error for StreamIdleTimeout {}

/// End-of-response bookkeeping carried by an upstream body: latency histograms and the end of
/// the response in the request's record, when the body ends or is dropped.
pub struct Finish {
    pub(super) start: Instant,
    pub(super) sent: Instant,
    pub(super) listener: Arc<ListenerStats>,
    pub(super) cluster: Arc<ClusterStats>,
    pub(super) route: Arc<RouteStats>,
    /// The request's record, when the listener has observers.
    pub(super) rec: Option<Recorder>,
    pub(super) bytes: u64,
    pub(super) ended: bool,
    // Set when the body ended with an error (idle timeout: SI; an upstream error: UR).
    pub(super) outcome: Flags,
}

impl Finish {
    /// Records the response's end; returns the time read for it.
    fn done(&mut self, at_end: bool) -> Instant {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.start);
        self.listener.downstream_rq_time.record(took);
        self.route.rq_time.record(took);
        self.cluster
            .upstream_rq_time
            .record(now.saturating_duration_since(self.sent));
        if let Some(rec) = self.rec.take() {
            let mut flags = self.outcome;
            if !at_end && !self.ended && self.outcome == Flags::default() {
                flags.set(Flags::DC);
            }
            rec.response_done(self.bytes, flags);
        }
        now
    }
}

const ERRORED: Flags = Flags::UR;

pin_project_lite::pin_project! {
    /// An upstream response body that keeps its endpoint counted as busy until it ends, returns
    /// its connection to the pool if it was read to the end, and ends with an error when no data
    /// arrives for the stream idle timeout.
    pub struct Upstream<B: Body> {
        #[pin]
        pub(super) inner: B,
        pub(super) lease: Option<Lease>,
        pub(super) _active: ActiveRequest,
        pub(super) idle: Option<IdleTimer>,
        pub(super) fin: Finish,
    }

    impl<B: Body> PinnedDrop for Upstream<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let now = this.fin.done(this.inner.is_end_stream());
            if this.inner.is_end_stream() {
                if let Some(lease) = this.lease.take() {
                    lease.release(now);
                }
            }
        }
    }
}

impl<B> Body for Upstream<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(r) => {
                if let Some(t) = this.idle.as_mut() {
                    t.sleep = None;
                }
                match &r {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            this.fin.bytes += bytes::Buf::remaining(d) as u64;
                        }
                    }
                    Some(Err(_)) => this.fin.outcome.set(ERRORED),
                    None => this.fin.ended = true,
                }
                Poll::Ready(r.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if let Some(t) = this.idle.as_mut() {
                    let timeout = t.timeout;
                    let sleep = t
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
                        t.stats.downstream_rq_idle_timeout.inc();
                        this.fin.outcome.set(Flags::SI);
                        return Poll::Ready(Some(Err(Box::new(StreamIdleTimeout))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
