//! `strata dev`, the README's first command: it starts, makes the `demo` volume, prints how to
//! connect, serves real clients, stops on SIGTERM, and keeps its data for the next start.

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::{run_ok, strata_bin};

/// A port `p` such that `p..p+count` are all free right now: `strata dev` uses consecutive
/// ports for its three servers (API and peer: `p..p+6`; NBD: `p..p+3`).
fn free_ports(count: u16) -> u16 {
    loop {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Some(last) = base.checked_add(count) else {
            continue;
        };
        let held: Vec<_> = (base..last)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == count as usize {
            return base;
        }
    }
}

/// Runs `strata dev` until it has printed its instructions; returns the child and what it printed.
fn start_dev(dir: &std::path::Path, api: u16, nbd: u16) -> (std::process::Child, String) {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let mut child = Command::new(strata_bin())
        .args(["--api", &format!("127.0.0.1:{api}"), "dev", "--dir"])
        .arg(dir)
        .args(["--nbd", &format!("127.0.0.1:{nbd}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.contains("curl") {
                let _ = tx.send(text.clone());
            }
        }
    });
    let printed = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
            panic!("strata dev did not print its instructions within 60 s; its log:\n{log}")
        });
    (child, printed)
}

fn stop(mut child: std::process::Child) {
    let pid = child.id().to_string();
    run_ok("kill", &["-TERM", &pid]);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "strata dev exits cleanly on SIGTERM: {status}"
    );
}

#[test]
fn strata_dev_serves_the_demo_volume_and_keeps_it() {
    support::require("qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("strata-dev");
    let base = free_ports(9);
    let (api, nbd) = (base, base + 6);
    let url = format!("nbd://127.0.0.1:{nbd}/demo");

    let (child, printed) = start_dev(&dir, api, nbd);
    assert!(printed.contains(&url), "{printed}");
    assert!(
        printed.contains("qemu-io") && printed.contains("nbdcopy"),
        "{printed}"
    );
    let out = run_ok("qemu-io", &["-f", "raw", "-c", "write -P 0xab 0 1M", &url]);
    assert!(out.contains("wrote 1048576/1048576"), "{out}");
    stop(child);

    let (child, _) = start_dev(&dir, api, nbd);
    let out = run_ok("qemu-io", &["-f", "raw", "-c", "read -P 0xab 0 1M", &url]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let volumes = Command::new(strata_bin())
        .args([
            "--api",
            &format!("http://127.0.0.1:{api}"),
            "--output",
            "json",
            "volume",
            "list",
        ])
        .output()
        .unwrap();
    let volumes: serde_json::Value = serde_json::from_slice(&volumes.stdout).unwrap();
    assert_eq!(
        volumes.as_array().unwrap().len(),
        1,
        "one demo volume, not two: {volumes}"
    );
    assert_eq!(volumes[0]["size"], 1u64 << 30);
    block_status_through_one_gateway_covers_every_server(&url);
    // Taking a server out moves its chunks to the other two; the command waits for it.
    let cli = |args: &[&str]| {
        let api = format!("http://127.0.0.1:{api}");
        let mut all = vec!["--api", api.as_str(), "--output", "json"];
        all.extend_from_slice(args);
        let out = Command::new(strata_bin()).args(&all).output().unwrap();
        assert!(
            out.status.success(),
            "strata {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let cluster = cli(&["cluster", "remove-server", "default", "dev-3"]);
    assert_eq!(
        cluster["servers"],
        serde_json::json!(["dev-1", "dev-2"]),
        "{cluster}"
    );
    let demo = cli(&["volume", "show", "demo"]);
    assert_eq!(
        demo["servers"],
        serde_json::json!(["dev-1", "dev-2"]),
        "{demo}"
    );
    let out = run_ok("qemu-io", &["-f", "raw", "-c", "read -P 0xab 0 1M", &url]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let report = cli(&["volume", "verify", "demo"]);
    assert_eq!(report["mismatches"], serde_json::json!([]), "{report}");
    stop(child);
}

/// Block status through one server reports data exactly where it was written, also in chunks
/// that only the other servers hold (replicas=2 of 3: a third of the chunks are elsewhere).
fn block_status_through_one_gateway_covers_every_server(url: &str) {
    support::require("nbdinfo");
    const MIB: u64 = 1 << 20;
    let chunks = 8..40u64;
    let mut args = vec!["-f".to_string(), "raw".to_string()];
    for c in chunks.clone() {
        args.push("-c".into());
        args.push(format!("write -P 0x5a {} 64k", c * 4 * MIB + MIB));
    }
    args.push(url.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok("qemu-io", &args);
    let mut written = vec![(0, MIB)];
    written.extend(chunks.map(|c| (c * 4 * MIB + MIB, 64 << 10)));
    assert_eq!(
        support::data_extents(url, 1 << 30),
        written,
        "only what was written is data"
    );
}
