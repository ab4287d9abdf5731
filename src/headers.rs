//! Proxy header handling: hop-by-hop removal, forwarding headers and the client behind trusted
//! proxies, request IDs.

use std::net::{IpAddr, SocketAddr};

use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, HeaderValue};

use crate::message::{Fields, Request};

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers. `static`, not `const`: a const array of `HeaderName` is built and
/// dropped at every use.
static HOP: [HeaderName; 6] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TRANSFER_ENCODING,
    UPGRADE,
    TE,
];

/// `1 << i` when `name` is `HOP[i]`, else 0. A string match (length, then bytes) is several
/// times cheaper than comparing `HeaderName`s one by one.
fn hop_bit(name: &str) -> u8 {
    match name {
        "connection" => 1,
        "keep-alive" => 2,
        "proxy-connection" => 4,
        "transfer-encoding" => 8,
        "upgrade" => 16,
        "te" => 32,
        _ => 0,
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
/// `te: trailers` is kept: gRPC needs it end to end.
pub fn strip_hop_by_hop(h: &mut Fields) {
    // One pass over the names finds which are present, so only those are removed: most
    // responses carry just `connection: keep-alive`, most requests nothing. Every `Connection` line counts, for the
    // names it lists; names other than the usual `keep-alive` / `close` are rare, so the list
    // allocates only for one. `Trailer` is end to end (RFC 9110 §6.6.2), and hyper sends only
    // the trailers it declares.
    let mut present = 0u8;
    for k in h.names() {
        present |= hop_bit(k.as_str());
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(CONNECTION) {
            // Bytes, not `to_str`: one odd byte must not make every token be skipped.
            for name in v.as_bytes().split(|b| *b == b',') {
                let name = name.trim_ascii();
                if !name.is_empty()
                    && !name.eq_ignore_ascii_case(b"keep-alive")
                    && !name.eq_ignore_ascii_case(b"close")
                {
                    if let Ok(n) = HeaderName::from_bytes(name) {
                        named.push(n);
                    }
                }
            }
        }
        h.remove(CONNECTION);
        for n in named {
            h.remove(n);
        }
    }
    for (i, n) in HOP.iter().enumerate().skip(1) {
        if present & (1 << i) == 0 {
            continue;
        }
        if *n == TE {
            // Only the `trailers` token goes on (gRPC needs it), as one `te: trailers`.
            let trailers = h.get_all(TE).iter().any(|v| {
                v.as_bytes()
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
            });
            if trailers {
                h.insert(TE, HeaderValue::from_static("trailers"));
                continue;
            }
        }
        h.remove(n);
    }
}

/// How a listener treats the forwarding headers of the proxies in front of it (Envoy's
/// `use_remote_address: true` with `xff_num_trusted_hops` and `skip_xff_append`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Trusted proxies in front: their `x-forwarded-for` entries and `x-forwarded-proto` count.
    pub trusted_hops: u32,
    /// Leave `x-forwarded-for` as received.
    pub skip_append: bool,
    /// The listener terminates TLS: the peer's scheme is `https`.
    pub https: bool,
}

/// Appends the peer to `x-forwarded-for` (unless `skip_append`) and sets `x-forwarded-proto`:
/// a value sent by a trusted proxy (`trusted_hops > 0`) is kept, as in Envoy, where only such a
/// hop could know the client's scheme; otherwise it is the scheme the peer used (`https` on a
/// TLS listener).
pub fn append_forwarded(h: &mut Fields, peer_ip: &HeaderValue, f: Forwarding) {
    if !f.skip_append {
        if h.contains_key(X_FORWARDED_FOR) {
            // Several lines are one list (RFC 9110 §5.3): joined, then the client appended.
            let mut v = Vec::new();
            for prev in h.get_all(X_FORWARDED_FOR).iter() {
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(peer_ip.as_bytes());
            let joined = HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer_ip.clone());
            h.insert(X_FORWARDED_FOR, joined);
        } else {
            h.push(X_FORWARDED_FOR, peer_ip.clone());
        }
    }
    let http = HeaderValue::from_static(if f.https { "https" } else { "http" });
    if f.trusted_hops == 0 {
        h.insert(X_FORWARDED_PROTO, http);
    } else if !h.contains_key(X_FORWARDED_PROTO) {
        h.push(X_FORWARDED_PROTO, http);
    }
}

/// The trusted client address (Envoy's rule with `use_remote_address: true`): with `trusted_hops`
/// N > 0, the Nth address from the right of `x-forwarded-for` as received (all lines, in order,
/// are one list); the peer when N is 0, when the list is shorter, or when that entry is not an
/// IP address. An address from the header has port 0, as in Envoy.
pub fn trusted_client(h: &Fields, trusted_hops: u32, peer: SocketAddr) -> SocketAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let mut left = trusted_hops;
    for line in h.get_all(X_FORWARDED_FOR).iter().rev() {
        for entry in line.as_bytes().rsplit(|b| *b == b',') {
            left -= 1;
            if left == 0 {
                return std::str::from_utf8(entry)
                    .ok()
                    .and_then(|s| s.trim().parse::<IpAddr>().ok())
                    .map_or(peer, |ip| SocketAddr::new(ip, 0));
            }
        }
    }
    peer
}

