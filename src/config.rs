//! Command line and typed configuration.
//!
//! Every setting is a flag and an environment variable of the same name (`--hold-job-name` /
//! `HOLD_JOB_NAME`). clap reads the raw text; [`Config::from_args`] validates it into typed
//! values and names the variable in every error. Secrets are wrapped in [`SecretString`] or
//! [`WebhookSecret`] at once, so no `Debug` or error message can show them: clap never sees a
//! secret fail validation (which would echo it), and `--help` hides their env values.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

use crate::inbound::signature::{Verifier, WebhookSecret};
pub use crate::retry::RetryPolicy;
pub use crate::store::StoreOptions;

pub const DEFAULT_CIRCLECI_API_URL: &str = "https://circleci.com/api/v2";
pub const DEFAULT_HOLD_JOB_NAME: &str = "wait_for_sym_approval";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/approver.db";

#[derive(Parser)]
#[command(
    name = "sym-circleci-approver",
    version,
    about = "Approves CircleCI hold jobs when the matching Sym request is approved.",
    long_about = "Receives Sym's signed after_approve events (Standard Webhooks), stores them \
durably, and approves the workflow's hold job through the CircleCI API v2.\n\n\
Start with `sym-circleci-approver demo` to see the whole flow against a built-in fake CircleCI."
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
    SendEvent(SendEventArgs),
    /// Run the whole approval flow locally against a built-in fake CircleCI.
    Demo,
    /// In the deploy job: succeed only if this service approved the workflow's hold job.
    Verify(VerifyArgs),
    /// Check the running service's /healthz (exit 0 healthy, 1 not); for container HEALTHCHECKs.
    Healthcheck(HealthcheckArgs),
    /// Run the built-in fake CircleCI API (for container tests).
    #[command(hide = true)]
    FakeCircleci(FakeCircleciArgs),
}

/// Parses `serve` flags alone (as the demo and tests configure an in-process service).
/// A repeated flag overrides the earlier one.
#[derive(Parser)]
#[command(args_override_self = true)]
struct ServeFlags {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    /// `serve` settings from flags (`--name=value`); unset ones come from env or defaults.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("serve"))
            .chain(flags.into_iter().map(Into::into));
        Ok(ServeFlags::try_parse_from(argv)?.args)
    }
}

