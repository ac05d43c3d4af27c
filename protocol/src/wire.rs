//! What travels on the request-response protocol [`crate::ids::TASK_PROTOCOL`].
//!
//! Bids go worker -> requester, awards and receipts requester -> worker, results and
//! `Unable` reports worker -> requester. Each request gets exactly one response, so a sender always learns whether its
//! message was taken. Enums are externally tagged; a variant a node does not know decodes to
//! an error and is answered with [`TaskResponse::Refused`] rather than dropped silently.

use fleetmesh_crypto::SignedEnvelope;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, DecodeError};
use crate::limits;
use crate::messages::RejectReason;

/// A request on the task protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // built once, moved into the codec: boxing buys nothing
pub enum TaskRequest {
    /// A signed [`crate::Bid`].
    Bid {
        /// The bid.
        bid: SignedEnvelope,
    },
    /// A signed [`crate::Award`] naming the receiver, with the spec and the input bytes.
    Award {
        /// The signed task spec (so the worker need not fetch it again).
        spec: SignedEnvelope,
        /// The signed award.
        award: SignedEnvelope,
        /// The task input; its blake3 must equal the spec's input digest.
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
    },
    /// A signed [`crate::Receipt`] for a result that was held as pending.
    Receipt {
        /// The receipt.
        receipt: SignedEnvelope,
    },
    /// A signed [`crate::Unable`]: the worker cannot run the task, and why. Nodes that do
    /// not know this variant answer `Refused(Invalid)`, which costs the sender nothing.
    Unable {
        /// The report.
        report: SignedEnvelope,
    },
    /// A signed [`crate::ResultHeader`] with the output bytes.
    Result {
        /// The task whose award this answers. The requester checks the header against this
        /// task, so an old result replayed for a new award is caught as naming another task.
        task_id: fleetmesh_crypto::TaskId,
        /// The header.
        header: SignedEnvelope,
        /// The output; its blake3 must equal the header's output digest.
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
}

/// Why a node refused a bid, an award or a decline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The message did not verify or decode.
    Invalid(String),
    /// The task is unknown to the receiver.
    UnknownTask,
    /// The task no longer takes this message (closed, late round).
    TaskClosed,
    /// The bid is not taken, and why. (A bid that is taken but loses the round hears
    /// nothing: wire version 2 sends no declines.)
    BidDeclined(crate::messages::DeclineReason),
    /// An award for someone else.
    NotAWinner,
    /// The input's blake3 is not the spec's input digest.
    InputMismatch,
    /// The worker does not hold the model.
    ModelUnavailable,
    /// The worker has no free slot.
    NoCapacity,
    /// The receiver is shutting down or its store failed; try another node.
    Unavailable,
}

/// The answer to a [`TaskRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // built once, moved into the codec: boxing buys nothing
pub enum TaskResponse {
    /// Taken (and, for awards, persisted before this answer).
    Ack,
    /// Not taken, and why.
    Refused(Refusal),
    /// The result was accepted; the signed [`crate::Receipt`].
    Receipt(SignedEnvelope),
    /// The result was rejected, and why.
    Rejected(RejectReason),
    /// The result is held until enough workers agree; a receipt follows in a later
    /// answer when the worker re-sends, or the result is rejected.
    Pending,
}

impl TaskRequest {
    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes from the wire under [`limits::MAX_REQUEST_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, limits::MAX_REQUEST_BYTES)
    }
}

impl TaskResponse {
    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes from the wire under [`limits::MAX_RESPONSE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, limits::MAX_RESPONSE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use fleetmesh_crypto::{Identity, MessageKind};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn requests_round_trip() {
        let id = Identity::from_secret_bytes(&[4; 32]);
        let env = SignedEnvelope::sign(&id, MessageKind::Bid, vec![1, 2, 3]);
        for req in [
            TaskRequest::Bid { bid: env.clone() },
            TaskRequest::Result {
                task_id: fleetmesh_crypto::TaskId::of(b"t"),
                header: env.clone(),
                output: vec![9; 100],
            },
            TaskRequest::Award { spec: env.clone(), award: env.clone(), input: vec![] },
        ] {
            assert_eq!(TaskRequest::from_bytes(&req.to_bytes()).unwrap(), req);
        }
    }

    #[test]
    fn oversized_request_is_refused() {
        let req = TaskRequest::Result {
            task_id: fleetmesh_crypto::TaskId::of(b"t"),
            header: SignedEnvelope::sign(&Identity::from_secret_bytes(&[4; 32]), MessageKind::Bid, vec![]),
            output: vec![0; limits::MAX_REQUEST_BYTES],
        };
        assert!(matches!(TaskRequest::from_bytes(&req.to_bytes()), Err(DecodeError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = TaskRequest::from_bytes(&bytes);
            let _ = TaskResponse::from_bytes(&bytes);
            let _ = decode::<crate::TaskSpec>(&bytes, 4096);
            let _ = decode::<crate::Award>(&bytes, 4096);
            let _ = decode::<fleetmesh_crypto::SignedEnvelope>(&bytes, 4096);
        }

        #[test]
        fn truncated_valid_messages_are_errors(cut in 0usize..200) {
            let id = Identity::from_secret_bytes(&[4; 32]);
            let req = TaskRequest::Bid { bid: SignedEnvelope::sign(&id, MessageKind::Bid, vec![7; 50]) };
            let bytes = req.to_bytes();
            let cut = cut % bytes.len();
            prop_assert!(TaskRequest::from_bytes(&bytes[..cut]).is_err());
        }
    }
}
