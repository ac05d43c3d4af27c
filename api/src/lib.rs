//! The fleetmesh node's local HTTP API, as types: what `POST /v1/tasks` takes, what the task,
//! peer and node endpoints answer, and the error body. The node's server, the `fleetmesh`
//! CLI and the testnet runner share them, so the three cannot drift apart; with the feature
//! `client`, [`client::ApiClient`] calls the API with them.
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | POST | `/v1/tasks` | [`SubmitBody`] -> 202 [`Submitted`] |
//! | GET | `/v1/tasks` | [`TaskView`] list |
//! | GET | `/v1/tasks/{id}` | [`TaskView`] |
//! | GET | `/v1/tasks/{id}/wait?timeout_ms=N` | [`TaskView`] once verified or failed (or at the timeout) |
//! | GET | `/v1/peers` | [`PeerInfo`] list |
//! | GET | `/v1/node` | [`NodeInfo`] |
//! | GET | `/v1/stats` | [`NodeStats`] |
//! | GET | `/healthz` | `ok` while the node answers |
//! | GET | `/metrics` | Prometheus text |
//!
//! Every error is an [`ErrorBody`] with a 4xx or 5xx status.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(feature = "client")]
pub mod client;

use serde::{Deserialize, Serialize};

/// Where a requested task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Announced; collecting bids for the current round.
    Bidding,
    /// Awarded; waiting for results.
    Running,
    /// A quorum of workers returned the same checked output. Terminal.
    Verified,
    /// Given up, with a reason. Terminal.
    Failed,
}

impl Phase {
    /// Verified or failed: nothing more will happen to the task.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Verified | Self::Failed)
    }
}

/// Milestones of one task, Unix ms (0 = not reached).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Submitted to the local node.
    pub submitted_ms: u64,
    /// First announcement published.
    pub announced_ms: u64,
    /// First award sent (bid window closed).
    pub awarded_ms: u64,
    /// First checked result received.
    pub first_result_ms: u64,
    /// Verified or failed.
    pub finished_ms: u64,
}

/// One worker's part in a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    /// The worker's public key (hex).
    pub worker: String,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// `awarded`, `acked`, `returned`, `rejected: <reason>`, `failed: <reason>`,
    /// `refused: <reason>`.
    pub status: String,
    /// When it was awarded, Unix ms (the requester's clock).
    #[serde(default)]
    pub awarded_ms: u64,
    /// When it acknowledged the award (took the task), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_ms: Option<u64>,
    /// When it handed the task back with a signed release (its vehicle drove off), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ms: Option<u64>,
}

/// A requested task as the requester sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id (hex).
    pub task_id: String,
    /// Model id (hex).
    pub model: String,
    /// Workers asked for (k).
    pub redundancy: u8,
    /// Current phase.
    pub phase: Phase,
    /// Current bid round (0 first).
    pub round: u32,
    /// Valid bids received over all rounds.
    pub bids_received: u32,
    /// Everyone awarded, in order.
    pub workers: Vec<WorkerView>,
    /// blake3 of the verified output (hex).
    pub output_digest: Option<String>,
    /// The verified output bytes, base64.
    pub output_base64: Option<String>,
    /// The argmax of the verified output, for classifiers.
    pub label: Option<u32>,
    /// Workers whose output was accepted (hex keys).
    pub verified_by: Vec<String>,
    /// Rejected results: (worker hex key, reason).
    pub rejections: Vec<(String, String)>,
    /// Why the task failed.
    pub failure: Option<String>,
    /// Milestones.
    pub timings: Timings,
    /// Inputs in the task when it is a batch (`output_digest` is then the Merkle root the
    /// workers signed, and `output_base64` the list of outputs); absent for one input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u16>,
    /// A verified batch's outputs, in input order, each with what checks it alone against
    /// `output_digest` (in a task's own view; the list of all tasks leaves them out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<BatchItemView>,
}

