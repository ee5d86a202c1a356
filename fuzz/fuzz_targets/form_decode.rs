//! Fuzzes the query/form decoder: arbitrary bytes never panic, and encoding
//! any byte string then decoding it gives it back.
#![no_main]

use corekv::http::form::{decode, decode_path, encode_into, parse_pairs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_pairs(data);
    let _ = decode_path(data);
    if let Ok(pairs) = parse_pairs(data) {
        for (name, _) in &pairs {
            assert!(!name.is_empty() || data.contains(&b'='));
        }
    }
    let mut enc = Vec::new();
    encode_into(data, &mut enc);
    assert_eq!(decode(&enc).expect("encoded bytes decode"), data);
    assert_eq!(decode_path(&enc).expect("encoded bytes decode"), data);
});
