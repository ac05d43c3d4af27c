//! Process-wide counts of the ed25519 operations made through this crate: what a task costs
//! in signatures (`fleetmesh bench` divides them by the tasks verified; a node exports them
//! in `/metrics`). Relaxed atomics: a count, not a synchronisation point, and a few
//! nanoseconds beside a 13 µs signature or a 31 µs verification.
//!
//! Only fleetmesh's own envelopes are counted: libp2p's handshakes (one per connection, not
//! per task) sign and verify outside this crate.

use std::sync::atomic::{AtomicU64, Ordering};

static SIGNED: AtomicU64 = AtomicU64::new(0);
static VERIFIED: AtomicU64 = AtomicU64::new(0);

/// Signature operations so far in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignatureOps {
    /// Signatures made.
    pub signed: u64,
    /// Signatures checked (valid or not).
    pub verified: u64,
}

impl SignatureOps {
    /// Both kinds together.
    pub fn total(&self) -> u64 {
        self.signed.saturating_add(self.verified)
    }

    /// What happened between `earlier` and this count.
    pub fn since(&self, earlier: &SignatureOps) -> SignatureOps {
        SignatureOps {
            signed: self.signed.saturating_sub(earlier.signed),
            verified: self.verified.saturating_sub(earlier.verified),
        }
    }
}

/// The counts so far.
pub fn signature_ops() -> SignatureOps {
    SignatureOps { signed: SIGNED.load(Ordering::Relaxed), verified: VERIFIED.load(Ordering::Relaxed) }
}

pub(crate) fn count_sign() {
    SIGNED.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_verify() {
    VERIFIED.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, MessageKind, SignedEnvelope};

    #[test]
    fn signing_and_verifying_are_counted() {
        // Other tests run in parallel in this process: the counts only grow, by at least ours.
        let before = signature_ops();
        let id = Identity::from_secret_bytes(&[3; 32]);
        let env = SignedEnvelope::sign(&id, MessageKind::Bid, vec![1]);
        assert!(env.verify(MessageKind::Bid).is_ok());
        assert!(env.verify(MessageKind::Award).is_err());
        let d = signature_ops().since(&before);
        assert!(d.signed >= 1 && d.verified >= 2, "{d:?}");
        assert_eq!(d.total(), d.signed + d.verified);
    }
}
