//! HTTP/2 to endpoints: the multiplexed connections of one endpoint ([`H2Pool`]), what a stream
//! in flight holds ([`Stream`]), and what an upstream HTTP/2 failure means ([`Failure`]).
//!
//! Requests share a connection while it has a free stream: under the endpoint's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (read from hyper's connection once the peer's first
//! response shows its SETTINGS were applied; 100 is assumed before, as h2 does) and the cluster's
//! `max_concurrent_streams` cap. A connection being set up takes requests too (they wait for it
//! together, as pending requests), so a burst opens one connection, not one per request. When
//! every connection is full a new one opens, within `max_connections`.
//!
//! A connection takes no new streams once it has started `max_requests_per_connection`, or its
//! peer sent GOAWAY, or it closed; it leaves the pool and closes when its last stream ends
//! (dropping the last sender lets hyper close it gracefully). One without streams for the
//! cluster's `idle_timeout` is closed by its task. PING keep-alive (`connection_keepalive`) is
//! hyper's: an unanswered PING closes the connection and fails its streams.
//!
//! A request that a going-away connection did not take (hyper hands it back), or that the peer's
//! GOAWAY refused (a stream above its last stream id: never processed), goes to another
//! connection at once, without a retry policy, when its body can be sent again (none, or
//! buffered); a streamed body was consumed and fails the request (`UC`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{Notify, OnceCell};

use super::connect::ConnectError;
use super::pool::{SendError, Target, UpBody};
use crate::message::{Request, Response};
use crate::stats::{ClusterStats, Gauge};
use crate::tls::client::UpStream;
use tern_config::defaults;

/// What a cluster speaks to its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 (also `auto` on plain TCP, as Envoy's `auto_config`).
    #[default]
    Http1,
    /// HTTP/2: prior knowledge on plain TCP, ALPN `h2` over TLS.
    Http2,
    /// Over TLS, what ALPN (`h2,http/1.1`) chooses; remembered per endpoint.
    Auto,
}

impl Protocol {
    /// The protocol of a cluster: `auto` needs TLS to negotiate, else it is HTTP/1.1.
    pub fn of(p: tern_config::ClusterProtocol, tls: bool) -> Protocol {
        match p {
            tern_config::ClusterProtocol::Http1 => Protocol::Http1,
            tern_config::ClusterProtocol::Http2 => Protocol::Http2,
            tern_config::ClusterProtocol::Auto if tls => Protocol::Auto,
            tern_config::ClusterProtocol::Auto => Protocol::Http1,
        }
    }

    /// The ALPN protocols its TLS connections offer (`None`: the cluster's `alpn` as written).
    pub fn alpn(self) -> Option<&'static [&'static str]> {
        match self {
            Protocol::Http1 => None,
            Protocol::Http2 => Some(&["h2"]),
            Protocol::Auto => Some(&["h2", "http/1.1"]),
        }
    }

    /// Its name in `/clusters`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Auto => "auto",
        }
    }
}

/// A cluster's HTTP/2 settings (`http2_protocol_options`), with their defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// Most streams the proxy opens on one connection (`None`: as many as the peer allows).
    pub max_concurrent_streams: Option<u32>,
    /// `SETTINGS_INITIAL_WINDOW_SIZE` sent to the endpoint.
    pub initial_stream_window_size: u32,
    /// The connection's receive window.
    pub initial_connection_window_size: u32,
    /// PING `(interval, timeout)`.
    pub keepalive: Option<(Duration, Duration)>,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            max_concurrent_streams: None,
            initial_stream_window_size: defaults::H2_INITIAL_STREAM_WINDOW_SIZE,
            initial_connection_window_size: defaults::H2_INITIAL_CONNECTION_WINDOW_SIZE,
            keepalive: None,
        }
    }
}

