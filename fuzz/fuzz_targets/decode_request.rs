//! A task-protocol request from arbitrary bytes: an error or a value, never a panic; a value
//! re-encodes to bytes that decode to the same value.
#![no_main]

use fleetmesh_protocol::wire::TaskRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = TaskRequest::from_bytes(data) {
        let again = TaskRequest::from_bytes(&req.to_bytes());
        assert_eq!(again.ok(), Some(req), "a decoded request must round-trip");
    }
});
