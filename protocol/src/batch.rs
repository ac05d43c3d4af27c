//! Batch tasks: one spec, one award and one signed result for many inputs of one model.
//!
//! A spec with [`TaskSpec::batch`] = n carries n inputs of equal size, laid end to end. Its
//! `input_digest` is the Merkle root ([`fleetmesh_crypto::merkle`]) over blake3 of each input,
//! and a worker's signed `output_digest` is the root over blake3 of each output, the outputs
//! travelling as one CBOR list of byte strings. So the whole batch costs the signatures and
//! messages of one task, workers' results are compared by their roots (equal roots, equal
//! outputs, for a bit-exact model), and each output is checked alone against the signed root
//! with its path (log2 n digests): [`proofs`].
//!
//! A spec without `batch` is read as before: the input digest is blake3 of the input, the
//! output digest blake3 of the output. A node that predates batches ignores the field, finds
//! that the input does not hash to the digest, and refuses the award (`InputMismatch`); a node
//! that takes batches says so in its advert ([`crate::Presence::max_batch`]).

use fleetmesh_crypto::{merkle, Digest, InputDigest, OutputDigest};
use serde_bytes::ByteBuf;

use crate::codec::{decode, encode, DecodeError};
use crate::limits;
use crate::messages::TaskSpec;

/// The most inputs one batch spec carries.
pub const MAX_BATCH: u16 = 256;

/// Why a batch is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The batch size is 0 or above [`MAX_BATCH`].
    #[error("a batch holds 1 to {MAX_BATCH} inputs, not {0}")]
    Count(u16),
    /// The input does not split into equal parts.
    #[error("{len} input bytes do not split into {n} equal inputs")]
    Uneven {
        /// Input bytes.
        len: u64,
        /// Inputs declared.
        n: u16,
    },
    /// The outputs do not decode as a list.
    #[error("the batch's outputs do not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The list is not in its canonical encoding ([`encode_outputs`]).
    #[error("the batch's outputs are not canonically encoded")]
    NotCanonical,
    /// The list holds another number of outputs than the batch has inputs.
    #[error("{got} outputs for a batch of {n}")]
    Outputs {
        /// Outputs received.
        got: usize,
        /// Inputs in the batch.
        n: u16,
    },
}

impl TaskSpec {
    /// How many inputs the task carries (1 without a batch).
    pub fn items(&self) -> u16 {
        self.batch.unwrap_or(1)
    }

    /// The size of each input: the whole input for a task without a batch.
    pub fn item_size(&self) -> u64 {
        self.input_size / u64::from(self.items().max(1))
    }

    /// Whether the spec's batch is well formed (always, without a batch).
    pub fn check_batch(&self) -> Result<(), BatchError> {
        check(self.batch, self.input_size).map(|_| ())
    }

    /// What a worker asking `floor` per input asks for the task: a batch costs n runs.
    pub fn price_for(&self, floor: u64) -> u64 {
        floor.saturating_mul(u64::from(self.items()))
    }

    /// The most output bytes an honest worker returns for the task when the model's output
    /// has `per_output` bytes ([`output_limit`]).
    pub fn output_limit(&self, per_output: u64) -> u64 {
        output_limit(self.batch, per_output)
    }

    /// Whether the spec's inputs each fit a model taking `expected` bytes.
    pub fn fits(&self, expected: u64) -> bool {
        self.check_batch().is_ok() && self.item_size() == expected
    }
}

/// The most output bytes of a task of `batch` when each output has `per_output` bytes: the
/// output itself, or a batch's list, which adds at most 9 bytes of framing to each output
/// and 3 to the list.
pub fn output_limit(batch: Option<u16>, per_output: u64) -> u64 {
    match batch {
        Some(n) => per_output.saturating_add(9).saturating_mul(u64::from(n)).saturating_add(3),
        None => per_output,
    }
}