/// Webhook secrets, for `serve` and `send-event`.
#[derive(Args, Clone)]
pub struct SecretArgs {
    /// Sym webhook secret(s), `whsec_<base64>`, separated by spaces or commas (rotation).
    #[arg(long, env = "SYM_WEBHOOK_SECRET", hide_env_values = true)]
    pub sym_webhook_secret: Option<String>,
    /// File holding the webhook secret(s) instead (e.g. a mounted Kubernetes/Docker secret).
    #[arg(long, env = "SYM_WEBHOOK_SECRET_FILE")]
    pub sym_webhook_secret_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// CircleCI personal or project API token.
    #[arg(long, env = "CIRCLECI_TOKEN", hide_env_values = true)]
    pub circleci_token: Option<String>,
    /// File holding the CircleCI token instead.
    #[arg(long, env = "CIRCLECI_TOKEN_FILE")]
    pub circleci_token_file: Option<PathBuf>,
    /// CircleCI API v2 base URL (self-hosted CircleCI server: your own host).
    #[arg(long, env = "CIRCLECI_API_URL", default_value = DEFAULT_CIRCLECI_API_URL)]
    pub circleci_api_url: String,
    /// Allow a plain-http CircleCI URL on a non-loopback host (the token then travels in clear).
    #[arg(long, env = "CIRCLECI_ALLOW_INSECURE_HTTP", default_value_t = false)]
    pub circleci_allow_insecure_http: bool,
    /// Timeout of each CircleCI request.
    #[arg(long, env = "CIRCLECI_TIMEOUT", default_value = "10s")]
    pub circleci_timeout: String,
    /// Name of the approval job to approve.
    #[arg(long, env = "HOLD_JOB_NAME", default_value = DEFAULT_HOLD_JOB_NAME)]
    pub hold_job_name: String,
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,
    /// Store: `sqlite://path` (embedded, created if missing) or `postgres://…`
    /// [default: sqlite://data/approver.db].
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the database URL instead (it may carry a password).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// How long to keep trying to approve before recording a failure (e.g. 30m, 1h, 90s).
    #[arg(long, env = "APPROVAL_TIMEOUT", default_value = "30m")]
    pub approval_timeout: String,
    /// Comma-separated project slugs (e.g. gh/acme/api) whose hold jobs may be approved.
    #[arg(long, env = "ALLOWED_PROJECTS")]
    pub allowed_projects: Option<String>,
    /// Allowed distance between webhook-timestamp and now, either way.
    #[arg(long, env = "WEBHOOK_TOLERANCE", default_value = "300s")]
    pub webhook_tolerance: String,
    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Webhook requests handled at once; more are shed with 429 and Retry-After.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Time limit for handling one HTTP request.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "15s")]
    pub request_timeout: String,
    /// Approval tasks worked on at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 8)]
    pub worker_concurrency: usize,
    /// First retry delay; doubles per attempt with jitter.
    #[arg(long, env = "RETRY_INITIAL", default_value = "1s")]
    pub retry_initial: String,
    /// Longest delay between retries after CircleCI errors.
    #[arg(long, env = "RETRY_MAX", default_value = "60s")]
    pub retry_max: String,
    /// Longest delay between polls while the hold job is not on hold yet.
    #[arg(long, env = "POLL_MAX", default_value = "5s")]
    pub poll_max: String,
    /// How long a claimed task stays reserved for this process before another may take it.
    #[arg(long, env = "TASK_LEASE", default_value = "30s")]
    pub task_lease: String,
    /// Largest number of store connections (PostgreSQL: per replica).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// Time limit for getting a store connection (and for connecting).
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT", default_value = "5s")]
    pub database_connect_timeout: String,
    /// Time limit for one SQL statement (PostgreSQL `statement_timeout`; SQLite busy wait).
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "5s")]
    pub database_statement_timeout: String,
    /// Bearer token for the audit API (`/v1/approvals`); unset: those routes answer 404.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token instead.
    #[arg(long, env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Deliveries and finished tasks older than this many days are pruned (0 keeps all).
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u32,
    /// What a signed deny or expire event does: ignore (record only) or cancel the workflow.
    #[arg(long, env = "ON_DENY", value_enum, default_value_t = OnDeny::Ignore)]
    pub on_deny: OnDeny,
    /// Log format: json or text (default: text on a terminal, json otherwise).
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// What a denied or expired Sym request does to its workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnDeny {
    /// Record the event; the workflow stays on hold until CircleCI expires it.
    Ignore,
    /// Cancel the workflow (`POST /workflow/{id}/cancel`), with the approval retry rules.
    Cancel,
}

#[derive(Args)]
pub struct SendEventArgs {
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// The service's webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/sym")]
    pub url: String,
    /// Sym event type: approve, deny, expire, request, …
    #[arg(long = "type", default_value = "approve")]
    pub event_type: String,
    /// The CircleCI workflow id (a UUID) the event is about.
    #[arg(long)]
    pub workflow_id: String,
    /// Sym event id (default: random); reuse one to test deduplication.
    #[arg(long)]
    pub event_id: Option<String>,
    /// webhook-id header (default: random).
    #[arg(long)]
    pub webhook_id: Option<String>,
    /// Approver's username.
    #[arg(long, default_value = "send-event@example.com")]
    pub approver: String,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The workflow to check (in CircleCI: "$CIRCLE_WORKFLOW_ID").
    #[arg(long, env = "CIRCLE_WORKFLOW_ID")]
    pub workflow_id: String,
    /// Base URL of this service, e.g. https://approver.example.com.
    #[arg(long, env = "APPROVER_URL")]
    pub url: String,
    /// The service's audit API token.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token instead.
    #[arg(long, env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Time limit for the check.
    #[arg(long, default_value = "15s")]
    pub timeout: String,
    /// Allow a plain-http APPROVER_URL on a non-loopback host (the token travels in clear).
    #[arg(long, env = "APPROVER_ALLOW_INSECURE_HTTP", default_value_t = false)]
    pub allow_insecure_http: bool,
}

impl VerifyArgs {
    pub fn admin_token(&self) -> Result<SecretString, ConfigError> {
        read_secret(
            "ADMIN_TOKEN",
            self.admin_token.as_deref(),
            self.admin_token_file.as_deref(),
        )
    }
}

