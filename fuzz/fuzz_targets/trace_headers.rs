//! Trace context headers as a request brings them: W3C `traceparent`, B3 single and multi, AWS
//! X-Ray. Each parser takes any text; what it accepts must print back in the same format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::fuzzing;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = fuzzing::parse_traceparent(&text);
    let _ = fuzzing::parse_b3_single(&text);
    let _ = fuzzing::parse_xray(&text);
    // The same bytes as header values: B3's multi-header form and every format at once.
    let mut headers = http::HeaderMap::new();
    let names = [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-b3-parentspanid",
        "x-b3-flags",
        "x-amzn-trace-id",
    ];
    for (name, part) in names.iter().zip(data.split(|&b| b == b'\n')) {
        if let Ok(v) = http::HeaderValue::from_bytes(part) {
            headers.insert(*name, v);
        }
    }
    let _ = fuzzing::parse_b3_multi(&headers);
    fuzzing::extract_trace(&headers);
});
