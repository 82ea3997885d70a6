//! Integration tests: the real service on a random port, a fake CircleCI over real HTTP, all
//! through one harness (`harness`: the in-process app, the child process, the store).
//! `APPROVER_TEST_POSTGRES_URL` (an admin URL) runs the same suite against PostgreSQL;
//! `APPROVER_REQUIRE_POSTGRES=1` makes its absence a failure (CI's PostgreSQL run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adversarial;
mod approval;
mod audit;
mod demo;
mod exactly_once;
mod gates;
mod generic;
mod harness;
mod intake;
mod oidc_issuer;
mod process;
mod replicas;
mod sym_api;
mod trust;
mod verify;
mod webhook;
