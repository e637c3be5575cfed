//! The option-haggling loop: the I/O shell around [`crate::option`] and [`crate::handshake`].
//!
//! It sends the greeting, reads the client flags, then answers options one at a time until the
//! client picks an export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`), aborts, or hangs up. The only
//! state kept across options is what the doc says survives into transmission: whether structured
//! replies were negotiated, and for which export `base:allocation` was selected (a later
//! `NBD_OPT_GO` for another export leaves no context active). Every malformed or unknown option
//! gets an error reply and haggling continues; only framing violations, a failed
//! `NBD_OPT_EXPORT_NAME` (which cannot carry an error) and server shutdown end the connection.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::consts;
use crate::device::{BlockDevice, Client, ExportProvider};
use crate::error::{NbdError, ProtocolError};
use crate::handshake::{self as hs, MetaMatch};
use crate::option::{parse_client_flags, parse_option, ClientOption, InfoRequest, MetaQuery};
use crate::request::Session;

/// The outcome of a successful handshake.
pub(crate) struct Negotiated {
    /// The export's device.
    pub device: Arc<dyn BlockDevice>,
    /// What requests are checked against.
    pub session: Session,
}

/// Mutable handshake state.
struct State {
    structured: bool,
    no_zeroes: bool,
    /// The export for which `base:allocation` is selected.
    meta_export: Option<String>,
}

/// Runs the handshake. `Ok(None)` means the client aborted or left, or the server is shutting
/// down; bytes read past the end of the handshake stay in `buf` for the transmission phase.
pub(crate) async fn negotiate<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    exports: &dyn ExportProvider,
    client: Client,
    shutdown: &CancellationToken,
) -> Result<Option<Negotiated>, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&hs::greeting()).await?;
    wr.flush().await?;
    let Some(flags) = next(rd, buf, shutdown, parse_client_flags).await? else {
        return Ok(None);
    };
    let mut state = State {
        structured: false,
        no_zeroes: flags.no_zeroes,
        meta_export: None,
    };
    let mut out = BytesMut::with_capacity(4096);
    loop {
        let Some(option) = next(rd, buf, shutdown, parse_option).await? else {
            return Ok(None);
        };
        debug!(option = option.code(), "nbd option");
        out.clear();
        let done = handle(option, &mut state, exports, client, &mut out).await?;
        wr.write_all(&out).await?;
        wr.flush().await?;
        match done {
            Step::Continue => {}
            Step::Abort => return Ok(None),
            Step::Transmit(neg) => return Ok(Some(neg)),
        }
    }
}

enum Step {
    Continue,
    Abort,
    Transmit(Negotiated),
}

/// Reads until `parse` yields a value. `Ok(None)` on a clean end of stream between messages or
/// on shutdown; [`NbdError::Truncated`] if the stream ends inside a message.
async fn next<R, T>(
    rd: &mut R,
    buf: &mut BytesMut,
    shutdown: &CancellationToken,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, ProtocolError>,
) -> Result<Option<T>, NbdError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if let Some((value, used)) = parse(buf)? {
            buf.advance(used);
            return Ok(Some(value));
        }
        buf.reserve(8192);
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            n = rd.read_buf(buf) => n?,
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(NbdError::Truncated)
            };
        }
    }
}

async fn handle(
    option: ClientOption,
    state: &mut State,
    exports: &dyn ExportProvider,
    client: Client,
    out: &mut BytesMut,
) -> Result<Step, NbdError> {
    let code = option.code();
    match option {
        ClientOption::ExportName(name) => {
            let device =
                exports
                    .open(&name, client)
                    .await
                    .map_err(|e| NbdError::ExportUnavailable {
                        name: name.clone(),
                        reason: e.to_string(),
                    })?;
            let neg = negotiated(device, state, &name);
            let flags = hs::transmission_flags(neg.session.read_only, state.structured);
            hs::export_name_reply(out, neg.session.size, flags, state.no_zeroes);
            return Ok(Step::Transmit(neg));
        }
        ClientOption::Invalid {
            option: consts::OPT_EXPORT_NAME,
            ..
        } => {
            return Err(ProtocolError::BadExportName.into());
        }
        ClientOption::Abort => {
            hs::option_reply(out, code, consts::REP_ACK, &[]);
            return Ok(Step::Abort);
        }
        ClientOption::List => {
            for export in exports.list().await {
                hs::rep_server(out, &export.name, &export.description);
            }
            hs::option_reply(out, code, consts::REP_ACK, &[]);
        }
        ClientOption::Info(req) => {
            info(code, &req, state, exports, client, out).await;
        }
        ClientOption::Go(req) => {
            if let Some(neg) = info(code, &req, state, exports, client, out).await {
                return Ok(Step::Transmit(neg));
            }
        }
        ClientOption::StructuredReply => {
            state.structured = true;
            hs::option_reply(out, code, consts::REP_ACK, &[]);
        }
        ClientOption::ListMetaContext(query) => meta_context(code, &query, state, out, true),
        ClientOption::SetMetaContext(query) => meta_context(code, &query, state, out, false),
        ClientOption::Invalid { option, reason } => {
            hs::option_error(out, option, consts::REP_ERR_INVALID, reason);
        }
        ClientOption::Unsupported(option) => {
            hs::option_error(out, option, consts::REP_ERR_UNSUP, "option not supported");
        }
    }
    Ok(Step::Continue)
}

