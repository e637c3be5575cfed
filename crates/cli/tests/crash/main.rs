//! SIGKILL crash test: a client writes through NBD with FUA and FLUSH while the server process
//! is killed at random points, 20 times. After every restart each write the server acknowledged
//! as durable (a FUA write, or any write followed by an acknowledged FLUSH) reads back, and every
//! block holds either its last durable content or one written after it — never garbage, never a
//! block that was not written.
//!
//! Meanwhile another client takes and deletes snapshots through the API, so kills also land
//! between a snapshot's Raft commit and the store's freeze, and in the middle of merges. After
//! every restart each acknowledged snapshot exists and each acknowledged delete stays deleted;
//! every snapshot decodes block by block, and a block's write number never decreases from an
//! older snapshot to a newer one to the live volume.

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use support::nbd_client::NbdClient;
use support::ServerProcess;

const BLOCK: usize = 4096;
const BLOCKS: u64 = 2048; // an 8 MiB volume
const ROUNDS: usize = 20;

/// What a block may hold: its last durable write, plus every write sent since (acknowledged
/// without a flush, or in flight when the server died).
#[derive(Clone, Default)]
struct BlockState {
    durable: u64, // 0 = never written: zeros
    since: Vec<u64>,
}

fn pattern(block: u64, seq: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(BLOCK);
    while data.len() < BLOCK {
        data.extend_from_slice(&seq.to_le_bytes());
        data.extend_from_slice(&block.to_le_bytes());
    }
    data
}

/// The write sequence number a block holds, or `None` if it is not one whole pattern.
fn decode(block: u64, data: &[u8]) -> Option<u64> {
    if data.iter().all(|b| *b == 0) {
        return Some(0);
    }
    let seq = u64::from_le_bytes(data[..8].try_into().ok()?);
    (data == pattern(block, seq).as_slice()).then_some(seq)
}

fn writer(nbd: String, state: Arc<Mutex<Vec<BlockState>>>, seed: u64, first_seq: u64) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Ok(mut client) = NbdClient::connect(&nbd, "crash") else {
        return first_seq;
    };
    let mut seq = first_seq;
    let mut unflushed: Vec<(u64, u64)> = Vec::new();
    loop {
        if rng.random_ratio(1, 12) {
            match client.flush() {
                Ok(0) => {
                    let mut st = state.lock().unwrap();
                    for (b, s) in unflushed.drain(..) {
                        let bs = &mut st[b as usize];
                        if s > bs.durable {
                            bs.durable = s;
                            bs.since.retain(|x| *x > s);
                        }
                    }
                }
                _ => return seq,
            }
            continue;
        }
        let block = rng.random_range(0..BLOCKS);
        let fua = rng.random_bool(0.3);
        seq += 1;
        state.lock().unwrap()[block as usize].since.push(seq);
        match client.write(block * BLOCK as u64, &pattern(block, seq), fua) {
            Ok(0) if fua => {
                let mut st = state.lock().unwrap();
                let bs = &mut st[block as usize];
                bs.durable = seq;
                bs.since.retain(|x| *x > seq);
            }
            Ok(0) => unflushed.push((block, seq)),
            Ok(e) => panic!("write failed with NBD error {e}"),
            Err(_) => return seq, // the server died
        }
    }
}

/// What the snapshot client got acknowledged, and what was in flight when the server died
/// (which may or may not have happened).
#[derive(Default)]
struct SnapshotLog {
    created: Vec<String>,
    deleted: Vec<String>,
    creating: Option<String>,
    deleting: Option<String>,
}

