//! The DHT record rule on an arbitrary key and value: a yes or a no, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (key, value) = input;
    let _ = fleetmesh_protocol::records::record_is_valid(&key, &value);
    let _ = fleetmesh_protocol::ids::RecordKey::parse(&key);
});