impl H2Settings {
    /// The settings of `http2_protocol_options` (defaults when absent).
    pub fn of(o: Option<&tern_config::Http2ProtocolOptions>) -> H2Settings {
        let d = H2Settings::default();
        let Some(o) = o else { return d };
        H2Settings {
            max_concurrent_streams: o.max_concurrent_streams.as_ref().map(|v| v.value),
            initial_stream_window_size: o
                .initial_stream_window_size
                .as_ref()
                .map_or(d.initial_stream_window_size, |v| v.value),
            initial_connection_window_size: o
                .initial_connection_window_size
                .as_ref()
                .map_or(d.initial_connection_window_size, |v| v.value),
            keepalive: o
                .connection_keepalive
                .as_ref()
                .map(|k| (k.interval.0, k.timeout.0)),
        }
    }
}

/// Response heads larger than this fail the stream (as the HTTP/1 pool's 64 KiB buffer does).
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// What one stream's request body may queue beyond its flow-control window.
const MAX_SEND_BUF_SIZE: usize = 64 * 1024;
/// Connections a request tries before it fails: each one that hands it back is going away.
const MAX_HANDOVERS: usize = 4;

/// The HTTP/2 connections to one endpoint, connecting ones included.
#[derive(Debug, Default)]
pub struct H2Pool {
    conns: Arc<Mutex<Vec<Arc<H2Conn>>>>,
}

/// One HTTP/2 connection: its stream counts (shared with its task) and, once set up, its sender.
#[derive(Debug)]
pub struct H2Conn {
    state: Arc<ConnState>,
    ready: OnceCell<Result<Live, Failed>>,
}

/// What a connection's streams and its task share.
#[derive(Debug)]
struct ConnState {
    /// Streams in flight (and requests waiting for the connection to be set up).
    active: AtomicU32,
    /// Streams started.
    started: AtomicU32,
    /// Streams it may carry at once: the cap, and the peer's limit once known.
    limit: AtomicU32,
    /// Takes no new streams (peer's GOAWAY, `max_requests_per_connection`, closed, failed).
    draining: AtomicBool,
    /// When its last stream ended (`crate::timer::now_ms`).
    idle_since: AtomicU64,
    /// Whether the peer's stream limit has been read.
    settled: AtomicBool,
    /// Asks the task to read the peer's stream limit.
    refresh: Notify,
    /// Tells the task that a draining connection's last stream ended: it leaves the pool.
    released: Notify,
    /// The cluster's cap.
    cap: u32,
}

impl ConnState {
    fn drain(&self) {
        self.draining.store(true, Relaxed);
    }
}

/// A set-up connection.
#[derive(Debug)]
struct Live {
    tx: SendRequest<H2Body>,
    tls_version: Option<&'static str>,
}

/// Why a connection could not be set up (every request waiting for it gets it).
#[derive(Debug, Clone)]
enum Failed {
    Connect(Arc<str>),
    Tls(Arc<str>),
    /// `auto`: ALPN chose HTTP/1.1.
    Http1,
}

/// A stream in flight: counted on its connection until dropped.
#[derive(Debug)]
pub struct Stream {
    conn: Arc<H2Conn>,
}

impl Stream {
    /// The connection's TLS version, `None` for plain TCP.
    pub fn tls_version(&self) -> Option<&'static str> {
        match self.conn.ready.get() {
            Some(Ok(l)) => l.tls_version,
            _ => None,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let s = &self.conn.state;
        if s.active.fetch_sub(1, Relaxed) == 1 {
            s.idle_since.store(crate::timer::now_ms(), Relaxed);
            if s.draining.load(Relaxed) {
                s.released.notify_one();
            }
        }
    }
}

/// How an upstream exchange failed, in Envoy's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The upstream reset the stream (`RST_STREAM`): flag `UR`.
    RemoteReset,
    /// The upstream refused the stream (`RST_STREAM` with `REFUSED_STREAM`): it was not
    /// processed; `UR`, and retried by `refused-stream`.
    RefusedStream,
    /// The upstream's GOAWAY refused the stream (above its last stream id): not processed.
    GoAway,
    /// The connection ended (closed, failed, PING unanswered; HTTP/1: closed before the
    /// response): flag `UC`.
    ConnectionTermination,
}

