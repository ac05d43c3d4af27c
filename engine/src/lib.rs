//! The fleetmesh engine: the task lifecycle as a pure state machine ("sans-IO").
//!
//! [`Engine::handle`] takes the current time (Unix ms, as the wire's deadlines are) and one
//! [`Input`], changes the engine's state, and returns the [`Action`]s the caller must perform,
//! in order. The engine owns no socket, no clock, no thread and no file, and this crate
//! depends on no network, runtime, database or inference library, so the compiler keeps it
//! that way: the node (`fleetmesh-node`) feeds it swarm events, commands and timer ticks and
//! performs what it returns; the simulator ([`sim`]) feeds it a simulated network in virtual
//! time; tests and fuzzers feed it inputs by hand. The same code runs in all of them, so what
//! a test or the simulator shows holds for the node.
//!
//! The two roles live in their own files: [`requester`] (announce, collect bids, award,
//! verify) and [`worker`] (bid, accept an award, execute, deliver the result). This file
//! routes inputs to them and holds what both use: the identity, the configuration, the models
//! held, the peers' presence adverts and the connected set.
//!
//! Ordering rule: an [`Action::Persist`] always comes before the [`Action::Reply`],
//! [`Action::Send`] or [`Action::Submitted`] it guards. A driver whose write fails must drop
//! the actions after it in the same batch that depend on it (see [`Action::Persist`]) and
//! report the failure back with [`Input::PersistFailed`].
//!
//! Every map the engine keeps is bounded; all arithmetic on values a peer or a user chose is
//! checked or saturating (`clippy::arithmetic_side_effects` is denied in this module).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![deny(clippy::arithmetic_side_effects)]

pub mod bounded;
#[cfg(feature = "test-hooks")]
pub mod hooks;
pub mod ledger;
pub mod reputation;
pub mod requester;
#[allow(clippy::arithmetic_side_effects)] // the simulator's own clock and counters, not peer input
pub mod sim;
pub mod vehicle;
pub mod worker;

use std::collections::BTreeSet;
use std::sync::Arc;

use fleetmesh_crypto::{Identity, ModelId, PublicKey, SignedEnvelope, TaskId};
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{ids, Announcement, Presence, Signed};

use bounded::{BoundedMap, BoundedSet};
use fleetmesh_api::TaskView;
use fleetmesh_trace::TaskRecord;
pub use requester::{ReqTask, Requester};
use serde::{Deserialize, Serialize};
pub use worker::{Job, Worker};

/// Presence adverts kept (one per peer).
pub const MAX_PRESENCE_PEERS: usize = 1024;
/// (task, round) announcements remembered, to drop replays instead of relaying them.
pub const MAX_SEEN_ANNOUNCEMENTS: usize = 16 * 1024;
/// After a new connection, this node's next advert goes out within this long, ms.
pub const ADVERT_AFTER_CONNECT_MS: u64 = 1_000;
/// How far a peer's clock may be ahead of ours before its timestamps are refused, ms.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;

/// A local caller waiting for [`Action::Submitted`].
pub type CallId = u64;
/// A peer waiting for [`Action::Reply`].
pub type ReplyId = u64;
/// A gossip message waiting for [`Action::Validate`].
pub type GossipId = u64;

/// The gossip topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Task announcements ([`ids::TOPIC_TASKS`]).
    Tasks,
    /// Presence adverts ([`ids::TOPIC_PRESENCE`]).
    Presence,
}

impl Topic {
    /// The topic's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tasks => ids::TOPIC_TASKS,
            Self::Presence => ids::TOPIC_PRESENCE,
        }
    }

    /// The topic named `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Tasks, Self::Presence].into_iter().find(|t| t.name() == name)
    }
}

/// A gossip validation verdict (gossipsub's accept / reject / ignore).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: deliver and relay.
    Accept,
    /// Invalid: drop and penalize the sender.
    Reject,
    /// Valid but not worth relaying (stale, replayed, our own): drop quietly.
    Ignore,
}

pub use fleetmesh_api::SubmitRequest;

/// Why a submit was refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SubmitError(pub String);

/// What an outbound request was for, so its answer finds its way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTag {
    /// A bid we sent for `task`.
    Bid {
        /// The task.
        task: TaskId,
    },
    /// An award to `worker` for `task`.
    Award {
        /// The task.
        task: TaskId,
        /// The worker awarded.
        worker: PublicKey,
    },
    /// A result we delivered.
    Result {
        /// The task.
        task: TaskId,
    },
    /// A receipt we sent.
    Receipt,
    /// An `Unable` report we sent.
    Unable,
}

/// A request to send; an award's input is filled in by the driver from the store, so the
/// engine never holds task inputs in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Send as is.
    Request(TaskRequest),
    /// An award: the driver adds the input stored for `task` (see [`Table::RequestInputs`]).
    Award {
        /// The signed spec.
        spec: SignedEnvelope,
        /// The signed award.
        award: SignedEnvelope,
        /// Whose input to attach.
        task: TaskId,
    },
}

