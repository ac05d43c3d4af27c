//! A signed envelope from arbitrary bytes (what gossip and DHT records carry), then its
//! signature checked under every message kind: errors, never a panic.
#![no_main]

use fleetmesh_crypto::{MessageKind, SignedEnvelope};
use libfuzzer_sys::fuzz_target;

const KINDS: [MessageKind; 10] = [
    MessageKind::TaskSpec,
    MessageKind::Announcement,
    MessageKind::Bid,
    MessageKind::Award,
    MessageKind::ResultHeader,
    MessageKind::Receipt,
    MessageKind::Presence,
    MessageKind::OpenTasks,
    MessageKind::Unable,
    MessageKind::OperatorCert,
];

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = fleetmesh_protocol::decode::<SignedEnvelope>(data, 64 * 1024) {
        for kind in KINDS {
            let _ = env.verify(kind);
        }
    }
});
