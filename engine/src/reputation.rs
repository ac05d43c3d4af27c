//! The requester's reputation ledger: what this node has seen each worker do, and the trust
//! it gives each worker from that (market v2, docs/MARKET.md "Trust without a coordinator").
//!
//! Why local: there is no coordinator to ask, and a score another node reports is a claim,
//! not evidence. A requester trusts only what it verified itself.
//!
//! What counts as evidence: a verified task whose output this worker produced *together with
//! another worker* (corroborated). A result accepted alone (k = 1, nobody checking) proves
//! nothing and earns nothing, so a key cannot become trusted by answering unchecked tasks.
//! A result that differs from a verified output marks the worker bad for good (the digits
//! model is bit-exact: an honest worker never disagrees); a bad worker's bids are refused.
//! A worker that fails to deliver is not marked: that is bad luck or a departure, not a lie.
//!
//! Trust classes: bad (disagreed once), unknown (fewer than `trust_after` corroborated
//! tasks), trusted. The requester ranks trusted bidders first, lets a trusted worker run a
//! task alone with a random spot check, and, as soon as it knows a trusted holder of the
//! model that is connected, accepts an output only if a trusted worker produced it. So a
//! crowd of fresh keys that agree on a wrong output is never enough (docs/SECURITY.md says
//! what is left: a requester with no trusted worker yet accepts a quorum of unknowns).
//!
//! Bounded: at most [`MAX_LEDGER`] workers; a full ledger forgets the unknown worker seen
//! longest ago first, then bad ones, trusted ones last. Only awarded workers ever get an
//! entry, and a requester awards a bounded number per task, so no peer fills it by talking.

use std::collections::{BTreeMap, BTreeSet};

use fleetmesh_crypto::{PublicKey, TaskId};
use serde::{Deserialize, Serialize};

use super::{StoreOp, Table};

/// Workers a ledger remembers at most.
pub const MAX_LEDGER: usize = 16_384;

/// How a requester treats a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trust {
    /// Trusted: ranks first, runs alone, anchors a verification.
    Trusted,
    /// Not enough evidence either way: replicated, never verifies a task on its own.
    Unknown,
    /// Returned an output that disagreed with a verified one: its bids are refused.
    Bad,
}

/// One worker's record, as persisted (CBOR, table [`Table::Reputation`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Verified tasks whose output it produced with at least one other worker.
    pub agreed: u32,
    /// Verified tasks on which it returned another output.
    pub disagreed: u32,
    /// Verified tasks whose output it produced alone (no evidence; counted for the record).
    #[serde(default)]
    pub alone: u32,
    /// When this record last changed, Unix ms (for eviction).
    pub last_ms: u64,
}

/// What one verification said about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Produced the verified output with others.
    Agreed,
    /// Produced the verified output alone.
    Alone,
    /// Produced another output.
    Disagreed,
}

/// Trust settings (`[trust]` in the node's TOML).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Use reputation: rank trusted workers first, let them run alone with spot checks,
    /// refuse bad workers, and require a trusted worker in every verification once one is
    /// known. Off: every worker is treated alike (v1 and closed fleets).
    pub enabled: bool,
    /// Corroborated tasks after which a worker is trusted.
    pub trust_after: u32,
    /// Chance (parts per million) that a task a trusted worker could run alone also goes to
    /// an unknown worker, both outputs compared: how unknown workers earn trust and how a
    /// trusted worker that turns is caught.
    pub spot_check_ppm: u32,
    /// While this node trusts nobody who may hold a task's model and holds the model itself,
    /// it runs the task too and checks the workers against its own output (and only that
    /// agreement earns them trust then).
    pub self_check: bool,
    /// Fleet operators' keys (hex, or peer ids): with `closed`, only vehicles these operators certify
    /// ([`fleetmesh_protocol::OperatorCert`], shown in their adverts) take part in this
    /// node's tasks.
    pub operators: Vec<String>,
    /// A closed mesh: only vehicles certified by one of `operators` work for this node (and
    /// only neighbours, whose adverts show their certificates).
    pub closed: bool,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trust_after: 3,
            spot_check_ppm: 100_000,
            self_check: true,
            operators: Vec::new(),
            closed: false,
        }
    }
}

