//! The engine driven by hand: each finding of the hostile review as a sequence of inputs,
//! with no socket, no clock and no disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;
use std::sync::Arc;

use fleetmesh_crypto::{Identity, InputDigest, PublicKey, SignedEnvelope, TaskId};
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{Announcement, Award, Presence, RejectReason, Signed, TaskSpec, WIRE_VERSION};

use super::requester::ANNOUNCE_RETRY_MS;
use super::*;

const T0: u64 = 1_800_000_000_000;

fn identity(i: u64) -> Arc<Identity> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    seed[31] = 0xa5;
    Arc::new(Identity::from_secret_bytes(&seed))
}

fn model() -> fleetmesh_crypto::ModelId {
    fleetmesh_crypto::ModelId::of(b"test-model")
}

fn engine(i: u64) -> Engine {
    engine_with(i, |_| {})
}

/// An engine holding the test model. Its own checks of its tasks are off (most tests drive
/// results by hand and expect them judged at once); the tests about them turn them on.
fn engine_with(i: u64, f: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut c =
        EngineConfig { presence_interval_ms: 0, default_model: Some(model()), ..EngineConfig::default() };
    c.trust.self_check = false;
    f(&mut c);
    Engine::new(identity(i), c, BTreeSet::from([model()]), T0)
}

fn submit(e: &mut Engine, now: u64, input: &[u8]) -> (TaskId, Vec<Action>) {
    let request = SubmitRequest { input: input.to_vec(), ..SubmitRequest::default() };
    let actions = e.handle(now, Input::Submit { call: 1, request, nonce: 7 });
    let id = actions
        .iter()
        .find_map(|a| match a {
            Action::Submitted { result: Ok(id), .. } => Some(*id),
            _ => None,
        })
        .expect("submitted");
    (id, actions)
}

/// The announcement among `actions`: its bytes, task and round.
fn announcement(actions: &[Action]) -> (Vec<u8>, TaskId, u32) {
    let (_, data, ann) =
        published(actions).into_iter().find(|p| p.0 == Topic::Tasks).expect("an announcement");
    let (task, round) = ann.expect("an announcement names its task and round");
    (data, task, round)
}

/// A publish: topic, bytes, and (task, round) for an announcement.
type Published = (Topic, Vec<u8>, Option<(TaskId, u32)>);

fn published(actions: &[Action]) -> Vec<Published> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, data, announce } => Some((*topic, data.clone(), *announce)),
            _ => None,
        })
        .collect()
}

fn sends(actions: &[Action]) -> Vec<(PublicKey, Outgoing, SendTag)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, request, tag } => Some((*to, request.clone(), tag.clone())),
            _ => None,
        })
        .collect()
}

fn reply(actions: &[Action]) -> TaskResponse {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Reply { response, .. } => Some(response.clone()),
            _ => None,
        })
        .expect("a reply")
}

fn verdict(actions: &[Action]) -> Verdict {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Validate { verdict, .. } => Some(*verdict),
            _ => None,
        })
        .expect("a verdict")
}

fn gossip(e: &mut Engine, now: u64, topic: Topic, data: Vec<u8>) -> Vec<Action> {
    e.handle(now, Input::Gossip { msg: 1, topic, data })
}

/// The requester publishes its announcement; a worker hears it and bids; the bid reaches
/// the requester. Returns the announcement bytes and the worker's bid.
fn announce_and_bid(
    r: &mut Engine,
    w: &mut Engine,
    now: u64,
    actions: &[Action],
) -> (Vec<u8>, SignedEnvelope) {
    let (data, task, round) = announcement(actions);
    r.handle(now, Input::Published { task, round, ok: true });
    let wa = gossip(w, now, Topic::Tasks, data.clone());
    assert_eq!(verdict(&wa), Verdict::Accept);
    let bid = sends(&wa)
        .into_iter()
        .find_map(|(_, req, _)| match req {
            Outgoing::Request(TaskRequest::Bid { bid }) => Some(bid),
            _ => None,
        })
        .expect("the worker bids");
    (data, bid)
}

#[test]
fn finding_1_a_deadline_that_would_overflow_is_refused() {
    let mut r = engine(1);
    let request =
        SubmitRequest { input: vec![1; 4], deadline_ms: Some(u64::MAX), ..SubmitRequest::default() };
    let a = r.handle(u64::MAX - 5, Input::Submit { call: 9, request, nonce: 1 });
    let err = a.iter().find_map(|a| match a {
        Action::Submitted { result: Err(e), .. } => Some(e.to_string()),
        _ => None,
    });
    assert!(err.unwrap().contains("deadline_ms"));
    // Times near the end of u64 do not panic anywhere either.
    let (_, _) = submit(&mut r, u64::MAX - 5, &[1, 2, 3, 4]);
    r.handle(u64::MAX, Input::Tick);
}

#[test]
fn finding_2_awards_are_taken_only_for_our_bids_and_deadlines_are_clamped() {
    let (mut r, mut w) = (engine(1), engine(2));
    let (id, actions) = submit(&mut r, T0, &[5; 16]);
    let (_, bid) = announce_and_bid(&mut r, &mut w, T0, &actions);
    let spec = r.requester.get(&id).unwrap().spec_env.clone();
    let winner = w.public();
    let award = |round: u32, deadline: u64, who: &Identity| {
        Award {
            v: WIRE_VERSION,
            task_id: id,
            round,
            bid_root: None,
            bid_count: 1,
            winners: vec![winner],
            result_deadline_ms: deadline,
            select_ppm: None,
            invited: vec![],
            offer: false,
        }
        .sign(who)
    };
    let req = |award: SignedEnvelope| TaskRequest::Award { spec: spec.clone(), award, input: vec![5; 16] };
    // A round this worker never bid on.
    let a = w.handle(
        T0 + 10,
        Input::Request { reply: 1, from: r.public(), request: req(award(3, u64::MAX, &identity(1))) },
    );
    assert_eq!(reply(&a), TaskResponse::Refused(Refusal::NotAWinner));
    assert!(!a.iter().any(|x| matches!(x, Action::Persist(_))), "nothing stored for a refused award");
    // The round it bid on, with a far deadline: taken, deadline clamped.
    let a = w.handle(
        T0 + 10,
        Input::Request { reply: 2, from: r.public(), request: req(award(0, u64::MAX, &identity(1))) },
    );
    assert_eq!(reply(&a), TaskResponse::Ack);
    let job = w.worker.get(&id).unwrap();
    let spec_v = TaskSpec::open(&spec).unwrap();
    assert!(job.result_deadline_ms <= T0 + 10 + u64::from(spec_v.exec_timeout_ms) + worker::AWARD_SLACK_MS);
    assert!(bid.signer == w.public());
    // Once the result is durable the input is deleted.
    let done = w.handle(
        T0 + 50,
        Input::Executed {
            task: id,
            result: Ok(ExecOutput { output: vec![1], run_time_us: 1, runtime: Default::default() }),
        },
    );
    let deleted = done.iter().any(|a| match a {
        Action::Persist(ops) => ops.iter().any(|o| o.table == Table::JobInputs && o.value.is_none()),
        _ => false,
    });
    assert!(deleted, "the input is deleted with the result's write");
}

#[test]
fn finding_2_one_requester_cannot_fill_a_worker() {
    let (mut r, mut w) = (engine(1), engine(2));
    let cap = w.config().max_jobs_per_requester as usize;
    let mut bids = 0;
    for n in 0..(cap + 5) {
        let (_, actions) = submit(&mut r, T0 + n as u64, &(n as u64).to_le_bytes());
        let (data, task, round) = announcement(&actions);
        r.handle(T0, Input::Published { task, round, ok: true });
        let wa = gossip(&mut w, T0 + n as u64, Topic::Tasks, data);
        bids += sends(&wa).len();
        // Accept each award at once, so the jobs pile up unfinished.
        for (_, req, _) in sends(&wa) {
            if let Outgoing::Request(TaskRequest::Bid { bid }) = req {
                let b = r.handle(
                    T0 + n as u64,
                    Input::Request { reply: 1, from: w.public(), request: TaskRequest::Bid { bid } },
                );
                for (to, out, _) in sends(&b) {
                    if let Outgoing::Award { spec, award, .. } = out {
                        assert_eq!(to, w.public());
                        let input = (n as u64).to_le_bytes().to_vec();
                        w.handle(
                            T0,
                            Input::Request {
                                reply: 2,
                                from: r.public(),
                                request: TaskRequest::Award { spec, award, input },
                            },
                        );
                    }
                }
            }
        }
    }
    assert_eq!(bids, cap, "the worker stops bidding once one requester holds {cap} jobs");
    w.check_bounds().unwrap();
}

#[test]
fn finding_3_a_result_from_a_peer_never_awarded_touches_nothing() {
    let mut r = engine(1);
    let (id, _) = submit(&mut r, T0, &[1; 8]);
    let stranger = identity(66);
    let header = fleetmesh_protocol::ResultHeader {
        v: WIRE_VERSION,
        task_id: id,
        input_digest: InputDigest::of(&[1; 8]),
        model: model(),
        output_digest: fleetmesh_crypto::OutputDigest::of(b"x"),
        output_size: 1,
        run_time_us: 1,
        runtime: Default::default(),
        energy_mj: None,
    }
    .sign(&stranger);
    for _ in 0..50 {
        let a = r.handle(
            T0 + 1,
            Input::Request {
                reply: 1,
                from: stranger.public(),
                request: TaskRequest::Result { task_id: id, header: header.clone(), output: b"x".to_vec() },
            },
        );
        assert_eq!(reply(&a), TaskResponse::Rejected(RejectReason::NotAwarded));
        assert!(!a.iter().any(|x| matches!(x, Action::Persist(_) | Action::Trace(_))));
    }
    assert!(r.requester.get(&id).unwrap().rejections.is_empty());
}

#[test]
fn finding_4_announcements_must_come_from_the_spec_signer_and_replays_are_not_relayed() {
    let (mut r, mut w) = (engine(1), engine(2));
    let (id, actions) = submit(&mut r, T0, &[3; 8]);
    let (data, ..) = announcement(&actions);
    let (env, a) = Announcement::open_bytes(&data, 1 << 16).unwrap();
    assert_eq!(env.signer, r.public());
    // A stranger re-announces the task, spec attached, for a future round.
    let stranger = identity(77);
    let forged = Announcement { round: 5, ..a.clone() }.sign(&stranger);
    let v = gossip(&mut w, T0, Topic::Tasks, fleetmesh_protocol::encode(&forged));
    assert_eq!(verdict(&v), Verdict::Reject);
    assert!(sends(&v).is_empty(), "no bid on a forged round");
    // The real one is taken once; the same (task, round) again is ignored, not relayed.
    assert_eq!(verdict(&gossip(&mut w, T0, Topic::Tasks, data.clone())), Verdict::Accept);
    assert_eq!(verdict(&gossip(&mut w, T0 + 1, Topic::Tasks, data.clone())), Verdict::Ignore);
    // Replayed after its bids closed: ignored.
    let mut w2 = engine(3);
    let late = a.bid_deadline_ms + 1;
    assert_eq!(verdict(&gossip(&mut w2, late, Topic::Tasks, data)), Verdict::Ignore);
    // Announcements without a spec start DHT lookups, but only so many at once.
    let mut lookups = 0;
    for n in 0..500u64 {
        let a = Announcement {
            v: WIRE_VERSION,
            task_id: TaskId::of(&n.to_le_bytes()),
            model: model(),
            round: 0,
            bid_deadline_ms: T0 + 60_000,
            max_price: 100,
            spec: None,
            select_ppm: None,
            invited: Vec::new(),
        }
        .sign(&stranger);
        let v = gossip(&mut w2, T0, Topic::Tasks, fleetmesh_protocol::encode(&a));
        lookups += v.iter().filter(|a| matches!(a, Action::GetRecord { .. })).count();
    }
    assert_eq!(lookups, worker::MAX_SPEC_LOOKUPS);
    w2.check_bounds().unwrap();
    let _ = id;
}

#[test]
fn finding_6_an_award_decided_on_256_bids_stays_within_its_limit() {
    // Every bid comes in before the window closes.
    let mut r = engine_with(1, |c| c.tasks.early_close = false);
    let (id, actions) = submit(&mut r, T0, &[9; 32]);
    let (data, task, round) = announcement(&actions);
    r.handle(T0, Input::Published { task, round, ok: true });
    let mut workers: Vec<Engine> =
        (0..requester::MAX_BIDS_PER_ROUND as u64).map(|i| engine(1000 + i)).collect();
    let mut award = None;
    for w in &mut workers {
        let wa = gossip(w, T0 + 1, Topic::Tasks, data.clone());
        for (_, req, _) in sends(&wa) {
            let Outgoing::Request(TaskRequest::Bid { bid }) = req else { continue };
            let a = r.handle(
                T0 + 2,
                Input::Request { reply: 1, from: w.public(), request: TaskRequest::Bid { bid } },
            );
            assert_eq!(reply(&a), TaskResponse::Ack);
        }
    }
    // The window closes: the award goes out, committing to all 256 bids.
    let a = r.handle(T0 + 60_000, Input::Tick);
    for (to, out, _) in sends(&a) {
        if let Outgoing::Award { spec, award: env, .. } = out {
            let decoded = Award::open(&env).expect("the award opens under its size limit");
            assert_eq!(decoded.bid_count, 256);
            assert!(env.payload.len() < fleetmesh_protocol::limits::MAX_SPEC_BYTES / 4);
            award = Some((to, spec, env));
        }
    }
    let (to, spec, env) = award.expect("an award");
    let w = workers.iter_mut().find(|w| w.public() == to).unwrap();
    let a = w.handle(
        T0 + 60_001,
        Input::Request {
            reply: 3,
            from: r.public(),
            request: TaskRequest::Award { spec, award: env, input: vec![9; 32] },
        },
    );
    assert_eq!(reply(&a), TaskResponse::Ack, "the winner accepts it");
    let _ = id;
}

#[test]
fn finding_11_a_requester_without_peers_burns_no_rounds() {
    let mut r = engine(1);
    let (id, first) = submit(&mut r, T0, &[4; 8]);
    // Nobody hears the announcement for 30 s (the node just restarted, no mesh yet).
    let mut t = T0;
    let mut tries = 0;
    let mut actions = first;
    while t < T0 + 30_000 {
        for a in published(&actions) {
            if let Some((task, round)) = a.2 {
                tries += 1;
                r.handle(t, Input::Published { task, round, ok: false });
            }
        }
        t += 50;
        actions = r.handle(t, Input::Tick);
    }
    assert!(tries <= 30_000 / ANNOUNCE_RETRY_MS as usize + 1, "{tries} announcements: retries back off");
    let task = r.requester.get(&id).unwrap();
    assert_eq!(task.phase, fleetmesh_api::Phase::Bidding, "{:?}", task.failure);
    assert_eq!(task.empty_rounds, 0);
    // Now a peer hears it and bids: the task runs.
    let mut w = engine(2);
    let mut tick = actions;
    while !published(&tick).iter().any(|p| p.2.is_some()) {
        assert!(t < T0 + 40_000, "the requester stopped announcing");
        t += 50;
        tick = r.handle(t, Input::Tick);
    }
    let (_, bid) = announce_and_bid(&mut r, &mut w, t, &tick);
    r.handle(t + 10, Input::Request { reply: 1, from: w.public(), request: TaskRequest::Bid { bid } });
    r.handle(t + 10_000, Input::Tick);
    assert_eq!(r.requester.get(&id).unwrap().phase, fleetmesh_api::Phase::Running);
}

