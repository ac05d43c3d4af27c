//! Sign and verify a signed envelope; blake3 content ids. `cargo bench -p fleetmesh-crypto`.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fleetmesh_crypto::{Identity, MessageKind, OutputDigest, SignedEnvelope};

fn envelope(c: &mut Criterion) {
    let id = Identity::from_secret_bytes(&[7; 32]);
    let mut g = c.benchmark_group("envelope");
    for size in [256usize, 4096] {
        let payload = vec![0x5a; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("sign", size), &payload, |b, p| {
            b.iter(|| SignedEnvelope::sign(&id, MessageKind::Bid, p.clone()))
        });
        let env = SignedEnvelope::sign(&id, MessageKind::Bid, payload);
        g.bench_with_input(BenchmarkId::new("verify", size), &env, |b, e| {
            b.iter(|| e.verify(MessageKind::Bid).unwrap().len())
        });
    }
    g.finish();
}

fn digest(c: &mut Criterion) {
    let mut g = c.benchmark_group("blake3");
    for size in [256usize, 1 << 20] {
        let data = vec![1u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| b.iter(|| OutputDigest::of(d)));
    }
    g.finish();
}

criterion_group!(benches, envelope, digest);
criterion_main!(benches);
