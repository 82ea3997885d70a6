//! The subcommands behind `main`: each returns the process exit code.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{cancel_on_signal, Application};
use crate::config::{
    Cli, Command, Config, FakeCircleciArgs, HealthcheckArgs, LogFormat, SendEventArgs, ServeArgs,
};
use crate::inbound::signature::{WebhookSecret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::inbound::sym_event::SymEvent;
use crate::telemetry::{self, LogTarget};

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(&args).await,
        Command::GenSecret => {
            println!("{}", WebhookSecret::generate());
            ExitCode::SUCCESS
        }
        Command::SendEvent(args) => send_event_command(&args).await,
        Command::Demo => crate::demo::run().await,
        Command::Healthcheck(args) => healthcheck(&args).await,
        Command::Verify(args) => crate::verify::run(&args).await,
        Command::FakeCircleci(args) => fake_circleci(args).await,
    }
}

/// Exit code for configuration errors (as sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

async fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(config.log_format, "info", LogTarget::Stdout);
    // Signals are handled from the start: a SIGTERM while still connecting to the store is
    // a clean stop too.
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let built = tokio::select! {
        built = Application::build(config) => built,
        () = shutdown.cancelled() => {
            tracing::info!("stopped before startup finished");
            return ExitCode::SUCCESS;
        }
    };
    let app = match built {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "startup failed");
            eprintln!("startup failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "service failed");
            ExitCode::FAILURE
        }
    }
}

/// The answer to a signed delivery.
#[derive(Debug)]
pub struct Delivered {
    pub status: u16,
    pub body: String,
}

/// Signs `body` as Sym would (Standard Webhooks) and posts it.
pub async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    secret: &WebhookSecret,
    webhook_id: &str,
    body: &[u8],
) -> anyhow::Result<Delivered> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_secs()
        .try_into()?;
    let signature = secret.sign(webhook_id, timestamp, body);
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header(HEADER_ID, webhook_id)
        .header(HEADER_TIMESTAMP, timestamp.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(body.to_vec())
        .send()
        .await?;
    Ok(Delivered {
        status: response.status().as_u16(),
        body: response.text().await?,
    })
}

/// A Sym-shaped event body for `send-event` and the demo.
pub fn event_body(event_id: &str, event_type: &str, workflow_id: &str, approver: &str) -> Vec<u8> {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    SymEvent::sample_body(event_id, event_type, workflow_id, approver, &timestamp)
        .to_string()
        .into_bytes()
}

async fn send_event_command(args: &SendEventArgs) -> ExitCode {
    // Signs with the first configured secret (`load` never returns an empty list).
    let secret = match args.secrets.load().map(|all| all.into_iter().next()) {
        Ok(Some(secret)) => secret,
        Ok(None) => return ExitCode::from(EXIT_CONFIG),
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let event_id = args
        .event_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let webhook_id = args
        .webhook_id
        .clone()
        .unwrap_or_else(|| format!("msg_{}", Uuid::new_v4().simple()));
    let body = event_body(
        &event_id,
        &args.event_type,
        &args.workflow_id,
        &args.approver,
    );
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("cannot build an HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    match post_signed(&client, &args.url, &secret, &webhook_id, &body).await {
        Ok(delivered) => {
            println!("HTTP {} {}", delivered.status, delivered.body);
            if (200..300).contains(&delivered.status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("could not deliver to {}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let Ok(mut addr) = args.listen_addr.trim().parse::<std::net::SocketAddr>() else {
        eprintln!(
            "configuration error: LISTEN_ADDR: {:?} is not an address",
            args.listen_addr
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    // A wildcard listen address is reached through loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/healthz");
    let result = async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        client.get(&url).send().await?.error_for_status()
    }
    .await;
    match result {
        Ok(_) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn fake_circleci(args: FakeCircleciArgs) -> ExitCode {
    telemetry::init(LogFormat::Text, "warn", LogTarget::Stderr);
    let options = crate::fake_circleci::FakeOptions {
        listen: args.listen,
        calls_file: args.calls_file,
        page_size: args.page_size,
        any_workflow: args.any_workflow.then(|| args.project_slug.clone()),
        // A long-running fake keeps no history in memory (the calls file has it).
        keep_calls: false,
        ..crate::fake_circleci::FakeOptions::new(&args.token)
    };
    let fake = match crate::fake_circleci::FakeCircleCi::start_with(options).await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("cannot start the fake CircleCI: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(workflow_id) = args.workflow_id {
        fake.add_standard_workflow(
            workflow_id,
            &args.project_slug,
            crate::config::DEFAULT_HOLD_JOB_NAME,
            "on_hold",
        );
    }
    println!("fake CircleCI listening on {}", fake.base_url());
    let stop = CancellationToken::new();
    cancel_on_signal(stop.clone()).await;
    ExitCode::SUCCESS
}
