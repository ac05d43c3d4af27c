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
        batch: None,
        tolerance: None,
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
        bid_root: None,
        bid_count: 0,
        winners: vec![victim.public_key()],
        result_deadline_ms: u64::MAX,
        select_ppm: None,
        invited: vec![],
        offer: false,
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
            energy_mj: None,
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

/// Finding 14: libp2p listens with SO_REUSEPORT, so a second node on the same port took
/// half of the first one's connections without a word. Now it refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_taken_port_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = fleetmesh_node::Node::spawn(fleetmesh_node::local::loopback_config(dir.path().join("a")))
        .await
        .unwrap();
    for addr in first.client.listen_addrs().await.unwrap() {
        let mut cfg = fleetmesh_node::local::loopback_config(dir.path().join("b"));
        cfg.listen = vec![addr.to_string()];
        let err = fleetmesh_node::Node::spawn(cfg).await.err().expect("the second node must not start");
        assert!(err.to_string().contains("port is in use"), "{addr}: {err}");
    }
    first.stop().await;
}

/// Finding 15: an unreachable bootstrap address started the node without a word, and it
/// never tried again. Now the node says why, retries with backoff, and connects once the
/// peer is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bootstrap_is_reported_and_retried_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let boot_id = Identity::from_secret_bytes(&[42; 32]);
    let boot_addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", boot_id.public().peer_id());
    let mut cfg = fleetmesh_node::local::loopback_config(dir.path().join("b"));
    cfg.bootstrap = vec![boot_addr.clone()];
    let node = fleetmesh_node::Node::spawn(cfg).await.unwrap();
    wait_until("the node to report the bootstrap peer unreachable", async || {
        let s = node.client.stats().await.unwrap();
        s.bootstrap.len() == 1 && !s.bootstrap[0].connected && s.bootstrap[0].last_error.is_some()
    })
    .await;
    assert_eq!(node.client.stats().await.unwrap().peers_connected, 0);
    // The bootstrap peer comes up late, at that address: the node finds it on a retry.
    let mut boot_cfg = fleetmesh_node::local::loopback_config(dir.path().join("boot"));
    boot_cfg.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}")];
    let boot = fleetmesh_node::Node::spawn_with_identity(boot_cfg, boot_id).await.unwrap();
    wait_until("the node to reach the bootstrap peer on a retry", async || {
        let s = node.client.stats().await.unwrap();
        s.bootstrap[0].connected && s.bootstrap[0].last_error.is_none() && s.peers_connected == 1
    })
    .await;
    node.stop().await;
    boot.stop().await;
}

/// Finding 5: a peer that published 17 invalid messages stayed connected and in the mesh.
/// Now gossipsub scores peers: invalid messages graylist the sender and the node disconnects
/// it; the mesh keeps working without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_publishes_invalid_gossip_is_graylisted_and_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 4, |_, _| {}).await;
    ready(&nodes, 3).await;
    let attacker = &nodes[3].client;
    let victims = &nodes[..3];
    for i in 0..17u8 {
        attacker
            .publish_raw(fleetmesh_protocol::ids::TOPIC_TASKS, vec![0xff, i, 0x13])
            .await
            .unwrap()
            .unwrap();
    }
    let graylisted = || -> Vec<u64> {
        victims.iter().map(|n| counter(&n.client, "fleetmesh_peers_graylisted_total")).collect()
    };
    wait_until_with(
        "every victim to graylist and disconnect the attacker",
        async || graylisted().iter().all(|&g| g >= 1),
        || format!("(graylisted per victim: {:?})", graylisted()),
    )
    .await;
    for v in victims {
        let peers = v.client.peers().await.unwrap();
        if let Some(p) = peers.iter().find(|p| p.peer_id == attacker.peer_id().to_string()) {
            assert!(p.score.is_none_or(|s| s < 0.0), "the attacker's score: {:?}", p.score);
        }
    }
    // The mesh still runs tasks.
    let (req, label) = digits_task(4, 2);
    let task = nodes[0].client.submit(req).await.unwrap();
    assert_verified(&wait_done(&nodes[0].client, task).await, label);
    stop_all(nodes).await;
}

