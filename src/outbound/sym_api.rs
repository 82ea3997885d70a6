//! A typed client for the one Sym API call the gate reconciler makes: a run's status.
//!
//! `GET {SYM_API_URL}/runs/{run_id}` with `Authorization: Bearer <SYM_API_TOKEN>`: the call of
//! the Sym orb's `sym/validate` (sources in `docs/gates.md`), read the same way: only
//! `approved` or `escalated` mean approved. Sym's words and error shape are read here and
//! nowhere else; sending, classifying and recording are the shared core's
//! (`outbound::http_client`).

use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;

use super::http_client::{error_message, ClientSettings, UpstreamClient};
use crate::clock::Clock;
use crate::domain::run::{RequestFields, RunInfo, RunStatus};
use crate::domain::upstream::{CallRecord, Failure, Operation, Upstream, UpstreamError};

/// Longest run id accepted. Sym's run ids are UUIDs (36 characters); this leaves room for
/// another format without letting arbitrary text into URLs and logs.
pub const MAX_RUN_ID_LEN: usize = 128;

/// Largest response body read (a run is a small JSON object).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest status text kept from an unknown status (for details and logs).
const MAX_STATUS_LEN: usize = 64;

/// A run's status from Sym's word for it. Exact, case-sensitive matches, as the orb compares.
pub fn status_of(status: &str) -> RunStatus {
    match status {
        "approved" => RunStatus::Approved,
        "escalated" => RunStatus::Escalated,
        "denied" | "deny" => RunStatus::Denied,
        "expired" | "request_expire" => RunStatus::Expired,
        other => RunStatus::Open(other.chars().take(MAX_STATUS_LEN).collect()),
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

#[derive(Clone, Debug)]
pub struct SymApiClient {
    core: UpstreamClient,
}

impl SymApiClient {
    /// A client for `base` (e.g. `https://api.symops.com/api/v1`). Fails on an empty token, a
    /// token that is not a valid header value, or a base URL that cannot take a path.
    pub fn new(
        base: Url,
        token: &SecretString,
        timeout: Duration,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("SYM_API_URL must be an http(s) URL");
        }
        let core = UpstreamClient::new(
            ClientSettings {
                upstream: Upstream::SymApi,
                base,
                token_header: AUTHORIZATION,
                token,
                bearer: true,
                timeout,
                max_body_bytes: MAX_BODY_BYTES,
            },
            clock,
        )?;
        Ok(Self { core })
    }

    /// The base URL (without the token).
    pub fn base(&self) -> &Url {
        self.core.base()
    }

    /// `{base}/runs/{run_id}` with the id as one percent-encoded path segment, and the path
    /// below the base for records and logs.
    fn run_url(&self, run_id: &str) -> Result<(Url, String), UpstreamError> {
        validate_run_id(run_id).map_err(|why| self.core.fail(Failure::InvalidRequest(why)))?;
        self.core.url_with_segments(&["runs", run_id])
    }

    /// `GET {base}/runs/{run_id}`: the run's status.
    pub async fn run_status(&self, run_id: &str) -> Result<RunStatus, UpstreamError> {
        Ok(self.run(run_id).await?.status)
    }

    /// `GET {base}/runs/{run_id}`: the run's status, and the request's fields when Sym's
    /// answer carries them.
    pub async fn run(&self, run_id: &str) -> Result<RunInfo, UpstreamError> {
        let mut calls = Vec::with_capacity(1);
        self.run_recorded(run_id, &mut calls).await
    }

    /// [`Self::run`], adding the exchange to `calls` (nothing is added when the run id is
    /// refused before any call).
    pub async fn run_recorded(
        &self,
        run_id: &str,
        calls: &mut Vec<CallRecord>,
    ) -> Result<RunInfo, UpstreamError> {
        let (url, endpoint) = self.run_url(run_id)?;
        let body = self
            .core
            .send(
                self.core.get(url),
                Operation::ReadRun,
                "GET",
                &endpoint,
                calls,
            )
            .await?;
        Ok(RunInfo {
            status: parse_run_status(&body)
                .map_err(|why| self.core.fail(Failure::InvalidResponse(why)))?,
            request: parse_request_fields(&body),
        })
    }
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

/// Sym's documented error shape, as far as a 2xx body in it must be told apart.
#[derive(Debug, Deserialize)]
struct ErrorFlag {
    #[serde(default)]
    error: Option<bool>,
}

/// A run as `GET /runs/{run_id}` returns it: only `status` is read; other fields tolerated.
#[derive(Debug, Deserialize)]
struct RunBody {
    #[serde(default)]
    status: Option<serde_json::Value>,
}

/// The run's status from a 2xx body. A body in Sym's error shape (`"error": true`) or without
/// a string `status` is an unreadable answer (the reason is returned).
fn parse_run_status(body: &[u8]) -> Result<RunStatus, String> {
    if let Ok(ErrorFlag { error: Some(true) }) = serde_json::from_slice::<ErrorFlag>(body) {
        return Err(format!(
            "error body with a success status: {}",
            error_message(body)
        ));
    }
    let run: RunBody = serde_json::from_slice(body).map_err(|e| format!("run: {e}"))?;
    match run.status {
        Some(serde_json::Value::String(status)) => Ok(status_of(&status)),
        Some(other) => Err(format!(
            "run `status` is not a string: {}",
            other.to_string().chars().take(64).collect::<String>()
        )),
        None => Err("run has no `status`".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn client(base: &str) -> SymApiClient {
        SymApiClient::new(
            Url::parse(base).unwrap(),
            &SecretString::from("sym-test-token-0123456789".to_owned()),
            Duration::from_secs(2),
            Clock::system(),
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
            assert_eq!(status_of(word), state);
            assert_eq!(state.to_string(), word);
        }
        assert_eq!(status_of("deny"), RunStatus::Denied);
        assert_eq!(status_of("request_expire"), RunStatus::Expired);
        // Unknown words are kept, truncated.
        let RunStatus::Open(kept) = status_of(&"x".repeat(500)) else {
            panic!("expected Open");
        };
        assert_eq!(kept.len(), MAX_STATUS_LEN);
    }

    #[test]
    fn only_approved_and_escalated_are_approved_and_matching_is_exact() {
        assert!(RunStatus::Approved.is_approved() && RunStatus::Escalated.is_approved());
        let words = "Approved APPROVED approve deescalated".split(' ');
        for word in words.chain([" approved", "approved ", ""]) {
            let s = status_of(word);
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
            assert!(parse_run_status(bad.as_bytes()).is_err(), "{bad}");
        }
        let error = br#"{"error": true, "message": "nope", "code": "X:Y", "status_code": 400}"#;
        let Err(text) = parse_run_status(error) else {
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
                matches!(
                    c.run_url(bad),
                    Err(UpstreamError {
                        failure: Failure::InvalidRequest(_),
                        ..
                    })
                ),
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
        let c = Clock::system;
        let err = SymApiClient::new(base.clone(), &SecretString::from(" ".to_owned()), t, c())
            .unwrap_err()
            .to_string();
        assert!(err.contains("SYM_API_TOKEN"), "{err}");
        let err = SymApiClient::new(base, &SecretString::from("a\nb".to_owned()), t, c())
            .unwrap_err()
            .to_string();
        assert!(err.contains("SYM_API_TOKEN"), "{err}");
        assert!(!err.contains("a\nb"));
        let mailto = Url::parse("mailto:ops@example.com").unwrap();
        assert!(SymApiClient::new(mailto, &SecretString::from("tok".to_owned()), t, c()).is_err());
    }
}
