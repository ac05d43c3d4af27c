//! `fleetmesh bench`: what the mesh costs on top of the inference it carries.
//!
//! Every part runs real nodes in this process on loopback with real sockets:
//! * `overhead`: 5 nodes, k = 1, one task at a time. For each task the same input is also run
//!   directly on a local model store, in this run; overhead = end-to-end verified latency
//!   minus that direct inference time.
//! * `throughput`: 10 nodes, every node a requester, k = 1; the number of tasks in flight is
//!   raised step by step until verified tasks per second stop growing.
//! * `memory`: RSS of one idle node in its own process after it joined a small mesh, and of
//!   one process running a 200-node mesh (QUIC only, to stay within file-descriptor limits).
//!
//! * `gossip`: 200 nodes (QUIC only), every one traced (`docs/TRACES.md`); requesters announce
//!   tasks for a model no node holds, so the announcements spread and nothing else follows.
//!   The traces are then analyzed for the task topic: delivery ratio, delay from publish to
//!   each delivery, duplicates per message per node. Duplicates are counted only when the
//!   process has the trace layer installed (the `fleetmesh` binary does).

use std::time::{Duration, Instant};

use serde::Serialize;

use fleetmesh_api::{Percentiles, Phase, SubmitRequest};
use fleetmesh_node::local::{spawn_local_mesh, wait_for_mesh};

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Protocol overhead per task.
    Overhead,
    /// Verified tasks per second at saturation.
    Throughput,
    /// Resident memory.
    Memory,
    /// Announcement spread through a 200-node mesh.
    Gossip,
}

/// What `fleetmesh bench` measured; absent parts are omitted.
#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    /// How bid rounds closed in these runs.
    pub window_policy: String,
    /// Tasks in the overhead part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_tasks: Option<usize>,
    /// p50 of end-to-end minus direct inference, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_p50_ms: Option<f64>,
    /// p99 of end-to-end minus direct inference, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_p99_ms: Option<f64>,
    /// p50 end-to-end verified latency, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_p50_ms: Option<f64>,
    /// p50 direct inference time (the same inputs, same run), microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_p50_us: Option<f64>,
    /// p50 end-to-end / p50 direct.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_over_direct: Option<f64>,
    /// ed25519 operations (signatures made plus checked, every node of the mesh together) per
    /// verified task in the overhead part: k = 1 tasks one at a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig_ops_per_task: Option<f64>,
    /// Share of the overhead part's tasks awarded at once on standing offers (no announcement
    /// and no bid round; market v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer_award_share: Option<f64>,
    /// Of those, signatures made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig_signed_per_task: Option<f64>,
    /// Of those, signatures checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig_verified_per_task: Option<f64>,
    /// Messages per verified task in the overhead part, every node together, each counted once
    /// where it arrived: gossip messages handed to a node, task-protocol requests, and their
    /// answers (presence adverts and DHT traffic are not in it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_task: Option<f64>,
    /// Process CPU time (every node, user and system) per verified task in the overhead part,
    /// ms. Includes the inference and the bench's own direct run of each input (tens of µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms_per_task: Option<f64>,
    /// Verified tasks per second at the best in-flight level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_per_s: Option<f64>,
    /// p99 latency at that level, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_p99_ms: Option<f64>,
    /// Tasks in flight at that level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_in_flight: Option<usize>,
    /// Every level tried: (in flight, tasks/s, p99 ms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub throughput_levels: Vec<(usize, f64, f64)>,
    /// Inputs per batch task in the batch run of the throughput part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u16>,
    /// Verified inputs per second when the same lanes submit batch tasks (one award and one
    /// signed result per batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_inputs_per_s: Option<f64>,
    /// p99 submit-to-verified latency of a batch task in that run, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_p99_ms: Option<f64>,
    /// RSS of one idle node process after joining a 3-node mesh, MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_node_rss_mb: Option<f64>,
    /// Of that RSS, the node's own memory (anonymous pages: heap, stacks), MB. The rest is
    /// file-backed, mostly the executable's code pages: clean, shared by every process
    /// running the binary, and reclaimable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_node_anon_mb: Option<f64>,
    /// RSS of the process running the 200-node mesh, MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh200_rss_mb: Option<f64>,
    /// Nodes in that mesh (fewer with --quick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_nodes: Option<usize>,
    /// Nodes in the gossip mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_nodes: Option<usize>,
    /// Seconds the gossip mesh took to settle (CPU under half a core) before measuring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_settle_s: Option<f64>,
    /// Announcements published in the gossip part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_messages: Option<u64>,
    /// Deliveries over expected deliveries (every other subscribed node, each message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_delivery_ratio: Option<f64>,
    /// Publish-to-delivery delay p50, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_p50_ms: Option<f64>,
    /// Publish-to-delivery delay p99, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_p99_ms: Option<f64>,
    /// Duplicates received per message per node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_dups_per_node: Option<f64>,
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Knobs beyond the parts to run.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Shrink every part (for tests and smoke runs).
    pub quick: bool,
    /// Trace the overhead and throughput nodes into this folder (to measure what tracing
    /// costs); the gossip part always traces, into a temporary folder.
    pub trace_dir: Option<std::path::PathBuf>,
    /// Nodes in the gossip part (200, or 20 with `quick`, when absent).
    pub gossip_nodes: Option<usize>,
}

