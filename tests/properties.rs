//! Properties of the inbound path (signature check and Sym event parsing), checked with
//! proptest on generated inputs: nothing that is not a genuine signature is accepted, every
//! genuine signature is, and the event parser never panics.
//!
//! `cargo test --test properties`; `PROPTEST_CASES=10000` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proptest::prelude::*;
use proptest::sample::Index;
use sym_circleci_approver::domain::event::EventKind;
use sym_circleci_approver::inbound::signature::{
    signature_candidates, SignatureError, Verifier, WebhookSecret, MAX_SIGNATURES,
    MAX_WEBHOOK_ID_LEN, TAG_LEN,
};

const TOLERANCE: i64 = 300;
const MAX_BODY: usize = 64 * 1024;

fn verifier(secrets: &[WebhookSecret]) -> Verifier {
    Verifier::new(secrets.to_vec(), Duration::from_secs(TOLERANCE as u64))
}

/// A configured secret from random key bytes (24..64 of them), in either accepted spelling.
fn secret() -> impl Strategy<Value = WebhookSecret> {
    (prop::collection::vec(any::<u8>(), 24..64), any::<bool>()).prop_map(|(key, prefixed)| {
        let text = STANDARD.encode(key);
        let text = if prefixed {
            format!("whsec_{text}")
        } else {
            text
        };
        WebhookSecret::parse(&text).unwrap()
    })
}

/// 1 to 3 secrets and the index of the one that signs.
fn secrets_and_signer() -> impl Strategy<Value = (Vec<WebhookSecret>, usize)> {
    prop::collection::vec(secret(), 1..=3).prop_flat_map(|secrets| {
        let n = secrets.len();
        (Just(secrets), 0..n)
    })
}

/// A webhook-id within limits: header-safe ASCII, or any text that fits in 256 bytes.
fn webhook_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[!-~]{1,256}",
        "msg_[0-9A-Za-z]{27}",
        "\\PC{1,64}".prop_filter("within the byte limit", |s| s.len() <= MAX_WEBHOOK_ID_LEN),
    ]
}

/// A verifier's "now" and a timestamp within the tolerance of it.
fn now_and_timestamp() -> impl Strategy<Value = (i64, i64)> {
    (TOLERANCE..i64::MAX / 2, -TOLERANCE..=TOLERANCE).prop_map(|(now, skew)| (now, now + skew))
}

fn body(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// One `webhook-signature` entry as senders and attackers might write it (never a space).
fn decoy_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::array::uniform32(any::<u8>()).prop_map(|tag| format!("v1,{}", STANDARD.encode(tag))),
        prop::array::uniform32(any::<u8>()).prop_map(|tag| format!("v2,{}", STANDARD.encode(tag))),
        prop::collection::vec(any::<u8>(), 0..48)
            .prop_map(|tag| format!("v1,{}", STANDARD.encode(tag))),
        "v1,[A-Za-z0-9+/=]{0,60}",
        "[!-~]{0,60}",
    ]
}

/// A whole header: entries joined by spaces, sometimes with empty entries or odd text.
fn signature_header() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(decoy_entry(), 0..20).prop_map(|entries| entries.join(" ")),
        "\\PC{0,200}",
        ".{0,200}",
    ]
}

/// The straightforward, allocating reading of the header that the parser must match.
fn reference_candidates(header: &str) -> Vec<[u8; TAG_LEN]> {
    header
        .split(' ')
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .filter_map(|tag| <[u8; TAG_LEN]>::try_from(tag).ok())
        .collect()
}

