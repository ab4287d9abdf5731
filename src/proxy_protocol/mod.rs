//! The PROXY protocol (v1 and v2) on listeners: a load balancer that does not pass the client's
//! address on (an NLB in front of ECS tasks, HAProxy) sends it in a header before the
//! connection's own bytes. With `proxy_protocol: true` the listener reads that header before
//! anything else and the client's address becomes the connection's remote address (what
//! `x-forwarded-for`, rate limits, hash policies and `%DOWNSTREAM_REMOTE_ADDRESS%` use).
//!
//! The header is taken off the socket and nothing more: its first bytes are peeked, and only
//! bytes known to belong to it are read, so the connection's own bytes stay in the socket for
//! hyper or the TCP proxy. A connection without a header is refused unless
//! `allow_requests_without_proxy_protocol`; a malformed one is refused; the whole header must
//! arrive within `listener_filters_timeout`. Each refusal is counted and the connection closed.
//! Parsing is the `ppp` crate's ([`parse`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::stats::ListenerStats;

pub mod parse;

use parse::{Frame, Proxied};

/// A listener's PROXY protocol settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Connections without a header are served with their own peer address.
    pub allow_missing: bool,
    /// Time allowed for the whole header (`None`: no limit).
    pub timeout: Option<Duration>,
}

/// Why a connection was refused.
#[derive(Debug)]
pub enum Refused {
    /// No PROXY header, and the listener requires one.
    Missing,
    /// A header that does not parse, or is longer than allowed.
    Malformed(String),
    /// The header did not arrive whole within the timeout.
    Timeout,
    /// The connection ended, or failed, before the header's end.
    Closed,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Missing => f.write_str("no PROXY protocol header"),
            Refused::Malformed(e) => write!(f, "malformed PROXY protocol header: {e}"),
            Refused::Timeout => f.write_str("PROXY protocol header not complete in time"),
            Refused::Closed => f.write_str("closed before the PROXY protocol header's end"),
        }
    }
}

/// Reads the PROXY header of a new connection. `Ok(Some(source))`: the client's address;
/// `Ok(None)`: the connection's own peer stands (no header where that is allowed, `LOCAL`,
/// `UNKNOWN`). A refusal is counted in `stats` and logged at debug level; the caller closes.
/// `kill` (the listener's end of drain) ends the wait at once.
pub async fn accept(
    stream: &mut TcpStream,
    settings: &Settings,
    stats: &ListenerStats,
    kill: &CancellationToken,
) -> Result<Option<SocketAddr>, Refused> {
    let read = async {
        let read = read_header(stream);
        match settings.timeout {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .unwrap_or(Err(Refused::Timeout)),
            None => read.await,
        }
    };
    let r = tokio::select! {
        r = read => r,
        _ = kill.cancelled() => return Err(Refused::Closed),
    };
    let r = match r {
        Ok(None) if settings.allow_missing => {
            stats.downstream_cx_proxy_proto_not_found.inc();
            return Ok(None);
        }
        Ok(None) => {
            stats.downstream_cx_proxy_proto_not_found.inc();
            Err(Refused::Missing)
        }
        Ok(Some(Proxied::Source(a))) => return Ok(Some(a)),
        Ok(Some(Proxied::Local)) => return Ok(None),
        Err(e) => {
            stats.downstream_cx_proxy_proto_error.inc();
            Err(e)
        }
    };
    if let Err(e) = &r {
        let peer = stream.peer_addr().ok();
        tracing::debug!(?peer, reason = %e, "connection refused");
    }
    r
}

