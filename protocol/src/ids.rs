//! Protocol ids, gossip topics and DHT key layout. A version bump in any of these is a new
//! name, so old and new nodes can run side by side.

use fleetmesh_crypto::{ModelId, PublicKey, TaskId};

/// The request-response protocol carrying bids, awards, results and receipts.
pub const TASK_PROTOCOL: &str = "/fleetmesh/task/2";
/// Kademlia protocol name: a private DHT, not the public IPFS one.
pub const KAD_PROTOCOL: &str = "/fleetmesh/kad/2";
/// identify's protocol-version string. A peer announcing another `/fleetmesh/id/` version
/// is told so and disconnected ([`other_version`]).
pub const IDENTIFY_PROTOCOL: &str = "/fleetmesh/id/2";
/// Gossip topic for task announcements.
pub const TOPIC_TASKS: &str = "fleetmesh/tasks/2";
/// Gossip topic for capability adverts.
pub const TOPIC_PRESENCE: &str = "fleetmesh/presence/2";

/// Task protocols of earlier wire versions. A node still accepts streams on them, only to
/// answer every request with a refusal that says which version it speaks
/// ([`obsolete_refusal`]): an old peer then logs why, instead of a bare "protocol not
/// supported".
pub const OBSOLETE_TASK_PROTOCOLS: &[&str] = &["/fleetmesh/task/1"];

/// The refusal text sent to a request on an obsolete task protocol.
pub fn obsolete_refusal(protocol: &str) -> String {
    format!(
        "this node speaks fleetmesh wire version {} ({TASK_PROTOCOL}) and no longer serves {protocol}: \
         upgrade this peer to talk to it",
        crate::messages::WIRE_VERSION
    )
}

/// Whether a peer that identified with `protocol_version` is of another fleetmesh wire
/// version that this node cannot talk to: its identify string names another fleetmesh
/// version and it does not list our task protocol (`speaks_ours`). Such a peer shares no
/// protocol with this node, so it is told and disconnected rather than left to fail one
/// request at a time. A later version that still speaks ours is kept (a rolling upgrade);
/// strings of other software are not ours to judge.
pub fn other_version(protocol_version: &str, speaks_ours: bool) -> bool {
    protocol_version.starts_with("/fleetmesh/id/") && protocol_version != IDENTIFY_PROTOCOL && !speaks_ours
}

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
    fn other_fleetmesh_versions_are_told_apart_from_ours_and_from_other_software() {
        assert!(!other_version(IDENTIFY_PROTOCOL, true));
        assert!(!other_version(IDENTIFY_PROTOCOL, false));
        assert!(other_version("/fleetmesh/id/1", false));
        assert!(other_version("/fleetmesh/id/3", false));
        // A later version that still speaks ours is kept.
        assert!(!other_version("/fleetmesh/id/3", true));
        assert!(!other_version("ipfs/0.1.0", false));
        assert!(!other_version("", false));
        let text = obsolete_refusal(OBSOLETE_TASK_PROTOCOLS[0]);
        assert!(text.contains("wire version 2") && text.contains("/fleetmesh/task/1"), "{text}");
        assert!(!OBSOLETE_TASK_PROTOCOLS.contains(&TASK_PROTOCOL));
    }

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