fn strata(api: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(support::strata_bin())
        .arg("--api")
        .arg(api)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Takes snapshots, deleting the oldest when more than four exist, until the server dies.
fn snapshotter(api: String, round: usize, log: Arc<Mutex<SnapshotLog>>) {
    for i in 0.. {
        let name = format!("r{round}-{i}");
        log.lock().unwrap().creating = Some(name.clone());
        if strata(&api, &["snapshot", "create", &format!("crash@{name}")]).is_none() {
            return;
        }
        let oldest = {
            let mut log = log.lock().unwrap();
            log.creating = None;
            log.created.push(name);
            let live: Vec<_> = log
                .created
                .iter()
                .filter(|c| !log.deleted.contains(c))
                .cloned()
                .collect();
            (live.len() > 4).then(|| live[0].clone())
        };
        if let Some(old) = oldest {
            log.lock().unwrap().deleting = Some(old.clone());
            if strata(&api, &["snapshot", "delete", &format!("crash@{old}")]).is_none() {
                return;
            }
            let mut log = log.lock().unwrap();
            log.deleting = None;
            log.deleted.push(old);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Checks the snapshots after a restart against what was acknowledged; returns the block
/// write numbers of the newest snapshot, for the check against the live volume.
fn check_snapshots(server: &ServerProcess, log: &mut SnapshotLog, round: usize) -> Vec<u64> {
    let listed = strata(
        &server.api,
        &["--output", "json", "snapshot", "list", "crash"],
    )
    .expect("snapshot list after restart");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    for c in &log.created {
        if log.deleting.as_ref() == Some(c) {
            continue; // its delete was in flight: either outcome is right
        }
        let deleted = log.deleted.contains(c);
        assert_eq!(
            names.contains(c),
            !deleted,
            "round {round}: acknowledged snapshot {c} (deleted: {deleted}) vs listed {names:?}"
        );
    }
    for n in &names {
        assert!(
            log.created.contains(n) || log.creating.as_ref() == Some(n),
            "round {round}: snapshot {n} exists but was never asked for"
        );
    }
    // Settle what was in flight by what the server says happened.
    if let Some(c) = log.creating.take() {
        if names.contains(&c) {
            log.created.push(c);
        }
    }
    if let Some(d) = log.deleting.take() {
        if !names.contains(&d) {
            log.deleted.push(d);
        }
    }
    let mut floor = vec![0u64; BLOCKS as usize];
    for name in &names {
        let mut s =
            NbdClient::connect(&server.nbd, &format!("crash@{name}")).expect("open snapshot");
        let image = s
            .read(0, (BLOCKS * BLOCK as u64) as u32)
            .unwrap()
            .expect("read snapshot");
        for b in 0..BLOCKS as usize {
            let data = &image[b * BLOCK..(b + 1) * BLOCK];
            let seq = decode(b as u64, data)
                .unwrap_or_else(|| panic!("round {round}: snapshot {name} block {b} is garbage"));
            assert!(
                seq >= floor[b],
                "round {round}: snapshot {name} block {b} holds write {seq}, older than {} in an earlier snapshot",
                floor[b]
            );
            floor[b] = seq;
        }
    }
    floor
}

#[test]
fn acknowledged_durable_writes_survive_sigkill() {
    let mut server = ServerProcess::start();
    server.create_volume("crash", "8MiB");
    let state = Arc::new(Mutex::new(vec![BlockState::default(); BLOCKS as usize]));
    let snapshots = Arc::new(Mutex::new(SnapshotLog::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5742_4154);
    let mut seq = 0;
    for round in 0..ROUNDS {
        let nbd = server.nbd.clone();
        let st = state.clone();
        let seed = rng.random();
        let handle = std::thread::spawn(move || writer(nbd, st, seed, seq));
        let (api, log) = (server.api.clone(), snapshots.clone());
        let snapper = std::thread::spawn(move || snapshotter(api, round, log));
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(30..400)));
        server.kill();
        seq = handle.join().unwrap();
        snapper.join().unwrap();
        server.restart();
        let newest = check_snapshots(&server, &mut snapshots.lock().unwrap(), round);

        let mut client = NbdClient::connect(&server.nbd, "crash").expect("reconnect after restart");
        let mut st = state.lock().unwrap();
        let mut durable_writes = 0;
        for b in 0..BLOCKS {
            let data = client
                .read(b * BLOCK as u64, BLOCK as u32)
                .unwrap()
                .expect("read ok");
            let found = decode(b, &data)
                .unwrap_or_else(|| panic!("round {round}: block {b} holds garbage after the kill"));
            let bs = &mut st[b as usize];
            durable_writes += u64::from(bs.durable > 0);
            assert!(
                found == bs.durable || bs.since.contains(&found),
                "round {round}: block {b} holds write {found}, but its last durable write is {} and only {:?} came after",
                bs.durable,
                bs.since
            );
            assert!(
                found >= newest[b as usize],
                "round {round}: block {b} holds write {found}, older than its newest snapshot's {}",
                newest[b as usize]
            );
            bs.durable = found;
            bs.since.clear();
        }
        assert_eq!(client.flush().unwrap(), 0);
        client.disconnect();
        eprintln!("round {round}: {durable_writes} blocks with durable writes checked, {seq} writes so far");
    }
    assert!(seq > 100, "the writer made progress ({seq} writes)");
    let log = snapshots.lock().unwrap();
    assert!(
        log.created.len() >= ROUNDS,
        "snapshots were taken ({})",
        log.created.len()
    );
    assert!(!log.deleted.is_empty(), "snapshots were deleted");
}

/// A volume created just before a kill, with flushed data and no later management change,
/// survives restarts: the applied management state never goes back after a kill.
#[test]
fn a_volume_created_just_before_a_kill_keeps_its_data() {
    let mut server = ServerProcess::start();
    for round in 0..3 {
        let name = format!("fresh{round}");
        server.create_volume(&name, "4MiB");
        let mut c = NbdClient::connect(&server.nbd, &name).unwrap();
        assert_eq!(c.write(0, &pattern(0, 7 + round as u64), false).unwrap(), 0);
        assert_eq!(c.flush().unwrap(), 0);
        server.kill();
        server.restart();
        for r in 0..=round {
            let mut c = NbdClient::connect(&server.nbd, &format!("fresh{r}"))
                .unwrap_or_else(|e| panic!("round {round}: volume fresh{r} is gone: {e}"));
            let data = c.read(0, BLOCK as u32).unwrap().unwrap();
            assert_eq!(
                decode(0, &data),
                Some(7 + r as u64),
                "round {round}: fresh{r} lost its data"
            );
        }
    }
}
