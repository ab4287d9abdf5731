//! One request's record (Envoy's StreamInfo): filled once along the request path, finished when
//! both directions are done, then handed to every observer (access log sinks, span exporter).
//!
//! A listener without observers records nothing: the request path holds `None` and skips every
//! update. With observers, the record is shared by whoever still moves bytes for the request
//! (the response body, a streamed request body, an upgraded tunnel) and is written when the last
//! of them lets go, so a line never shows half an upload. An observer only reads the record; a
//! new log operator or span attribute reads a field here and changes nothing on the request path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderName, HeaderValue, Method, Version};

use crate::message::{Fields, Request};

/// Response flags (Envoy's short codes), collected while a request is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// `UH`: no healthy upstream.
    pub const UH: Flags = Flags(1);
    /// `UF`: upstream connection failure.
    pub const UF: Flags = Flags(1 << 1);
    /// `UO`: upstream overflow (circuit breaker).
    pub const UO: Flags = Flags(1 << 2);
    /// `NR`: no route.
    pub const NR: Flags = Flags(1 << 3);
    /// `URX`: retry limit exceeded.
    pub const URX: Flags = Flags(1 << 4);
    /// `UT`: upstream request timeout.
    pub const UT: Flags = Flags(1 << 5);
    /// `DI`: request delayed by fault injection.
    pub const DI: Flags = Flags(1 << 6);
    /// `FI`: request aborted by fault injection.
    pub const FI: Flags = Flags(1 << 7);
    /// `RL`: rate limited locally.
    pub const RL: Flags = Flags(1 << 8);
    /// `DC`: downstream connection closed before the response ended.
    pub const DC: Flags = Flags(1 << 9);
    /// `UR`: the upstream reset the stream (HTTP/2 `RST_STREAM`) before or during the response.
    pub const UR: Flags = Flags(1 << 10);
    /// `SI`: stream idle timeout.
    pub const SI: Flags = Flags(1 << 11);
    /// `DPE`: the request broke the protocol (malformed body, bad Host).
    pub const DPE: Flags = Flags(1 << 12);
    /// `UPE`: the upstream response broke the protocol (its framing).
    pub const UPE: Flags = Flags(1 << 13);

    /// `OM`: refused by the overload manager.
    pub const OM: Flags = Flags(1 << 14);
    /// `UC`: the upstream connection ended before the response did (closed, failed, an
    /// unanswered PING), as opposed to `UR`, the upstream resetting the stream.
    pub const UC: Flags = Flags(1 << 15);

    /// Every flag with its code, in Envoy's order of appearance.
    pub const ALL: [(Flags, &'static str); 16] = [
        (Flags::UH, "UH"),
        (Flags::UF, "UF"),
        (Flags::UO, "UO"),
        (Flags::NR, "NR"),
        (Flags::URX, "URX"),
        (Flags::UT, "UT"),
        (Flags::DI, "DI"),
        (Flags::FI, "FI"),
        (Flags::RL, "RL"),
        (Flags::DC, "DC"),
        (Flags::UR, "UR"),
        (Flags::UC, "UC"),
        (Flags::SI, "SI"),
        (Flags::DPE, "DPE"),
        (Flags::UPE, "UPE"),
        (Flags::OM, "OM"),
    ];

    /// Adds `o`.
    #[inline]
    pub fn set(&mut self, o: Flags) {
        self.0 |= o.0;
    }

    /// Whether `o` is set.
    pub fn has(self, o: Flags) -> bool {
        self.0 & o.0 != 0
    }

    /// Envoy's rendering: codes joined by `,`, or `-` when none.
    pub fn render(self) -> String {
        let codes: Vec<&str> = Flags::ALL
            .iter()
            .filter(|(f, _)| self.has(*f))
            .map(|(_, c)| *c)
            .collect();
        if codes.is_empty() {
            "-".to_string()
        } else {
            codes.join(",")
        }
    }
}

/// The span this request is exported as (sampled requests on listeners with `tracing.otlp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// Its span id, the one sent upstream.
    pub span_id: u64,
    /// The incoming span, when the client sent one.
    pub parent: Option<u64>,
}

