//! Handshake and option haggling, over a real socket.

use strata_nbd::consts;

use crate::client::{export_info, meta_data, start, Client};
use crate::memdev::{MemDevice, MemExports};

fn exports() -> std::sync::Arc<MemExports> {
    MemExports::with(&[
        ("vol", MemDevice::new(1 << 20, false)),
        ("snap", MemDevice::new(8192, true)),
    ])
}

#[tokio::test]
async fn list_info_and_go() {
    let server = start(exports()).await;
    let mut c = Client::connect(server.addr).await;
    let list = c.option(consts::OPT_LIST, &[]).await;
    assert_eq!(list.len(), 3);
    assert_eq!(
        list[0],
        (consts::REP_SERVER, b"\0\0\0\x04snaptest snap".to_vec())
    );
    assert_eq!(
        list[1],
        (consts::REP_SERVER, b"\0\0\0\x03voltest vol".to_vec())
    );
    assert_eq!(list[2], (consts::REP_ACK, vec![]));

    let info = c
        .info(
            false,
            "snap",
            &[
                consts::INFO_NAME,
                consts::INFO_DESCRIPTION,
                consts::INFO_BLOCK_SIZE,
            ],
        )
        .await;
    let (size, flags) = export_info(&info).expect("export info");
    assert_eq!(size, 8192);
    assert_ne!(flags & consts::FLAG_READ_ONLY, 0);
    assert_eq!(
        flags & consts::FLAG_SEND_DF,
        0,
        "no DF without structured replies"
    );
    assert!(info.contains(&(consts::REP_INFO, b"\0\x01snap".to_vec())));
    assert!(info.contains(&(consts::REP_INFO, b"\0\x02test snap".to_vec())));
    assert!(info.contains(&(
        consts::REP_INFO,
        b"\0\x03\0\0\0\x01\0\0\x10\0\x02\0\0\0".to_vec()
    )));

    let unknown = c.info(true, "nope", &[]).await;
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].0, consts::REP_ERR_UNKNOWN);
    let denied = c.info(true, "denied", &[]).await;
    assert_eq!(denied[0].0, consts::REP_ERR_POLICY);
    // The empty name is the default export only if the provider has one named "".
    assert_eq!(c.info(true, "", &[]).await[0].0, consts::REP_ERR_UNKNOWN);

    c.structured_reply().await;
    let (size, flags) = c.go("vol").await;
    assert_eq!(size, 1 << 20);
    assert_eq!(flags & consts::FLAG_READ_ONLY, 0);
    assert_ne!(flags & consts::FLAG_SEND_DF, 0);
    assert_ne!(flags & consts::FLAG_CAN_MULTI_CONN, 0);
    c.request(0, consts::CMD_READ, 1, 0, 512, &[]).await;
    assert_eq!(c.read_result(0, 512).await, Ok(vec![0; 512]));
}

