//! A chunked body through the HTTP/1 engine's decoder (`src/http1/decode.rs`), whole and split at
//! an arbitrary point (where a connection's reads end): the first two bytes choose the split,
//! the rest is the body. Invariants: nothing panics; the split changes nothing (data, trailers,
//! end or error); a body that decodes whole, encoded again, decodes to the same data and trailers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tern::fuzzing::http1_chunked(data);
});
