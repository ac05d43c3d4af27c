//! Bounded, verifiable participation in a task's round (market v2, first part; see
//! `docs/MARKET.md`).
//!
//! Today every worker that holds the model bids on every task, so a round costs messages and
//! signatures in proportion to the mesh. Here a round admits only the workers whose *ticket*
//! falls below a threshold the requester sets for the round: with `n` workers holding the
//! model and a threshold of `expected / n`, about `expected` take part, whatever `n` is.
//!
//! A ticket is a hash of public data only: the round's seed (the task id, which hashes the
//! requester's signed spec and its nonce, and the round number) and the worker's public key.
//! So anyone can recompute who was eligible and in which order; a worker cannot choose its
//! ticket (its key exists before the task does, and the task id is fixed by the requester);
//! and a signature is no part of it (an ed25519 signature's nonce is the signer's choice, so
//! it would be a ticket the signer could grind).
//!
//! The threshold is a fraction in parts per million of the ticket space, carried signed in the
//! round's announcement. A round that draws too few bids is followed by one with a doubled
//! threshold ([`escalate`]), so a low estimate of `n` costs a round, not the task.

use fleetmesh_crypto::{PublicKey, TaskId};

/// The whole ticket space, in parts per million: a threshold of this admits everyone.
pub const ALL: u32 = 1_000_000;

const DOMAIN: &[u8] = b"fleetmesh/selection/v2";

/// A worker's ticket for a round: uniform over `u64`, lower is better.
pub fn ticket(task_id: &TaskId, round: u32, worker: &PublicKey) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN);
    h.update(task_id.as_bytes());
    h.update(&round.to_le_bytes());
    h.update(&worker.to_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// Whether a ticket falls below a threshold of `ppm` parts per million.
pub fn admits(ticket: u64, ppm: u32) -> bool {
    if ppm >= ALL {
        return true;
    }
    // ticket / 2^64 < ppm / 10^6, in integers: ticket * 10^6 < ppm * 2^64.
    u128::from(ticket) * u128::from(ALL) < u128::from(ppm) << 64
}

/// Whether `worker` may take part in `round` of `task_id` under a threshold of `ppm`.
pub fn eligible(task_id: &TaskId, round: u32, worker: &PublicKey, ppm: u32) -> bool {
    admits(ticket(task_id, round, worker), ppm)
}

/// The threshold that admits about `expected` of `holders` workers (everyone when the
/// holders are that few or unknown), never below one in a million.
pub fn threshold(expected: u32, holders: u32) -> u32 {
    if holders == 0 || expected >= holders {
        return ALL;
    }
    let ppm = u64::from(expected) * u64::from(ALL) / u64::from(holders);
    u32::try_from(ppm).unwrap_or(ALL).clamp(1, ALL)
}

/// The threshold of the next round after one that drew too few bids: doubled, up to all.
pub fn escalate(ppm: u32) -> u32 {
    ppm.saturating_mul(2).min(ALL)
}

/// Workers one announcement may invite at most.
pub const MAX_INVITED: usize = 8;

const INVITE_DOMAIN: &[u8] = b"fleetmesh/invite/v2";

/// Whether `worker` may take part in `round`: its ticket is below `ppm`, or the requester
/// invited it by name in the round's signed announcement (market v2 reputation: the
/// requester's trusted workers; only the first [`MAX_INVITED`] names count).
pub fn admitted(task_id: &TaskId, round: u32, worker: &PublicKey, ppm: u32, invited: &[PublicKey]) -> bool {
    invited.iter().take(MAX_INVITED).any(|k| k == worker) || eligible(task_id, round, worker, ppm)
}

/// A worker's rank among a requester's trusted workers for a task (lowest first):
/// rendezvous hashing seeded by the task id, so each task invites a different few and the
/// work spreads over all of them.
pub fn invite_rank(task_id: &TaskId, worker: &PublicKey) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(INVITE_DOMAIN);
    h.update(task_id.as_bytes());
    h.update(&worker.to_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// The participants a round of a task with redundancy `k` is sized for: the k winners, as
/// many standbys, and two more for bids lost or refused.
pub fn expected_participants(k: u8) -> u32 {
    u32::from(k).saturating_mul(2).saturating_add(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmesh_crypto::Identity;

    fn key(i: u64) -> PublicKey {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&i.to_le_bytes());
        seed[31] = 0x5e;
        Identity::from_secret_bytes(&seed).public()
    }

    fn task(i: u64) -> TaskId {
        TaskId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    #[test]
    fn tickets_are_fixed_by_public_data_and_differ_by_round_and_worker() {
        let (t, w) = (task(1), key(1));
        assert_eq!(ticket(&t, 0, &w), ticket(&t, 0, &w));
        assert_ne!(ticket(&t, 0, &w), ticket(&t, 1, &w));
        assert_ne!(ticket(&t, 0, &w), ticket(&t, 0, &key(2)));
        assert_ne!(ticket(&t, 0, &w), ticket(&task(2), 0, &w));
    }

    #[test]
    fn the_threshold_is_exact_at_its_edges() {
        assert!(admits(u64::MAX, ALL));
        assert!(!admits(0, 0));
        assert!(admits(0, 1));
        // Half the space: 2^63 - 1 is below, 2^63 is not.
        assert!(admits((1 << 63) - 1, ALL / 2));
        assert!(!admits(1 << 63, ALL / 2));
        assert_eq!(threshold(6, 0), ALL);
        assert_eq!(threshold(6, 6), ALL);
        assert_eq!(threshold(6, 12), ALL / 2);
        assert_eq!(threshold(1, u32::MAX), 1);
        assert_eq!(escalate(ALL / 2 + 1), ALL);
        assert_eq!(escalate(3), 6);
        assert_eq!(expected_participants(1), 4);
        assert_eq!(expected_participants(u8::MAX), 512);
    }

    /// Participation stays near 2k + 2 whatever the number of holders: the property the
    /// market issue asks for. Over 200 tasks the mean is within 15 % of the target.
    #[test]
    fn about_the_expected_number_take_part_whatever_the_mesh_size() {
        let k = 2;
        let expected = expected_participants(k);
        for holders in [10u64, 100, 1_000, 10_000] {
            let keys: Vec<PublicKey> = (0..holders).map(key).collect();
            let ppm = threshold(expected, holders as u32);
            let tasks = 200u64;
            let mut total = 0u64;
            for t in 0..tasks {
                let id = task(t);
                total += keys.iter().filter(|w| eligible(&id, 0, w, ppm)).count() as u64;
            }
            let mean = total as f64 / tasks as f64;
            let target = f64::from(expected).min(holders as f64);
            assert!(
                (mean - target).abs() <= 0.15 * target,
                "{holders} holders: mean {mean}, target {target}"
            );
        }
    }
}
