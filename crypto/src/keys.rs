//! A node's ed25519 identity, public keys and signatures.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{parse_hex32, Bytes32Visitor, DigestParseError};

/// Why key material was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
    /// 32 bytes that are not a valid ed25519 public key (not a curve point, or a weak key).
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
}

/// A node's signing identity: an ed25519 secret key.
///
/// The secret is zeroized when dropped (ed25519-dalek's `zeroize` feature) and never printed:
/// `Debug` shows only the public key.
pub struct Identity {
    signing: SigningKey,
}

impl Identity {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_secret_bytes(&seed))
    }

    /// The identity with this 32-byte secret seed.
    pub fn from_secret_bytes(seed: &[u8; 32]) -> Self {
        Self { signing: SigningKey::from_bytes(seed) }
    }

    /// The 32-byte secret seed, wrapped so it is zeroized when dropped. Only for writing the
    /// key file and handing the key to libp2p.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs raw bytes. Callers outside this crate sign through [`crate::SignedEnvelope`],
    /// which adds the domain separation.
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> Signature {
        crate::ops::count_sign();
        Signature(self.signing.sign(msg).to_bytes())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("public", &self.public()).finish_non_exhaustive()
    }
}

/// An ed25519 public key: who signed something.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes, refusing invalid and weak (small-order) keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(KeyError::InvalidPublicKey);
        }
        Ok(Self(key))
    }

    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The first 8 hex digits, for logs and tables.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.0.as_bytes()[..4])
    }

    /// The libp2p peer id of this key, as libp2p prints it (base58btc of the identity
    /// multihash of the protobuf-encoded key). Computed here so code without libp2p (the
    /// engine, trace tools) names peers exactly as the network does.
    pub fn peer_id(&self) -> String {
        // identity multihash (0x00), length 36, then protobuf { type: Ed25519 (1), data: 32 bytes }.
        let mut bytes = Vec::with_capacity(38);
        bytes.extend_from_slice(&[0x00, 36, 0x08, 0x01, 0x12, 32]);
        bytes.extend_from_slice(self.0.as_bytes());
        bs58::encode(bytes).into_string()
    }

    /// The key inside a libp2p peer id string (the inverse of [`PublicKey::peer_id`]);
    /// `None` for anything that is not an ed25519 peer id.
    pub fn from_peer_id(peer_id: &str) -> Option<Self> {
        let bytes = bs58::decode(peer_id).into_vec().ok()?;
        let key = bytes.strip_prefix(&[0x00, 36, 0x08, 0x01, 0x12, 32][..])?;
        let key: [u8; 32] = key.try_into().ok()?;
        Self::from_bytes(&key).ok()
    }

    pub(crate) fn verify_raw(&self, msg: &[u8], sig: &Signature) -> bool {
        crate::ops::count_verify();
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0.verify_strict(msg, &sig).is_ok()
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fmt_short())
    }
}

/// Why a string is not a public key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublicKeyParseError {
    /// Not 64 hex digits.
    #[error(transparent)]
    Format(#[from] DigestParseError),
    /// Not a usable ed25519 key.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl FromStr for PublicKey {
    type Err = PublicKeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from_bytes(&parse_hex32(s)?)?)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_bytes())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = d.deserialize_bytes(Bytes32Visitor)?;
        Self::from_bytes(&bytes).map_err(de::Error::custom)
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub(crate) [u8; 64]);

impl Signature {
    /// The 64 signature bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }

    /// Wraps 64 bytes; whether they are a valid signature is decided at verification.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..4]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V).map(Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let id = Identity::from_secret_bytes(&[7u8; 32]);
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&hex::encode([7u8; 32])));
        assert!(dbg.contains(&id.public().fmt_short()));
    }

    #[test]
    fn peer_ids_round_trip_and_garbage_is_refused() {
        let pk = Identity::from_secret_bytes(&[3; 32]).public();
        let id = pk.peer_id();
        assert!(id.starts_with("12D3KooW"), "{id}");
        assert_eq!(PublicKey::from_peer_id(&id), Some(pk));
        for bad in ["", "12D3KooW", "not base58 0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"] {
            assert_eq!(PublicKey::from_peer_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn public_key_round_trips_through_string_and_cbor() {
        let pk = Identity::generate().unwrap().public();
        assert_eq!(pk.to_string().parse::<PublicKey>().unwrap(), pk);
        let mut buf = Vec::new();
        ciborium::into_writer(&pk, &mut buf).unwrap();
        assert_eq!(ciborium::from_reader::<PublicKey, _>(&buf[..]).unwrap(), pk);
    }

    #[test]
    fn weak_and_invalid_keys_are_refused() {
        // The identity point is a small-order (weak) key.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(PublicKey::from_bytes(&identity_point).is_err());
        // Not on the curve: y = 2 has no valid x.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(PublicKey::from_bytes(&bad).is_err());
    }

    #[test]
    fn generated_identities_differ() {
        assert_ne!(Identity::generate().unwrap().public(), Identity::generate().unwrap().public());
    }
}