/// Runs the chosen parts. `node_exe` is the `fleetmesh` binary the memory part starts as a
/// separate idle node.
pub async fn run(
    parts: &[Part],
    opts: &BenchOptions,
    node_exe: &std::path::Path,
) -> BenchResult<BenchReport> {
    let (quick, trace_dir) = (opts.quick, opts.trace_dir.as_deref());
    let traced = |part: &'static str| {
        let dir = trace_dir.map(|d| d.join(part));
        move |i: usize, c: &mut fleetmesh_node::NodeConfig| {
            c.trace = dir.as_ref().map(|d| d.join(format!("node-{i}.jsonl")))
        }
    };
    let mut report = BenchReport {
        window_policy: "awarded at once on k neighbours' standing offers; otherwise early close once every \
                        connected peer advertising the model has bid, else 1 s window"
            .into(),
        ..BenchReport::default()
    };
    for part in parts {
        match part {
            Part::Overhead => overhead(&mut report, if quick { 10 } else { 200 }, traced("overhead")).await?,
            Part::Throughput => throughput(&mut report, quick, traced("throughput")).await?,
            Part::Memory => memory(&mut report, if quick { 20 } else { 200 }, node_exe).await?,
            Part::Gossip => {
                let n = opts.gossip_nodes.unwrap_or(if quick { 20 } else { 200 }).max(2);
                gossip(&mut report, n).await?
            }
        }
    }
    Ok(report)
}

