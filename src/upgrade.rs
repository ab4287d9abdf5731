//! HTTP/1.1 protocol upgrades (WebSocket and other `Upgrade:` protocols): the handshake is proxied
//! like a request, and after a `101 Switching Protocols` the two connections are spliced.
//!
//! An upgraded connection is never pooled: it gets a fresh upstream connection of its own.

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::cluster::{ActiveRequest, Cluster};
use crate::outlier::{self, Outcome};
use crate::pool::UpBody;

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

/// Open tunnels and the tasks that log them, so a shutdown can wait for them, close them, and
/// still write their log lines.
#[derive(Debug, Default)]
pub struct Tunnels {
    tracker: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

impl Tunnels {
    /// Runs `fut` as a tracked task.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(fut);
    }

    /// Waits up to `grace` for the tunnels to end by themselves, then closes the rest and waits
    /// (bounded) for them to report.
    pub async fn close(&self, grace: std::time::Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.tracker.len(),
                "drain timeout: closing upgraded connections"
            );
            self.stop.cancel();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), self.tracker.wait()).await;
        }
    }
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
/// removed) to endpoint `idx`, and when it answers 101 splices the two upgraded connections.
///
/// `downstream` is the client's pending upgrade (`hyper::upgrade::on` of its request).
pub async fn proxy(
    cluster: &std::sync::Arc<Cluster>,
    idx: usize,
    mut parts: http::request::Parts,
    upgrade: HeaderValue,
    downstream: hyper::upgrade::OnUpgrade,
    done: Option<tokio::sync::oneshot::Sender<(u64, u64)>>,
    tunnels: &Tunnels,
) -> Result<Response<Incoming>, UpgradeError> {
    let ep = &cluster.endpoints[idx];
    let cs = &cluster.stats;
    let connect = async {
        match ep.resolved {
            Some(sa) => TcpStream::connect(sa).await,
            None => TcpStream::connect(&*ep.address).await,
        }
    };
    let stream = match tokio::time::timeout(cluster.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        _ => {
            cs.upstream_cx_connect_fail.inc();
            outlier::report(cluster, idx, Outcome::ConnectFailure);
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
    let active = ActiveRequest::start(cluster, idx);
    let req = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    let mut resp = tx.send_request(req).await.map_err(|_| {
        cs.upstream_rq_reset.inc();
        outlier::report(cluster, idx, Outcome::Reset);
        UpgradeError::Reset
    })?;
    let status = resp.status();
    cs.upstream_rq_xx.record(status.as_u16());
    outlier::report(cluster, idx, Outcome::Status(status.as_u16()));
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        let name = cluster.name.clone();
        let stop = tunnels.stop.clone();
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
            if let Some(done) = done {
                let _ = done.send(counts);
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
