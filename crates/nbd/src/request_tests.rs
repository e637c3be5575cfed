//! Table-driven tests of the request parser and of request validation.

use super::*;

fn req_bytes(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = consts::REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&cmd.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn req(flags: u16, command: Command, offset: u64, len: u32) -> Request {
    Request {
        flags,
        command,
        cookie: 7,
        offset,
        len,
    }
}

#[test]
fn parse_table() {
    let mut write = req_bytes(1, 1, 7, 512, 4);
    write.extend_from_slice(b"abcd");
    type Case = (Vec<u8>, Option<(Request, usize)>);
    let table: Vec<Case> = vec![
        (vec![], None),
        (req_bytes(0, 0, 7, 0, 4096)[..27].to_vec(), None),
        (
            req_bytes(0, 0, 7, 0, 4096),
            Some((req(0, Command::Read, 0, 4096), 28)),
        ),
        (
            req_bytes(0, 2, 7, 0, 0),
            Some((req(0, Command::Disc, 0, 0), 28)),
        ),
        (
            req_bytes(0, 3, 7, 0, 0),
            Some((req(0, Command::Flush, 0, 0), 28)),
        ),
        (
            req_bytes(0, 4, 7, 9, 1),
            Some((req(0, Command::Trim, 9, 1), 28)),
        ),
        (
            req_bytes(2, 6, 7, 0, 8),
            Some((req(2, Command::WriteZeroes, 0, 8), 28)),
        ),
        (
            req_bytes(8, 7, 7, 0, 8),
            Some((req(8, Command::BlockStatus, 0, 8), 28)),
        ),
        (
            req_bytes(0, 99, 7, 0, 8),
            Some((req(0, Command::Unknown(99), 0, 8), 28)),
        ),
        // A write is complete only with its payload.
        (write[..28].to_vec(), None),
        (write[..31].to_vec(), None),
        (write.clone(), Some((req(1, Command::Write, 512, 4), 32))),
        // Trailing bytes belong to the next request.
        (
            [write.clone(), vec![0x25]].concat(),
            Some((req(1, Command::Write, 512, 4), 32)),
        ),
        // A huge read has no payload on the wire: it parses, and validation refuses it.
        (
            req_bytes(0, 0, 7, 0, u32::MAX),
            Some((req(0, Command::Read, 0, u32::MAX), 28)),
        ),
    ];
    for (input, expected) in table {
        assert_eq!(parse_request(&input), Ok(expected), "input {input:?}");
    }
}

#[test]
fn parse_errors() {
    let mut bad = req_bytes(0, 0, 1, 0, 512);
    bad[3] ^= 1;
    assert!(matches!(
        parse_request(&bad),
        Err(ProtocolError::BadMagic { .. })
    ));
    let absurd = consts::MAX_DISCARDED_WRITE + 1;
    assert_eq!(
        parse_request(&req_bytes(0, 1, 1, 0, absurd)),
        Err(ProtocolError::PayloadTooLarge(absurd))
    );
    let max = req_bytes(0, 1, 1, 0, consts::MAX_PAYLOAD);
    assert_eq!(parse_request(&max), Ok(None));
}

#[test]
fn an_oversized_write_is_parsed_without_its_payload() {
    for len in [consts::MAX_PAYLOAD + 1, consts::MAX_DISCARDED_WRITE] {
        let wire = req_bytes(0, 1, 9, 0, len);
        let Ok(Some((req, used))) = parse_request(&wire) else {
            panic!("header alone is a whole request for {len}");
        };
        assert_eq!((req.len, used), (len, REQUEST_HEADER_LEN));
        assert_eq!((req.payload_len(), req.discard_len()), (0, len as usize));
        let mut buf = BytesMut::from(&wire[..]);
        let (req, payload) = decode_request(&mut buf).expect("ok").expect("some");
        assert!(payload.is_empty() && buf.is_empty());
        assert!(buf.capacity() < 1 << 20, "no room reserved for the payload");
        assert_eq!(req.cookie, 9);
    }
    let fits = req(0, Command::Write, 0, consts::MAX_PAYLOAD);
    assert_eq!(
        (fits.payload_len(), fits.discard_len()),
        (consts::MAX_PAYLOAD as usize, 0)
    );
    assert_eq!(req(0, Command::Read, 0, u32::MAX).discard_len(), 0);
}

#[test]
fn decode_splits_payload_without_losing_bytes() {
    let mut wire = req_bytes(0, 1, 1, 0, 3);
    wire.extend_from_slice(b"xyz");
    wire.extend_from_slice(&req_bytes(0, 3, 2, 0, 0));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&wire[..30]);
    assert_eq!(decode_request(&mut buf), Ok(None));
    assert!(
        buf.capacity() >= 31,
        "reserved room for the rest of the write"
    );
    buf.extend_from_slice(&wire[30..]);
    let (first, payload) = decode_request(&mut buf).expect("ok").expect("complete");
    assert_eq!((first.command, &payload[..]), (Command::Write, &b"xyz"[..]));
    let (second, payload) = decode_request(&mut buf).expect("ok").expect("complete");
    assert_eq!(
        (second.command, second.cookie, payload.len()),
        (Command::Flush, 2, 0)
    );
    assert!(buf.is_empty());
}

