//! The task lifecycle over a real libp2p mesh: several nodes in one process on loopback
//! (TCP and QUIC), real inference, real signatures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use fleetmesh_node::hooks::Misbehave;
use fleetmesh_node::{NodeConfig, Phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_k1_and_k2() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 5, |_, _| {}).await;
    ready(&nodes, 3).await;
    let (req1, label1) = digits_task(3, 1);
    let (req2, label2) = digits_task(11, 2);
    let t1 = nodes[1].client.submit(req1).await.unwrap();
    let t2 = nodes[2].client.submit(req2).await.unwrap();
    let v1 = wait_done(&nodes[1].client, t1).await;
    let v2 = wait_done(&nodes[2].client, t2).await;
    assert_verified(&v1, label1);
    assert_verified(&v2, label2);
    // The requester never serves its own task.
    let me2 = nodes[2].client.public_key().to_string();
    assert!(!v2.verified_by.contains(&me2));
    // Awarded on bids, or at once on the workers' standing offers when their adverts were in
    // (a race with the mesh forming); either way k distinct workers agreed.
    assert!(v2.verified_by.len() >= 2, "{v2:?}");
    // Workers got their receipts: one per agreeing worker. (A fresh mesh trusts nobody yet:
    // the requester, which holds the model, checked the k = 1 worker against its own run
    // instead of replicating it.)
    let want = (v1.verified_by.len() + v2.verified_by.len()) as u64;
    assert_eq!(v1.verified_by.len(), 1, "the requester's own run checked the lone worker");
    let mut receipted = 0;
    for _ in 0..100 {
        receipted = 0;
        for n in &nodes {
            receipted += n.client.stats().await.unwrap().jobs_receipted;
        }
        if receipted >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(receipted, want, "one receipt for each worker that produced the verified output");
    stop_all(nodes).await;
}

/// Node 4 joins after the task was announced and ignores task gossip: it can only find the
/// task through the DHT (provider record -> open-tasks record -> spec), and it is the only
/// node that serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_finds_the_task_through_the_dht_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = mesh(dir.path(), 4, |_, c| {
        c.serve = false;
        c.tasks.bid_window_ms = 20_000;
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (req, label) = digits_task(5, 1);
    let task = nodes[1].client.submit(req).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let boot = nodes[2].client.listen_addrs().await.unwrap();
    let boot_id = nodes[2].client.peer_id();
    let mut cfg = fleetmesh_node::local::loopback_config(dir.path().join("late"));
    cfg.bootstrap = vec![format!("{}/p2p/{boot_id}", boot[0])];
    cfg.ignore_task_gossip = true;
    cfg.dht_scan_interval_ms = 500;
    let late = fleetmesh_node::Node::spawn(cfg).await.unwrap();
    let late_key = late.client.public_key().to_string();
    nodes.push(late);

    let v = wait_done(&nodes[1].client, task).await;
    assert_verified(&v, label);
    assert_eq!(v.verified_by, vec![late_key]);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_task_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // Node 1 is the cheapest bidder and vanishes after accepting; nodes 2-4 cost more.
    let mut nodes = mesh(dir.path(), 5, |i, c| {
        c.tasks.selection = false; // a chosen (cheapest) worker must win
        c.price_floor = if i == 1 { 1 } else { 5 };
        if i == 1 {
            c.misbehave = Some(Misbehave::Vanish);
        }
    })
    .await;
    ready(&nodes, 4).await;
    let (req, label) = digits_task(8, 1);
    let client = nodes[0].client.clone();
    let task = client.submit(req).await.unwrap();
    let vanishing = nodes[1].client.public_key().to_string();
    wait_until("the cheap worker to accept", async || {
        let v = client.status(task).await.unwrap().unwrap();
        v.workers.iter().any(|w| w.worker == vanishing && w.status == "acked")
    })
    .await;
    nodes.remove(1).kill();
    let v = wait_done(&client, task).await;
    assert_verified(&v, label);
    assert!(!v.verified_by.contains(&vanishing));
    let failed = v.workers.iter().find(|w| w.worker == vanishing).unwrap();
    assert!(failed.status.starts_with("failed"), "{failed:?}");
    stop_all(nodes).await;
}

