//! Signed message payloads.
//!
//! Each payload is CBOR-encoded, then signed inside a [`SignedEnvelope`] under its own
//! [`MessageKind`]. Structs are encoded as maps with field names, every one has a version
//! field `v`, and unknown fields are ignored when decoding: a later version can add a field
//! (an availability window on a bid, a float tolerance on a spec) and old nodes still read
//! the message. A node refuses a message whose `v` is newer than it speaks.
//!
//! Version 2 changed the transport (protocol ids, anonymous gossip, no declines), not the
//! payloads' shape: a version-1 payload still opens, so a store written by a version-1 node
//! restores. Version-1 peers never reach the payloads: [`crate::ids`] names differ.
//!
//! [`Signed::open`] is the one way to get a payload out of an envelope: it verifies the
//! signature on the received bytes, decodes them under a size limit and checks the version.

use fleetmesh_crypto::{
    Digest, InputDigest, MessageKind, ModelId, OutputDigest, PublicKey, SignedEnvelope, TaskId, VerifyError,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, DecodeError};
use crate::limits;

/// The message version this code writes and the newest it reads.
pub const WIRE_VERSION: u16 = 2;

/// Why a signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The signature does not verify.
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// The payload does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A payload type with its message kind and size limit.
pub trait Signed: Serialize + DeserializeOwned {
    /// The domain tag it is signed under.
    const KIND: MessageKind;
    /// The largest payload accepted.
    const MAX_BYTES: usize;
    /// Its version field.
    fn version(&self) -> u16;

    /// Encodes and signs.
    fn sign(&self, identity: &fleetmesh_crypto::Identity) -> SignedEnvelope {
        SignedEnvelope::sign(identity, Self::KIND, encode(self))
    }

    /// Verifies `env` as this kind, then decodes its payload.
    fn open(env: &SignedEnvelope) -> Result<Self, OpenError> {
        env.verify(Self::KIND)?;
        Self::open_unverified(env)
    }

    /// Decodes the payload and checks the version, without checking the signature: only for an
    /// envelope whose bytes are already authenticated another way (carried inside a message
    /// its own signer signed, or read back from this node's own store).
    fn open_unverified(env: &SignedEnvelope) -> Result<Self, OpenError> {
        let value: Self = decode(&env.payload, Self::MAX_BYTES)?;
        if value.version() > WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion { got: value.version(), max: WIRE_VERSION }.into());
        }
        Ok(value)
    }

    /// Decodes an envelope from wire bytes (at most `limit` long), then opens it as this kind.
    fn open_bytes(bytes: &[u8], limit: usize) -> Result<(SignedEnvelope, Self), OpenError> {
        let env: SignedEnvelope = decode(bytes, limit)?;
        let value = Self::open(&env)?;
        Ok((env, value))
    }
}

macro_rules! signed {
    ($ty:ty, $kind:expr, $max:expr) => {
        impl Signed for $ty {
            const KIND: MessageKind = $kind;
            const MAX_BYTES: usize = $max;
            fn version(&self) -> u16 {
                self.v
            }
        }
    };
}

/// What a requester asks for. Signed by the requester; the [`TaskId`] is blake3 of the
/// envelope's payload bytes, so the spec cannot be swapped under its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Message version.
    pub v: u16,
    /// The model to run.
    pub model: ModelId,
    /// blake3 of the input bytes, or for a batch the Merkle root over its inputs'
    /// ([`crate::batch::input_digest`]). The input itself goes only to the winners.
    pub input_digest: InputDigest,
    /// Input length in bytes.
    pub input_size: u64,
    /// How many independent workers must run it (k).
    pub redundancy: u8,
    /// The most the requester pays one worker.
    pub max_price: u64,
    /// When the spec was made, Unix milliseconds.
    pub created_ms: u64,
    /// How long each bid round stays open.
    pub bid_window_ms: u32,
    /// How long a worker has from award to result.
    pub exec_timeout_ms: u32,
    /// After this instant (Unix ms) the task fails if it is not verified.
    pub deadline_ms: u64,
    /// Makes otherwise identical specs distinct.
    pub nonce: u64,
    /// A batch: `input_size` is this many inputs of equal size end to end, `input_digest` and
    /// the result's `output_digest` are Merkle roots over them ([`crate::batch`]). Absent: one
    /// input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u16>,
    /// Float outputs agree within this many millionths per element
    /// ([`crate::output::within`]; for a batch, output by output). Absent: outputs agree
    /// only bit for bit (the digits model, and every integer output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<u32>,
}
signed!(TaskSpec, MessageKind::TaskSpec, limits::MAX_SPEC_BYTES);

