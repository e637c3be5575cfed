//! Real NBD clients against the in-memory server: qemu-io, qemu-img, nbdinfo and nbdcopy.
//! Each test prints a note and passes if its binary is not installed.

use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::process::Command;

use crate::client::start;
use crate::memdev::{MemDevice, MemExports};

const SIZE: u64 = 16 << 20;

fn have(binary: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()));
    if !found {
        println!("note: {binary} not installed; skipping");
    }
    found
}

async fn run(binary: &str, args: &[&str]) -> Output {
    let out = Command::new(binary)
        .args(args)
        .output()
        .await
        .expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{binary} {args:?} failed: {text}");
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("strata-nbd-{tag}-{}-{n}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_and_qemu_img() {
    if !have("qemu-io") {
        return;
    }
    let dev = MemDevice::new(SIZE, false);
    let server = start(MemExports::with(&[("vol", dev.clone())])).await;
    let url = format!("nbd://{}/vol", server.addr);
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &url,
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 1M 4k",
            "-c",
            "flush",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0xcd 1M 4k",
            "-c",
            "write -z 2M 64k",
            "-c",
            "discard 4M 1M",
            "-c",
            "aio_write -P 0x11 8M 4k",
            "-c",
            "aio_write -P 0x22 9M 4k",
            "-c",
            "aio_flush",
            "-c",
            "read -P 0x22 9M 4k",
        ],
    )
    .await;
    let log = text(&out);
    assert!(!log.contains("failed") && !log.contains("error"), "{log}");
    let contents = dev.contents();
    assert!(contents[..1 << 20].iter().all(|b| *b == 0xab));
    assert!(contents[(1 << 20)..(1 << 20) + 4096]
        .iter()
        .all(|b| *b == 0xcd));
    assert!(contents[8 << 20..(8 << 20) + 4096]
        .iter()
        .all(|b| *b == 0x11));
    // Reads past the end fail cleanly.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &url, "-c", "read 16M 4k"])
        .output()
        .await
        .expect("spawn");
    assert!(
        text(&out).contains("nput/output error")
            || text(&out).contains("nvalid argument")
            || text(&out).contains("out of range")
            || text(&out).contains("Request"),
        "{}",
        text(&out)
    );
    if have("qemu-img") {
        let out = run("qemu-img", &["info", "--output=json", &url]).await;
        assert!(
            text(&out).contains("\"virtual-size\": 16777216"),
            "{}",
            text(&out)
        );
        let out = run("qemu-img", &["map", "--output=json", "-f", "raw", &url]).await;
        assert!(
            text(&out).contains("\"data\": true") && text(&out).contains("\"data\": false"),
            "{}",
            text(&out)
        );
    }
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_and_nbdcopy() {
    if !have("nbdinfo") {
        return;
    }
    let dev = MemDevice::new(SIZE, false);
    let ro = MemDevice::new(1 << 20, true);
    let server = start(MemExports::with(&[("vol", dev.clone()), ("snap", ro)])).await;
    let url = format!("nbd://{}/vol", server.addr);
    let info = text(&run("nbdinfo", &[&url]).await);
    assert!(info.contains("export-size: 16777216"), "{info}");
    assert!(
        info.contains("can_multi_conn: true") && info.contains("base:allocation"),
        "{info}"
    );
    let list = text(&run("nbdinfo", &["--list", &format!("nbd://{}", server.addr)]).await);
    assert!(
        list.contains("export=\"vol\"") && list.contains("export=\"snap\""),
        "{list}"
    );
    let ro_info = text(&run("nbdinfo", &[&format!("nbd://{}/snap", server.addr)]).await);
    assert!(ro_info.contains("is_read_only: true"), "{ro_info}");
    if !have("nbdcopy") {
        return;
    }
    let src = temp_path("src");
    let data: Vec<u8> = (0..SIZE / 2).map(|i| (i % 251) as u8).collect();
    std::fs::write(
        &src,
        [&data[..], &vec![0u8; (SIZE / 2) as usize][..]].concat(),
    )
    .expect("write src");
    run("nbdcopy", &[src.to_str().expect("utf8"), &url]).await;
    assert_eq!(&dev.contents()[..data.len()], &data[..]);
    let map = text(&run("nbdinfo", &["--map", &url]).await);
    assert!(map.contains("data") && map.contains("hole"), "{map}");
    let dst = temp_path("dst");
    run("nbdcopy", &[&url, dst.to_str().expect("utf8")]).await;
    assert_eq!(std::fs::read(&dst).expect("read dst"), dev.contents());
    let _ = std::fs::remove_file(src);
    let _ = std::fs::remove_file(dst);
    server.shutdown.cancel();
}
