//! Traces from a real in-process mesh: the gossip trace shows one delivery per subscribed
//! node per message, duplicates are caught, the timelines verify, and tampering is found.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use fleetmesh_trace::gossip::kind;
use fleetmesh_trace::{analyze, timeline, timeline_path};

const TASKS: &str = fleetmesh_protocol::ids::TOPIC_TASKS;

fn install_trace_layer() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry().with(fleetmesh_node::tracer::layer()).try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_mesh_delivers_each_message_once_per_subscribed_node() {
    install_trace_layer();
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    let nodes = mesh(dir.path(), 4, |i, cfg| {
        cfg.trace = Some(traces.join(format!("node-{i}.jsonl")));
        // Every task announced (not awarded at once on standing offers): the gossip is traced.
        cfg.tasks.offers = false;
    })
    .await;
    ready(&nodes, 3).await;
    let requester = &nodes[1].client;
    for sample in 0..3 {
        let (req, label) = digits_task(sample, 2);
        let id = requester.submit(req).await.unwrap();
        assert_verified(&wait_done(requester, id).await, label);
    }
    let peers: Vec<Vec<u8>> = nodes.iter().map(|n| n.client.peer_id().to_bytes()).collect();
    let publisher = peers[1].clone();
    stop_all(nodes).await;

    let inputs = analyze::load(std::slice::from_ref(&traces)).unwrap();
    assert_eq!(inputs.gossip_files.len(), 4);
    assert_eq!(inputs.timelines.len(), 4);
    assert_eq!(inputs.bad_lines, 0);

    // Every announcement the requester published reached each other node exactly once.
    let announcements: BTreeSet<Vec<u8>> = inputs
        .gossip
        .iter()
        .filter(|e| e.kind == kind::PUBLISH_MESSAGE && e.topic() == Some(TASKS))
        .map(|e| {
            assert_eq!(e.peer_id, publisher);
            e.message_id().unwrap().to_vec()
        })
        .collect();
    assert!(announcements.len() >= 3, "one announcement per task at least");
    let mut deliveries: BTreeMap<(Vec<u8>, Vec<u8>), u32> = BTreeMap::new();
    for e in inputs.gossip.iter().filter(|e| e.kind == kind::DELIVER_MESSAGE) {
        *deliveries.entry((e.message_id().unwrap().to_vec(), e.peer_id.clone())).or_default() += 1;
    }
    assert!(deliveries.values().all(|n| *n == 1), "a node delivered a message twice");
    for m in &announcements {
        for p in peers.iter().filter(|p| **p != publisher) {
            assert_eq!(deliveries.get(&(m.clone(), p.clone())), Some(&1), "announcement not delivered once");
        }
        assert_eq!(deliveries.get(&(m.clone(), publisher.clone())), None, "the publisher delivers to itself");
    }

    // Duplicates come from gossipsub's own log event, and only for messages the node
    // already had (delivered, rejected or published itself).
    let dups: Vec<_> = inputs.gossip.iter().filter(|e| e.kind == kind::DUPLICATE_MESSAGE).collect();
    assert!(!dups.is_empty(), "no duplicates traced in a 4-node full mesh");
    let had: BTreeSet<(Vec<u8>, Vec<u8>)> = inputs
        .gossip
        .iter()
        .filter(|e| matches!(e.kind, kind::DELIVER_MESSAGE | kind::PUBLISH_MESSAGE | kind::REJECT_MESSAGE))
        .map(|e| (e.message_id().unwrap().to_vec(), e.peer_id.clone()))
        .collect();
    for d in &dups {
        let from = d.duplicate_message.as_ref().unwrap();
        assert!(peers.contains(&from.received_from), "duplicate without the peer it came from");
        assert!(
            had.contains(&(from.message_id.clone(), d.peer_id.clone())),
            "duplicate of an unseen message"
        );
    }
    // Each node joined both topics and grafted peers.
    for p in &peers {
        let of = |k| inputs.gossip.iter().filter(|e| e.kind == k && e.peer_id == *p).count();
        assert_eq!(of(kind::JOIN), 2);
        assert_eq!(of(kind::LEAVE), 2, "a clean shutdown leaves both topics");
        assert!(of(kind::GRAFT) >= 2);
    }

    // The analyzer agrees on the task topic.
    let a = analyze::analyze(&inputs, Some(TASKS));
    assert_eq!(a.publishes, announcements.len() as u64);
    assert_eq!(a.deliveries, 3 * a.publishes);
    assert_eq!(a.delivery_ratio, Some(1.0));
    assert_eq!(a.tasks.verified, 3);
    assert_eq!(a.tasks.wins_per_node.values().sum::<u64>(), 6, "k = 2 winners for 3 tasks");

    // The timelines are complete and untouched, and name the task events.
    for (path, records) in &inputs.timelines {
        let v = timeline::verify_file(path).unwrap();
        assert!(v.ok(), "{}: {v:?}", path.display());
        assert!(v.gossip_counts.is_some_and(|(_, dropped)| dropped == 0));
        assert!(records.iter().any(|r| r.event == timeline::event::START));
    }
    let requester_tl = timeline_path(&traces.join("node-1.jsonl"));
    let text = std::fs::read_to_string(&requester_tl).unwrap();
    for event in ["announced", "bid_received", "awarded", "result_received", "verified", "receipt_sent"] {
        assert!(text.contains(&format!("\"event\":\"{event}\"")), "requester timeline lacks {event}");
    }

    // The CLI: verify passes, analyze --json has the documented keys.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetmesh")).args(args).output().unwrap()
    };
    let t = traces.to_str().unwrap();
    let out = cli(&["trace", "verify", t]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = cli(&["trace", "analyze", "--json", t]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["peers", "messages", "deliveries", "duplicates", "rejects"] {
        assert!(json[key].is_u64(), "{key} missing");
    }
    assert_eq!(json["peers"], 4);
    for key in ["p50", "p99", "max"] {
        assert!(json["delivery_delay_ms"][key].is_f64(), "delivery_delay_ms.{key} missing");
    }
    let plots = dir.path().join("plots");
    let out = cli(&["trace", "analyze", t, "--plot", plots.to_str().unwrap()]);
    assert!(out.status.success());
    for chart in
        ["delivery_delay_cdf.svg", "duplicates_histogram.svg", "mesh_degree.svg", "task_timeline.svg"]
    {
        assert!(plots.join(chart).exists(), "{chart} not written");
    }

    // Tamper with one record of the requester's timeline: verify fails and says where.
    let tampered = text.replacen("\"event\":\"verified\"", "\"event\":\"failed\"", 1);
    std::fs::write(&requester_tl, tampered).unwrap();
    let out = cli(&["trace", "verify", t]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("hash chain broken") && report.contains("TAMPERED"), "{report}");
}
