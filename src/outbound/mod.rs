//! What this service calls: CircleCI API v2, and the fake CircleCI that `demo` and the tests
//! run against.
pub mod circleci;
pub mod fake_circleci;
pub mod fake_sym;
pub mod http_client;
pub mod oidc_keys;
pub mod sym_api;
pub mod urls;
