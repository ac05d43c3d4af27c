//! Signed envelopes with per-kind domain separation.
//!
//! The signature covers `"fleetmesh-sig-v1" 0x00 <kind tag> 0x00 <payload>`. Tags are fixed
//! ASCII strings without NUL bytes, so no (tag, payload) pair can be read as another, and a
//! bid signature can never pass as a result signature. The payload is kept as the exact bytes
//! that were signed: receivers verify those bytes and only then decode them.

use serde::{Deserialize, Serialize};

use crate::keys::{Identity, PublicKey, Signature};

const SIG_CONTEXT: &[u8] = b"fleetmesh-sig-v1";

/// What a signed payload is. Each kind signs under its own tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// A requester's task spec (stored in the DHT under its task id).
    TaskSpec,
    /// The short gossip announcement of a task.
    Announcement,
    /// A worker's bid for a task.
    Bid,
    /// The requester's award decision for one bid round.
    Award,
    /// A worker's result header.
    ResultHeader,
    /// The requester's receipt for accepted work.
    Receipt,
    /// A node's capability advert on the presence topic.
    Presence,
    /// A requester's list of its open tasks for one model (a DHT record).
    OpenTasks,
    /// A node's signature over the head of its task-timeline hash chain (a trace file).
    TraceHead,
    /// A worker telling a requester it cannot run a task, and why.
    Unable,
    /// A fleet operator's certificate for one of its vehicles' keys.
    OperatorCert,
}

impl MessageKind {
    /// The domain-separation tag signed with the payload.
    pub const fn tag(self) -> &'static [u8] {
        match self {
            Self::TaskSpec => b"task-spec",
            Self::Announcement => b"announcement",
            Self::Bid => b"bid",
            Self::Award => b"award",
            Self::ResultHeader => b"result-header",
            Self::Receipt => b"receipt",
            Self::Presence => b"presence",
            Self::OpenTasks => b"open-tasks",
            Self::TraceHead => b"trace-head",
            Self::Unable => b"unable",
            Self::OperatorCert => b"operator-cert",
        }
    }

    fn signing_input(self, payload: &[u8]) -> Vec<u8> {
        let tag = self.tag();
        let mut msg = Vec::with_capacity(SIG_CONTEXT.len() + tag.len() + payload.len() + 2);
        msg.extend_from_slice(SIG_CONTEXT);
        msg.push(0);
        msg.extend_from_slice(tag);
        msg.push(0);
        msg.extend_from_slice(payload);
        msg
    }
}

/// Why an envelope did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature does not match the payload, signer and kind. The message was altered,
    /// signed by someone else, or signed as a different kind of message.
    #[error("bad signature on {kind:?} from {signer}")]
    BadSignature {
        /// The kind the receiver expected.
        kind: MessageKind,
        /// The key the envelope claims signed it.
        signer: String,
    },
}

/// Exact payload bytes plus who signed them and the signature.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEnvelope {
    /// The signed bytes, exactly as signed.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The signer's public key.
    pub signer: PublicKey,
    /// ed25519 signature over the domain tag and the payload.
    pub signature: Signature,
}

impl SignedEnvelope {
    /// Signs `payload` as a message of `kind`.
    pub fn sign(identity: &Identity, kind: MessageKind, payload: Vec<u8>) -> Self {
        let signature = identity.sign_raw(&kind.signing_input(&payload));
        Self { payload, signer: identity.public(), signature }
    }

    /// Checks the signature for a message of `kind` and returns the payload bytes.
    pub fn verify(&self, kind: MessageKind) -> Result<&[u8], VerifyError> {
        if self.signer.verify_raw(&kind.signing_input(&self.payload), &self.signature) {
            Ok(&self.payload)
        } else {
            Err(VerifyError::BadSignature { kind, signer: self.signer.fmt_short() })
        }
    }
}

impl std::fmt::Debug for SignedEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedEnvelope")
            .field("payload_len", &self.payload.len())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(seed: u8) -> Identity {
        Identity::from_secret_bytes(&[seed; 32])
    }

    #[test]
    fn valid_envelope_verifies_and_returns_the_exact_bytes() {
        let env = SignedEnvelope::sign(&id(1), MessageKind::Bid, b"price=3".to_vec());
        assert_eq!(env.verify(MessageKind::Bid).unwrap(), b"price=3");
    }

    #[test]
    fn signature_for_one_kind_is_refused_for_another() {
        let env = SignedEnvelope::sign(&id(1), MessageKind::Bid, b"x".to_vec());
        for other in [MessageKind::ResultHeader, MessageKind::Award, MessageKind::TaskSpec] {
            assert!(matches!(env.verify(other), Err(VerifyError::BadSignature { .. })));
        }
    }

    #[test]
    fn swapped_signer_is_refused() {
        let mut env = SignedEnvelope::sign(&id(1), MessageKind::Bid, b"x".to_vec());
        env.signer = id(2).public();
        assert!(env.verify(MessageKind::Bid).is_err());
    }

    #[test]
    fn envelope_round_trips_through_cbor() {
        let env = SignedEnvelope::sign(&id(3), MessageKind::Receipt, vec![0, 1, 2, 255]);
        let mut buf = Vec::new();
        ciborium::into_writer(&env, &mut buf).unwrap();
        let back: SignedEnvelope = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, env);
        assert!(back.verify(MessageKind::Receipt).is_ok());
    }

    proptest! {
        #[test]
        fn any_flipped_bit_fails(payload in proptest::collection::vec(any::<u8>(), 1..200),
                                 which in 0usize..3, bit in any::<usize>()) {
            let env = SignedEnvelope::sign(&id(9), MessageKind::ResultHeader, payload);
            let mut bad = env.clone();
            match which {
                0 => { let i = bit % (bad.payload.len() * 8); bad.payload[i / 8] ^= 1 << (i % 8); }
                1 => {
                    let mut k = bad.signer.to_bytes();
                    let i = bit % 256; k[i / 8] ^= 1 << (i % 8);
                    // A flipped key may not even be a valid point: that is a refusal too.
                    match PublicKey::from_bytes(&k) { Ok(pk) => bad.signer = pk, Err(_) => return Ok(()) }
                }
                _ => {
                    let mut s = bad.signature.to_bytes();
                    let i = bit % 512; s[i / 8] ^= 1 << (i % 8);
                    bad.signature = Signature::from_bytes(s);
                }
            }
            prop_assert!(bad.verify(MessageKind::ResultHeader).is_err());
            prop_assert!(env.verify(MessageKind::ResultHeader).is_ok());
        }
    }
}