#[test]
fn finding_17_presence_adverts_are_bounded_checked_and_expire() {
    let mut e = engine(1);
    let advert = |at_ms: u64| Presence {
        v: WIRE_VERSION,
        models: vec![],
        free_slots: 1,
        depart_ms: None,
        price_floor: 0,
        at_ms,
        offer_until_ms: None,
        max_batch: 0,
        operator_cert: None,
    };
    let other = identity(5);
    // From the future, or with a signature that is not the named signer's: refused. (Gossip
    // is anonymous: the envelope's signature is the only word on whose advert it is.)
    let future = advert(T0 + 10 * MAX_CLOCK_SKEW_MS).sign(&other);
    assert_eq!(
        verdict(&gossip(&mut e, T0, Topic::Presence, fleetmesh_protocol::encode(&future))),
        Verdict::Reject
    );
    let mut claimed = advert(T0).sign(&identity(6));
    claimed.signer = other.public();
    assert_eq!(
        verdict(&gossip(&mut e, T0, Topic::Presence, fleetmesh_protocol::encode(&claimed))),
        Verdict::Reject
    );
    let fine = fleetmesh_protocol::encode(&advert(T0).sign(&other));
    // From a key that never connected: kept out, so fresh keys cannot push real adverts out.
    assert_eq!(verdict(&gossip(&mut e, T0, Topic::Presence, fine.clone())), Verdict::Ignore);
    assert!(e.presence().is_empty());
    e.handle(T0, Input::Connected(other.public()));
    assert_eq!(verdict(&gossip(&mut e, T0, Topic::Presence, fine)), Verdict::Accept);
    // Many connected signers: the table keeps at most its bound.
    for i in 0..(MAX_PRESENCE_PEERS as u64 + 50) {
        let id = identity(10_000 + i);
        e.handle(T0, Input::Connected(id.public()));
        let data = fleetmesh_protocol::encode(&advert(T0).sign(&id));
        gossip(&mut e, T0, Topic::Presence, data);
    }
    assert_eq!(e.presence().len(), MAX_PRESENCE_PEERS);
    // Nobody re-advertises: after the time to live, the table empties.
    e.handle(T0 + 10 * 60_000, Input::Tick);
    assert!(e.presence().is_empty());
}

#[test]
fn review_a_forged_specless_announcement_does_not_shadow_the_requesters_own() {
    let (mut r, mut w) = (engine(1), engine(2));
    let (id, actions) = submit(&mut r, T0, &[6; 8]);
    let (data, ..) = announcement(&actions);
    let (_, a) = Announcement::open_bytes(&data, 1 << 16).unwrap();
    // A stranger claims round 0 first, without a spec.
    let stranger = identity(88);
    let forged = Announcement { spec: None, ..a.clone() }.sign(&stranger);
    let v = gossip(&mut w, T0, Topic::Tasks, fleetmesh_protocol::encode(&forged));
    assert_eq!(verdict(&v), Verdict::Ignore, "a spec-less claim is not relayed");
    let lookup = v.iter().find_map(|a| match a {
        Action::GetRecord { lookup, .. } => Some(*lookup),
        _ => None,
    });
    // The requester's own announcement of that round still gets a bid.
    let (_, bid) = announce_and_bid(&mut r, &mut w, T0 + 1, &actions);
    assert_eq!(bid.signer, w.public());
    // And the stranger's lookup, answered with the real spec, bids on nothing more.
    let spec = fleetmesh_protocol::encode(&r.requester.get(&id).unwrap().spec_env);
    let more = w.handle(T0 + 2, Input::Record { lookup: lookup.unwrap(), value: Some(spec) });
    assert!(sends(&more).is_empty(), "the spec is the requester's, not the announcer's");
}

#[test]
fn review_bids_that_cannot_rank_are_refused_and_do_not_close_the_round() {
    let mut r = engine(1);
    let (id, actions) = submit(&mut r, T0, &[7; 8]);
    let (_, task, round) = announcement(&actions);
    r.handle(T0, Input::Published { task, round, ok: true });
    for (i, (price, promised)) in [(u64::MAX, 1), (1, u32::MAX)].into_iter().enumerate() {
        let liar = identity(300 + i as u64);
        let bid = fleetmesh_protocol::Bid {
            v: WIRE_VERSION,
            task_id: id,
            round: 0,
            price,
            promised_ms: promised,
            queue_depth: 0,
            free_slots: 1,
            depart_ms: None,
        }
        .sign(&liar);
        let a = r.handle(
            T0 + 1,
            Input::Request { reply: 1, from: liar.public(), request: TaskRequest::Bid { bid } },
        );
        assert!(matches!(reply(&a), TaskResponse::Refused(Refusal::BidDeclined(_))), "{:?}", reply(&a));
    }
    let t = r.requester.get(&id).unwrap();
    assert_eq!(t.phase, fleetmesh_api::Phase::Bidding);
    assert!(t.bids.is_empty() && t.empty_rounds == 0);
}

#[test]
fn review_a_worker_remembers_only_so_many_bids_per_requester_and_forgets_them_in_time() {
    let (mut r, mut w) = (engine_with(1, |c| c.tasks.early_close = false), engine(2));
    let mut bids = 0;
    let n = worker::MAX_BIDS_PER_REQUESTER as usize + 6;
    for i in 0..n {
        let (_, actions) = submit(&mut r, T0 + i as u64, &(i as u64).to_le_bytes());
        let (data, ..) = announcement(&actions);
        bids += sends(&gossip(&mut w, T0 + i as u64, Topic::Tasks, data)).len();
    }
    assert_eq!(bids, worker::MAX_BIDS_PER_REQUESTER as usize);
    w.check_bounds().unwrap();
    // Once those rounds have closed they no longer count: a busy requester keeps getting
    // bids (the cap is on rounds open at once, not on a requester's history).
    let soon = T0 + 5_000;
    let (_, actions) = submit(&mut r, soon, b"soon");
    let (data, ..) = announcement(&actions);
    assert_eq!(sends(&gossip(&mut w, soon, Topic::Tasks, data)).len(), 1);
    // Past the bid memory, the worker bids for that requester again.
    let later = T0 + worker::BID_MEMORY_MS + 60_000;
    w.handle(later, Input::Tick);
    let (_, actions) = submit(&mut r, later, b"late");
    let (data, ..) = announcement(&actions);
    assert_eq!(sends(&gossip(&mut w, later, Topic::Tasks, data)).len(), 1);
}

/// Second review: announcements with long bid windows from many fresh keys (64 open rounds
/// each) filled the worker's bid memory, and a full memory stopped every bid, real ones
/// included. Now a full memory makes room at the expense of the requester with the most
/// open rounds: the flood evicts its own rounds.
#[test]
fn review2_an_announcement_flood_from_many_keys_does_not_stop_real_bids() {
    let mut w = engine(2);
    let per_key = worker::MAX_BIDS_PER_REQUESTER as usize;
    let keys = worker::MAX_REMEMBERED_BIDS / per_key;
    let mut flood_bids = 0;
    for k in 0..keys {
        let mut attacker = engine_with(1000 + k as u64, |c| {
            c.tasks.early_close = false;
            c.tasks.bid_window_ms = 60_000;
            c.tasks.deadline_ms = 600_000;
        });
        for i in 0..per_key {
            let (_, actions) = submit(&mut attacker, T0, &((k * per_key + i) as u64).to_le_bytes());
            let (data, ..) = announcement(&actions);
            flood_bids += sends(&gossip(&mut w, T0, Topic::Tasks, data)).len();
        }
    }
    assert_eq!(flood_bids, keys * per_key, "the flood filled the bid memory");
    w.check_bounds().unwrap();
    // A real requester's tasks still get bids, one after another.
    let mut r = engine(1);
    for i in 0..5u64 {
        let (_, actions) = submit(&mut r, T0 + 10 + i, &i.to_le_bytes());
        let (data, ..) = announcement(&actions);
        let bids = sends(&gossip(&mut w, T0 + 10 + i, Topic::Tasks, data)).len();
        assert_eq!(bids, 1, "real task {i} got no bid while the memory was full");
    }
    // A real bid survives a further flood of fresh keys (each evicts the flood's own oldest
    // entry, first in, first out), so its award is taken.
    let mut r2 = engine(7);
    let (_, actions) = submit(&mut r2, T0 + 15, b"real");
    let (_, bid) = announce_and_bid(&mut r2, &mut w, T0 + 15, &actions);
    for k in 0..200u64 {
        let mut attacker = engine_with(90_000 + k, |c| {
            c.tasks.early_close = false;
            c.tasks.bid_window_ms = 60_000;
            c.tasks.deadline_ms = 600_000;
        });
        let (_, actions) = submit(&mut attacker, T0 + 16, &k.to_le_bytes());
        let (data, ..) = announcement(&actions);
        gossip(&mut w, T0 + 16, Topic::Tasks, data);
    }
    let mut b =
        r2.handle(T0 + 17, Input::Request { reply: 1, from: w.public(), request: TaskRequest::Bid { bid } });
    if !sends(&b).iter().any(|(_, o, _)| matches!(o, Outgoing::Award { .. })) {
        b = r2.handle(T0 + 60_000, Input::Tick);
    }
    let (_, out, _) = sends(&b).into_iter().find(|(_, o, _)| matches!(o, Outgoing::Award { .. })).unwrap();
    let Outgoing::Award { spec, award, .. } = out else { unreachable!() };
    let input = b"real".to_vec();
    let a = w.handle(
        T0 + 18,
        Input::Request { reply: 2, from: r2.public(), request: TaskRequest::Award { spec, award, input } },
    );
    assert_eq!(reply(&a), TaskResponse::Ack, "the real bid was not evicted by the flood");
    // And one key of the flood gets nothing more while others hold less than it would.
    let mut a = engine_with(1000, |c| c.tasks.bid_window_ms = 60_000);
    let (_, actions) = submit(&mut a, T0 + 20, b"more");
    let (data, ..) = announcement(&actions);
    assert_eq!(sends(&gossip(&mut w, T0 + 20, Topic::Tasks, data)).len(), 0);
    w.check_bounds().unwrap();
}

/// Runs one task of `r` on `w` up to the worker's result: announce, bid, award, execute.
/// The result is sent and never answered. Returns the task id.
fn run_unanswered(r: &mut Engine, w: &mut Engine, now: u64, input: &[u8]) -> TaskId {
    let id = awarded(r, w, now, input);
    let output = ExecOutput { output: vec![1], run_time_us: 1, runtime: Default::default() };
    w.handle(now + 1, Input::Executed { task: id, result: Ok(output) });
    id
}

/// `r` submits `input`, `w` bids, wins and accepts the award. Returns the task id.
fn awarded(r: &mut Engine, w: &mut Engine, now: u64, input: &[u8]) -> TaskId {
    let (id, actions) = submit(r, now, input);
    let (_, bid) = announce_and_bid(r, w, now, &actions);
    let b = r.handle(now, Input::Request { reply: 1, from: w.public(), request: TaskRequest::Bid { bid } });
    let mut b = b;
    if !sends(&b).iter().any(|(_, o, _)| matches!(o, Outgoing::Award { .. })) {
        // The round closes at its deadline.
        b = r.handle(now + 60_000, Input::Tick);
    }
    let (_, out, _) = sends(&b).into_iter().find(|(_, o, _)| matches!(o, Outgoing::Award { .. })).unwrap();
    let Outgoing::Award { spec, award, .. } = out else { unreachable!() };
    let a = w.handle(
        now,
        Input::Request {
            reply: 2,
            from: r.public(),
            request: TaskRequest::Award { spec, award, input: input.to_vec() },
        },
    );
    assert_eq!(reply(&a), TaskResponse::Ack);
    id
}

/// Second review: results whose requester never answers (or answers `Pending` until a far
/// deadline) counted against the worker's capacity, so a few keys could stop it taking any
/// work for an hour. Now they hold no slot; only their own requester's share is capped.
#[test]
fn review2_results_nobody_collects_do_not_stop_a_worker_taking_work() {
    let mut w = engine_with(2, |c| {
        c.max_queue = 2;
        c.slots = 1;
        c.max_jobs_per_requester = 2;
    });
    for k in 0..4u64 {
        let mut a = engine_with(100 + k, |c| {
            c.tasks.exec_timeout_ms = 3_000_000;
            c.tasks.deadline_ms = 3_500_000;
        });
        for i in 0..2u64 {
            run_unanswered(&mut a, &mut w, T0 + k * 10 + i, &(k * 10 + i).to_le_bytes());
        }
    }
    w.check_bounds().unwrap();
    let mut r = engine(1);
    let now = T0 + 1_000;
    let (_, actions) = submit(&mut r, now, b"honest");
    let (data, ..) = announcement(&actions);
    assert_eq!(sends(&gossip(&mut w, now, Topic::Tasks, data)).len(), 1, "the worker still bids");
}

/// With [`worker::MAX_DELIVERING`] results uncollected, a new result gives up the delivery
/// that has waited longest, rather than the worker refusing work (or an attacker choosing
/// whose results go: a busy honest requester's results are young).
#[test]
fn review2_a_full_delivery_backlog_gives_up_the_delivery_waiting_longest() {
    let mut w = engine_with(2, |c| c.max_queue = 64);
    let per = w.config().max_jobs_per_requester as usize;
    let mut ids = Vec::new();
    let mut n = 0u64;
    for k in 0..(worker::MAX_DELIVERING / per) as u64 {
        let mut a = engine(100 + k);
        for _ in 0..per {
            ids.push(run_unanswered(&mut a, &mut w, T0 + n, &n.to_le_bytes()));
            n += 1;
        }
    }
    w.check_bounds().unwrap();
    let mut r = engine(1);
    let honest = run_unanswered(&mut r, &mut w, T0 + n, b"honest");
    w.check_bounds().unwrap();
    let given_up: Vec<TaskId> = ids
        .iter()
        .copied()
        .filter(|id| {
            matches!(&w.worker.get(id).unwrap().state, worker::JobState::Abandoned(why) if why.contains("delivery"))
        })
        .collect();
    assert_eq!(given_up, vec![ids[0]], "exactly the delivery waiting longest is given up");
    assert!(matches!(w.worker.get(&honest).unwrap().state, worker::JobState::Done { .. }));
}

/// Second review: one award naming a hundred workers tied every bidder up. A requester
/// awards at most its task's redundancy at once.
#[test]
fn review2_an_award_naming_more_winners_than_the_redundancy_is_refused() {
    let (mut r, mut w) = (engine(1), engine(2));
    let (id, actions) = submit(&mut r, T0, &[5; 16]);
    announce_and_bid(&mut r, &mut w, T0, &actions);
    let spec = r.requester.get(&id).unwrap().spec_env.clone();
    let k = TaskSpec::open(&spec).unwrap().redundancy;
    let mut winners: Vec<PublicKey> = (10..10 + u64::from(k)).map(|i| identity(i).public()).collect();
    winners.push(w.public());
    let award = Award {
        v: WIRE_VERSION,
        task_id: id,
        round: 0,
        bid_root: None,
        bid_count: 1,
        winners,
        result_deadline_ms: T0 + 5_000,
        select_ppm: None,
        invited: vec![],
        offer: false,
    }
    .sign(&identity(1));
    let request = TaskRequest::Award { spec, award, input: vec![5; 16] };
    let a = w.handle(T0 + 10, Input::Request { reply: 1, from: r.public(), request });
    assert!(matches!(reply(&a), TaskResponse::Refused(Refusal::Invalid(_))), "{:?}", reply(&a));
    assert!(w.worker.get(&id).is_none());
}

/// Second review: after a failed write the engine's memory was ahead of the disk for good (a
/// restart went back to the older state). Now the task is written again every second until
/// a write succeeds, and it stays in memory meanwhile.
#[test]
fn review2_a_task_whose_write_failed_is_written_again() {
    let mut r = engine_with(1, |c| c.max_finished_in_memory = 0);
    let (id, _) = submit(&mut r, T0, &[5; 16]);
    let persisted = |a: &[Action]| {
        a.iter().any(|x| match x {
            Action::Persist(ops) => ops.iter().any(|o| o.table == Table::Requests && o.key == id),
            _ => false,
        })
    };
    r.handle(T0 + 1, Input::PersistFailed { keys: vec![(Table::Requests, id, true)] });
    let a = r.handle(T0 + 2_000, Input::Tick);
    assert!(persisted(&a), "the task is written again");
    // That write succeeded (no new failure): nothing more to write.
    let a = r.handle(T0 + 4_000, Input::Tick);
    assert!(!persisted(&a));
    // A submit whose first write failed was refused: the task is gone, not retried.
    let (id2, _) = submit(&mut r, T0 + 5_000, &[6; 16]);
    r.handle(
        T0 + 5_001,
        Input::PersistFailed { keys: vec![(Table::Requests, id2, true), (Table::RequestInputs, id2, true)] },
    );
    assert!(r.requester.get(&id2).is_none());
    let a = r.handle(T0 + 7_000, Input::Tick);
    assert!(!a.iter().any(|x| matches!(x, Action::Persist(ops) if ops.iter().any(|o| o.key == id2))));
}

