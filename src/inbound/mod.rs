//! What arrives: the Standard Webhooks signature check, the Sym event itself (and the generic
//! approval event of other approval systems), and the OIDC tokens CI callers present.
pub mod ci_token;
pub mod generic_event;
pub mod signature;
pub mod sym_event;

use crate::domain::event::Event;
use sym_event::EventError;

/// What a signed body says: a Sym log entry, or a generic approval event
/// ([`generic_event`]), told apart by their shape.
pub fn parse_event(body: &[u8]) -> Result<Event, EventError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    if generic_event::is_generic(&value) {
        generic_event::parse(value)
    } else {
        sym_event::from_log_entry(value)
    }
}
