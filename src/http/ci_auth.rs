//! Who may register a gate or ask for a verdict: a CircleCI job of the configured
//! organization, proven by its OIDC token and scoped to its own pipeline; or, as an explicit
//! opt-in for CircleCI server installs without OIDC, the holder of a static token.
//!
//! For a token: the signature, issuer, audience and lifetime (`inbound::ci_token`), then no
//! SSH rerun (403: a person has a shell in that job), then the workflow the request is about
//! must belong to the token's pipeline (`oidc.circleci.com/pipeline-id` against
//! `GET /workflow/{id}`'s `pipeline_id`, through the rate-limited lookups) and its project must
//! be allowed (`ALLOWED_PROJECTS`), else 403. No or a bad token: 401. A static token proves
//! only that its holder has it: no pipeline check is possible.

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;

use super::auth::BearerToken;
use super::error::ApiError;
use crate::domain::decide::same_project;
use crate::domain::ids::WorkflowId;
use crate::domain::workflow::WorkflowInfo;
use crate::inbound::ci_token::{looks_like_jwt, CiIdentity, OidcVerifier, TokenRefusal};
use crate::metrics::Metrics;
use crate::outbound::circleci::lookups::{LookupError, WorkflowLookups};
use crate::telemetry::RateLimit;

/// The two route families CI calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiRoute {
    /// `POST /v1/gates`
    Gates,
    /// `GET /v1/verdicts/{workflow_id}`
    Verdicts,
}

impl CiRoute {
    fn name(self) -> &'static str {
        match self {
            Self::Gates => "gate API",
            Self::Verdicts => "verdict API",
        }
    }
}

/// Who the caller proved to be.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A CircleCI job, by its OIDC token.
    Job(CiIdentity),
    /// The holder of the route's static token.
    StaticToken,
}

pub struct CiAuth {
    oidc: Option<OidcVerifier>,
    gate_token: Option<BearerToken>,
    verdict_token: Option<BearerToken>,
    lookups: WorkflowLookups,
    allowed_projects: Option<Vec<String>>,
    metrics: Metrics,
    refusal_log: RateLimit,
}

impl CiAuth {
    pub fn new(
        oidc: Option<OidcVerifier>,
        gate_token: Option<BearerToken>,
        verdict_token: Option<BearerToken>,
        lookups: WorkflowLookups,
        allowed_projects: Option<Vec<String>>,
        metrics: Metrics,
    ) -> Self {
        Self {
            oidc,
            gate_token,
            verdict_token,
            lookups,
            allowed_projects,
            metrics,
            refusal_log: RateLimit::per_second(5),
        }
    }

    fn static_token(&self, route: CiRoute) -> Option<&BearerToken> {
        match route {
            CiRoute::Gates => self.gate_token.as_ref(),
            CiRoute::Verdicts => self.verdict_token.as_ref(),
        }
    }

    /// Is the route served at all (OIDC or its static token configured)?
    pub fn serves(&self, route: CiRoute) -> bool {
        self.oidc.is_some() || self.static_token(route).is_some()
    }

    fn refuse(&self, route: CiRoute, reason: &'static str, error: ApiError) -> ApiError {
        self.metrics.ci_auth_refused(reason);
        if let Some(suppressed) = self.refusal_log.allow() {
            tracing::warn!(api = route.name(), reason, detail = %error, suppressed, "CI caller refused");
        }
        error
    }

    /// The caller, from its bearer token.
    pub async fn caller(&self, headers: &HeaderMap, route: CiRoute) -> Result<Caller, ApiError> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = presented else {
            return Err(self.refuse(
                route,
                "missing_token",
                ApiError::Unauthorized(self.what_to_send()),
            ));
        };
        if let (Some(oidc), true) = (&self.oidc, looks_like_jwt(token)) {
            let identity = match oidc.verify(token).await {
                Ok(identity) => identity,
                Err(TokenRefusal::KeysUnavailable(why)) => {
                    tracing::warn!(detail = %why, "cannot check a CI caller's OIDC token");
                    return Err(ApiError::IdentityUnavailable);
                }
                Err(refused) => {
                    return Err(self.refuse(
                        route,
                        "bad_token",
                        ApiError::Unauthorized(refused.to_string()),
                    ))
                }
            };
            if identity.ssh_rerun {
                return Err(self.refuse(
                    route,
                    "ssh_rerun",
                    ApiError::Forbidden(
                        "the token is from a job rerun with SSH (oidc.circleci.com/ssh-rerun): a \
                         person has a shell in it, so it cannot speak for the pipeline"
                            .into(),
                    ),
                ));
            }
            return Ok(Caller::Job(identity));
        }
        match self.static_token(route) {
            Some(expected) if expected.matches(token) => Ok(Caller::StaticToken),
            _ => Err(self.refuse(
                route,
                "bad_token",
                ApiError::Unauthorized(self.what_to_send()),
            )),
        }
    }

    fn what_to_send(&self) -> String {
        match &self.oidc {
            Some(_) => "a CircleCI OIDC token of this organization is required \
                        (Authorization: Bearer $CIRCLE_OIDC_TOKEN_V2)"
                .into(),
            None => "a valid bearer token is required".into(),
        }
    }

    /// May `caller` act for `workflow`? A job only for a workflow of its own pipeline, in an
    /// allowed project; the workflow as CircleCI describes it is returned (None for a static
    /// token, which is not checked against anything).
    pub async fn may_act_for(
        &self,
        caller: &Caller,
        workflow: WorkflowId,
        route: CiRoute,
    ) -> Result<Option<WorkflowInfo>, ApiError> {
        let Caller::Job(identity) = caller else {
            return Ok(None);
        };
        let Some(pipeline) = identity.pipeline_id.as_deref() else {
            return Err(self.refuse(
                route,
                "wrong_pipeline",
                ApiError::Forbidden(
                    "the token names no pipeline (oidc.circleci.com/pipeline-id)".into(),
                ),
            ));
        };
        let info = match self.lookups.workflow(workflow).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return Err(self.refuse(
                    route,
                    "wrong_pipeline",
                    ApiError::Forbidden(format!(
                        "workflow {workflow} is not in this token's pipeline (CircleCI does not \
                         know it)"
                    )),
                ))
            }
            Err(LookupError::RateLimited) => {
                self.metrics.lookup_limited();
                return Err(ApiError::LookupsLimited);
            }
            Err(LookupError::Upstream(e)) => {
                tracing::warn!(error = %e, "cannot read the workflow to check a CI caller");
                return Err(ApiError::Upstream(e.to_string()));
            }
        };
        if !info.pipeline_id.eq_ignore_ascii_case(pipeline) {
            return Err(self.refuse(
                route,
                "wrong_pipeline",
                ApiError::Forbidden(format!(
                    "workflow {workflow} is not in this token's pipeline: a job may act only for \
                     workflows of its own pipeline"
                )),
            ));
        }
        if let Some(allowed) = &self.allowed_projects {
            let ok = info
                .project_slug
                .as_deref()
                .is_some_and(|slug| allowed.iter().any(|a| same_project(a, slug)));
            if !ok {
                return Err(self.refuse(
                    route,
                    "project_not_allowed",
                    ApiError::Forbidden(format!(
                        "workflow {workflow} belongs to a project that is not in ALLOWED_PROJECTS"
                    )),
                ));
            }
        }
        Ok(Some(info))
    }
}