#[derive(Args)]
pub struct HealthcheckArgs {
    /// The service's listen address; 0.0.0.0 / [::] are checked on loopback.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,
}

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

/// A configuration error; the message names the variable and never holds a secret value.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

fn config_error(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `LOG_FORMAT`, else json when stdout is not a terminal.
    pub fn resolve(raw: Option<&str>) -> Result<Self, ConfigError> {
        use std::io::IsTerminal as _;
        match raw.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") if std::io::stdout().is_terminal() => Ok(Self::Text),
            None | Some("") => Ok(Self::Json),
            Some("json") => Ok(Self::Json),
            Some("text") => Ok(Self::Text),
            Some(other) => Err(config_error(
                "LOG_FORMAT",
                format!("must be json or text, not {other:?}"),
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CircleCiConfig {
    pub api_url: Url,
    pub token: SecretString,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub hold_job_name: String,
    /// None: every project; Some: only these slugs.
    pub allowed_projects: Option<Vec<String>>,
    pub approval_timeout: Duration,
    pub concurrency: usize,
    pub task_lease: Duration,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen_addr: SocketAddr,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: HttpConfig,
    pub verifier: Verifier,
    pub circleci: CircleCiConfig,
    pub worker: WorkerConfig,
    pub database_url: SecretString,
    pub store: StoreOptions,
    /// The audit API's bearer token; None disables the API.
    pub admin_token: Option<SecretString>,
    /// Prune records older than this; None keeps everything.
    pub retention: Option<Duration>,
    pub on_deny: OnDeny,
    pub log_format: LogFormat,
}

impl Config {
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let secrets = args.secrets.load()?;
        let tolerance = parse_duration("WEBHOOK_TOLERANCE", &args.webhook_tolerance)?;
        let token = read_secret(
            "CIRCLECI_TOKEN",
            args.circleci_token.as_deref(),
            args.circleci_token_file.as_deref(),
        )?;
        if token.expose_secret().chars().any(char::is_whitespace) {
            return Err(config_error(
                "CIRCLECI_TOKEN",
                "contains whitespace; check the value or file",
            ));
        }
        let api_url = parse_api_url(&args.circleci_api_url, args.circleci_allow_insecure_http)?;
        let hold_job_name = args.hold_job_name.trim().to_owned();
        if hold_job_name.is_empty() {
            return Err(config_error("HOLD_JOB_NAME", "must not be empty"));
        }
        let listen_addr = args.listen_addr.trim().parse().map_err(|_| {
            config_error(
                "LISTEN_ADDR",
                format!("{:?} is not an address like 0.0.0.0:8080", args.listen_addr),
            )
        })?;
        let allowed_projects = args.allowed_projects.as_deref().and_then(|raw| {
            let list: Vec<String> = raw
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            (!list.is_empty()).then_some(list)
        });
        let database_url = match (&args.database_url, &args.database_url_file) {
            (None, None) => SecretString::from(DEFAULT_DATABASE_URL),
            (value, file) => read_secret("DATABASE_URL", value.as_deref(), file.as_deref())?,
        };
        let database_url = database_url.expose_secret();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(config_error(
                "DATABASE_URL",
                "must start with sqlite:// or postgres://",
            ));
        }
        positive("MAX_BODY_BYTES", args.max_body_bytes)?;
        positive("MAX_CONCURRENT_REQUESTS", args.max_concurrent_requests)?;
        positive("WORKER_CONCURRENCY", args.worker_concurrency)?;

        Ok(Self {
            http: HttpConfig {
                listen_addr,
                max_body_bytes: args.max_body_bytes,
                max_concurrent_requests: args.max_concurrent_requests,
                request_timeout: parse_duration("REQUEST_TIMEOUT", &args.request_timeout)?,
            },
            verifier: Verifier::new(secrets, tolerance),
            circleci: CircleCiConfig {
                api_url,
                token,
                timeout: parse_duration("CIRCLECI_TIMEOUT", &args.circleci_timeout)?,
            },
            worker: WorkerConfig {
                hold_job_name,
                allowed_projects,
                approval_timeout: parse_duration("APPROVAL_TIMEOUT", &args.approval_timeout)?,
                concurrency: args.worker_concurrency,
                task_lease: parse_duration("TASK_LEASE", &args.task_lease)?,
                retry: RetryPolicy {
                    initial: parse_duration("RETRY_INITIAL", &args.retry_initial)?,
                    max: parse_duration("RETRY_MAX", &args.retry_max)?,
                    poll_max: parse_duration("POLL_MAX", &args.poll_max)?,
                },
            },
            database_url: SecretString::from(database_url.to_owned()),
            store: StoreOptions {
                max_connections: Some(args.database_max_connections)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        config_error("DATABASE_MAX_CONNECTIONS", "must be at least 1")
                    })?,
                acquire_timeout: parse_duration(
                    "DATABASE_CONNECT_TIMEOUT",
                    &args.database_connect_timeout,
                )?,
                statement_timeout: parse_duration(
                    "DATABASE_STATEMENT_TIMEOUT",
                    &args.database_statement_timeout,
                )?,
            },
            admin_token: read_optional_admin_token(args)?,
            retention: (args.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(args.retention_days) * 86_400)),
            on_deny: args.on_deny,
            log_format: LogFormat::resolve(args.log_format.as_deref())?,
        })
    }
}

