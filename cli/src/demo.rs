//! `fleetmesh demo`: a whole mesh in one process, running real digits tasks end to end.
//!
//! N nodes listen on loopback over TCP and QUIC (even nodes dial the bootstrap over TCP, odd
//! ones over QUIC), find each other through node 0 and the DHT, and M tasks from different
//! requesters go through announce, bid, award, execute and verify with redundancy k. The
//! report is built from the requesters' own task records.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use fleetmesh_api::{Percentiles, Phase, SubmitRequest, TaskView};
use fleetmesh_node::local::{spawn_local_mesh, wait_for_mesh};

/// Demo parameters.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Nodes in the mesh.
    pub nodes: usize,
    /// Tasks submitted.
    pub tasks: usize,
    /// Workers per task.
    pub redundancy: u8,
    /// Give up waiting after this long.
    pub timeout: Duration,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// Write each node's gossip trace and task timeline into this folder
    /// (`node-<i>.jsonl`, `node-<i>.timeline.jsonl`).
    pub trace: Option<std::path::PathBuf>,
    /// Then one batch task of this many samples (one award, one signed result per worker),
    /// each output checked alone against the signed root; 0 runs none.
    pub batch: u16,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            nodes: 5,
            tasks: 20,
            redundancy: 2,
            timeout: Duration::from_secs(120),
            progress: true,
            trace: None,
            batch: 16,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DemoReport {
    /// Nodes in the mesh.
    pub nodes: usize,
    /// Workers per task.
    pub redundancy: u8,
    /// Tasks submitted.
    pub tasks_submitted: usize,
    /// Tasks verified.
    pub tasks_verified: usize,
    /// Results rejected by requesters (each with a reason in the task record).
    pub results_rejected: usize,
    /// Tasks failed (with a reason).
    pub tasks_failed: usize,
    /// Tasks neither verified nor failed when the demo stopped waiting.
    pub tasks_unfinished: usize,
    /// Share of verified tasks whose label matches the test set's.
    pub accuracy: f64,
    /// End-to-end latency, submit to verified.
    pub latency_ms: Percentiles,
    /// Submit to award (the bid window, or nothing for a task awarded on offers).
    pub bid_phase_ms: Percentiles,
    /// Award to first checked result (transfer, queue, inference, return).
    pub execute_phase_ms: Percentiles,
    /// First result to verified (waiting for the other k-1).
    pub verify_phase_ms: Percentiles,
    /// Valid bids per task.
    pub bids_per_task: f64,
    /// Tasks awarded at once on the workers' standing offers (no announcement, no bids).
    #[serde(default)]
    pub tasks_on_offers: u64,
    /// Inferences run by each node, in node order.
    pub served_per_node: Vec<u64>,
    /// Wall time of the task phase, ms.
    pub wall_ms: u64,
    /// Failure reasons, if any.
    pub failures: Vec<String>,
    /// The batch task, if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchReport>,
    /// Each node's vehicle state and owner's ledger at the end, in node order.
    #[serde(default)]
    pub vehicles: Vec<DemoVehicle>,
}

/// One node as a vehicle at the end of the demo (docs/VEHICLES.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DemoVehicle {
    /// Where its state comes from (`none`: a depot server; `profile`: a simulated vehicle).
    pub source: String,
    /// Whether it takes work.
    pub serving: bool,
    /// Its state, in words.
    pub state: String,
    /// Tasks it served and got a receipt for.
    pub tasks: u64,
    /// Credits it earned.
    pub credits: u64,
    /// Energy it spent, millijoules.
    pub energy_mj: u64,
}

/// What the demo's batch task showed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchReport {
    /// Inputs in the batch.
    pub inputs: u16,
    /// Whether the batch was verified.
    pub verified: bool,
    /// Outputs whose label matches the test set's (the model's own accuracy: it gets a few
    /// of the test set wrong).
    pub correct: usize,
    /// Outputs byte for byte equal to a run of the same sample on this machine, outside the
    /// mesh.
    pub equal_to_local: usize,
    /// Outputs that check alone against the signed Merkle root with their path.
    pub checked_alone: usize,
    /// Workers whose root was accepted.
    pub verified_by: usize,
    /// Submit to verified, ms.
    pub latency_ms: u64,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// Runs the demo and returns its report.
