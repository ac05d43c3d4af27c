//! The canonical encoding of a model's output: what a worker hashes and signs, and what a
//! requester (or anyone) decodes. It lives here, beside the other rules both sides follow, so
//! the engine needs no inference runtime to read a result.

use serde::{Deserialize, Serialize};

/// A model's output, canonically encoded for hashing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOutput {
    /// Element type (`i8`, `u8`, `i32`, `f32`, ...).
    pub dtype: String,
    /// Tensor shape.
    pub shape: Vec<u64>,
    /// Elements, little-endian.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Index of the largest element (lowest index wins ties), for classifiers.
    pub argmax: Option<u32>,
}

impl ModelOutput {
    /// The canonical bytes (what the output digest covers).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::encode(self)
    }

    /// Parses output bytes received from a worker.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        crate::decode(bytes, crate::limits::MAX_OUTPUT_BYTES)
    }

    /// The elements as i8, if that is the dtype.
    pub fn as_i8(&self) -> Option<Vec<i8>> {
        (self.dtype == "i8").then(|| self.data.iter().map(|&b| b as i8).collect())
    }
}