/// The task id of a signed spec: blake3 over a domain tag, the signer's key and the exact
/// payload bytes. The key is in it since wire version 2: an id of the payload alone let
/// anyone re-sign a requester's spec with their own key and announce the same task id as
/// theirs, so that workers which heard them first bid to them and skipped the real round.
pub fn task_id_of(spec: &SignedEnvelope) -> TaskId {
    let mut h = blake3::Hasher::new();
    h.update(b"fleetmesh-task-v2");
    h.update(&spec.signer.to_bytes());
    h.update(&spec.payload);
    TaskId::from_bytes(*h.finalize().as_bytes())
}

/// Gossiped on [`crate::ids::TOPIC_TASKS`]: "task X for model M is taking bids".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Message version.
    pub v: u16,
    /// The task (fetch its spec from the DHT).
    pub task_id: TaskId,
    /// The model, so nodes without it skip the DHT lookup.
    pub model: ModelId,
    /// Bid round; a re-announcement after a failed round has a higher one.
    pub round: u32,
    /// Bids for this round are taken until this instant (Unix ms).
    pub bid_deadline_ms: u64,
    /// Copied from the spec so nodes whose price floor is higher skip the lookup.
    pub max_price: u64,
    /// The signed spec itself, so receivers can bid without a DHT lookup. Optional: the DHT
    /// record stays the source for nodes that missed the gossip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SignedEnvelope>,
    /// The round's selection threshold in parts per million: only workers whose ticket is
    /// below it may bid ([`crate::selection`]). Absent: everyone may (a round announced
    /// before market v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_ppm: Option<u32>,
    /// Workers the requester invites by name whatever their ticket: the ones its reputation
    /// ledger trusts ([`crate::selection::admitted`]). Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invited: Vec<PublicKey>,
}
signed!(Announcement, MessageKind::Announcement, limits::MAX_GOSSIP_BYTES);

/// A worker's offer to run a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// Message version.
    pub v: u16,
    /// The task.
    pub task_id: TaskId,
    /// The bid round it answers.
    pub round: u32,
    /// Asked price.
    pub price: u64,
    /// Promised time from award to result, milliseconds.
    pub promised_ms: u32,
    /// Tasks queued ahead of this one at the worker.
    pub queue_depth: u32,
    /// Free execution slots at the worker.
    pub free_slots: u32,
    /// When the worker (a parked vehicle) expects to leave, Unix ms, rounded down to the
    /// minute; absent: not expected. A worker bids only on tasks whose execution timeout ends
    /// before it, and a requester passes over a bid that does not
    /// ([`crate::winner::finishes_before`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depart_ms: Option<u64>,
}
signed!(Bid, MessageKind::Bid, 1024);

/// The digest naming one signed bid: blake3 of its envelope's payload and signer.
pub fn bid_digest(bid: &SignedEnvelope) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&bid.signer.to_bytes());
    h.update(&bid.payload);
    Digest::from_bytes(*h.finalize().as_bytes())
}

/// The requester's decision for one bid round, sent to each winner with the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    /// Message version.
    pub v: u16,
    /// The task.
    pub task_id: TaskId,
    /// The bid round decided.
    pub round: u32,
    /// Commitment to the sorted digests of the bids the decision was made on
    /// ([`crate::winner::bid_set_root`]): anyone holding those bids can check it and recompute
    /// the winners with [`crate::winner::choose`]. Its size does not grow with the bids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_root: Option<Digest>,
    /// How many bids the committed set holds.
    #[serde(default)]
    pub bid_count: u32,
    /// Who is awarded, in rank order.
    pub winners: Vec<PublicKey>,
    /// The result is due by this instant (Unix ms).
    pub result_deadline_ms: u64,
    /// The round's selection threshold as announced ([`Announcement::select_ppm`]), so a third
    /// party holding the committed bids can check that every winner was admitted
    /// ([`crate::winner::admitted_by`]). Absent: the round was open to every holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_ppm: Option<u32>,
    /// The workers the round invited by name, as announced ([`Announcement::invited`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invited: Vec<PublicKey>,
    /// The winners' standing offers ([`Presence::offer_until_ms`]) cover this award: a worker
    /// takes it while its own offer covers the task, whether or not it bid in round `round`.
    /// Set when the round was decided on offers instead of bids (no announcement: `bid_root`
    /// commits to the digests of the offers the requester held, [`bid_digest`] of each
    /// advert, and the winners are the lowest tickets of round `round` among them, the
    /// requester's trusted workers first), and when a standby bidder of an earlier round
    /// that offers is awarded under a later round's number.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offer: bool,
}
signed!(Award, MessageKind::Award, limits::MAX_SPEC_BYTES);

