//! Table-driven tests of the handshake parsers with literal byte strings.

use super::*;

fn opt(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = consts::IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn info_data(name: &str, items: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for i in items {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

#[test]
fn client_flags_table() {
    type Expected = Result<Option<(ClientFlags, usize)>, ProtocolError>;
    let yes = |no_zeroes| Ok(Some((ClientFlags { no_zeroes }, 4)));
    let table: [(&[u8], Expected); 7] = [
        (b"", Ok(None)),
        (b"\0\0\0", Ok(None)),
        (b"\0\0\0\x01", yes(false)),
        (b"\0\0\0\x03", yes(true)),
        (b"\0\0\0\x03extra", yes(true)),
        (b"\0\0\0\x00", Err(ProtocolError::BadClientFlags(0))),
        (b"\0\0\0\x05", Err(ProtocolError::BadClientFlags(5))),
    ];
    for (input, expected) in table {
        assert_eq!(parse_client_flags(input), expected, "input {input:?}");
    }
}

#[test]
fn option_table() {
    let info = |name: &str, info: &[u16]| InfoRequest {
        name: name.into(),
        info: info.to_vec(),
    };
    let meta = |export: &str, q: &[&str]| MetaQuery {
        export: export.into(),
        queries: q.iter().map(|s| s.to_string()).collect(),
    };
    let invalid = |option, reason| ClientOption::Invalid { option, reason };
    let table: Vec<(Vec<u8>, ClientOption)> = vec![
        (opt(1, b"vol"), ClientOption::ExportName("vol".into())),
        (opt(1, b""), ClientOption::ExportName(String::new())),
        (
            opt(1, b"a\0b"),
            invalid(1, "export name is not a valid string"),
        ),
        (
            opt(1, b"\xff"),
            invalid(1, "export name is not a valid string"),
        ),
        (opt(2, b""), ClientOption::Abort),
        (opt(2, b"ignored"), ClientOption::Abort),
        (opt(3, b""), ClientOption::List),
        (opt(3, b"x"), invalid(3, "option takes no data")),
        (opt(8, b""), ClientOption::StructuredReply),
        (opt(8, b"x"), invalid(8, "option takes no data")),
        (
            opt(6, &info_data("vol", &[3, 1])),
            ClientOption::Info(info("vol", &[3, 1])),
        ),
        (opt(7, &info_data("", &[])), ClientOption::Go(info("", &[]))),
        (opt(7, b"\0\0\0"), invalid(7, "truncated name length")),
        (
            opt(7, b"\0\0\0\x09vol\0\0"),
            invalid(7, "name longer than option"),
        ),
        (opt(7, b"\0\0\0\x03vol"), invalid(7, "truncated info count")),
        (
            opt(7, b"\0\0\0\x03vol\0\x02\0\x03"),
            invalid(7, "info count does not match option length"),
        ),
        (
            opt(7, b"\0\0\0\x03vol\0\x00\0"),
            invalid(7, "info count does not match option length"),
        ),
        (
            opt(9, &meta_data("vol", &[])),
            ClientOption::ListMetaContext(meta("vol", &[])),
        ),
        (
            opt(10, &meta_data("vol", &["base:allocation", "qemu:x"])),
            ClientOption::SetMetaContext(meta("vol", &["base:allocation", "qemu:x"])),
        ),
        (
            opt(10, b"\0\0\0\0\0\0\0\x01\0\0\0\x09base:"),
            invalid(10, "query longer than option"),
        ),
        (
            opt(10, b"\0\0\0\0\0\0\0\x02\0\0\0\x01b"),
            invalid(10, "truncated query length"),
        ),
        (
            opt(10, b"\0\0\0\0\0\0\0\x00x"),
            invalid(10, "trailing bytes after queries"),
        ),
        (
            opt(10, b"\0\0\0\0\xff\xff\xff\xff"),
            invalid(10, "truncated query length"),
        ),
        (opt(5, b""), ClientOption::Unsupported(5)),
        (opt(0xdead, b"whatever"), ClientOption::Unsupported(0xdead)),
    ];
    for (input, expected) in table {
        let got = parse_option(&input);
        assert_eq!(
            got,
            Ok(Some((expected.clone(), input.len()))),
            "input {input:?}"
        );
        assert_eq!(
            expected.code(),
            u32::from_be_bytes([input[8], input[9], input[10], input[11]])
        );
    }
}

#[test]
fn option_incomplete_until_whole() {
    let whole = opt(7, &info_data("volume", &[0, 3]));
    for cut in 0..whole.len() {
        assert_eq!(parse_option(&whole[..cut]), Ok(None), "cut at {cut}");
    }
    let mut two = whole.clone();
    two.extend_from_slice(&opt(2, b""));
    let (first, used) = parse_option(&two).expect("parses").expect("complete");
    assert!(matches!(first, ClientOption::Go(_)));
    assert_eq!(used, whole.len());
    assert_eq!(
        parse_option(&two[used..]),
        Ok(Some((ClientOption::Abort, 16)))
    );
}

#[test]
fn option_framing_errors() {
    let mut bad = opt(1, b"x");
    bad[0] = b'J';
    assert!(matches!(
        parse_option(&bad),
        Err(ProtocolError::BadMagic { .. })
    ));
    // An oversized option is refused from its header alone, before any data arrives.
    let mut huge = consts::IHAVEOPT.to_be_bytes().to_vec();
    huge.extend_from_slice(&7u32.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        parse_option(&huge),
        Err(ProtocolError::OptionTooLarge {
            option: 7,
            len: u32::MAX
        })
    );
}

#[test]
fn long_names_are_invalid() {
    let name = "n".repeat(consts::MAX_STRING_LEN + 1);
    let input = opt(7, &info_data(&name, &[]));
    let (parsed, _) = parse_option(&input).expect("parses").expect("complete");
    assert_eq!(
        parsed,
        ClientOption::Invalid {
            option: 7,
            reason: "export name is not a valid string"
        }
    );
}