fn negotiated(device: Arc<dyn BlockDevice>, state: &State, name: &str) -> Negotiated {
    let min = device.min_block_size();
    let min_block = if min.is_power_of_two() && min <= 65536 {
        min
    } else {
        1
    };
    let meta = state.structured && state.meta_export.as_deref() == Some(name);
    let session = Session {
        size: device.size(),
        read_only: device.read_only(),
        structured: state.structured,
        meta_context: meta.then_some(consts::BASE_ALLOCATION_ID),
        min_block,
    };
    Negotiated { device, session }
}

/// Answers `NBD_OPT_INFO`/`NBD_OPT_GO`; returns the negotiated export on success.
async fn info(
    code: u32,
    req: &InfoRequest,
    state: &State,
    exports: &dyn ExportProvider,
    client: Client,
    out: &mut BytesMut,
) -> Option<Negotiated> {
    let device = match exports.open(&req.name, client).await {
        Ok(device) => device,
        Err(e) => {
            hs::option_error(out, code, e.reply_code(), &e.to_string());
            return None;
        }
    };
    let neg = negotiated(device, state, &req.name);
    let flags = hs::transmission_flags(neg.session.read_only, state.structured);
    hs::info_export(out, code, neg.session.size, flags);
    if req.info.contains(&consts::INFO_NAME) {
        hs::info_string(out, code, consts::INFO_NAME, &req.name);
    }
    if req.info.contains(&consts::INFO_DESCRIPTION) {
        let list = exports.list().await;
        if let Some(export) = list.iter().find(|e| e.name == req.name) {
            hs::info_string(out, code, consts::INFO_DESCRIPTION, &export.description);
        }
    }
    // Sent even when not asked: harmless to clients that ignore it, and the values are the
    // defaults the doc recommends unless the device needs a larger minimum.
    hs::info_block_size(out, code, neg.session.min_block);
    hs::option_reply(out, code, consts::REP_ACK, &[]);
    (code == consts::OPT_GO).then_some(neg)
}

/// Answers `NBD_OPT_LIST_META_CONTEXT` (`listing`) or `NBD_OPT_SET_META_CONTEXT`.
fn meta_context(code: u32, q: &MetaQuery, state: &mut State, out: &mut BytesMut, listing: bool) {
    if !listing {
        // Setting replaces the previous selection, even when it fails.
        state.meta_export = None;
    }
    if !state.structured {
        let msg = "structured replies must be negotiated first";
        hs::option_error(out, code, consts::REP_ERR_INVALID, msg);
        return;
    }
    let mut found = listing && q.queries.is_empty();
    for query in &q.queries {
        match hs::match_meta_query(query, listing) {
            MetaMatch::BaseAllocation => found = true,
            MetaMatch::Nothing => {}
            MetaMatch::Malformed => {
                hs::option_error(
                    out,
                    code,
                    consts::REP_ERR_INVALID,
                    "query lacks a namespace",
                );
                return;
            }
        }
    }
    if found {
        let id = if listing {
            0
        } else {
            consts::BASE_ALLOCATION_ID
        };
        hs::rep_meta_context(out, code, id, consts::BASE_ALLOCATION);
        if !listing {
            state.meta_export = Some(q.export.clone());
        }
    }
    hs::option_reply(out, code, consts::REP_ACK, &[]);
}
