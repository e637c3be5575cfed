//! The messages: what a server asks another server to do with its block store, and the answers.
//!
//! Each message is a fixed binary layout (big-endian) after the frame header; the message type
//! code in the header says which. Ids are their 16 UUID bytes. Block data is the *tail* of the
//! payload, raw: it is never length-prefixed or re-encoded, so decoding a `Write` or a `Data`
//! slices the received buffer without a copy.
//!
//! ```text
//! type   message  payload
//! 0x0001 Write    volume 16 | layer 16 | offset u64 | flags u8 (bit 0 = FUA) | hold u64 | epoch u64 | generation u64 | missed | data ..
//! 0x0002 Read     volume 16 | has_layer u8 | layer 16 (zero if none) | offset u64 | len u32
//! 0x0003 Flush    volume 16
//! 0x0004 Trim     volume 16 | layer 16 | offset u64 | len u64 | hold u64 | epoch u64 | generation u64 | missed
//! 0x0005 Ping     (empty)
//! 0x0006 GetChunk volume 16 | layer 16 | chunk u64
//! 0x0007 PutChunk volume 16 | layer 16 | chunk u64 | durable u8 | epoch u64 | maps | blocks ..
//! 0x0008 Digest   volume 16 | has_layer u8 | layer 16 (zero if none) | chunk u64
//! 0x0009 Allocation volume 16 | has_layer u8 | layer 16 (zero if none) | offset u64 | len u32
//! 0x000a Release  volume 16 | chunk u64 | token u64
//! 0x8001 Ok       (empty)
//! 0x8002 Data     data ..
//! 0x8003 Error    code u16 | UTF-8 message ..
//! 0x8004 Pong     run u64
//! 0x8005 Chunk    maps | blocks ..
//! 0x8006 Digest   digest 32 | generation u64
//! 0x8007 Allocation runs ..: each len u32 (> 0) | kind u8 (0 data, 1 zero, 2 hole)
//! 0x8008 Applied  generation u64
//! ```
//! `missed` is a count u8 (at most 3) and that many server ids. `maps` is two 1024-bit block
//! maps of one 4 MiB chunk, 16 little-endian u64 words each: `data` then `zero`, then the
//! chunk's write generation (u64); no block may be in both maps, and `blocks` holds exactly
//! 4096 bytes per `data` bit, in block order.
//!
//! Version 2 added `missed`, GetChunk, PutChunk, Digest, Chunk, Digest and `NotReady`.
//! Version 3 added `durable` to PutChunk, `run` to Pong, and Allocation.
//! Version 4 added `hold` to Write and Trim (0: none), and Release.
//! Version 5 added `epoch` to Write and Trim, and the error code `Rerouted`.
//! Version 6 added write generations: `generation` to Write, Trim, the chunk maps and the
//! Digest answer, and the `Applied` answer to Write and Trim.
//! Version 7 added `epoch` to PutChunk.
//!
//! A new field or message means a new protocol version (negotiated in the handshake), never a
//! silent reinterpretation of these bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use strata_types::{ExtentKind, LayerId, ServerId, VolumeId};

use crate::error::MessageError;
use crate::frame::{FrameKind, WireMessage};

