//! HTTP/1.1 protocol upgrades (WebSocket, and the types a listener or route enables): the
//! handshake is proxied like a request, and after a `101 Switching Protocols` the two
//! connections are spliced.
//!
//! Only configured types are tunnelled ([`crate::router::upgrade_allowed`]); `h2c` never is: its
//! headers are removed and the request is served as a plain one, as Envoy does. A handshake has
//! the route timeout until its answer and may carry no body; a tunnel ends after the stream idle
//! timeout without a byte either way, and counts as an open downstream connection meanwhile.
//! An upgraded connection is never pooled: it gets a fresh upstream connection of its own.

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::local_reply::LocalReply;
use super::{Ctx, RespBody};
use crate::headers;
use crate::http1::client::{self, Conn, ResponseBody};
use crate::message::{Fields, Request, RequestParts, Response, ResponseParts, Value};
use crate::state::Tunnels;
use crate::stats::ListenerStats;
use crate::stream_info::{Flags, Recorder};
use crate::tls::client::UpStream;
use crate::upstream::cluster::{ActiveRequest, Cluster, Endpoint};
use crate::upstream::connect::{ConnectError, Connector};
use crate::upstream::outlier::{self, Outcome};
use crate::upstream::pool::UpBody;

/// The body of an upstream's answer to an upgrade handshake that did not switch.
pub type Refusal = ResponseBody<UpStream, (), UpBody>;

const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The `Upgrade` value of an HTTP/1.1 request asking to switch protocols (`Connection: upgrade`
/// and `Upgrade`), if it is one.
pub fn requested(h: &Fields) -> Option<Value<'_>> {
    let proto = h.get(UPGRADE)?;
    h.get_all(CONNECTION)
        .iter()
        .any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
        .then_some(proto)
}

/// Whether `proto` is `h2c` (the cleartext HTTP/2 upgrade, RFC 7540 §3.2).
pub fn is_h2c(proto: &[u8]) -> bool {
    proto.trim_ascii().eq_ignore_ascii_case(b"h2c")
}

/// Removes an h2c upgrade's own header; `Connection` and `Upgrade` go with the other hop-by-hop
/// headers, so the request goes up as a plain one.
pub fn strip_h2c(h: &mut Fields) {
    h.remove(HTTP2_SETTINGS);
    h.remove(UPGRADE);
}

/// Limits of one upgrade: the handshake's and the tunnel's.
pub(super) struct Limits {
    /// The route timeout, from the handshake's start to its answer.
    pub timeout: Option<Duration>,
    /// The stream idle timeout: of the refused handshake's body, and of the tunnel.
    pub idle: Option<Duration>,
}

/// Forwards an upgrade handshake (`parts`, already the upstream's head) to an endpoint of
/// `cluster`: one try on a dedicated connection, then a spliced tunnel if it answers 101.
pub(super) async fn forward(
    cluster: &Arc<Cluster>,
    hash: Option<u64>,
    parts: Box<RequestParts>,
    proto: HeaderValue,
    on_upgrade: crate::http1::server::OnUpgrade,
    limits: Limits,
    cx: &mut Ctx<'_>,
) -> Result<Response<RespBody>, LocalReply> {
    let Some(ep) = cluster.pick(hash, None) else {
        cluster.stats.upstream_rq_no_healthy.inc();
        return Err(LocalReply::NoHealthyUpstream);
    };
    cx.record(|i| i.upstream_host = Some(ep.address.clone()));
    let tunnel = Tunnel {
        tunnels: &cx.conn.shared.tunnels,
        stats: cx.listener.stats.clone(),
        shared: cx.conn.shared.clone(),
        idle: limits.idle,
        rec: cx.rec.clone(),
    };
    let handshake = proxy(cluster, ep.clone(), parts, proto, on_upgrade, tunnel);
    let answered = match limits.timeout {
        Some(t) => tokio::time::timeout(t, handshake).await,
        None => Ok(handshake.await),
    };
    let resp = match answered {
        Ok(r) => r.map_err(|e| match e {
            UpgradeError::Connect => LocalReply::ConnectFailure,
            UpgradeError::Tls => LocalReply::UpstreamTlsError,
            UpgradeError::Reset => LocalReply::UpstreamConnectionTermination,
            UpgradeError::Protocol => LocalReply::UpstreamProtocolError,
        })?,
        Err(_) => {
            // A handshake left unanswered must not hold its `max_requests` slot for ever.
            cluster.stats.upstream_rq_timeout.inc();
            outlier::report(cluster, &ep, Outcome::Timeout);
            return Err(LocalReply::UpstreamTimeout);
        }
    };
    let (mut head, body) = resp;
    let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
    let keep = switching.then(|| {
        (
            head.headers.get(UPGRADE).map(Value::to_owned),
            head.headers.get(CONNECTION).map(Value::to_owned),
        )
    });
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some((up, conn)) = keep {
        // The record is the tunnel's now: it is written when the tunnel closes.
        cx.tunnel = cx.rec.is_some();
        // The client needs these to switch too.
        if let Some(v) = up {
            head.headers.insert(UPGRADE, v);
        }
        head.headers.insert(
            CONNECTION,
            conn.unwrap_or(HeaderValue::from_static("upgrade")),
        );
        return Ok(Response::from_parts(
            head,
            Either::Right(Full::new(Bytes::new())),
        ));
    }
    // A refused handshake has a small body (an error page): read it, bounded in size and time.
    let body = match body {
        Some(body) => {
            let collect = Limited::new(body, 64 * 1024).collect();
            let body = match limits.idle {
                Some(t) => tokio::time::timeout(t, collect).await.ok(),
                None => Some(collect.await),
            };
            body.and_then(Result::ok)
                .map(|c| c.to_bytes())
                .unwrap_or_default()
        }
        None => Bytes::new(),
    };
    Ok(Response::from_parts(head, Either::Right(Full::new(body))))
}

