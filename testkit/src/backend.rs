//! Real HTTP/1.1 backends for the proxy to forward to, with runtime behaviour switches and a
//! record of the requests they received (what a proxy under test forwarded: method, target, host,
//! headers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type BoxedBody = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> BoxedBody {
    Full::new(s.into()).map_err(|e| match e {}).boxed()
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// A real HTTP/1.1 backend on 127.0.0.1:0 (or an address of the test's choice). Paths:
/// `/slow?ms=N` answers after N ms; `/hold` answers once `ctl.release_holds()` was called;
/// `/upload` answers the byte count of the body;
/// `/download?bytes=N` streams N bytes; `/_hc` (health checks) answers `ctl.hc_status`
/// (default 200); anything else echoes method, path and headers as JSON (a header sent several
/// times as its values joined by `, `).
/// Every response carries `x-backend: <name>`. Setting `ctl.status` to a status makes every
/// response other than `/_hc` that status (0, the default: normal behaviour); `ctl.fail_next`
/// and `ctl.delay_next` script the next requests (answer a status, answer late). After
/// `ctl.record(true)` every request other than `/_hc` is recorded in `ctl.seen()`.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Connections open now.
    pub open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Behaviour switches and request counts.
    pub ctl: std::sync::Arc<BackendCtl>,
    task: tokio::task::JoinHandle<()>,
}

/// Runtime switches of a [`Backend`].
#[derive(Debug)]
pub struct BackendCtl {
    /// When not 0, every response (except `/_hc`) gets this status.
    pub status: std::sync::atomic::AtomicU16,
    /// Status of `/_hc` (default 200).
    pub hc_status: std::sync::atomic::AtomicU16,
    /// `/_hc` requests received.
    pub hc_requests: std::sync::atomic::AtomicUsize,
    /// Other requests received.
    pub requests: std::sync::atomic::AtomicUsize,
    /// `/hold` requests waiting now.
    pub held: std::sync::atomic::AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
    script: std::sync::Mutex<Script>,
    /// Off by default: a load test's requests would pile up.
    recording: std::sync::atomic::AtomicBool,
    seen: std::sync::Mutex<Vec<Seen>>,
}

/// One request a [`Backend`] received, as it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Request target (path and query).
    pub uri: String,
    /// The `Host` header (empty when absent).
    pub host: String,
    /// Every header.
    pub headers: http::HeaderMap,
}

/// What the next requests do instead of answering normally.
#[derive(Debug, Default)]
struct Script {
    /// This many next requests are answered with `fail_status`.
    fail: usize,
    fail_status: u16,
    /// This many next requests wait `delay` before answering.
    slow: usize,
    delay: Duration,
}

impl Default for BackendCtl {
    fn default() -> Self {
        BackendCtl {
            status: 0.into(),
            hc_status: 200.into(),
            hc_requests: 0.into(),
            requests: 0.into(),
            held: 0.into(),
            release: tokio::sync::watch::Sender::new(false),
            script: Default::default(),
            recording: false.into(),
            seen: Default::default(),
        }
    }
}