/// Second review: a winning worker could return 1 MiB of junk for every task and fill the
/// requester's memory. A requester holding the model knows its output size and refuses
/// larger outputs.
#[test]
fn review2_an_output_larger_than_the_models_is_refused() {
    for (limit, accepted) in [(0u64, false), (1, true)] {
        let mut r = engine_with(1, |c| {
            c.model_outputs.insert(model(), limit);
        });
        let mut w = engine(2);
        let id = run_unanswered(&mut r, &mut w, T0, &[3; 16]);
        // The worker's result (a one-byte output), as the run produced it.
        let job = w.worker.get(&id).unwrap();
        let worker::JobState::Done { header, output } = job.state.clone() else { panic!("{:?}", job.state) };
        let a = r.handle(
            T0 + 3,
            Input::Request {
                reply: 9,
                from: w.public(),
                request: TaskRequest::Result { task_id: id, header, output },
            },
        );
        match reply(&a) {
            TaskResponse::Rejected(RejectReason::OutputTooLarge) => assert!(!accepted, "limit {limit}"),
            TaskResponse::Receipt(_) => assert!(accepted, "limit {limit}"),
            other => panic!("{other:?}"),
        }
    }
}

/// Market v2, selection: a round admits only workers whose ticket is below its threshold;
/// the others do not bid, and a bid from one of them is refused `NotSelected`.
#[test]
fn market_v2_only_workers_the_round_selects_bid() {
    let mut r = engine(1);
    // A thousand connected peers: the first round is sized for 2k + 2 of them.
    for i in 0..1000 {
        r.handle(T0, Input::Connected(identity(50_000 + i).public()));
    }
    let (id, actions) = submit(&mut r, T0, &[9; 16]);
    let (data, task, round) = announcement(&actions);
    r.handle(T0, Input::Published { task, round, ok: true });
    let ppm = Announcement::open_bytes(&data, usize::MAX).unwrap().1.select_ppm.unwrap();
    assert_eq!(ppm, fleetmesh_protocol::selection::threshold(4, 1000));
    let pick = |want: bool| {
        (100..10_000u64)
            .find(|i| fleetmesh_protocol::selection::eligible(&id, 0, &identity(*i).public(), ppm) == want)
            .unwrap()
    };
    let (yes, no) = (pick(true), pick(false));
    let mut w_yes = engine(yes);
    let mut w_no = engine(no);
    assert_eq!(sends(&gossip(&mut w_no, T0 + 1, Topic::Tasks, data.clone())).len(), 0);
    let sent = sends(&gossip(&mut w_yes, T0 + 1, Topic::Tasks, data));
    assert_eq!(sent.len(), 1, "the selected worker bids");
    // A bid from a worker the round did not select is refused.
    let bid = round0_bid(id, &identity(no));
    let a = r.handle(
        T0 + 2,
        Input::Request { reply: 1, from: identity(no).public(), request: TaskRequest::Bid { bid } },
    );
    assert_eq!(
        reply(&a),
        TaskResponse::Refused(Refusal::BidDeclined(fleetmesh_protocol::DeclineReason::NotSelected))
    );
}

/// A worker given up on when its connection dropped (it restarted) that comes back with a
/// valid result while the task is still open is counted, not refused: otherwise a task whose
/// only capable worker restarted failed after six empty rounds.
#[test]
fn a_worker_given_up_on_that_returns_with_a_result_is_counted() {
    let (mut r, mut w) = (engine(1), engine(2));
    let id = run_unanswered(&mut r, &mut w, T0, &[4; 16]);
    r.handle(T0 + 5, Input::Disconnected(w.public()));
    let t = r.requester.get(&id).unwrap();
    assert!(t.assignments.iter().any(|a| matches!(a.status, requester::AssignStatus::Failed(_))));
    let worker::JobState::Done { header, output } = w.worker.get(&id).unwrap().state.clone() else {
        panic!()
    };
    let a = r.handle(
        T0 + 6,
        Input::Request {
            reply: 3,
            from: w.public(),
            request: TaskRequest::Result { task_id: id, header, output },
        },
    );
    assert!(matches!(reply(&a), TaskResponse::Receipt(_)), "{:?}", reply(&a));
    assert_eq!(r.requester.get(&id).unwrap().phase, fleetmesh_api::Phase::Verified);
}

/// A valid round-0 bid for `task` signed by `who`.
fn round0_bid(task: TaskId, who: &Identity) -> SignedEnvelope {
    fleetmesh_protocol::Bid {
        v: WIRE_VERSION,
        task_id: task,
        round: 0,
        price: 1,
        promised_ms: 10,
        queue_depth: 0,
        free_slots: 1,
        depart_ms: None,
    }
    .sign(who)
}

fn connected_requester(i: u64, peers: u64) -> Engine {
    let mut r = engine(i);
    for p in 0..peers {
        r.handle(T0, Input::Connected(identity(50_000 + p).public()));
    }
    r
}

fn announced_ppm(r: &mut Engine, now: u64, input: &[u8]) -> (TaskId, u32) {
    let (id, actions) = submit(r, now, input);
    let (data, task, round) = announcement(&actions);
    r.handle(now, Input::Published { task, round, ok: true });
    (id, Announcement::open_bytes(&data, usize::MAX).unwrap().1.select_ppm.unwrap())
}

/// Selection review: one peer repeating its bid inflated the holder estimate (each copy
/// counted as 10^6 / threshold holders), so later rounds admitted almost nobody. A bidder
/// counts once per round.
#[test]
fn market_v2_a_repeated_bid_counts_once_in_the_holder_estimate() {
    use fleetmesh_protocol::selection;
    let mut r = connected_requester(1, 1000);
    let (id, ppm) = announced_ppm(&mut r, T0, &[1; 16]);
    assert_eq!(ppm, selection::threshold(4, 1000));
    let yes = (100..10_000u64).find(|i| selection::eligible(&id, 0, &identity(*i).public(), ppm)).unwrap();
    let bid = round0_bid(id, &identity(yes));
    for n in 0..100 {
        let request = TaskRequest::Bid { bid: bid.clone() };
        r.handle(T0 + 1, Input::Request { reply: n, from: identity(yes).public(), request });
    }
    // The round closes and awards it; the worker vanishes; the next round learns from this one.
    r.handle(T0 + 60_000, Input::Tick);
    r.handle(T0 + 60_001, Input::Disconnected(identity(yes).public()));
    let (_, next) = announced_ppm(&mut r, T0 + 60_002, &[2; 16]);
    let holders = 1_000_000 / ppm;
    assert_eq!(next, selection::threshold(4, holders), "one bidder under {ppm} ppm stands for {holders}");
}

/// A signed round-0 report from `who` that task `id`'s 16-byte input does not fit a 32-byte
/// model input.
fn input_size_report(id: TaskId, who: &Identity) -> SignedEnvelope {
    fleetmesh_protocol::Unable {
        v: WIRE_VERSION,
        task_id: id,
        round: 0,
        reason: fleetmesh_protocol::UnableReason::InputSize { expected: 32, got: 16 },
    }
    .sign(who)
}

/// Selection review: in a round that admits only part of the holders, no bid is expected
/// now and then, so a stranger's "input size" report there must not fail the task.
#[test]
fn market_v2_a_report_in_a_narrow_round_does_not_fail_the_task() {
    let mut r = connected_requester(1, 1000);
    let (id, ppm) = announced_ppm(&mut r, T0, &[1; 16]);
    assert!(ppm < fleetmesh_protocol::selection::ALL);
    let liar = identity(9);
    let report = input_size_report(id, &liar);
    r.handle(
        T0 + 2,
        Input::Request { reply: 1, from: liar.public(), request: TaskRequest::Unable { report } },
    );
    r.handle(T0 + 60_000, Input::Tick);
    let t = r.requester.get(&id).unwrap();
    assert_ne!(t.phase, fleetmesh_api::Phase::Failed, "{:?}", t.failure);
    assert!(t.select_ppm.unwrap() > ppm, "the next round is wider");
}

/// Finding 12: a worker that knows the model's input size tells the requester, signed, that
/// the input does not fit, instead of bidding; the requester fails the task at once with that
/// reason (not after six empty rounds with "does any node hold model ...?").
#[test]
fn finding_12_a_wrong_size_input_fails_at_once_with_the_true_reason() {
    // The requester does not hold the model, so it cannot check the size at submit.
    let mut r = engine_with(1, |c| c.default_model = Some(model()));
    let mut w = engine_with(2, |c| {
        c.model_inputs.insert(model(), 16);
    });
    let (id, actions) = submit(&mut r, T0, &[1; 8]);
    let (data, task, round) = announcement(&actions);
    r.handle(T0, Input::Published { task, round, ok: true });
    let wa = gossip(&mut w, T0 + 1, Topic::Tasks, data);
    let sent = sends(&wa);
    assert_eq!(sent.len(), 1, "one report, no bid");
    let Outgoing::Request(TaskRequest::Unable { report }) = sent[0].1.clone() else {
        panic!("{:?}", sent[0])
    };
    let a = r.handle(
        T0 + 2,
        Input::Request { reply: 1, from: w.public(), request: TaskRequest::Unable { report } },
    );
    assert_eq!(reply(&a), TaskResponse::Ack);
    r.handle(T0 + 60_000, Input::Tick);
    let t = r.requester.get(&id).unwrap();
    assert_eq!(t.phase, fleetmesh_api::Phase::Failed);
    let why = t.failure.clone().unwrap();
    assert!(why.contains("the input has 8 bytes but the model takes 16"), "{why}");
    assert_eq!(t.round, 0, "failed in the first round, not after {} empty ones", t.round);
    // A requester that knows the model refuses such an input at submit.
    let mut knows = engine_with(3, |c| {
        c.model_inputs.insert(model(), 16);
    });
    let request = SubmitRequest { input: vec![1; 8], ..SubmitRequest::default() };
    let a = knows.handle(T0, Input::Submit { call: 1, request, nonce: 1 });
    let err = a.iter().find_map(|a| match a {
        Action::Submitted { result: Err(e), .. } => Some(e.to_string()),
        _ => None,
    });
    assert!(err.unwrap().contains("takes 16"));
    // Second review: such a report is a lie when the requester knows the model (submit
    // checked the size); it no longer fails the task.
    let mut r = engine_with(4, |c| {
        c.model_inputs.insert(model(), 16);
    });
    let (id, actions) = submit(&mut r, T0, &[1; 16]);
    let (_, task, round) = announcement(&actions);
    r.handle(T0, Input::Published { task, round, ok: true });
    let liar = identity(9);
    let report = input_size_report(id, &liar);
    let a = r.handle(
        T0 + 2,
        Input::Request { reply: 1, from: liar.public(), request: TaskRequest::Unable { report } },
    );
    assert_eq!(reply(&a), TaskResponse::Ack);
    r.handle(T0 + 60_000, Input::Tick);
    let t = r.requester.get(&id).unwrap();
    assert_ne!(t.phase, fleetmesh_api::Phase::Failed, "{:?}", t.failure);
}

/// Finding 13: a worker whose inference fails tells the requester at once, which replaces it
/// at once; after three failures in a row the worker stops bidding on the model until a
/// self-test passes.
#[test]
fn finding_13_a_failed_run_is_reported_at_once_and_repeated_failures_stop_bidding() {
    let (mut r, mut w) = (engine(1), engine(2));
    for n in 0..worker::MAX_MODEL_FAILURES {
        let t0 = T0 + u64::from(n) * 1000;
        let (id, actions) = submit(&mut r, t0, &n.to_le_bytes());
        let (_, bid) = announce_and_bid(&mut r, &mut w, t0, &actions);
        let b = r
            .handle(t0 + 1, Input::Request { reply: 1, from: w.public(), request: TaskRequest::Bid { bid } });
        let (spec, award) = sends(&b)
            .into_iter()
            .find_map(|(_, out, _)| match out {
                Outgoing::Award { spec, award, .. } => Some((spec, award)),
                _ => None,
            })
            .expect("awarded at once (early close)");
        let input = n.to_le_bytes().to_vec();
        let a = w.handle(
            t0 + 2,
            Input::Request { reply: 2, from: r.public(), request: TaskRequest::Award { spec, award, input } },
        );
        assert_eq!(reply(&a), TaskResponse::Ack);
        let done = w.handle(t0 + 3, Input::Executed { task: id, result: Err("illegal instruction".into()) });
        let report = sends(&done)
            .into_iter()
            .find_map(|(_, out, _)| match out {
                Outgoing::Request(TaskRequest::Unable { report }) => Some(report),
                _ => None,
            })
            .expect("the failure is reported");
        let self_test = done.iter().any(|a| matches!(a, Action::SelfTest { .. }));
        assert_eq!(self_test, n + 1 == worker::MAX_MODEL_FAILURES, "self-test after the third failure only");
        r.handle(
            t0 + 4,
            Input::Request { reply: 3, from: w.public(), request: TaskRequest::Unable { report } },
        );
        let t = r.requester.get(&id).unwrap();
        assert!(
            t.assignments.iter().any(|a| matches!(&a.status, requester::AssignStatus::Failed(why) if why.contains("illegal instruction"))),
            "the worker is marked failed at once: {:?}",
            t.assignments
        );
        assert_eq!(t.round, 1, "and a new round opened to replace it");
    }
    // Quarantined: no bid on the model now.
    assert!(w.worker.quarantined().contains(&model()));
    let (_, actions) = submit(&mut r, T0 + 10_000, b"after");
    let (data, ..) = announcement(&actions);
    assert!(sends(&gossip(&mut w, T0 + 10_000, Topic::Tasks, data.clone())).is_empty());
    // The self-test fails: it is tried again after a minute, then after two.
    let self_tests = |a: &[Action]| a.iter().filter(|x| matches!(x, Action::SelfTest { .. })).count();
    w.handle(T0 + 10_001, Input::SelfTested { model: model(), ok: false });
    assert_eq!(self_tests(&w.handle(T0 + 30_000, Input::Tick)), 0);
    let retry = T0 + 10_001 + worker::SELF_TEST_RETRY_MS;
    assert_eq!(self_tests(&w.handle(retry, Input::Tick)), 1, "tested again after a minute");
    assert_eq!(self_tests(&w.handle(retry + 50, Input::Tick)), 0, "once, until it answers");
    w.handle(retry + 100, Input::SelfTested { model: model(), ok: false });
    assert_eq!(self_tests(&w.handle(retry + 100 + worker::SELF_TEST_RETRY_MS, Input::Tick)), 0);
    let again = retry + 100 + 2 * worker::SELF_TEST_RETRY_MS;
    assert_eq!(self_tests(&w.handle(again, Input::Tick)), 1, "then after two minutes");
    // The self-test passes: bidding resumes.
    w.handle(again + 1, Input::SelfTested { model: model(), ok: true });
    let later = again + 2;
    let (_, actions) = submit(&mut r, later, b"after the test");
    let (data, ..) = announcement(&actions);
    assert_eq!(sends(&gossip(&mut w, later, Topic::Tasks, data)).len(), 1);
    assert_eq!(self_tests(&w.handle(later + 10 * worker::SELF_TEST_RETRY_MS, Input::Tick)), 0);
}

