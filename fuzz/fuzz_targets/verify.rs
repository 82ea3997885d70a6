//! The verifier on arbitrary headers and bodies, against two fixed secrets.
//!
//! - Never panics.
//! - Accepts only when the header really holds the right tag among its first entries.
//! - A message signed from the fuzz input (any id within limits, any body, a timestamp within
//!   the tolerance, written with or without leading zeros, by either secret, among decoys)
//!   always verifies, with the id and timestamp given back; with one body byte changed, it is
//!   refused.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sym_circleci_approver::inbound::signature::{
    SignatureError, Verifier, WebhookSecret, MAX_SIGNATURES, MAX_WEBHOOK_ID_LEN,
};

const SECRETS: [&str; 2] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_Ym9ndXMtc2VjcmV0LWZvci1mdXp6aW5nLTAwMDE",
];
const TOLERANCE: i64 = 300;

#[derive(Debug, Arbitrary)]
struct Input {
    id: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
    body: Vec<u8>,
    now: i64,
    /// For the signed case: which secret signs, the timestamp's distance from now, how many
    /// leading zeros it is written with, decoys before the real entry, and a byte to change.
    signer: bool,
    skew: i16,
    zeros: u8,
    decoys: Vec<String>,
    flip: u16,
}

fn secrets() -> &'static (Verifier, Vec<WebhookSecret>) {
    static CELL: OnceLock<(Verifier, Vec<WebhookSecret>)> = OnceLock::new();
    CELL.get_or_init(|| {
        let secrets: Vec<WebhookSecret> = SECRETS
            .iter()
            .map(|s| WebhookSecret::parse(s).unwrap())
            .collect();
        let verifier = Verifier::new(secrets.clone(), Duration::from_secs(TOLERANCE as u64));
        (verifier, secrets)
    })
}

fuzz_target!(|input: Input| {
    let (verifier, secrets) = secrets();

    // 1. Arbitrary headers and body: any verdict, no panic; an acceptance must be genuine.
    let result = verifier.verify(
        input.id.as_deref(),
        input.timestamp.as_deref(),
        input.signature.as_deref(),
        &input.body,
        input.now,
    );
    if let Ok(verified) = &result {
        let id = input.id.as_deref().unwrap();
        let header = input.signature.as_deref().unwrap();
        assert_eq!(verified.webhook_id, id);
        assert!((input.now.saturating_sub(verified.timestamp)).saturating_abs() <= TOLERANCE);
        let genuine = secrets.iter().any(|s| {
            let entry = s.sign(id, verified.timestamp, &input.body);
            header.split(' ').take(MAX_SIGNATURES).any(|e| e == entry)
        });
        assert!(genuine, "accepted without a genuine signature: {input:?}");
    }

    // 2. A message signed from the input always verifies.
    let Some(id) = input.id.as_deref() else {
        return;
    };
    if id.is_empty() || id.len() > MAX_WEBHOOK_ID_LEN {
        if input.timestamp.is_some() && input.signature.is_some() {
            assert_eq!(result, Err(SignatureError::InvalidId));
        }
        return;
    }
    let now = input.now.clamp(TOLERANCE, i64::MAX - TOLERANCE);
    let ts = now + i64::from(input.skew).clamp(-TOLERANCE, TOLERANCE);
    let ts_text = format!("{}{ts}", "0".repeat(usize::from(input.zeros % 4)));
    let signer = &secrets[usize::from(input.signer)];
    let entry = signer.sign(id, ts, &input.body);
    // Decoys (anything without a space, so each stays one entry) ahead of the real one,
    // leaving room for it among the first MAX_SIGNATURES entries.
    let mut entries: Vec<&str> = input
        .decoys
        .iter()
        .map(String::as_str)
        .filter(|d| !d.contains(' '))
        .take(MAX_SIGNATURES - 1)
        .collect();
    entries.push(&entry);
    let header = entries.join(" ");
    let verified = verifier
        .verify(Some(id), Some(&ts_text), Some(&header), &input.body, now)
        .unwrap_or_else(|e| panic!("signed message refused ({e}): {input:?}"));
    assert_eq!(verified.webhook_id, id);
    assert_eq!(verified.timestamp, ts);

    // 3. The same signature over a body with one byte changed is refused.
    if !input.body.is_empty() {
        let mut body = input.body.clone();
        let at = usize::from(input.flip) % body.len();
        body[at] ^= 1u8 << (input.flip % 8);
        assert_eq!(
            verifier.verify(Some(id), Some(&ts_text), Some(&entry), &body, now),
            Err(SignatureError::NoMatch)
        );
    }
});
