//! The access-log format compiler (`access_log.format`): any text compiles or is refused with a
//! message, and the header slots it hands out exist.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_config::log_format::{compile, Field, Format, Part};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mut req, mut resp) = (Vec::new(), Vec::new());
    match compile(text, &mut req, &mut resp) {
        Ok(Format::Text(parts)) => {
            for p in parts {
                match p {
                    Part::Field(Field::ReqHeader(i)) => assert!(i < req.len()),
                    Part::Field(Field::RespHeader(i)) => assert!(i < resp.len()),
                    _ => {}
                }
            }
        }
        Ok(Format::Json) => {}
        Err(e) => assert!(!e.is_empty()),
    }
});
