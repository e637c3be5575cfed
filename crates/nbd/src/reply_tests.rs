//! Byte-exact tests of reply encoding and block-status clipping.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn encodings() {
    let table: Vec<(Reply, &str)> = vec![
        (
            Reply::simple(0x0102, 0),
            "67446698 00000000 0000000000000102",
        ),
        (
            Reply::simple(1, consts::EIO),
            "67446698 00000005 0000000000000001",
        ),
        (
            Reply::simple_read(2, Bytes::from_static(b"\xaa\xbb")),
            "67446698 00000000 0000000000000002 aabb",
        ),
        (
            Reply::offset_data(3, 0x200, Bytes::from_static(b"\x01\x02\x03")),
            "668e33ef 0001 0001 0000000000000003 0000000b 0000000000000200 010203",
        ),
        (
            Reply::offset_hole(4, 0x1000, 0x800),
            "668e33ef 0001 0002 0000000000000004 0000000c 0000000000001000 00000800",
        ),
        (
            Reply::none(5),
            "668e33ef 0001 0000 0000000000000005 00000000",
        ),
        (
            Reply::error(6, consts::EINVAL, "no"),
            "668e33ef 0001 8001 0000000000000006 00000008 00000016 0002 6e6f",
        ),
        (
            Reply::block_status(7, 1, &[(0x1000, 3), (0x2000, 0)]),
            "668e33ef 0001 0005 0000000000000007 00000014 00000001 \
             00001000 00000003 00002000 00000000",
        ),
    ];
    for (reply, expected) in table {
        assert_eq!(reply.to_vec(), hex(expected), "{reply:?}");
        assert_eq!(reply.wire_len(), reply.to_vec().len());
    }
}

#[test]
fn long_error_messages_are_cut_at_a_char_boundary() {
    let message = "é".repeat(3000); // 6000 bytes
    let reply = Reply::error(1, consts::EIO, &message);
    let len = u16::from_be_bytes([reply.head()[24], reply.head()[25]]) as usize;
    assert!(len <= consts::MAX_STRING_LEN);
    assert_eq!(reply.body().len(), len);
    assert!(std::str::from_utf8(reply.body()).is_ok());
}

#[test]
fn descriptors_table() {
    let e = |len, hole, zero| Extent { len, hole, zero };
    let data = |len| e(len, false, false);
    let hole = |len| e(len, true, true);
    type Case = (Vec<Extent>, u32, bool, Vec<(u32, u32)>);
    let table: Vec<Case> = vec![
        (vec![data(4096)], 4096, false, vec![(4096, 0)]),
        (vec![data(8192)], 4096, false, vec![(4096, 0)]),
        (
            vec![data(100), hole(100)],
            4096,
            false,
            vec![(100, 0), (100, 3)],
        ),
        (
            vec![data(100), data(100), hole(5000)],
            4096,
            false,
            vec![(200, 0), (3896, 3)],
        ),
        (vec![data(0), hole(10), data(0)], 20, false, vec![(10, 3)]),
        (vec![], 512, false, vec![(512, 0)]),
        (vec![data(0)], 512, true, vec![(512, 0)]),
        (vec![hole(100), data(100)], 4096, true, vec![(100, 3)]),
        (vec![hole(9000)], 4096, true, vec![(4096, 3)]),
        (
            vec![data(10), hole(10), data(10)],
            25,
            false,
            vec![(10, 0), (10, 3), (5, 0)],
        ),
    ];
    for (extents, len, one, expected) in table {
        assert_eq!(
            block_status_descriptors(&extents, len, one),
            expected,
            "{extents:?} {len}"
        );
    }
}
