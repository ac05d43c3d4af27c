//! What the node reports about a task: the view the API, the CLI and the demo print.

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
    /// `awarded`, `acked`, `returned`, `rejected: <reason>`, `failed: <reason>`.
    pub status: String,
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
}
