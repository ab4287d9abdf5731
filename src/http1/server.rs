//! One downstream HTTP/1 connection: read a request head, call the service, write its response,
//! then the next request, all in the connection's own task (no dispatcher, no channel).
//!
//! The stream and the read buffer are shared with the request body ([`RequestBody`]) behind a
//! mutex that is only held for one poll: the body may be polled by another task (the upstream
//! connection's) while this one writes the response, so a full-duplex exchange works. Each
//! request's body has an id; once the connection moves on, a body left behind reads nothing more.
//!
//! Pipelined requests are answered in order: the next head is read only after the current
//! response is written, and bytes read past a request stay in the buffer. A body the service did
//! not read to its end closes the connection unless its rest is already buffered. `Expect:
//! 100-continue` gets its `100 Continue` when the body is first polled, unless the response has
//! started. A `101` response hands the stream and the bytes read past the head to the request's
//! [`OnUpgrade`]. A refused head is answered (400, 414, 431, 501) with `connection: close`, then
//! the connection closes. The first head must arrive within the header timeout of the start
//! (else 408), later ones within it of the end of the previous response (else the connection
//! closes silently: a 408 there could be taken for the answer to a request the client sends at
//! that moment); the idle timeout closes a connection whose last request started that long ago.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRAILER, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::buffers;
use super::decode::Decoder;
use super::encode::Encoder;
use super::request::{self, BodyLength, Limits, Reject};
use super::FramingError;
use crate::message::{Fields, Request, Response};
use crate::timer::{Deadline, LazyTimer};

/// How a connection is served.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Request head limits.
    pub limits: Limits,
    /// `request_headers_timeout`: for the first head from `start`, for later ones from the end
    /// of the previous response.
    pub header_timeout: Option<Duration>,
    /// `idle_timeout`: no request started for this long closes the connection between requests.
    pub idle_timeout: Option<Duration>,
    /// When the connection started (the first head's timeout counts from here).
    pub start: Instant,
    /// The connection's lazy timer (its task runs the alarm), else tokio's timers.
    pub timer: Option<LazyTimer>,
}

/// A connection's drain: once started, the connection closes between requests. Checked with an
/// atomic load (a `CancellationToken` takes a lock for that, and a waiter list entry to wait).
#[derive(Debug, Clone, Default)]
pub(crate) struct Drain(Arc<DrainState>);

#[derive(Debug, Default)]
struct DrainState {
    started: std::sync::atomic::AtomicBool,
    waker: AtomicWaker,
}

impl Drain {
    /// Starts the drain, waking the connection if it waits for its next request.
    pub(crate) fn start(&self) {
        self.0.started.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    fn started(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }

    /// Whether it started, else `cx` is woken when it does.
    fn poll_started(&self, cx: &mut Context<'_>) -> bool {
        if self.started() {
            return true;
        }
        self.0.waker.register(cx.waker());
        self.started()
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client closed (between requests, or while its request was served: then it was
    /// dropped), or a response ended the connection.
    Closed,
    /// A head was refused and answered.
    Rejected(Reject),
    /// The first head did not arrive in time (answered 408).
    FirstHeaderTimeout,
    /// A later head did not arrive in time (closed silently).
    HeaderTimeout,
    /// No request started for the idle timeout.
    Idle,
    /// Closed for the drain between requests.
    Drained,
    /// Handed over to an upgrade.
    Upgraded,
    /// The response body failed part way (the response was cut).
    ResponseBody,
    /// Reading or writing failed.
    Io(std::io::Error),
}

/// A stream the engine serves.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An upgraded connection: the raw stream, with the bytes already read from it in front.
pub(crate) struct Upgraded {
    read: Bytes,
    io: Box<dyn Io>,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("read", &self.read.len())
            .finish()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The pending upgrade of a request that asked for one (in its extensions): resolves to the
/// connection once a `101` response to it was written, or fails if the response was another.
#[derive(Debug)]
pub(crate) struct OnUpgrade(tokio::sync::oneshot::Receiver<Upgraded>);

/// Where a request keeps its pending upgrade (extensions must be `Clone`).
#[derive(Debug, Clone)]
struct UpgradeSlot(Arc<Mutex<Option<tokio::sync::oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    /// Takes the pending upgrade out of a request's extensions.
    pub(crate) fn on<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
        let slot = req.extensions_mut().remove::<UpgradeSlot>()?;
        let rx = slot.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some(OnUpgrade(rx))
    }
}

impl Future for OnUpgrade {
    type Output = Result<Upgraded, NotUpgraded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_err(|_| NotUpgraded)
    }
}

/// The connection was not upgraded.
#[derive(Debug)]
pub(crate) struct NotUpgraded;

impl std::fmt::Display for NotUpgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection was not upgraded")
    }
}

impl std::error::Error for NotUpgraded {}

/// What went wrong with a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// The body broke its framing (a bad chunk): the connection closes.
    Malformed,
    /// The client closed (or the read failed) before the body's end.
    Aborted,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::Malformed => "malformed request body",
            BodyError::Aborted => "request body cut short",
        })
    }
}

impl std::error::Error for BodyError {}

