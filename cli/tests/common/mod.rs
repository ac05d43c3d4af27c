//! The shared helpers for in-process mesh tests live in the crate (`fleetmesh_node::testing`)
//! so the CLI's tests use the same ones.

#![allow(unused_imports, unreachable_pub)]

pub use fleetmesh_node::testing::*;
