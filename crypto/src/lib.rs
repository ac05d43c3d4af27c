//! Keys, signed envelopes and content ids for fleetmesh.
//!
//! This is a leaf crate of plain types and pure functions: no async runtime, no networking.
//! Everything a node signs or hashes goes through here, so the rules are in one place:
//!
//! * A node's identity is one ed25519 key ([`Identity`]). The same key is the node's libp2p
//!   `PeerId` (the node crate converts it) and signs its tasks, bids, results and receipts.
//! * Signed data travels as a [`SignedEnvelope`]: the exact payload bytes, the signer's public
//!   key and a signature over a per-[`MessageKind`] domain tag plus the payload. Verification
//!   works on the received bytes, never on a re-encoding, so an encoder change cannot break
//!   old signatures, and a signature made for one kind of message is refused for any other.
//! * Content is named by blake3 digests wrapped in newtypes ([`TaskId`], [`ModelId`],
//!   [`InputDigest`], [`OutputDigest`]) so that an input digest can never be passed where a
//!   model id is expected.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod digest;
mod envelope;
mod keys;
mod keystore;
pub mod merkle;
pub mod ops;

pub use digest::{Digest, DigestParseError, InputDigest, ModelId, OutputDigest, TaskId};
pub use envelope::{MessageKind, SignedEnvelope, VerifyError};
pub use keys::{Identity, KeyError, PublicKey, Signature};
pub use keystore::{load_or_create_identity, KeystoreError};
