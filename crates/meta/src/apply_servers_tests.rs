//! Validation tests for the server and cluster commands: what is accepted, what is refused, and
//! that a refusal leaves the state untouched.

use crate::apply::apply_command;
use crate::error::CommandError;
use crate::model::{Command, CommandOutput, ServerRecord, StateView};
use strata_types::{LayerId, Name, ServerId, VolumeId};

fn name(s: &str) -> Name {
    Name::new(s).expect("valid test name")
}

/// A state with servers a, b, c, d; cluster "default" = [a, b, c]; d in no cluster.
fn base() -> (StateView, Vec<ServerId>) {
    let mut st = StateView::default();
    let mut ids = Vec::new();
    for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
        let rec = ServerRecord {
            id: ServerId::new_random(),
            name: name(n),
            api_addr: format!("http://{n}:7780"),
            nbd_addr: format!("{n}:10809"),
            peer_addr: format!("{n}:7781"),
            raft_node_id: i as u64 + 1,
        };
        ids.push(rec.id);
        apply_command(&mut st, Command::AddServer(rec)).expect("add server");
    }
    let cmd = Command::CreateCluster {
        name: name("default"),
        servers: ids[..3].to_vec(),
        take_from_default: false,
    };
    apply_command(&mut st, cmd).expect("create cluster");
    (st, ids)
}

fn volume(st: &mut StateView, n: &str, cluster: &str, replicas: u8) {
    let cmd = Command::CreateVolume {
        id: VolumeId::new_random(),
        name: name(n),
        cluster: name(cluster),
        size: 1 << 20,
        replicas,
        head: LayerId::new_random(),
        now_ms: 1,
    };
    apply_command(st, cmd).expect("create volume");
}

fn refused(st: &mut StateView, cmd: Command) -> CommandError {
    let before = st.clone();
    let err = apply_command(st, cmd).expect_err("command should be refused");
    assert_eq!(*st, before, "a refused command must not change the state");
    err
}

fn servers_of(st: &StateView, cluster: &str) -> Vec<ServerId> {
    st.clusters[&name(cluster)].servers.clone()
}

#[test]
fn update_server_changes_addresses_only() {
    let (mut st, ids) = base();
    let update = |id, api: &str| Command::UpdateServer {
        id,
        api_addr: api.into(),
        nbd_addr: "a:1".into(),
        peer_addr: "a:2".into(),
    };
    let ghost = ServerId::new_random();
    assert_eq!(
        refused(&mut st, update(ghost, "http://x")),
        CommandError::UnknownServer(ghost)
    );
    assert!(matches!(
        refused(&mut st, update(ids[0], " ")),
        CommandError::MissingAddress { .. }
    ));
    apply_command(&mut st, update(ids[0], "http://a:9")).expect("update");
    let rec = &st.servers[&ids[0]];
    assert_eq!(
        (
            rec.api_addr.as_str(),
            rec.nbd_addr.as_str(),
            rec.name.as_str()
        ),
        ("http://a:9", "a:1", "a")
    );
}

#[test]
fn create_cluster_takes_servers_from_default_only_when_asked() {
    let (mut st, ids) = base();
    let cc = |servers: Vec<ServerId>, take| Command::CreateCluster {
        name: name("x"),
        servers,
        take_from_default: take,
    };
    assert_eq!(
        refused(&mut st, cc(vec![ids[3], ids[0]], false)),
        CommandError::ServerInCluster {
            server: ids[0],
            cluster: name("default")
        }
    );
    apply_command(&mut st, cc(vec![ids[3], ids[0]], true)).expect("take from default");
    assert_eq!(servers_of(&st, "x"), vec![ids[3], ids[0]]);
    assert_eq!(servers_of(&st, "default"), vec![ids[1], ids[2]]);
    // Only `default` gives servers away.
    let again = Command::CreateCluster {
        name: name("y"),
        servers: vec![ids[0]],
        take_from_default: true,
    };
    assert_eq!(
        refused(&mut st, again),
        CommandError::ServerInCluster {
            server: ids[0],
            cluster: name("x")
        }
    );
}

