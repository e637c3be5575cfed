//! Taking a server out of a cluster moves its data away online: the volume migrates to a layout
//! without it while clients keep writing, every chunk ends up on its new replicas, and the
//! server leaves the cluster and drops its copy. A dead server is replaced the same way, its
//! chunks rebuilt from the surviving replicas; a server that dies while the data moves catches
//! up when it returns, and the move finishes after it.

use crate::harness::{blocking, connect, Group};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;
/// Chunks written in each test.
const CHUNKS: u64 = 32;
/// Bytes written at the start of each chunk.
const PIECE: usize = 16384;

/// The content of chunk `chunk` after its `version`th write.
fn content(chunk: u64, version: u64) -> Vec<u8> {
    let mut v = vec![((chunk * 7 + version * 13) as u8).wrapping_add(1); PIECE];
    v[..8].copy_from_slice(&version.to_le_bytes());
    v
}

/// Writes version 0 of every chunk through server `i`.
async fn fill(g: &Group, i: usize, volume: &'static str) {
    let addr = g.nbd(i);
    blocking(move || {
        let mut c = connect(&addr, volume);
        for chunk in 0..CHUNKS {
            assert_eq!(
                c.write(chunk * CHUNK, &content(chunk, 0), false).unwrap(),
                0
            );
        }
        assert_eq!(c.flush().unwrap(), 0);
        c.disconnect();
    })
    .await;
}

/// A writer's stop flag and count of acknowledged writes.
#[derive(Clone, Default)]
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
}

