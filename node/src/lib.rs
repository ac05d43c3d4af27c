//! The fleetmesh node.
//!
//! * [`Node::spawn`] starts a node: a libp2p swarm owned by one event-loop task, and a
//!   cloneable [`Client`] that talks to it over a bounded command channel.
//! * [`engine`] is the task lifecycle as a pure state machine: requester (announce, collect
//!   bids, award, verify) and worker (bid, execute, return results). It takes inputs and the
//!   time and returns actions; the event loop performs them (persisting before acknowledging
//!   anything), so the lifecycle is tested without sockets.
//! * [`executor`] runs models with tract-onnx; [`digits`] is the embedded default model.
//! * [`api`] is the local HTTP JSON API; [`demo`] runs a whole mesh in one process.
//!
//! libp2p types stay inside this crate; `crypto` and `protocol` know nothing of them.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
mod behaviour;
pub mod bench;
mod codec;
pub mod config;
pub mod demo;
pub mod digits;
#[deny(clippy::arithmetic_side_effects)]
pub mod engine;
pub mod executor;
#[cfg(feature = "test-hooks")]
pub mod hooks;
mod metrics;
mod node;
pub mod sim;
pub mod state;
mod store;
pub mod trace;

pub use codec::Frame;
pub use config::{ConfigError, NodeConfig, TaskDefaults};
pub use node::{Client, ClientError, Node, NodeError, PeerInfo, SubmitRequest};
pub use state::{Phase, TaskView};
pub use store::StoreError;

/// The libp2p peer id (as a string) of a fleetmesh public key.
pub fn peer_id_string(key: &fleetmesh_crypto::PublicKey) -> String {
    node::peer_id_of(key).to_string()
}
