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

/// The largest tolerance a spec may declare, millionths: 10 % (a task that needs more does
/// not need verifying).
pub const MAX_TOLERANCE: u32 = 100_000;

/// Whether two outputs agree within `tolerance` millionths per element: the same bytes, or
/// both canonically encoded `f32` tensors of one shape with the same `argmax` whose elements
/// `x`, `y` are equal (infinities of one sign included) or differ by at most
/// `tolerance` × 10⁻⁶ × max(1, |x|, |y|): relative for large values, absolute below 1, as
/// `math.isclose` with `rel_tol = abs_tol`. A NaN agrees with nothing but the same bytes.
/// Other dtypes agree only bit for bit: a tolerance is for float workloads, and an integer
/// output (the digits model's) has no rounding to forgive.
pub fn within(a: &[u8], b: &[u8], tolerance: u32) -> bool {
    within_scaled(a, b, f64::from(tolerance) * 1e-6)
}

/// [`within`] at twice the tolerance: outputs beyond it are beyond the tolerance of every
/// output within the tolerance of either (what a requester may hold against a worker).
pub fn within_twice(a: &[u8], b: &[u8], tolerance: u32) -> bool {
    within_scaled(a, b, 2.0 * f64::from(tolerance) * 1e-6)
}

fn within_scaled(a: &[u8], b: &[u8], tol: f64) -> bool {
    if a == b {
        return true;
    }
    let (Ok(x), Ok(y)) = (ModelOutput::from_bytes(a), ModelOutput::from_bytes(b)) else { return false };
    // One encoding per output, and the label a user reads must be the same: an output that
    // differs in anything but the floats' rounding does not agree.
    if x.to_bytes() != a || y.to_bytes() != b || x.argmax != y.argmax {
        return false;
    }
    if x.dtype != "f32" || y.dtype != "f32" || x.shape != y.shape || x.data.len() != y.data.len() {
        return false;
    }
    if x.data.len() % 4 != 0 {
        return false;
    }
    let f = |c: &[u8]| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    x.data.chunks_exact(4).zip(y.data.chunks_exact(4)).all(|(p, q)| {
        let (p, q) = (f(p), f(q));
        p == q || (p.is_finite() && q.is_finite() && (p - q).abs() <= tol * 1f64.max(p.abs()).max(q.abs()))
    })
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
        let far = f32s(&[0.5, -1.25, 3.01]);
        assert!(within(&a, &a, 0));
        assert!(!within(&a, &near, 0), "no tolerance: equal values only");
        assert!(within(&a, &near, 1), "1e-6 covers a difference of 9e-7");
        assert!(!within(&a, &far, 1_000), "1e-2 is beyond 1e-3 of 3.01");
        assert!(within(&a, &far, 3_400), "3.4e-3 of 3.01 covers 1e-2");
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
        // Infinities of one sign agree; of two signs, or beside a number, they do not.
        let inf = f32s(&[f32::NEG_INFINITY, 1.0]);
        assert!(within(&inf, &f32s(&[f32::NEG_INFINITY, 1.000_000_5]), 1));
        assert!(!within(&inf, &f32s(&[f32::INFINITY, 1.0]), MAX_TOLERANCE));
        assert!(!within(&inf, &f32s(&[-3.0e38, 1.0]), MAX_TOLERANCE));
        // Relative above 1: 1e-6 of 1000 is 1e-3.
        assert!(within(&f32s(&[1_000.0]), &f32s(&[1_000.000_9]), 1));
        assert!(!within(&f32s(&[1_000.0]), &f32s(&[1_000.01]), 1));
        assert!(!within_twice(&f32s(&[1.0]), &f32s(&[1.000_003]), 1));
        assert!(within_twice(&f32s(&[1.0]), &f32s(&[1.000_001_5]), 1));
    }

    /// Review: an output with the same floats but another label, or another encoding of the
    /// same tensor, does not agree (a liar within the tolerance cannot change what the user
    /// reads, nor the bytes the digest names).
    #[test]
    fn a_different_label_or_encoding_does_not_agree_within_any_tolerance() {
        let honest = ModelOutput {
            dtype: "f32".into(),
            shape: vec![2],
            data: [0.1f32, 0.9].iter().flat_map(|x| x.to_le_bytes()).collect(),
            argmax: Some(1),
        };
        let lie = ModelOutput { argmax: Some(0), ..honest.clone() };
        assert!(!within(&honest.to_bytes(), &lie.to_bytes(), MAX_TOLERANCE));
        // The same value, another encoding (an unknown field, which decoding ignores).
        #[derive(serde::Serialize)]
        struct Padded<'a> {
            dtype: &'a str,
            shape: &'a [u64],
            #[serde(with = "serde_bytes")]
            data: &'a [u8],
            argmax: Option<u32>,
            pad: u8,
        }
        let padded = crate::encode(&Padded {
            dtype: "f32",
            shape: &honest.shape,
            data: &honest.data,
            argmax: honest.argmax,
            pad: 0,
        });
        assert_eq!(ModelOutput::from_bytes(&padded).unwrap(), honest, "decodes to the same output");
        assert!(!within(&honest.to_bytes(), &padded, MAX_TOLERANCE));
    }
}