pub async fn run(opts: DemoOptions) -> Result<DemoReport, Box<dyn std::error::Error + Send + Sync>> {
    let max_k = fleetmesh_protocol::limits::MAX_REDUNDANCY;
    if opts.redundancy == 0 || opts.redundancy > max_k {
        return Err(format!("--redundancy must be 1 to {max_k}").into());
    }
    // A node never works its own task: k workers need k other nodes.
    let needed = usize::from(opts.redundancy) + 1;
    if opts.nodes < needed {
        return Err(format!(
            "--nodes {} is too few for --redundancy {}: a node never works its own task, so k = {} \
             needs at least {needed} nodes",
            opts.nodes, opts.redundancy, opts.redundancy
        )
        .into());
    }
    if opts.tasks == 0 {
        return Err("--tasks must be at least 1".into());
    }
    let nodes_n = opts.nodes;
    let dir = tempfile::tempdir()?;
    let nodes = spawn_local_mesh(dir.path(), nodes_n, |i, cfg| {
        cfg.trace = opts.trace.as_ref().map(|d| d.join(format!("node-{i}.jsonl")));
        // Node 0 is a depot server; the others are parked vehicles (a simulated profile:
        // parked for half an hour or more, some charging, then a drive), each serving as its
        // owner's default policy allows.
        if i > 0 {
            cfg.vehicle.source = fleetmesh_node::config::VehicleSource::Profile;
            cfg.vehicle.profile = vec![
                fleetmesh_node::config::ProfileStep {
                    secs: 1_800 + 600 * u32::try_from(i).unwrap_or(0),
                    parked: true,
                    charging: i % 2 == 0,
                    soc_pct: Some(35.0 + 10.0 * (i % 6) as f32),
                    thermal_headroom_c: Some(25.0),
                },
                fleetmesh_node::config::ProfileStep {
                    secs: 1_200,
                    parked: false,
                    charging: false,
                    soc_pct: None,
                    thermal_headroom_c: None,
                },
            ];
        }
    })
    .await?;
    if opts.progress {
        eprintln!("started {nodes_n} nodes on loopback (TCP + QUIC); waiting for the mesh to form...");
    }
    wait_for_mesh(&nodes, (nodes_n - 1).min(3), Duration::from_secs(30)).await?;

    let samples = fleetmesh_node::digits::test_set();
    let start = Instant::now();
    let mut submitted = Vec::with_capacity(opts.tasks);
    for i in 0..opts.tasks {
        let requester = i % nodes_n;
        let sample = &samples[(i * 37) % samples.len()];
        let req = SubmitRequest {
            input: sample.to_input(),
            redundancy: Some(opts.redundancy),
            ..SubmitRequest::default()
        };
        let id = nodes[requester].client.submit(req).await?;
        submitted.push((requester, id, sample.label));
    }
    if opts.progress {
        eprintln!(
            "submitted {} tasks (k = {}) from {} requesters",
            opts.tasks,
            opts.redundancy,
            nodes_n.min(opts.tasks)
        );
    }

    let deadline = Instant::now() + opts.timeout;
    let mut views: Vec<TaskView> = Vec::new();
    loop {
        views.clear();
        for (r, id, _) in &submitted {
            if let Some(v) = nodes[*r].client.status(*id).await? {
                views.push(v);
            }
        }
        let done = views.iter().filter(|v| v.phase.is_terminal()).count();
        if opts.progress {
            let verified = views.iter().filter(|v| v.phase == Phase::Verified).count();
            eprintln!(
                "  {:>6.1}s  verified {verified}/{}  finished {done}/{}",
                start.elapsed().as_secs_f64(),
                opts.tasks,
                opts.tasks
            );
        }
        if done == submitted.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(if opts.progress { 500 } else { 50 })).await;
    }
    let wall_ms = start.elapsed().as_millis() as u64;

    let mut report = DemoReport {
        nodes: nodes_n,
        redundancy: opts.redundancy,
        tasks_submitted: submitted.len(),
        wall_ms,
        ..DemoReport::default()
    };
    let (mut e2e, mut bid, mut exec, mut verify, mut correct) = (vec![], vec![], vec![], vec![], 0usize);
    let mut bids = 0u64;
    for (v, (_, _, label)) in views.iter().zip(&submitted) {
        let t = &v.timings;
        bids += u64::from(v.bids_received);
        report.results_rejected += v.rejections.len();
        match v.phase {
            Phase::Verified => {
                report.tasks_verified += 1;
                if v.label == Some(u32::from(*label)) {
                    correct += 1;
                }
                e2e.push(t.finished_ms.saturating_sub(t.submitted_ms));
                bid.push(t.awarded_ms.saturating_sub(t.submitted_ms));
                exec.push(t.first_result_ms.saturating_sub(t.awarded_ms));
                verify.push(t.finished_ms.saturating_sub(t.first_result_ms));
            }
            Phase::Failed => {
                report.tasks_failed += 1;
                report.failures.push(v.failure.clone().unwrap_or_default());
            }
            _ => report.tasks_unfinished += 1,
        }
    }
    report.tasks_unfinished += submitted.len() - views.len();
    report.accuracy =
        if report.tasks_verified > 0 { correct as f64 / report.tasks_verified as f64 } else { 0.0 };
    report.latency_ms = Percentiles::of(&e2e);
    report.bid_phase_ms = Percentiles::of(&bid);
    report.execute_phase_ms = Percentiles::of(&exec);
    report.verify_phase_ms = Percentiles::of(&verify);
    report.bids_per_task = if submitted.is_empty() { 0.0 } else { bids as f64 / submitted.len() as f64 };
    for n in &nodes {
        report.served_per_node.push(n.client.stats().await?.jobs_executed);
    }
    report.tasks_on_offers = crate::bench::counter_sum(&nodes, "fleetmesh_tasks_awarded_on_offers_total");
    if opts.batch > 0 {
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(10));
        let local = fleetmesh_node::executor::ModelStore::open(&dir.path().join("local-check"))?;
        report.batch =
            Some(run_batch(&nodes, &samples, &local, opts.batch, opts.redundancy, remaining).await?);
        if opts.progress {
            eprintln!("ran one batch task of {} samples", opts.batch);
        }
    }
    // The receipts of the last results may still be on their way: a moment for them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in &nodes {
        let (stats, ledger) = (n.client.stats().await?, n.client.ledger().await?);
        report.vehicles.push(vehicle_line(&stats.vehicle, &ledger));
    }
    for n in nodes {
        n.stop().await;
    }
    Ok(report)
}

