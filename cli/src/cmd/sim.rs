//! `fleetmesh sim`: the deterministic fleet simulation (docs/SIMULATION.md).

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct SimArgs {
    /// Vehicles in the fleet.
    #[arg(long, default_value_t = 20)]
    pub(crate) vehicles: usize,
    /// Tasks to submit.
    #[arg(long, default_value_t = 100)]
    pub(crate) tasks: usize,
    /// The seed: the same seed replays the same run exactly.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Workers per task (k).
    #[arg(long, default_value_t = 2)]
    pub(crate) redundancy: u8,
    /// Vehicles that submit tasks (0: min(10, vehicles)).
    #[arg(long, default_value_t = 0)]
    pub(crate) requesters: usize,
    /// Turn on the fault mix CI runs: loss, partitions, crashes, skew, hostile peers, liars.
    #[arg(long)]
    pub(crate) faults: bool,
    /// Chance that a message is lost, in millionths (overrides --faults).
    #[arg(long)]
    pub(crate) loss_ppm: Option<u32>,
    /// Crash-and-restart episodes (overrides --faults).
    #[arg(long)]
    pub(crate) crashes: Option<u32>,
    /// Partition episodes (overrides --faults).
    #[arg(long)]
    pub(crate) partitions: Option<u32>,
    /// Hostile vehicles (overrides --faults).
    #[arg(long)]
    pub(crate) hostile: Option<usize>,
    /// Vehicles that compute wrong outputs (overrides --faults).
    #[arg(long)]
    pub(crate) liars: Option<usize>,
    /// Share of the fleet that is one attacker's sybil keys (0 to 0.9): fresh keys that join
    /// once half of the tasks were submitted and all return the same wrong output.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) sybil: f64,
    /// When the sybils join, virtual ms (default: once half of the tasks were submitted).
    #[arg(long)]
    pub(crate) sybil_join_ms: Option<u64>,
    /// Largest clock skew, ms (overrides --faults).
    #[arg(long)]
    pub(crate) skew_ms: Option<u64>,
    /// Milliseconds between two submissions.
    #[arg(long, default_value_t = 20)]
    pub(crate) submit_interval_ms: u64,
    /// Presence adverts on or off (default: on up to 100 vehicles).
    #[arg(long)]
    pub(crate) presence: Option<bool>,
    /// The lighter mode for very large fleets (docs/SIMULATION.md): announcements reach only
    /// the engines of the vehicles their round admits (the rest are counted, not processed).
    #[arg(long)]
    pub(crate) light: bool,
    /// Connections per vehicle (0: every pair); n links each vehicle to its n nearest on a
    /// ring, as a real node keeps a bounded set (docs/SIMULATION.md).
    #[arg(long, default_value_t = 0)]
    pub(crate) links: usize,
    /// Simulate a day of the fleet (docs/SIMULATION.md): vehicles park, charge and drive off
    /// on a commuter and delivery profile, and the tasks are spread over the day.
    #[arg(long)]
    pub(crate) day: bool,
    /// With --day: the day's length in virtual time, ms.
    #[arg(long, default_value_t = 240_000, requires = "day")]
    pub(crate) day_ms: u64,
    /// Write each vehicle's task timeline into this folder (read with `fleetmesh trace analyze`).
    #[arg(long)]
    pub(crate) trace: Option<PathBuf>,
    /// Print the report as one JSON object (the last line).
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn run(a: SimArgs) -> Result<()> {
    use fleetmesh_engine::sim::{self, SimConfig};
    let mut c = SimConfig {
        vehicles: a.vehicles,
        tasks: a.tasks,
        seed: a.seed,
        redundancy: a.redundancy,
        requesters: a.requesters,
        submit_interval_ms: a.submit_interval_ms,
        presence: a.presence,
        trace_dir: a.trace.clone(),
        light: a.light,
        links: a.links,
        ..SimConfig::default()
    };
    if a.day {
        if !(10_000..=3_600_000).contains(&a.day_ms) {
            bail!("--day-ms must be between 10000 and 3600000, not {}", a.day_ms);
        }
        c = c.a_day(a.day_ms);
    }
    if a.faults {
        c = c.with_faults();
    }
    c.loss_ppm = a.loss_ppm.unwrap_or(c.loss_ppm);
    c.crashes = a.crashes.unwrap_or(c.crashes);
    c.partitions = a.partitions.unwrap_or(c.partitions);
    c.hostile = a.hostile.unwrap_or(c.hostile);
    c.liars = a.liars.unwrap_or(c.liars);
    c.max_skew_ms = a.skew_ms.unwrap_or(c.max_skew_ms);
    if !(0.0..=0.9).contains(&a.sybil) {
        bail!("--sybil is a share of the fleet from 0 to 0.9, not {}", a.sybil);
    }
    c.sybils = (a.sybil * a.vehicles as f64).round() as usize;
    c.sybil_join_ms = a.sybil_join_ms;
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