/// Finding 9 (disk): with the data disk nearly full the node takes no new work (no submit, no
/// bid, no award), and takes it again once there is room.
#[test]
fn finding_9_a_nearly_full_disk_takes_no_new_work() {
    let (mut r, mut w) = (engine(1), engine(2));
    let (_, actions) = submit(&mut r, T0, &[2; 8]);
    let (data, task, round) = announcement(&actions);
    r.handle(T0, Input::Published { task, round, ok: true });
    w.handle(T0, Input::DiskLow(true));
    assert!(sends(&gossip(&mut w, T0 + 1, Topic::Tasks, data.clone())).is_empty(), "no bid");
    r.handle(T0, Input::DiskLow(true));
    let request = SubmitRequest { input: vec![3; 8], ..SubmitRequest::default() };
    let a = r.handle(T0 + 2, Input::Submit { call: 9, request: request.clone(), nonce: 2 });
    let err = a.iter().find_map(|a| match a {
        Action::Submitted { result: Err(e), .. } => Some(e.to_string()),
        _ => None,
    });
    assert!(err.unwrap().contains("nearly full"));
    r.handle(T0, Input::DiskLow(false));
    let a = r.handle(T0 + 3, Input::Submit { call: 10, request, nonce: 3 });
    assert!(a.iter().any(|a| matches!(a, Action::Submitted { result: Ok(_), .. })));
    w.handle(T0, Input::DiskLow(false));
    let fresh = Announcement::open_bytes(&data, 1 << 16).unwrap().1;
    let again = Announcement { round: fresh.round + 1, ..fresh }.sign(&identity(1));
    let bids = sends(&gossip(&mut w, T0 + 4, Topic::Tasks, fleetmesh_protocol::encode(&again)));
    assert_eq!(bids.len(), 1, "bids again once there is room");
}

/// A requester that trusts workers 100 and 105 (three corroborated tasks each on record), is
/// connected to them and to unknown workers 101 to 104, takes k from `k` and spot checks at
/// `spot_ppm`.
/// Selection and early close are off so every bid enters and rounds close on the tick
/// (this is about ranking and verification).
fn trusting_requester(k: u8, spot_ppm: u32) -> Engine {
    let mut r = engine_with(1, |c| {
        c.tasks.redundancy = k;
        c.tasks.selection = false;
        c.tasks.early_close = false;
        c.trust.spot_check_ppm = spot_ppm;
    });
    let trusted = reputation::Standing { agreed: 3, disagreed: 0, alone: 0, last_ms: T0 };
    r.restore_reputation(vec![
        (reputation::store_key(&identity(100).public()), trusted.clone()),
        (reputation::store_key(&identity(105).public()), trusted),
    ]);
    for i in 100..106 {
        r.handle(T0, Input::Connected(identity(i).public()));
    }
    r
}

/// Submits and publishes a task; the workers in `bidders` bid in round `round`.
fn bid_round(r: &mut Engine, id: TaskId, now: u64, round: u32, bidders: &[u64]) {
    for (n, i) in bidders.iter().enumerate() {
        let bid = fleetmesh_protocol::Bid {
            v: WIRE_VERSION,
            task_id: id,
            round,
            price: 1,
            promised_ms: 10,
            queue_depth: 0,
            free_slots: 1,
            depart_ms: None,
        }
        .sign(&identity(*i));
        let a = r.handle(
            now,
            Input::Request {
                reply: n as u64,
                from: identity(*i).public(),
                request: TaskRequest::Bid { bid },
            },
        );
        assert_eq!(reply(&a), TaskResponse::Ack, "bid of {i}");
    }
}

/// The workers an action list awards.
fn awarded_to(actions: &[Action]) -> Vec<PublicKey> {
    sends(actions)
        .into_iter()
        .filter_map(|(to, req, _)| matches!(req, Outgoing::Award { .. }).then_some(to))
        .collect()
}

/// Worker `i`'s signed result of `output` for task `id`, as a request to the requester.
fn result_request(r: &Engine, id: TaskId, i: u64, output: &[u8]) -> Input {
    let spec = r.requester.get(&id).unwrap().spec.clone();
    let header = fleetmesh_protocol::ResultHeader {
        v: WIRE_VERSION,
        task_id: id,
        input_digest: spec.input_digest,
        model: spec.model,
        output_digest: fleetmesh_crypto::OutputDigest::of(output),
        output_size: output.len() as u64,
        run_time_us: 5,
        runtime: fleetmesh_protocol::RuntimeProfile::default(),
        energy_mj: None,
    }
    .sign(&identity(i));
    let request = TaskRequest::Result { task_id: id, header, output: output.to_vec() };
    Input::Request { reply: 77, from: identity(i).public(), request }
}

/// Worker `i` returns `output` for task `id`; the requester's answer.
fn return_result(r: &mut Engine, now: u64, id: TaskId, i: u64, output: &[u8]) -> TaskResponse {
    let input = result_request(r, id, i, output);
    let a = r.handle(now, input);
    // A new round it starts is heard at once.
    published_now(r, now, &a);
    reply(&a)
}

fn published_now(r: &mut Engine, now: u64, actions: &[Action]) {
    if let Some((_, _, Some((task, round)))) = published(actions).into_iter().find(|p| p.0 == Topic::Tasks) {
        r.handle(now, Input::Published { task, round, ok: true });
    }
}

/// Market v2, reputation: fresh keys that agree on an output cannot verify a task while a
/// trusted holder of the model is around; the task waits for a trusted worker, the trusted
/// worker's output wins with one more agreeing worker, and the keys that lied are refused
/// from then on.
#[test]
fn market_v2_fresh_keys_that_agree_cannot_verify_once_a_trusted_worker_is_known() {
    let mut r = trusting_requester(2, 0);
    let (id, actions) = submit(&mut r, T0, &[3; 16]);
    published_now(&mut r, T0, &actions);
    bid_round(&mut r, id, T0 + 1, 0, &[101, 102]);
    let a = r.handle(T0 + 5_000, Input::Tick);
    let mut won = awarded_to(&a);
    won.sort();
    let mut want = vec![identity(101).public(), identity(102).public()];
    want.sort();
    assert_eq!(won, want, "the unknown bidders are awarded");
    published_now(&mut r, T0 + 5_000, &a);
    let t = r.requester.get(&id).unwrap();
    assert_eq!(t.phase, fleetmesh_api::Phase::Bidding, "a trusted worker is sought at once");
    assert!(t.round >= 1);
    let round = t.round;
    // The two fresh keys agree on a wrong output: not enough.
    let (wrong, right) = (b"wrong".as_slice(), b"right".as_slice());
    assert_eq!(return_result(&mut r, T0 + 5_001, id, 101, wrong), TaskResponse::Pending);
    assert_eq!(return_result(&mut r, T0 + 5_002, id, 102, wrong), TaskResponse::Pending);
    assert_ne!(r.requester.get(&id).unwrap().phase, fleetmesh_api::Phase::Verified);
    // A trusted worker bids and is awarded; its output differs. Its weight beats the two
    // fresh keys, but one worker is short of the quorum of 2: one more is sought. (In a
    // disagreement, the winner needs a second trusted worker: one trusted key and a
    // colluder must not outvote an honest worker.)
    bid_round(&mut r, id, T0 + 5_003, round, &[100]);
    let a = r.handle(T0 + 10_000, Input::Tick);
    assert_eq!(awarded_to(&a), vec![identity(100).public()]);
    assert_eq!(return_result(&mut r, T0 + 10_001, id, 100, right), TaskResponse::Pending);
    let t = r.requester.get(&id).unwrap();
    assert_ne!(t.phase, fleetmesh_api::Phase::Verified);
    assert_eq!(t.phase, fleetmesh_api::Phase::Bidding, "one more worker is sought");
    let round = t.round;
    // An unknown worker agreeing with the trusted one does not settle it.
    bid_round(&mut r, id, T0 + 10_003, round, &[103]);
    let a = r.handle(T0 + 15_000, Input::Tick);
    assert_eq!(awarded_to(&a), vec![identity(103).public()]);
    assert_eq!(return_result(&mut r, T0 + 15_001, id, 103, right), TaskResponse::Pending);
    let t = r.requester.get(&id).unwrap();
    assert_ne!(t.phase, fleetmesh_api::Phase::Verified);
    let round = t.round;
    // The second trusted worker does.
    bid_round(&mut r, id, T0 + 15_003, round, &[105]);
    let a = r.handle(T0 + 20_000, Input::Tick);
    assert_eq!(awarded_to(&a), vec![identity(105).public()]);
    assert!(matches!(return_result(&mut r, T0 + 20_001, id, 105, right), TaskResponse::Receipt(_)));
    let t = r.requester.get(&id).unwrap();
    assert_eq!(t.phase, fleetmesh_api::Phase::Verified);
    assert_eq!(t.verified.as_ref().unwrap().0, fleetmesh_crypto::OutputDigest::of(right));
    // What the ledger learned: the liars are bad; the honest workers each have an agreement
    // with another trusted worker.
    let ledger = r.requester.ledger();
    assert_eq!(ledger.trust(&identity(101).public()), reputation::Trust::Bad);
    assert_eq!(ledger.trust(&identity(102).public()), reputation::Trust::Bad);
    assert_eq!(ledger.standing(&identity(103).public()).unwrap().agreed, 1);
    assert_eq!(ledger.standing(&identity(100).public()).unwrap().agreed, 4);
    assert_eq!(ledger.standing(&identity(105).public()).unwrap().agreed, 4);
    // A liar's next bid is refused.
    let (id2, actions) = submit(&mut r, T0 + 20_000, &[4; 16]);
    published_now(&mut r, T0 + 20_000, &actions);
    let bid = round0_bid(id2, &identity(101));
    let a = r.handle(
        T0 + 20_001,
        Input::Request { reply: 1, from: identity(101).public(), request: TaskRequest::Bid { bid } },
    );
    assert_eq!(
        reply(&a),
        TaskResponse::Refused(Refusal::BidDeclined(fleetmesh_protocol::DeclineReason::NotSelected))
    );
}

/// Market v2, reputation: a trusted worker ranks first and runs a k = 1 task alone; with
/// a spot check, an unknown worker runs it too and both results must agree. The ledger
/// records the corroboration in the same write as the verified task.
#[test]
fn market_v2_a_trusted_worker_runs_alone_unless_a_spot_check_adds_an_unknown_one() {
    let out = b"the output".as_slice();
    // No spot check: the trusted worker wins over earlier unknown bidders and is enough.
    let mut r = trusting_requester(1, 0);
    let (id, actions) = submit(&mut r, T0, &[5; 16]);
    published_now(&mut r, T0, &actions);
    bid_round(&mut r, id, T0 + 1, 0, &[101, 102, 100]);
    let a = r.handle(T0 + 5_000, Input::Tick);
    assert_eq!(awarded_to(&a), vec![identity(100).public()]);
    assert!(matches!(return_result(&mut r, T0 + 5_001, id, 100, out), TaskResponse::Receipt(_)));

    // Every task spot-checked: the first unknown bidder joins, and the trusted result waits.
    let mut r = trusting_requester(1, 1_000_000);
    let (id, actions) = submit(&mut r, T0, &[5; 16]);
    published_now(&mut r, T0, &actions);
    bid_round(&mut r, id, T0 + 1, 0, &[101, 100]);
    let a = r.handle(T0 + 5_000, Input::Tick);
    assert_eq!(awarded_to(&a), vec![identity(100).public(), identity(101).public()]);
    assert!(r.requester.get(&id).unwrap().spot_check);
    assert!(a.iter().any(|x| matches!(x, Action::Count(Metric::SpotChecks))), "counted in /metrics");
    assert_eq!(return_result(&mut r, T0 + 5_001, id, 100, out), TaskResponse::Pending);
    let input = result_request(&r, id, 101, out);
    let a = r.handle(T0 + 5_002, input);
    assert!(matches!(reply(&a), TaskResponse::Receipt(_)));
    let writes: Vec<&StoreOp> = a
        .iter()
        .filter_map(|x| match x {
            Action::Persist(ops) => Some(ops),
            _ => None,
        })
        .flatten()
        .filter(|o| o.table == Table::Reputation)
        .collect();
    assert_eq!(writes.len(), 2, "both workers' records are written with the verified task");
    let standing: reputation::Standing =
        fleetmesh_protocol::decode(writes[1].value.as_deref().unwrap(), 1024).unwrap();
    assert_eq!(standing.agreed, 1, "the unknown worker's agreement with a trusted one counts");
    let trusted = r.requester.ledger().standing(&identity(100).public()).unwrap().clone();
    assert_eq!((trusted.agreed, trusted.alone), (3, 1), "an unknown worker vouches for nobody");
}

/// Market v2, reputation: a requester that trusts nobody and cannot check a task itself (own
/// checks off here) accepts a lone k = 1 result as v1 did, when no second worker bid, but
/// learns nothing from it: trust comes only from agreement with its own run or a trusted
/// worker.
#[test]
fn market_v2_unchecked_results_earn_no_trust() {
    let mut r = engine_with(1, |c| {
        c.tasks.selection = false;
        c.trust.spot_check_ppm = 0;
    });
    r.handle(T0, Input::Connected(identity(101).public()));
    for n in 0..5u8 {
        let now = T0 + u64::from(n) * 10_000;
        let (id, actions) = submit(&mut r, now, &[n; 16]);
        published_now(&mut r, now, &actions);
        bid_round(&mut r, id, now + 1, 0, &[101]);
        r.handle(now + 5_000, Input::Tick);
        assert!(matches!(return_result(&mut r, now + 5_001, id, 101, b"x"), TaskResponse::Receipt(_)));
    }
    // Nothing was checked, so nothing was learned (and nothing written).
    assert_eq!(r.requester.ledger().standing(&identity(101).public()), None);
    assert_eq!(r.requester.ledger().trust(&identity(101).public()), reputation::Trust::Unknown);
}

/// Selection, found with reputation on: a first round whose only bids came from invited
/// workers counted as one holder, every later round then admitted everyone, and the moving
/// average (rounded down) could never climb back from 1.
#[test]
fn market_v2_the_holder_estimate_ignores_empty_samples_and_recovers_from_a_low_one() {
    let mut r = engine(1);
    let m = model();
    r.requester.learn_holders(m, 20_000, 0);
    assert_eq!(r.requester.holders_of(&m), None, "no eligible bid teaches nothing");
    // A round under 1 % that drew one bid: 100 holders.
    r.requester.learn_holders(m, 10_000, 1);
    assert_eq!(r.requester.holders_of(&m), Some(100));
    r.requester.learn_holders(m, 10_000, 0);
    assert_eq!(r.requester.holders_of(&m), Some(75), "an empty round lowers it by a quarter");
    // From the lowest estimate, rounds that see 100 holders bring it back.
    let mut low = engine(2);
    low.requester.learn_holders(m, 1_000_000, 1);
    assert_eq!(low.requester.holders_of(&m), Some(1));
    for _ in 0..20 {
        low.requester.learn_holders(m, 1_000_000, 100);
    }
    assert!(low.requester.holders_of(&m).unwrap() >= 90, "{:?}", low.requester.holders_of(&m));
}

/// Market v2, reputation: a requester that trusts nobody yet and holds the model runs the
/// task itself and checks the workers against its own output: a wrong result waits for the
/// check, is refused, its worker is marked bad, and the next worker's agreeing result
/// verifies the task and earns that worker a corroborated task.
#[test]
fn market_v2_a_requester_that_trusts_nobody_checks_results_against_its_own_run() {
    let mut r = engine_with(1, |c| {
        c.tasks.selection = false;
        c.tasks.early_close = false;
        c.trust.spot_check_ppm = 0;
        c.trust.self_check = true;
    });
    for i in [101, 102] {
        r.handle(T0, Input::Connected(identity(i).public()));
    }
    let (id, actions) = submit(&mut r, T0, &[6; 16]);
    published_now(&mut r, T0, &actions);
    bid_round(&mut r, id, T0 + 1, 0, &[101, 102]);
    let a = r.handle(T0 + 5_000, Input::Tick);
    assert_eq!(awarded_to(&a).len(), 1, "its own run replaces the second worker");
    assert!(a.iter().any(|x| matches!(x, Action::Check { task, .. } if *task == id)));
    assert!(a.iter().any(|x| matches!(x, Action::Count(Metric::OwnChecks))), "counted in /metrics");
    let (wrong, right) = (b"wrong".as_slice(), b"right".as_slice());
    let first = awarded_to(&a)[0];
    let (liar, honest) = if first == identity(101).public() { (101, 102) } else { (102, 101) };
    assert_eq!(
        return_result(&mut r, T0 + 5_001, id, liar, wrong),
        TaskResponse::Pending,
        "waits for the check"
    );
    let a = r.handle(
        T0 + 5_002,
        Input::Checked {
            task: id,
            result: Ok(fleetmesh_crypto::OutputDigest::of(right)),
            output: right.to_vec(),
        },
    );
    assert_eq!(awarded_to(&a), vec![identity(honest).public()], "a wrong result calls in the next worker");
    assert!(matches!(return_result(&mut r, T0 + 5_003, id, honest, right), TaskResponse::Receipt(_)));
    let t = r.requester.get(&id).unwrap();
    assert_eq!(t.verified.as_ref().unwrap().0, fleetmesh_crypto::OutputDigest::of(right));
    let ledger = r.requester.ledger();
    assert_eq!(ledger.trust(&identity(liar).public()), reputation::Trust::Bad);
    assert_eq!(ledger.standing(&identity(honest).public()).unwrap().agreed, 1);
}

