//! The fleetmesh node.
//!
//! * [`Node::spawn`] starts a node: a libp2p swarm owned by one event-loop task, and a
//!   cloneable [`Client`] that talks to it over a bounded command channel.
//! * [`engine`] is the task lifecycle as a pure state machine: requester (announce, collect
//!   bids, award, verify) and worker (bid, execute, return results). It takes inputs and the
//!   time and returns actions; the event loop performs them (persisting before acknowledging
//!   anything), so the lifecycle is tested without sockets.
//! * [`engine::sim`] runs many engines over a simulated network in virtual time, from one seed.
//! * [`executor`] runs models with tract-onnx; [`digits`] is the embedded default model.
//! * [`local`] starts a whole mesh in one process (tests, the demo, the benchmarks).
//!
//! This is the engine library: no CLI, HTTP server, HTTP client or plotting (those live in
//! the `fleetmesh` binary crate, `cli/`). libp2p types stay inside this crate; `crypto`,
//! `protocol`, `api` and `trace` know nothing of them.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod behaviour;
mod codec;
pub mod config;
mod dht;
pub mod digits;
pub mod executor;
pub mod local;
mod metrics;
mod node;
mod per_ip;
mod store;
#[cfg(feature = "test-hooks")]
pub mod testing;
pub mod tracer;
pub mod vehicle;
mod writer;

pub use codec::Frame;
pub use config::{ConfigError, NodeConfig, TaskDefaults};
pub use fleetmesh_api::{NodeStats, PeerInfo, Phase, SubmitRequest, TaskView};
/// The task lifecycle as a state machine, and the simulator (the `fleetmesh-engine` crate).
pub use fleetmesh_engine as engine;
/// Misbehaving-worker hooks for integration tests.
#[cfg(feature = "test-hooks")]
pub use fleetmesh_engine::hooks;
pub use node::{Client, ClientError, Node, NodeError};
pub use store::StoreError;