/// The state the connection and its current request body share.
struct Shared<S> {
    /// `None` once handed to an upgrade.
    io: Option<S>,
    rbuf: BytesMut,
    /// The id of the body that may read; others are left behind.
    body_id: u64,
    /// The current body's framing (`None`: no body, or done).
    decoder: Option<Decoder>,
    /// `100 Continue` is owed, bytes of it written so far.
    continue_owed: Option<usize>,
    /// The client closed its side.
    eof: bool,
    /// The body broke its framing: the connection must close.
    broken: bool,
    /// The connection's task, waiting for the body to end or be dropped after the response.
    waiting: Option<std::task::Waker>,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Bytes read at once, and the most read ahead while a request is served.
const READ_CHUNK: usize = buffers::SIZE;

impl<S: Io> Shared<S> {
    /// Reads more bytes into the buffer: Ready(Ok(0)) at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.rbuf.capacity() == 0 {
            buffers::take(&mut self.rbuf);
        } else if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let r = tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.rbuf);
        if let Poll::Ready(Ok(0)) = r {
            self.eof = true;
        }
        r
    }

    fn poll_frame(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let r = self.poll_frame_inner(id, cx);
        if self.decoder.is_none() {
            if let Some(w) = self.waiting.take() {
                w.wake();
            }
        }
        r
    }

    fn poll_frame_inner(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.body_id != id {
            // The connection moved on (the response was written): whatever was not read is lost.
            return Poll::Ready(Some(Err(BodyError::Aborted)));
        }
        if let Some(done) = self.continue_owed {
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Some(Err(BodyError::Aborted)));
            };
            let mut at = done;
            while at < CONTINUE.len() {
                match Pin::new(&mut *io).poll_write(cx, &CONTINUE[at..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Some(Err(BodyError::Aborted)))
                    }
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Pending => {
                        self.continue_owed = Some(at);
                        return Poll::Pending;
                    }
                }
            }
            self.continue_owed = None;
        }
        loop {
            let Some(dec) = self.decoder.as_mut() else {
                return Poll::Ready(None);
            };
            match dec.decode(&mut self.rbuf) {
                Ok(Some(f)) => return Poll::Ready(Some(Ok(f))),
                Ok(None) if dec.is_done() => {
                    self.decoder = None;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "request body framing");
                    self.broken = true;
                    self.decoder = None;
                    return Poll::Ready(Some(Err(match e {
                        FramingError::Incomplete => BodyError::Aborted,
                        _ => BodyError::Malformed,
                    })));
                }
            }
            if self.eof {
                self.decoder = None;
                self.broken = true;
                return Poll::Ready(Some(Err(BodyError::Aborted)));
            }
            match self.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => {
                    self.eof = true;
                }
            }
        }
    }
}

/// What a [`RequestBody`] reads from (the connection's shared state, whatever its stream).
trait Source: Send + Sync {
    fn poll_frame(
        &self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>;

    /// The body is dropped: the connection's task, if it waits for that.
    fn release(&self) -> Option<std::task::Waker>;
}

impl<S: Io> Source for Mutex<Shared<S>> {
    fn poll_frame(
        &self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        lock(self).poll_frame(id, cx)
    }

    fn release(&self) -> Option<std::task::Waker> {
        lock(self).waiting.take()
    }
}

fn lock<S>(m: &Mutex<Shared<S>>) -> MutexGuard<'_, Shared<S>> {
    // A panic while holding it leaves plain buffers behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's body as the client sends it on an HTTP/1 connection.
pub(crate) struct RequestBody {
    source: Option<Arc<dyn Source>>,
    id: u64,
    /// Bytes still to come, when the length was declared.
    remaining: Option<u64>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("id", &self.id)
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(src) = self.source.take() {
            let waiting = src.release();
            // The reference goes first: the woken connection counts what is left.
            drop(src);
            if let Some(w) = waiting {
                w.wake();
            }
        }
    }
}

