//! Operator certificates end to end: `fleetmesh certify` signs a vehicle's key, the vehicle
//! shows the certificate in its adverts, and a requester running a closed mesh gives its
//! tasks only to its operators' vehicles. A certificate that does not hold stops a node at
//! start, saying why.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use fleetmesh_node::Phase;

fn certify(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmesh"))
        .arg("certify")
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_mesh_gives_its_tasks_only_to_its_operators_vehicles() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mesh");
    let (operator, _) =
        fleetmesh_crypto::load_or_create_identity(&dir.path().join("operator/node.key")).unwrap();
    // Node 2's key exists before it starts, so its operator can certify it.
    let (vehicle, _) = fleetmesh_crypto::load_or_create_identity(&root.join("node2/node.key")).unwrap();
    let cert = dir.path().join("node2.cert");
    let (ok, out, err) = certify(&[
        "--operator-dir",
        dir.path().join("operator").to_str().unwrap(),
        "--vehicle",
        &vehicle.public().peer_id(),
        "--days",
        "30",
        "--out",
        cert.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&operator.public().to_string()), "{out}");
    // Errors say what is wrong.
    let (ok, _, err) = certify(&["--operator-dir", "/nonexistent", "--vehicle", "ab", "--out", "/tmp/x"]);
    assert!(!ok && err.contains("neither a peer id"), "{err}");
    let (ok, _, err) = certify(&[
        "--operator-dir",
        "/nonexistent",
        "--vehicle",
        &vehicle.public().to_string(),
        "--out",
        "/tmp/x",
    ]);
    assert!(!ok && err.contains("fleetmesh keygen"), "{err}");

    let op = operator.public().to_string();
    let nodes = mesh(&root, 4, |i, c| match i {
        0 => {
            c.trust.closed = true;
            c.trust.operators = vec![op.clone()];
        }
        2 => c.operator_cert = Some(cert.clone()),
        _ => {}
    })
    .await;
    ready(&nodes, 3).await;
    let certified = nodes[2].client.public_key().to_string();
    for sample in 0..3 {
        let (req, label) = digits_task(sample, 1);
        let id = nodes[0].client.submit(req).await.unwrap();
        let v = wait_done(&nodes[0].client, id).await;
        assert_eq!(v.phase, Phase::Verified, "{v:#?}");
        assert_eq!(v.label, Some(u32::from(label)));
        assert_eq!(v.verified_by, vec![certified.clone()], "only the certified vehicle works for it: {v:#?}");
        assert!(v.workers.iter().all(|w| w.worker == certified), "{v:#?}");
    }
    // Another node's tasks are open to all: the certificate only adds the operator.
    let (req, label) = digits_task(7, 2);
    let id = nodes[1].client.submit(req).await.unwrap();
    assert_verified(&wait_done(&nodes[1].client, id).await, label);
    stop_all(nodes).await;

    // A certificate for another key stops the node at start, saying so.
    let other = dir.path().join("other");
    let err = fleetmesh_node::Node::spawn(fleetmesh_node::NodeConfig {
        operator_cert: Some(cert.clone()),
        ..fleetmesh_node::local::loopback_config(other)
    })
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("is for vehicle"), "{err}");
}