impl TrustConfig {
    /// The operators' keys (each a public key in hex or a peer id); an entry that does not
    /// parse is an error naming it.
    pub fn operator_keys(&self) -> Result<BTreeSet<PublicKey>, String> {
        self.operators
            .iter()
            .map(|o| match PublicKey::from_peer_id(o) {
                Some(k) => Ok(k),
                None => o.parse().map_err(|e| {
                    format!(
                        "trust.operators: {o:?} is neither a public key (64 hex digits) nor a peer id: {e}"
                    )
                }),
            })
            .collect()
    }
}

/// The ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    map: BTreeMap<PublicKey, Standing>,
    /// The trusted keys (a subset of `map`), to find an anchor without scanning.
    trusted: BTreeSet<PublicKey>,
    trust_after: u32,
    cap: usize,
}

impl Ledger {
    /// An empty ledger with the given trust threshold, holding at most `cap` workers.
    pub fn new(trust_after: u32, cap: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            trusted: BTreeSet::new(),
            trust_after: trust_after.max(1),
            cap: cap.max(1),
        }
    }

    fn class(&self, s: &Standing) -> Trust {
        if s.disagreed > 0 {
            Trust::Bad
        } else if s.agreed >= self.trust_after {
            Trust::Trusted
        } else {
            Trust::Unknown
        }
    }

    /// How this node treats `worker`.
    pub fn trust(&self, worker: &PublicKey) -> Trust {
        self.map.get(worker).map_or(Trust::Unknown, |s| self.class(s))
    }

    /// The record of `worker`, if any.
    pub fn standing(&self, worker: &PublicKey) -> Option<&Standing> {
        self.map.get(worker)
    }

    /// Workers remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no worker is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Trusted workers.
    pub fn trusted_count(&self) -> usize {
        self.trusted.len()
    }

    /// The trusted workers.
    pub fn trusted_keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.trusted.iter()
    }

    /// Unknown workers with some corroborated work, and how much: the ones closest to trust.
    pub fn promising(&self) -> impl Iterator<Item = (&PublicKey, u32)> {
        self.map
            .iter()
            .filter(|(_, s)| s.disagreed == 0 && s.agreed > 0 && s.agreed < self.trust_after)
            .map(|(k, s)| (k, s.agreed))
    }

    /// Corroborated tasks on record for `worker` (0 for a bad one): ranks unknown workers.
    pub fn agreed(&self, worker: &PublicKey) -> u32 {
        self.map.get(worker).filter(|s| s.disagreed == 0).map_or(0, |s| s.agreed)
    }

    /// Takes back persisted records (at most `cap`; the rest are ignored).
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (PublicKey, Standing)>) {
        for (k, s) in entries {
            if self.map.len() >= self.cap {
                break;
            }
            self.set(k, s);
        }
    }

    fn set(&mut self, key: PublicKey, s: Standing) {
        if self.class(&s) == Trust::Trusted {
            self.trusted.insert(key);
        } else {
            self.trusted.remove(&key);
        }
        self.map.insert(key, s);
    }

    /// Records one outcome for `worker` at `now`; returns the writes that persist it (the
    /// new record, and the deletion of one a full ledger forgot).
    pub fn record(&mut self, worker: PublicKey, outcome: Outcome, now: u64) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        if !self.map.contains_key(&worker) && self.map.len() >= self.cap {
            if let Some(old) = self.eviction_victim() {
                self.map.remove(&old);
                self.trusted.remove(&old);
                ops.push(StoreOp { table: Table::Reputation, key: store_key(&old), value: None });
            }
        }
        let mut s = self.map.get(&worker).cloned().unwrap_or_default();
        match outcome {
            Outcome::Agreed => s.agreed = s.agreed.saturating_add(1),
            Outcome::Alone => s.alone = s.alone.saturating_add(1),
            Outcome::Disagreed => s.disagreed = s.disagreed.saturating_add(1),
        }
        s.last_ms = now;
        let value = fleetmesh_protocol::encode(&s);
        self.set(worker, s);
        ops.push(StoreOp { table: Table::Reputation, key: store_key(&worker), value: Some(value) });
        ops
    }

    /// Whom a full ledger forgets: the unknown worker seen longest ago, else the bad one,
    /// else the trusted one.
    fn eviction_victim(&self) -> Option<PublicKey> {
        let rank = |s: &Standing| match self.class(s) {
            Trust::Unknown => 0u8,
            Trust::Bad => 1,
            Trust::Trusted => 2,
        };
        self.map.iter().min_by_key(|(k, s)| (rank(s), s.last_ms, **k)).map(|(k, _)| *k)
    }
}