impl SecretArgs {
    /// The configured webhook secrets, each validated (at least one, each >= 24 bytes).
    pub fn load(&self) -> Result<Vec<WebhookSecret>, ConfigError> {
        const VAR: &str = "SYM_WEBHOOK_SECRET";
        let raw = read_secret(
            VAR,
            self.sym_webhook_secret.as_deref(),
            self.sym_webhook_secret_file.as_deref(),
        )?;
        let secrets = raw
            .expose_secret()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| {
                WebhookSecret::parse(s)
                    .map_err(|e| config_error(VAR, format!("secret #{} is refused: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(config_error(VAR, "is empty"));
        }
        Ok(secrets)
    }
}

/// Shortest admin token accepted: it guards the audit trail.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

fn read_optional_admin_token(args: &ServeArgs) -> Result<Option<SecretString>, ConfigError> {
    if args.admin_token.as_deref().is_none_or(str::is_empty) && args.admin_token_file.is_none() {
        return Ok(None);
    }
    let token = read_secret(
        "ADMIN_TOKEN",
        args.admin_token.as_deref(),
        args.admin_token_file.as_deref(),
    )?;
    if token.expose_secret().len() < MIN_ADMIN_TOKEN_LEN {
        return Err(config_error(
            "ADMIN_TOKEN",
            format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
        ));
    }
    Ok(Some(token))
}

/// A secret from `VAR` or `VAR_FILE` (exactly one of them), trimmed.
fn read_secret(
    variable: &'static str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<SecretString, ConfigError> {
    let text = match (value.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => {
            return Err(config_error(
                variable,
                format!("set either {variable} or {variable}_FILE, not both"),
            ))
        }
        (Some(v), None) => v.to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            config_error(
                variable,
                format!("cannot read {variable}_FILE {}: {e}", path.display()),
            )
        })?,
        (None, None) => {
            return Err(config_error(
                variable,
                format!("is required (set {variable} or {variable}_FILE)"),
            ))
        }
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(config_error(variable, "is empty"));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// Longest duration any setting takes: a week (also keeps backoff arithmetic far from overflow).
const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);

/// Durations like `30m`, `1h 30m`, `90s`, or plain seconds (`1800`), up to a week.
pub fn parse_duration(variable: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let raw = raw.trim();
    let parsed = match raw.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(raw),
    };
    match parsed {
        Ok(d) if d > MAX_DURATION => Err(config_error(variable, "must be at most a week")),
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(config_error(
            variable,
            format!("{raw:?} is not a positive duration (examples: 30m, 90s, 1h)"),
        )),
    }
}

fn positive(variable: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(config_error(variable, "must be at least 1"));
    }
    Ok(())
}

/// The CircleCI base URL; plain http only for loopback hosts, unless explicitly allowed,
/// so the token never crosses a network in clear text by accident.
pub fn parse_api_url(raw: &str, allow_insecure_http: bool) -> Result<Url, ConfigError> {
    secure_base_url(
        "CIRCLECI_API_URL",
        "CIRCLECI_ALLOW_INSECURE_HTTP",
        raw,
        allow_insecure_http,
    )
}

