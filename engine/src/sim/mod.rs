//! Deterministic simulation of a fleet: many [`Engine`]s (the real state machines with real
//! signatures and hashes) over a simulated network, disk and clock, in virtual time, driven
//! by one seed. Anchors: FoundationDB's simulation testing and TigerBeetle's VOPR.
//!
//! What is simulated, and how:
//! * **Network.** Every message (gossip delivery, request, response) takes a random latency
//!   and may be lost; random latencies reorder messages. A lost request or response gives
//!   the sender a timeout, as libp2p does, so the sender does not know whether it was
//!   processed. Gossip goes from the publisher straight to every reachable subscriber (no
//!   relaying: this models delivery, not gossipsub's mesh).
//! * **DHT.** One shared record store with the real validation rules; lookups take a latency.
//! * **Partitions.** The fleet splits in two for a while; both sides see the other side
//!   disconnect, and messages across are lost.
//! * **Crashes.** A vehicle stops at a random moment, losing everything but its store (what
//!   its engine persisted), and restarts later from that store; answers to what it asked
//!   before the crash are dropped.
//! * **Clocks.** Each vehicle's clock is off by a fixed random skew.
//! * **Hostile peers.** Some vehicles also forge results for tasks they were never awarded,
//!   send awards for tasks nobody bid on and replay old announcements; liars compute wrong
//!   outputs (each its own, so liars do not agree with one another).
//! * **Execution.** Outputs are a deterministic function of the input (a stand-in for the
//!   model), taking a random time.
//!
//! After the run it checks properties (see [`SimReport::violations`]): no accepted task lost,
//! no result accepted twice, every verified task agreed on by a quorum of awarded workers and
//! correct whenever k ≥ 2, every failure for a reason that holds, every engine map within
//! its bound, every hostile request refused. A failing seed replays exactly: all randomness
//! comes from the seed, the engines iterate ordered maps, and events at the same instant run
//! in the order they were scheduled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use fleetmesh_crypto::{Identity, InputDigest, ModelId, PublicKey, TaskId};
use fleetmesh_protocol::output::ModelOutput;
use fleetmesh_protocol::wire::{TaskRequest, TaskResponse};
use fleetmesh_protocol::Signed;
use serde::Serialize;

mod day;

use crate::{
    Action, Engine, EngineConfig, ExecOutput, Input, Job, Metric, Outgoing, ReqTask, SendFailure, SendTag,
    SubmitRequest, Table, Topic,
};
use fleetmesh_api::Phase;
use fleetmesh_protocol::records::record_is_valid;
use fleetmesh_trace::timeline::{event, ChainWriter};

/// The virtual clock starts here (Unix ms, 2027-01-15), so deadlines look like real ones.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// How often each engine gets a tick, virtual ms.
const TICK_MS: u64 = 100;
/// How long a request waits for an answer before the sender sees a timeout.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Vehicles in the fleet.
    pub vehicles: usize,
    /// Tasks submitted.
    pub tasks: usize,
    /// The seed everything random is drawn from.
    pub seed: u64,
    /// Vehicles that submit tasks (round robin); 0 picks min(10, vehicles).
    pub requesters: usize,
    /// Workers per task (k).
    pub redundancy: u8,
    /// One-way latency range, ms.
    pub latency_ms: (u64, u64),
    /// Chance that any one message is lost, in millionths.
    pub loss_ppm: u32,
    /// Partition episodes.
    pub partitions: u32,
    /// Crash-and-restart episodes.
    pub crashes: u32,
    /// Largest clock skew of a vehicle, ms (each draws one in ±this).
    pub max_skew_ms: u64,
    /// Vehicles that also send forged and replayed messages.
    pub hostile: usize,
    /// Vehicles that compute wrong outputs.
    pub liars: usize,
    /// Sybil vehicles: one attacker's fresh keys that join the fleet late (at
    /// `sybil_join_ms`) and all return the same wrong output for an input, so they agree
    /// with one another.
    pub sybils: usize,
    /// Reputation on (the default); off, every worker is alike, as in v1.
    pub trust: bool,
    /// When the sybils join, virtual ms; `None`: once half of the tasks were submitted (the
    /// honest fleet has worked together for a while: docs/SIMULATION.md says why).
    pub sybil_join_ms: Option<u64>,
    /// Time between two submissions, ms.
    pub submit_interval_ms: u64,
    /// Execution time range, ms.
    pub exec_ms: (u64, u64),
    /// Presence adverts (each costs every vehicle a signature check); off by default above
    /// 100 vehicles.
    pub presence: Option<bool>,
    /// Give up after this much virtual time, ms.
    pub time_limit_ms: u64,
    /// The lighter mode for very large fleets: an announcement is counted as delivered to
    /// every vehicle it reaches, but only the vehicles its round admits (ticket or
    /// invitation) run it through their engines. The others would verify it, find their
    /// ticket outside the round and drop it, changing nothing but their duplicate filter:
    /// that work (one signature check and one hash per vehicle and announcement) is what this
    /// mode leaves out. Rounds open to every holder are delivered to everyone as usual.
    pub light: bool,
    /// Connections per vehicle: 0 connects every pair (the default); n > 0 links each
    /// vehicle to the n nearest on a ring (n / 2, rounded down, each side), as a real node keeps a bounded
    /// set of connections. Messages still reach any running vehicle (a node dials whom it
    /// must); what changes is what engines are told: who is connected (early round close,
    /// the first holder estimate, adverts kept) and who disconnects.
    pub links: usize,
    /// Write each vehicle's task timeline here.
    pub trace_dir: Option<PathBuf>,
    /// A day of the fleet ([`day`]): vehicles park, charge and drive off on a synthetic
    /// commuter and delivery profile, and the tasks are spread over the day.
    pub day: bool,
    /// The day's length in virtual time, ms.
    pub day_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            vehicles: 20,
            tasks: 100,
            seed: 1,
            requesters: 0,
            redundancy: 2,
            latency_ms: (5, 60),
            loss_ppm: 0,
            partitions: 0,
            crashes: 0,
            max_skew_ms: 0,
            hostile: 0,
            liars: 0,
            sybils: 0,
            trust: true,
            sybil_join_ms: None,
            submit_interval_ms: 20,
            exec_ms: (20, 120),
            presence: None,
            time_limit_ms: 600_000,
            trace_dir: None,
            light: false,
            links: 0,
            day: false,
            day_ms: 240_000,
        }
    }
}

impl SimConfig {
    /// A day of the fleet ([`SimConfig::day`]) of `day_ms` virtual ms: the tasks spread over
    /// the day, each run taking 0.3 to 3 s (a heavier model than the default's, so vehicles
    /// are busy when they drive off, which is what the run looks at).
    pub fn a_day(mut self, day_ms: u64) -> Self {
        self.day = true;
        self.day_ms = day_ms;
        self.submit_interval_ms = (day_ms / self.tasks.max(1) as u64).max(1);
        self.exec_ms = (300, 3_000);
        self
    }

    /// The fault mix the CI runs: loss, reordering, partitions, crashes, skew, hostile peers
    /// and liars, scaled to the fleet.
    pub fn with_faults(mut self) -> Self {
        self.loss_ppm = 20_000;
        self.partitions = 2;
        self.crashes = 3;
        self.max_skew_ms = 2_000;
        self.hostile = (self.vehicles / 10).max(1);
        self.liars = (self.vehicles / 10).max(1);
        self
    }
}

