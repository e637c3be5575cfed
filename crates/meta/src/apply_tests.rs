//! Validation tests for every command: what is accepted, what is refused, and that a refusal
//! leaves the state untouched.

use super::*;
use crate::model::ServerRecord;
use strata_types::ServerId;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid test name")
}

fn server(n: &str, raft: u64) -> ServerRecord {
    ServerRecord {
        id: ServerId::new_random(),
        name: name(n),
        api_addr: format!("http://{n}:7780"),
        nbd_addr: format!("{n}:10809"),
        peer_addr: format!("{n}:7781"),
        raft_node_id: raft,
    }
}

/// A state with servers a, b, c; cluster "default" = [a, b]; c in no cluster.
fn base() -> (StateView, Vec<ServerId>) {
    let mut st = StateView::default();
    let mut ids = Vec::new();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let rec = server(n, i as u64 + 1);
        ids.push(rec.id);
        apply_command(&mut st, Command::AddServer(rec)).expect("add server");
    }
    apply_command(
        &mut st,
        Command::CreateCluster {
            name: name("default"),
            servers: vec![ids[0], ids[1]],
            take_from_default: false,
        },
    )
    .expect("create cluster");
    (st, ids)
}

fn create_vol(n: &str, size: u64, replicas: u8) -> (Command, LayerId) {
    let head = LayerId::new_random();
    let cmd = Command::CreateVolume {
        id: VolumeId::new_random(),
        name: name(n),
        cluster: name("default"),
        size,
        replicas,
        head,
        now_ms: 1000,
    };
    (cmd, head)
}

/// Applies `cmd` expecting a refusal, and checks the state did not change.
fn refused(st: &mut StateView, cmd: Command) -> CommandError {
    let before = st.clone();
    let err = apply_command(st, cmd).expect_err("command should be refused");
    assert_eq!(*st, before, "a refused command must not change the state");
    err
}

#[test]
fn add_server_refuses_duplicates_and_missing_addresses() {
    let (mut st, ids) = base();
    let mut dup_id = server("d", 9);
    dup_id.id = ids[0];
    assert_eq!(
        refused(&mut st, Command::AddServer(dup_id)),
        CommandError::ServerIdExists(ids[0])
    );
    let e = refused(&mut st, Command::AddServer(server("a", 9)));
    assert_eq!(e, CommandError::ServerNameExists(name("a")));
    let e = refused(&mut st, Command::AddServer(server("d", 1)));
    assert_eq!(e, CommandError::RaftNodeIdExists(1));
    let mut no_nbd = server("d", 9);
    no_nbd.nbd_addr = " ".into();
    assert!(matches!(
        refused(&mut st, Command::AddServer(no_nbd)),
        CommandError::MissingAddress { .. }
    ));
    assert!(apply_command(&mut st, Command::AddServer(server("d", 9))).is_ok());
    assert_eq!(st.servers.len(), 4);
}

#[test]
fn create_cluster_checks_servers() {
    let (mut st, ids) = base();
    let cc = |n: &str, servers: Vec<ServerId>| Command::CreateCluster {
        name: name(n),
        servers,
        take_from_default: false,
    };
    assert_eq!(
        refused(&mut st, cc("default", vec![ids[2]])),
        CommandError::ClusterExists(name("default"))
    );
    assert_eq!(
        refused(&mut st, cc("x", vec![])),
        CommandError::EmptyCluster(name("x"))
    );
    let ghost = ServerId::new_random();
    assert_eq!(
        refused(&mut st, cc("x", vec![ghost])),
        CommandError::UnknownServer(ghost)
    );
    assert_eq!(
        refused(&mut st, cc("x", vec![ids[2], ids[0]])),
        CommandError::ServerInCluster {
            server: ids[0],
            cluster: name("default")
        }
    );
    assert_eq!(
        refused(&mut st, cc("x", vec![ids[2], ids[2]])),
        CommandError::ServerInCluster {
            server: ids[2],
            cluster: name("x")
        }
    );
    let out = apply_command(&mut st, cc("x", vec![ids[2]])).expect("valid cluster");
    assert!(matches!(out, CommandOutput::Cluster(c) if c.servers == vec![ids[2]]));
}

#[test]
fn create_volume_validates_everything() {
    let (mut st, _) = base();
    let (cmd, head) = create_vol("db", 1 << 30, 2);
    let CommandOutput::Volume(v) = apply_command(&mut st, cmd).expect("create") else {
        panic!("wrong output")
    };
    assert_eq!(v.layers, vec![head]);
    assert_eq!(v.created_unix_ms, 1000);

    let e = refused(&mut st, create_vol("db", 4096, 1).0);
    assert_eq!(e, CommandError::VolumeExists(name("db")));
    assert!(e.to_string().contains("already exists; pick another name"));
    for size in [0, 511, 4097] {
        assert!(matches!(
            refused(&mut st, create_vol("v", size, 1).0),
            CommandError::BadSize { .. }
        ));
    }
    for r in [0, 3] {
        // "default" has two servers, so three replicas cannot be placed.
        assert!(matches!(
            refused(&mut st, create_vol("v", 4096, r).0),
            CommandError::BadReplicas { max: 2, .. }
        ));
    }
    let mut cmd = create_vol("v", 4096, 1).0;
    if let Command::CreateVolume { cluster, .. } = &mut cmd {
        *cluster = name("nowhere");
    }
    assert_eq!(
        refused(&mut st, cmd),
        CommandError::UnknownCluster(name("nowhere"))
    );
    let mut cmd = create_vol("v", 4096, 1).0;
    if let Command::CreateVolume { head: h, .. } = &mut cmd {
        *h = head;
    }
    assert_eq!(refused(&mut st, cmd), CommandError::LayerInUse(head));
    let mut cmd = create_vol("v", 4096, 1).0;
    if let Command::CreateVolume { id, .. } = &mut cmd {
        *id = v.id;
    }
    assert_eq!(refused(&mut st, cmd), CommandError::VolumeIdExists(v.id));
}