impl Failure {
    /// What `e`, an error of an upstream exchange or response body, says happened.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Failure {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if let Some(h) = c.downcast_ref::<h2::Error>() {
                return match (h.is_remote(), h.is_reset(), h.is_go_away(), h.reason()) {
                    (true, true, _, Some(h2::Reason::REFUSED_STREAM)) => Failure::RefusedStream,
                    (true, true, _, _) => Failure::RemoteReset,
                    (true, _, true, Some(h2::Reason::NO_ERROR)) => Failure::GoAway,
                    _ => Failure::ConnectionTermination,
                };
            }
            cause = c.source();
        }
        Failure::ConnectionTermination
    }
}

/// What a pick found.
enum Picked {
    /// A connection (maybe still connecting) with a stream counted for this request.
    Conn(Arc<H2Conn>),
    /// None with a free stream, and no room for another (`max_connections`).
    Overflow,
}

/// The outcome of [`H2Pool::send`].
pub(super) enum Sent {
    /// The response, and the stream it came on.
    Response(Response<Incoming>, Stream),
    /// `auto`: the endpoint answered ALPN with HTTP/1.1; the request goes that way.
    Http1(Request<UpBody>),
}

impl H2Pool {
    /// Closes the idle connections and marks the others to close when their streams end.
    pub fn close(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in conns {
            c.state.drain();
        }
    }

    /// Connections open or being set up (for admin).
    pub fn len(&self) -> usize {
        self.conns.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// A connection with a free stream (taking it), or a new one in the list.
    fn pick(&self, t: &Target<'_>, closed: bool) -> Picked {
        let max_rq = t.options.max_requests_per_connection;
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.state.draining.load(Relaxed));
        for c in conns.iter() {
            let s = &c.state;
            if s.active.load(Relaxed) < s.limit.load(Relaxed) {
                s.active.fetch_add(1, Relaxed);
                let n = s.started.fetch_add(1, Relaxed) + 1;
                if max_rq.is_some_and(|m| n >= m) {
                    s.drain();
                }
                return Picked::Conn(c.clone());
            }
        }
        if t.stats.upstream_cx_active.get() >= t.limits.max_connections {
            return Picked::Overflow;
        }
        let conn = new_conn(t);
        // The endpoint left its cluster: the connection serves this request only.
        if !closed {
            conns.push(conn.clone());
        }
        Picked::Conn(conn)
    }

