//! A typed client for the one Sym API call the gate reconciler makes: a run's status.
//!
//! `GET {SYM_API_URL}/runs/{run_id}` with `Authorization: Bearer <SYM_API_TOKEN>`: the call of
//! the Sym orb's `sym/validate` (sources in `docs/gates.md`), read the same way: only `status`
//! matters, and only `approved` or `escalated` mean approved.
//!
//! Built once with the base URL, the token (a secret, sent as a sensitive header, never in
//! `Debug` output or logs), a timeout and a User-Agent. Every HTTP exchange is logged on one
//! line (target `sym_api`) and can be returned as a [`CallRecord`] for an audit trail. Errors
//! are classified for the reconciler's policy (`domain::gate`), not interpreted here.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::outbound::circleci::parse_retry_after;

/// Longest run id accepted. Sym's run ids are UUIDs (36 characters); this leaves room for
/// another format without letting arbitrary text into URLs and logs.
pub const MAX_RUN_ID_LEN: usize = 128;

/// Largest response body read (a run is a small JSON object).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest status text kept from an unknown status (for details and logs).
const MAX_STATUS_LEN: usize = 64;

/// Where a Sym run is, in the reconciler's terms. Sym's status words are read here and
/// nowhere else.
///
/// Only `approved` and `escalated` are documented (the orb's `validate` accepts exactly those
/// two). `denied` and `expired` are this service's reading of Sym's `deny` and
/// `request_expire` events; any other word (e.g. `requested`) means the run is still open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// `approved`: the request was approved.
    Approved,
    /// `escalated`: approved and access granted (the orb treats it as approved too).
    Escalated,
    /// `denied` (or `deny`): final, not approved.
    Denied,
    /// `expired` (or `request_expire`): final, not approved.
    Expired,
    /// Any other status, kept as Sym wrote it (truncated): not decided yet.
    Open(String),
}

impl RunStatus {
    /// The status word to a state. Exact, case-sensitive matches, as the orb compares.
    pub fn from_status(status: &str) -> Self {
        match status {
            "approved" => Self::Approved,
            "escalated" => Self::Escalated,
            "denied" | "deny" => Self::Denied,
            "expired" | "request_expire" => Self::Expired,
            other => Self::Open(other.chars().take(MAX_STATUS_LEN).collect()),
        }
    }

    /// Does this status release the gate? True for `approved` and `escalated` only.
    pub fn is_approved(&self) -> bool {
        matches!(self, Self::Approved | Self::Escalated)
    }

    /// Is this a final answer that can never become approved?
    pub fn is_final_not_approved(&self) -> bool {
        matches!(self, Self::Denied | Self::Expired)
    }
}

impl std::fmt::Display for RunStatus {
    /// Sym's word for it (canonical spelling for the known ones).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Approved => "approved",
            Self::Escalated => "escalated",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Open(s) => s,
        })
    }
}

/// How a Sym API call failed, as the reconciler's policy needs to know it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SymApiError {
    /// 401: the token is wrong or expired; no run can be read with it.
    #[error("the Sym API refused the token (HTTP 401); check SYM_API_TOKEN")]
    Unauthorized,
    /// 403: the token may not read this run (another organisation's, or a permission it
    /// lacks); other runs may still be readable.
    #[error("the Sym API refused access to this run (HTTP 403): SYM_API_TOKEN may not read it")]
    Forbidden,
    /// 404: no such run (or not visible to this token's organization).
    #[error("the Sym API answered 404 Not Found for this run")]
    NotFound,
    #[error("the Sym API is rate limiting (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Sym API server error (HTTP {status})")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Any other non-2xx answer; `message` is Sym's `message` (and `code`) when it sent its
    /// error shape.
    #[error("the Sym API refused the request (HTTP {status}): {message}")]
    Client { status: u16, message: String },
    #[error("Sym API request timed out")]
    Timeout,
    #[error("cannot reach the Sym API: {0}")]
    Connect(String),
    #[error("unexpected Sym API response: {0}")]
    InvalidResponse(String),
    /// The run id was refused before any call (empty, too long, control characters, `.`/`..`).
    #[error("invalid Sym run id: {0}")]
    InvalidRunId(String),
}

impl SymApiError {
    /// The server's requested delay, when it gave one (429, 5xx).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Can asking again later give another answer? False for a refused token, a refused run
    /// id and 4xx answers other than 403, 404, 408, 425 and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unauthorized | Self::InvalidRunId(_) => false,
            Self::Client { status, .. } => matches!(status, 408 | 425),
            Self::Forbidden
            | Self::NotFound
            | Self::RateLimited { .. }
            | Self::Server { .. }
            | Self::Timeout
            | Self::Connect(_)
            | Self::InvalidResponse(_) => true,
        }
    }
}

