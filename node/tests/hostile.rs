//! Malformed, oversized and forged bytes on the task protocol: a clear refusal, no panic,
//! and the node keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use fleetmesh_crypto::{Identity, MessageKind, SignedEnvelope, TaskId};
use fleetmesh_node::Frame;
use fleetmesh_protocol::wire::{Refusal, TaskRequest, TaskResponse};
use fleetmesh_protocol::Signed;

/// A valid signed spec for a 2-byte input of the digits model.
fn spec_signed_by(id: &Identity) -> SignedEnvelope {
    fleetmesh_protocol::TaskSpec {
        v: 1,
        model: fleetmesh_node::digits::model_id(),
        input_digest: fleetmesh_crypto::InputDigest::of(b"in"),
        input_size: 2,
        redundancy: 1,
        max_price: 100,
        created_ms: 0,
        bid_window_ms: 100,
        exec_timeout_ms: 1000,
        deadline_ms: u64::MAX,
        nonce: 0,
        batch: None,
        tolerance: None,
    }
    .sign(id)
}

fn refused_invalid(r: &Result<TaskResponse, String>) -> bool {
    matches!(r, Ok(TaskResponse::Refused(Refusal::Invalid(_))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 4, |_, _| {}).await;
    ready(&nodes, 3).await;
    let attacker = &nodes[3].client;
    let victim = nodes[0].client.peer_id();

    // Garbage, truncated CBOR, deep nesting, an empty request.
    for bytes in [vec![0xff; 64], vec![0xa1, 0x63], vec![0x81; 10_000], vec![]] {
        let r = attacker.send_raw(victim, Frame::Raw(bytes)).await.unwrap();
        assert!(refused_invalid(&r), "{r:?}");
    }
    // Oversized: one byte over the limit.
    let big = vec![0u8; fleetmesh_protocol::limits::MAX_REQUEST_BYTES + 1];
    let r = attacker.send_raw(victim, Frame::Raw(big)).await.unwrap();
    assert!(refused_invalid(&r), "{r:?}");
    // A bid whose signature was made by another key.
    let bid = unknown_task_bid();
    let mut forged = bid.sign(&Identity::generate().unwrap());
    forged.signer = attacker.public_key();
    let r = attacker.send_raw(victim, Frame::Request(TaskRequest::Bid { bid: forged })).await.unwrap();
    assert!(refused_invalid(&r), "{r:?}");
    // A well-signed bid for a task the victim never heard of.
    let r = attacker
        .send_raw(victim, Frame::Request(TaskRequest::Bid { bid: bid.sign(&Identity::generate().unwrap()) }))
        .await
        .unwrap();
    assert!(refused_invalid(&r) || matches!(r, Ok(TaskResponse::Refused(Refusal::UnknownTask))), "{r:?}");
    // A result with a header signed as another kind of message.
    let header = SignedEnvelope::sign(&Identity::generate().unwrap(), MessageKind::Bid, vec![1, 2, 3]);
    let r = attacker
        .send_raw(
            victim,
            Frame::Request(TaskRequest::Result { task_id: TaskId::of(b"x"), header, output: vec![] }),
        )
        .await
        .unwrap();
    assert!(matches!(r, Ok(TaskResponse::Rejected(fleetmesh_protocol::RejectReason::BadSignature))), "{r:?}");
    // An award that names the victim but is signed by someone other than the spec's signer.
    let spec = spec_signed_by(&Identity::generate().unwrap());
    let award = fleetmesh_protocol::Award {
        v: 1,
        task_id: fleetmesh_protocol::task_id_of(&spec),
        round: 0,
        bid_root: None,
        bid_count: 0,
        winners: vec![nodes[0].client.public_key()],
        result_deadline_ms: u64::MAX,
        select_ppm: None,
        invited: vec![],
        offer: false,
    }
    .sign(&Identity::generate().unwrap());
    let r = attacker
        .send_raw(victim, Frame::Request(TaskRequest::Award { spec, award, input: b"in".to_vec() }))
        .await
        .unwrap();
    assert!(refused_invalid(&r), "{r:?}");

    // The victim still serves and requests.
    let (req, label) = digits_task(1, 2);
    let task = nodes[0].client.submit(req).await.unwrap();
    assert_verified(&wait_done(&nodes[0].client, task).await, label);
    assert!(nodes[0].client.metrics_text().contains("fleetmesh_malformed_requests_total 5"));
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 1, |_, _| {}).await;
    let c = &nodes[0].client;
    let empty = c.submit(fleetmesh_node::SubmitRequest::default()).await.unwrap_err();
    assert!(empty.to_string().contains("empty"), "{empty}");
    let (mut req, _) = digits_task(0, 9);
    let k = c.submit(req.clone()).await.unwrap_err();
    assert!(k.to_string().contains("redundancy"), "{k}");
    req.redundancy = Some(1);
    req.input = vec![0; fleetmesh_protocol::limits::MAX_INPUT_BYTES + 1];
    assert!(c.submit(req).await.unwrap_err().to_string().contains("exceeds"));
    // A task nobody can hear fails with a clear reason instead of waiting forever (a node
    // alone burns no bid rounds: a round starts when its announcement reaches a peer).
    let (mut lonely, _) = digits_task(0, 1);
    lonely.bid_window_ms = Some(50);
    lonely.deadline_ms = Some(5_000);
    lonely.exec_timeout_ms = Some(100);
    let id = c.submit(lonely).await.unwrap();
    let v = wait_done(c, id).await;
    assert_eq!(v.phase, fleetmesh_node::Phase::Failed);
    let failure = v.failure.unwrap();
    assert!(failure.contains("no peer ever received the announcement"), "{failure}");
    stop_all(nodes).await;
}