/// Where a tunnel runs and what it reports to.
pub struct Tunnel<'a> {
    /// The process's open tunnels (drained at shutdown).
    pub tunnels: &'a Tunnels,
    /// The listener's stats: the tunnel counts as an open connection.
    pub stats: Arc<ListenerStats>,
    /// Process state: the tunnel also counts toward the global connection limit.
    pub shared: Arc<crate::state::Shared>,
    /// Close the tunnel after this long without a byte either way.
    pub idle: Option<Duration>,
    /// The request's record, ended when the tunnel closes.
    pub rec: Option<Recorder>,
}

/// Why an upgrade could not be proxied.
#[derive(Debug)]
pub enum UpgradeError {
    /// Connecting to the endpoint failed or timed out.
    Connect,
    /// The TLS handshake with the endpoint failed.
    Tls,
    /// The upstream failed before answering.
    Reset,
    /// The upstream switched to a protocol the client did not ask for.
    Protocol,
}

/// Sends the upgrade handshake `parts` (already rewritten for the upstream, hop-by-hop headers
/// removed) to endpoint `ep` on a connection of its own (Tern's HTTP/1 client), and when it
/// answers 101 splices the two upgraded connections; the answer's head, and the body of one that
/// did not switch.
///
/// `downstream` is the client's pending upgrade (from Tern's HTTP/1 engine); the
/// tunnel's record and limits are in `tunnel`.
pub async fn proxy(
    cluster: &Arc<Cluster>,
    ep: Arc<Endpoint>,
    mut parts: Box<RequestParts>,
    upgrade: HeaderValue,
    downstream: crate::http1::server::OnUpgrade,
    tunnel: Tunnel<'_>,
) -> Result<(Box<ResponseParts>, Option<Refusal>), UpgradeError> {
    let cs = &cluster.stats;
    let stream = match Connector::of(cluster).connect(&ep).await {
        Ok(s) => s,
        Err(e) => {
            cs.upstream_cx_connect_fail.inc();
            outlier::report(cluster, &ep, Outcome::ConnectFailure);
            return Err(match e {
                ConnectError::Tls(_) => UpgradeError::Tls,
                ConnectError::Tcp(_) => UpgradeError::Connect,
            });
        }
    };
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(UPGRADE, upgrade.clone());
    let active = ActiveRequest::start(cluster, ep.clone());
    let req = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    let conn = Box::new(Conn::new(stream, ()));
    let resp = client::send(conn, req).await.map_err(|e| {
        cs.upstream_rq_reset.inc();
        tracing::debug!(cluster = %cluster.name, error = %e, "upgrade handshake failed");
        outlier::report(cluster, &ep, Outcome::Reset);
        UpgradeError::Reset
    })?;
    let (head, body) = resp.into_parts();
    let status = head.status;
    cs.upstream_rq_xx.record(status.as_u16());
    outlier::report(cluster, &ep, Outcome::Status(status.as_u16()));
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok((head, Some(body)));
    }
    // A server switches only to a protocol the client listed (RFC 9110 §7.8): a 101 to anything
    // else would splice the client's next bytes to a peer that reads them as something else.
    let asked = |v: Value<'_>| {
        v.as_bytes().split(|b| *b == b',').any(|p| {
            upgrade
                .as_bytes()
                .split(|b| *b == b',')
                .any(|q| p.trim_ascii().eq_ignore_ascii_case(q.trim_ascii()))
        })
    };
    if !head.headers.get(UPGRADE).is_some_and(asked) {
        cs.upstream_cx_protocol_error.inc();
        tracing::debug!(cluster = %cluster.name, "upgrade answered with a 101 to another protocol");
        outlier::report(cluster, &ep, Outcome::Reset);
        return Err(UpgradeError::Protocol);
    }
    {
        // The upstream's stream, and what it sent after the 101 (the tunnel's first bytes).
        let Some((upstream, early, ())) = body.into_upgraded().map(Conn::into_parts) else {
            return Err(UpgradeError::Reset);
        };
        let name = cluster.name.clone();
        let stop = tunnel.tunnels.stop_token();
        let Tunnel {
            stats,
            shared,
            idle,
            rec,
            ..
        } = tunnel;
        tunnel.tunnels.spawn(async move {
            // The endpoint stays counted as busy for as long as the tunnel is open.
            let _active = active;
            let mut counts = (0, 0);
            let mut flags = Flags::default();
            match downstream.await.map_err(|e| e.to_string()) {
                Ok(down) => {
                    // The HTTP connection ended with the upgrade; the tunnel is the connection now.
                    let _open = OpenTunnel::new(&stats, &shared);
                    let last = Arc::new(AtomicU64::new(crate::timer::now_ms()));
                    let mut down = ReadCount::new(down, last.clone());
                    let mut up = ReadCount::new(upstream, last.clone());
                    up.read = early.len() as u64;
                    let sent_early = async {
                        match early.is_empty() {
                            true => Ok(()),
                            false => down.write_all(&early).await,
                        }
                    };
                    if let Err(e) = sent_early.await {
                        tracing::debug!(cluster = %name, error = %e, "upgraded connection ended");
                    }
                    tokio::select! {
                        r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                            if let Err(e) = r {
                                tracing::debug!(cluster = %name, error = %e, "upgraded connection ended");
                            }
                        }
                        _ = idle_for(idle, &last) => {
                            stats.downstream_rq_idle_timeout.inc();
                            flags.set(Flags::SI);
                        }
                        _ = stop.cancelled() => {}
                    }
                    // Counted as read, so an error part way still reports what went through.
                    counts = (down.read, up.read);
                }
                Err(e) => tracing::debug!(cluster = %name, error = %e, "upgrade failed"),
            }
            // The tunnel holds the request's record: it ends now, with the bytes each way.
            if let Some(r) = rec {
                r.update(|i| i.bytes_received = counts.0);
                r.response_done(counts.1, flags);
            }
        });
    }
    Ok((head, None))
}