/// Checks a run id before it goes into a URL: 1 to [`MAX_RUN_ID_LEN`] characters, no control
/// characters, not `.` or `..`. Everything else is percent-encoded as one path segment.
pub fn validate_run_id(run_id: &str) -> Result<(), String> {
    if run_id.is_empty() {
        return Err("the run id is empty".into());
    }
    if run_id.chars().count() > MAX_RUN_ID_LEN {
        return Err(format!(
            "the run id is longer than {MAX_RUN_ID_LEN} characters"
        ));
    }
    if run_id.chars().any(char::is_control) {
        return Err("the run id contains control characters".into());
    }
    if run_id.trim() != run_id {
        return Err("the run id starts or ends with whitespace".into());
    }
    if run_id == "." || run_id == ".." {
        return Err("the run id is a dot segment".into());
    }
    Ok(())
}

/// One HTTP exchange with the Sym API, for an audit trail.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub started_at: SystemTime,
    pub method: &'static str,
    /// The path below the base URL with the run id filled in (percent-encoded).
    pub endpoint: String,
    pub status: Option<u16>,
    pub duration: Duration,
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct SymApiClient {
    http: reqwest::Client,
    base: Url,
}

impl std::fmt::Debug for SymApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymApiClient")
            .field("base", &self.base.as_str())
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl SymApiClient {
    /// A client for `base` (e.g. `https://api.symops.com/api/v1`). Fails on an empty token, a
    /// token that is not a valid header value, or a base URL that cannot take a path.
    pub fn new(base: Url, token: SecretString, timeout: Duration) -> anyhow::Result<Self> {
        let token = token.expose_secret().trim();
        if token.is_empty() {
            anyhow::bail!("SYM_API_TOKEN is empty");
        }
        let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("SYM_API_TOKEN is not a valid HTTP header value"))?;
        // Sensitive values are redacted from reqwest/hyper debug output.
        bearer.set_sensitive(true);
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("SYM_API_URL must be an http(s) URL");
        }
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, bearer);
        headers.insert("Accept", HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect could carry the token elsewhere; the Sym API is called directly.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, base })
    }

    /// The base URL (without the token).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `{base}/runs/{run_id}` with the id as one percent-encoded path segment, and the path
    /// below the base for records and logs.
    fn run_url(&self, run_id: &str) -> Result<(Url, String), SymApiError> {
        validate_run_id(run_id).map_err(SymApiError::InvalidRunId)?;
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        let base_path_len = url.path().trim_end_matches('/').len();
        url.path_segments_mut()
            .map_err(|()| SymApiError::InvalidResponse("the base URL cannot take a path".into()))?
            .pop_if_empty()
            .push("runs")
            .push(run_id);
        let endpoint = url.path()[base_path_len..].to_owned();
        Ok((url, endpoint))
    }

    /// `GET {base}/runs/{run_id}`: the run's status.
    pub async fn run_status(&self, run_id: &str) -> Result<RunStatus, SymApiError> {
        Ok(self.run(run_id).await?.status)
    }

    /// `GET {base}/runs/{run_id}`: the run's status, and the request's fields when Sym's
    /// answer carries them.
    pub async fn run(&self, run_id: &str) -> Result<RunInfo, SymApiError> {
        let mut calls = Vec::with_capacity(1);
        self.run_recorded(run_id, &mut calls).await
    }

    /// [`Self::run`], adding the exchange to `calls` (nothing is added when the run id is
    /// refused before any call).
    pub async fn run_recorded(
        &self,
        run_id: &str,
        calls: &mut Vec<CallRecord>,
    ) -> Result<RunInfo, SymApiError> {
        let (url, endpoint) = self.run_url(run_id)?;
        let body = self
            .send(self.http.get(url), "GET", &endpoint, calls)
            .await?;
        Ok(RunInfo {
            status: parse_run_status(&body)?,
            request: parse_request_fields(&body),
        })
    }

    /// Sends one request, records and logs it, and classifies the outcome.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: &'static str,
        endpoint: &str,
        calls: &mut Vec<CallRecord>,
    ) -> Result<Vec<u8>, SymApiError> {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let result = async {
            let mut response = request.send().await.map_err(classify_transport)?;
            let status = response.status();
            let retry_after = parse_retry_after(response.headers());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify_transport)? {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(SymApiError::InvalidResponse(format!(
                        "body larger than {MAX_BODY_BYTES} bytes (HTTP {})",
                        status.as_u16()
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, SymApiError>((status, retry_after, body))
        }
        .await;
        let duration = started.elapsed();

        let (status, outcome) = match result {
            Ok((status, retry_after, body)) => (
                Some(status.as_u16()),
                classify_status(status, retry_after, body),
            ),
            Err(e) => (None, Err(e)),
        };
        let error = outcome.as_ref().err().map(ToString::to_string);
        tracing::info!(
            target: "sym_api",
            method,
            endpoint,
            status,
            latency_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            error = error.as_deref(),
            "sym_api call"
        );
        calls.push(CallRecord {
            started_at,
            method,
            endpoint: endpoint.to_owned(),
            status,
            duration,
            error,
        });
        outcome
    }
}

fn classify_transport(e: reqwest::Error) -> SymApiError {
    if e.is_timeout() {
        SymApiError::Timeout
    } else if e.is_connect() || e.is_request() || e.is_body() {
        // Strip the URL: it is ours and adds noise; the cause is what matters.
        SymApiError::Connect(e.without_url().to_string())
    } else {
        SymApiError::InvalidResponse(e.without_url().to_string())
    }
}

fn classify_status(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
) -> Result<Vec<u8>, SymApiError> {
    match status.as_u16() {
        200..=299 => Ok(body),
        401 => Err(SymApiError::Unauthorized),
        403 => Err(SymApiError::Forbidden),
        404 => Err(SymApiError::NotFound),
        429 => Err(SymApiError::RateLimited { retry_after }),
        500..=599 => Err(SymApiError::Server {
            status: status.as_u16(),
            retry_after,
        }),
        code => Err(SymApiError::Client {
            status: code,
            message: error_message(&body),
        }),
    }
}

/// Sym's documented error shape: `{"error": true, "message": "…", "code": "…",
/// "status_code": 400}`. All optional here; unknown fields ignored.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<bool>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// `message (code)` from Sym's error shape, else the body's text; short, for logs.
fn error_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message,
            code: Some(code),
            ..
        }) => message.map_or(code.clone(), |m| format!("{m} ({code})")),
        Ok(ErrorBody {
            message: Some(m), ..
        }) => m,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// A run as the reconciler reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub status: RunStatus,
    /// The request's fields, when Sym's answer carries them (see [`parse_request_fields`]).
    pub request: Option<RequestFields>,
}

