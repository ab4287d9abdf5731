//! A client's request body on its way to an upstream connection ([`ClientBody`]), and what the
//! request path, the pool and the response share about it ([`Exchange`]).
//!
//! The body is polled by the upstream connection's task, so its timers are tokio's: the stream
//! idle timeout and `request_timeout`, armed only while it waits for the client. Its failures are
//! the client's ([`BodyFault`]): a try that fails because of them is not the upstream's failure.
//! The request path follows the body to its end to start the route timeout there, and the pool
//! reuses a connection only when the body went up whole. A gRPC call's body, of unknown length,
//! streams up at once and is copied as it goes (up to the route's buffer limit), so that a retry
//! can send it again once it went up whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::sync::atomic::{Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::http1::server::{BodyError, RequestBody};
use crate::stats::ListenerStats;
use crate::stream_info::Recorder;

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

/// A client's request body as its connection delivers it: Tern's HTTP/1 engine, or hyper's
/// HTTP/2 server. Its errors are already [`BodyFault`]s.
#[derive(Debug)]
pub enum ReqBody {
    /// From an HTTP/1 connection.
    H1(RequestBody),
    /// From an HTTP/2 stream.
    H2(Incoming),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyFault;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        match self.get_mut() {
            ReqBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {
                BodyError::Malformed => BodyFault::Malformed,
                BodyError::Aborted => BodyFault::Aborted,
            }),
            ReqBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(|e| {
                tracing::debug!(error = %e, "request body");
                BodyFault::of(&e)
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::H1(b) => b.is_end_stream(),
            ReqBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::H1(b) => b.size_hint(),
            ReqBody::H2(b) => b.size_hint(),
        }
    }
}

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
    /// A copy of the body for a retry, when one is kept.
    copy: Option<std::sync::Mutex<BodyCopy>>,
}

/// The copy of a streamed body kept for a retry: dropped once it would pass its limit (or the
/// body has trailers, which a replay would not carry).
#[derive(Debug)]
struct BodyCopy {
    limit: usize,
    buf: bytes::BytesMut,
    over: bool,
}

/// The body's last byte went to the upstream connection.
const DONE: u8 = 1;
/// The body waits for the client (not for the upstream to take more).
const WAITING: u8 = 2;
/// Response headers arrived: `request_timeout` no longer applies.
const RESPONDED: u8 = 4;
const FAULT_SHIFT: u8 = 4;

impl Exchange {
    /// An exchange that keeps a copy of the body, up to `limit` bytes, for a retry.
    pub fn with_copy(limit: u64) -> Exchange {
        Exchange {
            copy: Some(std::sync::Mutex::new(BodyCopy {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
                buf: bytes::BytesMut::new(),
                over: false,
            })),
            ..Exchange::default()
        }
    }

    /// The whole body again, for a retry: only when it went up whole, without a fault, and
    /// fit the copy's limit.
    pub fn replay(&self) -> Option<Bytes> {
        let copy = self.copy.as_ref()?;
        if !self.done() || self.fault().is_some() {
            return None;
        }
        let c = copy.lock().unwrap_or_else(|e| e.into_inner());
        (!c.over).then(|| Bytes::copy_from_slice(&c.buf))
    }

    /// Adds a piece of the body to the copy, if one is kept.
    fn keep(&self, data: Option<&Bytes>) {
        let Some(copy) = &self.copy else {
            return;
        };
        let mut c = copy.lock().unwrap_or_else(|e| e.into_inner());
        match data {
            Some(d) if !c.over && c.buf.len() + d.len() <= c.limit => c.buf.extend_from_slice(d),
            // Over the limit, or trailers: no replay.
            _ => {
                c.over = true;
                c.buf = bytes::BytesMut::new();
            }
        }
    }

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
        inner: ReqBody,
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
        inner: ReqBody,
        rec: Option<Recorder>,
        exchange: Option<Arc<Exchange>>,
        limits: BodyLimits,
        stats: Arc<ListenerStats>,
    ) -> ClientBody {
        // A body of undeclared length (chunked) is counted; a declared length stays what the
        // record shows.
        if let Some(r) = &rec {
            if !inner.is_end_stream() && inner.size_hint().exact().is_none() {
                r.stream_body();
            }
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
                        ex.keep(Some(d));
                    }
                } else if let Some(ex) = ex {
                    ex.keep(None);
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
            Poll::Ready(Some(Err(fault))) => {
                tracing::debug!(%fault, "request body");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_records_its_end_or_its_fault() {
        let ex = Exchange::default();
        assert!(!ex.done() && ex.fault().is_none() && !ex.waiting_on_client());
        ex.state.fetch_or(WAITING, Relaxed);
        assert!(ex.waiting_on_client());
        ex.set((BodyFault::Idle as u8) << FAULT_SHIFT);
        assert_eq!(ex.fault(), Some(BodyFault::Idle));
        assert!(!ex.done());
        ex.set(DONE);
        assert!(ex.done());
        for f in [
            BodyFault::Malformed,
            BodyFault::Aborted,
            BodyFault::Idle,
            BodyFault::Timeout,
        ] {
            assert_eq!(BodyFault::from_bits(f as u8), Some(f));
        }
        assert_eq!(BodyFault::from_bits(0), None);
    }

    #[test]
    fn a_copy_replays_only_a_whole_body_within_its_limit() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let ex = Exchange::with_copy(8);
        ex.keep(Some(&b("abc")));
        assert_eq!(ex.replay(), None, "not whole yet");
        ex.keep(Some(&b("de")));
        ex.set(DONE);
        assert_eq!(ex.replay(), Some(b("abcde")));
        let over = Exchange::with_copy(4);
        over.keep(Some(&b("abc")));
        over.keep(Some(&b("de")));
        over.set(DONE);
        assert_eq!(over.replay(), None, "over the limit");
        let trailers = Exchange::with_copy(100);
        trailers.keep(Some(&b("abc")));
        trailers.keep(None);
        trailers.set(DONE);
        assert_eq!(trailers.replay(), None, "trailers are not replayed");
        let faulted = Exchange::with_copy(100);
        faulted.keep(Some(&b("abc")));
        faulted.set((BodyFault::Aborted as u8) << FAULT_SHIFT);
        faulted.set(DONE);
        assert_eq!(faulted.replay(), None);
        assert_eq!(Exchange::default().replay(), None, "no copy kept");
    }
}