/// Why a bid was not chosen (or not even considered). Since wire version 2 it travels only
/// in the answer to the bid ([`crate::wire::Refusal::BidDeclined`]); a bid that loses the
/// round hears nothing (a signed decline to every loser was a signature per bid, for a
/// worker that forgets the round when its window ends anyway).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeclineReason {
    /// Ranked below the winners; `rank` counts from 0.
    Outbid {
        /// Its place in the ranking.
        rank: u32,
    },
    /// Asked more than the spec's max price.
    PriceAboveMax,
    /// Promised a completion time beyond the spec's execution timeout.
    TooSlow,
    /// Bid for another task or another round.
    WrongTask,
    /// The bidder already has a bid in this set.
    DuplicateBidder,
    /// The requester does not serve its own task.
    OwnTask,
    /// The signature did not verify or the payload did not decode.
    Invalid,
    /// Arrived after the round closed.
    Late,
    /// The task no longer takes bids (verified, failed, or cancelled).
    TaskClosed,
    /// The bidder's ticket is not below the round's selection threshold
    /// ([`crate::selection`]).
    NotSelected,
}

/// Why a worker cannot run a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum UnableReason {
    /// The input's size does not fit the model's input tensor.
    InputSize {
        /// Bytes the model takes.
        expected: u64,
        /// Bytes the spec says the input has.
        got: u64,
    },
    /// Inference failed on this worker (a runtime fault); the message says how.
    ExecutionFailed {
        /// The executor's error, at most 200 characters.
        message: String,
    },
    /// The worker hands an awarded task back before finishing it (a vehicle that starts
    /// driving, or whose owner's policy stops it serving): the signed release. The requester
    /// awards the task to another worker at once; the release counts as a refusal, not a
    /// failure. (A v2 node from before this variant cannot decode it and refuses the report;
    /// the task then waits out the worker's result deadline, as before.)
    Released {
        /// Why, at most 200 characters.
        reason: String,
    },
}

impl std::fmt::Display for UnableReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InputSize { expected, got } => {
                write!(
                    f,
                    "the input has {got} bytes but the model takes {expected} ({} little-endian f32)",
                    expected / 4
                )
            }
            Self::ExecutionFailed { message } => write!(f, "inference failed at the worker: {message}"),
            Self::Released { reason } => write!(f, "the worker handed the task back: {reason}"),
        }
    }
}

/// A worker telling a requester, signed, that it cannot run a task: so the requester fails it
/// at once with the true reason (a wrong input) or replaces the worker at once (a failed run)
/// instead of waiting out a timeout. It is the worker's word: a requester never lets it
/// outweigh a valid bid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unable {
    /// Message version.
    pub v: u16,
    /// The task.
    pub task_id: TaskId,
    /// The round the worker saw.
    pub round: u32,
    /// Why.
    pub reason: UnableReason,
}
signed!(Unable, MessageKind::Unable, 1024);

/// How the output was produced, for reproducibility reports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeProfile {
    /// Inference engine and version, e.g. `tract-onnx 0.23.9`.
    pub engine: String,
    /// The CPU instruction set path the engine chose, when known.
    pub isa: String,
}

/// A worker's signed statement of what it computed. The output bytes travel beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultHeader {
    /// Message version.
    pub v: u16,
    /// The task.
    pub task_id: TaskId,
    /// Digest of the input it ran on.
    pub input_digest: InputDigest,
    /// The model it ran.
    pub model: ModelId,
    /// blake3 of the output bytes.
    pub output_digest: OutputDigest,
    /// Output length.
    pub output_size: u64,
    /// Time spent in inference, microseconds.
    pub run_time_us: u64,
    /// How it ran.
    pub runtime: RuntimeProfile,
    /// The energy the run drew, millijoules: run time times the worker's declared device
    /// power (its owner's `device_power_w`); an estimate, the worker's word. Absent: not
    /// estimated (a node from before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
}
signed!(ResultHeader, MessageKind::ResultHeader, 2048);

