//! The `fleetmesh` command line: one file per command under `cmd/`; the HTTP server, the
//! demo and the benchmarks are in the library beside it (`fleetmesh_cli`).

use anyhow::Result;
use clap::{Parser, Subcommand};
use fleetmesh_node::NodeConfig;

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

mod cmd;

use cmd::query::ApiArgs;

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
        command: cmd::node::NodeCommand,
    },
    /// Submit a task to a running node and print the verified result.
    Submit(cmd::submit::SubmitArgs),
    /// Show a task's state.
    Status(cmd::query::StatusArgs),
    /// List the node's peers.
    Peers(ApiArgs),
    /// Exit 0 if the node's API answers (for container health checks).
    Health(ApiArgs),
    /// The owner's ledger: tasks served, credits earned and energy spent, by day.
    Ledger(cmd::query::LedgerArgs),
    /// Create the node key in the data dir (if missing) and print the node's ids.
    Keygen(cmd::keygen::KeygenArgs),
    /// As a fleet operator, certify a vehicle's node key (see docs/MARKET.md, operators).
    Certify(cmd::certify::CertifyArgs),
    /// Measure protocol overhead, throughput and memory on loopback (see docs/BENCHMARKS.md).
    Bench(cmd::bench::BenchArgs),
    /// Start a mesh of N nodes in this process and run M real digits tasks end to end.
    Demo(cmd::demo::DemoArgs),
    /// Simulate a fleet in virtual time: the real engines over a simulated network, with
    /// faults, from one seed (see docs/SIMULATION.md). Exit 1 if a property fails.
    Sim(cmd::sim::SimArgs),
    /// Read gossip traces and task timelines (see docs/TRACES.md).
    Trace {
        #[command(subcommand)]
        command: cmd::trace::TraceCommand,
    },
}

/// Whether this command writes gossip traces (and so needs the duplicate-catching layer).
fn traces(cli: &Cli) -> bool {
    match &cli.command {
        Command::Node { command: cmd::node::NodeCommand::Run(args) } => {
            args.trace.is_some()
                || args
                    .config
                    .as_ref()
                    .and_then(|p| NodeConfig::from_toml_file(p).ok())
                    .is_some_and(|c| c.trace.is_some())
        }
        Command::Demo(a) => a.trace.is_some(),
        Command::Bench(a) => a.traces(),
        _ => false,
    }
}

fn main() -> std::process::ExitCode {
    match main_inner() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The causes on one line; no backtrace for an ordinary error, whatever
            // RUST_BACKTRACE says (that is for panics).
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_inner() -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let cli = Cli::parse();
    // The simulator's vehicles and the bench's deliberately unservable tasks log every failed
    // task: keep their output to the report (RUST_LOG brings the logs back).
    let default = if matches!(cli.command, Command::Sim(_) | Command::Bench(_)) {
        "error"
    } else {
        "warn,fleetmesh_node=info"
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    if traces(&cli) {
        // The log filter is the fmt layer's own, so the trace layer still sees gossipsub's
        // duplicate events when the log shows only warnings.
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter());
        tracing_subscriber::registry().with(logs).with(fleetmesh_node::tracer::layer()).init();
    } else {
        // Not tracing: one global filter, so disabled log levels cost one comparison.
        tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Node { command: cmd::node::NodeCommand::Run(args) } => cmd::node::run(args).await,
        Command::Submit(a) => cmd::submit::run(a).await,
        Command::Status(a) => cmd::query::status(a).await,
        Command::Peers(api) => cmd::query::peers(api).await,
        Command::Health(api) => cmd::query::health(api).await,
        Command::Ledger(a) => cmd::query::ledger(a).await,
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Certify(a) => cmd::certify::run(a),
        Command::Bench(a) => cmd::bench::run(a).await,
        Command::Demo(a) => cmd::demo::run(a).await,
        Command::Sim(a) => cmd::sim::run(a),
        Command::Trace { command } => cmd::trace::run(command),
    }
}