/// Why an outbound request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The network failed (dial, timeout, stream closed); the text says how.
    Network(String),
    /// The award's input is not in the store.
    InputMissing(String),
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Network(m) => write!(f, "{m}"),
            Self::InputMissing(m) => write!(f, "the task input is missing from the store ({m})"),
        }
    }
}

/// A DHT record lookup, to route its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::large_enum_variant)] // one per lookup in flight, at most a few hundred
pub enum Lookup {
    /// The spec of a task announced without one (or found in an open-tasks record).
    Spec {
        /// The task.
        task: TaskId,
        /// The round it takes bids for.
        round: u32,
        /// Who announced it (or signed the open-tasks record): the spec must be theirs.
        announcer: PublicKey,
    },
    /// One requester's open-tasks record.
    OpenTasks,
}

/// A table of the node's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Tasks this node requested ([`ReqTask`], CBOR).
    Requests,
    /// Their inputs.
    RequestInputs,
    /// Tasks this node was awarded ([`Job`], CBOR).
    Jobs,
    /// Their inputs, kept until the job has run.
    JobInputs,
    /// The requester's reputation ledger ([`reputation::Standing`], CBOR), keyed by the
    /// worker's public key bytes.
    Reputation,
    /// The owner's ledger: totals by day ([`ledger::DayTotals`], CBOR), keyed by
    /// [`ledger::key_of`].
    Ledger,
}

/// One write of a durable transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOp {
    /// The table.
    pub table: Table,
    /// The key.
    pub key: TaskId,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// The output of an inference, as the executor hands it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The canonical output bytes.
    pub output: Vec<u8>,
    /// Time spent in inference, µs.
    pub run_time_us: u64,
    /// The engine and instruction set that produced it.
    pub runtime: fleetmesh_protocol::RuntimeProfile,
}

/// A counter the driver exports (Prometheus in the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Metric {
    TasksSubmitted,
    TasksVerified,
    TasksFailed,
    BidsReceived,
    BidsSent,
    BidsDeclined,
    ResultsReceived,
    ResultsRejected,
    Disagreements,
    Reawards,
    JobsExecuted,
    GossipRejected,
    /// This node ran one of its own tasks to check the workers (reputation).
    OwnChecks,
    /// An unknown worker was added beside trusted ones, or a lone unknown one replicated.
    SpotChecks,
    /// A worker returned an output against checked evidence and is no longer used.
    WorkersDistrusted,
    /// A task was awarded at once on neighbours' standing offers (no announcement, no bid).
    OfferAwards,
    /// This node handed an awarded job back (its vehicle started driving, or its owner's
    /// policy stopped it serving).
    JobsReleased,
    /// A worker handed one of this node's tasks back; it was awarded again.
    TasksReleased,
}