/// Takes the header off the socket: `None` when the connection does not start with one.
async fn read_header(stream: &mut TcpStream) -> Result<Option<Proxied>, Refused> {
    // Bytes of the header read off the socket so far; the rest is only peeked at.
    let mut taken: Vec<u8> = Vec::new();
    let mut peeked = [0u8; parse::V1_MAX];
    // While fewer bytes than a signature are there, nothing can be taken (they may be the
    // connection's own) and a peek returns at once: poll with a short, growing pause instead.
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream
            .peek(&mut peeked)
            .await
            .map_err(|_| Refused::Closed)?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        let mut seen = taken.clone();
        seen.extend_from_slice(&peeked[..n]);
        match parse::frame(&seen) {
            Frame::NotProxy if taken.is_empty() => return Ok(None),
            Frame::NotProxy => return Err(Refused::Malformed("not a PROXY header".into())),
            Frame::TooLong => {
                return Err(Refused::Malformed(
                    "PROXY v1 header without an end within 107 bytes".into(),
                ))
            }
            Frame::Header(len) => {
                let mut header = taken;
                let start = header.len();
                header.resize(len, 0);
                stream
                    .read_exact(&mut header[start..])
                    .await
                    .map_err(|_| Refused::Closed)?;
                return parse::parse(&header).map(Some).map_err(Refused::Malformed);
            }
            Frame::NeedMore { signed: true } => {
                // Every byte before the header's end is the header's: take what is there, and
                // the next peek waits for more.
                let start = taken.len();
                taken.resize(start + n, 0);
                stream
                    .read_exact(&mut taken[start..])
                    .await
                    .map_err(|_| Refused::Closed)?;
            }
            Frame::NeedMore { signed: false } => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    const V4_BODY: [u8; 12] = [203, 0, 113, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80];

    #[test]
    fn frames_find_the_end_of_either_version() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 8080 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(frame(v1), Frame::Header(41));
        assert_eq!(frame(&v1[..3]), Frame::NeedMore { signed: false });
        assert_eq!(frame(&v1[..20]), Frame::NeedMore { signed: true });
        let h = v2(1, 0x11, &V4_BODY);
        let mut with_data = h.clone();
        with_data.extend_from_slice(b"GET /");
        assert_eq!(frame(&with_data), Frame::Header(28));
        assert_eq!(frame(&h[..13]), Frame::NeedMore { signed: true });
        assert_eq!(frame(&h[..5]), Frame::NeedMore { signed: false });
        assert_eq!(frame(b"GET / HTTP/1.1\r\n"), Frame::NotProxy);
        assert_eq!(frame(b"POST /"), Frame::NotProxy);
        assert_eq!(frame(b"PRI * HTTP/2.0"), Frame::NotProxy);
        assert_eq!(frame(b""), Frame::NeedMore { signed: false });
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(frame(&long), Frame::TooLong);
        // The end must be within the 107 bytes even when more has arrived.
        let late = [b"PROXY ".as_slice(), &[b'1'; 110], b"\r\n"].concat();
        assert_eq!(frame(&late), Frame::TooLong);
    }

    #[test]
    fn headers_give_the_source_address_or_none() {
        let src = |s: &str| Ok(Proxied::Source(s.parse().unwrap()));
        assert_eq!(
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 8080 80\r\n"),
            src("203.0.113.7:8080")
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 8080 80\r\n"),
            src("[2001:db8::7]:8080")
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Proxied::Local));
        assert_eq!(parse(&v2(1, 0x11, &V4_BODY)), src("203.0.113.7:8080"));
        // NLB's health checks: LOCAL, no address.
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Proxied::Local));
        // TLVs after the addresses (an NLB adds the VPC endpoint id) are allowed.
        let mut tlv = V4_BODY.to_vec();
        tlv.extend_from_slice(&[0xEA, 0, 4, b'v', b'p', b'c', b'e']);
        assert_eq!(parse(&v2(1, 0x11, &tlv)), src("203.0.113.7:8080"));
    }

    /// The fuzz target's seed corpus, through the fuzz target's invariants, on every test run.
    #[test]
    fn the_fuzz_seed_corpus_keeps_the_fuzz_invariants() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/proxy_protocol");
        let mut seeds = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            seeds += 1;
            if let Frame::Header(len) = frame(&data) {
                if data.starts_with(V1_SIGNATURE) {
                    assert!(len <= V1_MAX);
                }
                if len <= data.len() {
                    let mut more = data[..len].to_vec();
                    more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
                    assert_eq!(frame(&more), Frame::Header(len));
                    assert_eq!(parse(&more[..len]), parse(&data[..len]));
                }
            }
            let _ = parse(&data);
        }
        assert!(seeds >= 10, "{seeds} seeds in {}", dir.display());
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        for bad in [
            b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n".as_slice(),
            b"PROXY TCP4 1.2.3.4 10.0.0.1 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 01 2\r\n",
            b"PROXY TCP9 1.2.3.4 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2 3\r\n",
            b"PROXY TCP4 \xff\xfe 10.0.0.1 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Version 3, command 5, family 4, protocol 9, addresses shorter than the family's.
        let mut wrong_version = v2(1, 0x11, &V4_BODY);
        wrong_version[12] = 0x31;
        assert!(parse(&wrong_version).is_err());
        assert!(parse(&v2(5, 0x11, &V4_BODY)).is_err());
        assert!(parse(&v2(1, 0x41, &V4_BODY)).is_err());
        assert!(parse(&v2(1, 0x19, &V4_BODY)).is_err());
        assert!(
            parse(&v2(1, 0x21, &V4_BODY)).is_err(),
            "IPv6 needs 36 bytes"
        );
        // Every truncation of a valid header frames as incomplete or fails: never panics.
        let h = v2(1, 0x11, &V4_BODY);
        for i in 0..h.len() {
            let _ = frame(&h[..i]);
            assert!(parse(&h[..i]).is_err());
        }
    }
}
