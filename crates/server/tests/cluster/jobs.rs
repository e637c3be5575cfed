//! Jobs: verify runs as a job that any server shows, with progress while it runs; an empty
//! huge volume is verified without reading it; a job can be cancelled; and a job whose server
//! dies does not stay `running`.

use crate::harness::{blocking, connect, leader, Group};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;

fn index(name: &str) -> usize {
    name.trim_start_matches('s')
        .parse::<usize>()
        .expect("server name")
        - 1
}

/// Writes 64 KiB at the start of each chunk in `chunks` of `volume` through `addr`.
async fn write_chunks(addr: String, volume: &'static str, chunks: Vec<u64>) {
    blocking(move || {
        let mut c = connect(&addr, volume);
        for chunk in chunks {
            let data = vec![(chunk % 251) as u8 + 1; 65536];
            assert_eq!(c.write(chunk * CHUNK, &data, false).unwrap(), 0);
        }
        assert_eq!(c.flush().unwrap(), 0);
    })
    .await;
}

/// Waits up to `limit` until job `id`, asked through server `i`, satisfies `ok`.
async fn wait_job_until(
    g: &Group,
    i: usize,
    id: &str,
    limit: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, job) = g
            .call(i, Method::GET, &format!("/v1/jobs/{id}"), None)
            .await;
        if status == 200 && ok(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id}: still {status} {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_of_a_large_empty_volume_is_a_quick_job() {
    let g = Group::cluster(3).await;
    // 8 TiB: ext4 holds files of at most 16 TiB, and larger volumes are refused there.
    g.create_volume("huge", 1 << 43, 2).await;
    // A little data, far apart: only those chunks are read.
    let far = (1u64 << 42) / CHUNK;
    write_chunks(g.nbd(0), "huge", vec![0, 1, far]).await;
    let start = Instant::now();
    let job = g.start_verify(1, "huge", false, None).await;
    assert_eq!(job["kind"], "verify", "{job}");
    assert_eq!(job["target"], "huge", "{job}");
    let id = job["id"].as_str().unwrap();
    let done = g.wait_job(2, id).await;
    let took = start.elapsed();
    // Before: a synchronous request that read every chunk, cut off by the CLI after 60 s.
    assert!(took < Duration::from_secs(15), "verify took {took:?}");
    assert_eq!(done["state"], "succeeded", "{done}");
    let ran = done["ended_unix_ms"].as_u64().unwrap() - done["started_unix_ms"].as_u64().unwrap();
    eprintln!("verify of an 8 TiB volume with 3 chunks written: job ran {ran} ms, {took:?} in all");
    let report = &done["report"];
    assert_eq!(report["chunks"], (1u64 << 43) / CHUNK, "{report}");
    assert_eq!(
        report["unallocated_chunks"],
        (1u64 << 43) / CHUNK - 3,
        "{report}"
    );
    assert_eq!(report["mismatches"], json!([]), "{report}");
    assert_eq!(done["progress"]["done"], 3, "{done}");
    assert_eq!(done["progress"]["total"], 3, "{done}");
    // `volume show` reports the volume's last job.
    let shown = g.get(0, "/v1/volumes/huge").await;
    assert_eq!(shown["job"]["id"], id, "{shown}");
    assert_eq!(shown["job"]["state"], "succeeded", "{shown}");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verify_job_shows_progress_and_can_be_cancelled() {
    let g = Group::cluster(3).await;
    g.create_volume("slow", 64 * MIB, 2).await;
    write_chunks(g.nbd(0), "slow", (0..16).collect()).await;
    // 64 MiB at 16 MiB/s: about 4 s.
    let job = g.start_verify(0, "slow", false, Some(16 * MIB)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let running = wait_job_until(&g, 1, &id, Duration::from_secs(10), |j| {
        let p = &j["progress"];
        j["state"] == "running" && p["done"].as_u64() > Some(0) && p["done"] != p["total"]
    })
    .await;
    assert_eq!(running["progress"]["total"], 16, "{running}");
    assert_eq!(running["progress"]["unit"], "chunks", "{running}");
    let shown = g.get(2, "/v1/volumes/slow").await;
    assert_eq!(shown["job"]["id"], id.as_str(), "{shown}");
    assert_eq!(shown["job"]["state"], "running", "{shown}");
    // A second verify of the same volume waits for the first.
    let (status, body) = g
        .post(1, "/v1/volumes/slow/verify", json!({"repair": true}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(id.as_str()),
        "{body}"
    );
    let done = g.wait_job(1, &id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"]["done"], 16, "{done}");
    assert_eq!(done["progress"]["bytes"], 64 * MIB, "{done}");
    assert_eq!(done["report"]["mismatches"], json!([]), "{done}");

    // Cancelled: it ends at once and its runner stops working on it.
    let job = g.start_verify(2, "slow", false, Some(MIB)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let runner = index(job["runner"].as_str().unwrap());
    let (status, cancelled) = g
        .call(1, Method::DELETE, &format!("/v1/jobs/{id}"), None)
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    g.wait_for(runner, "/internal/v1/jobs", "the runner stops", |ids| {
        ids.as_array().is_some_and(|ids| ids.is_empty())
    })
    .await;
    let jobs = g.get(0, "/v1/jobs").await;
    assert_eq!(jobs[0]["id"], id.as_str(), "newest first: {jobs}");
    assert_eq!(jobs[0]["state"], "cancelled", "{jobs}");

    // A volume deleted under its verify fails the job rather than report its chunks missing.
    let job = g.start_verify(0, "slow", false, Some(16 * MIB)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let (status, body) = g.call(1, Method::DELETE, "/v1/volumes/slow", None).await;
    assert_eq!(status, 204, "{body}");
    let ended = g.wait_job(2, &id).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(
        ended["error"].as_str().unwrap().contains("deleted"),
        "{ended}"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_server_dies_does_not_stay_running() {
    let mut g = Group::cluster(3).await;
    g.create_volume("orphan", 64 * MIB, 2).await;
    write_chunks(g.nbd(0), "orphan", (0..16).collect()).await;
    // Jobs run on the leader (requests are forwarded to it); 1 MiB/s takes about a minute.
    let first = index(&leader(&g.get(0, "/v1/managers").await).unwrap());
    let job = g.start_verify(first, "orphan", false, Some(MIB)).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(index(job["runner"].as_str().unwrap()), first, "{job}");
    let other = (first + 1) % 3;
    wait_job_until(&g, other, &id, Duration::from_secs(10), |j| {
        j["progress"]["done"].as_u64() > Some(0)
    })
    .await;
    g.kill(first).await;
    // A new leader notices that the runner is gone, within the runner timeout (10 s) plus an
    // election and a check.
    let failed = wait_job_until(&g, other, &id, Duration::from_secs(40), |j| {
        j["state"] != "running"
    })
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("interrupted"),
        "{failed}"
    );
    // Back again, it does not take the job up, and a new verify can start.
    g.restart(first).await;
    g.wait_for(first, "/v1/managers", "all managers up", |m| {
        m.as_array()
            .is_some_and(|m| m.iter().filter(|m| m["state"] == "up").count() == 3)
    })
    .await;
    let report = g.verify(first, "orphan", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    let again = g.get(first, &format!("/v1/jobs/{id}")).await;
    assert_eq!(again["state"], "failed", "{again}");

    // A runner that restarts quickly is noticed too: it answers, without the job.
    let second = index(&leader(&g.get(0, "/v1/managers").await).unwrap());
    let job = g.start_verify(second, "orphan", false, Some(MIB)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let runner = index(job["runner"].as_str().unwrap());
    g.kill(runner).await;
    g.restart(runner).await;
    let failed = wait_job_until(&g, runner, &id, Duration::from_secs(40), |j| {
        j["state"] != "running"
    })
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    g.stop().await;
}
