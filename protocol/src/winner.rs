//! The winner rule: a pure, deterministic function from a task and a set of signed bids to
//! ranked winners and, for every bid not chosen, a reason.
//!
//! Any node given the same spec and the same bids computes the same answer, whatever order
//! the bids arrived in: invalid bids are filtered by rules that look at each bid alone, a
//! bidder with several bids keeps the one with the lowest bid digest, and the ranking sorts
//! by an integer score with ties broken by blake3(task id || bidder key), never by arrival.
//!
//! The score (lower is better) weighs, in thousandths:
//! * price relative to the spec's max price (weight 5),
//! * promised completion time relative to the execution timeout (weight 4),
//! * load: queue depth relative to queue depth plus free slots (weight 1).
//!
//! Integer arithmetic only, so no platform can round differently.

use std::collections::BTreeMap;

use fleetmesh_crypto::{Digest, PublicKey, SignedEnvelope, TaskId};

use crate::messages::{bid_digest, Bid, DeclineReason, Signed, TaskSpec};

/// One bid the rule considered valid, with its rank data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankedBid {
    /// Who bid.
    pub bidder: PublicKey,
    /// The decoded bid.
    pub bid: Bid,
    /// Its digest (goes into the award's bid set).
    pub digest: Digest,
    /// Its score (with a selection threshold, its ticket); lower is better.
    pub score: u64,
}

/// The rule's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// The first `k` are the winners; the rest are standby, in order, for re-awards.
    pub ranked: Vec<RankedBid>,
    /// How many of `ranked` win now: `min(k, ranked.len())`.
    pub winners: usize,
    /// Every bid not ranked, and the losers among the ranked, with the reason.
    pub declined: Vec<(PublicKey, DeclineReason)>,
    /// Sorted digests of the valid bids: the bid set the decision names.
    pub bid_set: Vec<Digest>,
}

impl Decision {
    /// The winners' keys in rank order.
    pub fn winner_keys(&self) -> Vec<PublicKey> {
        self.ranked[..self.winners].iter().map(|r| r.bidder).collect()
    }
}

/// Whether every winner an award names was admitted to its round by the threshold and the
/// invitations the award repeats ([`crate::selection::admitted`]): what a third party can
/// check from the award alone. (Which admitted bidders won also depends on the requester's
/// private reputation ledger, so it is not recomputable; that they were admitted is.)
pub fn admitted_by(award: &crate::Award) -> bool {
    award.select_ppm.is_none_or(|ppm| {
        award
            .winners
            .iter()
            .all(|w| crate::selection::admitted(&award.task_id, award.round, w, ppm, &award.invited))
    })
}

/// The commitment an award makes to its bid set: blake3 over a domain tag, the count and the
/// sorted digests. Fixed size whatever the number of bids.
pub fn bid_set_root(sorted_digests: &[Digest]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"fleetmesh-bid-set-v1");
    h.update(&(sorted_digests.len() as u64).to_le_bytes());
    for d in sorted_digests {
        h.update(d.as_bytes());
    }
    Digest::from_bytes(*h.finalize().as_bytes())
}

/// What rules a bid out on its own, before any ranking: another task or round, the
/// requester's own bid, a price above the maximum, a promise beyond the execution timeout.
/// A requester applies it when a bid arrives, so a round holds only bids that can rank.
pub fn bid_problem(
    task_id: &TaskId,
    spec: &TaskSpec,
    requester: &PublicKey,
    round: u32,
    bidder: &PublicKey,
    bid: &Bid,
) -> Option<DeclineReason> {
    if bid.task_id != *task_id || bid.round != round {
        Some(DeclineReason::WrongTask)
    } else if bidder == requester {
        Some(DeclineReason::OwnTask)
    } else if bid.price > spec.max_price {
        Some(DeclineReason::PriceAboveMax)
    } else if bid.promised_ms > spec.exec_timeout_ms {
        Some(DeclineReason::TooSlow)
    } else {
        None
    }
}

