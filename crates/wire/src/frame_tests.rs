//! Parser tests: the codec and the messages, on byte strings, without I/O.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use strata_types::{ExtentKind, LayerId, ServerId, VolumeId};
use tokio_util::codec::{Decoder, Encoder};

use crate::*;

fn encode<M: WireMessage>(id: u64, msg: M) -> BytesMut {
    let mut buf = BytesMut::new();
    let encoded = FrameCodec::default().encode((id, msg), &mut buf);
    assert!(encoded.is_ok(), "{encoded:?}");
    buf
}

fn decode_all(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    FrameCodec::default().decode(buf)
}

fn write_req() -> Request {
    Request::Write {
        volume: VolumeId::from_bytes([1; 16]),
        layer: LayerId::from_bytes([2; 16]),
        offset: 4096,
        data: Bytes::from_static(b"hello block"),
        fua: true,
        missed: vec![ServerId::from_bytes([3; 16])],
        hold: None,
        epoch: 0,
        generation: 0,
    }
}

#[test]
fn header_layout_is_as_documented() {
    let buf = encode(7, Request::Ping);
    assert_eq!(buf.len(), HEADER_LEN);
    assert_eq!(&buf[..4], b"STRW");
    assert_eq!(&buf[4..6], &PROTOCOL_VERSION.to_be_bytes());
    assert_eq!(buf[6], 0, "request kind");
    assert_eq!(buf[7], 0, "flags");
    assert_eq!(&buf[8..16], &7u64.to_be_bytes());
    assert_eq!(&buf[16..18], &[0x00, 0x05], "Ping type");
    assert_eq!(&buf[18..22], &[0, 0, 0, 0], "payload length");
    assert_eq!(&buf[22..26], &crc32c::crc32c(&buf[..22]).to_be_bytes());
}

#[test]
fn every_prefix_is_incomplete_then_the_frame_decodes() {
    let full = encode(42, write_req());
    for n in 0..full.len() {
        let mut part = BytesMut::from(&full[..n]);
        assert!(matches!(decode_all(&mut part), Ok(None)), "prefix {n}");
        assert_eq!(part.len(), n, "an incomplete frame consumes nothing");
    }
    let mut buf = full.clone();
    let frame = decode_all(&mut buf).ok().flatten().expect("frame");
    assert!(buf.is_empty());
    assert_eq!(frame.request_id, 42);
    assert_eq!(frame.into_message::<Request>(), Ok(write_req()));
}

#[test]
fn back_to_back_frames_decode_in_order() {
    let mut buf = encode(1, Request::Ping);
    buf.extend_from_slice(&encode(2, Response::Data(Bytes::from_static(b"xyz"))));
    buf.extend_from_slice(&encode(3, Response::Pong { run: 9 })[..10]);
    let mut codec = FrameCodec::default();
    let a = codec.decode(&mut buf).ok().flatten().expect("first");
    let b = codec.decode(&mut buf).ok().flatten().expect("second");
    assert_eq!((a.request_id, a.kind), (1, FrameKind::Request));
    assert_eq!((b.request_id, b.kind), (2, FrameKind::Response));
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
}

