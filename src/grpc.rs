//! gRPC facts the proxy needs, as pure functions: is a request gRPC, its status codes (numbers,
//! names, Envoy's HTTP → gRPC mapping), the `grpc-timeout` wire format (parsed from the client,
//! written upstream), `grpc-message` percent-encoding, and the method a path names.
//!
//! Sources: the gRPC over HTTP/2 protocol (`PROTOCOL-HTTP2.md`: `Timeout → "grpc-timeout"
//! TimeoutValue TimeoutUnit`, 1 to 8 ASCII digits and one of `H M S m u n`; `grpc-message` is
//! percent-encoded), and Envoy's `source/common/grpc/status.cc` (`Utility::httpToGrpcStatus`)
//! and `common.cc` (`hasGrpcContentType`, `getGrpcTimeout`, `toGrpcTimeout`).

use std::time::Duration;

use http::HeaderValue;

use percent_encoding::{AsciiSet, CONTROLS};

use crate::message::Lookup;

/// `grpc-status`.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
/// `grpc-timeout`.
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// `OK`.
pub const OK: u8 = 0;
/// `UNKNOWN`: also what a status outside the known codes is read as (the gRPC spec's rule).
pub const UNKNOWN: u8 = 2;
/// `DEADLINE_EXCEEDED`.
pub const DEADLINE_EXCEEDED: u8 = 4;
/// The highest status code (`UNAUTHENTICATED`).
pub const MAX_CODE: u8 = 16;

/// The status codes' names, by code, as Envoy's `%GRPC_STATUS(CAMEL_STRING)%` writes them.
const CAMEL: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The status codes' names, by code, as in the gRPC spec (`%GRPC_STATUS(SNAKE_STRING)%`).
const SNAKE: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Whether a request (or response) with these headers is gRPC: `content-type` is
/// `application/grpc`, or starts with it followed by `+` (`application/grpc+proto`) or `;`
/// (Envoy's `Grpc::Common::hasGrpcContentType`; gRPC-Web's `application/grpc-web` is not).
pub fn is_grpc<H: Lookup + ?Sized>(h: &H) -> bool {
    let Some(ct) = h.first(&http::header::CONTENT_TYPE) else {
        return false;
    };
    const GRPC: &[u8] = b"application/grpc";
    ct.starts_with(GRPC) && matches!(ct.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// The status in a `grpc-status` value: decimal digits; a number above the known codes is
/// `UNKNOWN` (gRPC: "unknown status codes are treated as UNKNOWN"); anything else is `None`.
pub fn parse_status(v: &[u8]) -> Option<u8> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    Some(if n > MAX_CODE as u64 {
        UNKNOWN
    } else {
        n as u8
    })
}

/// The `grpc-status` of a header (or trailer) block, if it has a valid one.
pub fn status_of<H: Lookup + ?Sized>(h: &H) -> Option<u8> {
    parse_status(h.first(&GRPC_STATUS)?)
}

/// The gRPC status a proxy's own HTTP reply stands for: Envoy's `Grpc::Utility::httpToGrpcStatus`
/// (`source/common/grpc/status.cc`, after gRPC's `http-grpc-status-mapping.md`).
pub fn from_http(status: u16) -> u8 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => UNKNOWN,          // UNKNOWN
    }
}

/// A code's name in `CamelCase` (Envoy's `CAMEL_STRING`), e.g. `DeadlineExceeded`.
pub fn camel_name(code: u8) -> &'static str {
    CAMEL.get(code as usize).copied().unwrap_or("Unknown")
}

