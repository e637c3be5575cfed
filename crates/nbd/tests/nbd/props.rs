//! Property tests: the parsers never panic and never claim more bytes than they were given, and
//! random bytes on a connection end only that connection. CI runs these without nightly; the
//! cargo-fuzz targets in `fuzz/` call the same parsers.

use bytes::BytesMut;
use proptest::prelude::*;
use strata_nbd::{
    consts, decode_request, parse_client_flags, parse_option, parse_request, validate, Command,
    Session,
};

use crate::memdev::{MemDevice, MemExports};

fn request_bytes(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = consts::REQUEST_MAGIC.to_be_bytes().to_vec();
    for part in [
        &flags.to_be_bytes()[..],
        &cmd.to_be_bytes(),
        &cookie.to_be_bytes(),
        &offset.to_be_bytes(),
        &len.to_be_bytes(),
    ] {
        v.extend_from_slice(part);
    }
    v
}

proptest! {
    #[test]
    fn request_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(Some((req, used))) = parse_request(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(used, 28 + req.payload_len());
        }
    }

    #[test]
    fn request_header_round_trips(flags: u16, cmd in 0u16..10, cookie: u64, offset: u64, len in 0u32..4096) {
        let mut bytes = request_bytes(flags, cmd, cookie, offset, len);
        let payload = if cmd == consts::CMD_WRITE { len as usize } else { 0 };
        bytes.resize(28 + payload, 0xaa);
        let (req, used) = parse_request(&bytes).expect("valid").expect("complete");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!((req.flags, req.command, req.cookie, req.offset, req.len),
            (flags, Command::from_code(cmd), cookie, offset, len));
        prop_assert_eq!(parse_request(&bytes[..used - 1]), Ok(None));
    }

    #[test]
    fn validate_only_passes_in_range(flags: u16, cmd in 0u16..10, offset: u64, len: u32, size in 0u64..(1 << 40), ro: bool, structured: bool) {
        let bytes = request_bytes(flags, cmd, 1, offset, len.min(consts::MAX_PAYLOAD));
        let Ok(Some((req, _))) = parse_request(&bytes) else { return Ok(()) };
        let session = Session { size, read_only: ro, structured, meta_context: structured.then_some(1), min_block: 1 };
        if validate(&req, &session).is_ok() && !matches!(req.command, Command::Disc | Command::Flush) {
            prop_assert!(req.offset.checked_add(u64::from(req.len)).is_some_and(|end| end <= size));
        }
    }

    #[test]
    fn decode_stream_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut buf = BytesMut::new();
        for chunk in chunks {
            buf.extend_from_slice(&chunk);
            while let Ok(Some((req, payload))) = decode_request(&mut buf) {
                prop_assert_eq!(payload.len(), req.payload_len());
            }
        }
    }

    #[test]
    fn option_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), code in 0u32..12, fix_header: bool) {
        let mut bytes = bytes;
        if fix_header && bytes.len() >= 16 {
            // Steer half the cases past the magic check into the per-option parsers.
            bytes[..8].copy_from_slice(&consts::IHAVEOPT.to_be_bytes());
            bytes[8..12].copy_from_slice(&code.to_be_bytes());
            let len = (bytes.len() - 16) as u32;
            bytes[12..16].copy_from_slice(&len.to_be_bytes());
        }
        if let Ok(Some((_, used))) = parse_option(&bytes) {
            prop_assert!(used <= bytes.len());
        }
        let _ = parse_client_flags(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random bytes after a valid handshake prefix end the connection cleanly, never a panic or
    /// a hang.
    #[test]
    fn random_connection_bytes_end_cleanly(junk in proptest::collection::vec(any::<u8>(), 0..400), go: bool) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let exports = MemExports::with(&[("", MemDevice::new(65536, false))]);
            let (client, server) = tokio::io::duplex(1 << 16);
            let token = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(strata_nbd::serve_connection(server, exports, token));
            let (mut rd, mut wr) = tokio::io::split(client);
            let drain = tokio::spawn(async move {
                let mut sink = vec![0u8; 1 << 16];
                while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            let mut prefix = 3u32.to_be_bytes().to_vec();
            if go {
                prefix.extend_from_slice(&consts::IHAVEOPT.to_be_bytes());
                prefix.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
            }
            let _ = wr.write_all(&prefix).await;
            let _ = wr.write_all(&junk).await;
            let _ = wr.shutdown().await;
            let ended = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
            let _ = ended.expect("connection ended").expect("no panic");
            drain.await.expect("drain");
        });
    }
}
