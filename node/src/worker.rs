//! The worker's half of the task lifecycle: bid, accept an award, execute, return the result.
//!
//! ```text
//!  announcement / DHT scan ──► spec fetched from the DHT and checked ──► signed bid
//!  award (+ input) checked, persisted, acknowledged ──► Queued ──► executed ──► Done
//!  Done ──(result sent)──► Receipted | Pending (receipt follows) | Rejected (reason kept)
//! ```
//!
//! A job is written to the store before the award is acknowledged, and its result before it
//! is sent. On restart a `Queued` job runs (it never finished), a `Done` or `Pending` job is
//! re-sent and never run again.

use crate::trace::{timeline::event, TaskRecord};
use fleetmesh_crypto::{InputDigest, ModelId, PublicKey, SignedEnvelope, TaskId};
use fleetmesh_protocol::ids;
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{
    task_id_of, Announcement, Award, Bid, Decline, OpenTasks, Receipt, RejectReason, ResultHeader, Signed,
    TaskSpec, WIRE_VERSION,
};
use libp2p::{kad, PeerId};
use serde::{Deserialize, Serialize};

use crate::executor::ExecError;
use crate::node::{now_ms, peer_id_of, EventLoop, ExecDone, Outbound};
use crate::store;

/// How long past its result deadline a worker keeps trying to deliver a result.
const DELIVERY_GRACE_MS: u64 = 120_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum JobState {
    Queued,
    Done {
        header: SignedEnvelope,
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
    Pending {
        header: SignedEnvelope,
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
    Receipted(SignedEnvelope),
    Rejected(RejectReason),
    Abandoned(String),
}

/// A task this node was awarded, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) spec: TaskSpec,
    pub(crate) requester: PublicKey,
    pub(crate) result_deadline_ms: u64,
    pub(crate) state: JobState,
    #[serde(skip)]
    pub(crate) running: bool,
    #[serde(skip)]
    pub(crate) in_flight: bool,
    #[serde(skip)]
    pub(crate) attempts: u32,
    #[serde(skip)]
    pub(crate) next_send_ms: u64,
}

impl Job {
    /// Nothing more will happen to this job.
    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.state, JobState::Receipted(_) | JobState::Rejected(_) | JobState::Abandoned(_))
    }
}

impl EventLoop {
    fn queued_jobs(&self) -> usize {
        self.jobs.values().filter(|j| matches!(j.state, JobState::Queued)).count()
    }

    fn has_capacity(&self) -> bool {
        self.queued_jobs() < self.config.max_queue as usize
    }

    /// An announcement arrived: look the spec up in the DHT if this node could serve it.
    pub(crate) fn on_announcement(&mut self, requester: PublicKey, a: Announcement) {
        if requester == self.identity.public() {
            return;
        }
        #[cfg(feature = "test-hooks")]
        if self.config.ignore_task_gossip {
            return;
        }
        match a.spec {
            // The spec came with the announcement: check it and bid without a DHT lookup.
            Some(spec)
                if self.worth_bidding(a.task_id, a.model, a.round, a.bid_deadline_ms, Some(a.max_price)) =>
            {
                self.bid_on_spec((a.task_id, a.round), &spec);
            }
            Some(_) => {}
            None => self.consider(a.task_id, a.model, a.round, a.bid_deadline_ms, Some(a.max_price)),
        }
    }

    /// Whether this node would bid on round `round` of `task`, before looking at the spec.
    fn worth_bidding(
        &self,
        task: TaskId,
        model: ModelId,
        round: u32,
        bid_deadline_ms: u64,
        max_price: Option<u64>,
    ) -> bool {
        self.config.serve
            && bid_deadline_ms > now_ms()
            && max_price.is_none_or(|p| p >= self.config.price_floor)
            && self.models.has(&model)
            && !self.jobs.contains_key(&task)
            && !self.bids_sent.contains(&(task, round))
            && !self.spec_lookups.values().any(|k| *k == (task, round))
            && self.has_capacity()
    }

    /// Looks the spec up in the DHT if this node would bid on it.
    fn consider(
        &mut self,
        task: TaskId,
        model: ModelId,
        round: u32,
        bid_deadline_ms: u64,
        max_price: Option<u64>,
    ) {
        if !self.worth_bidding(task, model, round, bid_deadline_ms, max_price) {
            return;
        }
        let qid =
            self.swarm.behaviour_mut().kad.get_record(kad::RecordKey::new(&ids::task_record_key(&task)));
        self.spec_lookups.insert(qid, (task, round));
    }

    /// The spec came back from the DHT: check it and bid.
    pub(crate) fn on_spec_found(&mut self, key: (TaskId, u32), value: Vec<u8>) {
        if let Ok(env) =
            fleetmesh_protocol::decode::<SignedEnvelope>(&value, fleetmesh_protocol::limits::MAX_RECORD_BYTES)
        {
            self.bid_on_spec(key, &env);
        }
    }