/// Everything that can happen to the engine.
#[derive(Debug, Clone)]
pub enum Input {
    /// A local user submits a task; answered by [`Action::Submitted`].
    Submit {
        /// The caller.
        call: CallId,
        /// What to run.
        request: SubmitRequest,
        /// A fresh random number: makes identical submissions distinct tasks.
        nonce: u64,
    },
    /// A gossip message arrived; answered by [`Action::Validate`].
    Gossip {
        /// The message.
        msg: GossipId,
        /// Its topic.
        topic: Topic,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// A peer's request on the task protocol; answered by [`Action::Reply`].
    Request {
        /// Where the answer goes.
        reply: ReplyId,
        /// The authenticated sender.
        from: PublicKey,
        /// The request.
        request: TaskRequest,
    },
    /// The answer to an [`Action::Send`].
    Response {
        /// The send's tag.
        tag: SendTag,
        /// Who was asked.
        peer: PublicKey,
        /// The answer, or why there is none.
        result: Result<TaskResponse, SendFailure>,
    },
    /// What became of an [`Action::Publish`] of an announcement.
    Published {
        /// The task.
        task: TaskId,
        /// The round announced.
        round: u32,
        /// Whether at least one peer got it.
        ok: bool,
    },
    /// A DHT record lookup ended (exactly once per [`Action::GetRecord`]).
    Record {
        /// Which lookup.
        lookup: Lookup,
        /// The value found, or `None`.
        value: Option<Vec<u8>>,
    },
    /// Providers found for a model's open-tasks key.
    Providers {
        /// The model.
        model: ModelId,
        /// The providers found in this step.
        providers: Vec<PublicKey>,
        /// The lookup has ended.
        last: bool,
    },
    /// An [`Action::SelfTest`] finished: whether the model ran.
    SelfTested {
        /// The model.
        model: ModelId,
        /// It ran without a fault.
        ok: bool,
    },
    /// An [`Action::Check`] finished: the digest of this node's own output for its task.
    Checked {
        /// The task.
        task: TaskId,
        /// The output digest, or why the model did not run.
        result: Result<fleetmesh_crypto::OutputDigest, String>,
        /// The output itself (empty when it did not run): a task with a tolerance compares
        /// it with the workers' within the tolerance.
        output: Vec<u8>,
    },
    /// An [`Action::Execute`] finished.
    Executed {
        /// The task.
        task: TaskId,
        /// The output, or why inference failed.
        result: Result<ExecOutput, String>,
    },
    /// The data disk is (or no longer is) nearly full: no new work is taken while it is.
    DiskLow(bool),
    /// The vehicle's state, from its source (or why the source failed): with the owner's
    /// policy it decides whether this node takes work ([`vehicle::evaluate`]). A change to
    /// driving hands every unfinished job back; another refusal hands back those not running.
    Vehicle(Result<vehicle::VehicleState, String>),
    /// A connection to a peer opened.
    Connected(PublicKey),
    /// The last connection to a peer closed.
    Disconnected(PublicKey),
    /// An [`Action::Persist`] failed; the keys it wrote are not durable.
    PersistFailed {
        /// What the transaction wrote.
        /// (table, key, whether it was a write rather than a delete) of each operation.
        keys: Vec<(Table, TaskId, bool)>,
    },
    /// Time passed: timers fire.
    Tick,
}

/// Everything the engine asks its driver to do, in order.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once and moved to the driver: boxing buys nothing
pub enum Action {
    /// Answer a peer's request.
    Reply {
        /// Which request.
        reply: ReplyId,
        /// The answer.
        response: TaskResponse,
    },
    /// Report a gossip message's validation verdict.
    Validate {
        /// Which message.
        msg: GossipId,
        /// The verdict.
        verdict: Verdict,
    },
    /// Send a request; its answer comes back as [`Input::Response`] with `tag`.
    Send {
        /// To whom.
        to: PublicKey,
        /// What.
        request: Outgoing,
        /// Why.
        tag: SendTag,
    },
    /// Publish on a topic. For an announcement, `announce` names it and the driver answers
    /// with [`Input::Published`].
    Publish {
        /// The topic.
        topic: Topic,
        /// The signed envelope's bytes.
        data: Vec<u8>,
        /// (task, round) of an announcement.
        announce: Option<(TaskId, u32)>,
    },
    /// Store a DHT record (locally and at the closest peers).
    PutRecord {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Announce this node as a provider under `key`.
    Provide {
        /// The provider key.
        key: Vec<u8>,
    },
    /// Look a record up; answered by exactly one [`Input::Record`].
    GetRecord {
        /// The key.
        key: Vec<u8>,
        /// Its tag.
        lookup: Lookup,
    },
    /// Look up the providers of a model's open tasks; answered by [`Input::Providers`].
    GetProviders {
        /// The model.
        model: ModelId,
    },
    /// Stop an [`Action::Execute`] of a job handed back (between a batch's inputs; a single
    /// run finishes). Its [`Input::Executed`] still comes, and is dropped.
    Stop {
        /// The task.
        task: TaskId,
    },
    /// Run a model once on a test input (after repeated failures, before bidding on it
    /// again); answered by [`Input::SelfTested`].
    SelfTest {
        /// The model.
        model: ModelId,
    },
    /// Run a model on the input of a task this node requested (stored under
    /// [`Table::RequestInputs`]), to check the workers' results itself; answered by
    /// [`Input::Checked`].
    Check {
        /// The task.
        task: TaskId,
        /// The model.
        model: ModelId,
        /// The spec's batch: run each of its inputs, and answer with the outputs' Merkle root
        /// ([`fleetmesh_protocol::batch::output_digest`]).
        batch: Option<u16>,
        /// A batch stops between inputs once this instant (Unix ms) has passed: the task's
        /// deadline.
        until_ms: u64,
    },
    /// Run a model on a job's stored input; answered by [`Input::Executed`].
    Execute {
        /// The job.
        task: TaskId,
        /// The model.
        model: ModelId,
        /// The spec's batch: run each of its inputs, and answer with the outputs as one list
        /// ([`fleetmesh_protocol::batch::encode_outputs`]).
        batch: Option<u16>,
        /// A batch stops between inputs once this instant (Unix ms) has passed (the result
        /// deadline: a result after it is not taken), so it holds a slot no longer than one
        /// input would.
        until_ms: u64,
    },
    /// Write durably, as one transaction. If it fails, the driver answers the `Reply`s that
    /// follow it in the same batch with `Refused(Unavailable)` and the `Submitted`s with an
    /// error, does not perform the `Send`s that follow (nothing unpersisted is promised to a
    /// peer), and feeds back [`Input::PersistFailed`]. Other actions go ahead: the engine's
    /// bookkeeping of executions and lookups must stay true.
    Persist(Vec<StoreOp>),
    /// Append to the task timeline.
    Trace(Box<TaskRecord>),
    /// Answer a local submit.
    Submitted {
        /// The caller.
        call: CallId,
        /// The task id, or why not.
        result: Result<TaskId, SubmitError>,
    },
    /// A requested task finished (verified or failed): wake whoever waits on it.
    Finished(TaskId),
    /// Count one event.
    Count(Metric),
}

/// The engine's settings, taken from the node's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Bid on other nodes' tasks.
    pub serve: bool,
    /// Executions at once.
    pub slots: u32,
    /// Accepted jobs waiting for a slot, beyond the running ones.
    pub max_queue: u32,
    /// Unfinished jobs accepted from one requester.
    pub max_jobs_per_requester: u32,
    /// The most inputs of one batch task this node runs; 0 takes no batches
    /// ([`fleetmesh_protocol::batch`]).
    pub max_batch: u16,
    /// Lowest price this node bids.
    pub price_floor: u64,
    /// What the vehicle's owner allows ([`vehicle::OwnerPolicy`]).
    pub owner: vehicle::OwnerPolicy,
    /// This node's operator certificate, shown in its adverts
    /// ([`fleetmesh_protocol::OperatorCert`]).
    pub operator_cert: Option<SignedEnvelope>,
    /// Defaults for submitted tasks.
    pub tasks: TaskDefaults,
    /// The model a submit without one runs (the node's embedded digits model).
    pub default_model: Option<ModelId>,
    /// Input sizes (bytes) of the models whose input tensor this node knows: a submit whose
    /// input does not fit is refused, and a worker tells the requester instead of bidding.
    pub model_inputs: std::collections::BTreeMap<ModelId, u64>,
    /// The size of each held model's output in bytes (results with a larger one are refused).
    pub model_outputs: std::collections::BTreeMap<ModelId, u64>,
    /// Presence advert interval, ms; 0 sends none (the simulator at scale: every advert
    /// costs every vehicle a signature check).
    pub presence_interval_ms: u64,
    /// DHT scan interval, ms.
    pub dht_scan_interval_ms: u64,
    /// Finished tasks and jobs kept in memory.
    pub max_finished_in_memory: usize,
    /// Reputation: whom this node trusts as a requester, and how much.
    pub trust: reputation::TrustConfig,
    /// (tests) How a worker cheats.
    #[cfg(feature = "test-hooks")]
    pub misbehave: Option<crate::hooks::Misbehave>,
    /// (tests) Ignore task gossip.
    #[cfg(feature = "test-hooks")]
    pub ignore_task_gossip: bool,
}

impl Default for EngineConfig {
    /// The node's defaults (`NodeConfig::default()` gives the same).
    fn default() -> Self {
        Self {
            serve: true,
            slots: 2,
            max_queue: 64,
            max_jobs_per_requester: 32,
            max_batch: fleetmesh_protocol::batch::MAX_BATCH,
            price_floor: 1,
            owner: vehicle::OwnerPolicy::default(),
            operator_cert: None,
            tasks: TaskDefaults::default(),
            default_model: None,
            model_inputs: std::collections::BTreeMap::new(),
            model_outputs: std::collections::BTreeMap::new(),
            presence_interval_ms: 5_000,
            dht_scan_interval_ms: 5_000,
            max_finished_in_memory: 1024,
            trust: reputation::TrustConfig::default(),
            #[cfg(feature = "test-hooks")]
            misbehave: None,
            #[cfg(feature = "test-hooks")]
            ignore_task_gossip: false,
        }
    }
}

/// Defaults for submitted tasks; a submit request can override each.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskDefaults {
    /// Workers per task (k).
    pub redundancy: u8,
    /// Highest price paid per worker (per input: a batch of n pays up to n times it).
    pub max_price: u64,
    /// Bid round length, ms.
    pub bid_window_ms: u32,
    /// Time a worker has from award to result, ms.
    pub exec_timeout_ms: u32,
    /// Time from submit until the task fails if not verified, ms.
    pub deadline_ms: u64,
    /// Consecutive bid rounds without a single valid bid before the task fails.
    pub max_rounds: u32,
    /// Close a bid round early once every peer whose presence advert lists the model has bid
    /// (and at least k bids are in). The award names the bid set, so this loses no
    /// determinism; it removes the bid window from the critical path.
    pub early_close: bool,
    /// Market v2 standing offers: a task is awarded at once, with no announcement and no bid
    /// round, when at least k connected neighbours' presence adverts carry a standing offer
    /// that covers it (the lowest tickets among them win, trusted workers first). Off, or
    /// with too few offers, or with selection off, the task is announced and takes bids.
    pub offers: bool,
    /// Market v2 selection: each round admits about 2k + 2 of the model's holders, chosen by
    /// tickets from public data, and bids rank by ticket. Off: every holder may bid and bids
    /// rank by price, promised time and load (their own claims), as before market v2; for a
    /// closed fleet of trusted nodes, or to measure one announcement per task.
    pub selection: bool,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        Self {
            redundancy: 1,
            max_price: 100,
            bid_window_ms: 1_000,
            exec_timeout_ms: 10_000,
            deadline_ms: 120_000,
            max_rounds: 6,
            early_close: true,
            selection: true,
            offers: true,
        }
    }
}

