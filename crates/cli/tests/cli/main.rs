//! The `strata` CLI against a real server: every client command, JSON output, and clean one-line
//! errors with a non-zero exit for bad names, sizes and requests — after which the server still
//! serves. Also the raw NBD protocol errors a real client never sends.

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

use serde_json::Value;
use support::nbd_client::NbdClient;
use support::ServerProcess;

fn json(server: &ServerProcess, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&server.cli_ok(&all)).expect("JSON output")
}

fn fails_with(server: &ServerProcess, args: &[&str], needle: &str) {
    let out = server.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "strata {args:?} should fail");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(needle),
        "strata {args:?}: expected {needle:?} in {stderr}"
    );
}

/// Runs `strata args` until it succeeds, for at most 5 s: a client that just disconnected is
/// listed as open until the server has seen its connection close.
fn eventually_ok(server: &ServerProcess, args: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = server.cli(args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "strata {args:?} kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn deletes_are_refused_while_clients_use_them_or_snapshots_would_go_too() {
    let server = ServerProcess::start();
    server.create_volume("g", "64MiB");
    let mut writer = NbdClient::connect(&server.nbd, "g").unwrap();
    assert_eq!(writer.write(0, &[7u8; 4096], true).unwrap(), 0);
    server.cli_ok(&["snapshot", "create", "g@s"]);
    // Before, the delete took the snapshot along and the writer's next write got EIO.
    fails_with(&server, &["volume", "delete", "g"], "1 snapshot(s) (s)");
    fails_with(
        &server,
        &["volume", "delete", "g", "--with-snapshots"],
        "open by 1 client(s): 127.0.0.1:",
    );
    // A snapshot being read is not pulled from under its reader either.
    let mut reader = NbdClient::connect(&server.nbd, "g@s").unwrap();
    fails_with(&server, &["snapshot", "delete", "g@s"], "--force");
    assert_eq!(reader.read(0, 4096).unwrap().unwrap(), vec![7u8; 4096]);
    assert_eq!(writer.write(4096, &[8u8; 4096], false).unwrap(), 0);
    reader.disconnect();
    eventually_ok(&server, &["snapshot", "delete", "g@s"]);
    // Forced: the volume goes although the writer is still connected.
    server.cli_ok(&["volume", "delete", "g", "--force"]);
    assert!(json(&server, &["volume", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    assert_ne!(writer.write(0, &[9u8; 4096], false).unwrap(), 0);
}

#[test]
fn managers_servers_and_clusters_of_a_one_server_group() {
    let server = ServerProcess::start();
    let managers = json(&server, &["manager", "list"]);
    let managers = managers.as_array().unwrap();
    assert_eq!(managers.len(), 1, "{managers:?}");
    assert!(managers[0]["name"].is_string());
    assert_eq!(managers[0]["leader"], Value::Bool(true));
    assert_eq!(managers[0]["state"], "up");
    let table = server.cli_ok(&["manager", "list"]);
    assert!(table.contains("leader"), "{table}");
    let servers = json(&server, &["server", "list"]);
    assert_eq!(servers[0]["state"], "up");
    assert_eq!(servers[0]["manager"], "leader");
    assert_eq!(servers[0]["cluster"], "default");
    let name = servers[0]["name"].as_str().unwrap().to_string();
    fails_with(&server, &["manager", "add", "ghost"], "no server named");
    fails_with(&server, &["manager", "remove", &name], "1, 3 or 5");
    let c = json(&server, &["cluster", "create", "c1", "--servers", &name]);
    assert_eq!(c["servers"][0], name.as_str());
    server.cli_ok(&[
        "volume",
        "create",
        "cv",
        "--size",
        "1MiB",
        "--cluster",
        "c1",
    ]);
    fails_with(
        &server,
        &["cluster", "remove-server", "c1", &name],
        "would be left with 0 server(s)",
    );
    assert!(server.cli_ok(&["cluster", "show", "c1"]).contains("cv"));
    let clusters = json(&server, &["cluster", "list"]);
    assert_eq!(clusters[0]["name"], "c1");
    assert_eq!(clusters[1]["servers"], serde_json::json!([]));
}

#[test]
fn volume_and_snapshot_lifecycle() {
    let server = ServerProcess::start();
    let servers = json(&server, &["server", "list"]);
    assert_eq!(servers.as_array().unwrap().len(), 1);
    assert_eq!(servers[0]["state"], "up");
    assert_eq!(servers[0]["manager"], "leader");
    assert_eq!(servers[0]["cluster"], "default");

    let v = json(&server, &["volume", "create", "web", "--size", "1GiB"]);
    assert_eq!(v["size"], 1u64 << 30);
    assert_eq!(v["cluster"], "default");
    // One server: one copy unless told otherwise, as `--help` says.
    assert_eq!(v["replicas"], 1);
    let help = server.cli_ok(&["volume", "create", "--help"]);
    assert!(
        help.contains("default: 2 when the cluster has at least 2 servers"),
        "{help}"
    );
    // Global flags go after the command words too.
    let listed: Value =
        serde_json::from_str(&server.cli_ok(&["volume", "list", "--output", "json"])).unwrap();
    assert_eq!(listed[0]["name"], "web");
    assert!(server.cli_ok(&["volume", "list"]).contains("web"));

    let w = NbdClient::connect(&server.nbd, "web").unwrap();
    assert_eq!(w.size, 1 << 30);
    let mut w = w;
    assert_eq!(w.write(0, &[1u8; 8192], true).unwrap(), 0);
    let shown = json(&server, &["volume", "show", "web"]);
    assert_eq!(shown["used_logical_bytes"], 8192, "{shown}");
    assert!(shown["used_raw_bytes"].as_u64().unwrap() >= 8192, "{shown}");
    let table = server.cli_ok(&["volume", "list"]);
    assert!(table.contains("USED") && table.contains("RAW"), "{table}");
    let s = json(&server, &["snapshot", "create", "web@a"]);
    assert_eq!(s["export"], "web@a");
    assert_eq!(w.write(1 << 20, &[2u8; 4096], true).unwrap(), 0);
    assert_eq!(w.write(0, &[3u8; 4096], true).unwrap(), 0);
    json(&server, &["snapshot", "create", "web@b"]);
    let auto = json(&server, &["snapshot", "create", "web"]);
    assert!(auto["name"].as_str().unwrap().starts_with("snap-"));

    let diff = json(&server, &["snapshot", "diff", "web@a", "web@b"]);
    assert_eq!(diff["changed_bytes"], 8192);
    assert_eq!(diff["ranges"].as_array().unwrap().len(), 2);
    let text = server.cli_ok(&["snapshot", "diff", "web@a"]);
    assert!(text.contains("8KiB changed in 2 ranges"), "{text}");

    let snaps = json(&server, &["snapshot", "list", "web"]);
    assert_eq!(snaps.as_array().unwrap().len(), 3);
    server.cli_ok(&["snapshot", "delete", "web@a"]);
    let snaps = json(&server, &["snapshot", "list", "web"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    // Deleting the older snapshot merged its blocks up: web@b still reads them.
    let mut b = NbdClient::connect(&server.nbd, "web@b").unwrap();
    assert_eq!(b.read(4096, 4096).unwrap().unwrap(), vec![1u8; 4096]);
    assert_eq!(b.read(0, 4096).unwrap().unwrap(), vec![3u8; 4096]);
    b.disconnect();
    assert!(NbdClient::connect(&server.nbd, "web@a").is_err());

    let grown = json(&server, &["volume", "resize", "web", "--size", "2GiB"]);
    assert_eq!(grown["size"], 2u64 << 30);
    assert_eq!(
        NbdClient::connect(&server.nbd, "web").unwrap().size,
        2 << 30
    );
    let show = server.cli_ok(&["volume", "show", "web"]);
    assert!(
        show.contains("2GiB") && show.contains("snapshots:"),
        "{show}"
    );

    fails_with(&server, &["volume", "delete", "web"], "--with-snapshots");
    // The writer of the start is still connected: named, and the delete refused.
    fails_with(
        &server,
        &["volume", "delete", "web", "--with-snapshots"],
        "open by 1 client(s)",
    );
    w.disconnect();
    eventually_ok(&server, &["volume", "delete", "web", "--with-snapshots"]);
    assert!(json(&server, &["volume", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(NbdClient::connect(&server.nbd, "web").is_err());
}

#[test]
fn bad_requests_get_one_line_errors_and_the_server_keeps_serving() {
    let server = ServerProcess::start();
    server.create_volume("ok", "16MiB");
    fails_with(
        &server,
        &["volume", "create", "bad name", "--size", "1GiB"],
        "invalid volume name",
    );
    fails_with(
        &server,
        &["volume", "create", &"x".repeat(65), "--size", "1GiB"],
        "limit is 64",
    );
    fails_with(
        &server,
        &["volume", "create", "v", "--size", "ten gigs"],
        "not a size",
    );
    fails_with(
        &server,
        &["volume", "create", "v", "--size", "1000"],
        "multiple of 512",
    );
    fails_with(
        &server,
        &["volume", "create", "v", "--size", "0"],
        "multiple of 512",
    );
    fails_with(
        &server,
        &["volume", "create", "ok", "--size", "1GiB"],
        "already exists",
    );
    fails_with(
        &server,
        &["volume", "create", "v", "--size", "1GiB", "--replicas", "4"],
        "replicas",
    );
    fails_with(
        &server,
        &[
            "volume",
            "create",
            "v",
            "--size",
            "1GiB",
            "--cluster",
            "nowhere",
        ],
        "nowhere",
    );
    fails_with(&server, &["volume", "show", "missing"], "no volume named");
    fails_with(
        &server,
        &["volume", "resize", "ok", "--size", "8MiB"],
        "shrink",
    );
    fails_with(
        &server,
        &["snapshot", "create", "ok@bad@name"],
        "invalid snapshot name",
    );
    fails_with(&server, &["snapshot", "delete", "ok"], "VOLUME@SNAPSHOT");
    fails_with(&server, &["snapshot", "delete", "ok@none"], "none");
    server.cli_ok(&["snapshot", "create", "ok@s"]);
    fails_with(
        &server,
        &["snapshot", "create", "ok@s"],
        "already has a snapshot",
    );
    fails_with(&server, &["snapshot", "diff", "ok@none"], "no snapshot");
    let unreachable = std::process::Command::new(support::strata_bin())
        .args(["--api", "http://127.0.0.1:1", "volume", "list"])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the Strata API"));
    // Still serving.
    assert_eq!(
        json(&server, &["volume", "list"]).as_array().unwrap().len(),
        1
    );
}

#[test]
fn nbd_protocol_errors_map_to_errnos_and_the_connection_keeps_serving() {
    const EPERM: u32 = 1;
    const EINVAL: u32 = 22;
    const ENOSPC: u32 = 28;
    let server = ServerProcess::start();
    server.create_volume("v", "1MiB");
    server.cli_ok(&["snapshot", "create", "v@s"]);
    let mut c = NbdClient::connect(&server.nbd, "v").unwrap();
    assert_eq!(c.read(1 << 20, 4096).unwrap(), Err(EINVAL));
    assert_eq!(c.read(u64::MAX - 100, 4096).unwrap(), Err(EINVAL));
    // Writes past the end get ENOSPC, as the NBD protocol asks (and qemu-nbd does).
    assert_eq!(
        c.write((1 << 20) - 512, &[1u8; 1024], false).unwrap(),
        ENOSPC
    );
    assert_eq!(c.write(512, &[9u8; 1024], true).unwrap(), 0);
    assert_eq!(c.read(0, 2048).unwrap().unwrap()[512..1536], [9u8; 1024]);
    let mut s = NbdClient::connect(&server.nbd, "v@s").unwrap();
    assert_ne!(s.flags & 2, 0, "snapshot exports are read-only");
    assert_eq!(s.write(0, &[1u8; 4096], false).unwrap(), EPERM);
    assert_eq!(s.read(0, 4096).unwrap().unwrap(), vec![0u8; 4096]);
    assert!(NbdClient::connect(&server.nbd, "v@nope").is_err());
    assert!(NbdClient::connect(&server.nbd, "nope").is_err());
    assert_eq!(c.flush().unwrap(), 0);
}

#[test]
fn api_serves_openapi_health_and_metrics() {
    let server = ServerProcess::start();
    server.create_volume("m", "4MiB");
    let mut c = NbdClient::connect(&server.nbd, "m").unwrap();
    assert_eq!(c.write(0, &[5u8; 4096], true).unwrap(), 0);
    c.read(0, 4096).unwrap().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let get = |path: &str| {
        runtime.block_on(async {
            let r = reqwest::get(format!("{}{path}", server.api)).await.unwrap();
            assert!(r.status().is_success(), "GET {path}: {}", r.status());
            r.text().await.unwrap()
        })
    };
    let doc: Value = serde_json::from_str(&get("/v1/openapi.json")).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/volumes",
        "/v1/volumes/{name}/snapshots",
        "/v1/servers",
        "/v1/volumes/{name}/diff",
        "/v1/jobs",
        "/v1/jobs/{id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    // Verify answers with a job (202), whose types are described.
    let verify = &doc["paths"]["/v1/volumes/{name}/verify"]["post"]["responses"];
    assert!(verify.get("202").is_some(), "{verify}");
    for schema in ["JobInfo", "JobState", "JobProgress", "VerifyReport"] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema} documented"
        );
    }
    assert!(get("/healthz").contains("ok"));
    let metrics = get("/metrics");
    for needle in [
        "strata_nbd_ops_total{volume=\"m\",op=\"write\"} 1",
        "strata_nbd_bytes_total{volume=\"m\",op=\"read\"} 4096",
        "strata_nbd_latency_seconds_bucket{volume=\"m\",op=\"write\"",
        "strata_volume_snapshots{volume=\"m\"} 0",
        "strata_store_data_bytes",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
}

#[test]
fn snapshots_under_writes_hold_a_prefix_of_acknowledged_writes() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const WRITES: u64 = 3000;
    let server = ServerProcess::start();
    server.create_volume("seq", "16MiB");
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (nbd, acked) = (server.nbd.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut c = NbdClient::connect(&nbd, "seq").unwrap();
            for n in 0..WRITES {
                let mut block = vec![0u8; 4096];
                block[..8].copy_from_slice(&(n + 1).to_le_bytes());
                assert_eq!(c.write(n * 4096, &block, false).unwrap(), 0);
                acked.store(n + 1, Ordering::SeqCst);
            }
        })
    };
    // Snapshots race with the writer, and with each other.
    let mut takers = Vec::new();
    for t in 0..2 {
        let (api, acked) = (server.api.clone(), acked.clone());
        takers.push(std::thread::spawn(move || {
            let mut taken = Vec::new();
            for i in 0..8 {
                let before = acked.load(Ordering::SeqCst);
                let name = format!("t{t}-{i}");
                let out = std::process::Command::new(support::strata_bin())
                    .args(["--api", &api, "snapshot", "create", &format!("seq@{name}")])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                taken.push((name, before));
                std::thread::sleep(std::time::Duration::from_millis(15));
            }
            taken
        }));
    }
    let taken: Vec<_> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    writer.join().unwrap();
    for (name, acked_before) in taken {
        let mut s = NbdClient::connect(&server.nbd, &format!("seq@{name}")).unwrap();
        let image = s.read(0, (WRITES * 4096) as u32).unwrap().unwrap();
        let present: Vec<bool> = (0..WRITES)
            .map(|n| {
                let at = (n * 4096) as usize;
                let v = u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
                assert!(v == 0 || v == n + 1, "snapshot {name}: block {n} holds {v}");
                v != 0
            })
            .collect();
        let prefix = present.iter().take_while(|p| **p).count() as u64;
        assert!(
            present[prefix as usize..].iter().all(|p| !p),
            "snapshot {name} holds write {} without an earlier one",
            prefix + 1
        );
        assert!(
            prefix >= acked_before,
            "snapshot {name} lacks writes acknowledged before it was requested ({prefix} < {acked_before})"
        );
    }
}

#[test]
fn verify_is_a_job_the_cli_waits_for_or_leaves_running() {
    let server = ServerProcess::start();
    // 8 TiB: ext4 holds files of at most 16 TiB, and larger volumes are refused there.
    server.create_volume("big", "8TiB");
    let mut c = NbdClient::connect(&server.nbd, "big").unwrap();
    assert_eq!(c.write(0, &[5u8; 65536], true).unwrap(), 0);
    c.disconnect();
    // Waits for the job and prints its report as the synchronous verify did; before, an
    // empty 1 PiB volume ran into the client's 60 s timeout (it read every chunk).
    let started = std::time::Instant::now();
    let text = server.cli_ok(&["volume", "verify", "big"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text.contains(
            "big: 2097152 chunk(s) compared (2097151 held no data on any replica), 0 differ"
        ),
        "{text}"
    );
    // `--no-wait` prints the job id alone; `job show`, `volume show` and `job wait` know it.
    let out = server.cli_ok(&[
        "volume",
        "verify",
        "big",
        "--no-wait",
        "--max-rate",
        "2MiB/s",
    ]);
    let id = out.trim().to_string();
    assert_eq!(out, format!("{id}\n"));
    let shown = json(&server, &["job", "show", &id]);
    assert_eq!(shown["id"], id.as_str(), "{shown}");
    assert_eq!(shown["kind"], "verify", "{shown}");
    assert_eq!(shown["state"], "running", "{shown}");
    let volume = server.cli_ok(&["volume", "show", "big"]);
    assert!(volume.contains("job:       verify "), "{volume}");
    assert!(volume.contains(&format!("(id {id})")), "{volume}");
    let waited = server.cli_ok(&["job", "wait", &id]);
    assert!(waited.contains("0 differ"), "{waited}");
    let jobs = json(&server, &["job", "list"]);
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");
    assert_eq!(jobs[0]["id"], id.as_str(), "newest first: {jobs}");
    assert_eq!(jobs[0]["state"], "succeeded", "{jobs}");
    assert_eq!(jobs[0]["progress"]["done"], 1, "{jobs}");
    let table = server.cli_ok(&["job", "list"]);
    assert!(table.contains("succeeded"), "{table}");
    fails_with(&server, &["job", "show", "nope"], "not a job id");
    fails_with(
        &server,
        &["volume", "verify", "big", "--max-rate", "0"],
        "rate of 0",
    );
    // A verify that has ended cannot be cancelled.
    fails_with(&server, &["job", "cancel", &id], "already ended");
}