/// A request from one server to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Write `data` at byte `offset` of `layer` (which must be the volume's unfrozen head: a
    /// frozen layer answers [`ErrorCode::Fenced`]). With `fua`, answer only once it is durable.
    Write {
        /// The volume.
        volume: VolumeId,
        /// The layer the gateway believes is the head.
        layer: LayerId,
        /// Byte offset in the volume.
        offset: u64,
        /// The bytes to write.
        data: Bytes,
        /// Force unit access: durable before the answer.
        fua: bool,
        /// Replicas that did not get this write: the receiver records the chunk as missed by
        /// them. A write with no data only records these marks (in `layer`, any live layer).
        missed: Vec<ServerId>,
        /// For the chunk's primary replica: a token (never 0) under which the receiver holds
        /// the written blocks against overlapping writes of others until a `Release` of it
        /// (or until this connection closes), so every replica applies them in one order.
        hold: Option<u64>,
        /// The volume's routing epoch the gateway chose the replicas by: a receiver that has
        /// seen a later one refuses the write (`NotReady`), and the gateway routes it again.
        /// Ignored for a write with no data.
        epoch: u64,
        /// The write generation of this change of the chunk, from the replica that applied it
        /// first ([`Response::Applied`]); 0 asks the receiver, the first, to give it one.
        generation: u64,
    },
    /// Read `len` bytes at `offset`, as seen from `layer` (the head when `None`); answered with
    /// [`Response::Data`].
    Read {
        /// The volume.
        volume: VolumeId,
        /// The layer to read as of; `None` reads the current head.
        layer: Option<LayerId>,
        /// Byte offset in the volume.
        offset: u64,
        /// Bytes to read.
        len: u32,
    },
    /// Make every acknowledged write to the volume durable.
    Flush {
        /// The volume.
        volume: VolumeId,
    },
    /// Discard (zero) `len` bytes at `offset` in `layer`.
    Trim {
        /// The volume.
        volume: VolumeId,
        /// The layer the gateway believes is the head.
        layer: LayerId,
        /// Byte offset in the volume.
        offset: u64,
        /// Bytes to discard.
        len: u64,
        /// Replicas that did not get this change (see `Write`).
        missed: Vec<ServerId>,
        /// Hold the zeroed blocks under this token (see `Write`).
        hold: Option<u64>,
        /// The routing epoch (see `Write`).
        epoch: u64,
        /// The write generation (see `Write`).
        generation: u64,
    },
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// The content of one chunk of one layer; answered with [`Response::Chunk`].
    GetChunk {
        /// The volume.
        volume: VolumeId,
        /// The layer (any live layer, frozen or head).
        layer: LayerId,
        /// The chunk index.
        chunk: u64,
    },
    /// Replace one chunk of one layer with the given content (repair or a resync copy).
    PutChunk {
        /// The volume.
        volume: VolumeId,
        /// The layer (any live layer, frozen or head).
        layer: LayerId,
        /// The chunk index.
        chunk: u64,
        /// Durable on the answer (synced); otherwise it is made durable by the next `Flush`.
        durable: bool,
        /// The volume's routing epoch at the copying server: the receiver admits the copy as a
        /// change of that epoch, so a write of an earlier one still on its way lands before
        /// the copy or not at all.
        epoch: u64,
        /// The chunk's block maps.
        maps: Box<ChunkMaps>,
        /// The data blocks' bytes, in block order.
        blocks: Bytes,
    },
    /// A digest of one chunk as read at `layer` (the head when `None`); answered with
    /// [`Response::Digest`].
    Digest {
        /// The volume.
        volume: VolumeId,
        /// The layer to read as of.
        layer: Option<LayerId>,
        /// The chunk index.
        chunk: u64,
    },
    /// What `len` bytes at `offset` hold as seen from `layer` (the head when `None`): block
    /// status for a gateway that does not hold the chunk; answered with
    /// [`Response::Allocation`].
    Allocation {
        /// The volume.
        volume: VolumeId,
        /// The layer to look as of; `None` looks at the current head.
        layer: Option<LayerId>,
        /// Byte offset in the volume.
        offset: u64,
        /// Bytes to describe.
        len: u32,
    },
    /// Ends the holds taken under `token` on `chunk` (see `Write`); answered with
    /// [`Response::Ok`] whether or not any were held.
    Release {
        /// The volume.
        volume: VolumeId,
        /// The chunk index.
        chunk: u64,
        /// The token the writes named.
        token: u64,
    },
}

/// One run of a [`Response::Allocation`]: `len` bytes of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Bytes in the run (never zero).
    pub len: u32,
    /// What they hold.
    pub kind: ExtentKind,
}

/// Bytes of one encoded [`Run`].
const RUN: usize = 5;

/// 64-bit words in one chunk's block map.
pub const MAP_WORDS: usize = 16;

/// The two block maps of one chunk of one layer (boxed in messages: they are 256 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkMaps {
    /// Blocks holding data: bit i (word i/64, bit i%64) is block i of the chunk.
    pub data: [u64; MAP_WORDS],
    /// Blocks recorded as zeroed.
    pub zero: [u64; MAP_WORDS],
    /// The chunk's write generation in the layer: that of the last change applied to it.
    pub generation: u64,
}
/// Bytes of one block.
const BLOCK: usize = 4096;
/// The most replicas a `missed` list may name.
const MAX_MISSED: usize = 3;

