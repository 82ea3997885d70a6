//! The systems this service calls (CircleCI, Sym's API), as the decisions see them: how a call
//! failed, and the record of each call. The adapters (`outbound`) turn HTTP into these; the
//! policies (`decide`, `gate`) read only these.

use std::time::Duration;

/// Which system was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    CircleCi,
    SymApi,
}

impl Upstream {
    /// How details and logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::CircleCi => "CircleCI",
            Self::SymApi => "the Sym API",
        }
    }

    /// The setting that holds this service's token for it.
    pub fn token_variable(self) -> &'static str {
        match self {
            Self::CircleCi => "CIRCLECI_TOKEN",
            Self::SymApi => "SYM_API_TOKEN",
        }
    }
}

/// How a call failed, whichever system it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 401: the token is wrong, expired or revoked.
    Unauthorized,
    /// 403: the token may not do this (for CircleCI, as final as a 401).
    Forbidden,
    /// 404.
    NotFound,
    /// 429.
    RateLimited { retry_after: Option<Duration> },
    /// 5xx.
    Server {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Any other non-2xx answer, with the system's own message when it sent one.
    Client { status: u16, message: String },
    /// No answer within the time limit.
    Timeout,
    /// The connection failed (refused, reset, TLS).
    Connect(String),
    /// A 2xx whose body could not be read as expected.
    InvalidResponse(String),
    /// Refused before any call (e.g. a run id that cannot go into a URL).
    InvalidRequest(String),
}

/// A failed call to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct UpstreamError {
    pub upstream: Upstream,
    pub failure: Failure,
}

impl UpstreamError {
    pub fn new(upstream: Upstream, failure: Failure) -> Self {
        Self { upstream, failure }
    }

    pub fn circleci(failure: Failure) -> Self {
        Self::new(Upstream::CircleCi, failure)
    }

    pub fn sym(failure: Failure) -> Self {
        Self::new(Upstream::SymApi, failure)
    }

    /// The server's requested delay, when it gave one (429, 5xx).
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.failure {
            Failure::RateLimited { retry_after } | Failure::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The token itself was refused (401), or (CircleCI) may not act (403): asking again with
    /// the same token cannot help.
    pub fn token_refused(&self) -> bool {
        match self.failure {
            Failure::Unauthorized => true,
            Failure::Forbidden => self.upstream == Upstream::CircleCi,
            _ => false,
        }
    }

    /// Can asking again later give another answer? False for a refused token, a refused
    /// request and 4xx answers other than 403 (Sym), 404, 408, 425 and 429.
    pub fn is_retryable(&self) -> bool {
        match &self.failure {
            Failure::Unauthorized | Failure::InvalidRequest(_) => false,
            Failure::Forbidden => self.upstream == Upstream::SymApi,
            Failure::Client { status, .. } => matches!(status, 408 | 425),
            Failure::NotFound
            | Failure::RateLimited { .. }
            | Failure::Server { .. }
            | Failure::Timeout
            | Failure::Connect(_)
            | Failure::InvalidResponse(_) => true,
        }
    }

    fn describe(&self) -> String {
        let who = self.upstream.name();
        let capital = |s: &str| {
            let mut c = s.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_uppercase().collect::<String>() + c.as_str()
            })
        };
        match &self.failure {
            Failure::Unauthorized => format!(
                "{} refused the token (HTTP 401); check {}",
                capital(who),
                self.upstream.token_variable()
            ),
            Failure::Forbidden => match self.upstream {
                Upstream::CircleCi => format!(
                    "CircleCI refused the token (HTTP 403); check {}",
                    self.upstream.token_variable()
                ),
                Upstream::SymApi => format!(
                    "the Sym API refused access to this run (HTTP 403): {} may not read it",
                    self.upstream.token_variable()
                ),
            },
            Failure::NotFound => format!("{} answered 404 Not Found", capital(who)),
            Failure::RateLimited { .. } => format!("{} is rate limiting (HTTP 429)", capital(who)),
            Failure::Server { status, .. } => {
                format!("{} server error (HTTP {status})", capital(who))
            }
            Failure::Client { status, message } => {
                format!(
                    "{} refused the request (HTTP {status}): {message}",
                    capital(who)
                )
            }
            Failure::Timeout => format!("{} request timed out", capital(who)),
            Failure::Connect(cause) => format!("cannot reach {who}: {cause}"),
            Failure::InvalidResponse(what) => format!("unexpected {} response: {what}", who),
            Failure::InvalidRequest(what) => format!("not sent to {who}: {what}"),
        }
    }
}

/// What a call was for (a metrics label and the audit trail's `operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ListJobs,
    GetWorkflow,
    Approve,
    Cancel,
    Me,
    /// Sym: `GET /runs/{run_id}`.
    ReadRun,
}
text_enum!(Operation {
    ListJobs => "list_jobs",
    GetWorkflow => "get_workflow",
    Approve => "approve",
    Cancel => "cancel",
    Me => "me",
    ReadRun => "read_run",
});

/// One HTTP exchange with an upstream, for the audit trail and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// When it started (unix ms, the service's clock).
    pub started_at: i64,
    pub operation: Operation,
    pub method: &'static str,
    /// The path below the base URL with ids filled in (never a token or secret).
    pub endpoint: String,
    pub status: Option<u16>,
    pub duration: Duration,
    pub error: Option<String>,
}

/// What is known about this service's CircleCI token (`GET /me`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    Unchecked,
    /// CircleCI knows it: the user it belongs to.
    Valid {
        user_id: String,
        login: Option<String>,
    },
    /// CircleCI refused it (401/403, or 404: what project tokens get on API v2).
    Refused {
        status: u16,
    },
    /// CircleCI could not be asked yet (network, 5xx); asked again later.
    Unreachable,
}

impl TokenState {
    pub const LABELS: &'static [&'static str] = &["unchecked", "valid", "refused", "unreachable"];

    pub fn label(&self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Valid { .. } => "valid",
            Self::Refused { .. } => "refused",
            Self::Unreachable => "unreachable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_upstream_and_the_token_to_check() {
        let e = UpstreamError::sym(Failure::Unauthorized);
        assert!(e.to_string().contains("SYM_API_TOKEN"), "{e}");
        assert!(e.to_string().starts_with("The Sym API"), "{e}");
        let e = UpstreamError::circleci(Failure::Server {
            status: 503,
            retry_after: None,
        });
        assert_eq!(e.to_string(), "CircleCI server error (HTTP 503)");
        assert!(UpstreamError::circleci(Failure::Forbidden).token_refused());
        assert!(!UpstreamError::sym(Failure::Forbidden).token_refused());
        assert!(UpstreamError::sym(Failure::Forbidden).is_retryable());
        assert!(!UpstreamError::circleci(Failure::Forbidden).is_retryable());
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(*op));
        }
    }
}