/// How often at most a requester rewrites its open-tasks record per model (each rewrite is a
/// DHT put to the same closest peers, which budget every peer's writes).
pub const OPEN_TASKS_FLUSH_MS: u64 = 2_000;

/// A peer's last presence advert and when it arrived.
#[derive(Debug, Clone)]
pub struct PeerAdvert {
    /// The advert.
    pub advert: Presence,
    /// When it arrived, our clock (Unix ms).
    pub received_ms: u64,
    /// The signed advert's digest ([`fleetmesh_protocol::bid_digest`]): what an award made on
    /// its standing offer commits to.
    pub digest: fleetmesh_crypto::Digest,
    /// The operator vouching for the peer and until when ([`fleetmesh_protocol::operator_of`]),
    /// when its advert showed a certificate that held on arrival.
    pub operator: Option<(PublicKey, u64)>,
}

/// What both roles read: who we are, what we hold, who is around. Passed to the role
/// methods beside the action list, so each role borrows only what it needs.
pub struct Ctx<'a> {
    /// The current time, Unix ms.
    pub now: u64,
    /// Our identity.
    pub identity: &'a Identity,
    /// Settings.
    pub config: &'a EngineConfig,
    /// Models held.
    pub models: &'a BTreeSet<ModelId>,
    /// Presence adverts by peer.
    pub presence: &'a BoundedMap<PublicKey, PeerAdvert>,
    /// Peers with an open connection.
    pub connected: &'a BTreeSet<PublicKey>,
    /// The data disk is nearly full: take no new work.
    pub disk_low: bool,
    /// Whether the vehicle takes work now, on how many slots, until when.
    pub availability: &'a vehicle::Availability,
    /// The actions produced so far.
    pub out: &'a mut Vec<Action>,
}

