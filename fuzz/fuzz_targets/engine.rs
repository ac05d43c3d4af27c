//! The engine driven by structured arbitrary inputs: a sequence of operations by four peers
//! (signed with their real keys, so messages get past the signature checks and reach the
//! lifecycle), the local user, the executor, the store and the clock. After every step the
//! engine must hold its bounds, answer every request exactly once, and never panic; a crash
//! restores it from what it persisted.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use fleetmesh_crypto::{Identity, InputDigest, ModelId, OutputDigest, PublicKey, SignedEnvelope, TaskId};
use fleetmesh_engine::{
    Action, Engine, EngineConfig, ExecOutput, Input, Job, Lookup, Outgoing, ReqTask, SendFailure, SendTag,
    SubmitRequest, Table, Topic,
};
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{
    Announcement, Award, Bid, Presence, Receipt, RejectReason, ResultHeader, Signed, TaskSpec, WIRE_VERSION,
};
use libfuzzer_sys::fuzz_target;

const T0: u64 = 1_800_000_000_000;

#[derive(Arbitrary, Debug)]
enum Answer {
    Ack,
    Pending,
    Rejected,
    Refused,
    Receipt,
    Lost,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Advance(u16),
    Submit {
        input: Vec<u8>,
        k: u8,
        window: u16,
        exec: u16,
        deadline: u32,
    },
    Connect(u8),
    Disconnect(u8),
    Announce {
        peer: u8,
        round: u8,
        with_spec: bool,
        input_len: u8,
        exec: u16,
        deadline: u32,
        price: u8,
        select: Option<u32>,
    },
    Award {
        peer: u8,
        task: u8,
        round: u8,
        good_input: bool,
        deadline: u64,
    },
    Bid {
        peer: u8,
        task: u8,
        round_ahead: u8,
        price: u8,
        promised: u16,
        depart_in_s: Option<u16>,
    },
    /// The vehicle's state changes (issue 11): any state, valid or not, or a failed source.
    Vehicle {
        ok: bool,
        parked: bool,
        charging: bool,
        soc: Option<i16>,
        headroom: Option<i8>,
        depart_in_s: Option<u16>,
    },
    /// A peer hands one of our tasks back with a signed release.
    Release {
        peer: u8,
        task: u8,
    },
    Result {
        peer: u8,
        task: u8,
        output: Vec<u8>,
        honest_digest: bool,
        signer: u8,
    },
    Answer {
        which: u8,
        answer: Answer,
    },
    Executed {
        which: u8,
        ok: bool,
        output: Vec<u8>,
    },
    Checked {
        which: u8,
        ok: bool,
        output: Vec<u8>,
    },
    Published {
        which: u8,
        ok: bool,
    },
    Record {
        which: u8,
        found: bool,
    },
    Receipt {
        peer: u8,
        task: u8,
    },
    Presence {
        peer: u8,
        ahead: i16,
    },
    RawGossip {
        tasks: bool,
        data: Vec<u8>,
    },
    RawRequest {
        peer: u8,
        data: Vec<u8>,
    },
    Crash,
}

struct Harness {
    me: Arc<Identity>,
    peers: Vec<Identity>,
    engine: Engine,
    now: u64,
    store: BTreeMap<(u8, TaskId), Vec<u8>>,
    sends: Vec<(PublicKey, Outgoing, SendTag)>,
    executes: Vec<TaskId>,
    checks: Vec<TaskId>,
    publishes: Vec<(TaskId, u32)>,
    lookups: Vec<Lookup>,
    /// Tasks the peers announced: (peer, signed spec, input).
    theirs: Vec<(usize, SignedEnvelope, Vec<u8>)>,
    dht: BTreeMap<Vec<u8>, Vec<u8>>,
    next_id: u64,
}

fn model() -> ModelId {
    ModelId::of(b"fuzz-model")
}

fn config() -> EngineConfig {
    EngineConfig { default_model: Some(model()), presence_interval_ms: 1_000, ..EngineConfig::default() }
}

fn tag(t: Table) -> u8 {
    match t {
        Table::Requests => 0,
        Table::RequestInputs => 1,
        Table::Jobs => 2,
        Table::JobInputs => 3,
        Table::Reputation => 4,
        Table::Ledger => 5,
    }
}

