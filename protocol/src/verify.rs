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
    if h.task_id != *task_id {
        return Err(RejectReason::WrongTask);
    }
    if !awarded.contains(&header.signer) {
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
    if OutputDigest::of(output) != h.output_digest || h.output_size != output.len() as u64 {
        return Err(RejectReason::OutputDigestMismatch);
    }
    Ok(h)
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
    let need = quorum(k);
    let mut counts: Vec<(OutputDigest, Vec<PublicKey>)> = Vec::new();
    for (worker, digest) in results {
        match counts.iter_mut().find(|(d, _)| d == digest) {
            Some((_, ws)) => ws.push(*worker),
            None => counts.push((*digest, vec![*worker])),
        }
    }
    counts.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    if let Some((digest, workers)) = counts.first() {
        let runner_up = counts.get(1).map_or(0, |c| c.1.len());
        if workers.len() >= need && workers.len() > runner_up {
            return Agreement::Verified(*digest, workers.clone());
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