/// Wire version 2: a bid that loses the round is sent nothing (a signed decline to every
/// loser cost a signature each); the requester's trace still records why it lost.
#[test]
fn wire_2_losing_bidders_are_sent_nothing() {
    let mut r = engine(1);
    let workers: Vec<Engine> = (2..6).map(engine).collect();
    // The requester hears the workers' adverts, so the round waits for all of them.
    for (i, w) in workers.iter().enumerate() {
        r.handle(T0, Input::Connected(w.public()));
        let p = Presence {
            v: WIRE_VERSION,
            models: vec![model()],
            free_slots: 1,
            depart_ms: None,
            price_floor: 0,
            at_ms: T0,
            offer_until_ms: None,
            max_batch: 0,
            operator_cert: None,
        };
        let advert = fleetmesh_protocol::encode(&p.sign(&identity(2 + i as u64)));
        assert_eq!(verdict(&gossip(&mut r, T0, Topic::Presence, advert)), Verdict::Accept);
    }
    let mut workers = workers;
    let (_, actions) = submit(&mut r, T0, &[4; 8]);
    let (data, task, round) = announcement(&actions);
    r.handle(T0, Input::Published { task, round, ok: true });
    let mut out = Vec::new();
    let mut bids = 0;
    for w in &mut workers {
        for (_, req, _) in sends(&gossip(w, T0 + 1, Topic::Tasks, data.clone())) {
            if let Outgoing::Request(TaskRequest::Bid { bid }) = req {
                bids += 1;
                out.extend(r.handle(
                    T0 + 2,
                    Input::Request { reply: 1, from: w.public(), request: TaskRequest::Bid { bid } },
                ));
            }
        }
    }
    out.extend(r.handle(T0 + 600_000, Input::Tick));
    let sent = sends(&out);
    let awards = sent.iter().filter(|(_, o, _)| matches!(o, Outgoing::Award { .. })).count();
    assert!((1..=2).contains(&awards), "one award (and maybe a spot check): {sent:?}");
    assert_eq!(sent.len(), awards, "nothing but awards goes out: {sent:?}");
    let declined = out
        .iter()
        .filter(
            |a| matches!(a, Action::Trace(t) if t.event == fleetmesh_trace::timeline::event::BID_DECLINED),
        )
        .count();
    // A bid refused on arrival (the round closed early) hears why in the answer to it.
    let refused = out
        .iter()
        .filter(|a| {
            matches!(a, Action::Reply { response: TaskResponse::Refused(Refusal::BidDeclined(_)), .. })
        })
        .count();
    assert_eq!(bids, workers.len(), "every worker bids on a first round");
    assert_eq!(declined + awards + refused, bids, "every bid that did not win is accounted for");
    assert!(declined >= 1, "a bid lost the round (declined {declined}, refused {refused})");
}

/// Wire version 2: a task id names its requester. Before, anyone could re-sign a requester's
/// spec payload with their own key and announce the same task id as theirs: a worker that
/// heard them first bid to them and then skipped the real round of that task.
#[test]
fn wire_2_a_spec_re_signed_by_a_stranger_is_another_task() {
    let (mut r, mut w) = (engine(1), engine(2));
    let (_, actions) = submit(&mut r, T0, &[3; 8]);
    let (data, ..) = announcement(&actions);
    let (_, a) = Announcement::open_bytes(&data, 1 << 16).unwrap();
    let real = a.spec.clone().unwrap();
    let stranger = identity(78);
    let copy = SignedEnvelope::sign(&stranger, fleetmesh_crypto::MessageKind::TaskSpec, real.payload.clone());
    let front = Announcement { spec: Some(copy), ..a.clone() }.sign(&stranger);
    let v = gossip(&mut w, T0, Topic::Tasks, fleetmesh_protocol::encode(&front));
    assert_eq!(verdict(&v), Verdict::Reject, "the copy's id is not the task's");
    assert!(sends(&v).is_empty());
    // The real round is still taken and bid on.
    let v = gossip(&mut w, T0 + 1, Topic::Tasks, data);
    assert_eq!(verdict(&v), Verdict::Accept);
    assert_eq!(sends(&v).len(), 1, "the worker bids to the real requester");
}

/// A task stored by a version-1 node (its key is the old id, blake3 of the payload alone)
/// fails at restore with the reason, instead of waiting out its deadline unserved.
#[test]
fn wire_2_a_task_stored_under_a_version_1_id_fails_at_restore_saying_why() {
    let mut r = engine(1);
    let (id, _) = submit(&mut r, T0, &[5; 8]);
    let t = r.requester.get(&id).unwrap().clone();
    let old_id = TaskId::of(&t.spec_env.payload);
    let mut fresh = engine(1);
    let out = fresh.restore(T0 + 10, vec![(old_id, t)], vec![]);
    let failed = fresh.requester.get(&old_id).unwrap();
    assert_eq!(failed.phase, fleetmesh_api::Phase::Failed);
    assert!(failed.failure.as_deref().unwrap().contains("wire version 1"), "{:?}", failed.failure);
    assert!(out.iter().any(|a| matches!(a, Action::Persist(_))), "the failure is persisted");
}

/// A worker engine that advertises (with its standing offer), and its first advert's bytes.
fn offering(i: u64, now: u64, f: impl FnOnce(&mut EngineConfig)) -> (Engine, Vec<u8>) {
    let mut w = engine_with(i, |c| {
        c.presence_interval_ms = 5_000;
        f(c);
    });
    let (_, data, _) = published(&w.handle(now, Input::Tick))
        .into_iter()
        .find(|p| p.0 == Topic::Presence)
        .expect("an advert");
    (w, data)
}

/// Offering workers `ids`, connected to requester `r`, which holds their first adverts.
fn hear_offers(r: &mut Engine, ids: std::ops::Range<u64>) -> Vec<Engine> {
    ids.map(|i| {
        let (w, data) = offering(i, T0, |_| {});
        r.handle(T0, Input::Connected(w.public()));
        assert_eq!(verdict(&gossip(r, T0, Topic::Presence, data)), Verdict::Accept);
        w
    })
    .collect()
}

/// The awards among `actions`: (worker, spec, award).
fn awards(actions: &[Action]) -> Vec<(PublicKey, SignedEnvelope, SignedEnvelope)> {
    sends(actions)
        .into_iter()
        .filter_map(|(to, o, _)| match o {
            Outgoing::Award { spec, award, .. } => Some((to, spec, award)),
            _ => None,
        })
        .collect()
}

/// Market v2, standing offers: a requester holding k neighbours' fresh offers awards a new
/// task at once, with no announcement, no DHT record and no bid, to the lowest ticket among
/// them; the award commits to the offers' digests; the winner takes it on its offer.
#[test]
fn offers_a_task_is_awarded_at_once_on_the_neighbours_standing_offers() {
    let mut r = engine_with(1, |c| c.trust.enabled = false);
    let mut workers = Vec::new();
    let mut digests = Vec::new();
    for i in 2..6 {
        let (w, data) = offering(i, T0, |_| {});
        let (env, p) = Presence::open_bytes(&data, 1 << 16).unwrap();
        assert_eq!(p.offer_until_ms, Some(T0 + MAX_CLOCK_SKEW_MS), "an offer for the advert's time to live");
        digests.push(fleetmesh_protocol::bid_digest(&env));
        r.handle(T0, Input::Connected(w.public()));
        assert_eq!(verdict(&gossip(&mut r, T0, Topic::Presence, data)), Verdict::Accept);
        workers.push(w);
    }
    let (id, actions) = submit(&mut r, T0 + 5, &[3; 8]);
    assert!(published(&actions).is_empty(), "no announcement: {actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::PutRecord { .. })), "no DHT record");
    let sent = awards(&actions);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (to, spec, award_env) = sent[0].clone();
    let award = Award::open(&award_env).unwrap();
    assert!(award.offer);
    assert_eq!(award.winners, vec![to]);
    assert_eq!(award.bid_count, 4);
    digests.sort();
    assert_eq!(award.bid_root, Some(fleetmesh_protocol::winner::bid_set_root(&digests)));
    let lowest =
        workers.iter().map(|w| w.public()).min_by_key(|k| fleetmesh_protocol::selection::ticket(&id, 0, k));
    assert_eq!(Some(to), lowest, "the lowest ticket among the offers wins");
    let t = r.requester.get(&id).unwrap();
    assert_eq!(t.phase, fleetmesh_api::Phase::Running);
    assert!(t.offer_round);
    assert_eq!(t.standby.len(), 3, "the other offers stand by");
    // Never announced, so never in the open-tasks record: nothing to rewrite in the DHT.
    let flush = r.handle(T0 + 10_000, Input::Tick);
    assert!(!flush.iter().any(|a| matches!(a, Action::PutRecord { .. })), "{flush:?}");
    // The winner takes it on its offer; another offering worker is not named and refuses.
    let request = TaskRequest::Award { spec, award: award_env, input: vec![3; 8] };
    for w in &mut workers {
        let a = w.handle(T0 + 6, Input::Request { reply: 1, from: r.public(), request: request.clone() });
        let want =
            if w.public() == to { TaskResponse::Ack } else { TaskResponse::Refused(Refusal::NotAWinner) };
        assert_eq!(reply(&a), want);
    }
}

/// Offers that do not cover the task (a price floor above its max price, expired, another
/// model) or too few of them: the task is announced and takes bids, as before offers; with
/// offers turned off too.
#[test]
fn offers_that_do_not_cover_a_task_leave_it_to_an_announced_round() {
    type Case = (&'static str, Box<dyn Fn(&mut EngineConfig)>, u64);
    let cases: Vec<Case> = vec![
        ("price floor above the max price", Box::new(|c| c.price_floor = 1_000), T0 + 1),
        ("expired", Box::new(|_| {}), T0 + MAX_CLOCK_SKEW_MS + 1),
        ("offers off at the requester", Box::new(|_| {}), T0 + 1),
    ];
    for (i, (what, f, at)) in cases.into_iter().enumerate() {
        let mut r = engine_with(1, |c| {
            c.trust.enabled = false;
            c.tasks.offers = i != 2;
        });
        let (w, data) = offering(2, T0, f);
        r.handle(T0, Input::Connected(w.public()));
        assert_eq!(verdict(&gossip(&mut r, T0, Topic::Presence, data)), Verdict::Accept, "{what}");
        let (_, actions) = submit(&mut r, at, &[3; 8]);
        assert!(awards(&actions).is_empty(), "{what}: {actions:?}");
        announcement(&actions);
        assert!(
            actions.iter().any(|a| matches!(a, Action::PutRecord { .. })),
            "{what}: the spec goes to the DHT"
        );
    }
    // k = 2 with one offer: too few.
    let mut r = engine_with(1, |c| {
        c.trust.enabled = false;
        c.tasks.redundancy = 2;
    });
    let (w, data) = offering(2, T0, |_| {});
    r.handle(T0, Input::Connected(w.public()));
    gossip(&mut r, T0, Topic::Presence, data);
    let (_, actions) = submit(&mut r, T0 + 1, &[3; 8]);
    assert!(awards(&actions).is_empty());
    announcement(&actions);
}

/// A worker takes an award made on offers only while its own offer covers the task: not
/// once it expired, not below its price floor, not while its disk is nearly full (and it
/// withdraws the offer at once, not at the next advert).
#[test]
fn offers_a_worker_takes_an_award_only_while_its_own_offer_covers_it() {
    let mut r = engine(1);
    let (mut w, _) = offering(2, T0, |c| c.price_floor = 10);
    let mut n = 0;
    let mut award_for = |r: &mut Engine, now: u64, max_price: u64, offer: bool| {
        n += 1;
        let input = vec![n; 8];
        let request =
            SubmitRequest { input: input.clone(), max_price: Some(max_price), ..SubmitRequest::default() };
        let a = r.handle(now, Input::Submit { call: 1, request, nonce: u64::from(n) });
        let id = a.iter().find_map(|a| match a {
            Action::Submitted { result: Ok(id), .. } => Some(*id),
            _ => None,
        });
        let id = id.unwrap();
        let spec = r.requester.get(&id).unwrap().spec_env.clone();
        let award = Award {
            v: WIRE_VERSION,
            task_id: id,
            round: 0,
            bid_root: None,
            bid_count: 1,
            winners: vec![identity(2).public()],
            result_deadline_ms: now + 5_000,
            select_ppm: None,
            invited: vec![],
            offer,
        }
        .sign(&identity(1));
        TaskRequest::Award { spec, award, input }
    };
    let from = r.public();
    let ask = |w: &mut Engine, now: u64, request: TaskRequest| {
        reply(&w.handle(now, Input::Request { reply: 1, from, request }))
    };
    let req = award_for(&mut r, T0 + 1, 100, true);
    assert_eq!(ask(&mut w, T0 + 1, req), TaskResponse::Ack, "covered by the offer");
    let req = award_for(&mut r, T0 + 1, 100, false);
    assert_eq!(
        ask(&mut w, T0 + 1, req),
        TaskResponse::Refused(Refusal::NotAWinner),
        "no bid, no offer claimed"
    );
    let req = award_for(&mut r, T0 + 1, 9, true);
    assert_eq!(ask(&mut w, T0 + 1, req), TaskResponse::Refused(Refusal::NotAWinner), "below the price floor");
    // Renewed by the next advert; withdrawn at once when the disk fills.
    let renewed = w.handle(T0 + 5_000, Input::Tick);
    assert_eq!(published(&renewed).len(), 1);
    w.handle(T0 + 5_001, Input::DiskLow(true));
    assert!(published(&w.handle(T0 + 5_500, Input::Tick)).is_empty(), "at most one advert a second");
    let withdrawn = published(&w.handle(T0 + 6_000, Input::Tick));
    assert_eq!(withdrawn.len(), 1, "a changed offer goes out before the interval");
    let (_, p) = Presence::open_bytes(&withdrawn[0].1, 1 << 16).unwrap();
    assert_eq!(p.offer_until_ms, None);
    let req = award_for(&mut r, T0 + 6_001, 100, true);
    assert_eq!(ask(&mut w, T0 + 6_001, req), TaskResponse::Refused(Refusal::NotAWinner), "offer withdrawn");
    // A new neighbour hears the advert within a second, not at the next interval.
    w.handle(T0 + 7_000, Input::Connected(identity(9).public()));
    assert!(published(&w.handle(T0 + 7_500, Input::Tick)).is_empty());
    assert_eq!(published(&w.handle(T0 + 8_000, Input::Tick)).len(), 1, "advert after a connection");
    w.handle(T0 + 8_100, Input::Connected(identity(10).public()));
    w.handle(T0 + 8_200, Input::Connected(identity(11).public()));
    assert_eq!(published(&w.handle(T0 + 9_100, Input::Tick)).len(), 1, "one for both");
    assert!(published(&w.handle(T0 + 10_000, Input::Tick)).is_empty());
    // Back when the disk is, and expired once its time to live passes with no new advert.
    w.handle(T0 + 10_500, Input::DiskLow(false));
    assert_eq!(published(&w.handle(T0 + 11_000, Input::Tick)).len(), 1, "the offer is back");
    let req = award_for(&mut r, T0 + 11_001, 100, true);
    assert_eq!(ask(&mut w, T0 + 11_001, req), TaskResponse::Ack);
    let late = T0 + 11_000 + MAX_CLOCK_SKEW_MS + 1;
    let req = award_for(&mut r, late, 100, true);
    assert_eq!(ask(&mut w, late, req), TaskResponse::Refused(Refusal::NotAWinner), "the offer expired");
}

/// A worker that refuses an award made on its offer before doing any work (busy, offer gone)
/// is no failed worker: its assignment is dropped, the next offer on standby is awarded at
/// once, and its offers are passed over for a moment. The standby kept (and persisted) is
/// 2k + 2 whatever the number of offers.
#[test]
fn offers_a_refused_offer_award_moves_on_without_counting_a_failure() {
    let mut r = engine_with(1, |c| c.trust.enabled = false);
    let mut engines = hear_offers(&mut r, 2..12);
    let (id, actions) = submit(&mut r, T0 + 5, &[3; 8]);
    let persisted: Vec<ReqTask> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(ops) => ops.iter().find(|o| o.table == Table::Requests && o.key == id).cloned(),
            _ => None,
        })
        .filter_map(|o| fleetmesh_protocol::decode(&o.value.unwrap(), 1 << 20).ok())
        .collect();
    let last = persisted.last().unwrap();
    assert_eq!(last.standby.len(), 4, "2k + 2 on standby, persisted so");
    let first = awards(&actions)[0].0;
    let out = r.handle(
        T0 + 6,
        Input::Response {
            tag: SendTag::Award { task: id, worker: first },
            peer: first,
            result: Ok(TaskResponse::Refused(Refusal::NoCapacity)),
        },
    );
    let next = awards(&out);
    assert_eq!(next.len(), 1, "the next offer at once: {out:?}");
    assert_ne!(next[0].0, first);
    assert!(Award::open(&next[0].2).unwrap().offer);
    let t = r.requester.get(&id).unwrap();
    assert_eq!(t.counted(), 1, "the refusal does not count towards the task's workers");
    assert!(matches!(t.assignments[0].status, requester::AssignStatus::Refused(_)));
    assert_eq!(t.assignments[1].worker, next[0].0);
    // The busy worker's offer is passed over for a moment (its ticket would have won some of
    // these 30 tasks), and taken again after.
    let winners = |r: &mut Engine, now: u64, nonces: std::ops::Range<u64>| -> Vec<PublicKey> {
        let mut won = Vec::new();
        for nonce in nonces {
            let request = SubmitRequest { input: vec![4; 8], ..SubmitRequest::default() };
            let a = r.handle(now, Input::Submit { call: 2, request, nonce });
            won.extend(awards(&a).into_iter().map(|a| a.0));
        }
        won
    };
    let during = winners(&mut r, T0 + 7, 100..130);
    assert_eq!(during.len(), 30);
    assert!(!during.contains(&first), "passed over while backing off");
    // Still passed over after the backoff until it advertises again.
    let later = T0 + 7 + requester::OFFER_BACKOFF_MS;
    assert!(!winners(&mut r, later, 200..230).contains(&first), "no advert since its refusal");
    let busy = engines.iter_mut().find(|w| w.public() == first).unwrap();
    let (_, advert, _) = published(&busy.handle(T0 + 5_000, Input::Tick)).remove(0);
    gossip(&mut r, T0 + 5_000, Topic::Presence, advert);
    let after = winners(&mut r, T0 + 5_001, 300..330);
    assert!(after.contains(&first), "taken again once it advertised: {after:?}");
}