/// What a run did and what it found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimReport {
    /// Vehicles.
    pub vehicles: usize,
    /// Tasks accepted by their requesters.
    pub tasks: usize,
    /// Tasks verified.
    pub verified: usize,
    /// Tasks failed.
    pub failed: usize,
    /// Accepted tasks that are neither verified nor failed at the end, or gone.
    pub lost: usize,
    /// Results accepted twice (a task verified twice, or a worker receipted twice).
    pub duplicates_accepted: usize,
    /// Verified tasks whose output is not the honest one (possible only with k = 1 liars).
    pub wrong_verified: usize,
    /// Sybil vehicles (one attacker's fresh keys, agreeing on wrong outputs).
    pub sybils: usize,
    /// Verified tasks whose output is the sybils' wrong one.
    pub wrong_accepted: usize,
    /// Share of the awards made after the sybils joined that went to a sybil.
    pub sybil_task_share: f64,
    /// The same share in each quarter of the time after the sybils joined (how it falls as
    /// requesters learn).
    pub sybil_share_by_quarter: Vec<f64>,
    /// Workers awarded per accepted task (k is the floor: replacements, spot checks and
    /// the search for a trusted worker add to it).
    pub awards_per_task: f64,
    /// Verified tasks that had a spot check.
    pub spot_checks: usize,
    /// Network messages of the task lifecycle (announcement deliveries, requests,
    /// responses) per accepted task; presence adverts are counted apart.
    pub messages_per_task: f64,
    /// Presence adverts (standing offers) delivered, per accepted task: they go out on a timer
    /// and when an offer changes, whatever the tasks, so this falls as the task rate grows.
    pub advert_messages_per_task: f64,
    /// Share of awards that standing offers covered ([`fleetmesh_protocol::Award::offer`]):
    /// tasks decided with no announcement and no bid, and offering standbys.
    pub offer_award_share: f64,
    /// Vehicles whose timeline mentions a task, per task (requester included).
    pub participants_per_task: f64,
    /// The same over the second half of the tasks, once requesters have learned how many
    /// vehicles hold the model (their first estimate can only count their connections).
    pub participants_per_task_later: f64,
    /// Failures by reason (numbers stripped).
    pub failures: BTreeMap<String, usize>,
    /// Hostile requests sent, and how many a victim accepted (must be 0).
    pub hostile_sent: usize,
    /// Hostile requests a victim accepted.
    pub hostile_accepted: usize,
    /// Crashes and partitions that happened.
    pub crashes: u32,
    /// Partitions.
    pub partitions: u32,
    /// Virtual time the run took, s.
    pub virtual_s: f64,
    /// Wall time, s.
    pub wall_s: f64,
    /// The seed.
    pub seed: u64,
    /// The run used the lighter mode ([`SimConfig::light`]).
    pub light: bool,
    /// Connections per vehicle ([`SimConfig::links`]; 0: every pair).
    pub links: usize,
    /// Awards on bids refused by their worker as answering no bid of its (`NotAWinner`): a
    /// worker that restarted and forgot its bids, or one awarded under another round than it
    /// bid in.
    pub awards_not_a_winner: usize,
    /// Awards made on standing offers that their worker refused (busy, or its offer gone since
    /// its last advert): the requester moves on to the next offer.
    pub offer_awards_refused: usize,
    /// A day of the fleet was simulated ([`SimConfig::day`]).
    pub day: bool,
    /// Jobs workers handed back with a signed release (their vehicle drove off, or its
    /// owner's policy stopped it serving).
    pub released: usize,
    /// Share of accepted tasks that a worker handed back at least once (each was awarded
    /// again).
    pub released_task_share: f64,
    /// Releases after which the task needed another worker, and got one.
    pub reawards: usize,
    /// From such a release reaching the requester to another worker accepting the task's
    /// award, p50, virtual ms.
    pub reaward_p50_ms: f64,
    /// The same, p99.
    pub reaward_p99_ms: f64,
    /// Energy every run drew (run time times the owner's device power, released and
    /// rejected runs included), per verified task, millijoules.
    pub energy_mj_per_verified_task: f64,
    /// Properties that did not hold: empty on a good run.
    pub violations: Vec<String>,
}

/// SplitMix64: a tiny generator whose sequence is fixed forever, so a seed replays the same
/// run on any machine and any later version of the dependencies (a crate's generator may
/// change its algorithm between releases).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next() % (hi - lo + 1)
    }
    fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.next() % 1_000_000 < u64::from(ppm)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Honest,
    Liar,
    Hostile,
    Sybil,
}

struct Vehicle {
    identity: Arc<Identity>,
    key: PublicKey,
    kind: Kind,
    engine: Option<Engine>,
    /// Incarnation: answers to what an earlier incarnation asked are dropped.
    life: u32,
    store: BTreeMap<(u8, TaskId), Vec<u8>>,
    skew: i64,
    group: u8,
    trace: Option<ChainWriter<std::io::BufWriter<std::fs::File>>>,
    /// The vehicle's state now, in a day run: fed to its engine, again after a restart.
    state: Option<crate::vehicle::VehicleState>,
}

fn table_tag(t: Table) -> u8 {
    match t {
        Table::Requests => 0,
        Table::RequestInputs => 1,
        Table::Jobs => 2,
        Table::JobInputs => 3,
        Table::Reputation => 4,
        Table::Ledger => 5,
    }
}

enum Event {
    Tick(usize),
    Submit(usize),
    /// An input for a vehicle; `life` set when it answers something that incarnation did.
    Deliver {
        to: usize,
        life: Option<u32>,
        input: Input,
    },
    /// A request arrives; its answer goes back to `from`.
    Request {
        to: usize,
        from: usize,
        from_life: u32,
        tag: Option<SendTag>,
        request: TaskRequest,
    },
    Crash(usize),
    Restart(usize),
    PartitionStart,
    PartitionEnd,
    Hostile(usize),
    /// A vehicle's state changes (a day run).
    Vehicle(usize, day::Change),
}

/// The simulation.
pub struct Sim {
    config: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    vehicles: Vec<Vehicle>,
    by_key: BTreeMap<PublicKey, usize>,
    dht: BTreeMap<Vec<u8>, Vec<u8>>,
    providers: BTreeMap<Vec<u8>, BTreeSet<PublicKey>>,
    engine_config: EngineConfig,
    model: ModelId,
    requesters: Vec<usize>,
    submitted: usize,
    next_id: u64,
    /// Accepted tasks: id -> (requester, k).
    accepted: BTreeMap<TaskId, (usize, u8)>,
    by_peer: BTreeMap<String, usize>,
    verified_events: BTreeMap<TaskId, usize>,
    /// Tasks a requester reported finished (verified or failed).
    finished: BTreeSet<TaskId>,
    /// The input of every accepted task, to check verified outputs against.
    inputs: BTreeMap<TaskId, Vec<u8>>,
    /// The input of the submit being handled.
    pending_input: Option<Vec<u8>>,
    receipts: BTreeMap<(TaskId, PublicKey), usize>,
    participants: BTreeMap<TaskId, BTreeSet<usize>>,
    /// Accepted tasks in the order they were submitted.
    accepted_order: Vec<TaskId>,
    /// Awards a worker refused as not answering any bid of its.
    awards_not_a_winner: usize,
    offer_awards_refused: usize,
    messages: u64,
    advert_messages: u64,
    offer_awards: usize,
    announcements: Vec<Vec<u8>>,
    hostile_sent: usize,
    hostile_accepted: usize,
    crashes: u32,
    partitions: u32,
    /// Crashes and partitions asked for that have not happened yet (the run waits for them).
    faults_pending: u32,
    /// Every (task, worker) an award named.
    awarded: BTreeSet<(TaskId, PublicKey)>,
    /// Distinct (task, worker) awards.
    awards: usize,
    /// Per quarter after the sybils joined: (awards, awards to sybils).
    sybil_awards: [(usize, usize); 4],
    partitioned: bool,
    /// Jobs handed back, and when each task's release reached its requester.
    released: usize,
    released_tasks: BTreeSet<TaskId>,
    release_at: BTreeMap<TaskId, u64>,
    reawards_ms: Vec<u64>,
    energy_mj: u64,
    violations: Vec<String>,
}

/// The honest output for an input: a stand-in for the model, a pure function of the input.
pub fn honest_output(input: &[u8]) -> Vec<u8> {
    output_of(blake3::hash(input).as_bytes())
}

fn output_of(hash: &[u8; 32]) -> Vec<u8> {
    let data = hash[..10].to_vec();
    let argmax =
        data.iter().enumerate().max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i))).map(|(i, _)| i as u32);
    ModelOutput { dtype: "u8".into(), shape: vec![10], data, argmax }.to_bytes()
}