    /// Sends `req` on a connection with a free stream, or on a new one. `adopt` is a connection
    /// the HTTP/1 path opened that ALPN made HTTP/2 (`auto`): it becomes this pool's.
    pub(super) async fn send(
        &self,
        t: &Target<'_>,
        mut req: Request<UpBody>,
        mut adopt: Option<UpStream>,
        closed: bool,
    ) -> Result<Sent, SendError> {
        let tls = t.connector.tls.is_some();
        for _ in 0..MAX_HANDOVERS {
            // The stream slot a pick counts is released by `Stream`'s drop: it exists before any
            // await, so a request cancelled during the handshake gives its slot back.
            let (conn, stream) = match adopt.take() {
                Some(io) => {
                    let conn = self.pick_new(t, closed);
                    let stream = Stream { conn: conn.clone() };
                    let list = Arc::downgrade(&self.conns);
                    let state = conn.state.clone();
                    let _ = conn
                        .ready
                        .get_or_init(|| handshake(io, t, state, list))
                        .await;
                    (conn, stream)
                }
                None => match self.pick(t, closed) {
                    Picked::Conn(c) => {
                        let stream = Stream { conn: c.clone() };
                        (c, stream)
                    }
                    Picked::Overflow => {
                        t.stats.upstream_cx_overflow.inc();
                        return Err(SendError::ConnectionOverflow);
                    }
                },
            };
            let live = match conn.ready.get() {
                Some(r) => r,
                None => {
                    if t.stats.upstream_rq_pending_active.get() >= t.limits.max_pending_requests {
                        t.stats.upstream_rq_pending_overflow.inc();
                        return Err(SendError::PendingOverflow);
                    }
                    t.stats.upstream_rq_pending_active.inc();
                    let _pending = PendingGuard(&t.stats.upstream_rq_pending_active);
                    let list = Arc::downgrade(&self.conns);
                    let state = conn.state.clone();
                    conn.ready.get_or_init(|| connect(t, state, list)).await
                }
            };
            let live = match live {
                Ok(l) => l,
                Err(f) => {
                    conn.state.drain();
                    return match f {
                        Failed::Connect(e) => Err(SendError::Connect(e.to_string())),
                        Failed::Tls(e) => Err(SendError::Tls(e.to_string())),
                        Failed::Http1 => {
                            from_h2(&mut req);
                            Ok(Sent::Http1(req))
                        }
                    };
                }
            };
            to_h2(&mut req, tls);
            // A streamed body cannot be copied: only one in memory can go again.
            let spare = match req.body() {
                Either::Right(b) => Some(copy(&req, b.clone())),
                Either::Left(_) => None,
            };
            let mut tx = live.tx.clone();
            match tx
                .try_send_request(http::Request::from(req.map(H2Body)))
                .await
            {
                Ok(resp) => {
                    let mut resp = Response::from(resp);
                    let s = &conn.state;
                    if !s.settled.load(Relaxed) {
                        // The peer's SETTINGS came before its response: its limit is known now.
                        s.refresh.notify_one();
                    }
                    *resp.version_mut() = Version::HTTP_11;
                    return Ok(Sent::Response(resp, stream));
                }
                Err(mut e) => {
                    if let Some(r) = e.take_message() {
                        // Not sent: the connection is going away; another one takes it.
                        conn.state.drain();
                        req = Request::from(r).map(|b| b.0);
                        continue;
                    }
                    let e = e.into_error();
                    match (Failure::of(&e), spare) {
                        (Failure::GoAway, Some(r)) => {
                            conn.state.drain();
                            req = r;
                        }
                        _ => return Err(SendError::Reset(e)),
                    }
                }
            }
        }
        // Each connection was up and then went away (a GOAWAY, a peer that closed or spoke
        // something else) before taking the request: Envoy's upstream connection termination
        // (`UC`), not a connect failure. Which of the two a broken peer caused was a race.
        Err(SendError::Closed(
            "every connection went away before taking the request".into(),
        ))
    }

    /// A new connection in the list, whatever the others have free.
    fn pick_new(&self, t: &Target<'_>, closed: bool) -> Arc<H2Conn> {
        let conn = new_conn(t);
        if !closed {
            self.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn.clone());
        }
        conn
    }
}

/// A connection not set up yet, with one stream counted (the request that makes it).
fn new_conn(t: &Target<'_>) -> Arc<H2Conn> {
    let cap = t.options.h2.max_concurrent_streams.unwrap_or(u32::MAX);
    let max_rq = t.options.max_requests_per_connection;
    Arc::new(H2Conn {
        state: Arc::new(ConnState {
            active: AtomicU32::new(1),
            started: AtomicU32::new(1),
            limit: AtomicU32::new(cap.min(defaults::H2_INITIAL_MAX_SEND_STREAMS)),
            draining: AtomicBool::new(max_rq.is_some_and(|m| m <= 1)),
            idle_since: AtomicU64::new(0),
            settled: AtomicBool::new(false),
            refresh: Notify::new(),
            released: Notify::new(),
            cap,
        }),
        ready: OnceCell::new(),
    })
}