/// True when `header` holds, among the entries looked at, the tag `secret` makes.
fn genuinely_signed(
    secrets: &[WebhookSecret],
    id: &str,
    ts: i64,
    body: &[u8],
    header: &str,
) -> bool {
    secrets.iter().any(|s| {
        let entry = s.sign(id, ts, body);
        header.split(' ').take(MAX_SIGNATURES).any(|e| e == entry)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random ids, timestamps, headers and bodies are refused (a random header matching the
    /// HMAC would be a 2^-256 event).
    #[test]
    fn anything_not_genuinely_signed_is_refused(
        (secrets, _) in secrets_and_signer(),
        id in prop::option::of(prop_oneof![webhook_id(), ".{0,300}"]),
        timestamp in prop::option::of(prop_oneof![
            "[0-9]{1,12}", "0*[0-9]{1,10}", "[-+ ]?[0-9]{1,10}", ".{0,24}"
        ]),
        header in prop::option::of(signature_header()),
        body in body(4096),
        (now, _) in now_and_timestamp(),
        ts_near_now in any::<bool>(),
    ) {
        // Half the time the timestamp is a current one, so the HMAC is really checked.
        let timestamp = if ts_near_now { Some(now.to_string()) } else { timestamp };
        let result = verifier(&secrets).verify(
            id.as_deref(), timestamp.as_deref(), header.as_deref(), &body, now,
        );
        if let Ok(verified) = result {
            // Only possible if the generator happened to produce the real tag.
            prop_assert!(genuinely_signed(
                &secrets, id.as_deref().unwrap(), verified.timestamp, &body,
                header.as_deref().unwrap()
            ));
        }
    }

    /// A genuine signature over any body (0..64 KiB), any id within limits and any current
    /// timestamp verifies, with 1-3 secrets configured and any of them signing, also behind
    /// decoy entries; the id and timestamp come back as sent.
    #[test]
    fn every_genuine_signature_is_accepted(
        (secrets, signer) in secrets_and_signer(),
        id in webhook_id(),
        (now, ts) in now_and_timestamp(),
        body in body(MAX_BODY),
        decoys in prop::collection::vec(decoy_entry(), 0..MAX_SIGNATURES),
        real_at in any::<Index>(),
    ) {
        let entry = secrets[signer].sign(&id, ts, &body);
        let mut entries = decoys;
        entries.insert(real_at.index(entries.len() + 1), entry);
        let header = entries.join(" ");
        let verified = verifier(&secrets)
            .verify(Some(&id), Some(&ts.to_string()), Some(&header), &body, now);
        prop_assert_eq!(verified.map(|v| (v.webhook_id, v.timestamp)), Ok((id, ts)));
    }

    /// A genuine signature no longer verifies once any one byte of the body, the id or the
    /// timestamp is changed.
    #[test]
    fn a_genuine_signature_with_one_byte_changed_is_refused(
        (secrets, signer) in secrets_and_signer(),
        id in "[!-~]{1,256}",
        (now, ts) in now_and_timestamp(),
        body in body(4096),
        what in 0..3u8,
        at in any::<Index>(),
        delta in 1..=255u8,
    ) {
        let header = secrets[signer].sign(&id, ts, &body);
        let verifier = verifier(&secrets);
        let (mut id, mut timestamp, mut body) = (id.into_bytes(), ts.to_string().into_bytes(), body);
        match what {
            0 if !body.is_empty() => {
                let i = at.index(body.len());
                body[i] = body[i].wrapping_add(delta);
            }
            // Printable ASCII stays printable ASCII (the id is a header value).
            0 | 1 => {
                let i = at.index(id.len());
                id[i] = b'!' + (id[i] - b'!' + 1 + delta % 93) % 94;
            }
            _ => {
                let i = at.index(timestamp.len());
                timestamp[i] = b'0' + (timestamp[i] - b'0' + 1 + delta % 9) % 10;
            }
        }
        let id = String::from_utf8(id).unwrap();
        let timestamp = String::from_utf8(timestamp).unwrap();
        let result = verifier.verify(Some(&id), Some(&timestamp), Some(&header), &body, now);
        prop_assert!(result.is_err(), "changed delivery accepted: {result:?}");
    }

    /// Truncated and extended tags never verify: fewer or more decoded bytes, fewer or more
    /// base64 characters, padding removed or added, bytes appended to the entry.
    #[test]
    fn truncated_or_extended_tags_are_refused(
        (secrets, signer) in secrets_and_signer(),
        id in webhook_id(),
        (now, ts) in now_and_timestamp(),
        body in body(1024),
        cut in 1..TAG_LEN,
        extra in prop::collection::vec(any::<u8>(), 1..16),
        chars in "[A-Za-z0-9+/=]{1,8}",
        how in 0..5u8,
    ) {
        let genuine = secrets[signer].sign(&id, ts, &body);
        let b64 = genuine.strip_prefix("v1,").unwrap();
        let tag = STANDARD.decode(b64).unwrap();
        let header = match how {
            0 => format!("v1,{}", STANDARD.encode(&tag[..TAG_LEN - cut])),
            1 => format!("v1,{}", STANDARD.encode([tag.as_slice(), &extra].concat())),
            2 => format!("v1,{}", &b64[..b64.len() - cut.min(b64.len() - 1)]),
            3 => format!("v1,{b64}{chars}"),
            _ => format!("v1,{}", b64.trim_end_matches('=')),
        };
        let result = verifier(&secrets)
            .verify(Some(&id), Some(&ts.to_string()), Some(&header), &body, now);
        prop_assert_eq!(result, Err(SignatureError::NoMatch));
    }

    /// A genuine signature outside the tolerance window is refused as stale, whatever it is.
    #[test]
    fn a_genuine_signature_outside_the_window_is_refused(
        (secrets, signer) in secrets_and_signer(),
        id in webhook_id(),
        now in 0..i64::MAX / 2,
        distance in (TOLERANCE + 1)..(100 * 365 * 86_400),
        future in any::<bool>(),
        body in body(256),
    ) {
        let ts = if future { now + distance } else { now - distance };
        prop_assume!(ts >= 0);
        let header = secrets[signer].sign(&id, ts, &body);
        let result = verifier(&secrets)
            .verify(Some(&id), Some(&ts.to_string()), Some(&header), &body, now);
        prop_assert!(matches!(result, Err(SignatureError::StaleTimestamp(_))), "{result:?}");
    }

    /// The header parser yields what the plain allocating reading of the header yields, and
    /// never more than MAX_SIGNATURES tags.
    #[test]
    fn the_header_parser_matches_the_reference_reading(header in signature_header()) {
        let tags: Vec<[u8; TAG_LEN]> = signature_candidates(&header).collect();
        prop_assert!(tags.len() <= MAX_SIGNATURES);
        prop_assert_eq!(tags, reference_candidates(&header));
    }

    /// `inbound::sym_event::parse` never panics on arbitrary bytes.
    #[test]
    fn event_parsing_never_panics_on_bytes(bytes in body(2048)) {
        let _ = sym_circleci_approver::inbound::sym_event::parse(&bytes);
    }

    /// Nor on JSON shaped like a log entry with arbitrary values in the fields it reads, and
    /// what it accepts is consistent: an approve always carries a workflow id.
    #[test]
    fn event_parsing_never_panics_on_log_entry_shapes(
        id in json_value(),
        event_type in prop_oneof![
            Just(serde_json::json!("approve")), Just(serde_json::json!("deny")),
            Just(serde_json::json!("expire")), json_value()
        ],
        schema_version in prop_oneof![Just(serde_json::json!(4)), json_value()],
        workflow_id in prop_oneof![
            Just(serde_json::json!("7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e")), json_value()
        ],
        actor in json_value(),
        run in json_value(),
        drop in prop::collection::vec(any::<bool>(), 6),
    ) {
        let mut entry = serde_json::json!({
            "id": id,
            "meta": {"schema_version": schema_version},
            "event": {"type": event_type},
            "fields": {"workflow_id": workflow_id, "workflow_url": "https://x", "merging_user": "b"},
            "actor": actor,
            "run": run,
        });
        let map = entry.as_object_mut().unwrap();
        for (key, dropped) in ["id", "meta", "event", "fields", "actor", "run"].iter().zip(drop) {
            if dropped {
                map.remove(*key);
            }
        }
        let body = serde_json::to_vec(&entry).unwrap();
        if let Ok(event) = sym_circleci_approver::inbound::sym_event::parse(&body) {
            prop_assert!(!event.id.trim().is_empty() && event.id.len() <= 256);
            prop_assert!(event.kind != EventKind::Approve || event.workflow_id.is_some());
        }
    }
}

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,40}".prop_map(serde_json::Value::from),
        "[a-z]{0,300}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------------------------
// The retry schedule
// ---------------------------------------------------------------------------------------------

use sym_circleci_approver::domain::retry::{RetryKind, RetryPolicy};

fn policy() -> impl Strategy<Value = RetryPolicy> {
    (1u64..5_000, 1u64..600, 1u64..600).prop_map(|(initial_ms, max_s, poll_max_s)| RetryPolicy {
        initial: Duration::from_millis(initial_ms),
        max: Duration::from_secs(max_s),
        poll_max: Duration::from_secs(poll_max_s),
    })
}

proptest! {
    /// Without jitter the delay never shrinks as attempts grow, and never exceeds its cap.
    #[test]
    fn the_backoff_schedule_is_monotone_and_capped(
        policy in policy(),
        poll in any::<bool>(),
        attempts in 0i64..200,
    ) {
        let kind = if poll { RetryKind::Poll } else { RetryKind::Error };
        let cap = if poll { policy.poll_max } else { policy.max };
        let now = policy.delay_with_jitter(kind, attempts, None, 1.0);
        let next = policy.delay_with_jitter(kind, attempts + 1, None, 1.0);
        prop_assert!(next >= now, "{next:?} < {now:?} after {attempts} attempts");
        prop_assert!(now <= cap, "{now:?} over the cap {cap:?}");
    }

    /// With jitter (±20 %) a delay stays within 20 % of its capped value, and a server's
    /// Retry-After is never undercut.
    #[test]
    fn jitter_stays_near_the_schedule_and_retry_after_wins(
        policy in policy(),
        attempts in 0i64..200,
        jitter in 0.8f64..=1.2,
        asked_ms in proptest::option::of(0u64..3_600_000),
    ) {
        let plain = policy.delay_with_jitter(RetryKind::Error, attempts, None, 1.0);
        let jittered = policy.delay_with_jitter(RetryKind::Error, attempts, None, jitter);
        prop_assert!(jittered >= plain.mul_f64(0.79) && jittered <= plain.mul_f64(1.21));
        if let Some(asked) = asked_ms.map(Duration::from_millis) {
            let d = policy.delay_with_jitter(RetryKind::Error, attempts, Some(asked), jitter);
            prop_assert!(d >= asked);
        }
    }
}