#[test]
fn servers_holding_volume_chunks_do_not_move_to_another_cluster() {
    let (mut st, ids) = base();
    volume(&mut st, "v", "default", 2);
    // The volume's layout is the three servers of `default` at creation.
    let cc = Command::CreateCluster {
        name: name("x"),
        servers: vec![ids[1], ids[2]],
        take_from_default: true,
    };
    assert!(matches!(
        refused(&mut st, cc),
        CommandError::ServerHoldsData { .. }
    ));
    let remove = |server| Command::RemoveClusterServer {
        cluster: name("default"),
        server,
    };
    assert_eq!(
        refused(&mut st, remove(ids[3])),
        CommandError::NotInCluster {
            server: name("d"),
            cluster: name("default")
        }
    );
    // A server added later is not in the layout and leaves at once.
    apply_command(
        &mut st,
        Command::AddClusterServer {
            cluster: name("default"),
            server: ids[3],
        },
    )
    .expect("add");
    let out = apply_command(&mut st, remove(ids[3])).expect("not in any layout");
    assert!(
        matches!(out, CommandOutput::Cluster(c) if c.leaving.is_empty() && c.servers.len() == 3)
    );
}

#[test]
fn removing_a_server_migrates_its_volumes_then_it_leaves() {
    let (mut st, ids) = base();
    volume(&mut st, "v", "default", 2);
    volume(&mut st, "w", "default", 3);
    let remove = |server| Command::RemoveClusterServer {
        cluster: name("default"),
        server,
    };
    // `w` has 3 replicas and would keep 2 servers.
    assert!(matches!(
        refused(&mut st, remove(ids[0])),
        CommandError::TooFewServers {
            replicas: 3,
            left: 2,
            ..
        }
    ));
    apply_command(&mut st, Command::DeleteVolume { name: name("w") }).expect("delete");
    apply_command(&mut st, remove(ids[0])).expect("starts the migration");
    let v = st.volumes[&name("v")].clone();
    assert_eq!(v.servers, ids[..3].to_vec());
    assert_eq!(v.target, Some(vec![ids[1], ids[2]]));
    assert_eq!(st.clusters[&name("default")].leaving, vec![ids[0]]);
    assert!(matches!(
        refused(&mut st, remove(ids[0])),
        CommandError::AlreadyLeaving { .. }
    ));
    // New volumes avoid the leaving server.
    volume(&mut st, "new", "default", 2);
    assert_eq!(st.volumes[&name("new")].servers, vec![ids[1], ids[2]]);
    // All three are in sync; the leaving one is excused from seeding (each of its chunks has
    // another replica).
    assert_eq!(v.seeders(), vec![ids[1], ids[2]]);
    let seeded = |server, target: &[ServerId]| Command::MigrationSeeded {
        volume: v.id,
        server,
        target: target.to_vec(),
    };
    assert!(matches!(
        refused(&mut st, seeded(ids[1], &ids[..2])),
        CommandError::NotMigrating { .. }
    ));
    apply_command(&mut st, seeded(ids[1], &ids[1..3])).expect("seeded");
    assert_eq!(st.volumes[&name("v")].seeded, vec![ids[1]]);
    let finish = |target: &[ServerId]| Command::FinishMigration {
        volume: v.id,
        target: target.to_vec(),
    };
    assert!(matches!(
        refused(&mut st, finish(&ids[..2])),
        CommandError::NotMigrating { .. }
    ));
    apply_command(&mut st, finish(&ids[1..3])).expect("finish");
    let v = &st.volumes[&name("v")];
    assert_eq!(
        (v.servers.clone(), v.target.clone()),
        (ids[1..3].to_vec(), None)
    );
    assert!(v.seeded.is_empty());
    // No volume holds the server any more: it has left the cluster.
    assert_eq!(servers_of(&st, "default"), vec![ids[1], ids[2]]);
    assert!(st.clusters[&name("default")].leaving.is_empty());
}

#[test]
fn a_second_removal_retargets_the_running_migration() {
    let (mut st, ids) = base();
    apply_command(
        &mut st,
        Command::AddClusterServer {
            cluster: name("default"),
            server: ids[3],
        },
    )
    .expect("add");
    volume(&mut st, "v", "default", 2);
    let remove = |server| Command::RemoveClusterServer {
        cluster: name("default"),
        server,
    };
    apply_command(&mut st, remove(ids[0])).expect("first");
    let vid = st.volumes[&name("v")].id;
    let seeded = Command::MigrationSeeded {
        volume: vid,
        server: ids[1],
        target: ids[1..4].to_vec(),
    };
    apply_command(&mut st, seeded).expect("seeded");
    apply_command(&mut st, remove(ids[1])).expect("second");
    let v = &st.volumes[&name("v")];
    assert_eq!(v.target, Some(vec![ids[2], ids[3]]));
    assert!(v.seeded.is_empty(), "a new target needs seeding again");
    // A stale server that stays makes every in-sync server, the leaving ones too, a seeder.
    let stale = Command::MarkReplicaStale {
        volume: vid,
        server: ids[2],
        reporter: ids[3],
    };
    apply_command(&mut st, stale).expect("stale");
    assert_eq!(
        st.volumes[&name("v")].seeders(),
        vec![ids[0], ids[1], ids[3]]
    );
    // Two servers left for two replicas: a third removal is refused.
    assert!(matches!(
        refused(&mut st, remove(ids[2])),
        CommandError::TooFewServers { .. }
    ));
    // Deleting the migrating volume lets the leaving servers go at once.
    apply_command(&mut st, Command::DeleteVolume { name: name("v") }).expect("delete");
    assert_eq!(servers_of(&st, "default"), vec![ids[2], ids[3]]);
    assert!(st.clusters[&name("default")].leaving.is_empty());
}