/// Keeps a client's non-empty `x-request-id` when `preserve` is set, else puts a new UUID v4 in
/// its place; returns the value in use.
pub fn ensure_request_id(h: &mut Fields, preserve: bool) -> HeaderValue {
    if preserve {
        if let Some(v) = h.get(X_REQUEST_ID).filter(|v| !v.is_empty()) {
            return v.to_owned();
        }
    }
    let v = new_request_id();
    h.insert(X_REQUEST_ID, v.clone());
    v
}

/// Request ids written one after another into a block of this many bytes: each id shares the
/// block (a reference count), where an id of its own cost two allocations (its bytes, then a
/// shared header when the request and the response both took it) and their frees.
const ID_BLOCK: usize = 36 * 112;

thread_local! {
    static IDS: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

fn new_request_id() -> HeaderValue {
    const LEN: usize = uuid::fmt::Hyphenated::LENGTH;
    let mut buf = [0u8; LEN];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    let id = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.capacity() < LEN {
            // The used block stays alive only while ids cut from it do.
            *ids = bytes::BytesMut::with_capacity(ID_BLOCK);
        }
        ids.extend_from_slice(s.as_bytes());
        ids.split().freeze()
    });
    HeaderValue::from_maybe_shared(id).expect("a UUID is a valid header value")
}

/// The authority a request is routed by and forwarded with: the request target's (HTTP/2
/// `:authority`, HTTP/1.1 absolute-form), which replaces any Host (RFC 9112 §3.2.2), else the
/// one Host line. `Err` for what RFC 9112 §3.2 answers 400: more than one Host line, none on an
/// HTTP/1.1 request, or a value that is not `host[:port]` (userinfo included, RFC 9110 §4.2.4).
/// An HTTP/1.0 request may omit Host: its authority is empty.
pub fn authority<B>(req: &Request<B>) -> Result<&str, BadAuthority> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadAuthority);
    }
    let a = match (req.uri().authority(), host) {
        (Some(a), _) => a.as_str(),
        (None, Some(h)) => h.to_str().map_err(|_| BadAuthority)?,
        (None, None) if req.version() <= http::Version::HTTP_10 => return Ok(""),
        (None, None) => return Err(BadAuthority),
    };
    if valid_authority(a) {
        Ok(a)
    } else {
        Err(BadAuthority)
    }
}

/// A request's Host or `:authority` that cannot be routed (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAuthority;

/// `host[:port]` (RFC 3986 §3.2.2-3): a registered name or an IP literal in brackets, and a
/// numeric port; no userinfo. Checked in place: this runs on every request.
fn valid_authority(a: &str) -> bool {
    let digits = |p: &str| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = a.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        let ip_char = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
        return !literal.is_empty()
            && literal.bytes().all(ip_char)
            && (after.is_empty() || after.strip_prefix(':').is_some_and(digits));
    }
    let (host, port) = a.rsplit_once(':').unwrap_or((a, ""));
    // unreserved, pct-encoded and sub-delims: no `@`, `/`, `?`, `#`, `:`, brackets or spaces.
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
    !host.is_empty() && host.bytes().all(name_char) && digits(port)
}

