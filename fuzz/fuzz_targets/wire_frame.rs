//! Arbitrary bytes into the wire frame decoder, and every frame it yields decoded as a request
//! and as a response: a peer's bytes must never panic a server.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use strata_wire::frame::{FrameCodec, WireMessage};
use strata_wire::{Request, Response};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(1 << 20);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let _ = Request::decode(frame.msg_type, frame.payload.clone());
        let _ = Response::decode(frame.msg_type, frame.payload);
    }
    // The message parsers alone, on a payload with any type code.
    if data.len() >= 2 {
        let t = u16::from_be_bytes([data[0], data[1]]);
        let payload = bytes::Bytes::copy_from_slice(&data[2..]);
        let _ = Request::decode(t, payload.clone());
        let _ = Response::decode(t, payload);
    }
});
