//! The NBD server's limits in the configuration: the `nbd_*` keys of [`super::ServerConfigFile`]
//! (and their `--nbd-*` flags) checked and turned into a [`strata_nbd::ServerConfig`].
//!
//! Every limit has the default of [`strata_nbd::ServerConfig::default`]. Sizes are human sizes
//! (`128MiB`, or a number of bytes); the idle timeout is seconds (`300`) or a duration (`5m`,
//! `1h 30m`), and `0` means never. Refused: a count of 0, a per-connection byte budget below the
//! largest request the server advertises ([`strata_nbd::consts::MAX_PAYLOAD`], so one request
//! would already overrun it), and a per-connection budget larger than the server-wide one (it
//! could never be reached).

use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use strata_nbd::consts::MAX_PAYLOAD;
use strata_types::{format_size, parse_size};

use super::ConfigError;

/// The NBD limits as the file and the flags give them, each optional.
pub(super) struct NbdLimits<'a> {
    pub(super) max_connections: Option<usize>,
    pub(super) idle_timeout: Option<&'a str>,
    pub(super) reply_timeout: Option<&'a str>,
    pub(super) max_requests_per_connection: Option<usize>,
    pub(super) max_bytes_per_connection: Option<&'a str>,
    pub(super) max_bytes: Option<&'a str>,
}

impl NbdLimits<'_> {
    /// Checks every limit and fills the defaults.
    pub(super) fn validate(&self) -> Result<strata_nbd::ServerConfig, ConfigError> {
        let default = strata_nbd::ServerConfig::default();
        let max_connections = count(
            "nbd_max_connections",
            self.max_connections,
            default.max_connections,
            "no client could connect",
        )?;
        let max_requests_per_connection = count(
            "nbd_max_requests_per_connection",
            self.max_requests_per_connection,
            default.max_requests_per_connection,
            "no request would ever be served",
        )?;
        let idle_timeout = match self.idle_timeout {
            Some(text) => parse_timeout("nbd_idle_timeout", text)?,
            None => default.idle_timeout,
        };
        let reply_timeout = match self.reply_timeout {
            Some(text) => parse_timeout("nbd_reply_timeout", text)?,
            None => default.reply_timeout,
        };
        let max_bytes_per_connection = bytes(
            "nbd_max_bytes_per_connection",
            self.max_bytes_per_connection,
            default.max_bytes_per_connection,
        )?;
        let max_bytes = bytes("nbd_max_bytes", self.max_bytes, default.max_bytes)?;
        let largest = MAX_PAYLOAD as usize;
        if max_bytes_per_connection < largest {
            return Err(ConfigError::Invalid(format!(
                "nbd_max_bytes_per_connection {} is smaller than the largest request the NBD \
                 server advertises ({}): give at least {} (default {})",
                show(max_bytes_per_connection),
                show(largest),
                show(largest),
                show(default.max_bytes_per_connection)
            )));
        }
        if max_bytes_per_connection > max_bytes {
            return Err(ConfigError::Invalid(format!(
                "nbd_max_bytes_per_connection {} is larger than nbd_max_bytes {}, the budget all \
                 NBD connections share: lower the first or raise the second",
                show(max_bytes_per_connection),
                show(max_bytes)
            )));
        }
        Ok(strata_nbd::ServerConfig {
            max_connections,
            idle_timeout,
            reply_timeout,
            max_requests_per_connection,
            max_bytes_per_connection,
            max_bytes,
        })
    }
}

/// A count that must be at least 1.
fn count(
    key: &str,
    value: Option<usize>,
    default: usize,
    if_zero: &str,
) -> Result<usize, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::Invalid(format!(
            "{key} is 0: {if_zero}; give at least 1 (default {default})"
        ))),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// A byte budget from a human size.
fn bytes(key: &str, value: Option<&str>, default: usize) -> Result<usize, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let n = parse_size(text).map_err(|e| {
        ConfigError::Invalid(format!("{key}: {e}; write a size such as 128MiB or 1GiB"))
    })?;
    usize::try_from(n)
        .map_err(|_| ConfigError::Invalid(format!("{key} {text} is larger than this machine")))
}

/// A timeout (`key` names it in errors): seconds or a duration; 0 is never.
fn parse_timeout(key: &str, text: &str) -> Result<Option<Duration>, ConfigError> {
    let t = text.trim();
    let refused = || {
        ConfigError::Invalid(format!(
            "{key} {text:?} is not a duration: write seconds (300) or a duration such as 5m or \
             1h 30m; 0 is never"
        ))
    };
    let duration = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(t.parse().map_err(|_| refused())?)
    } else {
        let signed: jiff::SignedDuration = t.parse().map_err(|_| refused())?;
        Duration::try_from(signed).map_err(|_| refused())?
    };
    Ok((!duration.is_zero()).then_some(duration))
}

fn show(bytes: usize) -> String {
    format_size(bytes as u64)
}

/// Deserializes a TOML string or integer as text, so `nbd_idle_timeout = 300` and
/// `nbd_max_bytes = "1GiB"` both read as people write them.
pub(super) fn text_or_number<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Text;

    impl Visitor<'_> for Text {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number or a string such as \"128MiB\" or \"5m\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }

    deserializer.deserialize_any(Text)
}

