//! The worker's half of the task lifecycle: bid, accept an award, execute, return the result.
//!
//! ```text
//!  announcement / DHT scan ──► spec checked ──► signed bid (remembered: task, round, requester)
//!  award (+ input) checked against that bid, persisted, acknowledged ──► Queued ──► Done
//!  Done ──(result sent)──► Receipted | Pending (receipt follows) | Rejected (reason kept)
//! ```
//!
//! An award is taken only for a (task, round) this node bid on, from the requester it bid
//! to, with a result deadline clamped to what the spec allows; a requester may hold only so
//! many unfinished jobs here. A job is persisted before the award is acknowledged, and its
//! result before it is sent; the input is deleted once the result is durable. On restart a
//! `Queued` job runs (it never finished), a `Done` or `Pending` job is re-sent and never run
//! again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fleetmesh_crypto::{ModelId, PublicKey, SignedEnvelope, TaskId};
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{
    ids, task_id_of, Announcement, Award, Bid, OpenTasks, Receipt, RejectReason, ResultHeader, Signed,
    TaskSpec, Unable, UnableReason, WIRE_VERSION,
};
use serde::{Deserialize, Serialize};

use super::bounded::BoundedSet;
use super::ledger;
use super::{
    record, Action, Ctx, EngineConfig, ExecOutput, Lookup, Metric, Outgoing, SendFailure, SendTag, StoreOp,
    Table,
};
use fleetmesh_trace::timeline::event;
use fleetmesh_trace::TaskRecord;

/// How long past its result deadline a worker keeps trying to deliver a result.
pub const DELIVERY_GRACE_MS: u64 = 120_000;
/// How much later than the spec's execution timeout a requester may set a result deadline
/// (network and queueing slack); anything later is clamped.
pub const AWARD_SLACK_MS: u64 = 10_000;
/// (task, round) bids remembered, to match awards against. When full, the round whose
/// bidding closed longest ago is forgotten; when every round is still open, this node does
/// not bid.
pub const MAX_REMEMBERED_BIDS: usize = 8192;
/// Rounds still open for bids that this node bid on, per requester: one requester cannot
/// take the whole memory with announcements.
pub const MAX_BIDS_PER_REQUESTER: u32 = 64;
/// However far a round's announced close lies, it counts as open for at most this long, ms.
const MAX_OPEN_ROUND_MS: u64 = 60_000;
/// How long a bid is remembered (and so how late a standby award is still taken), ms.
pub const BID_MEMORY_MS: u64 = 10 * 60 * 1000;
/// Longest execution timeout this node accepts in a spec, ms.
pub const MAX_EXEC_TIMEOUT_MS: u32 = 60 * 60 * 1000;
/// Furthest task deadline this node accepts, from now, ms (a week, plus clock skew).
pub const MAX_TASK_HORIZON_MS: u64 = 7 * 24 * 3600 * 1000 + 60_000;
/// Finished jobs that left memory, remembered so a replayed award is not run again.
pub const MAX_DONE_REMEMBERED: usize = 64 * 1024;
/// DHT lookups of task specs at once.
pub const MAX_SPEC_LOOKUPS: usize = 64;
/// DHT lookups of open-tasks records at once.
pub const MAX_OPEN_LOOKUPS: usize = 256;
/// Failed executions of one model in a row before this node stops bidding on it until a
/// self-test passes.
pub const MAX_MODEL_FAILURES: u32 = 3;
/// First wait before a failed self-test is tried again; it doubles up to the maximum.
pub const SELF_TEST_RETRY_MS: u64 = 60_000;
const MAX_SELF_TEST_RETRY_MS: u64 = 3_600_000;
/// (task, round) pairs this node told a requester it cannot run, remembered to say it once.
const MAX_UNABLE_REMEMBERED: usize = 4096;
/// Providers asked per model and scan.
const MAX_PROVIDERS_PER_SCAN: usize = 64;

/// Where a job stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobState {
    /// Accepted; waiting for a slot or running.
    Queued,
    /// Executed; the result is being delivered.
    Done {
        /// The signed result header.
        header: SignedEnvelope,
        /// The output.
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
    /// Delivered; the requester holds it until a quorum agrees.
    Pending {
        /// The signed result header.
        header: SignedEnvelope,
        /// The output.
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
    /// The requester's receipt.
    Receipted(SignedEnvelope),
    /// The requester refused the result.
    Rejected(RejectReason),
    /// Given up, and why.
    Abandoned(String),
}

/// A task this node was awarded, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The spec.
    pub spec: TaskSpec,
    /// Who awarded it.
    pub requester: PublicKey,
    /// The result is due by this instant (clamped, Unix ms).
    pub result_deadline_ms: u64,
    /// Where it stands.
    pub state: JobState,
    /// When its result was ready (Unix ms; 0 before).
    #[serde(default)]
    pub done_ms: u64,
    /// Executing now.
    #[serde(skip)]
    pub running: bool,
    /// A result delivery is waiting for its answer.
    #[serde(skip)]
    pub in_flight: bool,
    /// Deliveries tried.
    #[serde(skip)]
    pub attempts: u32,
    /// Next delivery not before (Unix ms).
    #[serde(skip)]
    pub next_send_ms: u64,
    /// The energy estimate of its run, millijoules (what its result header says).
    #[serde(default)]
    pub energy_mj: u64,
}

impl Job {
    /// Nothing more will happen to this job.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, JobState::Receipted(_) | JobState::Rejected(_) | JobState::Abandoned(_))
    }

    fn op(&self, id: &TaskId) -> StoreOp {
        StoreOp { table: Table::Jobs, key: *id, value: Some(fleetmesh_protocol::encode(self)) }
    }
}

/// Executed jobs whose results are still being delivered (or wait for the requester's
/// receipt) a worker holds at most. They hold no slot, so they do not stop it bidding; when
/// one more finishes at this bound, the delivery waiting longest is given up (see
/// `make_room_for_delivery`).
pub const MAX_DELIVERING: usize = 1024;

/// One remembered bid.
#[derive(Debug, Clone)]
struct BidRecord {
    requester: PublicKey,
    /// When bidding on the round closes (capped), Unix ms.
    closes_ms: u64,
    /// Forgotten after this (standby awards come later than the close), Unix ms.
    until_ms: u64,
}

/// The rounds this worker bid on: an award is taken only for one of them, from the
/// requester the bid went to. Bounded in all, and per requester for rounds still open.
#[derive(Debug, Default)]
struct BidMemory {
    bids: BTreeMap<(TaskId, u32), BidRecord>,
    /// Every remembered round by its close, to find the one closed longest ago.
    by_close: BTreeSet<(u64, TaskId, u32)>,
    /// Per requester, since when it has had rounds open here (without a gap), and those
    /// rounds.
    open: BTreeMap<PublicKey, OpenRounds>,
}