/// A table of corrupt byte strings and the error each must give.
#[test]
fn corrupt_frames_give_typed_errors() {
    let good = encode(9, write_req());
    let with = |at: usize, byte: u8| {
        let mut b = good.clone();
        b[at] = byte;
        b
    };
    let mut oversized = good.clone();
    oversized[18..22].copy_from_slice(&(DEFAULT_MAX_PAYLOAD + 1).to_be_bytes());
    oversized.truncate(HEADER_LEN); // refused without waiting for the payload
    type Case = (&'static str, BytesMut, fn(&FrameError) -> bool);
    let cases: Vec<Case> = vec![
        ("bad magic, 1 byte", BytesMut::from(&b"X"[..]), |e| {
            matches!(e, FrameError::BadMagic(_))
        }),
        (
            "http request",
            BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]),
            |e| matches!(e, FrameError::BadMagic(_)),
        ),
        ("version 3", with(5, 3), |e| {
            matches!(e, FrameError::UnsupportedVersion(3))
        }),
        ("kind 7", with(6, 7), |e| {
            matches!(e, FrameError::BadKind(7))
        }),
        ("too large", oversized, |e| {
            matches!(
                e,
                FrameError::TooLarge {
                    max: DEFAULT_MAX_PAYLOAD,
                    ..
                }
            )
        }),
        (
            "payload bit flip",
            with(good.len() - 1, good[good.len() - 1] ^ 1),
            |e| matches!(e, FrameError::BadChecksum { .. }),
        ),
        ("request id changed", with(15, good[15] ^ 0x80), |e| {
            matches!(e, FrameError::BadChecksum { .. })
        }),
        ("crc changed", with(25, good[25].wrapping_add(1)), |e| {
            matches!(e, FrameError::BadChecksum { .. })
        }),
    ];
    for (name, mut bytes, check) in cases {
        match decode_all(&mut bytes) {
            Err(e) => assert!(check(&e), "{name}: wrong error {e:?}"),
            Ok(f) => panic!("{name}: decoded {f:?}"),
        }
    }
}

#[test]
fn encoding_refuses_an_oversized_payload() {
    let mut codec = FrameCodec::new(8);
    let mut buf = BytesMut::new();
    let err = codec.encode((1, Response::Data(Bytes::from(vec![0u8; 9]))), &mut buf);
    assert!(matches!(err, Err(FrameError::TooLarge { len: 9, max: 8 })));
    assert!(buf.is_empty(), "nothing written");
}

#[test]
fn bad_payloads_give_message_errors() {
    let short_write = Bytes::from_static(&[0u8; 40]);
    assert_eq!(
        Request::decode(0x0001, short_write),
        Err(MessageError::BadLength {
            msg_type: 1,
            len: 40
        })
    );
    assert_eq!(
        Request::decode(0x0005, Bytes::from_static(b"x")),
        Err(MessageError::BadLength {
            msg_type: 5,
            len: 1
        })
    );
    assert_eq!(
        Request::decode(0x0077, Bytes::new()),
        Err(MessageError::UnknownType(0x77))
    );
    assert_eq!(
        Request::decode(0x8001, Bytes::new()),
        Err(MessageError::WrongKind(0x8001))
    );
    let mut bad_fua = BytesMut::from(&encode(1, write_req())[HEADER_LEN..]);
    bad_fua[40] = 2;
    assert!(matches!(
        Request::decode(0x0001, bad_fua.freeze()),
        Err(MessageError::BadField { .. })
    ));
    // Allocation runs: 5 bytes each, a known kind, never empty.
    assert_eq!(
        Response::decode(0x8007, Bytes::from_static(&[0, 0, 0, 1, 0, 9])),
        Err(MessageError::BadLength {
            msg_type: 0x8007,
            len: 6
        })
    );
    for (run, field) in [
        ([0u8, 0, 16, 0, 3], "run kind"),
        ([0u8, 0, 0, 0, 1], "run length (zero)"),
    ] {
        assert_eq!(
            Response::decode(0x8007, Bytes::copy_from_slice(&run)),
            Err(MessageError::BadField {
                msg_type: 0x8007,
                field
            })
        );
    }
    let mut bad_code = BytesMut::new();
    bad_code.put_u16(999);
    assert!(matches!(
        Response::decode(0x8003, bad_code.freeze()),
        Err(MessageError::BadField { .. })
    ));
    let frame = Frame {
        kind: FrameKind::Response,
        request_id: 1,
        msg_type: 0x0005,
        payload: Bytes::new(),
    };
    assert_eq!(
        frame.into_message::<Request>(),
        Err(MessageError::WrongKind(5))
    );
}

fn arb_id() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

fn arb_data() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..9000).prop_map(Bytes::from)
}

fn arb_missed() -> impl Strategy<Value = Vec<ServerId>> {
    prop::collection::vec(arb_id().prop_map(ServerId::from_bytes), 0..=3)
}