#[cfg(test)]
mod tests {
    use super::super::ServerConfigFile;
    use super::*;

    const MIB: usize = 1 << 20;

    fn file(toml_text: &str) -> ServerConfigFile {
        toml::from_str(&format!("data_dir = \"/d\"\n{toml_text}")).unwrap()
    }

    fn refusal(toml_text: &str) -> String {
        file(toml_text).validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_nbd_servers_defaults() {
        let c = file("").validate().unwrap();
        assert_eq!(c.nbd_limits, strata_nbd::ServerConfig::default());
        assert_eq!(c.nbd_limits.max_connections, 256);
        assert_eq!(c.nbd_limits.idle_timeout, None);
        assert_eq!(c.nbd_limits.reply_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.nbd_limits.max_requests_per_connection, 64);
        assert_eq!(c.nbd_limits.max_bytes_per_connection, 128 * MIB);
        assert_eq!(c.nbd_limits.max_bytes, 512 * MIB);
    }

    #[test]
    fn a_file_sets_every_limit() {
        let c = file(
            "nbd_max_connections = 8\nnbd_idle_timeout = \"1h 30m\"\nnbd_reply_timeout = 0\n\
             nbd_max_requests_per_connection = 16\nnbd_max_bytes_per_connection = \"64MiB\"\n\
             nbd_max_bytes = 1073741824",
        )
        .validate()
        .unwrap();
        assert_eq!(
            c.nbd_limits,
            strata_nbd::ServerConfig {
                max_connections: 8,
                idle_timeout: Some(Duration::from_secs(5400)),
                reply_timeout: None,
                max_requests_per_connection: 16,
                max_bytes_per_connection: 64 * MIB,
                max_bytes: 1024 * MIB,
            }
        );
    }

    #[test]
    fn idle_timeouts_in_seconds_or_durations_and_zero_is_never() {
        let timeout = |v: &str| file(&format!("nbd_idle_timeout = {v}")).validate().unwrap();
        for (value, expected) in [
            ("300", Some(300)),
            ("\"300\"", Some(300)),
            ("\"5m\"", Some(300)),
            ("\"2 minutes 30s\"", Some(150)),
            ("0", None),
            ("\"0s\"", None),
        ] {
            assert_eq!(
                timeout(value).nbd_limits.idle_timeout,
                expected.map(Duration::from_secs),
                "{value}"
            );
        }
    }

    #[test]
    fn flags_override_the_file() {
        let flags = ServerConfigFile {
            nbd_max_connections: Some(3),
            nbd_idle_timeout: Some("10s".into()),
            nbd_max_bytes: Some("2GiB".into()),
            ..Default::default()
        };
        let c = flags
            .or(file(
                "nbd_max_connections = 8\nnbd_idle_timeout = 60\n\
                 nbd_max_bytes_per_connection = \"256MiB\"",
            ))
            .validate()
            .unwrap();
        assert_eq!(c.nbd_limits.max_connections, 3);
        assert_eq!(c.nbd_limits.idle_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.nbd_limits.max_bytes, 2048 * MIB);
        assert_eq!(
            c.nbd_limits.max_bytes_per_connection,
            256 * MIB,
            "from the file"
        );
        assert_eq!(c.nbd_limits.max_requests_per_connection, 64, "the default");
    }

    #[test]
    fn bad_limits_are_refused_saying_what_to_do() {
        for (toml_text, expected) in [
            ("nbd_max_connections = 0", "nbd_max_connections is 0"),
            (
                "nbd_max_requests_per_connection = 0",
                "nbd_max_requests_per_connection is 0: no request would ever be served; give at least 1",
            ),
            (
                "nbd_max_bytes_per_connection = \"16MiB\"",
                "nbd_max_bytes_per_connection 16MiB is smaller than the largest request the NBD \
                 server advertises (32MiB): give at least 32MiB (default 128MiB)",
            ),
            (
                "nbd_max_bytes_per_connection = \"1GiB\"",
                "nbd_max_bytes_per_connection 1GiB is larger than nbd_max_bytes 512MiB",
            ),
            (
                "nbd_max_bytes_per_connection = \"64MiB\"\nnbd_max_bytes = \"48MiB\"",
                "larger than nbd_max_bytes 48MiB",
            ),
            ("nbd_max_bytes = \"lots\"", "nbd_max_bytes: "),
            ("nbd_idle_timeout = \"soon\"", "write seconds (300) or a duration"),
            ("nbd_idle_timeout = \"-5s\"", "is not a duration"),
            ("nbd_idle_timeout = -5", "is not a duration"),
            ("nbd_reply_timeout = \"later\"", "nbd_reply_timeout \"later\" is not a duration"),
        ] {
            let message = refusal(toml_text);
            assert!(message.contains(expected), "{toml_text}: {message}");
        }
        let wrong_type = toml::from_str::<ServerConfigFile>("nbd_max_bytes = true").unwrap_err();
        assert!(
            wrong_type.to_string().contains("a number or a string"),
            "{wrong_type}"
        );
    }
}
