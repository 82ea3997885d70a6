//! Bearer tokens of the HTTP API: `ADMIN_TOKEN` (the audit API) and `VERDICT_TOKEN` (one
//! workflow's verdict, nothing else). Each route family takes only its own token.
//!
//! The check compares SHA-256 digests in constant time, so neither the content nor the
//! length of the configured token leaks through timing.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// A configured token, kept as its digest for constant-time comparison.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8; 32]>);

impl BearerToken {
    pub fn new(token: &SecretString) -> Self {
        Self(Arc::new(
            Sha256::digest(token.expose_secret().as_bytes()).into(),
        ))
    }

    pub(super) fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(self.0.as_ref()).into()
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([REDACTED])")
    }
}

/// Ok when `request` carries `token`; else the answer: 404 when the routes are disabled (no
/// token configured: as if absent), 401 for a missing or wrong token.
pub fn check_bearer(
    token: Option<&BearerToken>,
    request: &Request,
    what: &'static str,
) -> Result<(), ApiError> {
    let Some(token) = token else {
        let path = request.uri().path().to_owned();
        return Err(ApiError::NotFound(format!(
            "no route for {} {path}",
            request.method()
        )));
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(p) if token.matches(p) => Ok(()),
        _ => {
            tracing::warn!(path = %request.uri().path(), "{what}: missing or wrong bearer token");
            Err(ApiError::AdminUnauthorized)
        }
    }
}
