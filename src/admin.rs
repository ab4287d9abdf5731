//! The admin endpoint: readiness, config dump, stats, health-check flip for draining.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::Running;
use crate::server::Shared;

/// Starts the admin endpoint on a bound socket.
pub fn spawn(sock: std::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<Running> {
    let listener = TcpListener::from_std(sock)?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                _ = token.cancelled() => break,
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, shared.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Running::new(stop, task))
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let m = req.method();
    let r = match (m, path) {
        (&Method::GET, "/ready") => {
            if shared.draining.load(Ordering::SeqCst) {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "DRAINING\n")
            } else if shared.hc_failed.load(Ordering::SeqCst) {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "HEALTH CHECK FAILED\n")
            } else {
                reply(StatusCode::OK, TEXT, "LIVE\n")
            }
        }
        (&Method::POST, "/healthcheck/fail") => {
            shared.hc_failed.store(true, Ordering::SeqCst);
            reply(StatusCode::OK, TEXT, "OK\n")
        }
        (&Method::POST, "/healthcheck/ok") => {
            shared.hc_failed.store(false, Ordering::SeqCst);
            reply(StatusCode::OK, TEXT, "OK\n")
        }
        (&Method::GET, "/config_dump") => config_dump(&shared),
        (&Method::GET, "/logging") => reply(StatusCode::OK, TEXT, format!("{}\n", crate::logging::current())),
        (&Method::POST, "/logging") => match query(&req, "level") {
            None | Some("") => reply(StatusCode::BAD_REQUEST, TEXT, "usage: POST /logging?level=LEVEL_OR_FILTER\n"),
            Some(l) => {
                // Filters such as `tern=debug,hyper=warn` arrive percent-encoded.
                let l = l.replace("%3D", "=").replace("%3d", "=").replace("%2C", ",").replace("%2c", ",");
                match crate::logging::set_level(&l) {
                    Ok(()) => {
                        tracing::info!(filter = %l, "log level changed");
                        reply(StatusCode::OK, TEXT, format!("{l}\n"))
                    }
                    Err(e) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
                }
            }
        },
        (&Method::GET, "/stats/prometheus") => {
            let v = shared.snapshot.load().version.clone();
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", shared.stats.prometheus(&v))
        }
        (&Method::GET, "/stats") => {
            let v = shared.snapshot.load().version.clone();
            let filter = match query(&req, "filter").map(regex::Regex::new) {
                Some(Ok(re)) => Some(re),
                Some(Err(e)) => {
                    return Ok(reply(StatusCode::BAD_REQUEST, TEXT, format!("bad filter regex: {e}\n")))
                }
                None => None,
            };
            let text = shared.stats.text(&v, filter.as_ref());
            if query(&req, "format") == Some("json") {
                let map: serde_json::Map<String, serde_json::Value> = text
                    .lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| {
                        let v = match v.parse::<i64>() {
                            Ok(n) => n.into(),
                            Err(_) => serde_json::Value::String(v.to_string()),
                        };
                        (k.to_string(), v)
                    })
                    .collect();
                reply(StatusCode::OK, JSON, serde_json::Value::Object(map).to_string())
            } else {
                reply(StatusCode::OK, TEXT, text)
            }
        }
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            TEXT,
            "tern admin\n  GET  /ready\n  GET  /config_dump\n  GET  /stats[?filter=REGEX&format=json]\n  GET  /stats/prometheus\n  POST /healthcheck/fail\n  POST /healthcheck/ok\n  GET  /logging\n  POST /logging?level=LEVEL\n",
        ),
        (_, "/ready" | "/config_dump" | "/logging" | "/stats" | "/stats/prometheus" | "/healthcheck/fail" | "/healthcheck/ok") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    };
    Ok(r)
}

fn config_dump(shared: &Shared) -> Response<Full<Bytes>> {
    let snap = shared.snapshot.load_full();
    let status = shared
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let last_error = status.last_error.map(|e| {
        serde_json::json!({
            "at": rfc3339(e.at),
            "version": e.version,
            "message": e.message,
            "diagnostics": e.diagnostics,
        })
    });
    let c = &shared.stats.config;
    let body = serde_json::json!({
        "version": snap.version,
        "loaded_at": rfc3339(snap.loaded_at),
        "config_path": shared.config_path,
        "source_files": snap.files(),
        "config": &snap.config,
        "last_reload_error": last_error,
        "reloads": {
            "attempt": c.update_attempt.get(),
            "success": c.update_success.get(),
            "rejected": c.update_rejected.get(),
            "unchanged": c.update_unchanged.get(),
        },
    });
    reply(
        StatusCode::OK,
        JSON,
        serde_json::to_string_pretty(&body).unwrap_or_default(),
    )
}
