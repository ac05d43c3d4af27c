//! Vehicles as nodes: what the vehicle reports ([`VehicleState`]), what its owner allows
//! ([`OwnerPolicy`]), and what follows for serving ([`Availability`]).
//!
//! Why it lives in the engine: whether to bid, to offer and to take an award is the engine's
//! decision, and the simulator drives thousands of vehicles through their day, so the rule
//! is a pure function of the state, the policy and the time ([`evaluate`]), with no clock or
//! file of its own. The node reads the state from its source (a file a vehicle integration
//! writes, the local API, or a simulated [`Profile`]) and hands it in as
//! [`crate::Input::Vehicle`]; the engine re-evaluates it on every tick, because the owner's
//! hours and the expected departure move with the clock.
//!
//! The default state is a desktop or a depot server: parked, on mains power, no battery and
//! no departure, so a node that knows nothing of vehicles serves as it always did.

use serde::{Deserialize, Serialize};

/// The granularity of the departure time a vehicle shows to others, ms: rounded down to the
/// minute, so adverts and bids tell no more of the owner's schedule than the market needs
/// (and a rounded-down departure only makes the vehicle more careful).
pub const DEPARTURE_GRANULARITY_MS: u64 = 60_000;

pub use fleetmesh_api::VehicleState;

/// How long after an expected departure that did not happen the vehicle serves again, ms.
pub const STALE_DEPARTURE_MS: u64 = 15 * 60_000;

/// The hours of the day a vehicle serves, `"HH:MM-HH:MM"`; an end before the start wraps
/// past midnight (`"22:00-07:00"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hours {
    /// Minutes after midnight the window opens.
    pub from_min: u16,
    /// Minutes after midnight it closes.
    pub to_min: u16,
}

impl Hours {
    /// Whether `minute` of the day (0 to 1439) falls in the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.from_min <= self.to_min {
            (self.from_min..self.to_min).contains(&minute)
        } else {
            minute >= self.from_min || minute < self.to_min
        }
    }
}

impl TryFrom<String> for Hours {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("hours {s:?}: expected \"HH:MM-HH:MM\", e.g. \"22:00-07:00\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            // Two digits each, nothing else ("9:5" or "+9:05" is a typo, not a time).
            if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then(|| h.saturating_mul(60).saturating_add(m))
        };
        let (from_min, to_min) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if from_min == to_min {
            return Err(format!("hours {s:?}: an empty window (leave hours out to serve at any hour)"));
        }
        Ok(Self { from_min, to_min })
    }
}

impl From<Hours> for String {
    fn from(h: Hours) -> String {
        format!("{:02}:{:02}-{:02}:{:02}", h.from_min / 60, h.from_min % 60, h.to_min / 60, h.to_min % 60)
    }
}

/// What the vehicle's owner allows (the node config's `[owner]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OwnerPolicy {
    /// Serve only while parked.
    pub only_parked: bool,
    /// Below this state of charge (percent) serve only while charging.
    pub min_soc_pct: f32,
    /// Serve only with at least this much thermal headroom, degrees Celsius.
    pub min_thermal_headroom_c: f32,
    /// Watts the AI chip draws running one task: the device's power model. It caps the
    /// running slots under `power_budget_w`, and prices each task's energy (run time times
    /// this).
    pub device_power_w: f32,
    /// Watts serving may draw in all; absent: no cap beyond the slots.
    pub power_budget_w: Option<f32>,
    /// Serve only in these hours of the day (local time at `utc_offset_min`); absent: any.
    pub hours: Option<Hours>,
    /// The owner's time zone for `hours`, minutes east of UTC.
    pub utc_offset_min: i16,
}

impl Default for OwnerPolicy {
    fn default() -> Self {
        Self {
            only_parked: true,
            min_soc_pct: 30.0,
            min_thermal_headroom_c: 5.0,
            device_power_w: 60.0,
            power_budget_w: None,
            hours: None,
            utc_offset_min: 0,
        }
    }
}

