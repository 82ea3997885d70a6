//! `fake-circleci` (hidden): the built-in fake CircleCI API as a process, for container tests
//! and load runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use sym_circleci_approver::app::cancel_on_signal;
use sym_circleci_approver::config::LogFormat;
use sym_circleci_approver::telemetry::{self, LogTarget};

#[derive(Args)]
pub struct FakeCircleciArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Workflow to serve, with a hold job `wait_for_sym_approval` on hold.
    #[arg(long)]
    pub workflow_id: Option<uuid::Uuid>,
    #[arg(long, default_value = "gh/acme/api")]
    pub project_slug: String,
    #[arg(long, env = "CIRCLECI_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Append one JSON line per request received to this file.
    #[arg(long)]
    pub calls_file: Option<PathBuf>,
    /// Serve any workflow id (created on first sight, hold job on hold): for load runs.
    #[arg(long)]
    pub any_workflow: bool,
    /// Jobs per page of a job list.
    #[arg(long, default_value_t = 2)]
    pub page_size: usize,
}

pub async fn run(args: FakeCircleciArgs) -> ExitCode {
    let _logs = telemetry::init(LogFormat::Text, "warn", LogTarget::Stderr);
    let options = approver_test_support::fake_circleci::FakeOptions {
        listen: args.listen,
        calls_file: args.calls_file,
        page_size: args.page_size,
        any_workflow: args.any_workflow.then(|| args.project_slug.clone()),
        // A long-running fake keeps no history in memory (the calls file has it).
        keep_calls: false,
        ..approver_test_support::fake_circleci::FakeOptions::new(&args.token)
    };
    let fake = match approver_test_support::fake_circleci::FakeCircleCi::start_with(options).await {
        Ok(fake) => fake,
        Err(e) => {
            // `{e:#}`: the context and its cause ("calls file …: No such file or directory").
            eprintln!("cannot start the fake CircleCI: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(workflow_id) = args.workflow_id {
        fake.add_standard_workflow(
            workflow_id,
            &args.project_slug,
            sym_circleci_approver::domain::task::DEFAULT_HOLD_JOB_NAME,
            "on_hold",
        );
    }
    println!("fake CircleCI listening on {}", fake.base_url());
    let stop = CancellationToken::new();
    cancel_on_signal(stop.clone()).await;
    ExitCode::SUCCESS
}
