//! The requester's half of the task lifecycle: announce, collect bids, award, verify.
//!
//! ```text
//!  submit ──► Bidding ──(window closes, ≥1 valid bid)──► Running ──(quorum agrees)──► Verified
//!               │  ▲                                       │  │
//!               │  └──── no bids / no standby left ────────┘  └── worker fails: next standby
//!               └──── deadline or max rounds ───────────────────────────────────────► Failed
//! ```
//!
//! Every change is persisted (an [`Action::Persist`]) before the action that answers the peer
//! that caused it. A round's bid window starts when its announcement is actually published
//! ([`Input::Published`](super::Input::Published)): a requester that has no peers yet (just
//! restarted, say) does not burn rounds that nobody heard. On restart a task in `Bidding`
//! starts a fresh round; one in `Running` keeps its awards and deadlines, and workers re-send
//! their results until they get an answer.
//!
//! Requests from peers are checked before they touch state: a result from a peer that was
//! never awarded the task is answered and forgotten, never stored.

use std::collections::{BTreeMap, BTreeSet};

use fleetmesh_crypto::{Digest, OutputDigest, PublicKey, SignedEnvelope, TaskId};
use fleetmesh_protocol::selection;
use fleetmesh_protocol::verify::{anchored_agreement, check_opened, Agreement};
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{
    ids, task_id_of, winner, Announcement, Award, DeclineReason, OpenTask, OpenTasks, Receipt, RejectReason,
    Signed, TaskSpec, Unable, UnableReason, WIRE_VERSION,
};
use serde::{Deserialize, Serialize};

use super::bounded::BoundedMap;
use super::reputation::{Ledger, Outcome, Trust, MAX_LEDGER};
use super::{
    record, Action, Ctx, EngineConfig, Metric, Outgoing, SendFailure, SendTag, StoreOp, SubmitError,
    SubmitRequest, Table, Topic,
};
use fleetmesh_api::{BatchItemView, Phase, TaskView, Timings, WorkerView};
use fleetmesh_trace::timeline::event;
use fleetmesh_trace::TaskRecord;

/// Extra workers a task may take on beyond k (after failures or disagreement).
pub const MAX_EXTRA_WORKERS: usize = 6;
/// Bids taken into one round; more are declined as duplicates of a full round.
pub const MAX_BIDS_PER_ROUND: usize = 256;
/// `Unable` reports kept per round.
pub const MAX_UNABLE_PER_ROUND: usize = 16;
/// Receipts of finished tasks that left memory, kept to answer workers that re-send.
pub const MAX_CLOSED_REMEMBERED: usize = 4096;
/// After an announcement reached no peer, wait this long before the next try, ms.
pub const ANNOUNCE_RETRY_MS: u64 = 500;
/// Longest deadline a user may ask for, ms (one week).
pub const MAX_DEADLINE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Refusals before any work (busy, offer gone) a task forgives; later ones count as failures.
pub const MAX_REFUSED_PER_TASK: usize = 8;
/// Standing offers one task is decided on at most: the best by trust, then ticket.
pub const MAX_OFFERS_PER_TASK: usize = 64;
/// A worker that refused an award (busy, or its offer gone) is not awarded on its offer again
/// before its next advert, nor for this long, ms.
pub const OFFER_BACKOFF_MS: u64 = 1_000;

/// Where one awarded worker stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignStatus {
    /// Award sent.
    Awarded,
    /// Award acknowledged (the worker persisted the job).
    Acked,
    /// A checked result with this digest arrived.
    Returned(OutputDigest),
    /// Its result was refused.
    Rejected(RejectReason),
    /// It will not deliver: why.
    Failed(String),
    /// It refused the award before doing any work (busy, its offer gone, no bid of its): it
    /// took no part and does not count towards the task's workers, but is not asked again for
    /// this task. At most [`MAX_REFUSED_PER_TASK`] per task; refusals beyond count as failures.
    Refused(String),
}

/// The requester's own run of a task (market v2 reputation: what a requester that trusts
/// nobody yet checks the workers against).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelfCheck {
    /// Asked for ([`Action::Check`]), not back yet.
    Running,
    /// Its output's digest.
    Done(OutputDigest),
    /// The model did not run here: why (the task is then verified as v1 would).
    Failed(String),
}

/// One awarded worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    /// The worker.
    pub worker: PublicKey,
    /// The price it bid.
    pub price: u64,
    /// Its result is due by this instant (Unix ms).
    pub deadline_ms: u64,
    /// Where it stands.
    pub status: AssignStatus,
    /// Awarded on its standing offer (the award said `offer`): a refusal before any work
    /// (busy, offer gone) is no failure of the worker's ([`AssignStatus::Refused`]).
    #[serde(default)]
    pub on_offer: bool,
    /// Its operator when it was awarded ([`fleetmesh_protocol::OperatorCert`]), so that a
    /// worker that leaves or re-advertises without its certificate still counts for its
    /// operator on this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<PublicKey>,
    /// The digest the worker signed, when its output joined another's within the spec's
    /// tolerance (its status then names that output's digest; its receipt names its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own: Option<OutputDigest>,
    /// The energy estimate in its result, millijoules (repeated in its receipt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
    /// When it was awarded, Unix ms (0: before this was recorded).
    #[serde(default)]
    pub awarded_ms: u64,
    /// When it handed the task back with a signed release, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ms: Option<u64>,
    /// When it acknowledged the award (took the task), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_ms: Option<u64>,
}

impl Assignment {
    fn live(&self) -> bool {
        matches!(self.status, AssignStatus::Awarded | AssignStatus::Acked | AssignStatus::Returned(_))
    }
    fn waiting(&self) -> bool {
        matches!(self.status, AssignStatus::Awarded | AssignStatus::Acked)
    }
}

/// A task this node requested, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReqTask {
    /// The signed spec.
    pub spec_env: SignedEnvelope,
    /// The spec.
    pub spec: TaskSpec,
    /// Where it stands.
    pub phase: Phase,
    /// The current bid round.
    pub round: u32,
    /// When the current round's bids close (Unix ms).
    pub bid_deadline_ms: u64,
    /// Bids of the current round.
    pub bids: Vec<SignedEnvelope>,
    /// Valid bids over all rounds.
    pub bids_total: u32,
    /// Consecutive bid rounds that ended without a valid bid.
    #[serde(default)]
    pub empty_rounds: u32,
    /// Commitment to the bid set of the last decided round.
    #[serde(default)]
    pub bid_root: Option<Digest>,
    /// Bids in that set.
    #[serde(default)]
    pub bid_count: u32,
    /// The current round's selection threshold (ppm); `None` for a task announced before
    /// market v2 (everyone may bid, and bids rank by score).
    #[serde(default)]
    pub select_ppm: Option<u32>,
    /// The first award added an unknown worker to check the trusted ones (market v2 spot
    /// check): one more agreeing result is needed.
    #[serde(default)]
    pub spot_check: bool,
    /// Workers the current round's announcement invited by name (trusted ones, and one
    /// close to trust), admitted whatever their ticket.
    #[serde(default)]
    pub invited: Vec<PublicKey>,
    /// The selection threshold the current round's announcement carried (what its awards
    /// repeat, so a third party can check the winners were admitted).
    #[serde(default)]
    pub announced_ppm: Option<u32>,
    /// A trusted worker was around for this task at some point: from then on only an output
    /// a trusted worker produced verifies it (so using up the trusted workers, or making
    /// them fail, does not open the door to a quorum of unknown keys).
    #[serde(default)]
    pub anchored: bool,
    /// The task waits for a trusted worker: its rounds admit only the trusted workers they
    /// invite (threshold 0), so the unknown holders do not bid again and again.
    #[serde(default)]
    pub seeking: bool,
    /// Rounds spent seeking a trusted worker (their windows grow as empty rounds' do).
    #[serde(default)]
    pub seek_rounds: u32,
    /// This node's own run of the task, when it holds the model and trusted nobody at the
    /// first award: the workers' outputs are checked against it.
    #[serde(default)]
    pub self_check: Option<SelfCheck>,
    /// The current round was decided on standing offers (no announcement, no bids): its
    /// awards say so ([`Award::offer`]).
    #[serde(default)]
    pub offer_round: bool,
    /// Ranked bidders not awarded yet (worker, price), for replacements.
    pub standby: Vec<(PublicKey, u64)>,
    /// Everyone awarded, in order.
    pub assignments: Vec<Assignment>,
    /// Distinct checked outputs.
    pub outputs: Vec<(OutputDigest, serde_bytes::ByteBuf)>,
    /// Results refused from awarded workers.
    pub rejections: Vec<(PublicKey, RejectReason)>,
    /// The verified digest and who produced it.
    pub verified: Option<(OutputDigest, Vec<PublicKey>)>,
    /// Receipts signed.
    pub receipts: Vec<(PublicKey, SignedEnvelope)>,
    /// Workers that said, in the current round, that they cannot run the task.
    #[serde(default)]
    pub unable: Vec<(PublicKey, UnableReason)>,
    /// Why it failed.
    pub failure: Option<String>,
    /// Milestones.
    pub times: Timings,
    /// The current round's announcement has not reached anyone yet: its window has not
    /// started.
    #[serde(skip)]
    pub announce_pending: bool,
    /// An announcement is being published (waiting for [`super::Input::Published`]).
    #[serde(skip)]
    pub announce_in_flight: bool,
    /// After a publish that reached nobody, the next try is not before this (Unix ms).
    #[serde(skip)]
    pub next_announce_ms: u64,
    /// The spec was stored in the DHT (done before the first announcement: a task awarded on
    /// standing offers never needs it there).
    #[serde(skip)]
    pub spec_put: bool,
    /// The last announced round's sample for the holder estimate: its round, threshold, and
    /// the distinct bidders it admitted whose bids were valid, late ones included. Learned
    /// from when the next round starts or the task ends, so an early close does not cut the
    /// count short.
    #[serde(skip)]
    pub sample: Option<Sample>,
}

/// One round's evidence of how many hold the model (see [`ReqTask::sample`]).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    round: u32,
    ppm: u32,
    /// Distinct admitted bidders (bounded: one peer repeating its bid counts once).
    bidders: BTreeSet<PublicKey>,
}

/// Bidders one sample counts at most.
const MAX_SAMPLE_BIDDERS: usize = 4096;

impl ReqTask {
    /// The task id.
    pub fn id(&self) -> TaskId {
        task_id_of(&self.spec_env)
    }

    fn awarded_keys(&self) -> Vec<PublicKey> {
        self.assignments.iter().map(|a| a.worker).collect()
    }

    /// The bid window of the current round: doubled after each empty round (or round spent
    /// seeking a trusted worker), up to 8 times.
    fn window_ms(&self) -> u64 {
        let n = self.empty_rounds.max(self.seek_rounds).min(3);
        u64::from(self.spec.bid_window_ms).saturating_mul(1u64 << n)
    }

    /// The current round's threshold as announced: 0 (invited workers only) while seeking a
    /// trusted worker.
    pub fn round_ppm(&self) -> Option<u32> {
        if self.seeking {
            Some(0)
        } else {
            self.select_ppm
        }
    }

    /// What the API, the CLI and the demo show.
    pub fn view(&self) -> TaskView {
        self.view_with(true)
    }

    /// [`Self::view`] without a batch's items (the list of every task: each item carries its
    /// output and path, and a node keeps up to 1,024 tasks).
    pub fn summary(&self) -> TaskView {
        self.view_with(false)
    }

