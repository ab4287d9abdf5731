//! The admin endpoint: readiness, config dump, stats, health-check flip for draining.
//!
//! It is hardened like a listener, with fixed limits: a header timeout (silent, slow and idle
//! connections close), at most 256 connections, an accept loop that pauses when out of
//! descriptors, and no state change (POST) from a browser page of another site.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::{AcceptBackoff, Running};
use crate::snapshot::timeout_or;
use crate::state::Shared;

/// Starts the admin endpoint on a bound socket.
pub fn spawn(sock: std::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<Running> {
    let listener = TcpListener::from_std(sock)?;
    let local = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let open = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(async move {
        let mut backoff = AcceptBackoff::default();
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        let pause = backoff.failed("admin", local, &e, &shared.stats.server);
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => continue,
                            _ = token.cancelled() => break,
                        }
                    }
                },
                _ = token.cancelled() => break,
            };
            backoff.succeeded("admin", local);
            // A flood of admin connections must not take every descriptor from the listeners.
            if open.load(Ordering::Relaxed) >= tern_config::defaults::ADMIN_MAX_CONNECTIONS {
                shared.stats.server.admin_cx_overflow.inc();
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let header_timeout = timeout_or(
                shared
                    .snapshot
                    .load()
                    .config
                    .admin
                    .request_headers_timeout
                    .as_ref(),
                tern_config::defaults::ADMIN_REQUEST_HEADERS_TIMEOUT,
            );
            let (shared, open) = (shared.clone(), open.clone());
            tokio::spawn(async move {
                let s = shared.clone();
                let svc = service_fn(move |req| handle(req, s.clone()));
                // hyper's header timer runs from accept and again after each response: silent,
                // slow and idle admin connections all close after it.
                let r = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                if r.is_err_and(|e| e.is_timeout()) {
                    shared.stats.server.admin_rq_header_timeout.inc();
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok(Running::new(stop, task))
}

/// Why a mutation (POST) looks like a browser's cross-site request, which the admin endpoint
/// refuses: a page on another site may not flip `/healthcheck/fail` on a developer's machine
/// with a form post. Browsers mark their requests (`Origin`, `Sec-Fetch-Site`); non-browser
/// clients (curl, scripts, orchestrators) send neither and are not affected. A request that has
/// an `Origin` must come from the admin's own origin, named by an IP address or `localhost` (a
/// DNS name could be an attacker's, rebound to this address).
fn cross_site(req: &Request<Incoming>) -> Option<&'static str> {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Some("a cross-site request (sec-fetch-site)");
        }
    }
    let origin = h.get(http::header::ORIGIN)?;
    let host = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authority = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    });
    let name = crate::headers::strip_port(host);
    let local = name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
    match authority {
        Some(a) if local && a.eq_ignore_ascii_case(host) => None,
        _ => Some("a request from another origin"),
    }
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
    if m == Method::POST {
        if let Some(why) = cross_site(&req) {
            let body = format!("refused: {why} may not change the admin state\n");
            return Ok(reply(StatusCode::FORBIDDEN, TEXT, body));
        }
    }
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
        (&Method::GET, "/clusters") => clusters(&shared, query(&req, "format") == Some("json")),
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
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", shared.stats.prometheus(&v, &scraped(&shared)))
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
            let endpoints = scraped(&shared);
            if query(&req, "format") == Some("json") {
                reply(StatusCode::OK, JSON, shared.stats.json(&v, filter.as_ref(), &endpoints).to_string())
            } else {
                reply(StatusCode::OK, TEXT, shared.stats.text(&v, filter.as_ref(), &endpoints))
            }
        }
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            TEXT,
            "tern admin\n  GET  /ready\n  GET  /config_dump\n  GET  /stats[?filter=REGEX&format=json]\n  GET  /stats/prometheus\n  GET  /clusters[?format=json]\n  POST /healthcheck/fail\n  POST /healthcheck/ok\n  GET  /logging\n  POST /logging?level=LEVEL\n",
        ),
        (_, "/ready" | "/config_dump" | "/clusters" | "/logging" | "/stats" | "/stats/prometheus" | "/healthcheck/fail" | "/healthcheck/ok") => {
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

/// One endpoint as `/clusters` shows it.
struct HostView {
    address: String,
    hostname: Option<String>,
    weight: u32,
    flags: Vec<&'static str>,
    ejection_remaining_ms: Option<u64>,
    rq_active: u64,
    rq_total: u64,
    rq_error: u64,
    cx_idle: usize,
    /// HTTP/2 connections (open or being set up).
    cx_http2: usize,
    ejections: u64,
    consecutive_5xx: u32,
    consecutive_gateway_failure: u32,
}

/// What the stats outputs read from the running snapshot: its endpoints and certificates.
fn scraped(shared: &Shared) -> crate::stats::Scraped {
    crate::stats::Scraped {
        endpoints: endpoint_samples(shared),
        certificates: certificate_samples(shared),
    }
}

/// Every certificate the running snapshot presents: the listeners', the clusters' client ones.
fn certificate_samples(shared: &Shared) -> Vec<crate::stats::CertificateSample> {
    let snap = shared.snapshot.load_full();
    let mut out = Vec::new();
    let mut add = |kind: &'static str, owner: &str, c: &crate::tls::server::CertInfo| {
        out.push(crate::stats::CertificateSample {
            owner_kind: kind,
            owner: owner.to_string(),
            certificate: c.origin.clone(),
            subject: c.subject.clone(),
            expiration_unix_time_seconds: c.not_after.max(0) as u64,
        })
    };
    for l in snap.config.listeners.iter() {
        if let Some(t) = snap
            .listeners
            .get(&*l.value.address)
            .and_then(|r| r.tls.as_ref())
        {
            for c in &t.certs {
                add("listener", &l.value.name, c);
            }
        }
    }
    for (name, c) in snap.clusters.iter() {
        if let Some(cert) = c.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
            add("cluster", name, cert);
        }
    }
    out.sort_by(|a, b| {
        (a.owner_kind, &a.owner, &a.certificate).cmp(&(b.owner_kind, &b.owner, &b.certificate))
    });
    out
}

