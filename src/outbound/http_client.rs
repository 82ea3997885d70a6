//! One HTTP client core for every upstream (CircleCI, Sym's API): built once with the base
//! URL, the token as a sensitive header, a timeout and a User-Agent; it sends a request,
//! classifies the answer into the domain's [`UpstreamError`], parses `Retry-After`, logs the
//! exchange on one line and records it as a [`CallRecord`]. Each client keeps only its
//! endpoints and wire types.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::clock::Clock;
use crate::domain::upstream::{CallRecord, Failure, Operation, Upstream, UpstreamError};

/// How to reach one upstream.
pub struct ClientSettings<'a> {
    pub upstream: Upstream,
    pub base: Url,
    /// The header the token goes in, and how it is written (`Bearer …` or bare).
    pub token_header: HeaderName,
    pub token: &'a SecretString,
    pub bearer: bool,
    pub timeout: Duration,
    /// Largest response body read.
    pub max_body_bytes: usize,
}

/// The shared core. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
    base: Url,
    upstream: Upstream,
    max_body_bytes: usize,
    clock: Clock,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("upstream", &self.upstream)
            .field("base", &self.base.as_str())
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl UpstreamClient {
    pub fn new(settings: ClientSettings<'_>, clock: Clock) -> anyhow::Result<Self> {
        let variable = settings.upstream.token_variable();
        let raw = settings.token.expose_secret();
        if raw.trim().is_empty() {
            anyhow::bail!("{variable} is empty");
        }
        let value = if settings.bearer {
            format!("Bearer {raw}")
        } else {
            raw.to_owned()
        };
        let mut token = HeaderValue::from_str(&value)
            .map_err(|_| anyhow::anyhow!("{variable} is not a valid HTTP header value"))?;
        // Sensitive values are redacted from reqwest/hyper debug output.
        token.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(settings.token_header, token);
        headers.insert("accept", HeaderValue::from_static("application/json"));
        if settings.base.cannot_be_a_base() {
            anyhow::bail!(
                "the {} base URL cannot take a path",
                settings.upstream.name()
            );
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            // A redirect could carry the token elsewhere; neither API redirects.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            base: settings.base,
            upstream: settings.upstream,
            max_body_bytes: settings.max_body_bytes,
            clock,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `{base}{path}`: for paths whose ids are UUIDs (nothing to encode).
    pub fn url(&self, path: &str) -> Result<Url, UpstreamError> {
        let base = self.base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}"))
            .map_err(|e| self.fail(Failure::InvalidRequest(e.to_string())))
    }

    /// `{base}/{segments…}`, each segment percent-encoded as one path segment; and the path
    /// below the base, for records and logs.
    pub fn url_with_segments(&self, segments: &[&str]) -> Result<(Url, String), UpstreamError> {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        let base_path_len = url.path().trim_end_matches('/').len();
        {
            let mut path = url.path_segments_mut().map_err(|()| {
                self.fail(Failure::InvalidRequest(
                    "the base URL cannot take a path".into(),
                ))
            })?;
            path.pop_if_empty();
            for segment in segments {
                path.push(segment);
            }
        }
        let endpoint = url.path()[base_path_len..].to_owned();
        Ok((url, endpoint))
    }

    pub fn fail(&self, failure: Failure) -> UpstreamError {
        UpstreamError::new(self.upstream, failure)
    }

    pub fn get(&self, url: Url) -> reqwest::RequestBuilder {
        self.http.get(url)
    }

    pub fn post(&self, url: Url) -> reqwest::RequestBuilder {
        self.http.post(url)
    }

    /// Sends one request, records and logs it, and classifies the outcome.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        operation: Operation,
        method: &'static str,
        endpoint: &str,
        calls: &mut Vec<CallRecord>,
    ) -> Result<Bytes, UpstreamError> {
        let started_at = self.clock.now_ms();
        let started = tokio::time::Instant::now();
        let result = async {
            let mut response = request.send().await.map_err(|e| self.transport(e))?;
            let status = response.status();
            let retry_after = parse_retry_after(response.headers());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(e))? {
                if body.len() + chunk.len() > self.max_body_bytes {
                    return Err(self.fail(Failure::InvalidResponse(format!(
                        "body larger than {} bytes (HTTP {})",
                        self.max_body_bytes,
                        status.as_u16()
                    ))));
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, UpstreamError>((status, retry_after, Bytes::from(body)))
        }
        .await;
        let duration = started.elapsed();
        let (status, outcome) = match result {
            Ok((status, retry_after, body)) => (
                Some(status.as_u16()),
                self.classify(status, retry_after, body),
            ),
            Err(e) => (None, Err(e)),
        };
        let error = outcome.as_ref().err().map(ToString::to_string);
        let latency_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        // One line per exchange; the target names the upstream (`circleci`, `sym_api`).
        match self.upstream {
            Upstream::CircleCi => tracing::info!(
                target: "circleci",
                method, endpoint, status, latency_ms, error = error.as_deref(), "circleci call"
            ),
            Upstream::SymApi => tracing::info!(
                target: "sym_api",
                method, endpoint, status, latency_ms, error = error.as_deref(), "sym_api call"
            ),
        }
        calls.push(CallRecord {
            started_at,
            operation,
            method,
            endpoint: endpoint.to_owned(),
            status,
            duration,
            error,
        });
        outcome
    }

    fn transport(&self, e: reqwest::Error) -> UpstreamError {
        self.fail(if e.is_timeout() {
            Failure::Timeout
        } else if e.is_connect() || e.is_request() || e.is_body() {
            // Strip the URL: it is ours and adds noise; the cause is what matters.
            Failure::Connect(e.without_url().to_string())
        } else {
            Failure::InvalidResponse(e.without_url().to_string())
        })
    }

    fn classify(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: Bytes,
    ) -> Result<Bytes, UpstreamError> {
        classify_status(self.upstream, status, retry_after, body)
    }
}

/// An answer's status as the domain's failure (Ok with the body for a 2xx).
pub fn classify_status(
    upstream: Upstream,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
) -> Result<Bytes, UpstreamError> {
    let failure = match status.as_u16() {
        200..=299 => return Ok(body),
        401 => Failure::Unauthorized,
        403 => Failure::Forbidden,
        404 => Failure::NotFound,
        429 => Failure::RateLimited { retry_after },
        code @ 500..=599 => Failure::Server {
            status: code,
            retry_after,
        },
        code => Failure::Client {
            status: code,
            message: error_message(&body),
        },
    };
    Err(UpstreamError::new(upstream, failure))
}

/// Error bodies: Sym's `{"error": true, "message", "code"}` and CircleCI's `{"message"}`;
/// `message (code)`, else the body's text; short, without control characters, for logs.
pub fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        code: Option<String>,
    }
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message,
            code: Some(code),
        }) => message.map_or(code.clone(), |m| format!("{m} ({code})")),
        Ok(ErrorBody {
            message: Some(m), ..
        }) => m,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// `Retry-After` as seconds or an HTTP date, capped at an hour.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(delay.min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let parsed = parse_retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&headers), None);
    }

    #[test]
    fn statuses_become_the_domains_failures_for_either_upstream() {
        let secs = |s: Option<u64>| s.map(Duration::from_secs);
        let sym_error =
            r#"{"error": true, "message": "Bad run", "code": "X:Y", "status_code": 400}"#;
        for (code, retry, body, expected) in [
            (401, None, "", Failure::Unauthorized),
            (403, None, "", Failure::Forbidden),
            (404, None, "", Failure::NotFound),
            (
                429,
                Some(7),
                "",
                Failure::RateLimited {
                    retry_after: secs(Some(7)),
                },
            ),
            (
                503,
                Some(30),
                "",
                Failure::Server {
                    status: 503,
                    retry_after: secs(Some(30)),
                },
            ),
            (
                400,
                None,
                sym_error,
                Failure::Client {
                    status: 400,
                    message: "Bad run (X:Y)".into(),
                },
            ),
            (
                422,
                None,
                r#"{"message": "Job is not on hold."}"#,
                Failure::Client {
                    status: 422,
                    message: "Job is not on hold.".into(),
                },
            ),
            (
                418,
                None,
                "teapot\n",
                Failure::Client {
                    status: 418,
                    message: "teapot".into(),
                },
            ),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            let got = classify_status(Upstream::SymApi, status, secs(retry), Bytes::from(body))
                .unwrap_err();
            assert_eq!(got.failure, expected, "HTTP {code}");
            assert_eq!(got.retry_after(), secs(retry), "HTTP {code}");
        }
        assert!(classify_status(Upstream::CircleCi, StatusCode::OK, None, Bytes::new()).is_ok());
    }
}
