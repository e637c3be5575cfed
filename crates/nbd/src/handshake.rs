//! Encoding what the server sends during the handshake, and the decisions that need no I/O.
//!
//! ```text
//! S: u64 NBDMAGIC | u64 IHAVEOPT | u16 handshake flags            (greeting)
//! S: u64 OPT_REPLY_MAGIC | u32 option | u32 reply type | u32 length | data   (option replies)
//! S: u64 size | u16 transmission flags | [124 zero bytes]        (after NBD_OPT_EXPORT_NAME)
//! ```
//! Option replies used here: `NBD_REP_ACK`; `NBD_REP_SERVER` (u32 name length, name,
//! description) for `NBD_OPT_LIST`; `NBD_REP_INFO` (u16 info type, payload) for `NBD_OPT_INFO`
//! and `NBD_OPT_GO`; `NBD_REP_META_CONTEXT` (u32 context id, name); and the `NBD_REP_ERR_*`
//! errors, whose data is a message for humans.
//!
//! The functions append to a `BytesMut`; the negotiation loop writes the buffer out once per
//! option. The transmission flags and the meta-context matching rules are decided here too.

use bytes::{BufMut, BytesMut};

use crate::consts;

/// The 18-byte greeting: `NBDMAGIC`, `IHAVEOPT`, and the handshake flags (fixed newstyle,
/// no zeroes).
pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&consts::NBD_MAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&consts::IHAVEOPT.to_be_bytes());
    let flags = consts::FLAG_FIXED_NEWSTYLE | consts::FLAG_NO_ZEROES;
    g[16..].copy_from_slice(&flags.to_be_bytes());
    g
}

/// Transmission flags for an export: everything this server supports, plus `READ_ONLY` when the
/// device is, and `SEND_DF` only when structured replies were negotiated (the doc requires it).
pub fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    let mut flags = consts::FLAG_HAS_FLAGS
        | consts::FLAG_SEND_FLUSH
        | consts::FLAG_SEND_FUA
        | consts::FLAG_SEND_TRIM
        | consts::FLAG_SEND_WRITE_ZEROES
        | consts::FLAG_CAN_MULTI_CONN;
    if read_only {
        flags |= consts::FLAG_READ_ONLY;
    }
    if structured {
        flags |= consts::FLAG_SEND_DF;
    }
    flags
}