impl RequestBody {
    /// An empty body.
    pub(crate) fn empty() -> RequestBody {
        RequestBody {
            source: None,
            id: 0,
            remaining: Some(0),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(src) = &self.source else {
            return Poll::Ready(None);
        };
        let r = src.poll_frame(self.id, cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(rem), Some(d)) = (self.remaining.as_mut(), f.data_ref()) {
                    *rem = rem.saturating_sub(d.len() as u64);
                }
            }
            Poll::Ready(_) => {
                self.source = None;
                if matches!(r, Poll::Ready(None)) {
                    self.remaining = Some(0);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_none() || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Serves one connection: `rbuf` holds bytes already read from `io` (a sniffed prefix). Ends
/// at the client's close, a refused head, a timeout, the drain between requests, an upgrade, or
/// a response that closes the connection.
pub(crate) async fn serve<S, F, Fut, B>(
    io: S,
    rbuf: BytesMut,
    config: Config,
    drain: Drain,
    mut service: F,
) -> End
where
    S: Io,
    F: FnMut(Request<RequestBody>, Instant) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let shared = Arc::new(Mutex::new(Shared {
        io: Some(io),
        rbuf,
        body_id: 0,
        decoder: None,
        continue_owed: None,
        eof: false,
        broken: false,
        waiting: None,
    }));
    // Held only while a response is written (see `buffers`).
    let mut wbuf = BytesMut::new();
    let mut first = true;
    let mut last_start = config.start;
    let mut waiting_since = config.start;
    loop {
        // 1. The next head.
        let head = match read_head(&shared, &config, &drain, first, last_start, waiting_since).await
        {
            Ok(h) => h,
            Err(end) => {
                let answer = match &end {
                    End::Rejected(r) => Some(r.status()),
                    End::FirstHeaderTimeout => Some(StatusCode::REQUEST_TIMEOUT),
                    _ => None,
                };
                if let Some(status) = answer {
                    wbuf.clear();
                    write_error(status, &mut wbuf);
                    let _ = write_all(&shared, &mut wbuf).await;
                }
                shutdown(&shared).await;
                return end;
            }
        };
        first = false;
        last_start = Instant::now();
        let method_head = head.parts.method == Method::HEAD;
        let connect = head.parts.method == Method::CONNECT;
        let version = head.parts.version;
        let trailers_ok = head.te_trailers;
        let wants_upgrade = head.upgrade.is_some() || connect;
        // A refused switch closes: a client may send the new protocol's bytes without waiting
        // for the 101, and they must not be read as requests. h2c is served as a plain request
        // (its client waits for the 101).
        let switch_asked = head.upgrade == Some(false);
        let mut keep_alive = head.keep_alive;

        // 2. The request, its body reading from the shared state.
        let decoder = match head.body {
            BodyLength::Length(0) => None,
            BodyLength::Length(n) => Some(Decoder::length(n)),
            BodyLength::Chunked => Some(Decoder::chunked()),
        };
        let continue_asked = head.expect_continue && decoder.is_some();
        let id = {
            let mut s = lock(&shared);
            s.body_id += 1;
            s.broken = false;
            s.continue_owed = continue_asked.then_some(0);
            s.decoder = decoder;
            s.body_id
        };
        let body = match head.body {
            BodyLength::Length(0) => RequestBody::empty(),
            BodyLength::Length(n) => RequestBody {
                source: Some(shared.clone()),
                id,
                remaining: Some(n),
            },
            BodyLength::Chunked => RequestBody {
                source: Some(shared.clone()),
                id,
                remaining: None,
            },
        };
        let mut req = Request::from_parts(head.parts, body);
        let mut upgrade_tx = wants_upgrade.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            req.extensions_mut()
                .insert(UpgradeSlot(Arc::new(Mutex::new(Some(rx)))));
            tx
        });

        // 3. The response.
        let resp = {
            // The service gets the clock reading of its request's start (no second one).
            let mut fut = std::pin::pin!(service(req, last_start));
            let cap = config.limits.max_head;
            let answered = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                // With the body read (or none), the socket is watched for the client leaving, as
                // hyper does: then the request is dropped (cancelled upstream too). Pipelined
                // bytes are kept, up to a head's size.
                let mut s = lock(&shared);
                while s.decoder.is_none() && !s.eof && s.rbuf.len() < cap {
                    match s.poll_fill(cx) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => break,
                    }
                }
                Poll::Pending
            })
            .await;
            match answered {
                Some(r) => r,
                None => return End::Closed,
            }
        };
        let (mut parts, body) = resp.into_parts();
        if continue_asked {
            // Too late for `100 Continue`: the answer is final.
            let mut s = lock(&shared);
            s.continue_owed = None;
        }
        if drain.started() {
            keep_alive = false;
        }
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(tx) = upgrade_tx.take() {
                wbuf.clear();
                encode_status(parts.status, &mut wbuf);
                encode_headers(&parts.headers, &mut wbuf);
                wbuf.extend_from_slice(b"\r\n");
                if let Err(e) = write_all(&shared, &mut wbuf).await {
                    return End::Io(e);
                }
                let mut s = lock(&shared);
                s.body_id += 1;
                if let Some(io) = s.io.take() {
                    let read = std::mem::take(&mut s.rbuf).freeze();
                    let _ = tx.send(Upgraded {
                        read,
                        io: Box::new(io),
                    });
                }
                return End::Upgraded;
            }
            // A 101 to a request that asked for no upgrade: nothing can follow it.
            parts.status = StatusCode::BAD_GATEWAY;
            keep_alive = false;
        } else if parts.status.is_informational() {
            // One response per request: a 1xx cannot be the answer (hyper's rule).
            parts.status = StatusCode::INTERNAL_SERVER_ERROR;
            parts.headers.clear();
            keep_alive = false;
        }
        drop(upgrade_tx);
        if switch_asked {
            keep_alive = false;
        }
        let has_body = !(method_head
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED
            || parts.status.is_informational()
            || (connect && parts.status.is_success()));
        // One pass over the fields: the framing ones are Tern's to write (a length only when
        // valid, never a transfer coding or connection options of the service's).
        buffers::take(&mut wbuf);
        wbuf.clear();
        encode_status(parts.status, &mut wbuf);
        let mut declared = None;
        let mut has_date = false;
        let no_length = parts.status == StatusCode::NO_CONTENT || parts.status.is_informational();
        for (name, value) in &parts.headers {
            if *name == TRANSFER_ENCODING {
                continue;
            } else if *name == CONNECTION {
                if has_token(value.as_bytes(), b"close") {
                    keep_alive = false;
                }
                continue;
            } else if *name == CONTENT_LENGTH {
                // Digits alone (nearly every length) read without the `str` parse.
                let n = super::parse_length(value.as_bytes()).or_else(|| {
                    std::str::from_utf8(value.as_bytes())
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                });
                if no_length || declared.is_some() || n.is_none() {
                    continue;
                }
                declared = n;
            } else if *name == DATE {
                has_date = true;
            }
            put_field(&mut wbuf, name.as_str().as_bytes(), value.as_bytes());
        }
        let framing = if !has_body {
            Encoder::empty()
        } else if let Some(n) = declared {
            Encoder::length(n)
        } else if let Some(n) = body.size_hint().exact() {
            wbuf.extend_from_slice(b"content-length: ");
            wbuf.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
            wbuf.extend_from_slice(b"\r\n");
            Encoder::length(n)
        } else if version == Version::HTTP_11 {
            wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Encoder::chunked()
        } else {
            keep_alive = false;
            Encoder::eof()
        };
        if !keep_alive {
            wbuf.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            wbuf.extend_from_slice(b"connection: keep-alive\r\n");
        }
        if !has_date {
            wbuf.extend_from_slice(b"date: ");
            date::append(&mut wbuf);
            wbuf.extend_from_slice(b"\r\n");
        }
        wbuf.extend_from_slice(b"\r\n");
        let declared_trailers = (framing.is_chunked() && trailers_ok)
            .then(|| trailer_names(&parts.headers))
            .flatten();
        // Pinned here, once: moved into `write_body`'s future, the body would be held twice.
        let body = std::pin::pin!(Some(body));
        let written = write_body(
            &shared,
            &mut wbuf,
            body,
            framing,
            declared_trailers.as_deref(),
        )
        .await;
        match written {
            Ok(true) => buffers::give(&mut wbuf),
            Ok(false) => {
                shutdown(&shared).await;
                return End::ResponseBody;
            }
            Err(e) => return End::Io(e),
        }

        // 4. The request body's rest. While someone still holds the body (an upload streaming
        // up after an early answer), the connection waits for it to end or be dropped, as
        // hyper did; then a rest already buffered is skipped, anything else closes.
        let reusable = std::future::poll_fn(|cx| {
            let mut s = lock(&shared);
            if s.decoder.is_some() && Arc::strong_count(&shared) > 1 {
                s.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            s.body_id += 1;
            s.waiting = None;
            let s = &mut *s;
            let done = loop {
                let Some(dec) = s.decoder.as_mut() else {
                    break true;
                };
                let r = dec.decode(&mut s.rbuf);
                let done = dec.is_done();
                match r {
                    Ok(Some(_)) if !done => continue,
                    Ok(_) if done => break true,
                    _ => break false,
                }
            };
            s.decoder = None;
            Poll::Ready(done && !s.broken && !s.eof)
        })
        .await;
        if !keep_alive || !reusable {
            shutdown(&shared).await;
            return End::Closed;
        }
        waiting_since = Instant::now();
    }
}