/// A request body on an HTTP/2 stream. A type of its own: hyper's HTTP/1.1 and HTTP/2 senders
/// then share no generic code, and the HTTP/1.1 path is compiled (inlined) as it was alone.
pub(super) struct H2Body(UpBody);

impl hyper::body::Body for H2Body {
    type Data = bytes::Bytes;
    type Error = <UpBody as hyper::body::Body>::Error;

    #[inline]
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}

/// Decrements the pending-requests gauge when dropped.
struct PendingGuard<'a>(&'a Gauge);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The request as HTTP/2 sends it: the target in absolute form (`:scheme`, `:authority` from
/// Host, `:path`); Host itself goes, `:authority` replaces it.
fn to_h2(req: &mut Request<UpBody>, tls: bool) {
    if req.version() == Version::HTTP_2 {
        return;
    }
    let authority = req
        .headers()
        .get(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let Some(authority) = authority else { return };
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        req.headers_mut().remove(HOST);
        *req.version_mut() = Version::HTTP_2;
    }
}

/// Undoes [`to_h2`]: origin form and Host, for an HTTP/1.1 connection.
fn from_h2(req: &mut Request<UpBody>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    if let Some(v) = req
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(HOST, v);
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
}

/// A copy of `req` with `body`, to send again.
fn copy(req: &Request<UpBody>, body: http_body_util::Full<bytes::Bytes>) -> Request<UpBody> {
    let mut r = Request::new(Either::Right(body));
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// Connects to the target and sets up HTTP/2 on the connection.
async fn connect(
    t: &Target<'_>,
    state: Arc<ConnState>,
    list: Weak<Mutex<Vec<Arc<H2Conn>>>>,
) -> Result<Live, Failed> {
    let stream = t
        .connector
        .connect_http(t.endpoint)
        .await
        .map_err(|e| match e {
            ConnectError::Tcp(e) => Failed::Connect(e.into()),
            ConnectError::Tls(e) => Failed::Tls(e.into()),
        })?;
    if t.options.protocol == Protocol::Auto && stream.alpn() != Some(b"h2") {
        t.endpoint.state.pool.learn(Protocol::Http1);
        return Err(Failed::Http1);
    }
    handshake(stream, t, state, list).await
}

/// hyper's HTTP/2 client set up as the cluster says (windows, PING keep-alive) with the proxy's
/// limits; for any connection to an endpoint that speaks the cluster's HTTP/2 (a gRPC health
/// check's too: connect with [`super::connect::Connector::connect_http`], then `handshake`).
pub fn builder(o: &H2Settings) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(o.initial_stream_window_size)
        .initial_connection_window_size(o.initial_connection_window_size)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buf_size(MAX_SEND_BUF_SIZE);
    if let Some((interval, timeout)) = o.keepalive {
        // Envoy pings whether or not streams are open.
        b.keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true);
    }
    b
}

/// Sets up HTTP/2 on a connected stream and starts the connection's task.
async fn handshake(
    stream: UpStream,
    t: &Target<'_>,
    state: Arc<ConnState>,
    list: Weak<Mutex<Vec<Arc<H2Conn>>>>,
) -> Result<Live, Failed> {
    let tls_version = stream.tls_version();
    let io = Counted::new(stream, t.stats);
    let (tx, conn) = builder(&t.options.h2)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failed::Connect(e.to_string().into()))?;
    t.stats.upstream_cx_http2_total.inc();
    tokio::spawn(drive(conn, state, list, t.options.idle_timeout));
    Ok(Live { tx, tls_version })
}

type Conn = http2::Connection<TokioIo<Counted>, H2Body, TokioExecutor>;