/// Two block maps with no block in both, and blocks to match.
fn arb_chunk() -> impl Strategy<Value = ([u64; 16], [u64; 16], Bytes)> {
    (any::<[u64; 16]>(), any::<[u64; 16]>(), 0u64..4).prop_map(|(a, b, keep)| {
        // Keep the data map sparse so the blocks stay small.
        let data: [u64; 16] = std::array::from_fn(|i| if i == 0 { a[i] & keep } else { 0 });
        let zero: [u64; 16] = std::array::from_fn(|i| b[i] & !data[i]);
        let n: u32 = data.iter().map(|w| w.count_ones()).sum();
        let blocks = Bytes::from(vec![0x5a; n as usize * 4096]);
        (data, zero, blocks)
    })
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            arb_id(),
            arb_id(),
            any::<u64>(),
            arb_data(),
            any::<bool>(),
            arb_missed(),
            prop::option::of(1..=u64::MAX),
            (any::<u64>(), any::<u64>())
        )
            .prop_map(
                |(v, l, offset, data, fua, missed, hold, (epoch, generation))| Request::Write {
                    volume: VolumeId::from_bytes(v),
                    layer: LayerId::from_bytes(l),
                    offset,
                    data,
                    fua,
                    missed,
                    hold,
                    epoch,
                    generation,
                }
            ),
        (
            arb_id(),
            prop::option::of(arb_id()),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(v, l, offset, len)| Request::Read {
                volume: VolumeId::from_bytes(v),
                layer: l.map(LayerId::from_bytes),
                offset,
                len,
            }),
        arb_id().prop_map(|v| Request::Flush {
            volume: VolumeId::from_bytes(v)
        }),
        (
            arb_id(),
            arb_id(),
            any::<u64>(),
            any::<u64>(),
            arb_missed(),
            prop::option::of(1..=u64::MAX),
            (any::<u64>(), any::<u64>())
        )
            .prop_map(|(v, l, offset, len, missed, hold, (epoch, generation))| {
                Request::Trim {
                    volume: VolumeId::from_bytes(v),
                    layer: LayerId::from_bytes(l),
                    offset,
                    len,
                    missed,
                    hold,
                    epoch,
                    generation,
                }
            }),
        (arb_id(), any::<u64>(), 1..=u64::MAX).prop_map(|(v, chunk, token)| Request::Release {
            volume: VolumeId::from_bytes(v),
            chunk,
            token,
        }),
        Just(Request::Ping),
        (arb_id(), arb_id(), any::<u64>()).prop_map(|(v, l, chunk)| Request::GetChunk {
            volume: VolumeId::from_bytes(v),
            layer: LayerId::from_bytes(l),
            chunk,
        }),
        (arb_id(), arb_id(), any::<u64>(), arb_chunk()).prop_map(
            |(v, l, chunk, (data, zero, blocks))| Request::PutChunk {
                volume: VolumeId::from_bytes(v),
                layer: LayerId::from_bytes(l),
                chunk,
                durable: chunk % 2 == 0,
                epoch: chunk / 5,
                maps: Box::new(ChunkMaps {
                    data,
                    zero,
                    generation: chunk / 3,
                }),
                blocks,
            }
        ),
        (arb_id(), prop::option::of(arb_id()), any::<u64>()).prop_map(|(v, l, chunk)| {
            Request::Digest {
                volume: VolumeId::from_bytes(v),
                layer: l.map(LayerId::from_bytes),
                chunk,
            }
        }),
        (
            arb_id(),
            prop::option::of(arb_id()),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(v, l, offset, len)| Request::Allocation {
                volume: VolumeId::from_bytes(v),
                layer: l.map(LayerId::from_bytes),
                offset,
                len,
            }),
    ]
}

