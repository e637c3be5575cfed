//! Server configuration in two steps: [`ServerConfigFile`] is what a TOML file (`--config`) and
//! the command line say, every field optional with a documented default; [`ServerConfig`] is the
//! validated result the server runs with. Command-line flags override the file. The NBD
//! server's limits (`nbd_*`) are checked in `config/nbd.rs`.

mod nbd;

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default management API address.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7780";
/// Default NBD address.
pub const DEFAULT_NBD_ADDR: &str = "127.0.0.1:10809";

/// The TOML configuration file, and the command line's view of the same settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfigFile {
    /// Directory holding this server's store and management state (required).
    pub data_dir: Option<PathBuf>,
    /// The server's name (default: the host name, or `server-<id>`).
    pub name: Option<String>,
    /// Management API listen address (default 127.0.0.1:7780; port 0 picks a free port).
    pub api: Option<String>,
    /// NBD listen address (default 127.0.0.1:10809; port 0 picks a free port).
    pub nbd: Option<String>,
    /// Listen address for server-to-server data traffic (default: the API's IP, port + 1, so
    /// 127.0.0.1:7781; port 0 when the API's port is 0).
    pub peer: Option<String>,
    /// The API URL other servers and clients should use, when it differs from the listen
    /// address (NAT, a proxy, listening on 0.0.0.0). Default: `http://` + the API address.
    pub advertise_api: Option<String>,
    /// The peer address other servers should use, when it differs from `peer`.
    pub advertise_peer: Option<String>,
    /// The local IP outgoing connections to other servers leave from (default: the system's
    /// choice).
    pub source_ip: Option<String>,
    /// Start a new management group with this server as its only manager.
    #[serde(default)]
    pub bootstrap: bool,
    /// Join the management group of the server at this API URL.
    pub join: Option<String>,
    /// Throttle for background snapshot merges, bytes per second (default: unthrottled).
    pub merge_rate: Option<String>,
    /// Most NBD connections open at once (default 256); more are closed as soon as accepted.
    pub nbd_max_connections: Option<usize>,
    /// Close an NBD connection after this long with no request read and no reply written:
    /// seconds (`300`) or a duration (`5m`, `1h 30m`). Default, and `0`: never (the Linux
    /// kernel client keeps idle connections while the device is attached).
    #[serde(default, deserialize_with = "nbd::text_or_number")]
    pub nbd_idle_timeout: Option<String>,
    /// Close an NBD connection whose client has not taken a reply for this long, giving the
    /// bytes it held back (default 60 s; `0`: never): seconds or a duration.
    #[serde(default, deserialize_with = "nbd::text_or_number")]
    pub nbd_reply_timeout: Option<String>,
    /// Most requests of one NBD connection in flight (default 64).
    pub nbd_max_requests_per_connection: Option<usize>,
    /// Most payload bytes of one NBD connection's requests in flight, counted until each reply
    /// is written to the socket (default 128MiB; at least 32MiB, the largest request, and at
    /// most `nbd_max_bytes`).
    #[serde(default, deserialize_with = "nbd::text_or_number")]
    pub nbd_max_bytes_per_connection: Option<String>,
    /// Most payload bytes in flight over all NBD connections together (default 512MiB).
    #[serde(default, deserialize_with = "nbd::text_or_number")]
    pub nbd_max_bytes: Option<String>,
}

