//! Fuzzes the transmission-request parser: whatever the bytes, `parse_request` must not panic,
//! must never claim more bytes than it was given, and `decode_request` over the same bytes fed
//! in two pieces must agree with it and hand out payloads of the announced length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_nbd::{decode_request, parse_request, validate, Session};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, used))) = parse_request(data) {
        assert!(used <= data.len());
        assert_eq!(used, strata_nbd::REQUEST_HEADER_LEN + req.payload_len());
        let session = Session {
            size: 1 << 30,
            read_only: data.len() % 2 == 0,
            structured: data.len() % 3 == 0,
            meta_context: Some(1),
            min_block: 1 << (data.len() % 13),
        };
        let _ = validate(&req, &session);
    }
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut buf = bytes::BytesMut::new();
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some((req, payload))) = decode_request(&mut buf) {
            assert_eq!(payload.len(), req.payload_len());
        }
    }
});
