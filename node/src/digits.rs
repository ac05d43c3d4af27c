//! The embedded default model and its held-out test set.
//!
//! `models/digits/` holds the recipe (`make_model.py`, pinned in `requirements.txt`) that
//! produces both files byte for byte. The model takes 64 pixels scaled to 0..1 as f32 and
//! returns int8 logits for the digits 0 to 9; the label is their argmax (lowest index wins
//! ties). Each test sample carries onnxruntime's logits, so tract's results are checked
//! against an independent engine.

use fleetmesh_crypto::ModelId;

/// The quantized digits classifier (ONNX, ~6 KB).
pub const MODEL_ONNX: &[u8] = include_bytes!("../../models/digits/digits.onnx");
const TEST_SET: &[u8] = include_bytes!("../../models/digits/digits_test.bin");
const MAGIC: &[u8] = b"FMDIGIT1";
const RECORD: usize = 64 + 1 + 10;

/// The model id of [`MODEL_ONNX`].
pub fn model_id() -> ModelId {
    ModelId::of(MODEL_ONNX)
}

/// One held-out sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// 8x8 pixels, 0..=16, row by row.
    pub pixels: [u8; 64],
    /// The true digit.
    pub label: u8,
    /// onnxruntime's int8 logits for these pixels.
    pub reference_logits: [i8; 10],
}

impl Sample {
    /// The task input: the 64 pixels scaled by 1/16 as little-endian f32.
    pub fn to_input(&self) -> Vec<u8> {
        self.pixels.iter().flat_map(|&p| (f32::from(p) / 16.0).to_le_bytes()).collect()
    }
}

/// The held-out test set (450 samples).
pub fn test_set() -> Vec<Sample> {
    parse_test_set(TEST_SET).unwrap_or_default()
}

fn parse_test_set(bytes: &[u8]) -> Option<Vec<Sample>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let count = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let body = rest.get(4..)?;
    if body.len() != count * RECORD {
        return None;
    }
    Some(
        body.chunks_exact(RECORD)
            .filter_map(|r| {
                Some(Sample {
                    pixels: r[..64].try_into().ok()?,
                    label: r[64],
                    reference_logits: r[65..75]
                        .iter()
                        .map(|&b| b as i8)
                        .collect::<Vec<_>>()
                        .try_into()
                        .ok()?,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_set_parses() {
        let s = test_set();
        assert_eq!(s.len(), 450);
        assert!(s.iter().all(|x| x.label < 10 && x.pixels.iter().all(|&p| p <= 16)));
        assert_eq!(s[0].to_input().len(), 256);
    }

    #[test]
    fn truncated_test_set_is_refused() {
        assert!(parse_test_set(&TEST_SET[..TEST_SET.len() - 1]).is_none());
        assert!(parse_test_set(b"nope").is_none());
    }
}