#[tokio::test]
async fn default_export_and_export_name() {
    let dev = MemDevice::new(4096, false);
    let server = start(MemExports::with(&[("", dev)])).await;
    // NBD_OPT_EXPORT_NAME with no zeroes negotiated: 10 bytes, then transmission.
    let mut c = Client::connect(server.addr).await;
    c.send_option(consts::OPT_EXPORT_NAME, b"").await;
    let mut reply = [0u8; 10];
    tokio::io::AsyncReadExt::read_exact(&mut c.io, &mut reply)
        .await
        .expect("reply");
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().expect("8")), 4096);
    c.request(0, consts::CMD_READ, 9, 0, 4096, &[]).await;
    assert_eq!(c.read_result(0, 4096).await, Ok(vec![0; 4096]));
    // Without NBD_FLAG_C_NO_ZEROES the 124 zero bytes follow.
    let mut c = Client::connect_with(server.addr, 1).await;
    c.send_option(consts::OPT_EXPORT_NAME, b"").await;
    let mut reply = [0u8; 134];
    tokio::io::AsyncReadExt::read_exact(&mut c.io, &mut reply)
        .await
        .expect("reply");
    assert!(reply[10..].iter().all(|b| *b == 0));
    // An unknown name cannot be reported: the server hangs up.
    let mut c = Client::connect(server.addr).await;
    c.send_option(consts::OPT_EXPORT_NAME, b"missing").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn errors_keep_haggling_alive() {
    let server = start(exports()).await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(
        c.option(0x4242, b"xyz").await,
        vec![(consts::REP_ERR_UNSUP, b"option not supported".to_vec())]
    );
    assert_eq!(
        c.option(consts::OPT_STARTTLS, &[]).await[0].0,
        consts::REP_ERR_UNSUP
    );
    assert_eq!(
        c.option(consts::OPT_LIST, b"junk").await[0].0,
        consts::REP_ERR_INVALID
    );
    assert_eq!(
        c.option(consts::OPT_GO, b"\0\0\0\x09ab").await[0].0,
        consts::REP_ERR_INVALID
    );
    // Meta contexts need structured replies first.
    assert_eq!(
        c.set_meta("vol", &["base:allocation"]).await[0].0,
        consts::REP_ERR_INVALID
    );
    c.structured_reply().await;
    let listed = c
        .option(consts::OPT_LIST_META_CONTEXT, &meta_data("vol", &[]))
        .await;
    assert_eq!(
        listed[0],
        (
            consts::REP_META_CONTEXT,
            b"\0\0\0\0base:allocation".to_vec()
        )
    );
    let listed = c
        .option(consts::OPT_LIST_META_CONTEXT, &meta_data("vol", &["base:"]))
        .await;
    assert_eq!(listed.len(), 2);
    let listed = c
        .option(
            consts::OPT_LIST_META_CONTEXT,
            &meta_data("vol", &["qemu:x"]),
        )
        .await;
    assert_eq!(listed, vec![(consts::REP_ACK, vec![])]);
    assert_eq!(
        c.set_meta("vol", &["bad"]).await[0].0,
        consts::REP_ERR_INVALID
    );
    let set = c.set_meta("vol", &["x-foo:bar", "base:allocation"]).await;
    assert_eq!(
        set[0],
        (
            consts::REP_META_CONTEXT,
            b"\0\0\0\x01base:allocation".to_vec()
        )
    );
    assert_eq!(set[1].0, consts::REP_ACK);
    // Still haggling: GO works after all of that.
    c.go("vol").await;
    c.request(0, consts::CMD_BLOCK_STATUS, 1, 0, 4096, &[])
        .await;
    assert!(matches!(
        c.reply().await,
        crate::client::Msg::Chunk {
            kind: consts::REPLY_TYPE_BLOCK_STATUS,
            ..
        }
    ));
    // ABORT gets an ACK and the connection ends.
    let mut c = Client::connect(server.addr).await;
    assert_eq!(
        c.option(consts::OPT_ABORT, &[]).await,
        vec![(consts::REP_ACK, vec![])]
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn bad_handshakes_end_only_their_connection() {
    let server = start(exports()).await;
    // No fixed newstyle, unknown flags.
    for flags in [0u32, 4, 0xffff_ffff] {
        let mut c = Client::connect_with(server.addr, flags).await;
        assert!(c.closed().await, "flags {flags:#x}");
    }
    // Truncated handshake: half an option, then hang up.
    let mut c = Client::connect(server.addr).await;
    c.send_raw(&consts::IHAVEOPT.to_be_bytes()[..5]).await;
    drop(c);
    // Bad option magic.
    let mut c = Client::connect(server.addr).await;
    c.send_raw(b"GARBAGE!\0\0\0\x03\0\0\0\0").await;
    assert!(c.closed().await);
    // Option too large to buffer.
    let mut c = Client::connect(server.addr).await;
    c.send_raw(
        &[
            &consts::IHAVEOPT.to_be_bytes()[..],
            b"\0\0\0\x07\xff\xff\xff\xff",
        ]
        .concat(),
    )
    .await;
    assert!(c.closed().await);
    // Random bytes right after connecting.
    for seed in 0..8u8 {
        let mut c = Client::connect(server.addr).await;
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        c.send_raw(&junk).await;
        assert!(c.closed().await);
    }
    // The server still serves.
    let mut c = Client::connect(server.addr).await;
    c.go("vol").await;
    server.shutdown.cancel();
    server.task.await.expect("join").expect("serve");
}
