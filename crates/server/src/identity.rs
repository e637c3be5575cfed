//! A server's permanent identity, kept in `<data-dir>/server.json`: its [`ServerId`], name and
//! Raft node id. Made once, on the first start, and read on every later start, so a restarted
//! server is the same member of its group. Written new-then-renamed, with the file and the
//! directory synced, so a crash leaves either no identity or a whole one.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use strata_types::{Name, ServerId};

const FILE: &str = "server.json";
const FORMAT: u32 = 1;

/// What a server is, for its whole life.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// Format version of this file.
    pub format: u32,
    /// The server's id.
    pub id: ServerId,
    /// The server's name.
    pub name: Name,
    /// The server's node id in the Raft group, derived from its id.
    pub raft_node_id: u64,
}

impl Identity {
    /// Reads the identity in `dir`, or makes and stores a new one named `name` (or after the id).
    /// A name given for an existing identity must match it.
    pub fn load_or_create(dir: &Path, name: Option<&Name>) -> anyhow::Result<Self> {
        let path = dir.join(FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path)?;
            let identity: Identity = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}); restore it from a backup",
                    path.display()
                )
            })?;
            if identity.format != FORMAT {
                anyhow::bail!(
                    "{} has format {}, this strata reads format {FORMAT}",
                    path.display(),
                    identity.format
                );
            }
            if let Some(n) = name {
                if *n != identity.name {
                    anyhow::bail!(
                        "this data directory belongs to server {:?}, not {:?}; drop --name or use another directory",
                        identity.name.as_str(),
                        n.as_str()
                    );
                }
            }
            return Ok(identity);
        }
        let id = ServerId::new_random();
        let name = match name {
            Some(n) => n.clone(),
            None => Name::new(&format!("server-{}", &id.to_string()[..8]))?,
        };
        let bytes = id.to_bytes();
        let mut node = [0u8; 8];
        node.copy_from_slice(&bytes[..8]);
        // Raft node ids must be non-zero; keep 63 bits so they print the same in every tool.
        let raft_node_id = (u64::from_be_bytes(node) >> 1).max(1);
        let identity = Identity {
            format: FORMAT,
            id,
            name,
            raft_node_id,
        };
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{FILE}.new"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&identity)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), Some(&Name::new("a").unwrap())).unwrap();
        let again = Identity::load_or_create(dir.path(), None).unwrap();
        assert_eq!(a.id, again.id);
        assert_eq!(a.raft_node_id, again.raft_node_id);
        assert!(a.raft_node_id > 0);
        let err = Identity::load_or_create(dir.path(), Some(&Name::new("b").unwrap())).unwrap_err();
        assert!(err.to_string().contains("belongs to server"));
    }
}
