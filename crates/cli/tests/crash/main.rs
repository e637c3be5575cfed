//! SIGKILL crash test: a client writes through NBD with FUA and FLUSH while the server process
//! is killed at random points, 20 times. After every restart each write the server acknowledged
//! as durable (a FUA write, or any write followed by an acknowledged FLUSH) reads back, and every
//! block holds either its last durable content or one written after it — never garbage, never a
//! block that was not written.

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

#[test]
fn acknowledged_durable_writes_survive_sigkill() {
    let mut server = ServerProcess::start();
    server.create_volume("crash", "8MiB");
    let state = Arc::new(Mutex::new(vec![BlockState::default(); BLOCKS as usize]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5742_4154);
    let mut seq = 0;
    for round in 0..ROUNDS {
        let nbd = server.nbd.clone();
        let st = state.clone();
        let seed = rng.random();
        let handle = std::thread::spawn(move || writer(nbd, st, seed, seq));
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(30..400)));
        server.kill();
        seq = handle.join().unwrap();
        server.restart();

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
            bs.durable = found;
            bs.since.clear();
        }
        assert_eq!(client.flush().unwrap(), 0);
        client.disconnect();
        eprintln!("round {round}: {durable_writes} blocks with durable writes checked, {seq} writes so far");
    }
    assert!(seq > 100, "the writer made progress ({seq} writes)");
}
