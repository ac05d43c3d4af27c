//! Size limits. Every decoder is given one of these; nothing is parsed past its limit.

/// Largest task input a requester may send (and a worker accepts).
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// Largest task output a worker may return.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// A signed task spec (DHT record value).
pub const MAX_SPEC_BYTES: usize = 4 * 1024;
/// A signed gossip message (announcement or presence advert).
pub const MAX_GOSSIP_BYTES: usize = 8 * 1024;
/// Any DHT record value fleetmesh stores.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// Task ids in one open-tasks record.
pub const MAX_OPEN_TASKS_PER_RECORD: usize = 64;
/// Models listed in one presence advert.
pub const MAX_MODELS_PER_ADVERT: usize = 64;
/// Winners one task may ask for.
pub const MAX_REDUNDANCY: u8 = 7;
/// Envelope, header and framing allowance on top of an input or output.
const FRAMING_BYTES: usize = 16 * 1024;
/// A request on the task protocol (the largest is an award carrying the input).
pub const MAX_REQUEST_BYTES: usize = MAX_INPUT_BYTES + MAX_SPEC_BYTES + FRAMING_BYTES;
/// A request on the task protocol that carries no input or output (bid, receipt, unable).
pub const MAX_CONTROL_REQUEST_BYTES: usize = 16 * 1024;

/// The size limit of a request, from its first bytes: awards and results (they carry an input
/// or an output) get [`MAX_REQUEST_BYTES`], every other kind [`MAX_CONTROL_REQUEST_BYTES`].
/// A request is a CBOR map of one entry whose key names its kind, so the first few bytes
/// tell; a reader applies the limit before it buffers the rest.
pub fn request_limit(prefix: &[u8]) -> usize {
    let kind = match prefix {
        // A one-entry map (0xa1), then a short text key (0x60 + length) and the key itself.
        [0xa1, head, rest @ ..] if (0x60..0x78).contains(head) => {
            let len = usize::from(head - 0x60);
            rest.get(..len)
        }
        _ => None,
    };
    match kind {
        Some(b"Award") | Some(b"Result") => MAX_REQUEST_BYTES,
        _ => MAX_CONTROL_REQUEST_BYTES,
    }
}

/// A response on the task protocol.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// A worker's result message (header plus output).
pub const MAX_RESULT_BYTES: usize = MAX_OUTPUT_BYTES + FRAMING_BYTES;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TaskRequest;

    #[test]
    fn only_awards_and_results_get_the_large_limit() {
        let id = fleetmesh_crypto::Identity::from_secret_bytes(&[1; 32]);
        let env = fleetmesh_crypto::SignedEnvelope::sign(&id, fleetmesh_crypto::MessageKind::Bid, vec![1]);
        let task_id = fleetmesh_crypto::TaskId::of(b"t");
        let big = [
            TaskRequest::Award { spec: env.clone(), award: env.clone(), input: vec![0; 10] },
            TaskRequest::Result { task_id, header: env.clone(), output: vec![0; 10] },
        ];
        for r in big {
            assert_eq!(request_limit(&r.to_bytes()[..16]), MAX_REQUEST_BYTES, "{r:?}");
        }
        for r in [TaskRequest::Bid { bid: env.clone() }, TaskRequest::Receipt { receipt: env }] {
            assert_eq!(request_limit(&r.to_bytes()[..16]), MAX_CONTROL_REQUEST_BYTES);
        }
        for junk in [&[][..], &[0xa1][..], &[0xa1, 0x65, b'A'][..], &[0xff; 32][..]] {
            assert_eq!(request_limit(junk), MAX_CONTROL_REQUEST_BYTES);
        }
    }
}
