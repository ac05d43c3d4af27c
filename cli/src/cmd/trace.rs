//! `fleetmesh trace analyze|verify`: read gossip traces and task timelines (docs/TRACES.md).

use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub(crate) enum TraceCommand {
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
        /// Gossip figures for this topic only (e.g. fleetmesh/tasks/2).
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

pub(crate) fn run(command: TraceCommand) -> Result<()> {
    use fleetmesh_trace::{analyze, plot, timeline};
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
                let gossip = fleetmesh_trace::gossip_path_of(path).filter(|g| g.exists());
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