/// A node's vehicle state and ledger, for the report.
fn vehicle_line(v: &fleetmesh_api::VehicleView, l: &fleetmesh_api::LedgerView) -> DemoVehicle {
    let state = match &v.state {
        None => "state unknown".to_owned(),
        Some(_) if v.source == "none" => "depot server, on mains".to_owned(),
        Some(s) => {
            let mut words = vec![if s.parked { "parked" } else { "driving" }.to_owned()];
            words.push(if s.charging { "charging" } else { "on battery" }.to_owned());
            if let Some(soc) = s.soc_pct {
                words.push(format!("{soc:.0} %"));
            }
            if let Some(d) = v.depart_ms {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |x| u64::try_from(x.as_millis()).unwrap_or(u64::MAX));
                words.push(format!("leaves in {} min", d.saturating_sub(now) / 60_000));
            }
            words.join(", ")
        }
    };
    DemoVehicle {
        source: v.source.clone(),
        serving: v.serving,
        state,
        tasks: l.total.tasks,
        credits: l.total.credits,
        energy_mj: l.total.energy_mj,
    }
}

/// One task carrying `n` samples, from the first node: the report of what came back, each
/// output checked as a client holding only its own output, its path and the signed root would.
async fn run_batch(
    nodes: &[fleetmesh_node::Node],
    samples: &[fleetmesh_node::digits::Sample],
    local: &fleetmesh_node::executor::ModelStore,
    n: u16,
    k: u8,
    timeout: Duration,
) -> Result<BatchReport, Box<dyn std::error::Error + Send + Sync>> {
    use base64::Engine as _;
    let chosen: Vec<&fleetmesh_node::digits::Sample> =
        (0..usize::from(n)).map(|i| &samples[(i * 53 + 11) % samples.len()]).collect();
    let req = SubmitRequest {
        input: chosen.iter().flat_map(|s| s.to_input()).collect(),
        batch: Some(n),
        redundancy: Some(k),
        ..SubmitRequest::default()
    };
    let client = &nodes[0].client;
    let start = Instant::now();
    let id = client.submit(req).await?;
    let v = tokio::time::timeout(timeout, client.wait(id)).await??;
    let mut report = BatchReport {
        inputs: n,
        verified: v.phase == Phase::Verified,
        verified_by: v.verified_by.len(),
        latency_ms: start.elapsed().as_millis() as u64,
        failure: v.failure.clone(),
        ..BatchReport::default()
    };
    let root = v.output_digest.as_deref().and_then(|d| d.parse::<fleetmesh_crypto::OutputDigest>().ok());
    for (item, sample) in v.items.iter().zip(&chosen) {
        if item.label == Some(u32::from(sample.label)) {
            report.correct += 1;
        }
        let output =
            base64::engine::general_purpose::STANDARD.decode(&item.output_base64).unwrap_or_default();
        let model = fleetmesh_node::digits::model_id();
        if local.run(&model, &sample.to_input()).is_ok_and(|i| i.output == output) {
            report.equal_to_local += 1;
        }
        let path: Option<Vec<fleetmesh_crypto::Digest>> = item.path.iter().map(|d| d.parse().ok()).collect();
        if let (Some(root), Some(path)) = (&root, path) {
            if fleetmesh_protocol::batch::verify_item(&output, item.index as usize, n, &path, root) {
                report.checked_alone += 1;
            }
        }
    }
    Ok(report)
}

