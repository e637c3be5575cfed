//! The NBD export list of this server: for every volume of its cluster, an export `VOL` (its
//! writable head) and one `VOL@SNAP` per snapshot (read-only). This server is the gateway of
//! each ([`strata_volume::GatewayDevice`]): the data lives on the replicas of each chunk.
//! Names resolve against this server's applied state each time a client connects, so a new
//! volume or snapshot is exported as soon as the server has applied it.

use async_trait::async_trait;
use std::sync::Arc;
use strata_meta::{Meta, StateView, VolumeRecord};
use strata_nbd::{BlockDevice, Client, ExportInfo, ExportProvider, OpenError};
use strata_types::{format_size, Name};
use strata_volume::{Engine, GatewayDevice};

/// Resolves export names to gateway devices.
pub struct Exports {
    meta: Meta,
    engine: Arc<Engine>,
}

impl Exports {
    /// Exports of the volumes in `meta`, served through `engine`.
    pub fn new(meta: Meta, engine: Arc<Engine>) -> Self {
        Self { meta, engine }
    }

    /// Whether this server is in `v`'s cluster (and so may be its gateway).
    fn serves(&self, state: &StateView, v: &VolumeRecord) -> bool {
        state
            .clusters
            .get(&v.cluster)
            .is_some_and(|c| c.servers.contains(&self.engine.me()))
    }
}

#[async_trait]
impl ExportProvider for Exports {
    async fn list(&self) -> Vec<ExportInfo> {
        let state = self.meta.local_state();
        let mut out = Vec::new();
        for v in state.volumes.values() {
            if !self.serves(&state, v) {
                continue; // served by the servers of another cluster
            }
            out.push(ExportInfo {
                name: v.name.to_string(),
                description: format!("volume {} ({})", v.name, format_size(v.size)),
            });
            for s in &v.snapshots {
                out.push(ExportInfo {
                    name: format!("{}@{}", v.name, s.name),
                    description: format!("snapshot {} of volume {} (read-only)", s.name, v.name),
                });
            }
        }
        out
    }

    async fn open(&self, name: &str, client: Client) -> Result<Arc<dyn BlockDevice>, OpenError> {
        let state = self.meta.local_state();
        let (vol_name, snap_name) = match name.split_once('@') {
            Some((v, s)) => (v, Some(s)),
            None => (name, None),
        };
        let volume = Name::new(vol_name)
            .ok()
            .and_then(|n| state.volumes.get(&n))
            .ok_or(OpenError::Unknown)?;
        let (layer, size, read_only) = match snap_name {
            None => (None, volume.size, false),
            Some(s) => {
                let snap = volume
                    .snapshots
                    .iter()
                    .find(|x| x.name.as_str() == s)
                    .ok_or(OpenError::Unknown)?;
                (Some(snap.layer), snap.size, true)
            }
        };
        if !self.serves(&state, volume) {
            let other = state
                .clusters
                .get(&volume.cluster)
                .and_then(|c| c.servers.first())
                .and_then(|s| state.servers.get(s));
            return Err(OpenError::Other(match other {
                Some(s) => format!(
                    "volume {} is on cluster {}, which this server is not in: connect to nbd://{}/{name}",
                    volume.name, volume.cluster, s.nbd_addr
                ),
                None => format!("volume {} has no server to serve it", volume.name),
            }));
        }
        let view = self.engine.view(volume.id).ok_or_else(|| {
            OpenError::Other("volume is not ready on this server yet; retry in a moment".into())
        })?;
        if layer.is_some_and(|l| !view.layers.contains(&l)) {
            return Err(OpenError::Other(
                "snapshot is not ready on this server yet; retry in a moment".into(),
            ));
        }
        // This server's view may lag a resize by a moment: never export more than it knows.
        let size = size.min(view.size);
        Ok(Arc::new(GatewayDevice::new(
            self.engine.clone(),
            volume.id,
            volume.name.as_str(),
            layer,
            size,
            read_only,
            client
                .addr
                .map_or_else(|| "a local client".into(), |a| a.to_string()),
        )))
    }
}