/// The host of an authority without its port: `example.com:8080` → `example.com`,
/// `[::1]:80` → `[::1]`. Only a numeric port is removed (a bare IPv6 address keeps its colons).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_connection_named_ones() {
        let mut h = Fields::new();
        h.insert(CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(TE, "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.names().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "x-keep"]);
    }

    #[test]
    fn connection_tokens_any_case_and_non_trailers_te_go() {
        let mut h = Fields::new();
        h.insert(CONNECTION, "Close , X-Secret,,bad name".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(TE, "gzip".parse().unwrap());
        h.insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.names().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-keep"]);
    }

    #[test]
    fn hop_bits_follow_the_hop_list() {
        for (i, n) in HOP.iter().enumerate() {
            assert_eq!(hop_bit(n.as_str()), 1 << i, "{n}");
        }
        assert_eq!(hop_bit("user-agent"), 0);
    }

    #[test]
    fn every_connection_line_and_te_line_counts() {
        let mut h = Fields::new();
        h.append(CONNECTION, "keep-alive".parse().unwrap());
        h.append(CONNECTION, "x-a".parse().unwrap());
        h.insert("x-a", "1".parse().unwrap());
        h.append(TE, "gzip".parse().unwrap());
        h.append(TE, "Trailers, deflate".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.names().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "x-keep"]);
        let te: Vec<_> = h.get_all(TE).iter().collect();
        assert_eq!(te, vec!["trailers"]);
    }

    #[test]
    fn trailer_declaration_is_end_to_end() {
        let mut h = Fields::new();
        h.insert(http::header::TRAILER, "grpc-status".parse().unwrap());
        h.insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.names().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["trailer"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = Fields::new();
        let ip = HeaderValue::from_static("10.0.0.1");
        let f = Forwarding::default();
        append_forwarded(&mut h, &ip, f);
        append_forwarded(&mut h, &ip, f);
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1, 10.0.0.1");
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
        append_forwarded(&mut h, &ip, f);
        assert_eq!(
            h.get(X_FORWARDED_FOR).unwrap(),
            "10.0.0.1, 10.0.0.1, 10.0.0.9, 10.0.0.1"
        );
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
    }

    #[test]
    fn forwarded_proto_is_kept_only_from_a_trusted_hop_and_append_can_be_skipped() {
        let ip = HeaderValue::from_static("10.0.0.1");
        let mut h = Fields::new();
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        append_forwarded(&mut h, &ip, Forwarding::default());
        assert_eq!(
            h.get(X_FORWARDED_PROTO).unwrap(),
            "http",
            "untrusted: overwritten"
        );
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let trusted = Forwarding {
            trusted_hops: 1,
            skip_append: true,
            https: false,
        };
        append_forwarded(&mut h, &ip, trusted);
        assert_eq!(
            h.get(X_FORWARDED_PROTO).unwrap(),
            "https",
            "from a trusted hop: kept"
        );
        assert_eq!(
            h.get(X_FORWARDED_FOR).unwrap(),
            "1.2.3.4, 10.0.0.1",
            "skipped"
        );
        h.remove(X_FORWARDED_PROTO);
        append_forwarded(&mut h, &ip, trusted);
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http", "absent: set");
        let tls = Forwarding {
            https: true,
            ..Forwarding::default()
        };
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        append_forwarded(&mut h, &ip, tls);
        assert_eq!(
            h.get(X_FORWARDED_PROTO).unwrap(),
            "https",
            "a TLS listener's scheme"
        );
    }

    #[test]
    fn the_client_is_the_nth_address_from_the_right() {
        let peer: SocketAddr = "192.0.2.5:4000".parse().unwrap();
        let mut h = Fields::new();
        h.append(
            X_FORWARDED_FOR,
            "203.0.113.128, 203.0.113.10".parse().unwrap(),
        );
        h.append(X_FORWARDED_FOR, " 203.0.113.1 ".parse().unwrap());
        let at = |h: &Fields, n| trusted_client(h, n, peer).to_string();
        assert_eq!(at(&h, 0), "192.0.2.5:4000");
        assert_eq!(at(&h, 1), "203.0.113.1:0");
        // Envoy's example 3: two trusted hops.
        assert_eq!(at(&h, 2), "203.0.113.10:0");
        assert_eq!(at(&h, 3), "203.0.113.128:0");
        assert_eq!(at(&h, 4), "192.0.2.5:4000", "fewer entries: the peer");
        h.insert(X_FORWARDED_FOR, "2001:db8::1,not-an-ip,".parse().unwrap());
        assert_eq!(
            at(&h, 1),
            "192.0.2.5:4000",
            "an empty entry is not an address"
        );
        assert_eq!(at(&h, 2), "192.0.2.5:4000", "garbage is not an address");
        assert_eq!(at(&h, 3), "[2001:db8::1]:0");
        h.remove(X_FORWARDED_FOR);
        assert_eq!(at(&h, 1), "192.0.2.5:4000", "no header: the peer");
    }

    #[test]
    fn request_ids_are_v4_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = new_request_id();
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(id.as_bytes(), parsed.hyphenated().to_string().as_bytes());
            assert!(seen.insert(id), "unique");
        }
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut h = Fields::new();
        let id = ensure_request_id(&mut h, true);
        assert_eq!(id.len(), 36);
        assert_eq!(h.get(X_REQUEST_ID).unwrap(), id);
        assert_eq!(ensure_request_id(&mut h, true), id, "kept");
        let new = ensure_request_id(&mut h, false);
        assert_ne!(new, id, "replaced");
        assert_eq!(h.get_all(X_REQUEST_ID).iter().count(), 1);
        assert_eq!(h.get(X_REQUEST_ID).unwrap(), new);
        h.insert(X_REQUEST_ID, HeaderValue::from_static(""));
        assert_ne!(
            ensure_request_id(&mut h, true),
            "",
            "an empty id is replaced"
        );
    }

    #[test]
    fn the_authority_is_the_targets_or_the_one_valid_host() {
        let req = |target: &str, version: http::Version, hosts: &[&str]| {
            let mut b = http::Request::builder().uri(target).version(version);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            Request::from(b.body(()).unwrap())
        };
        use http::Version as V;
        let ok = |r: Request<()>| authority(&r).map(str::to_string);
        assert_eq!(
            ok(req("/", V::HTTP_11, &["a.example:8080"])),
            Ok("a.example:8080".into())
        );
        assert_eq!(
            ok(req("http://www.x/s", V::HTTP_11, &["admin.x"])),
            Ok("www.x".into())
        );
        assert_eq!(ok(req("/", V::HTTP_10, &[])), Ok(String::new()));
        assert_eq!(
            ok(req("/", V::HTTP_11, &["[::1]:80"])),
            Ok("[::1]:80".into())
        );
        assert_eq!(ok(req("/", V::HTTP_11, &["[::1]"])), Ok("[::1]".into()));
        assert_eq!(
            ok(req("/", V::HTTP_11, &["10.0.0.1"])),
            Ok("10.0.0.1".into())
        );
        for bad in [
            req("/", V::HTTP_11, &["a", "b"]),
            req("/", V::HTTP_11, &["a", "a"]),
            req("http://www.x/", V::HTTP_11, &["a", "b"]),
            req("/", V::HTTP_11, &[]),
            req("/", V::HTTP_2, &[]),
            req("/", V::HTTP_11, &[""]),
            req("/", V::HTTP_11, &["a/b@c"]),
            req("/", V::HTTP_11, &["user@a"]),
            req("/", V::HTTP_11, &[":80"]),
            req("/", V::HTTP_11, &["a b"]),
            req("/", V::HTTP_11, &["a:b"]),
            req("/", V::HTTP_11, &["a:123456"]),
            req("/", V::HTTP_11, &["a:1:2"]),
            req("/", V::HTTP_11, &["[::1"]),
            req("/", V::HTTP_11, &["[]"]),
            req("/", V::HTTP_11, &["[::1]x"]),
            req("/", V::HTTP_11, &["a?b"]),
            req("/", V::HTTP_11, &["a#b"]),
            req("http://user@www.x/", V::HTTP_11, &["www.x"]),
        ] {
            assert_eq!(authority(&bad), Err(BadAuthority), "{bad:?}");
        }
    }

    #[test]
    fn the_port_is_stripped_from_an_authority() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        // Not a port: kept as it is.
        assert_eq!(strip_port("example.com:http"), "example.com:http");
        assert_eq!(strip_port("::1"), "::1");
    }
}
