//! What the volume engine needs to know of the management state, kept current by the server
//! after every applied change ([`crate::Engine::update`]): each volume's size, layers, layout
//! (and the layout it migrates to), stale replicas, and every server's peer address.
//!
//! While a volume migrates, a chunk's replicas are its replicas under the current layout
//! followed by those the target layout adds (the chunk's *gaining* servers). Writes go to all
//! of them; a gaining server is not *current* for the chunk (not read from, repaired from the
//! missed marks) until the migration finishes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use strata_meta::{StateView, VolumeRecord};
use strata_types::{LayerId, ServerId, VolumeId, CHUNK_SIZE};

use crate::placement::replicas_of;

/// One volume as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeView {
    /// The volume's id.
    pub id: VolumeId,
    /// Its name (for logs, metrics and errors).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Replicas per chunk.
    pub replicas: usize,
    /// The layer stack, bottom to top.
    pub layers: Vec<LayerId>,
    /// The servers its chunks are placed on.
    pub layout: Vec<ServerId>,
    /// The layout the volume is moving to, while a migration runs.
    pub target: Option<Vec<ServerId>>,
    /// Servers that seeded the running migration's marks.
    pub seeded: Vec<ServerId>,
    /// Servers that must seed before the migration may finish.
    pub seeders: Vec<ServerId>,
    /// Servers of the layout that missed writes and are not repaired yet.
    pub stale: Vec<ServerId>,
    /// The routing epoch: raised by every change of the replicas or of which are current.
    pub epoch: u64,
    /// The servers of its cluster: every one of them may act as its gateway.
    pub cluster: Vec<ServerId>,
}

impl VolumeView {
    /// The view of a volume record of `state`.
    pub fn of(state: &StateView, v: &VolumeRecord) -> Self {
        Self {
            id: v.id,
            name: v.name.to_string(),
            size: v.size,
            replicas: usize::from(v.replicas),
            layers: v.layers.clone(),
            layout: v.servers.clone(),
            target: v.target.clone(),
            seeded: v.seeded.clone(),
            seeders: v.seeders(),
            stale: v.stale.clone(),
            epoch: v.epoch,
            cluster: state
                .clusters
                .get(&v.cluster)
                .map(|c| c.servers.clone())
                .unwrap_or_default(),
        }
    }

    /// The writable head layer.
    pub fn head(&self) -> Option<LayerId> {
        self.layers.last().copied()
    }

    /// The replicas of `chunk`, best first: under the current layout, then those a running
    /// migration adds.
    pub fn replicas_of(&self, chunk: u64) -> Vec<ServerId> {
        let mut all = self.placed(chunk);
        all.extend(self.gaining(chunk));
        all
    }

    /// The replicas of `chunk` under the current layout only, best first.
    pub fn placed(&self, chunk: u64) -> Vec<ServerId> {
        replicas_of(self.id, chunk, &self.layout, self.replicas)
    }

    /// The servers a running migration adds to `chunk`'s replicas.
    pub fn gaining(&self, chunk: u64) -> Vec<ServerId> {
        let Some(target) = &self.target else {
            return Vec::new();
        };
        let now = self.placed(chunk);
        replicas_of(self.id, chunk, target, self.replicas)
            .into_iter()
            .filter(|s| !now.contains(s))
            .collect()
    }

    /// Whether `server` holds current data (it is not stale).
    pub fn in_sync(&self, server: ServerId) -> bool {
        !self.stale.contains(&server)
    }

    /// Whether `server`'s copy of `chunk` is current: it is in sync and does not gain the
    /// chunk in a running migration.
    pub fn current(&self, server: ServerId, chunk: u64) -> bool {
        self.in_sync(server) && !self.gaining(chunk).contains(&server)
    }

    /// Whether `server` is in the layout or in the layout being moved to.
    pub fn holds(&self, server: ServerId) -> bool {
        self.layout.contains(&server) || self.target.as_ref().is_some_and(|t| t.contains(&server))
    }

    /// How many chunks the volume has.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(CHUNK_SIZE)
    }
}

/// The engine's whole picture: volumes by id, peers by id.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Every volume.
    pub volumes: HashMap<VolumeId, Arc<VolumeView>>,
    /// Every server's peer (wire) address; servers whose address does not parse are absent.
    pub peers: HashMap<ServerId, SocketAddr>,
}

impl Topology {
    /// The topology of `state`.
    pub fn of(state: &StateView) -> Self {
        let volumes = state
            .volumes
            .values()
            .map(|v| (v.id, Arc::new(VolumeView::of(state, v))))
            .collect();
        let peers = state
            .servers
            .values()
            .filter_map(|s| Some((s.id, s.peer_addr.parse().ok()?)))
            .collect();
        Self { volumes, peers }
    }
}
