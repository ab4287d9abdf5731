//! The response phase: an upstream response head checked for framing ([`check_framing`]), its
//! body streamed to the client with the stream idle timeout, the endpoint counted as busy until
//! it ends, its connection back to the pool only when read to the end and the request's body
//! sent whole, and the request's end recorded (latency, record) when it ends or drops. A gRPC
//! response's `grpc-status` trailer is counted and recorded as it passes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderValue;
use hyper::body::{Body, Frame, SizeHint};

use crate::message::Fields;
use crate::stats::{ClusterStats, ListenerStats, RouteStats};
use crate::stream_info::{Flags, Recorder};
use crate::upstream::body::{BodyFault, Exchange};
use crate::upstream::cluster::ActiveRequest;
use crate::upstream::h2::Failure;
use crate::upstream::pool::{Lease, UpResp, UpRespError};

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

/// The error a body ends with when the stream's limit passes (`max_stream_duration`, or the
/// client's `grpc-timeout` under it).
#[derive(Debug)]
pub struct StreamDurationExceeded;

impl std::fmt::Display for StreamDurationExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("max stream duration reached")
    }
}

impl std::error::Error for StreamDurationExceeded {}

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
    // Set when the body ended with an error (idle timeout: SI; the upstream's: UR or UC).
    pub(super) outcome: Flags,
    /// The request is gRPC: the trailers' `grpc-status` is counted and recorded.
    pub(super) grpc: bool,
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

/// The flag of a response body the upstream cut: `UR` for a reset stream (HTTP/2
/// `RST_STREAM`), `UC` for a connection that ended.
fn upstream_cut(e: &UpRespError) -> Flags {
    match Failure::of(e) {
        Failure::RemoteReset | Failure::RefusedStream => Flags::UR,
        Failure::GoAway | Failure::ConnectionTermination => Flags::UC,
    }
}

/// What an upstream response head says about its framing, as checked before it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// One way to read the body: forwarded as it is.
    Clean,
    /// A `Content-Length` repeated with one value (`2, 2`): forwarded once; the connection is
    /// not reused.
    Normalised,
    /// `Content-Length` with `Transfer-Encoding`, or a transfer coding other than chunked: the
    /// body hyper decoded is not the one the head describes (502, as Envoy's codec does).
    Broken,
}