    fn view_with(&self, with_items: bool) -> TaskView {
        use base64::Engine;
        let verified_output = self
            .verified
            .as_ref()
            .and_then(|(d, _)| self.outputs.iter().find(|(o, _)| o == d).map(|(_, b)| b.to_vec()));
        let label_of =
            |b: &[u8]| fleetmesh_protocol::output::ModelOutput::from_bytes(b).ok().and_then(|o| o.argmax);
        let (label, items) = match (self.spec.batch, verified_output.as_deref()) {
            (None, output) => (output.and_then(label_of), Vec::new()),
            (Some(_), Some(_)) if !with_items => (None, Vec::new()),
            (Some(n), Some(output)) => {
                // Checked against the root when the result arrived; a list that no longer
                // splits (it cannot) shows no items rather than wrong ones.
                let proofs = fleetmesh_protocol::batch::proofs(n, output).unwrap_or_default();
                let items = proofs
                    .into_iter()
                    .zip(0u32..)
                    .map(|(p, index)| BatchItemView {
                        index,
                        output_digest: p.digest.to_string(),
                        label: label_of(&p.output),
                        output_base64: base64::engine::general_purpose::STANDARD.encode(&p.output),
                        path: p.path.iter().map(|d| d.to_string()).collect(),
                    })
                    .collect();
                (None, items)
            }
            (Some(_), None) => (None, Vec::new()),
        };
        TaskView {
            task_id: self.id().to_string(),
            model: self.spec.model.to_string(),
            redundancy: self.spec.redundancy,
            phase: self.phase,
            round: self.round,
            bids_received: self.bids_total,
            workers: self
                .assignments
                .iter()
                .map(|a| WorkerView {
                    worker: a.worker.to_string(),
                    peer_id: a.worker.peer_id(),
                    awarded_ms: a.awarded_ms,
                    acked_ms: a.acked_ms,
                    released_ms: a.released_ms,
                    status: match &a.status {
                        AssignStatus::Awarded => "awarded".into(),
                        AssignStatus::Acked => "acked".into(),
                        AssignStatus::Returned(_) => "returned".into(),
                        AssignStatus::Rejected(r) => format!("rejected: {r}"),
                        AssignStatus::Failed(r) => format!("failed: {r}"),
                        AssignStatus::Refused(r) => format!("refused: {r}"),
                    },
                })
                .collect(),
            output_digest: self.verified.as_ref().map(|(d, _)| d.to_string()),
            output_base64: verified_output.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            label,
            verified_by: self
                .verified
                .as_ref()
                .map(|(_, ws)| ws.iter().map(|w| w.to_string()).collect())
                .unwrap_or_default(),
            rejections: self.rejections.iter().map(|(w, r)| (w.to_string(), r.to_string())).collect(),
            failure: self.failure.clone(),
            timings: self.times.clone(),
            batch: self.spec.batch,
            items,
        }
    }

    fn returned(&self) -> Vec<(PublicKey, OutputDigest)> {
        self.assignments
            .iter()
            .filter_map(|a| match &a.status {
                AssignStatus::Returned(d) => Some((a.worker, *d)),
                _ => None,
            })
            .collect()
    }

    /// Agreeing results that verify this task: a strict majority of k, one more when a spot
    /// check was added.
    fn need(&self) -> usize {
        fleetmesh_protocol::verify::quorum(self.spec.redundancy).saturating_add(usize::from(self.spot_check))
    }

    /// Whether the results in hand plus the workers still running can reach a quorum.
    fn can_still_verify(&self) -> bool {
        let returned = self.returned();
        let best =
            returned.iter().map(|(_, d)| returned.iter().filter(|(_, e)| e == d).count()).max().unwrap_or(0);
        let waiting = self.assignments.iter().filter(|a| a.waiting()).count();
        best.saturating_add(waiting) >= self.need()
    }

    /// Workers counted towards the task's bound of k + 6: all awarded but those that refused
    /// before doing any work.
    pub fn counted(&self) -> usize {
        self.assignments.iter().filter(|a| !matches!(a.status, AssignStatus::Refused(_))).count()
    }

    /// Awards refused before any work.
    pub fn refused(&self) -> usize {
        self.assignments.len().saturating_sub(self.counted())
    }

    fn live_count(&self) -> usize {
        self.assignments.iter().filter(|a| a.live()).count()
    }

    fn persist(&self, id: &TaskId) -> StoreOp {
        StoreOp { table: Table::Requests, key: *id, value: Some(fleetmesh_protocol::encode(self)) }
    }
}

/// How long after a retried write a task stays protected from leaving memory (a retry that
/// fails reports it well within this).
pub(crate) const UNSAVED_GRACE_MS: u64 = 60_000;

/// Models whose holder count a requester estimates at most.
const MAX_MODELS_ESTIMATED: usize = 1024;

/// The requester role.
pub struct Requester {
    tasks: BTreeMap<TaskId, ReqTask>,
    /// Tasks whose last write failed: written again (every second) until a minute passes
    /// after a retry with no new failure; kept in memory all that time. Value: when the last
    /// retry went out (0: due).
    unsaved: super::bounded::Unsaved,
    /// Receipts of finished tasks that left memory, by task.
    closed: BoundedMap<TaskId, Vec<(PublicKey, SignedEnvelope)>>,
    /// Models whose open-tasks record must be rewritten on the next flush.
    open_dirty: BTreeSet<fleetmesh_crypto::ModelId>,
    /// Models this node announced itself as a provider of open tasks for.
    providing: BTreeSet<fleetmesh_crypto::ModelId>,
    /// Per model, how many workers hold it mesh-wide, as the last rounds' bids tell (bids
    /// under threshold `p` stand for `bids / p` holders). Sizes the next thresholds.
    holders: BoundedMap<fleetmesh_crypto::ModelId, u32>,
    /// What this node has seen each worker do (market v2 reputation).
    ledger: Ledger,
    /// Workers that refused an award before any work, and when: their offers are passed over
    /// until they advertise again, and for [`OFFER_BACKOFF_MS`] at least.
    offer_backoff: BoundedMap<PublicKey, u64>,
    /// The operators of `[trust] operators` (a closed mesh admits only their vehicles).
    operators: BTreeSet<PublicKey>,
}

/// The operator vouching for worker `w`: from its advert's certificate, checked when the
/// advert arrived, while still valid. None for a worker without one (it stands for itself).
fn operator_of(ctx: &Ctx<'_>, w: &PublicKey) -> Option<PublicKey> {
    ctx.presence.get(w).and_then(|a| a.operator).filter(|(_, until)| *until >= ctx.now).map(|(o, _)| o)
}

/// The operators of the workers on task `t` (awarded, working or returned): the one each
/// had when awarded, and the one its advert shows now, if another.
fn operators_on(ctx: &Ctx<'_>, t: &ReqTask) -> BTreeSet<PublicKey> {
    t.assignments
        .iter()
        .filter(|a| a.live())
        .flat_map(|a| [a.operator, operator_of(ctx, &a.worker)])
        .flatten()
        .collect()
}

/// Whether worker `w` may work for this node at all: in a closed mesh, only a vehicle of a
/// listed operator (`[trust] closed`, `operators`).
fn admitted(ctx: &Ctx<'_>, operators: &BTreeSet<PublicKey>, w: &PublicKey) -> bool {
    !ctx.config.trust.closed || operator_of(ctx, w).is_some_and(|o| operators.contains(&o))
}

impl Requester {
    pub(crate) fn new(config: &EngineConfig) -> Self {
        Self {
            // The node refuses to start with a key that does not parse; an engine given one
            // anyway lists no operator (a closed mesh then admits nobody: it fails safe).
            operators: config.trust.operator_keys().unwrap_or_default(),
            tasks: BTreeMap::new(),
            unsaved: Default::default(),
            closed: BoundedMap::new(MAX_CLOSED_REMEMBERED),
            open_dirty: BTreeSet::new(),
            providing: BTreeSet::new(),
            holders: BoundedMap::new(MAX_MODELS_ESTIMATED),
            ledger: Ledger::new(config.trust.trust_after, MAX_LEDGER),
            offer_backoff: BoundedMap::new(super::MAX_PRESENCE_PEERS),
        }
    }

