//! Arbitrary payload bytes, validly signed under each kind: `open` (signature, decode, version)
//! gives a value or an error, never a panic. This reaches the decoders past the signature,
//! which arbitrary envelopes almost never do.
#![no_main]

use fleetmesh_crypto::{Identity, SignedEnvelope};
use fleetmesh_protocol::{
    Announcement, Award, Bid, OpenTasks, OperatorCert, Presence, Receipt, ResultHeader, Signed, TaskSpec,
    Unable,
};
use libfuzzer_sys::fuzz_target;

fn open<T: Signed>(id: &Identity, data: &[u8]) {
    let env = SignedEnvelope::sign(id, T::KIND, data.to_vec());
    let _ = T::open(&env);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, payload)) = data.split_first() else { return };
    let id = Identity::from_secret_bytes(&[7; 32]);
    match which % 10 {
        0 => open::<TaskSpec>(&id, payload),
        1 => open::<Announcement>(&id, payload),
        2 => open::<Bid>(&id, payload),
        3 => open::<Award>(&id, payload),
        4 => open::<ResultHeader>(&id, payload),
        5 => open::<Receipt>(&id, payload),
        6 => open::<Presence>(&id, payload),
        7 => open::<Unable>(&id, payload),
        8 => open::<OperatorCert>(&id, payload),
        _ => open::<OpenTasks>(&id, payload),
    }
});