impl Writer {
    /// Waits until `n` more writes have been acknowledged.
    async fn wait_writes(&self, n: u64) {
        let target = self.written.load(Ordering::Relaxed) + n;
        while self.written.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Rewrites chunks round-robin through server `i` until stopped, each write acknowledged
/// before the next; returns the last version of each chunk.
fn keep_writing(addr: String, volume: &'static str, w: Writer) -> Vec<u64> {
    let mut c = connect(&addr, volume);
    let mut versions = vec![0u64; CHUNKS as usize];
    let mut n = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let chunk = n % CHUNKS;
        let version = versions[chunk as usize] + 1;
        let errno = c
            .write(chunk * CHUNK, &content(chunk, version), false)
            .unwrap();
        assert_eq!(
            errno, 0,
            "write {n} (chunk {chunk}) failed during the migration"
        );
        versions[chunk as usize] = version;
        n += 1;
        w.written.store(n, Ordering::Relaxed);
        if n.is_multiple_of(16) {
            assert_eq!(c.flush().unwrap(), 0, "flush during the migration");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(c.flush().unwrap(), 0);
    c.disconnect();
    versions
}

/// Reads every chunk through server `i` and checks it holds its last version.
async fn check_content(g: &Group, i: usize, volume: &'static str, versions: Vec<u64>) {
    let addr = g.nbd(i);
    blocking(move || {
        let mut c = connect(&addr, volume);
        for chunk in 0..CHUNKS {
            let got = c.read(chunk * CHUNK, PIECE as u32).unwrap().unwrap();
            let version = versions[chunk as usize];
            assert!(
                got == content(chunk, version),
                "chunk {chunk}: expected version {version}, read version {:?}",
                u64::from_le_bytes(got[..8].try_into().unwrap())
            );
        }
    })
    .await;
}

/// Starts removing server `name` from `default` through server 0; returns the job.
async fn remove(g: &Group, name: &str) -> Value {
    let path = format!("/v1/clusters/default/servers/{name}");
    let (status, body) = g.call(0, Method::DELETE, &path, None).await;
    assert_eq!(status, 202, "remove {name}: {body}");
    assert_eq!(body["kind"], "remove-server", "{body}");
    body
}

/// Waits until server `name` has left `default` (its data has moved away).
async fn wait_left(g: &Group, name: &str) -> Value {
    g.wait_for(0, "/v1/clusters/default", "the server leaves", |c| {
        !c["servers"].as_array().unwrap().iter().any(|s| s == name)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_server_moves_its_data_away_while_clients_write() {
    let g = Group::cluster(4).await;
    let vol = g.create_volume("mv", CHUNKS * CHUNK, 2).await;
    let id = vol["id"].as_str().unwrap().to_string();
    fill(&g, 0, "mv").await;
    let local = format!("/internal/v1/volumes/{id}/local");
    let used = |i: usize| {
        let (g, local) = (&g, &local);
        async move { g.get(i, local).await["used_bytes"].as_u64().unwrap() }
    };
    assert!(used(3).await > 0, "s4 holds chunks before it leaves");
    let snap = g
        .post(1, "/v1/volumes/mv/snapshots", json!({"name": "before"}))
        .await;
    assert_eq!(snap.0, 201, "{}", snap.1);

    let w = Writer::default();
    let writer = {
        let (addr, w) = (g.nbd(1), w.clone());
        tokio::task::spawn_blocking(move || keep_writing(addr, "mv", w))
    };
    w.wait_writes(CHUNKS).await;
    let job = remove(&g, "s4").await;
    let id = job["id"].as_str().unwrap().to_string();
    let started = g.get(2, "/v1/clusters/default").await;
    assert_eq!(started["leaving"], json!(["s4"]), "{started}");
    // The job is visible from every server while the data moves.
    let running = g.get(3, &format!("/v1/jobs/{id}")).await;
    assert_eq!(running["target"], "s4 from default", "{running}");
    // The data is already moving: a removal cannot be cancelled.
    let (status, body) = g
        .call(1, Method::DELETE, &format!("/v1/jobs/{id}"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    let moving = g.get(2, "/v1/volumes/mv").await;
    assert_eq!(
        moving["target_servers"],
        json!(["s1", "s2", "s3"]),
        "{moving}"
    );
    // A snapshot taken while the data moves is copied too.
    let snap = g
        .post(2, "/v1/volumes/mv/snapshots", json!({"name": "during"}))
        .await;
    assert_eq!(snap.0, 201, "{}", snap.1);
    // New volumes avoid a leaving server.
    let other = g.create_volume("other", 8 * MIB, 2).await;
    assert_eq!(other["servers"], json!(["s1", "s2", "s3"]), "{other}");
    w.wait_writes(CHUNKS).await;
    let left = wait_left(&g, "s4").await;
    assert!(left["leaving"].as_array().unwrap().is_empty(), "{left}");
    // The job ends when the server has left, having counted the chunk copies made.
    let ended = g.wait_job(1, &id).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let copies = ended["progress"]["total"].as_u64().unwrap();
    assert!(copies > 0, "{ended}");
    assert_eq!(ended["progress"]["done"], copies, "{ended}");
    w.wait_writes(CHUNKS).await;
    w.stop.store(true, Ordering::Relaxed);
    let versions = writer.await.expect("writer");

    let shown = g.wait_status(0, "mv", "healthy").await;
    assert_eq!(shown["servers"], json!(["s1", "s2", "s3"]), "{shown}");
    assert!(shown.get("target_servers").is_none(), "{shown}");
    check_content(&g, 2, "mv", versions).await;
    for target in ["mv", "mv@before", "mv@during"] {
        let report = g.verify(0, target, false).await;
        assert_eq!(report["chunks"], CHUNKS, "{target}: {report}");
        assert_eq!(report["mismatches"], json!([]), "{target}: {report}");
    }
    let addr = g.nbd(2);
    blocking(move || {
        let mut c = connect(&addr, "mv@before");
        for chunk in 0..CHUNKS {
            let got = c.read(chunk * CHUNK, PIECE as u32).unwrap().unwrap();
            assert!(got == content(chunk, 0), "snapshot chunk {chunk}");
        }
    })
    .await;
    // s4 dropped its copy once the others held every chunk.
    assert_eq!(used(3).await, 0, "s4 still holds data of the volume");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_server_is_replaced_by_rebuilding_its_chunks_on_the_others() {
    let mut g = Group::cluster(4).await;
    g.create_volume("rb", CHUNKS * CHUNK, 2).await;
    fill(&g, 0, "rb").await;
    let snap = g
        .post(1, "/v1/volumes/rb/snapshots", json!({"name": "old"}))
        .await;
    assert_eq!(snap.0, 201, "{}", snap.1);
    g.kill(3).await;
    // Writes go on without s4 (it becomes stale), then it is taken out for good.
    let w = Writer::default();
    let writer = {
        let (addr, w) = (g.nbd(0), w.clone());
        tokio::task::spawn_blocking(move || keep_writing(addr, "rb", w))
    };
    g.wait_status(1, "rb", "degraded").await;
    w.wait_writes(CHUNKS).await;
    remove(&g, "s4").await;
    wait_left(&g, "s4").await;
    w.wait_writes(CHUNKS).await;
    w.stop.store(true, Ordering::Relaxed);
    let versions = writer.await.expect("writer");

    let shown = g.wait_status(1, "rb", "healthy").await;
    assert_eq!(shown["servers"], json!(["s1", "s2", "s3"]), "{shown}");
    assert_eq!(shown["stale_servers"], json!([]), "{shown}");
    check_content(&g, 2, "rb", versions.clone()).await;
    for target in ["rb", "rb@old"] {
        let report = g.verify(1, target, false).await;
        assert_eq!(report["chunks"], CHUNKS, "{target}: {report}");
        assert_eq!(report["mismatches"], json!([]), "{target}: {report}");
    }
    // Every chunk has two copies again: killing any one more server loses nothing.
    g.kill(2).await;
    check_content(&g, 0, "rb", versions).await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_during_a_migration_catches_up_and_the_migration_finishes() {
    let mut g = Group::cluster(4).await;
    g.create_volume("kd", CHUNKS * CHUNK, 2).await;
    fill(&g, 0, "kd").await;
    let w = Writer::default();
    let writer = {
        let (addr, w) = (g.nbd(0), w.clone());
        tokio::task::spawn_blocking(move || keep_writing(addr, "kd", w))
    };
    w.wait_writes(CHUNKS).await;
    remove(&g, "s4").await;
    // s3 stays in the layout and gains chunks from s4; it dies while the data moves.
    g.kill(2).await;
    w.wait_writes(CHUNKS).await;
    // `degraded` as soon as s3 does not answer; stale once a write missed it.
    g.wait_for(0, "/v1/volumes/kd", "s3 stale", |v| {
        v["status"] == "degraded" && v["stale_servers"] == json!(["s3"])
    })
    .await;
    let cluster = g.get(0, "/v1/clusters/default").await;
    assert_eq!(
        cluster["leaving"],
        json!(["s4"]),
        "the move waits for s3: {cluster}"
    );
    g.restart(2).await;
    wait_left(&g, "s4").await;
    w.wait_writes(CHUNKS).await;
    w.stop.store(true, Ordering::Relaxed);
    let versions = writer.await.expect("writer");

    let shown = g.wait_status(0, "kd", "healthy").await;
    assert_eq!(shown["servers"], json!(["s1", "s2", "s3"]), "{shown}");
    check_content(&g, 2, "kd", versions).await;
    let report = g.verify(1, "kd", false).await;
    assert_eq!(report["chunks"], CHUNKS, "{report}");
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_whose_runner_dies_is_taken_up_by_the_new_leader() {
    let mut g = Group::cluster(4).await;
    g.create_volume("tu", CHUNKS * CHUNK, 2).await;
    fill(&g, 0, "tu").await;
    let managers = g.get(0, "/v1/managers").await;
    let name = crate::harness::leader(&managers).unwrap();
    let first: usize = name.trim_start_matches('s').parse::<usize>().unwrap() - 1;
    let path = "/v1/clusters/default/servers/s4";
    let (status, job) = g.call(first, Method::DELETE, path, None).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["runner"], name.as_str(), "the leader runs it: {job}");
    let id = job["id"].as_str().unwrap().to_string();
    // The runner (a holder of the volume, too) dies while the data moves.
    g.kill(first).await;
    let other = (first + 1) % 3;
    let taken = g
        .wait_for(other, &format!("/v1/jobs/{id}"), "another runner", |j| {
            j["runner"] != name.as_str()
        })
        .await;
    assert_eq!(taken["state"], "running", "{taken}");
    // Back again, the move finishes and so does the job, with no error.
    g.restart(first).await;
    wait_left(&g, "s4").await;
    let ended = g.wait_job(other, &id).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert!(ended.get("error").is_none(), "{ended}");
    g.stop().await;
}