/// Resolves once no byte has moved (`last`, in [`crate::timer::now_ms`]) for `idle`; never
/// without a limit.
async fn idle_for(idle: Option<Duration>, last: &AtomicU64) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let idle_ms = idle.as_millis() as u64;
    loop {
        let since = crate::timer::now_ms().saturating_sub(last.load(Relaxed));
        if since >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
    }
}

/// An open tunnel, counted in the listener's open connections and upgrades while it lives.
struct OpenTunnel<'a>(&'a ListenerStats, &'a crate::state::Shared);

impl<'a> OpenTunnel<'a> {
    /// Counts the tunnel as an open connection of its listener and of the process: the HTTP
    /// connection that carried the upgrade gave its slots back when it ended with the 101.
    fn new(stats: &'a ListenerStats, shared: &'a crate::state::Shared) -> OpenTunnel<'a> {
        stats.downstream_cx_active.inc();
        stats.downstream_cx_upgrades_total.inc();
        stats.downstream_cx_upgrades_active.inc();
        // Always admitted (it is open already); new connections see it against the limit.
        shared.overload.admit(None);
        shared.stats.server.total_connections.inc();
        OpenTunnel(stats, shared)
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        // The process count first: whoever sees the listener's count at 0 sees this one too.
        self.1.overload.release();
        self.1.stats.server.total_connections.dec();
        self.0.downstream_cx_active.dec();
        self.0.downstream_cx_upgrades_active.dec();
    }
}

/// An I/O object that counts the bytes read from it and stamps when it last read any.
struct ReadCount<T> {
    inner: T,
    read: u64,
    last: Arc<AtomicU64>,
}

impl<T> ReadCount<T> {
    fn new(inner: T, last: Arc<AtomicU64>) -> Self {
        ReadCount {
            inner,
            read: 0,
            last,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadCount<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            self.last.store(crate::timer::now_ms(), Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadCount<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_upgrade_requests() {
        let mut h = Fields::new();
        h.insert(UPGRADE, "websocket".parse().unwrap());
        assert!(requested(&h).is_none());
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(requested(&h).unwrap(), "websocket");
        h.remove(UPGRADE);
        assert!(requested(&h).is_none());
    }

    #[test]
    fn h2c_is_recognised_and_stripped() {
        assert!(is_h2c(b"H2C"));
        assert!(!is_h2c(b"h2c, websocket"));
        let mut h = Fields::new();
        h.insert(UPGRADE, "h2c".parse().unwrap());
        h.insert(HTTP2_SETTINGS, "AAMAAABkAAQAAP__".parse().unwrap());
        h.insert(CONNECTION, "Upgrade, HTTP2-Settings".parse().unwrap());
        strip_h2c(&mut h);
        crate::headers::strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }
}