/// Why a request failed at the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The layer is frozen (a snapshot) or not the head: the writer is fenced.
    Fenced = 1,
    /// The range lies outside the volume.
    OutOfRange = 2,
    /// The peer's store is full.
    NoSpace = 3,
    /// The peer holds no such volume (or layer).
    UnknownVolume = 4,
    /// The peer's storage failed.
    Io = 5,
    /// The request did not parse or is not supported.
    BadRequest = 6,
    /// The peer has not caught up with the management state yet (e.g. does not know that
    /// layer); retry shortly.
    NotReady = 7,
    /// The write was routed by an older routing epoch of the volume than the peer admits
    /// (or a newer one than it knows yet): route it again under the current one.
    Rerouted = 8,
}

impl ErrorCode {
    /// Every code, for tests and exhaustive tables.
    pub const ALL: [ErrorCode; 8] = [
        Self::Fenced,
        Self::OutOfRange,
        Self::NoSpace,
        Self::UnknownVolume,
        Self::Io,
        Self::BadRequest,
        Self::NotReady,
        Self::Rerouted,
    ];

    /// The code from its wire number.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u16 == v)
    }
}

/// An answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Done (write, flush, trim).
    Ok,
    /// The bytes a read asked for.
    Data(Bytes),
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A human-readable description.
        message: String,
    },
    /// The answer to [`Request::Ping`].
    Pong {
        /// Names this run of the answering server: a new value after each start. A caller that
        /// sees the same value before and after some requests knows the server did not restart
        /// (and lose what it had not synced) in between.
        run: u64,
    },
    /// The answer to [`Request::GetChunk`].
    Chunk {
        /// The chunk's block maps.
        maps: Box<ChunkMaps>,
        /// The data blocks' bytes, in block order.
        blocks: Bytes,
    },
    /// The answer to [`Request::Digest`].
    Digest {
        /// blake3 of the chunk's bytes as read at the layer.
        digest: [u8; 32],
        /// The highest write generation of the chunk in the layers read (0: never written).
        generation: u64,
    },
    /// The answer to [`Request::Allocation`]: consecutive runs covering the range asked for.
    Allocation(Vec<Run>),
    /// The answer to [`Request::Write`] and [`Request::Trim`]: done, as the chunk's change of
    /// this write generation (0 for a write that only recorded marks).
    Applied {
        /// The generation.
        generation: u64,
    },
}

const T_WRITE: u16 = 0x0001;
const T_READ: u16 = 0x0002;
const T_FLUSH: u16 = 0x0003;
const T_TRIM: u16 = 0x0004;
const T_PING: u16 = 0x0005;
const T_GET_CHUNK: u16 = 0x0006;
const T_PUT_CHUNK: u16 = 0x0007;
const T_DIGEST_REQ: u16 = 0x0008;
const T_ALLOCATION_REQ: u16 = 0x0009;
const T_RELEASE: u16 = 0x000a;
const T_OK: u16 = 0x8001;
const T_DATA: u16 = 0x8002;
const T_ERROR: u16 = 0x8003;
const T_PONG: u16 = 0x8004;
const T_CHUNK: u16 = 0x8005;
const T_DIGEST: u16 = 0x8006;
const T_ALLOCATION: u16 = 0x8007;
const T_APPLIED: u16 = 0x8008;

const MAPS: usize = 2 * MAP_WORDS * 8 + 8;

fn put_missed(dst: &mut BytesMut, missed: &[ServerId]) {
    dst.put_u8(missed.len() as u8);
    for s in missed {
        dst.put_slice(&s.to_bytes());
    }
}

fn get_missed(t: u16, p: &mut Bytes) -> Result<Vec<ServerId>, MessageError> {
    let bad = MessageError::BadField {
        msg_type: t,
        field: "missed servers",
    };
    if p.remaining() < 1 {
        return Err(bad);
    }
    let n = usize::from(p.get_u8());
    if n > MAX_MISSED || p.remaining() < n * ID {
        return Err(bad);
    }
    Ok((0..n).map(|_| ServerId::from_bytes(get_id(p))).collect())
}

