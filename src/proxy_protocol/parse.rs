//! The bytes of a PROXY protocol header: where one ends ([`frame`], from the first bytes of a
//! connection) and what it says ([`parse`], by the `ppp` crate, of exactly those bytes).
//!
//! Pure functions of a byte slice, with no dependency but `ppp` and `std`, so that the fuzz
//! target (`fuzz/fuzz_targets/proxy_protocol.rs`) runs this very file.

use std::net::SocketAddr;

/// The v1 (text) signature.
pub const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The v2 (binary) signature.
pub const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, `\r\n` included (the specification's limit).
pub const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version and command, family, length.
pub const V2_FIXED: usize = 16;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not a PROXY header: the connection's own bytes.
    NotProxy,
    /// A PROXY header, or the start of one: more bytes are needed. `signed` once the whole
    /// signature is there (from then on every byte up to the header's end is the header's).
    NeedMore {
        /// The signature is complete.
        signed: bool,
    },
    /// A header of this many bytes (for v2 known from its fixed part; the bytes may not all be
    /// there yet).
    Header(usize),
    /// A v1 header with no end within its 107 bytes.
    TooLong,
}

/// Where the PROXY header at the start of `buf` ends, if there is one.
pub fn frame(buf: &[u8]) -> Frame {
    let prefix_of = |sig: &[u8]| buf.len() < sig.len() && sig.starts_with(buf);
    if prefix_of(V1_SIGNATURE) || prefix_of(V2_SIGNATURE) {
        return Frame::NeedMore { signed: false };
    }
    if buf.starts_with(V1_SIGNATURE) {
        let window = &buf[..buf.len().min(V1_MAX)];
        return match window.windows(2).position(|w| w == b"\r\n") {
            Some(i) => Frame::Header(i + 2),
            None if buf.len() >= V1_MAX => Frame::TooLong,
            None => Frame::NeedMore { signed: true },
        };
    }
    if buf.starts_with(V2_SIGNATURE) {
        if buf.len() < V2_FIXED {
            return Frame::NeedMore { signed: true };
        }
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        return Frame::Header(V2_FIXED + len);
    }
    Frame::NotProxy
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The client's address (the header's source).
    Source(SocketAddr),
    /// No usable address: v1 `UNKNOWN`, v2 `LOCAL` (the proxy's own health checks), a v2 UNIX
    /// or unspecified family. The connection's own peer stands.
    Local,
}

/// Parses a complete header (`frame` said `Header(header.len())`).
pub fn parse(header: &[u8]) -> Result<Proxied, String> {
    if header.starts_with(V1_SIGNATURE) {
        let h = ppp::v1::Header::try_from(header).map_err(|e| format!("PROXY v1: {e}"))?;
        if h.header.len() != header.len() {
            return Err("PROXY v1: bytes after the header's end".into());
        }
        return Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Proxied::Source(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Proxied::Source(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => Proxied::Local,
        });
    }
    let h = ppp::v2::Header::try_from(header).map_err(|e| format!("PROXY v2: {e}"))?;
    if h.header.len() != header.len() {
        return Err("PROXY v2: bytes after the header's end".into());
    }
    if h.command == ppp::v2::Command::Local {
        return Ok(Proxied::Local);
    }
    Ok(match h.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Proxied::Source(SocketAddr::from((a.source_address, a.source_port)))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Proxied::Source(SocketAddr::from((a.source_address, a.source_port)))
        }
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => Proxied::Local,
    })
}
