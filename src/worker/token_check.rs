//! The startup check of `CIRCLECI_TOKEN` (`GET /me`), run in the background so readiness
//! never waits on CircleCI. A refused token is an error in the log that names the variable,
//! and a gauge an alert can watch; the token's user id is what `approved_by` shows on hold
//! jobs this service approved (the verdict uses it to recognise reruns).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::upstream::{CallRecord, Failure, TokenState};
use crate::metrics::Metrics;
use crate::outbound::circleci::CircleCiClient;

/// The token's state, shared by the check and its readers.
#[derive(Debug, Clone)]
pub struct TokenCheck {
    state: Arc<Mutex<TokenState>>,
}

impl Default for TokenCheck {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(TokenState::Unchecked)),
        }
    }
}

impl TokenCheck {
    pub fn state(&self) -> TokenState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The token's user id, once known.
    pub fn user_id(&self) -> Option<String> {
        match self.state() {
            TokenState::Valid { user_id, .. } => Some(user_id),
            _ => None,
        }
    }

    /// The token's user id; when not known yet, asks `GET /me` once (the call is added to
    /// `calls`). None when CircleCI does not say.
    pub async fn user_id_or_ask(
        &self,
        client: &CircleCiClient,
        metrics: &Metrics,
        calls: &mut Vec<CallRecord>,
    ) -> Option<String> {
        if let Some(id) = self.user_id() {
            return Some(id);
        }
        match client.me(calls).await {
            Ok(me) => {
                let id = me.id.clone();
                self.set(
                    TokenState::Valid {
                        user_id: me.id,
                        login: me.login,
                    },
                    metrics,
                );
                Some(id)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask CircleCI whose CIRCLECI_TOKEN this is");
                None
            }
        }
    }

    fn set(&self, state: TokenState, metrics: &Metrics) {
        metrics.set_token_state(state.label());
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Asks `GET /me` until CircleCI gives a definite answer (or `shutdown`).
    pub async fn run(self, client: CircleCiClient, metrics: Metrics, shutdown: CancellationToken) {
        let mut pause = Duration::from_secs(5);
        loop {
            let mut calls = Vec::new();
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = client.me(&mut calls) => result,
            };
            for call in &calls {
                metrics.circleci_call(call);
            }
            match result {
                Ok(me) => {
                    tracing::info!(
                        login = me.login.as_deref().unwrap_or("?"),
                        "CIRCLECI_TOKEN is valid"
                    );
                    self.set(
                        TokenState::Valid {
                            user_id: me.id,
                            login: me.login,
                        },
                        &metrics,
                    );
                    return;
                }
                Err(e) if e.token_refused() || e.failure == Failure::NotFound => {
                    let status = match e.failure {
                        Failure::Unauthorized => 401,
                        Failure::Forbidden => 403,
                        _ => 404,
                    };
                    self.refused(status, &metrics);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = pause.as_secs(), "cannot check CIRCLECI_TOKEN yet");
                    self.set(TokenState::Unreachable, &metrics);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(300));
        }
    }

    fn refused(&self, status: u16, metrics: &Metrics) {
        tracing::error!(
            status,
            "CircleCI refused CIRCLECI_TOKEN (GET /me answered HTTP {status}): API v2 needs a \
             personal API token (CircleCI → User Settings → Personal API Tokens); project \
             tokens are not accepted. No hold job can be approved until it is replaced."
        );
        self.set(TokenState::Refused { status }, metrics);
    }
}