impl OwnerPolicy {
    /// Checks the values an owner could get wrong, saying which.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.min_soc_pct) {
            return Err(format!("owner.min_soc_pct must be between 0 and 100, not {}", self.min_soc_pct));
        }
        if !self.min_thermal_headroom_c.is_finite() {
            return Err("owner.min_thermal_headroom_c must be a finite number".into());
        }
        if !(self.device_power_w.is_finite() && self.device_power_w > 0.0) {
            return Err("owner.device_power_w must be a positive number of watts".into());
        }
        if self.power_budget_w.is_some_and(|b| !(b.is_finite() && b >= 0.0)) {
            return Err("owner.power_budget_w must be zero or a positive number of watts".into());
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_min) {
            return Err("owner.utc_offset_min must be between -840 and 840".into());
        }
        Ok(())
    }

    /// Running slots the power budget allows out of `slots`.
    pub fn slots(&self, slots: u32) -> u32 {
        match self.power_budget_w {
            None => slots,
            Some(b) => {
                // Both checked finite and non-negative; the quotient is floored and capped.
                let n = (f64::from(b) / f64::from(self.device_power_w.max(f32::MIN_POSITIVE))).floor();
                if n >= f64::from(slots) {
                    slots
                } else if n >= 1.0 {
                    n as u32
                } else {
                    0
                }
            }
        }
    }

    /// The energy a run of `run_time_us` draws, millijoules (run time times the device's
    /// power).
    pub fn energy_mj(&self, run_time_us: u64) -> u64 {
        let mj = run_time_us as f64 * f64::from(self.device_power_w) / 1_000.0;
        if mj.is_finite() && mj >= 0.0 {
            mj.min(u64::MAX as f64) as u64
        } else {
            0
        }
    }
}

/// Why a vehicle takes no new work now. Each is shown with its reason in `health`, the API
/// and `/metrics` (by [`Refusal::label`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Refusal {
    /// Driving, and the owner serves only while parked.
    Driving,
    /// The battery is below the owner's floor and not charging.
    BatteryLow {
        /// The state of charge, percent.
        soc_pct: f32,
        /// The floor, percent.
        min_soc_pct: f32,
    },
    /// The chip is too close to its thermal limit.
    TooHot {
        /// Degrees below the limit.
        headroom_c: f32,
        /// The owner's minimum.
        min_headroom_c: f32,
    },
    /// Outside the owner's hours.
    OutsideHours {
        /// The hours.
        hours: Hours,
    },
    /// The power budget does not cover one running task.
    PowerBudget {
        /// The budget, watts.
        budget_w: f32,
        /// One task's draw, watts.
        device_power_w: f32,
    },
    /// The expected departure has come: the vehicle may leave at any moment.
    DepartureDue,
    /// The vehicle's state source failed; serving stops until it reports again (a broken
    /// integration must not drain the battery).
    StateUnknown {
        /// What failed.
        error: String,
    },
}

impl Refusal {
    /// A short name, for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Driving => "driving",
            Self::BatteryLow { .. } => "battery_low",
            Self::TooHot { .. } => "too_hot",
            Self::OutsideHours { .. } => "outside_hours",
            Self::PowerBudget { .. } => "power_budget",
            Self::DepartureDue => "departure_due",
            Self::StateUnknown { .. } => "state_unknown",
        }
    }

    /// Every label, for metrics that list each reason.
    pub const LABELS: [&'static str; 7] = [
        "driving",
        "battery_low",
        "too_hot",
        "outside_hours",
        "power_budget",
        "departure_due",
        "state_unknown",
    ];
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Driving => write!(f, "driving (the owner serves only while parked)"),
            Self::BatteryLow { soc_pct, min_soc_pct } => {
                write!(f, "battery at {soc_pct:.0} %, below the owner's floor of {min_soc_pct:.0} % and not charging")
            }
            Self::TooHot { headroom_c, min_headroom_c } => write!(
                f,
                "{headroom_c:.1} °C below the chip's thermal limit; the owner wants at least {min_headroom_c:.1}"
            ),
            Self::OutsideHours { hours } => write!(f, "outside the owner's hours ({})", String::from(*hours)),
            Self::PowerBudget { budget_w, device_power_w } => write!(
                f,
                "a power budget of {budget_w} W does not cover one running task ({device_power_w} W)"
            ),
            Self::DepartureDue => write!(f, "the expected departure has come"),
            Self::StateUnknown { error } => write!(f, "the vehicle state is unknown: {error}"),
        }
    }
}

/// What follows from the state and the policy: whether to take new work, on how many slots,
/// and until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    /// Why no new work is taken; empty: serving.
    pub refusals: Vec<Refusal>,
    /// Running slots allowed now (the power budget's cap on the configured slots).
    pub slots: u32,
    /// The expected departure as shown to others: rounded down to the minute
    /// ([`DEPARTURE_GRANULARITY_MS`]).
    pub depart_ms: Option<u64>,
    /// The vehicle is driving: work it holds is handed back, not only new work refused.
    pub driving: bool,
}

