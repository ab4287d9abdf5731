//! HTTP/1.1 protocol upgrades (WebSocket and other `Upgrade:` protocols): the handshake is proxied
//! like a request, and after a `101 Switching Protocols` the two connections are spliced.
//!
//! An upgraded connection is never pooled: it gets a fresh upstream connection of its own.

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::local_reply::LocalReply;
use super::{Ctx, RespBody};
use crate::headers;
use crate::state::Tunnels;
use crate::stream_info::{Flags, Recorder};
use crate::upstream::cluster::{ActiveRequest, Cluster, Endpoint};
use crate::upstream::outlier::{self, Outcome};
use crate::upstream::pool::UpBody;

/// True for an HTTP/1.1 request asking to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE)
        && h.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Forwards an upgrade handshake (`parts`, already the upstream's head) to an endpoint of
/// `cluster`: one try on a dedicated connection, then a spliced tunnel if it answers 101.
pub(super) async fn forward(
    cluster: &Arc<Cluster>,
    hash: Option<u64>,
    parts: http::request::Parts,
    proto: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    cx: &mut Ctx<'_>,
) -> Result<Response<RespBody>, LocalReply> {
    let Some(ep) = cluster.pick(hash, None) else {
        cluster.stats.upstream_rq_no_healthy.inc();
        return Err(LocalReply::NoHealthyUpstream);
    };
    cx.record(|i| i.upstream_host = Some(ep.address.clone()));
    let tunnels = &cx.conn.shared.tunnels;
    let resp = proxy(
        cluster,
        ep,
        parts,
        proto,
        on_upgrade,
        cx.rec.clone(),
        tunnels,
    )
    .await
    .map_err(|e| match e {
        UpgradeError::Connect => LocalReply::ConnectFailure,
        UpgradeError::Reset => LocalReply::UpstreamReset,
    })?;
    let (mut head, body) = resp.into_parts();
    let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
    let keep = switching.then(|| {
        (
            head.headers.get(UPGRADE).cloned(),
            head.headers.get(CONNECTION).cloned(),
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
    // A refused handshake has a small body (an error page): read it, bounded.
    let body = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok(Response::from_parts(head, Either::Right(Full::new(body))))
}

/// Why an upgrade could not be proxied.
#[derive(Debug)]
pub enum UpgradeError {
    /// Connecting to the endpoint failed or timed out.
    Connect,
    /// The upstream failed before answering.
    Reset,
}

/// Sends the upgrade handshake `parts` (already rewritten for the upstream, hop-by-hop headers
/// removed) to endpoint `ep`, and when it answers 101 splices the two upgraded connections.
///
/// `downstream` is the client's pending upgrade (`hyper::upgrade::on` of its request); `rec`,
/// the request's record, goes to the tunnel, which ends it when it closes.
pub async fn proxy(
    cluster: &Arc<Cluster>,
    ep: Arc<Endpoint>,
    mut parts: http::request::Parts,
    upgrade: HeaderValue,
    downstream: hyper::upgrade::OnUpgrade,
    rec: Option<Recorder>,
    tunnels: &Tunnels,
) -> Result<Response<Incoming>, UpgradeError> {
    let cs = &cluster.stats;
    let connect = TcpStream::connect(ep.addr);
    let stream = match tokio::time::timeout(cluster.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        _ => {
            cs.upstream_cx_connect_fail.inc();
            outlier::report(cluster, &ep, Outcome::ConnectFailure);
            return Err(UpgradeError::Connect);
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut tx, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, UpBody>(TokioIo::new(stream))
        .await
        .map_err(|_| UpgradeError::Connect)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(UPGRADE, upgrade);
    let active = ActiveRequest::start(cluster, ep.clone());
    let req = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    let mut resp = tx.send_request(req).await.map_err(|_| {
        cs.upstream_rq_reset.inc();
        outlier::report(cluster, &ep, Outcome::Reset);
        UpgradeError::Reset
    })?;
    let status = resp.status();
    cs.upstream_rq_xx.record(status.as_u16());
    outlier::report(cluster, &ep, Outcome::Status(status.as_u16()));
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        let name = cluster.name.clone();
        let stop = tunnels.stop_token();
        tunnels.spawn(async move {
            // The endpoint stays counted as busy for as long as the tunnel is open.
            let _active = active;
            let mut counts = (0, 0);
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let mut down = ReadCount::new(TokioIo::new(down));
                    let mut up = ReadCount::new(TokioIo::new(up));
                    tokio::select! {
                        r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                            if let Err(e) = r {
                                tracing::debug!(cluster = %name, error = %e, "upgraded connection ended");
                            }
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
                r.response_done(counts.1, Flags::default());
            }
        });
    }
    Ok(resp)
}

/// An I/O object that counts the bytes read from it.
struct ReadCount<T> {
    inner: T,
    read: u64,
}

impl<T> ReadCount<T> {
    fn new(inner: T) -> Self {
        ReadCount { inner, read: 0 }
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
        self.read += (buf.filled().len() - before) as u64;
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
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, "websocket".parse().unwrap());
        assert!(!is_upgrade(&h));
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_upgrade(&h));
        h.remove(UPGRADE);
        assert!(!is_upgrade(&h));
    }
}
