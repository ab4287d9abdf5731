//! Active health checking of cluster endpoints.
//!
//! One task per endpoint of every health-checked cluster version, started and stopped as the
//! endpoint joins and leaves the cluster's host set (DNS discovery changes it at runtime). It
//! checks at once, then every `interval` plus a random `0..=interval_jitter`:
//!
//! - HTTP: a GET of `path` on a new connection with `Host: host` (default the cluster name),
//!   healthy when the status is in `expected_statuses` (default `[200]`) within `timeout`;
//! - TCP: healthy when a connection opens within `timeout`;
//! - gRPC (`grpc_health_check`): `grpc.health.v1.Health/Check` for `service_name` over HTTP/2 on a
//!   new connection (prior knowledge on plain TCP; on the cluster's TLS otherwise), `:authority`
//!   the configured one (default the cluster name), healthy when the answer is `SERVING`.
//!
//! As in Envoy: `unhealthy_threshold` network failures (connect error, timeout, broken
//! connection) in a row mark an endpoint unhealthy, an unexpected HTTP status (or a gRPC answer
//! other than `SERVING`: a non-OK `grpc-status`, `NOT_SERVING`, `UNKNOWN`) marks it unhealthy
//! at once, and `healthy_threshold` passes in a row mark it healthy again. A new endpoint starts
//! unhealthy (`pending_active_hc`) and its first pass alone makes it healthy, so it takes no
//! traffic before it was seen to work (when every endpoint is unhealthy the balancer fails open).
//! A pass also ends an outlier ejection early (Envoy's `successful_active_health_check_uneject_host`).
//!
//! The state lives in [`EndpointState`], carried across reloads by address. A changed cluster gets
//! a new checker that continues from that state (counters in a row included); it bumps the
//! endpoint's generation so the previous version's checker stops at its next result.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::tls::client::UpStream;
use crate::upstream::cluster::{Cluster, Endpoint, EndpointState};
use crate::upstream::connect::Connector;
use crate::upstream::outlier;
use tern_config as config;

/// What a check does.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// HTTP GET.
    Http {
        /// Request path.
        path: String,
        /// Host header.
        host: HeaderValue,
        /// Statuses that pass.
        expected: Vec<u16>,
    },
    /// TCP connect.
    Tcp,
    /// `grpc.health.v1.Health/Check`.
    Grpc {
        /// `HealthCheckRequest.service`.
        service: String,
        /// `:authority`.
        authority: http::uri::Authority,
    },
}

/// A cluster's health check, compiled once when the cluster is built.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// HTTP or TCP.
    pub kind: Kind,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Time between checks.
    pub interval: Duration,
    /// Random extra time, `0..=interval_jitter`, added to each interval.
    pub interval_jitter: Duration,
    /// Failures in a row that mark an endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Passes in a row that mark an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
}

impl Settings {
    /// Applies the defaults to a checked configuration of cluster `cluster`.
    pub fn from_config(cluster: &str, hc: &config::HealthCheck) -> Settings {
        let kind = match &hc.http {
            None if hc.grpc_health_check.is_some() => {
                let g = hc.grpc_health_check.as_ref().expect("checked just now");
                Kind::Grpc {
                    service: g.service_name.clone().unwrap_or_default(),
                    authority: http::uri::Authority::try_from(
                        g.authority.as_deref().unwrap_or(cluster),
                    )
                    .unwrap_or_else(|_| http::uri::Authority::from_static("localhost")),
                }
            }
            Some(h) => Kind::Http {
                path: h.path.value.clone(),
                host: HeaderValue::from_str(h.host.as_deref().unwrap_or(cluster))
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                expected: if h.expected_statuses.is_empty() {
                    vec![200]
                } else {
                    h.expected_statuses.iter().map(|s| s.value).collect()
                },
            },
            None => Kind::Tcp,
        };
        Settings {
            kind,
            timeout: hc.timeout.0,
            interval: hc.interval.0,
            interval_jitter: hc.interval_jitter.as_ref().map_or(Duration::ZERO, |d| d.0),
            unhealthy_threshold: hc.unhealthy_threshold.value.max(1),
            healthy_threshold: hc.healthy_threshold.value.max(1),
        }
    }

