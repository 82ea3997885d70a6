//! What arrives: the Standard Webhooks signature check, the Sym event itself (and the generic
//! approval event of other approval systems), and the OIDC tokens CI callers present.
pub mod ci_token;
pub mod generic_event;
pub mod signature;
pub mod sym_event;
