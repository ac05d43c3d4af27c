//! `fleetmesh demo`: a mesh of N nodes in this process running M real digits tasks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use fleetmesh_cli::demo::{self, DemoOptions};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Nodes in the mesh.
    #[arg(long, default_value_t = 5)]
    pub(crate) nodes: usize,
    /// Tasks to run.
    #[arg(long, default_value_t = 20)]
    pub(crate) tasks: usize,
    /// Workers per task (k).
    #[arg(long, default_value_t = 2)]
    pub(crate) redundancy: u8,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout_secs: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write every node's gossip trace and task timeline into this folder.
    #[arg(long)]
    pub(crate) trace: Option<PathBuf>,
    /// Then run one batch task of this many samples under one award (0: none).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(0..=i64::from(fleetmesh_protocol::batch::MAX_BATCH)))]
    pub(crate) batch: u16,
}

pub(crate) async fn run(a: DemoArgs) -> Result<()> {
    let demo = demo::run(DemoOptions {
        nodes: a.nodes,
        tasks: a.tasks,
        redundancy: a.redundancy,
        timeout: Duration::from_secs(a.timeout_secs),
        progress: !a.json,
        trace: a.trace.clone(),
        batch: a.batch,
    });
    // Ctrl-C drops the demo: its nodes stop and its temporary data dir is deleted.
    let report = tokio::select! {
        r = demo => r.map_err(|e| anyhow::anyhow!("demo failed: {e}"))?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; the demo's nodes and data were removed"),
    };
    if a.json {
        say!("{}", serde_json::to_string(&report)?);
    } else {
        say_raw!("{}", report.table());
    }
    if let Some(dir) = a.trace {
        eprintln!("traces in {}; read them with: fleetmesh trace analyze {}", dir.display(), dir.display());
    }
    if report.tasks_verified + report.tasks_failed < report.tasks_submitted {
        bail!("{} tasks did not finish within {} s", report.tasks_unfinished, a.timeout_secs);
    }
    if report.tasks_failed > 0 {
        bail!("{} of {} tasks failed (reasons above)", report.tasks_failed, report.tasks_submitted);
    }
    let incomplete = |b: &&demo::BatchReport| {
        !b.verified || b.checked_alone < usize::from(b.inputs) || b.equal_to_local < usize::from(b.inputs)
    };
    if let Some(b) = report.batch.as_ref().filter(incomplete) {
        bail!(
            "the batch task was not verified with every output checked: {}",
            b.failure.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
