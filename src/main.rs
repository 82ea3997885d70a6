#![forbid(unsafe_code)]
//! Parse the command line and hand over to the library.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = sym_circleci_approver::cli::Cli::parse();
    sym_circleci_approver::cli::run(cli).await
}
