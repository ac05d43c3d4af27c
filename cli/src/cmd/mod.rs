//! One file per command.

pub(crate) mod bench;
pub(crate) mod certify;
pub(crate) mod demo;
pub(crate) mod keygen;
pub(crate) mod node;
pub(crate) mod query;
pub(crate) mod sim;
pub(crate) mod submit;
pub(crate) mod trace;
