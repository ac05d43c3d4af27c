//! The parts of the `fleetmesh` binary that tests and other tools call as a library: the
//! node's local HTTP API server, the in-process demo and the benchmarks. The engine itself
//! is the `fleetmesh-node` crate.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bench;
pub mod demo;
pub mod server;
