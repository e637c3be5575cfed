//! Fuzzes the handshake parsers: client flags and options. Whatever the bytes, they must not
//! panic, and a parsed option never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_nbd::{match_meta_query, parse_client_flags, parse_option, ClientOption};

fuzz_target!(|data: &[u8]| {
    let _ = parse_client_flags(data);
    let mut rest = data;
    while let Ok(Some((option, used))) = parse_option(rest) {
        assert!(used <= rest.len() && used >= 16);
        if let ClientOption::SetMetaContext(q) | ClientOption::ListMetaContext(q) = &option {
            for query in &q.queries {
                let _ = match_meta_query(query, true);
            }
        }
        rest = &rest[used..];
    }
});
