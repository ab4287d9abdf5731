//! Tern's own HTTP/1.1 engine (issue 17): the body codec (`decode`, `encode`), the head parsers
//! and framing rules of each side, and the connection drivers of the proxy path. Pure framing and
//! I/O on any `AsyncRead + AsyncWrite`, no proxy policy; strict as RFC 9112 and Envoy's defaults
//! (docs/architecture.md). hyper keeps HTTP/2, admin, OTLP and health checks.

pub(crate) mod buffers;
pub(crate) mod client;
pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod server;

use std::fmt;

/// Why a message's framing was refused. Any of them closes the connection: after a framing
/// error the next byte's meaning is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// A chunk size that is not 1–16 hex digits (a sign, `0x`, whitespace, too many digits).
    BadChunkSize,
    /// A chunk extension that is not `;name[=value]` with a token or a quoted string.
    BadChunkExtension,
    /// Something other than CRLF where the chunked framing requires one (a bare LF or CR too).
    MissingCrlf,
    /// A trailer section that is not well-formed field lines (obs-fold, control bytes, ...).
    BadTrailer,
    /// A line or a section over its size or count bound.
    TooLarge,
    /// The peer closed before the end of the body.
    Incomplete,
    /// A body with a declared length was given more bytes than declared (encoder).
    TooLong,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramingError::BadChunkSize => "invalid chunk size",
            FramingError::BadChunkExtension => "invalid chunk extension",
            FramingError::MissingCrlf => "missing CRLF in chunked framing",
            FramingError::BadTrailer => "invalid trailer section",
            FramingError::TooLarge => "framing line or section too large",
            FramingError::Incomplete => "body cut short",
            FramingError::TooLong => "body longer than its content-length",
        })
    }
}

impl std::error::Error for FramingError {}

/// A `Content-Length` value, on either side: `1*DIGIT` that fits a u64 (no sign, no list, no
/// spaces inside; a longer or larger number is refused, not wrapped).
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}
