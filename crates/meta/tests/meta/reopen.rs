//! A single-voter group survives a restart: state intact, writes continue, bootstrap idempotent.

use crate::harness::{create_volume, n, record};
use strata_meta::{Command, CommandError, CommandOutput, Meta, MetaError};
use strata_types::LayerId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopen_and_writes_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = "http://127.0.0.1:1".to_string();
    let me = record("s1", 1, &addr);

    let meta = Meta::open(dir.path(), 1, addr.clone()).await.expect("open");
    assert!(!meta.is_initialized().await);
    meta.bootstrap(me.clone()).await.expect("bootstrap");
    assert!(meta.is_initialized().await);
    meta.bootstrap(me.clone())
        .await
        .expect("bootstrap is idempotent");
    let out = meta
        .write(create_volume("db", 1 << 20))
        .await
        .expect("create volume");
    let CommandOutput::Volume(vol) = out else {
        panic!("unexpected output {out:?}")
    };
    let err = meta
        .write(create_volume("db", 1 << 20))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(&err, MetaError::Refused(CommandError::VolumeExists(v)) if *v == n("db")),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    let before = meta.read().await.expect("read");
    assert_eq!(before.servers.len(), 1);
    assert_eq!(before.clusters[&n("default")].servers, vec![me.id]);
    meta.shutdown().await;
    assert!(matches!(
        meta.write(create_volume("x", 4096)).await,
        Err(MetaError::Unavailable(_))
    ));
    drop(meta);

    let meta = Meta::open(dir.path(), 1, addr.clone())
        .await
        .expect("reopen");
    assert!(meta.is_initialized().await);
    meta.bootstrap(me.clone())
        .await
        .expect("bootstrap after restart is a no-op");
    let after = meta.read().await.expect("read after reopen");
    assert_eq!(after, before);
    let snap = Command::CreateSnapshot {
        volume: n("db"),
        name: n("s1"),
        frozen: vol.layers[0],
        new_head: LayerId::new_random(),
        now_ms: 2,
    };
    meta.write(snap).await.expect("snapshot after reopen");
    let st = meta.read().await.expect("read");
    assert_eq!(st.volumes[&n("db")].layers.len(), 2);
    meta.shutdown().await;
    drop(meta);

    // A third start sees the snapshot too, even from its local state once caught up.
    let meta = Meta::open(dir.path(), 1, addr).await.expect("reopen again");
    let st = meta.read().await;
    let st = match st {
        Ok(st) => st,
        Err(_) => {
            meta.wait_for_leader(crate::harness::WAIT)
                .await
                .expect("leader");
            meta.read().await.expect("read")
        }
    };
    assert_eq!(st.volumes[&n("db")].snapshots[0].name, n("s1"));
    meta.shutdown().await;
}