/// Score of one bid against the spec; lower is better.
pub fn score(spec: &TaskSpec, bid: &Bid) -> u64 {
    let price = u64::from(u32::MAX).min(bid.price.saturating_mul(1000) / spec.max_price.max(1));
    let time = u64::from(bid.promised_ms).saturating_mul(1000) / u64::from(spec.exec_timeout_ms.max(1));
    let slots = u64::from(bid.queue_depth) + u64::from(bid.free_slots) + 1;
    let load = u64::from(bid.queue_depth).saturating_mul(1000) / slots;
    price.saturating_mul(5).saturating_add(time.saturating_mul(4)).saturating_add(load)
}

fn tie_break(task: &TaskId, bidder: &PublicKey) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(task.as_bytes());
    h.update(&bidder.to_bytes());
    *h.finalize().as_bytes()
}

/// Applies the winner rule for `round` of task `task_id` (with `spec`, signed by `requester`)
/// to a round announced without a selection threshold (before market v2): ranked by score.
pub fn choose(
    task_id: &TaskId,
    spec: &TaskSpec,
    requester: &PublicKey,
    round: u32,
    bids: &[SignedEnvelope],
) -> Decision {
    choose_with(task_id, spec, requester, round, None, bids)
}

/// The winner rule for a round with selection threshold `select_ppm` (market v2): a bid whose
/// ticket is not below the threshold is declined `NotSelected`, and the valid ones rank by
/// ticket, lowest first ([`crate::selection::ticket`]): by public data, not by the bidders'
/// claims. Price and promised time only rule bids out. Without a threshold, as [`choose`].
pub fn choose_with(
    task_id: &TaskId,
    spec: &TaskSpec,
    requester: &PublicKey,
    round: u32,
    select_ppm: Option<u32>,
    bids: &[SignedEnvelope],
) -> Decision {
    choose_invited(task_id, spec, requester, round, select_ppm, &[], bids)
}

/// As [`choose_with`], where the round's announcement also invited `invited` by name: they
/// are admitted whatever their ticket ([`crate::selection::admitted`]) and rank by ticket
/// like everyone else.
pub fn choose_invited(
    task_id: &TaskId,
    spec: &TaskSpec,
    requester: &PublicKey,
    round: u32,
    select_ppm: Option<u32>,
    invited: &[PublicKey],
    bids: &[SignedEnvelope],
) -> Decision {
    let mut invalid = Vec::new();
    let mut opened = Vec::with_capacity(bids.len());
    for env in bids {
        match Bid::open(env) {
            Ok(bid) => opened.push(OpenedBid { digest: bid_digest(env), bidder: env.signer, bid }),
            Err(_) => invalid.push(env.signer),
        }
    }
    let mut d = choose_opened(task_id, spec, requester, round, select_ppm, invited, opened);
    d.declined.extend(invalid.into_iter().map(|b| (b, DeclineReason::Invalid)));
    sort_declines(&mut d.declined);
    d
}

/// A bid whose signature was already checked (by whoever holds it: a requester checks each
/// bid as it arrives), decoded, with its digest ([`bid_digest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedBid {
    /// Its digest.
    pub digest: Digest,
    /// Who signed it.
    pub bidder: PublicKey,
    /// The bid.
    pub bid: Bid,
}

/// A standing offer (a presence advert with [`crate::Presence::offer_until_ms`]) standing in
/// for a bid in round `round` of task `task_id`: at the offer's price floor, with no promise
/// of time or load (which no longer rank). `digest` is the signed advert's ([`bid_digest`]
/// of its envelope), so an award made on offers commits to the adverts themselves.
pub fn offer_bid(
    (task_id, spec): (&TaskId, &TaskSpec),
    round: u32,
    bidder: PublicKey,
    digest: Digest,
    offer: &crate::Presence,
) -> OpenedBid {
    OpenedBid {
        digest,
        bidder,
        bid: Bid {
            v: crate::WIRE_VERSION,
            task_id: *task_id,
            round,
            price: spec.price_for(offer.price_floor),
            promised_ms: 0,
            queue_depth: 0,
            free_slots: offer.free_slots,
            depart_ms: offer.depart_ms,
        },
    }
}

