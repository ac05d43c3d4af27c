//! A task-protocol response from arbitrary bytes: an error or a value that round-trips.
#![no_main]

use fleetmesh_protocol::wire::TaskResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = TaskResponse::from_bytes(data) {
        let again = TaskResponse::from_bytes(&resp.to_bytes());
        assert_eq!(again.ok(), Some(resp), "a decoded response must round-trip");
    }
});
