//! Trace context propagation: W3C `traceparent`/`tracestate`, B3 (multi and single header) and
//! AWS `X-Amzn-Trace-Id`, translated into each other.
//!
//! Each proxied request is a span: it gets a new span id whose parent is the incoming span, and
//! the upstream request carries that span in every configured format plus the format it came in
//! (so a request with `X-Amzn-Trace-Id` reaches a W3C-only service with the same trace, and back).

use http::{HeaderName, HeaderValue};

use crate::message::Fields;

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (passed through untouched).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `x-b3-traceid`.
pub const B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub const B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub const B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags` (`1` = debug, which implies sampled).
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// `b3` (single header).
pub const B3: HeaderName = HeaderName::from_static("b3");
/// `x-amzn-trace-id`.
pub const XRAY: HeaderName = HeaderName::from_static("x-amzn-trace-id");

/// A set of propagation formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats(u8);

impl Formats {
    /// W3C `traceparent` (+ `tracestate`).
    pub const W3C: Formats = Formats(1);
    /// B3 multi-header (`x-b3-*`).
    pub const B3: Formats = Formats(2);
    /// B3 single header (`b3`).
    pub const B3_SINGLE: Formats = Formats(4);
    /// AWS X-Ray (`x-amzn-trace-id`).
    pub const XRAY: Formats = Formats(8);
    /// No format.
    pub const NONE: Formats = Formats(0);

    /// Whether every format of `o` is in `self`.
    pub fn contains(self, o: Formats) -> bool {
        self.0 & o.0 == o.0 && o.0 != 0
    }
}

impl std::ops::BitOr for Formats {
    type Output = Formats;
    fn bitor(self, o: Formats) -> Formats {
        Formats(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Formats {
    fn bitor_assign(&mut self, o: Formats) {
        self.0 |= o.0;
    }
}

/// A listener's tracing settings, resolved at load time.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Formats every upstream request carries.
    pub formats: Formats,
    /// Share (0..=1) of new traces marked sampled.
    pub sampling: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            formats: Formats::W3C,
            sampling: 1.0,
        }
    }
}

/// A span's identity as carried in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// 128-bit trace id (64-bit B3 ids are zero-extended).
    pub trace_id: u128,
    /// The span id (0 when the carrier had none, as X-Ray without `Parent`).
    pub span_id: u64,
    /// Sampling decision, when the carrier made one.
    pub sampled: Option<bool>,
}

fn hex_u128(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

fn hex_u64(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses a W3C `traceparent` (version 00, or a later version read as 00 as the spec asks).
pub fn parse_traceparent(v: &str) -> Option<SpanContext> {
    let v = v.trim();
    if v.len() < 55 || !v.is_char_boundary(55) {
        return None;
    }
    let (head, rest) = v.split_at(55);
    let mut parts = head.split('-');
    let (ver, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if ver.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !lower_hex(ver) || !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
        return None;
    }
    // Version ff is invalid; 00 has exactly four fields; later versions may append `-...`.
    if ver == "ff"
        || (ver == "00" && !rest.is_empty())
        || (!rest.is_empty() && !rest.starts_with('-'))
    {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(span, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
    })
}

/// `00-<trace>-<span>-<flags>`.
pub fn format_traceparent(c: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        c.trace_id,
        c.span_id,
        u8::from(c.sampled.unwrap_or(false))
    )
}

fn b3_sampled(s: &str) -> Option<Option<bool>> {
    match s {
        "1" | "true" | "d" => Some(Some(true)),
        "0" | "false" => Some(Some(false)),
        _ => None,
    }
}

/// Parses B3 multi-header context (`x-b3-traceid` and `x-b3-spanid` required).
pub(crate) fn parse_b3_multi(h: &Fields) -> Option<SpanContext> {
    let trace = h.get(B3_TRACEID)?.to_str().ok()?.trim();
    let span = h.get(B3_SPANID)?.to_str().ok()?.trim();
    if trace.len() != 16 && trace.len() != 32 {
        return None;
    }
    let trace_id = hex_u128(trace)?;
    let span_id = hex_u64(span)?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    let debug = h.get(B3_FLAGS).is_some_and(|v| v == "1");
    let sampled = match h.get(B3_SAMPLED).and_then(|v| v.to_str().ok()) {
        _ if debug => Some(true),
        Some(s) => b3_sampled(s.trim())?,
        None => None,
    };
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
    })
}

/// Parses a B3 single header: `<trace>-<span>[-<sampled>[-<parent>]]`. A bare sampling
/// decision (`0`, `1`, `d`) carries no ids and yields `None`.
pub fn parse_b3_single(v: &str) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampled = match parts.next() {
        Some(s) => b3_sampled(s)?,
        None => None,
    };
    if let Some(parent) = parts.next() {
        hex_u64(parent)?;
    }
    if parts.next().is_some() || (trace.len() != 16 && trace.len() != 32) {
        return None;
    }
    let trace_id = hex_u128(trace)?;
    let span_id = hex_u64(span)?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
    })
}

/// A B3 trace id: 16 hex digits when it fits in 64 bits, else 32.
fn b3_trace(t: u128) -> String {
    if t >> 64 == 0 {
        format!("{t:016x}")
    } else {
        format!("{t:032x}")
    }
}

/// `<trace>-<span>-<sampled>[-<parent>]`.
pub fn format_b3_single(c: &SpanContext, parent: Option<u64>) -> String {
    let mut s = format!("{}-{:016x}", b3_trace(c.trace_id), c.span_id);
    if let Some(x) = c.sampled {
        s.push_str(if x { "-1" } else { "-0" });
        if let Some(p) = parent.filter(|p| *p != 0) {
            s.push_str(&format!("-{p:016x}"));
        }
    }
    s
}

/// Parses `X-Amzn-Trace-Id`: `Root=1-<8 hex time>-<24 hex>;Parent=<16 hex>;Sampled=<0|1|?>`,
/// fields in any order, unknown fields (`Self`, `Lineage`, ...) ignored.
pub fn parse_xray(v: &str) -> Option<SpanContext> {
    let mut trace_id = None;
    let mut span_id = 0;
    let mut sampled = None;
    for field in v.split(';') {
        let (k, val) = field.trim().split_once('=')?;
        match k.trim() {
            "Root" => {
                let mut p = val.trim().split('-');
                let (ver, time, rand) = (p.next()?, p.next()?, p.next()?);
                if ver != "1" || time.len() != 8 || rand.len() != 24 || p.next().is_some() {
                    return None;
                }
                trace_id = Some(hex_u128(&format!("{time}{rand}"))?);
            }
            "Parent" => span_id = hex_u64(val.trim())?,
            "Sampled" => {
                sampled = match val.trim() {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    let trace_id = trace_id.filter(|t| *t != 0)?;
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
    })
}

/// `Root=1-<first 8 hex>-<last 24 hex>;Parent=<span>;Sampled=<0|1>`. A W3C id translates
/// as is: X-Ray reads the first 8 hex digits as the start time, which is why new traces put the
/// current time there.
pub fn format_xray(c: &SpanContext) -> String {
    let t = format!("{:032x}", c.trace_id);
    let mut s = format!("Root=1-{}-{};Parent={:016x}", &t[..8], &t[8..], c.span_id);
    match c.sampled {
        Some(true) => s.push_str(";Sampled=1"),
        Some(false) => s.push_str(";Sampled=0"),
        None => {}
    }
    s
}

/// Finds the incoming context (W3C first, then B3 multi, B3 single, X-Ray) and every format the
/// request carried a valid context in.
pub fn extract(h: &Fields) -> (Option<SpanContext>, Formats) {
    let mut found = None;
    let mut present = Formats::NONE;
    let mut take = |c: Option<SpanContext>, f: Formats| {
        if let Some(c) = c {
            present |= f;
            found.get_or_insert(c);
        }
    };
    if let Some(v) = h.get(TRACEPARENT) {
        take(v.to_str().ok().and_then(parse_traceparent), Formats::W3C);
    }
    if h.contains_key(B3_TRACEID) {
        take(parse_b3_multi(h), Formats::B3);
    }
    if let Some(v) = h.get(B3) {
        take(
            v.to_str().ok().and_then(parse_b3_single),
            Formats::B3_SINGLE,
        );
    }
    if let Some(v) = h.get(XRAY) {
        take(v.to_str().ok().and_then(parse_xray), Formats::XRAY);
    }
    (found, present)
}

/// A new trace id: the first 32 bits are the Unix time in seconds (X-Ray requires it), the
/// other 96 random.
pub fn new_trace_id() -> u128 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32;
    let rand: u128 = rand::random::<u128>() & ((1u128 << 96) - 1);
    ((secs as u128) << 96) | rand | 1
}

/// A new non-zero span id.
pub fn new_span_id() -> u64 {
    rand::random::<u64>() | 1
}

fn hv(s: String) -> Option<HeaderValue> {
    HeaderValue::try_from(s).ok()
}

/// Makes the upstream request a child span of the incoming one (or the root of a new trace) and
/// writes it in the configured formats plus those it arrived in. Returns the new span and the
/// incoming span id (the new span's parent; `None` for a new trace), which span export needs.
pub fn propagate(h: &mut Fields, policy: &Policy) -> (SpanContext, Option<u64>) {
    let (incoming, present) = extract(h);
    let span = match incoming {
        Some(c) => SpanContext {
            trace_id: c.trace_id,
            span_id: new_span_id(),
            sampled: c.sampled,
        },
        None => SpanContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            sampled: Some(policy.sampling >= 1.0 || rand::random::<f64>() < policy.sampling),
        },
    };
    let parent = incoming.map(|c| c.span_id);
    let out = policy.formats | present;
    // Stale headers of a format the request arrived in are replaced below; malformed ones of a
    // format we write are replaced too, so the upstream never sees two disagreeing contexts.
    if out.contains(Formats::W3C) {
        if !present.contains(Formats::W3C) {
            // No valid traceparent came in: a tracestate belongs to no span we continue.
            h.remove(TRACESTATE);
        }
        if let Some(v) = hv(format_traceparent(&span)) {
            h.insert(TRACEPARENT, v);
        }
    }
    if out.contains(Formats::B3) {
        for n in [B3_TRACEID, B3_SPANID, B3_PARENTSPANID, B3_SAMPLED, B3_FLAGS] {
            h.remove(n);
        }
        if let Some(v) = hv(b3_trace(span.trace_id)) {
            h.insert(B3_TRACEID, v);
        }
        if let Some(v) = hv(format!("{:016x}", span.span_id)) {
            h.insert(B3_SPANID, v);
        }
        if let Some(p) = parent.filter(|p| *p != 0) {
            if let Some(v) = hv(format!("{p:016x}")) {
                h.insert(B3_PARENTSPANID, v);
            }
        }
        if let Some(s) = span.sampled {
            h.insert(
                B3_SAMPLED,
                HeaderValue::from_static(if s { "1" } else { "0" }),
            );
        }
    }
    if out.contains(Formats::B3_SINGLE) {
        if let Some(v) = hv(format_b3_single(&span, parent)) {
            h.insert(B3, v);
        }
    }
    if out.contains(Formats::XRAY) {
        if let Some(v) = hv(format_xray(&span)) {
            h.insert(XRAY, v);
        }
    }
    (span, parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_valid() {
        let c = parse_traceparent(TP).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(format_traceparent(&c), TP);
        let c =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(c.sampled, Some(false));
        // A future version may append fields.
        assert!(parse_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future"
        )
        .is_some());
    }

    #[test]
    fn traceparent_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_parsing() {
        let mut h = Fields::new();
        h.insert(B3_TRACEID, "463ac35c9f6413ad".parse().unwrap());
        h.insert(B3_SPANID, "a2fb4a1d1a96d312".parse().unwrap());
        h.insert(B3_SAMPLED, "1".parse().unwrap());
        let c = parse_b3_multi(&h).unwrap();
        assert_eq!(c.trace_id, 0x463ac35c9f6413ad);
        assert_eq!(c.span_id, 0xa2fb4a1d1a96d312);
        assert_eq!(c.sampled, Some(true));
        h.insert(B3_SAMPLED, "0".parse().unwrap());
        h.insert(B3_FLAGS, "1".parse().unwrap());
        assert_eq!(
            parse_b3_multi(&h).unwrap().sampled,
            Some(true),
            "debug implies sampled"
        );
        h.remove(B3_FLAGS);
        h.insert(B3_SAMPLED, "maybe".parse().unwrap());
        assert_eq!(parse_b3_multi(&h), None);
        h.remove(B3_SAMPLED);
        assert_eq!(parse_b3_multi(&h).unwrap().sampled, None);
        h.insert(B3_TRACEID, "463ac35c9f6413a".parse().unwrap());
        assert_eq!(parse_b3_multi(&h), None, "15 hex digits");
        h.insert(B3_TRACEID, "0000000000000000".parse().unwrap());
        assert_eq!(parse_b3_multi(&h), None, "zero trace id");
        h.insert(
            B3_TRACEID,
            "463ac35c9f6413ad463ac35c9f6413ad".parse().unwrap(),
        );
        h.insert(B3_SPANID, "a2fb4a1d".parse().unwrap());
        assert_eq!(parse_b3_multi(&h), None, "short span id");
    }

    #[test]
    fn b3_single_round_trip_and_edge_cases() {
        let v = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        let c = parse_b3_single(v).unwrap();
        assert_eq!(c.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(c.span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(format_b3_single(&c, Some(0x05e3ac9a4f6e3b90)), v);
        let c = parse_b3_single("463ac35c9f6413ad-a2fb4a1d1a96d312").unwrap();
        assert_eq!(c.sampled, None);
        assert_eq!(
            format_b3_single(&c, None),
            "463ac35c9f6413ad-a2fb4a1d1a96d312"
        );
        assert_eq!(
            parse_b3_single("463ac35c9f6413ad-a2fb4a1d1a96d312-d")
                .unwrap()
                .sampled,
            Some(true)
        );
        for bad in [
            "0",
            "1",
            "d",
            "463ac35c9f6413ad-a2fb4a1d1a96d312-x",
            "463ac35c9f6413ad-a2fb4a1d1a96d312-1-zz",
            "463ac35c9f6413ad-a2fb4a1d1a96d312-1-05e3ac9a4f6e3b90-9",
            "463ac35c9f6413-a2fb4a1d1a96d312",
        ] {
            assert_eq!(parse_b3_single(bad), None, "{bad}");
        }
    }

    #[test]
    fn xray_parsing_and_translation() {
        let v = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let c = parse_xray(v).unwrap();
        assert_eq!(c.trace_id, 0x5759e988bd862e3fe1be46a994272793);
        assert_eq!(c.span_id, 0x53995c3f42cd8ad8);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(format_xray(&c), v);
        // W3C carries the same 128 bits.
        assert_eq!(
            format_traceparent(&c),
            "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01"
        );
        // Any order, extra fields, no Parent, undecided sampling.
        let c = parse_xray("Self=1-67891234-12456789abcdef012345678;Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=?").unwrap();
        assert_eq!(c.span_id, 0);
        assert_eq!(c.sampled, None);
        for bad in [
            "",
            "Root=2-5759e988-bd862e3fe1be46a994272793",
            "Root=1-5759e98-bd862e3fe1be46a994272793",
            "Root=1-5759e988-bd862e3fe1be46a99427279",
            "Parent=53995c3f42cd8ad8;Sampled=1",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=xyz",
            "Root=1-00000000-000000000000000000000000",
            "garbage",
        ] {
            assert_eq!(parse_xray(bad), None, "{bad}");
        }
    }

    #[test]
    fn extract_prefers_w3c_and_reports_every_format() {
        let mut h = Fields::new();
        h.insert(
            XRAY,
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
                .parse()
                .unwrap(),
        );
        h.insert(TRACEPARENT, TP.parse().unwrap());
        let (c, f) = extract(&h);
        assert_eq!(c.unwrap().trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert!(f.contains(Formats::W3C) && f.contains(Formats::XRAY));
        assert!(!f.contains(Formats::B3));
        h.insert(TRACEPARENT, "junk".parse().unwrap());
        let (c, f) = extract(&h);
        assert_eq!(c.unwrap().trace_id, 0x5759e988bd862e3fe1be46a994272793);
        assert!(!f.contains(Formats::W3C));
    }

    #[test]
    fn propagate_translates_xray_to_all_formats_as_a_child_span() {
        let mut h = Fields::new();
        h.insert(
            XRAY,
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
                .parse()
                .unwrap(),
        );
        let p = Policy {
            formats: Formats::W3C | Formats::B3 | Formats::B3_SINGLE,
            sampling: 1.0,
        };
        let s = propagate(&mut h, &p).0;
        assert_eq!(s.trace_id, 0x5759e988bd862e3fe1be46a994272793);
        assert_ne!(s.span_id, 0x53995c3f42cd8ad8);
        let tp = parse_traceparent(h.get(TRACEPARENT).unwrap().to_str().unwrap()).unwrap();
        assert_eq!(tp, s);
        let x = parse_xray(h.get(XRAY).unwrap().to_str().unwrap()).unwrap();
        assert_eq!(
            x, s,
            "the incoming format is kept, with the new span as Parent"
        );
        assert_eq!(h.get(B3_PARENTSPANID).unwrap(), "53995c3f42cd8ad8");
        assert_eq!(parse_b3_multi(&h).unwrap(), s);
        assert!(h
            .get(B3)
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-1-53995c3f42cd8ad8"));
    }

    #[test]
    fn propagate_starts_a_trace_with_an_xray_compatible_id() {
        let mut h = Fields::new();
        let p = Policy {
            formats: Formats::W3C | Formats::XRAY,
            sampling: 0.0,
        };
        let s = propagate(&mut h, &p).0;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(((s.trace_id >> 96) as i64 - now).abs() < 5);
        assert_eq!(s.sampled, Some(false));
        assert!(h
            .get(TRACEPARENT)
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-00"));
        assert_eq!(
            parse_xray(h.get(XRAY).unwrap().to_str().unwrap()).unwrap(),
            s
        );
        assert!(!h.contains_key(B3));
        // A tracestate without a valid traceparent is dropped; with one it passes through.
        let mut h = Fields::new();
        h.insert(TRACEPARENT, "garbage".parse().unwrap());
        h.insert(TRACESTATE, "a=1".parse().unwrap());
        propagate(&mut h, &Policy::default());
        assert!(!h.contains_key(TRACESTATE));
        h.insert(TRACESTATE, "a=1".parse().unwrap());
        propagate(&mut h, &Policy::default());
        assert_eq!(h.get(TRACESTATE).unwrap(), "a=1");
        // A 64-bit B3 trace id stays 64-bit in B3 and is zero-extended in W3C.
        let mut h = Fields::new();
        h.insert(B3, "463ac35c9f6413ad-a2fb4a1d1a96d312-1".parse().unwrap());
        let s = propagate(&mut h, &Policy::default()).0;
        assert!(h
            .get(B3)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("463ac35c9f6413ad-"));
        assert_eq!(
            &h.get(TRACEPARENT).unwrap().to_str().unwrap()[..35],
            "00-0000000000000000463ac35c9f6413ad"
        );
        assert_eq!(s.sampled, Some(true));
    }
}