/// Every endpoint of the running snapshot's clusters, for the stats outputs.
fn endpoint_samples(shared: &Shared) -> Vec<crate::stats::EndpointSample> {
    use std::sync::atomic::Ordering::Relaxed;
    let snap = shared.snapshot.load_full();
    let mut out = Vec::new();
    for (name, c) in snap.clusters.iter() {
        for e in c.hosts().endpoints.iter() {
            let s = &e.state;
            out.push(crate::stats::EndpointSample {
                cluster: name.to_string(),
                endpoint: e.key.to_string(),
                rq_total: s.rq_total.load(Relaxed),
                rq_error: s.rq_error.load(Relaxed),
                rq_active: s.active.load(Relaxed),
                cx_idle: s.pool.idle_count() as u64,
                healthy: s.available(),
            });
        }
    }
    out.sort_by(|a, b| (&a.cluster, &a.endpoint).cmp(&(&b.cluster, &b.endpoint)));
    out
}

fn host_view(e: &crate::upstream::cluster::Endpoint, now: u64) -> HostView {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &e.state;
    let mut flags = Vec::new();
    if s.hc_failed.load(Relaxed) {
        flags.push("failed_active_hc");
    }
    if s.health.pending.load(Relaxed) {
        flags.push("pending_active_hc");
    }
    let ejection_remaining_ms = s.outlier.remaining_ms(now);
    if ejection_remaining_ms.is_some() {
        flags.push("failed_outlier_check");
    }
    HostView {
        address: e.address.to_string(),
        hostname: e.hostname.as_deref().map(str::to_string),
        weight: e.weight,
        flags,
        ejection_remaining_ms,
        rq_active: s.active.load(Relaxed),
        rq_total: s.rq_total.load(Relaxed),
        rq_error: s.rq_error.load(Relaxed),
        cx_idle: s.pool.idle_count(),
        cx_http2: s.pool.h2.len(),
        ejections: s.outlier.ejections.load(Relaxed),
        consecutive_5xx: s.outlier.consecutive_5xx(),
        consecutive_gateway_failure: s.outlier.consecutive_gateway_failure(),
    }
}