impl ServerConfigFile {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            error: e.to_string(),
        })
    }

    /// Fills every field `self` leaves unset from `file`.
    pub fn or(self, file: ServerConfigFile) -> Self {
        Self {
            data_dir: self.data_dir.or(file.data_dir),
            name: self.name.or(file.name),
            api: self.api.or(file.api),
            nbd: self.nbd.or(file.nbd),
            peer: self.peer.or(file.peer),
            advertise_api: self.advertise_api.or(file.advertise_api),
            advertise_peer: self.advertise_peer.or(file.advertise_peer),
            source_ip: self.source_ip.or(file.source_ip),
            bootstrap: self.bootstrap || file.bootstrap,
            join: self.join.or(file.join),
            merge_rate: self.merge_rate.or(file.merge_rate),
            nbd_max_connections: self.nbd_max_connections.or(file.nbd_max_connections),
            nbd_idle_timeout: self.nbd_idle_timeout.or(file.nbd_idle_timeout),
            nbd_reply_timeout: self.nbd_reply_timeout.or(file.nbd_reply_timeout),
            nbd_max_requests_per_connection: self
                .nbd_max_requests_per_connection
                .or(file.nbd_max_requests_per_connection),
            nbd_max_bytes_per_connection: self
                .nbd_max_bytes_per_connection
                .or(file.nbd_max_bytes_per_connection),
            nbd_max_bytes: self.nbd_max_bytes.or(file.nbd_max_bytes),
        }
    }

    /// Checks every field and resolves the defaults.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        let data_dir = self.data_dir.ok_or(ConfigError::MissingDataDir)?;
        let name = match self.name {
            Some(n) => Some(
                strata_types::Name::new(&n)
                    .map_err(|e| ConfigError::Invalid(format!("--name: {e}")))?,
            ),
            None => None,
        };
        let api = parse_addr("--api", self.api.as_deref().unwrap_or(DEFAULT_API_ADDR))?;
        let nbd = parse_addr("--nbd", self.nbd.as_deref().unwrap_or(DEFAULT_NBD_ADDR))?;
        let peer = match self.peer.as_deref() {
            Some(p) => parse_addr("--peer", p)?,
            None => {
                let port = match api.port() {
                    0 => 0,
                    p => p.checked_add(1).ok_or_else(|| {
                        ConfigError::Invalid(
                            "the API port is the highest port; give --peer IP:PORT".into(),
                        )
                    })?,
                };
                SocketAddr::new(api.ip(), port)
            }
        };
        let advertise_peer = match self.advertise_peer.as_deref() {
            Some(p) => Some(parse_addr("advertise_peer", p)?),
            None => None,
        };
        let source_ip = match self.source_ip.as_deref() {
            Some(ip) => Some(ip.parse().map_err(|_| {
                ConfigError::Invalid(format!("source_ip {ip:?} is not an IP address"))
            })?),
            None => None,
        };
        if self.bootstrap && self.join.is_some() {
            return Err(ConfigError::Invalid(
                "--bootstrap and --join exclude each other: bootstrap makes a new group, join enters an existing one".into(),
            ));
        }
        let merge_rate = match self.merge_rate {
            Some(r) => Some(
                strata_types::parse_size(r.trim_end_matches("/s"))
                    .map_err(|e| ConfigError::Invalid(format!("merge_rate: {e}")))?,
            ),
            None => None,
        };
        let nbd_limits = nbd::NbdLimits {
            max_connections: self.nbd_max_connections,
            idle_timeout: self.nbd_idle_timeout.as_deref(),
            reply_timeout: self.nbd_reply_timeout.as_deref(),
            max_requests_per_connection: self.nbd_max_requests_per_connection,
            max_bytes_per_connection: self.nbd_max_bytes_per_connection.as_deref(),
            max_bytes: self.nbd_max_bytes.as_deref(),
        }
        .validate()?;
        Ok(ServerConfig {
            data_dir,
            name,
            api,
            nbd,
            peer,
            advertise_api: self.advertise_api,
            advertise_peer,
            source_ip,
            bootstrap: self.bootstrap,
            join: self.join,
            merge_rate,
            nbd_limits,
        })
    }
}

fn parse_addr(flag: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{flag} {text:?} is not an address; write IP:PORT, e.g. 127.0.0.1:7780"
        ))
    })
}

/// The validated configuration a server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory holding this server's store and management state.
    pub data_dir: PathBuf,
    /// The name from the configuration, if given.
    pub name: Option<strata_types::Name>,
    /// Management API listen address.
    pub api: SocketAddr,
    /// NBD listen address.
    pub nbd: SocketAddr,
    /// Listen address for server-to-server data traffic (the wire protocol).
    pub peer: SocketAddr,
    /// The API URL others use, if not `http://` + the API address.
    pub advertise_api: Option<String>,
    /// The peer address others use, if not the peer listen address.
    pub advertise_peer: Option<SocketAddr>,
    /// Where outgoing connections to other servers leave from.
    pub source_ip: Option<std::net::IpAddr>,
    /// Start a new management group.
    pub bootstrap: bool,
    /// Join the group of the server at this URL.
    pub join: Option<String>,
    /// Background merge throttle in bytes per second.
    pub merge_rate: Option<u64>,
    /// What the NBD server lets clients make it hold: connections, idle time, requests and
    /// payload bytes in flight.
    pub nbd_limits: strata_nbd::ServerConfig,
}

impl ServerConfig {
    /// A configuration for tests and `strata dev`: loopback, free ports, a new group.
    pub fn local(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            name: None,
            api: SocketAddr::from(([127, 0, 0, 1], 0)),
            nbd: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_api: None,
            advertise_peer: None,
            source_ip: None,
            bootstrap: true,
            join: None,
            merge_rate: None,
            nbd_limits: strata_nbd::ServerConfig::default(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No data directory was given.
    #[error("no data directory: pass --data-dir DIR or set data_dir in the config file")]
    MissingDataDir,
    /// The config file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read { path: PathBuf, error: String },
    /// The config file is not valid TOML for this struct.
    #[error("config file {path} is invalid: {error}")]
    Parse { path: PathBuf, error: String },
    /// A value is out of its allowed range or form.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: ServerConfigFile =
            toml::from_str("data_dir = \"/d\"\nname = \"a\"\nnbd = \"127.0.0.1:1\"").unwrap();
        let flags = ServerConfigFile {
            name: Some("b".into()),
            ..Default::default()
        };
        let c = flags.or(file).validate().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.name.unwrap().as_str(), "b");
        assert_eq!(c.nbd.port(), 1);
        assert_eq!(c.api.to_string(), DEFAULT_API_ADDR);
        assert_eq!(c.peer.to_string(), "127.0.0.1:7781");
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let no_dir = ServerConfigFile::default().validate().unwrap_err();
        assert!(no_dir.to_string().contains("--data-dir"));
        let bad = ServerConfigFile {
            data_dir: Some("/d".into()),
            api: Some("localhost".into()),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("IP:PORT"));
        assert!(toml::from_str::<ServerConfigFile>("colour = 1").is_err());
    }
}