/// Waits for and parses the next head.
async fn read_head<S: Io>(
    shared: &Arc<Mutex<Shared<S>>>,
    config: &Config,
    drain: &Drain,
    first: bool,
    last_start: Instant,
    waiting_since: Instant,
) -> Result<request::Head, End> {
    let header_deadline = config.header_timeout.map(|t| waiting_since + t);
    // From the start for the first request (a silent connection), then from the last request's.
    let idle_deadline = config.idle_timeout.map(|t| last_start + t);
    // Both count from clock readings taken before this wait began, the latest `waiting_since`.
    let lazy = config.timer.as_ref();
    let mut header = header_deadline.map_or(Deadline::None, |d| {
        Deadline::at_from(d, waiting_since, lazy)
    });
    let mut idle = idle_deadline.map_or(Deadline::None, |d| {
        Deadline::at_from(d, waiting_since, lazy)
    });
    std::future::poll_fn(|cx| {
        let mut s = lock(shared);
        loop {
            if !s.rbuf.is_empty() {
                match request::parse(&mut s.rbuf, &config.limits) {
                    Ok(Some(h)) => return Poll::Ready(Ok(h)),
                    Ok(None) => {}
                    Err(r) => return Poll::Ready(Err(End::Rejected(r))),
                }
            }
            if s.eof {
                return Poll::Ready(Err(End::Closed));
            }
            match s.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(End::Closed)),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(End::Io(e))),
                Poll::Pending => break,
            }
        }
        let nothing_yet = s.rbuf.is_empty();
        if nothing_yet {
            // Idle until the next head: the buffer waits with the spares, not the connection.
            buffers::give(&mut s.rbuf);
        }
        drop(s);
        if nothing_yet && drain.poll_started(cx) {
            return Poll::Ready(Err(End::Drained));
        }
        if idle.poll_passed(cx) && nothing_yet {
            return Poll::Ready(Err(End::Idle));
        }
        if header.poll_passed(cx) {
            return Poll::Ready(Err(if first {
                End::FirstHeaderTimeout
            } else {
                End::HeaderTimeout
            }));
        }
        Poll::Pending
    })
    .await
}