async fn overhead(
    report: &mut BenchReport,
    tasks: usize,
    configure: impl FnMut(usize, &mut fleetmesh_node::NodeConfig),
) -> BenchResult<()> {
    let dir = tempfile::tempdir()?;
    let nodes = spawn_local_mesh(dir.path(), 5, configure).await?;
    wait_for_mesh(&nodes, 4, Duration::from_secs(30)).await?;
    let direct_store = fleetmesh_node::executor::ModelStore::open(&dir.path().join("direct"))?;
    let model = fleetmesh_node::digits::model_id();
    let samples = fleetmesh_node::digits::test_set();
    let (mut e2e, mut direct, mut over) = (Vec::new(), Vec::new(), Vec::new());
    // Let start-up traffic (DHT bootstrap, identify, first adverts) pass, so the counts below
    // are the tasks' own.
    settle(Duration::from_secs(10)).await;
    let (ops_before, cpu_before) = (fleetmesh_crypto::ops::signature_ops(), cpu_seconds());
    let messages_before = messages_received(&nodes);
    let offers_before = counter_sum(&nodes, "fleetmesh_tasks_awarded_on_offers_total");
    for i in 0..tasks {
        let input = samples[i % samples.len()].to_input();
        let t = Instant::now();
        direct_store.run(&model, &input)?;
        let direct_us = t.elapsed().as_micros() as u64;
        let client = &nodes[i % nodes.len()].client;
        let t = Instant::now();
        let id =
            client.submit(SubmitRequest { input, redundancy: Some(1), ..SubmitRequest::default() }).await?;
        let view = tokio::time::timeout(Duration::from_secs(60), client.wait(id)).await??;
        let e2e_us = t.elapsed().as_micros() as u64;
        if view.phase != Phase::Verified {
            return Err(format!("task {i} not verified: {:?}", view.failure).into());
        }
        e2e.push(e2e_us);
        direct.push(direct_us);
        over.push(e2e_us.saturating_sub(direct_us));
    }
    let ops = fleetmesh_crypto::ops::signature_ops().since(&ops_before);
    let per_task = |n: u64| n as f64 / tasks.max(1) as f64;
    report.sig_ops_per_task = Some(per_task(ops.total()));
    report.messages_per_task = Some(per_task(messages_received(&nodes).saturating_sub(messages_before)));
    report.sig_signed_per_task = Some(per_task(ops.signed));
    report.offer_award_share = Some(per_task(
        counter_sum(&nodes, "fleetmesh_tasks_awarded_on_offers_total").saturating_sub(offers_before),
    ));
    report.sig_verified_per_task = Some(per_task(ops.verified));
    report.cpu_ms_per_task =
        cpu_seconds().zip(cpu_before).map(|(after, before)| (after - before) * 1000.0 / tasks.max(1) as f64);
    let (e, d, o) = (Percentiles::of(&e2e), Percentiles::of(&direct), Percentiles::of(&over));
    report.overhead_tasks = Some(tasks);
    report.overhead_p50_ms = Some(o.p50 / 1000.0);
    report.overhead_p99_ms = Some(o.p99 / 1000.0);
    report.e2e_p50_ms = Some(e.p50 / 1000.0);
    report.direct_p50_us = Some(d.p50);
    report.e2e_over_direct = Some(e.p50 / d.p50.max(1.0));
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

async fn throughput(
    report: &mut BenchReport,
    quick: bool,
    mut configure: impl FnMut(usize, &mut fleetmesh_node::NodeConfig),
) -> BenchResult<()> {
    let dir = tempfile::tempdir()?;
    let nodes = spawn_local_mesh(dir.path(), 10, |i, c| {
        c.max_queue = 1024;
        configure(i, c);
    })
    .await?;
    wait_for_mesh(&nodes, 9, Duration::from_secs(30)).await?;
    let samples = std::sync::Arc::new(fleetmesh_node::digits::test_set());
    let window = Duration::from_secs(if quick { 2 } else { 6 });
    let levels: &[usize] = if quick { &[4, 16] } else { &[8, 32, 128, 256] };
    let mut best: Option<(usize, f64, f64)> = None;
    for &level in levels {
        let lat = saturate(&nodes, &samples, level, window, None).await;
        let tps = lat.len() as f64 / window.as_secs_f64();
        let p99 = Percentiles::of(&lat).p99;
        report.throughput_levels.push((level, tps, p99));
        if best.is_none_or(|(_, b, _)| tps > b) {
            best = Some((level, tps, p99));
        }
        // Let the next level start from an idle mesh.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Some((level, tps, p99)) = best {
        report.tasks_per_s = Some(tps);
        report.throughput_p99_ms = Some(p99);
        report.throughput_in_flight = Some(level);
        // The same load in batches: one award and one signed result for BATCH inputs (the
        // last level slept already, so this starts from an idle mesh too).
        let lat = saturate(&nodes, &samples, level, window, Some(BATCH)).await;
        report.batch_size = Some(BATCH);
        report.batch_inputs_per_s = Some(lat.len() as f64 * f64::from(BATCH) / window.as_secs_f64());
        report.batch_p99_ms = Some(Percentiles::of(&lat).p99);
    }
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

/// Inputs per task in the throughput part's batch run.
const BATCH: u16 = 16;

/// `level` lanes submit k = 1 tasks (of `batch` inputs each, if given) back to back for
/// `window`, spread over the nodes; the latencies of the tasks verified within the window.
async fn saturate(
    nodes: &[fleetmesh_node::Node],
    samples: &std::sync::Arc<Vec<fleetmesh_node::digits::Sample>>,
    level: usize,
    window: Duration,
    batch: Option<u16>,
) -> Vec<u64> {
    let end = Instant::now() + window;
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..level {
        let client = nodes[lane % nodes.len()].client.clone();
        let samples = samples.clone();
        lanes.spawn(async move {
            let mut lat = Vec::new();
            let mut i = lane;
            while Instant::now() < end {
                let mut input = Vec::new();
                for _ in 0..batch.unwrap_or(1) {
                    input.extend(samples[i % samples.len()].to_input());
                    i += level;
                }
                let t = Instant::now();
                let request = SubmitRequest { input, redundancy: Some(1), batch, ..SubmitRequest::default() };
                let Ok(id) = client.submit(request).await else {
                    break;
                };
                match tokio::time::timeout(Duration::from_secs(60), client.wait(id)).await {
                    Ok(Ok(v)) if v.phase == Phase::Verified && Instant::now() <= end => {
                        lat.push(t.elapsed().as_millis() as u64)
                    }
                    _ => {}
                }
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = lanes.join_next().await {
        lat.extend(r.unwrap_or_default());
    }
    lat
}

/// Gossip messages, task requests and answers every node of `nodes` received so far (their
/// `/metrics` counters).
fn messages_received(nodes: &[fleetmesh_node::Node]) -> u64 {
    let names = [
        "fleetmesh_gossip_received_total",
        "fleetmesh_requests_received_total",
        "fleetmesh_responses_received_total",
    ];
    names.iter().map(|n| counter_sum(nodes, n)).sum()
}

/// A counter of every node of `nodes`, summed (their `/metrics` text).
pub(crate) fn counter_sum(nodes: &[fleetmesh_node::Node], name: &str) -> u64 {
    nodes
        .iter()
        .map(|n| {
            n.client
                .metrics_text()
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        })
        .sum()
}

/// CPU time this process has used, seconds (utime + stime from /proc; Linux only).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Waits until the process uses less than half a core for two seconds in a row (the mesh's
/// start-up storm of DHT bootstrap queries, handshakes and identify exchanges is over), or
/// `max` passes. Returns the time waited.
async fn settle(max: Duration) -> Duration {
    let start = Instant::now();
    let mut quiet = 0;
    let mut last = cpu_seconds();
    while start.elapsed() < max && quiet < 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_seconds();
        match (last, now) {
            (Some(a), Some(b)) if b - a < 0.5 => quiet += 1,
            (Some(_), Some(_)) => quiet = 0,
            // No /proc: fall back to a fixed wait.
            _ => quiet += 1,
        }
        last = now;
    }
    start.elapsed()
}

fn rss_mb(pid: &str) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS:`, `RssAnon:`, ...), MB.
fn status_mb(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

async fn memory(report: &mut BenchReport, mesh_nodes: usize, exe: &std::path::Path) -> BenchResult<()> {
    // One idle node in its own process, joined to a 3-node mesh in this one.
    let dir = tempfile::tempdir()?;
    let small = spawn_local_mesh(dir.path(), 3, |_, _| {}).await?;
    let boot = small[0].client.listen_addrs().await?;
    let boot = format!("{}/p2p/{}", boot[0], small[0].client.peer_id());
    let mut child = std::process::Command::new(exe)
        .args(["node", "run", "--data-dir"])
        .arg(dir.path().join("idle"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", &boot, "--no-mdns", "--api", "off"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let joined = small[0].client.peers().await?.iter().filter(|p| p.connected).count() >= 3;
    report.idle_node_rss_mb = rss_mb(&child.id().to_string());
    report.idle_node_anon_mb = status_mb(&child.id().to_string(), "RssAnon:");
    let _ = child.kill();
    let _ = child.wait();
    if !joined {
        return Err("the idle node did not join the mesh".into());
    }
    for n in small {
        n.stop().await;
    }

    // A mesh of `mesh_nodes` in this process (QUIC only: one socket per node).
    let dir = tempfile::tempdir()?;
    let nodes = spawn_local_mesh(dir.path(), mesh_nodes, |_, c| {
        c.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()];
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The whole process: the mesh plus whatever earlier parts left allocated.
    report.mesh200_rss_mb = rss_mb("self");
    report.mesh_nodes = Some(mesh_nodes);
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

async fn gossip(report: &mut BenchReport, n: usize) -> BenchResult<()> {
    use fleetmesh_trace::analyze;
    let dir = tempfile::tempdir()?;
    let traces = dir.path().join("traces");
    let nodes = spawn_local_mesh(dir.path(), n, |i, c| {
        c.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()];
        c.trace = Some(traces.join(format!("node-{i}.jsonl")));
        // One presence advert at start, then none: 200 nodes in one process on 2 cores
        // cannot also carry 40 adverts a second (each copy verified twice on every node),
        // and this part measures announcements, not background chatter.
        c.presence_interval_ms = 600_000;
        // Likewise the DHT scan for missed tasks (a fallback, every 2 s in loopback meshes):
        // 200 nodes scanning keep both cores busy with Kademlia queries even when idle.
        c.dht_scan_interval_ms = 600_000;
        c.tasks.max_rounds = 1;
        // One announcement per task, to every node: selection would widen rounds nobody bids
        // on and announce again.
        c.tasks.selection = false;
    })
    .await?;
    // Every node connected to a few peers (their gossipsub peers).
    let deadline = Instant::now() + Duration::from_secs(120);
    for node in &nodes {
        while node.client.peers().await?.iter().filter(|p| p.connected).count() < 3.min(n - 1) {
            if Instant::now() > deadline {
                return Err("the gossip mesh did not form within 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Measure a settled mesh, not its start-up storm; then let gossipsub's heartbeats
    // (500 ms) fill the meshes.
    report.gossip_settle_s = Some(settle(Duration::from_secs(120)).await.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nobody_has = "ab".repeat(32);
    let messages = 20;
    for i in 0..messages {
        let requester = &nodes[(i * 7919) % n].client;
        let req = SubmitRequest {
            model: Some(nobody_has.clone()),
            input: vec![i as u8; 64],
            bid_window_ms: Some(500),
            ..SubmitRequest::default()
        };
        requester.submit(req).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in nodes {
        node.stop().await;
    }
    let inputs = analyze::load(std::slice::from_ref(&traces))?;
    let a = analyze::analyze(&inputs, Some(fleetmesh_trace::TASKS_TOPIC));
    report.gossip_nodes = Some(n);
    report.gossip_messages = Some(a.publishes);
    report.gossip_delivery_ratio = a.delivery_ratio;
    report.gossip_p50_ms = Some(a.delivery_delay_ms.p50);
    report.gossip_p99_ms = Some(a.delivery_delay_ms.p99);
    report.gossip_dups_per_node = Some(a.duplicates_per_message_per_node);
    Ok(())
}

impl BenchReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.2}"));
        let _ = writeln!(s, "fleetmesh bench  (window policy: {})", self.window_policy);
        if self.overhead_tasks.is_some() {
            let _ = writeln!(
                s,
                "  overhead  ({} tasks, 5 nodes, k=1, one at a time)",
                self.overhead_tasks.unwrap_or(0)
            );
            let _ = writeln!(s, "    overhead_p50_ms   {:>10}   (target <= 3)", f(self.overhead_p50_ms));
            let _ = writeln!(s, "    overhead_p99_ms   {:>10}   (target <= 15)", f(self.overhead_p99_ms));
            let _ = writeln!(s, "    e2e_p50_ms        {:>10}", f(self.e2e_p50_ms));
            let _ = writeln!(s, "    direct_p50_us     {:>10}", f(self.direct_p50_us));
            let _ = writeln!(s, "    e2e_over_direct   {:>10}", f(self.e2e_over_direct));
            let _ = writeln!(
                s,
                "    sig_ops_per_task  {:>10}   (target <= 10; signed {}, verified {})",
                f(self.sig_ops_per_task),
                f(self.sig_signed_per_task),
                f(self.sig_verified_per_task)
            );
            let _ = writeln!(s, "    messages_per_task {:>10}", f(self.messages_per_task));
            let _ = writeln!(
                s,
                "    offer_award_share {:>10}   (tasks awarded on standing offers)",
                f(self.offer_award_share)
            );
            let _ = writeln!(s, "    cpu_ms_per_task   {:>10}", f(self.cpu_ms_per_task));
        }
        if !self.throughput_levels.is_empty() {
            let _ = writeln!(s, "  throughput  (10 nodes, all requesters, k=1)");
            for (level, tps, p99) in &self.throughput_levels {
                let _ = writeln!(s, "    in flight {level:>4}: {tps:>8.1} tasks/s, p99 {p99:>8.0} ms");
            }
            let _ = writeln!(s, "    tasks_per_s       {:>10}   (target >= 2000)", f(self.tasks_per_s));
            if let Some(n) = self.batch_size {
                let _ = writeln!(
                    s,
                    "    batch_inputs_per_s {:>9}   (batches of {n}, same lanes; p99 {} ms)",
                    f(self.batch_inputs_per_s),
                    f(self.batch_p99_ms)
                );
            }
        }
        if self.idle_node_rss_mb.is_some() || self.mesh200_rss_mb.is_some() {
            let _ = writeln!(s, "  memory");
            let _ = writeln!(s, "    idle_node_rss_mb  {:>10}   (target < 20)", f(self.idle_node_rss_mb));
            let _ = writeln!(
                s,
                "    idle_node_anon_mb {:>10}   (of which the node's own; the rest is code)",
                f(self.idle_node_anon_mb)
            );
            let _ = writeln!(
                s,
                "    mesh{}_rss_mb    {:>10}",
                self.mesh_nodes.unwrap_or(0),
                f(self.mesh200_rss_mb)
            );
        }
        if let Some(n) = self.gossip_nodes {
            let _ = writeln!(
                s,
                "  gossip  ({n} nodes, {} announcements, after {:.0} s of settling)",
                self.gossip_messages.unwrap_or(0),
                self.gossip_settle_s.unwrap_or(0.0)
            );
            let _ =
                writeln!(s, "    gossip_delivery_ratio {:>6}   (target 1.00)", f(self.gossip_delivery_ratio));
            let _ = writeln!(s, "    gossip_p50_ms     {:>10}", f(self.gossip_p50_ms));
            let _ = writeln!(s, "    gossip_p99_ms     {:>10}   (target <= 100)", f(self.gossip_p99_ms));
            let _ = writeln!(s, "    gossip_dups_per_node {:>7}", f(self.gossip_dups_per_node));
        }
        s
    }
}