/// The size of each input of a batch of `n` over `len` bytes.
fn check(batch: Option<u16>, len: u64) -> Result<u64, BatchError> {
    let Some(n) = batch else { return Ok(len) };
    if n == 0 || n > MAX_BATCH {
        return Err(BatchError::Count(n));
    }
    let n64 = u64::from(n);
    if len == 0 || !len.is_multiple_of(n64) {
        return Err(BatchError::Uneven { len, n });
    }
    Ok(len / n64)
}

/// The parts of a batch's input, in order (the whole input without a batch).
pub fn split_input(batch: Option<u16>, input: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
    let size = check(batch, input.len() as u64)?;
    match usize::try_from(size) {
        Ok(size) if batch.is_some() => Ok(input.chunks(size.max(1)).collect()),
        _ => Ok(vec![input]),
    }
}

/// The input digest a spec carries for `input`: blake3 of it, or for a batch the Merkle root
/// over blake3 of each part.
pub fn input_digest(batch: Option<u16>, input: &[u8]) -> Result<InputDigest, BatchError> {
    if batch.is_none() {
        return Ok(InputDigest::of(input));
    }
    let leaves: Vec<Digest> = split_input(batch, input)?.into_iter().map(Digest::of).collect();
    Ok(InputDigest::from_bytes(*merkle::root(&leaves).as_bytes()))
}

/// The outputs of a batch as they travel: a CBOR list of byte strings, one per input.
pub fn encode_outputs(outputs: &[Vec<u8>]) -> Vec<u8> {
    let list: Vec<&serde_bytes::Bytes> = outputs.iter().map(|o| serde_bytes::Bytes::new(o)).collect();
    encode(&list)
}

/// The outputs of a batch of `n` from the bytes a worker sent, which must be their canonical
/// encoding ([`encode_outputs`]). The root covers the outputs, not the list's bytes, and a
/// CBOR decoder takes the same list in many encodings (tags, indefinite lengths, long
/// heads, byte strings as arrays of integers): without this check a worker could send its
/// outputs padded, or in a form another decoder reads differently, under an honest root.
pub fn decode_outputs(n: u16, bytes: &[u8]) -> Result<Vec<ByteBuf>, BatchError> {
    let list: Vec<ByteBuf> = decode(bytes, limits::MAX_OUTPUT_BYTES)?;
    if list.len() != usize::from(n) {
        return Err(BatchError::Outputs { got: list.len(), n });
    }
    let list_refs: Vec<&serde_bytes::Bytes> = list.iter().map(|o| serde_bytes::Bytes::new(o)).collect();
    if encode(&list_refs) != bytes {
        return Err(BatchError::NotCanonical);
    }
    Ok(list)
}

/// The output digest a worker signs for `output`: blake3 of it, or for a batch the Merkle root
/// over blake3 of each output in the list.
pub fn output_digest(batch: Option<u16>, output: &[u8]) -> Result<OutputDigest, BatchError> {
    let Some(n) = batch else { return Ok(OutputDigest::of(output)) };
    let leaves: Vec<Digest> = decode_outputs(n, output)?.iter().map(|o| Digest::of(o)).collect();
    Ok(OutputDigest::from_bytes(*merkle::root(&leaves).as_bytes()))
}

/// One output of a batch with what checks it alone against the signed root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemProof {
    /// The output's bytes.
    pub output: Vec<u8>,
    /// blake3 of them (the leaf).
    pub digest: Digest,
    /// The sibling digests from the leaf to the root ([`merkle::path`]).
    pub path: Vec<Digest>,
}

/// Each output of a batch of `n` with its path to the root.
pub fn proofs(n: u16, output: &[u8]) -> Result<Vec<ItemProof>, BatchError> {
    let outputs = decode_outputs(n, output)?;
    let leaves: Vec<Digest> = outputs.iter().map(|o| Digest::of(o)).collect();
    Ok(outputs
        .into_iter()
        .zip(leaves.iter().copied())
        .zip(merkle::paths(&leaves))
        .map(|((o, digest), path)| ItemProof { digest, path, output: o.into_vec() })
        .collect())
}