impl Sim {
    /// Builds a fleet for `config`.
    pub fn new(config: SimConfig) -> Result<Self, String> {
        if config.vehicles < 2 {
            return Err("a simulation needs at least 2 vehicles".into());
        }
        if config.redundancy == 0 || config.redundancy > fleetmesh_protocol::limits::MAX_REDUNDANCY {
            return Err(format!("redundancy must be 1 to {}", fleetmesh_protocol::limits::MAX_REDUNDANCY));
        }
        if config.hostile.saturating_add(config.liars).saturating_add(config.sybils) >= config.vehicles {
            return Err("hostile vehicles, liars and sybils must leave some honest ones".into());
        }
        // Limits that keep virtual time and its arithmetic far from overflow.
        const HOUR: u64 = 3_600_000;
        if config.vehicles > 100_000 || config.tasks > 10_000_000 {
            return Err("at most 100,000 vehicles and 10,000,000 tasks".into());
        }
        if config.max_skew_ms > 24 * HOUR || config.submit_interval_ms > HOUR {
            return Err("--skew-ms must be at most a day and --submit-interval-ms at most an hour".into());
        }
        if config.latency_ms.1 > HOUR || config.exec_ms.1 > HOUR || config.loss_ppm > 1_000_000 {
            return Err(
                "latency and execution times must be at most an hour, loss at most 1,000,000 ppm".into()
            );
        }
        if config.day && !(10_000..=24 * HOUR).contains(&config.day_ms) {
            return Err("a day of the fleet lasts 10 s to 24 h of virtual time".into());
        }
        if config.time_limit_ms > 365 * 24 * HOUR {
            return Err("the time limit must be at most a year".into());
        }
        let mut rng = Rng(config.seed ^ 0x5eed_f1ee_75e5_0001);
        // Adverts go to direct neighbours only: with bounded links they cost each vehicle a
        // bounded number of signature checks whatever the fleet; with every pair linked,
        // every vehicle's advert reaches every other, which is too slow above 100.
        let presence = config.presence.unwrap_or(config.vehicles <= 100 || config.links > 0);
        let model = ModelId::of(b"fleetmesh-sim-model");
        let mut engine_config = EngineConfig {
            default_model: Some(model),
            presence_interval_ms: if presence { 5_000 } else { 0 },
            dht_scan_interval_ms: 5_000,
            ..EngineConfig::default()
        };
        engine_config.tasks.bid_window_ms = 300;
        engine_config.tasks.exec_timeout_ms = 5_000;
        engine_config.tasks.deadline_ms = 120_000;
        engine_config.tasks.redundancy = config.redundancy;
        engine_config.trust.enabled = config.trust;

        if let Some(dir) = &config.trace_dir {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut vehicles = Vec::with_capacity(config.vehicles);
        for i in 0..config.vehicles {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&rng.next().to_le_bytes());
            seed[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            let identity = Arc::new(Identity::from_secret_bytes(&seed));
            let kind = if i >= config.vehicles - config.hostile {
                Kind::Hostile
            } else if i >= config.vehicles - config.hostile - config.liars {
                Kind::Liar
            } else if i >= config.vehicles - config.hostile - config.liars - config.sybils {
                Kind::Sybil
            } else {
                Kind::Honest
            };
            let skew = if config.max_skew_ms == 0 {
                0
            } else {
                rng.range(0, 2 * config.max_skew_ms) as i64 - config.max_skew_ms as i64
            };
            let trace = match &config.trace_dir {
                Some(dir) => {
                    let path = dir.join(format!("vehicle{i:04}.timeline.jsonl"));
                    let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let w = ChainWriter::start(
                        std::io::BufWriter::new(f),
                        identity.public().peer_id(),
                        EPOCH_MS * 1_000_000,
                    )
                    .map_err(|e| e.to_string())?;
                    Some(w)
                }
                None => None,
            };
            vehicles.push(Vehicle {
                key: identity.public(),
                identity,
                kind,
                engine: None,
                life: 0,
                store: BTreeMap::new(),
                skew,
                group: 0,
                trace,
                state: None,
            });
        }
        let by_key = vehicles.iter().enumerate().map(|(i, v)| (v.key, i)).collect();
        let by_peer = vehicles.iter().enumerate().map(|(i, v)| (v.key.peer_id(), i)).collect();
        let n_req = if config.requesters == 0 {
            config.vehicles.min(10)
        } else {
            config.requesters.min(config.vehicles)
        };
        // Requesters are honest vehicles, spread over the fleet.
        let honest: Vec<usize> = (0..config.vehicles).filter(|&i| vehicles[i].kind == Kind::Honest).collect();
        let requesters = (0..n_req).map(|j| honest[j * honest.len() / n_req]).collect();
        let mut sim = Self {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            vehicles,
            by_key,
            by_peer,
            dht: BTreeMap::new(),
            providers: BTreeMap::new(),
            engine_config,
            model,
            requesters,
            submitted: 0,
            next_id: 0,
            accepted: BTreeMap::new(),
            verified_events: BTreeMap::new(),
            finished: BTreeSet::new(),
            inputs: BTreeMap::new(),
            pending_input: None,
            receipts: BTreeMap::new(),
            participants: BTreeMap::new(),
            accepted_order: Vec::new(),
            awards_not_a_winner: 0,
            offer_awards_refused: 0,
            messages: 0,
            advert_messages: 0,
            offer_awards: 0,
            announcements: Vec::new(),
            hostile_sent: 0,
            hostile_accepted: 0,
            crashes: 0,
            partitions: 0,
            faults_pending: 0,
            awarded: BTreeSet::new(),
            awards: 0,
            sybil_awards: [(0, 0); 4],
            partitioned: false,
            released: 0,
            released_tasks: BTreeSet::new(),
            release_at: BTreeMap::new(),
            reawards_ms: Vec::new(),
            energy_mj: 0,
            violations: Vec::new(),
            config,
        };
        sim.boot();
        Ok(sim)
    }

    /// When the sybils join (virtual ms).
    fn sybil_join_ms(&self) -> u64 {
        self.config.sybil_join_ms.unwrap_or_else(|| {
            1_000 + self.config.submit_interval_ms.saturating_mul(self.config.tasks as u64 / 2)
        })
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), e);
    }

    fn local_now(&self, i: usize) -> u64 {
        let t = EPOCH_MS as i64 + self.now as i64 + self.vehicles[i].skew;
        t.max(0) as u64
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = self.config.latency_ms;
        self.rng.range(lo, hi)
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        a != b
            && self.vehicles[a].engine.is_some()
            && self.vehicles[b].engine.is_some()
            && self.vehicles[a].group == self.vehicles[b].group
    }

    fn boot(&mut self) {
        let n = self.vehicles.len();
        let join = self.sybil_join_ms();
        for i in 0..n {
            if self.vehicles[i].kind == Kind::Sybil {
                self.schedule(join, Event::Restart(i));
            } else {
                self.start(i);
            }
        }
        for i in 0..n {
            let jitter = self.rng.range(0, TICK_MS);
            self.schedule(jitter, Event::Tick(i));
        }
        if self.config.day {
            let requesters: BTreeSet<usize> = self.requesters.iter().copied().collect();
            for i in 0..n {
                if requesters.contains(&i) {
                    continue;
                }
                let role = day::role(&mut self.rng);
                for change in day::plan(&mut self.rng, role, 1_000, self.config.day_ms) {
                    self.schedule(change.at, Event::Vehicle(i, change));
                }
            }
        }
        let span = self.config.submit_interval_ms.saturating_mul(self.config.tasks as u64);
        for t in 0..self.config.tasks {
            let at = 1_000 + self.config.submit_interval_ms * t as u64;
            let req = self.requesters[t % self.requesters.len()];
            self.schedule(at, Event::Submit(req));
        }
        // Faults happen while tasks are in flight.
        let window = span.max(5_000) + 5_000;
        self.faults_pending = self.config.crashes.saturating_add(self.config.partitions);
        for _ in 0..self.config.crashes {
            let at = 1_000 + self.rng.range(0, window);
            let who = self.rng.range(0, n as u64 - 1) as usize;
            self.schedule(at, Event::Crash(who));
        }
        for p in 0..self.config.partitions {
            let at = 1_000 + self.rng.range(0, window) + u64::from(p) * 100;
            self.schedule(at, Event::PartitionStart);
        }
        for i in 0..n {
            if self.vehicles[i].kind == Kind::Hostile {
                let at = 1_500 + self.rng.range(0, 500);
                self.schedule(at, Event::Hostile(i));
            }
        }
    }

    /// Starts (or restarts) vehicle `i` from its store.
    fn start(&mut self, i: usize) {
        let now = self.local_now(i);
        let v = &mut self.vehicles[i];
        v.life += 1;
        let mut engine =
            Engine::new(v.identity.clone(), self.engine_config.clone(), BTreeSet::from([self.model]), now);
        let mut reqs = Vec::new();
        let mut jobs = Vec::new();
        let mut ledger = Vec::new();
        let mut days = Vec::new();
        for ((table, key), bytes) in &v.store {
            match *table {
                5 => {
                    if let Ok(d) = fleetmesh_protocol::decode(bytes, usize::MAX) {
                        days.push((*key, d));
                    }
                }
                4 => {
                    if let Ok(s) = fleetmesh_protocol::decode(bytes, usize::MAX) {
                        ledger.push((*key, s));
                    }
                }
                0 => {
                    if let Ok(t) = fleetmesh_protocol::decode::<ReqTask>(bytes, usize::MAX) {
                        reqs.push((*key, t));
                    }
                }
                2 => {
                    if let Ok(j) = fleetmesh_protocol::decode::<Job>(bytes, usize::MAX) {
                        jobs.push((*key, j));
                    }
                }
                _ => {}
            }
        }
        engine.restore_reputation(ledger);
        engine.restore_ledger(days);
        // A day run: the vehicle's state as it is now (its source answers at once on start).
        if let Some(state) = v.state.clone() {
            let _ = engine.handle(now, Input::Vehicle(Ok(state)));
        }
        let actions = engine.restore(now, reqs, jobs);
        v.engine = Some(engine);
        self.perform(i, actions);
        // Connections: everyone reachable sees the vehicle (again), and it sees them (a
        // connection has two ends, at boot as after a restart).
        let n = self.vehicles.len();
        for j in 0..n {
            if self.reachable(i, j) && self.linked(i, j) {
                self.input(i, Input::Connected(self.vehicles[j].key));
                self.input(j, Input::Connected(self.vehicles[i].key));
            }
        }
    }

    /// Whether vehicles `a` and `b` keep a connection ([`SimConfig::links`]).
    fn linked(&self, a: usize, b: usize) -> bool {
        let n = self.vehicles.len();
        if self.config.links == 0 || n == 0 {
            return true;
        }
        let d = a.abs_diff(b) % n;
        d.min(n - d) <= self.config.links / 2
    }

    /// Feeds `input` to vehicle `i` now and performs what it returns.
    fn input(&mut self, i: usize, input: Input) {
        let now = self.local_now(i);
        let Some(engine) = self.vehicles[i].engine.as_mut() else { return };
        let actions = engine.handle(now, input);
        self.perform(i, actions);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn perform(&mut self, i: usize, actions: Vec<Action>) {
        let life = self.vehicles[i].life;
        // Releases this step, and tasks this step brought a worker to (an award, or a round).
        let mut released_now = Vec::new();
        let mut replaced_now = BTreeSet::new();
        for action in actions {
            match action {
                Action::Persist(ops) => {
                    let store = &mut self.vehicles[i].store;
                    for op in ops {
                        let k = (table_tag(op.table), op.key);
                        match op.value {
                            Some(v) => {
                                store.insert(k, v);
                            }
                            None => {
                                store.remove(&k);
                            }
                        }
                    }
                }
                Action::Count(Metric::JobsReleased) => self.released += 1,
                Action::Reply { .. } | Action::Validate { .. } | Action::Count(_) => {}
                Action::Send { to, request, tag } => {
                    let Some(&j) = self.by_key.get(&to) else { continue };
                    let request = match request {
                        Outgoing::Request(r) => r,
                        Outgoing::Award { spec, award, task } => {
                            match self.vehicles[i].store.get(&(table_tag(Table::RequestInputs), task)) {
                                Some(input) => TaskRequest::Award { spec, award, input: input.clone() },
                                None => {
                                    let input = Input::Response {
                                        tag,
                                        peer: to,
                                        result: Err(SendFailure::InputMissing("no such record".into())),
                                    };
                                    let at = self.now;
                                    self.schedule(at, Event::Deliver { to: i, life: Some(life), input });
                                    continue;
                                }
                            }
                        }
                    };
                    self.send_request(i, j, Some(tag), request);
                }
                Action::Publish { topic, data, announce } => {
                    if topic == Topic::Tasks && self.announcements.len() < 4096 {
                        self.announcements.push(data.clone());
                    }
                    let ok = self.broadcast(i, topic, &data);
                    if let Some((task, round)) = announce {
                        let at = self.now;
                        self.schedule(
                            at,
                            Event::Deliver {
                                to: i,
                                life: Some(life),
                                input: Input::Published { task, round, ok },
                            },
                        );
                    }
                }
                Action::PutRecord { key, value } => {
                    if record_is_valid(&key, &value) {
                        self.dht.insert(key, value);
                    }
                }
                Action::Provide { key } => {
                    let me = self.vehicles[i].key;
                    self.providers.entry(key).or_default().insert(me);
                }
                Action::GetRecord { key, lookup } => {
                    let value = self.dht.get(&key).cloned();
                    let at = self.now + 2 * self.latency();
                    self.schedule(
                        at,
                        Event::Deliver { to: i, life: Some(life), input: Input::Record { lookup, value } },
                    );
                }
                Action::GetProviders { model } => {
                    let key = fleetmesh_protocol::ids::model_provider_key(&model);
                    let providers: Vec<PublicKey> =
                        self.providers.get(&key).map(|s| s.iter().copied().collect()).unwrap_or_default();
                    let at = self.now + 2 * self.latency();
                    let input = Input::Providers { model, providers, last: true };
                    self.schedule(at, Event::Deliver { to: i, life: Some(life), input });
                }
                // The requester's own run (requesters are honest vehicles).
                Action::Check { task, .. } => {
                    let (result, output) =
                        match self.vehicles[i].store.get(&(table_tag(Table::RequestInputs), task)) {
                            Some(input) => {
                                let output = honest_output(input);
                                (Ok(fleetmesh_crypto::OutputDigest::of(&output)), output)
                            }
                            None => (Err("input missing from the store".to_owned()), Vec::new()),
                        };
                    let (lo, hi) = self.config.exec_ms;
                    let at = self.now + self.rng.range(lo, hi);
                    let input = Input::Checked { task, result, output };
                    self.schedule(at, Event::Deliver { to: i, life: Some(life), input });
                }
                Action::Execute { task, .. } => {
                    let result = match self.vehicles[i].store.get(&(table_tag(Table::JobInputs), task)) {
                        Some(input) => {
                            let output = match self.vehicles[i].kind {
                                // One attacker: every sybil key returns the same wrong output.
                                Kind::Sybil => {
                                    let mut h = blake3::Hasher::new();
                                    h.update(b"the attacker's output");
                                    h.update(input);
                                    output_of(h.finalize().as_bytes())
                                }
                                Kind::Liar => {
                                    let mut h = blake3::Hasher::new();
                                    h.update(input);
                                    h.update(&self.vehicles[i].key.to_bytes());
                                    output_of(h.finalize().as_bytes())
                                }
                                _ => honest_output(input),
                            };
                            let (lo, hi) = self.config.exec_ms;
                            let us = self.rng.range(lo, hi) * 1000;
                            self.energy_mj += self.engine_config.owner.energy_mj(us);
                            Ok(ExecOutput {
                                output,
                                run_time_us: us,
                                runtime: fleetmesh_protocol::RuntimeProfile {
                                    engine: "sim".into(),
                                    isa: String::new(),
                                },
                            })
                        }
                        None => Err("input missing from the store".to_owned()),
                    };
                    let took = result.as_ref().map_or(0, |r| r.run_time_us / 1000);
                    let at = self.now + took;
                    self.schedule(
                        at,
                        Event::Deliver { to: i, life: Some(life), input: Input::Executed { task, result } },
                    );
                }
                Action::Trace(r) => {
                    if let Some(task) = r.task.as_ref().and_then(|t| t.parse::<TaskId>().ok()) {
                        self.participants.entry(task).or_default().insert(i);
                        if r.event == event::RECEIPT_SENT {
                            if let Some(peer) = &r.peer {
                                if let Some(&w) = self.by_peer.get(peer) {
                                    let key = self.vehicles[w].key;
                                    *self.receipts.entry((task, key)).or_default() += 1;
                                }
                            }
                        }
                        if r.event == event::VERIFIED {
                            *self.verified_events.entry(task).or_default() += 1;
                        }
                        if r.event == event::RELEASE_RECEIVED {
                            self.released_tasks.insert(task);
                            self.release_at.entry(task).or_insert(self.now);
                            released_now.push(task);
                        }
                        if r.event == event::ANNOUNCED {
                            replaced_now.insert(task);
                        }
                        if r.event == event::AWARDED {
                            replaced_now.insert(task);
                        }
                        // A worker took the task again: the release is replaced (an award
                        // refused in between, by a vehicle gone since its advert, counts on).
                        if r.event == event::AWARD_ACCEPTED {
                            if let Some(t) = self.release_at.remove(&task) {
                                self.reawards_ms.push(self.now - t);
                            }
                        }
                    }
                    let ts = self.local_now(i).saturating_mul(1_000_000);
                    if let Some(w) = self.vehicles[i].trace.as_mut() {
                        let _ = w.append(*r, ts);
                    }
                }
                Action::Submitted { result, .. } => {
                    if let (Ok(task), Some(input)) = (&result, &self.pending_input) {
                        self.inputs.insert(*task, input.clone());
                    }
                    if let Ok(task) = result {
                        if let Some(t) = self.vehicles[i].engine.as_ref().and_then(|e| e.requester.get(&task))
                        {
                            if self.accepted.insert(task, (i, t.spec.redundancy)).is_none() {
                                self.accepted_order.push(task);
                            }
                        }
                    }
                }
                Action::Finished(task) => {
                    self.finished.insert(task);
                }
                // The simulated run is a delay: it ends when it ends, and the engine drops it.
                Action::Stop { .. } => {}
                Action::SelfTest { model } => {
                    let at = self.now + self.latency();
                    self.schedule(
                        at,
                        Event::Deliver {
                            to: i,
                            life: Some(life),
                            input: Input::SelfTested { model, ok: true },
                        },
                    );
                }
            }
        }
        // A release the requester answered with no new worker, and no round taking bids for
        // one, is not waiting for a re-award (the workers still on the task can verify it).
        for task in released_now {
            let bidding = self.vehicles[i]
                .engine
                .as_ref()
                .and_then(|e| e.requester.get(&task))
                .is_some_and(|t| t.phase == Phase::Bidding);
            if !replaced_now.contains(&task) && !bidding {
                self.release_at.remove(&task);
            }
        }
    }

    fn send_request(&mut self, from: usize, to: usize, tag: Option<SendTag>, request: TaskRequest) {
        self.messages += 1;
        // Every award ever sent, by (task, worker): what the hostile acts must not claim.
        if let TaskRequest::Award { award, .. } = &request {
            if let Ok(a) = fleetmesh_protocol::Award::open(award) {
                // Awards made after the sybils joined, by quarter of the time left.
                let join = self.sybil_join_ms();
                let end = 1_000 + self.config.submit_interval_ms.saturating_mul(self.config.tasks as u64);
                let quarter = if self.now < join {
                    None
                } else {
                    let span = end.saturating_sub(join).max(4);
                    Some((((self.now - join) * 4 / span) as usize).min(3))
                };
                for w in a.winners {
                    if self.awarded.insert((a.task_id, w)) {
                        self.awards += 1;
                        self.offer_awards += usize::from(a.offer);
                        if let Some(q) = quarter {
                            let sybil =
                                self.by_key.get(&w).is_some_and(|&j| self.vehicles[j].kind == Kind::Sybil);
                            self.sybil_awards[q].0 += 1;
                            self.sybil_awards[q].1 += usize::from(sybil);
                        }
                    }
                }
            }
        }
        let life = self.vehicles[from].life;
        let lost = self.rng.chance_ppm(self.config.loss_ppm);
        if !self.reachable(from, to) || lost {
            if let Some(tag) = tag {
                let peer = self.vehicles[to].key;
                let input =
                    Input::Response { tag, peer, result: Err(SendFailure::Network("timed out".into())) };
                let at = self.now + REQUEST_TIMEOUT_MS;
                self.schedule(at, Event::Deliver { to: from, life: Some(life), input });
            }
            return;
        }
        let at = self.now + self.latency();
        self.schedule(at, Event::Request { to, from, from_life: life, tag, request });
    }

    fn broadcast(&mut self, from: usize, topic: Topic, data: &[u8]) -> bool {
        let mut any = false;
        let admits = if self.config.light && topic == Topic::Tasks { light_round(data) } else { None };
        for j in 0..self.vehicles.len() {
            if !self.reachable(from, j) {
                continue;
            }
            // A presence advert is kept only by the advertiser's direct neighbours (an engine
            // ignores one whose signer it is not connected to, and so does not relay it).
            if topic == Topic::Presence {
                if j == from || !self.linked(from, j) {
                    continue;
                }
                any = true;
                self.advert_messages += 1;
            } else {
                any = true;
                self.messages += 1;
            }
            if self.rng.chance_ppm(self.config.loss_ppm) {
                continue;
            }
            // Drawn before the lighter mode's check, so both modes draw the same numbers.
            let msg = self.id();
            let at = self.now + self.latency();
            if let Some((task, round, ppm, invited)) = &admits {
                let key = self.vehicles[j].key;
                if !fleetmesh_protocol::selection::admitted(task, *round, &key, *ppm, invited) {
                    continue;
                }
            }
            let input = Input::Gossip { msg, topic, data: data.to_vec() };
            self.schedule(at, Event::Deliver { to: j, life: None, input });
        }
        any
    }

    fn on_request(
        &mut self,
        to: usize,
        from: usize,
        from_life: u32,
        tag: Option<SendTag>,
        request: TaskRequest,
    ) {
        if self.vehicles[to].engine.is_none() {
            if let Some(tag) = tag {
                let peer = self.vehicles[to].key;
                let input = Input::Response {
                    tag,
                    peer,
                    result: Err(SendFailure::Network("connection refused".into())),
                };
                let at = self.now + self.latency();
                self.schedule(at, Event::Deliver { to: from, life: Some(from_life), input });
            }
            return;
        }
        let now = self.local_now(to);
        let reply = self.id();
        let from_key = self.vehicles[from].key;
        let Some(engine) = self.vehicles[to].engine.as_mut() else { return };
        // Whether it is an award made on standing offers (its refusal means busy or offer gone).
        let on_offer = match &request {
            TaskRequest::Award { award, .. } => {
                fleetmesh_protocol::Award::open_unverified(award).is_ok_and(|a| a.offer)
            }
            _ => false,
        };
        let actions = engine.handle(now, Input::Request { reply, from: from_key, request });
        let response = actions.iter().find_map(|a| match a {
            Action::Reply { reply: r, response } if *r == reply => Some(response.clone()),
            _ => None,
        });
        self.perform(to, actions);
        let Some(response) = response else {
            self.violations.push(format!("vehicle {to} did not answer a request"));
            return;
        };
        if matches!(tag, Some(SendTag::Award { .. })) {
            use fleetmesh_protocol::wire::Refusal;
            match &response {
                TaskResponse::Refused(Refusal::NotAWinner) if !on_offer => self.awards_not_a_winner += 1,
                TaskResponse::Refused(_) if on_offer => self.offer_awards_refused += 1,
                _ => {}
            }
        }
        match tag {
            Some(tag) => {
                self.messages += 1;
                let lost = self.rng.chance_ppm(self.config.loss_ppm) || !self.reachable(from, to);
                let peer = self.vehicles[to].key;
                let (at, result) = if lost {
                    (self.now + REQUEST_TIMEOUT_MS, Err(SendFailure::Network("timed out".into())))
                } else {
                    (self.now + self.latency(), Ok(response))
                };
                self.schedule(
                    at,
                    Event::Deliver {
                        to: from,
                        life: Some(from_life),
                        input: Input::Response { tag, peer, result },
                    },
                );
            }
            // A hostile request: the victim must refuse it.
            None => {
                let accepted =
                    matches!(response, TaskResponse::Ack | TaskResponse::Receipt(_) | TaskResponse::Pending);
                if accepted {
                    self.hostile_accepted += 1;
                    self.violations.push(format!("vehicle {to} accepted a hostile request: {response:?}"));
                }
            }
        }
    }

    fn hostile_act(&mut self, i: usize) {
        if self.vehicles[i].engine.is_none() {
            return;
        }
        let n = self.vehicles.len();
        let identity = self.vehicles[i].identity.clone();
        let victim = self.rng.range(0, n as u64 - 1) as usize;
        match self.rng.next() % 5 {
            // A result for a task this vehicle was never awarded.
            0 => {
                let tasks: Vec<(TaskId, usize)> = self.accepted.iter().map(|(t, (r, _))| (*t, *r)).collect();
                if tasks.is_empty() {
                    return;
                }
                let (task, requester) = tasks[self.rng.range(0, tasks.len() as u64 - 1) as usize];
                // The harness's own log of awards says who was never awarded, whether or not
                // the requester still holds the task in memory (a worker it receipted and
                // forgot gets its receipt again, which is no acceptance).
                if self.awarded.contains(&(task, identity.public())) || requester == i {
                    return;
                }
                let output = vec![0xee; 16];
                let header = fleetmesh_protocol::ResultHeader {
                    v: fleetmesh_protocol::WIRE_VERSION,
                    task_id: task,
                    input_digest: InputDigest::of(b"forged"),
                    model: self.model,
                    output_digest: fleetmesh_crypto::OutputDigest::of(&output),
                    output_size: output.len() as u64,
                    run_time_us: 1,
                    runtime: Default::default(),
                    energy_mj: None,
                }
                .sign(&identity);
                self.hostile_sent += 1;
                self.send_request(i, requester, None, TaskRequest::Result { task_id: task, header, output });
            }
            // An award (with a 1 KiB input) for a task the victim never bid on.
            1 => {
                if victim == i {
                    return;
                }
                let input = vec![7u8; 1024];
                let nonce = self.rng.next();
                // Half of them claim the victim's standing offer instead of a bid: with sane
                // limits (so the offer check is what must stop them) and a price below every
                // vehicle's floor (so no offer covers them).
                let claims_offer = nonce.is_multiple_of(2);
                let (max_price, exec_timeout_ms, deadline_ms) = if claims_offer {
                    (0, 5_000, self.local_now(victim) + 60_000)
                } else {
                    (u64::MAX, u32::MAX, u64::MAX)
                };
                let spec = fleetmesh_protocol::TaskSpec {
                    v: fleetmesh_protocol::WIRE_VERSION,
                    model: self.model,
                    input_digest: InputDigest::of(&input),
                    input_size: input.len() as u64,
                    redundancy: 1,
                    max_price,
                    created_ms: 0,
                    bid_window_ms: 100,
                    exec_timeout_ms,
                    deadline_ms,
                    nonce,
                    batch: None,
                    tolerance: None,
                }
                .sign(&identity);
                let award = fleetmesh_protocol::Award {
                    v: fleetmesh_protocol::WIRE_VERSION,
                    task_id: fleetmesh_protocol::task_id_of(&spec),
                    round: 0,
                    bid_root: None,
                    bid_count: 0,
                    winners: vec![self.vehicles[victim].key],
                    result_deadline_ms: u64::MAX,
                    select_ppm: None,
                    invited: vec![],
                    offer: claims_offer,
                }
                .sign(&identity);
                self.hostile_sent += 1;
                self.send_request(i, victim, None, TaskRequest::Award { spec, award, input });
            }
            // A spec-less announcement of a later round of a real task, in the hostile
            // vehicle's name: it must not stop the requester's own announcement of that round.
            2 => {
                let tasks: Vec<(TaskId, usize)> = self.accepted.iter().map(|(t, (r, _))| (*t, *r)).collect();
                if tasks.is_empty() {
                    return;
                }
                let (task, requester) = tasks[self.rng.range(0, tasks.len() as u64 - 1) as usize];
                let round = self.vehicles[requester]
                    .engine
                    .as_ref()
                    .and_then(|e| e.requester.get(&task))
                    .map_or(0, |t| t.round);
                for ahead in 1..=3 {
                    let a = fleetmesh_protocol::Announcement {
                        v: fleetmesh_protocol::WIRE_VERSION,
                        task_id: task,
                        model: self.model,
                        round: round + ahead,
                        bid_deadline_ms: u64::MAX,
                        max_price: u64::MAX,
                        spec: None,
                        select_ppm: None,
                        invited: Vec::new(),
                    }
                    .sign(&identity);
                    self.hostile_sent += 1;
                    self.broadcast(i, Topic::Tasks, &fleetmesh_protocol::encode(&a));
                }
            }
            // A bid that can never win (price above any maximum) for a task taking bids:
            // refused, so it cannot close the round early.
            3 => {
                let open: Vec<(TaskId, usize, u32)> = self
                    .accepted
                    .iter()
                    .filter_map(|(t, (r, _))| {
                        let task = self.vehicles[*r].engine.as_ref()?.requester.get(t)?;
                        (task.phase == Phase::Bidding).then_some((*t, *r, task.round))
                    })
                    .collect();
                if open.is_empty() {
                    return;
                }
                let (task, requester, round) = open[self.rng.range(0, open.len() as u64 - 1) as usize];
                if requester == i {
                    return;
                }
                let bid = fleetmesh_protocol::Bid {
                    v: fleetmesh_protocol::WIRE_VERSION,
                    task_id: task,
                    round,
                    price: u64::MAX,
                    promised_ms: 0,
                    queue_depth: 0,
                    free_slots: 99,
                    depart_ms: None,
                }
                .sign(&identity);
                self.hostile_sent += 1;
                self.send_request(i, requester, None, TaskRequest::Bid { bid });
            }
            // An old announcement, published again.
            _ => {
                if self.announcements.is_empty() {
                    return;
                }
                let k = self.rng.range(0, self.announcements.len() as u64 - 1) as usize;
                let data = self.announcements[k].clone();
                self.hostile_sent += 1;
                self.broadcast(i, Topic::Tasks, &data);
            }
        }
    }

    fn submit(&mut self, i: usize) {
        if self.submitted >= self.config.tasks {
            return;
        }
        // A requester that is down now: another requester submits it, or it waits a second.
        let i = if self.vehicles[i].engine.is_some() {
            i
        } else if let Some(&r) = self.requesters.iter().find(|&&r| self.vehicles[r].engine.is_some()) {
            r
        } else {
            let at = self.now + 1_000;
            self.schedule(at, Event::Submit(i));
            return;
        };
        self.submitted += 1;
        let n = self.submitted as u64;
        let mut input = vec![0u8; 64];
        input[..8].copy_from_slice(&n.to_le_bytes());
        input[8..16].copy_from_slice(&self.rng.next().to_le_bytes());
        self.pending_input = Some(input.clone());
        let request = SubmitRequest { input, ..SubmitRequest::default() };
        let nonce = self.rng.next();
        let call = self.id();
        self.input(i, Input::Submit { call, request, nonce });
        self.pending_input = None;
    }

    fn crash(&mut self, i: usize) {
        self.faults_pending = self.faults_pending.saturating_sub(1);
        // Already down: the next vehicle that is up crashes instead, so every crash asked for
        // happens.
        let n = self.vehicles.len();
        let Some(i) = (0..n).map(|d| (i + d) % n).find(|&j| self.vehicles[j].engine.is_some()) else {
            return;
        };
        if self.vehicles[i].engine.take().is_none() {
            return;
        }
        self.crashes += 1;
        let key = self.vehicles[i].key;
        for j in 0..self.vehicles.len() {
            if j != i && self.vehicles[j].group == self.vehicles[i].group && self.linked(i, j) {
                self.input(j, Input::Disconnected(key));
            }
        }
        let at = self.now + self.rng.range(2_000, 15_000);
        self.schedule(at, Event::Restart(i));
    }

    fn set_partition(&mut self, on: bool) {
        if on && self.partitioned {
            // One partition at a time: this one starts after the current one ends.
            let at = self.now + 21_000;
            self.schedule(at, Event::PartitionStart);
            return;
        }
        if on {
            self.faults_pending = self.faults_pending.saturating_sub(1);
        }
        if on == self.partitioned {
            return;
        }
        let n = self.vehicles.len();
        let before: Vec<u8> = self.vehicles.iter().map(|v| v.group).collect();
        for i in 0..n {
            self.vehicles[i].group = if on { (self.rng.next() % 2) as u8 } else { 0 };
        }
        self.partitioned = on;
        if on {
            self.partitions += 1;
            let at = self.now + self.rng.range(3_000, 20_000);
            self.schedule(at, Event::PartitionEnd);
        }
        for a in 0..n {
            for b in 0..n {
                if a == b
                    || self.vehicles[a].engine.is_none()
                    || self.vehicles[b].engine.is_none()
                    || !self.linked(a, b)
                {
                    continue;
                }
                let was = before[a] == before[b];
                let is = self.vehicles[a].group == self.vehicles[b].group;
                if was && !is {
                    self.input(a, Input::Disconnected(self.vehicles[b].key));
                } else if !was && is {
                    self.input(a, Input::Connected(self.vehicles[b].key));
                }
            }
        }
    }

    fn all_done(&self) -> bool {
        self.submitted >= self.config.tasks
            && self.faults_pending == 0
            && self.accepted.keys().all(|task| self.finished.contains(task))
    }

    /// Runs until every accepted task is finished (or the time limit), then checks the
    /// properties.
    pub fn run(mut self) -> SimReport {
        let started = std::time::Instant::now();
        let mut steps: u64 = 0;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > self.config.time_limit_ms {
                break;
            }
            self.now = at;
            match event {
                Event::Tick(i) => {
                    self.input(i, Input::Tick);
                    let at = self.now + TICK_MS;
                    self.schedule(at, Event::Tick(i));
                    steps += 1;
                    if steps.is_multiple_of(50_000) {
                        self.check_bounds();
                    }
                    if i == 0 && self.all_done() {
                        break;
                    }
                }
                Event::Submit(i) => self.submit(i),
                Event::Deliver { to, life, input } => {
                    if life.is_none_or(|l| l == self.vehicles[to].life) {
                        self.input(to, input);
                    }
                }
                Event::Request { to, from, from_life, tag, request } => {
                    self.on_request(to, from, from_life, tag, request)
                }
                Event::Crash(i) => self.crash(i),
                Event::Restart(i) => {
                    if self.vehicles[i].engine.is_none() {
                        self.start(i);
                    }
                }
                Event::Vehicle(i, change) => {
                    let skew = self.vehicles[i].skew;
                    let local = |t: u64| (EPOCH_MS as i64 + t as i64 + skew).max(0) as u64;
                    let state = crate::vehicle::VehicleState {
                        parked: change.parked,
                        charging: change.charging,
                        soc_pct: Some(change.soc_pct),
                        thermal_headroom_c: None,
                        departure_ms: change.departs_at.map(local),
                    };
                    self.vehicles[i].state = Some(state.clone());
                    self.input(i, Input::Vehicle(Ok(state)));
                }
                Event::PartitionStart => self.set_partition(true),
                Event::PartitionEnd => self.set_partition(false),
                Event::Hostile(i) => {
                    self.hostile_act(i);
                    let at = self.now + self.rng.range(200, 1_000);
                    if self.submitted < self.config.tasks || !self.all_done() {
                        self.schedule(at, Event::Hostile(i));
                    }
                }
            }
        }
        self.finish(started.elapsed().as_secs_f64())
    }

    fn check_bounds(&mut self) {
        for (i, v) in self.vehicles.iter().enumerate() {
            if let Some(e) = &v.engine {
                if let Err(why) = e.check_bounds() {
                    let msg = format!("vehicle {i}: {why}");
                    if !self.violations.contains(&msg) {
                        self.violations.push(msg);
                    }
                }
            }
        }
    }

    fn finish(mut self, wall_s: f64) -> SimReport {
        self.check_bounds();
        let mut r = SimReport {
            vehicles: self.vehicles.len(),
            tasks: self.accepted.len(),
            seed: self.config.seed,
            light: self.config.light,
            links: self.config.links,
            awards_not_a_winner: self.awards_not_a_winner,
            offer_awards_refused: self.offer_awards_refused,
            crashes: self.crashes,
            partitions: self.partitions,
            hostile_sent: self.hostile_sent,
            hostile_accepted: self.hostile_accepted,
            virtual_s: self.now as f64 / 1000.0,
            wall_s,
            ..SimReport::default()
        };
        let quorum_of = fleetmesh_protocol::verify::quorum;
        let accepted = std::mem::take(&mut self.accepted);
        for (task, (req, k)) in &accepted {
            let v = &self.vehicles[*req];
            let t = v.engine.as_ref().and_then(|e| e.requester.get(task).cloned()).or_else(|| {
                v.store
                    .get(&(0, *task))
                    .and_then(|b| fleetmesh_protocol::decode::<ReqTask>(b, usize::MAX).ok())
            });
            let Some(t) = t else {
                r.lost += 1;
                self.violations.push(format!("task {task} accepted by vehicle {req} is gone"));
                continue;
            };
            match t.phase {
                Phase::Verified => {
                    r.verified += 1;
                    let Some((digest, workers)) = &t.verified else {
                        self.violations.push(format!("task {task} verified without a digest"));
                        continue;
                    };
                    if workers.len() < quorum_of(*k) {
                        self.violations.push(format!(
                            "task {task} verified by {} workers, quorum {}",
                            workers.len(),
                            quorum_of(*k)
                        ));
                    }
                    for w in workers {
                        if !t.assignments.iter().any(|a| a.worker == *w) {
                            self.violations.push(format!("task {task} verified by a worker never awarded"));
                        }
                    }
                    // The honest output of the requester's own input (the sim keeps the inputs
                    // it made: a requester deletes a task's input once it is finished).
                    let honest = self
                        .inputs
                        .get(task)
                        .map(|input| fleetmesh_crypto::OutputDigest::of(&honest_output(input)));
                    let sybils_output = self.inputs.get(task).map(|input| {
                        let mut h = blake3::Hasher::new();
                        h.update(b"the attacker's output");
                        h.update(input);
                        fleetmesh_crypto::OutputDigest::of(&output_of(h.finalize().as_bytes()))
                    });
                    if self.config.sybils > 0 && sybils_output.as_ref() == Some(digest) {
                        r.wrong_accepted += 1;
                        self.violations.push(format!("task {task} accepted the sybils' wrong output"));
                    }
                    if t.spot_check {
                        r.spot_checks += 1;
                    }
                    if honest.as_ref() != Some(digest) {
                        r.wrong_verified += 1;
                        if *k >= 2 {
                            self.violations.push(format!("task {task} (k = {k}) verified a wrong output"));
                        }
                    }
                }
                Phase::Failed => {
                    r.failed += 1;
                    let reason = t.failure.clone().unwrap_or_default();
                    let truthful = if reason.starts_with("deadline passed") {
                        t.times.finished_ms >= t.spec.deadline_ms
                    } else if reason.starts_with("no valid bids in ") {
                        reason
                            .trim_start_matches("no valid bids in ")
                            .split(' ')
                            .next()
                            .and_then(|n| n.parse::<u32>().ok())
                            == Some(self.engine_config.tasks.max_rounds)
                    } else if reason.starts_with("no trusted worker reachable in ") {
                        reason
                            .trim_start_matches("no trusted worker reachable in ")
                            .split(' ')
                            .next()
                            .and_then(|n| n.parse::<u32>().ok())
                            == Some(self.engine_config.tasks.max_rounds)
                    } else if reason.starts_with("gave up after ") {
                        t.counted() >= usize::from(*k) + crate::requester::MAX_EXTRA_WORKERS
                    } else {
                        reason.starts_with("the task input is missing")
                    };
                    if !truthful {
                        self.violations.push(format!("task {task} failed with an untrue reason: {reason}"));
                    }
                    let key = numbers_as_n(&reason);
                    *r.failures.entry(key).or_default() += 1;
                }
                Phase::Bidding | Phase::Running => {
                    r.lost += 1;
                    self.violations.push(format!("task {task} still {:?} at the end", t.phase));
                }
            }
        }
        for (task, n) in &self.verified_events {
            if *n > 1 {
                r.duplicates_accepted += 1;
                self.violations.push(format!("task {task} verified {n} times"));
            }
        }
        for ((task, worker), n) in &self.receipts {
            if *n > 1 {
                r.duplicates_accepted += 1;
                self.violations
                    .push(format!("task {task}: worker {} receipted {n} times", worker.fmt_short()));
            }
        }
        if r.tasks > 0 {
            r.messages_per_task = self.messages as f64 / r.tasks as f64;
            r.advert_messages_per_task = self.advert_messages as f64 / r.tasks as f64;
            let parts: usize =
                accepted.keys().map(|t| self.participants.get(t).map_or(0, BTreeSet::len)).sum();
            r.participants_per_task = parts as f64 / r.tasks as f64;
            let later = &self.accepted_order[self.accepted_order.len() / 2..];
            let parts: usize = later.iter().map(|t| self.participants.get(t).map_or(0, BTreeSet::len)).sum();
            r.participants_per_task_later = parts as f64 / later.len().max(1) as f64;
        }
        if self.submitted < self.config.tasks {
            self.violations.push(format!(
                "only {} of {} tasks were submitted before the time limit",
                self.submitted, self.config.tasks
            ));
        }
        let end = EPOCH_MS.saturating_add(self.now).saturating_mul(1_000_000);
        for v in &mut self.vehicles {
            if let Some(w) = v.trace.as_mut() {
                let _ = w.head(&v.identity, 0, 0, true, end);
                let _ = w.flush();
            }
        }
        r.sybils = self.config.sybils;
        r.awards_per_task = self.awards as f64 / accepted.len().max(1) as f64;
        r.offer_award_share = self.offer_awards as f64 / self.awards.max(1) as f64;
        if self.config.sybils > 0 {
            let share = |(all, sybil): (usize, usize)| if all == 0 { 0.0 } else { sybil as f64 / all as f64 };
            r.sybil_share_by_quarter = self.sybil_awards.iter().map(|q| share(*q)).collect();
            let total = self.sybil_awards.iter().fold((0, 0), |(a, s), q| (a + q.0, s + q.1));
            r.sybil_task_share = share(total);
        }
        r.day = self.config.day;
        r.released = self.released;
        r.released_task_share = self.released_tasks.len() as f64 / accepted.len().max(1) as f64;
        r.reawards = self.reawards_ms.len();
        if !self.reawards_ms.is_empty() {
            self.reawards_ms.sort_unstable();
            let at = |p: usize| {
                let i = (self.reawards_ms.len() * p).div_ceil(100).saturating_sub(1);
                self.reawards_ms[i.min(self.reawards_ms.len() - 1)] as f64
            };
            r.reaward_p50_ms = at(50);
            r.reaward_p99_ms = at(99);
        }
        // A release whose task was never awarded again (it failed, or was verified by the
        // workers still on it) is not a re-award.
        r.energy_mj_per_verified_task = self.energy_mj as f64 / r.verified.max(1) as f64;
        r.violations = self.violations;
        r
    }
}

