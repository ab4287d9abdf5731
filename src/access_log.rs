//! Access logs: formats compiled at load time (the compiler lives in `tern_config::log_format`),
//! and one writer thread per sink fed through a bounded channel so a stalled disk never blocks a
//! request.
//!
//! An access log is an [`Observer`] of finished request records; a line is rendered on the
//! writer thread, not on the request path. When the channel is full the line is dropped and
//! counted (`access_log_dropped`). File sinks reopen on SIGUSR1.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Version};
use tern_config::log_format::{compile, Field, Format, GrpcStatusFormat, Part, DEFAULT_FORMAT};

use crate::stats::ListenerStats;
use crate::stream_info::{Observer, StreamInfo};

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

fn header(v: &Option<HeaderValue>) -> Option<String> {
    v.as_ref()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// What `f` shows for `i`; `None` renders as `-`.
fn value(i: &StreamInfo, f: &Field) -> Option<String> {
    Some(match f {
        Field::StartTime => humantime::format_rfc3339_millis(i.start_time).to_string(),
        Field::Method => i.method.to_string(),
        Field::Path => i.path.clone(),
        Field::Authority => i.authority.clone(),
        Field::ReqHeader(n) => header(i.req_headers.get(*n)?)?,
        Field::RespHeader(n) => header(i.resp_headers.get(*n)?)?,
        Field::Protocol => protocol(i.version).to_string(),
        Field::ResponseCode => i.status.to_string(),
        Field::ResponseFlags => i.flags.render(),
        Field::BytesReceived => i.bytes_received.to_string(),
        Field::BytesSent => i.bytes_sent.to_string(),
        Field::Duration => ms(i.duration),
        Field::UpstreamHost => i.upstream_host.as_deref()?.to_string(),
        Field::UpstreamCluster => i.upstream_cluster.as_deref()?.to_string(),
        Field::UpstreamServiceTime => ms(i.upstream_service_time?),
        Field::RouteName => i.route_name.as_deref()?.to_string(),
        Field::DownstreamRemoteAddress => i.peer.to_string(),
        Field::DownstreamRemoteAddressWithoutPort => i.peer.ip().to_string(),
        Field::DownstreamDirectRemoteAddress => i.direct_peer.to_string(),
        Field::DownstreamDirectRemoteAddressWithoutPort => i.direct_peer.ip().to_string(),
        Field::TraceId => format!("{:032x}", i.trace_id?),
        Field::UpstreamTlsVersion => i.upstream_tls_version?.to_string(),
        Field::DownstreamTlsVersion => i.downstream_tls.as_ref()?.version?.to_string(),
        Field::DownstreamTlsCipher => i.downstream_tls.as_ref()?.cipher?.to_string(),
        Field::RequestedServerName => i.downstream_tls.as_ref()?.sni.as_deref()?.to_string(),
        Field::DownstreamPeerSubject => i
            .downstream_tls
            .as_ref()?
            .peer
            .as_ref()?
            .facts
            .subject
            .clone(),
        Field::DownstreamPeerUriSan => {
            let uris = &i.downstream_tls.as_ref()?.peer.as_ref()?.facts.uris;
            (!uris.is_empty()).then(|| uris.join(","))?
        }
        Field::GrpcStatus(f) => {
            let code = grpc_status(i)?;
            match f {
                GrpcStatusFormat::CamelString => crate::grpc::camel_name(code).to_string(),
                GrpcStatusFormat::SnakeString => crate::grpc::snake_name(code).to_string(),
                GrpcStatusFormat::Number => code.to_string(),
            }
        }
    })
}

/// A gRPC request's status as Envoy's `%GRPC_STATUS%` finds it: the trailers', else the
/// trailers-only headers', else the HTTP status mapped; none for other requests.
fn grpc_status(i: &StreamInfo) -> Option<u8> {
    if !i.grpc {
        return None;
    }
    i.grpc_status
        .or_else(|| (i.status != 0).then(|| crate::grpc::from_http(i.status)))
}

/// The line (without newline) for `i` in `format`.
pub fn render(i: &StreamInfo, format: &Format) -> String {
    match format {
        Format::Text(parts) => {
            let mut out = String::with_capacity(256);
            for p in parts {
                match p {
                    Part::Lit(s) => out.push_str(s),
                    Part::Field(f) => match value(i, f) {
                        Some(v) => out.push_str(&v),
                        None => out.push('-'),
                    },
                }
            }
            out
        }
        Format::Json => {
            let s = |v: Option<String>| v.map_or(serde_json::Value::Null, Into::into);
            let j = serde_json::json!({
                "start_time": s(value(i, &Field::StartTime)),
                "method": i.method.as_str(),
                "authority": i.authority,
                "path": i.path,
                "protocol": protocol(i.version),
                "response_code": i.status,
                "response_flags": i.flags.render(),
                "bytes_received": i.bytes_received,
                "bytes_sent": i.bytes_sent,
                "duration_ms": i.duration.as_millis() as u64,
                "upstream_host": s(value(i, &Field::UpstreamHost)),
                "upstream_cluster": s(value(i, &Field::UpstreamCluster)),
                "upstream_service_time_ms": i.upstream_service_time.map(|d| d.as_millis() as u64),
                "route_name": s(value(i, &Field::RouteName)),
                "request_id": s(header(&i.request_id)),
                "x_forwarded_for": s(header(&i.forwarded_for)),
                "user_agent": s(header(&i.user_agent)),
                "trace_id": s(value(i, &Field::TraceId)),
                "downstream_remote_address": i.peer.to_string(),
                "downstream_direct_remote_address": i.direct_peer.to_string(),
                "grpc_status": grpc_status(i),
            });
            j.to_string()
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

type Line = (Arc<Format>, Arc<StreamInfo>);

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
            buf.extend_from_slice(render(&entry, &fmt).as_bytes());
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

    /// The request headers its formats show (indexes of `%REQ(..)%`).
    pub fn req_headers(&self) -> &[HeaderName] {
        &self.req_headers
    }

    /// The response headers its formats show (indexes of `%RESP(..)%`).
    pub fn resp_headers(&self) -> &[HeaderName] {
        &self.resp_headers
    }
}

impl Observer for AccessLog {
    /// Queues the record on every sink without waiting; a full sink drops it and counts it.
    fn observe(&self, info: &Arc<StreamInfo>) {
        for (sink, fmt) in &self.sinks {
            // Counted before the send, so the writer never takes it below zero.
            sink.queued.fetch_add(1, Relaxed);
            match sink.tx.try_send((fmt.clone(), info.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    sink.queued.fetch_sub(1, Relaxed);
                    self.stats.access_log_dropped.inc()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Fields, Request};
    use crate::stream_info::{Flags, Observers};
    use std::time::Instant;

    /// A record captured for `fmt`, with the format compiled against the same header lists.
    fn record_for(fmt: &str) -> (Format, StreamInfo) {
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
        let req = Request::from(req);
        let obs = Observers {
            list: Vec::new(),
            req_headers: rq,
            resp_headers: rs,
        };
        let peers = (
            "203.0.113.9:0".parse().unwrap(),
            "10.0.0.9:5555".parse().unwrap(),
        );
        let mut i = StreamInfo::begin(&obs, &req, "example.com", peers, Instant::now());
        let mut rh = Fields::new();
        rh.insert(
            http::HeaderName::from_static("x-backend"),
            "b1".parse().unwrap(),
        );
        i.response(&obs, 503, &rh);
        i.flags.set(Flags::UF);
        i.flags.set(Flags::URX);
        i.bytes_sent = 23;
        i.duration = Duration::from_millis(42);
        i.upstream_host = Some("127.0.0.1:8080".into());
        i.trace_id = Some(0xabc);
        (f, i)
    }

    #[test]
    fn format_strings_render() {
        let (f, i) = record_for(
            "%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-Custom)% %RESP(x-backend)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %UPSTREAM_HOST% %ROUTE_NAME% %TRACE_ID% 100%%",
        );
        assert_eq!(
            render(&i, &f),
            "POST /a/b?c=1 v b1 503 UF,URX 12 23 42 127.0.0.1:8080 - 00000000000000000000000000000abc 100%"
        );
        let (f, i) = record_for(DEFAULT_FORMAT);
        let line = render(&i, &f);
        assert!(line.contains("\"POST /a/b?c=1 HTTP/1.1\" 503 UF,URX 12 23 42 - \"-\" \"curl/8\" \"rid\" \"example.com\" \"127.0.0.1:8080\""), "{line}");
        let (f, i) = record_for("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%");
        assert_eq!(
            render(&i, &f),
            "203.0.113.9:0 203.0.113.9 10.0.0.9:5555 10.0.0.9"
        );
    }

    #[test]
    fn json_lines_have_every_field() {
        let (_, i) = record_for("%REQ(X-Custom)% %RESP(x-backend)%");
        let j: serde_json::Value = serde_json::from_str(&render(&i, &Format::Json)).unwrap();
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
        assert_eq!(j["downstream_remote_address"], "203.0.113.9:0");
        assert_eq!(j["downstream_direct_remote_address"], "10.0.0.9:5555");
    }
}
