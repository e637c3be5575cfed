//! Parsing what the client sends during the handshake: its flags and its options.
//!
//! The handshake, after the server's greeting, is a sequence of client messages:
//! ```text
//! C: u32 client flags                                (once)
//! C: u64 IHAVEOPT | u32 option | u32 length | data   (repeated)
//! ```
//! These parsers work on a byte slice and never do I/O. Each returns `Ok(None)` when the slice
//! holds only part of a message ("incomplete: read more"), `Ok(Some((value, consumed)))` when it
//! holds a whole one, and `Err(ProtocolError)` when the bytes cannot be an NBD handshake at all —
//! then the connection ends. A well-framed option whose data is wrong is *not* a protocol error:
//! it parses to [`ClientOption::Invalid`] and the server answers `NBD_REP_ERR_INVALID`; an option
//! this server does not know parses to [`ClientOption::Unsupported`] (`NBD_REP_ERR_UNSUP`).
//! Option data is capped at [`consts::MAX_OPTION_LEN`] so a client cannot make the server
//! buffer gigabytes before the first reply.

use crate::consts;
use crate::error::ProtocolError;

/// Flags the client sent after the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// The client asked for `NBD_FLAG_C_NO_ZEROES`.
    pub no_zeroes: bool,
}

/// Data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name ("" is the default export).
    pub name: String,
    /// The `NBD_INFO_*` items the client asked for.
    pub info: Vec<u16>,
}

/// Data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaQuery {
    /// The export the contexts are for.
    pub export: String,
    /// The queries, each `namespace:leaf`.
    pub queries: Vec<String>,
}

/// One option from the client, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`: open the export and enter transmission.
    ExportName(String),
    /// `NBD_OPT_ABORT`: end the session (any data is ignored).
    Abort,
    /// `NBD_OPT_LIST`: list the exports.
    List,
    /// `NBD_OPT_INFO`: describe an export.
    Info(InfoRequest),
    /// `NBD_OPT_GO`: describe an export and enter transmission.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`: use structured replies.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaQuery),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaQuery),
    /// A known option with malformed data: answer `NBD_REP_ERR_INVALID`.
    Invalid {
        /// The option code, echoed in the reply.
        option: u32,
        /// What was wrong, for the error message.
        reason: &'static str,
    },
    /// An option this server does not implement: answer `NBD_REP_ERR_UNSUP`.
    Unsupported(u32),
}

impl ClientOption {
    /// The option code to echo in replies.
    pub fn code(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => consts::OPT_EXPORT_NAME,
            ClientOption::Abort => consts::OPT_ABORT,
            ClientOption::List => consts::OPT_LIST,
            ClientOption::Info(_) => consts::OPT_INFO,
            ClientOption::Go(_) => consts::OPT_GO,
            ClientOption::StructuredReply => consts::OPT_STRUCTURED_REPLY,
            ClientOption::ListMetaContext(_) => consts::OPT_LIST_META_CONTEXT,
            ClientOption::SetMetaContext(_) => consts::OPT_SET_META_CONTEXT,
            ClientOption::Invalid { option, .. } => *option,
            ClientOption::Unsupported(option) => *option,
        }
    }
}

/// Parses the 4-byte client flags. Unknown bits, or a client without fixed newstyle, are refused.
pub fn parse_client_flags(buf: &[u8]) -> Result<Option<(ClientFlags, usize)>, ProtocolError> {
    let Some(raw) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let flags = u32::from_be_bytes(*raw);
    let known = consts::FLAG_C_FIXED_NEWSTYLE | consts::FLAG_C_NO_ZEROES;
    if flags & !known != 0 || flags & consts::FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(ProtocolError::BadClientFlags(flags));
    }
    let no_zeroes = flags & consts::FLAG_C_NO_ZEROES != 0;
    Ok(Some((ClientFlags { no_zeroes }, 4)))
}