/// `GET /clusters`: every cluster's limits and open counts, and each endpoint's health and
/// counters. Text (`cluster::host::field::value`, as Envoy) or `?format=json`.
fn clusters(shared: &Shared, json: bool) -> Response<Full<Bytes>> {
    use std::fmt::Write as _;
    let snap = shared.snapshot.load_full();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let now = crate::timer::now_ms();
    let wall = std::time::SystemTime::now();
    let until = |ms: u64| {
        humantime::format_rfc3339_millis(wall + std::time::Duration::from_millis(ms)).to_string()
    };
    let mut text = String::new();
    let mut out = Vec::new();
    for name in names {
        let c = &snap.clusters[name];
        let l = &c.limits;
        let st = &c.stats;
        let open = [
            ("cx_open", st.upstream_cx_active.get()),
            ("rq_pending_open", st.upstream_rq_pending_active.get()),
            ("rq_open", st.upstream_rq_active.get()),
            ("rq_retry_open", st.upstream_rq_retry_active.get()),
        ];
        let hosts: Vec<HostView> = c
            .hosts()
            .endpoints
            .iter()
            .map(|e| host_view(e, now))
            .collect();
        if json {
            let mut cb = serde_json::json!({
                "max_connections": l.max_connections,
                "max_pending_requests": l.max_pending_requests,
                "max_requests": l.max_requests,
                "max_retries": l.max_retries,
                "retry_budget": l.retry_budget.map(|(p, m)| serde_json::json!({
                    "budget_percent": p, "min_retry_concurrency": m,
                })),
            });
            for (k, v) in open {
                cb[k] = v.into();
            }
            let od = c.outlier.as_ref().map(|o| {
                serde_json::json!({
                    "consecutive_5xx": o.consecutive_5xx,
                    "consecutive_gateway_failure": o.consecutive_gateway_failure,
                    "interval_ms": o.interval_ms,
                    "base_ejection_time_ms": o.base_ejection_ms,
                    "max_ejection_time_ms": o.max_ejection_ms,
                    "max_ejection_percent": o.max_ejection_percent,
                    "ejections_active": st.outlier_detection_ejections_active.get(),
                })
            });
            let hs: Vec<serde_json::Value> = hosts
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "address": h.address,
                        "hostname": h.hostname,
                        "weight": h.weight,
                        "health_status": {
                            "healthy": h.flags.is_empty(),
                            "flags": h.flags,
                            "ejection_remaining_ms": h.ejection_remaining_ms,
                            "ejected_until": h.ejection_remaining_ms.map(until),
                        },
                        "stats": {
                            "rq_active": h.rq_active,
                            "rq_total": h.rq_total,
                            "rq_error": h.rq_error,
                            "cx_idle": h.cx_idle,
                            "cx_http2": h.cx_http2,
                        },
                        "outlier": {
                            "ejections": h.ejections,
                            "consecutive_5xx": h.consecutive_5xx,
                            "consecutive_gateway_failure": h.consecutive_gateway_failure,
                        },
                    })
                })
                .collect();
            out.push(serde_json::json!({
                "name": name,
                "protocol": c.conn.protocol.name(),
                "circuit_breakers": cb,
                "outlier_detection": od,
                "health_checked": c.health.is_some(),
                "membership_healthy": st.membership_healthy.get(),
                "membership_total": st.membership_total.get(),
                "host_statuses": hs,
            }));
            continue;
        }
        let t = &mut text;
        let _ = writeln!(
            t,
            "{name}::default_priority::max_connections::{}",
            l.max_connections
        );
        let _ = writeln!(
            t,
            "{name}::default_priority::max_pending_requests::{}",
            l.max_pending_requests
        );
        let _ = writeln!(
            t,
            "{name}::default_priority::max_requests::{}",
            l.max_requests
        );
        let _ = writeln!(
            t,
            "{name}::default_priority::max_retries::{}",
            l.max_retries
        );
        if let Some((p, m)) = l.retry_budget {
            let _ = writeln!(t, "{name}::default_priority::retry_budget::budget_percent={p},min_retry_concurrency={m}");
        }
        for (k, v) in open {
            let _ = writeln!(t, "{name}::circuit_breakers::{k}::{v}");
        }
        if c.outlier.is_some() {
            let _ = writeln!(
                t,
                "{name}::outlier_detection::ejections_active::{}",
                st.outlier_detection_ejections_active.get()
            );
        }
        for h in &hosts {
            let a = &h.address;
            let flags = if h.flags.is_empty() {
                "healthy".to_string()
            } else {
                h.flags.iter().map(|f| format!("/{f}")).collect()
            };
            if let Some(host) = &h.hostname {
                let _ = writeln!(t, "{name}::{a}::hostname::{host}");
            }
            let _ = writeln!(t, "{name}::{a}::weight::{}", h.weight);
            let _ = writeln!(t, "{name}::{a}::health_flags::{flags}");
            if let Some(ms) = h.ejection_remaining_ms {
                let _ = writeln!(t, "{name}::{a}::ejected_until::{}", until(ms));
                let _ = writeln!(t, "{name}::{a}::ejection_remaining_ms::{ms}");
            }
            let _ = writeln!(t, "{name}::{a}::rq_active::{}", h.rq_active);
            let _ = writeln!(t, "{name}::{a}::rq_total::{}", h.rq_total);
            let _ = writeln!(t, "{name}::{a}::rq_error::{}", h.rq_error);
            let _ = writeln!(t, "{name}::{a}::cx_idle::{}", h.cx_idle);
            let _ = writeln!(t, "{name}::{a}::outlier_ejections::{}", h.ejections);
        }
    }
    if json {
        let body = serde_json::json!({ "cluster_statuses": out });
        reply(
            StatusCode::OK,
            JSON,
            serde_json::to_string_pretty(&body).unwrap_or_default(),
        )
    } else {
        reply(StatusCode::OK, TEXT, text)
    }
}