impl Availability {
    /// Whether new work is taken.
    pub fn serving(&self) -> bool {
        self.refusals.is_empty()
    }

    /// Always available on `slots` (a desktop, a depot server, a test).
    pub fn always(slots: u32) -> Self {
        Self { refusals: Vec::new(), slots, depart_ms: None, driving: false }
    }
}

pub use fleetmesh_protocol::winner::finishes_before;

/// The availability that follows from `state` (or a failed state source) and `policy` at
/// `now` (Unix ms), for a node configured with `slots`.
pub fn evaluate(
    state: &Result<VehicleState, String>,
    policy: &OwnerPolicy,
    slots: u32,
    now: u64,
) -> Availability {
    let state = match state {
        Ok(s) => s,
        Err(error) => {
            let refusals = vec![Refusal::StateUnknown { error: error.clone() }];
            return Availability { refusals, slots: 0, depart_ms: None, driving: false };
        }
    };
    let mut refusals = Vec::new();
    let driving = !state.parked;
    if driving && policy.only_parked {
        refusals.push(Refusal::Driving);
    }
    if let Some(soc) = state.soc_pct {
        if soc < policy.min_soc_pct && !state.charging {
            refusals.push(Refusal::BatteryLow { soc_pct: soc, min_soc_pct: policy.min_soc_pct });
        }
    }
    if let Some(h) = state.thermal_headroom_c {
        if h < policy.min_thermal_headroom_c {
            refusals.push(Refusal::TooHot { headroom_c: h, min_headroom_c: policy.min_thermal_headroom_c });
        }
    }
    if let Some(hours) = policy.hours {
        let local = i128::from(now).saturating_add(i128::from(policy.utc_offset_min).saturating_mul(60_000));
        let minute = u16::try_from(local.rem_euclid(86_400_000) / 60_000).unwrap_or(0);
        if !hours.contains(minute) {
            refusals.push(Refusal::OutsideHours { hours });
        }
    }
    let allowed = policy.slots(slots);
    if allowed == 0 && slots > 0 {
        if let Some(budget_w) = policy.power_budget_w {
            refusals.push(Refusal::PowerBudget { budget_w, device_power_w: policy.device_power_w });
        }
    }
    // A departure more than STALE_DEPARTURE_MS past is forgotten: the owner did not leave and
    // the integration did not clear it; it would otherwise stop serving for good.
    let depart_ms = state
        .departure_ms
        .filter(|d| d.saturating_add(STALE_DEPARTURE_MS) > now)
        .map(|d| d.saturating_sub(d % DEPARTURE_GRANULARITY_MS));
    if depart_ms.is_some_and(|d| d <= now) && !driving {
        refusals.push(Refusal::DepartureDue);
    }
    // Only while parked: a driving vehicle keeps no promise of when it leaves.
    let depart_ms = depart_ms.filter(|_| !driving);
    // Driving counts only where the owner serves only while parked.
    let driving = driving && policy.only_parked;
    Availability { refusals, slots: allowed, depart_ms, driving }
}

/// One step of a simulated vehicle's day ([`Profile`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileStep {
    /// How long the step lasts, seconds (at least 1).
    pub secs: u32,
    /// Parked (default) or driving.
    #[serde(default = "yes")]
    pub parked: bool,
    /// On external power.
    #[serde(default)]
    pub charging: bool,
    /// State of charge during the step, percent.
    #[serde(default)]
    pub soc_pct: Option<f32>,
    /// Thermal headroom during the step, degrees Celsius.
    #[serde(default)]
    pub thermal_headroom_c: Option<f32>,
}

fn yes() -> bool {
    true
}

/// A simulated vehicle: its steps repeat from the node's start, and while parked it expects to
/// leave when the next driving step begins (for tests and the testnet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The steps, in order; they repeat.
    pub steps: Vec<ProfileStep>,
}

/// Steps a profile may have.
pub const MAX_PROFILE_STEPS: usize = 1024;