    /// Checks a signed spec (from the DHT or an announcement) and bids on it.
    fn bid_on_spec(&mut self, (task, round): (TaskId, u32), env: &SignedEnvelope) {
        let Ok(spec) = TaskSpec::open(env) else { return };
        if task_id_of(env) != task
            || env.signer == self.identity.public()
            || spec.max_price < self.config.price_floor
            || spec.deadline_ms <= now_ms()
            || !self.models.has(&spec.model)
            || !self.remember_bid((task, round))
        {
            return;
        }
        let queue = self.queued_jobs() as u32;
        let free = self.exec_slots.available_permits() as u32;
        // A promise this node can keep: its queue ahead of the task, at a conservative 50 ms
        // per task, plus 100 ms of network, capped at the spec's timeout.
        let promised_ms = (100 + 50 * queue).min(spec.exec_timeout_ms);
        let bid = Bid {
            v: WIRE_VERSION,
            task_id: task,
            round,
            price: self.config.price_floor,
            promised_ms,
            queue_depth: queue,
            free_slots: free,
        }
        .sign(&self.identity);
        self.metrics.bids_sent.inc();
        self.stats.bids_sent += 1;
        let price = self.config.price_floor;
        self.trace_task(|| TaskRecord {
            round: Some(round),
            peer: Some(peer_id_of(&env.signer).to_string()),
            price: Some(price),
            ..TaskRecord::about(event::BID_SENT, &task)
        });
        self.send(peer_id_of(&env.signer), TaskRequest::Bid { bid }, Outbound::Bid);
    }

    /// Periodically: ask the DHT which requesters have open tasks for the models held.
    pub(crate) fn scan_dht_for_open_tasks(&mut self) {
        if !self.provider_lookups.is_empty() {
            return;
        }
        for model in self.models.list() {
            let qid = self
                .swarm
                .behaviour_mut()
                .kad
                .get_providers(kad::RecordKey::new(&ids::model_provider_key(&model)));
            self.provider_lookups.insert(qid, model);
        }
    }

    pub(crate) fn on_providers_found(
        &mut self,
        model: ModelId,
        providers: std::collections::HashSet<PeerId>,
    ) {
        let me = *self.swarm.local_peer_id();
        for p in providers.into_iter().filter(|p| *p != me).take(64) {
            let Some(pk) = crate::node::public_key_of(&p) else { continue };
            if self.open_lookups.len() >= 256 {
                break;
            }
            let qid = self
                .swarm
                .behaviour_mut()
                .kad
                .get_record(kad::RecordKey::new(&ids::open_tasks_record_key(&model, &pk)));
            self.open_lookups.insert(qid);
        }
    }

    pub(crate) fn on_open_tasks_found(&mut self, value: Vec<u8>) {
        let Ok((env, open)) = OpenTasks::open_bytes(&value, fleetmesh_protocol::limits::MAX_RECORD_BYTES)
        else {
            return;
        };
        if env.signer == self.identity.public() {
            return;
        }
        for t in open.tasks.into_iter().take(fleetmesh_protocol::limits::MAX_OPEN_TASKS_PER_RECORD) {
            self.consider(t.task_id, open.model, t.round, t.bid_deadline_ms, None);
        }
    }

    /// An award: check it, persist the job, acknowledge, then run it.
    pub(crate) fn on_award(
        &mut self,
        peer: PeerId,
        spec_env: SignedEnvelope,
        award_env: SignedEnvelope,
        input: Vec<u8>,
    ) -> TaskResponse {
        let invalid = |m: &str| TaskResponse::Refused(Refusal::Invalid(m.to_owned()));
        let Ok(spec) = TaskSpec::open(&spec_env) else { return invalid("task spec does not verify") };
        let Ok(award) = Award::open(&award_env) else { return invalid("award does not verify") };
        let task = task_id_of(&spec_env);
        if award_env.signer != spec_env.signer || peer_id_of(&spec_env.signer) != peer {
            return invalid("award not signed and sent by the task's requester");
        }
        if award.task_id != task {
            return invalid("award names another task");
        }
        if !award.winners.contains(&self.identity.public()) {
            return TaskResponse::Refused(Refusal::NotAWinner);
        }
        if InputDigest::of(&input) != spec.input_digest || input.len() as u64 != spec.input_size {
            return TaskResponse::Refused(Refusal::InputMismatch);
        }
        if !self.models.has(&spec.model) {
            return TaskResponse::Refused(Refusal::ModelUnavailable);
        }
        // Already accepted (in memory, or finished and only in the store): awards are idempotent.
        if self.jobs.contains_key(&task) || self.store.get_raw(store::JOBS, &task).is_ok_and(|j| j.is_some())
        {
            return TaskResponse::Ack;
        }
        if !self.has_capacity() {
            return TaskResponse::Refused(Refusal::NoCapacity);
        }
        #[cfg(feature = "test-hooks")]
        if self.config.misbehave == Some(crate::hooks::Misbehave::Vanish) {
            return TaskResponse::Ack;
        }
        let job = Job {
            spec,
            requester: spec_env.signer,
            result_deadline_ms: award.result_deadline_ms,
            state: JobState::Queued,
            running: false,
            in_flight: false,
            attempts: 0,
            next_send_ms: 0,
        };
        let bytes = fleetmesh_protocol::encode(&job);
        if let Err(e) =
            self.store.put_many(&[(store::JOB_INPUTS, &task, &input), (store::JOBS, &task, &bytes)])
        {
            tracing::error!(%task, "could not persist the job: {e}");
            return TaskResponse::Refused(Refusal::Unavailable);
        }
        self.jobs.insert(task, job);
        self.trace_task(|| TaskRecord {
            round: Some(award.round),
            peer: Some(peer.to_string()),
            ..TaskRecord::about(event::AWARD_ACCEPTED, &task)
        });
        self.start_exec(task, input);
        TaskResponse::Ack
    }

