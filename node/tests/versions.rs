//! Wire version 2 against peers of another version: a request on the old task protocol gets
//! a refusal that names the version this node speaks, and a peer that announces another
//! fleetmesh version in identify is disconnected and counted (issue 10, wire version 2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use fleetmesh_crypto::{Identity, MessageKind, SignedEnvelope};
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::{ids, Signed};

fn a_bid() -> TaskRequest {
    TaskRequest::Bid { bid: unknown_task_bid().sign(&Identity::generate().unwrap()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_request_is_refused_with_the_version_this_node_speaks() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 1, |_, _| {}).await;
    let c = &nodes[0].client;
    let before = counter(c, "fleetmesh_peers_other_version_total");
    // A real version-1 node runs identify too: its request still gets the refusal (the
    // node disconnects it only after a short grace).
    let r = old_peer_request(c, Some("/fleetmesh/id/1"), "/fleetmesh/task/1", a_bid()).await;
    match &r {
        Ok(TaskResponse::Refused(Refusal::Invalid(why))) => {
            assert!(why.contains("wire version 2") && why.contains("/fleetmesh/task/1"), "{why}")
        }
        other => panic!("a version-1 request got {other:?}"),
    }
    assert!(counter(c, "fleetmesh_peers_other_version_total") > before);
    // A version-1 award carries up to a megabyte of input: the refusal comes after the node
    // has read it all, not as a reset in the middle of the write.
    let award = TaskRequest::Award {
        spec: SignedEnvelope::sign(&Identity::generate().unwrap(), MessageKind::TaskSpec, vec![1]),
        award: SignedEnvelope::sign(&Identity::generate().unwrap(), MessageKind::Award, vec![2]),
        input: vec![7; 600 * 1024],
    };
    let r = old_peer_request(c, None, "/fleetmesh/task/1", award).await;
    assert!(
        matches!(&r, Ok(TaskResponse::Refused(Refusal::Invalid(why))) if why.contains("wire version 2")),
        "{r:?}"
    );
    // The same request on this version's protocol is read as a request (the task is unknown).
    let r = old_peer_request(c, None, ids::TASK_PROTOCOL, a_bid()).await;
    assert!(
        matches!(&r, Ok(TaskResponse::Refused(Refusal::UnknownTask | Refusal::Invalid(_))))
            && !format!("{r:?}").contains("wire version"),
        "{r:?}"
    );
    // A protocol no version ever spoke is not negotiated at all.
    let r = old_peer_request(c, None, "/fleetmesh/task/9", a_bid()).await;
    assert!(r.is_err(), "{r:?}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_another_version_is_disconnected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 1, |_, _| {}).await;
    let c = &nodes[0].client;
    let old = "/fleetmesh/task/1";
    assert!(old_peer_is_disconnected(c, "/fleetmesh/id/1", old, Duration::from_secs(20)).await);
    assert_eq!(counter(c, "fleetmesh_peers_other_version_total"), 1);
    // A peer of this version, a later version that still speaks this one's task protocol (a
    // rolling upgrade), and software that is not fleetmesh are left alone.
    let ours = ids::TASK_PROTOCOL;
    for (identify, task) in [(ids::IDENTIFY_PROTOCOL, ours), ("/fleetmesh/id/3", ours), ("ipfs/0.1.0", old)] {
        assert!(!old_peer_is_disconnected(c, identify, task, Duration::from_secs(4)).await, "{identify}");
    }
    assert_eq!(counter(c, "fleetmesh_peers_other_version_total"), 1);
    stop_all(nodes).await;
}