/// Workers that refuse every award before any work cannot keep a task going round: none is
/// asked again for that task, the standby (2k + 2) is tried once, then an announced round
/// takes over (where a busy worker does not bid).
#[test]
fn offers_refusals_are_bounded_per_task() {
    let mut r = engine_with(1, |c| c.trust.enabled = false);
    hear_offers(&mut r, 2..30);
    let (id, actions) = submit(&mut r, T0 + 5, &[3; 8]);
    let mut pending = awards(&actions);
    let mut asked = std::collections::BTreeSet::new();
    let mut now = T0 + 6;
    let mut last = Vec::new();
    while let Some((to, ..)) = pending.pop() {
        assert!(asked.insert(to), "a worker that refused was asked again");
        now += 1;
        let out = r.handle(
            now,
            Input::Response {
                tag: SendTag::Award { task: id, worker: to },
                peer: to,
                result: Ok(TaskResponse::Refused(Refusal::NoCapacity)),
            },
        );
        pending.extend(awards(&out));
        r.check_bounds().unwrap();
        last = out;
    }
    let t = r.requester.get(&id).unwrap();
    assert_eq!(t.refused(), 5, "the winner and its 4 standbys");
    assert!(t.refused() <= requester::MAX_REFUSED_PER_TASK);
    assert_eq!((t.counted(), t.phase), (0, fleetmesh_api::Phase::Bidding));
    announcement(&last);
}

/// An award on an offer whose input cannot fit the model is refused, not run: without a bid
/// the worker had no earlier chance to say so.
#[test]
fn offers_an_award_whose_input_cannot_fit_the_model_is_refused() {
    let mut r = engine(1);
    let (mut w, _) = offering(2, T0, |c| {
        c.model_inputs.insert(model(), 16);
    });
    let (id, _) = submit(&mut r, T0 + 1, &[1; 8]);
    let spec = r.requester.get(&id).unwrap().spec_env.clone();
    let award = Award {
        v: WIRE_VERSION,
        task_id: id,
        round: 0,
        bid_root: None,
        bid_count: 1,
        winners: vec![w.public()],
        result_deadline_ms: T0 + 5_000,
        select_ppm: None,
        invited: vec![],
        offer: true,
    }
    .sign(&identity(1));
    let a = w.handle(
        T0 + 2,
        Input::Request {
            reply: 1,
            from: r.public(),
            request: TaskRequest::Award { spec, award, input: vec![1; 8] },
        },
    );
    match reply(&a) {
        TaskResponse::Refused(Refusal::Invalid(m)) => assert!(m.contains("8 bytes"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(w.worker.get(&id).is_none());
    assert!(!a.iter().any(|x| matches!(x, Action::Execute { .. })));
}

/// A batch submit of `parts` (each the same size) with redundancy `k`.
fn submit_batch(r: &mut Engine, now: u64, parts: &[Vec<u8>], k: u8) -> (TaskId, Vec<Action>) {
    let request = SubmitRequest {
        input: parts.concat(),
        batch: Some(parts.len() as u16),
        redundancy: Some(k),
        ..SubmitRequest::default()
    };
    let actions = r.handle(now, Input::Submit { call: 1, request, nonce: 7 });
    let id = actions
        .iter()
        .find_map(|a| match a {
            Action::Submitted { result: Ok(id), .. } => Some(*id),
            _ => None,
        })
        .expect("submitted");
    (id, actions)
}

/// What an honest run of the test "model" gives for one input: its bytes reversed.
fn batch_outputs(parts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.iter().rev().copied().collect()).collect()
}

/// Worker `w` takes `award` for `input`, runs it to `outputs` (one list) and returns the result
/// request it sends.
fn run_award(w: &mut Engine, r: &PublicKey, award: TaskRequest, outputs: &[Vec<u8>]) -> TaskRequest {
    let a = w.handle(T0 + 6, Input::Request { reply: 1, from: *r, request: award });
    assert_eq!(reply(&a), TaskResponse::Ack);
    let (task, batch) = a
        .iter()
        .find_map(|x| match x {
            Action::Execute { task, batch, .. } => Some((*task, *batch)),
            _ => None,
        })
        .expect("it runs the batch");
    assert_eq!(batch, Some(outputs.len() as u16), "the executor is told to run each input");
    let output = fleetmesh_protocol::batch::encode_outputs(outputs);
    let runtime = fleetmesh_protocol::RuntimeProfile::default();
    let done = w
        .handle(T0 + 7, Input::Executed { task, result: Ok(ExecOutput { output, run_time_us: 9, runtime }) });
    sends(&done)
        .into_iter()
        .find_map(|(_, o, _)| match o {
            Outgoing::Request(req @ TaskRequest::Result { .. }) => Some(req),
            _ => None,
        })
        .expect("a result")
}

/// Market v2, batch awards: one spec carries four inputs, its input digest is the Merkle
/// root over them; each of the k = 2 workers takes one award and signs one result whose
/// digest is the root over its four outputs; the requester verifies the batch once and gives
/// each output with a path that checks it alone against the signed root.
#[test]
fn batch_one_award_and_one_signed_result_carry_many_inputs_each_checked_alone() {
    let mut r = engine_with(1, |c| {
        c.trust.enabled = false;
        c.model_inputs.insert(model(), 4);
    });
    let mut workers = hear_offers(&mut r, 2..6);
    let parts: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i, i + 1, i + 2, i + 3]).collect();
    let (id, actions) = submit_batch(&mut r, T0 + 5, &parts, 2);
    let spec = r.requester.get(&id).unwrap().spec.clone();
    assert_eq!(spec.batch, Some(4));
    assert_eq!(spec.input_digest, fleetmesh_protocol::batch::input_digest(Some(4), &parts.concat()).unwrap());
    assert_ne!(spec.input_digest, InputDigest::of(&parts.concat()));
    let sent = awards(&actions);
    assert_eq!(sent.len(), 2, "one award to each of k workers, on their offers: {actions:?}");
    let outputs = batch_outputs(&parts);
    for (to, spec_env, award) in sent {
        let w = workers.iter_mut().find(|w| w.public() == to).unwrap();
        let request = TaskRequest::Award { spec: spec_env, award, input: parts.concat() };
        let result = run_award(w, &r.public(), request, &outputs);
        let TaskRequest::Result { header, .. } = &result else { unreachable!() };
        let h = fleetmesh_protocol::ResultHeader::open(header).unwrap();
        let root = fleetmesh_protocol::batch::output_digest(
            Some(4),
            &fleetmesh_protocol::batch::encode_outputs(&outputs),
        );
        assert_eq!(Ok(h.output_digest), root, "the worker signs the root over its outputs");
        r.handle(T0 + 8, Input::Request { reply: 2, from: to, request: result });
    }
    let view = r.requester.get(&id).unwrap().view();
    assert_eq!(view.phase, fleetmesh_api::Phase::Verified, "{view:#?}");
    assert_eq!(view.verified_by.len(), 2);
    assert_eq!(view.batch, Some(4));
    assert_eq!(view.items.len(), 4);
    let root: fleetmesh_crypto::OutputDigest = view.output_digest.as_deref().unwrap().parse().unwrap();
    use base64::Engine as _;
    for (i, item) in view.items.iter().enumerate() {
        let output = base64::engine::general_purpose::STANDARD.decode(&item.output_base64).unwrap();
        assert_eq!(output, outputs[i], "item {i} in input order");
        let path: Vec<fleetmesh_crypto::Digest> = item.path.iter().map(|d| d.parse().unwrap()).collect();
        assert!(fleetmesh_protocol::batch::verify_item(&output, i, 4, &path, &root), "item {i} checks alone");
        assert!(!fleetmesh_protocol::batch::verify_item(&outputs[(i + 1) % 4], i, 4, &path, &root));
    }
}

/// Batch results that do not match their signed root are rejected, as any wrong digest is:
/// a list with an output missing or one too many, one with an output changed after signing,
/// bytes that are no list, the honest outputs in another CBOR encoding. Each case on a task
/// of its own (a worker rejected once is answered from its record after that); the honest
/// list is accepted.
#[test]
fn batch_results_that_do_not_match_their_root_are_rejected() {
    let parts: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 4]).collect();
    let outputs = batch_outputs(&parts);
    let honest = fleetmesh_protocol::batch::encode_outputs(&outputs);
    let root = fleetmesh_protocol::batch::output_digest(Some(4), &honest).unwrap();
    let three = fleetmesh_protocol::batch::encode_outputs(&outputs[..3]);
    let five = fleetmesh_protocol::batch::encode_outputs(&[outputs.clone(), vec![vec![9]]].concat());
    let mut changed = outputs.clone();
    changed[1][0] ^= 1;
    let changed = fleetmesh_protocol::batch::encode_outputs(&changed);
    // The honest list, its length as a two-byte head instead of one: the same outputs.
    let mut long_head = vec![0x98, 4];
    long_head.extend_from_slice(&honest[1..]);
    let of = fleetmesh_crypto::OutputDigest::of;
    let cases: Vec<(&str, fleetmesh_crypto::OutputDigest, Vec<u8>, bool)> = vec![
        ("an output missing, signed as it is", of(&three), three.clone(), false),
        ("an output missing under the honest root", root, three, false),
        ("one output too many, signed as it is", of(&five), five, false),
        ("an output changed after signing", root, changed, false),
        ("no list at all", of(b"not a list"), b"not a list".to_vec(), false),
        ("the honest outputs, encoded another way", root, long_head, false),
        ("the honest list", root, honest, true),
    ];
    for (n, (what, digest, output, ok)) in cases.into_iter().enumerate() {
        let mut r = engine_with(1, |c| c.trust.enabled = false);
        let _workers = hear_offers(&mut r, 2..6);
        let (id, actions) = submit_batch(&mut r, T0 + 5 + n as u64, &parts, 1);
        let to = awards(&actions)[0].0;
        let i = (2..6).find(|i| identity(*i).public() == to).unwrap();
        let spec = r.requester.get(&id).unwrap().spec.clone();
        let header = fleetmesh_protocol::ResultHeader {
            v: WIRE_VERSION,
            task_id: id,
            input_digest: spec.input_digest,
            model: spec.model,
            output_digest: digest,
            output_size: output.len() as u64,
            run_time_us: 5,
            runtime: fleetmesh_protocol::RuntimeProfile::default(),
            energy_mj: None,
        }
        .sign(&identity(i));
        let request = TaskRequest::Result { task_id: id, header, output };
        let a = r.handle(T0 + 20, Input::Request { reply: 3, from: to, request });
        let phase = r.requester.get(&id).unwrap().phase;
        if ok {
            assert!(matches!(reply(&a), TaskResponse::Receipt(_)), "{what}: {a:?}");
            assert_eq!(phase, fleetmesh_api::Phase::Verified, "{what}");
        } else {
            assert_eq!(reply(&a), TaskResponse::Rejected(RejectReason::OutputDigestMismatch), "{what}");
            assert_ne!(phase, fleetmesh_api::Phase::Verified, "{what}");
        }
    }
}

