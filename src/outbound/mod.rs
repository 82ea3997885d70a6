//! What this service calls: CircleCI API v2, Sym's API and CircleCI's OIDC issuer, through
//! one HTTP client core; the wire formats are read here and nowhere else.
pub mod circleci;
pub mod http_client;
pub mod oidc_keys;
pub mod sym_api;
pub mod urls;
