//! Request heads as Tern's HTTP/1 engine reads them (`src/http1/request.rs`), on arbitrary
//! bytes. Invariants: nothing panics; a head takes no more than the input; what follows a
//! complete head changes nothing about it; a head is never framed two ways (never both
//! `content-length` and `transfer-encoding`, a chunked body has no length field, a length field
//! is the length); a refused input stays refused when more bytes follow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::fuzzing::http1_request;

fuzz_target!(|data: &[u8]| {
    let mut more = data.to_vec();
    more.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
    match http1_request(data) {
        Ok(Some(h)) => {
            assert!(h.consumed <= data.len());
            assert!(!(h.has_length_field && h.has_te_field), "{h:?}");
            match h.content_length {
                None => assert!(h.has_te_field && !h.has_length_field),
                Some(_) => assert!(!h.has_te_field),
            }
            assert_eq!(http1_request(&data[..h.consumed]), Ok(Some(h)));
            let after = http1_request(&more)
                .expect("still complete")
                .expect("still a head");
            assert_eq!(
                after.consumed,
                http1_request(data).unwrap().unwrap().consumed
            );
        }
        Ok(None) => {}
        Err(status) => {
            assert!([400, 414, 431, 501].contains(&status), "{status}");
            assert!(http1_request(&more).is_err());
        }
    }
});
