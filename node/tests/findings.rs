//! Findings of the engine issue's hostile review, each as a test against a real mesh: a user
//! value that overflowed, an award for a task the worker never bid on, results from peers
//! that were never awarded. Each failed before the engine became a state machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use fleetmesh_crypto::{Identity, InputDigest, SignedEnvelope};
use fleetmesh_node::Frame;
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{RejectReason, Signed};

fn spec_for(id: &Identity, input: &[u8]) -> SignedEnvelope {
    fleetmesh_protocol::TaskSpec {
        v: 1,
        model: fleetmesh_node::digits::model_id(),
        input_digest: InputDigest::of(input),
        input_size: input.len() as u64,
        redundancy: 1,
        max_price: 100,
        created_ms: 0,
        bid_window_ms: 100,
        exec_timeout_ms: 1000,
        deadline_ms: u64::MAX,
        nonce: 1,
    }
    .sign(id)
}

/// Finding 1: a deadline of u64::MAX overflowed `now + deadline` and killed the event loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_deadline_is_refused_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 3, |_, _| {}).await;
    ready(&nodes, 2).await;
    let c = &nodes[0].client;
    let (mut req, label) = digits_task(3, 1);
    req.deadline_ms = Some(u64::MAX);
    let err = c.submit(req.clone()).await.unwrap_err();
    assert!(err.to_string().contains("deadline_ms"), "{err}");
    req.deadline_ms = None;
    let id = c.submit(req).await.unwrap();
    assert_verified(&wait_done(c, id).await, label);
    stop_all(nodes).await;
}

/// Finding 2: an award for a task the worker never bid on was stored (input and all) and
/// run; a far result deadline kept the job forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_award_for_a_task_never_bid_on_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 2, |_, _| {}).await;
    ready(&nodes, 1).await;
    let attacker = &nodes[1].client;
    let victim = &nodes[0].client;
    // The attacker is a requester in its own right: spec and award are its own, well signed.
    let input = fleetmesh_node::digits::test_set()[0].to_input();
    let attacker_key = attacker_identity(dir.path(), 1);
    let spec = spec_for(&attacker_key, &input);
    let award = fleetmesh_protocol::Award {
        v: 1,
        task_id: fleetmesh_protocol::task_id_of(&spec),
        round: 0,
        bid_set: vec![],
        bid_root: None,
        bid_count: 0,
        winners: vec![victim.public_key()],
        result_deadline_ms: u64::MAX,
    }
    .sign(&attacker_key);
    let r = attacker
        .send_raw(victim.peer_id(), Frame::Request(TaskRequest::Award { spec, award, input }))
        .await
        .unwrap();
    assert!(matches!(r, Ok(TaskResponse::Refused(Refusal::NotAWinner))), "{r:?}");
    assert_eq!(victim.stats().await.unwrap().jobs_in_memory, 0);
    stop_all(nodes).await;
}

/// Finding 3: a result from a peer that was never awarded was appended to the task and the
/// task re-persisted; now it is answered without touching the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_from_peers_never_awarded_leave_the_task_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 3, |i, c| {
        if i == 1 {
            // The honest worker takes its time, so the forged results arrive while it runs.
            c.exec_delay_ms = 1_500;
        }
        if i == 2 {
            // The attacker bids on nothing, so it is never awarded.
            c.serve = false;
        }
    })
    .await;
    ready(&nodes, 1).await;
    let requester = &nodes[0].client;
    let attacker = &nodes[2].client;
    let attacker_key = attacker_identity(dir.path(), 2);
    let (req, label) = digits_task(5, 1);
    let id = requester.submit(req).await.unwrap();
    for i in 0..20u8 {
        let out = vec![i; 10];
        let header = fleetmesh_protocol::ResultHeader {
            v: 1,
            task_id: id,
            input_digest: InputDigest::of(b"x"),
            model: fleetmesh_node::digits::model_id(),
            output_digest: fleetmesh_crypto::OutputDigest::of(&out),
            output_size: 10,
            run_time_us: 1,
            runtime: Default::default(),
        }
        .sign(&attacker_key);
        let r = attacker
            .send_raw(
                requester.peer_id(),
                Frame::Request(TaskRequest::Result { task_id: id, header, output: out }),
            )
            .await
            .unwrap();
        assert!(matches!(r, Ok(TaskResponse::Rejected(RejectReason::NotAwarded))), "{r:?}");
    }
    let v = wait_done(requester, id).await;
    assert_verified(&v, label);
    assert!(v.rejections.is_empty(), "a stranger's results were recorded: {:?}", v.rejections);
    stop_all(nodes).await;
}

/// The identity of node `i` of a test mesh, read from its key file.
fn attacker_identity(dir: &std::path::Path, i: usize) -> Identity {
    let path = dir.join(format!("node{i}")).join("node.key");
    fleetmesh_crypto::load_or_create_identity(&path).unwrap().0
}
