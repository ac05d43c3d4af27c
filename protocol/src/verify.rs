//! The checks a requester applies to a worker's result, and the majority rule for k > 1.

use fleetmesh_crypto::{OutputDigest, PublicKey, SignedEnvelope, TaskId};

use crate::limits;
use crate::messages::{RejectReason, ResultHeader, Signed, TaskSpec};

/// Checks one result: signature, that the signer was awarded, that the task, input and model
/// are the requester's own, and that blake3 of the received bytes is the header's digest.
pub fn check_result(
    task_id: &TaskId,
    spec: &TaskSpec,
    awarded: &[PublicKey],
    header: &SignedEnvelope,
    output: &[u8],
) -> Result<ResultHeader, RejectReason> {
    let h = ResultHeader::open(header).map_err(|_| RejectReason::BadSignature)?;
    check_opened(task_id, spec, awarded, &header.signer, h, output)
}

/// [`check_result`] on a header whose signature was already checked (its signer `signer`):
/// the same checks but the signature, so a requester verifies each result once.
pub fn check_opened(
    task_id: &TaskId,
    spec: &TaskSpec,
    awarded: &[PublicKey],
    signer: &PublicKey,
    h: ResultHeader,
    output: &[u8],
) -> Result<ResultHeader, RejectReason> {
    if h.task_id != *task_id {
        return Err(RejectReason::WrongTask);
    }
    if !awarded.contains(signer) {
        return Err(RejectReason::NotAwarded);
    }
    if h.input_digest != spec.input_digest {
        return Err(RejectReason::InputMismatch);
    }
    if h.model != spec.model {
        return Err(RejectReason::ModelMismatch);
    }
    if output.len() > limits::MAX_OUTPUT_BYTES {
        return Err(RejectReason::OutputTooLarge);
    }
    // blake3 of the output, or a batch's Merkle root over its outputs' (a list that does not
    // decode, or holds another number of outputs, matches no digest).
    let digest = crate::batch::output_digest(spec.batch, output);
    if digest.ok() != Some(h.output_digest) || h.output_size != output.len() as u64 {
        return Err(RejectReason::OutputDigestMismatch);
    }
    Ok(h)
}

/// Whether two workers' outputs for the task agree: bit for bit, or within the spec's
/// tolerance ([`crate::output::within`], output by output for a batch).
pub fn agree(spec: &TaskSpec, a: &[u8], b: &[u8]) -> bool {
    compare(spec, a, b, crate::output::within)
}

/// Whether two outputs are beyond twice the spec's tolerance of each other (bit for bit:
/// different): then nothing within the tolerance of one is within the tolerance of the
/// other, so a worker whose output joined one cannot have produced an output the other's
/// tolerance forgives. What a requester holds against a worker ([`agree`] is not
/// transitive: between one and two tolerances apart, it holds nothing either way).
pub fn clearly_apart(spec: &TaskSpec, a: &[u8], b: &[u8]) -> bool {
    !compare(spec, a, b, crate::output::within_twice)
}

fn compare(spec: &TaskSpec, a: &[u8], b: &[u8], within: fn(&[u8], &[u8], u32) -> bool) -> bool {
    match (spec.tolerance, spec.batch) {
        (None, _) => a == b,
        (Some(tol), None) => within(a, b, tol),
        (Some(tol), Some(n)) => {
            match (crate::batch::decode_outputs(n, a), crate::batch::decode_outputs(n, b)) {
                (Ok(x), Ok(y)) => x.len() == y.len() && x.iter().zip(&y).all(|(p, q)| within(p, q, tol)),
                _ => false,
            }
        }
    }
}

/// How many matching outputs verify a task with redundancy `k`: a strict majority of k.
pub fn quorum(k: u8) -> usize {
    usize::from(k) / 2 + 1
}

/// Where a task's checked results stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agreement {
    /// A quorum agrees on this digest; these workers produced it.
    Verified(OutputDigest, Vec<PublicKey>),
    /// Not enough results yet.
    Waiting,
    /// As many results as were awarded, but no quorum: more workers are needed.
    Disagree,
}

/// Applies the majority rule to the checked results so far (`awarded` workers in total).
pub fn agreement(k: u8, awarded: usize, results: &[(PublicKey, OutputDigest)]) -> Agreement {
    let results: Vec<(PublicKey, OutputDigest, bool)> =
        results.iter().map(|(w, d)| (*w, *d, false)).collect();
    anchored_agreement(quorum(k), awarded, &results, false)
}

/// How much more a trusted worker's result weighs than an unknown one's.
pub const TRUSTED_WEIGHT: usize = 4;

