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

/// Whether two outputs agree within `tolerance` millionths per element: the same bytes, or
/// both `f32` tensors of one shape whose elements differ by at most `tolerance` × 10⁻⁶ (a
/// NaN or an infinity agrees with nothing but the same bytes). Other dtypes agree only
/// bit for bit: a tolerance is for float workloads, and an integer output (the digits
/// model's) has no rounding to forgive.
pub fn within(a: &[u8], b: &[u8], tolerance: u32) -> bool {
    if a == b {
        return true;
    }
    let (Ok(x), Ok(y)) = (ModelOutput::from_bytes(a), ModelOutput::from_bytes(b)) else { return false };
    if x.dtype != "f32" || y.dtype != "f32" || x.shape != y.shape || x.data.len() != y.data.len() {
        return false;
    }
    if x.data.len() % 4 != 0 {
        return false;
    }
    let tol = f64::from(tolerance) * 1e-6;
    let f = |c: &[u8]| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    x.data.chunks_exact(4).zip(y.data.chunks_exact(4)).all(|(p, q)| (f(p) - f(q)).abs() <= tol)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        ModelOutput {
            dtype: "f32".into(),
            shape: vec![v.len() as u64],
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            argmax: None,
        }
        .to_bytes()
    }

    #[test]
    fn float_outputs_agree_within_the_tolerance_and_nothing_else_does() {
        let a = f32s(&[0.5, -1.25, 3.0]);
        let near = f32s(&[0.5 + 4.0e-7, -1.25 - 8.5e-7, 3.0]);
        let far = f32s(&[0.5, -1.25, 3.002]);
        assert!(within(&a, &a, 0));
        assert!(!within(&a, &near, 0), "no tolerance: bit for bit");
        assert!(within(&a, &near, 1), "1e-6 covers a difference of 9e-7");
        assert!(!within(&a, &far, 1_000), "2e-3 is beyond 1e-3");
        assert!(within(&a, &far, 2_001));
        // Shape, length, NaN, other dtypes, junk: no.
        assert!(!within(&a, &f32s(&[0.5, -1.25]), 1_000_000));
        let nan = f32s(&[f32::NAN, -1.25, 3.0]);
        assert!(!within(&nan, &f32s(&[0.0, -1.25, 3.0]), u32::MAX));
        assert!(within(&nan, &nan, 0), "the same bytes");
        let i8s = |v: &[i8]| {
            ModelOutput {
                dtype: "i8".into(),
                shape: vec![2],
                data: v.iter().map(|x| *x as u8).collect(),
                argmax: None,
            }
            .to_bytes()
        };
        assert!(!within(&i8s(&[1, 2]), &i8s(&[1, 3]), u32::MAX), "integers agree only bit for bit");
        assert!(!within(b"junk", b"junk2", u32::MAX));
    }
}