async fn cheat_is_caught(how: Misbehave, expected_reason: &str, tasks: usize) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 4, |i, c: &mut NodeConfig| {
        c.tasks.selection = false; // a chosen (cheapest) worker must win
        c.price_floor = if i == 1 { 1 } else { 5 };
        if i == 1 {
            c.misbehave = Some(how);
        }
    })
    .await;
    ready(&nodes, 3).await;
    let cheat = nodes[1].client.public_key().to_string();
    let mut last = None;
    for t in 0..tasks {
        let (req, label) = digits_task(20 + t, 1);
        let id = nodes[0].client.submit(req).await.unwrap();
        last = Some((wait_done(&nodes[0].client, id).await, label));
    }
    let (v, label) = last.unwrap();
    assert_verified(&v, label);
    assert!(!v.verified_by.contains(&cheat), "the cheat's output was accepted: {v:#?}");
    assert!(
        v.rejections.iter().any(|(w, r)| *w == cheat && r == expected_reason),
        "expected rejection {expected_reason:?} of {cheat}: {:?}",
        v.rejections
    );
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_output_is_rejected() {
    cheat_is_caught(Misbehave::CorruptOutput, "blake3 of the output does not match the header", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_signed_with_the_wrong_key_is_rejected() {
    cheat_is_caught(Misbehave::WrongKey, "signer was not awarded this task", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_old_result_is_rejected() {
    // The first task is served honestly; the second gets the first one's result back.
    cheat_is_caught(Misbehave::Replay, "result names another task", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_answer_is_outvoted_with_k2() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 5, |i, c| {
        c.tasks.selection = false; // a chosen (cheapest) worker must win
        c.price_floor = match i {
            1 => 1,
            2 => 2,
            _ => 3,
        };
        if i == 1 {
            c.misbehave = Some(Misbehave::WrongAnswer);
        }
    })
    .await;
    ready(&nodes, 4).await;
    let (req, label) = digits_task(42, 2);
    let task = nodes[0].client.submit(req).await.unwrap();
    let v = wait_done(&nodes[0].client, task).await;
    assert_verified(&v, label);
    let cheat = nodes[1].client.public_key().to_string();
    assert!(!v.verified_by.contains(&cheat));
    assert!(
        v.rejections.iter().any(|(w, r)| *w == cheat && r == "output disagrees with the majority"),
        "{v:#?}"
    );
    assert!(v.workers.len() >= 3, "a third worker broke the tie: {v:#?}");
    stop_all(nodes).await;
}

/// A batch of eight digits under one award: each worker runs the eight inputs in one slot and
/// signs one Merkle root over the outputs; a worker that changes one output disagrees with
/// the root of the honest ones and is outvoted; every output of the verified batch carries
/// the right label and checks alone against the signed root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_under_one_award_and_each_output_checks_alone() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 5, |i, c| {
        c.tasks.selection = false; // the cheapest worker (the cheat) must win
        c.price_floor = match i {
            1 => 1,
            2 => 2,
            _ => 3,
        };
        if i == 1 {
            c.misbehave = Some(Misbehave::WrongAnswer);
        }
    })
    .await;
    ready(&nodes, 4).await;
    let set = fleetmesh_node::digits::test_set();
    let samples: Vec<&fleetmesh_node::digits::Sample> = (50..58).map(|i| &set[i]).collect();
    let req = fleetmesh_node::SubmitRequest {
        input: samples.iter().flat_map(|s| s.to_input()).collect(),
        batch: Some(8),
        redundancy: Some(2),
        ..Default::default()
    };
    let task = nodes[0].client.submit(req).await.unwrap();
    let v = wait_done(&nodes[0].client, task).await;
    assert_eq!(v.phase, Phase::Verified, "{v:#?}");
    assert_eq!(v.batch, Some(8));
    let cheat = nodes[1].client.public_key().to_string();
    assert!(!v.verified_by.contains(&cheat));
    assert!(
        v.rejections.iter().any(|(w, r)| *w == cheat && r == "output disagrees with the majority"),
        "{v:#?}"
    );
    let root: fleetmesh_crypto::OutputDigest = v.output_digest.as_deref().unwrap().parse().unwrap();
    assert_eq!(v.items.len(), 8);
    for (i, item) in v.items.iter().enumerate() {
        assert_eq!(item.label, Some(u32::from(samples[i].label)), "item {i}");
        let output = base64::engine::general_purpose::STANDARD.decode(&item.output_base64).unwrap();
        let path: Vec<fleetmesh_crypto::Digest> = item.path.iter().map(|d| d.parse().unwrap()).collect();
        assert_eq!(path.len(), 3, "log2 8 digests");
        assert!(fleetmesh_protocol::batch::verify_item(&output, i, 8, &path, &root), "item {i}");
    }
    stop_all(nodes).await;
}

/// The requester is killed after awarding and restarted on the same data dir and ports; the
/// worker keeps re-sending its result, and the restarted requester verifies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_restarted_mid_task_still_gets_its_result() {
    let dir = tempfile::tempdir().unwrap();
    // Every worker takes 1.5 s, so the requester can be killed while the task runs.
    let mut nodes = mesh(dir.path(), 4, |_, c| {
        c.exec_delay_ms = 1_500;
        c.tasks.exec_timeout_ms = 30_000;
    })
    .await;
    ready(&nodes, 3).await;
    let (req, label) = digits_task(77, 1);
    let requester = nodes.remove(3);
    let addrs: Vec<String> =
        requester.client.listen_addrs().await.unwrap().iter().map(|a| a.to_string()).collect();
    let task = requester.client.submit(req).await.unwrap();
    let c = requester.client.clone();
    wait_until("the award", async || c.status(task).await.unwrap().unwrap().phase == Phase::Running).await;
    requester.kill();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let mut cfg = fleetmesh_node::local::loopback_config(dir.path().join("node3"));
    // Same TCP port (peers remember it); a fresh QUIC port, as the old UDP socket may linger.
    cfg.listen = addrs.into_iter().filter(|a| a.contains("/tcp/")).collect();
    cfg.bootstrap = {
        let a = nodes[0].client.listen_addrs().await.unwrap();
        vec![format!("{}/p2p/{}", a[0], nodes[0].client.peer_id())]
    };
    let restarted = fleetmesh_node::Node::spawn(cfg).await.unwrap();
    let v = wait_done(&restarted.client, task).await;
    assert_verified(&v, label);
    nodes.push(restarted);
    stop_all(nodes).await;
}