impl Ctx<'_> {
    /// Appends an action.
    pub fn push(&mut self, a: Action) {
        self.out.push(a);
    }

    /// Appends a timeline record.
    pub fn trace(&mut self, r: TaskRecord) {
        self.out.push(Action::Trace(Box::new(r)));
    }

    /// Counts one event.
    pub fn count(&mut self, m: Metric) {
        self.out.push(Action::Count(m));
    }

    /// Running slots now: the configured ones, capped by the owner's power budget.
    pub fn slots(&self) -> u32 {
        self.config.slots.min(self.availability.slots)
    }
}

/// The whole node's protocol logic: requester, worker and the gossip they share.
pub struct Engine {
    identity: Arc<Identity>,
    config: EngineConfig,
    models: BTreeSet<ModelId>,
    presence: BoundedMap<PublicKey, PeerAdvert>,
    connected: BTreeSet<PublicKey>,
    disk_low: bool,
    /// The vehicle's last reported state (or why its source failed).
    vehicle: Result<vehicle::VehicleState, String>,
    /// What follows from it and the owner's policy, as of the last input or tick.
    availability: vehicle::Availability,
    /// (task, round, announcer) announcements already taken, so replays are not relayed again.
    /// Keyed by the announcer too, so a forgery cannot shadow the requester's own.
    seen_announcements: BoundedSet<(TaskId, u32, PublicKey)>,
    /// The requester role.
    pub requester: Requester,
    /// The worker role.
    pub worker: Worker,
    next_presence: u64,
    next_scan: u64,
    next_open_flush: u64,
    next_compaction: u64,
}

impl Engine {
    /// A fresh engine for `identity` holding `models`.
    pub fn new(identity: Arc<Identity>, config: EngineConfig, models: BTreeSet<ModelId>, now: u64) -> Self {
        Self {
            requester: Requester::new(&config),
            worker: Worker::new(&config),
            identity,
            models,
            presence: BoundedMap::new(MAX_PRESENCE_PEERS),
            connected: BTreeSet::new(),
            disk_low: false,
            vehicle: Ok(vehicle::VehicleState::default()),
            availability: vehicle::evaluate(
                &Ok(vehicle::VehicleState::default()),
                &config.owner,
                config.slots,
                now,
            ),
            seen_announcements: BoundedSet::new(MAX_SEEN_ANNOUNCEMENTS),
            next_presence: now,
            next_scan: now.saturating_add(1_000),
            next_open_flush: now,
            next_compaction: now,
            config,
        }
    }

    /// Our public key.
    pub fn public(&self) -> PublicKey {
        self.identity.public()
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Models held.
    pub fn models(&self) -> &BTreeSet<ModelId> {
        &self.models
    }

    /// Adds a model to the set held.
    pub fn add_model(&mut self, model: ModelId) {
        self.models.insert(model);
    }

    /// Presence adverts by peer.
    pub fn presence(&self) -> &BoundedMap<PublicKey, PeerAdvert> {
        &self.presence
    }

    /// Peers with an open connection.
    pub fn connected(&self) -> &BTreeSet<PublicKey> {
        &self.connected
    }

    /// The vehicle's last reported state, or why its source failed.
    pub fn vehicle(&self) -> &Result<vehicle::VehicleState, String> {
        &self.vehicle
    }

    /// Whether this node takes work now, and why not.
    pub fn availability(&self) -> &vehicle::Availability {
        &self.availability
    }

    fn split<'a>(
        &'a mut self,
        now: u64,
        out: &'a mut Vec<Action>,
    ) -> (Ctx<'a>, &'a mut Requester, &'a mut Worker) {
        let ctx = Ctx {
            now,
            identity: &self.identity,
            config: &self.config,
            models: &self.models,
            presence: &self.presence,
            connected: &self.connected,
            disk_low: self.disk_low,
            availability: &self.availability,
            out,
        };
        (ctx, &mut self.requester, &mut self.worker)
    }