/// One output of a verified batch task, with what checks it without the other outputs:
/// blake3 of `output_base64` is `output_digest`, and folding `path` onto it at `index` gives
/// the task's `output_digest`, the root the agreeing workers signed
/// (`fleetmesh_protocol::batch::verify_item`). So a client can hand one output and its path
/// to whoever needs only that one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItemView {
    /// Its place in the batch (0 first).
    pub index: u32,
    /// blake3 of the output (hex): the Merkle leaf.
    pub output_digest: String,
    /// The output bytes, base64.
    pub output_base64: String,
    /// The argmax of the output, for classifiers.
    pub label: Option<u32>,
    /// Sibling digests (hex) from the leaf up to the root.
    pub path: Vec<String>,
}

/// A task to submit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitRequest {
    /// Model id (hex); the embedded digits model when absent.
    pub model: Option<String>,
    /// Input bytes (carried as `input_base64` in a [`SubmitBody`]).
    #[serde(skip)]
    pub input: Vec<u8>,
    /// Workers (k); the node's default when absent.
    pub redundancy: Option<u8>,
    /// Max price per worker for the whole task; the node's default (per input, times the
    /// batch's inputs) when absent.
    pub max_price: Option<u64>,
    /// Bid window, ms.
    pub bid_window_ms: Option<u32>,
    /// Execution timeout, ms.
    pub exec_timeout_ms: Option<u32>,
    /// Overall deadline from now, ms.
    pub deadline_ms: Option<u64>,
    /// A batch: the input is this many inputs of the model's size end to end, run under one
    /// award and verified as one result (at most 256). Absent: one input.
    pub batch: Option<u16>,
    /// For float (`f32`) outputs: workers agree when each element differs by at most this
    /// many millionths (1000: 0.001). Absent: bit for bit.
    pub tolerance: Option<u32>,
}

/// The body of `POST /v1/tasks`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitBody {
    /// Task parameters (model, redundancy, price, timeouts).
    #[serde(flatten)]
    pub params: SubmitRequest,
    /// The input, base64.
    pub input_base64: Option<String>,
    /// Use this sample of the embedded digits test set as the input.
    pub digits_sample: Option<usize>,
    /// A batch of samples of the embedded digits test set, in this order (sets `batch`).
    pub digits_samples: Option<Vec<usize>>,
}

/// The answer to a submit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// The new task's id.
    pub task_id: String,
    /// For digits samples: the true label.
    pub expected_label: Option<u8>,
    /// For a batch of digits samples: the true labels, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_labels: Vec<u8>,
}

/// Node identity and addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// ed25519 public key (hex).
    pub public_key: String,
    /// Listen addresses with `/p2p/<id>` appended.
    pub listen_addrs: Vec<String>,
}

/// A connected or known peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// Whether a connection is open now.
    pub connected: bool,
    /// Models in its last presence advert (hex).
    pub models: Vec<String>,
    /// Free slots in its last presence advert.
    pub free_slots: Option<u32>,
    /// Its standing offer stands until this instant (Unix ms): the node awards it tasks
    /// without a bid round until then. Absent: no offer.
    #[serde(default)]
    pub offer_until_ms: Option<u64>,
    /// Its gossip score at this node (negative after invalid messages), when connected.
    #[serde(default)]
    pub score: Option<f64>,
}

/// What a vehicle integration reports. Every field has a default; unknown fields are an
/// error, so a misspelt field is not silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VehicleState {
    /// Parked; false while driving (ignition on).
    pub parked: bool,
    /// On external power: charging, or a desktop or depot server on mains.
    pub charging: bool,
    /// The traction battery's state of charge, percent (0 to 100); absent: none to mind.
    pub soc_pct: Option<f32>,
    /// Degrees Celsius below the AI chip's thermal limit; absent: not reported.
    pub thermal_headroom_c: Option<f32>,
    /// When the vehicle expects to leave, Unix ms; absent: not expected.
    pub departure_ms: Option<u64>,
}

impl Default for VehicleState {
    /// A desktop or depot server: parked, on mains, always available.
    fn default() -> Self {
        Self { parked: true, charging: true, soc_pct: None, thermal_headroom_c: None, departure_ms: None }
    }
}

impl VehicleState {
    /// Checks the values a vehicle integration could get wrong, saying which.
    pub fn check(&self) -> Result<(), String> {
        if let Some(s) = self.soc_pct {
            if !(0.0..=100.0).contains(&s) {
                return Err(format!("soc_pct must be between 0 and 100, not {s}"));
            }
        }
        if let Some(t) = self.thermal_headroom_c {
            if !t.is_finite() {
                return Err("thermal_headroom_c must be a finite number".into());
            }
        }
        Ok(())
    }
}

