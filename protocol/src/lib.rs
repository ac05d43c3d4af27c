//! fleetmesh wire types, CBOR codecs, protocol ids, size limits and the rules both sides of a
//! task follow.
//!
//! A leaf crate of plain types and pure functions: no async runtime and no libp2p, so every
//! rule here can be unit- and property-tested on its own, and any node (or a researcher's
//! tool) can recompute a decision from the signed messages alone.
//!
//! * [`codec`]: CBOR encoding with explicit size limits; hostile bytes give a typed error.
//! * [`messages`]: the task spec, announcement, bid, award, decline, result header, receipt,
//!   presence advert and open-task index; every one carries a version field and ignores
//!   fields it does not know, so later versions can add fields without breaking old nodes.
//! * [`wire`]: what travels on the request-response protocol.
//! * [`winner`]: the deterministic winner rule.
//! * [`verify`]: the checks a requester applies to a result, and the majority rule.
//! * [`records`]: which DHT records a node stores.
//! * [`selection`]: who may take part in a round (market v2; not yet used by the engine).
//! * [`output`]: the canonical encoding of a model's output.
//! * [`batch`]: many inputs under one spec, one Merkle root over their outputs.
//! * [`limits`] and [`ids`]: sizes and names both sides must agree on.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod batch;
pub mod codec;
pub mod ids;
pub mod limits;
pub mod messages;
pub mod output;
pub mod records;
pub mod selection;
pub mod verify;
pub mod winner;
pub mod wire;

pub use codec::{decode, encode, DecodeError};
pub use messages::*;
