//! The command line: each subcommand's arguments and body in its own file, each returning
//! the process exit code. `main` parses [`Cli`] and calls [`run`].

mod healthcheck;
pub mod send_event;
pub mod serve;
pub mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use send_event::{event_body, post_signed, Delivered};
pub use serve::{SecretArgs, ServeArgs};

use crate::inbound::signature::WebhookSecret;

#[derive(Parser)]
#[command(
    name = "sym-circleci-approver",
    version,
    about = "Approves CircleCI hold jobs when the matching Sym request is approved.",
    long_about = "Receives Sym's signed after_approve events (Standard Webhooks), stores them \
durably, and approves the workflow's hold job through the CircleCI API v2.\n\n\
To see the whole flow against a built-in fake CircleCI, run `cargo run --release -- demo` in a \
checkout (the developer binary, approver-dev)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the webhook service (the default for the container).
    Serve(Box<ServeArgs>),
    /// Print a fresh random webhook secret (`whsec_…`) for Sym and this service.
    GenSecret,
    /// Sign a Sym-shaped event and post it to a running service (smoke test).
    SendEvent(send_event::SendEventArgs),
    /// In the deploy job: succeed only if this service approved the workflow's hold job.
    Verify(verify::VerifyArgs),
    /// Check the running service's /healthz (exit 0 healthy, 1 not); for container HEALTHCHECKs.
    Healthcheck(healthcheck::HealthcheckArgs),
}

/// Exit code for configuration errors (as sysexits' EX_CONFIG).
pub(crate) const EXIT_CONFIG: u8 = 78;

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve::run(&args).await,
        Command::GenSecret => {
            println!("{}", WebhookSecret::generate());
            ExitCode::SUCCESS
        }
        Command::SendEvent(args) => send_event::run(&args).await,
        Command::Healthcheck(args) => healthcheck::run(&args).await,
        Command::Verify(args) => verify::run(&args).await,
    }
}