fn put_maps(dst: &mut BytesMut, maps: &ChunkMaps) {
    for w in maps.data.iter().chain(&maps.zero) {
        dst.put_u64_le(*w);
    }
    dst.put_u64(maps.generation);
}

/// Reads the two maps and checks them against the blocks that follow.
fn get_maps(t: u16, p: &mut Bytes) -> Result<Box<ChunkMaps>, MessageError> {
    if p.remaining() < MAPS {
        return Err(MessageError::BadLength {
            msg_type: t,
            len: p.remaining(),
        });
    }
    let data: [u64; MAP_WORDS] = std::array::from_fn(|_| p.get_u64_le());
    let zero: [u64; MAP_WORDS] = std::array::from_fn(|_| p.get_u64_le());
    let generation = p.get_u64();
    if data.iter().zip(&zero).any(|(d, z)| d & z != 0) {
        return Err(MessageError::BadField {
            msg_type: t,
            field: "block maps (a block both data and zero)",
        });
    }
    let count: usize = data.iter().map(|w| w.count_ones() as usize).sum();
    if p.remaining() != count * BLOCK {
        return Err(MessageError::BadField {
            msg_type: t,
            field: "chunk blocks (length does not match the data map)",
        });
    }
    Ok(Box::new(ChunkMaps {
        data,
        zero,
        generation,
    }))
}

const ID: usize = 16;

fn get_id(p: &mut Bytes) -> [u8; 16] {
    let mut id = [0u8; 16];
    p.copy_to_slice(&mut id);
    id
}

/// Checks the payload length: exactly `want`, or at least `want` when the message has a tail.
fn need(msg_type: u16, p: &Bytes, want: usize, tail: bool) -> Result<(), MessageError> {
    let ok = if tail {
        p.len() >= want
    } else {
        p.len() == want
    };
    if ok {
        Ok(())
    } else {
        Err(MessageError::BadLength {
            msg_type,
            len: p.len(),
        })
    }
}

fn flag(msg_type: u16, v: u8, field: &'static str) -> Result<bool, MessageError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(MessageError::BadField { msg_type, field }),
    }
}

impl Request {
    /// Checks, before anything is allocated for it, the lengths a request asks the server to
    /// produce: a `Read` or an `Allocation` may cover at most `max` bytes (a `Read`'s answer
    /// must fit in one frame of at most `max` payload bytes; an `Allocation` describes no more
    /// than a read could return).
    pub fn check_lengths(&self, max: u32) -> Result<(), MessageError> {
        let (msg_type, len) = match self {
            Self::Read { len, .. } => (T_READ, *len),
            Self::Allocation { len, .. } => (T_ALLOCATION_REQ, *len),
            _ => return Ok(()),
        };
        if len > max {
            return Err(MessageError::TooLong { msg_type, len, max });
        }
        Ok(())
    }

    /// An upper bound on the payload of the answer, where the request decides it: a `Read`'s
    /// `len`, one chunk image (block maps and 4 MiB of blocks) for a `GetChunk`, and 0 for the
    /// others, whose answers are small. Servers count it against their bytes in flight.
    pub fn answer_bound(&self) -> u64 {
        match self {
            Self::Read { len, .. } => u64::from(*len),
            Self::GetChunk { .. } => MAPS as u64 + strata_types::CHUNK_SIZE,
            _ => 0,
        }
    }
}

impl WireMessage for Request {
    const KIND: FrameKind = FrameKind::Request;

    fn msg_type(&self) -> u16 {
        match self {
            Self::Write { .. } => T_WRITE,
            Self::Read { .. } => T_READ,
            Self::Flush { .. } => T_FLUSH,
            Self::Trim { .. } => T_TRIM,
            Self::Ping => T_PING,
            Self::GetChunk { .. } => T_GET_CHUNK,
            Self::PutChunk { .. } => T_PUT_CHUNK,
            Self::Digest { .. } => T_DIGEST_REQ,
            Self::Allocation { .. } => T_ALLOCATION_REQ,
            Self::Release { .. } => T_RELEASE,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Self::Write { data, missed, .. } => {
                ID + ID + 8 + 1 + 8 + 8 + 8 + 1 + missed.len() * ID + data.len()
            }
            Self::Read { .. } | Self::Allocation { .. } => ID + 1 + ID + 8 + 4,
            Self::Flush { .. } => ID,
            Self::Trim { missed, .. } => ID + ID + 8 + 8 + 8 + 8 + 8 + 1 + missed.len() * ID,
            Self::Ping => 0,
            Self::GetChunk { .. } => ID + ID + 8,
            Self::PutChunk { blocks, .. } => ID + ID + 8 + 1 + 8 + MAPS + blocks.len(),
            Self::Digest { .. } => ID + 1 + ID + 8,
            Self::Release { .. } => ID + 8 + 8,
        }
    }

