//! The vehicle's state source: what the node hands the engine as
//! [`fleetmesh_engine::Input::Vehicle`].
//!
//! The rule (state and owner policy to availability) is the engine's, so it is the same in
//! the simulator; this module only reads the state where `[vehicle] source` says: a JSON file
//! a vehicle integration writes, the local API (`PUT /v1/vehicle`), or a simulated profile.
//! It fails safe: a state that cannot be read, or one older than `stale_after_ms`, is
//! reported as unknown, and the engine takes no work until the source answers again (a
//! broken integration must not leave a vehicle that drove off serving, or drain a battery).

use std::path::Path;

use fleetmesh_api::{VehicleRefusal, VehicleView};
use fleetmesh_engine::vehicle::{Availability, Profile, VehicleState};

use crate::config::{VehicleConfig, VehicleSource};

/// The largest state file read, bytes: a state is a few fields.
pub const MAX_STATE_FILE_BYTES: u64 = 64 * 1024;

/// Reads the configured source and says when what it reports changes.
pub(crate) struct VehicleFeed {
    config: VehicleConfig,
    /// When the node started, Unix ms (a profile repeats from here).
    started_ms: u64,
    /// Next read, Unix ms.
    next_read_ms: u64,
    /// What the engine was last told.
    last: Option<Result<VehicleState, String>>,
    /// With `source = "api"`: the last state sent and when (Unix ms).
    api: Option<(VehicleState, u64)>,
}

impl VehicleFeed {
    pub(crate) fn new(config: VehicleConfig, now_ms: u64) -> Self {
        Self { config, started_ms: now_ms, next_read_ms: now_ms, last: None, api: None }
    }

    /// The source's name, as `health` shows it.
    pub(crate) fn source(&self) -> &'static str {
        match self.config.source {
            VehicleSource::None => "none",
            VehicleSource::File => "file",
            VehicleSource::Api => "api",
            VehicleSource::Profile => "profile",
        }
    }

    /// With `source = "api"`: takes a state the integration sent. Refused (with the reason)
    /// when the state is invalid or the node reads another source.
    pub(crate) fn put(&mut self, state: VehicleState, now_ms: u64) -> Result<(), String> {
        if self.config.source != VehicleSource::Api {
            return Err(format!(
                "this node reads its vehicle state from source {:?}, not the API (set [vehicle] source = \"api\")",
                self.source()
            ));
        }
        state.check()?;
        self.api = Some((state, now_ms));
        self.next_read_ms = now_ms;
        Ok(())
    }

    /// The state now, if it is time to read it and it changed since the engine was told.
    pub(crate) fn poll(&mut self, now_ms: u64) -> Option<Result<VehicleState, String>> {
        if self.config.source == VehicleSource::None || now_ms < self.next_read_ms {
            return None;
        }
        self.next_read_ms = now_ms.saturating_add(self.config.poll_ms);
        let state = self.read(now_ms);
        if self.last.as_ref() == Some(&state) {
            return None;
        }
        match &state {
            Err(e) => tracing::warn!("vehicle state: {e}; taking no new work until it is known"),
            Ok(s) => tracing::debug!(?s, "vehicle state"),
        }
        self.last = Some(state.clone());
        Some(state)
    }

    fn read(&self, now_ms: u64) -> Result<VehicleState, String> {
        // The same words however long it has been: the engine is told (and the log says it)
        // once, not on every read.
        let stale = |at: u64| {
            let max = self.config.stale_after_ms;
            (max > 0 && now_ms.saturating_sub(at) > max)
                .then(|| format!("no update for more than {max} ms (stale_after_ms)"))
        };
        match self.config.source {
            VehicleSource::None => Ok(VehicleState::default()),
            VehicleSource::Profile => {
                Ok(Profile { steps: self.config.profile.clone() }.state_at(self.started_ms, now_ms))
            }
            VehicleSource::Api => match &self.api {
                None => Err("no state sent yet (PUT /v1/vehicle)".into()),
                Some((s, at)) => stale(*at).map_or_else(|| Ok(s.clone()), Err),
            },
            VehicleSource::File => {
                let Some(path) = &self.config.state_file else {
                    return Err("no state_file configured".into());
                };
                let (state, modified) = read_state_file(path)?;
                match modified.and_then(stale) {
                    Some(e) => Err(format!("{}: {e}", path.display())),
                    None => Ok(state),
                }
            }
        }
    }
}

/// Reads and checks a state file; returns the state and the file's modification time (Unix
/// ms, when the file system tells it).
pub fn read_state_file(path: &Path) -> Result<(VehicleState, Option<u64>), String> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read {shown}: {e}"))?;
    // A regular file only: a FIFO would block the node's event loop, a device never end.
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > MAX_STATE_FILE_BYTES {
        return Err(format!(
            "{shown} has {} bytes; a state file has at most {MAX_STATE_FILE_BYTES}",
            meta.len()
        ));
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut text = String::new();
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if text.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(format!("{shown} grew past {MAX_STATE_FILE_BYTES} bytes while it was read"));
    }
    let state: VehicleState =
        serde_json::from_str(&text).map_err(|e| format!("{shown} is not a vehicle state: {e}"))?;
    state.check().map_err(|e| format!("{shown}: {e}"))?;
    Ok((state, modified))
}