/// Everything observers can know about one request.
#[derive(Debug)]
pub struct StreamInfo {
    /// Monotonic start (for the duration).
    pub start: Instant,
    /// Wall-clock start.
    pub start_time: SystemTime,
    /// Method.
    pub method: Method,
    /// Authority (Host / `:authority`).
    pub authority: String,
    /// Path and query as received.
    pub path: String,
    /// Protocol version as received.
    pub version: Version,
    /// The trusted client address (`%DOWNSTREAM_REMOTE_ADDRESS%`): from `x-forwarded-for` with
    /// trusted hops (port 0), else the PROXY protocol source, else the peer.
    pub peer: SocketAddr,
    /// The connection's peer (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`).
    pub direct_peer: SocketAddr,
    /// Request headers the observers asked for, by index into [`Observers::req_headers`].
    pub req_headers: Vec<Option<HeaderValue>>,
    /// Response headers the observers asked for, by index into [`Observers::resp_headers`].
    pub resp_headers: Vec<Option<HeaderValue>>,
    /// `x-request-id` as sent upstream.
    pub request_id: Option<HeaderValue>,
    /// `x-forwarded-for` as received.
    pub forwarded_for: Option<HeaderValue>,
    /// `user-agent`.
    pub user_agent: Option<HeaderValue>,
    /// Status sent (0 when none was).
    pub status: u16,
    /// Response flags.
    pub flags: Flags,
    /// Request body bytes: declared `content-length`, the buffered body, or what streamed through.
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Request start to the end of the response.
    pub duration: Duration,
    /// Route name.
    pub route_name: Option<Arc<str>>,
    /// Cluster.
    pub upstream_cluster: Option<Arc<str>>,
    /// Endpoint of the last try.
    pub upstream_host: Option<Arc<str>>,
    /// Last try: sent to response headers.
    pub upstream_service_time: Option<Duration>,
    /// Last try: its connection's TLS version (`None`: plain TCP).
    pub upstream_tls_version: Option<&'static str>,
    /// What the client's TLS handshake established (`None`: plain TCP).
    pub downstream_tls: Option<std::sync::Arc<crate::tls::server::TlsInfo>>,
    /// Trace id: of the span sent upstream, or the client's when tracing is off.
    pub trace_id: Option<u128>,
    /// Set when the request is exported as a span.
    pub span: Option<SpanIds>,
    /// Whether the response reached its end (otherwise the record ends with `DC`).
    pub response_done: bool,
    /// The request is gRPC (`content-type: application/grpc...`).
    pub grpc: bool,
    /// The gRPC status: from the response headers (trailers-only, or the proxy's own reply),
    /// else from the response trailers.
    pub grpc_status: Option<u8>,
}

impl StreamInfo {
    /// The record of a request, from its head (after `x-request-id` is ensured); `peers` is the
    /// trusted client and the connection's peer.
    pub fn begin<B>(
        obs: &Observers,
        req: &Request<B>,
        authority: &str,
        peers: (SocketAddr, SocketAddr),
        start: Instant,
    ) -> StreamInfo {
        let h = req.headers();
        let declared = h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        StreamInfo {
            start,
            start_time: SystemTime::now(),
            method: req.method().clone(),
            authority: authority.to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
            version: req.version(),
            peer: peers.0,
            direct_peer: peers.1,
            req_headers: obs
                .req_headers
                .iter()
                .map(|n| h.get(n).map(|v| v.to_owned()))
                .collect(),
            resp_headers: Vec::new(),
            request_id: h.get(crate::headers::X_REQUEST_ID).map(|v| v.to_owned()),
            forwarded_for: h.get(crate::headers::X_FORWARDED_FOR).map(|v| v.to_owned()),
            user_agent: h.get(http::header::USER_AGENT).map(|v| v.to_owned()),
            status: 0,
            flags: Flags::default(),
            bytes_received: declared,
            bytes_sent: 0,
            duration: Duration::ZERO,
            route_name: None,
            upstream_cluster: None,
            upstream_host: None,
            upstream_service_time: None,
            upstream_tls_version: None,
            downstream_tls: None,
            trace_id: crate::trace::extract(h).0.map(|c| c.trace_id),
            span: None,
            response_done: false,
            grpc: crate::grpc::is_grpc(h),
            grpc_status: None,
        }
    }

    /// Records the response head.
    pub fn response(&mut self, obs: &Observers, status: u16, h: &Fields) {
        self.status = status;
        self.resp_headers = obs
            .resp_headers
            .iter()
            .map(|n| h.get(n).map(|v| v.to_owned()))
            .collect();
        if self.grpc {
            self.grpc_status = crate::grpc::status_of(h);
        }
    }

    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }
}

/// Something that reads finished records: an access log, a span exporter.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Takes a finished record. Must not block: the caller is the request path.
    fn observe(&self, info: &Arc<StreamInfo>);
}

/// A listener's observers, and the headers they read from records.
#[derive(Debug, Default)]
pub struct Observers {
    /// Each observer.
    pub list: Vec<Arc<dyn Observer>>,
    /// Request headers to capture.
    pub req_headers: Vec<HeaderName>,
    /// Response headers to capture.
    pub resp_headers: Vec<HeaderName>,
}

/// A record being written: shared by the request path and whatever still moves the request's
/// bytes; handed to the observers when the last holder drops it.
#[derive(Debug, Clone)]
pub struct Recorder(Arc<Pending>);

#[derive(Debug)]
struct Pending {
    observers: Arc<Observers>,
    /// Taken out when the record is written.
    info: Mutex<Option<StreamInfo>>,
    /// Request body bytes that streamed through ([`NOT_STREAMED`] until a body streams).
    streamed: AtomicU64,
}

/// `streamed` before any streamed body was counted.
const NOT_STREAMED: u64 = u64::MAX;

