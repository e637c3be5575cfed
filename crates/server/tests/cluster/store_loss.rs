//! A server whose block store was lost refuses to start instead of recreating its copies
//! empty, and deletes nothing it finds.

use crate::harness::{blocking, connect, Group};
use serde_json::json;
use std::path::Path;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;

/// Every file under `dir` with its size, sorted.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            let len = p.metadata().unwrap().len();
            out.push((p.strip_prefix(dir).unwrap().to_path_buf(), len));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_whose_store_was_lost_refuses_to_start_and_deletes_nothing() {
    let mut g = Group::cluster(3).await;
    g.create_volume("keep", 64 * MIB, 2).await;
    let a = g.nbd(0);
    blocking(move || {
        let mut c = connect(&a, "keep");
        for chunk in 0..16u64 {
            assert_eq!(
                c.write(chunk * CHUNK, &[chunk as u8 + 1; 8192], false)
                    .unwrap(),
                0
            );
        }
        assert_eq!(c.flush().unwrap(), 0);
        c.disconnect();
    })
    .await;
    g.kill(2).await;
    let store = g.dir(2).join("store");
    let volumes = files(&store.join("volumes"));
    assert!(
        volumes.iter().any(|(_, len)| *len > 0),
        "s3 holds data: {volumes:?}"
    );

    // Its database lost: the store refuses, naming the file.
    let db = store.join("store.redb");
    let db_saved = g.dir(2).join("store.redb.saved");
    std::fs::rename(&db, &db_saved).unwrap();
    let err = g.restart_refused(2, "store.redb").await;
    assert!(err.contains("refusing"), "{err}");
    assert_eq!(
        files(&store.join("volumes")),
        volumes,
        "nothing moved or deleted"
    );
    assert!(!db.exists(), "no new database made");

    // The whole store lost: the management state still places `keep` here, so the server
    // refuses rather than create it empty.
    let store_saved = g.dir(2).join("store.saved");
    std::fs::rename(&store, &store_saved).unwrap();
    let err = g.restart_refused(2, "is new").await;
    assert!(err.contains("keep"), "{err}");
    assert!(
        files(&store.join("volumes")).is_empty(),
        "no volume recreated empty"
    );
    // The refused start made a new store there: the next start must refuse it too (before,
    // it took that store for its own and served zeros as `healthy`).
    let err = g.restart_refused(2, "is new").await;
    assert!(err.contains("keep"), "{err}");

    // Restored from the backup, it starts and serves what it held.
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::rename(&store_saved, &store).unwrap();
    std::fs::rename(&db_saved, &db).unwrap();
    g.restart(2).await;
    g.wait_status(0, "keep", "healthy").await;
    let report = g.verify(2, "keep", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    let c3 = g.nbd(2);
    blocking(move || {
        let mut c = connect(&c3, "keep");
        for chunk in 0..16u64 {
            let got = c.read(chunk * CHUNK, 8192).unwrap().unwrap();
            assert!(got.iter().all(|b| *b == chunk as u8 + 1), "chunk {chunk}");
        }
    })
    .await;
    g.stop().await;
}
