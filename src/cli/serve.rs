//! `serve`: the webhook service. Its flags (each also an environment variable of the same
//! name) and their validation into a [`Config`].
//!
//! clap reads raw text only: secrets are validated here, after clap, so a refused secret is
//! never echoed, and `--help` hides their env values.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::EXIT_CONFIG;
use crate::app::{cancel_on_signal, Application};
use crate::clock::Clock;
use crate::config::{
    config_error, default_oidc_issuer, parse_api_url, parse_duration, positive, read_secret,
    secure_url_setting, Config, ConfigError, GateConfig, HttpConfig, LogFormat, OidcConfig, OnDeny,
    RetryPolicy, SymApiConfig, WorkerConfig, DEFAULT_CIRCLECI_API_URL, DEFAULT_DATABASE_URL,
    DEFAULT_SYM_API_URL,
};
use crate::domain::task::{TaskRules, DEFAULT_HOLD_JOB_NAME};
use crate::inbound::signature::{Verifier, WebhookSecret};
use crate::outbound::circleci::CircleCiSettings;
use crate::store::{Backend, StoreOptions};
use crate::telemetry::{self, LogTarget};

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
    /// Comma-separated names of the approval jobs this service may release; the first is the
    /// default when an event names none (an event's `hold_job_name` field picks another)
    /// [default: wait_for_sym_approval].
    #[arg(long, env = "HOLD_JOB_NAMES")]
    pub hold_job_names: Option<String>,
    /// One hold job name (the older form of HOLD_JOB_NAMES).
    #[arg(long, env = "HOLD_JOB_NAME")]
    pub hold_job_name: Option<String>,
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
    /// Signed deliveries being written to the store at once; more wait up to 250 ms, then
    /// get 429 with Retry-After. Unsigned requests never take a slot.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Open connections at most; a connection past this is closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Time for a client to send its request headers; also how long a keep-alive connection
    /// may wait silently for its next request.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: String,
    /// Time for a client to send a webhook body (408 after).
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "10s")]
    pub body_read_timeout: String,
    /// A keep-alive connection idle this long after a response is closed.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "5s")]
    pub idle_timeout: String,
    /// After SIGTERM, how long requests in flight may finish before connections are dropped
    /// (the process exits well inside Kubernetes' default 30 s).
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,
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
    /// Largest number of store connections (PostgreSQL: per replica). Default: 10 on
    /// PostgreSQL, 1 on SQLite (the store's own, plus one for claims; above 1, reads get a
    /// pool of that many).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,
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
    /// CircleCI organization id: CI jobs of this organization call the gate and verdict APIs
    /// with their OIDC token ($CIRCLE_OIDC_TOKEN_V2), scoped to their own pipeline.
    #[arg(long, env = "CIRCLECI_OIDC_ORG_ID")]
    pub circleci_oidc_org_id: Option<String>,
    /// The OIDC issuer [default: https://oidc.circleci.com/org/<CIRCLECI_OIDC_ORG_ID>];
    /// plain http only for loopback hosts (or with CIRCLECI_ALLOW_INSECURE_HTTP).
    #[arg(long, env = "CIRCLECI_OIDC_ISSUER")]
    pub circleci_oidc_issuer: Option<String>,
    /// The audience tokens must carry [default: CIRCLECI_OIDC_ORG_ID, CircleCI's default
    /// audience]; set it when jobs mint tokens with `circleci run oidc get --claims`.
    #[arg(long, env = "CIRCLECI_OIDC_AUDIENCE")]
    pub circleci_oidc_audience: Option<String>,
    /// Static bearer token for the deploy job's verdict (`/v1/verdicts/{workflow_id}`), for
    /// CircleCI server installs without OIDC (weaker: shared by every project that holds it).
    /// Unset and no OIDC: that route answers 404. Must differ from ADMIN_TOKEN.
    #[arg(long, env = "VERDICT_TOKEN", hide_env_values = true)]
    pub verdict_token: Option<String>,
    /// File holding the verdict token instead.
    #[arg(long, env = "VERDICT_TOKEN_FILE")]
    pub verdict_token_file: Option<PathBuf>,
    /// Static bearer token CircleCI registers gates with (`POST /v1/gates`), for CircleCI
    /// server installs without OIDC (weaker: shared by every project that holds it). Unset and
    /// no OIDC: that route answers 404.
    #[arg(long, env = "GATE_TOKEN", hide_env_values = true)]
    pub gate_token: Option<String>,
    /// File holding the gate token instead.
    #[arg(long, env = "GATE_TOKEN_FILE")]
    pub gate_token_file: Option<PathBuf>,
    /// Sym API token (the bot token `sym/request` uses as SYM_JWT): with it the reconciler
    /// polls each open gate's Sym run and releases the hold job when it is approved, even if
    /// the hook's delivery never arrived. Unset: gates are only recorded.
    #[arg(long, env = "SYM_API_TOKEN", hide_env_values = true)]
    pub sym_api_token: Option<String>,
    /// File holding the Sym API token instead.
    #[arg(long, env = "SYM_API_TOKEN_FILE")]
    pub sym_api_token_file: Option<PathBuf>,
    /// Sym's API base URL (the Sym orb's default).
    #[arg(long, env = "SYM_API_URL", default_value = DEFAULT_SYM_API_URL)]
    pub sym_api_url: String,
    /// Allow a plain-http SYM_API_URL on a non-loopback host (the token travels in clear).
    #[arg(long, env = "SYM_API_ALLOW_INSECURE_HTTP", default_value_t = false)]
    pub sym_api_allow_insecure_http: bool,
    /// How long an open gate is polled before it is closed as timed out.
    #[arg(long, env = "GATE_TIMEOUT", default_value = "24h")]
    pub gate_timeout: String,
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