/// The fields of the request a run was made for, as far as the service binds runs by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFields {
    pub workflow_id: uuid::Uuid,
    /// None: the request named no hold job (the service's default).
    pub hold_job_name: Option<String>,
}

/// The request's fields in a run: a `fields` object (the shape of a log entry's `fields`, the
/// prompt fields of the request), else `flow_inputs` (what the orb sends with
/// `POST /events/request`). Sym does not document `GET /runs/{id}`'s body beyond `status`
/// (the orb reads only that), so this is an assumption (`docs/gates.md`): when neither is
/// there, or its `workflow_id` is not a UUID, None, and only a signed `request` event binds
/// the run.
pub fn parse_request_fields(body: &[u8]) -> Option<RequestFields> {
    let run: serde_json::Value = serde_json::from_slice(body).ok()?;
    let fields = run
        .get("fields")
        .filter(|f| f.is_object())
        .or_else(|| run.get("flow_inputs").filter(|f| f.is_object()))?;
    let workflow_id = uuid::Uuid::try_parse(fields.get("workflow_id")?.as_str()?).ok()?;
    let hold_job_name = fields
        .get("hold_job_name")
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|h| !h.is_empty() && h.len() <= 256 && !h.chars().any(char::is_control))
        .map(str::to_owned);
    Some(RequestFields {
        workflow_id,
        hold_job_name,
    })
}

/// A run as `GET /runs/{run_id}` returns it: only `status` is read; other fields tolerated.
#[derive(Debug, Deserialize)]
struct RunBody {
    #[serde(default)]
    status: Option<serde_json::Value>,
}