impl Harness {
    fn new() -> Self {
        let me = Arc::new(Identity::from_secret_bytes(&[100; 32]));
        let peers = (1..=4u8).map(|i| Identity::from_secret_bytes(&[i; 32])).collect();
        let engine = Engine::new(me.clone(), config(), BTreeSet::from([model()]), T0);
        Self {
            me,
            peers,
            engine,
            now: T0,
            store: BTreeMap::new(),
            sends: Vec::new(),
            executes: Vec::new(),
            checks: Vec::new(),
            publishes: Vec::new(),
            lookups: Vec::new(),
            theirs: Vec::new(),
            dht: BTreeMap::new(),
            next_id: 0,
        }
    }

    fn peer(&self, i: u8) -> &Identity {
        &self.peers[usize::from(i) % self.peers.len()]
    }

    fn my_task(&self, i: u8) -> Option<(TaskId, ReqTask)> {
        let tasks: Vec<(TaskId, ReqTask)> =
            self.engine.requester.tasks().map(|(id, t)| (*id, t.clone())).collect();
        if tasks.is_empty() {
            return None;
        }
        Some(tasks[usize::from(i) % tasks.len()].clone())
    }

    fn feed(&mut self, input: Input) {
        let reply = match &input {
            Input::Request { reply, .. } => Some(*reply),
            _ => None,
        };
        let actions = self.engine.handle(self.now, input);
        let mut replies = 0;
        for a in actions {
            match a {
                Action::Persist(ops) => {
                    for op in ops {
                        let k = (tag(op.table), op.key);
                        match op.value {
                            Some(v) => {
                                self.store.insert(k, v);
                            }
                            None => {
                                self.store.remove(&k);
                            }
                        }
                    }
                }
                Action::Reply { reply: r, .. } => {
                    assert_eq!(Some(r), reply, "a reply to a request that was not asked");
                    replies += 1;
                }
                Action::Send { to, request, tag } => self.sends.push((to, request, tag)),
                Action::Execute { task, .. } => self.executes.push(task),
                Action::Check { task, .. } => self.checks.push(task),
                Action::Publish { announce: Some(a), .. } => self.publishes.push(a),
                Action::GetRecord { lookup, .. } => self.lookups.push(lookup),
                Action::PutRecord { key, value } => {
                    if fleetmesh_protocol::records::record_is_valid(&key, &value) {
                        self.dht.insert(key, value);
                    }
                }
                _ => {}
            }
        }
        if reply.is_some() {
            assert_eq!(replies, 1, "every request gets exactly one answer");
        }
        if let Err(e) = self.engine.check_bounds() {
            panic!("bounds: {e}");
        }
        // Keep the harness's own queues small.
        for q in [
            self.sends.len(),
            self.executes.len(),
            self.checks.len(),
            self.publishes.len(),
            self.lookups.len(),
        ] {
            assert!(q < 100_000);
        }
    }

