//! Helpers for in-process mesh tests (feature `test-hooks`): start a mesh, wait for it,
//! submit and wait for tasks. Every wait is bounded, and a helper that fails panics with what
//! it saw, as a test should.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::local::{spawn_local_mesh, wait_for_mesh};
use crate::{Client, Node, NodeConfig, Phase, SubmitRequest, TaskView};
use fleetmesh_crypto::TaskId;

pub const WAIT: Duration = Duration::from_secs(60);

pub async fn mesh(
    dir: &std::path::Path,
    n: usize,
    configure: impl FnMut(usize, &mut NodeConfig),
) -> Vec<Node> {
    let nodes = tokio::time::timeout(WAIT, spawn_local_mesh(dir, n, configure))
        .await
        .expect("mesh start timed out")
        .unwrap();
    nodes
}

/// Waits until every serving node sees `min` peers with adverts.
pub async fn ready(nodes: &[Node], min: usize) {
    wait_for_mesh(nodes, min, WAIT).await.expect("mesh did not form");
}

pub fn digits_task(sample: usize, k: u8) -> (SubmitRequest, u8) {
    let s = &crate::digits::test_set()[sample];
    (SubmitRequest { input: s.to_input(), redundancy: Some(k), ..SubmitRequest::default() }, s.label)
}

pub async fn wait_done(c: &Client, id: TaskId) -> TaskView {
    tokio::time::timeout(WAIT, c.wait(id)).await.expect("task did not finish in time").unwrap()
}

pub async fn wait_until(what: &str, f: impl AsyncFnMut() -> bool) {
    wait_until_with(what, f, String::new).await;
}

/// As [`wait_until`], adding `state()` to the failure message.
pub async fn wait_until_with(what: &str, mut f: impl AsyncFnMut() -> bool, state: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what} {}", state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn assert_verified(v: &TaskView, label: u8) {
    assert_eq!(v.phase, Phase::Verified, "task not verified: {v:#?}");
    assert_eq!(v.label, Some(u32::from(label)), "wrong label: {v:#?}");
    // At least k agreeing workers: more where the requester had an unknown worker checked
    // by another one (market v2 reputation: a lone k = 1 result from an unknown worker is
    // replicated, a trusted one's is spot-checked now and then).
    assert!(v.verified_by.len() >= usize::from(v.redundancy), "too few agreeing workers: {v:#?}");
}

pub async fn stop_all(nodes: Vec<Node>) {
    for n in nodes {
        tokio::time::timeout(Duration::from_secs(10), n.stop()).await.expect("node did not stop");
    }
}

/// The value of a counter in a node's Prometheus text (0 when absent).
pub fn counter(c: &Client, name: &str) -> u64 {
    c.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
