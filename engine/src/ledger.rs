//! The owner's ledger: what serving earned and what it cost the battery, by day.
//!
//! Why a ledger of its own and not a query over jobs: jobs leave the store after the
//! retention period (7 days by default), and an owner wants the month. So each receipted job
//! adds to its day's totals in the same durable write that records the receipt (a crash
//! cannot count a receipt twice or lose one), and the totals stay when the jobs go. A day is
//! a UTC day of this node's clock at the receipt; credits are the receipts' prices, energy is
//! the estimate this node signed in its result (run time times the owner's `device_power_w`).

use std::collections::BTreeMap;

use fleetmesh_crypto::TaskId;
use serde::{Deserialize, Serialize};

use super::{StoreOp, Table};

/// Days the ledger keeps (ten years; the oldest go first).
pub const MAX_DAYS: usize = 3660;

const DAY_MS: u64 = 86_400_000;

/// One day's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DayTotals {
    /// Tasks served and receipted.
    pub tasks: u64,
    /// Credits earned (the receipts' prices).
    pub credits: u64,
    /// Energy spent, millijoules (the estimates in this node's signed results).
    pub energy_mj: u64,
}

impl DayTotals {
    fn add(&mut self, other: DayTotals) {
        self.tasks = self.tasks.saturating_add(other.tasks);
        self.credits = self.credits.saturating_add(other.credits);
        self.energy_mj = self.energy_mj.saturating_add(other.energy_mj);
    }
}

/// Totals by day (days since the Unix epoch, UTC).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    days: BTreeMap<u32, DayTotals>,
    /// Every day kept, together.
    total: DayTotals,
}

/// The store key of a day's record: `day` in the first four bytes (big-endian), the rest a
/// fixed tag, so it cannot be mistaken for a task id in a listing.
pub fn key_of(day: u32) -> TaskId {
    let mut k = [0xd4u8; 32];
    k[..4].copy_from_slice(&day.to_be_bytes());
    TaskId::from_bytes(k)
}

/// The day a store key names, if it is a ledger key.
pub fn day_of_key(key: &TaskId) -> Option<u32> {
    let b = key.as_bytes();
    b[4..].iter().all(|x| *x == 0xd4).then(|| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The UTC day of `ms` (Unix ms).
pub fn day_of(ms: u64) -> u32 {
    u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX)
}

/// The civil date (year, month, day) of a day since the Unix epoch (the proleptic Gregorian
/// calendar, as `date -u` prints it).
// Bounded: a u32 day keeps every intermediate below 2^40.
#[allow(clippy::arithmetic_side_effects)]
pub fn date_of(day: u32) -> (i64, u32, u32) {
    // Howard Hinnant's civil_from_days, for days >= 0.
    let z = i64::from(day).saturating_add(719_468);
    let era = z / 146_097;
    let doe = z.saturating_sub(era.saturating_mul(146_097));
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u32::try_from(m).unwrap_or(0), u32::try_from(d).unwrap_or(0))
}

impl Ledger {
    /// Adds one receipted job at `now`; returns the write that makes it durable.
    pub fn record(&mut self, now: u64, job: DayTotals) -> StoreOp {
        let day = day_of(now);
        let totals = self.days.entry(day).or_default();
        totals.add(job);
        let value = fleetmesh_protocol::encode(totals);
        self.total.add(job);
        if self.days.len() > MAX_DAYS {
            while self.days.len() > MAX_DAYS {
                self.days.pop_first();
            }
            self.total = Self::sum(&self.days);
        }
        StoreOp { table: Table::Ledger, key: key_of(day), value: Some(value) }
    }

    /// The write that makes `day`'s totals as held now durable (again, after a failed one).
    pub fn op_for(&self, day: u32) -> Option<StoreOp> {
        let totals = self.days.get(&day)?;
        Some(StoreOp {
            table: Table::Ledger,
            key: key_of(day),
            value: Some(fleetmesh_protocol::encode(totals)),
        })
    }

    /// Takes back the days persisted before a restart (records whose key is no day are
    /// skipped).
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (TaskId, DayTotals)>) {
        for (k, t) in entries {
            if let Some(day) = day_of_key(&k) {
                self.days.insert(day, t);
            }
        }
        while self.days.len() > MAX_DAYS {
            self.days.pop_first();
        }
        self.total = Self::sum(&self.days);
    }

    /// Every day's totals, oldest first.
    pub fn days(&self) -> impl Iterator<Item = (u32, &DayTotals)> {
        self.days.iter().map(|(d, t)| (*d, t))
    }

    /// All days together.
    pub fn total(&self) -> DayTotals {
        self.total
    }

    fn sum(days: &BTreeMap<u32, DayTotals>) -> DayTotals {
        let mut sum = DayTotals::default();
        for t in days.values() {
            sum.add(*t);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_add_up_and_come_back_from_their_records() {
        let mut l = Ledger::default();
        let t0 = 1_764_936_000_000; // 2025-12-05 12:00 UTC
        let one = DayTotals { tasks: 1, credits: 3, energy_mj: 90 };
        l.record(t0, one);
        let op = l.record(t0 + 3_600_000, one);
        let next = l.record(t0 + DAY_MS, one);
        assert_eq!(l.total(), DayTotals { tasks: 3, credits: 9, energy_mj: 270 });
        assert_eq!(date_of(day_of(t0)), (2025, 12, 5));
        assert_eq!(date_of(0), (1970, 1, 1));
        assert_eq!(date_of(day_of(951_782_400_000)), (2000, 2, 29));
        let mut back = Ledger::default();
        let decode = |op: &StoreOp| fleetmesh_protocol::decode(op.value.as_ref().unwrap(), 1024).unwrap();
        back.restore([(op.key, decode(&op)), (next.key, decode(&next)), (TaskId::from_bytes([1; 32]), one)]);
        assert_eq!(back.days().count(), 2, "a key that is no day is skipped");
        assert_eq!(back.total(), l.total());
        assert_eq!(day_of_key(&key_of(20_000)), Some(20_000));
    }
}