    fn tail(&self) -> Option<&Bytes> {
        match self {
            Self::Write { data, .. } => Some(data),
            Self::PutChunk { blocks, .. } => Some(blocks),
            _ => None,
        }
    }

    fn put_head(&self, dst: &mut BytesMut) {
        match self {
            Self::Write {
                volume,
                layer,
                offset,
                fua,
                missed,
                hold,
                epoch,
                generation,
                ..
            } => {
                dst.put_slice(&volume.to_bytes());
                dst.put_slice(&layer.to_bytes());
                dst.put_u64(*offset);
                dst.put_u8(u8::from(*fua));
                dst.put_u64(hold.unwrap_or(0));
                dst.put_u64(*epoch);
                dst.put_u64(*generation);
                put_missed(dst, missed);
            }
            Self::Read {
                volume,
                layer,
                offset,
                len,
            }
            | Self::Allocation {
                volume,
                layer,
                offset,
                len,
            } => {
                dst.put_slice(&volume.to_bytes());
                dst.put_u8(u8::from(layer.is_some()));
                dst.put_slice(&layer.map_or([0; 16], LayerId::to_bytes));
                dst.put_u64(*offset);
                dst.put_u32(*len);
            }
            Self::Flush { volume } => dst.put_slice(&volume.to_bytes()),
            Self::Trim {
                volume,
                layer,
                offset,
                len,
                missed,
                hold,
                epoch,
                generation,
            } => {
                dst.put_slice(&volume.to_bytes());
                dst.put_slice(&layer.to_bytes());
                dst.put_u64(*offset);
                dst.put_u64(*len);
                dst.put_u64(hold.unwrap_or(0));
                dst.put_u64(*epoch);
                dst.put_u64(*generation);
                put_missed(dst, missed);
            }
            Self::Ping => {}
            Self::GetChunk {
                volume,
                layer,
                chunk,
            } => {
                dst.put_slice(&volume.to_bytes());
                dst.put_slice(&layer.to_bytes());
                dst.put_u64(*chunk);
            }
            Self::PutChunk {
                volume,
                layer,
                chunk,
                durable,
                epoch,
                maps,
                ..
            } => {
                dst.put_slice(&volume.to_bytes());
                dst.put_slice(&layer.to_bytes());
                dst.put_u64(*chunk);
                dst.put_u8(u8::from(*durable));
                dst.put_u64(*epoch);
                put_maps(dst, maps);
            }
            Self::Digest {
                volume,
                layer,
                chunk,
            } => {
                dst.put_slice(&volume.to_bytes());
                dst.put_u8(u8::from(layer.is_some()));
                dst.put_slice(&layer.map_or([0; 16], LayerId::to_bytes));
                dst.put_u64(*chunk);
            }
            Self::Release {
                volume,
                chunk,
                token,
            } => {
                dst.put_slice(&volume.to_bytes());
                dst.put_u64(*chunk);
                dst.put_u64(*token);
            }
        }
    }

