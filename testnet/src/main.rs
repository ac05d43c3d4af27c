//! `fleetmesh-scenario`: drives a running fleetmesh testnet from outside.
//!
//! It reads the topology that `testnet/run` wrote (containers, networks, the requesters'
//! published API addresses), submits tasks to the requesters at a chosen rate, injects the
//! scenario's faults with the docker CLI while they run, waits until every task is verified
//! or failed, and prints a table and, as its last line, one JSON object. It exits non-zero if
//! any task was lost (accepted by a requester but neither verified nor failed with a reason)
//! or any task's result was accepted twice.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fleetmesh_api::client::ApiClient;
use fleetmesh_api::{Percentiles, Phase, SubmitBody, SubmitRequest, TaskView};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Run a fault scenario against a running fleetmesh testnet")]
struct Args {
    /// smoke, churn, partition, requester-restart, freeze or commute.
    scenario: String,
    /// The topology file written by testnet/run.
    #[arg(long)]
    topology: PathBuf,
    /// Tasks to submit (default: the scenario's).
    #[arg(long)]
    tasks: Option<usize>,
    /// Tasks per second (default: the scenario's).
    #[arg(long)]
    rate: Option<f64>,
    /// Workers per task.
    #[arg(long, default_value_t = 2)]
    redundancy: u8,
    /// Seconds to wait for the last task after the last submission.
    #[arg(long, default_value_t = 240)]
    timeout_secs: u64,
}

