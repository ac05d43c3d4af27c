//! Which DHT records a node stores: the validation every fleetmesh node applies to a record
//! before it keeps it, so no peer can fill the store with values nobody asked for.

use crate::ids;
use crate::messages::{task_id_of, OpenTasks, Signed, TaskSpec};

/// Whether a DHT record may be stored: a task spec must verify and hash to its key; an
/// open-tasks record must verify and be signed by the requester its key names.
pub fn record_is_valid(key: &[u8], value: &[u8]) -> bool {
    let limit = crate::limits::MAX_RECORD_BYTES;
    match ids::RecordKey::parse(key) {
        Some(ids::RecordKey::Task(id)) => {
            TaskSpec::open_bytes(value, limit).is_ok_and(|(env, _)| task_id_of(&env) == id)
        }
        Some(ids::RecordKey::OpenTasks(model, signer)) => {
            OpenTasks::open_bytes(value, limit).is_ok_and(|(env, o)| {
                env.signer.to_bytes() == signer
                    && o.model == model
                    && o.tasks.len() <= crate::limits::MAX_OPEN_TASKS_PER_RECORD
            })
        }
        // Provider keys hold provider records, never values.
        Some(ids::RecordKey::ModelProviders(_)) | None => false,
    }
}

/// Whether a valid record `new` may replace `old` under the same key: an open-tasks record
/// only by one at least as recent (a replayed older copy would hide the requester's current
/// tasks); a task spec always (the key pins its content).
pub fn record_replaces(key: &[u8], old: &[u8], new: &[u8]) -> bool {
    let limit = crate::limits::MAX_RECORD_BYTES;
    match ids::RecordKey::parse(key) {
        Some(ids::RecordKey::OpenTasks(..)) => match OpenTasks::open_bytes(old, limit) {
            Ok((_, o)) => OpenTasks::open_bytes(new, limit).is_ok_and(|(_, n)| n.updated_ms >= o.updated_ms),
            Err(_) => true,
        },
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use fleetmesh_crypto::{Identity, InputDigest, ModelId};

    use super::*;

    fn spec(id: &Identity) -> fleetmesh_crypto::SignedEnvelope {
        TaskSpec {
            v: 1,
            model: ModelId::of(b"m"),
            input_digest: InputDigest::of(b"i"),
            input_size: 1,
            redundancy: 1,
            max_price: 1,
            created_ms: 0,
            bid_window_ms: 10,
            exec_timeout_ms: 10,
            deadline_ms: 100,
            nonce: 0,
            batch: None,
            tolerance: None,
        }
        .sign(id)
    }

    #[test]
    fn a_spec_is_stored_only_under_its_own_task_id() {
        let id = Identity::from_secret_bytes(&[1; 32]);
        let s = spec(&id);
        let bytes = crate::encode(&s);
        assert!(record_is_valid(&ids::task_record_key(&task_id_of(&s)), &bytes));
        assert!(!record_is_valid(&ids::task_record_key(&fleetmesh_crypto::TaskId::of(b"other")), &bytes));
        assert!(!record_is_valid(&ids::task_record_key(&task_id_of(&s)), &[0xff; 8]));
    }

    #[test]
    fn an_open_tasks_record_only_under_its_signer_and_never_under_a_provider_key() {
        let id = Identity::from_secret_bytes(&[1; 32]);
        let other = Identity::from_secret_bytes(&[2; 32]);
        let m = ModelId::of(b"m");
        let rec = crate::encode(&OpenTasks { v: 1, model: m, tasks: vec![], updated_ms: 0 }.sign(&id));
        assert!(record_is_valid(&ids::open_tasks_record_key(&m, &id.public()), &rec));
        assert!(!record_is_valid(&ids::open_tasks_record_key(&m, &other.public()), &rec));
        assert!(!record_is_valid(&ids::model_provider_key(&m), &rec));
        assert!(!record_is_valid(b"not a key", &rec));
    }

    #[test]
    fn an_older_open_tasks_record_does_not_replace_a_newer_one() {
        let id = Identity::from_secret_bytes(&[7; 32]);
        let model = ModelId::of(b"m");
        let rec =
            |at: u64| crate::encode(&OpenTasks { v: 1, model, tasks: vec![], updated_ms: at }.sign(&id));
        let key = ids::open_tasks_record_key(&model, &id.public());
        assert!(record_replaces(&key, &rec(10), &rec(20)));
        assert!(record_replaces(&key, &rec(10), &rec(10)));
        assert!(!record_replaces(&key, &rec(20), &rec(10)), "a replayed older copy");
        assert!(record_replaces(&key, b"junk", &rec(10)));
    }
}