/// Forged and malformed gossip is rejected by every receiver's validation (and not acted
/// on); invalid DHT records are refused before they are stored; the mesh keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_gossip_and_dht_records_are_refused() {
    use fleetmesh_protocol::ids;
    let dir = tempfile::tempdir().unwrap();
    let nodes = mesh(dir.path(), 4, |_, _| {}).await;
    ready(&nodes, 3).await;
    let attacker = &nodes[3].client;
    let victims = &nodes[..3];
    let stranger = Identity::generate().unwrap();

    // Garbage on both topics.
    attacker.publish_raw(ids::TOPIC_TASKS, vec![0xff; 40]).await.unwrap().unwrap();
    attacker.publish_raw(ids::TOPIC_PRESENCE, vec![0x81; 300]).await.unwrap().unwrap();
    // An announcement whose signature is of another kind.
    let a = fleetmesh_protocol::Announcement {
        v: 1,
        task_id: TaskId::of(b"fake"),
        model: fleetmesh_node::digits::model_id(),
        round: 0,
        bid_deadline_ms: u64::MAX,
        max_price: 100,
        spec: None,
        select_ppm: None,
        invited: Vec::new(),
    };
    let wrong_kind = SignedEnvelope::sign(&stranger, MessageKind::Bid, fleetmesh_protocol::encode(&a));
    attacker.publish_raw(ids::TOPIC_TASKS, fleetmesh_protocol::encode(&wrong_kind)).await.unwrap().unwrap();
    // A presence advert that claims a victim as its signer, signed by someone else.
    let advert = fleetmesh_protocol::Presence {
        v: 1,
        models: vec![],
        free_slots: 99,
        depart_ms: None,
        price_floor: 0,
        at_ms: 0,
        offer_until_ms: None,
        max_batch: 0,
        operator_cert: None,
    };
    let mut claimed = advert.sign(&stranger);
    claimed.signer = nodes[0].client.public_key();
    attacker.publish_raw(ids::TOPIC_PRESENCE, fleetmesh_protocol::encode(&claimed)).await.unwrap().unwrap();
    // A validly signed advert of a key no victim is connected to: gossip is anonymous, so it
    // is not rejected, but it is not believed either (only connected signers' adverts count).
    attacker
        .publish_raw(ids::TOPIC_PRESENCE, fleetmesh_protocol::encode(&advert.sign(&stranger)))
        .await
        .unwrap()
        .unwrap();

    let rejected = || -> Vec<u64> {
        victims.iter().map(|n| counter(&n.client, "fleetmesh_gossip_rejected_total")).collect()
    };
    wait_until_with(
        "every victim to reject the 4 forged messages",
        async || rejected().iter().all(|&r| r >= 4),
        || format!("(rejections per victim: {:?})", rejected()),
    )
    .await;
    // Nobody bid on the fake task (its spec does not exist anyway) and nobody believes the
    // forged advert of 99 free slots.
    for n in victims {
        assert!(n.client.peers().await.unwrap().iter().all(|p| p.free_slots != Some(99)));
    }

    // DHT: garbage under a task key, a valid spec under the wrong task id, an open-tasks
    // record under another requester's key.
    let spec = spec_signed_by(&stranger);
    let open = fleetmesh_protocol::OpenTasks {
        v: 1,
        model: fleetmesh_node::digits::model_id(),
        tasks: vec![],
        updated_ms: 0,
    }
    .sign(&stranger);
    let records = [
        (ids::task_record_key(&TaskId::of(b"a")), vec![0xff; 10]),
        (ids::task_record_key(&TaskId::of(b"not the spec")), fleetmesh_protocol::encode(&spec)),
        (
            ids::open_tasks_record_key(&fleetmesh_node::digits::model_id(), &nodes[0].client.public_key()),
            fleetmesh_protocol::encode(&open),
        ),
    ];
    for (k, v) in records {
        attacker.put_raw_record(k, v).await.unwrap().unwrap();
    }
    let refused = || -> Vec<u64> {
        victims.iter().map(|n| counter(&n.client, "fleetmesh_records_refused_total")).collect()
    };
    wait_until_with(
        "the victims to refuse the 3 invalid records",
        async || refused().iter().sum::<u64>() >= 3,
        || format!("(refusals per victim: {:?})", refused()),
    )
    .await;

    let (req, label) = digits_task(2, 2);
    let task = nodes[1].client.submit(req).await.unwrap();
    assert_verified(&wait_done(&nodes[1].client, task).await, label);
    stop_all(nodes).await;
}
