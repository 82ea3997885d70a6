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
pub const MAX_SIGNATURES: usize = 16;
/// Length of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Longest `webhook-id` we store; real ids are ~30 characters.
pub const MAX_WEBHOOK_ID_LEN: usize = 256;
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

    /// The keyed HMAC over `{msg_id}.{timestamp}.{body}`, all given as the bytes signed.
    fn mac_raw(&self, msg_id: &[u8], timestamp: &[u8], body: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(msg_id);
        mac.update(b".");
        mac.update(timestamp);
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value (`v1,<base64>`) for this message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac_raw(msg_id.as_bytes(), timestamp.to_string().as_bytes(), body)
            .finalize()
            .into_bytes();
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
    ///
    /// Nothing is allocated and nothing of the body is parsed unless the signature holds: the
    /// timestamp is checked as digits, the `v1` tags are decoded into fixed buffers, and the
    /// HMAC is computed once per configured secret over the raw bytes. Only a delivery that
    /// verifies gets its owned [`VerifiedHeaders`].
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
        let (ts, ts_text) = parse_timestamp(timestamp)?;
        let skew = now.saturating_sub(ts);
        if skew.saturating_abs() > self.tolerance_secs {
            return Err(SignatureError::StaleTimestamp(skew));
        }

        // At most MAX_SIGNATURES entries are looked at, so a header stuffed with thousands of
        // entries costs no more than a normal one; they are decoded once, onto the stack.
        let mut tags = [[0u8; TAG_LEN]; MAX_SIGNATURES];
        let mut count = 0;
        for (slot, tag) in tags.iter_mut().zip(signature_candidates(signature)) {
            *slot = tag;
            count += 1;
        }
        let tags = tags.get(..count).unwrap_or_default();

        let mut matched = subtle::Choice::from(0);
        for secret in &self.secrets {
            let expected = secret
                .mac_raw(webhook_id.as_bytes(), ts_text, body)
                .finalize()
                .into_bytes();
            for tag in tags {
                // Constant time, and no early exit: timing does not reveal which one matched.
                matched |= expected.as_slice().ct_eq(tag.as_slice());
            }
        }
        if bool::from(matched) {
            Ok(VerifiedHeaders {
                webhook_id: webhook_id.to_owned(),
                timestamp: ts,
            })
        } else {
            Err(SignatureError::NoMatch)
        }
    }
}

/// Checks a `webhook-timestamp` value: digits only (refuses "-1", "+5", " 5" and "yesterday"
/// alike) that fit an `i64`. Returns the value and its canonical decimal text (the header
/// without leading zeros), which is what senders sign: the reference libraries format the
/// parsed integer, so `0001000` is signed as `1000`. No allocation.
fn parse_timestamp(text: &str) -> Result<(i64, &[u8]), SignatureError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::InvalidTimestamp);
    }
    let ts: i64 = text.parse().map_err(|_| SignatureError::InvalidTimestamp)?;
    let canonical = text.trim_start_matches('0');
    let canonical = if canonical.is_empty() { "0" } else { canonical };
    Ok((ts, canonical.as_bytes()))
}

/// The candidate tags of a `webhook-signature` header value: each of its first
/// [`MAX_SIGNATURES`] space-separated entries that is `v1,<base64>` with a canonical padded
/// base64 of exactly [`TAG_LEN`] bytes, decoded. Other versions, bad base64 and tags of any
/// other length (empty, truncated, extended) are skipped, so they can never match.
///
/// Decodes into a fixed buffer: no allocation, whatever the header holds.
pub fn signature_candidates(header: &str) -> impl Iterator<Item = [u8; TAG_LEN]> + '_ {
    header
        .split(' ')
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(decode_tag)
}

/// Length of a padded standard base64 encoding of a [`TAG_LEN`]-byte tag.
const TAG_B64_LEN: usize = TAG_LEN.div_ceil(3) * 4;

fn decode_tag(b64: &str) -> Option<[u8; TAG_LEN]> {
    // Only this length can decode to TAG_LEN bytes under canonical padding; checking it first
    // keeps long junk entries from being decoded at all.
    if b64.len() != TAG_B64_LEN {
        return None;
    }
    let mut tag = [0u8; TAG_LEN];
    match STANDARD.decode_slice(b64, &mut tag) {
        Ok(TAG_LEN) => Some(tag),
        _ => None,
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
    fn candidates_are_the_full_length_v1_tags_among_the_first_entries() {
        let tag = [7u8; TAG_LEN];
        let b64 = STANDARD.encode(tag);
        let header = format!("v2,{b64} v1,{b64} v1, v1,AA== v1,{} v1,{b64}=", &b64[..43]);
        assert_eq!(signature_candidates(&header).collect::<Vec<_>>(), vec![tag]);
        // 43 characters without padding, or padded base64 of 33 bytes: never a candidate.
        assert_eq!(
            signature_candidates(&format!("v1,{}", &b64[..43])).count(),
            0
        );
        assert_eq!(
            signature_candidates(&format!("v1,{}", STANDARD.encode([1u8; 33]))).count(),
            0
        );
        // Only the first MAX_SIGNATURES entries are looked at.
        let many = vec![format!("v1,{b64}"); MAX_SIGNATURES + 5].join(" ");
        assert_eq!(signature_candidates(&many).count(), MAX_SIGNATURES);
        assert_eq!(signature_candidates("").count(), 0);
    }

    #[test]
    fn a_timestamp_with_leading_zeros_is_checked_as_its_value_signed() {
        let secret = WebhookSecret::parse(&WebhookSecret::generate()).unwrap();
        let verifier = Verifier::new(vec![secret.clone()], Duration::from_secs(300));
        let sig = secret.sign("m", 1000, b"x");
        let verified = verifier
            .verify(Some("m"), Some("0001000"), Some(&sig), b"x", 1000)
            .unwrap();
        assert_eq!(verified.timestamp, 1000);
        let zero = secret.sign("m", 0, b"x");
        assert!(verifier
            .verify(Some("m"), Some("000"), Some(&zero), b"x", 0)
            .is_ok());
        for bad in ["", "-1", "+5", " 5", "1e3", "99999999999999999999"] {
            assert_eq!(
                verifier.verify(Some("m"), Some(bad), Some(&sig), b"x", 1000),
                Err(SignatureError::InvalidTimestamp),
                "{bad:?}"
            );
        }
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