    fn request(&mut self, peer: u8, request: TaskRequest) {
        self.next_id += 1;
        let from = self.peer(peer).public();
        self.feed(Input::Request { reply: self.next_id, from, request });
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Advance(ms) => {
                self.now = self.now.saturating_add(u64::from(ms) * 10);
                self.feed(Input::Tick);
            }
            Op::Submit { input, k, window, exec, deadline } => {
                let request = SubmitRequest {
                    input,
                    redundancy: Some(k % 9),
                    bid_window_ms: Some(u32::from(window)),
                    exec_timeout_ms: Some(u32::from(exec)),
                    deadline_ms: Some(u64::from(deadline)),
                    // Now and then a batch, of 0 to 7 (0, and counts that do not divide the
                    // input, must be refused with a reason).
                    batch: (k & 0x80 != 0).then_some(u16::from((k >> 4) & 7)),
                    tolerance: (k & 0x40 != 0).then_some(u32::from(window)),
                    ..SubmitRequest::default()
                };
                self.next_id += 1;
                self.feed(Input::Submit { call: self.next_id, request, nonce: self.next_id });
            }
            Op::Connect(p) => {
                let pk = self.peer(p).public();
                self.feed(Input::Connected(pk));
            }
            Op::Disconnect(p) => {
                let pk = self.peer(p).public();
                self.feed(Input::Disconnected(pk));
            }
            Op::Announce { peer, round, with_spec, input_len, exec, deadline, price, select } => {
                let input = vec![input_len; usize::from(input_len) + 1];
                let id = &self.peers[usize::from(peer) % 4];
                // A batch of two when the input splits evenly.
                let batch = (input_len % 4 == 1).then_some(2u16);
                let spec = TaskSpec {
                    v: WIRE_VERSION,
                    model: model(),
                    input_digest: fleetmesh_protocol::batch::input_digest(batch, &input)
                        .unwrap_or_else(|_| InputDigest::of(&input)),
                    input_size: input.len() as u64,
                    redundancy: 1,
                    max_price: u64::from(price),
                    created_ms: self.now,
                    bid_window_ms: 100,
                    exec_timeout_ms: u32::from(exec),
                    deadline_ms: self.now.saturating_add(u64::from(deadline)),
                    nonce: self.next_id,
                    batch,
                    tolerance: None,
                }
                .sign(id);
                let task = fleetmesh_protocol::task_id_of(&spec);
                let a = Announcement {
                    v: WIRE_VERSION,
                    task_id: task,
                    model: model(),
                    round: u32::from(round),
                    bid_deadline_ms: self.now.saturating_add(1_000),
                    max_price: u64::from(price),
                    spec: with_spec.then(|| spec.clone()),
                    select_ppm: select,
                    invited: Vec::new(),
                }
                .sign(id);
                self.dht.insert(
                    fleetmesh_protocol::ids::task_record_key(&task),
                    fleetmesh_protocol::encode(&spec),
                );
                if self.theirs.len() < 64 {
                    self.theirs.push((usize::from(peer) % 4, spec, input));
                }
                self.next_id += 1;
                let data = fleetmesh_protocol::encode(&a);
                self.feed(Input::Gossip { msg: self.next_id, topic: Topic::Tasks, data });
            }
            Op::Award { peer, task, round, good_input, deadline } => {
                if self.theirs.is_empty() {
                    return;
                }
                let (owner, spec, input) = self.theirs[usize::from(task) % self.theirs.len()].clone();
                let signer = if peer % 5 == 0 { &self.peers[(owner + 1) % 4] } else { &self.peers[owner] };
                let award = Award {
                    v: WIRE_VERSION,
                    task_id: fleetmesh_protocol::task_id_of(&spec),
                    round: u32::from(round),
                    bid_root: None,
                    bid_count: 1,
                    winners: vec![self.me.public()],
                    result_deadline_ms: deadline,
                    select_ppm: None,
                    invited: vec![],
                    // Some awards claim the worker's standing offer instead of a bid.
                    offer: peer % 3 == 0,
                }
                .sign(signer);
                let input = if good_input { input } else { vec![0xee; 3] };
                self.request(owner as u8, TaskRequest::Award { spec, award, input });
            }
            Op::Bid { peer, task, round_ahead, price, promised, depart_in_s } => {
                let Some((id, t)) = self.my_task(task) else { return };
                let bid = Bid {
                    v: WIRE_VERSION,
                    task_id: id,
                    round: t.round.saturating_add(u32::from(round_ahead % 3)),
                    price: u64::from(price),
                    promised_ms: u32::from(promised),
                    queue_depth: 0,
                    free_slots: 1,
                    depart_ms: depart_in_s.map(|s| self.now.saturating_add(u64::from(s) * 1000)),
                }
                .sign(self.peer(peer));
                self.request(peer, TaskRequest::Bid { bid });
            }
            Op::Vehicle { ok, parked, charging, soc, headroom, depart_in_s } => {
                let state = fleetmesh_engine::vehicle::VehicleState {
                    parked,
                    charging,
                    soc_pct: soc.map(f32::from),
                    thermal_headroom_c: headroom.map(f32::from),
                    departure_ms: depart_in_s.map(|s| self.now.saturating_add(u64::from(s) * 1000)),
                };
                self.feed(Input::Vehicle(if ok { Ok(state) } else { Err("source failed".into()) }));
            }
            Op::Release { peer, task } => {
                let Some((id, _)) = self.my_task(task) else { return };
                let report = fleetmesh_protocol::Unable {
                    v: WIRE_VERSION,
                    task_id: id,
                    round: 0,
                    reason: fleetmesh_protocol::UnableReason::Released { reason: "driving".into() },
                }
                .sign(self.peer(peer));
                self.request(peer, TaskRequest::Unable { report });
            }
            Op::Result { peer, task, output, honest_digest, signer } => {
                let Some((id, t)) = self.my_task(task) else { return };
                let digest = if honest_digest {
                    OutputDigest::of(&output)
                } else {
                    OutputDigest::of(b"something else")
                };
                let header = ResultHeader {
                    v: WIRE_VERSION,
                    task_id: id,
                    input_digest: t.spec.input_digest,
                    model: t.spec.model,
                    output_digest: digest,
                    output_size: output.len() as u64,
                    run_time_us: 1,
                    runtime: Default::default(),
                    energy_mj: None,
                }
                .sign(self.peer(signer));
                self.request(peer, TaskRequest::Result { task_id: id, header, output });
            }
            Op::Answer { which, answer } => {
                if self.sends.is_empty() {
                    return;
                }
                let (to, request, tag) = self.sends.remove(usize::from(which) % self.sends.len());
                let Some(&peer_idx) =
                    self.peers.iter().position(|p| p.public() == to).map(|i| i as u8).as_ref()
                else {
                    return;
                };
                let result = match answer {
                    Answer::Ack => Ok(TaskResponse::Ack),
                    Answer::Pending => Ok(TaskResponse::Pending),
                    Answer::Rejected => Ok(TaskResponse::Rejected(RejectReason::Disagreement)),
                    Answer::Refused => Ok(TaskResponse::Refused(Refusal::NoCapacity)),
                    Answer::Lost => Err(SendFailure::Network("lost".into())),
                    Answer::Receipt => {
                        let task = match &request {
                            Outgoing::Request(TaskRequest::Result { task_id, .. }) => *task_id,
                            _ => TaskId::of(b"x"),
                        };
                        let r = Receipt {
                            v: WIRE_VERSION,
                            task_id: task,
                            worker: self.me.public(),
                            output_digest: OutputDigest::of(b"o"),
                            price: 1,
                            accepted_ms: self.now,
                            energy_mj: None,
                        }
                        .sign(self.peer(peer_idx));
                        Ok(TaskResponse::Receipt(r))
                    }
                };
                self.feed(Input::Response { tag, peer: to, result });
            }
            Op::Executed { which, ok, output } => {
                if self.executes.is_empty() {
                    return;
                }
                let task = self.executes.remove(usize::from(which) % self.executes.len());
                // Sometimes a well-formed list of two (a batch of two's output).
                let output = if output.first() == Some(&0) {
                    fleetmesh_protocol::batch::encode_outputs(&[output.clone(), output])
                } else {
                    output
                };
                let result = if ok {
                    Ok(ExecOutput { output, run_time_us: 1, runtime: Default::default() })
                } else {
                    Err("inference failed".into())
                };
                self.feed(Input::Executed { task, result });
            }
            Op::Checked { which, ok, output } => {
                if self.checks.is_empty() {
                    return;
                }
                let task = self.checks.remove(usize::from(which) % self.checks.len());
                let result = if ok {
                    Ok(fleetmesh_crypto::OutputDigest::of(&output))
                } else {
                    Err("did not run".into())
                };
                self.feed(Input::Checked { task, result, output });
            }
            Op::Published { which, ok } => {
                if self.publishes.is_empty() {
                    return;
                }
                let (task, round) = self.publishes.remove(usize::from(which) % self.publishes.len());
                self.feed(Input::Published { task, round, ok });
            }
            Op::Record { which, found } => {
                if self.lookups.is_empty() {
                    return;
                }
                let lookup = self.lookups.remove(usize::from(which) % self.lookups.len());
                let value = match (found, lookup) {
                    (true, Lookup::Spec { task, .. }) => {
                        self.dht.get(&fleetmesh_protocol::ids::task_record_key(&task)).cloned()
                    }
                    _ => None,
                };
                self.feed(Input::Record { lookup, value });
            }
            Op::Receipt { peer, task } => {
                if self.theirs.is_empty() {
                    return;
                }
                let (_, spec, _) = &self.theirs[usize::from(task) % self.theirs.len()];
                let r = Receipt {
                    v: WIRE_VERSION,
                    task_id: fleetmesh_protocol::task_id_of(spec),
                    worker: self.me.public(),
                    output_digest: OutputDigest::of(b"o"),
                    price: 1,
                    accepted_ms: self.now,
                    energy_mj: None,
                }
                .sign(self.peer(peer));
                self.request(peer, TaskRequest::Receipt { receipt: r });
            }
            Op::Presence { peer, ahead } => {
                let id = &self.peers[usize::from(peer) % 4];
                let at = self.now.saturating_add_signed(i64::from(ahead) * 1000);
                // Odd ones are standing offers (the requester may award on them).
                let offer_until_ms = (ahead % 2 != 0).then(|| at.saturating_add(30_000));
                let p = Presence {
                    v: WIRE_VERSION,
                    models: vec![model()],
                    free_slots: 1,
                    depart_ms: None,
                    price_floor: 0,
                    at_ms: at,
                    offer_until_ms,
                    // Offers that take batches of two now and then.
                    max_batch: if ahead % 4 == 1 { 2 } else { 0 },
                    // Peers 0 and 1 share an operator (peer 3's key) now and then; one cert
                    // names another vehicle.
                    operator_cert: (ahead % 3 == 0).then(|| {
                        fleetmesh_protocol::OperatorCert {
                            v: WIRE_VERSION,
                            vehicle: if ahead % 9 == 0 { self.peers[2].public() } else { id.public() },
                            issued_ms: 0,
                            not_after_ms: self.now.saturating_add(60_000),
                        }
                        .sign(&self.peers[3])
                    }),
                }
                .sign(id);
                self.next_id += 1;
                let msg = self.next_id;
                self.feed(Input::Gossip {
                    msg,
                    topic: Topic::Presence,
                    data: fleetmesh_protocol::encode(&p),
                });
            }
            Op::RawGossip { tasks, data } => {
                let topic = if tasks { Topic::Tasks } else { Topic::Presence };
                self.next_id += 1;
                self.feed(Input::Gossip { msg: self.next_id, topic, data });
            }
            Op::RawRequest { peer, data } => {
                if let Ok(req) = TaskRequest::from_bytes(&data) {
                    self.request(peer, req);
                }
            }
            Op::Crash => {
                // Everything in memory is gone; the store is what remains.
                let mut reqs = Vec::new();
                let mut jobs = Vec::new();
                let mut ledger = Vec::new();
                for ((t, key), bytes) in &self.store {
                    match t {
                        0 => reqs.extend(
                            fleetmesh_protocol::decode::<ReqTask>(bytes, usize::MAX).ok().map(|v| (*key, v)),
                        ),
                        2 => jobs.extend(
                            fleetmesh_protocol::decode::<Job>(bytes, usize::MAX).ok().map(|v| (*key, v)),
                        ),
                        4 => ledger
                            .extend(fleetmesh_protocol::decode(bytes, usize::MAX).ok().map(|v| (*key, v))),
                        _ => {}
                    }
                }
                // Every task held before the crash is in the store; the unfinished ones come back.
                for (id, _) in self.engine.requester.tasks() {
                    assert!(self.store.contains_key(&(0, *id)), "an accepted task was never persisted");
                }
                let accepted: BTreeSet<TaskId> = self
                    .engine
                    .requester
                    .tasks()
                    .filter(|(_, t)| !t.phase.is_terminal())
                    .map(|(id, _)| *id)
                    .collect();
                self.engine = Engine::new(self.me.clone(), config(), BTreeSet::from([model()]), self.now);
                self.sends.clear();
                self.executes.clear();
                self.checks.clear();
                self.publishes.clear();
                self.lookups.clear();
                self.engine.restore_reputation(ledger);
                let actions = self.engine.restore(self.now, reqs, jobs);
                for a in actions {
                    match a {
                        Action::Execute { task, .. } => self.executes.push(task),
                        Action::Check { task, .. } => self.checks.push(task),
                        _ => {}
                    }
                }
                // Nothing accepted is lost: every task held before the crash was persisted.
                let after: BTreeSet<TaskId> = self.engine.requester.tasks().map(|(id, _)| *id).collect();
                assert!(accepted.is_subset(&after), "a crash lost an accepted task");
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut h = Harness::new();
    for op in ops.into_iter().take(200) {
        h.step(op);
    }
});
