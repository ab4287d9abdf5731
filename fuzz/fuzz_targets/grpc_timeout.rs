//! A request's `grpc-timeout` header value, as a client sends it: any bytes. What the parser
//! accepts must write back in the wire format (`tern::fuzzing::grpc_timeout` checks it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::fuzzing;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::grpc_timeout(data);
});