    fn decode(t: u16, mut p: Bytes) -> Result<Self, MessageError> {
        match t {
            T_WRITE => {
                need(t, &p, ID + ID + 8 + 1 + 8 + 8 + 8 + 1, true)?;
                let volume = VolumeId::from_bytes(get_id(&mut p));
                let layer = LayerId::from_bytes(get_id(&mut p));
                let offset = p.get_u64();
                let fua = flag(t, p.get_u8(), "fua flag")?;
                let hold = Some(p.get_u64()).filter(|h| *h != 0);
                let epoch = p.get_u64();
                let generation = p.get_u64();
                let missed = get_missed(t, &mut p)?;
                Ok(Self::Write {
                    volume,
                    layer,
                    offset,
                    data: p,
                    fua,
                    missed,
                    hold,
                    epoch,
                    generation,
                })
            }
            T_READ | T_ALLOCATION_REQ => {
                need(t, &p, ID + 1 + ID + 8 + 4, false)?;
                let volume = VolumeId::from_bytes(get_id(&mut p));
                let has_layer = flag(t, p.get_u8(), "has_layer flag")?;
                let layer = LayerId::from_bytes(get_id(&mut p)); // present either way
                let layer = has_layer.then_some(layer);
                let (offset, len) = (p.get_u64(), p.get_u32());
                Ok(if t == T_READ {
                    Self::Read {
                        volume,
                        layer,
                        offset,
                        len,
                    }
                } else {
                    Self::Allocation {
                        volume,
                        layer,
                        offset,
                        len,
                    }
                })
            }
            T_FLUSH => {
                need(t, &p, ID, false)?;
                Ok(Self::Flush {
                    volume: VolumeId::from_bytes(get_id(&mut p)),
                })
            }
            T_TRIM => {
                need(t, &p, ID + ID + 8 + 8 + 8 + 8 + 8 + 1, true)?;
                let volume = VolumeId::from_bytes(get_id(&mut p));
                let layer = LayerId::from_bytes(get_id(&mut p));
                let offset = p.get_u64();
                let len = p.get_u64();
                let hold = Some(p.get_u64()).filter(|h| *h != 0);
                let epoch = p.get_u64();
                let generation = p.get_u64();
                let missed = get_missed(t, &mut p)?;
                need(t, &p, 0, false)?;
                Ok(Self::Trim {
                    volume,
                    layer,
                    offset,
                    len,
                    missed,
                    hold,
                    epoch,
                    generation,
                })
            }
            T_PING => need(t, &p, 0, false).map(|()| Self::Ping),
            T_GET_CHUNK => {
                need(t, &p, ID + ID + 8, false)?;
                Ok(Self::GetChunk {
                    volume: VolumeId::from_bytes(get_id(&mut p)),
                    layer: LayerId::from_bytes(get_id(&mut p)),
                    chunk: p.get_u64(),
                })
            }
            T_PUT_CHUNK => {
                need(t, &p, ID + ID + 8 + 1 + 8 + MAPS, true)?;
                let volume = VolumeId::from_bytes(get_id(&mut p));
                let layer = LayerId::from_bytes(get_id(&mut p));
                let chunk = p.get_u64();
                let durable = flag(t, p.get_u8(), "durable flag")?;
                let epoch = p.get_u64();
                let maps = get_maps(t, &mut p)?;
                Ok(Self::PutChunk {
                    volume,
                    layer,
                    chunk,
                    durable,
                    epoch,
                    maps,
                    blocks: p,
                })
            }
            T_DIGEST_REQ => {
                need(t, &p, ID + 1 + ID + 8, false)?;
                let volume = VolumeId::from_bytes(get_id(&mut p));
                let has_layer = flag(t, p.get_u8(), "has_layer flag")?;
                let layer = LayerId::from_bytes(get_id(&mut p));
                Ok(Self::Digest {
                    volume,
                    layer: has_layer.then_some(layer),
                    chunk: p.get_u64(),
                })
            }
            T_RELEASE => {
                need(t, &p, ID + 8 + 8, false)?;
                Ok(Self::Release {
                    volume: VolumeId::from_bytes(get_id(&mut p)),
                    chunk: p.get_u64(),
                    token: p.get_u64(),
                })
            }
            T_OK | T_DATA | T_ERROR | T_PONG | T_CHUNK | T_DIGEST | T_ALLOCATION | T_APPLIED => {
                Err(MessageError::WrongKind(t))
            }
            _ => Err(MessageError::UnknownType(t)),
        }
    }
}

impl WireMessage for Response {
    const KIND: FrameKind = FrameKind::Response;

