//! Storage and blob ids: SHA-256 digests, written as 64 lower-case hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// A 32-byte SHA-256 id (blob ids hash the plaintext, file ids hash the stored bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    pub const LEN: usize = 32;

    /// SHA-256 of `data`.
    pub fn hash(data: &[u8]) -> Id {
        Id(Sha256::digest(data).into())
    }

    /// A random id (repository ids).
    pub fn random() -> Id {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        Id(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// First 8 hex digits, as restic shows ids.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Whether the hex form starts with `prefix` (case-insensitive).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        let h = self.to_hex();
        prefix.len() <= h.len()
            && h.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }

    pub fn from_slice(b: &[u8]) -> Option<Id> {
        <[u8; 32]>::try_from(b).ok().map(Id)
    }
}

impl FromStr for Id {
    type Err = Error;
    fn from_str(s: &str) -> Result<Id, Error> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|_| Error::InvalidId {
            text: s.to_string(),
        })?;
        Ok(Id(b))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Resolves `prefix` against `ids`: exactly one must match.
pub fn find_by_prefix<'a>(
    prefix: &str,
    ids: impl IntoIterator<Item = &'a Id>,
) -> Result<Id, Error> {
    let matches: Vec<Id> = ids
        .into_iter()
        .filter(|id| id.has_prefix(prefix))
        .copied()
        .collect();
    match matches.len() {
        0 => Err(Error::SnapshotNotFound {
            query: prefix.to_string(),
        }),
        1 => Ok(matches[0]),
        n => Err(Error::AmbiguousId {
            query: prefix.to_string(),
            count: n,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_prefix() {
        let id = Id::hash(b"hello");
        assert_eq!(
            id.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let back: Id = id.to_hex().parse().unwrap();
        assert_eq!(back, id);
        assert!(id.has_prefix("2CF24d"));
        assert!(!id.has_prefix("2cf25"));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
        assert!("xyz".parse::<Id>().is_err());
    }

    #[test]
    fn prefix_resolution() {
        let a = Id([0xab; 32]);
        let b = Id([0xac; 32]);
        assert_eq!(find_by_prefix("ab", [&a, &b]).unwrap(), a);
        assert!(matches!(
            find_by_prefix("a", [&a, &b]),
            Err(Error::AmbiguousId { count: 2, .. })
        ));
        assert!(matches!(
            find_by_prefix("ff", [&a, &b]),
            Err(Error::SnapshotNotFound { .. })
        ));
    }
}
