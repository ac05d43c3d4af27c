//! The requester's half of the task lifecycle: announce, collect bids, award, verify.
//!
//! ```text
//!  submit ──► Bidding ──(window closes, ≥1 valid bid)──► Running ──(quorum agrees)──► Verified
//!               │  ▲                                       │  │
//!               │  └──── no bids / no standby left ────────┘  └── worker fails: next standby
//!               └──── deadline or max rounds ───────────────────────────────────────► Failed
//! ```
//!
//! Every change is written to the store before the node answers the peer that caused it.
//! On restart a task in `Bidding` starts a fresh round; one in `Running` keeps its awards and
//! deadlines, and workers re-send their results until they get an answer.

use crate::trace::{timeline::event, TaskRecord};
use fleetmesh_crypto::{OutputDigest, PublicKey, SignedEnvelope, TaskId};
use fleetmesh_protocol::ids;
use fleetmesh_protocol::verify::{agreement, check_result, Agreement};
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{
    task_id_of, winner, Announcement, Award, Decline, OpenTask, OpenTasks, Receipt, RejectReason, Signed,
    TaskSpec, WIRE_VERSION,
};
use libp2p::{kad, PeerId};
use serde::{Deserialize, Serialize};

use crate::node::{now_ms, peer_id_of, public_key_of, ClientError, EventLoop, Outbound, SubmitRequest};
use crate::state::{Phase, TaskView, Timings, WorkerView};
use crate::store;