/// Whether `output` is output `index` of a batch of `n` whose signed digest is `root`.
pub fn verify_item(output: &[u8], index: usize, n: u16, path: &[Digest], root: &OutputDigest) -> bool {
    merkle::verify(&Digest::of(output), index, usize::from(n), path, &Digest::from_bytes(*root.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_digest_commits_to_each_part_and_each_output_checks_alone() {
        let input: Vec<u8> = (0..40u8).collect();
        let root = input_digest(Some(4), &input).unwrap();
        assert_ne!(root, InputDigest::of(&input), "a batch's digest is a root, not the plain hash");
        assert_eq!(input_digest(None, &input).unwrap(), InputDigest::of(&input));
        let mut changed = input.clone();
        changed[35] ^= 1;
        assert_ne!(input_digest(Some(4), &changed).unwrap(), root);
        assert_ne!(input_digest(Some(2), &input).unwrap(), root, "the split is part of it");

        let outputs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 3]).collect();
        let bytes = encode_outputs(&outputs);
        let signed = output_digest(Some(4), &bytes).unwrap();
        let items = proofs(4, &bytes).unwrap();
        assert_eq!(items.len(), 4);
        for (i, p) in items.iter().enumerate() {
            assert_eq!(p.output, outputs[i]);
            assert!(verify_item(&p.output, i, 4, &p.path, &signed));
            assert!(!verify_item(b"another output", i, 4, &p.path, &signed));
        }
        // Two workers' lists with one output changed have other roots.
        let mut lie = outputs.clone();
        lie[2][0] ^= 1;
        assert_ne!(output_digest(Some(4), &encode_outputs(&lie)).unwrap(), signed);
    }

    #[test]
    fn malformed_batches_get_a_clear_error() {
        assert_eq!(input_digest(Some(0), b"abcd"), Err(BatchError::Count(0)));
        assert_eq!(input_digest(Some(MAX_BATCH + 1), b"abcd"), Err(BatchError::Count(MAX_BATCH + 1)));
        assert_eq!(input_digest(Some(3), b"abcd"), Err(BatchError::Uneven { len: 4, n: 3 }));
        assert_eq!(input_digest(Some(1), b""), Err(BatchError::Uneven { len: 0, n: 1 }));
        let three = encode_outputs(&[vec![1], vec![2], vec![3]]);
        assert_eq!(output_digest(Some(4), &three), Err(BatchError::Outputs { got: 3, n: 4 }));
        assert!(matches!(output_digest(Some(1), &[0xff, 0x00]), Err(BatchError::Decode(_))));
        assert!(matches!(proofs(2, b"junk"), Err(BatchError::Decode(_))));
        // The same outputs in another encoding: an indefinite-length list, a tagged byte
        // string, a byte string as an array of integers. All decode; none is accepted.
        let two = encode_outputs(&[vec![7], vec![8]]);
        assert_eq!(two, vec![0x82, 0x41, 7, 0x41, 8]);
        let root = output_digest(Some(2), &two).unwrap();
        for other in [vec![0x9f, 0x41, 7, 0x41, 8, 0xff], vec![0x82, 0x58, 1, 7, 0x41, 8]] {
            assert_eq!(output_digest(Some(2), &other), Err(BatchError::NotCanonical), "{other:02x?}");
        }
        for other in [vec![0x82, 0xd8, 0x18, 0x41, 7, 0x41, 8], vec![0x82, 0x81, 7, 0x41, 8]] {
            assert!(output_digest(Some(2), &other).is_err(), "{other:02x?}");
        }
        assert_eq!(output_digest(Some(2), &two), Ok(root));
        // Without a batch any bytes are an output.
        assert_eq!(output_digest(None, b"junk"), Ok(OutputDigest::of(b"junk")));
    }
}
