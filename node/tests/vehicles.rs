//! Vehicles as nodes (issue 11) over a real mesh: a vehicle integration reports the state on
//! the local API, the owner's policy decides whether the node serves, and a vehicle that
//! starts driving hands its task back with a signed release that the requester acts on at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleetmesh_node::config::VehicleSource;
use fleetmesh_node::engine::vehicle::VehicleState;

fn parked() -> VehicleState {
    VehicleState { parked: true, charging: false, soc_pct: Some(70.0), ..VehicleState::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_that_drives_off_hands_its_task_back_and_another_runs_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Node 0 requests (a desktop); 1 to 3 are vehicles reporting on the API, each run taking
    // 3 s, so the first worker is still running when its vehicle leaves.
    let nodes = mesh(dir.path(), 4, |i, c| {
        if i > 0 {
            c.vehicle.source = VehicleSource::Api;
            c.exec_delay_ms = 3_000;
        }
    })
    .await;
    // Until the integration reports, a vehicle's state is unknown and it takes no work.
    let before = nodes[1].client.stats().await.unwrap().vehicle;
    assert!(!before.serving);
    assert_eq!(before.refusals[0].reason, "state_unknown", "{before:?}");
    for n in &nodes[1..] {
        let v = n.client.set_vehicle(parked()).await.unwrap();
        assert!(v.serving, "{v:?}");
    }
    // A state the node cannot take is refused with the reason and changes nothing.
    let bad = VehicleState { soc_pct: Some(140.0), ..parked() };
    let e = nodes[1].client.set_vehicle(bad).await.unwrap_err().to_string();
    assert!(e.contains("soc_pct"), "{e}");
    ready(&nodes, 3).await;

    let client = nodes[0].client.clone();
    let (req, label) = digits_task(5, 1);
    let task = client.submit(req).await.unwrap();
    let mut first = String::new();
    wait_until("a worker to take the task", async || {
        let v = client.status(task).await.unwrap().unwrap();
        match v.workers.iter().find(|w| w.status == "acked") {
            Some(w) => {
                first = w.worker.clone();
                true
            }
            None => false,
        }
    })
    .await;
    let leaving = nodes.iter().find(|n| n.client.public_key().to_string() == first).unwrap();
    let left = Instant::now();
    let v = leaving.client.set_vehicle(VehicleState { parked: false, ..parked() }).await.unwrap();
    assert!(!v.serving);
    assert_eq!(v.refusals[0].reason, "driving");

    let done = wait_done(&client, task).await;
    let took = left.elapsed();
    assert_verified(&done, label);
    assert!(!done.verified_by.contains(&first), "{done:#?}");
    let released = done.workers.iter().find(|w| w.worker == first).unwrap();
    assert!(released.status.starts_with("refused") && released.status.contains("driving"), "{released:?}");
    // Re-awarded at once: the replacement's 3 s run, not the 10 s result deadline of the
    // worker that left (plus its 3 s run) before anyone else is asked.
    assert!(took < Duration::from_secs(8), "verified {took:?} after the vehicle left");
    assert_eq!(counter(&leaving.client, "fleetmesh_jobs_released_total"), 1);
    assert_eq!(counter(&client, "fleetmesh_tasks_released_total"), 1);
    let metrics = leaving.client.metrics_text();
    assert!(metrics.contains("fleetmesh_vehicle_refusing{reason=\"driving\"} 1"), "{metrics}");
    assert!(metrics.contains("fleetmesh_vehicle_serving 0"), "{metrics}");

    // The worker that ran it has it in its owner's ledger once the receipt is in: a task and
    // its price today, and the ledger outlives a restart.
    let i = nodes.iter().position(|n| done.verified_by.contains(&n.client.public_key().to_string())).unwrap();
    let worker = nodes[i].client.clone();
    wait_until("the receipt in the worker's ledger", async || {
        worker.ledger().await.unwrap().total.tasks == 1
    })
    .await;
    let ledger = worker.ledger().await.unwrap();
    assert!(!ledger.days.is_empty(), "{ledger:?}");
    assert!(ledger.total.credits >= 1, "{ledger:?}");
    assert_eq!(ledger.device_power_w, 60.0);
    wait_until("the ledger gauge", async || counter(&worker, "fleetmesh_ledger_tasks") == 1).await;
    assert_eq!(counter(&leaving.client, "fleetmesh_ledger_tasks"), 0, "a released job earns nothing");
    let mut nodes = nodes;
    nodes.remove(i).stop().await;
    let again = fleetmesh_node::Node::spawn(fleetmesh_node::local::loopback_config(
        dir.path().join(format!("node{i}")),
    ))
    .await
    .unwrap();
    assert_eq!(again.client.ledger().await.unwrap(), ledger, "the ledger after a restart");
    nodes.push(again);
    stop_all(nodes).await;
}
