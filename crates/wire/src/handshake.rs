//! The handshake that opens every connection.
//!
//! Both sides send a 22-byte hello at once, without waiting for the other, then read the
//! peer's:
//!
//! ```text
//! offset size field
//!      0    4 magic      b"STRW"
//!      4    2 version    PROTOCOL_VERSION, big-endian
//!      6   16 server id  the sender's ServerId (UUID bytes)
//! ```
//!
//! Magic and version come first so that any future hello, whatever its length, can be told
//! apart and refused clearly: a peer whose version differs gets our hello (so it can report
//! the mismatch too) and then the connection is closed, with
//! [`WireError::VersionMismatch`] on both sides. Frames follow only after both hellos.

use std::time::Duration;

use strata_types::ServerId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::WireError;
use crate::frame::{MAGIC, PROTOCOL_VERSION};

/// Bytes in a hello.
pub const HELLO_LEN: usize = 22;

/// One side's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the sender speaks.
    pub version: u16,
    /// The sender's server id.
    pub server: ServerId,
}

impl Hello {
    /// This build's hello for `server`.
    pub fn ours(server: ServerId) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            server,
        }
    }

    /// The hello's bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_be_bytes());
        out[6..].copy_from_slice(&self.server.to_bytes());
        out
    }

    /// Parses a hello: `Ok(None)` while fewer than [`HELLO_LEN`] bytes are here, an error for a
    /// wrong magic (as soon as it is visible). The version is *not* checked here; see
    /// [`Hello::check_version`].
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, WireError> {
        let seen = buf.len().min(MAGIC.len());
        if buf[..seen] != MAGIC[..seen] {
            return Err(WireError::Handshake(format!(
                "peer sent {:02x?}, not the Strata wire magic",
                &buf[..seen]
            )));
        }
        let Some(bytes) = buf.get(..HELLO_LEN) else {
            return Ok(None);
        };
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[6..HELLO_LEN]);
        Ok(Some(Self {
            version,
            server: ServerId::from_bytes(id),
        }))
    }

    /// Refuses a peer that speaks another protocol version.
    pub fn check_version(&self) -> Result<(), WireError> {
        if self.version == PROTOCOL_VERSION {
            Ok(())
        } else {
            Err(WireError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: self.version,
            })
        }
    }
}

/// Sends `ours`, reads and checks the peer's hello within `timeout`; returns the peer's id.
pub(crate) async fn exchange<S>(
    stream: &mut S,
    ours: Hello,
    timeout: Duration,
) -> Result<ServerId, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let run = async {
        stream
            .write_all(&ours.encode())
            .await
            .map_err(|e| WireError::ConnectionLost(format!("sending handshake: {e}")))?;
        stream
            .flush()
            .await
            .map_err(|e| WireError::ConnectionLost(format!("sending handshake: {e}")))?;
        let mut buf = [0u8; HELLO_LEN];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| WireError::ConnectionLost(format!("reading handshake: {e}")))?;
        let theirs =
            Hello::parse(&buf)?.ok_or_else(|| WireError::Handshake("short hello".to_string()))?;
        theirs.check_version()?;
        Ok(theirs.server)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| WireError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_parses_incrementally() {
        let hello = Hello::ours(ServerId::new_random());
        let bytes = hello.encode();
        for n in 0..HELLO_LEN {
            assert!(matches!(Hello::parse(&bytes[..n]), Ok(None)), "prefix {n}");
        }
        assert_eq!(Hello::parse(&bytes).ok().flatten(), Some(hello));
        assert!(hello.check_version().is_ok());
    }

    #[test]
    fn bad_magic_is_refused_early_and_other_versions_are_refused() {
        assert!(matches!(Hello::parse(b"GE"), Err(WireError::Handshake(_))));
        assert!(matches!(
            Hello::parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Err(WireError::Handshake(_))
        ));
        let old = Hello {
            version: PROTOCOL_VERSION + 1,
            server: ServerId::new_random(),
        };
        let parsed = Hello::parse(&old.encode()).ok().flatten();
        assert_eq!(parsed, Some(old));
        assert!(matches!(
            old.check_version(),
            Err(WireError::VersionMismatch { theirs, .. }) if theirs == PROTOCOL_VERSION + 1
        ));
    }
}