    /// The wait before the next check.
    fn next_wait(&self) -> Duration {
        let j = self.interval_jitter.as_millis() as u64;
        let extra = if j == 0 {
            0
        } else {
            rand::rng().random_range(0..=j)
        };
        self.interval + Duration::from_millis(extra)
    }
}

/// Per-endpoint health checking state (carried across reloads with the endpoint).
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// Passes in a row while unhealthy.
    consecutive_ok: AtomicU32,
    /// Failures in a row while healthy.
    consecutive_fail: AtomicU32,
    /// Set until the first check of a new endpoint (Envoy's `pending_active_hc`).
    pub pending: AtomicBool,
    /// Checks made.
    pub checks: AtomicU64,
    /// Identifies the checker that owns this endpoint; older ones stop.
    generation: AtomicU64,
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Expected status, or the connection opened.
    Pass,
    /// The endpoint answered with an unexpected status (unhealthy at once).
    BadStatus(u16),
    /// A gRPC endpoint answered, but not `SERVING`: its `grpc-status` if not OK, else its
    /// serving status (unhealthy at once).
    NotServing(i32),
    /// Connect error, timeout or broken connection (counts toward `unhealthy_threshold`).
    NetworkFailure,
}

/// Applies one result to `state`. Returns `Some(healthy)` when the endpoint's health flips.
pub fn apply(state: &EndpointState, s: &Settings, r: Check) -> Option<bool> {
    let h = &state.health;
    h.checks.fetch_add(1, Relaxed);
    let pending = h.pending.swap(false, Relaxed);
    let failed = state.hc_failed.load(Relaxed);
    match r {
        Check::Pass => {
            h.consecutive_fail.store(0, Relaxed);
            if !failed {
                return None;
            }
            let ok = h.consecutive_ok.fetch_add(1, Relaxed) + 1;
            if pending || ok >= s.healthy_threshold {
                h.consecutive_ok.store(0, Relaxed);
                state.hc_failed.store(false, Relaxed);
                return Some(true);
            }
            None
        }
        Check::BadStatus(_) | Check::NotServing(_) | Check::NetworkFailure => {
            h.consecutive_ok.store(0, Relaxed);
            if failed {
                return None;
            }
            let n = h.consecutive_fail.fetch_add(1, Relaxed) + 1;
            if matches!(r, Check::BadStatus(_) | Check::NotServing(_)) || n >= s.unhealthy_threshold
            {
                h.consecutive_fail.store(0, Relaxed);
                state.hc_failed.store(true, Relaxed);
                return Some(false);
            }
            None
        }
    }
}

