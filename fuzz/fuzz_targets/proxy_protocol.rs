//! The PROXY protocol header as a listener reads it, on arbitrary first bytes of a connection:
//! the framing and parsing code is the proxy's own file (`src/proxy_protocol/parse.rs`).
//! Invariants: nothing panics; a frame never claims bytes past a v1 header's 107-byte limit or a
//! v2 header's announced length; a complete header parses to an address or an error, the same
//! one when the connection's own bytes follow it.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/proxy_protocol/parse.rs"]
#[allow(dead_code)]
mod parse;

use parse::{frame, parse, Frame, V1_MAX, V2_FIXED};

fuzz_target!(|data: &[u8]| {
    match frame(data) {
        Frame::Header(len) => {
            if data.starts_with(parse::V1_SIGNATURE) {
                assert!(len <= V1_MAX);
            } else {
                assert!(len >= V2_FIXED && len <= V2_FIXED + usize::from(u16::MAX));
            }
            if len <= data.len() {
                let alone = parse(&data[..len]);
                // What follows the header (the connection's own bytes) changes nothing.
                let mut more = data[..len].to_vec();
                more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
                assert_eq!(frame(&more), Frame::Header(len));
                assert_eq!(parse(&more[..len]), alone);
            } else {
                // Whatever a truncated header is, it is not a complete one.
                let _ = parse(data);
            }
        }
        Frame::NotProxy | Frame::NeedMore { .. } | Frame::TooLong => {
            let _ = parse(data);
        }
    }
});