/// Runs one simulation.
pub fn run(config: SimConfig) -> Result<SimReport, String> {
    Ok(Sim::new(config)?.run())
}

impl SimReport {
    /// A short human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "fleetmesh sim: seed {}, {} vehicles, {} tasks\n  verified {}  failed {}  lost {}  duplicates accepted {}  wrong verified {}\n  messages/task {:.1}  participants/task {:.1} ({:.1} in the second half)  crashes {}  partitions {}  hostile requests {} (accepted {})\n  virtual {:.1} s  wall {:.2} s\n",
            self.seed, self.vehicles, self.tasks, self.verified, self.failed, self.lost, self.duplicates_accepted,
            self.wrong_verified, self.messages_per_task, self.participants_per_task, self.participants_per_task_later, self.crashes, self.partitions,
            self.hostile_sent, self.hostile_accepted, self.virtual_s, self.wall_s
        );
        s.push_str(&format!(
            "  awards/task {:.2}  spot checks {}  awards on standing offers {:.1} %  advert messages/task {:.1}\n",
            self.awards_per_task,
            self.spot_checks,
            self.offer_award_share * 100.0,
            self.advert_messages_per_task
        ));
        if self.light {
            s.push_str("  lighter mode: vehicles a round does not admit count its announcement but do not process it\n");
        }
        if self.day {
            s.push_str(&format!(
                "  a day of the fleet: jobs handed back {}  tasks released {:.1} %  re-awarded {} (p50 {:.0} ms, p99 {:.0} ms to another worker's acceptance)  energy per verified task {:.0} mJ\n",
                self.released,
                self.released_task_share * 100.0,
                self.reawards,
                self.reaward_p50_ms,
                self.reaward_p99_ms,
                self.energy_mj_per_verified_task
            ));
        }
        if self.sybils > 0 {
            let q: Vec<String> =
                self.sybil_share_by_quarter.iter().map(|x| format!("{:.1} %", x * 100.0)).collect();
            s.push_str(&format!(
                "  sybils {}  wrong accepted {}  sybil share of awards {:.1} % (by quarter: {})\n",
                self.sybils,
                self.wrong_accepted,
                self.sybil_task_share * 100.0,
                q.join(", ")
            ));
        }
        for (reason, n) in &self.failures {
            s.push_str(&format!("  failed x{n}: {reason}\n"));
        }
        for v in &self.violations {
            s.push_str(&format!("  VIOLATION: {v}\n"));
        }
        s
    }
}

/// A failure reason with each count written `<n>`, so reasons that differ only in their
/// counts are reported together (hex ids are left alone).
fn numbers_as_n(reason: &str) -> String {
    reason
        .split(' ')
        .map(|w| if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) { "<n>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the lighter mode needs of an announcement to tell which vehicles its round admits:
/// `None` (deliver to all) when it does not decode or admits every holder.
fn light_round(data: &[u8]) -> Option<(TaskId, u32, u32, Vec<PublicKey>)> {
    let env: fleetmesh_crypto::SignedEnvelope =
        fleetmesh_protocol::decode(data, fleetmesh_protocol::limits::MAX_GOSSIP_BYTES).ok()?;
    let a: fleetmesh_protocol::Announcement =
        fleetmesh_protocol::decode(&env.payload, fleetmesh_protocol::limits::MAX_GOSSIP_BYTES).ok()?;
    Some((a.task_id, a.round, a.select_ppm?, a.invited))
}
