//! Access logs: formats compiled at load time, entries filled along the request path, and one
//! writer thread per sink fed through a bounded channel so a stalled disk never blocks a request.
//!
//! An entry is rendered on the writer thread, not on the request path; when the channel is full
//! the line is dropped and counted (`access_log_dropped`). File sinks reopen on SIGUSR1.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use tern_config::log_format::{compile, Field, Format, Part, DEFAULT_FORMAT};

use crate::stats::ListenerStats;

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
    /// `UR`: upstream reset before response headers.
    pub const UR: Flags = Flags(1 << 10);
    /// `SI`: stream idle timeout.
    pub const SI: Flags = Flags(1 << 11);

    /// Every flag with its code, in Envoy's order of appearance.
    pub const ALL: [(Flags, &'static str); 12] = [
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
        (Flags::SI, "SI"),
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

/// Everything a line can show about one request.
#[derive(Debug)]
pub struct Entry {
    /// Wall-clock start.
    pub start_time: SystemTime,
    /// Method.
    pub method: Method,
    /// Authority (Host / `:authority`).
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// Protocol version.
    pub version: Version,
    /// Client address.
    pub peer: SocketAddr,
    /// Request headers the formats asked for (by index), plus the fixed ones below.
    pub req_headers: Vec<Option<HeaderValue>>,
    /// Response headers the formats asked for.
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
    /// Request body bytes (declared `content-length`, or the buffered body).
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Request start to response end.
    pub duration: Duration,
    /// Endpoint of the last try.
    pub upstream_host: Option<Arc<str>>,
    /// Cluster.
    pub upstream_cluster: Option<Arc<str>>,
    /// Last try: sent to response headers.
    pub upstream_service_time: Option<Duration>,
    /// Route name.
    pub route_name: Option<Arc<str>>,
    /// Trace id.
    pub trace_id: Option<u128>,
}

impl Entry {
    /// Starts an entry from the request head (after `x-request-id` is ensured).
    pub fn begin<B>(
        log: &AccessLog,
        req: &http::Request<B>,
        authority: &str,
        peer: SocketAddr,
    ) -> Entry {
        let h = req.headers();
        let declared = h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        Entry {
            start_time: SystemTime::now(),
            method: req.method().clone(),
            authority: authority.to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
            version: req.version(),
            peer,
            req_headers: log.req_headers.iter().map(|n| h.get(n).cloned()).collect(),
            resp_headers: Vec::new(),
            request_id: h.get(crate::headers::X_REQUEST_ID).cloned(),
            forwarded_for: h.get(crate::headers::X_FORWARDED_FOR).cloned(),
            user_agent: h.get(http::header::USER_AGENT).cloned(),
            status: 0,
            flags: Flags::default(),
            bytes_received: declared,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_host: None,
            upstream_cluster: None,
            upstream_service_time: None,
            route_name: None,
            trace_id: crate::trace::extract(h).0.map(|c| c.trace_id),
        }
    }

    /// Records the response head.
    pub fn response(&mut self, log: &AccessLog, status: u16, h: &HeaderMap) {
        self.status = status;
        self.resp_headers = log.resp_headers.iter().map(|n| h.get(n).cloned()).collect();
    }

    fn ms(d: Duration) -> String {
        d.as_millis().to_string()
    }

    fn value(&self, f: &Field) -> Option<String> {
        let hv = |v: &Option<HeaderValue>| {
            v.as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Some(match f {
            Field::StartTime => humantime::format_rfc3339_millis(self.start_time).to_string(),
            Field::Method => self.method.to_string(),
            Field::Path => self.path.clone(),
            Field::Authority => self.authority.clone(),
            Field::ReqHeader(i) => hv(self.req_headers.get(*i)?)?,
            Field::RespHeader(i) => hv(self.resp_headers.get(*i)?)?,
            Field::Protocol => protocol(self.version).to_string(),
            Field::ResponseCode => self.status.to_string(),
            Field::ResponseFlags => self.flags.render(),
            Field::BytesReceived => self.bytes_received.to_string(),
            Field::BytesSent => self.bytes_sent.to_string(),
            Field::Duration => Self::ms(self.duration),
            Field::UpstreamHost => self.upstream_host.as_deref()?.to_string(),
            Field::UpstreamCluster => self.upstream_cluster.as_deref()?.to_string(),
            Field::UpstreamServiceTime => Self::ms(self.upstream_service_time?),
            Field::RouteName => self.route_name.as_deref()?.to_string(),
            Field::DownstreamRemoteAddress => self.peer.to_string(),
            Field::TraceId => format!("{:032x}", self.trace_id?),
        })
    }

    /// The line (without newline) in `format`.
    pub fn render(&self, format: &Format) -> String {
        match format {
            Format::Text(parts) => {
                let mut out = String::with_capacity(256);
                for p in parts {
                    match p {
                        Part::Lit(s) => out.push_str(s),
                        Part::Field(f) => match self.value(f) {
                            Some(v) => out.push_str(&v),
                            None => out.push('-'),
                        },
                    }
                }
                out
            }
            Format::Json => {
                let s = |v: Option<String>| v.map_or(serde_json::Value::Null, Into::into);
                let hv = |v: &Option<HeaderValue>| {
                    s(v.as_ref()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()))
                };
                let j = serde_json::json!({
                    "start_time": s(self.value(&Field::StartTime)),
                    "method": self.method.as_str(),
                    "authority": self.authority,
                    "path": self.path,
                    "protocol": protocol(self.version),
                    "response_code": self.status,
                    "response_flags": self.flags.render(),
                    "bytes_received": self.bytes_received,
                    "bytes_sent": self.bytes_sent,
                    "duration_ms": self.duration.as_millis() as u64,
                    "upstream_host": s(self.value(&Field::UpstreamHost)),
                    "upstream_cluster": s(self.value(&Field::UpstreamCluster)),
                    "upstream_service_time_ms": self.upstream_service_time.map(|d| d.as_millis() as u64),
                    "route_name": s(self.value(&Field::RouteName)),
                    "request_id": hv(&self.request_id),
                    "x_forwarded_for": hv(&self.forwarded_for),
                    "user_agent": hv(&self.user_agent),
                    "trace_id": s(self.value(&Field::TraceId)),
                    "downstream_remote_address": self.peer.to_string(),
                });
                j.to_string()
            }
        }
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// Bumped by SIGUSR1: every file sink reopens its file before its next write.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Asks every file sink to reopen its file (log rotation).
pub fn reopen_all() {
    REOPEN.fetch_add(1, Relaxed);
}

type Line = (Arc<Format>, Arc<Entry>);

/// One destination with its writer thread. Shared by every listener logging to the same path
/// and carried across reloads (the registry holds it weakly; the thread ends with the last user).
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<Line>,
    /// Lines queued and not yet written (for the flush at shutdown).
    queued: Arc<AtomicU64>,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Sink>>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Weak<Sink>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

enum Out {
    Stdout,
    Stderr,
    File(PathBuf, Option<std::io::BufWriter<std::fs::File>>),
}

impl Out {
    fn open(path: &Path) -> Option<std::io::BufWriter<std::fs::File>> {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(std::io::BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open access log");
                None
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        let _ = match self {
            Out::Stdout => std::io::stdout().lock().write_all(line),
            Out::Stderr => std::io::stderr().lock().write_all(line),
            Out::File(p, f) => {
                if f.is_none() {
                    *f = Out::open(p);
                }
                match f {
                    Some(f) => f.write_all(line),
                    None => Ok(()),
                }
            }
        };
    }

    fn flush(&mut self) {
        if let Out::File(_, Some(f)) = self {
            let _ = f.flush();
        }
    }

    fn reopen(&mut self) {
        if let Out::File(p, f) = self {
            if let Some(mut old) = f.take() {
                let _ = old.flush();
            }
            *f = Out::open(p);
        }
    }
}

impl Sink {
    /// The sink for `path`, reusing a running one. The buffer bound of the first user wins.
    pub fn get(path: &str, buffer_lines: usize) -> Result<Arc<Sink>, String> {
        let key = PathBuf::from(path);
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = reg.get(&key).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let out = match path {
            "/dev/stdout" => Out::Stdout,
            "/dev/stderr" => Out::Stderr,
            _ => {
                let dir = key.parent().filter(|d| !d.as_os_str().is_empty());
                if let Some(d) = dir {
                    if !d.is_dir() {
                        return Err(format!(
                            "access log `{path}`: directory {} does not exist",
                            d.display()
                        ));
                    }
                }
                // Opened by the writer thread: opening a FIFO without a reader would block here.
                Out::File(key.clone(), None)
            }
        };
        let (tx, rx) = sync_channel::<Line>(buffer_lines.max(1));
        let queued = Arc::new(AtomicU64::new(0));
        std::thread::Builder::new()
            .name("tern-access-log".into())
            .spawn({
                let queued = queued.clone();
                move || writer(out, rx, &queued)
            })
            .map_err(|e| format!("access log `{path}`: cannot start writer: {e}"))?;
        let s = Arc::new(Sink { tx, queued });
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(key, Arc::downgrade(&s));
        Ok(s)
    }
}

/// Waits (up to `limit`) until every sink has written the lines queued so far: at shutdown,
/// so the last requests' lines are on disk before the process exits.
pub async fn flush_all(limit: Duration) {
    let sinks: Vec<Arc<Sink>> = {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.values().filter_map(Weak::upgrade).collect()
    };
    let deadline = tokio::time::Instant::now() + limit;
    while sinks.iter().any(|s| s.queued.load(Relaxed) > 0) {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn writer(mut out: Out, rx: std::sync::mpsc::Receiver<Line>, queued: &AtomicU64) {
    let mut generation = REOPEN.load(Relaxed);
    if let Out::File(p, f) = &mut out {
        *f = Out::open(p);
    }
    let mut buf = Vec::with_capacity(512);
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let g = REOPEN.load(Relaxed);
        if g != generation {
            generation = g;
            out.reopen();
        }
        // Write everything queued, then flush once: one syscall per burst, not per line.
        let mut next = first;
        let mut written = 0;
        while let Some((fmt, entry)) = next {
            buf.clear();
            buf.extend_from_slice(entry.render(&fmt).as_bytes());
            buf.push(b'\n');
            out.write(&buf);
            written += 1;
            next = rx.try_recv().ok();
        }
        out.flush();
        queued.fetch_sub(written, Relaxed);
    }
    out.flush();
}

/// A listener's access logging: its sinks with their formats, and the headers they need.
#[derive(Debug)]
pub struct AccessLog {
    sinks: Vec<(Arc<Sink>, Arc<Format>)>,
    req_headers: Vec<HeaderName>,
    resp_headers: Vec<HeaderName>,
    stats: Arc<ListenerStats>,
}

/// One configured sink: path, format (`json`, a format string, or `None` for the default) and
/// buffer bound.
pub struct SinkSpec<'a> {
    /// `/dev/stdout`, `/dev/stderr` or a file path.
    pub path: &'a str,
    /// Format.
    pub format: Option<&'a str>,
    /// Buffer bound in lines.
    pub buffer_lines: Option<usize>,
}

impl AccessLog {
    /// Compiles the formats and starts (or reuses) the sinks. Runs at config load only.
    pub fn build(specs: &[SinkSpec<'_>], stats: Arc<ListenerStats>) -> Result<AccessLog, String> {
        let mut req_headers = Vec::new();
        let mut resp_headers = Vec::new();
        let mut sinks = Vec::new();
        for s in specs {
            let f = compile(
                s.format.unwrap_or(DEFAULT_FORMAT),
                &mut req_headers,
                &mut resp_headers,
            )?;
            let sink = Sink::get(
                s.path,
                s.buffer_lines
                    .unwrap_or(tern_config::defaults::ACCESS_LOG_BUFFER_LINES),
            )?;
            sinks.push((sink, Arc::new(f)));
        }
        Ok(AccessLog {
            sinks,
            req_headers,
            resp_headers,
            stats,
        })
    }

    /// Queues `entry` on every sink without waiting; a full sink drops it and counts it.
    pub fn emit(&self, entry: Entry) {
        let entry = Arc::new(entry);
        for (sink, fmt) in &self.sinks {
            // Counted before the send, so the writer never takes it below zero.
            sink.queued.fetch_add(1, Relaxed);
            match sink.tx.try_send((fmt.clone(), entry.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    sink.queued.fetch_sub(1, Relaxed);
                    self.stats.access_log_dropped.inc()
                }
            }
        }
    }
}

/// An entry in progress: written with `DC` if the request is abandoned before it is finished
/// (the client went away while the proxy was still waiting on the upstream).
#[derive(Debug, Default)]
pub struct Pending(pub Option<(Arc<AccessLog>, Box<Entry>, Instant)>);

impl Pending {
    /// Writes the entry now.
    pub fn finish(&mut self, bytes_sent: u64, extra: Flags) {
        if let Some((log, mut e, start)) = self.0.take() {
            e.bytes_sent = bytes_sent;
            e.flags.set(extra);
            e.duration = start.elapsed();
            log.emit(*e);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(0, Flags::DC);
    }
}

/// Renders a flags value for tests and docs.
pub fn flags_string(f: Flags) -> String {
    let mut s = String::new();
    let _ = write!(s, "{}", f.render());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        entry_for("%REQ(X-Custom)% %RESP(x-backend)%").1
    }

    /// An entry captured for `fmt`, with the format compiled against the same header lists.
    fn entry_for(fmt: &str) -> (Format, Entry) {
        let (mut rq, mut rs) = (Vec::new(), Vec::new());
        let f = compile(fmt, &mut rq, &mut rs).unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri("/a/b?c=1")
            .header("x-request-id", "rid")
            .header("user-agent", "curl/8")
            .header("x-custom", "v")
            .header("content-length", "12")
            .body(())
            .unwrap();
        let log = AccessLog {
            sinks: vec![],
            req_headers: rq,
            resp_headers: rs,
            stats: Arc::default(),
        };
        let mut e = Entry::begin(&log, &req, "example.com", "10.0.0.9:5555".parse().unwrap());
        let mut rh = HeaderMap::new();
        rh.insert("x-backend", "b1".parse().unwrap());
        e.response(&log, 503, &rh);
        e.flags.set(Flags::UF);
        e.flags.set(Flags::URX);
        e.bytes_sent = 23;
        e.duration = Duration::from_millis(42);
        e.upstream_host = Some("127.0.0.1:8080".into());
        e.trace_id = Some(0xabc);
        (f, e)
    }

    #[test]
    fn format_strings_compile_and_render() {
        let (f, e) = entry_for(
            "%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-Custom)% %RESP(x-backend)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %UPSTREAM_HOST% %ROUTE_NAME% %TRACE_ID% 100%%",
        );
        assert_eq!(
            e.render(&f),
            "POST /a/b?c=1 v b1 503 UF,URX 12 23 42 127.0.0.1:8080 - 00000000000000000000000000000abc 100%"
        );
        let (f, e) = entry_for(DEFAULT_FORMAT);
        let line = e.render(&f);
        assert!(line.contains("\"POST /a/b?c=1 HTTP/1.1\" 503 UF,URX 12 23 42 - \"-\" \"curl/8\" \"rid\" \"example.com\" \"127.0.0.1:8080\""), "{line}");
    }

    #[test]
    fn json_lines_have_every_field() {
        let j: serde_json::Value = serde_json::from_str(&entry().render(&Format::Json)).unwrap();
        assert_eq!(j["method"], "POST");
        assert_eq!(j["path"], "/a/b?c=1");
        assert_eq!(j["authority"], "example.com");
        assert_eq!(j["protocol"], "HTTP/1.1");
        assert_eq!(j["response_code"], 503);
        assert_eq!(j["response_flags"], "UF,URX");
        assert_eq!(j["bytes_received"], 12);
        assert_eq!(j["bytes_sent"], 23);
        assert_eq!(j["duration_ms"], 42);
        assert_eq!(j["upstream_host"], "127.0.0.1:8080");
        assert_eq!(j["upstream_service_time_ms"], serde_json::Value::Null);
        assert_eq!(j["request_id"], "rid");
        assert_eq!(j["user_agent"], "curl/8");
        assert_eq!(j["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(j["trace_id"], "00000000000000000000000000000abc");
        assert!(j["start_time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn flags_render_like_envoy() {
        assert_eq!(flags_string(Flags::default()), "-");
        let mut f = Flags::default();
        f.set(Flags::DC);
        f.set(Flags::DI);
        assert_eq!(flags_string(f), "DI,DC");
    }
}
