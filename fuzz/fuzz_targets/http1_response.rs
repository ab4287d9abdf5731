//! An upstream's response (head and body bytes) through the HTTP/1 client's head parser and body
//! framing (`src/http1/response.rs`, `decode.rs`): the first byte says whether the request was
//! HEAD and where the body's bytes split, the rest is the response. Invariants: nothing panics;
//! a head is refused or parsed with one framing; the body decodes the same whatever the split;
//! a body read to the close never leaves its connection reusable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tern::fuzzing::http1_response(data);
});