/// Writes the head in `wbuf` and the body after it; `Ok(false)` when the body failed or broke
/// its declared length (the response is cut: the connection must close). The body (`Some`) is
/// dropped in place as soon as it is done with, before the last bytes go out.
async fn write_body<S: Io, B>(
    shared: &Arc<Mutex<Shared<S>>>,
    wbuf: &mut BytesMut,
    mut body: Pin<&mut Option<B>>,
    mut framing: Encoder,
    trailer_names: Option<&[http::HeaderName]>,
) -> std::io::Result<bool>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    if framing == Encoder::empty() {
        // No body goes out; one the service made anyway is read to its end if it is there
        // already (an upstream's empty body, which then counts as read whole), else dropped.
        if let Some(mut b) = body.as_mut().as_pin_mut() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            for _ in 0..4 {
                if b.is_end_stream() {
                    break;
                }
                match b.as_mut().poll_frame(&mut cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    _ => break,
                }
            }
        }
        body.set(None);
        write_all(shared, wbuf).await?;
        return Ok(true);
    }
    if body
        .as_ref()
        .get_ref()
        .as_ref()
        .is_none_or(|b| b.is_end_stream())
    {
        let ok = framing.end(None, wbuf).is_ok();
        // Dropped before the client sees the end: an upstream body gives its connection back
        // to the pool when dropped, before the client's next request can ask for one.
        body.set(None);
        write_all(shared, wbuf).await?;
        return Ok(ok);
    }
    let mut trailers: Option<HeaderMap> = None;
    // The body is dropped (its upstream connection pooled) before the last bytes go out.
    while let Some(mut b) = body.as_mut().as_pin_mut() {
        // What the body has at once goes out with what is buffered; the buffer is written
        // only when the body must be waited for (one write for a small response).
        let now = b
            .as_mut()
            .poll_frame(&mut Context::from_waker(std::task::Waker::noop()));
        let frame = {
            match now {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    // A body whose last byte is here waits for its end before the client sees
                    // the response: its upstream connection goes back to the pool first, so the
                    // client's next request finds it there.
                    if framing != Encoder::length(0) {
                        write_all(shared, wbuf).await?;
                    }
                    std::future::poll_fn(|cx| b.as_mut().poll_frame(cx)).await
                }
            }
        };
        match frame {
            None => body.set(None),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed");
                write_all(shared, wbuf).await?;
                body.set(None);
                return Ok(false);
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if framing.data(data.len(), wbuf).is_err() {
                        // More than the declared length: cut.
                        write_all(shared, wbuf).await?;
                        body.set(None);
                        return Ok(false);
                    }
                    put_data(shared, wbuf, data).await?;
                    wbuf.extend_from_slice(framing.tail());
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
        }
        if wbuf.len() >= 64 * 1024 {
            write_all(shared, wbuf).await?;
        }
    }
    // Only the trailers the response declared (and may send) go out.
    let trailers = trailers.zip(trailer_names).map(|(t, names)| {
        let mut out = HeaderMap::new();
        for (n, v) in &t {
            if names.contains(n) && allowed_trailer(n) {
                out.append(n.clone(), v.clone());
            }
        }
        out
    });
    let ok = framing.end(trailers.as_ref(), wbuf).is_ok();
    write_all(shared, wbuf).await?;
    Ok(ok)
}

/// Appends `data` to the buffer, or writes the buffer and then `data` when it is large.
async fn put_data<S: Io>(
    shared: &Arc<Mutex<Shared<S>>>,
    wbuf: &mut BytesMut,
    data: Bytes,
) -> std::io::Result<()> {
    if data.len() <= 16 * 1024 {
        wbuf.extend_from_slice(&data);
        return Ok(());
    }
    let mut data = data;
    std::future::poll_fn(|cx| {
        let mut s = lock(shared);
        let Some(io) = s.io.as_mut() else {
            return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::NotConnected)));
        };
        while !wbuf.is_empty() || !data.is_empty() {
            let slices = [std::io::IoSlice::new(wbuf), std::io::IoSlice::new(&data)];
            let n = std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::WriteZero)));
            }
            let from_head = n.min(wbuf.len());
            wbuf.advance(from_head);
            data.advance(n - from_head);
        }
        Poll::Ready(Ok(()))
    })
    .await?;
    wbuf.clear();
    Ok(())
}

/// Writes the whole buffer (then empties it).
async fn write_all<S: Io>(
    shared: &Arc<Mutex<Shared<S>>>,
    wbuf: &mut BytesMut,
) -> std::io::Result<()> {
    if wbuf.is_empty() {
        return Ok(());
    }
    let mut at = 0;
    std::future::poll_fn(|cx| {
        let mut s = lock(shared);
        let Some(io) = s.io.as_mut() else {
            return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::NotConnected)));
        };
        while at < wbuf.len() {
            let n = std::task::ready!(Pin::new(&mut *io).poll_write(cx, &wbuf[at..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::WriteZero)));
            }
            at += n;
        }
        std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    })
    .await?;
    wbuf.clear();
    Ok(())
}

/// Closes the write side (a TLS close_notify, a FIN).
async fn shutdown<S: Io>(shared: &Arc<Mutex<Shared<S>>>) {
    let _ = std::future::poll_fn(|cx| {
        let mut s = lock(shared);
        match s.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    })
    .await;
}