/// Whether a task with this execution timeout, awarded at `now`, ends before a departure at
/// `depart_ms` (none: it does). Worker and requester both apply it to the departure the worker
/// signed in its bid or offer, so each can check the other: a vehicle never takes a task whose
/// latest completion passes its departure.
pub fn finishes_before(depart_ms: Option<u64>, exec_timeout_ms: u32, now: u64) -> bool {
    depart_ms.is_none_or(|d| d >= now.saturating_add(u64::from(exec_timeout_ms)))
}

/// Whether a standing offer covers a task at `now`: fresh, for the task's model, at a price
/// floor the task pays (for each input of a batch), and for a batch task, a well-formed one
/// from a node that takes batches that large, ending before the node's departure. What a requester checks before awarding on the offer, and what the
/// worker checks against its own offer before taking such an award.
pub fn offer_covers(offer: &crate::Presence, spec: &TaskSpec, now: u64) -> bool {
    offer.offer_until_ms.is_some_and(|until| until >= now)
        && finishes_before(offer.depart_ms, spec.exec_timeout_ms, now)
        && offer.models.contains(&spec.model)
        && spec.price_for(offer.price_floor) <= spec.max_price
        && spec.check_batch().is_ok()
        && (spec.batch.is_none() || spec.items() <= offer.max_batch)
}

/// [`choose_invited`] on bids already opened: the same rule without checking a signature a
/// second time (a requester verifies each bid once, when it arrives).
pub fn choose_opened(
    task_id: &TaskId,
    spec: &TaskSpec,
    requester: &PublicKey,
    round: u32,
    select_ppm: Option<u32>,
    invited: &[PublicKey],
    bids: Vec<OpenedBid>,
) -> Decision {
    let mut declined = Vec::new();
    // Per bidder, the valid bid with the lowest digest; later ones are duplicates.
    let mut best: BTreeMap<PublicKey, (Digest, Bid)> = BTreeMap::new();
    let mut duplicates: Vec<PublicKey> = Vec::new();
    for OpenedBid { digest, bidder, bid } in bids {
        let reason = bid_problem(task_id, spec, requester, round, &bidder, &bid).or_else(|| {
            select_ppm
                .filter(|p| !crate::selection::admitted(task_id, round, &bidder, *p, invited))
                .map(|_| DeclineReason::NotSelected)
        });
        if let Some(reason) = reason {
            declined.push((bidder, reason));
            continue;
        }
        match best.get(&bidder) {
            Some((d, _)) if *d <= digest => duplicates.push(bidder),
            Some(_) => {
                duplicates.push(bidder);
                best.insert(bidder, (digest, bid));
            }
            None => {
                best.insert(bidder, (digest, bid));
            }
        }
    }
    declined.extend(duplicates.into_iter().map(|b| (b, DeclineReason::DuplicateBidder)));

    let mut ranked: Vec<RankedBid> = best
        .into_iter()
        .map(|(bidder, (digest, bid))| {
            let score = match select_ppm {
                Some(_) => crate::selection::ticket(task_id, round, &bidder),
                None => score(spec, &bid),
            };
            RankedBid { score, bidder, bid, digest }
        })
        .collect();
    ranked.sort_by_cached_key(|r| (r.score, tie_break(task_id, &r.bidder)));
    let winners = ranked.len().min(usize::from(spec.redundancy));
    for (rank, r) in ranked.iter().enumerate().skip(winners) {
        declined.push((r.bidder, DeclineReason::Outbid { rank: u32::try_from(rank).unwrap_or(u32::MAX) }));
    }
    let mut bid_set: Vec<Digest> = ranked.iter().map(|r| r.digest).collect();
    bid_set.sort();
    sort_declines(&mut declined);
    Decision { ranked, winners, declined, bid_set }
}

