//! The NBD export list of this server: for every volume of the management state, an export
//! `VOL` (its writable head) and one `VOL@SNAP` per snapshot (read-only). Names resolve against
//! this server's applied management state each time a client connects, so a new volume or
//! snapshot is exported as soon as the server has applied it.

use crate::device::VolumeDevice;
use async_trait::async_trait;
use std::sync::Arc;
use strata_meta::Meta;
use strata_nbd::{BlockDevice, ExportInfo, ExportProvider, OpenError};
use strata_store::Store;
use strata_types::{format_size, Name};

/// Resolves export names to devices on this server's store.
pub struct Exports {
    meta: Meta,
    store: Arc<Store>,
}

impl Exports {
    /// Exports of the volumes in `meta`, served from `store`.
    pub fn new(meta: Meta, store: Arc<Store>) -> Self {
        Self { meta, store }
    }
}

#[async_trait]
impl ExportProvider for Exports {
    async fn list(&self) -> Vec<ExportInfo> {
        let state = self.meta.local_state();
        let mut out = Vec::new();
        for v in state.volumes.values() {
            if self.store.volume(v.id).is_err() {
                continue; // served by another server
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

    async fn open(&self, name: &str) -> Result<Arc<dyn BlockDevice>, OpenError> {
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
        let stored = self.store.volume(volume.id).map_err(|_| {
            OpenError::Other(match state.home_server(volume) {
                Some(home) => format!(
                    "volume {} is served by server {}: connect to nbd://{}/{name}",
                    volume.name, home.name, home.nbd_addr
                ),
                None => format!("volume {} has no server to serve it", volume.name),
            })
        })?;
        if layer.is_some_and(|l| !stored.layers.iter().any(|x| x.id == l)) {
            return Err(OpenError::Other(
                "snapshot is not ready on this server yet; retry in a moment".into(),
            ));
        }
        // The store may lag a resize by a moment: never export more than it holds.
        let size = size.min(stored.size);
        Ok(Arc::new(VolumeDevice::new(
            self.store.clone(),
            volume.id,
            volume.name.to_string(),
            layer,
            size,
            read_only,
        )))
    }
}
