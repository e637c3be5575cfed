//! Three managers over real HTTP: form a group, replicate, fail the leader over.

use crate::harness::{applied, converged, create_volume, n, Node, WAIT};
use std::collections::BTreeSet;
use strata_meta::{Command, CommandOutput, MetaError};
use strata_types::LayerId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_replicate_and_survive_leader_loss() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(Node::start(dir.path(), i as u64 + 1).await);
    }
    let records: Vec<_> = ["s1", "s2", "s3"]
        .iter()
        .zip(&nodes)
        .map(|(name, node)| node.record(name))
        .collect();

    // Form the group: bootstrap node 1, add 2 and 3 as learners, then make all three voters.
    let leader = &nodes[0].meta;
    leader
        .bootstrap(records[0].clone())
        .await
        .expect("bootstrap");
    for node in &nodes[1..] {
        leader
            .add_learner(node.meta.node_id(), node.addr.clone(), true)
            .await
            .expect("add learner");
    }
    leader
        .change_membership(BTreeSet::from([1, 2, 3]), false)
        .await
        .expect("change membership");
    for rec in &records[1..] {
        leader
            .write(Command::AddServer(rec.clone()))
            .await
            .expect("add server");
    }
    let CommandOutput::Volume(vol) = leader
        .write(create_volume("db", 1 << 30))
        .await
        .expect("volume")
    else {
        panic!("unexpected output")
    };

    // All three state machines converge on the same state.
    let index = applied(leader);
    let expected = leader.read().await.expect("linearizable read");
    assert_eq!(expected.servers.len(), 3);
    for node in &nodes {
        assert_eq!(
            converged(&node.meta, index).await,
            expected,
            "node {}",
            node.meta.node_id()
        );
        let voters: BTreeSet<u64> = node
            .meta
            .raft_metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    }

    // A follower refuses writes and reads, naming the leader.
    let err = nodes[1]
        .meta
        .write(create_volume("x", 4096))
        .await
        .expect_err("follower write");
    match &err {
        MetaError::NotLeader { leader_addr } => {
            assert_eq!(leader_addr.as_deref(), Some(nodes[0].addr.as_str()))
        }
        other => panic!("expected NotLeader, got {other}"),
    }
    assert!(matches!(
        nodes[2].meta.read().await,
        Err(MetaError::NotLeader { .. })
    ));

    // Kill the leader; one of the others takes over and accepts writes.
    let mut survivors = nodes.split_off(1);
    let old = nodes.pop().expect("node 1");
    old.kill().await;
    let mut metrics = survivors[0].meta.watch_metrics();
    let m = tokio::time::timeout(
        WAIT,
        metrics.wait_for(|m| matches!(m.current_leader, Some(l) if l != 1)),
    )
    .await
    .expect("no new leader in time")
    .expect("metrics closed")
    .clone();
    let new_leader_id = m.current_leader.expect("leader");
    let pos = survivors
        .iter()
        .position(|s| s.meta.node_id() == new_leader_id)
        .expect("new leader is a survivor");
    let new_leader = survivors[pos].meta.clone();
    let other = survivors[1 - pos].meta.clone();
    let snap = Command::CreateSnapshot {
        volume: n("db"),
        name: n("after-failover"),
        frozen: vol.layers[0],
        new_head: LayerId::new_random(),
        now_ms: 5,
    };
    new_leader
        .write(snap)
        .await
        .expect("write on the new leader");
    let state = new_leader.read().await.expect("read on the new leader");
    assert_eq!(state.volumes[&n("db")].snapshots.len(), 1);
    assert_eq!(converged(&other, applied(&new_leader)).await, state);

    for node in survivors.drain(..) {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_learner_catches_up_from_a_snapshot() {
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let first = Node::start(dirs[0].path(), 1).await;
    first
        .meta
        .bootstrap(first.record("s1"))
        .await
        .expect("bootstrap");
    for i in 0..20 {
        first
            .meta
            .write(create_volume(&format!("v{i}"), 4096))
            .await
            .expect("create volume");
    }
    let index = first.meta.compact().await.expect("compact");
    assert!(
        first.meta.raft_metrics().purged.is_some(),
        "log was not purged"
    );

    // The log before `index` is gone, so the learner can only catch up from the snapshot.
    let second = Node::start(dirs[1].path(), 2).await;
    first
        .meta
        .add_learner(2, second.addr.clone(), true)
        .await
        .expect("add learner");
    let expected = first.meta.read().await.expect("read");
    assert_eq!(
        converged(&second.meta, applied(&first.meta)).await,
        expected
    );
    assert_eq!(expected.volumes.len(), 20);
    // Metrics are published just after the install completes; wait for them.
    let mut metrics = second.meta.watch_metrics();
    let snap = tokio::time::timeout(WAIT, metrics.wait_for(|m| m.snapshot.is_some()))
        .await
        .expect("learner did not report a snapshot in time")
        .expect("metrics closed")
        .snapshot
        .expect("learner installed a snapshot");
    assert!(snap.index >= index);
    second.kill().await;
    first.kill().await;
}