/// A reply to a refused head (no body, as hyper's) or a late one (the text the listener
/// always sent), then the connection closes.
fn write_error(status: StatusCode, wbuf: &mut BytesMut) {
    encode_status(status, wbuf);
    let body: &[u8] = match status {
        StatusCode::REQUEST_TIMEOUT => b"request headers timeout\n",
        _ => b"",
    };
    if !body.is_empty() {
        wbuf.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    }
    wbuf.extend_from_slice(b"content-length: ");
    wbuf.extend_from_slice(body.len().to_string().as_bytes());
    wbuf.extend_from_slice(b"\r\nconnection: close\r\ndate: ");
    date::append(wbuf);
    wbuf.extend_from_slice(b"\r\n\r\n");
    wbuf.extend_from_slice(body);
}

fn encode_status(status: StatusCode, wbuf: &mut BytesMut) {
    if status == StatusCode::OK {
        wbuf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    wbuf.extend_from_slice(b"HTTP/1.1 ");
    wbuf.extend_from_slice(status.as_str().as_bytes());
    wbuf.extend_from_slice(b" ");
    // A reason is always written: some parsers expect one.
    wbuf.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    wbuf.extend_from_slice(b"\r\n");
}

fn encode_headers(headers: &Fields, wbuf: &mut BytesMut) {
    for (name, value) in headers {
        put_field(wbuf, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// One field line. Inlined: the call's own cost was a fifth of a line's.
#[inline(always)]
fn put_field(wbuf: &mut BytesMut, name: &[u8], value: &[u8]) {
    wbuf.reserve(name.len() + value.len() + 4);
    wbuf.extend_from_slice(name);
    wbuf.extend_from_slice(b": ");
    wbuf.extend_from_slice(value);
    wbuf.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `buf`.
pub(super) fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The trailer fields the response declares (`Trailer`), if any.
fn trailer_names(headers: &Fields) -> Option<Vec<http::HeaderName>> {
    let names: Vec<http::HeaderName> = headers
        .get_all(TRAILER)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect();
    (!names.is_empty()).then_some(names)
}

/// Fields that may not be trailers (RFC 9110 §6.5.1, hyper's list).
fn allowed_trailer(name: &http::HeaderName) -> bool {
    use http::header::*;
    !matches!(
        *name,
        AUTHORIZATION
            | CACHE_CONTROL
            | CONTENT_ENCODING
            | CONTENT_LENGTH
            | CONTENT_RANGE
            | CONTENT_TYPE
            | HOST
            | MAX_FORWARDS
            | SET_COOKIE
            | TE
            | TRAILER
            | TRANSFER_ENCODING
    )
}

/// Whether a comma list holds `token` (any case).
fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The `date` header's value, formatted once per second per thread (as hyper does).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    struct Cached {
        second: u64,
        text: [u8; 29],
    }

    thread_local! {
        static CACHED: RefCell<Cached> = const { RefCell::new(Cached { second: 0, text: [0; 29] }) };
    }

    /// Appends the current date (IMF-fixdate).
    pub(super) fn append(out: &mut bytes::BytesMut) {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.second != second {
                let s = httpdate::fmt_http_date(now);
                if s.len() == 29 {
                    c.text.copy_from_slice(s.as_bytes());
                    c.second = second;
                }
            }
            out.extend_from_slice(&c.text);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn config() -> Config {
        Config {
            limits: Limits::default(),
            header_timeout: None,
            idle_timeout: None,
            start: Instant::now(),
            timer: None,
        }
    }

    /// Echoes the method, path and body; `/stream` answers with a body of unknown length and a
    /// trailer, `/nobody` with 204, `/upgrade` with 101.
    async fn echo(
        req: Request<RequestBody>,
    ) -> Response<http_body_util::combinators::BoxBody<Bytes, BodyError>> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if path == "/nobody" {
            return http::Response::builder()
                .status(204)
                .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                .unwrap()
                .into();
        }
        if path == "/upgrade" {
            let mut req = req;
            let on = OnUpgrade::on(&mut req).expect("an upgrade request");
            tokio::spawn(async move {
                let mut up = on.await.expect("upgraded");
                let mut b = [0u8; 5];
                up.read_exact(&mut b).await.unwrap();
                up.write_all(&b).await.unwrap();
                up.write_all(b"!").await.unwrap();
            });
            return http::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                .unwrap()
                .into();
        }
        if path == "/hang" {
            std::future::pending::<()>().await;
        }
        if path == "/ignore" {
            return Response::new(
                Full::new(Bytes::from("ignored"))
                    .map_err(|e| match e {})
                    .boxed(),
            );
        }
        let body = req.into_body().collect().await;
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return http::Response::builder()
                    .status(400)
                    .body(
                        Full::new(Bytes::from(e.to_string()))
                            .map_err(|e| match e {})
                            .boxed(),
                    )
                    .unwrap()
                    .into()
            }
        };
        if path == "/stream" {
            let mut t = HeaderMap::new();
            t.insert("x-sum", http::HeaderValue::from_static("7"));
            t.insert("x-undeclared", http::HeaderValue::from_static("1"));
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(b"hello "))),
                Ok(Frame::data(body)),
                Ok(Frame::trailers(t)),
            ];
            return http::Response::builder()
                .header("trailer", "x-sum")
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .unwrap()
                .into();
        }
        let text = format!("{method} {path} {}", String::from_utf8_lossy(&body));
        Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed())
    }

    /// A connection served in the background, and the client's end.
    fn connect(config: Config, drain: Drain) -> (DuplexStream, tokio::task::JoinHandle<End>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(server, BytesMut::new(), config, drain, |r, _| {
            echo(r)
        }));
        (client, task)
    }

    async fn read_all(c: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
            .await
            .expect("the connection closes")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads until `n` responses' ends (`\r\n\r\n` + body) are seen, by a marker.
    async fn read_until(c: &mut DuplexStream, marker: &str) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(marker) {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b))
                .await
                .expect("more bytes")
                .unwrap();
            assert!(
                n > 0,
                "closed before {marker:?}: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_gives_its_buffers_back() {
        // The test's runtime runs the connection on this thread: its spares are these.
        buffers::spares(true);
        let (mut c, task) = connect(config(), Drain::default());
        for path in ["/a", "/b", "/c"] {
            let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
            c.write_all(req.as_bytes()).await.unwrap();
            let out = read_until(&mut c, &format!("GET {path} ")).await;
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            // Answered and waiting for the next head: the read and the write buffer are back.
            let deadline = Instant::now() + Duration::from_secs(10);
            while buffers::spares(false) < 2 {
                assert!(Instant::now() < deadline, "buffers not given back");
                tokio::task::yield_now().await;
            }
            assert_eq!(buffers::spares(false), 2, "each request took them again");
        }
        drop(c);
        assert!(matches!(task.await.unwrap(), End::Closed));
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let (mut c, task) = connect(config(), Drain::default());
        c.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        let a = out.find("GET /a ").expect(&out);
        let b = out.find("POST /b abc").expect(&out);
        let cc = out.find("GET /c ").expect(&out);
        assert!(a < b && b < cc, "{out}");
        assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
        assert!(out.contains("content-length: 7\r\n"), "{out}");
        assert!(out.contains("\r\ndate: "), "{out}");
        assert_eq!(out.matches("connection: close").count(), 1, "{out}");
        assert!(matches!(task.await.unwrap(), End::Closed));
    }

    #[tokio::test]
    async fn a_body_split_across_reads_arrives_whole() {
        let (mut c, task) = connect(config(), Drain::default());
        c.write_all(
            b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nconnection: close\r\n\r\n0123",
        )
        .await
        .unwrap();
        tokio::task::yield_now().await;
        c.write_all(b"456789").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.ends_with("POST /b 0123456789"), "{out}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn chunked_request_bodies_are_decoded_and_bad_chunks_close() {
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"POST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\nx-t: 1\r\n\r\nGET /next HTTP/1.1\r\nconnection: close\r\n\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.contains("POST /b hello!"), "{out}");
        assert!(out.contains("GET /next"), "{out}");
        // A bad chunk size: the service sees a malformed body; nothing after it is a request.
        let (mut c, task) = connect(config(), Drain::default());
        c.write_all(b"POST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(out.ends_with("malformed request body"), "{out}");
        assert!(!out.contains("smuggled"), "{out}");
        assert!(matches!(task.await.unwrap(), End::Closed));
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_for_the_service() {
        let (mut c, task) = connect(config(), Drain::default());
        c.write_all(b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123")
            .await
            .unwrap();
        c.shutdown().await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(out.ends_with("request body cut short"), "{out}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn refused_heads_are_answered_and_close() {
        for (req, status) in [
            (
                &b"GET / HTTP/1.1\r\nx-a : 1\r\n\r\nGET /next HTTP/1.1\r\n\r\n"[..],
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                "501",
            ),
        ] {
            let (mut c, task) = connect(config(), Drain::default());
            c.write_all(req).await.unwrap();
            let out = read_all(&mut c).await;
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
            assert!(out.contains("connection: close\r\n"), "{out}");
            assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
            assert!(matches!(task.await.unwrap(), End::Rejected(_)));
        }
        let mut cfg = config();
        cfg.limits.max_head = 1024;
        let (mut c, task) = connect(cfg, Drain::default());
        c.write_all(format!("GET / HTTP/1.1\r\nx-a: {}\r\n\r\n", "b".repeat(2000)).as_bytes())
            .await
            .unwrap();
        let out = read_all(&mut c).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(matches!(
            task.await.unwrap(),
            End::Rejected(Reject::HeadersTooLarge)
        ));
    }

    #[tokio::test]
    async fn http10_closes_unless_keep_alive() {
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"GET /a HTTP/1.0\r\n\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.contains("connection: close\r\n"), "{out}");
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let out = read_all(&mut c).await;
        assert!(out.contains("connection: keep-alive\r\n"), "{out}");
        assert!(out.contains("GET /a") && out.contains("GET /b"), "{out}");
        // A body of unknown length to an HTTP/1.0 client ends with the connection.
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let out = read_all(&mut c).await;
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert!(!out.contains("transfer-encoding"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello "), "{out}");
    }

    #[tokio::test]
    async fn chunked_responses_carry_declared_trailers_when_asked() {
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"POST /stream HTTP/1.1\r\ncontent-length: 2\r\nte: trailers\r\n\r\nyo")
            .await
            .unwrap();
        let out = read_until(&mut c, "x-sum: 7\r\n\r\n").await;
        assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
        assert!(
            out.contains("\r\n\r\n6\r\nhello \r\n2\r\nyo\r\n0\r\nx-sum: 7\r\n\r\n"),
            "{out:?}"
        );
        assert!(!out.contains("x-undeclared"), "{out}");
        // Without `te: trailers`, none.
        c.write_all(b"GET /stream HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let out = read_all(&mut c).await;
        assert!(out.ends_with("6\r\nhello \r\n0\r\n\r\n"), "{out:?}");
    }

    #[tokio::test]
    async fn head_and_204_have_no_body() {
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"HEAD /a HTTP/1.1\r\n\r\nGET /nobody HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let out = read_all(&mut c).await;
        assert!(!out.contains("HEAD /a"), "{out}");
        let second = out.find("HTTP/1.1 204").expect(&out);
        assert!(out[second..].ends_with("\r\n\r\n"), "{out}");
        assert!(!out[second..].contains("content-length"), "{out}");
    }

    #[tokio::test]
    async fn expect_continue_is_answered_when_the_body_is_read() {
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"POST /b HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n")
            .await
            .unwrap();
        let out = read_until(&mut c, "100 Continue\r\n\r\n").await;
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"abc").await.unwrap();
        let out = read_until(&mut c, "POST /b abc").await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        // A service that answers without reading: no 100, and the connection closes (the body
        // was never sent).
        c.write_all(b"POST /ignore HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n")
            .await
            .unwrap();
        let out = read_all(&mut c).await;
        assert!(!out.contains("100 Continue"), "{out}");
        assert!(
            out.contains("connection: close") || out.ends_with("ignored"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn an_unread_body_is_skipped_when_buffered_else_the_connection_closes() {
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"POST /ignore HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /after HTTP/1.1\r\nconnection: close\r\n\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.contains("GET /after"), "{out}");
        let (mut c, task) = connect(config(), Drain::default());
        c.write_all(b"POST /ignore HTTP/1.1\r\ncontent-length: 300\r\n\r\nabc")
            .await
            .unwrap();
        let out = read_all(&mut c).await;
        assert!(out.ends_with("ignored"), "{out}");
        assert!(matches!(task.await.unwrap(), End::Closed));
    }

    #[tokio::test]
    async fn a_101_hands_over_the_stream_and_the_bytes_read_past_the_head() {
        let (mut c, task) = connect(config(), Drain::default());
        c.write_all(b"GET /upgrade HTTP/1.1\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nhel")
            .await
            .unwrap();
        let head = read_until(&mut c, "\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        assert!(
            !head.contains("content-length") && !head.contains("transfer-encoding"),
            "{head}"
        );
        assert!(matches!(task.await.unwrap(), End::Upgraded));
        c.write_all(b"lo").await.unwrap();
        let out = read_until(&mut c, "hello!").await;
        assert_eq!(out, "hello!");
    }

    #[tokio::test]
    async fn a_client_leaving_mid_request_drops_it() {
        let (mut c, task) = connect(config(), Drain::default());
        c.write_all(b"GET /hang HTTP/1.1\r\n\r\n").await.unwrap();
        c.shutdown().await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(matches!(end.expect("ends").unwrap(), End::Closed));
    }

    #[tokio::test]
    async fn a_refused_upgrade_closes_but_h2c_is_served_plain() {
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"GET /a HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nGET /optimistic HTTP/1.1\r\n\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(
            out.contains("connection: close\r\n") && out.ends_with("GET /a "),
            "{out}"
        );
        let (mut c, _task) = connect(config(), Drain::default());
        c.write_all(b"GET /a HTTP/1.1\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\nGET /b HTTP/1.1\r\nconnection: close\r\n\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.contains("GET /a ") && out.ends_with("GET /b "), "{out}");
    }

    #[tokio::test]
    async fn drain_closes_between_requests() {
        let drain = Drain::default();
        let (mut c, task) = connect(config(), drain.clone());
        c.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let out = read_until(&mut c, "GET /a").await;
        assert!(!out.contains("connection: close"), "{out}");
        drain.start();
        assert!(matches!(task.await.unwrap(), End::Drained));
        assert_eq!(read_all(&mut c).await, "");
    }

    #[tokio::test]
    async fn header_timeouts() {
        let mut cfg = config();
        cfg.header_timeout = Some(Duration::from_millis(50));
        let (mut c, task) = connect(cfg.clone(), Drain::default());
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(out.ends_with("\r\n\r\nrequest headers timeout\n"), "{out}");
        assert!(matches!(task.await.unwrap(), End::FirstHeaderTimeout));
        // A later request: closed without an answer.
        cfg.start = Instant::now();
        let (mut c, task) = connect(cfg, Drain::default());
        c.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let out = read_all(&mut c).await;
        assert!(out.ends_with("GET /a "), "{out}");
        assert!(matches!(task.await.unwrap(), End::HeaderTimeout));
    }
}