/// Extra workers a task may take on beyond k (after failures or disagreement).
const MAX_EXTRA_WORKERS: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum AssignStatus {
    Awarded,
    Acked,
    Returned(OutputDigest),
    Rejected(RejectReason),
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Assignment {
    pub(crate) worker: PublicKey,
    pub(crate) price: u64,
    pub(crate) deadline_ms: u64,
    pub(crate) status: AssignStatus,
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
pub(crate) struct ReqTask {
    pub(crate) spec_env: SignedEnvelope,
    pub(crate) spec: TaskSpec,
    pub(crate) phase: Phase,
    pub(crate) round: u32,
    pub(crate) bid_deadline_ms: u64,
    pub(crate) bids: Vec<SignedEnvelope>,
    pub(crate) bids_total: u32,
    /// Consecutive bid rounds that ended without a valid bid.
    #[serde(default)]
    pub(crate) empty_rounds: u32,
    pub(crate) bid_set: Vec<fleetmesh_crypto::Digest>,
    pub(crate) standby: Vec<(PublicKey, u64)>,
    pub(crate) assignments: Vec<Assignment>,
    pub(crate) outputs: Vec<(OutputDigest, serde_bytes::ByteBuf)>,
    pub(crate) rejections: Vec<(PublicKey, RejectReason)>,
    pub(crate) verified: Option<(OutputDigest, Vec<PublicKey>)>,
    pub(crate) receipts: Vec<(PublicKey, SignedEnvelope)>,
    pub(crate) failure: Option<String>,
    pub(crate) times: Timings,
    #[serde(skip)]
    pub(crate) announce_pending: bool,
}

impl ReqTask {
    pub(crate) fn id(&self) -> TaskId {
        task_id_of(&self.spec_env)
    }

    fn awarded_keys(&self) -> Vec<PublicKey> {
        self.assignments.iter().map(|a| a.worker).collect()
    }

    pub(crate) fn view(&self) -> TaskView {
        use base64::Engine;
        let verified_output = self
            .verified
            .as_ref()
            .and_then(|(d, _)| self.outputs.iter().find(|(o, _)| o == d).map(|(_, b)| b.to_vec()));
        let label = verified_output
            .as_deref()
            .and_then(|b| crate::executor::ModelOutput::from_bytes(b).ok())
            .and_then(|o| o.argmax);
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
                    peer_id: peer_id_of(&a.worker).to_string(),
                    status: match &a.status {
                        AssignStatus::Awarded => "awarded".into(),
                        AssignStatus::Acked => "acked".into(),
                        AssignStatus::Returned(_) => "returned".into(),
                        AssignStatus::Rejected(r) => format!("rejected: {r}"),
                        AssignStatus::Failed(r) => format!("failed: {r}"),
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
        }
    }
}

/// Whether a DHT record may be stored: a task spec must verify and hash to its key; an
/// open-tasks record must verify and be signed by the requester its key names.
pub(crate) fn record_is_valid(key: &[u8], value: &[u8]) -> bool {
    let limit = fleetmesh_protocol::limits::MAX_RECORD_BYTES;
    match ids::RecordKey::parse(key) {
        Some(ids::RecordKey::Task(id)) => {
            TaskSpec::open_bytes(value, limit).is_ok_and(|(env, _)| task_id_of(&env) == id)
        }
        Some(ids::RecordKey::OpenTasks(model, signer)) => {
            OpenTasks::open_bytes(value, limit).is_ok_and(|(env, o)| {
                env.signer.to_bytes() == signer
                    && o.model == model
                    && o.tasks.len() <= fleetmesh_protocol::limits::MAX_OPEN_TASKS_PER_RECORD
            })
        }
        // Provider keys hold provider records, never values.
        Some(ids::RecordKey::ModelProviders(_)) | None => false,
    }
}

impl EventLoop {
    pub(crate) fn submit(&mut self, req: SubmitRequest) -> Result<TaskId, ClientError> {
        let reject = |m: String| Err(ClientError::Rejected(m));
        let d = &self.config.tasks;
        let model = match &req.model {
            Some(m) => match m.parse() {
                Ok(m) => m,
                Err(e) => return reject(format!("model id: {e}")),
            },
            None => crate::digits::model_id(),
        };
        if req.input.is_empty() {
            return reject("the input is empty".into());
        }
        if req.input.len() > fleetmesh_protocol::limits::MAX_INPUT_BYTES {
            return reject(format!(
                "input of {} bytes exceeds the limit of {} bytes",
                req.input.len(),
                fleetmesh_protocol::limits::MAX_INPUT_BYTES
            ));
        }
        let k = req.redundancy.unwrap_or(d.redundancy);
        if k == 0 || k > fleetmesh_protocol::limits::MAX_REDUNDANCY {
            return reject(format!("redundancy must be 1 to {}", fleetmesh_protocol::limits::MAX_REDUNDANCY));
        }
        let bid_window_ms = req.bid_window_ms.unwrap_or(d.bid_window_ms).max(10);
        let exec_timeout_ms = req.exec_timeout_ms.unwrap_or(d.exec_timeout_ms).max(10);
        let now = now_ms();
        let deadline = req.deadline_ms.unwrap_or(d.deadline_ms);
        if deadline < u64::from(bid_window_ms) + u64::from(exec_timeout_ms) {
            return reject("deadline_ms must leave room for one bid window plus one execution".into());
        }
        static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nonce = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ (now << 20);
        let spec = TaskSpec {
            v: WIRE_VERSION,
            model,
            input_digest: fleetmesh_crypto::InputDigest::of(&req.input),
            input_size: req.input.len() as u64,
            redundancy: k,
            max_price: req.max_price.unwrap_or(d.max_price),
            created_ms: now,
            bid_window_ms,
            exec_timeout_ms,
            deadline_ms: now + deadline,
            nonce,
        };
        let spec_env = spec.sign(&self.identity);
        let id = task_id_of(&spec_env);
        let task = ReqTask {
            spec_env,
            spec,
            phase: Phase::Bidding,
            round: 0,
            bid_deadline_ms: now + u64::from(bid_window_ms),
            bids: Vec::new(),
            bids_total: 0,
            empty_rounds: 0,
            bid_set: Vec::new(),
            standby: Vec::new(),
            assignments: Vec::new(),
            outputs: Vec::new(),
            rejections: Vec::new(),
            verified: None,
            receipts: Vec::new(),
            failure: None,
            times: Timings { submitted_ms: now, ..Timings::default() },
            announce_pending: true,
        };
        let bytes = fleetmesh_protocol::encode(&task);
        self.store
            .put_many(&[(store::REQUEST_INPUTS, &id, &req.input), (store::REQUESTS, &id, &bytes)])
            .map_err(|e| ClientError::Rejected(format!("could not persist the task: {e}")))?;
        self.requests.insert(id, task);
        self.metrics.tasks_submitted.inc();
        self.publish_spec(&id);
        self.publish_open_tasks(&model);
        self.announce(&id);
        Ok(id)
    }

    /// A requested task as persisted (for tasks no longer held in memory).
    pub(crate) fn load_request(&self, id: &TaskId) -> Option<ReqTask> {
        let bytes = self.store.get_raw(store::REQUESTS, id).ok()??;
        fleetmesh_protocol::decode(&bytes, usize::MAX).ok()
    }

    fn persist_request(&self, id: &TaskId) -> bool {
        let Some(t) = self.requests.get(id) else { return false };
        match self.store.put(store::REQUESTS, id, t) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(task = %id, "could not persist task: {e}");
                false
            }
        }
    }

    fn publish_spec(&mut self, id: &TaskId) {
        let Some(t) = self.requests.get(id) else { return };
        let record = kad::Record::new(ids::task_record_key(id), fleetmesh_protocol::encode(&t.spec_env));
        if let Err(e) = self.swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One) {
            tracing::warn!(task = %id, "could not store the task spec locally: {e}");
        }
    }

    /// Rewrites this node's open-tasks record for `model` and its provider record.
    /// Marks this node's open-tasks record for `model` stale; `flush_open_tasks` rewrites it
    /// on the next tick, so a burst of changes costs one DHT write, not one each.
    pub(crate) fn publish_open_tasks(&mut self, model: &fleetmesh_crypto::ModelId) {
        self.open_tasks_dirty.insert(*model);
    }

    /// Rewrites the stale open-tasks records (called from the tick, at most twice a second).
    pub(crate) fn flush_open_tasks(&mut self) {
        let models: Vec<fleetmesh_crypto::ModelId> = self.open_tasks_dirty.drain().collect();
        for m in models {
            self.write_open_tasks(&m);
        }
    }

    fn write_open_tasks(&mut self, model: &fleetmesh_crypto::ModelId) {
        let mut open: Vec<OpenTask> = self
            .requests
            .values()
            .filter(|t| t.spec.model == *model && t.phase == Phase::Bidding)
            .map(|t| OpenTask { task_id: t.id(), round: t.round, bid_deadline_ms: t.bid_deadline_ms })
            .collect();
        open.sort_by_key(|o| std::cmp::Reverse(o.bid_deadline_ms));
        open.truncate(fleetmesh_protocol::limits::MAX_OPEN_TASKS_PER_RECORD);
        let record = OpenTasks { v: WIRE_VERSION, model: *model, tasks: open, updated_ms: now_ms() };
        let env = record.sign(&self.identity);
        let key = ids::open_tasks_record_key(model, &self.identity.public());
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Err(e) =
            kad.put_record(kad::Record::new(key, fleetmesh_protocol::encode(&env)), kad::Quorum::One)
        {
            tracing::warn!("could not store the open-tasks record: {e}");
        }
        if self.providing.insert(*model) {
            if let Err(e) = kad.start_providing(kad::RecordKey::new(&ids::model_provider_key(model))) {
                tracing::warn!("could not start providing: {e}");
            }
        }
    }

    fn announce(&mut self, id: &TaskId) {
        let Some(t) = self.requests.get(id) else { return };
        let a = Announcement {
            v: WIRE_VERSION,
            task_id: *id,
            model: t.spec.model,
            round: t.round,
            bid_deadline_ms: t.bid_deadline_ms,
            max_price: t.spec.max_price,
            spec: Some(t.spec_env.clone()),
        };
        let round = a.round;
        let env = a.sign(&self.identity);
        let ok = self.publish(ids::TOPIC_TASKS, &env);
        if ok {
            self.trace_task(|| TaskRecord { round: Some(round), ..TaskRecord::about(event::ANNOUNCED, id) });
        }
        if let Some(t) = self.requests.get_mut(id) {
            t.announce_pending = !ok;
            if ok && t.times.announced_ms == 0 {
                t.times.announced_ms = now_ms();
            }
        }
    }

    pub(crate) fn on_bid(&mut self, peer: PeerId, bid: SignedEnvelope) -> TaskResponse {
        self.metrics.bids_received.inc();
        let Ok(b) = fleetmesh_protocol::Bid::open(&bid) else {
            return TaskResponse::Refused(Refusal::Invalid("bid does not verify".into()));
        };
        if public_key_of(&peer) != Some(bid.signer) {
            return TaskResponse::Refused(Refusal::Invalid("bid signed by another peer".into()));
        }
        let Some(t) = self.requests.get_mut(&b.task_id) else {
            return TaskResponse::Refused(Refusal::UnknownTask);
        };
        if t.phase != Phase::Bidding {
            return TaskResponse::Refused(Refusal::BidDeclined(
                fleetmesh_protocol::DeclineReason::TaskClosed,
            ));
        }
        if b.round != t.round {
            return TaskResponse::Refused(Refusal::BidDeclined(fleetmesh_protocol::DeclineReason::Late));
        }
        if t.bids.iter().any(|e| e.signer == bid.signer) || t.bids.len() >= 256 {
            return TaskResponse::Refused(Refusal::BidDeclined(
                fleetmesh_protocol::DeclineReason::DuplicateBidder,
            ));
        }
        t.bids.push(bid);
        t.bids_total += 1;
        let id = b.task_id;
        self.trace_task(|| TaskRecord {
            round: Some(b.round),
            peer: Some(peer.to_string()),
            price: Some(b.price),
            ..TaskRecord::about(event::BID_RECEIVED, &id)
        });
        if self.round_can_close_early(&id) {
            self.close_round(&id);
        }
        TaskResponse::Ack
    }

    /// All peers that advertise the model have bid (and at least k bids are in).
    fn round_can_close_early(&self, id: &TaskId) -> bool {
        let Some(t) = self.requests.get(id) else { return false };
        if !self.config.tasks.early_close {
            return false;
        }
        let needed =
            usize::from(t.spec.redundancy).saturating_sub(t.assignments.iter().filter(|a| a.live()).count());
        let capable = self
            .presence
            .iter()
            .filter(|(p, adv)| self.swarm.is_connected(p) && adv.models.contains(&t.spec.model))
            .filter(|(p, _)| !t.assignments.iter().any(|a| peer_id_of(&a.worker) == **p))
            .count();
        t.bids.len() >= needed.max(1) && t.bids.len() >= capable
    }

    /// Applies the winner rule to the round's bids and awards the winners.
    fn close_round(&mut self, id: &TaskId) {
        let me = self.identity.public();
        let Some(t) = self.requests.get_mut(id) else { return };
        let assigned = t.awarded_keys();
        // Workers already on this task (or failed on it) take no part in a new round.
        let bids: Vec<SignedEnvelope> =
            std::mem::take(&mut t.bids).into_iter().filter(|b| !assigned.contains(&b.signer)).collect();
        let decision = winner::choose(id, &t.spec, &me, t.round, &bids);
        let needed = usize::from(t.spec.redundancy)
            .saturating_sub(t.assignments.iter().filter(|a| a.live()).count())
            .max(1);
        let now = now_ms();
        if decision.ranked.is_empty() {
            // Only consecutive rounds without a single valid bid count towards giving up;
            // re-auctions after a worker failed are not "no bids".
            t.empty_rounds += 1;
            let empty = t.empty_rounds;
            if empty >= self.config.tasks.max_rounds || now >= t.spec.deadline_ms {
                let reason = format!(
                    "no valid bids in {empty} consecutive bid rounds (does any node hold model {}?)",
                    t.spec.model
                );
                self.fail(id, reason);
                return;
            }
            // Back off: each empty round waits longer, up to 8 windows.
            t.round += 1;
            let window = u64::from(t.spec.bid_window_ms) << empty.min(3);
            t.bid_deadline_ms = (now + window).min(t.spec.deadline_ms);
            let model = t.spec.model;
            self.persist_request(id);
            self.publish_open_tasks(&model);
            self.announce(id);
            return;
        }
        t.empty_rounds = 0;
        t.bid_set = decision.bid_set.clone();
        let take = needed.min(decision.ranked.len());
        let winners: Vec<(PublicKey, u64)> =
            decision.ranked[..take].iter().map(|r| (r.bidder, r.bid.price)).collect();
        t.standby = decision.ranked[take..].iter().map(|r| (r.bidder, r.bid.price)).collect();
        t.phase = Phase::Running;
        if t.times.awarded_ms == 0 {
            t.times.awarded_ms = now;
        }
        let round = t.round;
        let model = t.spec.model;
        // Tell the bidders that lost, and why (best effort: a lost decline costs nothing).
        let declines: Vec<(PublicKey, fleetmesh_protocol::DeclineReason)> =
            decision.declined.into_iter().filter(|(pk, _)| !winners.iter().any(|(w, _)| w == pk)).collect();
        for (pk, reason) in declines {
            self.trace_task(|| TaskRecord {
                round: Some(round),
                peer: Some(peer_id_of(&pk).to_string()),
                reason: Some(format!("{reason:?}")),
                ..TaskRecord::about(event::DECLINE_SENT, id)
            });
            let d = Decline { v: WIRE_VERSION, task_id: *id, round, reason }.sign(&self.identity);
            self.send(peer_id_of(&pk), TaskRequest::Decline { decline: d }, Outbound::Decline);
        }
        self.award(id, winners);
        self.publish_open_tasks(&model);
    }

    /// Signs an award naming `winners` and sends it, with the input, to each.
    fn award(&mut self, id: &TaskId, winners: Vec<(PublicKey, u64)>) {
        let input = match self.store.get_raw(store::REQUEST_INPUTS, id) {
            Ok(Some(i)) => i,
            other => {
                self.fail(id, format!("the task input is missing from the store ({other:?})"));
                return;
            }
        };
        let Some(t) = self.requests.get_mut(id) else { return };
        let deadline = now_ms() + u64::from(t.spec.exec_timeout_ms);
        let award = Award {
            v: WIRE_VERSION,
            task_id: *id,
            round: t.round,
            bid_set: t.bid_set.clone(),
            winners: winners.iter().map(|(w, _)| *w).collect(),
            result_deadline_ms: deadline,
        }
        .sign(&self.identity);
        for (worker, price) in &winners {
            t.assignments.push(Assignment {
                worker: *worker,
                price: *price,
                deadline_ms: deadline,
                status: AssignStatus::Awarded,
            });
        }
        let spec = t.spec_env.clone();
        let (round, bids) = (t.round, t.bid_set.len() as u32);
        self.persist_request(id);
        self.trace_task(|| TaskRecord {
            round: Some(round),
            bids: Some(bids),
            winners: Some(winners.iter().map(|(w, _)| peer_id_of(w).to_string()).collect()),
            ..TaskRecord::about(event::AWARDED, id)
        });
        for (worker, _) in winners {
            let req = TaskRequest::Award { spec: spec.clone(), award: award.clone(), input: input.clone() };
            self.send(peer_id_of(&worker), req, Outbound::Award { task: *id, worker });
        }
    }

    pub(crate) fn send(&mut self, peer: PeerId, req: TaskRequest, purpose: Outbound) {
        let rid = self.swarm.behaviour_mut().tasks.send_request(&peer, crate::codec::Frame::Request(req));
        self.outbound.insert(rid, purpose);
    }

    pub(crate) fn on_award_response(
        &mut self,
        id: TaskId,
        worker: PublicKey,
        resp: Result<TaskResponse, String>,
    ) {
        let reason = match resp {
            Ok(TaskResponse::Ack) => {
                if let Some(a) = self.assignment_mut(&id, &worker) {
                    if a.status == AssignStatus::Awarded {
                        a.status = AssignStatus::Acked;
                    }
                }
                return;
            }
            Ok(other) => format!("award refused: {other:?}"),
            Err(e) => format!("award not delivered: {e}"),
        };
        self.worker_failed(&id, &worker, reason);
    }

    fn assignment_mut(&mut self, id: &TaskId, worker: &PublicKey) -> Option<&mut Assignment> {
        self.requests.get_mut(id)?.assignments.iter_mut().rev().find(|a| a.worker == *worker)
    }

    /// A worker will not deliver: mark it and bring in a replacement.
    fn worker_failed(&mut self, id: &TaskId, worker: &PublicKey, reason: String) {
        let Some(a) = self.assignment_mut(id, worker) else { return };
        if !a.waiting() {
            return;
        }
        tracing::info!(task = %id, worker = %worker.fmt_short(), %reason, "worker failed; re-awarding");
        a.status = AssignStatus::Failed(reason);
        self.metrics.reawards.inc();
        if self.requests.get(id).is_some_and(|t| !t.can_still_verify()) {
            self.add_worker(id);
        } else {
            self.persist_request(id);
        }
    }

    /// Brings one more worker onto a running task: the next standby bidder, or a new round.
    fn add_worker(&mut self, id: &TaskId) {
        let Some(t) = self.requests.get_mut(id) else { return };
        if t.phase.is_terminal() {
            return;
        }
        if t.assignments.len() >= usize::from(t.spec.redundancy) + MAX_EXTRA_WORKERS {
            let reason = format!("gave up after {} workers failed or disagreed", t.assignments.len());
            self.fail(id, reason);
            return;
        }
        if !t.standby.is_empty() {
            let next = t.standby.remove(0);
            self.award(id, vec![next]);
            return;
        }
        // Re-auction: a new round for the missing workers.
        if now_ms() >= t.spec.deadline_ms {
            self.fail(id, "deadline passed while replacing a worker".into());
            return;
        }
        t.phase = Phase::Bidding;
        t.round += 1;
        t.bid_deadline_ms = (now_ms() + u64::from(t.spec.bid_window_ms)).min(t.spec.deadline_ms);
        let model = t.spec.model;
        self.persist_request(id);
        self.publish_open_tasks(&model);
        self.announce(id);
    }

    pub(crate) fn on_result(
        &mut self,
        peer: PeerId,
        id: TaskId,
        header: SignedEnvelope,
        output: Vec<u8>,
    ) -> TaskResponse {
        self.metrics.results_received.inc();
        let h = match fleetmesh_protocol::ResultHeader::open(&header) {
            Ok(h) => h,
            Err(_) => {
                self.metrics.results_rejected.inc();
                return TaskResponse::Rejected(RejectReason::BadSignature);
            }
        };
        let worker = header.signer;
        let Some(t) = self.requests.get_mut(&id) else {
            // A finished task that left memory: re-send the receipt if this worker earned one.
            return match self.load_request(&id) {
                Some(t) => t
                    .receipts
                    .iter()
                    .find(|(w, _)| *w == worker)
                    .map_or(TaskResponse::Rejected(RejectReason::TaskClosed), |(_, r)| {
                        TaskResponse::Receipt(r.clone())
                    }),
                None => TaskResponse::Rejected(RejectReason::UnknownTask),
            };
        };
        // Idempotent: a worker re-sending an accepted result gets its receipt again.
        if let Some((_, r)) = t.receipts.iter().find(|(w, _)| *w == worker) {
            return TaskResponse::Receipt(r.clone());
        }
        if t.phase.is_terminal() {
            return TaskResponse::Rejected(RejectReason::TaskClosed);
        }
        if let Some(a) = t.assignments.iter().rev().find(|a| a.worker == worker) {
            if let AssignStatus::Returned(d) = &a.status {
                return if *d == h.output_digest {
                    TaskResponse::Pending
                } else {
                    TaskResponse::Rejected(RejectReason::Duplicate)
                };
            }
        }
        // A result signed by a key other than the sender's counts against the sender.
        let sender = public_key_of(&peer);
        let checked = match sender {
            Some(s) if s != worker => Err(RejectReason::NotAwarded),
            _ => check_result(&id, &t.spec, &t.awarded_keys(), &header, &output),
        };
        let worker = sender.unwrap_or(worker);
        let h = match checked {
            Ok(h) => h,
            Err(reason) => {
                self.metrics.results_rejected.inc();
                tracing::info!(task = %id, worker = %worker.fmt_short(), %reason, "result rejected");
                if let Some(tr) = self.tracer.as_mut() {
                    tr.task(TaskRecord {
                        peer: Some(peer_id_of(&worker).to_string()),
                        reason: Some(reason.to_string()),
                        ..TaskRecord::about(event::RESULT_REJECTED, &id)
                    });
                }
                t.rejections.push((worker, reason.clone()));
                let was_awarded = t.awarded_keys().contains(&worker);
                if let Some(a) = t.assignments.iter_mut().rev().find(|a| a.worker == worker) {
                    a.status = AssignStatus::Rejected(reason.clone());
                }
                if was_awarded && !t.can_still_verify() {
                    self.add_worker(&id);
                }
                self.persist_request(&id);
                return TaskResponse::Rejected(reason);
            }
        };
        if let Some(a) = t.assignments.iter_mut().rev().find(|a| a.worker == worker) {
            a.status = AssignStatus::Returned(h.output_digest);
        }
        if let Some(tr) = self.tracer.as_mut() {
            tr.task(TaskRecord {
                peer: Some(peer_id_of(&worker).to_string()),
                digest: Some(h.output_digest.to_string()),
                ..TaskRecord::about(event::RESULT_RECEIVED, &id)
            });
        }
        if !t.outputs.iter().any(|(d, _)| *d == h.output_digest) {
            t.outputs.push((h.output_digest, serde_bytes::ByteBuf::from(output)));
        }
        if t.times.first_result_ms == 0 {
            t.times.first_result_ms = now_ms();
        }
        let results = t.returned();
        let awarded = t.assignments.iter().filter(|a| a.live()).count();
        match agreement(t.spec.redundancy, awarded, &results) {
            Agreement::Verified(digest, workers) => {
                self.verify_task(&id, digest, workers);
                let receipt = self
                    .requests
                    .get(&id)
                    .and_then(|t| t.receipts.iter().find(|(w, _)| *w == worker).map(|(_, r)| r.clone()));
                match receipt {
                    Some(r) => TaskResponse::Receipt(r),
                    None => TaskResponse::Rejected(RejectReason::Disagreement),
                }
            }
            Agreement::Waiting => {
                if !self.persist_request(&id) {
                    return TaskResponse::Refused(Refusal::Unavailable);
                }
                TaskResponse::Pending
            }
            Agreement::Disagree => {
                self.metrics.disagreements.inc();
                self.add_worker(&id);
                self.persist_request(&id);
                TaskResponse::Pending
            }
        }
    }

    fn verify_task(&mut self, id: &TaskId, digest: OutputDigest, workers: Vec<PublicKey>) {
        let Some(t) = self.requests.get_mut(id) else { return };
        let now = now_ms();
        t.phase = Phase::Verified;
        t.times.finished_ms = now;
        t.verified = Some((digest, workers.clone()));
        let mut to_notify = Vec::new();
        for a in &mut t.assignments {
            match &a.status {
                AssignStatus::Returned(d) if *d == digest && workers.contains(&a.worker) => {
                    let r = Receipt {
                        v: WIRE_VERSION,
                        task_id: *id,
                        worker: a.worker,
                        output_digest: digest,
                        price: a.price,
                        accepted_ms: now,
                    }
                    .sign(&self.identity);
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
        let model = t.spec.model;
        self.persist_request(id);
        self.metrics.tasks_verified.inc();
        self.trace_task(|| TaskRecord {
            digest: Some(digest.to_string()),
            winners: Some(workers.iter().map(|w| peer_id_of(w).to_string()).collect()),
            ..TaskRecord::about(event::VERIFIED, id)
        });
        for (worker, _) in &to_notify {
            self.trace_task(|| TaskRecord {
                peer: Some(peer_id_of(worker).to_string()),
                ..TaskRecord::about(event::RECEIPT_SENT, id)
            });
        }
        // Workers that were told `Pending` get their receipt now.
        for (worker, receipt) in to_notify {
            self.send(peer_id_of(&worker), TaskRequest::Receipt { receipt }, Outbound::Receipt);
        }
        self.publish_open_tasks(&model);
        self.notify_finished(id);
    }

    pub(crate) fn fail(&mut self, id: &TaskId, reason: String) {
        let Some(t) = self.requests.get_mut(id) else { return };
        tracing::warn!(task = %id, %reason, "task failed");
        if let Some(tr) = self.tracer.as_mut() {
            tr.task(TaskRecord { reason: Some(reason.clone()), ..TaskRecord::about(event::FAILED, id) });
        }
        t.phase = Phase::Failed;
        t.failure = Some(reason);
        t.times.finished_ms = now_ms();
        let model = t.spec.model;
        self.persist_request(id);
        self.metrics.tasks_failed.inc();
        self.publish_open_tasks(&model);
        self.notify_finished(id);
    }

    pub(crate) fn requester_tick(&mut self) {
        let now = now_ms();
        let ids: Vec<TaskId> =
            self.requests.iter().filter(|(_, t)| !t.phase.is_terminal()).map(|(id, _)| *id).collect();
        for id in ids {
            let Some(t) = self.requests.get(&id) else { continue };
            if now >= t.spec.deadline_ms {
                let reason = match t.phase {
                    Phase::Bidding => format!("deadline passed while taking bids (round {})", t.round),
                    _ => "deadline passed before a quorum of workers agreed".to_owned(),
                };
                self.fail(&id, reason);
                continue;
            }
            match t.phase {
                Phase::Bidding => {
                    if t.announce_pending {
                        self.announce(&id);
                    }
                    let closes = self.requests.get(&id).is_some_and(|t| now >= t.bid_deadline_ms);
                    if closes || self.round_can_close_early(&id) {
                        self.close_round(&id);
                    }
                }
                Phase::Running => {
                    let late: Vec<PublicKey> = t
                        .assignments
                        .iter()
                        .filter(|a| a.waiting() && now >= a.deadline_ms)
                        .map(|a| a.worker)
                        .collect();
                    for w in late {
                        self.worker_failed(&id, &w, "missed the result deadline".into());
                    }
                }
                _ => {}
            }
        }
    }

    /// A peer's last connection closed: its unfinished work goes to someone else.
    pub(crate) fn requester_peer_gone(&mut self, peer: PeerId) {
        let Some(pk) = public_key_of(&peer) else { return };
        let affected: Vec<TaskId> = self
            .requests
            .iter()
            .filter(|(_, t)| {
                t.phase == Phase::Running && t.assignments.iter().any(|a| a.worker == pk && a.waiting())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in affected {
            self.worker_failed(&id, &pk, "disconnected".into());
        }
    }

    pub(crate) fn resume_requests(&mut self) {
        let ids: Vec<TaskId> =
            self.requests.iter().filter(|(_, t)| !t.phase.is_terminal()).map(|(id, _)| *id).collect();
        let mut models = std::collections::HashSet::new();
        for id in &ids {
            let Some(t) = self.requests.get_mut(id) else { continue };
            models.insert(t.spec.model);
            if t.phase == Phase::Bidding {
                t.round += 1;
                t.bids.clear();
                t.bid_deadline_ms = (now_ms() + u64::from(t.spec.bid_window_ms)).min(t.spec.deadline_ms);
                t.announce_pending = true;
            }
            tracing::info!(task = %id, phase = ?t.phase, "resuming task");
            self.publish_spec(id);
            self.persist_request(id);
        }
        for m in models {
            self.publish_open_tasks(&m);
        }
    }
}

impl ReqTask {
    fn returned(&self) -> Vec<(PublicKey, OutputDigest)> {
        self.assignments
            .iter()
            .filter_map(|a| match &a.status {
                AssignStatus::Returned(d) => Some((a.worker, *d)),
                _ => None,
            })
            .collect()
    }

    /// Whether the results in hand plus the workers still running can reach a quorum.
    fn can_still_verify(&self) -> bool {
        let returned = self.returned();
        let best =
            returned.iter().map(|(_, d)| returned.iter().filter(|(_, e)| e == d).count()).max().unwrap_or(0);
        let waiting = self.assignments.iter().filter(|a| a.waiting()).count();
        best + waiting >= fleetmesh_protocol::verify::quorum(self.spec.redundancy)
    }
}