/// A connection's task: drives hyper's dispatch, reads the peer's stream limit when asked, and
/// closes the connection when it has been without streams for `idle`. When the connection ends
/// it leaves the pool.
async fn drive(
    conn: Conn,
    state: Arc<ConnState>,
    list: Weak<Mutex<Vec<Arc<H2Conn>>>>,
    idle: Option<Duration>,
) {
    let mut conn = Box::pin(conn);
    loop {
        let wait = idle.map(|d| {
            let since = state.idle_since.load(Relaxed);
            match state.active.load(Relaxed) {
                0 => Duration::from_millis(
                    (since + d.as_millis() as u64).saturating_sub(crate::timer::now_ms()),
                ),
                _ => d,
            }
        });
        let idle_check = async {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
                break;
            }
            _ = state.refresh.notified() => {
                let peer = u32::try_from(conn.current_max_send_streams()).unwrap_or(u32::MAX);
                state.limit.store(state.cap.min(peer), Relaxed);
                state.settled.store(true, Relaxed);
            }
            _ = state.released.notified() => {
                // Its sender leaves with it: hyper closes the connection.
                if state.active.load(Relaxed) == 0 {
                    leave(&list, &state);
                }
            }
            _ = idle_check => {
                let Some(d) = idle else { continue };
                let Some(list) = list.upgrade() else { break };
                let mut conns = list.lock().unwrap_or_else(|e| e.into_inner());
                // Under the pool's lock: no request can take a stream while it is checked.
                let since = state.idle_since.load(Relaxed);
                if state.active.load(Relaxed) == 0
                    && crate::timer::now_ms().saturating_sub(since) >= d.as_millis() as u64
                {
                    state.drain();
                    // Its sender goes with it: hyper closes the connection.
                    conns.retain(|c| !Arc::ptr_eq(&c.state, &state));
                }
            }
        }
    }
    state.drain();
    leave(&list, &state);
}

/// Takes the connection of `state` out of the pool.
fn leave(list: &Weak<Mutex<Vec<Arc<H2Conn>>>>, state: &Arc<ConnState>) {
    if let Some(list) = list.upgrade() {
        list.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| !Arc::ptr_eq(&c.state, state));
    }
}

/// An upstream HTTP/2 connection's socket, counted in `upstream_cx_active` until it closes
/// (hyper's own task owns it, and outlives the pool's view of the connection while it drains).
#[derive(Debug)]
pub(super) struct Counted {
    inner: UpStream,
    stats: Arc<ClusterStats>,
}

impl Counted {
    fn new(inner: UpStream, stats: &Arc<ClusterStats>) -> Counted {
        stats.upstream_cx_active.inc();
        Counted {
            inner,
            stats: stats.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.upstream_cx_active.dec();
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_read_from_the_h2_error() {
        let reset = h2::Error::from(h2::Reason::INTERNAL_ERROR);
        // A locally made reason is not the peer's doing: the connection's.
        assert_eq!(Failure::of(&reset), Failure::ConnectionTermination);
        let io = std::io::Error::other("closed");
        assert_eq!(Failure::of(&io), Failure::ConnectionTermination);
    }

    #[test]
    fn an_h2_request_has_scheme_and_authority_from_host() {
        let mut req: Request<UpBody> = http::Request::builder()
            .uri("/a?b=1")
            .header(HOST, "api.example:8080")
            .body(Either::Right(
                http_body_util::Full::new(bytes::Bytes::new()),
            ))
            .unwrap()
            .into();
        to_h2(&mut req, true);
        assert_eq!(req.uri().to_string(), "https://api.example:8080/a?b=1");
        assert!(req.headers().get(HOST).is_none());
        assert_eq!(req.version(), Version::HTTP_2);
        // Converted twice (a second connection): unchanged.
        to_h2(&mut req, true);
        assert_eq!(req.uri().to_string(), "https://api.example:8080/a?b=1");
        from_h2(&mut req);
        assert_eq!(req.uri().to_string(), "/a?b=1");
        assert_eq!(req.headers().get(HOST).unwrap(), "api.example:8080");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(
            Protocol::of(tern_config::ClusterProtocol::Auto, false),
            Protocol::Http1
        );
    }
}