/// One container of the testnet.
#[derive(Debug, Clone, Deserialize)]
struct Member {
    container: String,
    /// Which side of a partition it is on ("a" or "b").
    side: String,
    /// The requester's API, published on loopback.
    #[serde(default)]
    api: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Topology {
    /// The two networks every node is attached to (a partition detaches each side from one).
    networks: [String; 2],
    /// The bearer token of the requesters' APIs (bound beyond loopback inside the containers).
    #[serde(default)]
    token: Option<String>,
    boots: Vec<Member>,
    requesters: Vec<Member>,
    workers: Vec<Member>,
}

#[derive(Debug, Clone)]
enum Fault {
    Kill(Vec<String>),
    Start(Vec<String>),
    Pause(Vec<String>),
    Unpause(Vec<String>),
    Split,
    Heal,
    Restart(String),
    /// One more vehicle starts driving: the first parked one seen running a job (within
    /// 15 s; else the first parked one), so it leaves mid-task and hands the job back.
    Drive,
    /// The n-th vehicle that drove off (from 0) comes back, parked and charging.
    Return(usize),
}

struct Plan {
    tasks: usize,
    rate: f64,
    /// Inputs per task: a batch of digits samples (1: one sample).
    batch: usize,
    /// (seconds after the first submission, fault)
    faults: Vec<(f64, Fault)>,
}

fn plan(name: &str, topo: &Topology) -> Result<Plan> {
    let workers: Vec<String> = topo.workers.iter().map(|w| w.container.clone()).collect();
    Ok(match name {
        "smoke" => Plan { tasks: 30, rate: 10.0, batch: 1, faults: vec![] },
        "commute" => {
            // A morning rush: 60 % of the vehicles drive off within two minutes, each while it
            // runs a task; some come back, charging. Batches of 64 samples keep them busy long
            // enough (a run takes tens of ms) that each is caught holding one.
            let n = ((workers.len() as f64 * 0.6).round() as usize).clamp(1, workers.len());
            let mut faults: Vec<(f64, Fault)> = (0..n)
                .map(|i| (5.0 + 90.0 * i as f64 / n.max(2).saturating_sub(1) as f64, Fault::Drive))
                .collect();
            faults.push((80.0, Fault::Return(0)));
            if n > 2 {
                faults.push((110.0, Fault::Return(1)));
            }
            faults.sort_by(|a, b| a.0.total_cmp(&b.0));
            Plan { tasks: 240, rate: 2.0, batch: 64, faults }
        }
        "churn" => {
            // 30 % of the serving nodes (boot nodes serve too; at least one) drive away
            // mid-run and come back later. Only vehicles are killed: the boot nodes stay.
            let serving = workers.len() + topo.boots.len();
            let n = ((serving as f64 * 0.3).round() as usize).clamp(1, workers.len());
            let gone: Vec<String> = workers.iter().take(n).cloned().collect();
            Plan {
                tasks: 200,
                rate: 20.0,
                batch: 1,
                faults: vec![(3.0, Fault::Kill(gone.clone())), (8.0, Fault::Start(gone))],
            }
        }
        "freeze" => {
            // A vehicle in a tunnel: frozen past its result deadline, then back.
            let frozen: Vec<String> = workers.iter().take(1).cloned().collect();
            Plan {
                tasks: 40,
                rate: 10.0,
                batch: 1,
                faults: vec![(1.0, Fault::Pause(frozen.clone())), (14.0, Fault::Unpause(frozen))],
            }
        }
        "partition" => {
            Plan { tasks: 60, rate: 6.0, batch: 1, faults: vec![(3.0, Fault::Split), (8.0, Fault::Heal)] }
        }
        "requester-restart" => {
            let r = topo.requesters.first().context("no requester in the topology")?.container.clone();
            Plan { tasks: 60, rate: 10.0, batch: 1, faults: vec![(2.5, Fault::Restart(r))] }
        }
        other => {
            bail!("unknown scenario {other:?}: smoke, churn, partition, requester-restart, freeze or commute")
        }
    })
}

/// Runs one docker command, bounded: a daemon that stops answering fails the fault with a
/// clear message instead of hanging the scenario.
fn docker(args: &[&str]) -> Result<()> {
    let out = Command::new("timeout")
        .args(["--kill-after=5", "60", "docker"])
        .args(args)
        .output()
        .context("running docker")?;
    if matches!(out.status.code(), Some(124 | 137)) {
        bail!(
            "docker {} did not answer within 60 s: the Docker daemon has stopped answering",
            args.join(" ")
        );
    }
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Applies a fault; returns what was done, for the event log.
fn apply(fault: &Fault, topo: &Topology) -> Result<String> {
    let each = |verb: &str, cs: &[String]| -> Result<String> {
        for c in cs {
            docker(&[verb, c])?;
        }
        Ok(format!("{verb} {}", cs.join(" ")))
    };
    match fault {
        Fault::Kill(cs) => each("kill", cs),
        Fault::Start(cs) => each("start", cs),
        Fault::Pause(cs) => each("pause", cs),
        Fault::Unpause(cs) => each("unpause", cs),
        Fault::Restart(c) => {
            // SIGKILL, no grace: the requester must resume from what it persisted.
            docker(&["restart", "-t", "0", c])?;
            Ok(format!("restart -t 0 {c}"))
        }
        Fault::Drive | Fault::Return(_) => bail!("a vehicle's state goes over its API, not docker"),
        Fault::Split | Fault::Heal => {
            let [net_a, net_b] = &topo.networks;
            let all = topo.boots.iter().chain(&topo.requesters).chain(&topo.workers);
            for m in all {
                // Side a keeps only network a, side b only network b: two islands.
                let other = if m.side == "a" { net_b } else { net_a };
                if matches!(fault, Fault::Split) {
                    docker(&["network", "disconnect", "-f", other, &m.container])?;
                } else {
                    docker(&["network", "connect", other, &m.container])?;
                }
            }
            Ok(if matches!(fault, Fault::Split) {
                "partition: side a | side b".into()
            } else {
                "partition healed".into()
            })
        }
    }
}

#[derive(Debug)]
struct Tracked {
    requester: usize,
    task_id: String,
    /// The expected label of each input (one for a single sample).
    labels: Vec<u8>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    scenario: String,
    submitted: usize,
    verified: usize,
    failed: usize,
    lost: usize,
    duplicates_accepted: usize,
    accuracy: f64,
    latency_ms: Percentiles,
    submit_retries: usize,
    failure_reasons: BTreeMap<String, usize>,
    events: Vec<String>,
    wall_s: f64,
    /// Awards handed back with a signed release (commute: vehicles that drove off).
    released: usize,
    /// From a release to another worker taking the task (acknowledging its award), ms (a
    /// release after which the task needed no other worker, because the workers still on it
    /// verified it, has none).
    reaward_ms: Percentiles,
    /// The same, p99 (the figure).
    reaward_p99_ms: f64,
}

async fn submit(api: &ApiClient, sample: usize, batch: usize, k: u8) -> Result<(String, Vec<u8>)> {
    let params = SubmitRequest { redundancy: Some(k), ..SubmitRequest::default() };
    let body = if batch <= 1 {
        SubmitBody { params, digits_sample: Some(sample), ..SubmitBody::default() }
    } else {
        let samples = (0..batch).map(|j| (sample + j * 7) % 450).collect();
        SubmitBody { params, digits_samples: Some(samples), ..SubmitBody::default() }
    };
    let s = api.submit(&body).await?;
    Ok((s.task_id, if batch <= 1 { s.expected_label.into_iter().collect() } else { s.expected_labels }))
}

/// A parked vehicle on battery, as its integration reports it.
fn parked(charging: bool) -> fleetmesh_api::VehicleState {
    fleetmesh_api::VehicleState { parked: true, charging, soc_pct: Some(70.0), ..Default::default() }
}

/// Plays the vehicles' integrations. `Drive` watches the parked vehicles (up to 15 s) and
/// reports the first one seen running a job as driving (the first parked one if none is);
/// `Return` reports the n-th vehicle that drove off parked and charging. `driven` is the
/// order they drove off in.
async fn vehicle_fault(
    fault: &Fault,
    workers: &[(String, Option<ApiClient>)],
    driven: &mut Vec<usize>,
) -> Result<String> {
    let api = |i: usize| -> Result<&ApiClient> {
        workers.get(i).and_then(|w| w.1.as_ref()).context("the vehicle has no API in the topology")
    };
    match fault {
        Fault::Drive => {
            let parked_now: Vec<usize> = (0..workers.len()).filter(|i| !driven.contains(i)).collect();
            let first = *parked_now.first().context("every vehicle is already driving")?;
            let until = Instant::now() + Duration::from_secs(15);
            let mut busy = None;
            'watch: while Instant::now() < until {
                for &i in &parked_now {
                    if api(i)?.stats().await.is_ok_and(|s| s.jobs_running > 0) {
                        busy = Some(i);
                        break 'watch;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let i = busy.unwrap_or(first);
            api(i)?.set_vehicle(&fleetmesh_api::VehicleState { parked: false, ..parked(false) }).await?;
            driven.push(i);
            Ok(format!("drive {}{}", workers[i].0, if busy.is_some() { " (mid-task)" } else { "" }))
        }
        Fault::Return(n) => {
            let i = *driven.get(*n).context("that vehicle never drove off")?;
            api(i)?.set_vehicle(&parked(true)).await?;
            Ok(format!("park, charging {}", workers[i].0))
        }
        _ => bail!("not a vehicle fault"),
    }
}

async fn status(api: &ApiClient, id: &str) -> Result<Option<TaskView>> {
    Ok(api.status(id).await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let topo: Topology = serde_json::from_str(
        &std::fs::read_to_string(&args.topology)
            .with_context(|| format!("reading {}", args.topology.display()))?,
    )?;
    let mut plan = plan(&args.scenario, &topo)?;
    plan.tasks = args.tasks.unwrap_or(plan.tasks);
    plan.rate = args.rate.unwrap_or(plan.rate).max(0.1);
    let apis: Vec<String> = topo.requesters.iter().filter_map(|r| r.api.clone()).collect();
    if apis.is_empty() {
        bail!("the topology has no requester API");
    }
    let clients: Vec<ApiClient> =
        apis.iter().map(|a| ApiClient::new(a.clone(), Duration::from_secs(5))).collect::<Result<_, _>>()?;
    let clients: Vec<ApiClient> = clients.into_iter().map(|c| c.with_token(topo.token.clone())).collect();
    // The vehicles' own APIs, where the topology publishes them (commute).
    let vehicles: Vec<(String, Option<ApiClient>)> = topo
        .workers
        .iter()
        .map(|w| {
            let api = w.api.as_ref().and_then(|a| ApiClient::new(a.clone(), Duration::from_secs(5)).ok());
            (w.container.clone(), api.map(|c| c.with_token(topo.token.clone())))
        })
        .collect();
    if args.scenario == "commute" {
        // Every vehicle parks (on battery) before the rush; they report their state on the
        // API, and take no work until they have.
        for (name, api) in &vehicles {
            let api = api.as_ref().with_context(|| format!("{name} has no API in the topology"))?;
            api.set_vehicle(&parked(false)).await.with_context(|| format!("parking {name}"))?;
        }
        // Their next adverts carry their standing offers again.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let start = Instant::now();
    let mut report = Report { scenario: args.scenario.clone(), ..Report::default() };

    // Faults run on their own schedule while tasks are submitted.
    let faults = plan.faults.clone();
    let topo = std::sync::Arc::new(topo);
    let topo2 = topo.clone();
    let vehicles2 = vehicles.clone();
    let fault_task = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut driven = Vec::new();
        for (at, fault) in faults {
            tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
            let t2 = topo2.clone();
            let f2 = fault.clone();
            let r = if matches!(fault, Fault::Drive | Fault::Return(_)) {
                Ok(vehicle_fault(&fault, &vehicles2, &mut driven).await)
            } else {
                tokio::task::spawn_blocking(move || apply(&f2, &t2)).await
            };
            let line = match r {
                Ok(Ok(what)) => format!("{:>6.1}s {what}", start.elapsed().as_secs_f64()),
                Ok(Err(e)) => format!("{:>6.1}s FAILED {fault:?}: {e}", start.elapsed().as_secs_f64()),
                Err(e) => format!("{:>6.1}s FAILED {fault:?}: {e}", start.elapsed().as_secs_f64()),
            };
            eprintln!("  fault {line}");
            events.push(line);
        }
        events
    });

    let mut tracked: Vec<Tracked> = Vec::with_capacity(plan.tasks);
    for i in 0..plan.tasks {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / plan.rate)).into()).await;
        let requester = i % apis.len();
        // A requester that is restarting is retried for up to a minute; nothing is dropped.
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            match submit(&clients[requester], (i * 37) % 450, plan.batch, args.redundancy).await {
                Ok((task_id, labels)) => {
                    tracked.push(Tracked { requester, task_id, labels });
                    break;
                }
                Err(e) if Instant::now() < give_up => {
                    report.submit_retries += 1;
                    if report.submit_retries % 10 == 1 {
                        eprintln!("  submit to {} failed ({e}); retrying", apis[requester]);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => bail!("requester {} refused task {i} for a minute: {e}", apis[requester]),
            }
        }
    }
    eprintln!("submitted {} tasks in {:.1} s", tracked.len(), start.elapsed().as_secs_f64());
    report.events = fault_task.await.unwrap_or_default();

    // Wait until every task is verified or failed (or the timeout).
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut views: HashMap<String, TaskView> = HashMap::new();
    let mut last_print = Instant::now();
    loop {
        for t in &tracked {
            if views.get(&t.task_id).is_some_and(|v| v.phase.is_terminal()) {
                continue;
            }
            match status(&clients[t.requester], &t.task_id).await {
                Ok(Some(v)) => {
                    views.insert(t.task_id.clone(), v);
                }
                Ok(None) => {
                    views.remove(&t.task_id);
                }
                Err(_) => {} // requester unreachable right now: ask again next round
            }
        }
        let done =
            tracked.iter().filter(|t| views.get(&t.task_id).is_some_and(|v| v.phase.is_terminal())).count();
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("  {:>6.1}s finished {done}/{}", start.elapsed().as_secs_f64(), tracked.len());
            last_print = Instant::now();
        }
        if done == tracked.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    report.submitted = tracked.len();
    let mut latencies = Vec::new();
    let (mut correct, mut checked) = (0usize, 0usize);
    let mut reawards = Vec::new();
    for t in &tracked {
        match views.get(&t.task_id) {
            Some(v) if v.phase == Phase::Verified => {
                report.verified += 1;
                let mut by = v.verified_by.clone();
                by.sort();
                by.dedup();
                // A worker counted twice. (More agreeing workers than k is no duplicate: a
                // requester checks unknown workers with another one, docs/MARKET.md.)
                if by.len() != v.verified_by.len() {
                    report.duplicates_accepted += 1;
                }
                // Each input's label against the test set's (a batch's item by item).
                let got: Vec<Option<u32>> = if v.items.is_empty() {
                    vec![v.label]
                } else {
                    v.items.iter().map(|x| x.label).collect()
                };
                checked += t.labels.len();
                correct +=
                    got.iter().zip(&t.labels).filter(|(g, want)| **g == Some(u32::from(**want))).count();
                latencies.push(v.timings.finished_ms.saturating_sub(v.timings.submitted_ms));
            }
            _ => {}
        }
        // Releases, and how soon the requester awarded the task again.
        if let Some(v) = views.get(&t.task_id) {
            for (i, w) in v.workers.iter().enumerate() {
                let Some(at) = w.released_ms else { continue };
                report.released += 1;
                // Replaced once another worker took the task (acknowledged its award).
                if let Some(next) =
                    v.workers[i + 1..].iter().filter_map(|x| x.acked_ms).filter(|a| *a >= at).min()
                {
                    reawards.push(next - at);
                }
            }
        }
        match views.get(&t.task_id) {
            Some(v) if v.phase == Phase::Verified => {}
            Some(v) if v.phase == Phase::Failed && v.failure.is_some() => {
                report.failed += 1;
                *report.failure_reasons.entry(v.failure.clone().unwrap_or_default()).or_default() += 1;
            }
            _ => report.lost += 1,
        }
    }
    report.accuracy = if checked > 0 { correct as f64 / checked as f64 } else { 0.0 };
    report.reaward_ms = Percentiles::of(&reawards);
    report.reaward_p99_ms = report.reaward_ms.p99;
    report.latency_ms = Percentiles::of(&latencies);
    report.wall_s = start.elapsed().as_secs_f64();

    println!("scenario {}", report.scenario);
    println!("  submitted            {:>6}", report.submitted);
    println!("  verified             {:>6}", report.verified);
    println!("  failed (with reason) {:>6}", report.failed);
    println!("  lost                 {:>6}", report.lost);
    println!("  duplicates accepted  {:>6}", report.duplicates_accepted);
    println!("  accuracy             {:>6.1} %", report.accuracy * 100.0);
    println!("  latency p50 / p99    {:>6.0} / {:.0} ms", report.latency_ms.p50, report.latency_ms.p99);
    println!("  submit retries       {:>6}", report.submit_retries);
    if report.released > 0 || args.scenario == "commute" {
        println!(
            "  released             {:>6}  (re-awarded p50 / p99 {:.0} / {:.0} ms after the release)",
            report.released, report.reaward_ms.p50, report.reaward_ms.p99
        );
    }
    for (reason, n) in &report.failure_reasons {
        println!("  failure x{n}: {reason}");
    }
    for e in &report.events {
        println!("  event {e}");
    }
    println!("{}", serde_json::to_string(&report)?);
    if report.lost > 0 || report.duplicates_accepted > 0 {
        bail!("{} tasks lost, {} accepted twice", report.lost, report.duplicates_accepted);
    }
    if args.scenario == "commute"
        && (report.released == 0 || !report.events.iter().any(|e| e.contains("mid-task")))
    {
        bail!("no vehicle drove off holding a task: the scenario did not test a release");
    }
    if report.events.iter().any(|e| e.contains("FAILED")) {
        bail!("a fault could not be injected; the scenario did not test what it claims");
    }
    Ok(())
}