    fn msg_type(&self) -> u16 {
        match self {
            Self::Ok => T_OK,
            Self::Data(_) => T_DATA,
            Self::Error { .. } => T_ERROR,
            Self::Pong { .. } => T_PONG,
            Self::Chunk { .. } => T_CHUNK,
            Self::Digest { .. } => T_DIGEST,
            Self::Allocation(_) => T_ALLOCATION,
            Self::Applied { .. } => T_APPLIED,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Self::Ok => 0,
            Self::Pong { .. } => 8,
            Self::Data(d) => d.len(),
            Self::Error { message, .. } => 2 + message.len(),
            Self::Chunk { blocks, .. } => MAPS + blocks.len(),
            Self::Digest { .. } => 32 + 8,
            Self::Allocation(runs) => runs.len() * RUN,
            Self::Applied { .. } => 8,
        }
    }

    fn tail(&self) -> Option<&Bytes> {
        match self {
            Self::Data(d) => Some(d),
            Self::Chunk { blocks, .. } => Some(blocks),
            _ => None,
        }
    }

    fn put_head(&self, dst: &mut BytesMut) {
        match self {
            Self::Ok | Self::Data(_) => {}
            Self::Pong { run } => dst.put_u64(*run),
            Self::Error { code, message } => {
                dst.put_u16(*code as u16);
                dst.put_slice(message.as_bytes());
            }
            Self::Chunk { maps, .. } => put_maps(dst, maps),
            Self::Digest { digest, generation } => {
                dst.put_slice(digest);
                dst.put_u64(*generation);
            }
            Self::Applied { generation } => dst.put_u64(*generation),
            Self::Allocation(runs) => {
                for r in runs {
                    dst.put_u32(r.len);
                    dst.put_u8(match r.kind {
                        ExtentKind::Data => 0,
                        ExtentKind::Zero => 1,
                        ExtentKind::Hole => 2,
                    });
                }
            }
        }
    }

    fn decode(t: u16, mut p: Bytes) -> Result<Self, MessageError> {
        match t {
            T_OK => need(t, &p, 0, false).map(|()| Self::Ok),
            T_PONG => need(t, &p, 8, false).map(|()| Self::Pong { run: p.get_u64() }),
            T_DATA => Ok(Self::Data(p)),
            T_ERROR => {
                need(t, &p, 2, true)?;
                let code = ErrorCode::from_u16(p.get_u16()).ok_or(MessageError::BadField {
                    msg_type: t,
                    field: "error code",
                })?;
                let message =
                    String::from_utf8(p.to_vec()).map_err(|_| MessageError::BadField {
                        msg_type: t,
                        field: "error message (not UTF-8)",
                    })?;
                Ok(Self::Error { code, message })
            }
            T_CHUNK => {
                let maps = get_maps(t, &mut p)?;
                Ok(Self::Chunk { maps, blocks: p })
            }
            T_DIGEST => {
                need(t, &p, 32 + 8, false)?;
                let mut digest = [0u8; 32];
                p.copy_to_slice(&mut digest);
                Ok(Self::Digest {
                    digest,
                    generation: p.get_u64(),
                })
            }
            T_APPLIED => need(t, &p, 8, false).map(|()| Self::Applied {
                generation: p.get_u64(),
            }),
            T_ALLOCATION => {
                if !p.len().is_multiple_of(RUN) {
                    return Err(MessageError::BadLength {
                        msg_type: t,
                        len: p.len(),
                    });
                }
                let mut runs = Vec::with_capacity(p.len() / RUN);
                while p.has_remaining() {
                    let len = p.get_u32();
                    let kind = match p.get_u8() {
                        0 => ExtentKind::Data,
                        1 => ExtentKind::Zero,
                        2 => ExtentKind::Hole,
                        _ => {
                            return Err(MessageError::BadField {
                                msg_type: t,
                                field: "run kind",
                            })
                        }
                    };
                    if len == 0 {
                        return Err(MessageError::BadField {
                            msg_type: t,
                            field: "run length (zero)",
                        });
                    }
                    runs.push(Run { len, kind });
                }
                Ok(Self::Allocation(runs))
            }
            T_WRITE | T_READ | T_FLUSH | T_TRIM | T_PING | T_GET_CHUNK | T_PUT_CHUNK
            | T_DIGEST_REQ | T_ALLOCATION_REQ | T_RELEASE => Err(MessageError::WrongKind(t)),
            _ => Err(MessageError::UnknownType(t)),
        }
    }
}