impl ServeArgs {
    /// Validates the settings into a [`Config`], naming the variable in every error.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let args = self;
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
        let hold_job_names = hold_job_names(args)?;
        let admin_token = read_optional_token(
            "ADMIN_TOKEN",
            args.admin_token.as_deref(),
            args.admin_token_file.as_deref(),
        )?;
        let verdict_token = read_optional_token(
            "VERDICT_TOKEN",
            args.verdict_token.as_deref(),
            args.verdict_token_file.as_deref(),
        )?;
        if let (Some(admin), Some(verdict)) = (&admin_token, &verdict_token) {
            if admin.expose_secret() == verdict.expose_secret() {
                return Err(config_error(
                    "VERDICT_TOKEN",
                    "must differ from ADMIN_TOKEN (it is given to CI jobs; the admin token reads \
                     every approval)",
                ));
            }
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
        if let Err(e) = Backend::for_url(database_url.expose_secret()) {
            return Err(config_error("DATABASE_URL", e.to_string()));
        }
        positive("MAX_BODY_BYTES", args.max_body_bytes)?;
        positive("MAX_CONCURRENT_REQUESTS", args.max_concurrent_requests)?;
        positive("MAX_CONNECTIONS", args.max_connections)?;
        positive("WORKER_CONCURRENCY", args.worker_concurrency)?;

        let approval_timeout = parse_duration("APPROVAL_TIMEOUT", &args.approval_timeout)?;
        Ok(Config {
            http: HttpConfig {
                listen_addr,
                max_body_bytes: args.max_body_bytes,
                max_concurrent_requests: args.max_concurrent_requests,
                request_timeout: parse_duration("REQUEST_TIMEOUT", &args.request_timeout)?,
                max_connections: args.max_connections,
                header_read_timeout: parse_duration(
                    "HEADER_READ_TIMEOUT",
                    &args.header_read_timeout,
                )?,
                body_read_timeout: parse_duration("BODY_READ_TIMEOUT", &args.body_read_timeout)?,
                idle_timeout: parse_duration("IDLE_TIMEOUT", &args.idle_timeout)?,
                shutdown_grace: parse_duration("SHUTDOWN_GRACE", &args.shutdown_grace)?,
            },
            verifier: Verifier::new(secrets, tolerance),
            circleci: CircleCiSettings {
                api_url,
                token,
                timeout: parse_duration("CIRCLECI_TIMEOUT", &args.circleci_timeout)?,
            },
            rules: TaskRules {
                on_deny: args.on_deny,
                approval_timeout,
                hold_job_names,
            },
            worker: WorkerConfig {
                allowed_projects,
                concurrency: args.worker_concurrency,
                task_lease: parse_duration("TASK_LEASE", &args.task_lease)?,
                approval_timeout,
                retry: RetryPolicy {
                    initial: parse_duration("RETRY_INITIAL", &args.retry_initial)?,
                    max: parse_duration("RETRY_MAX", &args.retry_max)?,
                    poll_max: parse_duration("POLL_MAX", &args.poll_max)?,
                },
            },
            database_url,
            store: StoreOptions {
                max_connections: match args.database_max_connections {
                    Some(0) => {
                        return Err(config_error(
                            "DATABASE_MAX_CONNECTIONS",
                            "must be at least 1",
                        ))
                    }
                    size => size,
                },
                acquire_timeout: parse_duration(
                    "DATABASE_CONNECT_TIMEOUT",
                    &args.database_connect_timeout,
                )?,
                statement_timeout: parse_duration(
                    "DATABASE_STATEMENT_TIMEOUT",
                    &args.database_statement_timeout,
                )?,
                clock: Clock::system(),
            },
            gates: gates_config(args, [&admin_token, &verdict_token])?,
            admin_token: admin_token.clone(),
            verdict_token,
            oidc: oidc_config(args)?,
            retention: (args.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(args.retention_days) * 86_400)),
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

/// `GATE_TOKEN` (distinct from the other API tokens), the Sym API, `GATE_TIMEOUT`.
fn gates_config(
    args: &ServeArgs,
    others: [&Option<SecretString>; 2],
) -> Result<GateConfig, ConfigError> {
    let gate_token = read_optional_token(
        "GATE_TOKEN",
        args.gate_token.as_deref(),
        args.gate_token_file.as_deref(),
    )?;
    if let Some(gate) = &gate_token {
        if others.iter().any(|o| {
            o.as_ref()
                .is_some_and(|o| o.expose_secret() == gate.expose_secret())
        }) {
            return Err(config_error(
                "GATE_TOKEN",
                "must differ from ADMIN_TOKEN and VERDICT_TOKEN (each token does one thing)",
            ));
        }
    }
    let sym_token = match (&args.sym_api_token, &args.sym_api_token_file) {
        (None, None) => None,
        (value, file) => Some(read_secret(
            "SYM_API_TOKEN",
            value.as_deref(),
            file.as_deref(),
        )?),
    };
    let sym_api = match sym_token {
        None => None,
        Some(token) => Some(SymApiConfig {
            url: secure_url_setting(
                "SYM_API_URL",
                "SYM_API_ALLOW_INSECURE_HTTP",
                &args.sym_api_url,
                args.sym_api_allow_insecure_http,
            )?,
            token,
            timeout: Duration::from_secs(10),
        }),
    };
    Ok(GateConfig {
        gate_token,
        sym_api,
        timeout: parse_duration("GATE_TIMEOUT", &args.gate_timeout)?,
    })
}

/// `CIRCLECI_OIDC_ORG_ID` and the issuer and audience that follow from it.
fn oidc_config(args: &ServeArgs) -> Result<Option<OidcConfig>, ConfigError> {
    let org_id = match args.circleci_oidc_org_id.as_deref().map(str::trim) {
        None | Some("") => {
            if args.circleci_oidc_issuer.is_some() || args.circleci_oidc_audience.is_some() {
                return Err(config_error(
                    "CIRCLECI_OIDC_ORG_ID",
                    "is required when CIRCLECI_OIDC_ISSUER or CIRCLECI_OIDC_AUDIENCE is set",
                ));
            }
            return Ok(None);
        }
        Some(id) => id,
    };
    if uuid::Uuid::try_parse(org_id).is_err() {
        return Err(config_error(
            "CIRCLECI_OIDC_ORG_ID",
            format!(
                "{org_id:?} is not an organization id (a UUID: Organization Settings → Overview)"
            ),
        ));
    }
    let issuer_text = args
        .circleci_oidc_issuer
        .clone()
        .filter(|i| !i.trim().is_empty())
        .unwrap_or_else(|| default_oidc_issuer(org_id));
    let issuer = secure_url_setting(
        "CIRCLECI_OIDC_ISSUER",
        "CIRCLECI_ALLOW_INSECURE_HTTP",
        &issuer_text,
        args.circleci_allow_insecure_http,
    )?;
    let audience = args
        .circleci_oidc_audience
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or(org_id)
        .to_owned();
    Ok(Some(OidcConfig {
        org_id: org_id.to_owned(),
        issuer,
        audience,
        allow_insecure_http: args.circleci_allow_insecure_http,
    }))
}

/// `HOLD_JOB_NAMES`, or `HOLD_JOB_NAME` (one name), or the default; not both forms.
fn hold_job_names(args: &ServeArgs) -> Result<Vec<String>, ConfigError> {
    let (variable, raw) = match (&args.hold_job_names, &args.hold_job_name) {
        (Some(_), Some(_)) => {
            return Err(config_error(
                "HOLD_JOB_NAMES",
                "set HOLD_JOB_NAMES or its older form HOLD_JOB_NAME, not both",
            ))
        }
        (Some(list), None) => ("HOLD_JOB_NAMES", list.as_str()),
        (None, Some(one)) => ("HOLD_JOB_NAME", one.as_str()),
        (None, None) => return Ok(vec![DEFAULT_HOLD_JOB_NAME.to_owned()]),
    };
    let mut names: Vec<String> = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    if names.is_empty() {
        return Err(config_error(
            variable,
            "must name at least one approval job",
        ));
    }
    Ok(names)
}

/// Shortest API token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// An optional bearer token from `VAR` or `VAR_FILE`: None when neither is set.
fn read_optional_token(
    variable: &'static str,
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<SecretString>, ConfigError> {
    if value.is_none_or(str::is_empty) && file.is_none() {
        return Ok(None);
    }
    let token = read_secret(variable, value, file)?;
    if token.expose_secret().len() < MIN_TOKEN_LEN {
        return Err(config_error(
            variable,
            format!("must be at least {MIN_TOKEN_LEN} characters"),
        ));
    }
    Ok(Some(token))
}

pub async fn run(args: &ServeArgs) -> ExitCode {
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Held to the end of `run`: dropping it writes out the last queued lines.
    let _logs = telemetry::init(config.log_format, "info", LogTarget::Stdout);
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
