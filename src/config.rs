//! Typed, validated configuration, and the checks that make it.
//!
//! The command line (`crate::cli`) reads raw text; `ServeArgs::to_config` validates it into
//! these types with the helpers here, naming the variable in every error. Secrets are wrapped
//! in [`SecretString`] or [`crate::inbound::signature::WebhookSecret`] at once, so no `Debug`
//! or error message can show them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

pub use crate::domain::retry::RetryPolicy;
pub use crate::domain::task::{OnDeny, TaskRules};
use crate::inbound::signature::Verifier;
use crate::outbound::circleci::CircleCiSettings;
use crate::outbound::urls::secure_base_url;
use crate::store::StoreOptions;

pub const DEFAULT_CIRCLECI_API_URL: &str = "https://circleci.com/api/v2";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/approver.db";

/// A configuration error; the message names the variable and never holds a secret value.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

pub fn config_error(variable: &'static str, message: impl Into<String>) -> ConfigError {
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
pub struct WorkerConfig {
    /// None: every project; Some: only these slugs.
    pub allowed_projects: Option<Vec<String>>,
    pub concurrency: usize,
    pub task_lease: Duration,
    pub retry: RetryPolicy,
    /// APPROVAL_TIMEOUT: the window a task gets (also the one an attached approval gets when
    /// the task it was attached to fails).
    pub approval_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen_addr: SocketAddr,
    pub max_body_bytes: usize,
    /// Signed deliveries being stored at once; more wait briefly, then get 429.
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Time for a client to send its request headers (also bounds a keep-alive wait).
    pub header_read_timeout: Duration,
    /// Time for a client to send a webhook body.
    pub body_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// After SIGTERM: how long requests in flight may take before connections are dropped.
    pub shutdown_grace: Duration,
}

/// The default `SYM_API_URL`: the Sym orb's own default.
pub const DEFAULT_SYM_API_URL: &str = "https://api.symops.com/api/v1";

/// CircleCI's OIDC tokens, for callers from CI (gate registration, verdicts).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// `CIRCLECI_OIDC_ORG_ID`: the organization whose jobs may call.
    pub org_id: String,
    /// `CIRCLECI_OIDC_ISSUER`: `https://oidc.circleci.com/org/<org-id>` by default.
    pub issuer: Url,
    /// `CIRCLECI_OIDC_AUDIENCE`: the org id by default (CircleCI's default audience).
    pub audience: String,
    /// `CIRCLECI_ALLOW_INSECURE_HTTP`: the issuer's `jwks_uri` may be plain http off loopback.
    pub allow_insecure_http: bool,
}

/// CircleCI's OIDC issuer for an organization.
pub fn default_oidc_issuer(org_id: &str) -> String {
    format!("https://oidc.circleci.com/org/{org_id}")
}

#[derive(Debug, Clone)]
pub struct GateConfig {
    /// The static token CircleCI registers gates with (opt-in, weaker than OIDC); None and no
    /// OIDC: `POST /v1/gates` answers 404.
    pub gate_token: Option<SecretString>,
    /// Sym's API for the reconciler; None: gates are recorded, only the hook approves.
    pub sym_api: Option<SymApiConfig>,
    /// How long a gate is polled before it is closed as timed out.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SymApiConfig {
    pub url: Url,
    pub token: SecretString,
    pub timeout: Duration,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: HttpConfig,
    pub verifier: Verifier,
    pub circleci: CircleCiSettings,
    pub worker: WorkerConfig,
    pub database_url: SecretString,
    pub store: StoreOptions,
    /// The audit API's bearer token; None disables the API.
    pub admin_token: Option<SecretString>,
    /// The verdict API's static bearer token (opt-in, weaker than OIDC).
    pub verdict_token: Option<SecretString>,
    /// CircleCI OIDC for the gate and verdict APIs; None: only the static tokens, if set.
    pub oidc: Option<OidcConfig>,
    /// Gates: registration and the reconciler.
    pub gates: GateConfig,
    /// Prune records older than this; None keeps everything.
    pub retention: Option<Duration>,
    /// What an event asks for: ON_DENY, APPROVAL_TIMEOUT, HOLD_JOB_NAMES.
    pub rules: TaskRules,
    pub log_format: LogFormat,
}

/// A secret from `VAR` or `VAR_FILE` (exactly one of them), trimmed.
pub fn read_secret(
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

pub fn positive(variable: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(config_error(variable, "must be at least 1"));
    }
    Ok(())
}

/// The CircleCI base URL; plain http only for loopback hosts, unless explicitly allowed,
/// so the token never crosses a network in clear text by accident.
pub fn parse_api_url(raw: &str, allow_insecure_http: bool) -> Result<Url, ConfigError> {
    secure_base_url(raw, allow_insecure_http).map_err(|message| ConfigError {
        variable: "CIRCLECI_API_URL",
        message: message.replace("{override}", "CIRCLECI_ALLOW_INSECURE_HTTP"),
    })
}

/// [`crate::outbound::urls::secure_base_url`], its refusal naming `variable` and the setting
/// that overrides the http rule.
pub fn secure_url_setting(
    variable: &'static str,
    override_variable: &str,
    raw: &str,
    allow_insecure_http: bool,
) -> Result<Url, ConfigError> {
    secure_base_url(raw, allow_insecure_http).map_err(|message| ConfigError {
        variable,
        message: message.replace("{override}", override_variable),
    })
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
}
