//! Real NBD clients — qemu-io, qemu-img, nbdinfo, nbdcopy, fio — against a real `strata server`
//! process: data written through one client reads back through another, snapshots keep their
//! point-in-time content, holes are reported as holes.

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;
use support::{data_extents, require, run_err, run_ok, ServerProcess};

fn qemu_io(url: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    if url.contains('@') {
        args.push("-r"); // snapshots are read-only exports
    }
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(url);
    let out = run_ok("qemu-io", &args);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed:"),
        "qemu-io {cmds:?} on {url}: {out}"
    );
    out
}

#[test]
fn qemu_io_patterns_across_snapshots() {
    require("qemu-io");
    let server = ServerProcess::start();
    server.create_volume("vm", "64MiB");
    let vol = server.url("vm");
    qemu_io(
        &vol,
        &[
            "write -P 0x11 0 4M",
            "write -P 0x22 8M 512",
            "write -P 0x33 60M 4M",
        ],
    );
    server.cli_ok(&["snapshot", "create", "vm@one"]);
    qemu_io(
        &vol,
        &["write -P 0x44 1M 1M", "write -z 60M 4M", "discard 8M 4096"],
    );
    server.cli_ok(&["snapshot", "create", "vm@two"]);
    qemu_io(&vol, &["write -P 0x55 2M 4096"]);

    // The snapshot keeps what was there when it was taken...
    qemu_io(
        &server.url("vm@one"),
        &[
            "read -P 0x11 0 4M",
            "read -P 0x22 8M 512",
            "read -P 0 8389120 4K",
            "read -P 0x33 60M 4M",
        ],
    );
    // ...the second holds the changes between...
    qemu_io(
        &server.url("vm@two"),
        &[
            "read -P 0x11 0 1M",
            "read -P 0x44 1M 1M",
            "read -P 0x11 2M 2M",
            "read -P 0 8M 4096",
            "read -P 0 60M 4M",
        ],
    );
    // ...and the volume has everything.
    qemu_io(
        &vol,
        &[
            "read -P 0x44 1M 1M",
            "read -P 0x55 2M 4096",
            "read -P 0x11 2101248 4096",
            "read -P 0 60M 4M",
        ],
    );
}

#[test]
fn qemu_img_compare_snapshot_with_file_and_nbdcopy_round_trip() {
    require("qemu-img");
    require("nbdcopy");
    let server = ServerProcess::start();
    server.create_volume("db", "32MiB");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.img");
    let mut data = vec![0u8; 32 << 20];
    for (i, b) in data.iter_mut().enumerate().take(20 << 20) {
        *b = (i as u64).wrapping_mul(2654435761).to_le_bytes()[3];
    }
    std::fs::write(&src, &data).unwrap();
    let src = src.to_str().unwrap();
    run_ok("nbdcopy", &[src, &server.url("db")]);
    server.cli_ok(&["snapshot", "create", "db@copied"]);
    qemu_io(&server.url("db"), &["write -P 0x99 0 1M"]);

    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src,
            &server.url("db@copied"),
        ],
    );
    let differs = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", src, &server.url("db")])
        .output()
        .unwrap();
    assert_eq!(
        differs.status.code(),
        Some(1),
        "the live volume changed after the snapshot"
    );

    let back = tmp.path().join("back.img");
    run_ok(
        "nbdcopy",
        &[&server.url("db@copied"), back.to_str().unwrap()],
    );
    let back = std::fs::read(&back).unwrap();
    assert_eq!(
        blake3::hash(&back),
        blake3::hash(&data),
        "nbdcopy round trip changed the data"
    );
}

#[test]
fn nbdinfo_map_reports_unwritten_ranges_as_holes() {
    require("nbdinfo");
    let server = ServerProcess::start();
    server.create_volume("sparse", "16MiB");
    qemu_io(&server.url("sparse"), &["write -P 1 4M 1M"]);
    assert_eq!(
        data_extents(&server.url("sparse"), 16 << 20),
        vec![(4 << 20, 1 << 20)],
        "only the written MiB is data"
    );
    let info = run_ok("nbdinfo", &[&server.url("sparse")]);
    assert!(info.contains("16777216"), "{info}");
}

#[test]
fn write_zeroes_with_no_hole_stays_allocated() {
    require("qemu-io");
    require("nbdinfo");
    let server = ServerProcess::start();
    server.create_volume("z", "16MiB");
    let url = server.url("z");
    qemu_io(&url, &["write -P 1 4M 1M", "write -P 2 12M 1M"]);
    // qemu's NBD client sets NBD_CMD_FLAG_NO_HOLE on `write -z` unless `-u` allows unmapping:
    // NO_HOLE over data and over a hole, then a zero that may punch a hole, over data.
    qemu_io(
        &url,
        &["write -z 4M 1M", "write -z 8M 1M", "write -z -u 12M 1M"],
    );
    assert_eq!(
        data_extents(&url, 16 << 20),
        vec![(4 << 20, 1 << 20), (8 << 20, 1 << 20)],
        "NO_HOLE ranges are data, the plain zero a hole"
    );
    qemu_io(
        &url,
        &["read -P 0 4M 1M", "read -P 0 8M 1M", "read -P 0 12M 1M"],
    );
}

#[test]
fn fio_verify_over_the_nbd_engine() {
    require("fio");
    let server = ServerProcess::start();
    server.create_volume("fio", "64MiB");
    let (host, port) = server.nbd.split_once(':').unwrap();
    let uri = format!("nbd://{host}:{port}/fio");
    let out = run_ok(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=32M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
            "--output-format=json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let job = &report["jobs"][0];
    assert_eq!(job["error"].as_u64(), Some(0), "{out}");
    assert!(job["write"]["io_bytes"].as_u64().unwrap() >= 32 << 20);
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= 32 << 20,
        "fio verified by reading back"
    );
}

#[test]
fn bad_io_gets_an_error_and_the_server_keeps_serving() {
    require("qemu-io");
    let server = ServerProcess::start();
    server.create_volume("v", "8MiB");
    server.cli_ok(&["snapshot", "create", "v@s"]);
    let out = run_err(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 0 4096", &server.url("v@s")],
    );
    assert!(
        out.to_lowercase().contains("permission")
            || out.contains("read-only")
            || out.contains("Operation not permitted"),
        "{out}"
    );
    let out = run_err(
        "qemu-io",
        &["-f", "raw", "-c", "read 8M 4096", &server.url("v")],
    );
    assert!(
        out.contains("Input/output error")
            || out.contains("out of range")
            || out.contains("Invalid argument")
            || out.contains("failed"),
        "{out}"
    );
    let out = run_err(
        "qemu-io",
        &["-f", "raw", "-c", "read 0 512", &server.url("nope")],
    );
    assert!(!out.is_empty());
    // Malformed bytes on the NBD port end only that connection.
    use std::io::{Read, Write};
    for junk in [&b"\x00\x01garbage"[..], b"", &[0xffu8; 300][..]] {
        let mut s = std::net::TcpStream::connect(&server.nbd).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        let _ = s.write_all(junk);
        drop(s);
    }
    qemu_io(&server.url("v"), &["write -P 7 0 4096", "read -P 7 0 4096"]);
}
