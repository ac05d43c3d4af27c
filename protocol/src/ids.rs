//! Protocol ids, gossip topics and DHT key layout. A version bump in any of these is a new
//! name, so old and new nodes can run side by side.

use fleetmesh_crypto::{ModelId, PublicKey, TaskId};

/// The request-response protocol carrying bids, awards, declines and results.
pub const TASK_PROTOCOL: &str = "/fleetmesh/task/1";
/// Kademlia protocol name: a private DHT, not the public IPFS one.
pub const KAD_PROTOCOL: &str = "/fleetmesh/kad/1";
/// identify's protocol-version string.
pub const IDENTIFY_PROTOCOL: &str = "/fleetmesh/id/1";
/// Gossip topic for task announcements.
pub const TOPIC_TASKS: &str = "fleetmesh/tasks/1";
/// Gossip topic for capability adverts.
pub const TOPIC_PRESENCE: &str = "fleetmesh/presence/1";

/// DHT record key of a task's signed spec.
pub fn task_record_key(task: &TaskId) -> Vec<u8> {
    let mut k = b"/fleetmesh/task/".to_vec();
    k.extend_from_slice(task.as_bytes());
    k
}

/// DHT provider key for "requesters with open tasks for this model".
pub fn model_provider_key(model: &ModelId) -> Vec<u8> {
    let mut k = b"/fleetmesh/model-open/".to_vec();
    k.extend_from_slice(model.as_bytes());
    k
}

/// DHT record key of one requester's signed list of open tasks for one model.
pub fn open_tasks_record_key(model: &ModelId, requester: &PublicKey) -> Vec<u8> {
    let mut k = b"/fleetmesh/open/".to_vec();
    k.extend_from_slice(model.as_bytes());
    k.extend_from_slice(&requester.to_bytes());
    k
}

/// What a DHT record key names, parsed back from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    /// A task spec.
    Task(TaskId),
    /// An open-tasks index.
    OpenTasks(ModelId, [u8; 32]),
    /// The provider key of requesters with open tasks for a model (provider records only).
    ModelProviders(ModelId),
}

impl RecordKey {
    /// Parses a key; `None` for keys fleetmesh never writes (such records are not stored).
    pub fn parse(key: &[u8]) -> Option<Self> {
        if let Some(rest) = key.strip_prefix(b"/fleetmesh/task/".as_slice()) {
            return Some(Self::Task(TaskId::from_bytes(rest.try_into().ok()?)));
        }
        if let Some(rest) = key.strip_prefix(b"/fleetmesh/model-open/".as_slice()) {
            return Some(Self::ModelProviders(ModelId::from_bytes(rest.try_into().ok()?)));
        }
        if let Some(rest) = key.strip_prefix(b"/fleetmesh/open/".as_slice()) {
            if rest.len() != 64 {
                return None;
            }
            let model = ModelId::from_bytes(rest[..32].try_into().ok()?);
            return Some(Self::OpenTasks(model, rest[32..].try_into().ok()?));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmesh_crypto::Identity;

    #[test]
    fn record_keys_parse_back() {
        let t = TaskId::of(b"t");
        assert_eq!(RecordKey::parse(&task_record_key(&t)), Some(RecordKey::Task(t)));
        let m = ModelId::of(b"m");
        let pk = Identity::from_secret_bytes(&[1; 32]).public();
        assert_eq!(
            RecordKey::parse(&open_tasks_record_key(&m, &pk)),
            Some(RecordKey::OpenTasks(m, pk.to_bytes()))
        );
        assert_eq!(RecordKey::parse(&model_provider_key(&m)), Some(RecordKey::ModelProviders(m)));
        assert_eq!(RecordKey::parse(b"/fleetmesh/model-open/short"), None);
        assert_eq!(RecordKey::parse(b"/fleetmesh/task/short"), None);
        assert_eq!(RecordKey::parse(b"/other"), None);
    }
}