/// A worker runs batches up to its `max_batch` and says so in its offer; a larger batch, or a
/// malformed one, is refused with the reason, and never run. A submit of a malformed batch
/// is refused with a clear error.
#[test]
fn batch_limits_are_kept_and_malformed_batches_refused() {
    let (w, data) = offering(2, T0, |c| c.max_batch = 2);
    let (_, p) = Presence::open_bytes(&data, 1 << 16).unwrap();
    assert_eq!(p.max_batch, 2, "the offer says how large a batch it takes");
    let mut r = engine_with(1, |c| c.trust.enabled = false);
    r.handle(T0, Input::Connected(w.public()));
    assert_eq!(verdict(&gossip(&mut r, T0, Topic::Presence, data)), Verdict::Accept);
    let mut w = w;
    // Two inputs: covered by its offer, awarded on it.
    let two: Vec<Vec<u8>> = vec![vec![1; 4], vec![2; 4]];
    let (_, actions) = submit_batch(&mut r, T0 + 1, &two, 1);
    assert_eq!(awards(&actions).len(), 1, "a batch of 2 goes on the offer");
    // Four: not covered, so announced; and an award made anyway is refused.
    let four: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 4]).collect();
    let (id, actions) = submit_batch(&mut r, T0 + 2, &four, 1);
    assert!(awards(&actions).is_empty(), "its offer does not cover a batch of 4");
    let (data, _, _) = announcement(&actions);
    let heard = gossip(&mut w, T0 + 2, Topic::Tasks, data.clone());
    assert!(sends(&heard).is_empty(), "no bid on a batch larger than it takes: {heard:?}");
    // A worker that takes batches of 4 bids on the same announcement, at its floor per input;
    // one that takes none does not.
    let mut big = engine_with(3, |c| {
        c.max_batch = 4;
        c.price_floor = 2;
    });
    let bid = sends(&gossip(&mut big, T0 + 2, Topic::Tasks, data.clone()))
        .into_iter()
        .find_map(|(_, o, _)| match o {
            Outgoing::Request(TaskRequest::Bid { bid }) => Some(fleetmesh_protocol::Bid::open(&bid).unwrap()),
            _ => None,
        })
        .expect("a bid on a batch it takes");
    assert_eq!(bid.price, 8, "2 per input, 4 inputs");
    let mut none = engine_with(4, |c| c.max_batch = 0);
    assert!(sends(&gossip(&mut none, T0 + 2, Topic::Tasks, data)).is_empty(), "max_batch 0 takes no batch");
    let spec = r.requester.get(&id).unwrap().spec_env.clone();
    let award = Award {
        v: WIRE_VERSION,
        task_id: id,
        round: 0,
        bid_root: None,
        bid_count: 1,
        winners: vec![w.public()],
        result_deadline_ms: T0 + 5_000,
        select_ppm: None,
        invited: vec![],
        offer: true,
    }
    .sign(&identity(1));
    let request = TaskRequest::Award { spec, award, input: four.concat() };
    let a = w.handle(T0 + 3, Input::Request { reply: 1, from: r.public(), request });
    assert_eq!(reply(&a), TaskResponse::Refused(Refusal::NotAWinner), "its offer does not cover it");
    // Submits: a batch that does not split evenly, of 0, of more than 256.
    for (batch, len, says) in [(3u16, 8usize, "do not split"), (0, 8, "1 to 256"), (257, 257, "1 to 256")] {
        let request = SubmitRequest { input: vec![1; len], batch: Some(batch), ..SubmitRequest::default() };
        let a = r.handle(T0 + 4, Input::Submit { call: 9, request, nonce: 1 });
        let err = a
            .iter()
            .find_map(|x| match x {
                Action::Submitted { result: Err(e), .. } => Some(e.to_string()),
                _ => None,
            })
            .expect("refused");
        assert!(err.contains(says), "{batch}: {err}");
    }
    // Where the requester knows the model's input size, each input must fit it.
    let mut r = engine_with(1, |c| {
        c.model_inputs.insert(model(), 4);
    });
    let request = SubmitRequest { input: vec![1; 12], batch: Some(2), ..SubmitRequest::default() };
    let a = r.handle(T0, Input::Submit { call: 9, request, nonce: 1 });
    assert!(a.iter().any(
        |x| matches!(x, Action::Submitted { result: Err(e), .. } if e.to_string().contains("each of 2"))
    ));
}

/// Operator `op`'s certificate for engine `i`'s key, valid for an hour from T0.
fn cert(op: u64, i: u64) -> SignedEnvelope {
    fleetmesh_protocol::OperatorCert {
        v: WIRE_VERSION,
        vehicle: identity(i).public(),
        issued_ms: T0,
        not_after_ms: T0 + 3_600_000,
    }
    .sign(&identity(op))
}

/// Offering workers `ids` with their operators' certificates (`op_of(i)`), heard by `r`.
fn hear_certified_offers(r: &mut Engine, ids: &[u64], op_of: impl Fn(u64) -> Option<u64>) -> Vec<Engine> {
    ids.iter()
        .map(|&i| {
            let (w, data) = offering(i, T0, |c| c.operator_cert = op_of(i).map(|op| cert(op, i)));
            r.handle(T0, Input::Connected(w.public()));
            assert_eq!(verdict(&gossip(r, T0, Topic::Presence, data)), Verdict::Accept);
            w
        })
        .collect()
}

/// Market v2, operators: a fleet operator's certificate, shown in a vehicle's advert, ties
/// the vehicle to the operator; a task gets at most one worker of any operator (a fleet with
/// one bug, or one owner, is one vote), whatever their tickets.
#[test]
fn operators_a_task_gets_at_most_one_worker_of_an_operator() {
    // Workers 2 to 5 belong to operator 90, 6 to operator 91, 7 to none.
    let op_of = |i: u64| match i {
        2..=5 => Some(90),
        6 => Some(91),
        _ => None,
    };
    for nonce_time in 0..8u64 {
        let mut r = engine_with(1, |c| c.trust.enabled = false);
        let _workers = hear_certified_offers(&mut r, &[2, 3, 4, 5, 6, 7], op_of);
        let request = SubmitRequest {
            input: vec![nonce_time as u8; 8],
            redundancy: Some(3),
            ..SubmitRequest::default()
        };
        let a = r.handle(T0 + 5 + nonce_time, Input::Submit { call: 1, request, nonce: nonce_time });
        let winners: Vec<PublicKey> = awards(&a).into_iter().map(|(w, _, _)| w).collect();
        assert_eq!(winners.len(), 3, "three operators (or none) to choose from: {a:?}");
        let of_90 = winners.iter().filter(|w| (2..=5).any(|i| identity(i).public() == **w)).count();
        assert_eq!(of_90, 1, "one worker of operator 90, not more: {winners:?}");
        // Its standby holds none of operator 90's other vehicles either.
        let id = a.iter().find_map(|x| match x {
            Action::Submitted { result: Ok(id), .. } => Some(*id),
            _ => None,
        });
        let t = r.requester.get(&id.unwrap()).unwrap();
        assert!(
            t.standby.iter().all(|(w, _)| !(2..=5).any(|i| identity(i).public() == *w)),
            "{:?}",
            t.standby
        );
    }
}

/// Market v2, operators: a closed mesh (`[trust] closed`) takes only vehicles its listed
/// operators certify; a certificate for another key, an expired one, one from an unlisted
/// operator, or none, is not admitted.
#[test]
fn operators_a_closed_mesh_admits_only_its_operators_vehicles() {
    let op90 = identity(90).public().to_string();
    let mut r = engine_with(1, |c| {
        c.trust.enabled = false;
        c.trust.closed = true;
        c.trust.operators = vec![op90];
    });
    // 2: operator 90 (listed). 3: operator 91 (not listed). 4: none. 5: a certificate of
    // operator 90 for another key (worker 2's). 6: operator 90, expired.
    for (i, c) in [
        (2u64, Some(cert(90, 2))),
        (3, Some(cert(91, 3))),
        (4, None),
        (5, Some(cert(90, 2))),
        (
            6,
            Some(
                fleetmesh_protocol::OperatorCert {
                    v: WIRE_VERSION,
                    vehicle: identity(6).public(),
                    issued_ms: 0,
                    not_after_ms: T0 - 1,
                }
                .sign(&identity(90)),
            ),
        ),
    ] {
        let (w, data) = offering(i, T0, |cfg| cfg.operator_cert = c);
        r.handle(T0, Input::Connected(w.public()));
        assert_eq!(verdict(&gossip(&mut r, T0, Topic::Presence, data)), Verdict::Accept, "the advert counts");
    }
    for n in 0..6u64 {
        let request =
            SubmitRequest { input: vec![n as u8; 8], redundancy: Some(1), ..SubmitRequest::default() };
        let a = r.handle(T0 + 5 + n, Input::Submit { call: 1, request, nonce: n });
        let winners: Vec<PublicKey> = awards(&a).into_iter().map(|(w, _, _)| w).collect();
        assert_eq!(winners, vec![identity(2).public()], "only operator 90's vehicle: {a:?}");
    }
    // Without a listed operator's vehicle in reach, nothing is awarded on offers.
    let mut r2 = engine_with(1, |c| {
        c.trust.enabled = false;
        c.trust.closed = true;
        c.trust.operators = vec![identity(92).public().to_string()];
    });
    let _w = hear_certified_offers(&mut r2, &[2, 3], |i| Some(88 + i));
    let (_, a) = submit(&mut r2, T0 + 5, &[1; 8]);
    assert!(awards(&a).is_empty(), "{a:?}");
}

/// Market v2, operators: a worker counts for the operator it had when awarded, even after it
/// re-advertises without its certificate: a later round does not add another vehicle of
/// that operator to the task (found by the review).
#[test]
fn operators_a_worker_counts_for_its_operator_after_it_drops_its_certificate() {
    let mut r = engine_with(1, |c| c.trust.enabled = false);
    // A (2) of operator 90 and C (3) of none offer; k = 2 takes both.
    let _offering = hear_certified_offers(&mut r, &[2, 3], |i| (i == 2).then_some(90));
    let request = SubmitRequest { input: vec![5; 8], redundancy: Some(2), ..SubmitRequest::default() };
    let a = r.handle(T0 + 5, Input::Submit { call: 1, request, nonce: 1 });
    let sent = sends(&a);
    let awarded: Vec<PublicKey> =
        sent.iter().filter(|(_, o, _)| matches!(o, Outgoing::Award { .. })).map(|s| s.0).collect();
    assert_eq!(awarded.len(), 2, "{a:?}");
    // A re-advertises, now without its certificate.
    let (_, data) = offering(2, T0 + 1_000, |_| {});
    assert_eq!(verdict(&gossip(&mut r, T0 + 1_000, Topic::Presence, data)), Verdict::Accept);
    // C refuses (busy): no standby, so a round is announced.
    let (_, _, tag) = sent.iter().find(|(w, _, _)| *w == identity(3).public()).unwrap().clone();
    let busy = Ok(TaskResponse::Refused(Refusal::NoCapacity));
    let a = r.handle(T0 + 1_001, Input::Response { tag, peer: identity(3).public(), result: busy });
    let (data, task, round) = announcement(&a);
    r.handle(T0 + 1_001, Input::Published { task, round, ok: true });
    // B (4) of operator 90 hears it and bids.
    let bidders = hear_certified_offers(&mut r, &[4], |_| Some(90));
    let mut winners = Vec::new();
    for mut w in bidders {
        let heard = gossip(&mut w, T0 + 1_002, Topic::Tasks, data.clone());
        let bid = sends(&heard)
            .into_iter()
            .find_map(|(_, o, _)| match o {
                Outgoing::Request(TaskRequest::Bid { bid }) => Some(bid),
                _ => None,
            })
            .expect("a bid");
        let req = Input::Request { reply: 9, from: w.public(), request: TaskRequest::Bid { bid } };
        winners.extend(awarded_to(&r.handle(T0 + 1_003, req)));
    }
    // The round closes early (every advertising holder bid) or at its window (A still
    // working: its result is due at T0 + 10 s).
    winners.extend(awarded_to(&r.handle(T0 + 2_100, Input::Tick)));
    assert!(winners.is_empty(), "B is of A's operator: {winners:?}");
}

/// Market v2, operators (review): a vehicle given up on (it disconnected) and replaced by
/// another vehicle of its operator cannot come back with a result: the operator would have
/// two votes in the task.
#[test]
fn operators_a_replaced_vehicle_of_the_same_operator_cannot_return_late() {
    let mut r = engine_with(1, |c| c.trust.enabled = false);
    let _a = hear_certified_offers(&mut r, &[2], |_| Some(90));
    let (id, a) = submit(&mut r, T0 + 5, &[5; 8]);
    assert_eq!(awarded_to(&a), vec![identity(2).public()]);
    // A disconnects: given up on; a round is announced (no standby).
    let a = r.handle(T0 + 1_000, Input::Disconnected(identity(2).public()));
    let (data, task, round) = announcement(&a);
    r.handle(T0 + 1_000, Input::Published { task, round, ok: true });
    // B (3), of the same operator, bids and wins.
    let mut b = hear_certified_offers(&mut r, &[3], |_| Some(90)).remove(0);
    let bid = sends(&gossip(&mut b, T0 + 1_002, Topic::Tasks, data))
        .into_iter()
        .find_map(|(_, o, _)| match o {
            Outgoing::Request(TaskRequest::Bid { bid }) => Some(bid),
            _ => None,
        })
        .expect("a bid");
    let mut winners = awarded_to(&r.handle(
        T0 + 1_003,
        Input::Request { reply: 9, from: b.public(), request: TaskRequest::Bid { bid } },
    ));
    winners.extend(awarded_to(&r.handle(T0 + 2_100, Input::Tick)));
    assert_eq!(winners, vec![identity(3).public()]);
    // A is back with a result: refused, B holds operator 90's place.
    r.handle(T0 + 2_200, Input::Connected(identity(2).public()));
    let out = [9u8; 4];
    assert_eq!(
        return_result(&mut r, T0 + 2_300, id, 2, &out),
        TaskResponse::Rejected(RejectReason::NotAwarded)
    );
    // B's result verifies the task.
    assert!(matches!(return_result(&mut r, T0 + 2_400, id, 3, &out), TaskResponse::Receipt(_)));
    assert_eq!(r.requester.get(&id).unwrap().phase, fleetmesh_api::Phase::Verified);
}

/// An f32 output of `v`, canonically encoded.
fn f32_output(v: &[f32]) -> Vec<u8> {
    fleetmesh_protocol::output::ModelOutput {
        dtype: "f32".into(),
        shape: vec![v.len() as u64],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        argmax: None,
    }
    .to_bytes()
}

/// Market v2, float tolerance: with a tolerance in the spec, two workers whose f32 outputs
/// differ by less than it agree (the task verifies, each receipt names what its worker
/// signed); outputs further apart disagree; without a tolerance, any difference does.
#[test]
fn tolerance_float_outputs_agree_within_the_specs_tolerance_only() {
    let a = f32_output(&[0.5, 1.0, -2.0]);
    let near = f32_output(&[0.5004, 1.0, -2.0]);
    let far = f32_output(&[0.51, 1.0, -2.0]);
    for (tolerance, second, verifies) in [
        (Some(1_000), &near, true),
        (Some(1_000), &far, false),
        (None, &near, false),
        (Some(0), &near, false),
    ] {
        let mut r = engine_with(1, |c| c.trust.enabled = false);
        let _workers = hear_offers(&mut r, 2..6);
        let request =
            SubmitRequest { input: vec![1; 8], redundancy: Some(2), tolerance, ..SubmitRequest::default() };
        let actions = r.handle(T0 + 5, Input::Submit { call: 1, request, nonce: 3 });
        let id = actions
            .iter()
            .find_map(|x| match x {
                Action::Submitted { result: Ok(id), .. } => Some(*id),
                _ => None,
            })
            .unwrap();
        let winners: Vec<u64> = awards(&actions)
            .into_iter()
            .map(|(w, _, _)| (2..6).find(|i| identity(*i).public() == w).unwrap())
            .collect();
        assert_eq!(winners.len(), 2);
        assert_eq!(return_result(&mut r, T0 + 6, id, winners[0], &a), TaskResponse::Pending);
        let answer = return_result(&mut r, T0 + 7, id, winners[1], second);
        let t = r.requester.get(&id).unwrap();
        if verifies {
            assert_eq!(t.phase, fleetmesh_api::Phase::Verified, "{tolerance:?}");
            assert_eq!(t.view().verified_by.len(), 2);
            let TaskResponse::Receipt(receipt) = answer else { panic!("{answer:?}") };
            let receipt = fleetmesh_protocol::Receipt::open(&receipt).unwrap();
            assert_eq!(receipt.output_digest, fleetmesh_crypto::OutputDigest::of(second), "its own output");
            // The verified output shown is the first of the agreeing ones.
            assert_eq!(t.view().output_digest, Some(fleetmesh_crypto::OutputDigest::of(&a).to_string()));
        } else {
            assert_ne!(t.phase, fleetmesh_api::Phase::Verified, "{tolerance:?} {answer:?}");
        }
    }
}

/// The state of a parked vehicle on battery at 80 %, leaving at `departure_ms` if given.
fn parked(departure_ms: Option<u64>) -> vehicle::VehicleState {
    vehicle::VehicleState {
        parked: true,
        charging: false,
        soc_pct: Some(80.0),
        departure_ms,
        ..Default::default()
    }
}

