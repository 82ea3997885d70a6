//! The `webhook-signature` header parser on arbitrary bytes.
//!
//! Never panics; yields at most MAX_SIGNATURES tags; yields exactly what the reference
//! reading of the header (split on spaces, first MAX_SIGNATURES entries, `v1,` prefix,
//! standard base64, 32 bytes) yields, in the same order.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sym_circleci_approver::inbound::signature::{signature_candidates, MAX_SIGNATURES, TAG_LEN};

/// The straightforward, allocating reading the parser replaced.
fn reference(header: &str) -> Vec<Vec<u8>> {
    header
        .split(' ')
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .filter(|tag| tag.len() == TAG_LEN)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let tags: Vec<[u8; TAG_LEN]> = signature_candidates(header).collect();
    assert!(tags.len() <= MAX_SIGNATURES);
    let expected = reference(header);
    assert_eq!(tags.len(), expected.len(), "{header:?}");
    for (tag, want) in tags.iter().zip(&expected) {
        assert_eq!(tag.as_slice(), want.as_slice(), "{header:?}");
        // Every tag is the decoding of a canonical entry actually present in the header.
        let entry = format!("v1,{}", STANDARD.encode(tag));
        assert!(header.split(' ').take(MAX_SIGNATURES).any(|e| e == entry));
    }
});
