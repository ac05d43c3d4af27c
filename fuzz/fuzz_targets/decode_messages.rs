//! Every message payload decoded from arbitrary bytes under its own size limit, as `open`
//! does after the signature: errors, never a panic.
#![no_main]

use fleetmesh_protocol::{
    decode, Announcement, Award, Bid, OpenTasks, OperatorCert, Presence, Receipt, ResultHeader, Signed,
    TaskSpec, Unable,
};
use libfuzzer_sys::fuzz_target;

fn payload<T: Signed>(data: &[u8]) {
    let _ = decode::<T>(data, T::MAX_BYTES);
}

fuzz_target!(|data: &[u8]| {
    payload::<TaskSpec>(data);
    payload::<Announcement>(data);
    payload::<Bid>(data);
    payload::<Award>(data);
    payload::<ResultHeader>(data);
    payload::<Receipt>(data);
    payload::<Presence>(data);
    payload::<OpenTasks>(data);
    payload::<Unable>(data);
    payload::<OperatorCert>(data);
    // A batch's outputs list (canonical or refused), and the digest over it.
    let _ =
        fleetmesh_protocol::batch::output_digest(Some(u16::from(data.first().copied().unwrap_or(1))), data);
    let _ = fleetmesh_protocol::output::ModelOutput::from_bytes(data);
});