/// The run's status from a 2xx body. A body in Sym's error shape (`"error": true`) or without
/// a string `status` is an invalid response.
fn parse_run_status(body: &[u8]) -> Result<RunStatus, SymApiError> {
    if let Ok(ErrorBody {
        error: Some(true), ..
    }) = serde_json::from_slice::<ErrorBody>(body)
    {
        return Err(SymApiError::InvalidResponse(format!(
            "error body with a success status: {}",
            error_message(body)
        )));
    }
    let run: RunBody = serde_json::from_slice(body)
        .map_err(|e| SymApiError::InvalidResponse(format!("run: {e}")))?;
    match run.status {
        Some(serde_json::Value::String(status)) => Ok(RunStatus::from_status(&status)),
        Some(other) => Err(SymApiError::InvalidResponse(format!(
            "run `status` is not a string: {}",
            other.to_string().chars().take(64).collect::<String>()
        ))),
        None => Err(SymApiError::InvalidResponse("run has no `status`".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn client(base: &str) -> SymApiClient {
        SymApiClient::new(
            Url::parse(base).unwrap(),
            SecretString::from("sym-test-token-0123456789".to_owned()),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    #[test]
    fn statuses_map_to_states_and_back() {
        for (word, state) in [
            ("approved", RunStatus::Approved),
            ("escalated", RunStatus::Escalated),
            ("denied", RunStatus::Denied),
            ("expired", RunStatus::Expired),
            ("requested", RunStatus::Open("requested".into())),
            ("pending", RunStatus::Open("pending".into())),
        ] {
            assert_eq!(RunStatus::from_status(word), state);
            assert_eq!(state.to_string(), word);
        }
        assert_eq!(RunStatus::from_status("deny"), RunStatus::Denied);
        assert_eq!(RunStatus::from_status("request_expire"), RunStatus::Expired);
        // Unknown words are kept, truncated.
        let RunStatus::Open(kept) = RunStatus::from_status(&"x".repeat(500)) else {
            panic!("expected Open");
        };
        assert_eq!(kept.len(), MAX_STATUS_LEN);
    }

    #[test]
    fn only_approved_and_escalated_are_approved_and_matching_is_exact() {
        assert!(RunStatus::Approved.is_approved() && RunStatus::Escalated.is_approved());
        let words = "Approved APPROVED approve deescalated".split(' ');
        for word in words.chain([" approved", "approved ", ""]) {
            let s = RunStatus::from_status(word);
            assert!(!s.is_approved(), "{word:?}");
            assert!(matches!(s, RunStatus::Open(_)), "{word:?}");
        }
        assert!(
            RunStatus::Denied.is_final_not_approved() && RunStatus::Expired.is_final_not_approved()
        );
        assert!(!RunStatus::Open("requested".into()).is_final_not_approved());
    }

    #[test]
    fn run_bodies_are_parsed_for_status_only() {
        let body = br#"{"id": "r1", "status": "approved", "flow": {"srn": "x"}, "extra": [1]}"#;
        assert_eq!(parse_run_status(body).unwrap(), RunStatus::Approved);
        let body = br#"{"status": "requested"}"#;
        assert_eq!(
            parse_run_status(body).unwrap(),
            RunStatus::Open("requested".into())
        );
        for bad in [
            r#"{"id": "r1"}"#,
            r#"{"status": null}"#,
            r#"{"status": 3}"#,
            "[]",
            "<p>",
            "",
        ] {
            let got = parse_run_status(bad.as_bytes());
            assert!(matches!(got, Err(SymApiError::InvalidResponse(_))), "{bad}");
        }
        let error = br#"{"error": true, "message": "nope", "code": "X:Y", "status_code": 400}"#;
        let Err(SymApiError::InvalidResponse(text)) = parse_run_status(error) else {
            panic!("expected an invalid response");
        };
        assert!(text.contains("nope (X:Y)"), "{text}");
    }

    #[test]
    fn the_request_fields_are_read_from_fields_or_flow_inputs_when_there() {
        let wf = "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e";
        let body = format!(
            r#"{{"status":"approved","fields":{{"workflow_id":"{wf}","hold_job_name":"prod"}}}}"#
        );
        let fields = parse_request_fields(body.as_bytes()).unwrap();
        assert_eq!(fields.workflow_id.to_string(), wf);
        assert_eq!(fields.hold_job_name.as_deref(), Some("prod"));
        let body = format!(r#"{{"status":"approved","flow_inputs":{{"workflow_id":"{wf}"}}}}"#);
        assert_eq!(
            parse_request_fields(body.as_bytes()).unwrap().hold_job_name,
            None
        );
        for none in [
            r#"{"status":"approved"}"#,
            r#"{"status":"approved","fields":{"workflow_id":"nope"}}"#,
            r#"{"status":"approved","fields":"x"}"#,
            "[]",
        ] {
            assert_eq!(parse_request_fields(none.as_bytes()), None, "{none}");
        }
    }

    #[test]
    fn statuses_are_classified_for_the_retry_policy() {
        use SymApiError::NotFound;
        let secs = |s: Option<u64>| s.map(Duration::from_secs);
        let forbidden = || SymApiError::Forbidden;
        let classify = |code: u16, retry: Option<u64>, body: &str| {
            let status = StatusCode::from_u16(code).unwrap();
            classify_status(status, secs(retry), body.into()).unwrap_err()
        };
        let client = |status, m: &str| SymApiError::Client {
            status,
            message: m.into(),
        };
        let server = |status, r| SymApiError::Server {
            status,
            retry_after: secs(r),
        };
        let limited = |r| SymApiError::RateLimited {
            retry_after: secs(r),
        };
        let sym_error =
            r#"{"error": true, "message": "Bad run", "code": "X:Y", "status_code": 400}"#;
        for (code, retry, body, expected, retryable) in [
            (401, None, "", SymApiError::Unauthorized, false),
            (403, None, "", forbidden(), true),
            (404, None, "", NotFound, true),
            (429, Some(7), "", limited(Some(7)), true),
            (503, Some(30), "", server(503, Some(30)), true),
            (500, None, "", server(500, None), true),
            (400, None, sym_error, client(400, "Bad run (X:Y)"), false),
            (418, None, "teapot\n", client(418, "teapot"), false),
            (408, None, "", client(408, ""), true),
        ] {
            let got = classify(code, retry, body);
            assert_eq!(got, expected, "HTTP {code}");
            assert_eq!(got.is_retryable(), retryable, "HTTP {code}");
            assert_eq!(got.retry_after(), secs(retry), "HTTP {code}");
        }
        assert!(classify_status(StatusCode::OK, None, b"{}".to_vec()).is_ok());
    }

    #[test]
    fn retryability_of_every_error_and_the_token_error_names_the_variable() {
        assert!(!SymApiError::Unauthorized.is_retryable());
        assert!(SymApiError::Forbidden.is_retryable());
        assert!(!SymApiError::InvalidRunId("x".into()).is_retryable());
        assert!(SymApiError::NotFound.is_retryable());
        assert!(SymApiError::Timeout.is_retryable());
        assert!(SymApiError::Connect("refused".into()).is_retryable());
        assert!(SymApiError::InvalidResponse("html".into()).is_retryable());
        let text = SymApiError::Unauthorized.to_string();
        assert!(text.contains("SYM_API_TOKEN"), "{text}");
    }

    #[test]
    fn run_ids_are_checked_and_percent_encoded_as_one_segment() {
        let c = client("https://api.symops.com/api/v1");
        let (url, endpoint) = c.run_url("0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff").unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.symops.com/api/v1/runs/0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff"
        );
        assert_eq!(endpoint, "/runs/0f9e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff");

        let (url, _) = c.run_url("a/b?c#d e%f\\g").unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.symops.com/api/v1/runs/a%2Fb%3Fc%23d%20e%25f%5Cg"
        );

        // A trailing slash, a query or a fragment on the base does not leak into the path.
        let c = client("https://api.symops.com/api/v1/?x=1#frag");
        let (url, endpoint) = c.run_url("r1").unwrap();
        assert_eq!(url.as_str(), "https://api.symops.com/api/v1/runs/r1");
        assert_eq!(endpoint, "/runs/r1");

        let too_long = "x".repeat(MAX_RUN_ID_LEN + 1);
        for bad in ["", ".", "..", "a\nb", " r1", "r1 ", &too_long] {
            assert!(
                matches!(c.run_url(bad), Err(SymApiError::InvalidRunId(_))),
                "{bad:?}"
            );
        }
        assert!(c.run_url(&"x".repeat(MAX_RUN_ID_LEN)).is_ok());
    }

    #[test]
    fn bad_tokens_and_base_urls_are_refused_and_the_token_never_shows_in_debug_output() {
        let text = format!("{:?}", client("https://api.symops.com/api/v1"));
        assert!(
            text.contains("[REDACTED]") && !text.contains("sym-test-token"),
            "{text}"
        );
        let base = Url::parse("https://api.symops.com/api/v1").unwrap();
        let t = Duration::from_secs(1);
        let err = SymApiClient::new(base.clone(), SecretString::from(" ".to_owned()), t)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SYM_API_TOKEN"), "{err}");
        let err = SymApiClient::new(base, SecretString::from("a\nb".to_owned()), t)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SYM_API_TOKEN"), "{err}");
        assert!(!err.contains("a\nb"));
        let mailto = Url::parse("mailto:ops@example.com").unwrap();
        assert!(SymApiClient::new(mailto, SecretString::from("tok".to_owned()), t).is_err());
    }
}