/// The majority rule with reputation (market v2). `results` are (worker, digest, trusted).
/// An output is verified when at least `need` workers produced it, its weight (a trusted
/// worker counts [`TRUSTED_WEIGHT`], an unknown one 1) is above every other output's, and,
/// when `anchor` is set, a trusted worker is among them: then no number of unknown keys
/// agreeing on an output is enough on its own. Without trust (`anchor` false, no worker
/// trusted) this is the plain strict majority.
pub fn anchored_agreement(
    need: usize,
    awarded: usize,
    results: &[(PublicKey, OutputDigest, bool)],
    anchor: bool,
) -> Agreement {
    // Per output: its workers, and how many of them are trusted.
    let mut outputs: Vec<(OutputDigest, Vec<PublicKey>, usize)> = Vec::new();
    for (worker, digest, trusted) in results {
        let i = match outputs.iter().position(|(d, _, _)| d == digest) {
            Some(i) => i,
            None => {
                outputs.push((*digest, Vec::new(), 0));
                outputs.len().saturating_sub(1)
            }
        };
        if let Some(o) = outputs.get_mut(i) {
            if !o.1.contains(worker) {
                o.1.push(*worker);
                o.2 = o.2.saturating_add(usize::from(*trusted));
            }
        }
    }
    let weight = |o: &(OutputDigest, Vec<PublicKey>, usize)| {
        o.1.len().saturating_add(o.2.saturating_mul(TRUSTED_WEIGHT.saturating_sub(1)))
    };
    outputs.sort_by(|a, b| weight(b).cmp(&weight(a)).then(b.1.len().cmp(&a.1.len())).then(a.0.cmp(&b.0)));
    if let Some(top) = outputs.first() {
        let runner_up = outputs.get(1).map_or(0, weight);
        if top.1.len() >= need && weight(top) > runner_up && (!anchor || top.2 > 0) {
            return Agreement::Verified(top.0, top.1.clone());
        }
    }
    if results.len() >= awarded {
        Agreement::Disagree
    } else {
        Agreement::Waiting
    }
}

#[cfg(test)]
mod tests {
    use fleetmesh_crypto::{Identity, InputDigest, ModelId};

    use super::*;
    use crate::messages::{RuntimeProfile, WIRE_VERSION};

    fn pk(s: u8) -> PublicKey {
        Identity::from_secret_bytes(&[s; 32]).public()
    }

    #[test]
    fn quorum_is_a_strict_majority() {
        assert_eq!((quorum(1), quorum(2), quorum(3), quorum(4)), (1, 2, 2, 3));
    }

    #[test]
    fn agreement_rules() {
        let (a, b) = (OutputDigest::of(b"a"), OutputDigest::of(b"b"));
        assert_eq!(agreement(1, 1, &[(pk(1), a)]), Agreement::Verified(a, vec![pk(1)]));
        assert_eq!(agreement(2, 2, &[(pk(1), a)]), Agreement::Waiting);
        assert_eq!(agreement(2, 2, &[(pk(1), a), (pk(2), a)]), Agreement::Verified(a, vec![pk(1), pk(2)]));
        assert_eq!(agreement(2, 2, &[(pk(1), a), (pk(2), b)]), Agreement::Disagree);
        // A third worker breaks the tie.
        assert_eq!(
            agreement(2, 3, &[(pk(1), a), (pk(2), b), (pk(3), b)]),
            Agreement::Verified(b, vec![pk(2), pk(3)])
        );
    }

    #[test]
    fn anchored_agreement_needs_a_trusted_worker_and_weighs_it() {
        let (a, b) = (OutputDigest::of(b"a"), OutputDigest::of(b"b"));
        // Three unknown keys agreeing on b are not enough once an anchor is required.
        let unknown_crowd = [(pk(1), b, false), (pk(2), b, false), (pk(3), b, false)];
        assert_eq!(anchored_agreement(2, 3, &unknown_crowd, true), Agreement::Disagree);
        assert_eq!(anchored_agreement(2, 4, &unknown_crowd, true), Agreement::Waiting);
        // Without an anchor the plain majority holds.
        assert_eq!(
            anchored_agreement(2, 3, &unknown_crowd, false),
            Agreement::Verified(b, vec![pk(1), pk(2), pk(3)])
        );
        // A trusted worker alone, k = 1: verified.
        assert_eq!(anchored_agreement(1, 1, &[(pk(4), a, true)], true), Agreement::Verified(a, vec![pk(4)]));
        // Spot check (need 2): the trusted result waits for the unknown one, and a
        // disagreement calls for another worker.
        assert_eq!(anchored_agreement(2, 2, &[(pk(4), a, true)], true), Agreement::Waiting);
        assert_eq!(
            anchored_agreement(2, 2, &[(pk(4), a, true), (pk(1), b, false)], true),
            Agreement::Disagree
        );
        // Two unknown keys that agree on b do not outvote a trusted worker on a; a second
        // worker on a settles it.
        let split = [(pk(4), a, true), (pk(1), b, false), (pk(2), b, false)];
        assert_eq!(anchored_agreement(2, 3, &split, true), Agreement::Disagree);
        let settled = [(pk(4), a, true), (pk(1), b, false), (pk(2), b, false), (pk(5), a, false)];
        assert_eq!(anchored_agreement(2, 4, &settled, true), Agreement::Verified(a, vec![pk(4), pk(5)]));
        // Two trusted workers that disagree: neither side wins until a third speaks.
        let tie = [(pk(4), a, true), (pk(5), b, true)];
        assert_eq!(anchored_agreement(1, 2, &tie, true), Agreement::Disagree);
        // A worker listed twice counts once.
        assert_eq!(
            anchored_agreement(2, 2, &[(pk(1), a, false), (pk(1), a, false)], false),
            Agreement::Disagree
        );
    }