/// Checks (and repairs what is safe to repair in) the framing headers of an upstream response.
/// hyper reads a CL + TE body as chunked and keeps the upstream's `Content-Length`, and reads a
/// non-chunked coding to the connection's end; both would be forwarded with a head that does not
/// match the body. Repeated equal lengths are accepted by hyper (different ones it refuses).
pub(super) fn check_framing(h: &mut Fields) -> Framing {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let te = h.get_all(TRANSFER_ENCODING).iter().next_back().map(|v| {
        v.as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    match te {
        Some(_) if h.contains_key(CONTENT_LENGTH) => return Framing::Broken,
        Some(false) => return Framing::Broken,
        _ => {}
    }
    let mut lines = h.get_all(CONTENT_LENGTH).iter();
    let (Some(first), more) = (lines.next(), lines.next().is_some()) else {
        return Framing::Clean;
    };
    if !more && !first.as_bytes().contains(&b',') {
        return Framing::Clean;
    }
    let one = first
        .as_bytes()
        .split(|b| *b == b',')
        .next()
        .map(|v| v.trim_ascii().to_vec())
        .and_then(|v| HeaderValue::from_bytes(&v).ok());
    match one {
        Some(v) => {
            h.insert(CONTENT_LENGTH, v);
            Framing::Normalised
        }
        None => Framing::Broken,
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body that keeps its endpoint counted as busy until it ends, returns
    /// its connection to the pool if it was read to the end, and ends with an error when no data
    /// arrives for the stream idle timeout.
    pub struct Upstream {
        #[pin]
        pub(super) inner: UpResp,
        pub(super) lease: Option<Lease>,
        // A streamed request body: the connection is reused only once it went up whole too.
        pub(super) exchange: Option<Arc<Exchange>>,
        pub(super) _active: ActiveRequest,
        pub(super) idle: Option<IdleTimer>,
        pub(super) fin: Finish,
        // The stream's limit (`max_stream_duration`, the client's `grpc-timeout`): the body is
        // cut when it passes.
        pub(super) cap: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl PinnedDrop for Upstream {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Trailers end a message: a body whose trailers passed was read to its end, though
            // the client stops polling before the inner body says so.
            let at_end = this.fin.ended || this.inner.is_end_stream();
            let now = this.fin.done(at_end);
            // Read to the end: the connection is reused if the request went up whole too, else
            // it finishes the upload and closes. Not read to the end: the lease closes it.
            if let (true, Some(lease)) = (at_end, this.lease.take()) {
                let inner = this.inner.get_mut();
                match this.exchange.as_ref().filter(|e| !e.done()) {
                    None => lease.release(inner, now),
                    Some(ex) => lease.finish_upload(inner, ex.clone(), this.idle.as_ref().map(|t| t.timeout)),
                }
            }
        }
    }
}

impl Body for Upstream {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(cap) = this.cap.as_mut() {
            if std::future::Future::poll(cap.as_mut(), cx).is_ready() {
                this.fin.cluster.upstream_rq_timeout.inc();
                this.fin.outcome.set(Flags::UT);
                *this.cap = None;
                return Poll::Ready(Some(Err(Box::new(StreamDurationExceeded))));
            }
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(r) => {
                if let Some(t) = this.idle.as_mut() {
                    t.sleep = None;
                }
                match &r {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            this.fin.bytes += bytes::Buf::remaining(d) as u64;
                        } else if let Some(t) = f.trailers_ref() {
                            this.fin.ended = true;
                            if let Some(code) = crate::grpc::status_of(t).filter(|_| this.fin.grpc)
                            {
                                this.fin.cluster.upstream_rq_grpc_status.record(code);
                                if let Some(rec) = &this.fin.rec {
                                    rec.update(|i| i.grpc_status = Some(code));
                                }
                            }
                        }
                    }
                    // Cut because the client's upload failed: the client's fault's flag. A
                    // body whose framing the upstream broke (a bad chunk) is its protocol error
                    // (Envoy: `UPE`); one cut short, a connection that ended (`UC`).
                    Some(Err(e)) => {
                        let flag = match this.exchange.as_ref().and_then(|e| e.fault()) {
                            Some(BodyFault::Idle) => Flags::SI,
                            Some(BodyFault::Malformed) => Flags::DPE,
                            Some(BodyFault::Aborted | BodyFault::Timeout) => Flags::DC,
                            None if e.is_framing() => {
                                this.fin.cluster.upstream_cx_protocol_error.inc();
                                Flags::UPE
                            }
                            None => upstream_cut(e),
                        };
                        this.fin.outcome.set(flag);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[(&str, &str)]) -> Fields {
        let mut h = Fields::new();
        for (k, v) in lines {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn framing_is_clean_normalised_or_broken() {
        let mut h = head(&[("content-length", "5")]);
        assert_eq!(check_framing(&mut h), Framing::Clean);
        let mut h = head(&[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(check_framing(&mut h), Framing::Clean);
        let mut h = head(&[]);
        assert_eq!(check_framing(&mut h), Framing::Clean);
        let mut h = head(&[("content-length", "2, 2"), ("content-length", "2")]);
        assert_eq!(check_framing(&mut h), Framing::Normalised);
        let lines: Vec<_> = h.get_all("content-length").iter().collect();
        assert_eq!(lines, vec!["2"]);
        for bad in [
            &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "gzip")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "gzip"),
            ],
        ] {
            assert_eq!(check_framing(&mut head(bad)), Framing::Broken, "{bad:?}");
        }
    }
}
