//! A day of a fleet (issue 11): when each vehicle is parked, charging or driving, as its
//! vehicle integration would report it (docs/SIMULATION.md, "A day of a fleet").
//!
//! The day is compressed into `day_ms` of virtual time (four minutes by default: a virtual
//! second is six minutes of the day) while tasks keep their real durations, so a vehicle is
//! parked for tens of seconds where a real one is parked for hours: departures in the middle
//! of a task are far more frequent than in life, which is what the run is for. The profile:
//!
//! * **Depot** vehicles (a fifth of the fleet, and every requester): parked on mains all day.
//! * **Commuters** (three fifths): charging at home overnight; leave in the morning rush
//!   (06:30 to 09:00) for a 20 to 50 minute drive; parked at work on battery (25 to 85 %, so
//!   some are below the owner's 30 % floor and serve nothing) until the evening rush (16:30
//!   to 19:00); drive home and charge.
//! * **Vans** (a fifth): charging overnight; from 08:00 to 18:00, drives of 15 to 45 minutes
//!   between stops of 30 to 90 minutes on battery, the charge falling through the day.
//!
//! Four in five departures are announced (the state carries the expected departure); the
//! rest come without notice, so the vehicle hands back whatever it is running.

use super::Rng;

/// The kinds of vehicle in a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Depot,
    Commuter,
    Van,
}

/// One change of a vehicle's state, at virtual time `at`.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) at: u64,
    pub(crate) parked: bool,
    pub(crate) charging: bool,
    pub(crate) soc_pct: f32,
    /// The announced departure, virtual ms.
    pub(crate) departs_at: Option<u64>,
}

/// A role for a vehicle that is not a requester: a fifth depot, three fifths commuters, a
/// fifth vans.
pub(crate) fn role(rng: &mut Rng) -> Role {
    match rng.range(0, 4) {
        0 => Role::Depot,
        4 => Role::Van,
        _ => Role::Commuter,
    }
}

/// The changes of a vehicle of `role` over a day of `day_ms` starting at `start` (virtual ms).
pub(crate) fn plan(rng: &mut Rng, role: Role, start: u64, day_ms: u64) -> Vec<Change> {
    let at = |minute: u64| start + day_ms * minute / 1_440;
    let announce = |rng: &mut Rng, t: u64| (rng.range(0, 4) != 0).then_some(t);
    let mut out = Vec::new();
    match role {
        Role::Depot => {}
        Role::Commuter => {
            let morning = rng.range(6 * 60 + 30, 9 * 60);
            let to_work = morning + rng.range(20, 50);
            let evening = rng.range(16 * 60 + 30, 19 * 60);
            let home = evening + rng.range(20, 50);
            let soc_home = rng.range(50, 90) as f32;
            let soc_work = rng.range(25, 85) as f32;
            let d = announce(rng, at(morning));
            out.push(Change { at: start, parked: true, charging: true, soc_pct: soc_home, departs_at: d });
            out.push(Change {
                at: at(morning),
                parked: false,
                charging: false,
                soc_pct: soc_home,
                departs_at: None,
            });
            let d = announce(rng, at(evening));
            out.push(Change {
                at: at(to_work),
                parked: true,
                charging: false,
                soc_pct: soc_work,
                departs_at: d,
            });
            out.push(Change {
                at: at(evening),
                parked: false,
                charging: false,
                soc_pct: soc_work,
                departs_at: None,
            });
            out.push(Change {
                at: at(home),
                parked: true,
                charging: true,
                soc_pct: soc_work,
                departs_at: None,
            });
        }
        Role::Van => {
            let mut t = 8 * 60 + rng.range(0, 30);
            let mut soc = 90.0f32;
            let d = announce(rng, at(t));
            out.push(Change { at: start, parked: true, charging: true, soc_pct: soc, departs_at: d });
            while t < 18 * 60 {
                out.push(Change {
                    at: at(t),
                    parked: false,
                    charging: false,
                    soc_pct: soc,
                    departs_at: None,
                });
                t += rng.range(15, 45);
                soc = (soc - rng.range(3, 8) as f32).max(10.0);
                let stop = rng.range(30, 90);
                let d = announce(rng, at(t + stop));
                out.push(Change { at: at(t), parked: true, charging: false, soc_pct: soc, departs_at: d });
                t += stop;
            }
            if let Some(last) = out.last_mut() {
                // The last stop is the depot: it charges there and stays the night.
                last.charging = true;
                last.departs_at = None;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commuter_leaves_twice_and_a_van_many_times_within_the_day() {
        let mut rng = Rng(7);
        let day = 1_440_000;
        let c = plan(&mut rng, Role::Commuter, 0, day);
        assert_eq!(c.iter().filter(|x| !x.parked).count(), 2);
        assert!(c.windows(2).all(|w| w[0].at <= w[1].at), "in order");
        let morning = c[1].at;
        assert!((390_000..=540_000).contains(&morning), "06:30 to 09:00 of a 1,440 s day: {morning}");
        assert!(c.iter().all(|x| x.at < day));
        let v = plan(&mut rng, Role::Van, 0, day);
        assert!(v.iter().filter(|x| !x.parked).count() >= 4, "{v:?}");
        assert!(v.last().is_some_and(|x| x.parked && x.charging));
        assert!(plan(&mut rng, Role::Depot, 0, day).is_empty());
        // An announced departure is when the next drive starts.
        for w in c.windows(2) {
            if let Some(d) = w[0].departs_at {
                assert_eq!(d, w[1].at);
            }
        }
    }
}