/// Why a result was refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RejectReason {
    /// The header's signature does not verify or the header does not decode.
    BadSignature,
    /// The signer was not awarded this task.
    NotAwarded,
    /// The header names another task.
    WrongTask,
    /// The header's input digest is not the requester's.
    InputMismatch,
    /// The header's model is not the one asked for.
    ModelMismatch,
    /// blake3 of the bytes received is not the header's output digest.
    OutputDigestMismatch,
    /// The output is bigger than allowed.
    OutputTooLarge,
    /// The output disagrees with the majority of workers.
    Disagreement,
    /// This worker's result was already received.
    Duplicate,
    /// The task is no longer open (verified, failed, or past its deadline).
    TaskClosed,
    /// The requester does not know this task.
    UnknownTask,
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::BadSignature => "result header signature does not verify",
            Self::NotAwarded => "signer was not awarded this task",
            Self::WrongTask => "result names another task",
            Self::InputMismatch => "input digest is not the requester's",
            Self::ModelMismatch => "model is not the one requested",
            Self::OutputDigestMismatch => "blake3 of the output does not match the header",
            Self::OutputTooLarge => "output exceeds the size limit",
            Self::Disagreement => "output disagrees with the majority",
            Self::Duplicate => "result already received from this worker",
            Self::TaskClosed => "task is no longer open",
            Self::UnknownTask => "unknown task",
        };
        f.write_str(s)
    }
}

/// The requester's signed acknowledgement of accepted work: the worker's proof it was paid
/// attention to, and later the basis of its reputation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Message version.
    pub v: u16,
    /// The task.
    pub task_id: TaskId,
    /// The worker credited.
    pub worker: PublicKey,
    /// The output accepted.
    pub output_digest: OutputDigest,
    /// The price paid.
    pub price: u64,
    /// When accepted, Unix ms.
    pub accepted_ms: u64,
    /// The energy estimate in the worker's accepted result, millijoules (repeated, so the
    /// receipt alone says what the work cost the vehicle's battery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
}
signed!(Receipt, MessageKind::Receipt, 1024);

/// A node's capability advert, gossiped on [`crate::ids::TOPIC_PRESENCE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Message version.
    pub v: u16,
    /// Models the node holds.
    pub models: Vec<ModelId>,
    /// Free execution slots.
    pub free_slots: u32,
    /// Lowest price it bids.
    pub price_floor: u64,
    /// When sent, Unix ms.
    pub at_ms: u64,
    /// A standing offer: until this instant (Unix ms) the node takes awards for tasks of
    /// `models` paying `price_floor` or more without a bid round ([`Award::offer`]), so a
    /// requester holding it needs to send only the award. Absent: an advert, no offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_until_ms: Option<u64>,
    /// The largest batch ([`TaskSpec::batch`]) the node takes; 0 (absent): none, a node
    /// from before batches.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_batch: u16,
    /// The node's operator certificate ([`OperatorCert`], signed by the operator), if a fleet
    /// operator vouches for it: requesters put at most one worker of an operator in a task,
    /// and a closed mesh admits only listed operators' vehicles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_cert: Option<SignedEnvelope>,
    /// When the node (a parked vehicle) expects to leave, Unix ms, rounded down to the
    /// minute; absent: not expected. Its standing offer covers only tasks whose execution
    /// timeout ends before it ([`crate::winner::offer_covers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depart_ms: Option<u64>,
}
signed!(Presence, MessageKind::Presence, limits::MAX_GOSSIP_BYTES);

/// A fleet operator's statement that `vehicle` is one of its vehicles, signed with the
/// operator's key (tag `operator-cert`). A vehicle shows it in its adverts
/// ([`Presence::operator_cert`]); [`operator_of`] checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCert {
    /// Message version.
    pub v: u16,
    /// The vehicle's node key.
    pub vehicle: PublicKey,
    /// Issued, Unix ms.
    pub issued_ms: u64,
    /// Not valid after this instant, Unix ms.
    pub not_after_ms: u64,
}
signed!(OperatorCert, MessageKind::OperatorCert, 1024);