    /// The reputation ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub(crate) fn restore_ledger(
        &mut self,
        entries: impl IntoIterator<Item = (PublicKey, super::reputation::Standing)>,
    ) {
        self.ledger.restore(entries);
    }

    /// How this node treats `worker` (everyone is alike with trust off).
    fn trust_of(&self, ctx: &Ctx<'_>, worker: &PublicKey) -> Trust {
        if ctx.config.trust.enabled {
            self.ledger.trust(worker)
        } else {
            Trust::Unknown
        }
    }

    /// Whether a verification of task `t` needs a trusted worker (or this node's own run):
    /// trust is on and this node trusts anyone, or the task needed it before
    /// ([`ReqTask::anchored`]). With nobody trusted, a quorum of unknown workers is accepted
    /// (checked against the node's own run where it holds the model). Neither connectivity
    /// nor adverts (which peers sign themselves) lift the need: a partition, an attacker
    /// that surrounds the node, or a trusted key advertising other models must not be what
    /// lets unknown keys verify a task.
    fn anchor_required(&self, ctx: &Ctx<'_>, t: &ReqTask) -> bool {
        ctx.config.trust.enabled
            && (t.anchored || self.has_trusted_worker(ctx, t) || self.ledger.trusted_count() > 0)
    }

    /// Whether this node can check task `t` against its own run (it holds the model, own
    /// checks are on, and one has not failed).
    fn can_check(ctx: &Ctx<'_>, t: &ReqTask) -> bool {
        ctx.config.trust.enabled
            && ctx.config.trust.self_check
            && ctx.models.contains(&t.spec.model)
            && !matches!(t.self_check, Some(SelfCheck::Failed(_)))
    }

    /// Whether task `t` has an own check running or done.
    fn has_own(t: &ReqTask) -> bool {
        matches!(t.self_check, Some(SelfCheck::Running | SelfCheck::Done(_)))
    }

    /// Starts this node's own run of task `id`, once.
    fn start_check(ctx: &mut Ctx<'_>, id: &TaskId, t: &mut ReqTask) {
        if t.self_check.is_none() && Self::can_check(ctx, t) {
            t.self_check = Some(SelfCheck::Running);
            ctx.count(Metric::OwnChecks);
            ctx.push(Action::Check {
                task: *id,
                model: t.spec.model,
                batch: t.spec.batch,
                until_ms: t.spec.deadline_ms,
            });
        }
    }

    /// Whom a round of task `t` invites by name: up to k trusted workers (a different few
    /// for each task, by rendezvous hashing on the task id) and the unknown worker closest
    /// to trust, all connected and not known to lack the model and not on the task already.
    /// So a trusted worker is in every round where one is around, and trust keeps growing.
    fn invites(&self, ctx: &Ctx<'_>, id: &TaskId, t: &ReqTask) -> Vec<PublicKey> {
        if !ctx.config.trust.enabled {
            return Vec::new();
        }
        let me = ctx.identity.public();
        let usable = |k: &PublicKey| {
            *k != me
                && ctx.connected.contains(k)
                && ctx.presence.get(k).is_none_or(|a| a.advert.models.contains(&t.spec.model))
                && !t.assignments.iter().any(|a| a.worker == *k)
        };
        let mut trusted: Vec<(u64, PublicKey)> = self
            .ledger
            .trusted_keys()
            .filter(|k| usable(k))
            .map(|k| (selection::invite_rank(id, k), *k))
            .collect();
        trusted.sort();
        // Seeking a trusted worker: as many trusted ones as an announcement holds, nobody else.
        let k = usize::from(t.spec.redundancy);
        let take = if t.seeking { selection::MAX_INVITED } else { k.min(selection::MAX_INVITED) };
        let mut out: Vec<PublicKey> = trusted.into_iter().take(take).map(|(_, k)| k).collect();
        if t.seeking {
            return out;
        }
        // The unknown workers closest to trust: one, or k + 1 while nobody is trusted yet (so
        // the first ones get there quickly).
        let mut promising: Vec<(std::cmp::Reverse<u32>, u64, PublicKey)> = self
            .ledger
            .promising()
            .filter(|(w, _)| usable(w))
            .map(|(w, agreed)| (std::cmp::Reverse(agreed), selection::invite_rank(id, w), *w))
            .collect();
        promising.sort();
        let room = selection::MAX_INVITED.saturating_sub(out.len());
        let want = if out.is_empty() { k.saturating_add(1) } else { 1 };
        out.extend(promising.into_iter().take(want.min(room)).map(|(_, _, w)| w));
        out
    }

    /// Whether a live worker on task `t` is trusted.
    fn has_trusted_worker(&self, ctx: &Ctx<'_>, t: &ReqTask) -> bool {
        t.assignments.iter().any(|a| a.live() && self.trust_of(ctx, &a.worker) == Trust::Trusted)
    }

    /// A private coin for task `id`: whether it gets a spot check. Drawn from this node's
    /// secret, so no worker can tell in advance which tasks are checked.
    fn spot_draw(ctx: &Ctx<'_>, id: &TaskId) -> bool {
        let ppm = ctx.config.trust.spot_check_ppm;
        if ppm == 0 {
            return false;
        }
        let key = blake3::derive_key("fleetmesh 2026 spot check", ctx.identity.secret_bytes().as_slice());
        let h = blake3::keyed_hash(&key, id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_le_bytes(first) % 1_000_000 < u64::from(ppm)
    }

    /// The threshold for a new task of `model` with redundancy `k`: sized for 2k + 2
    /// participants among the holders this node estimates (from earlier rounds; before any,
    /// the neighbours that advertise the model, or, with no adverts at all, all connected
    /// peers).
    fn threshold_for(&self, ctx: &Ctx<'_>, model: &fleetmesh_crypto::ModelId, k: u8) -> u32 {
        let holders = match self.holders.get(model) {
            Some(n) => *n,
            None => {
                let advertising =
                    ctx.presence.iter().filter(|(_, a)| a.advert.models.contains(model)).count();
                // With adverts from neighbours, they say who holds it (none: a rare model,
                // everyone is admitted); without any, every connected peer might.
                let known = if ctx.presence.is_empty() { ctx.connected.len() } else { advertising };
                u32::try_from(known).unwrap_or(u32::MAX)
            }
        };
        // Invited workers (trusted ones and one close to trust) take part on top of the
        // ticket holders: the tickets are sized for the rest, k + 1 at least.
        let invited = if ctx.config.trust.enabled {
            let trusted = u32::try_from(self.ledger.trusted_count().min(usize::from(k))).unwrap_or(0);
            trusted.saturating_add(u32::from(self.ledger.promising().next().is_some()))
        } else {
            0
        };
        let expected =
            selection::expected_participants(k).saturating_sub(invited).max(u32::from(k).saturating_add(1));
        selection::threshold(expected, holders)
    }

    fn first_threshold(&self, ctx: &Ctx<'_>, model: &fleetmesh_crypto::ModelId, k: u8) -> Option<u32> {
        ctx.config.tasks.selection.then(|| self.threshold_for(ctx, model, k))
    }

    /// Learns from the task's last sampled round, once.
    fn learn_from_sample(&mut self, id: &TaskId) {
        let Some(t) = self.tasks.get_mut(id) else { return };
        let model = t.spec.model;
        if let Some(sample) = t.sample.take() {
            self.learn_holders(model, sample.ppm, sample.bidders.len());
        }
    }

    /// Learns from a closed round: `valid` bids came in under threshold `ppm`.
    pub(crate) fn learn_holders(&mut self, model: fleetmesh_crypto::ModelId, ppm: u32, valid: usize) {
        let old = self.holders.get(&model).copied();
        // A round without one eligible bid (its bids came from invited workers, or were lost)
        // is no count of holders: with no estimate yet it teaches nothing (the first one came
        // from adverts and stays); after, it lowers the estimate by a quarter. Taking it as
        // one holder made every later round admit everyone, and the average never climbed
        // back (found by the simulator at 100 vehicles).
        if valid == 0 {
            if let Some(old) = old {
                self.holders.insert(model, old.saturating_sub(old / 4).max(1));
            }
            return;
        }
        let valid = u64::try_from(valid).unwrap_or(u64::MAX);
        let seen =
            valid.saturating_mul(u64::from(selection::ALL)).checked_div(u64::from(ppm)).unwrap_or(valid);
        let seen = u32::try_from(seen).unwrap_or(u32::MAX).max(1);
        // A moving average: one round with lost bids does not halve the estimate, and no one
        // round (however many keys bid in it) moves it by more than four times. Rounded up,
        // so a small estimate can still grow.
        let next = match old {
            Some(old) => {
                let seen = u64::from(seen).min(u64::from(old).saturating_mul(4));
                let sum = u64::from(old).saturating_mul(3).saturating_add(seen);
                u32::try_from(sum.div_ceil(4)).unwrap_or(u32::MAX)
            }
            None => seen,
        };
        self.holders.insert(model, next.max(1));
    }

    /// The current estimate of `model`'s holders (tests).
    #[cfg(test)]
    pub(crate) fn holders_of(&self, model: &fleetmesh_crypto::ModelId) -> Option<u32> {
        self.holders.get(model).copied()
    }

    /// A task held in memory.
    pub fn get(&self, id: &TaskId) -> Option<&ReqTask> {
        self.tasks.get(id)
    }

    /// Every task held in memory.
    pub fn tasks(&self) -> impl Iterator<Item = (&TaskId, &ReqTask)> {
        self.tasks.iter()
    }

    /// Tasks held in memory.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is held.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub(crate) fn check_bounds(&self, config: &EngineConfig) -> Result<(), String> {
        let finished = self.tasks.values().filter(|t| t.phase.is_terminal()).count();
        // Compaction runs once a second: allow what one second can finish.
        if finished > config.max_finished_in_memory.saturating_add(4096) {
            return Err(format!("{finished} finished requested tasks in memory"));
        }
        for (id, t) in &self.tasks {
            if t.bids.len() > MAX_BIDS_PER_ROUND {
                return Err(format!("task {id} holds {} bids", t.bids.len()));
            }
            if t.counted() > usize::from(t.spec.redundancy).saturating_add(MAX_EXTRA_WORKERS)
                || t.refused() > MAX_REFUSED_PER_TASK
            {
                return Err(format!(
                    "task {id} has {} assignments ({} refused)",
                    t.assignments.len(),
                    t.refused()
                ));
            }
            if t.rejections.len() > t.assignments.len() {
                return Err(format!("task {id} recorded rejections from workers never awarded"));
            }
        }
        Ok(())
    }

    pub(crate) fn submit(
        &mut self,
        ctx: &mut Ctx<'_>,
        req: SubmitRequest,
        nonce: u64,
    ) -> Result<TaskId, SubmitError> {
        let reject = |m: String| Err(SubmitError(m));
        let d = &ctx.config.tasks;
        let model = match &req.model {
            Some(m) => match m.parse() {
                Ok(m) => m,
                Err(e) => return reject(format!("model id: {e}")),
            },
            None => match ctx.config.default_model {
                Some(m) => m,
                None => return reject("give a model id: this node has no default model".into()),
            },
        };
        if req.input.is_empty() {
            return reject("the input is empty".into());
        }
        if ctx.disk_low {
            return reject("this node's data disk is nearly full; free some space before submitting".into());
        }
        let max_input = fleetmesh_protocol::limits::MAX_INPUT_BYTES;
        if req.input.len() > max_input {
            return reject(format!(
                "input of {} bytes exceeds the limit of {max_input} bytes",
                req.input.len()
            ));
        }
        let input_digest = match fleetmesh_protocol::batch::input_digest(req.batch, &req.input) {
            Ok(d) => d,
            Err(e) => return reject(e.to_string()),
        };
        if let Some(tol) = req.tolerance.filter(|t| *t > fleetmesh_protocol::output::MAX_TOLERANCE) {
            return reject(format!(
                "a tolerance of {tol} millionths is more than the largest, {} (10 %)",
                fleetmesh_protocol::output::MAX_TOLERANCE
            ));
        }
        let items = req.batch.unwrap_or(1);
        let item_size = (req.input.len() as u64).checked_div(u64::from(items)).unwrap_or(0);
        if let Some(&out) = ctx.config.model_outputs.get(&model).filter(|_| req.batch.is_some()) {
            let max_output = fleetmesh_protocol::limits::MAX_OUTPUT_BYTES as u64;
            if fleetmesh_protocol::batch::output_limit(req.batch, out) > max_output {
                return reject(format!(
                    "a batch of {items} outputs of {out} bytes may exceed the {max_output}-byte limit on a result; \
                     send fewer inputs per batch"
                ));
            }
        }
        if let Some(&expected) = ctx.config.model_inputs.get(&model) {
            if item_size != expected {
                let each = if req.batch.is_some() { format!(" (each of {items})") } else { String::new() };
                return reject(format!(
                    "the input{each} has {item_size} bytes but model {model} takes {expected} ({} little-endian f32)",
                    expected / 4
                ));
            }
        }
        let k = req.redundancy.unwrap_or(d.redundancy);
        let max_k = fleetmesh_protocol::limits::MAX_REDUNDANCY;
        if k == 0 || k > max_k {
            return reject(format!("redundancy must be 1 to {max_k}"));
        }
        let bid_window_ms = req.bid_window_ms.unwrap_or(d.bid_window_ms);
        let exec_timeout_ms = req.exec_timeout_ms.unwrap_or(d.exec_timeout_ms);
        if bid_window_ms < 10 || exec_timeout_ms < 10 {
            return reject("bid_window_ms and exec_timeout_ms must be at least 10".into());
        }
        if exec_timeout_ms > crate::worker::MAX_EXEC_TIMEOUT_MS {
            return reject(format!(
                "exec_timeout_ms must be at most {} (workers refuse longer ones)",
                crate::worker::MAX_EXEC_TIMEOUT_MS
            ));
        }
        let deadline = req.deadline_ms.unwrap_or(d.deadline_ms);
        if deadline < u64::from(bid_window_ms).saturating_add(u64::from(exec_timeout_ms)) {
            return reject("deadline_ms must leave room for one bid window plus one execution".into());
        }
        if deadline > MAX_DEADLINE_MS {
            return reject(format!("deadline_ms must be at most {MAX_DEADLINE_MS} (one week)"));
        }
        let now = ctx.now;
        let spec = TaskSpec {
            v: WIRE_VERSION,
            model,
            input_digest,
            input_size: req.input.len() as u64,
            redundancy: k,
            // The default is per input: a batch of n pays n times it (a worker's floor is per
            // input too).
            max_price: req.max_price.unwrap_or(d.max_price.saturating_mul(u64::from(items))),
            created_ms: now,
            bid_window_ms,
            exec_timeout_ms,
            deadline_ms: now.saturating_add(deadline),
            nonce,
            batch: req.batch,
            tolerance: req.tolerance,
        };
        let spec_env = spec.sign(ctx.identity);
        let id = task_id_of(&spec_env);
        if self.tasks.contains_key(&id) {
            return reject("this exact task was already submitted".into());
        }
        let task = ReqTask {
            spec_env,
            spec,
            phase: Phase::Bidding,
            round: 0,
            bid_deadline_ms: now.saturating_add(u64::from(bid_window_ms)),
            bids: Vec::new(),
            bids_total: 0,
            empty_rounds: 0,
            bid_root: None,
            bid_count: 0,
            select_ppm: self.first_threshold(ctx, &model, k),
            spot_check: false,
            invited: Vec::new(),
            announced_ppm: None,
            anchored: false,
            seeking: false,
            seek_rounds: 0,
            self_check: None,
            offer_round: false,
            standby: Vec::new(),
            assignments: Vec::new(),
            outputs: Vec::new(),
            rejections: Vec::new(),
            verified: None,
            receipts: Vec::new(),
            unable: Vec::new(),
            failure: None,
            times: Timings { submitted_ms: now, ..Timings::default() },
            announce_pending: true,
            announce_in_flight: false,
            next_announce_ms: 0,
            spec_put: false,
            sample: None,
        };
        ctx.push(Action::Persist(vec![
            StoreOp { table: Table::RequestInputs, key: id, value: Some(req.input) },
            task.persist(&id),
        ]));
        self.tasks.insert(id, task);
        ctx.count(Metric::TasksSubmitted);
        if !self.award_on_offers(ctx, &id) {
            self.open_dirty.insert(model);
            self.announce(ctx, &id);
        }
        Ok(id)
    }

    /// Standing offers cut a task to award, result and receipt: when at least k connected
    /// neighbours' fresh offers cover a new task, it is decided at once on them as if they
    /// were the round's bids (every offer is admitted, the lowest tickets win, trusted
    /// workers first; the award commits to the offers' digests), with no announcement and no
    /// bid window. False when there are too few, and the task is announced as usual.
    fn award_on_offers(&mut self, ctx: &mut Ctx<'_>, id: &TaskId) -> bool {
        if !ctx.config.tasks.offers || !ctx.config.tasks.selection {
            return false;
        }
        let Some(t) = self.tasks.get(id) else { return false };
        let me = ctx.identity.public();
        let mut offers: Vec<(Trust, u64, winner::OpenedBid)> = ctx
            .presence
            .iter()
            .filter(|(k, _)| **k != me && ctx.connected.contains(k))
            .filter(|(k, _)| !Self::backing_off(&self.offer_backoff, ctx, k))
            .filter(|(k, _)| admitted(ctx, &self.operators, k))
            .filter(|(_, a)| winner::offer_covers(&a.advert, &t.spec, ctx.now))
            .filter_map(|(k, a)| {
                let trust = self.trust_of(ctx, k);
                (trust != Trust::Bad).then(|| {
                    let ticket = selection::ticket(id, t.round, k);
                    (trust, ticket, winner::offer_bid((id, &t.spec), t.round, *k, a.digest, &a.advert))
                })
            })
            .collect();
        if offers.len() < usize::from(t.spec.redundancy) {
            return false;
        }
        // The best few by trust, then ticket: deciding on every neighbour's offer would cost
        // a decline record each.
        offers.sort_by_key(|(trust, ticket, _)| (*trust, *ticket));
        offers.truncate(MAX_OFFERS_PER_TASK);
        let offers: Vec<winner::OpenedBid> = offers.into_iter().map(|(_, _, o)| o).collect();
        let Some(t) = self.tasks.get_mut(id) else { return false };
        t.offer_round = true;
        t.announced_ppm = None;
        t.invited.clear();
        ctx.count(Metric::OfferAwards);
        self.decide(ctx, id, offers, Some(selection::ALL));
        true
    }

    fn persist(&self, ctx: &mut Ctx<'_>, id: &TaskId) {
        if let Some(t) = self.tasks.get(id) {
            ctx.push(Action::Persist(vec![t.persist(id)]));
        }
    }

    /// Publishes the current round's announcement; its window starts when it is out.
    fn announce(&mut self, ctx: &mut Ctx<'_>, id: &TaskId) {
        let invited = match self.tasks.get(id) {
            Some(t) if !t.announce_in_flight && t.round_ppm().is_some() => self.invites(ctx, id, t),
            _ => Vec::new(),
        };
        let Some(t) = self.tasks.get_mut(id) else { return };
        if t.announce_in_flight {
            return;
        }
        // Workers that missed the gossip find the spec in the DHT.
        if !t.spec_put {
            t.spec_put = true;
            ctx.push(Action::PutRecord {
                key: ids::task_record_key(id),
                value: fleetmesh_protocol::encode(&t.spec_env),
            });
        }
        t.invited = invited;
        let a = Announcement {
            v: WIRE_VERSION,
            task_id: *id,
            model: t.spec.model,
            round: t.round,
            bid_deadline_ms: ctx.now.saturating_add(t.window_ms()).min(t.spec.deadline_ms),
            max_price: t.spec.max_price,
            spec: Some(t.spec_env.clone()),
            select_ppm: t.round_ppm(),
            invited: t.invited.clone(),
        };
        if let Some(p) = t.select_ppm.filter(|_| !t.seeking) {
            if t.sample.as_ref().is_none_or(|s| s.round != t.round) {
                t.sample = Some(Sample { round: t.round, ppm: p, bidders: BTreeSet::new() });
            }
        }
        t.bid_deadline_ms = a.bid_deadline_ms;
        t.announced_ppm = a.select_ppm;
        t.announce_in_flight = true;
        let env = a.sign(ctx.identity);
        ctx.push(Action::Publish {
            topic: Topic::Tasks,
            data: fleetmesh_protocol::encode(&env),
            announce: Some((*id, a.round)),
        });
    }

    pub(crate) fn on_published(&mut self, ctx: &mut Ctx<'_>, id: TaskId, round: u32, ok: bool) {
        let Some(t) = self.tasks.get_mut(&id) else { return };
        if t.round != round {
            return;
        }
        t.announce_in_flight = false;
        if t.phase != Phase::Bidding || !t.announce_pending {
            return;
        }
        if !ok {
            t.next_announce_ms = ctx.now.saturating_add(ANNOUNCE_RETRY_MS);
        } else {
            t.announce_pending = false;
            if t.times.announced_ms == 0 {
                t.times.announced_ms = ctx.now;
            }
            ctx.trace(TaskRecord { round: Some(round), ..record(event::ANNOUNCED, &id) });
        }
    }

    pub(crate) fn on_bid(&mut self, ctx: &mut Ctx<'_>, from: PublicKey, bid: SignedEnvelope) -> TaskResponse {
        ctx.count(Metric::BidsReceived);
        let Ok(b) = fleetmesh_protocol::Bid::open(&bid) else {
            return TaskResponse::Refused(Refusal::Invalid("bid does not verify".into()));
        };
        if from != bid.signer {
            return TaskResponse::Refused(Refusal::Invalid("bid signed by another peer".into()));
        }
        let Some(t) = self.tasks.get_mut(&b.task_id) else {
            return TaskResponse::Refused(Refusal::UnknownTask);
        };
        // Every valid bid the sampled round admitted counts towards the holder estimate, once
        // per bidder, even one that comes after the round closed.
        let me = ctx.identity.public();
        if let Some(sample) = t.sample.as_mut() {
            if b.round == sample.round
                && sample.bidders.len() < MAX_SAMPLE_BIDDERS
                && selection::eligible(&b.task_id, sample.round, &from, sample.ppm)
                && winner::bid_problem(&b.task_id, &t.spec, &me, sample.round, &from, &b).is_none()
            {
                sample.bidders.insert(from);
            }
        }
        if t.phase != Phase::Bidding {
            return TaskResponse::Refused(Refusal::BidDeclined(DeclineReason::TaskClosed));
        }
        if b.round != t.round {
            return TaskResponse::Refused(Refusal::BidDeclined(DeclineReason::Late));
        }
        // A closed mesh refuses strangers' bids at once: they would only take the round's
        // places from its operators' vehicles.
        if !admitted(ctx, &self.operators, &from) {
            return TaskResponse::Refused(Refusal::BidDeclined(DeclineReason::NotSelected));
        }
        // Only bids that can rank enter the round, so they alone can close it early.
        if let Some(reason) = winner::bid_problem(&b.task_id, &t.spec, &me, t.round, &from, &b) {
            return TaskResponse::Refused(Refusal::BidDeclined(reason));
        }
        if t.round_ppm().is_some_and(|p| !selection::admitted(&b.task_id, t.round, &from, p, &t.invited)) {
            return TaskResponse::Refused(Refusal::BidDeclined(DeclineReason::NotSelected));
        }
        // A worker that returned an output other than a verified one gets no more work here.
        if ctx.config.trust.enabled && self.ledger.trust(&from) == Trust::Bad {
            return TaskResponse::Refused(Refusal::BidDeclined(DeclineReason::NotSelected));
        }
        if t.assignments.iter().any(|a| a.worker == from) {
            return TaskResponse::Refused(Refusal::BidDeclined(DeclineReason::DuplicateBidder));
        }
        // A vehicle that says it leaves before the task's timeout would end cannot be counted
        // on (an honest one does not bid then).
        if !fleetmesh_protocol::winner::finishes_before(b.depart_ms, t.spec.exec_timeout_ms, ctx.now) {
            return TaskResponse::Refused(Refusal::BidDeclined(DeclineReason::NotSelected));
        }
        if t.bids.iter().any(|e| e.signer == bid.signer) || t.bids.len() >= MAX_BIDS_PER_ROUND {
            return TaskResponse::Refused(Refusal::BidDeclined(DeclineReason::DuplicateBidder));
        }
        t.bids.push(bid);
        t.bids_total = t.bids_total.saturating_add(1);
        let id = b.task_id;
        ctx.trace(TaskRecord {
            round: Some(b.round),
            peer: Some(from.peer_id()),
            price: Some(b.price),
            ..record(event::BID_RECEIVED, &id)
        });
        if self.round_can_close_early(ctx, &id) {
            self.close_round(ctx, &id);
        }
        TaskResponse::Ack
    }

    /// All connected peers that advertise the model have bid (and at least k bids are in).
    fn round_can_close_early(&self, ctx: &Ctx<'_>, id: &TaskId) -> bool {
        let Some(t) = self.tasks.get(id) else { return false };
        if !ctx.config.tasks.early_close || t.announce_pending {
            return false;
        }
        let needed = usize::from(t.spec.redundancy).saturating_sub(t.live_count());
        let capable: BTreeSet<&PublicKey> = ctx
            .presence
            .iter()
            .filter(|(p, adv)| ctx.connected.contains(p) && adv.advert.models.contains(&t.spec.model))
            .filter(|(p, _)| !t.assignments.iter().any(|a| a.worker == **p))
            // Only the neighbours this round admits are waited for.
            .filter(|(p, _)| t.round_ppm().is_none_or(|s| selection::admitted(id, t.round, p, s, &t.invited)))
            .map(|(p, _)| p)
            .collect();
        // Every capable neighbour has bid: bids from others do not stand in for theirs.
        let capable_bids = t.bids.iter().filter(|b| capable.contains(&b.signer)).count();
        t.bids.len() >= needed.max(1) && capable_bids >= capable.len()
    }

    /// Applies the winner rule to the round's bids and awards the winners.
    fn close_round(&mut self, ctx: &mut Ctx<'_>, id: &TaskId) {
        let Some(t) = self.tasks.get_mut(id) else { return };
        // Every bid was verified when it arrived (`on_bid`, the only way into `t.bids`; a
        // restart clears the bids of an open round): decoded, not verified a second time.
        let bids: Vec<winner::OpenedBid> = std::mem::take(&mut t.bids)
            .into_iter()
            .filter_map(|e| {
                let bid = fleetmesh_protocol::Bid::open_unverified(&e).ok()?;
                Some(winner::OpenedBid { digest: fleetmesh_protocol::bid_digest(&e), bidder: e.signer, bid })
            })
            .collect();
        let ppm = t.round_ppm();
        self.decide(ctx, id, bids, ppm);
    }

    /// Decides the current round of task `id` on `bids` (a round's signed bids, or standing
    /// offers standing in for them) under threshold `ppm`, and awards the winners.
    fn decide(&mut self, ctx: &mut Ctx<'_>, id: &TaskId, bids: Vec<winner::OpenedBid>, ppm: Option<u32>) {
        let me = ctx.identity.public();
        // Reputation: whether this task still needs a trusted worker to verify.
        let Some(t) = self.tasks.get(id) else { return };
        let anchor = self.anchor_required(ctx, t);
        let no_trusted = anchor && !self.has_trusted_worker(ctx, t);
        let trust_on = ctx.config.trust.enabled;
        let ledger = &self.ledger;
        let Some(t) = self.tasks.get_mut(id) else { return };
        t.anchored |= anchor;
        let assigned = t.awarded_keys();
        // Workers already on this task (or failed on it) take no part in a new round.
        let bids: Vec<winner::OpenedBid> =
            bids.into_iter().filter(|b| !assigned.contains(&b.bidder)).collect();
        let mut decision = winner::choose_opened(id, &t.spec, &me, t.round, ppm, &t.invited, bids);
        if trust_on {
            // Trusted bidders first (by ticket among them), then unknown ones, those with more
            // corroborated work first; bad ones never.
            decision.ranked.retain(|r| ledger.trust(&r.bidder) != Trust::Bad);
            decision
                .ranked
                .sort_by_key(|r| (ledger.trust(&r.bidder), std::cmp::Reverse(ledger.agreed(&r.bidder))));
        }
        // Operators (docs/MARKET.md): a closed mesh admits only its listed operators'
        // vehicles, and a task gets at most one worker of any operator, counting the ones
        // already on it. An operator is known from a neighbour's advert (its certificate,
        // checked on arrival, still valid); a worker without one stands for itself.
        let operators = &self.operators;
        decision.ranked.retain(|r| admitted(ctx, operators, &r.bidder));
        let mut operators_on = operators_on(ctx, t);
        decision.ranked.retain(|r| operator_of(ctx, &r.bidder).is_none_or(|o| operators_on.insert(o)));
        let round_trusted = decision.ranked.iter().any(|r| ledger.trust(&r.bidder) == Trust::Trusted);
        // Trusting nobody yet (first award), or with no trusted worker for this task in
        // reach, a requester that holds the model runs the task itself and checks the
        // workers against its own output: colluding fresh keys can neither pass a wrong
        // output nor earn trust by agreeing with each other.
        let check_here = (!anchor && t.assignments.is_empty()) || (no_trusted && !round_trusted);
        let had_own = Self::has_own(t);
        if trust_on && check_here {
            Self::start_check(ctx, id, t);
        }
        let checking = !had_own && Self::has_own(t);
        // Still needing a trusted worker: only when there is no own run to check against.
        let seeking = no_trusted && !Self::has_own(t);
        if !seeking {
            t.seeking = false;
        }
        let live = t.live_count();
        let needed = usize::from(t.spec.redundancy).saturating_sub(live).max(1);
        let now = ctx.now;
        // A task whose workers are all unknown, where a trusted holder is around, cannot
        // verify with more unknown workers: widen the next round until a trusted one bids
        // (keeping this round's bidders as standby), up to the deadline.
        if round_trusted {
            t.seeking = false;
        }
        if seeking && !round_trusted && live > 0 && !decision.ranked.is_empty() {
            for r in &decision.ranked {
                if t.standby.len() < MAX_BIDS_PER_ROUND && !t.standby.iter().any(|(w, _)| *w == r.bidder) {
                    t.standby.push((r.bidder, r.bid.price));
                }
            }
            t.seeking = true;
            if now >= t.spec.deadline_ms {
                self.fail(ctx, id, "deadline passed while looking for a trusted worker".into());
            } else {
                self.next_round(ctx, id);
            }
            return;
        }
        // Selection: what this round says about how many hold the model, and a wider next
        // round when this one drew fewer bids than it needed.
        // A round that sought a trusted worker and could invite none is as empty as a round
        // open to all: it counts towards giving up (no announcing until the deadline).
        let hopeless = t.seeking && t.invited.is_empty();
        let narrowed = ppm.is_some_and(|p| p < selection::ALL) && !hopeless;
        if let Some(p) = t.select_ppm.filter(|_| !t.seeking) {
            if decision.ranked.len() < needed {
                t.select_ppm = Some(selection::escalate(p));
            }
        }
        if seeking && !round_trusted {
            t.seeking = true;
        }
        // In a round that admitted only part of the holders, an empty round says nothing:
        // widen it rather than believe reports (which anyone connected can send).
        if decision.ranked.is_empty() && !t.unable.is_empty() && !narrowed {
            // No valid bid, and workers that hold the model said why they cannot run it:
            // that is the true reason, known now.
            let (n, first) = (t.unable.len(), t.unable[0].1.to_string());
            self.fail(ctx, id, format!("no worker can run this task: {first} (said by {n} worker(s))"));
            return;
        }
        if decision.ranked.is_empty() {
            // Only consecutive rounds without a single valid bid count towards giving up;
            // re-auctions after a worker failed are not "no bids".
            // A round that admitted only part of the holders is widened, not counted: only
            // rounds open to everyone say nobody would take the task.
            if !narrowed {
                t.empty_rounds = t.empty_rounds.saturating_add(1);
            }
            let empty = t.empty_rounds;
            if empty >= ctx.config.tasks.max_rounds || now >= t.spec.deadline_ms {
                let took_part = t.counted();
                let reason = if hopeless {
                    format!(
                        "no trusted worker reachable in {empty} rounds: the task's workers are unknown \
                         and this node cannot check them itself (it does not hold model {}, or its own \
                         check is off or failed)",
                        t.spec.model
                    )
                } else if took_part == 0 {
                    format!(
                        "no valid bids in {empty} consecutive bid rounds (does any node hold model {}?)",
                        t.spec.model
                    )
                } else {
                    format!(
                        "no valid bids in {empty} consecutive bid rounds for another worker: redundancy {} \
                         needs {} distinct workers and {took_part} took part (a node never works its own \
                         task, so k needs at least k other nodes holding the model)",
                        t.spec.redundancy, t.spec.redundancy
                    )
                };
                self.fail(ctx, id, reason);
                return;
            }
            self.next_round(ctx, id);
            return;
        }
        t.empty_rounds = 0;
        t.bid_root = Some(winner::bid_set_root(&decision.bid_set));
        t.bid_count = u32::try_from(decision.bid_set.len()).unwrap_or(u32::MAX);
        // Never more workers on one task than its bound, whatever a round brought.
        let allowed =
            usize::from(t.spec.redundancy).saturating_add(MAX_EXTRA_WORKERS).saturating_sub(t.counted());
        if allowed == 0 {
            let reason = format!("gave up after {} workers failed or disagreed", t.counted());
            self.fail(ctx, id, reason);
            return;
        }
        let take = needed.min(decision.ranked.len()).min(allowed);
        // Still no trusted worker on a task that needs one: the rest is sought at once.
        let short = (take < needed && take < allowed) || (seeking && !round_trusted);
        let (win, rest) = decision.ranked.split_at(take);
        let winners: Vec<(PublicKey, u64)> = win.iter().map(|r| (r.bidder, r.bid.price)).collect();
        let mut spot = None;
        let mut rest: Vec<(PublicKey, u64)> = rest.iter().map(|r| (r.bidder, r.bid.price)).collect();
        // A check by one more worker, on a task's first award: trusted winners get an unknown
        // worker beside them on a private random draw (a spot check); before anyone is
        // trusted, a lone unknown k = 1 winner is always replicated. One more agreeing result
        // is then needed. How unknown workers earn trust, and how a trusted worker that turns
        // is caught.
        let all_trusted = winners.iter().all(|(w, _)| ledger.trust(w) == Trust::Trusted);
        if trust_on
            && t.assignments.is_empty()
            && winners.len() < allowed
            && (if anchor {
                all_trusted && Self::spot_draw(ctx, id)
            } else {
                t.spec.redundancy == 1 && !checking && !Self::has_own(t)
            })
        {
            if let Some(i) = rest.iter().position(|(w, _)| ledger.trust(w) == Trust::Unknown) {
                spot = Some(rest.remove(i));
                t.spot_check = true;
                ctx.count(Metric::SpotChecks);
            }
        }
        if t.offer_round {
            // Kept for replacements: a few, not every offer (the task is persisted with them).
            let keep =
                usize::try_from(selection::expected_participants(t.spec.redundancy)).unwrap_or(usize::MAX);
            rest.truncate(keep);
        }
        t.standby = rest;
        t.phase = Phase::Running;
        if t.times.awarded_ms == 0 {
            t.times.awarded_ms = now;
        }
        let (round, offer_round) = (t.round, t.offer_round);
        let model = t.spec.model;
        let declined: Vec<(PublicKey, DeclineReason)> = decision
            .declined
            .into_iter()
            .filter(|(pk, _)| !winners.iter().chain(&spot).any(|(w, _)| w == pk))
            .collect();
        // The award is persisted first. Losers hear nothing (wire version 2: no signed
        // declines); their bids are recorded in the trace with the reason.
        self.award(ctx, id, winners, false);
        // The spot checker gets an award of its own: an award never names more than k.
        if let Some(s) = spot {
            self.award(ctx, id, vec![s], false);
        }
        // A task decided on offers was never in the open-tasks record: nothing to rewrite.
        if !offer_round {
            self.open_dirty.insert(model);
        }
        // Offers that were not chosen were no bids: nothing to record about them.
        let declined = if offer_round { Vec::new() } else { declined };
        for (pk, reason) in declined {
            ctx.trace(TaskRecord {
                round: Some(round),
                peer: Some(pk.peer_id()),
                reason: Some(format!("{reason:?}")),
                ..record(event::BID_DECLINED, id)
            });
        }
        // A round that brought fewer workers than needed: the rest are sought at once (in a
        // wider round), not after the first ones' results.
        if short {
            self.next_round(ctx, id);
        }
    }

    /// Starts the next bid round (after an empty round or to replace a worker).
    fn next_round(&mut self, ctx: &mut Ctx<'_>, id: &TaskId) {
        self.learn_from_sample(id);
        let Some(t) = self.tasks.get_mut(id) else { return };
        t.phase = Phase::Bidding;
        t.round = t.round.saturating_add(1);
        if t.seeking {
            t.seek_rounds = t.seek_rounds.saturating_add(1);
        }
        t.bids.clear();
        t.unable.clear();
        t.offer_round = false;
        t.announce_pending = true;
        t.announce_in_flight = false;
        let model = t.spec.model;
        // Persisted before it is announced: a restart never re-announces a round peers saw.
        self.persist(ctx, id);
        self.announce(ctx, id);
        self.open_dirty.insert(model);
    }

    /// Signs an award naming `winners` and sends it, with the input, to each. `standby`: the
    /// winners come from the standby list, perhaps ranked in an earlier round than this one.
    fn award(&mut self, ctx: &mut Ctx<'_>, id: &TaskId, winners: Vec<(PublicKey, u64)>, standby: bool) {
        let Some(t) = self.tasks.get_mut(id) else { return };
        let deadline = ctx.now.saturating_add(u64::from(t.spec.exec_timeout_ms)).min(t.spec.deadline_ms);
        // Taken on the winners' standing offers: a round decided on offers, or a standby
        // whose offer covers the task (kept from an earlier round, it then takes the award
        // under this round's number without having bid in it). Winners of a round decided on
        // bids get a plain award, so `offer` with a round's first award says its `bid_root`
        // commits to offers.
        let offer = t.offer_round
            || (standby
                && winners.iter().all(|(w, _)| {
                    ctx.presence.get(w).is_some_and(|a| winner::offer_covers(&a.advert, &t.spec, ctx.now))
                }));
        let award = Award {
            v: WIRE_VERSION,
            task_id: *id,
            round: t.round,
            bid_root: t.bid_root,
            bid_count: t.bid_count,
            winners: winners.iter().map(|(w, _)| *w).collect(),
            result_deadline_ms: deadline,
            select_ppm: t.announced_ppm,
            invited: t.invited.clone(),
            offer,
        }
        .sign(ctx.identity);
        for (worker, price) in &winners {
            t.assignments.push(Assignment {
                worker: *worker,
                price: *price,
                deadline_ms: deadline,
                status: AssignStatus::Awarded,
                on_offer: offer,
                operator: operator_of(ctx, worker),
                own: None,
                energy_mj: None,
                awarded_ms: ctx.now,
                released_ms: None,
                acked_ms: None,
            });
        }
        let spec = t.spec_env.clone();
        let (round, bids) = (t.round, t.bid_count);
        ctx.push(Action::Persist(vec![t.persist(id)]));
        ctx.trace(TaskRecord {
            round: Some(round),
            bids: Some(bids),
            reason: t.offer_round.then(|| fleetmesh_trace::analyze::OFFERS.to_owned()),
            winners: Some(winners.iter().map(|(w, _)| w.peer_id()).collect()),
            ..record(event::AWARDED, id)
        });
        for (worker, _) in winners {
            ctx.push(Action::Send {
                to: worker,
                request: Outgoing::Award { spec: spec.clone(), award: award.clone(), task: *id },
                tag: SendTag::Award { task: *id, worker },
            });
        }
    }

    /// A worker says it cannot run a task: a failed run replaces it at once; a wrong input
    /// is remembered for the round, and fails the task with that reason if no valid bid
    /// comes (a worker's word never outweighs a bid).
    pub(crate) fn on_unable(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: PublicKey,
        report: SignedEnvelope,
    ) -> TaskResponse {
        let Ok(u) = Unable::open(&report) else {
            return TaskResponse::Refused(Refusal::Invalid("report does not verify".into()));
        };
        if report.signer != from {
            return TaskResponse::Refused(Refusal::Invalid("report signed by another peer".into()));
        }
        let Some(t) = self.tasks.get_mut(&u.task_id) else {
            return TaskResponse::Refused(Refusal::UnknownTask);
        };
        if t.phase.is_terminal() {
            return TaskResponse::Ack;
        }
        let awarded = t.assignments.iter().any(|a| a.worker == from && a.waiting());
        // A release counts as a refusal only early in the worker's result window: one held
        // until just before the deadline stalls the task as a vanished worker does, and counts
        // as one (towards the task's bound of failed workers).
        let early =
            t.assignments.iter().rev().find(|a| a.worker == from).is_some_and(|a| {
                ctx.now.saturating_add(u64::from(t.spec.exec_timeout_ms) / 2) < a.deadline_ms
            });
        let fresh = !t.unable.iter().any(|(w, _)| *w == from);
        let in_round = t.phase == Phase::Bidding && u.round == t.round;
        match &u.reason {
            UnableReason::ExecutionFailed { .. } if awarded => {
                ctx.trace(TaskRecord {
                    peer: Some(from.peer_id()),
                    reason: Some(u.reason.to_string()),
                    ..record(event::RESULT_REJECTED, &u.task_id)
                });
                self.worker_failed(ctx, &u.task_id, &from, u.reason.to_string());
            }
            // Handed back before the work was done (a vehicle that started driving): another
            // worker at once. A release is a refusal, not a failure, up to the task's bound of
            // refusals (a worker that takes awards only to hand them back costs time, and
            // beyond the bound it counts as failed).
            UnableReason::Released { .. } if awarded => {
                ctx.count(Metric::TasksReleased);
                if let Some(a) = t.assignments.iter_mut().rev().find(|a| a.worker == from) {
                    a.released_ms = Some(ctx.now);
                }
                ctx.trace(TaskRecord {
                    peer: Some(from.peer_id()),
                    reason: Some(u.reason.to_string()),
                    ..record(event::RELEASE_RECEIVED, &u.task_id)
                });
                if early && t.refused() < MAX_REFUSED_PER_TASK {
                    self.award_refused(ctx, &u.task_id, &from, u.reason.to_string());
                } else {
                    self.worker_failed(ctx, &u.task_id, &from, u.reason.to_string());
                }
            }
            // Believed only where this node cannot check it: when it knows the model's input
            // size, submit already did, and a report saying otherwise is a lie meant to fail
            // the task. It must also be about this task's input. (A stranger's false report
            // still fails a task whose round drew no bid at all: docs/SECURITY.md.)
            UnableReason::InputSize { expected, got }
                if in_round
                    && fresh
                    && t.unable.len() < MAX_UNABLE_PER_ROUND
                    && *got == t.spec.item_size()
                    && *expected != t.spec.item_size()
                    && !ctx.config.model_inputs.contains_key(&t.spec.model) =>
            {
                t.unable.push((from, u.reason));
            }
            _ => {}
        }
        TaskResponse::Ack
    }

    pub(crate) fn on_award_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: TaskId,
        worker: PublicKey,
        resp: Result<TaskResponse, SendFailure>,
    ) {
        let reason = match resp {
            Ok(TaskResponse::Ack) => {
                let now = ctx.now;
                if let Some(a) = self.assignment_mut(&id, &worker) {
                    if a.status == AssignStatus::Awarded {
                        a.status = AssignStatus::Acked;
                        a.acked_ms = Some(now);
                    }
                }
                return;
            }
            Err(SendFailure::InputMissing(m)) => {
                self.fail(ctx, &id, format!("the task input is missing from the store ({m})"));
                return;
            }
            // Refused before doing any work: busy (its queue, or its jobs from this
            // requester, are full), its offer gone, or its disk full, for an award on its
            // offer; or no bid of its for this round (a standby awarded under a later round,
            // a worker that restarted). No failure of the worker's: it does not count towards
            // the task's workers (up to a bound), and its offers are passed over until it
            // advertises again.
            Ok(TaskResponse::Refused(
                r @ (Refusal::NoCapacity | Refusal::NotAWinner | Refusal::Unavailable),
            )) if self
                .assignment_mut(&id, &worker)
                .is_some_and(|a| a.waiting() && (a.on_offer || matches!(r, Refusal::NotAWinner)))
                && self.tasks.get(&id).is_some_and(|t| t.refused() < MAX_REFUSED_PER_TASK) =>
            {
                self.award_refused(ctx, &id, &worker, format!("award refused before any work: {r:?}"));
                return;
            }
            // A batch's input refused by a node from before batches (it reads the spec as one
            // input, and the input does not hash to the root): not a failure either.
            Ok(TaskResponse::Refused(Refusal::InputMismatch))
                if self
                    .tasks
                    .get(&id)
                    .is_some_and(|t| t.spec.batch.is_some() && t.refused() < MAX_REFUSED_PER_TASK)
                    && self.assignment_mut(&id, &worker).is_some_and(|a| a.waiting()) =>
            {
                let why = "a batch refused (InputMismatch: a node from before batches)".to_owned();
                self.award_refused(ctx, &id, &worker, why);
                return;
            }
            Ok(other) => format!("award refused: {other:?}"),
            Err(e) => format!("award not delivered: {e}"),
        };
        self.worker_failed(ctx, &id, &worker, reason);
    }

    /// A worker refused an award before doing any work: it took no part (its assignment is
    /// marked [`AssignStatus::Refused`], not counted towards the task's workers, and it is not
    /// asked again for this task), its offers are passed over until it advertises again, and
    /// another worker is brought in.
    fn award_refused(&mut self, ctx: &mut Ctx<'_>, id: &TaskId, worker: &PublicKey, reason: String) {
        self.offer_backoff.insert(*worker, ctx.now);
        let Some(a) = self.assignment_mut(id, worker) else { return };
        if !a.waiting() {
            return;
        }
        tracing::debug!(task = %id, worker = %worker.fmt_short(), %reason, "award refused; moving on");
        a.status = AssignStatus::Refused(reason);
        if self.tasks.get(id).is_some_and(|t| !t.can_still_verify()) {
            self.add_worker(ctx, id);
        } else {
            self.persist(ctx, id);
        }
    }

    /// Whether `worker` refused an award and has not advertised since (or
    /// [`OFFER_BACKOFF_MS`] has not passed): its offer is not to be trusted to stand yet.
    fn backing_off(backoff: &BoundedMap<PublicKey, u64>, ctx: &Ctx<'_>, worker: &PublicKey) -> bool {
        backoff.get(worker).is_some_and(|refused_at| {
            ctx.now < refused_at.saturating_add(OFFER_BACKOFF_MS)
                || ctx.presence.get(worker).is_none_or(|a| a.received_ms <= *refused_at)
        })
    }

    fn assignment_mut(&mut self, id: &TaskId, worker: &PublicKey) -> Option<&mut Assignment> {
        self.tasks.get_mut(id)?.assignments.iter_mut().rev().find(|a| a.worker == *worker)
    }

    /// A worker will not deliver: mark it and bring in a replacement.
    fn worker_failed(&mut self, ctx: &mut Ctx<'_>, id: &TaskId, worker: &PublicKey, reason: String) {
        let Some(a) = self.assignment_mut(id, worker) else { return };
        if !a.waiting() {
            return;
        }
        tracing::info!(task = %id, worker = %worker.fmt_short(), %reason, "worker failed; re-awarding");
        a.status = AssignStatus::Failed(reason);
        ctx.count(Metric::Reawards);
        if self.tasks.get(id).is_some_and(|t| !t.can_still_verify()) {
            self.add_worker(ctx, id);
        } else {
            self.persist(ctx, id);
        }
    }

    /// Brings one more worker onto a running task: the next standby bidder, or a new round.
    fn add_worker(&mut self, ctx: &mut Ctx<'_>, id: &TaskId) {
        let Some(t) = self.tasks.get(id) else { return };
        let no_trusted = self.anchor_required(ctx, t) && !self.has_trusted_worker(ctx, t);
        let ledger = &self.ledger;
        let backoff = &self.offer_backoff;
        let Some(t) = self.tasks.get_mut(id) else { return };
        if t.phase.is_terminal() {
            return;
        }
        // Standbys that just refused an award elsewhere (busy) are not asked again now; nor
        // one of an operator that has a worker on the task now (a later round put one there).
        t.standby.retain(|(w, _)| !Self::backing_off(backoff, ctx, w));
        let on = operators_on(ctx, t);
        let operators = &self.operators;
        t.standby.retain(|(w, _)| {
            admitted(ctx, operators, w) && operator_of(ctx, w).is_none_or(|o| !on.contains(&o))
        });
        // No trusted worker on the task: check it here if this node can; then any worker
        // will do.
        if no_trusted {
            Self::start_check(ctx, id, t);
        }
        if no_trusted && !Self::has_own(t) {
            // Only a trusted worker can verify this task now: the first one on standby, or
            // a wider round (unless one is already taking bids).
            if let Some(i) = t.standby.iter().position(|(w, _)| ledger.trust(w) == Trust::Trusted) {
                if t.counted() < usize::from(t.spec.redundancy).saturating_add(MAX_EXTRA_WORKERS) {
                    let next = t.standby.remove(i);
                    self.award(ctx, id, vec![next], true);
                    return;
                }
            } else if t.phase == Phase::Bidding {
                return;
            } else if ctx.now < t.spec.deadline_ms
                && t.counted() < usize::from(t.spec.redundancy).saturating_add(MAX_EXTRA_WORKERS)
            {
                t.seeking = true;
                self.next_round(ctx, id);
                return;
            }
        }
        // A round is already taking bids: it brings the missing workers (it counts the live
        // ones when it closes). A second round now would announce over it.
        if t.phase == Phase::Bidding {
            let op = t.persist(id);
            ctx.push(Action::Persist(vec![op]));
            return;
        }
        if t.counted() >= usize::from(t.spec.redundancy).saturating_add(MAX_EXTRA_WORKERS) {
            let reason = format!("gave up after {} workers failed or disagreed", t.counted());
            self.fail(ctx, id, reason);
            return;
        }
        if !t.standby.is_empty() {
            let next = t.standby.remove(0);
            self.award(ctx, id, vec![next], true);
            return;
        }
        if ctx.now >= t.spec.deadline_ms {
            self.fail(ctx, id, "deadline passed while replacing a worker".into());
            return;
        }
        // Re-auction: a new round for the missing workers.
        self.next_round(ctx, id);
    }

    pub(crate) fn on_result(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: PublicKey,
        id: TaskId,
        header: SignedEnvelope,
        output: Vec<u8>,
    ) -> TaskResponse {
        ctx.count(Metric::ResultsReceived);
        let anchor = self.tasks.get(&id).is_some_and(|t| self.anchor_required(ctx, t));
        let h = match fleetmesh_protocol::ResultHeader::open(&header) {
            Ok(h) => h,
            Err(_) => {
                ctx.count(Metric::ResultsRejected);
                return TaskResponse::Rejected(RejectReason::BadSignature);
            }
        };
        let Some(t) = self.tasks.get_mut(&id) else {
            // A finished task that left memory: re-send the receipt if this worker earned one.
            return match self.closed.get(&id) {
                Some(receipts) => receipts
                    .iter()
                    .find(|(w, _)| *w == from)
                    .map_or(TaskResponse::Rejected(RejectReason::TaskClosed), |(_, r)| {
                        TaskResponse::Receipt(r.clone())
                    }),
                None => TaskResponse::Rejected(RejectReason::UnknownTask),
            };
        };
        // Only a peer awarded this task may touch it: anyone else is answered and forgotten.
        if !t.assignments.iter().any(|a| a.worker == from) {
            ctx.count(Metric::ResultsRejected);
            return TaskResponse::Rejected(RejectReason::NotAwarded);
        }
        // Idempotent: a worker re-sending an accepted result gets its receipt again.
        if let Some((_, r)) = t.receipts.iter().find(|(w, _)| *w == from) {
            return TaskResponse::Receipt(r.clone());
        }
        if t.phase.is_terminal() {
            return TaskResponse::Rejected(RejectReason::TaskClosed);
        }
        let Some(a) = t.assignments.iter().rev().find(|a| a.worker == from) else {
            return TaskResponse::Rejected(RejectReason::NotAwarded);
        };
        match &a.status {
            AssignStatus::Returned(d) => {
                return if *d == h.output_digest || a.own == Some(h.output_digest) {
                    TaskResponse::Pending
                } else {
                    TaskResponse::Rejected(RejectReason::Duplicate)
                };
            }
            AssignStatus::Rejected(r) => return TaskResponse::Rejected(r.clone()),
            // It refused the award: it has no job, so no result.
            AssignStatus::Refused(_) => return TaskResponse::Rejected(RejectReason::NotAwarded),
            // Given up on, and replaced by another vehicle of its operator: that one holds
            // the operator's one place in the task now.
            AssignStatus::Failed(_)
                if a.operator.is_some_and(|o| {
                    t.assignments.iter().any(|b| {
                        b.worker != from
                            && b.operator == Some(o)
                            && !matches!(
                                b.status,
                                AssignStatus::Failed(_)
                                    | AssignStatus::Refused(_)
                                    | AssignStatus::Rejected(_)
                            )
                    })
                }) =>
            {
                return TaskResponse::Rejected(RejectReason::NotAwarded);
            }
            // Given up on (it disconnected, restarted, or was late) but back with a result
            // while the task is still open: checked like any other, and counted. Better
            // than the same work done again by a replacement.
            AssignStatus::Failed(_) | AssignStatus::Awarded | AssignStatus::Acked => {}
        }
        // A result signed by a key other than the sender's counts against the sender.
        let checked = if header.signer != from {
            Err(RejectReason::NotAwarded)
        } else {
            // Where this node holds the model it knows the size of its output: a larger one
            // is junk meant to fill the requester's memory (checked before a batch's list is
            // decoded). The header's signature was checked above: checked once.
            match ctx.config.model_outputs.get(&t.spec.model) {
                Some(&max) if output.len() as u64 > t.spec.output_limit(max) => {
                    Err(RejectReason::OutputTooLarge)
                }
                _ => check_opened(&id, &t.spec, &t.awarded_keys(), &header.signer, h, &output),
            }
        };
        let h = match checked {
            Ok(h) => h,
            Err(reason) => {
                ctx.count(Metric::ResultsRejected);
                tracing::info!(task = %id, worker = %from.fmt_short(), %reason, "result rejected");
                ctx.trace(TaskRecord {
                    peer: Some(from.peer_id()),
                    reason: Some(reason.to_string()),
                    ..record(event::RESULT_REJECTED, &id)
                });
                t.rejections.push((from, reason.clone()));
                if let Some(a) = t.assignments.iter_mut().rev().find(|a| a.worker == from) {
                    a.status = AssignStatus::Rejected(reason.clone());
                }
                if !t.can_still_verify() {
                    self.add_worker(ctx, &id);
                }
                self.persist(ctx, &id);
                return TaskResponse::Rejected(reason);
            }
        };
        // With a tolerance (float outputs), an output within it of one already in hand joins
        // that one: the quorum counts them as the same output.
        let class = Self::class_of(&t.spec, &t.outputs, h.output_digest, &output);
        if let Some(a) = t.assignments.iter_mut().rev().find(|a| a.worker == from) {
            a.status = AssignStatus::Returned(class);
            a.own = (class != h.output_digest).then_some(h.output_digest);
            a.energy_mj = h.energy_mj;
        }
        ctx.trace(TaskRecord {
            peer: Some(from.peer_id()),
            digest: Some(h.output_digest.to_string()),
            ..record(event::RESULT_RECEIVED, &id)
        });
        if !t.outputs.iter().any(|(d, _)| *d == class) {
            t.outputs.push((class, serde_bytes::ByteBuf::from(output)));
        }
        if t.times.first_result_ms == 0 {
            t.times.first_result_ms = ctx.now;
        }
        t.anchored |= anchor;
        if self.judge(ctx, &id, anchor) {
            let receipt = self
                .tasks
                .get(&id)
                .and_then(|t| t.receipts.iter().find(|(w, _)| *w == from).map(|(_, r)| r.clone()));
            match receipt {
                Some(r) => TaskResponse::Receipt(r),
                None => TaskResponse::Rejected(RejectReason::Disagreement),
            }
        } else {
            TaskResponse::Pending
        }
    }

    /// Applies the verification rule to task `id`'s results so far and acts on it: verifies
    /// the task, brings in another worker, or waits (persisting the task in each case).
    /// Returns whether the task is verified now.
    fn judge(&mut self, ctx: &mut Ctx<'_>, id: &TaskId, anchor: bool) -> bool {
        let Some(t) = self.tasks.get(id) else { return false };
        let trust_on = ctx.config.trust.enabled;
        let returned = t.returned();
        // The node's own run, when it made one, stands as a trusted result (it is not a
        // worker, so it joins no quorum count); while it runs, nothing is decided.
        let own = match &t.self_check {
            Some(SelfCheck::Done(d)) => Some(*d),
            Some(SelfCheck::Running) => {
                self.persist(ctx, id);
                return false;
            }
            _ => None,
        };
        if returned.is_empty() {
            self.persist(ctx, id);
            return false;
        }
        // With its own run in hand, that run alone decides (a trusted worker can turn);
        // otherwise trusted workers anchor.
        let results: Vec<(PublicKey, OutputDigest, bool)> = returned
            .into_iter()
            .map(|(w, d)| {
                let anchors = match own {
                    Some(o) => d == o,
                    None => trust_on && self.ledger.trust(&w) == Trust::Trusted,
                };
                (w, d, anchors)
            })
            .collect();
        let first = results.first().map(|r| r.1);
        let contested = results.iter().any(|(_, d, _)| Some(*d) != first);
        let judged = anchored_agreement(t.need(), t.live_count(), &results, anchor || own.is_some());
        // A disagreement that involves trust, with no own run, is settled only by a second
        // trusted worker (or an own run started now): one trusted key plus a colluder must
        // not outvote an honest worker.
        let settled = |digest: &OutputDigest, workers: &[PublicKey]| {
            own.is_some()
                || !anchor
                || !contested
                || workers
                    .iter()
                    .filter(|w| results.iter().any(|(x, d, t)| x == *w && d == digest && *t))
                    .count()
                    >= 2
        };
        let judged = match judged {
            Agreement::Verified(digest, workers) if !settled(&digest, &workers) => {
                if let Some(t) = self.tasks.get_mut(id) {
                    Self::start_check(ctx, id, t);
                    if Self::has_own(t) {
                        self.persist(ctx, id);
                        return false;
                    }
                }
                Agreement::Disagree
            }
            other => other,
        };
        match judged {
            Agreement::Verified(digest, workers) => {
                self.verify_task(ctx, id, digest, workers);
                true
            }
            Agreement::Waiting => {
                self.persist(ctx, id);
                false
            }
            Agreement::Disagree => {
                // Counted only when outputs differ: one result short of a quorum is not one.
                if self.tasks.get(id).is_some_and(|t| t.outputs.len() > 1) {
                    ctx.count(Metric::Disagreements);
                }
                self.add_worker(ctx, id);
                self.persist(ctx, id);
                false
            }
        }
    }

    /// This node's own run of a task it requested ([`Action::Check`]) finished.
    pub(crate) fn on_checked(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: TaskId,
        result: Result<OutputDigest, String>,
        output: Vec<u8>,
    ) {
        let Some(t) = self.tasks.get_mut(&id) else { return };
        if t.self_check != Some(SelfCheck::Running) {
            return;
        }
        t.self_check = Some(match result {
            // With a tolerance, this node's own output joins a worker's within it, or stands
            // as an output workers' can join.
            Ok(d) if t.spec.tolerance.is_some() => {
                let class = Self::class_of(&t.spec, &t.outputs, d, &output);
                if class == d && !t.outputs.iter().any(|(o, _)| *o == d) {
                    t.outputs.push((d, serde_bytes::ByteBuf::from(output)));
                }
                SelfCheck::Done(class)
            }
            Ok(d) => SelfCheck::Done(d),
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "own check of a task did not run; verifying as v1 does");
                SelfCheck::Failed(e)
            }
        });
        if t.phase.is_terminal() {
            self.persist(ctx, &id);
            return;
        }
        let anchor = self.tasks.get(&id).is_some_and(|t| self.anchor_required(ctx, t));
        self.judge(ctx, &id, anchor);
    }

    /// The output `output` (signed as `digest`) counts as: with the spec's tolerance, the
    /// first output in hand it agrees with ([`fleetmesh_protocol::verify::agree`]); else
    /// itself.
    fn class_of(
        spec: &TaskSpec,
        outputs: &[(OutputDigest, serde_bytes::ByteBuf)],
        digest: OutputDigest,
        output: &[u8],
    ) -> OutputDigest {
        if spec.tolerance.is_none() || outputs.iter().any(|(d, _)| *d == digest) {
            return digest;
        }
        outputs
            .iter()
            .find(|(_, b)| fleetmesh_protocol::verify::agree(spec, b, output))
            .map_or(digest, |(d, _)| *d)
    }

    fn verify_task(&mut self, ctx: &mut Ctx<'_>, id: &TaskId, digest: OutputDigest, workers: Vec<PublicKey>) {
        self.learn_from_sample(id);
        let Some(t) = self.tasks.get_mut(id) else { return };
        let now = ctx.now;
        t.phase = Phase::Verified;
        t.times.finished_ms = now;
        t.verified = Some((digest, workers.clone()));
        let mut to_notify = Vec::new();
        // What this verification says about each worker that returned a result. Only
        // evidence this node trusts counts: its own run, or a trusted worker. A worker earns
        // an agreement when its own run or another trusted worker produced the same output;
        // it is marked bad for another output only against such evidence. (A verification
        // by a plain majority of unknown workers, or with trust off, records nothing: it
        // could be colluding keys vouching for each other.)
        let mut ledger_ops = Vec::new();
        if ctx.config.trust.enabled {
            let own = matches!(&t.self_check, Some(SelfCheck::Done(d)) if *d == digest);
            let trusted: Vec<PublicKey> =
                workers.iter().filter(|w| self.ledger.trust(w) == Trust::Trusted).copied().collect();
            if own || !trusted.is_empty() {
                for a in &t.assignments {
                    if let AssignStatus::Returned(d) = &a.status {
                        // With a tolerance, another class holds against its workers only when
                        // it is clearly apart from the verified output: "within" is not
                        // transitive, and an honest output may have joined a class whose
                        // first member was a liar's, or arrived before the evidence.
                        if *d != digest && t.spec.tolerance.is_some() {
                            let bytes =
                                |x: &OutputDigest| t.outputs.iter().find(|(o, _)| o == x).map(|(_, b)| b);
                            let apart = match (bytes(d), bytes(&digest)) {
                                (Some(x), Some(y)) => {
                                    fleetmesh_protocol::verify::clearly_apart(&t.spec, x, y)
                                }
                                _ => false,
                            };
                            if !apart {
                                continue;
                            }
                        }
                        let outcome = if *d != digest {
                            if self.ledger.trust(&a.worker) != Trust::Bad {
                                ctx.count(Metric::WorkersDistrusted);
                            }
                            Outcome::Disagreed
                        } else if own || trusted.iter().any(|w| *w != a.worker) {
                            Outcome::Agreed
                        } else {
                            Outcome::Alone
                        };
                        ledger_ops.extend(self.ledger.record(a.worker, outcome, now));
                    }
                }
            }
        }
        for a in &mut t.assignments {
            match &a.status {
                AssignStatus::Returned(d) if *d == digest && workers.contains(&a.worker) => {
                    let r = Receipt {
                        v: WIRE_VERSION,
                        task_id: *id,
                        worker: a.worker,
                        // What the worker signed (within the tolerance of the verified output).
                        output_digest: a.own.unwrap_or(digest),
                        price: a.price,
                        accepted_ms: now,
                        energy_mj: a.energy_mj,
                    }
                    .sign(ctx.identity);
                    t.receipts.push((a.worker, r.clone()));
                    to_notify.push((a.worker, r));
                }
                AssignStatus::Returned(_) => {
                    a.status = AssignStatus::Rejected(RejectReason::Disagreement);
                    t.rejections.push((a.worker, RejectReason::Disagreement));
                }
                _ => {}
            }
        }
        // Only a task that was ever announced can be in the open-tasks record.
        let (model, was_open) = (t.spec.model, !t.offer_round);
        // Finished: its input is not needed again. The ledger changes in the same write.
        let drop_input = StoreOp { table: Table::RequestInputs, key: *id, value: None };
        let mut ops = vec![t.persist(id), drop_input];
        ops.extend(ledger_ops);
        ctx.push(Action::Persist(ops));
        ctx.count(Metric::TasksVerified);
        ctx.trace(TaskRecord {
            digest: Some(digest.to_string()),
            winners: Some(workers.iter().map(PublicKey::peer_id).collect()),
            ..record(event::VERIFIED, id)
        });
        for (worker, receipt) in to_notify {
            ctx.trace(TaskRecord { peer: Some(worker.peer_id()), ..record(event::RECEIPT_SENT, id) });
            // Workers that were told `Pending` get their receipt now.
            ctx.push(Action::Send {
                to: worker,
                request: Outgoing::Request(TaskRequest::Receipt { receipt }),
                tag: SendTag::Receipt,
            });
        }
        if was_open {
            self.open_dirty.insert(model);
        }
        ctx.push(Action::Finished(*id));
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, id: &TaskId, reason: String) {
        self.learn_from_sample(id);
        let Some(t) = self.tasks.get_mut(id) else { return };
        if t.phase.is_terminal() {
            return;
        }
        tracing::warn!(task = %id, %reason, "task failed");
        ctx.trace(TaskRecord { reason: Some(reason.clone()), ..record(event::FAILED, id) });
        t.phase = Phase::Failed;
        t.failure = Some(reason);
        t.times.finished_ms = ctx.now;
        t.bids.clear();
        let (model, was_open) = (t.spec.model, !t.offer_round);
        let drop_input = StoreOp { table: Table::RequestInputs, key: *id, value: None };
        ctx.push(Action::Persist(vec![t.persist(id), drop_input]));
        ctx.count(Metric::TasksFailed);
        // Only a task that was ever announced can be in the open-tasks record.
        if was_open {
            self.open_dirty.insert(model);
        }
        ctx.push(Action::Finished(*id));
    }

    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let ids: Vec<TaskId> =
            self.tasks.iter().filter(|(_, t)| !t.phase.is_terminal()).map(|(id, _)| *id).collect();
        for id in ids {
            let Some(t) = self.tasks.get(&id) else { continue };
            if now >= t.spec.deadline_ms {
                let reason = match t.phase {
                    Phase::Bidding if t.times.announced_ms == 0 => {
                        "deadline passed and no peer ever received the announcement (is this node connected to the mesh?)"
                            .to_owned()
                    }
                    Phase::Bidding => format!("deadline passed while taking bids (round {})", t.round),
                    _ => "deadline passed before a quorum of workers agreed".to_owned(),
                };
                self.fail(ctx, &id, reason);
                continue;
            }
            match t.phase {
                // Nobody has heard this round yet: its window has not started. Try again
                // once the retry delay has passed.
                Phase::Bidding if t.announce_pending && now < t.next_announce_ms => {}
                Phase::Bidding if t.announce_pending => self.announce(ctx, &id),
                Phase::Bidding if now >= t.bid_deadline_ms || self.round_can_close_early(ctx, &id) => {
                    self.close_round(ctx, &id);
                }
                Phase::Running => {
                    let late: Vec<PublicKey> = t
                        .assignments
                        .iter()
                        .filter(|a| a.waiting() && now >= a.deadline_ms)
                        .map(|a| a.worker)
                        .collect();
                    for w in late {
                        self.worker_failed(ctx, &id, &w, "missed the result deadline".into());
                    }
                }
                _ => {}
            }
        }
    }

    /// A peer's last connection closed: its unfinished work goes to someone else.
    pub(crate) fn peer_gone(&mut self, ctx: &mut Ctx<'_>, peer: &PublicKey) {
        let affected: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.phase == Phase::Running && t.assignments.iter().any(|a| a.worker == *peer && a.waiting())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in affected {
            self.worker_failed(ctx, &id, peer, "disconnected".into());
        }
    }

    pub(crate) fn restore(&mut self, ctx: &mut Ctx<'_>, tasks: Vec<(TaskId, ReqTask)>) {
        let mut obsolete = Vec::new();
        for (id, mut t) in tasks {
            // Submitted under wire version 1, whose task ids did not name the requester: no
            // version-2 worker takes it under that id. It fails now, saying so, rather than
            // waiting out its deadline.
            if !t.phase.is_terminal() && t.id() != id {
                obsolete.push(id);
                self.tasks.insert(id, t);
                continue;
            }
            // A finished task stays in the store (status reads it there); memory keeps only
            // its receipts, to answer workers that re-send.
            if t.phase.is_terminal() {
                self.closed.insert(id, t.receipts);
                continue;
            }
            {
                self.open_dirty.insert(t.spec.model);
                if t.phase == Phase::Bidding {
                    t.round = t.round.saturating_add(1);
                    t.bids.clear();
                    t.announce_pending = true;
                }
                tracing::info!(task = %id, phase = ?t.phase, "resuming task");
                ctx.push(Action::PutRecord {
                    key: ids::task_record_key(&id),
                    value: fleetmesh_protocol::encode(&t.spec_env),
                });
                ctx.push(Action::Persist(vec![t.persist(&id)]));
                // An own check that was running is run again.
                if t.self_check == Some(SelfCheck::Running) {
                    ctx.push(Action::Check {
                        task: id,
                        model: t.spec.model,
                        batch: t.spec.batch,
                        until_ms: t.spec.deadline_ms,
                    });
                }
            }
            self.tasks.insert(id, t);
        }
        for id in obsolete {
            let why = "submitted under wire version 1, whose task ids did not name the requester; \
                       version-2 workers cannot take it: submit it again";
            self.fail(ctx, &id, why.into());
        }
    }

    pub(crate) fn on_persist_failed(&mut self, _ctx: &mut Ctx<'_>, keys: &[(Table, TaskId, bool)]) {
        for (table, id, written) in keys {
            // Only a submit writes a task's input: a task whose first write failed was never
            // accepted (its submit was refused), whatever happened to its announcement since.
            if *table == Table::RequestInputs && *written {
                self.tasks.remove(id);
                self.unsaved.remove(id);
            }
        }
        for (table, id, written) in keys {
            // Any other task's state is ahead of the disk: written again until it sticks.
            if *table == Table::Requests && *written && self.tasks.contains_key(id) {
                self.unsaved.mark(*id);
            }
        }
    }

    /// Writes again the tasks whose last write failed (every second, from the tick); forgets
    /// those whose retry has had a minute to fail and did not.
    pub(crate) fn retry_unsaved(&mut self, ctx: &mut Ctx<'_>) {
        for id in self.unsaved.due(ctx.now, UNSAVED_GRACE_MS) {
            self.persist(ctx, &id);
        }
    }

    /// Rewrites the stale open-tasks records (called from the tick, at most every 2 s).
    pub(crate) fn flush_open_tasks(&mut self, ctx: &mut Ctx<'_>) {
        let models: Vec<fleetmesh_crypto::ModelId> =
            std::mem::take(&mut self.open_dirty).into_iter().collect();
        for model in models {
            let mut open: Vec<OpenTask> = self
                .tasks
                .values()
                .filter(|t| t.spec.model == model && t.phase == Phase::Bidding)
                .map(|t| OpenTask {
                    task_id: t.id(),
                    round: t.round,
                    bid_deadline_ms: t.bid_deadline_ms,
                    select_ppm: t.round_ppm(),
                })
                .collect();
            open.sort_by_key(|o| std::cmp::Reverse(o.bid_deadline_ms));
            open.truncate(fleetmesh_protocol::limits::MAX_OPEN_TASKS_PER_RECORD);
            let rec =
                OpenTasks { v: WIRE_VERSION, model, tasks: open, updated_ms: ctx.now }.sign(ctx.identity);
            ctx.push(Action::PutRecord {
                key: ids::open_tasks_record_key(&model, &ctx.identity.public()),
                value: fleetmesh_protocol::encode(&rec),
            });
            if self.providing.insert(model) {
                ctx.push(Action::Provide { key: ids::model_provider_key(&model) });
            }
        }
    }

    /// Drops the oldest finished tasks from memory beyond `cap`; their receipts stay, so
    /// workers that re-send still get theirs.
    pub(crate) fn forget_old_finished(&mut self, cap: usize) {
        let mut done: Vec<(u64, TaskId)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.phase.is_terminal())
            .map(|(id, t)| (t.times.finished_ms, *id))
            .collect();
        if done.len() <= cap {
            return;
        }
        done.sort_unstable();
        let excess = done.len().saturating_sub(cap);
        // A task whose state is not on disk yet stays in memory until it is.
        for (_, id) in done.into_iter().filter(|(_, id)| !self.unsaved.contains(id)).take(excess) {
            if let Some(t) = self.tasks.remove(&id) {
                self.closed.insert(id, t.receipts);
            }
        }
    }
}
