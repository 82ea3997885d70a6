//! sym-circleci-approver: approves CircleCI hold jobs when the matching Sym request is approved.
//!
//! The path of an approval through the code:
//! 1. [`http`] receives `POST /webhooks/sym`; [`signature`] checks the Standard Webhooks
//!    signature on the raw body; [`sym_event`] parses the Sym log entry;
//! 2. [`store`] commits the delivery and its task in one transaction (dedup by Sym id and
//!    webhook-id), and only then the handler answers 202;
//! 3. [`worker`] claims the task, reads the workflow's jobs through [`circleci`], and approves
//!    the hold job, retrying per [`retry`] until `APPROVAL_TIMEOUT`.
//!
//! [`config`] holds the CLI and typed settings, [`app`] wires it all and runs it,
//! [`fake_circleci`] is the CircleCI stand-in used by `demo` and the tests.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod circleci;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fake_circleci;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod retry;
pub mod store;
pub mod telemetry;
pub mod verify;
pub mod worker;

pub use inbound::{signature, sym_event};