/// One reason a vehicle takes no new work now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VehicleRefusal {
    /// Its short name (the `/metrics` label): `driving`, `battery_low`, `too_hot`,
    /// `outside_hours`, `power_budget`, `departure_due` or `state_unknown`.
    pub reason: String,
    /// What it means, in a sentence.
    pub message: String,
}

/// The vehicle as the node sees it (`GET /v1/vehicle`, `fleetmesh health`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VehicleView {
    /// Where the state comes from: `none` (a desktop or depot server: always available),
    /// `file`, `api` or `profile`.
    pub source: String,
    /// The last state reported; absent when the source failed.
    pub state: Option<VehicleState>,
    /// Whether the node takes new work now.
    pub serving: bool,
    /// Why not.
    pub refusals: Vec<VehicleRefusal>,
    /// Running slots the owner's power budget allows.
    pub slots: u32,
    /// The departure shown to requesters (rounded down to the minute), Unix ms.
    pub depart_ms: Option<u64>,
}

/// One day of the owner's ledger (or the total of all days).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LedgerDay {
    /// The UTC date, `YYYY-MM-DD` (`total` for the sum).
    pub date: String,
    /// Tasks served and receipted.
    pub tasks: u64,
    /// Credits earned (the receipts' prices).
    pub credits: u64,
    /// Energy spent, millijoules (the estimates in the node's signed results).
    pub energy_mj: u64,
}

/// The owner's ledger (`GET /v1/ledger`, `fleetmesh ledger`): what serving earned and what it
/// cost, by day, kept across restarts and after the jobs leave the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LedgerView {
    /// The days with work, oldest first.
    pub days: Vec<LedgerDay>,
    /// All of them together.
    pub total: LedgerDay,
    /// The owner's declared device power, watts (what the energy estimates assume).
    pub device_power_w: f64,
}

/// A node's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStats {
    /// Jobs this node executed and got a receipt for.
    pub jobs_receipted: u64,
    /// Jobs this node executed.
    pub jobs_executed: u64,
    /// Bids this node sent.
    pub bids_sent: u64,
    /// Requested tasks held in memory (unfinished plus the most recent finished).
    pub tasks_in_memory: u64,
    /// Served jobs held in memory (unfinished plus the most recent finished).
    pub jobs_in_memory: u64,
    /// Jobs executing now.
    pub jobs_running: u64,
    /// Trace events this node had to drop because its trace writer fell behind.
    pub trace_events_dropped: u64,
    /// Peers with an open connection.
    pub peers_connected: u64,
    /// The configured bootstrap peers and whether they are reached.
    pub bootstrap: Vec<BootstrapStatus>,
    /// The vehicle: whether it takes work, and why not.
    pub vehicle: VehicleView,
}

/// One bootstrap peer as the node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapStatus {
    /// Its address, as configured.
    pub addr: String,
    /// Whether a connection is open now.
    pub connected: bool,
    /// Why the last dial failed, if it did.
    pub last_error: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, and what to do about it.
    pub error: String,
}

/// p50 and p99 of a latency, ms (the demo's and the testnet runner's reports).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values`.
    pub fn of(values: &[u64]) -> Self {
        let mut v = values.to_vec();
        v.sort_unstable();
        let pick = |q: f64| -> f64 {
            let Some(last) = v.len().checked_sub(1) else { return 0.0 };
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v.get(rank - 1).or(v.get(last)).map_or(0.0, |x| *x as f64)
        };
        Self { p50: pick(0.50), p99: pick(0.99) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submit_body_flattens_its_parameters() {
        let b: SubmitBody = serde_json::from_str(r#"{"digits_sample": 3, "redundancy": 2}"#).unwrap();
        assert_eq!(b.digits_sample, Some(3));
        assert_eq!(b.params.redundancy, Some(2));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of(&[5, 1, 3, 2, 4]);
        assert_eq!((p.p50, p.p99), (3.0, 5.0));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }
}
