//! `fleetmesh bench --quick` runs every part end to end and reports every figure. No timing
//! is asserted here: targets live in docs/BENCHMARKS.md, measured with release builds.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use fleetmesh_cli::bench::{run, BenchOptions, Part};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_bench_reports_every_part() {
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let _ = tracing_subscriber::registry().with(fleetmesh_node::tracer::layer()).try_init();
    }
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_fleetmesh"));
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        run(
            &[Part::Overhead, Part::Throughput, Part::Memory, Part::Gossip],
            &BenchOptions { quick: true, ..BenchOptions::default() },
            exe,
        ),
    )
    .await
    .expect("bench timed out")
    .unwrap();
    assert_eq!(r.overhead_tasks, Some(10));
    let (e2e, direct) = (r.e2e_p50_ms.unwrap(), r.direct_p50_us.unwrap());
    assert!(direct > 0.0 && e2e * 1000.0 > direct, "end to end must include the inference: {r:?}");
    assert!(r.overhead_p99_ms.unwrap() >= r.overhead_p50_ms.unwrap());
    // The nodes have heard each other's adverts (the part waits for start-up traffic to pass),
    // so tasks are awarded on standing offers: no announcement and no bid.
    assert!(r.offer_award_share.unwrap() > 0.5, "{r:?}");
    // A task's lifecycle signs at least its spec, award, result and receipt, and checks at
    // least the award, the result and the receipt.
    let (signed, verified) = (r.sig_signed_per_task.unwrap(), r.sig_verified_per_task.unwrap());
    assert!(signed >= 4.0 && verified >= 3.0, "{r:?}");
    assert!((r.sig_ops_per_task.unwrap() - (signed + verified)).abs() < 1e-9);
    assert!(r.cpu_ms_per_task.unwrap() > 0.0, "{r:?}");
    // At least an award, a result and their answers.
    assert!(r.messages_per_task.unwrap() >= 4.0, "{r:?}");
    assert_eq!(r.throughput_levels.len(), 2);
    assert!(r.tasks_per_s.unwrap() > 0.0, "no task verified under load: {r:?}");
    // The same lanes with batches of 16: each verified batch counts 16 inputs.
    assert_eq!(r.batch_size, Some(16));
    let batch = r.batch_inputs_per_s.unwrap();
    assert!(batch > 0.0, "no batch verified under load: {r:?}");
    assert!(r.idle_node_rss_mb.unwrap() > 1.0 && r.mesh200_rss_mb.unwrap() > r.idle_node_rss_mb.unwrap());
    let anon = r.idle_node_anon_mb.unwrap();
    assert!(anon > 0.0 && anon < r.idle_node_rss_mb.unwrap(), "{r:?}");
    assert_eq!(r.mesh_nodes, Some(20));
    // Gossip: every announcement reaches every other node (a property, not a timing).
    assert_eq!((r.gossip_nodes, r.gossip_messages), (Some(20), Some(20)));
    assert_eq!(r.gossip_delivery_ratio, Some(1.0), "{r:?}");
    assert!(r.gossip_p99_ms.unwrap() >= r.gossip_p50_ms.unwrap());
    assert!(r.gossip_dups_per_node.unwrap() > 0.0, "a 20-node gossipsub mesh always sends copies: {r:?}");
}
