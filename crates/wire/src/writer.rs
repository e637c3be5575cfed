//! The sending half of a connection: frames go to the socket without copying their block data.
//!
//! Each frame's header and fixed fields are encoded into a small buffer; its block data (the
//! message's [`WireMessage::tail`], a `Bytes` shared with the caller) is queued as it is. A
//! flush sends everything queued with vectored writes (`writev`), so a 1 MiB `Write` costs the
//! kernel's copy into the socket and nothing else. The bytes on the wire are exactly what
//! [`crate::FrameCodec`] encodes.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;
use crate::frame::{check_len, encode_head, WireMessage};

/// Tails shorter than this are copied next to their header: one more iovec costs more than
/// copying a few hundred bytes.
const COPY_BELOW: usize = 512;

/// Queued bytes at which a connection's writer sends without waiting for its queue to empty.
pub(crate) const FLUSH_AT: usize = 1 << 20;

/// Queued frames, as a [`Buf`] over the segments in sending order.
#[derive(Default)]
struct Segments {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Segments {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }
}

impl Buf for Segments {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of the queued frames");
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }
}

/// Encodes frames onto `io`; see the module documentation.
pub(crate) struct FrameWriter<W> {
    io: W,
    max_payload: u32,
    queued: Segments,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer refusing payloads over `max_payload` bytes.
    pub(crate) fn new(io: W, max_payload: u32) -> Self {
        Self {
            io,
            max_payload,
            queued: Segments::default(),
        }
    }

    /// The payload bound of this writer.
    pub(crate) fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Queues one frame; nothing is sent before [`FrameWriter::flush`].
    pub(crate) fn queue<M: WireMessage>(
        &mut self,
        request_id: u64,
        msg: &M,
    ) -> Result<(), FrameError> {
        let len = check_len(msg.payload_len(), self.max_payload)?;
        let tail = msg.tail().filter(|t| t.len() >= COPY_BELOW);
        let mut head = BytesMut::new();
        encode_head(&mut head, request_id, msg, len, tail);
        self.queued.push(head.freeze());
        if let Some(t) = tail {
            self.queued.push(t.clone());
        }
        Ok(())
    }

    /// Bytes queued and not yet sent.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued.remaining()
    }

    /// Sends everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), FrameError> {
        self.io.write_all_buf(&mut self.queued).await?;
        self.io.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameCodec, Request, Response};
    use strata_types::{LayerId, VolumeId};
    use tokio_util::codec::Encoder;

    fn messages() -> Vec<(u64, Request)> {
        let volume = VolumeId::new_random();
        let layer = LayerId::new_random();
        [0usize, 10, 511, 512, 4096, 1 << 20]
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let req = Request::Write {
                    volume,
                    layer,
                    offset: i as u64 * 4096,
                    data: Bytes::from((0..n).map(|b| (b % 251) as u8).collect::<Vec<u8>>()),
                    fua: i % 2 == 0,
                    missed: Vec::new(),
                    hold: None,
                    epoch: 0,
                    generation: 0,
                };
                (i as u64 + 1, req)
            })
            .chain([(99, Request::Ping)])
            .collect()
    }

    #[tokio::test]
    async fn writes_the_same_bytes_as_the_codec() {
        let requests = messages();
        let mut expected = BytesMut::new();
        let mut codec = FrameCodec::default();
        for (id, m) in requests.clone() {
            codec.encode((id, m), &mut expected).expect("encode");
        }
        let responses = [
            Response::Data(Bytes::from(vec![7u8; 8192])),
            Response::Data(Bytes::from_static(b"short")),
            Response::Pong { run: 5 },
        ];
        for (i, r) in responses.iter().enumerate() {
            codec
                .encode((i as u64, r.clone()), &mut expected)
                .expect("encode");
        }
        let mut out = Vec::new();
        let mut w = FrameWriter::new(&mut out, crate::DEFAULT_MAX_PAYLOAD);
        for (id, m) in &requests {
            w.queue(*id, m).expect("queue");
        }
        // Flushing halfway changes nothing on the wire.
        w.flush().await.expect("flush");
        assert_eq!(w.queued_bytes(), 0);
        for (i, r) in responses.iter().enumerate() {
            w.queue(i as u64, r).expect("queue");
        }
        w.flush().await.expect("flush");
        assert_eq!(out.len(), expected.len());
        let first_difference = out.iter().zip(expected.iter()).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "the bytes differ");
    }

    #[tokio::test]
    async fn an_oversized_payload_is_refused_before_anything_is_queued() {
        let mut out = Vec::new();
        let mut w = FrameWriter::new(&mut out, 1000);
        let big = Response::Data(Bytes::from(vec![0u8; 1001]));
        assert!(matches!(w.queue(1, &big), Err(FrameError::TooLarge { .. })));
        assert_eq!(w.queued_bytes(), 0);
    }

    #[test]
    fn segments_advance_across_parts() {
        let mut s = Segments::default();
        s.push(Bytes::from_static(b"abc"));
        s.push(Bytes::new());
        s.push(Bytes::from_static(b"defgh"));
        assert_eq!(s.remaining(), 8);
        s.advance(4);
        assert_eq!(s.chunk(), b"efgh");
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(s.chunks_vectored(&mut slices), 1);
        s.advance(4);
        assert_eq!(s.remaining(), 0);
        assert_eq!(s.chunk(), b"");
    }
}