impl Recorder {
    /// Starts recording `info` for `observers`.
    pub fn new(observers: Arc<Observers>, info: StreamInfo) -> Recorder {
        Recorder(Arc::new(Pending {
            observers,
            info: Mutex::new(Some(info)),
            streamed: AtomicU64::new(NOT_STREAMED),
        }))
    }

    /// Changes the record (uncontended: one request's holders take turns).
    #[inline]
    pub fn update(&self, f: impl FnOnce(&mut StreamInfo)) {
        if let Some(i) = self
            .0
            .info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            f(i);
        }
    }

    /// The observers the record is for.
    pub fn observers(&self) -> &Observers {
        &self.0.observers
    }

    /// Marks the request body as streamed (its bytes are then counted, not declared).
    pub fn stream_body(&self) {
        let _ = self
            .0
            .streamed
            .compare_exchange(NOT_STREAMED, 0, Relaxed, Relaxed);
    }

    /// Counts `n` request body bytes that streamed through (once [`Recorder::stream_body`] was
    /// called; before that the declared length stands).
    #[inline]
    pub fn received(&self, n: u64) {
        let s = &self.0.streamed;
        if s.load(Relaxed) != NOT_STREAMED {
            s.fetch_add(n, Relaxed);
        }
    }

    /// The response ended (`flags`: how, e.g. `SI`), after `bytes_sent` body bytes.
    pub fn response_done(&self, bytes_sent: u64, flags: Flags) {
        self.update(|i| {
            i.bytes_sent = bytes_sent;
            i.flags.set(flags);
            i.duration = i.start.elapsed();
            i.response_done = true;
        });
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut info) = self
            .info
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        if !info.response_done {
            info.flags.set(Flags::DC);
            info.duration = info.start.elapsed();
        }
        let streamed = *self.streamed.get_mut();
        if streamed != NOT_STREAMED {
            info.bytes_received = streamed;
        }
        let info = Arc::new(info);
        for o in &self.observers.list {
            o.observe(&info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Collect(Mutex<Vec<Arc<StreamInfo>>>);

    impl Observer for Collect {
        fn observe(&self, info: &Arc<StreamInfo>) {
            self.0.lock().unwrap().push(info.clone());
        }
    }

    fn recorder(obs: &Arc<Collect>, content_length: Option<&str>) -> Recorder {
        let observers = Arc::new(Observers {
            list: vec![obs.clone()],
            req_headers: vec![HeaderName::from_static("x-a")],
            resp_headers: Vec::new(),
        });
        let mut b = http::Request::builder()
            .method("POST")
            .uri("/p?q=1")
            .header("x-a", "1");
        if let Some(n) = content_length {
            b = b.header("content-length", n);
        }
        let req = Request::from(b.body(()).unwrap());
        let info = StreamInfo::begin(
            &observers,
            &req,
            "h",
            ("10.0.0.1:9".parse().unwrap(), "10.0.0.2:9".parse().unwrap()),
            Instant::now(),
        );
        Recorder::new(observers, info)
    }

    #[test]
    fn flags_render_like_envoy() {
        assert_eq!(Flags::default().render(), "-");
        let mut f = Flags::default();
        f.set(Flags::DC);
        f.set(Flags::DI);
        assert_eq!(f.render(), "DI,DC");
    }

    #[test]
    fn written_once_when_the_last_holder_lets_go() {
        let obs = Arc::new(Collect::default());
        let r = recorder(&obs, Some("11"));
        let body = r.clone();
        body.stream_body();
        r.response_done(7, Flags::default());
        drop(r);
        // The request body still streams: nothing written yet.
        assert!(obs.0.lock().unwrap().is_empty());
        body.received(5);
        body.received(6);
        drop(body);
        let got = obs.0.lock().unwrap();
        assert_eq!(got.len(), 1);
        let i = &got[0];
        assert_eq!((i.bytes_received, i.bytes_sent), (11, 7));
        assert_eq!(i.flags, Flags::default());
        assert_eq!(i.req_headers, vec![Some(HeaderValue::from_static("1"))]);
        assert_eq!(i.path_only(), "/p");
    }

    #[test]
    fn an_abandoned_record_ends_with_dc_and_the_declared_length() {
        let obs = Arc::new(Collect::default());
        let r = recorder(&obs, Some("40"));
        r.update(|i| i.flags.set(Flags::UT));
        drop(r);
        let got = obs.0.lock().unwrap();
        assert_eq!(got[0].flags.render(), "UT,DC");
        assert_eq!(got[0].bytes_received, 40);
    }

    #[test]
    fn a_streamed_body_counts_what_arrived_not_what_was_declared() {
        let obs = Arc::new(Collect::default());
        let r = recorder(&obs, Some("100000"));
        r.stream_body();
        r.received(10);
        r.response_done(0, Flags::default());
        drop(r);
        assert_eq!(obs.0.lock().unwrap()[0].bytes_received, 10);
    }
}
