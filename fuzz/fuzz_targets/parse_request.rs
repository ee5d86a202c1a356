//! Fuzzes the HTTP request parser: arbitrary bytes must never panic, a
//! complete request never claims more bytes than it was given, and every
//! prefix of a complete request is reported as partial or the same error.
#![no_main]

use corekv::http::parse::{Limits, Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_head: 512,
        max_headers: 16,
        max_body: 1024,
    };
    let mut rest = data;
    // Walk a pipelined stream the way the connection loop does.
    for _ in 0..64 {
        match parse(rest, &limits) {
            Ok(Parsed::Complete(req, used)) => {
                assert!(used > 0 && used <= rest.len());
                assert!(req.body().len() <= limits.max_body);
                // Any strict prefix of a complete request is not complete.
                if used > 1 {
                    if let Ok(Parsed::Complete(_, n)) = parse(&rest[..used - 1], &limits) {
                        assert!(n < used - 1 + 1);
                    }
                }
                rest = &rest[used..];
            }
            Ok(Parsed::Partial) => break,
            Err(e) => {
                let status = e.status();
                assert!((400..600).contains(&status));
                break;
            }
        }
    }
});
