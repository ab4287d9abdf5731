//! L4 proxying: a downstream connection spliced to one upstream endpoint (over TLS when the
//! cluster originates it), and the ClientHello read of SNI passthrough.

use std::sync::Arc;

use crate::upstream::cluster::{ActiveRequest, Cluster};
use crate::upstream::connect::Connector;
use crate::upstream::outlier::{self, Outcome};

/// The largest ClientHello read to find its SNI (a post-quantum key share makes them grow).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Reads a connection's TLS ClientHello without answering it: the bytes read (to be forwarded
/// first) and the SNI it names. `None` when the bytes are not a ClientHello (or are over
/// [`MAX_CLIENT_HELLO`], or do not come within the TLS handshake timeout): the connection is
/// closed. rustls parses the hello; nothing of it is answered.
pub async fn client_hello<R>(down: &mut R) -> Option<(Vec<u8>, Option<String>)>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = down.read(&mut buf).await.ok()?;
            if n == 0 || seen.len() + n > MAX_CLIENT_HELLO {
                return None;
            }
            seen.extend_from_slice(&buf[..n]);
            acceptor.read_tls(&mut &buf[..n]).ok()?;
            match acceptor.accept() {
                Ok(Some(hello)) => {
                    let sni = hello.client_hello().server_name().map(str::to_string);
                    return Some((seen, sni));
                }
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(tern_config::defaults::TLS_HANDSHAKE_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

/// Connects to an endpoint of `cluster` and copies bytes both ways until both sides close.
pub async fn proxy<S>(down: S, cluster: Arc<Cluster>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    proxy_with(down, cluster, &[]).await
}

/// [`proxy`], sending `first` (bytes already read from the client) upstream before the rest.
pub async fn proxy_with<S>(mut down: S, cluster: Arc<Cluster>, first: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
    let Some(ep) = cluster.pick(None, None) else {
        stats.upstream_rq_no_healthy.inc();
        return;
    };
    let mut up = match Connector::of(&cluster).connect(&ep).await {
        Ok(s) => s,
        Err(e) => {
            stats.upstream_cx_connect_fail.inc();
            outlier::report(&cluster, &ep, Outcome::ConnectFailure);
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, error = %e, "tcp connect failed");
            return;
        }
    };
    // A connection that opens is a success for outlier detection (resets its failure streak).
    outlier::report(&cluster, &ep, Outcome::Status(200));
    let _active = ActiveRequest::start(&cluster, ep);
    if !first.is_empty() {
        use tokio::io::AsyncWriteExt;
        if up.write_all(first).await.is_err() {
            return;
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(cluster = %cluster.name, error = %e, "tcp proxy ended with error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What `client_hello` makes of `bytes` sent on a real connection (then closed).
    async fn hello_of(bytes: Vec<u8>) -> Option<(usize, Option<String>)> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (done, read) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = c.write_all(&bytes).await;
            let _ = c.shutdown().await;
            // Held open until the reader is done.
            let _ = read.await;
        });
        let (mut s, _) = l.accept().await.unwrap();
        let r = client_hello(&mut s).await.map(|(b, sni)| (b.len(), sni));
        let _ = done.send(());
        r
    }

    #[tokio::test]
    async fn hostile_client_hellos_are_refused_not_parsed_past() {
        // Not TLS.
        assert_eq!(hello_of(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await, None);
        // A handshake record header announcing more than is sent, then the end.
        assert_eq!(
            hello_of(vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01]).await,
            None
        );
        // A ClientHello announcing 64 KiB, trickled in tiny records (86 KB for the whole
        // hello): the read ends at the cap (rustls's own buffer limit is about the same),
        // never holding more than it.
        let mut big = vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0xff, 0xff];
        while big.len() <= 2 * MAX_CLIENT_HELLO {
            big.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x10]);
            big.extend(std::iter::repeat_n(0xAB, 0x10));
        }
        let mut reader = std::io::Cursor::new(big);
        assert_eq!(client_hello(&mut reader).await, None);
        let read = reader.position() as usize;
        assert!(
            read > MAX_CLIENT_HELLO - 4096 && read <= MAX_CLIENT_HELLO + 4096,
            "read {read}: the cap, not a parse error, ended it"
        );
        // A real ClientHello, split in two writes, is read whole with its SNI.
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(
                rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            "db.example.com".try_into().unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        let n = hello.len();
        assert_eq!(
            hello_of(hello).await,
            Some((n, Some("db.example.com".into())))
        );
    }
}