fn session() -> Session {
    Session {
        size: 1 << 20,
        read_only: false,
        structured: true,
        meta_context: Some(1),
        min_block: 1,
    }
}

#[test]
fn validate_table() {
    use consts::{EINVAL, ENOSPC, EOVERFLOW, EPERM};
    let s = session();
    let ro = Session {
        read_only: true,
        ..s
    };
    let simple = Session {
        structured: false,
        meta_context: None,
        ..s
    };
    let aligned = Session {
        min_block: 512,
        size: (1 << 20) + 100,
        ..s
    };
    let size = s.size;
    let table: Vec<(Request, Session, Result<(), u32>)> = vec![
        (req(0, Command::Read, 0, 4096), s, Ok(())),
        (req(0, Command::Read, size - 1, 1), s, Ok(())),
        (req(0, Command::Read, size, 0), s, Ok(())),
        (req(0, Command::Read, size, 1), s, Err(EINVAL)),
        (req(0, Command::Read, u64::MAX, 2), s, Err(EINVAL)),
        (
            req(0, Command::Read, 0, consts::MAX_PAYLOAD + 1),
            s,
            Err(EOVERFLOW),
        ),
        (
            req(0, Command::Read, 0, consts::MAX_PAYLOAD + 1),
            simple,
            Err(EINVAL),
        ),
        (
            req(0, Command::Write, 0, consts::MAX_PAYLOAD + 1),
            s,
            Err(EOVERFLOW),
        ),
        (
            req(0, Command::Write, 0, consts::MAX_PAYLOAD + 1),
            simple,
            Err(EINVAL),
        ),
        (req(consts::CMD_FLAG_DF, Command::Read, 0, 1), s, Ok(())),
        (
            req(consts::CMD_FLAG_DF, Command::Read, 0, 1),
            simple,
            Err(EINVAL),
        ),
        (req(1, Command::Write, 0, 4096), s, Ok(())),
        (req(1, Command::Write, size - 1, 2), s, Err(ENOSPC)),
        (req(0, Command::Write, 0, 1), ro, Err(EPERM)),
        (req(0, Command::Trim, 0, 1), ro, Err(EPERM)),
        (req(0, Command::Trim, size, 1), s, Err(EINVAL)),
        (req(0, Command::WriteZeroes, 0, 1), ro, Err(EPERM)),
        (req(2, Command::WriteZeroes, 0, 1), s, Ok(())),
        (req(2, Command::WriteZeroes, 0, u32::MAX), s, Err(ENOSPC)),
        (req(16, Command::WriteZeroes, 0, 1), s, Err(EINVAL)),
        (req(2, Command::Write, 0, 1), s, Err(EINVAL)),
        (req(0x100, Command::Read, 0, 1), s, Err(EINVAL)),
        (req(0, Command::Flush, 0, 0), ro, Ok(())),
        (req(1, Command::Flush, 0, 0), s, Ok(())),
        (req(0, Command::Read, 0, 1), ro, Ok(())),
        (req(8, Command::BlockStatus, 0, 4096), s, Ok(())),
        (req(0, Command::BlockStatus, 0, 4096), ro, Ok(())),
        (req(0, Command::BlockStatus, 0, 0), s, Err(EINVAL)),
        (req(0, Command::BlockStatus, size, 1), s, Err(EINVAL)),
        (req(0, Command::BlockStatus, 0, 1), simple, Err(EINVAL)),
        (req(0, Command::Unknown(42), 0, 0), s, Err(EINVAL)),
        (req(0xffff, Command::Disc, 5, 5), s, Ok(())),
        (req(0, Command::Read, 512, 1024), aligned, Ok(())),
        (req(0, Command::Read, 100, 512), aligned, Err(EINVAL)),
        (req(0, Command::Write, 0, 100), aligned, Err(EINVAL)),
        (req(0, Command::Read, 1 << 20, 100), aligned, Ok(())),
    ];
    for (r, sess, expected) in table {
        assert_eq!(validate(&r, &sess), expected, "{r:?} on {sess:?}");
    }
}