/// A worker restarted after finishing (but before its receipt) re-sends the stored result
/// and does not run the task again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_worker_does_not_run_an_accepted_task_twice() {
    let dir = tempfile::tempdir().unwrap();
    // Only node 1 serves.
    let mut nodes = mesh(dir.path(), 3, |i, c| c.serve = i == 1).await;
    let requester = nodes[2].client.clone();
    wait_until("the requester to see the worker's advert", async || {
        requester.peers().await.unwrap().iter().any(|p| p.connected && !p.models.is_empty())
    })
    .await;
    let (req, label) = digits_task(99, 1);
    // Stop the requester's ability to answer: node 2 submits, then node 1 is restarted
    // right after it executed.
    let task = nodes[2].client.submit(req).await.unwrap();
    let worker = nodes[1].client.clone();
    wait_until("the execution", async || worker.stats().await.unwrap().jobs_executed == 1).await;
    let w = nodes.remove(1);
    let addrs: Vec<String> = w.client.listen_addrs().await.unwrap().iter().map(|a| a.to_string()).collect();
    w.stop().await;
    let mut cfg = fleetmesh_node::local::loopback_config(dir.path().join("node1"));
    cfg.listen = addrs.into_iter().filter(|a| a.contains("/tcp/")).collect();
    let a = nodes[0].client.listen_addrs().await.unwrap();
    cfg.bootstrap = vec![format!("{}/p2p/{}", a[0], nodes[0].client.peer_id())];
    let w2 = fleetmesh_node::Node::spawn(cfg).await.unwrap();
    let v = wait_done(&nodes[1].client, task).await;
    assert_verified(&v, label);
    assert_eq!(w2.client.stats().await.unwrap().jobs_executed, 0, "the restarted worker ran the task again");
    nodes.push(w2);
    stop_all(nodes).await;
}

/// Finished tasks leave memory beyond the configured number but stay readable from the
/// store; a long-running node's memory does not grow with its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_leave_memory_but_not_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 3, |_, c| c.max_finished_in_memory = 1).await;
    ready(&nodes, 2).await;
    let c = nodes[0].client.clone();
    let mut done = Vec::new();
    for s in 0..4 {
        let (req, label) = digits_task(50 + s, 1);
        let id = c.submit(req).await.unwrap();
        assert_verified(&wait_done(&c, id).await, label);
        done.push((id, label));
    }
    wait_until("old tasks and jobs to leave memory", async || {
        let mut ok = c.stats().await.unwrap().tasks_in_memory <= 1;
        for n in &nodes[1..] {
            ok &= n.client.stats().await.unwrap().jobs_in_memory <= 1;
        }
        ok
    })
    .await;
    for (id, label) in done {
        assert_verified(&c.status(id).await.unwrap().expect("status of a forgotten task"), label);
        assert_verified(&wait_done(&c, id).await, label);
    }
    stop_all(nodes).await;
}