impl Profile {
    /// Checks the steps.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.len() > MAX_PROFILE_STEPS {
            return Err(format!("a vehicle profile needs 1 to {MAX_PROFILE_STEPS} steps"));
        }
        for (i, s) in self.steps.iter().enumerate() {
            if s.secs == 0 {
                return Err(format!("vehicle profile step {i}: secs must be at least 1"));
            }
            let state = VehicleState {
                parked: s.parked,
                charging: s.charging,
                soc_pct: s.soc_pct,
                thermal_headroom_c: s.thermal_headroom_c,
                departure_ms: None,
            };
            state.check().map_err(|e| format!("vehicle profile step {i}: {e}"))?;
        }
        Ok(())
    }

    /// The state `elapsed_ms` after `start_ms` (Unix ms), departure included.
    pub fn state_at(&self, start_ms: u64, now: u64) -> VehicleState {
        let cycle: u64 = self.steps.iter().map(|s| u64::from(s.secs).saturating_mul(1_000)).sum();
        if cycle == 0 {
            return VehicleState::default();
        }
        let mut at = now.saturating_sub(start_ms).checked_rem(cycle).unwrap_or(0);
        let n = self.steps.len();
        let mut i = 0;
        while i < n {
            let len = u64::from(self.steps[i].secs).saturating_mul(1_000);
            if at < len {
                break;
            }
            at = at.saturating_sub(len);
            i = i.saturating_add(1);
        }
        let i = i.min(n.saturating_sub(1));
        let step = &self.steps[i];
        // While parked: the departure is when the next driving step starts (within a cycle).
        let mut departure_ms = None;
        if step.parked {
            let mut left = u64::from(step.secs).saturating_mul(1_000).saturating_sub(at);
            for k in 1..=n {
                let Some(next) = self.steps.get(i.saturating_add(k).checked_rem(n).unwrap_or(0)) else {
                    break;
                };
                if !next.parked {
                    departure_ms = Some(now.saturating_add(left));
                    break;
                }
                left = left.saturating_add(u64::from(next.secs).saturating_mul(1_000));
            }
        }
        VehicleState {
            parked: step.parked,
            charging: step.charging,
            soc_pct: step.soc_pct,
            thermal_headroom_c: step.thermal_headroom_c,
            departure_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: u64 = 1_764_936_000_000; // 2025-12-05 12:00 UTC

    fn state() -> VehicleState {
        VehicleState { parked: true, charging: false, soc_pct: Some(80.0), ..VehicleState::default() }
    }

    #[test]
    fn a_desktop_serves_on_every_slot() {
        let a = evaluate(&Ok(VehicleState::default()), &OwnerPolicy::default(), 2, NOON);
        assert_eq!(a, Availability::always(2));
    }

    #[test]
    fn each_rule_refuses_with_its_reason() {
        let p = OwnerPolicy::default();
        let driving = evaluate(&Ok(VehicleState { parked: false, ..state() }), &p, 2, NOON);
        assert_eq!(driving.refusals, vec![Refusal::Driving]);
        assert!(driving.driving);
        let any_time = OwnerPolicy { only_parked: false, ..p.clone() };
        let a = evaluate(&Ok(VehicleState { parked: false, ..state() }), &any_time, 2, NOON);
        assert!(a.serving() && !a.driving, "an owner may serve while driving");

        let low = VehicleState { soc_pct: Some(29.0), ..state() };
        let a = evaluate(&Ok(low.clone()), &p, 2, NOON);
        assert_eq!(a.refusals, vec![Refusal::BatteryLow { soc_pct: 29.0, min_soc_pct: 30.0 }]);
        assert!(evaluate(&Ok(VehicleState { charging: true, ..low }), &p, 2, NOON).serving(), "charging");

        let hot = VehicleState { thermal_headroom_c: Some(4.0), ..state() };
        assert_eq!(evaluate(&Ok(hot), &p, 2, NOON).refusals[0].label(), "too_hot");

        let night =
            OwnerPolicy { hours: Some(Hours::try_from("22:00-07:00".to_owned()).unwrap()), ..p.clone() };
        assert_eq!(evaluate(&Ok(state()), &night, 2, NOON).refusals[0].label(), "outside_hours");
        assert!(evaluate(&Ok(state()), &night, 2, NOON + 11 * 3_600_000).serving(), "23:00 UTC");
        let east = OwnerPolicy { utc_offset_min: 11 * 60, ..night };
        assert!(evaluate(&Ok(state()), &east, 2, NOON).serving(), "23:00 at UTC+11");

        let state_err = evaluate(&Err("file gone".into()), &p, 2, NOON);
        assert_eq!(state_err.refusals, vec![Refusal::StateUnknown { error: "file gone".into() }]);
        assert_eq!(state_err.slots, 0);
    }

    #[test]
    fn the_power_budget_caps_slots_and_refuses_below_one() {
        let p =
            |b: f32| OwnerPolicy { power_budget_w: Some(b), device_power_w: 60.0, ..OwnerPolicy::default() };
        assert_eq!(evaluate(&Ok(state()), &p(130.0), 4, NOON).slots, 2);
        assert_eq!(evaluate(&Ok(state()), &p(1_000.0), 4, NOON).slots, 4);
        let a = evaluate(&Ok(state()), &p(59.0), 4, NOON);
        assert_eq!((a.slots, a.refusals[0].label()), (0, "power_budget"));
        assert_eq!(p(0.0).energy_mj(1_500), 90, "1.5 ms at 60 W is 90 mJ");
    }

    #[test]
    fn the_departure_is_shown_to_the_minute_and_refuses_once_due() {
        let p = OwnerPolicy::default();
        let leaving = VehicleState { departure_ms: Some(NOON + 90_000), ..state() };
        let a = evaluate(&Ok(leaving.clone()), &p, 2, NOON);
        assert_eq!(a.depart_ms, Some(NOON + 60_000), "rounded down to the minute");
        assert!(a.serving());
        assert!(finishes_before(a.depart_ms, 10_000, NOON));
        assert!(!finishes_before(a.depart_ms, 60_001, NOON));
        assert!(finishes_before(None, u32::MAX, u64::MAX));
        let due = evaluate(&Ok(leaving.clone()), &p, 2, NOON + 60_000);
        assert_eq!(due.refusals, vec![Refusal::DepartureDue]);
        // Long past and still parked: the departure is forgotten and the vehicle serves.
        let later = evaluate(&Ok(leaving), &p, 2, NOON + 90_000 + STALE_DEPARTURE_MS);
        assert!(later.serving() && later.depart_ms.is_none(), "{later:?}");
    }

    #[test]
    fn hours_parse_and_wrap() {
        let h = Hours::try_from("22:00-07:30".to_owned()).unwrap();
        assert!(h.contains(22 * 60) && h.contains(0) && h.contains(7 * 60 + 29));
        assert!(!h.contains(7 * 60 + 30) && !h.contains(12 * 60));
        assert_eq!(String::from(h), "22:00-07:30");
        for bad in
            ["22:00", "25:00-01:00", "10:60-11:00", "08:00-08:00", "a-b", "", "+9:05-17:00", "09:5-17:00"]
        {
            assert!(Hours::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        let p: OwnerPolicy = serde_json::from_str(r#"{"hours":"09:00-17:00"}"#).unwrap();
        assert_eq!(p.hours, Some(Hours { from_min: 540, to_min: 1020 }));
        assert!(serde_json::from_str::<OwnerPolicy>(r#"{"hours":"9-5"}"#).is_err());
    }

    #[test]
    fn bad_states_and_policies_are_refused_with_the_field() {
        let s = VehicleState { soc_pct: Some(101.0), ..state() };
        assert!(s.check().unwrap_err().contains("soc_pct"));
        assert!(VehicleState { soc_pct: Some(f32::NAN), ..state() }.check().is_err());
        assert!(serde_json::from_str::<VehicleState>(r#"{"soc":50}"#).is_err(), "unknown field");
        let p = OwnerPolicy { device_power_w: 0.0, ..OwnerPolicy::default() };
        assert!(p.check().unwrap_err().contains("device_power_w"));
        let p = OwnerPolicy { power_budget_w: Some(f32::INFINITY), ..OwnerPolicy::default() };
        assert!(p.check().is_err());
    }

    #[test]
    fn a_profile_repeats_and_expects_to_leave_when_driving_starts() {
        let step = |secs, parked| ProfileStep {
            secs,
            parked,
            charging: false,
            soc_pct: None,
            thermal_headroom_c: None,
        };
        let p = Profile { steps: vec![step(60, true), step(30, true), step(20, false)] };
        p.check().unwrap();
        let s = p.state_at(NOON, NOON + 10_000);
        assert_eq!((s.parked, s.departure_ms), (true, Some(NOON + 90_000)));
        let s = p.state_at(NOON, NOON + 95_000);
        assert_eq!((s.parked, s.departure_ms), (false, None));
        let s = p.state_at(NOON, NOON + 110_000 + 5_000);
        assert_eq!((s.parked, s.departure_ms), (true, Some(NOON + 200_000)), "the next cycle");
        let always = Profile { steps: vec![step(10, true)] };
        assert_eq!(always.state_at(NOON, NOON + 1).departure_ms, None);
        assert!(Profile { steps: vec![step(0, true)] }.check().is_err());
        assert!(Profile { steps: vec![] }.check().is_err());
    }
}
