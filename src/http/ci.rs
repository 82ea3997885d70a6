//! The routes CI jobs call: `POST /v1/gates` (`super::gates`) and
//! `GET /v1/verdicts/{workflow_id}` (`super::verdict`), and what they share.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Notify;

use super::ci_auth::CiAuth;
use super::{gates, verdict};
use crate::domain::task::TaskRules;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::verdicts::Verdicts;

/// What the CI routes need.
pub struct CiState {
    /// Who may call (CircleCI OIDC, or opted-in static tokens).
    pub auth: CiAuth,
    pub store: Store,
    pub verdicts: Verdicts,
    /// HOLD_JOB_NAMES.
    pub rules: Arc<TaskRules>,
    pub metrics: Metrics,
    /// Wakes the reconciler when a gate is registered.
    pub reconciler_wake: Arc<Notify>,
}

pub fn routes(state: CiState) -> Router {
    Router::new()
        .route(
            "/v1/gates",
            post(gates::register).layer(DefaultBodyLimit::max(gates::MAX_GATE_BODY)),
        )
        .route("/v1/verdicts/{workflow_id}", get(verdict::get_verdict))
        .with_state(Arc::new(state))
}

pub(super) type CiShared = Arc<CiState>;