impl DemoReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let p = |x: &Percentiles| format!("{:>8.1} {:>8.1}", x.p50, x.p99);
        let _ = writeln!(
            s,
            "fleetmesh demo: {} nodes, {} tasks, redundancy {}",
            self.nodes, self.tasks_submitted, self.redundancy
        );
        let _ = writeln!(s, "  tasks submitted   {:>6}", self.tasks_submitted);
        let _ = writeln!(s, "  tasks verified    {:>6}", self.tasks_verified);
        let _ = writeln!(s, "  results rejected  {:>6}", self.results_rejected);
        let _ = writeln!(s, "  tasks failed      {:>6}", self.tasks_failed);
        let _ = writeln!(s, "  tasks unfinished  {:>6}", self.tasks_unfinished);
        let _ = writeln!(
            s,
            "  accuracy          {:>6.1} %  (labels of the held-out digits test set)",
            self.accuracy * 100.0
        );
        let _ = writeln!(
            s,
            "  awarded on offers {:>6}  (at once on the workers' standing offers: no announcement, no bids)",
            self.tasks_on_offers
        );
        let _ = writeln!(s, "  bids per task     {:>6.1}", self.bids_per_task);
        let _ = writeln!(s, "  latency (ms)           p50      p99");
        let _ = writeln!(s, "    submit to award {}", p(&self.bid_phase_ms));
        let _ = writeln!(s, "    execute         {}", p(&self.execute_phase_ms));
        let _ = writeln!(s, "    verify (k of k) {}", p(&self.verify_phase_ms));
        let _ = writeln!(s, "    end to end      {}", p(&self.latency_ms));
        let served: Vec<String> =
            self.served_per_node.iter().enumerate().map(|(i, n)| format!("node{i}={n}")).collect();
        let _ = writeln!(s, "  tasks served per node: {}", served.join(" "));
        let _ = writeln!(s, "  wall time {:.1} s", self.wall_ms as f64 / 1000.0);
        if let Some(b) = &self.batch {
            let state = if b.verified { "verified" } else { "NOT verified" };
            let _ = writeln!(
                s,
                "  batch of {n}: {state} in {} ms under one award ({} workers' roots agreed)\n    \
                 outputs checked alone against the signed root {}/{n}, equal to a local run {}/{n}, \
                 labels right {}/{n}",
                b.latency_ms,
                b.verified_by,
                b.checked_alone,
                b.equal_to_local,
                b.correct,
                n = b.inputs,
            );
            if let Some(f) = &b.failure {
                let _ = writeln!(s, "  batch failure: {f}");
            }
        }
        if !self.vehicles.is_empty() {
            let _ = writeln!(s, "  vehicles and their owners' ledgers:");
            for (i, v) in self.vehicles.iter().enumerate() {
                let serving = if v.serving { "serving" } else { "not serving" };
                let _ = writeln!(
                    s,
                    "    node{i}  {:<46} {:<11} {:>3} tasks {:>4} credits {:>9.3} mWh",
                    v.state,
                    serving,
                    v.tasks,
                    v.credits,
                    v.energy_mj as f64 / 3_600.0
                );
            }
        }
        for f in &self.failures {
            let _ = writeln!(s, "  failure: {f}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(Percentiles::of(&v), Percentiles { p50: 50.0, p99: 99.0 });
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
        assert_eq!(Percentiles::of(&[7]), Percentiles { p50: 7.0, p99: 7.0 });
    }
}
