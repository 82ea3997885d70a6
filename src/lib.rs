//! sym-circleci-approver: approves CircleCI hold jobs when the matching Sym request is approved.
//!
//! The path of an approval through the code:
//! 1. [`http`] receives `POST /webhooks/sym`; [`inbound`] checks the Standard Webhooks
//!    signature on the raw body and parses the Sym event;
//! 2. [`domain::task`] decides what the event asks for; [`store`] commits the delivery and its
//!    task in one transaction (dedup by Sym id and webhook-id), and only then the handler
//!    answers 202;
//! 3. [`worker`] claims the task, reads the workflow's jobs through [`outbound::circleci`],
//!    lets [`domain::decide`] pick the next step, and approves the hold job, retrying per
//!    [`domain::retry`] until `APPROVAL_TIMEOUT`.
//!
//! [`cli`] holds the subcommands and their flags, [`config`] the validated settings, [`app`]
//! wires it all and runs it, [`clock`] is the time source the worker and store share.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod store;
pub mod telemetry;
pub mod verdicts;
pub mod worker;