    /// Takes back what was persisted before a restart and picks each task and job up where
    /// it stopped.
    pub fn restore(
        &mut self,
        now: u64,
        requests: Vec<(TaskId, ReqTask)>,
        jobs: Vec<(TaskId, Job)>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let (mut ctx, requester, worker) = self.split(now, &mut out);
        requester.restore(&mut ctx, requests);
        worker.restore(&mut ctx, jobs);
        // Restarted while the vehicle does not serve (driving, or its state not known yet):
        // the jobs it held go back to their requesters now, not at their deadlines.
        if !ctx.availability.serving() {
            let reason = ctx.availability.refusals.first().map(|r| r.label().to_owned()).unwrap_or_default();
            worker.release(&mut ctx, true, &reason);
        }
        out
    }

    /// Takes back the owner's ledger (totals by day) persisted before a restart.
    pub fn restore_ledger(&mut self, entries: Vec<(TaskId, ledger::DayTotals)>) {
        self.worker.ledger.restore(entries);
    }

    /// Takes back the reputation ledger persisted before a restart (call before
    /// [`Engine::restore`]); records whose key is no valid public key are skipped.
    pub fn restore_reputation(&mut self, entries: Vec<(TaskId, reputation::Standing)>) {
        self.requester.restore_ledger(
            entries.into_iter().filter_map(|(k, s)| reputation::worker_of(&k).map(|w| (w, s))),
        );
    }