/// Issue 11: a vehicle that starts driving stops the job it runs, hands it back with a signed
/// release, and the requester awards the task to a standing-by worker at once (not after the
/// 10 s result deadline). The stopped run's output is dropped and its slot freed.
#[test]
fn vehicles_driving_hands_jobs_back_and_the_requester_reawards_at_once() {
    let mut r = engine_with(1, |c| c.trust.enabled = false);
    let mut workers = hear_offers(&mut r, 2..5);
    let (id, actions) = submit(&mut r, T0 + 5, &[3; 8]);
    let (to, spec, award) = awards(&actions)[0].clone();
    let w = workers.iter_mut().find(|w| w.public() == to).unwrap();
    w.handle(T0 + 5, Input::Vehicle(Ok(parked(None))));
    let request = TaskRequest::Award { spec, award, input: vec![3; 8] };
    let a = w.handle(T0 + 6, Input::Request { reply: 1, from: r.public(), request });
    assert_eq!(reply(&a), TaskResponse::Ack);
    assert!(a.iter().any(|a| matches!(a, Action::Execute { task, .. } if *task == id)));

    let a = w.handle(T0 + 7, Input::Vehicle(Ok(vehicle::VehicleState { parked: false, ..parked(None) })));
    assert!(a.iter().any(|a| matches!(a, Action::Stop { task } if *task == id)), "{a:?}");
    assert!(a.iter().any(|a| matches!(a, Action::Count(Metric::JobsReleased))));
    let release = sends(&a)
        .into_iter()
        .find_map(|(peer, o, _)| match o {
            Outgoing::Request(TaskRequest::Unable { report }) if peer == r.public() => Some(report),
            _ => None,
        })
        .expect("a signed release to the requester");
    let u = fleetmesh_protocol::Unable::open(&release).unwrap();
    assert!(
        matches!(&u.reason, fleetmesh_protocol::UnableReason::Released { reason } if reason.contains("driving"))
    );
    assert!(!w.availability().serving() && w.availability().driving);

    // The requester awards another worker in the same step.
    let a = r.handle(
        T0 + 8,
        Input::Request { reply: 2, from: to, request: TaskRequest::Unable { report: release } },
    );
    assert_eq!(reply(&a), TaskResponse::Ack);
    let next = awarded_to(&a);
    assert_eq!(next.len(), 1, "{a:?}");
    assert_ne!(next[0], to);
    assert!(a.iter().any(|a| matches!(a, Action::Count(Metric::TasksReleased))));
    let t = r.requester.get(&id).unwrap();
    assert!(t
        .assignments
        .iter()
        .any(|a| a.worker == to && matches!(a.status, requester::AssignStatus::Refused(_))));
    assert_eq!(t.counted(), 1, "a release is a refusal, not a failure");

    // The stopped run ends: nothing is sent, and the slot is free again.
    let exec = ExecOutput { output: vec![1], run_time_us: 5, runtime: Default::default() };
    let a = w.handle(T0 + 9, Input::Executed { task: id, result: Ok(exec) });
    assert!(sends(&a).is_empty(), "{a:?}");
    assert_eq!(w.worker.free_slots(2), 2);
    assert!(matches!(w.worker.get(&id).unwrap().state, worker::JobState::Abandoned(_)));
    // A release from a worker never awarded the task changes nothing.
    let stranger = fleetmesh_protocol::Unable {
        v: WIRE_VERSION,
        task_id: id,
        round: 0,
        reason: fleetmesh_protocol::UnableReason::Released { reason: "x".into() },
    }
    .sign(&identity(9));
    let a = r.handle(
        T0 + 10,
        Input::Request {
            reply: 3,
            from: identity(9).public(),
            request: TaskRequest::Unable { report: stranger },
        },
    );
    assert!(awarded_to(&a).is_empty());
}

/// Issue 11: a vehicle its owner's policy stops (a low battery not charging) sends an advert
/// with no models and no offer, does not bid, refuses awards; plugged in, it serves again.
#[test]
fn vehicles_a_vehicle_the_policy_stops_neither_offers_nor_bids_nor_takes_awards() {
    let (mut r, mut w) = (engine(1), engine_with(2, |c| c.presence_interval_ms = 5_000));
    let low = vehicle::VehicleState { soc_pct: Some(12.0), ..parked(None) };
    w.handle(T0, Input::Vehicle(Ok(low.clone())));
    assert_eq!(w.availability().refusals[0].label(), "battery_low");
    let (_, data, _) =
        published(&w.handle(T0, Input::Tick)).into_iter().find(|p| p.0 == Topic::Presence).unwrap();
    let p = Presence::open_bytes(&data, 1 << 16).unwrap().1;
    assert!(p.models.is_empty() && p.offer_until_ms.is_none(), "{p:?}");

    let (_, actions) = submit(&mut r, T0, &[2; 8]);
    let (data, task, round) = announcement(&actions);
    r.handle(T0, Input::Published { task, round, ok: true });
    assert!(sends(&gossip(&mut w, T0 + 1, Topic::Tasks, data.clone())).is_empty(), "no bid");

    w.handle(T0 + 2, Input::Vehicle(Ok(vehicle::VehicleState { charging: true, ..low })));
    assert!(w.availability().serving());
    let fresh = Announcement::open_bytes(&data, 1 << 16).unwrap().1;
    let again = Announcement { round: fresh.round + 1, ..fresh }.sign(&identity(1));
    let bids = sends(&gossip(&mut w, T0 + 3, Topic::Tasks, fleetmesh_protocol::encode(&again)));
    assert_eq!(bids.len(), 1, "bids again once charging");
    // A broken state source stops it again, saying why.
    w.handle(T0 + 4, Input::Vehicle(Err("cannot read /run/vehicle.json".into())));
    assert_eq!(w.availability().refusals[0].label(), "state_unknown");
    // An invalid state from the driver counts as unknown too.
    w.handle(T0 + 5, Input::Vehicle(Ok(vehicle::VehicleState { soc_pct: Some(300.0), ..parked(None) })));
    assert!(!w.availability().serving());
}

/// Issue 11: a vehicle never takes a task whose execution timeout passes its departure: it
/// does not bid, its offer shows the departure (to the minute) and does not cover such a
/// task, it refuses such an award, and a requester refuses a bid that says so.
#[test]
fn vehicles_a_task_that_would_end_after_the_departure_is_not_taken() {
    // Tasks have a 10 s execution timeout; this vehicle leaves in 5 s (shown rounded down).
    let leaving = parked(Some(T0 + 65_000));
    let (mut w, _) = offering(2, T0 + 50_000, |_| {});
    w.handle(T0 + 50_000, Input::Vehicle(Ok(leaving)));
    assert_eq!(w.availability().depart_ms, Some(T0 + 60_000));
    let (_, data, _) =
        published(&w.handle(T0 + 51_000, Input::Tick)).into_iter().find(|p| p.0 == Topic::Presence).unwrap();
    let p = Presence::open_bytes(&data, 1 << 16).unwrap().1;
    assert_eq!(p.depart_ms, Some(T0 + 60_000));
    assert_eq!(p.offer_until_ms, Some(T0 + 60_000), "the offer ends at the departure");

    let mut r = engine_with(1, |c| c.trust.enabled = false);
    r.handle(T0, Input::Connected(w.public()));
    assert_eq!(verdict(&gossip(&mut r, T0 + 51_000, Topic::Presence, data)), Verdict::Accept);
    let (id, actions) = submit(&mut r, T0 + 51_000, &[3; 8]);
    assert!(awards(&actions).is_empty(), "the offer does not cover a task ending after the departure");
    let (ann, task, round) = announcement(&actions);
    r.handle(T0 + 51_000, Input::Published { task, round, ok: true });
    assert!(sends(&gossip(&mut w, T0 + 51_001, Topic::Tasks, ann)).is_empty(), "no bid");
    // A bid that says it leaves too soon is refused.
    let bid = fleetmesh_protocol::Bid {
        v: WIRE_VERSION,
        task_id: id,
        round,
        price: 1,
        promised_ms: 100,
        queue_depth: 0,
        free_slots: 1,
        depart_ms: Some(T0 + 60_000),
    }
    .sign(&identity(3));
    r.handle(T0, Input::Connected(identity(3).public()));
    let a = r.handle(
        T0 + 51_002,
        Input::Request { reply: 1, from: identity(3).public(), request: TaskRequest::Bid { bid } },
    );
    assert!(matches!(reply(&a), TaskResponse::Refused(Refusal::BidDeclined(_))), "{a:?}");
    // With a departure far enough away, the same vehicle bids.
    w.handle(T0 + 51_003, Input::Vehicle(Ok(parked(Some(T0 + 600_000)))));
    let fresh = r.requester.get(&id).unwrap().spec_env.clone();
    let again = Announcement {
        v: WIRE_VERSION,
        task_id: id,
        round: round + 1,
        model: model(),
        max_price: 100,
        bid_deadline_ms: T0 + 53_000,
        spec: Some(fresh),
        select_ppm: None,
        invited: Vec::new(),
    }
    .sign(&identity(1));
    let bids = sends(&gossip(&mut w, T0 + 51_004, Topic::Tasks, fleetmesh_protocol::encode(&again)));
    assert_eq!(bids.len(), 1);
    let Outgoing::Request(TaskRequest::Bid { bid }) = &bids[0].1 else { panic!("a bid") };
    let b = fleetmesh_protocol::Bid::open(bid).unwrap();
    assert_eq!(b.depart_ms, Some(T0 + 600_000), "the bid signs the departure");
}

/// Issue 11: the owner's power budget caps the running slots; a policy change that stops
/// serving hands back the queued jobs but lets the running one finish.
#[test]
fn vehicles_the_power_budget_caps_slots_and_a_stop_keeps_the_running_job() {
    let mut w = engine_with(2, |c| {
        c.slots = 2;
        c.owner.power_budget_w = Some(70.0);
        c.owner.device_power_w = 60.0;
    });
    assert_eq!(w.availability().slots, 1);
    let mut r = engine_with(1, |c| c.trust.enabled = false);
    let mut executing = Vec::new();
    let mut ids = Vec::new();
    for n in 0..2u8 {
        let (_, actions) = submit(&mut r, T0 + u64::from(n), &[n; 8]);
        let (data, task, round) = announcement(&actions);
        r.handle(T0, Input::Published { task, round, ok: true });
        let bid = sends(&gossip(&mut w, T0 + 1, Topic::Tasks, data));
        assert_eq!(bid.len(), 1);
        let Outgoing::Request(TaskRequest::Bid { bid }) = bid[0].1.clone() else { panic!() };
        let a = r
            .handle(T0 + 2, Input::Request { reply: 1, from: w.public(), request: TaskRequest::Bid { bid } });
        let a = [a, r.handle(T0 + 1_100, Input::Tick)].concat();
        let (_, spec, award) = awards(&a).into_iter().next().expect("awarded");
        let a = w.handle(
            T0 + 1_200,
            Input::Request {
                reply: 2,
                from: r.public(),
                request: TaskRequest::Award { spec, award, input: vec![n; 8] },
            },
        );
        assert_eq!(reply(&a), TaskResponse::Ack);
        executing.extend(a.iter().filter(|a| matches!(a, Action::Execute { .. })).cloned());
        ids.push(task);
    }
    assert_eq!(executing.len(), 1, "one slot under a 70 W budget at 60 W a task");
    // Too hot: the queued job goes back, the running one finishes and is delivered.
    let a = w.handle(
        T0 + 1_300,
        Input::Vehicle(Ok(vehicle::VehicleState { thermal_headroom_c: Some(1.0), ..parked(None) })),
    );
    let released: Vec<TaskId> = sends(&a)
        .into_iter()
        .filter_map(|(_, o, _)| match o {
            Outgoing::Request(TaskRequest::Unable { report }) => {
                Some(fleetmesh_protocol::Unable::open(&report).unwrap().task_id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(released, vec![ids[1]], "only the queued job");
    assert!(!a.iter().any(|a| matches!(a, Action::Stop { .. })));
    let exec = ExecOutput { output: vec![1], run_time_us: 5, runtime: Default::default() };
    let a = w.handle(T0 + 1_400, Input::Executed { task: ids[0], result: Ok(exec) });
    assert!(
        sends(&a).iter().any(|(_, o, _)| matches!(o, Outgoing::Request(TaskRequest::Result { .. }))),
        "{a:?}"
    );
}

/// Issue 11: a receipt adds the job to its day in the owner's ledger, with the energy the
/// worker signed in its result, in the same write as the receipted job; a receipt sent again
/// adds nothing.
#[test]
fn ledger_a_receipt_counts_once_with_the_energy_in_the_signed_result() {
    let (mut r, mut w) = (
        engine(1),
        engine_with(2, |c| {
            c.owner.device_power_w = 100.0;
            c.price_floor = 7;
        }),
    );
    let id = awarded(&mut r, &mut w, T0, &[4; 8]);
    // Review: a receipt before any result (the job still queued) is refused and earns nothing,
    // and a receipt naming more than the worker asked credits what it asked.
    let early = |price: u64| {
        fleetmesh_protocol::Receipt {
            v: WIRE_VERSION,
            task_id: id,
            worker: identity(2).public(),
            output_digest: fleetmesh_crypto::OutputDigest::of(b"x"),
            price,
            accepted_ms: T0,
            energy_mj: None,
        }
        .sign(&identity(1))
    };
    let a = w.handle(
        T0 + 1,
        Input::Request {
            reply: 4,
            from: r.public(),
            request: TaskRequest::Receipt { receipt: early(u64::MAX) },
        },
    );
    assert!(matches!(reply(&a), TaskResponse::Refused(Refusal::Invalid(_))), "{a:?}");
    assert_eq!(w.worker.ledger.total(), ledger::DayTotals::default());
    let exec = ExecOutput { output: vec![7; 4], run_time_us: 2_000, runtime: Default::default() };
    let a = w.handle(T0 + 2_000, Input::Executed { task: id, result: Ok(exec) });
    let (peer, result, tag) = sends(&a)
        .into_iter()
        .find(|(_, o, _)| matches!(o, Outgoing::Request(TaskRequest::Result { .. })))
        .expect("the result");
    let Outgoing::Request(TaskRequest::Result { header, .. }) = &result else { unreachable!() };
    let h = fleetmesh_protocol::ResultHeader::open(header).unwrap();
    assert_eq!(h.energy_mj, Some(200), "2 ms at 100 W is 200 mJ, signed");
    let receipt = fleetmesh_protocol::Receipt {
        v: WIRE_VERSION,
        task_id: id,
        worker: w.public(),
        output_digest: h.output_digest,
        price: 1_000,
        accepted_ms: T0 + 2_001,
        energy_mj: h.energy_mj,
    }
    .sign(&identity(1));
    let a = w.handle(
        T0 + 2_002,
        Input::Response { tag, peer, result: Ok(TaskResponse::Receipt(receipt.clone())) },
    );
    let persisted: Vec<&StoreOp> = a
        .iter()
        .filter_map(|x| match x {
            Action::Persist(ops) => Some(ops),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(persisted.iter().any(|o| o.table == Table::Jobs), "{persisted:?}");
    assert!(persisted
        .iter()
        .any(|o| o.table == Table::Ledger && o.key == ledger::key_of(ledger::day_of(T0 + 2_002))));
    let want = ledger::DayTotals { tasks: 1, credits: 7, energy_mj: 200 };
    assert_eq!(w.worker.ledger.total(), want);
    // The same receipt again, as a request: nothing more.
    let a = w.handle(
        T0 + 3_000,
        Input::Request { reply: 5, from: r.public(), request: TaskRequest::Receipt { receipt } },
    );
    assert_eq!(reply(&a), TaskResponse::Ack);
    assert_eq!(w.worker.ledger.total(), want);
}

/// Issue 11 (review): a worker restarted while its vehicle drives (or before its state is
/// known) starts none of the jobs it held: it hands them back at once.
#[test]
fn vehicles_a_worker_restarted_while_driving_hands_its_jobs_back() {
    let (mut r, mut w) = (engine(1), engine(2));
    let id = awarded(&mut r, &mut w, T0, &[6; 8]);
    let mut job = w.worker.get(&id).unwrap().clone();
    job.running = false;
    for state in
        [Ok(vehicle::VehicleState { parked: false, ..parked(None) }), Err("no state sent yet".to_owned())]
    {
        let mut again = engine(2);
        again.handle(T0 + 10, Input::Vehicle(state.clone()));
        let a = again.restore(T0 + 10, Vec::new(), vec![(id, job.clone())]);
        assert!(!a.iter().any(|x| matches!(x, Action::Execute { .. })), "{state:?}: {a:?}");
        let released = sends(&a).into_iter().any(|(to, o, _)| {
            to == r.public()
                && matches!(o, Outgoing::Request(TaskRequest::Unable { report })
                    if matches!(fleetmesh_protocol::Unable::open(&report).unwrap().reason,
                        fleetmesh_protocol::UnableReason::Released { .. }))
        });
        assert!(released, "{state:?}: {a:?}");
    }
}