/// Runs one check on the connection `connect` makes (no timeout; the caller bounds it).
async fn check_once(
    kind: &Kind,
    connect: impl std::future::Future<Output = Option<UpStream>>,
) -> Check {
    let Some(stream) = connect.await else {
        return Check::NetworkFailure;
    };
    let (path, host, expected) = match kind {
        Kind::Tcp => return Check::Pass,
        Kind::Grpc { service, authority } => return grpc_check(stream, service, authority).await,
        Kind::Http {
            path,
            host,
            expected,
        } => (path, host, expected),
    };
    let Ok((mut tx, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return Check::NetworkFailure;
    };
    let Ok(req) = Request::get(path.as_str())
        .header(HOST, host.clone())
        .header(USER_AGENT, "tern-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
    else {
        return Check::NetworkFailure;
    };
    let send = tx.send_request(req);
    tokio::pin!(send, conn);
    let resp = tokio::select! {
        biased;
        r = &mut send => r,
        // The connection ended: the response, if any, has been handed over already.
        _ = &mut conn => send.await,
    };
    match resp {
        Ok(r) if expected.contains(&r.status().as_u16()) => Check::Pass,
        Ok(r) => Check::BadStatus(r.status().as_u16()),
        Err(_) => Check::NetworkFailure,
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (its `ServingStatus` enum read as its number).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: i32 = 1;
/// The largest health answer read (a real one is a few bytes).
const MAX_GRPC_ANSWER: usize = 16 * 1024;

/// One `grpc.health.v1.Health/Check` call on a new HTTP/2 connection.
async fn grpc_check(stream: UpStream, service: &str, authority: &http::uri::Authority) -> Check {
    use http_body_util::{BodyExt, Full, Limited};
    use prost::Message;
    let scheme = match stream {
        UpStream::Plain(_) => "http",
        UpStream::Tls(_) => "https",
    };
    let Ok((mut tx, conn)) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    else {
        return Check::NetworkFailure;
    };
    // A gRPC message: a compressed flag (0), its length (4 bytes, big-endian), the protobuf.
    let msg = HealthCheckRequest {
        service: service.to_string(),
    }
    .encode_to_vec();
    let mut framed = Vec::with_capacity(5 + msg.len());
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let Ok(req) = Request::post(format!(
        "{scheme}://{authority}/grpc.health.v1.Health/Check"
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers")
    .header(USER_AGENT, "tern-health-check")
    .body(Full::new(Bytes::from(framed))) else {
        return Check::NetworkFailure;
    };
    let call = async {
        let resp = tx
            .send_request(req)
            .await
            .map_err(|_| Check::NetworkFailure)?;
        if resp.status() != http::StatusCode::OK {
            return Err(Check::BadStatus(resp.status().as_u16()));
        }
        let (parts, body) = resp.into_parts();
        // Trailers-only: the status is in the headers and there is no message.
        if let Some(code) = crate::grpc::status_of(&parts.headers) {
            return Err(match code {
                crate::grpc::OK => Check::NetworkFailure,
                c => Check::NotServing(-i32::from(c)),
            });
        }
        let all = Limited::new(body, MAX_GRPC_ANSWER)
            .collect()
            .await
            .map_err(|_| Check::NetworkFailure)?;
        let code = all.trailers().and_then(crate::grpc::status_of);
        match code {
            Some(crate::grpc::OK) => {}
            Some(c) => return Err(Check::NotServing(-i32::from(c))),
            None => return Err(Check::NetworkFailure),
        }
        let bytes = all.to_bytes();
        let answer = match bytes.get(..5) {
            Some(&[0, a, b, c, d])
                if bytes.len() == 5 + u32::from_be_bytes([a, b, c, d]) as usize =>
            {
                HealthCheckResponse::decode(&bytes[5..]).map_err(|_| Check::NetworkFailure)?
            }
            _ => return Err(Check::NetworkFailure),
        };
        Ok(answer.status)
    };
    tokio::pin!(call, conn);
    let r = tokio::select! {
        biased;
        r = &mut call => r,
        // The connection ended first: whatever the call got is all it gets.
        _ = &mut conn => call.await,
    };
    match r {
        Ok(SERVING) => Check::Pass,
        Ok(status) => Check::NotServing(status),
        Err(c) => c,
    }
}

/// Runs one check of a plain TCP address, bounded by the check's timeout.
#[cfg(test)]
pub async fn check(s: &Settings, addr: std::net::SocketAddr) -> Check {
    let connect = async {
        tokio::net::TcpStream::connect(addr)
            .await
            .ok()
            .map(UpStream::Plain)
    };
    tokio::time::timeout(s.timeout, check_once(&s.kind, connect))
        .await
        .unwrap_or(Check::NetworkFailure)
}

/// Runs one check of an endpoint as its cluster connects (its TLS included: a handshake that
/// fails is a failed check), bounded by the check's timeout.
pub async fn check_endpoint(s: &Settings, ep: &Endpoint, connector: Connector<'_>) -> Check {
    let connect = async { connector.connect(ep).await.ok() };
    tokio::time::timeout(s.timeout, check_once(&s.kind, connect))
        .await
        .unwrap_or(Check::NetworkFailure)
}

/// Checks removed by a reload: stops the old checkers and forgets their verdict.
pub fn forget(cluster: &Cluster) {
    for e in cluster.hosts().endpoints.iter() {
        e.state.health.generation.fetch_add(1, Relaxed);
        e.state.health.pending.store(false, Relaxed);
        e.state.hc_failed.store(false, Relaxed);
    }
    cluster.refresh_membership();
}

/// Makes the running checkers of a started, health-checked cluster follow its host set: one per
/// endpoint, started for endpoints that joined, stopped for those that left (and restarted for a
/// `logical_dns` endpoint whose address changed).
pub fn sync_checkers(cluster: &Arc<Cluster>) {
    let Some(s) = &cluster.health else {
        return;
    };
    let Some(token) = cluster
        .background
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|(t, _)| t.clone())
    else {
        // Not started yet: `start_background` syncs once it is.
        return;
    };
    let mut checkers = cluster.checkers.lock().unwrap_or_else(|e| e.into_inner());
    // Read under the lock: concurrent syncs cannot leave an older set's checkers running.
    let hosts = cluster.hosts();
    // Dropping a checker's guard stops it.
    checkers.retain(|key, (addr, _)| hosts.get(key).is_some_and(|e| e.addr == *addr));
    for ep in hosts.endpoints.iter() {
        if !checkers.contains_key(&ep.key) {
            let t = token.child_token();
            spawn_checker(cluster, ep, s.clone(), t.clone());
            checkers.insert(ep.key.clone(), (ep.addr, t.drop_guard()));
        }
    }
}

/// Starts the health checker of `ep`; it stops when `token` is cancelled, the cluster is dropped,
/// or a later checker of the endpoint takes over.
pub fn spawn_checker(
    cluster: &Arc<Cluster>,
    ep: &Arc<Endpoint>,
    s: Arc<Settings>,
    token: CancellationToken,
) {
    let state = ep.state.clone();
    let addr = ep.address.clone();
    let endpoint = ep.clone();
    let stats = cluster.stats.clone();
    let (tls, conn, connect_timeout) = (
        cluster.tls.clone(),
        cluster.conn.clone(),
        cluster.connect_timeout,
    );
    let name = cluster.name.clone();
    let weak: Weak<Cluster> = Arc::downgrade(cluster);
    let generation = state.health.generation.fetch_add(1, Relaxed) + 1;
    tokio::spawn(async move {
        let mine = || state.health.generation.load(Relaxed) == generation;
        loop {
            let connector = Connector {
                timeout: connect_timeout,
                tls: tls.as_deref(),
                options: &conn,
                stats: &stats,
            };
            let r = tokio::select! {
                r = check_endpoint(&s, &endpoint, connector) => r,
                _ = token.cancelled() => return,
            };
            if !mine() {
                return;
            }
            stats.health_check_attempt.inc();
            if r == Check::Pass {
                stats.health_check_success.inc();
            } else {
                stats.health_check_failure.inc();
                tracing::debug!(cluster = %name, endpoint = %addr, result = ?r, "health check failed");
            }
            let flipped = apply(&state, &s, r);
            if flipped.is_some() || (r == Check::Pass && state.outlier.is_ejected()) {
                if let Some(c) = weak.upgrade() {
                    if r == Check::Pass {
                        outlier::uneject(&c, &endpoint, crate::timer::now_ms());
                    }
                    c.refresh_membership();
                }
            }
            match flipped {
                Some(true) => {
                    tracing::info!(cluster = %name, endpoint = %addr, "health check: endpoint healthy")
                }
                Some(false) => {
                    tracing::warn!(cluster = %name, endpoint = %addr, result = ?r, "health check: endpoint unhealthy")
                }
                None => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(s.next_wait()) => {}
                _ = token.cancelled() => return,
            }
            if !mine() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_config::{Dur, Spanned};

    fn settings(unhealthy: u32, healthy: u32) -> Settings {
        Settings {
            kind: Kind::Tcp,
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            interval_jitter: Duration::ZERO,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        }
    }

    #[test]
    fn thresholds_and_immediate_bad_status() {
        let s = settings(3, 2);
        let st = EndpointState::default();
        assert_eq!(apply(&st, &s, Check::NetworkFailure), None);
        assert_eq!(apply(&st, &s, Check::NetworkFailure), None);
        assert_eq!(
            apply(&st, &s, Check::Pass),
            None,
            "a pass resets the failures"
        );
        assert_eq!(apply(&st, &s, Check::NetworkFailure), None);
        assert_eq!(apply(&st, &s, Check::NetworkFailure), None);
        assert_eq!(apply(&st, &s, Check::NetworkFailure), Some(false));
        assert!(st.hc_failed.load(Relaxed));
        assert_eq!(apply(&st, &s, Check::Pass), None);
        assert_eq!(apply(&st, &s, Check::NetworkFailure), None);
        assert_eq!(apply(&st, &s, Check::Pass), None, "passes must be in a row");
        assert_eq!(apply(&st, &s, Check::Pass), Some(true));
        assert!(!st.hc_failed.load(Relaxed));
        assert_eq!(
            apply(&st, &s, Check::BadStatus(500)),
            Some(false),
            "unexpected status: at once"
        );
        assert_eq!(st.health.checks.load(Relaxed), 11);
    }

    #[test]
    fn a_pending_endpoint_needs_one_pass() {
        let s = settings(3, 5);
        let st = EndpointState::default();
        st.hc_failed.store(true, Relaxed);
        st.health.pending.store(true, Relaxed);
        assert_eq!(apply(&st, &s, Check::Pass), Some(true));
        let st = EndpointState::default();
        st.hc_failed.store(true, Relaxed);
        st.health.pending.store(true, Relaxed);
        assert_eq!(apply(&st, &s, Check::NetworkFailure), None);
        assert!(!st.health.pending.load(Relaxed));
        assert_eq!(
            apply(&st, &s, Check::Pass),
            None,
            "no longer pending: threshold applies"
        );
    }

    #[test]
    fn settings_defaults() {
        let hc = config::HealthCheck {
            timeout: Spanned::unplaced(Dur(Duration::from_millis(100))),
            interval: Spanned::unplaced(Dur(Duration::from_secs(1))),
            unhealthy_threshold: Spanned::unplaced(2),
            healthy_threshold: Spanned::unplaced(1),
            interval_jitter: None,
            http: Some(config::HttpHealthCheck {
                path: Spanned::unplaced("/healthz".into()),
                host: None,
                expected_statuses: vec![],
            }),
            tcp: None,
            grpc_health_check: None,
        };
        let s = Settings::from_config("api", &hc);
        assert_eq!(
            s.kind,
            Kind::Http {
                path: "/healthz".into(),
                host: HeaderValue::from_static("api"),
                expected: vec![200]
            }
        );
        assert_eq!(s.next_wait(), Duration::from_secs(1));
        let s = Settings {
            interval_jitter: Duration::from_millis(50),
            ..s
        };
        for _ in 0..20 {
            let w = s.next_wait();
            assert!(w >= Duration::from_secs(1) && w <= Duration::from_millis(1050));
        }
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_real_sockets() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                    let status = if req.starts_with("get /ok ") && req.contains("host: api\r\n") {
                        200
                    } else if req.starts_with("get /hang") {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        200
                    } else {
                        500
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let http = |path: &str| Settings {
            kind: Kind::Http {
                path: path.into(),
                host: HeaderValue::from_static("api"),
                expected: vec![200],
            },
            timeout: Duration::from_millis(300),
            ..settings(1, 1)
        };
        assert_eq!(check(&http("/ok"), addr).await, Check::Pass);
        assert_eq!(check(&http("/bad"), addr).await, Check::BadStatus(500));
        assert_eq!(check(&http("/hang"), addr).await, Check::NetworkFailure);
        assert_eq!(check(&settings(1, 1), addr).await, Check::Pass);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        assert_eq!(check(&settings(1, 1), dead).await, Check::NetworkFailure);
    }
}
