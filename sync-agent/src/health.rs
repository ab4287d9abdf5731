//! The health endpoint (`/healthz`, `/metrics`) and the `health` subcommand's client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// A snapshot that was refused, as shown on `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// Its version.
    pub version: String,
    /// Why: the validator's diagnostics or the limit exceeded.
    pub errors: Vec<String>,
}

/// What `/healthz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `manifest` or `plain` (empty before the first poll).
    pub mode: &'static str,
    /// The version `current` points to.
    pub current: Option<String>,
    /// Whether the most recent poll succeeded.
    pub last_poll_ok: bool,
    /// Unix time of the last successful poll (or of the start, when a snapshot already existed).
    pub last_success: Option<u64>,
    /// Polls failed in a row.
    pub consecutive_failures: u32,
    /// The last S3 or disk error.
    pub last_error: Option<String>,
    /// The last snapshot refused, if any since the current one was made.
    pub refused: Option<Refused>,
    /// Keys skipped by the last snapshot build (unsafe or colliding names).
    pub rejected_keys: Vec<String>,
    /// Seconds without success after which the agent reports unhealthy.
    pub stale_after_seconds: u64,
    /// Whether this is healthy (the HTTP status says the same).
    pub healthy: bool,
}

impl Health {
    /// Initial state: `current` is what was found on disk at start.
    pub fn new(interval: Duration, current: Option<String>) -> Self {
        // "Recent" is three missed polls plus a minute, so a short S3 blip or a slow
        // download does not flap the health check.
        let stale = interval * 3 + Duration::from_secs(60);
        Health {
            mode: "",
            // A snapshot found at start counts as a success at start: a restart while S3 is
            // briefly unreachable keeps serving and stays healthy for the grace period.
            last_success: current.as_ref().map(|_| unix(SystemTime::now())),
            current,
            last_poll_ok: false,
            consecutive_failures: 0,
            last_error: None,
            refused: None,
            rejected_keys: vec![],
            stale_after_seconds: stale.as_secs(),
            healthy: false,
        }
    }

    /// Healthy: a valid snapshot is current and the last poll succeeded or the last success is recent.
    pub fn is_healthy(&self, now: SystemTime) -> bool {
        self.current.is_some()
            && (self.last_poll_ok
                || self
                    .last_success
                    .is_some_and(|t| unix(now).saturating_sub(t) <= self.stale_after_seconds))
    }
}

/// Unix seconds.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Shared state behind the endpoint.
pub type Shared = Arc<Mutex<Health>>;

/// Binds `addr` and serves `/healthz` and `/metrics` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    health: Shared,
    metrics: Arc<Metrics>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let r = respond(req.uri().path(), &health, &metrics);
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(local)
}

fn respond(path: &str, health: &Shared, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/healthz" => {
            let mut h = health.lock().unwrap().clone();
            h.healthy = h.is_healthy(SystemTime::now());
            let status = if h.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string_pretty(&h).unwrap_or_default() + "\n";
            (status, "application/json", body)
        }
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// `tern-sync health`: 0 when `GET /healthz` answers 200 within 5 s.
pub async fn check(addr: SocketAddr) -> Result<(), String> {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf);
        let status = text.split_whitespace().nth(1).unwrap_or("");
        if status == "200" {
            Ok(())
        } else {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
            Err(format!("unhealthy ({status}): {body}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within 5s")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_needs_snapshot_and_recent_success() {
        let now = SystemTime::now();
        let mut h = Health::new(Duration::from_secs(5), None);
        h.last_poll_ok = true;
        assert!(!h.is_healthy(now), "no snapshot yet");
        let mut h = Health::new(Duration::from_secs(5), Some("v".into()));
        assert!(h.is_healthy(now), "grace period at start");
        h.last_success = Some(unix(now) - 76);
        assert!(!h.is_healthy(now));
        h.last_poll_ok = true;
        assert!(h.is_healthy(now));
    }
}