/// What `GET /v1/ledger` and `fleetmesh ledger` show.
pub(crate) fn ledger_view(
    ledger: &fleetmesh_engine::ledger::Ledger,
    device_power_w: f32,
) -> fleetmesh_api::LedgerView {
    let row = |date: String, t: &fleetmesh_engine::ledger::DayTotals| fleetmesh_api::LedgerDay {
        date,
        tasks: t.tasks,
        credits: t.credits,
        energy_mj: t.energy_mj,
    };
    let days = ledger
        .days()
        .map(|(d, t)| {
            let (y, m, day) = fleetmesh_engine::ledger::date_of(d);
            row(format!("{y:04}-{m:02}-{day:02}"), t)
        })
        .collect();
    fleetmesh_api::LedgerView {
        days,
        total: row("total".into(), &ledger.total()),
        device_power_w: f64::from(device_power_w),
    }
}

/// What `health` and `GET /v1/vehicle` show.
pub(crate) fn view(source: &str, state: &Result<VehicleState, String>, a: &Availability) -> VehicleView {
    VehicleView {
        source: source.to_owned(),
        state: state.as_ref().ok().cloned(),
        serving: a.serving(),
        refusals: a
            .refusals
            .iter()
            .map(|r| VehicleRefusal { reason: r.label().to_owned(), message: r.to_string() })
            .collect(),
        slots: a.slots,
        depart_ms: a.depart_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmesh_engine::vehicle::ProfileStep;

    fn file_config(path: &Path, stale_after_ms: u64) -> VehicleConfig {
        VehicleConfig {
            source: VehicleSource::File,
            state_file: Some(path.to_owned()),
            stale_after_ms,
            ..VehicleConfig::default()
        }
    }

    #[test]
    fn a_state_file_is_read_checked_and_reported_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vehicle.json");
        let mut feed = VehicleFeed::new(file_config(&path, 0), 1_000);
        let missing = feed.poll(1_000).unwrap().unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
        assert_eq!(feed.poll(1_500), None, "not before poll_ms");
        assert_eq!(feed.poll(2_000), None, "the same error is not reported again");

        std::fs::write(&path, r#"{"parked": true, "charging": false, "soc_pct": 64}"#).unwrap();
        let s = feed.poll(3_000).unwrap().unwrap();
        assert_eq!((s.parked, s.charging, s.soc_pct), (true, false, Some(64.0)));
        assert_eq!(feed.poll(4_000), None, "unchanged");

        for (bad, why) in [
            (r#"{"parked": "yes"}"#, "not a vehicle state"),
            (r#"{"soc": 50}"#, "unknown field"),
            (r#"{"soc_pct": 140}"#, "soc_pct"),
            ("", "not a vehicle state"),
        ] {
            std::fs::write(&path, bad).unwrap();
            feed.next_read_ms = 0;
            let e = feed.poll(5_000).unwrap().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        std::fs::write(&path, vec![b' '; MAX_STATE_FILE_BYTES as usize + 1]).unwrap();
        feed.next_read_ms = 0;
        assert!(feed.poll(6_000).unwrap().unwrap_err().contains("at most"));
        feed.config.state_file = Some(dir.path().to_owned());
        feed.next_read_ms = 0;
        assert!(feed.poll(7_000).unwrap().unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn a_stale_state_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vehicle.json");
        std::fs::write(&path, "{}").unwrap();
        let now = crate::node::now_ms();
        let mut feed = VehicleFeed::new(file_config(&path, 60_000), now);
        assert!(feed.poll(now).unwrap().is_ok());
        let e = feed.poll(now + 120_000).unwrap().unwrap_err();
        assert!(e.contains("no update for"), "{e}");
        assert_eq!(feed.poll(now + 125_000), None, "still stale: said once");

        let api =
            VehicleConfig { source: VehicleSource::Api, stale_after_ms: 10_000, ..VehicleConfig::default() };
        let mut feed = VehicleFeed::new(api, now);
        assert!(feed.poll(now).unwrap().unwrap_err().contains("PUT /v1/vehicle"));
        feed.put(VehicleState { parked: false, ..VehicleState::default() }, now).unwrap();
        assert!(!feed.poll(now).unwrap().unwrap().parked);
        assert!(feed.poll(now + 20_000).unwrap().is_err(), "stale");
        let bad = VehicleState { soc_pct: Some(-1.0), ..VehicleState::default() };
        assert!(feed.put(bad, now).is_err());
    }

    #[test]
    fn the_api_refuses_a_state_when_another_source_is_configured() {
        let mut feed = VehicleFeed::new(VehicleConfig::default(), 0);
        let e = feed.put(VehicleState::default(), 0).unwrap_err();
        assert!(e.contains("source = \"api\""), "{e}");
        assert_eq!(feed.poll(0), None, "source none: the engine keeps its default");
    }

    #[test]
    fn a_profile_drives_the_state() {
        let step = |secs, parked| ProfileStep {
            secs,
            parked,
            charging: true,
            soc_pct: None,
            thermal_headroom_c: None,
        };
        let config = VehicleConfig {
            source: VehicleSource::Profile,
            profile: vec![step(10, true), step(5, false)],
            ..VehicleConfig::default()
        };
        let mut feed = VehicleFeed::new(config, 0);
        let s = feed.poll(0).unwrap().unwrap();
        assert_eq!((s.parked, s.departure_ms), (true, Some(10_000)));
        let s = feed.poll(11_000).unwrap().unwrap();
        assert!(!s.parked);
    }
}
