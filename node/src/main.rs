//! The `fleetmesh` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fleetmesh_node::demo::{self, DemoOptions};
use fleetmesh_node::{Node, NodeConfig};

#[derive(Parser)]
#[command(name = "fleetmesh", version, about = "A peer-to-peer compute mesh for parked vehicles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Submit a task to a running node and print the verified result.
    Submit(SubmitArgs),
    /// Show a task's state.
    Status {
        /// Task id (hex).
        task: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the node's peers.
    Peers {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Exit 0 if the node's API answers (for container health checks).
    Health {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create the node key in the data dir (if missing) and print the node's ids.
    Keygen {
        /// Data directory.
        #[arg(long, env = "FLEETMESH_DATA_DIR", default_value = "fleetmesh-data")]
        data_dir: PathBuf,
    },
    /// Measure protocol overhead, throughput and memory on loopback (see docs/BENCHMARKS.md).
    Bench {
        /// Parts to run: overhead, throughput, memory, gossip (default: all).
        parts: Vec<String>,
        /// Smaller runs (seconds instead of minutes).
        #[arg(long)]
        quick: bool,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Trace the overhead and throughput nodes into this folder (what tracing costs).
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Nodes in the gossip part (default 200).
        #[arg(long)]
        gossip_nodes: Option<usize>,
    },
    /// Start a mesh of N nodes in this process and run M real digits tasks end to end.
    Demo {
        /// Nodes in the mesh.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Tasks to run.
        #[arg(long, default_value_t = 20)]
        tasks: usize,
        /// Workers per task (k).
        #[arg(long, default_value_t = 2)]
        redundancy: u8,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Write every node's gossip trace and task timeline into this folder.
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Simulate a fleet in virtual time: the real engines over a simulated network, with
    /// faults, from one seed (see docs/SIMULATION.md). Exit 1 if a property fails.
    Sim(SimArgs),
    /// Read gossip traces and task timelines (see docs/TRACES.md).
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
}

#[derive(Args)]
struct SimArgs {
    /// Vehicles in the fleet.
    #[arg(long, default_value_t = 20)]
    vehicles: usize,
    /// Tasks to submit.
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// The seed: the same seed replays the same run exactly.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Workers per task (k).
    #[arg(long, default_value_t = 2)]
    redundancy: u8,
    /// Vehicles that submit tasks (0: min(10, vehicles)).
    #[arg(long, default_value_t = 0)]
    requesters: usize,
    /// Turn on the fault mix CI runs: loss, partitions, crashes, skew, hostile peers, liars.
    #[arg(long)]
    faults: bool,
    /// Chance that a message is lost, in millionths (overrides --faults).
    #[arg(long)]
    loss_ppm: Option<u32>,
    /// Crash-and-restart episodes (overrides --faults).
    #[arg(long)]
    crashes: Option<u32>,
    /// Partition episodes (overrides --faults).
    #[arg(long)]
    partitions: Option<u32>,
    /// Hostile vehicles (overrides --faults).
    #[arg(long)]
    hostile: Option<usize>,
    /// Vehicles that compute wrong outputs (overrides --faults).
    #[arg(long)]
    liars: Option<usize>,
    /// Largest clock skew, ms (overrides --faults).
    #[arg(long)]
    skew_ms: Option<u64>,
    /// Milliseconds between two submissions.
    #[arg(long, default_value_t = 20)]
    submit_interval_ms: u64,
    /// Presence adverts on or off (default: on up to 100 vehicles).
    #[arg(long)]
    presence: Option<bool>,
    /// Write each vehicle's task timeline into this folder (read with `fleetmesh trace analyze`).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print the report as one JSON object (the last line).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TraceCommand {
    /// Merge the traces of many nodes and print what the mesh did.
    Analyze {
        /// Trace files, or folders to search for them (e.g. a testnet run's traces/).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print one JSON document instead of the text report.
        #[arg(long)]
        json: bool,
        /// Also write SVG charts into this folder.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Gossip figures for this topic only (e.g. fleetmesh/tasks/1).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Check the hash chains and signatures of task timelines; exit 1 on tampering or gaps.
    Verify {
        /// Timeline files, or folders to search for them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run a node until Ctrl-C.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file; flags and env override it.
    #[arg(long, env = "FLEETMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (key, store, models).
    #[arg(long, env = "FLEETMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listen multiaddr (repeatable).
    #[arg(long, env = "FLEETMESH_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Bootstrap multiaddr ending in /p2p/<id> (repeatable; /dns4/ works).
    #[arg(long, env = "FLEETMESH_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Turn mDNS discovery off.
    #[arg(long, env = "FLEETMESH_NO_MDNS")]
    no_mdns: bool,
    /// Local API address (loopback by default); `off` disables it.
    #[arg(long, env = "FLEETMESH_API")]
    api: Option<String>,
    /// Tasks run at once.
    #[arg(long, env = "FLEETMESH_SLOTS")]
    slots: Option<u32>,
    /// Do not bid on other nodes' tasks.
    #[arg(long, env = "FLEETMESH_NO_SERVE")]
    no_serve: bool,
    /// The lowest price this node bids.
    #[arg(long, env = "FLEETMESH_PRICE_FLOOR")]
    price_floor: Option<u64>,
    /// Write a gossip trace here (go-libp2p-pubsub JSON tracer format) and the signed task
    /// timeline beside it (`x.jsonl` -> `x.timeline.jsonl`).
    #[arg(long, env = "FLEETMESH_TRACE")]
    trace: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ApiArgs {
    /// The node's API, e.g. http://127.0.0.1:7070
    #[arg(long, env = "FLEETMESH_API_URL", default_value = "http://127.0.0.1:7070")]
    api: String,
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Model id (hex); default: the embedded digits model.
    #[arg(long)]
    model: Option<String>,
    /// Input file (the model's input tensor as little-endian f32).
    #[arg(long, conflicts_with = "digits_sample")]
    input: Option<PathBuf>,
    /// Use sample N of the embedded digits test set as input.
    #[arg(long)]
    digits_sample: Option<usize>,
    /// Workers (k).
    #[arg(long)]
    redundancy: Option<u8>,
    /// Max seconds to wait for the result.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Print the task as JSON.
    #[arg(long)]
    json: bool,
}

/// Writes a line to stdout; a closed pipe (`fleetmesh peers | head`) ends the program
/// quietly instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// As `say!` without the newline.
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write;
        if write!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Whether this command writes gossip traces (and so needs the duplicate-catching layer).
fn traces(cli: &Cli) -> bool {
    match &cli.command {
        Command::Node { command: NodeCommand::Run(args) } => {
            args.trace.is_some()
                || args
                    .config
                    .as_ref()
                    .and_then(|p| NodeConfig::from_toml_file(p).ok())
                    .is_some_and(|c| c.trace.is_some())
        }
        Command::Demo { trace, .. } => trace.is_some(),
        Command::Bench { parts, trace, .. } => {
            trace.is_some() || parts.is_empty() || parts.iter().any(|p| p == "gossip" || p == "all")
        }
        _ => false,
    }
}

fn main() -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fleetmesh_node=info"))
    };
    if traces(&cli) {
        // The log filter is the fmt layer's own, so the trace layer still sees gossipsub's
        // duplicate events when the log shows only warnings.
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter());
        tracing_subscriber::registry().with(logs).with(fleetmesh_node::trace::layer()).init();
    } else {
        // Not tracing: one global filter, so disabled log levels cost one comparison.
        tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Node { command: NodeCommand::Run(args) } => run_node(args).await,
        Command::Submit(args) => submit(args).await,
        Command::Status { task, api } => {
            let v: serde_json::Value = get_json(&format!("{}/v1/tasks/{task}", api.api)).await?;
            say!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Peers { api } => {
            let peers: Vec<fleetmesh_node::PeerInfo> = get_json(&format!("{}/v1/peers", api.api)).await?;
            say!("{:<54} {:<9} {:<6} models", "peer id", "connected", "slots");
            for p in peers {
                let models: Vec<String> = p.models.iter().map(|m| m[..8.min(m.len())].to_owned()).collect();
                let slots = p.free_slots.map_or("-".into(), |s| s.to_string());
                say!("{:<54} {:<9} {:<6} {}", p.peer_id, p.connected, slots, models.join(","));
            }
            Ok(())
        }
        Command::Health { api } => {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
            let r =
                client.get(format!("{}/healthz", api.api)).send().await.context("node API unreachable")?;
            if !r.status().is_success() {
                bail!("node API answered {}", r.status());
            }
            say!("ok");
            Ok(())
        }
        Command::Keygen { data_dir } => {
            let path = data_dir.join("node.key");
            let (id, created) = fleetmesh_crypto::load_or_create_identity(&path)?;
            say!("{} {}", if created { "created" } else { "existing" }, path.display());
            say!("peer id    {}", fleetmesh_node::peer_id_string(&id.public()));
            say!("public key {}", id.public());
            Ok(())
        }
        Command::Bench { parts, quick, json, trace, gossip_nodes } => {
            use fleetmesh_node::bench::{self, Part};
            let parts = if parts.is_empty() || parts.iter().any(|p| p == "all") {
                vec![Part::Overhead, Part::Throughput, Part::Memory, Part::Gossip]
            } else {
                parts
                    .iter()
                    .map(|p| match p.as_str() {
                        "overhead" => Ok(Part::Overhead),
                        "throughput" => Ok(Part::Throughput),
                        "memory" => Ok(Part::Memory),
                        "gossip" => Ok(Part::Gossip),
                        other => Err(anyhow::anyhow!(
                            "unknown part {other:?}: overhead, throughput, memory, gossip or all"
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            let opts = bench::BenchOptions { quick, trace_dir: trace, gossip_nodes };
            let report = bench::run(&parts, &opts, &std::env::current_exe()?)
                .await
                .map_err(|e| anyhow::anyhow!("bench failed: {e}"))?;
            if json {
                say!("{}", serde_json::to_string(&report)?);
            } else {
                say_raw!("{}", report.table());
            }
            Ok(())
        }
        Command::Trace { command } => trace(command),
        Command::Sim(args) => sim(args),
        Command::Demo { nodes, tasks, redundancy, timeout_secs, json, trace } => {
            let report = demo::run(DemoOptions {
                nodes,
                tasks,
                redundancy,
                timeout: Duration::from_secs(timeout_secs),
                progress: !json,
                trace: trace.clone(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("demo failed: {e}"))?;
            if json {
                say!("{}", serde_json::to_string(&report)?);
            } else {
                say_raw!("{}", report.table());
            }
            if let Some(dir) = trace {
                eprintln!(
                    "traces in {}; read them with: fleetmesh trace analyze {}",
                    dir.display(),
                    dir.display()
                );
            }
            if report.tasks_verified + report.tasks_failed < report.tasks_submitted {
                bail!("{} tasks did not finish within {timeout_secs} s", report.tasks_unfinished);
            }
            Ok(())
        }
    }
}

fn sim(a: SimArgs) -> Result<()> {
    use fleetmesh_node::sim::{self, SimConfig};
    let mut c = SimConfig {
        vehicles: a.vehicles,
        tasks: a.tasks,
        seed: a.seed,
        redundancy: a.redundancy,
        requesters: a.requesters,
        submit_interval_ms: a.submit_interval_ms,
        presence: a.presence,
        trace_dir: a.trace.clone(),
        ..SimConfig::default()
    };
    if a.faults {
        c = c.with_faults();
    }
    c.loss_ppm = a.loss_ppm.unwrap_or(c.loss_ppm);
    c.crashes = a.crashes.unwrap_or(c.crashes);
    c.partitions = a.partitions.unwrap_or(c.partitions);
    c.hostile = a.hostile.unwrap_or(c.hostile);
    c.liars = a.liars.unwrap_or(c.liars);
    c.max_skew_ms = a.skew_ms.unwrap_or(c.max_skew_ms);
    let report = sim::run(c).map_err(|e| anyhow::anyhow!("sim: {e}"))?;
    if a.json {
        say!("{}", serde_json::to_string(&report)?);
    } else {
        say_raw!("{}", report.summary());
        if let Some(dir) = &a.trace {
            say!("timelines in {}; read them with: fleetmesh trace analyze {}", dir.display(), dir.display());
        }
    }
    if !report.violations.is_empty() {
        bail!("{} properties failed; replay with --seed {}", report.violations.len(), report.seed);
    }
    Ok(())
}

async fn run_node(args: RunArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => NodeConfig::from_toml_file(p)?,
        None => NodeConfig::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if !args.listen.is_empty() {
        cfg.listen = args.listen;
    }
    if !args.bootstrap.is_empty() {
        cfg.bootstrap = args.bootstrap;
    }
    if args.no_mdns {
        cfg.mdns = false;
    }
    if let Some(api) = args.api {
        cfg.api_addr = if api == "off" {
            None
        } else {
            Some(api.parse().with_context(|| format!("--api {api:?}: expected ip:port or off"))?)
        };
    }
    if let Some(s) = args.slots {
        cfg.slots = s;
    }
    if args.no_serve {
        cfg.serve = false;
    }
    if let Some(p) = args.price_floor {
        cfg.price_floor = p;
    }
    if let Some(t) = args.trace {
        cfg.trace = Some(t);
    }
    let node = Node::spawn(cfg).await?;
    let addrs = node.client.listen_addrs().await?;
    eprintln!("fleetmesh node {}", node.client.peer_id());
    for a in addrs {
        eprintln!("  listening on {a}/p2p/{}", node.client.peer_id());
    }
    if let Some(api) = node.api_addr {
        eprintln!("  API on http://{api}");
    }
    // Ctrl-C, or SIGTERM from `docker stop`: shut down cleanly (final trace head included).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    eprintln!("shutting down");
    node.stop().await;
    Ok(())
}

fn trace(command: TraceCommand) -> Result<()> {
    use fleetmesh_node::trace::{analyze, plot, timeline};
    match command {
        TraceCommand::Analyze { paths, json, plot: plot_dir, topic } => {
            let inputs = analyze::load(&paths)?;
            for (f, why) in &inputs.skipped {
                eprintln!("skipped {}: {why}", f.display());
            }
            let report = analyze::analyze(&inputs, topic.as_deref());
            if json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                say_raw!("{}", report.text());
            }
            if let Some(dir) = plot_dir {
                for f in plot::write_all(&report, &dir)? {
                    eprintln!("wrote {}", f.display());
                }
            }
            Ok(())
        }
        TraceCommand::Verify { paths } => {
            // Only the timelines are read here; each one's gossip file is counted below.
            let timelines = analyze::timeline_files(&paths)?;
            if timelines.is_empty() {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                bail!("no task timelines in {}", names.join(", "));
            }
            let mut bad = 0;
            for path in &timelines {
                let mut v = timeline::verify_file(path)?;
                let node = v.node.clone().unwrap_or_else(|| "?".into());
                // Hold the gossip trace beside this timeline against the count the node signed.
                let gossip = fleetmesh_node::trace::gossip_path_of(path).filter(|g| g.exists());
                if let (Some((written, _)), Some(g), true) = (v.gossip_counts, gossip, v.complete) {
                    let text = std::fs::read_to_string(&g)?;
                    let found = text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
                    if found != written {
                        v.problems.push(format!(
                            "the node signed {written} gossip events written, {} holds {found}",
                            g.display()
                        ));
                    }
                }
                let status = if v.ok() {
                    "OK".to_owned()
                } else if v.problems.is_empty() {
                    format!(
                        "INCOMPLETE: no final signed head ({} records after the last head)",
                        v.unsigned_tail
                    )
                } else {
                    "TAMPERED OR DAMAGED".to_owned()
                };
                say!(
                    "{}: node {node}: {} records, {} signed heads: {status}",
                    path.display(),
                    v.records,
                    v.signed_heads
                );
                if v.dropped_by_node > 0 {
                    say!(
                        "  the node recorded a gap of {} events (its trace buffer was full)",
                        v.dropped_by_node
                    );
                }
                for p in &v.problems {
                    say!("  {p}");
                }
                if !v.ok() || v.dropped_by_node > 0 {
                    bad += 1;
                }
            }
            if bad > 0 {
                bail!("{bad} of {} timelines did not verify", timelines.len());
            }
            Ok(())
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T> {
    let r = reqwest::get(url).await.with_context(|| format!("cannot reach {url}; is the node running?"))?;
    let status = r.status();
    let body = r.text().await?;
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("unexpected answer from {url}"))
}

async fn submit(args: SubmitArgs) -> Result<()> {
    use base64::Engine;
    let mut body = serde_json::json!({ "model": args.model, "redundancy": args.redundancy });
    match (&args.input, args.digits_sample) {
        (Some(path), _) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            body["input_base64"] = base64::engine::general_purpose::STANDARD.encode(bytes).into();
        }
        (None, Some(i)) => body["digits_sample"] = i.into(),
        (None, None) => bail!("give --input FILE or --digits-sample N"),
    }
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/tasks", args.api.api))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {}; is the node running?", args.api.api))?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("submit refused ({status}): {text}");
    }
    let sub: fleetmesh_node::api::Submitted = serde_json::from_str(&text)?;
    eprintln!("submitted task {}", sub.task_id);
    let url =
        format!("{}/v1/tasks/{}/wait?timeout_ms={}", args.api.api, sub.task_id, args.timeout_secs * 1000);
    let view: fleetmesh_node::TaskView = get_json(&url).await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        say!("task     {}", view.task_id);
        say!("phase    {:?}", view.phase);
        if let Some(l) = view.label {
            let expected = sub.expected_label.map(|e| format!(" (expected {e})")).unwrap_or_default();
            say!("label    {l}{expected}");
        }
        if let Some(d) = &view.output_digest {
            say!("output   blake3 {d}");
        }
        for w in &view.workers {
            say!("worker   {} {}", w.peer_id, w.status);
        }
        if let Some(f) = &view.failure {
            say!("failure  {f}");
        }
    }
    match view.phase {
        fleetmesh_node::Phase::Verified => Ok(()),
        fleetmesh_node::Phase::Failed => bail!("task failed"),
        _ => bail!("task not finished after {} s", args.timeout_secs),
    }
}