#[derive(Debug)]
struct OpenRounds {
    since_ms: u64,
    rounds: BTreeSet<(u64, TaskId, u32)>,
}

impl BidMemory {
    /// Remembers a bid; false when it was remembered already or there is no room for it.
    fn remember(
        &mut self,
        key: (TaskId, u32),
        requester: PublicKey,
        closes_ms: u64,
        until_ms: u64,
        now: u64,
    ) -> bool {
        if self.bids.contains_key(&key) {
            return false;
        }
        let closes_ms = closes_ms.min(now.saturating_add(MAX_OPEN_ROUND_MS));
        let mine = self.open_rounds(&requester, now);
        if mine >= MAX_BIDS_PER_REQUESTER as usize {
            return false;
        }
        if self.bids.len() >= MAX_REMEMBERED_BIDS {
            match self.by_close.first().copied() {
                Some((closed, task, round)) if closed <= now => self.forget(&(task, round)),
                // Every remembered round may still be open: make room at the expense of the
                // requester with the most open rounds, never of one with fewer than this one
                // would have, and among equals the one here longest (first in, first out: a
                // flood of fresh keys pushes out its own older keys before a newer real
                // round, and a real round lives for its short window only).
                _ => match self.busiest(now) {
                    Some((n, key)) if n > mine.saturating_add(1) || (n > mine && mine == 0) => {
                        self.forget(&key)
                    }
                    _ => return false,
                },
            }
        }
        self.bids.insert(key, BidRecord { requester, closes_ms, until_ms });
        self.by_close.insert((closes_ms, key.0, key.1));
        self.open
            .entry(requester)
            .or_insert_with(|| OpenRounds { since_ms: now, rounds: BTreeSet::new() })
            .rounds
            .insert((closes_ms, key.0, key.1));
        true
    }

    /// The requester's rounds that may still be open (closed ones are dropped from its set).
    fn open_rounds(&mut self, requester: &PublicKey, now: u64) -> usize {
        let Some(open) = self.open.get_mut(requester) else { return 0 };
        // Rounds closed by now no longer count against the requester (their bids stay
        // remembered: standby awards come after the close).
        open.rounds = open.rounds.split_off(&(now, TaskId::from_bytes([0; 32]), 0));
        let n = open.rounds.len();
        if n == 0 {
            self.open.remove(requester);
        }
        n
    }

    /// The requester with the most rounds that may be open, how many, and its round that
    /// closes last (a flood picks long windows; real rounds close soon).
    fn busiest(&self, now: u64) -> Option<(usize, (TaskId, u32))> {
        let from = (now, TaskId::from_bytes([0; 32]), 0);
        let (_, open) = self.open.iter().max_by_key(|(pk, o)| {
            (o.rounds.range(from..).count(), std::cmp::Reverse(o.since_ms), std::cmp::Reverse(**pk))
        })?;
        let n = open.rounds.range(from..).count();
        open.rounds.last().map(|(_, task, round)| (n, (*task, *round)))
    }

    fn forget(&mut self, key: &(TaskId, u32)) {
        if let Some(b) = self.bids.remove(key) {
            self.by_close.remove(&(b.closes_ms, key.0, key.1));
            if let Some(open) = self.open.get_mut(&b.requester) {
                open.rounds.remove(&(b.closes_ms, key.0, key.1));
                if open.rounds.is_empty() {
                    self.open.remove(&b.requester);
                }
            }
        }
    }

    /// Forgets the bids whose memory ran out.
    fn expire(&mut self, now: u64) {
        let expired: Vec<(TaskId, u32)> =
            self.bids.iter().filter(|(_, b)| b.until_ms <= now).map(|(k, _)| *k).collect();
        for k in expired {
            self.forget(&k);
        }
    }
}

/// The worker role.
pub struct Worker {
    jobs: BTreeMap<TaskId, Job>,
    /// Jobs whose last write failed, and when the last retry went out (0: due); as the
    /// requester's.
    unsaved: crate::bounded::Unsaved,
    /// Finished jobs that left memory.
    done: BoundedSet<TaskId>,
    /// Rounds bid on, and to whom.
    bids: BidMemory,
    /// Spec lookups in flight: (task, round, announcer).
    spec_lookups: BTreeSet<(TaskId, u32, PublicKey)>,
    open_lookups: usize,
    provider_lookups: BTreeSet<ModelId>,
    /// Jobs executing now.
    running: u32,
    /// Queued jobs waiting for a slot, oldest first.
    queue: VecDeque<TaskId>,
    /// (task, round) pairs already answered with an `Unable` report.
    unable_sent: BoundedSet<(TaskId, u32)>,
    /// Failed executions in a row, per model.
    failures: BTreeMap<ModelId, u32>,
    /// Models not bid on until a self-test passes.
    quarantined: BTreeSet<ModelId>,
    /// The owner's ledger: what receipted jobs earned and cost, by day.
    pub ledger: crate::ledger::Ledger,
    /// Days of the ledger whose last write failed (written again on the next retry).
    ledger_unsaved: BTreeSet<u32>,
    /// Quarantined models whose self-test failed: when to test again, and the backoff.
    retest: BTreeMap<ModelId, (u64, u64)>,
    /// The last presence advert this node published: its standing offer, when it carries
    /// one ([`fleetmesh_protocol::Presence::offer_until_ms`]). Awards made on offers are taken
    /// only while it covers them.
    pub(crate) offer: Option<fleetmesh_protocol::Presence>,
    /// Bids sent, for the stats.
    pub bids_sent: u64,
    /// Jobs executed.
    pub jobs_executed: u64,
    /// Jobs receipted.
    pub jobs_receipted: u64,
    /// (test hooks) the first result this worker produced, for replay.
    #[cfg(feature = "test-hooks")]
    first_result: Option<(SignedEnvelope, Vec<u8>)>,
}

impl Worker {
    pub(crate) fn new(_config: &EngineConfig) -> Self {
        Self {
            jobs: BTreeMap::new(),
            unsaved: Default::default(),
            done: BoundedSet::new(MAX_DONE_REMEMBERED),
            bids: BidMemory::default(),
            spec_lookups: BTreeSet::new(),
            open_lookups: 0,
            provider_lookups: BTreeSet::new(),
            running: 0,
            queue: VecDeque::new(),
            unable_sent: BoundedSet::new(MAX_UNABLE_REMEMBERED),
            failures: BTreeMap::new(),
            quarantined: BTreeSet::new(),
            ledger: Default::default(),
            ledger_unsaved: BTreeSet::new(),
            retest: BTreeMap::new(),
            offer: None,
            bids_sent: 0,
            jobs_executed: 0,
            jobs_receipted: 0,
            #[cfg(feature = "test-hooks")]
            first_result: None,
        }
    }