/// Why an operator certificate does not vouch for a vehicle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// It does not verify or decode.
    #[error("the operator certificate does not open: {0}")]
    Open(#[from] OpenError),
    /// It names another vehicle.
    #[error("the operator certificate is for vehicle {named}, not {vehicle}")]
    OtherVehicle {
        /// The key it names.
        named: String,
        /// The key it was shown for.
        vehicle: String,
    },
    /// Expired (or not yet issued) at the time it was checked.
    #[error("the operator certificate is valid from {issued_ms} to {not_after_ms} (Unix ms), not at {now}")]
    NotValid {
        /// Issued.
        issued_ms: u64,
        /// Expiry.
        not_after_ms: u64,
        /// When it was checked.
        now: u64,
    },
}

/// The operator vouching for `vehicle` by `cert` at `now`, and until when: the certificate's
/// signer, if it verifies, names `vehicle` and is valid at `now` (issued at most 30 s ahead of
/// the checker's clock, for skew).
pub fn operator_of(
    cert: &SignedEnvelope,
    vehicle: &PublicKey,
    now: u64,
) -> Result<(PublicKey, u64), CertError> {
    let c = OperatorCert::open(cert)?;
    if c.vehicle != *vehicle {
        return Err(CertError::OtherVehicle { named: c.vehicle.to_string(), vehicle: vehicle.to_string() });
    }
    if c.issued_ms > now.saturating_add(30_000) || c.not_after_ms < now {
        return Err(CertError::NotValid { issued_ms: c.issued_ms, not_after_ms: c.not_after_ms, now });
    }
    Ok((cert.signer, c.not_after_ms))
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// One requester's open tasks for one model: a DHT record under
/// [`crate::ids::open_tasks_record_key`], so nodes that missed the gossip still find them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTasks {
    /// Message version.
    pub v: u16,
    /// The model.
    pub model: ModelId,
    /// Tasks taking bids, at most [`limits::MAX_OPEN_TASKS_PER_RECORD`].
    pub tasks: Vec<OpenTask>,
    /// When written, Unix ms (newer records replace older ones).
    pub updated_ms: u64,
}
signed!(OpenTasks, MessageKind::OpenTasks, limits::MAX_RECORD_BYTES);

/// One entry of [`OpenTasks`]: what a node needs to bid without having seen the gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTask {
    /// The task (its spec is the DHT record under [`crate::ids::task_record_key`]).
    pub task_id: TaskId,
    /// The round taking bids.
    pub round: u32,
    /// Bids for that round close at this instant (Unix ms).
    pub bid_deadline_ms: u64,
    /// The round's selection threshold, as in its announcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_ppm: Option<u32>,
}