    fn start_exec(&mut self, task: TaskId, input: Vec<u8>) {
        let Some(job) = self.jobs.get_mut(&task) else { return };
        if job.running {
            return;
        }
        job.running = true;
        let model = job.spec.model;
        self.trace_task(|| TaskRecord::about(event::STARTED, &task));
        let models = self.models.clone();
        let slots = self.exec_slots.clone();
        let tx = self.exec_tx.clone();
        #[cfg(feature = "test-hooks")]
        let delay = std::time::Duration::from_millis(self.config.exec_delay_ms);
        tokio::spawn(async move {
            #[cfg(feature = "test-hooks")]
            tokio::time::sleep(delay).await;
            let result = match slots.acquire_owned().await {
                Ok(permit) => {
                    let r = tokio::task::spawn_blocking(move || models.run(&model, &input)).await;
                    drop(permit);
                    r.unwrap_or_else(|e| Err(ExecError::Run(format!("executor task failed: {e}"))))
                }
                Err(_) => Err(ExecError::Run("node is shutting down".into())),
            };
            let _ = tx.send(ExecDone { task, result }).await;
        });
    }

    pub(crate) fn on_exec_done(&mut self, done: ExecDone) {
        let Some(job) = self.jobs.get_mut(&done.task) else { return };
        job.running = false;
        let inf = match done.result {
            Ok(inf) => inf,
            Err(e) => {
                tracing::warn!(task = %done.task, "execution failed: {e}");
                job.state = JobState::Abandoned(e.to_string());
                let _ = self.store.put(store::JOBS, &done.task, &*job);
                return;
            }
        };
        #[allow(unused_mut)]
        let mut output = inf.output;
        #[cfg(feature = "test-hooks")]
        if self.config.misbehave == Some(crate::hooks::Misbehave::WrongAnswer) {
            output.push(0);
        }
        let header = ResultHeader {
            v: WIRE_VERSION,
            task_id: done.task,
            input_digest: job.spec.input_digest,
            model: job.spec.model,
            output_digest: fleetmesh_crypto::OutputDigest::of(&output),
            output_size: output.len() as u64,
            run_time_us: inf.run_time_us,
            runtime: crate::executor::runtime_profile(),
        };
        #[allow(unused_mut)]
        let mut signed = header.sign(&self.identity);
        #[cfg(feature = "test-hooks")]
        match self.config.misbehave {
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
        job.state = JobState::Done { header: signed, output };
        job.next_send_ms = 0;
        if let Err(e) = self.store.put(store::JOBS, &done.task, &*job) {
            tracing::error!(task = %done.task, "could not persist the result: {e}");
        }
        self.metrics.jobs_executed.inc();
        self.stats.jobs_executed += 1;
        self.trace_task(|| TaskRecord {
            digest: Some(header.output_digest.to_string()),
            run_time_us: Some(inf.run_time_us),
            ..TaskRecord::about(event::RESULT_SENT, &done.task)
        });
        self.send_result(done.task);
    }

    fn send_result(&mut self, task: TaskId) {
        let Some(job) = self.jobs.get_mut(&task) else { return };
        let (JobState::Done { header, output } | JobState::Pending { header, output }) = &job.state else {
            return;
        };
        if job.in_flight {
            return;
        }
        job.in_flight = true;
        job.attempts += 1;
        let req = TaskRequest::Result { task_id: task, header: header.clone(), output: output.clone() };
        let peer = peer_id_of(&job.requester);
        self.send(peer, req, Outbound::Result { task });
    }

    pub(crate) fn on_result_response(&mut self, task: TaskId, resp: Result<TaskResponse, String>) {
        let Some(job) = self.jobs.get_mut(&task) else { return };
        job.in_flight = false;
        let requester = job.requester;
        match resp {
            Ok(TaskResponse::Receipt(r)) => {
                if r.signer == requester && Receipt::open(&r).is_ok_and(|x| x.task_id == task) {
                    job.state = JobState::Receipted(r);
                    self.stats.jobs_receipted += 1;
                    if let Some(tr) = self.tracer.as_mut() {
                        tr.task(TaskRecord::about(event::RECEIPT_RECEIVED, &task));
                    }
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
                job.next_send_ms = now_ms() + 5_000;
            }
            Ok(TaskResponse::Rejected(reason)) => {
                tracing::info!(%task, %reason, "result rejected by the requester");
                if let Some(tr) = self.tracer.as_mut() {
                    tr.task(TaskRecord {
                        reason: Some(reason.to_string()),
                        ..TaskRecord::about(event::REJECTED_BY_REQUESTER, &task)
                    });
                }
                job.state = JobState::Rejected(reason);
            }
            other => {
                // Unreachable or refusing for now: retry with backoff until the grace ends.
                let backoff = 250u64 << job.attempts.min(6);
                job.next_send_ms = now_ms() + backoff;
                if now_ms() > job.result_deadline_ms + DELIVERY_GRACE_MS {
                    job.state = JobState::Abandoned(format!("could not deliver the result: {other:?}"));
                }
            }
        }
        let _ = self.store.put(store::JOBS, &task, &*job);
    }

    pub(crate) fn on_receipt(&mut self, env: SignedEnvelope) -> TaskResponse {
        let Ok(r) = Receipt::open(&env) else {
            return TaskResponse::Refused(Refusal::Invalid("receipt does not verify".into()));
        };
        let Some(job) = self.jobs.get_mut(&r.task_id) else {
            return TaskResponse::Refused(Refusal::UnknownTask);
        };
        if env.signer != job.requester || r.worker != self.identity.public() {
            return TaskResponse::Refused(Refusal::Invalid(
                "receipt from someone else or for someone else".into(),
            ));
        }
        if !matches!(job.state, JobState::Receipted(_)) {
            job.state = JobState::Receipted(env);
            self.stats.jobs_receipted += 1;
            if let Some(tr) = self.tracer.as_mut() {
                tr.task(TaskRecord::about(event::RECEIPT_RECEIVED, &r.task_id));
            }
            if let Err(e) = self.store.put(store::JOBS, &r.task_id, &*job) {
                tracing::error!(task = %r.task_id, "could not persist the receipt: {e}");
                return TaskResponse::Refused(Refusal::Unavailable);
            }
        }
        TaskResponse::Ack
    }

    pub(crate) fn on_decline(&mut self, env: SignedEnvelope) -> TaskResponse {
        match Decline::open(&env) {
            Ok(d) => {
                tracing::debug!(task = %d.task_id, reason = ?d.reason, "bid declined");
                self.metrics.bids_declined.inc();
                self.trace_task(|| TaskRecord {
                    round: Some(d.round),
                    peer: Some(peer_id_of(&env.signer).to_string()),
                    reason: Some(format!("{:?}", d.reason)),
                    ..TaskRecord::about(event::DECLINE_RECEIVED, &d.task_id)
                });
                TaskResponse::Ack
            }
            Err(_) => TaskResponse::Refused(Refusal::Invalid("decline does not verify".into())),
        }
    }

    pub(crate) fn worker_tick(&mut self) {
        let now = now_ms();
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
                    && now > j.result_deadline_ms + DELIVERY_GRACE_MS
                {
                    j.state = JobState::Abandoned("no receipt before the grace period ended".into());
                    let _ = self.store.put(store::JOBS, &id, &*j);
                    continue;
                }
            }
            self.send_result(id);
        }
    }

    pub(crate) fn resume_jobs(&mut self) {
        let queued: Vec<TaskId> = self
            .jobs
            .iter()
            .filter(|(_, j)| matches!(j.state, JobState::Queued))
            .map(|(id, _)| *id)
            .collect();
        for id in queued {
            match self.store.get_raw(store::JOB_INPUTS, &id) {
                Ok(Some(input)) => {
                    tracing::info!(task = %id, "resuming an accepted job that had not finished");
                    self.start_exec(id, input);
                }
                other => {
                    if let Some(j) = self.jobs.get_mut(&id) {
                        j.state = JobState::Abandoned(format!("input missing from the store: {other:?}"));
                        let _ = self.store.put(store::JOBS, &id, &*j);
                    }
                }
            }
        }
    }
}
