//! Shared test harness: start `tern` on a config dir, start real backends, wait until ready.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Runs `tern --check --config DIR` from the repository root (no server is started).
pub fn tern_check(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("--check")
        .arg("--config")
        .arg(dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run tern --check")
}

/// Generous deadline for readiness and reload waits (polling, never a bare sleep).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Builds another binary of the workspace (`cargo build -p PACKAGE --bin NAME`, with this test's
/// profile) and returns its path: cargo gives a test only its own package's binaries.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args([
        "build",
        "-p",
        package,
        "--bin",
        name,
        "--message-format=json",
    ]);
    if env!("CARGO_BIN_EXE_tern").contains("/release/") {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build -p {package} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {name} executable"))
}

/// A free TCP port on 127.0.0.1 for a listener, below the kernel's ephemeral range
/// (32768-60999 by default): outbound connections of parallel tests take their local ports from
/// that range, so a port handed out by `bind(0)` could be taken again before tern binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A simple response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// Sends a request with a fresh HTTP/1.1 client.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// GET with headers; panics on transport errors.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, "")
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A config directory in a temp dir, with helpers to write files.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> Self {
        ConfigDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Writes `rel` (creating directories).
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// The standard admin fragment.
pub fn admin_yaml(port: u16) -> String {
    format!("admin:\n  address: 127.0.0.1:{port}\n")
}

/// An HTTP listener fragment.
pub fn listener_yaml(name: &str, port: u16, route_config: &str) -> String {
    format!("listeners:\n  - name: {name}\n    address: 127.0.0.1:{port}\n    route_config: {route_config}\n")
}

/// A route config with one catch-all direct response.
pub fn direct_yaml(name: &str, body: &str) -> String {
    format!(
        "route_configs:\n  - name: {name}\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            direct_response: {{ status: 200, body: \"{body}\" }}\n"
    )
}

/// admin.yaml, listener.yaml and routes.yaml: listener `ingress` on `port` forwarding everything
/// to cluster `be` (the one `backend`).
pub fn forward_config(cfg: &ConfigDir, admin: u16, port: u16, backend: &Backend) {
    cfg.write("admin.yaml", &admin_yaml(admin));
    cfg.write("listener.yaml", &listener_yaml("ingress", port, "main"));
    cfg.write(
        "routes.yaml",
        &format!(
            "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{ prefix: / }}\n            route: {{ cluster: be }}\nclusters:\n  - name: be\n    endpoints: [{{ address: \"{}\" }}]\n",
            backend.addr
        ),
    );
}

/// A running `tern` process, killed on drop.
pub struct Tern {
    pub child: Child,
    pub admin: u16,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Tern {
    /// Starts `tern --config <path>` with fast reload settings and waits for `/ready`.
    pub async fn start(config: &Path, admin: u16, extra: &[&str]) -> Tern {
        let t = Self::spawn(config, admin, extra);
        t.wait_ready().await;
        t
    }

    /// [`Tern::start`] with extra environment variables.
    pub async fn start_env(
        config: &Path,
        admin: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Tern {
        let t = Self::spawn_env(config, admin, extra, env);
        t.wait_ready().await;
        t
    }

    /// Starts without waiting.
    pub fn spawn(config: &Path, admin: u16, extra: &[&str]) -> Tern {
        Self::spawn_env(config, admin, extra, &[])
    }

    /// Starts without waiting, with extra environment variables.
    pub fn spawn_env(config: &Path, admin: u16, extra: &[&str], env: &[(&str, &str)]) -> Tern {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("tern.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("--config")
            .arg(config)
            .args([
                "--reload-debounce",
                "50ms",
                "--poll-interval",
                "0",
                "--log-level",
                "debug",
            ])
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start tern");
        Tern {
            child,
            admin,
            log,
            _logdir: logdir,
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    pub async fn wait_ready(&self) {
        let url = self.admin_url("/ready");
        let start = Instant::now();
        loop {
            if request("GET", &url, &[], "")
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            // A tern that exited (say, a port taken) will never be ready: say why at once.
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let exited = text.lines().any(|l| l.starts_with("tern: "));
            assert!(!exited, "tern exited during start:\n{text}");
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for tern /ready; log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (polling, with the deadline) for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "tern did not exit; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        let r = get(&self.admin_url("/config_dump"), &[]).await;
        serde_json::from_str(&r.body).unwrap()
    }

    /// One value from `/stats?format=json`.
    pub async fn stat(&self, name: &str) -> i64 {
        let r = get(&self.admin_url("/stats?format=json"), &[]).await;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v[name]
            .as_i64()
            .unwrap_or_else(|| panic!("no stat {name} in {}", r.body))
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {sig} failed");
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `url` answers with a body containing `needle`.
pub async fn wait_body(url: &str, headers: &[(&str, &str)], needle: &str) -> Resp {
    let url = url.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    wait_for(&format!("{url} to answer {needle:?}"), || {
        let url = url.clone();
        let headers = headers.clone();
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            request("GET", &url, &h, "")
                .await
                .ok()
                .filter(|r| r.body.contains(needle))
        }
    })
    .await
}

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

/// A real HTTP/1.1 backend on 127.0.0.1:0. Paths:
/// `/slow?ms=N` answers after N ms; `/upload` answers the byte count of the body;
/// `/download?bytes=N` streams N bytes; `/_hc` (health checks) answers `ctl.hc_status`
/// (default 200); anything else echoes method, path and headers as JSON.
/// Every response carries `x-backend: <name>`. Setting `ctl.status` to a status makes every
/// response other than `/_hc` that status (0, the default: normal behaviour).
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
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
}

impl Default for BackendCtl {
    fn default() -> Self {
        BackendCtl {
            status: 0.into(),
            hc_status: 200.into(),
            hc_requests: 0.into(),
            requests: 0.into(),
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
    /// `/_hc` requests received so far.
    pub fn hc_requests(&self) -> usize {
        self.hc_requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_with(name, true).await
    }

    /// `keep_alive: false`: the backend closes every connection after one response.
    pub async fn start_with(name: &str, keep_alive: bool) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = conns.clone();
        let ctl = std::sync::Arc::new(BackendCtl::default());
        let ctl2 = ctl.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let ctl = ctl2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle_backend(name, req, ctl.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            conns,
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
        Some(ctl.status.load(SeqCst)).filter(|&s| s != 0)
    };
    if let Some(status) = forced {
        let mut r = Response::new(full(format!("{name} {status}\n")));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("x-backend", http::HeaderValue::from_static(name));
        return Ok(r);
    }
    let body = match path.as_str() {
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
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
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
