//! Sym event parsing of the reference approve event (tests/fixtures/sym-approve-event.json).
//!
//! `cargo bench --bench event`; see benches/README.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn parsing(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sym-approve-event.json");
    let body = std::fs::read(path).expect("fixture present");
    let mut group = c.benchmark_group("sym_event");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_approve_fixture", |b| {
        b.iter(|| sym_circleci_approver::inbound::sym_event::parse(black_box(&body)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = parsing
}
criterion_main!(benches);
