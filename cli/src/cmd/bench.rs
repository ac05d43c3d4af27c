//! `fleetmesh bench`: protocol overhead, throughput, memory and gossip spread on loopback.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fleetmesh_cli::bench::{self, Part};

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Parts to run: overhead, throughput, memory, gossip (default: all).
    pub(crate) parts: Vec<String>,
    /// Smaller runs (seconds instead of minutes).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Trace the overhead and throughput nodes into this folder (what tracing costs).
    #[arg(long)]
    pub(crate) trace: Option<PathBuf>,
    /// Nodes in the gossip part (default 200).
    #[arg(long)]
    pub(crate) gossip_nodes: Option<usize>,
}

impl BenchArgs {
    /// Whether a part that writes gossip traces runs.
    pub(crate) fn traces(&self) -> bool {
        self.trace.is_some()
            || self.parts.is_empty()
            || self.parts.iter().any(|p| p == "gossip" || p == "all")
    }
}

pub(crate) async fn run(a: BenchArgs) -> Result<()> {
    let parts = if a.parts.is_empty() || a.parts.iter().any(|p| p == "all") {
        vec![Part::Overhead, Part::Throughput, Part::Memory, Part::Gossip]
    } else {
        a.parts
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
    let opts = bench::BenchOptions { quick: a.quick, trace_dir: a.trace, gossip_nodes: a.gossip_nodes };
    let report = bench::run(&parts, &opts, &std::env::current_exe()?)
        .await
        .map_err(|e| anyhow::anyhow!("bench failed: {e}"))?;
    if a.json {
        say!("{}", serde_json::to_string(&report)?);
    } else {
        say_raw!("{}", report.table());
    }
    Ok(())
}