#[test]
fn add_and_remove_cluster_servers() {
    let (mut st, ids) = base();
    let cc = Command::CreateCluster {
        name: name("x"),
        servers: vec![ids[3]],
        take_from_default: false,
    };
    apply_command(&mut st, cc).expect("create");
    let add = |cluster: &str, server| Command::AddClusterServer {
        cluster: name(cluster),
        server,
    };
    assert_eq!(
        refused(&mut st, add("nope", ids[0])),
        CommandError::UnknownCluster(name("nope"))
    );
    assert!(matches!(
        refused(&mut st, add("x", ids[3])),
        CommandError::ServerInCluster { .. }
    ));
    assert!(matches!(
        refused(&mut st, add("default", ids[0])),
        CommandError::ServerInCluster { .. }
    ));
    let out = apply_command(&mut st, add("x", ids[0])).expect("moves from default");
    assert!(matches!(out, CommandOutput::Cluster(c) if c.servers == vec![ids[3], ids[0]]));
    assert_eq!(servers_of(&st, "default"), vec![ids[1], ids[2]]);
    // A cluster without volumes may become empty; one with volumes keeps a server.
    let remove = |server| Command::RemoveClusterServer {
        cluster: name("x"),
        server,
    };
    apply_command(&mut st, remove(ids[0])).expect("remove");
    volume(&mut st, "v", "x", 1);
    assert!(matches!(
        refused(&mut st, remove(ids[3])),
        CommandError::TooFewServers { left: 0, .. }
    ));
    apply_command(&mut st, add("default", ids[0])).expect("back into default");
    assert_eq!(servers_of(&st, "default"), vec![ids[1], ids[2], ids[0]]);
}

#[test]
fn replicas_are_marked_stale_and_in_sync() {
    let (mut st, ids) = base();
    volume(&mut st, "v", "default", 2);
    let vid = st.volumes[&name("v")].id;
    let stale = |server, reporter| Command::MarkReplicaStale {
        volume: vid,
        server,
        reporter,
    };
    assert!(matches!(
        refused(&mut st, stale(ids[3], ids[0])),
        CommandError::NotInLayout { .. }
    ));
    apply_command(&mut st, stale(ids[1], ids[0])).expect("first loss");
    let epoch = st.volumes[&name("v")].epoch;
    apply_command(&mut st, stale(ids[1], ids[2])).expect("marking again");
    assert_eq!(st.volumes[&name("v")].stale, vec![ids[1]]);
    // Marking again moves the epoch: a declaration in sync decided before it is refused.
    assert_eq!(st.volumes[&name("v")].epoch, epoch + 1);
    // The stale server cannot fence its peers, and a second loss would leave no current copy.
    assert!(matches!(
        refused(&mut st, stale(ids[0], ids[1])),
        CommandError::ReporterStale { .. }
    ));
    assert!(matches!(
        refused(&mut st, stale(ids[2], ids[0])),
        CommandError::NoReplicaLeft { replicas: 2, .. }
    ));
    // Declared in sync as of an epoch the volume has left: refused, it stays stale.
    let epoch = st.volumes[&name("v")].epoch;
    let in_sync = |epoch| Command::MarkReplicaInSync {
        volume: vid,
        server: ids[1],
        epoch: Some(epoch),
    };
    assert!(matches!(
        refused(&mut st, in_sync(epoch - 1)),
        CommandError::EpochMoved { .. }
    ));
    assert_eq!(st.volumes[&name("v")].stale, vec![ids[1]]);
    apply_command(&mut st, in_sync(epoch)).expect("repaired");
    assert!(st.volumes[&name("v")].stale.is_empty());
    // A single-replica volume has no other copy to fall back on.
    volume(&mut st, "one", "default", 1);
    let one = st.volumes[&name("one")].id;
    let cmd = Command::MarkReplicaStale {
        volume: one,
        server: ids[0],
        reporter: ids[1],
    };
    assert!(matches!(
        refused(&mut st, cmd),
        CommandError::NoReplicaLeft { replicas: 1, .. }
    ));
}
