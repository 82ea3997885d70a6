//! CircleCI's OIDC ID tokens, as a CI job presents them to prove who it is: a JWT the
//! organization's issuer signed (`$CIRCLE_OIDC_TOKEN_V2`, or one with a custom audience from
//! `circleci run oidc get`).
//!
//! Checked here: the signature (a key of the issuer's, `outbound::oidc_keys`, with the
//! algorithm that key names; never `none` or HMAC), `iss`, `aud`, `exp` and `nbf` with a small
//! leeway. What the token says about the job (its pipeline, project, SSH rerun) is returned for
//! the caller's checks (`http::ci_auth`). Claims as CircleCI documents them
//! (`docs/security.md` cites the pages).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Validation};
use serde::Deserialize;

use crate::outbound::oidc_keys::{KeyError, OidcKeys};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiIdentity {
    /// `sub`: `org/<org>/project/<project>/user/<user>[/vcs-origin/…/vcs-ref/…]`.
    pub subject: String,
    /// `oidc.circleci.com/project-id`.
    pub project_id: Option<String>,
    /// `oidc.circleci.com/pipeline-id`: the pipeline the job runs in.
    pub pipeline_id: Option<String>,
    /// `oidc.circleci.com/workflow-id`.
    pub workflow_id: Option<String>,
    /// `oidc.circleci.com/ssh-rerun`: the job was started with "rerun with SSH" (a person
    /// has a shell in it).
    pub ssh_rerun: bool,
}

/// Why a token was refused (all answered 401, but for an unreachable issuer: 503).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefusal {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token is not signed by a key of the OIDC issuer: {0}")]
    UnknownKey(String),
    #[error("the token is refused: {0}")]
    Invalid(String),
    #[error("{0}")]
    KeysUnavailable(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(rename = "oidc.circleci.com/project-id", default)]
    project_id: Option<String>,
    #[serde(rename = "oidc.circleci.com/pipeline-id", default)]
    pipeline_id: Option<String>,
    #[serde(rename = "oidc.circleci.com/workflow-id", default)]
    workflow_id: Option<String>,
    #[serde(rename = "oidc.circleci.com/ssh-rerun", default)]
    ssh_rerun: Option<bool>,
}

/// Verifies tokens of one issuer for one audience.
#[derive(Debug, Clone)]
pub struct OidcVerifier {
    keys: OidcKeys,
    issuer: String,
    audience: String,
}

impl OidcVerifier {
    pub fn new(keys: OidcKeys, issuer: &str, audience: &str) -> Self {
        Self {
            keys,
            issuer: issuer.trim_end_matches('/').to_owned(),
            audience: audience.to_owned(),
        }
    }

    pub fn keys(&self) -> &OidcKeys {
        &self.keys
    }

    pub async fn verify(&self, token: &str) -> Result<CiIdentity, TokenRefusal> {
        let header = decode_header(token).map_err(|e| TokenRefusal::Malformed(e.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| TokenRefusal::Malformed("its header names no key (`kid`)".into()))?;
        let key = self.keys.key(&kid).await.map_err(|e| match e {
            KeyError::UnknownKey(k) => TokenRefusal::UnknownKey(format!("no key {k:?}")),
            KeyError::Unavailable(why) => TokenRefusal::KeysUnavailable(why),
        })?;
        if header.alg != key.algorithm {
            return Err(TokenRefusal::Invalid(format!(
                "it is signed with {:?}, the key is for {:?}",
                header.alg, key.algorithm
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&[self.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY.as_secs();
        let data = decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| TokenRefusal::Invalid(describe(e.kind())))?;
        let claims = data.claims;
        Ok(CiIdentity {
            subject: claims.sub,
            project_id: claims.project_id,
            pipeline_id: claims.pipeline_id,
            workflow_id: claims.workflow_id,
            ssh_rerun: claims.ssh_rerun.unwrap_or(false),
        })
    }
}

/// Does a bearer token look like a JWT (three base64url parts), as opposed to a static token?
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "it has expired (`exp`)".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (`nbf`)".into(),
        ErrorKind::InvalidIssuer => "it is from another issuer (`iss`)".into(),
        ErrorKind::InvalidAudience => "it is for another audience (`aud`)".into(),
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no `{claim}` claim"),
        ErrorKind::InvalidAlgorithm => "its algorithm is not the key's".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_are_told_from_static_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        for not in [
            "",
            "gate-token-7d41c0a9e2",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b c.d",
        ] {
            assert!(!looks_like_jwt(not), "{not:?}");
        }
    }
}
