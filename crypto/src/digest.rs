//! blake3 content ids as distinct newtypes.
//!
//! All of them are 32-byte blake3 digests, printed and parsed as 64 lowercase hex digits and
//! serialized as a CBOR byte string (not an array of 32 integers).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestParseError {
    /// Not 64 characters long.
    #[error("a digest is 64 hex digits, got {0} characters")]
    Length(usize),
    /// A character outside `0-9a-fA-F`.
    #[error("a digest is written in hex digits (0-9, a-f)")]
    NotHex,
}

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw digest bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// blake3 of `data`.
            pub fn of(data: &[u8]) -> Self {
                Self(*blake3::hash(data).as_bytes())
            }

            /// The raw digest bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 8 hex digits, for logs and tables.
            pub fn fmt_short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "({})"), self.fmt_short())
            }
        }

        impl FromStr for $name {
            type Err = DigestParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_bytes(Bytes32Visitor).map(Self)
            }
        }
    };
}

digest_type!(
    /// A digest of anything; prefer the specific newtypes below.
    Digest, "Digest"
);
digest_type!(
    /// Names a task: blake3 of the signed task spec's exact payload bytes, so a spec cannot be
    /// swapped under its id.
    TaskId, "TaskId"
);
digest_type!(
    /// Names a model: blake3 of the model file's bytes.
    ModelId, "ModelId"
);
digest_type!(
    /// blake3 of a task's input bytes.
    InputDigest, "InputDigest"
);
digest_type!(
    /// blake3 of a task's output bytes.
    OutputDigest, "OutputDigest"
);

pub(crate) fn parse_hex32(s: &str) -> Result<[u8; 32], DigestParseError> {
    if s.len() != 64 {
        return Err(DigestParseError::Length(s.len()));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| DigestParseError::NotHex)?;
    Ok(out)
}

/// Accepts exactly 32 bytes, as a byte string or (for self-describing formats that lack one)
/// a sequence of integers.
pub(crate) struct Bytes32Visitor;

impl<'de> Visitor<'de> for Bytes32Visitor {
    type Value = [u8; 32];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("32 bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(33, &self));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = TaskId::of(b"spec bytes");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<TaskId>().unwrap(), id);
        assert_eq!(id.as_bytes(), blake3::hash(b"spec bytes").as_bytes());
    }

    #[test]
    fn parse_rejects_bad_strings() {
        assert_eq!("abc".parse::<ModelId>(), Err(DigestParseError::Length(3)));
        let not_hex = "z".repeat(64);
        assert_eq!(not_hex.parse::<ModelId>(), Err(DigestParseError::NotHex));
    }

    #[test]
    fn cbor_is_a_byte_string_and_round_trips() {
        let id = OutputDigest::of(b"out");
        let mut buf = Vec::new();
        ciborium::into_writer(&id, &mut buf).unwrap();
        // major type 2 (byte string), length 32 in the next byte
        assert_eq!(&buf[..2], &[0x58, 32]);
        assert_eq!(buf.len(), 34);
        let back: OutputDigest = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn cbor_rejects_wrong_length() {
        let mut buf = Vec::new();
        ciborium::into_writer(&serde_bytes_of(&[1u8; 31]), &mut buf).unwrap();
        assert!(ciborium::from_reader::<InputDigest, _>(&buf[..]).is_err());
    }

    fn serde_bytes_of(b: &[u8]) -> ciborium::Value {
        ciborium::Value::Bytes(b.to_vec())
    }
}