fn arb_run() -> impl Strategy<Value = Run> {
    let kinds = [ExtentKind::Data, ExtentKind::Zero, ExtentKind::Hole];
    (1..=u32::MAX, prop::sample::select(kinds.to_vec())).prop_map(|(len, kind)| Run { len, kind })
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Ok),
        any::<u64>().prop_map(|run| Response::Pong { run }),
        arb_data().prop_map(Response::Data),
        (prop::sample::select(ErrorCode::ALL.to_vec()), ".{0,80}")
            .prop_map(|(code, message)| Response::Error { code, message }),
        (arb_chunk(), any::<u64>()).prop_map(|((data, zero, blocks), generation)| {
            Response::Chunk {
                maps: Box::new(ChunkMaps {
                    data,
                    zero,
                    generation,
                }),
                blocks,
            }
        }),
        (any::<[u8; 32]>(), any::<u64>())
            .prop_map(|(digest, generation)| Response::Digest { digest, generation }),
        any::<u64>().prop_map(|generation| Response::Applied { generation }),
        prop::collection::vec(arb_run(), 0..40).prop_map(Response::Allocation),
    ]
}

fn round_trip<M: WireMessage + Clone + PartialEq + std::fmt::Debug>(
    id: u64,
    msg: M,
    split: usize,
) -> Result<(), TestCaseError> {
    let full = encode(id, msg.clone());
    let split = split % (full.len() + 1);
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(&full[..split]);
    if split < full.len() {
        prop_assert!(matches!(codec.decode(&mut buf), Ok(None)));
    }
    buf.extend_from_slice(&full[split..]);
    let frame = codec.decode(&mut buf).ok().flatten();
    prop_assert!(frame.is_some());
    let frame = frame.expect("checked");
    prop_assert_eq!(frame.request_id, id);
    prop_assert!(buf.is_empty());
    prop_assert_eq!(frame.into_message::<M>(), Ok(msg));
    Ok(())
}

proptest! {
    #[test]
    fn requests_round_trip(id in any::<u64>(), req in arb_request(), split in any::<usize>()) {
        round_trip(id, req, split)?;
    }

    #[test]
    fn responses_round_trip(id in any::<u64>(), resp in arb_response(), split in any::<usize>()) {
        round_trip(id, resp, split)?;
    }

    /// Random garbage never panics the parser.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), magic in any::<bool>()) {
        let mut buf = BytesMut::new();
        if magic {
            buf.extend_from_slice(&MAGIC);
        }
        buf.extend_from_slice(&bytes);
        let _ = FrameCodec::default().decode(&mut buf);
        let _ = Request::decode(u16::from(bytes.first().copied().unwrap_or(0)), Bytes::from(bytes.clone()));
        let _ = Response::decode(0x8000 | u16::from(bytes.first().copied().unwrap_or(0)), Bytes::from(bytes));
    }
}

/// Chunk maps that contradict each other or their blocks are refused, not trusted.
#[test]
fn bad_chunk_maps_are_refused() {
    let good = Response::Chunk {
        maps: Box::new(ChunkMaps {
            data: std::array::from_fn(|i| u64::from(i == 0)),
            zero: [0; 16],
            generation: 7,
        }),
        blocks: Bytes::from(vec![1; 4096]),
    };
    let mut payload = BytesMut::new();
    good.put_payload(&mut payload);
    assert_eq!(Response::decode(0x8005, payload.clone().freeze()), Ok(good));
    // One block short.
    let short = payload.split_to(payload.len() - 1).freeze();
    assert!(Response::decode(0x8005, short).is_err());
    // A block both data and zero.
    let mut both = BytesMut::new();
    Response::Chunk {
        maps: Box::new(ChunkMaps {
            data: std::array::from_fn(|i| u64::from(i == 0)),
            zero: std::array::from_fn(|i| u64::from(i == 0)),
            generation: 0,
        }),
        blocks: Bytes::from(vec![1; 4096]),
    }
    .put_payload(&mut both);
    assert!(Response::decode(0x8005, both.freeze()).is_err());
    // Four missed servers are more than any volume has replicas.
    let mut four = BytesMut::new();
    Request::Trim {
        volume: VolumeId::from_bytes([1; 16]),
        layer: LayerId::from_bytes([2; 16]),
        offset: 0,
        len: 1,
        missed: vec![ServerId::from_bytes([3; 16]); 4],
        hold: None,
        epoch: 0,
        generation: 0,
    }
    .put_payload(&mut four);
    assert!(Request::decode(0x0004, four.freeze()).is_err());
}