#[test]
fn resize_only_grows() {
    let (mut st, _) = base();
    apply_command(&mut st, create_vol("db", 8192, 1).0).expect("create");
    let rs = |n: &str, size| Command::ResizeVolume {
        name: name(n),
        size,
    };
    assert!(matches!(
        refused(&mut st, rs("db", 4096)),
        CommandError::Shrink { current: 8192, .. }
    ));
    assert!(matches!(
        refused(&mut st, rs("db", 10000)),
        CommandError::BadSize { .. }
    ));
    assert_eq!(
        refused(&mut st, rs("nope", 8192)),
        CommandError::UnknownVolume(name("nope"))
    );
    apply_command(&mut st, rs("db", 8192)).expect("same size is a no-op");
    apply_command(&mut st, rs("db", 1 << 20)).expect("grow");
    assert_eq!(st.volumes[&name("db")].size, 1 << 20);
}

#[test]
fn delete_volume() {
    let (mut st, _) = base();
    apply_command(&mut st, create_vol("db", 8192, 1).0).expect("create");
    let del = |n: &str| Command::DeleteVolume { name: name(n) };
    assert_eq!(
        refused(&mut st, del("nope")),
        CommandError::UnknownVolume(name("nope"))
    );
    let out = apply_command(&mut st, del("db")).expect("delete");
    assert!(matches!(out, CommandOutput::Volume(v) if v.name == name("db")));
    assert!(st.volumes.is_empty());
}

#[test]
fn snapshots_stack_and_unstack() {
    let (mut st, _) = base();
    let (cmd, l0) = create_vol("db", 8192, 1);
    apply_command(&mut st, cmd).expect("create");
    let snap = |vol: &str, n: &str, frozen, new_head| Command::CreateSnapshot {
        volume: name(vol),
        name: name(n),
        frozen,
        new_head,
        now_ms: 2000,
    };
    let (l1, l2) = (LayerId::new_random(), LayerId::new_random());
    apply_command(&mut st, snap("db", "s1", l0, l1)).expect("snapshot s1");
    apply_command(
        &mut st,
        Command::ResizeVolume {
            name: name("db"),
            size: 16384,
        },
    )
    .expect("grow");
    let e = refused(&mut st, snap("db", "s2", l0, l2));
    assert_eq!(
        e,
        CommandError::StaleHead {
            volume: name("db"),
            head: l1
        }
    );
    assert!(matches!(
        refused(&mut st, snap("db", "s1", l1, l2)),
        CommandError::SnapshotExists { .. }
    ));
    assert_eq!(
        refused(&mut st, snap("db", "s2", l1, l0)),
        CommandError::LayerInUse(l0)
    );
    assert_eq!(
        refused(&mut st, snap("x", "s2", l1, l2)),
        CommandError::UnknownVolume(name("x"))
    );
    apply_command(&mut st, snap("db", "s2", l1, l2)).expect("snapshot s2");
    let v = &st.volumes[&name("db")];
    assert_eq!(v.layers, vec![l0, l1, l2]);
    assert_eq!(v.head(), Some(l2));
    let sizes: Vec<u64> = v.snapshots.iter().map(|s| s.size).collect();
    assert_eq!(sizes, vec![8192, 16384]);

    let ds = |n: &str| Command::DeleteSnapshot {
        volume: name("db"),
        name: name(n),
    };
    assert!(matches!(
        refused(&mut st, ds("s9")),
        CommandError::UnknownSnapshot { .. }
    ));
    let out = apply_command(&mut st, ds("s1")).expect("delete s1");
    assert!(matches!(out, CommandOutput::Snapshot { snapshot, .. } if snapshot.layer == l0));
    let v = &st.volumes[&name("db")];
    assert_eq!(v.layers, vec![l1, l2]);
    assert_eq!(v.snapshots.len(), 1);
    // The name is free again.
    let l3 = LayerId::new_random();
    apply_command(&mut st, snap("db", "s1", l2, l3)).expect("reuse the name s1");
}

#[test]
fn state_round_trips_through_json() {
    let (mut st, _) = base();
    apply_command(&mut st, create_vol("db", 8192, 2).0).expect("create");
    let json = serde_json::to_vec(&st).expect("serialize");
    let back: StateView = serde_json::from_slice(&json).expect("deserialize");
    assert_eq!(back, st);
    let err = CommandError::VolumeExists(name("db"));
    let json = serde_json::to_string(&err).expect("serialize error");
    assert_eq!(
        serde_json::from_str::<CommandError>(&json).expect("back"),
        err
    );
}
