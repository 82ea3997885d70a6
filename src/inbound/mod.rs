//! What arrives from Sym: the Standard Webhooks signature check and the Sym event itself.
pub mod ci_token;
pub mod signature;
pub mod sym_event;