/// Appends one option reply.
pub fn option_reply(out: &mut BytesMut, option: u32, kind: u32, data: &[u8]) {
    out.reserve(20 + data.len());
    out.put_u64(consts::OPT_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(kind);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

/// Appends an error reply with a message (cut to the protocol's string limit).
pub fn option_error(out: &mut BytesMut, option: u32, kind: u32, message: &str) {
    let mut end = message.len().min(consts::MAX_STRING_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    option_reply(out, option, kind, &message.as_bytes()[..end]);
}

/// Appends the reply to `NBD_OPT_EXPORT_NAME`: size, flags and, unless the client negotiated
/// `NBD_FLAG_C_NO_ZEROES`, 124 zero bytes.
pub fn export_name_reply(out: &mut BytesMut, size: u64, flags: u16, no_zeroes: bool) {
    out.put_u64(size);
    out.put_u16(flags);
    if !no_zeroes {
        out.put_bytes(0, 124);
    }
}

/// Appends an `NBD_REP_SERVER` entry for `NBD_OPT_LIST`.
pub fn rep_server(out: &mut BytesMut, name: &str, description: &str) {
    let mut data = Vec::with_capacity(4 + name.len() + description.len());
    data.put_u32(name.len() as u32);
    data.put_slice(name.as_bytes());
    data.put_slice(description.as_bytes());
    option_reply(out, consts::OPT_LIST, consts::REP_SERVER, &data);
}

/// Appends `NBD_REP_INFO` with `NBD_INFO_EXPORT`.
pub fn info_export(out: &mut BytesMut, option: u32, size: u64, flags: u16) {
    let mut data = [0u8; 12];
    data[..2].copy_from_slice(&consts::INFO_EXPORT.to_be_bytes());
    data[2..10].copy_from_slice(&size.to_be_bytes());
    data[10..].copy_from_slice(&flags.to_be_bytes());
    option_reply(out, option, consts::REP_INFO, &data);
}

/// Appends `NBD_REP_INFO` with `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` (`kind`).
pub fn info_string(out: &mut BytesMut, option: u32, kind: u16, text: &str) {
    let text = &text.as_bytes()[..text.len().min(consts::MAX_STRING_LEN)];
    let data = [&kind.to_be_bytes()[..], text].concat();
    option_reply(out, option, consts::REP_INFO, &data);
}

/// Appends `NBD_REP_INFO` with `NBD_INFO_BLOCK_SIZE`: the device's minimum block, the
/// preferred 4 KiB (or the minimum if larger), and the 32 MiB maximum payload.
pub fn info_block_size(out: &mut BytesMut, option: u32, min_block: u32) {
    let mut data = [0u8; 14];
    data[..2].copy_from_slice(&consts::INFO_BLOCK_SIZE.to_be_bytes());
    data[2..6].copy_from_slice(&min_block.to_be_bytes());
    data[6..10].copy_from_slice(&consts::PREFERRED_BLOCK.max(min_block).to_be_bytes());
    data[10..].copy_from_slice(&consts::MAX_PAYLOAD.to_be_bytes());
    option_reply(out, option, consts::REP_INFO, &data);
}

/// Appends `NBD_REP_META_CONTEXT`.
pub fn rep_meta_context(out: &mut BytesMut, option: u32, id: u32, name: &str) {
    let data = [&id.to_be_bytes()[..], name.as_bytes()].concat();
    option_reply(out, option, consts::REP_META_CONTEXT, &data);
}

/// How a meta-context query relates to the contexts this server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaMatch {
    /// The query names or covers `base:allocation`.
    BaseAllocation,
    /// A well-formed query for something this server does not have: ignored.
    Nothing,
    /// Not `namespace:leaf`: the option fails with `NBD_REP_ERR_INVALID`.
    Malformed,
}

/// Matches one query; `listing` is true for `NBD_OPT_LIST_META_CONTEXT`, where `base:` is a
/// wildcard (in `NBD_OPT_SET_META_CONTEXT` it selects nothing).
pub fn match_meta_query(query: &str, listing: bool) -> MetaMatch {
    match query.split_once(':') {
        Some(("", _)) | None => MetaMatch::Malformed,
        Some(("base", "allocation")) => MetaMatch::BaseAllocation,
        Some(("base", "")) if listing => MetaMatch::BaseAllocation,
        Some(_) => MetaMatch::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes() {
        assert_eq!(&greeting(), b"NBDMAGICIHAVEOPT\x00\x03");
    }

    #[test]
    fn flags() {
        assert_eq!(transmission_flags(false, false), 0x016d);
        assert_eq!(transmission_flags(true, true), 0x01ef);
    }

    #[test]
    fn replies() {
        let mut out = BytesMut::new();
        option_reply(&mut out, 8, consts::REP_ACK, &[]);
        assert_eq!(
            &out[..],
            b"\0\x03\xe8\x89\x04\x55\x65\xa9\0\0\0\x08\0\0\0\x01\0\0\0\0"
        );
        out.clear();
        export_name_reply(&mut out, 0x1000, 0x16d, true);
        assert_eq!(&out[..], b"\0\0\0\0\0\0\x10\0\x01\x6d");
        out.clear();
        export_name_reply(&mut out, 0, 0, false);
        assert_eq!(out.len(), 134);
        out.clear();
        rep_server(&mut out, "vol", "d");
        assert_eq!(&out[20..], b"\0\0\0\x03vold");
        out.clear();
        info_block_size(&mut out, 7, 1);
        assert_eq!(&out[20..], b"\0\x03\0\0\0\x01\0\0\x10\0\x02\0\0\0");
        out.clear();
        info_export(&mut out, 7, 512, 1);
        assert_eq!(&out[20..], b"\0\0\0\0\0\0\0\0\x02\0\0\x01");
        out.clear();
        rep_meta_context(&mut out, 10, 1, "base:allocation");
        assert_eq!(&out[12..20], b"\0\0\0\x04\0\0\0\x13");
        assert_eq!(&out[20..], b"\0\0\0\x01base:allocation");
    }

    #[test]
    fn meta_queries() {
        use MetaMatch::*;
        let table = [
            ("base:allocation", false, BaseAllocation),
            ("base:allocation", true, BaseAllocation),
            ("base:", true, BaseAllocation),
            ("base:", false, Nothing),
            ("base:other", true, Nothing),
            ("qemu:dirty-bitmap:x", false, Nothing),
            ("noColon", true, Malformed),
            (":leaf", false, Malformed),
        ];
        for (query, listing, expected) in table {
            assert_eq!(
                match_meta_query(query, listing),
                expected,
                "{query} {listing}"
            );
        }
    }
}