/// Sorts the declines so the whole decision is order-independent.
fn sort_declines(declined: &mut [(PublicKey, DeclineReason)]) {
    declined.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| format!("{:?}", a.1).cmp(&format!("{:?}", b.1))));
}

#[cfg(test)]
mod tests {
    use fleetmesh_crypto::{Identity, InputDigest, ModelId};
    use proptest::prelude::*;

    use super::*;
    use crate::messages::WIRE_VERSION;

    fn spec(k: u8) -> TaskSpec {
        TaskSpec {
            v: WIRE_VERSION,
            model: ModelId::of(b"m"),
            input_digest: InputDigest::of(b"i"),
            input_size: 1,
            redundancy: k,
            max_price: 100,
            created_ms: 0,
            bid_window_ms: 100,
            exec_timeout_ms: 1000,
            deadline_ms: 10_000,
            nonce: 0,
            batch: None,
            tolerance: None,
        }
    }

    fn bid(seed: u8, task: TaskId, price: u64, promised_ms: u32) -> SignedEnvelope {
        let id = Identity::from_secret_bytes(&[seed; 32]);
        Bid {
            v: WIRE_VERSION,
            task_id: task,
            round: 0,
            price,
            promised_ms,
            queue_depth: 0,
            free_slots: 1,
            depart_ms: None,
        }
        .sign(&id)
    }

    fn requester() -> PublicKey {
        Identity::from_secret_bytes(&[200; 32]).public()
    }

    #[test]
    fn cheaper_and_faster_wins() {
        let t = TaskId::of(b"t");
        let bids = vec![bid(1, t, 90, 900), bid(2, t, 10, 100), bid(3, t, 50, 500)];
        let d = choose(&t, &spec(2), &requester(), 0, &bids);
        assert_eq!(d.winners, 2);
        let w = d.winner_keys();
        assert_eq!(w[0], Identity::from_secret_bytes(&[2; 32]).public());
        assert_eq!(w[1], Identity::from_secret_bytes(&[3; 32]).public());
        assert!(d
            .declined
            .contains(&(Identity::from_secret_bytes(&[1; 32]).public(), DeclineReason::Outbid { rank: 2 })));
        assert_eq!(d.bid_set.len(), 3);
    }

    #[test]
    fn invalid_bids_get_reasons() {
        let t = TaskId::of(b"t");
        let mut forged = bid(4, t, 1, 1);
        forged.signer = Identity::from_secret_bytes(&[5; 32]).public();
        let own = {
            let id = Identity::from_secret_bytes(&[200; 32]);
            Bid {
                v: 1,
                task_id: t,
                round: 0,
                price: 1,
                promised_ms: 1,
                queue_depth: 0,
                free_slots: 1,
                depart_ms: None,
            }
            .sign(&id)
        };
        let bids =
            vec![bid(1, t, 101, 100), bid(2, t, 10, 1001), bid(3, TaskId::of(b"other"), 1, 1), forged, own];
        let d = choose(&t, &spec(1), &requester(), 0, &bids);
        assert_eq!(d.winners, 0);
        let reasons: Vec<_> = d.declined.iter().map(|(_, r)| r.clone()).collect();
        for r in [
            DeclineReason::PriceAboveMax,
            DeclineReason::TooSlow,
            DeclineReason::WrongTask,
            DeclineReason::Invalid,
            DeclineReason::OwnTask,
        ] {
            assert!(reasons.contains(&r), "missing {r:?} in {reasons:?}");
        }
    }