#[cfg(test)]
mod tests {
    use fleetmesh_crypto::Identity;

    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            v: WIRE_VERSION,
            model: ModelId::of(b"model"),
            input_digest: InputDigest::of(b"input"),
            input_size: 5,
            redundancy: 2,
            max_price: 10,
            created_ms: 1,
            bid_window_ms: 500,
            exec_timeout_ms: 5_000,
            deadline_ms: 60_000,
            nonce: 7,
            batch: None,
            tolerance: None,
        }
    }

    #[test]
    fn sign_then_open_round_trips() {
        let id = Identity::from_secret_bytes(&[1; 32]);
        let env = spec().sign(&id);
        assert_eq!(TaskSpec::open(&env).unwrap(), spec());
    }

    #[test]
    fn a_task_id_names_the_spec_and_its_signer() {
        let (a, b) = (Identity::from_secret_bytes(&[1; 32]), Identity::from_secret_bytes(&[2; 32]));
        let env = spec().sign(&a);
        // The same payload re-signed by another key is another task.
        let copy = SignedEnvelope::sign(&b, MessageKind::TaskSpec, env.payload.clone());
        assert_ne!(task_id_of(&env), task_id_of(&copy));
        assert_ne!(task_id_of(&env), TaskId::of(&env.payload));
        // Another payload from the same key too; the same envelope always the same id.
        assert_ne!(task_id_of(&env), task_id_of(&TaskSpec { nonce: 9, ..spec() }.sign(&a)));
        assert_eq!(task_id_of(&env), task_id_of(&env.clone()));
    }

    #[test]
    fn open_refuses_another_kind() {
        let id = Identity::from_secret_bytes(&[1; 32]);
        let env = spec().sign(&id);
        assert!(matches!(Bid::open(&env), Err(OpenError::Signature(_))));
    }

    #[test]
    fn newer_version_is_refused_with_a_clear_error() {
        let id = Identity::from_secret_bytes(&[1; 32]);
        let env = TaskSpec { v: WIRE_VERSION + 1, ..spec() }.sign(&id);
        assert_eq!(
            TaskSpec::open(&env),
            Err(OpenError::Decode(DecodeError::UnsupportedVersion { got: 3, max: 2 }))
        );
    }

    #[test]
    fn a_version_1_payload_still_opens_so_an_old_store_restores() {
        let id = Identity::from_secret_bytes(&[1; 32]);
        let env = TaskSpec { v: 1, ..spec() }.sign(&id);
        assert_eq!(TaskSpec::open(&env).map(|s| s.v), Ok(1));
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        // A v1 bid from a future node that adds an availability window.
        #[derive(Serialize)]
        struct FutureBid {
            #[serde(flatten)]
            bid: Bid,
            parked_until_ms: u64,
        }
        let bid = Bid {
            v: 1,
            task_id: TaskId::of(b"t"),
            round: 0,
            price: 3,
            promised_ms: 100,
            queue_depth: 0,
            free_slots: 2,
            depart_ms: None,
        };
        let id = Identity::from_secret_bytes(&[2; 32]);
        let env = SignedEnvelope::sign(
            &id,
            MessageKind::Bid,
            encode(&FutureBid { bid: bid.clone(), parked_until_ms: 99 }),
        );
        assert_eq!(Bid::open(&env).unwrap(), bid);
    }

    #[test]
    fn announcement_spec_is_optional_on_the_wire() {
        let id = Identity::from_secret_bytes(&[3; 32]);
        let spec_env = spec().sign(&id);
        let with = Announcement {
            v: 1,
            task_id: task_id_of(&spec_env),
            model: spec().model,
            round: 0,
            bid_deadline_ms: 9,
            max_price: 10,
            spec: Some(spec_env.clone()),
            select_ppm: None,
            invited: Vec::new(),
        };
        assert_eq!(Announcement::open(&with.sign(&id)).unwrap(), with);
        // An announcement from a node that does not send the spec (field absent) still decodes.
        let without = Announcement { spec: None, ..with };
        let env = without.sign(&id);
        assert!(!String::from_utf8_lossy(&env.payload).contains("spec"));
        assert_eq!(Announcement::open(&env).unwrap(), without);
    }

    #[test]
    fn swapped_spec_changes_the_task_id() {
        let id = Identity::from_secret_bytes(&[1; 32]);
        let a = spec().sign(&id);
        let b = TaskSpec { max_price: 11, ..spec() }.sign(&id);
        assert_ne!(task_id_of(&a), task_id_of(&b));
    }

    #[test]
    fn an_operator_certificate_vouches_for_its_vehicle_only_while_valid() {
        let operator = Identity::from_secret_bytes(&[7; 32]);
        let vehicle = Identity::from_secret_bytes(&[8; 32]).public();
        let cert = OperatorCert { v: WIRE_VERSION, vehicle, issued_ms: 1_000, not_after_ms: 5_000 };
        let env = cert.sign(&operator);
        assert_eq!(operator_of(&env, &vehicle, 2_000), Ok((operator.public(), 5_000)));
        let other = Identity::from_secret_bytes(&[9; 32]).public();
        assert!(matches!(operator_of(&env, &other, 2_000), Err(CertError::OtherVehicle { .. })));
        assert!(matches!(operator_of(&env, &vehicle, 5_001), Err(CertError::NotValid { .. })), "expired");
        assert!(operator_of(&env, &vehicle, 0).is_ok(), "issued within the 30 s of skew");
        let early = OperatorCert { issued_ms: 40_000, not_after_ms: 90_000, ..cert.clone() }.sign(&operator);
        assert!(
            matches!(operator_of(&early, &vehicle, 0), Err(CertError::NotValid { .. })),
            "not yet issued"
        );
        // Signed under another kind, or altered: no.
        let wrong_kind = SignedEnvelope::sign(&operator, MessageKind::Presence, env.payload.clone());
        assert!(matches!(operator_of(&wrong_kind, &vehicle, 2_000), Err(CertError::Open(_))));
        let mut forged = env.clone();
        forged.signer = other;
        assert!(matches!(operator_of(&forged, &vehicle, 2_000), Err(CertError::Open(_))));
    }
}