/// A base URL that a token will be sent to: https, or http to a loopback host, or http
/// anywhere when `override_variable` is set.
pub fn secure_base_url(
    variable: &'static str,
    override_variable: &'static str,
    raw: &str,
    allow_insecure_http: bool,
) -> Result<Url, ConfigError> {
    let url = Url::parse(raw.trim().trim_end_matches('/'))
        .map_err(|e| config_error(variable, format!("{raw:?} is not a URL: {e}")))?;
    if url.query().is_some() || url.fragment().is_some() || url.cannot_be_a_base() {
        return Err(config_error(
            variable,
            "must be a base URL like https://host/path",
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure_http || is_loopback_host(&url) => Ok(url),
        "http" => Err(config_error(
            variable,
            format!(
                "plain http is only allowed for loopback hosts (the token would travel in clear \
                 text); use https, or set {override_variable}=true for a trusted network"
            ),
        )),
        other => Err(config_error(
            variable,
            format!("unsupported scheme {other:?}; use https"),
        )),
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn http_is_refused_for_remote_hosts_and_allowed_for_loopback() {
        assert!(parse_api_url("http://127.0.0.1:9/api/v2", false).is_ok());
        assert!(parse_api_url("http://localhost/api/v2", false).is_ok());
        assert!(parse_api_url("http://[::1]:9/api/v2", false).is_ok());
        let err = parse_api_url("http://circleci.example.com/api/v2", false).unwrap_err();
        assert_eq!(err.variable, "CIRCLECI_API_URL");
        assert!(parse_api_url("http://circleci.example.com/api/v2", true).is_ok());
        assert!(parse_api_url("https://circleci.com/api/v2/", false).is_ok());
        assert!(parse_api_url("ftp://x/api", false).is_err());
    }

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(
            parse_duration("X", "30m").unwrap(),
            Duration::from_secs(1800)
        );
        assert_eq!(parse_duration("X", "90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("X", "0").is_err());
        assert_eq!(parse_duration("X", "soon").unwrap_err().variable, "X");
    }

    #[test]
    fn a_missing_secret_names_its_variable_and_both_forms_are_refused() {
        let err = read_secret("CIRCLECI_TOKEN", None, None).unwrap_err();
        assert!(err.to_string().contains("CIRCLECI_TOKEN"));
        let err = read_secret("CIRCLECI_TOKEN", Some("a"), Some(Path::new("/x"))).unwrap_err();
        assert!(err.to_string().contains("not both"));
    }

    #[test]
    fn the_database_url_comes_from_its_file_or_the_default() {
        let secret = WebhookSecret::generate();
        let base = [
            format!("--sym-webhook-secret={secret}"),
            "--circleci-token=t".to_owned(),
        ];
        let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("db_url");
        std::fs::write(&file, "postgres://u:pw@db/approver\n").unwrap();

        let from_file = ServeArgs::from_flags(
            base.iter()
                .cloned()
                .chain([format!("--database-url-file={}", file.display())]),
        )
        .unwrap();
        let default = ServeArgs::from_flags(base.iter().cloned()).unwrap();

        let url = Config::from_args(&from_file).unwrap().database_url;
        assert_eq!(url.expose_secret(), "postgres://u:pw@db/approver");
        if std::env::var_os("DATABASE_URL").is_none() {
            let url = Config::from_args(&default).unwrap().database_url;
            assert_eq!(url.expose_secret(), DEFAULT_DATABASE_URL);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn several_webhook_secrets_split_on_spaces_and_commas() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        let args = SecretArgs {
            sym_webhook_secret: Some(format!("{a}, {b}")),
            sym_webhook_secret_file: None,
        };
        assert_eq!(args.load().unwrap().len(), 2);
        let short = SecretArgs {
            sym_webhook_secret: Some("whsec_c2hvcnQ=".into()),
            sym_webhook_secret_file: None,
        };
        let err = short.load().unwrap_err().to_string();
        assert!(err.starts_with("SYM_WEBHOOK_SECRET"), "{err}");
        assert!(!err.contains("c2hvcnQ"), "{err}");
    }
}