    #[test]
    fn an_award_shows_its_winners_were_admitted_by_the_threshold_or_an_invitation() {
        let t = TaskId::of(b"t");
        let keys: Vec<PublicKey> =
            (1..=200u8).map(|i| Identity::from_secret_bytes(&[i; 32]).public()).collect();
        let ppm = 50_000;
        let inside = *keys.iter().find(|k| crate::selection::eligible(&t, 3, k, ppm)).unwrap();
        let outside = *keys.iter().find(|k| !crate::selection::eligible(&t, 3, k, ppm)).unwrap();
        let award =
            |winners: Vec<PublicKey>, select_ppm: Option<u32>, invited: Vec<PublicKey>| crate::Award {
                v: WIRE_VERSION,
                task_id: t,
                round: 3,
                bid_root: None,
                bid_count: 1,
                winners,
                result_deadline_ms: 1,
                select_ppm,
                invited,
                offer: false,
            };
        assert!(admitted_by(&award(vec![inside], Some(ppm), vec![])));
        assert!(!admitted_by(&award(vec![inside, outside], Some(ppm), vec![])));
        assert!(admitted_by(&award(vec![inside, outside], Some(ppm), vec![outside])));
        // A round open to every holder admits anyone.
        assert!(admitted_by(&award(vec![outside], None, vec![])));
        // The fields survive the wire.
        let a = award(vec![outside], Some(ppm), vec![outside]);
        let back = crate::Award::open(&a.sign(&Identity::from_secret_bytes(&[9; 32]))).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn standing_offers_rank_by_ticket_and_commit_to_the_adverts() {
        let t = TaskId::of(b"t");
        let offer = |floor: u64| crate::Presence {
            v: WIRE_VERSION,
            models: vec![ModelId::of(b"m")],
            free_slots: 1,
            depart_ms: None,
            price_floor: floor,
            at_ms: 5,
            offer_until_ms: Some(1_000),
            max_batch: 16,
            operator_cert: None,
        };
        let adverts: Vec<(SignedEnvelope, crate::Presence)> = (1..=10u8)
            .map(|i| {
                let p = offer(u64::from(i) * 20);
                (p.sign(&Identity::from_secret_bytes(&[i; 32])), p)
            })
            .collect();
        let opened: Vec<OpenedBid> =
            adverts.iter().map(|(e, p)| offer_bid((&t, &spec(2)), 0, e.signer, bid_digest(e), p)).collect();
        assert_eq!(opened[0].digest, bid_digest(&adverts[0].0));
        let d = choose_opened(&t, &spec(2), &requester(), 0, Some(crate::selection::ALL), &[], opened);
        // Floors above the spec's max price (100) are ruled out; the rest rank by ticket.
        assert_eq!(d.ranked.len(), 5);
        let tickets: Vec<u64> = d.ranked.iter().map(|r| crate::selection::ticket(&t, 0, &r.bidder)).collect();
        assert!(tickets.windows(2).all(|w| w[0] <= w[1]));
        assert!(d.declined.iter().filter(|(_, r)| *r == DeclineReason::PriceAboveMax).count() == 5);
        // Coverage: fresh, the model, the price.
        let s = spec(1);
        assert!(offer_covers(&offer(100), &s, 1_000));
        assert!(!offer_covers(&offer(100), &s, 1_001), "expired");
        assert!(!offer_covers(&offer(101), &s, 0), "floor above the max price");
        assert!(!offer_covers(&crate::Presence { offer_until_ms: None, ..offer(1) }, &s, 0), "no offer");
        let other = TaskSpec { model: ModelId::of(b"other"), ..spec(1) };
        assert!(!offer_covers(&offer(1), &other, 0), "another model");
        // Batches: up to the advert's max_batch; an advert without it (an older node) takes none.
        let batch = |n: u16| TaskSpec { batch: Some(n), input_size: u64::from(n), ..spec(1) };
        assert!(offer_covers(&offer(1), &batch(16), 0));
        assert!(!offer_covers(&offer(7), &batch(16), 0), "the floor is per input: 7 x 16 > 100");
        assert_eq!(
            offer_bid((&t, &batch(16)), 0, adverts[0].0.signer, Digest::of(b"d"), &offer(6)).bid.price,
            96
        );
        assert!(!offer_covers(&offer(1), &TaskSpec { batch: Some(0), ..spec(1) }, 0), "a batch of 0");
        assert!(!offer_covers(&offer(1), &batch(17), 0), "larger than it takes");
        assert!(!offer_covers(&crate::Presence { max_batch: 0, ..offer(1) }, &batch(1), 0), "takes none");
        assert!(offer_covers(&crate::Presence { max_batch: 0, ..offer(1) }, &s, 0), "one input is no batch");
        // An advert without the field (an older node) is no offer, and the field survives.
        let p = offer(3);
        assert_eq!(crate::Presence::open(&p.sign(&Identity::from_secret_bytes(&[1; 32]))).unwrap(), p);
    }

    #[test]
    fn a_bidder_counts_once() {
        let t = TaskId::of(b"t");
        let bids = vec![bid(1, t, 10, 100), bid(1, t, 20, 100), bid(2, t, 30, 100)];
        let d = choose(&t, &spec(2), &requester(), 0, &bids);
        assert_eq!(d.ranked.len(), 2);
        assert!(d.declined.iter().any(|(_, r)| *r == DeclineReason::DuplicateBidder));
    }

    #[test]
    fn equal_scores_are_ordered_by_hash_not_arrival() {
        let t = TaskId::of(b"t");
        let a = choose(&t, &spec(1), &requester(), 0, &[bid(1, t, 10, 100), bid(2, t, 10, 100)]);
        let b = choose(&t, &spec(1), &requester(), 0, &[bid(2, t, 10, 100), bid(1, t, 10, 100)]);
        assert_eq!(a.ranked[0].score, a.ranked[1].score);
        assert_eq!(a, b);
    }

    #[test]
    fn with_a_threshold_tickets_rank_and_claims_do_not() {
        let t = TaskId::of(b"t");
        // Price 0 and 0 ms: under v1 this bid wins; under a threshold it ranks by its ticket.
        let bids: Vec<SignedEnvelope> =
            (1..=12).map(|i| bid(i, t, if i == 1 { 0 } else { 90 }, 900)).collect();
        let d = choose_with(&t, &spec(2), &requester(), 0, Some(crate::selection::ALL), &bids);
        assert_eq!(d.ranked.len(), 12);
        let tickets: Vec<u64> = d.ranked.iter().map(|r| crate::selection::ticket(&t, 0, &r.bidder)).collect();
        assert!(tickets.windows(2).all(|w| w[0] <= w[1]), "ranked by ticket");
        // Half the space: only bidders whose ticket is in the lower half rank.
        let d = choose_with(&t, &spec(2), &requester(), 0, Some(crate::selection::ALL / 2), &bids);
        for r in &d.ranked {
            assert!(crate::selection::eligible(&t, 0, &r.bidder, crate::selection::ALL / 2));
        }
        let not_selected = d.declined.iter().filter(|(_, r)| *r == DeclineReason::NotSelected).count();
        assert_eq!(d.ranked.len() + not_selected, 12);
        assert!(not_selected > 0 && !d.ranked.is_empty(), "12 tickets split by half the space");
    }

    proptest! {
        // Each case signs up to 25 bids; 64 cases keep the debug-build test fast.
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn order_of_arrival_does_not_matter(
            params in proptest::collection::vec((1u8..30, 0u64..150, 0u32..1500), 1..25),
            k in 1u8..4,
            seed in any::<u64>(),
        ) {
            let t = TaskId::of(b"prop");
            let bids: Vec<_> = params.iter().map(|&(s, p, ms)| bid(s, t, p, ms)).collect();
            let mut shuffled = bids.clone();
            // Fisher-Yates with a simple LCG so the test needs no extra crate.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (x >> 33) as usize % (i + 1));
            }
            let a = choose(&t, &spec(k), &requester(), 0, &bids);
            let b = choose(&t, &spec(k), &requester(), 0, &shuffled);
            // Bids opened once (as a requester does on arrival) give the same decision.
            let opened: Vec<OpenedBid> = shuffled
                .iter()
                .map(|e| OpenedBid { digest: bid_digest(e), bidder: e.signer, bid: Bid::open(e).unwrap() })
                .collect();
            let c = choose_opened(&t, &spec(k), &requester(), 0, None, &[], opened);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a, &c);
        }
    }
}
