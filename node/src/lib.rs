//! The fleetmesh node.
//!
//! * [`Node::spawn`] starts a node: a libp2p swarm owned by one event-loop task, and a
//!   cloneable [`Client`] that talks to it over a bounded command channel.
//! * The event loop plays both roles of the task lifecycle: requester (announce, collect
//!   bids, award, verify; see `requester.rs`) and worker (bid, execute, return results; see
//!   `worker.rs`). Both persist to the store before acknowledging anything.
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
pub mod executor;
#[cfg(feature = "test-hooks")]
pub mod hooks;
mod metrics;
mod node;
mod requester;
pub mod state;
mod store;
pub mod trace;
mod worker;

pub use codec::Frame;
pub use config::{ConfigError, NodeConfig, TaskDefaults};
pub use node::{Client, ClientError, Node, NodeError, PeerInfo, SubmitRequest};
pub use state::{Phase, TaskView};
pub use store::StoreError;

/// The libp2p peer id (as a string) of a fleetmesh public key.
pub fn peer_id_string(key: &fleetmesh_crypto::PublicKey) -> String {
    node::peer_id_of(key).to_string()
}
