//! Integration tests: the real service on a random port, a fake CircleCI over real HTTP.
//! `APPROVER_TEST_POSTGRES_URL` (an admin URL) runs the same suite against PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adversarial;
mod approval;
mod audit;
mod binary;
mod demo;
mod exactly_once;
mod gates;
mod generic;
mod helpers;
mod intake;
mod oidc_issuer;
mod process;
mod replicas;
mod sym_api;
mod trust;
mod verify;
mod webhook;