    #[test]
    fn outputs_agree_bit_for_bit_or_within_the_tolerance_output_by_output() {
        let f = |v: f32| {
            crate::output::ModelOutput {
                dtype: "f32".into(),
                shape: vec![1],
                data: v.to_le_bytes().to_vec(),
                argmax: None,
            }
            .to_bytes()
        };
        let spec = |batch: Option<u16>, tolerance: Option<u32>| TaskSpec {
            v: WIRE_VERSION,
            model: ModelId::of(b"m"),
            input_digest: InputDigest::of(b"in"),
            input_size: 2,
            redundancy: 2,
            max_price: 1,
            created_ms: 0,
            bid_window_ms: 1,
            exec_timeout_ms: 1,
            deadline_ms: 1,
            nonce: 0,
            batch,
            tolerance,
        };
        assert!(agree(&spec(None, None), &f(1.0), &f(1.0)));
        assert!(!agree(&spec(None, None), &f(1.0), &f(1.000_000_1)));
        assert!(agree(&spec(None, Some(1)), &f(1.0), &f(1.000_000_1)));
        let list = |v: &[f32]| crate::batch::encode_outputs(&v.iter().map(|x| f(*x)).collect::<Vec<_>>());
        let batch = spec(Some(2), Some(1_000));
        assert!(agree(&batch, &list(&[1.0, 2.0]), &list(&[1.0005, 2.0])));
        assert!(!agree(&batch, &list(&[1.0, 2.0]), &list(&[1.0, 2.01])), "one output beyond it");
        assert!(!agree(&batch, &list(&[1.0, 2.0]), &list(&[1.0])), "another count");
        let single = spec(None, Some(1_000));
        assert!(!clearly_apart(&single, &f(1.0), &f(1.0015)), "between one and two tolerances");
        assert!(clearly_apart(&single, &f(1.0), &f(1.0025)));
        assert!(clearly_apart(&spec(None, None), &f(1.0), &f(1.000_000_1)), "bit for bit");
    }

    #[test]
    fn check_result_reasons() {
        let worker = Identity::from_secret_bytes(&[1; 32]);
        let other = Identity::from_secret_bytes(&[2; 32]);
        let task_id = TaskId::of(b"t");
        let spec = TaskSpec {
            v: WIRE_VERSION,
            model: ModelId::of(b"m"),
            input_digest: InputDigest::of(b"in"),
            input_size: 2,
            redundancy: 1,
            max_price: 1,
            created_ms: 0,
            bid_window_ms: 1,
            exec_timeout_ms: 1,
            deadline_ms: 1,
            nonce: 0,
            batch: None,
            tolerance: None,
        };
        let output = b"out".to_vec();
        let header = ResultHeader {
            v: WIRE_VERSION,
            task_id,
            input_digest: spec.input_digest,
            model: spec.model,
            output_digest: OutputDigest::of(&output),
            output_size: 3,
            run_time_us: 5,
            runtime: RuntimeProfile::default(),
            energy_mj: None,
        };
        let awarded = [worker.public()];
        let ok = header.sign(&worker);
        assert!(check_result(&task_id, &spec, &awarded, &ok, &output).is_ok());
        assert_eq!(
            check_result(&task_id, &spec, &awarded, &ok, b"oux"),
            Err(RejectReason::OutputDigestMismatch)
        );
        assert_eq!(
            check_result(&task_id, &spec, &awarded, &header.sign(&other), &output),
            Err(RejectReason::NotAwarded)
        );
        let mut forged = ok.clone();
        forged.signer = other.public();
        assert_eq!(
            check_result(&task_id, &spec, &awarded, &forged, &output),
            Err(RejectReason::BadSignature)
        );
        let replay = ResultHeader { task_id: TaskId::of(b"old"), ..header.clone() }.sign(&worker);
        assert_eq!(check_result(&task_id, &spec, &awarded, &replay, &output), Err(RejectReason::WrongTask));
        let wrong_in = ResultHeader { input_digest: InputDigest::of(b"x"), ..header.clone() }.sign(&worker);
        assert_eq!(
            check_result(&task_id, &spec, &awarded, &wrong_in, &output),
            Err(RejectReason::InputMismatch)
        );
        let wrong_model = ResultHeader { model: ModelId::of(b"x"), ..header }.sign(&worker);
        assert_eq!(
            check_result(&task_id, &spec, &awarded, &wrong_model, &output),
            Err(RejectReason::ModelMismatch)
        );
    }
}