/// Parses one option (header and data). See the module doc for the return convention.
pub fn parse_option(buf: &[u8]) -> Result<Option<(ClientOption, usize)>, ProtocolError> {
    let Some(head) = buf.first_chunk::<16>() else {
        return Ok(None);
    };
    let mut r = Cursor(head);
    let magic = r.u64().unwrap_or_default();
    let option = r.u32().unwrap_or_default();
    let len = r.u32().unwrap_or_default();
    if magic != consts::IHAVEOPT {
        let expected = consts::IHAVEOPT;
        return Err(ProtocolError::BadMagic {
            expected,
            got: magic,
        });
    }
    if len > consts::MAX_OPTION_LEN {
        return Err(ProtocolError::OptionTooLarge { option, len });
    }
    let total = 16 + len as usize;
    let Some(data) = buf.get(16..total) else {
        return Ok(None);
    };
    let invalid = |reason| ClientOption::Invalid { option, reason };
    let parsed = match option {
        consts::OPT_EXPORT_NAME => match string(data) {
            Some(name) => ClientOption::ExportName(name),
            None => invalid("export name is not a valid string"),
        },
        consts::OPT_ABORT => ClientOption::Abort,
        consts::OPT_LIST if data.is_empty() => ClientOption::List,
        consts::OPT_STRUCTURED_REPLY if data.is_empty() => ClientOption::StructuredReply,
        consts::OPT_LIST | consts::OPT_STRUCTURED_REPLY => invalid("option takes no data"),
        consts::OPT_INFO | consts::OPT_GO => match info_request(data) {
            Ok(req) if option == consts::OPT_GO => ClientOption::Go(req),
            Ok(req) => ClientOption::Info(req),
            Err(reason) => invalid(reason),
        },
        consts::OPT_LIST_META_CONTEXT | consts::OPT_SET_META_CONTEXT => match meta_query(data) {
            Ok(q) if option == consts::OPT_SET_META_CONTEXT => ClientOption::SetMetaContext(q),
            Ok(q) => ClientOption::ListMetaContext(q),
            Err(reason) => invalid(reason),
        },
        other => ClientOption::Unsupported(other),
    };
    Ok(Some((parsed, total)))
}

/// A protocol string: UTF-8, no NUL, at most [`consts::MAX_STRING_LEN`] bytes.
fn string(bytes: &[u8]) -> Option<String> {
    if bytes.len() > consts::MAX_STRING_LEN || bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

fn info_request(data: &[u8]) -> Result<InfoRequest, &'static str> {
    let mut r = Cursor(data);
    let name_len = r.u32().ok_or("truncated name length")?;
    let name = r.take(name_len as usize).ok_or("name longer than option")?;
    let name = string(name).ok_or("export name is not a valid string")?;
    let count = r.u16().ok_or("truncated info count")?;
    if r.0.len() != count as usize * 2 {
        return Err("info count does not match option length");
    }
    let info = (0..count).filter_map(|_| r.u16()).collect();
    Ok(InfoRequest { name, info })
}

fn meta_query(data: &[u8]) -> Result<MetaQuery, &'static str> {
    let mut r = Cursor(data);
    let name_len = r.u32().ok_or("truncated name length")?;
    let export = r.take(name_len as usize).ok_or("name longer than option")?;
    let export = string(export).ok_or("export name is not a valid string")?;
    let count = r.u32().ok_or("truncated query count")?;
    // Each query needs at least its 4-byte length, which bounds the allocation.
    let mut queries = Vec::with_capacity((count as usize).min(r.0.len() / 4));
    for _ in 0..count {
        let len = r.u32().ok_or("truncated query length")?;
        let query = r.take(len as usize).ok_or("query longer than option")?;
        queries.push(string(query).ok_or("query is not a valid string")?);
    }
    if !r.0.is_empty() {
        return Err("trailing bytes after queries");
    }
    Ok(MetaQuery { export, queries })
}

/// A big-endian reader over a slice that reports running out instead of panicking.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.first_chunk().map(|b| u16::from_be_bytes(*b))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.first_chunk().map(|b| u32::from_be_bytes(*b))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.first_chunk().map(|b| u64::from_be_bytes(*b))
    }
}

#[cfg(test)]
#[path = "option_tests.rs"]
mod tests;