/// A code's name in `SNAKE_CASE` (Envoy's `SNAKE_STRING`), e.g. `DEADLINE_EXCEEDED`.
pub fn snake_name(code: u8) -> &'static str {
    SNAKE.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The code a `retry_on` gRPC condition names (Envoy's `x-envoy-retry-grpc-on` values).
pub fn retry_condition(name: &str) -> Option<u8> {
    Some(match name {
        "cancelled" => 1,
        "deadline-exceeded" => 4,
        "resource-exhausted" => 8,
        "internal" => 13,
        "unavailable" => 14,
        _ => return None,
    })
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits, then one unit (`H` hours, `M` minutes,
/// `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds). Anything else is `None`:
/// the header is ignored, as Envoy's `Grpc::Common::getGrpcTimeout` does.
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 99,999,999: no overflow in u64, and hours fit a Duration.
    let n = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-timeout` of a request, if it has a valid one.
pub fn timeout_of<H: Lookup + ?Sized>(h: &H) -> Option<Duration> {
    parse_timeout(h.first(&GRPC_TIMEOUT)?)
}

/// Writes `d` as a `grpc-timeout` value: whole milliseconds, rounded up so that time left is
/// never written as none, at least `1m` (`0` would be a deadline already passed); in the
/// smallest of `m`, `S`, `M`, `H` that fits 8 digits (Envoy's `toGrpcTimeout`).
pub fn format_timeout(d: Duration) -> HeaderValue {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    let mut value = ms;
    let mut unit = 'm';
    for (next, factor) in [('S', 1000), ('M', 60), ('H', 60)] {
        if value <= 99_999_999 {
            break;
        }
        value /= factor;
        unit = next;
    }
    let value = value.min(99_999_999);
    HeaderValue::from_str(&format!("{value}{unit}")).expect("digits and a letter")
}

/// What `grpc-message` percent-encodes: everything outside printable ASCII, and `%` (the gRPC
/// spec's `Percent-Byte-Unencoded` is 0x20-0x7E except `%`).
const MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// A `grpc-message` value for `text`, percent-encoded; a trailing newline is dropped (the
/// proxy's plain-text replies end with one; a header value cannot).
pub fn message(text: &str) -> HeaderValue {
    let text = text.trim_end_matches(['\n', '\r']);
    let encoded = percent_encoding::utf8_percent_encode(text, MESSAGE).to_string();
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The method a gRPC request's path names, `/package.Service/Method`: the path itself when it
/// has that shape (a leading `/`, a service, one more `/`, a method), else `None`.
pub fn method(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let (service, m) = rest.split_once('/')?;
    (!service.is_empty() && !m.is_empty() && !m.contains('/') && !path.contains('?'))
        .then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(ct).unwrap(),
        );
        h
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&headers(yes)), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
            "Application/grpc",
            "",
        ] {
            assert!(!is_grpc(&headers(no)), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn http_statuses_map_like_envoy() {
        let table = [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (500, 2),
            (408, 2),
            (431, 2),
            (200, 2),
            (301, 2),
        ];
        for (http, grpc) in table {
            assert_eq!(from_http(http), grpc, "{http}");
        }
    }

    #[test]
    fn status_values_and_names() {
        assert_eq!(parse_status(b"0"), Some(0));
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b"17"), Some(UNKNOWN));
        assert_eq!(parse_status(b"99999999999"), None);
        for bad in [&b""[..], b"-1", b"1 ", b" 1", b"x", b"1.0", b"\xff"] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
        assert_eq!(camel_name(4), "DeadlineExceeded");
        assert_eq!(snake_name(4), "DEADLINE_EXCEEDED");
        assert_eq!(camel_name(1), "Canceled");
        assert_eq!(snake_name(16), "UNAUTHENTICATED");
        assert_eq!(snake_name(99), "UNKNOWN");
    }

    #[test]
    fn timeouts_parse_the_wire_format() {
        let ms = Duration::from_millis;
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(ms(250)));
        assert_eq!(parse_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout(b"9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_timeout(b"0m"), Some(Duration::ZERO));
        assert_eq!(parse_timeout(b"00000001S"), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_timeout(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in [
            &b""[..],
            b"m",
            b"S",
            b"123456789m",
            b"10",
            b"10s",
            b"10 m",
            b" 10m",
            b"-1m",
            b"+1m",
            b"1.5S",
            b"10mm",
            b"\xff1m",
            b"1m\x00",
        ] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timeouts_are_written_in_the_smallest_unit_that_fits() {
        let f = |d: Duration| format_timeout(d).to_str().unwrap().to_string();
        assert_eq!(f(Duration::from_millis(1500)), "1500m");
        assert_eq!(f(Duration::from_micros(1)), "1m", "rounded up, never zero");
        assert_eq!(f(Duration::ZERO), "1m");
        assert_eq!(f(Duration::from_micros(2001)), "3m");
        assert_eq!(f(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(f(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(f(Duration::from_secs(100_000_000)), "1666666M");
        assert_eq!(f(Duration::from_secs(u64::MAX / 2)), "99999999H");
        // Whole milliseconds that fit eight digits read back as they were.
        for ms in [1u64, 999, 123_456, 99_999_999] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_timeout(format_timeout(d).as_bytes()), Some(d));
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message("no healthy upstream\n"), "no healthy upstream");
        assert_eq!(message("50% off"), "50%25 off");
        assert_eq!(message("a\tb"), "a%09b");
        assert_eq!(message("é"), "%C3%A9");
        assert_eq!(message(""), "");
    }

    #[test]
    fn methods_are_service_slash_method() {
        assert_eq!(method("/pkg.Svc/Call"), Some("/pkg.Svc/Call"));
        assert_eq!(
            method("/grpc.health.v1.Health/Check"),
            Some("/grpc.health.v1.Health/Check")
        );
        for no in [
            "/", "/x", "//Call", "/Svc/", "/a/b/c", "Svc/Call", "/a/b?x=1",
        ] {
            assert_eq!(method(no), None, "{no}");
        }
    }

    #[test]
    fn retry_conditions_name_codes() {
        assert_eq!(retry_condition("unavailable"), Some(14));
        assert_eq!(retry_condition("cancelled"), Some(1));
        assert_eq!(retry_condition("deadline-exceeded"), Some(4));
        assert_eq!(retry_condition("internal"), Some(13));
        assert_eq!(retry_condition("resource-exhausted"), Some(8));
        assert_eq!(retry_condition("5xx"), None);
    }
}
