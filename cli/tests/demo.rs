//! The README's first command, `fleetmesh demo`, end to end on a small scale: every task
//! verified with the right label, and awarded on the workers' standing offers (the mesh is
//! ready only once the nodes hold each other's adverts).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use fleetmesh_cli::demo::{run, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_verifies_every_task_on_standing_offers() {
    let opts =
        DemoOptions { tasks: 6, timeout: Duration::from_secs(60), progress: false, ..DemoOptions::default() };
    let r = run(opts).await.unwrap();
    assert_eq!(r.tasks_verified, 6, "{}", r.table());
    assert_eq!(r.accuracy, 1.0, "{}", r.table());
    // (One may race a reconnect, whose advert comes within a second: then it is announced.)
    assert!(r.tasks_on_offers >= 5, "{}", r.table());
    assert!(r.table().contains("awarded on offers"));
    // Then one batch of 16 under one award: verified, every output equal to a local run of its
    // sample and checked alone against the signed root. (Labels: the model's own accuracy.)
    let b = r.batch.as_ref().unwrap();
    assert!(b.verified, "{}", r.table());
    assert_eq!((b.equal_to_local, b.checked_alone), (16, 16), "{}", r.table());
    assert!(b.correct >= 12, "{}", r.table());
    assert!(b.verified_by >= 2, "{}", r.table());
    // Every node shows its vehicle state and its owner's ledger: node 0 a depot server, the
    // others parked vehicles serving; the ledgers hold at least the k receipts of each of the
    // 6 tasks and of the batch (the last receipts may still be in flight: at most k).
    assert_eq!(r.vehicles.len(), 5, "{}", r.table());
    assert_eq!(r.vehicles[0].source, "none");
    assert!(r.vehicles[1..].iter().all(|v| v.source == "profile" && v.serving && v.state.contains("parked")));
    let receipted: u64 = r.vehicles.iter().map(|v| v.tasks).sum();
    assert!(receipted >= 7 * 2 - 2, "{}", r.table());
    assert!(r.vehicles.iter().map(|v| v.credits).sum::<u64>() >= receipted, "{}", r.table());
    assert!(r.table().contains("owners' ledgers"));
}
