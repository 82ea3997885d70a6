//! Standard Webhooks signature verification.
//!
//! Sym signs each delivery with HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{raw body}`
//! and sends `v1,<base64>` entries in `webhook-signature`. Verification runs on the raw bytes
//! before any JSON parsing, compares in constant time, accepts any of several configured
//! secrets (rotation) and refuses timestamps outside a tolerance window. "Now" is a parameter
//! so the official library's vectors can be replayed in tests.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// Header names fixed by the Standard Webhooks spec.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Shorter keys make HMAC brute-forceable; the spec's own generator makes 24+ bytes.
pub const MIN_SECRET_BYTES: usize = 24;
/// Signature entries examined per delivery; senders send one, two during a key rotation.
const MAX_SIGNATURES: usize = 16;
/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// Longest `webhook-id` we store; real ids are ~30 characters.
const MAX_WEBHOOK_ID_LEN: usize = 256;
const SECRET_PREFIX: &str = "whsec_";

/// One webhook signing key, held as a keyed HMAC state (the key schedule is computed once).
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct WebhookSecret(HmacSha256);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// Why a configured secret was refused. Never carries the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("the secret is not valid base64 (after the optional whsec_ prefix)")]
    NotBase64,
    #[error("the secret decodes to {0} bytes; at least {MIN_SECRET_BYTES} are required")]
    TooShort(usize),
    #[error("the secret cannot be used as an HMAC key")]
    Unusable,
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`; the prefix is optional and padding may be omitted.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = STANDARD
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| SecretError::NotBase64)?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(key.len()));
        }
        let keyed = HmacSha256::new_from_slice(&key).map_err(|_| SecretError::Unusable)?;
        Ok(Self(keyed))
    }

    /// A fresh random secret in the `whsec_` form, for `gen-secret`.
    pub fn generate() -> String {
        let key: [u8; 32] = rand::random();
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value (`v1,<base64>`) for this message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// Why a delivery was refused. The HTTP layer answers every variant with the same 401;
/// the variant only goes to the log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("header {0} is missing or not valid text")]
    MissingHeader(&'static str),
    #[error("webhook-id is empty or too long")]
    InvalidId,
    #[error("webhook-timestamp is not a non-negative integer")]
    InvalidTimestamp,
    #[error("webhook-timestamp is {0} s away from now, outside the tolerance")]
    StaleTimestamp(i64),
    #[error("no v1 signature matches any configured secret")]
    NoMatch,
}

/// The authenticated parts of a delivery's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedHeaders {
    pub webhook_id: String,
    pub timestamp: i64,
}

/// Checks deliveries against the configured secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<WebhookSecret>,
    tolerance_secs: i64,
}

impl Verifier {
    pub fn new(secrets: Vec<WebhookSecret>, tolerance: std::time::Duration) -> Self {
        let tolerance_secs = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
        Self {
            secrets,
            tolerance_secs,
        }
    }

    /// Verifies a delivery given its three header values (None when absent) and raw body.
    pub fn verify(
        &self,
        webhook_id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<VerifiedHeaders, SignatureError> {
        let webhook_id = webhook_id.ok_or(SignatureError::MissingHeader(HEADER_ID))?;
        let timestamp = timestamp.ok_or(SignatureError::MissingHeader(HEADER_TIMESTAMP))?;
        let signature = signature.ok_or(SignatureError::MissingHeader(HEADER_SIGNATURE))?;

        if webhook_id.is_empty() || webhook_id.len() > MAX_WEBHOOK_ID_LEN {
            return Err(SignatureError::InvalidId);
        }
        // Digits only: refuses "-1", "+5", " 5" and "yesterday" alike.
        if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignatureError::InvalidTimestamp);
        }
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| SignatureError::InvalidTimestamp)?;
        let skew = now.saturating_sub(ts);
        if skew.saturating_abs() > self.tolerance_secs {
            return Err(SignatureError::StaleTimestamp(skew));
        }

        // At most MAX_SIGNATURES entries are looked at, so a header stuffed with thousands of
        // entries costs no more than a normal one (the HMAC is computed once per secret).
        // Entries of other versions or bad base64 are skipped; only full-length tags can match,
        // so an empty or truncated signature never does.
        let candidates: Vec<Vec<u8>> = signature
            .split(' ')
            .take(MAX_SIGNATURES)
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .filter(|tag| tag.len() == TAG_LEN)
            .collect();

        let mut matched = subtle::Choice::from(0);
        for secret in &self.secrets {
            let expected = secret.mac(webhook_id, ts, body).finalize().into_bytes();
            for tag in &candidates {
                // Constant time, and no early exit: timing does not reveal which one matched.
                matched |= expected.as_slice().ct_eq(tag.as_slice());
            }
        }
        let matched: bool = matched.into();
        if matched {
            Ok(VerifiedHeaders {
                webhook_id: webhook_id.to_owned(),
                timestamp: ts,
            })
        } else {
            Err(SignatureError::NoMatch)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[derive(serde::Deserialize)]
    struct Vectors {
        tolerance_seconds: u64,
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        secrets: Vec<String>,
        now: String,
        headers: std::collections::HashMap<String, String>,
        body: String,
        valid: bool,
    }

    fn reference_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    #[test]
    fn every_standard_webhooks_reference_vector_gives_the_expected_verdict() {
        let path = reference_dir().join("standard-webhooks-vectors.json");
        let text = std::fs::read_to_string(&path).expect("reference vectors present");
        let vectors: Vectors = serde_json::from_str(&text).unwrap();
        assert!(vectors.cases.len() >= 10);
        for case in vectors.cases {
            let secrets = case
                .secrets
                .iter()
                .map(|s| WebhookSecret::parse(s).unwrap())
                .collect();
            let verifier = Verifier::new(secrets, Duration::from_secs(vectors.tolerance_seconds));
            let h = |name: &str| case.headers.get(name).map(String::as_str);
            let result = verifier.verify(
                h(HEADER_ID),
                h(HEADER_TIMESTAMP),
                h(HEADER_SIGNATURE),
                case.body.as_bytes(),
                case.now.parse().unwrap(),
            );
            assert_eq!(result.is_ok(), case.valid, "case {}: {result:?}", case.name);
        }
    }

    #[test]
    fn a_signature_we_make_verifies_and_a_flipped_bit_does_not() {
        let secret = WebhookSecret::parse(&WebhookSecret::generate()).unwrap();
        let verifier = Verifier::new(vec![secret.clone()], Duration::from_secs(300));
        let sig = secret.sign("msg_1", 1000, b"{}");
        assert!(verifier
            .verify(Some("msg_1"), Some("1000"), Some(&sig), b"{}", 1000)
            .is_ok());
        assert_eq!(
            verifier.verify(Some("msg_1"), Some("1000"), Some(&sig), b"{ }", 1000),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn short_empty_and_non_base64_secrets_are_refused() {
        let err = |s: &str| WebhookSecret::parse(s).err();
        assert_eq!(err(""), Some(SecretError::Empty));
        assert_eq!(err("whsec_"), Some(SecretError::Empty));
        assert_eq!(err("whsec_c2hvcnQ="), Some(SecretError::TooShort(5)));
        assert_eq!(err("whsec_not base64!"), Some(SecretError::NotBase64));
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let text = "whsec_a4ayc/80/OGda4BO/1o/V0etpOqiLx1J";
        let verifier = Verifier::new(
            vec![WebhookSecret::parse(text).unwrap()],
            Duration::from_secs(1),
        );
        let debug = format!("{verifier:?}");
        assert!(!debug.contains("a4ayc"), "{debug}");
        assert!(debug.contains("REDACTED"));
    }

    #[test]
    fn a_header_stuffed_with_entries_is_cut_short_and_refused() {
        let secret = WebhookSecret::parse(&WebhookSecret::generate()).unwrap();
        let verifier = Verifier::new(vec![secret.clone()], Duration::from_secs(300));
        let good = secret.sign("m", 1, b"x");
        let stuffed = format!("{} {good}", vec!["v1,AA=="; 50_000].join(" "));
        assert_eq!(
            verifier.verify(Some("m"), Some("1"), Some(&stuffed), b"x", 1),
            Err(SignatureError::NoMatch)
        );
        let rotation = format!("v1,{} {good}", "A".repeat(44));
        assert!(verifier
            .verify(Some("m"), Some("1"), Some(&rotation), b"x", 1)
            .is_ok());
    }

    #[test]
    fn missing_headers_are_named_in_the_logged_reason() {
        let verifier = Verifier::new(vec![], Duration::from_secs(300));
        assert_eq!(
            verifier.verify(None, Some("1"), Some("v1,x"), b"", 1),
            Err(SignatureError::MissingHeader(HEADER_ID))
        );
        assert_eq!(
            verifier.verify(Some("a"), Some("1"), None, b"", 1),
            Err(SignatureError::MissingHeader(HEADER_SIGNATURE))
        );
    }
}