/// Finding 12: an input of the wrong size was accepted (202) and failed 61 s later with a
/// misleading reason. A node that holds the model refuses it at submit, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_does_not_fit_the_model_is_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 1, |_, _| {}).await;
    let (mut req, _) = digits_task(0, 1);
    let right = req.input.len();
    req.input.truncate(right - 4);
    let err = nodes[0].client.submit(req).await.unwrap_err().to_string();
    assert!(err.contains(&format!("takes {right}")), "{err}");
    stop_all(nodes).await;
}

/// Finding 9 (disk): a node whose data disk is nearly full refuses new work, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_new_work() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 1, |_, c| c.min_free_disk_bytes = u64::MAX).await;
    let (req, _) = digits_task(0, 1);
    let c = nodes[0].client.clone();
    wait_until("the node to see its disk as nearly full", async || {
        c.submit(req.clone()).await.is_err_and(|e| e.to_string().contains("nearly full"))
    })
    .await;
    stop_all(nodes).await;
}

/// Finding 9 (writes): every change was one transaction with an fsync on the event loop.
/// Now a writer thread commits what is queued as one transaction, the event loop goes on
/// meanwhile, and a submit is answered only once its write is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_are_acknowledged_only_once_durable_and_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 3, |_, _| {}).await;
    ready(&nodes, 2).await;
    let c = nodes[0].client.clone();
    let writes = || counter(&c, "fleetmesh_store_writes_total");
    let commits = || counter(&c, "fleetmesh_store_commits_total");
    let (writes_before, commits_before) = (writes(), commits());
    let release = c.hold_writes().await.unwrap();
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (c, (req, label)) = (c.clone(), digits_task(i, 1));
        submits.spawn(async move { (c.submit(req).await, label) });
    }
    // A submit may write more than once (an award on standing offers), so the writes counter
    // alone says too little: the engine's own task count (answered at once) says they arrived.
    wait_until("the 20 submits to reach the engine", async || {
        let in_memory = c.stats().await.map_or(0, |s| s.tasks_in_memory);
        in_memory >= 20 && writes() >= writes_before + 20
    })
    .await;
    // The event loop still answers while the disk is held; but what it says about tasks waits
    // until that state is durable (a caller must not see what a power cut could take back).
    tokio::time::timeout(WAIT, c.stats()).await.unwrap().unwrap();
    let listing = tokio::spawn({
        let c = c.clone();
        async move { c.tasks().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!listing.is_finished(), "tasks were listed before their writes were durable");
    assert!(submits.try_join_next().is_none(), "a submit was acknowledged before its write was durable");
    assert_eq!(commits(), commits_before, "the writer is held");
    drop(release);
    let mut done = Vec::new();
    while let Some(joined) = tokio::time::timeout(WAIT, submits.join_next()).await.unwrap() {
        let (id, label) = joined.unwrap();
        done.push((id.unwrap(), label));
    }
    let listed = tokio::time::timeout(WAIT, listing).await.unwrap().unwrap().unwrap();
    assert_eq!(listed.len(), 20);
    let used = commits() - commits_before;
    assert!(used < 20, "20 queued submits took {used} transactions");
    for (id, label) in done {
        assert_verified(&wait_done(&c, id).await, label);
    }
    stop_all(nodes).await;
}

/// Finding 8: anyone could fill the 16k-record DHT store with valid self-signed specs. Now
/// each peer may store at most 256 records a minute at a node (and a spec lives only until its
/// task's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_fill_the_dht_store() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 3, |_, _| {}).await;
    ready(&nodes, 2).await;
    let attacker = &nodes[2].client;
    let key_of = attacker_identity(dir.path(), 2);
    for n in 0..306u64 {
        let spec = spec_for(&key_of, &n.to_le_bytes());
        let key = fleetmesh_protocol::ids::task_record_key(&fleetmesh_protocol::task_id_of(&spec));
        attacker.put_raw_record(key, fleetmesh_protocol::encode(&spec)).await.unwrap().unwrap();
    }
    let refused =
        || -> u64 { nodes[..2].iter().map(|n| counter(&n.client, "fleetmesh_records_refused_total")).sum() };
    wait_until_with(
        "the victims to refuse the records over the budget",
        async || refused() >= 50,
        || format!("(refused: {})", refused()),
    )
    .await;
    stop_all(nodes).await;
}
