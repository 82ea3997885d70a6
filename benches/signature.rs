//! Signature verification: 1 and 3 secrets, 1 KB and 64 KB bodies, valid and forged.
//!
//! `cargo bench --bench signature`; see benches/README.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sym_circleci_approver::inbound::signature::{Verifier, WebhookSecret};

const NOW: i64 = 1_700_000_000;
const TIMESTAMP: &str = "1700000000";
const ID: &str = "msg_2bGq9yQ1xQbQ7m1n0fJ8kZ3pR4s";

/// Fixed secrets so runs are comparable (any 32 bytes do).
const SECRETS: [&str; 3] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_Ym9ndXMtc2VjcmV0LWZvci1iZW5jaGluZy0wMDAx",
    "whsec_c2Vjb25kLWJvZ3VzLXNlY3JldC1mb3ItYmVuY2hlcw",
];

fn body(len: usize) -> Vec<u8> {
    let mut body =
        br#"{"id":"0b5f6f7c-3c1e-4d7a-9a3e-6c0f2f8e1a22","event":{"type":"approve"},"pad":""#
            .to_vec();
    while body.len() + 2 < len {
        body.push(b'x');
    }
    body.extend_from_slice(b"\"}");
    body
}

fn verification(c: &mut Criterion) {
    let secrets: Vec<WebhookSecret> = SECRETS
        .iter()
        .map(|s| WebhookSecret::parse(s).unwrap())
        .collect();
    let mut group = c.benchmark_group("verify");
    for n_secrets in [1usize, 3] {
        // The delivery is signed with the last configured secret (rotation: the new one).
        let configured = secrets[..n_secrets].to_vec();
        let signer = configured[n_secrets - 1].clone();
        let verifier = Verifier::new(configured, Duration::from_secs(300));
        for len in [1024usize, 64 * 1024] {
            let body = body(len);
            let valid = signer.sign(ID, NOW, &body);
            // Well formed, current timestamp, wrong tag: the HMAC is computed and compared.
            let forged = format!("v1,{}", "A".repeat(43) + "=");
            group.throughput(Throughput::Bytes(len as u64));
            for (kind, header) in [("valid", &valid), ("forged", &forged)] {
                let expect_ok = kind == "valid";
                let id = BenchmarkId::new(format!("{n_secrets}_secret/{kind}"), len);
                group.bench_with_input(id, &body, |b, body| {
                    b.iter(|| {
                        let r = verifier.verify(
                            black_box(Some(ID)),
                            black_box(Some(TIMESTAMP)),
                            black_box(Some(header.as_str())),
                            black_box(body),
                            NOW,
                        );
                        assert_eq!(r.is_ok(), expect_ok);
                        r
                    })
                });
            }
        }
    }
    group.finish();

    // Rejections that never reach the HMAC, and a header stuffed with entries.
    let verifier = Verifier::new(secrets[..1].to_vec(), Duration::from_secs(300));
    let small = body(1024);
    let stuffed = vec!["v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="; 64].join(" ");
    let mut group = c.benchmark_group("reject");
    group.bench_function("stale_timestamp", |b| {
        b.iter(|| {
            verifier.verify(
                black_box(Some(ID)),
                black_box(Some("1600000000")),
                black_box(Some("v1,AAAA")),
                black_box(&small),
                NOW,
            )
        })
    });
    group.bench_function("stuffed_header_1k", |b| {
        b.iter(|| {
            verifier.verify(
                black_box(Some(ID)),
                black_box(Some(TIMESTAMP)),
                black_box(Some(stuffed.as_str())),
                black_box(&small),
                NOW,
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = verification
}
criterion_main!(benches);
