//! Losing managers: the API keeps working through any server when one manager (the leader
//! included) is killed; a minority refuses changes quickly; creates acknowledged around a
//! leader kill all exist afterwards, once each.

use crate::harness::{leader, Group};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn index(name: &str) -> usize {
    name.trim_start_matches('s')
        .parse::<usize>()
        .expect("server name")
        - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_survives_any_one_manager_and_a_minority_refuses() {
    let mut g = Group::start(3).await;
    g.three_managers().await;
    let first = index(&leader(&g.get(0, "/v1/managers").await).unwrap());
    for (round, victim) in [first, 0, 1, 2].into_iter().enumerate() {
        g.kill(victim).await;
        for other in (0..3).filter(|i| *i != victim) {
            let name = format!("v{round}-{other}");
            let (status, body) = g
                .post(other, "/v1/volumes", json!({"name": name, "size": 1 << 20}))
                .await;
            assert_eq!(
                status,
                201,
                "create through s{} with s{} down: {body}",
                other + 1,
                victim + 1
            );
        }
        g.restart(victim).await;
        g.wait_for(victim, "/v1/managers", "all managers up", |m| {
            m.as_array()
                .is_some_and(|m| m.iter().filter(|m| m["state"] == "up").count() == 3)
        })
        .await;
    }
    // Two of three managers gone: the survivor refuses, quickly and saying why.
    let survivor = index(&leader(&g.get(0, "/v1/managers").await).unwrap());
    for i in (0..3).filter(|i| *i != survivor) {
        g.kill(i).await;
    }
    let started = Instant::now();
    let (status, body) = g
        .post(
            survivor,
            "/v1/volumes",
            json!({"name": "minority", "size": 1 << 20}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("no quorum of managers: 1 of 3 reachable"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_acknowledged_across_a_leader_kill_exist_once() {
    let mut g = Group::start(3).await;
    g.three_managers().await;
    let old = index(&leader(&g.get(0, "/v1/managers").await).unwrap());
    let clients: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let urls: Vec<String> = clients.iter().map(|i| g.api(*i)).collect();
    // The client streams creates on its own task; the leader is killed while it runs.
    let (progress, mut acked_so_far) = tokio::sync::watch::channel(0usize);
    let stream = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut acked = BTreeMap::new();
        let mut unknown = Vec::new();
        for n in 0..24 {
            let name = format!("c{n}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let sent = http
                    .post(format!("{}/v1/volumes", urls[n % 2]))
                    .json(&json!({"name": name, "size": 1 << 20}))
                    .send()
                    .await;
                let (status, body) = match sent {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.json::<serde_json::Value>().await.unwrap_or_default(),
                    ),
                    Err(e) => (0, json!(e.to_string())),
                };
                match status {
                    201 => {
                        acked.insert(name.clone(), body["id"].clone());
                        break;
                    }
                    // An earlier attempt whose answer was lost did create it.
                    409 if body["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("already exists") =>
                    {
                        unknown.push(name.clone());
                        break;
                    }
                    _ => assert!(Instant::now() < deadline, "create {name}: {status} {body}"),
                }
            }
            let _ = progress.send(n + 1);
        }
        (acked, unknown)
    });
    acked_so_far
        .wait_for(|n| *n >= 8)
        .await
        .expect("client running");
    g.kill(old).await;
    let (acked, unknown) = stream.await.expect("client task");
    let volumes = g.get(clients[0], "/v1/volumes").await;
    let volumes = volumes.as_array().unwrap();
    let listed: BTreeMap<String, serde_json::Value> = volumes
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["id"].clone()))
        .collect();
    assert_eq!(listed.len(), volumes.len(), "a name listed twice");
    assert_eq!(
        volumes.len(),
        24,
        "exactly the volumes asked for: {listed:?}"
    );
    for (name, id) in &acked {
        assert_eq!(
            listed.get(name),
            Some(id),
            "acknowledged {name} exists with its id"
        );
    }
    assert_eq!(acked.len() + unknown.len(), 24);
    g.stop().await;
}

/// fio writes at random through `uri` and reads it all back, checking every block; returns its
/// output once it is done.
fn fio_verify(
    uri: &str,
    size_mib: u64,
) -> tokio::task::JoinHandle<std::io::Result<std::process::Output>> {
    let fio = tokio::process::Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=16k",
            "--iodepth=8",
            &format!("--size={size_mib}M"),
            "--rate=8m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
        ])
        .output();
    tokio::spawn(fio)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_writes_wait_for_a_new_leader_instead_of_failing() {
    let mut g = Group::cluster(3).await;
    g.create_volume("lead", 64 << 20, 2).await;
    let first = index(&leader(&g.get(0, "/v1/managers").await).unwrap());
    let gateway = (first + 1) % 3;
    // The leader holds replicas of two thirds of the chunks: killing it makes writes through
    // the gateway fail there, and the gateway must mark it stale while no leader is elected.
    let fio = fio_verify(&format!("nbd://{}/lead", g.nbd(gateway)), 32);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    g.kill(first).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    g.restart(first).await;
    let out = fio.await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "fio through s{} saw errors while the leader s{} died: {} {}",
        gateway + 1,
        first + 1,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    g.wait_status(gateway, "lead", "healthy").await;
    let report = g.verify(gateway, "lead", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_leader_then_a_replica_under_writes_heals_completely() {
    let mut g = Group::cluster(3).await;
    g.create_volume("both", 64 << 20, 2).await;
    let first = index(&leader(&g.get(0, "/v1/managers").await).unwrap());
    let (second, gateway) = ((first + 1) % 3, (first + 2) % 3);
    // Errors are allowed here (with two of three servers down there is no quorum to mark
    // anyone stale); a stuck resync or a difference between replicas is not.
    let fio = fio_verify(&format!("nbd://{}/both", g.nbd(gateway)), 32);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    g.kill(first).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    g.kill(second).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    g.restart(first).await;
    g.restart(second).await;
    let _ = fio.await.unwrap().unwrap();
    g.wait_status(gateway, "both", "healthy").await;
    let report = g.verify(gateway, "both", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}