    /// Handles one input at `now` (Unix ms) and returns what to do, in order.
    pub fn handle(&mut self, now: u64, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Gossip { msg, topic, data } => {
                let verdict = self.on_gossip(now, topic, &data, &mut out);
                if verdict == Verdict::Reject {
                    out.push(Action::Count(Metric::GossipRejected));
                }
                out.push(Action::Validate { msg, verdict });
            }
            Input::Connected(peer) => {
                // A new neighbour hears this node's advert (its standing offer) within a
                // second, not at the next interval: a requester can award on it at once. At
                // most one advert a second however many connect.
                if self.connected.insert(peer) {
                    self.next_presence = self.next_presence.min(now.saturating_add(ADVERT_AFTER_CONNECT_MS));
                }
            }
            Input::DiskLow(low) => self.disk_low = low,
            Input::Vehicle(state) => {
                self.vehicle = state.and_then(|s| s.check().map(|()| s));
                self.reevaluate(now, &mut out);
            }
            Input::Disconnected(peer) => {
                self.connected.remove(&peer);
                self.presence.remove(&peer);
                let (mut ctx, requester, _) = self.split(now, &mut out);
                requester.peer_gone(&mut ctx, &peer);
            }
            Input::Tick => self.on_tick(now, &mut out),
            other => {
                let (mut ctx, requester, worker) = self.split(now, &mut out);
                match other {
                    Input::Submit { call, request, nonce } => {
                        let result = requester.submit(&mut ctx, request, nonce);
                        ctx.push(Action::Submitted { call, result });
                    }
                    Input::Request { reply, from, request } => {
                        let response = on_request(&mut ctx, requester, worker, from, request);
                        ctx.push(Action::Reply { reply, response });
                    }
                    Input::Response { tag, peer, result } => match tag {
                        SendTag::Award { task, worker: w } => {
                            requester.on_award_response(&mut ctx, task, w, result)
                        }
                        SendTag::Result { task } => worker.on_result_response(&mut ctx, task, peer, result),
                        SendTag::Bid { task } => worker.on_bid_response(&mut ctx, task, peer, result),
                        SendTag::Receipt | SendTag::Unable => {}
                    },
                    Input::Published { task, round, ok } => requester.on_published(&mut ctx, task, round, ok),
                    Input::Record { lookup, value } => worker.on_record(&mut ctx, lookup, value),
                    Input::Providers { model, providers, last } => {
                        worker.on_providers(&mut ctx, model, providers, last)
                    }
                    Input::Executed { task, result } => worker.on_executed(&mut ctx, task, result),
                    Input::Checked { task, result, output } => {
                        requester.on_checked(&mut ctx, task, result, output)
                    }
                    Input::SelfTested { model, ok } => worker.on_self_tested(ctx.now, model, ok),
                    Input::PersistFailed { keys } => {
                        requester.on_persist_failed(&mut ctx, &keys);
                        worker.on_persist_failed(&mut ctx, &keys);
                    }
                    Input::Gossip { .. }
                    | Input::Connected(_)
                    | Input::Disconnected(_)
                    | Input::DiskLow(_)
                    | Input::Vehicle(_)
                    | Input::Tick => {}
                }
            }
        }
        out
    }

    fn on_gossip(&mut self, now: u64, topic: Topic, data: &[u8], out: &mut Vec<Action>) -> Verdict {
        let limit = fleetmesh_protocol::limits::MAX_GOSSIP_BYTES;
        match topic {
            Topic::Tasks => {
                let Ok((env, a)) = Announcement::open_bytes(data, limit) else { return Verdict::Reject };
                // The spec, when carried, must be the task's and signed by the announcer: only
                // a task's requester may announce its rounds.
                let mut opened = None;
                if let Some(spec) = &a.spec {
                    if spec.signer != env.signer || fleetmesh_protocol::task_id_of(spec) != a.task_id {
                        return Verdict::Reject;
                    }
                    // The announcement's signature covers the spec's bytes, and the spec names
                    // the announcer as its signer: it is authentic as the announcement is, so
                    // it is decoded here, not verified a second time. (Its own signature is
                    // for the DHT, where it travels alone, and every DHT node checks it.)
                    match fleetmesh_protocol::TaskSpec::open_unverified(spec) {
                        Ok(s) if s.model == a.model => opened = Some(s),
                        _ => return Verdict::Reject,
                    }
                }
                // A round whose bids already closed is history: a replay, not news.
                if a.bid_deadline_ms < now {
                    return Verdict::Ignore;
                }
                if !self.seen_announcements.insert((a.task_id, a.round, env.signer)) {
                    return Verdict::Ignore;
                }
                // Without the spec nobody can tell who may announce the task: act on it here
                // (the spec found in the DHT must be the announcer's) but do not relay it.
                let verdict = if a.spec.is_some() { Verdict::Accept } else { Verdict::Ignore };
                let (mut ctx, _, worker) = self.split(now, out);
                // The spec is handed on opened: it is verified once per announcement.
                worker.on_announcement(&mut ctx, env.signer, a, opened);
                verdict
            }
            Topic::Presence => {
                let Ok((env, p)) = Presence::open_bytes(data, limit) else { return Verdict::Reject };
                // Gossip is anonymous (wire version 2): the envelope's signature is what says
                // whose advert it is. A relayed or replayed copy is the same bytes, so it is
                // believed only while fresh and newer than the last one kept.
                if p.models.len() > fleetmesh_protocol::limits::MAX_MODELS_PER_ADVERT {
                    return Verdict::Reject;
                }
                if p.at_ms > now.saturating_add(MAX_CLOCK_SKEW_MS) {
                    return Verdict::Reject;
                }
                if p.at_ms.saturating_add(self.presence_ttl_ms()) < now {
                    return Verdict::Ignore;
                }
                if let Some(old) = self.presence.get(&env.signer) {
                    if old.advert.at_ms >= p.at_ms {
                        return Verdict::Ignore;
                    }
                }
                // Only direct neighbours' adverts are kept (they are what early round close
                // counts): fresh keys that never connect cannot push real adverts out.
                if !self.connected.contains(&env.signer) {
                    return Verdict::Ignore;
                }
                let digest = fleetmesh_protocol::bid_digest(&env);
                // Its operator, if it shows a certificate that holds (checked once, here; one
                // that does not hold is as none: the advert still counts).
                let operator = p
                    .operator_cert
                    .as_ref()
                    .and_then(|c| fleetmesh_protocol::operator_of(c, &env.signer, now).ok());
                self.presence
                    .insert(env.signer, PeerAdvert { advert: p, received_ms: now, digest, operator });
                Verdict::Accept
            }
        }
    }

    /// How long an advert counts: a few advert intervals, so one lost advert does not matter.
    fn presence_ttl_ms(&self) -> u64 {
        self.config.presence_interval_ms.saturating_mul(6).max(MAX_CLOCK_SKEW_MS)
    }

    /// Evaluates the vehicle's state against the owner's policy again (the hours and the
    /// departure move with the clock) and acts on a change: driving hands back every
    /// unfinished job, another refusal the jobs not yet running; more slots start queued ones.
    fn reevaluate(&mut self, now: u64, out: &mut Vec<Action>) {
        let next = vehicle::evaluate(&self.vehicle, &self.config.owner, self.config.slots, now);
        if next == self.availability {
            return;
        }
        let before = std::mem::replace(&mut self.availability, next);
        let after = &self.availability;
        if after.serving() != before.serving() || after.driving != before.driving {
            let why: Vec<String> = after.refusals.iter().map(ToString::to_string).collect();
            if after.serving() {
                tracing::info!("the vehicle takes work again");
            } else {
                tracing::info!(reason = %why.join("; "), "the vehicle takes no new work");
            }
        }
        let release = if after.driving && !before.driving {
            Some(true)
        } else if !after.serving() && before.serving() {
            Some(false)
        } else {
            None
        };
        // What a release tells the requester: the rule's name ("driving", "battery_low"),
        // not the sentence, which holds the battery level, the hours or a local path.
        let reason = after.refusals.first().map(|r| r.label().to_owned()).unwrap_or_default();
        let (mut ctx, _, worker) = self.split(now, out);
        if let Some(all) = release {
            worker.release(&mut ctx, all, &reason);
        }
        worker.start_queued(&mut ctx);
    }

    fn on_tick(&mut self, now: u64, out: &mut Vec<Action>) {
        self.reevaluate(now, out);
        {
            let (mut ctx, requester, worker) = self.split(now, out);
            requester.tick(&mut ctx);
            worker.tick(&mut ctx);
        }
        if now >= self.next_open_flush {
            self.next_open_flush = now.saturating_add(OPEN_TASKS_FLUSH_MS);
            let (mut ctx, requester, _) = self.split(now, out);
            requester.flush_open_tasks(&mut ctx);
        }
        if now >= self.next_compaction {
            self.next_compaction = now.saturating_add(1_000);
            let cap = self.config.max_finished_in_memory;
            self.requester.forget_old_finished(cap);
            self.worker.forget_old_finished(cap, now);
            let (mut ctx, requester, worker) = self.split(now, out);
            requester.retry_unsaved(&mut ctx);
            worker.retry_unsaved(&mut ctx);
            let ttl = self.presence_ttl_ms();
            let stale: Vec<PublicKey> = self
                .presence
                .iter()
                .filter(|(_, a)| a.received_ms.saturating_add(ttl) < now)
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                self.presence.remove(&k);
            }
        }
        if self.config.presence_interval_ms > 0 {
            // A model that failed here is neither advertised nor offered until its self-test
            // passes; a node that takes no new work (not serving, disk nearly full) offers
            // nothing.
            let serving = self.config.serve && self.availability.serving();
            let models: Vec<ModelId> = if serving {
                self.models
                    .iter()
                    .filter(|m| !self.worker.quarantined().contains(m))
                    .take(fleetmesh_protocol::limits::MAX_MODELS_PER_ADVERT)
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            let offering =
                serving && !self.disk_low && !models.is_empty() && self.worker.has_room(&self.config);
            // Sent on its interval, and soon when what it offers changed (so a withdrawn offer
            // does not stand until it expires): at most one advert a second for changes.
            let changed = self.worker.offer.as_ref().is_some_and(|o| {
                (o.models != models
                    || o.offer_until_ms.is_some() != offering
                    || o.depart_ms != self.availability.depart_ms)
                    && now >= o.at_ms.saturating_add(ADVERT_AFTER_CONNECT_MS)
            });
            if now >= self.next_presence || changed {
                self.next_presence = now.saturating_add(self.config.presence_interval_ms);
                let advert = Presence {
                    v: fleetmesh_protocol::WIRE_VERSION,
                    models,
                    free_slots: self.worker.free_slots(self.config.slots.min(self.availability.slots)),
                    depart_ms: self.availability.depart_ms,
                    price_floor: self.config.price_floor,
                    at_ms: now,
                    // The offer stands as long as requesters keep the advert, and is renewed
                    // with each one.
                    // (and never past the vehicle's departure).
                    offer_until_ms: offering.then(|| {
                        let until = now.saturating_add(self.presence_ttl_ms());
                        self.availability.depart_ms.map_or(until, |d| until.min(d))
                    }),
                    max_batch: self.config.max_batch,
                    operator_cert: self.config.operator_cert.clone(),
                };
                let env = advert.sign(&self.identity);
                self.worker.offer = Some(advert);
                out.push(Action::Publish {
                    topic: Topic::Presence,
                    data: fleetmesh_protocol::encode(&env),
                    announce: None,
                });
            }
        }
        if now >= self.next_scan && self.config.serve {
            self.next_scan = now.saturating_add(self.config.dht_scan_interval_ms);
            let (mut ctx, _, worker) = self.split(now, out);
            worker.scan(&mut ctx);
        }
    }

    /// The view of a requested task held in memory.
    pub fn view(&self, task: &TaskId) -> Option<TaskView> {
        self.requester.get(task).map(ReqTask::view)
    }

    /// Whether every map and queue is within its bound (the simulator checks this after
    /// every run); the error names the one that is not.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.presence.len() > MAX_PRESENCE_PEERS {
            return Err(format!("presence table holds {}", self.presence.len()));
        }
        if self.seen_announcements.len() > MAX_SEEN_ANNOUNCEMENTS {
            return Err("seen-announcement set over its bound".into());
        }
        self.requester.check_bounds(&self.config)?;
        self.worker.check_bounds(&self.config)
    }
}

/// Routes a task-protocol request to the role it is for.
fn on_request(
    ctx: &mut Ctx<'_>,
    requester: &mut Requester,
    worker: &mut Worker,
    from: PublicKey,
    request: TaskRequest,
) -> TaskResponse {
    match request {
        TaskRequest::Bid { bid } => requester.on_bid(ctx, from, bid),
        TaskRequest::Result { task_id, header, output } => {
            requester.on_result(ctx, from, task_id, header, output)
        }
        TaskRequest::Award { spec, award, input } => worker.on_award(ctx, from, spec, award, input),
        TaskRequest::Receipt { receipt } => worker.on_receipt(ctx, from, receipt),
        TaskRequest::Unable { report } => requester.on_unable(ctx, from, report),
        _ => TaskResponse::Refused(Refusal::Invalid("unsupported request".into())),
    }
}

/// A timeline record about `task`.
pub(crate) fn record(event: &str, task: &TaskId) -> TaskRecord {
    TaskRecord::about(event, task)
}

#[cfg(test)]
mod tests;
