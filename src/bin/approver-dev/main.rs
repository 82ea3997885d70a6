//! `approver-dev`: the service's commands, plus the two that run its test doubles: `demo` (the
//! whole flow on this machine against a built-in fake CircleCI and fake Sym API) and
//! `fake-circleci` (the fake CircleCI as a process, for container tests and load runs).
//!
//! `cargo run` runs this binary. The service itself is the `sym-circleci-approver` binary,
//! which never links the test doubles (`crates/test-support`).
#![forbid(unsafe_code)]

mod demo;
mod fake_circleci;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sym_circleci_approver::cli::{self, Command};

#[derive(Parser)]
#[command(
    name = "approver-dev",
    version,
    about = "sym-circleci-approver's commands, plus `demo` and the fake CircleCI (for development)."
)]
struct Dev {
    #[command(subcommand)]
    command: DevCommand,
}

#[derive(Subcommand)]
enum DevCommand {
    /// Run the whole approval flow locally against a built-in fake CircleCI.
    Demo,
    /// Run the built-in fake CircleCI API (for container tests and load runs).
    FakeCircleci(fake_circleci::FakeCircleciArgs),
    #[command(flatten)]
    Service(Command),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Dev::parse().command {
        DevCommand::Demo => demo::run().await,
        DevCommand::FakeCircleci(args) => fake_circleci::run(args).await,
        DevCommand::Service(command) => cli::run(cli::Cli { command }).await,
    }
}
