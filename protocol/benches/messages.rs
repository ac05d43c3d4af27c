//! Encode, decode and open each message; the winner rule over 10, 100 and 1,000 bids.
//! `cargo bench -p fleetmesh-protocol`.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fleetmesh_crypto::{Identity, InputDigest, ModelId, OutputDigest, PublicKey, SignedEnvelope, TaskId};
use fleetmesh_protocol::wire::TaskRequest;
use fleetmesh_protocol::{
    decode, encode, winner, Award, Bid, ResultHeader, RuntimeProfile, Signed, TaskSpec, WIRE_VERSION,
};

fn spec() -> TaskSpec {
    TaskSpec {
        v: WIRE_VERSION,
        model: ModelId::of(b"m"),
        input_digest: InputDigest::of(b"i"),
        input_size: 256,
        redundancy: 2,
        max_price: 100,
        created_ms: 1,
        bid_window_ms: 1000,
        exec_timeout_ms: 10_000,
        deadline_ms: 100_000,
        nonce: 9,
        batch: None,
        tolerance: None,
    }
}

fn bid(i: u32) -> Bid {
    Bid {
        v: WIRE_VERSION,
        task_id: TaskId::of(b"t"),
        round: 0,
        price: u64::from(i % 100),
        promised_ms: 100 + i % 900,
        queue_depth: i % 5,
        free_slots: 2,
        depart_ms: None,
    }
}

fn codec(c: &mut Criterion) {
    let id = Identity::from_secret_bytes(&[1; 32]);
    let mut g = c.benchmark_group("codec");
    macro_rules! roundtrip {
        ($name:literal, $ty:ty, $value:expr) => {{
            let v: $ty = $value;
            g.bench_function(concat!("encode/", $name), |b| b.iter(|| encode(&v)));
            let bytes = encode(&v);
            g.bench_function(concat!("decode/", $name), |b| {
                b.iter(|| decode::<$ty>(&bytes, 1 << 21).unwrap())
            });
            let env = v.sign(&id);
            g.bench_function(concat!("open/", $name), |b| b.iter(|| <$ty>::open(&env).unwrap()));
        }};
    }
    roundtrip!("task_spec", TaskSpec, spec());
    roundtrip!("bid", Bid, bid(3));
    roundtrip!(
        "award",
        Award,
        Award {
            v: WIRE_VERSION,
            task_id: TaskId::of(b"t"),
            round: 0,
            bid_root: Some(fleetmesh_crypto::Digest::of(b"bids")),
            bid_count: 10,
            winners: vec![id.public(); 2],
            result_deadline_ms: 5,
            select_ppm: None,
            invited: vec![],
            offer: false,
        }
    );
    roundtrip!(
        "result_header",
        ResultHeader,
        ResultHeader {
            v: WIRE_VERSION,
            task_id: TaskId::of(b"t"),
            input_digest: InputDigest::of(b"i"),
            model: ModelId::of(b"m"),
            output_digest: OutputDigest::of(b"o"),
            output_size: 30,
            run_time_us: 40,
            runtime: RuntimeProfile { engine: "tract-onnx 0.23.9".into(), isa: "x86_64,avx2,fma".into() },
            energy_mj: None,
        }
    );
    let award_req =
        TaskRequest::Award { spec: spec().sign(&id), award: bid(1).sign(&id), input: vec![0; 256] };
    g.bench_function("encode/award_request_256B_input", |b| b.iter(|| award_req.to_bytes()));
    let bytes = award_req.to_bytes();
    g.bench_function("decode/award_request_256B_input", |b| {
        b.iter(|| TaskRequest::from_bytes(&bytes).unwrap())
    });
    g.finish();
}

fn winner_rule(c: &mut Criterion) {
    let task = TaskId::of(b"t");
    let requester: PublicKey = Identity::from_secret_bytes(&[200; 32]).public();
    let mut g = c.benchmark_group("winner_rule");
    g.sample_size(20);
    for n in [10u32, 100, 1000] {
        let bids: Vec<SignedEnvelope> = (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                bid(i).sign(&Identity::from_secret_bytes(&seed))
            })
            .collect();
        // Includes verifying every bid's signature, as the requester does.
        g.bench_with_input(BenchmarkId::from_parameter(n), &bids, |b, bids| {
            b.iter(|| winner::choose(&task, &spec(), &requester, 0, bids).winners)
        });
    }
    g.finish();
}

criterion_group!(benches, codec, winner_rule);
criterion_main!(benches);
