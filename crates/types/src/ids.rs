//! Typed ids. Each wraps a UUID so ids are globally unique: snapshot (layer) ids travel with
//! remote snapshots, and two volumes find their latest common snapshot by comparing them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new random id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The id as 16 big-endian bytes, for keys in on-disk tables.
            pub fn to_bytes(self) -> [u8; 16] {
                *self.0.as_bytes()
            }

            /// The id from 16 bytes written by [`Self::to_bytes`].
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

typed_id!(
    /// Identifies a volume for its whole life, across renames and sites.
    VolumeId
);
typed_id!(
    /// Identifies one layer of a volume's stack. A snapshot is a frozen layer, so a snapshot's id
    /// is its layer's id.
    LayerId
);
typed_id!(
    /// Identifies one `strata server` (one data directory) for its whole life.
    ServerId
);
typed_id!(
    /// Identifies one job: a long operation (verify, server removal) the group runs and
    /// reports on.
    JobId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_bytes_and_json() {
        let id = LayerId::new_random();
        assert_eq!(id.to_string().parse::<LayerId>().unwrap(), id);
        assert_eq!(LayerId::from_bytes(id.to_bytes()), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<LayerId>(&json).unwrap(), id);
    }
}
