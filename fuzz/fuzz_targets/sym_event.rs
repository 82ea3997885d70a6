//! `inbound::sym_event::parse` on arbitrary bytes: never panics, and what it accepts is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sym_circleci_approver::domain::event::EventKind;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = sym_circleci_approver::inbound::sym_event::parse(data) else {
        return;
    };
    assert!(!event.id.trim().is_empty() && event.id.len() <= 256);
    assert!(!event.event_type.is_empty());
    let expected_kind = match event.event_type.as_str() {
        "approve" => EventKind::Approve,
        "deny" => EventKind::Deny,
        "expire" => EventKind::Expire,
        _ => EventKind::Other,
    };
    assert_eq!(event.kind, expected_kind);
    if event.kind == EventKind::Approve {
        assert!(event.workflow_id.is_some());
    }
    for text in [&event.workflow_url, &event.merging_user] {
        assert!(text.as_deref() != Some(""));
    }
});