    /// A job held in memory.
    pub fn get(&self, id: &TaskId) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// Jobs held in memory.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Jobs executing now (a job handed back keeps its slot until its run ends).
    pub fn running(&self) -> u32 {
        self.running
    }

    /// Free execution slots out of `slots` (the configured ones, capped by the owner's power
    /// budget: [`Ctx::slots`]).
    pub fn free_slots(&self, slots: u32) -> u32 {
        slots.saturating_sub(self.running)
    }

    /// Whether the queue has room for one more job (what a standing offer promises).
    pub(crate) fn has_room(&self, config: &EngineConfig) -> bool {
        self.queued() < config.max_queue as usize
    }

    fn queued(&self) -> usize {
        self.jobs.values().filter(|j| matches!(j.state, JobState::Queued)).count()
    }

    fn unfinished_from(&self, requester: &PublicKey) -> usize {
        self.jobs.values().filter(|j| j.requester == *requester && !j.is_finished()).count()
    }

    fn delivering(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Done { .. } | JobState::Pending { .. }))
            .count()
    }

    /// Room for one more job: a queue place, and below the requester's own cap. Results
    /// waiting for delivery or a receipt take no slot: a requester that never answers (or
    /// answers `Pending` until its deadline) ties up only its own share, and the backlog's
    /// bound is kept when a job finishes.
    fn has_capacity(&self, config: &EngineConfig, requester: &PublicKey) -> bool {
        self.queued() < config.max_queue as usize
            && self.unfinished_from(requester) < config.max_jobs_per_requester as usize
    }

    /// At [`MAX_DELIVERING`], gives up the delivery whose result has waited longest: a
    /// requester that takes its results (and a quorum that forms) is done in seconds, so what
    /// waits longest belongs to requesters that never answer or answer `Pending` for ever.
    fn make_room_for_delivery(&mut self, ctx: &mut Ctx<'_>) {
        if self.delivering() < MAX_DELIVERING {
            return;
        }
        let oldest = self
            .jobs
            .iter()
            .filter(|(_, j)| matches!(j.state, JobState::Done { .. } | JobState::Pending { .. }))
            .min_by_key(|(id, j)| (j.done_ms, **id))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            if let Some(j) = self.jobs.get_mut(&id) {
                tracing::warn!(task = %id, "too many results waiting for delivery: giving up the one waiting longest");
                j.state = JobState::Abandoned("too many results waiting for delivery".into());
                ctx.push(Action::Persist(vec![j.op(&id)]));
            }
        }
    }

    pub(crate) fn check_bounds(&self, config: &EngineConfig) -> Result<(), String> {
        if self.running > config.slots {
            return Err(format!("{} executions running on {} slots", self.running, config.slots));
        }
        if self.queued() > config.max_queue as usize {
            return Err(format!("{} queued jobs over the cap of {}", self.queued(), config.max_queue));
        }
        if self.spec_lookups.len() > MAX_SPEC_LOOKUPS || self.open_lookups > MAX_OPEN_LOOKUPS {
            return Err("DHT lookups over their bound".into());
        }
        if self.bids.bids.len() > MAX_REMEMBERED_BIDS
            || self.bids.open.len() > MAX_REMEMBERED_BIDS
            || self.bids.open.values().any(|o| o.rounds.len() > MAX_BIDS_PER_REQUESTER as usize)
        {
            return Err(format!("{} bids remembered", self.bids.bids.len()));
        }
        if self.delivering() > MAX_DELIVERING {
            return Err("results waiting for delivery over their bound".into());
        }
        let unfinished = self.jobs.values().filter(|j| !j.is_finished()).count();
        let finished = self.jobs.len().saturating_sub(unfinished);
        if finished > config.max_finished_in_memory.saturating_add(4096) {
            return Err(format!("{finished} finished jobs in memory"));
        }
        let mut per: BTreeMap<PublicKey, usize> = BTreeMap::new();
        for j in self.jobs.values().filter(|j| !j.is_finished()) {
            let n = per.entry(j.requester).or_default();
            *n = n.saturating_add(1);
            if *n > config.max_jobs_per_requester as usize {
                return Err(format!("requester {} holds {n} unfinished jobs", j.requester.fmt_short()));
            }
        }
        Ok(())
    }

    /// An announcement arrived (already validated): bid if this node could serve it. The spec
    /// it carried, if any, comes `opened` (the engine checked it before relaying).
    pub(crate) fn on_announcement(
        &mut self,
        ctx: &mut Ctx<'_>,
        requester: PublicKey,
        a: Announcement,
        opened: Option<TaskSpec>,
    ) {
        if requester == ctx.identity.public() {
            return;
        }
        #[cfg(feature = "test-hooks")]
        if ctx.config.ignore_task_gossip {
            return;
        }
        let me = ctx.identity.public();
        let invited = a.invited.iter().take(fleetmesh_protocol::selection::MAX_INVITED).any(|k| *k == me);
        let (price, select) = (Some(a.max_price), a.select_ppm.filter(|_| !invited));
        if !self.worth_bidding(ctx, a.task_id, a.model, a.round, a.bid_deadline_ms, price, select) {
            return;
        }
        match a.spec {
            // The spec came with the announcement: check it and bid without a DHT lookup.
            Some(spec) => self.bid_on_spec(ctx, (a.task_id, a.round), &spec, opened, a.bid_deadline_ms),
            None => self.look_up_spec(ctx, a.task_id, a.round, requester),
        }
    }

    /// Whether this node would bid on round `round` of `task`, before looking at the spec.
    #[allow(clippy::too_many_arguments)]
    fn worth_bidding(
        &self,
        ctx: &Ctx<'_>,
        task: TaskId,
        model: ModelId,
        round: u32,
        bid_deadline_ms: u64,
        max_price: Option<u64>,
        select_ppm: Option<u32>,
    ) -> bool {
        // Market v2: only a worker whose ticket the round admits bids (checked first: it is
        // one hash, and most workers of a large mesh stop here).
        select_ppm
            .is_none_or(|p| fleetmesh_protocol::selection::eligible(&task, round, &ctx.identity.public(), p))
            && ctx.config.serve
            && ctx.availability.serving()
            && !ctx.disk_low
            && bid_deadline_ms > ctx.now
            && max_price.is_none_or(|p| p >= ctx.config.price_floor)
            && ctx.models.contains(&model)
            && !self.quarantined.contains(&model)
            && !self.jobs.contains_key(&task)
            && !self.done.contains(&task)
            && !self.bids.bids.contains_key(&(task, round))
            && self.queued() < ctx.config.max_queue as usize
    }

    fn look_up_spec(&mut self, ctx: &mut Ctx<'_>, task: TaskId, round: u32, announcer: PublicKey) {
        if self.spec_lookups.len() >= MAX_SPEC_LOOKUPS || !self.spec_lookups.insert((task, round, announcer))
        {
            return;
        }
        ctx.push(Action::GetRecord {
            key: ids::task_record_key(&task),
            lookup: Lookup::Spec { task, round, announcer },
        });
    }

    /// Checks a signed spec (from the DHT or an announcement) and bids on it. `opened` is the
    /// spec when the caller already verified `env` (an announcement's, checked before relay).
    fn bid_on_spec(
        &mut self,
        ctx: &mut Ctx<'_>,
        (task, round): (TaskId, u32),
        env: &SignedEnvelope,
        opened: Option<TaskSpec>,
        bid_deadline_ms: u64,
    ) {
        let Some(spec) = opened.or_else(|| TaskSpec::open(env).ok()) else { return };
        // A batch this node does not take (malformed, or larger than it runs): no bid.
        if spec.check_batch().is_err() || spec.batch.is_some_and(|n| n > ctx.config.max_batch) {
            return;
        }
        // An input that cannot fit the model: say so, once, instead of bidding.
        if let Some(&expected) = ctx.config.model_inputs.get(&spec.model) {
            if !spec.fits(expected)
                && task_id_of(env) == task
                && env.signer != ctx.identity.public()
                && self.unable_sent.insert((task, round))
            {
                let reason = UnableReason::InputSize { expected, got: spec.item_size() };
                self.send_unable(ctx, env.signer, task, round, reason);
            }
            if !spec.fits(expected) {
                return;
            }
        }
        // Remembered long enough for a standby award, never past the task's deadline.
        let until = spec.deadline_ms.min(bid_deadline_ms.max(ctx.now).saturating_add(BID_MEMORY_MS));
        if task_id_of(env) != task
            || env.signer == ctx.identity.public()
            || spec.max_price < spec.price_for(ctx.config.price_floor)
            || spec.deadline_ms <= ctx.now
            || spec.deadline_ms > ctx.now.saturating_add(MAX_TASK_HORIZON_MS)
            || spec.exec_timeout_ms > MAX_EXEC_TIMEOUT_MS
            || !self.ends_before_departure(ctx, &spec, bid_deadline_ms.max(ctx.now))
            || !ctx.models.contains(&spec.model)
            || !self.has_capacity(ctx.config, &env.signer)
            || !self.bids.remember((task, round), env.signer, bid_deadline_ms, until, ctx.now)
        {
            return;
        }
        let queue = u32::try_from(self.queue.len()).unwrap_or(u32::MAX);
        // A promise this node can keep: its queue ahead of the task and the task's own runs
        // (n for a batch), at a conservative 50 ms each, plus 50 ms of network, capped at the
        // spec's timeout. The price is per input.
        let runs = queue.saturating_add(u32::from(spec.items()));
        let promised_ms = runs.saturating_mul(50).saturating_add(50).min(spec.exec_timeout_ms);
        let price = spec.price_for(ctx.config.price_floor);
        let bid = Bid {
            v: WIRE_VERSION,
            task_id: task,
            round,
            price,
            promised_ms,
            queue_depth: queue,
            free_slots: self.free_slots(ctx.slots()),
            depart_ms: ctx.availability.depart_ms,
        }
        .sign(ctx.identity);
        ctx.count(Metric::BidsSent);
        self.bids_sent = self.bids_sent.saturating_add(1);
        ctx.trace(TaskRecord {
            round: Some(round),
            peer: Some(env.signer.peer_id()),
            price: Some(price),
            ..record(event::BID_SENT, &task)
        });
        ctx.push(Action::Send {
            to: env.signer,
            request: Outgoing::Request(TaskRequest::Bid { bid }),
            tag: SendTag::Bid { task },
        });
    }

    /// Hands jobs back to their requesters with a signed release ([`UnableReason::Released`]),
    /// so each awards the task to another worker at once instead of waiting out the result
    /// deadline: every unfinished one (`all`, the vehicle is driving) or those not yet running
    /// (it stopped serving: what runs finishes). A running job keeps its slot until its
    /// execution ends ([`Action::Stop`] cuts a batch short).
    pub(crate) fn release(&mut self, ctx: &mut Ctx<'_>, all: bool, reason: &str) {
        let reason: String = reason.chars().take(200).collect();
        let ids: Vec<TaskId> = self
            .jobs
            .iter()
            .filter(|(_, j)| matches!(j.state, JobState::Queued) && (all || !j.running))
            .map(|(id, _)| *id)
            .collect();
        for task in ids {
            let Some(job) = self.jobs.get_mut(&task) else { continue };
            job.state = JobState::Abandoned(format!("released: {reason}"));
            let requester = job.requester;
            let mut ops = vec![job.op(&task)];
            if job.running {
                ctx.push(Action::Stop { task });
            } else {
                ops.push(StoreOp { table: Table::JobInputs, key: task, value: None });
            }
            ctx.push(Action::Persist(ops));
            self.queue.retain(|t| *t != task);
            ctx.count(Metric::JobsReleased);
            ctx.trace(TaskRecord {
                peer: Some(requester.peer_id()),
                reason: Some(reason.clone()),
                ..record(event::RELEASED, &task)
            });
            self.send_unable(ctx, requester, task, 0, UnableReason::Released { reason: reason.clone() });
        }
    }

    /// Periodically: ask the DHT which requesters have open tasks for the models held.
    pub(crate) fn scan(&mut self, ctx: &mut Ctx<'_>) {
        if !self.provider_lookups.is_empty() {
            return;
        }
        for model in ctx.models.iter() {
            self.provider_lookups.insert(*model);
            ctx.push(Action::GetProviders { model: *model });
        }
    }

    pub(crate) fn on_providers(
        &mut self,
        ctx: &mut Ctx<'_>,
        model: ModelId,
        providers: Vec<PublicKey>,
        last: bool,
    ) {
        if !self.provider_lookups.contains(&model) {
            return;
        }
        let me = ctx.identity.public();
        for p in providers.into_iter().filter(|p| *p != me).take(MAX_PROVIDERS_PER_SCAN) {
            if self.open_lookups >= MAX_OPEN_LOOKUPS {
                break;
            }
            self.open_lookups = self.open_lookups.saturating_add(1);
            ctx.push(Action::GetRecord {
                key: ids::open_tasks_record_key(&model, &p),
                lookup: Lookup::OpenTasks,
            });
        }
        if last {
            self.provider_lookups.remove(&model);
        }
    }

    pub(crate) fn on_record(&mut self, ctx: &mut Ctx<'_>, lookup: Lookup, value: Option<Vec<u8>>) {
        let limit = fleetmesh_protocol::limits::MAX_RECORD_BYTES;
        match lookup {
            Lookup::Spec { task, round, announcer } => {
                if !self.spec_lookups.remove(&(task, round, announcer)) {
                    return;
                }
                let Some(value) = value else {
                    tracing::debug!(%task, round, "task spec not found in the DHT");
                    return;
                };
                // Only the task's requester may announce its rounds.
                match fleetmesh_protocol::decode::<SignedEnvelope>(&value, limit) {
                    Ok(env) if env.signer == announcer => {
                        // The round's close is not known here: count it open for a while.
                        let bid_deadline = ctx.now.saturating_add(MAX_OPEN_ROUND_MS / 2);
                        self.bid_on_spec(ctx, (task, round), &env, None, bid_deadline);
                    }
                    _ => {}
                }
            }
            Lookup::OpenTasks => {
                self.open_lookups = self.open_lookups.saturating_sub(1);
                let Some(value) = value else { return };
                let Ok((env, open)) = OpenTasks::open_bytes(&value, limit) else { return };
                if env.signer == ctx.identity.public() {
                    return;
                }
                for t in open.tasks.into_iter().take(fleetmesh_protocol::limits::MAX_OPEN_TASKS_PER_RECORD) {
                    let select = t.select_ppm;
                    if self.worth_bidding(
                        ctx,
                        t.task_id,
                        open.model,
                        t.round,
                        t.bid_deadline_ms,
                        None,
                        select,
                    ) {
                        self.look_up_spec(ctx, t.task_id, t.round, env.signer);
                    }
                }
            }
        }
    }

    /// An award: check it against our bid, persist the job, acknowledge, then run it.
    pub(crate) fn on_award(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: PublicKey,
        spec_env: SignedEnvelope,
        award_env: SignedEnvelope,
        input: Vec<u8>,
    ) -> TaskResponse {
        let invalid = |m: &str| TaskResponse::Refused(Refusal::Invalid(m.to_owned()));
        let Ok(award) = Award::open(&award_env) else { return invalid("award does not verify") };
        let task = task_id_of(&spec_env);
        if award_env.signer != spec_env.signer || spec_env.signer != from {
            return invalid("award not signed and sent by the task's requester");
        }
        if award.task_id != task {
            return invalid("award names another task");
        }
        // The spec is authentic as the award is: the award's signer signed the task id, which
        // hashes that signer's key and the spec's exact bytes. So it is decoded, not verified
        // a second time (its own signature is for the DHT, where it travels alone).
        let Ok(spec) = TaskSpec::open_unverified(&spec_env) else {
            return invalid("task spec does not decode");
        };
        if !award.winners.contains(&ctx.identity.public()) {
            return TaskResponse::Refused(Refusal::NotAWinner);
        }
        // A requester awards at most k workers at a time; a longer list is one award sprayed
        // at every bidder to tie them all up.
        if award.winners.len() > usize::from(spec.redundancy) {
            return invalid("award names more winners than the task's redundancy");
        }
        // Already accepted (in memory, or finished and forgotten): awards are idempotent.
        if let Some(j) = self.jobs.get(&task) {
            return if j.requester == from {
                TaskResponse::Ack
            } else {
                invalid("award from another requester")
            };
        }
        if self.done.contains(&task) {
            return TaskResponse::Ack;
        }
        // Only a round this node bid on, from the requester it bid to; or, for an award made
        // on standing offers, one this node's current offer covers.
        let bid_on = self.bids.bids.get(&(task, award.round)).map(|b| &b.requester) == Some(&from);
        let offered = award.offer
            && !self.quarantined.contains(&spec.model)
            && self
                .offer
                .as_ref()
                .is_some_and(|o| fleetmesh_protocol::winner::offer_covers(o, &spec, ctx.now));
        if !bid_on && !offered {
            return TaskResponse::Refused(Refusal::NotAWinner);
        }
        // (It bid or offered under another setting: restarted with a lower one.)
        if spec.batch.is_some_and(|n| n > ctx.config.max_batch) {
            let (n, max) = (spec.items(), ctx.config.max_batch);
            let why = format!("a batch of {n} is more than this node runs (max_batch {max})");
            return TaskResponse::Refused(Refusal::Invalid(why));
        }
        let digest = fleetmesh_protocol::batch::input_digest(spec.batch, &input);
        if digest.ok() != Some(spec.input_digest) || input.len() as u64 != spec.input_size {
            return TaskResponse::Refused(Refusal::InputMismatch);
        }
        // An input that cannot fit the model is not run (a bidder found that out before
        // bidding; an award on an offer comes without a bid).
        if let Some(&expected) = ctx.config.model_inputs.get(&spec.model) {
            if !spec.fits(expected) {
                let reason = UnableReason::InputSize { expected, got: spec.item_size() };
                return TaskResponse::Refused(Refusal::Invalid(reason.to_string()));
            }
        }
        if !ctx.models.contains(&spec.model) {
            return TaskResponse::Refused(Refusal::ModelUnavailable);
        }
        if spec.exec_timeout_ms > MAX_EXEC_TIMEOUT_MS
            || spec.deadline_ms > ctx.now.saturating_add(MAX_TASK_HORIZON_MS)
        {
            let why = "the task's timeout or deadline is beyond this node's limits";
            return TaskResponse::Refused(Refusal::Invalid(why.into()));
        }
        if !self.has_capacity(ctx.config, &from) {
            return TaskResponse::Refused(Refusal::NoCapacity);
        }
        // Not serving now (driving, the battery, the heat, the hours), or leaving before the
        // task's timeout would end: the award goes to someone else.
        if ctx.disk_low || !ctx.availability.serving() || !self.ends_before_departure(ctx, &spec, ctx.now) {
            return TaskResponse::Refused(Refusal::Unavailable);
        }
        let result_deadline_ms = award
            .result_deadline_ms
            .min(ctx.now.saturating_add(u64::from(spec.exec_timeout_ms)).saturating_add(AWARD_SLACK_MS))
            .min(spec.deadline_ms);
        if result_deadline_ms <= ctx.now {
            return TaskResponse::Refused(Refusal::TaskClosed);
        }
        #[cfg(feature = "test-hooks")]
        if ctx.config.misbehave == Some(crate::hooks::Misbehave::Vanish) {
            return TaskResponse::Ack;
        }
        let job = Job {
            spec,
            requester: from,
            result_deadline_ms,
            state: JobState::Queued,
            done_ms: 0,
            running: false,
            in_flight: false,
            attempts: 0,
            next_send_ms: 0,
            energy_mj: 0,
        };
        ctx.push(Action::Persist(vec![
            StoreOp { table: Table::JobInputs, key: task, value: Some(input) },
            job.op(&task),
        ]));
        self.jobs.insert(task, job);
        self.queue.push_back(task);
        ctx.trace(TaskRecord {
            round: Some(award.round),
            peer: Some(from.peer_id()),
            reason: (offered && !bid_on).then(|| "standing offer".to_owned()),
            ..record(event::AWARD_ACCEPTED, &task)
        });
        self.start_queued(ctx);
        TaskResponse::Ack
    }

    /// Whether a task taken at `from` (its award: the bid window's end for a bid) ends before
    /// the vehicle's departure, counting the jobs queued ahead of it at up to one execution
    /// timeout per slot each ([`crate::vehicle::finishes_before`], which the requester applies
    /// without the queue it cannot see).
    fn ends_before_departure(&self, ctx: &Ctx<'_>, spec: &TaskSpec, from: u64) -> bool {
        let Some(depart) = ctx.availability.depart_ms else { return true };
        let ahead = u64::try_from(self.queued()).unwrap_or(u64::MAX).div_ceil(u64::from(ctx.slots().max(1)));
        let wait = u64::from(spec.exec_timeout_ms).saturating_mul(ahead.saturating_add(1));
        depart >= from.saturating_add(wait)
    }

    /// Starts queued jobs while slots are free.
    pub(crate) fn start_queued(&mut self, ctx: &mut Ctx<'_>) {
        // Not serving: nothing new starts (what was queued was handed back when it stopped).
        if !ctx.availability.serving() {
            return;
        }
        while self.running < ctx.slots() {
            let Some(task) = self.queue.pop_front() else { return };
            let Some(job) = self.jobs.get_mut(&task) else { continue };
            if job.running || !matches!(job.state, JobState::Queued) {
                continue;
            }
            job.running = true;
            self.running = self.running.saturating_add(1);
            ctx.trace(record(event::STARTED, &task));
            ctx.push(Action::Execute {
                task,
                model: job.spec.model,
                batch: job.spec.batch,
                until_ms: job.result_deadline_ms,
            });
        }
    }

    pub(crate) fn on_executed(
        &mut self,
        ctx: &mut Ctx<'_>,
        task: TaskId,
        result: Result<ExecOutput, String>,
    ) {
        // (Not for a job handed back while it ran: its output goes nowhere.)
        if result.is_ok()
            && self.jobs.get(&task).is_some_and(|j| j.running && matches!(j.state, JobState::Queued))
        {
            self.make_room_for_delivery(ctx);
        }
        let Some(job) = self.jobs.get_mut(&task).filter(|j| j.running) else {
            self.start_queued(ctx);
            return;
        };
        job.running = false;
        self.running = self.running.saturating_sub(1);
        // Handed back while it ran ([`Worker::release`]): its slot is free now; the output is
        // nobody's.
        let drop_input = StoreOp { table: Table::JobInputs, key: task, value: None };
        if !matches!(job.state, JobState::Queued) {
            ctx.push(Action::Persist(vec![drop_input]));
            self.start_queued(ctx);
            return;
        }
        #[allow(unused_mut)]
        let mut result = result;
        #[cfg(feature = "test-hooks")]
        if ctx.config.misbehave == Some(crate::hooks::Misbehave::WrongAnswer) {
            if let Ok(exec) = result.as_mut() {
                // A well-formed lie: same size, another answer (the last byte of the
                // output's encoding is its argmax; of a batch's, the last output's).
                if let Some(b) = exec.output.last_mut() {
                    *b ^= 0x01;
                }
            }
        }
        // What the header signs: blake3 of the output, or a batch's Merkle root.
        let batch = job.spec.batch;
        let result =
            result.and_then(|exec| match fleetmesh_protocol::batch::output_digest(batch, &exec.output) {
                Ok(digest) => Ok((exec, digest)),
                Err(e) => Err(format!("the executor's output is not a batch's: {e}")),
            });
        match result {
            Err(e) => {
                tracing::warn!(%task, "execution failed: {e}");
                let (requester, model) = (job.requester, job.spec.model);
                let message: String = e.chars().take(200).collect();
                job.state = JobState::Abandoned(e);
                ctx.push(Action::Persist(vec![job.op(&task), drop_input]));
                // Tell the requester now, so it replaces this worker instead of waiting.
                let reason = UnableReason::ExecutionFailed { message };
                let late = ctx.now > job.result_deadline_ms;
                self.send_unable(ctx, requester, task, 0, reason);
                // A batch cut at its result deadline says nothing about the model (and a
                // requester must not quarantine it by asking for batches it cannot finish).
                if late {
                    self.start_queued(ctx);
                    return;
                }
                let n = self.failures.entry(model).or_insert(0);
                *n = n.saturating_add(1);
                if *n >= MAX_MODEL_FAILURES && self.quarantined.insert(model) {
                    tracing::warn!(%model, "{MAX_MODEL_FAILURES} failed runs in a row: not bidding on this model until a self-test passes");
                    ctx.push(Action::SelfTest { model });
                }
            }
            Ok((exec, output_digest)) => {
                #[allow(unused_mut)]
                let mut output = exec.output;
                let header = ResultHeader {
                    v: WIRE_VERSION,
                    task_id: task,
                    input_digest: job.spec.input_digest,
                    model: job.spec.model,
                    output_digest,
                    output_size: output.len() as u64,
                    run_time_us: exec.run_time_us,
                    runtime: exec.runtime,
                    energy_mj: Some(ctx.config.owner.energy_mj(exec.run_time_us)),
                };
                job.energy_mj = header.energy_mj.unwrap_or(0);
                #[allow(unused_mut)]
                let mut signed = header.sign(ctx.identity);
                #[cfg(feature = "test-hooks")]
                match ctx.config.misbehave {
                    Some(crate::hooks::Misbehave::WrongKey) => {
                        if let Ok(other) = fleetmesh_crypto::Identity::generate() {
                            signed = header.sign(&other);
                        }
                    }
                    Some(crate::hooks::Misbehave::CorruptOutput) => {
                        if let Some(b) = output.last_mut() {
                            *b ^= 0x01;
                        }
                    }
                    Some(crate::hooks::Misbehave::Replay) => match &self.first_result {
                        Some((h, o)) => {
                            signed = h.clone();
                            output = o.clone();
                        }
                        None => self.first_result = Some((signed.clone(), output.clone())),
                    },
                    _ => {}
                }
                self.failures.remove(&job.spec.model);
                job.state = JobState::Done { header: signed, output };
                job.done_ms = ctx.now;
                job.next_send_ms = 0;
                ctx.push(Action::Persist(vec![job.op(&task), drop_input]));
                ctx.count(Metric::JobsExecuted);
                self.jobs_executed = self.jobs_executed.saturating_add(1);
                ctx.trace(TaskRecord {
                    digest: Some(header.output_digest.to_string()),
                    run_time_us: Some(exec.run_time_us),
                    ..record(event::RESULT_SENT, &task)
                });
                self.send_result(ctx, task);
            }
        }
        self.start_queued(ctx);
    }

    fn send_unable(
        &mut self,
        ctx: &mut Ctx<'_>,
        to: PublicKey,
        task: TaskId,
        round: u32,
        reason: UnableReason,
    ) {
        let report = Unable { v: WIRE_VERSION, task_id: task, round, reason }.sign(ctx.identity);
        ctx.push(Action::Send {
            to,
            request: Outgoing::Request(TaskRequest::Unable { report }),
            tag: SendTag::Unable,
        });
    }

    /// A self-test of a quarantined model ended: bid on it again if it ran, or test again
    /// later (after a minute, doubling up to an hour: a fault may pass, a thermal one will).
    pub(crate) fn on_self_tested(&mut self, now: u64, model: ModelId, ok: bool) {
        if ok {
            self.quarantined.remove(&model);
            self.failures.remove(&model);
            self.retest.remove(&model);
            tracing::info!(%model, "self-test passed; bidding on the model again");
        } else if self.quarantined.contains(&model) {
            let backoff = self
                .retest
                .get(&model)
                .map_or(SELF_TEST_RETRY_MS, |(_, b)| b.saturating_mul(2).min(MAX_SELF_TEST_RETRY_MS));
            self.retest.insert(model, (now.saturating_add(backoff), backoff));
            tracing::warn!(%model, retry_s = backoff / 1000, "self-test failed; the model stays out of bidding");
        }
    }

    /// Self-tests that are due again.
    fn retest_due(&mut self, ctx: &mut Ctx<'_>) {
        let due: Vec<ModelId> =
            self.retest.iter().filter(|(_, (at, _))| *at <= ctx.now).map(|(m, _)| *m).collect();
        for model in due {
            if let Some((_, backoff)) = self.retest.get_mut(&model) {
                // Not due again until this test answers (it reschedules on failure).
                let b = *backoff;
                self.retest.insert(model, (u64::MAX, b));
            }
            ctx.push(Action::SelfTest { model });
        }
    }

    /// Models that failed their last runs and wait for a passing self-test.
    pub fn quarantined(&self) -> &BTreeSet<ModelId> {
        &self.quarantined
    }

    fn send_result(&mut self, ctx: &mut Ctx<'_>, task: TaskId) {
        let Some(job) = self.jobs.get_mut(&task) else { return };
        let (JobState::Done { header, output } | JobState::Pending { header, output }) = &job.state else {
            return;
        };
        if job.in_flight {
            return;
        }
        job.in_flight = true;
        job.attempts = job.attempts.saturating_add(1);
        let req = TaskRequest::Result { task_id: task, header: header.clone(), output: output.clone() };
        ctx.push(Action::Send {
            to: job.requester,
            request: Outgoing::Request(req),
            tag: SendTag::Result { task },
        });
    }

    pub(crate) fn on_result_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        task: TaskId,
        peer: PublicKey,
        resp: Result<TaskResponse, SendFailure>,
    ) {
        let Some(job) = self.jobs.get_mut(&task) else { return };
        if peer != job.requester {
            return;
        }
        job.in_flight = false;
        let requester = job.requester;
        let now = ctx.now;
        let grace_end = job.result_deadline_ms.saturating_add(DELIVERY_GRACE_MS);
        let mut ledger_op = None;
        match resp {
            Ok(TaskResponse::Receipt(r)) => {
                let me = ctx.identity.public();
                let opened = Receipt::open(&r).ok().filter(|x| x.task_id == task && x.worker == me);
                if let Some(x) = opened.filter(|_| r.signer == requester) {
                    // Counted once: a receipt re-sent for a receipted job adds nothing.
                    if !matches!(job.state, JobState::Receipted(_)) {
                        let credits = x.price.min(job.spec.price_for(ctx.config.price_floor));
                        let earned = ledger::DayTotals { tasks: 1, credits, energy_mj: job.energy_mj };
                        ledger_op = Some(self.ledger.record(now, earned));
                    }
                    job.state = JobState::Receipted(r);
                    self.jobs_receipted = self.jobs_receipted.saturating_add(1);
                    ctx.trace(record(event::RECEIPT_RECEIVED, &task));
                } else {
                    tracing::warn!(%task, "requester sent an invalid receipt");
                    job.state = JobState::Abandoned("invalid receipt".into());
                }
            }
            Ok(TaskResponse::Pending) => {
                if let JobState::Done { header, output } = &job.state {
                    job.state = JobState::Pending { header: header.clone(), output: output.clone() };
                }
                // Ask again later in case the receipt request is lost.
                job.next_send_ms = now.saturating_add(5_000);
            }
            Ok(TaskResponse::Rejected(reason)) => {
                tracing::info!(%task, %reason, "result rejected by the requester");
                ctx.trace(TaskRecord {
                    reason: Some(reason.to_string()),
                    ..record(event::REJECTED_BY_REQUESTER, &task)
                });
                job.state = JobState::Rejected(reason);
            }
            other => {
                // Unreachable or refusing for now: retry with backoff until the grace ends.
                let backoff = 250u64.saturating_mul(1u64 << job.attempts.min(6));
                job.next_send_ms = now.saturating_add(backoff);
                if now > grace_end {
                    job.state = JobState::Abandoned(format!("could not deliver the result: {other:?}"));
                }
            }
        }
        // The job and its day's totals in one write: a crash cannot count a receipt twice.
        ctx.push(Action::Persist(std::iter::once(job.op(&task)).chain(ledger_op).collect()));
    }

    pub(crate) fn on_receipt(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: PublicKey,
        env: SignedEnvelope,
    ) -> TaskResponse {
        let Ok(r) = Receipt::open(&env) else {
            return TaskResponse::Refused(Refusal::Invalid("receipt does not verify".into()));
        };
        let Some(job) = self.jobs.get_mut(&r.task_id) else {
            return TaskResponse::Refused(Refusal::UnknownTask);
        };
        if env.signer != job.requester || from != job.requester || r.worker != ctx.identity.public() {
            return TaskResponse::Refused(Refusal::Invalid(
                "receipt from someone else or for someone else".into(),
            ));
        }
        // Only for a result this worker produced (a requester's word is not income: a
        // receipt for a job still queued, handed back or refused is refused), and counted
        // once: a receipt sent again adds nothing.
        if job.done_ms == 0 || matches!(job.state, JobState::Rejected(_)) {
            return TaskResponse::Refused(Refusal::Invalid("no result of this worker to receipt".into()));
        }
        if !matches!(job.state, JobState::Receipted(_)) {
            job.state = JobState::Receipted(env);
            self.jobs_receipted = self.jobs_receipted.saturating_add(1);
            ctx.trace(record(event::RECEIPT_RECEIVED, &r.task_id));
            // At most the price this worker asked (its price floor per input: what it bid or
            // offered); a receipt naming more does not inflate the owner's ledger.
            let credits = r.price.min(job.spec.price_for(ctx.config.price_floor));
            let earned = ledger::DayTotals { tasks: 1, credits, energy_mj: job.energy_mj };
            let day = self.ledger.record(ctx.now, earned);
            ctx.push(Action::Persist(vec![job.op(&r.task_id), day]));
        }
        TaskResponse::Ack
    }

    /// The requester's answer to a bid. Only a refusal says anything: a bid that was taken
    /// hears nothing more unless it wins (wire version 2 sends losers no decline).
    pub(crate) fn on_bid_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        task: TaskId,
        peer: PublicKey,
        resp: Result<TaskResponse, SendFailure>,
    ) {
        if let Ok(TaskResponse::Refused(Refusal::BidDeclined(reason))) = resp {
            tracing::debug!(%task, ?reason, "bid declined");
            ctx.count(Metric::BidsDeclined);
            ctx.trace(TaskRecord {
                peer: Some(peer.peer_id()),
                reason: Some(format!("{reason:?}")),
                ..record(event::DECLINE_RECEIVED, &task)
            });
        }
    }

    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>) {
        self.retest_due(ctx);
        let now = ctx.now;
        let due: Vec<TaskId> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                matches!(j.state, JobState::Done { .. } | JobState::Pending { .. })
                    && !j.in_flight
                    && now >= j.next_send_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(j) = self.jobs.get_mut(&id) {
                if matches!(j.state, JobState::Pending { .. })
                    && now > j.result_deadline_ms.saturating_add(DELIVERY_GRACE_MS)
                {
                    j.state = JobState::Abandoned("no receipt before the grace period ended".into());
                    ctx.push(Action::Persist(vec![j.op(&id)]));
                    continue;
                }
            }
            self.send_result(ctx, id);
        }
    }

    pub(crate) fn restore(&mut self, ctx: &mut Ctx<'_>, jobs: Vec<(TaskId, Job)>) {
        let mut queued = Vec::new();
        for (id, job) in jobs {
            if matches!(job.state, JobState::Queued) {
                tracing::info!(task = %id, "resuming an accepted job that had not finished");
                queued.push((job.result_deadline_ms, id));
            }
            self.jobs.insert(id, job);
        }
        queued.sort_unstable();
        self.queue.extend(queued.into_iter().map(|(_, id)| id));
        self.start_queued(ctx);
    }

    pub(crate) fn on_persist_failed(&mut self, _ctx: &mut Ctx<'_>, keys: &[(Table, TaskId, bool)]) {
        for (table, id, written) in keys {
            // A job whose first write failed was never accepted: the award was answered
            // `Unavailable` and its execution never started.
            let fresh = self.jobs.get(id).is_some_and(|j| matches!(j.state, JobState::Queued));
            if *table == Table::JobInputs && *written && fresh {
                if let Some(job) = self.jobs.remove(id) {
                    if job.running {
                        self.running = self.running.saturating_sub(1);
                    }
                    self.queue.retain(|t| t != id);
                }
                self.unsaved.remove(id);
            }
        }
        for (table, id, written) in keys {
            // Any other job's state is ahead of the disk: written again until it sticks.
            if *table == Table::Jobs && *written && self.jobs.contains_key(id) {
                self.unsaved.mark(*id);
            }
            // A day of the ledger whose write failed (with the receipted job it counts):
            // written again with the job, so the receipt is not lost from it.
            if *table == Table::Ledger && *written {
                if let Some(day) = ledger::day_of_key(id) {
                    if self.ledger_unsaved.len() < 64 {
                        self.ledger_unsaved.insert(day);
                    }
                }
            }
        }
    }

    /// Writes again the jobs whose last write failed (every second, from the tick).
    pub(crate) fn retry_unsaved(&mut self, ctx: &mut Ctx<'_>) {
        for id in self.unsaved.due(ctx.now, crate::requester::UNSAVED_GRACE_MS) {
            if let Some(j) = self.jobs.get(&id) {
                ctx.push(Action::Persist(vec![j.op(&id)]));
            }
        }
        // (Written until it sticks: a failure reports the day again.)
        for day in std::mem::take(&mut self.ledger_unsaved) {
            if let Some(op) = self.ledger.op_for(day) {
                ctx.push(Action::Persist(vec![op]));
            }
        }
    }

    /// Drops the oldest finished jobs from memory beyond `cap`; their ids are remembered so
    /// a replayed award is acknowledged, not run again.
    pub(crate) fn forget_old_finished(&mut self, cap: usize, now: u64) {
        self.bids.expire(now);
        let mut done: Vec<(u64, TaskId)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.is_finished())
            .map(|(id, j)| (j.result_deadline_ms, *id))
            .collect();
        if done.len() <= cap {
            return;
        }
        done.sort_unstable();
        let excess = done.len().saturating_sub(cap);
        for (_, id) in done.into_iter().filter(|(_, id)| !self.unsaved.contains(id)).take(excess) {
            self.jobs.remove(&id);
            self.done.insert(id);
        }
    }
}