/// The store key of a worker's record: its public key's 32 bytes.
pub fn store_key(worker: &PublicKey) -> TaskId {
    TaskId::from_bytes(worker.to_bytes())
}

/// The worker a store key names (`None` for bytes that are no valid key).
pub fn worker_of(key: &TaskId) -> Option<PublicKey> {
    PublicKey::from_bytes(key.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use fleetmesh_crypto::Identity;

    use super::*;

    fn pk(s: u8) -> PublicKey {
        Identity::from_secret_bytes(&[s; 32]).public()
    }

    #[test]
    fn trust_comes_from_corroborated_work_only() {
        let mut l = Ledger::new(3, 100);
        let w = pk(1);
        assert_eq!(l.trust(&w), Trust::Unknown);
        for t in 0..10 {
            l.record(w, Outcome::Alone, t);
        }
        assert_eq!(l.trust(&w), Trust::Unknown, "unchecked results earn nothing");
        l.record(w, Outcome::Agreed, 11);
        l.record(w, Outcome::Agreed, 12);
        assert_eq!(l.trust(&w), Trust::Unknown);
        l.record(w, Outcome::Agreed, 13);
        assert_eq!(l.trust(&w), Trust::Trusted);
        assert_eq!(l.trusted_count(), 1);
        assert!(l.trusted_keys().any(|k| *k == w));
        // One disagreement makes even a trusted worker bad.
        l.record(w, Outcome::Disagreed, 14);
        assert_eq!(l.trust(&w), Trust::Bad);
        assert_eq!(l.trusted_count(), 0);
    }

    #[test]
    fn a_full_ledger_forgets_unknown_workers_first_and_says_so() {
        let mut l = Ledger::new(1, 3);
        l.record(pk(1), Outcome::Agreed, 1); // trusted, oldest
        l.record(pk(2), Outcome::Disagreed, 2); // bad
        l.record(pk(3), Outcome::Alone, 3); // unknown
        let ops = l.record(pk(4), Outcome::Alone, 4);
        assert_eq!(l.len(), 3);
        assert_eq!(l.standing(&pk(3)), None, "the unknown one went");
        assert!(ops.iter().any(|o| o.key == store_key(&pk(3)) && o.value.is_none()));
        assert_eq!(l.trust(&pk(1)), Trust::Trusted);
        assert_eq!(l.trust(&pk(2)), Trust::Bad);
        // Now the oldest unknown is 4; then bad before trusted.
        l.record(pk(5), Outcome::Alone, 5);
        assert_eq!(l.standing(&pk(4)), None);
        l.record(pk(1), Outcome::Agreed, 6);
        l.record(pk(5), Outcome::Agreed, 7); // 5 trusted now: no unknown left
        l.record(pk(6), Outcome::Alone, 8);
        assert_eq!(l.trust(&pk(2)), Trust::Unknown, "the bad one went before any trusted one");
        assert_eq!(l.trusted_count(), 2);
    }

    #[test]
    fn records_round_trip_through_the_store_format() {
        let mut l = Ledger::new(2, 10);
        let ops = l.record(pk(7), Outcome::Agreed, 9);
        let op = &ops[0];
        assert_eq!(worker_of(&op.key), Some(pk(7)));
        let s: Standing = fleetmesh_protocol::decode(op.value.as_deref().unwrap_or_default(), 1024).unwrap();
        let mut back = Ledger::new(2, 10);
        back.restore([(pk(7), s)]);
        assert_eq!(back.standing(&pk(7)), l.standing(&pk(7)));
    }
}