impl BackendCtl {
    /// Makes every response (except `/_hc`) `status`; 0 restores normal answers.
    pub fn set_status(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }
    /// Sets the status of `/_hc`.
    pub fn set_hc_status(&self, status: u16) {
        self.hc_status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }
    /// Requests other than `/_hc` received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Lets every `/hold` request (waiting or to come) answer.
    pub fn release_holds(&self) {
        self.release.send_replace(true);
    }
    /// `/hold` requests waiting now.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// `/_hc` requests received so far.
    pub fn hc_requests(&self) -> usize {
        self.hc_requests.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// The next `n` requests (other than `/_hc`) are answered `status` (`usize::MAX`: all).
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut s = self.script.lock().unwrap();
        s.fail = n;
        s.fail_status = status;
    }
    /// The next `n` requests (other than `/_hc`) wait `delay` before answering.
    pub fn delay_next(&self, n: usize, delay: Duration) {
        let mut s = self.script.lock().unwrap();
        s.slow = n;
        s.delay = delay;
    }
    /// Forgets the scripted failures and delays, and the forced status.
    pub fn reset_script(&self) {
        *self.script.lock().unwrap() = Script::default();
        self.set_status(0);
    }
    /// Starts (or stops) recording the requests received in [`BackendCtl::seen`].
    pub fn record(&self, on: bool) {
        self.recording
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
    /// The requests recorded so far (other than `/_hc`), oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// The requests received so far, which are forgotten.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Backend {
    /// Starts a backend that names itself `name` in its answers.
    pub async fn start(name: &str) -> Backend {
        Self::start_with(name, true).await
    }

    /// `keep_alive: false`: the backend closes every connection after one response.
    pub async fn start_with(name: &str, keep_alive: bool) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap(), keep_alive).await
    }

    /// Starts on `addr`, e.g. `127.0.0.2:<port>`: several backends on one port and different
    /// loopback addresses are what a DNS name with several A records points at.
    pub async fn start_on(name: &str, addr: SocketAddr, keep_alive: bool) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = conns.clone();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open2 = open.clone();
        let ctl = std::sync::Arc::new(BackendCtl::default());
        let ctl2 = ctl.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let ctl = ctl2.clone();
                let open = open2.clone();
                open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle_backend(name, req, ctl.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Backend {
            addr,
            conns,
            open,
            ctl,
            task,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle_backend(
    name: &'static str,
    req: Request<Incoming>,
    ctl: std::sync::Arc<BackendCtl>,
) -> Result<Response<BoxedBody>, Infallible> {
    use std::sync::atomic::Ordering::SeqCst;
    let path = req.uri().path().to_string();
    let forced = if path == "/_hc" {
        ctl.hc_requests.fetch_add(1, SeqCst);
        Some(ctl.hc_status.load(SeqCst))
    } else {
        ctl.requests.fetch_add(1, SeqCst);
        if ctl.recording.load(SeqCst) {
            ctl.seen.lock().unwrap().push(Seen {
                method: req.method().to_string(),
                uri: req.uri().to_string(),
                host: req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                headers: req.headers().clone(),
            });
        }
        let (failed, delay) = {
            let mut s = ctl.script.lock().unwrap();
            let failed = (s.fail > 0).then(|| {
                s.fail -= 1;
                s.fail_status
            });
            let delay = (s.slow > 0).then(|| {
                s.slow -= 1;
                s.delay
            });
            (failed, delay)
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        failed.or(Some(ctl.status.load(SeqCst)).filter(|&s| s != 0))
    };
    if let Some(status) = forced {
        let mut r = Response::new(full(format!("{name} {status}\n")));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("x-backend", http::HeaderValue::from_static(name));
        return Ok(r);
    }
    let body = match path.as_str() {
        "/hold" => {
            ctl.held.fetch_add(1, SeqCst);
            let mut rx = ctl.release.subscribe();
            let _ = rx.wait_for(|r| *r).await;
            ctl.held.fetch_sub(1, SeqCst);
            full(format!("held {name}\n"))
        }
        "/slow" => {
            let ms = query_u64(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(format!("slow {name}\n"))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    n += d.len() as u64;
                }
            }
            full(format!("{n}"))
        }
        "/download" => {
            let total = query_u64(&req, "bytes").unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                        left - n,
                    ))
                }
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
        _ => {
            // A header sent several times shows its values joined by ", ", in order.
            let mut headers = serde_json::Map::new();
            for k in req.headers().keys() {
                let values: Vec<&str> = req
                    .headers()
                    .get_all(k)
                    .iter()
                    .map(|v| v.to_str().unwrap_or(""))
                    .collect();
                headers.insert(k.to_string(), values.join(", ").into());
            }
            let j = serde_json::json!({
                "backend": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            full(j.to_string())
        }
    };
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("x-backend", http::HeaderValue::from_static(name));
    Ok(r)
}
