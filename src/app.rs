//! Builds the service from a [`Config`] and runs it until told to stop.
//!
//! `build` opens (and migrates) the store and binds the listener, so a caller, such as a test
//! passing `LISTEN_ADDR=127.0.0.1:0`, learns the real port before serving starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::duration_ms;
use crate::config::Config;
use crate::http::{self, BearerToken};
use crate::inbound::ci_token::OidcVerifier;
use crate::metrics::Metrics;
use crate::outbound::circleci::lookups::WorkflowLookups;
use crate::outbound::circleci::CircleCiClient;
use crate::outbound::oidc_keys::OidcKeys;
use crate::outbound::sym_api::SymApiClient;
use crate::store::{Backend, ServingLock, Store};
use crate::worker::reconciler::Reconciler;
use crate::worker::token_check::TokenCheck;
use crate::worker::ApprovalWorker;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    worker: Arc<ApprovalWorker>,
    reconciler: Option<Arc<Reconciler>>,
    reconciler_wake: Arc<Notify>,
    http: crate::config::HttpConfig,
    metrics: Metrics,
    /// The startup check of CIRCLECI_TOKEN, run in the background.
    token_check: (TokenCheck, CircleCiClient, Metrics),
    store: Store,
    retention: Option<Duration>,
    /// False when a caller drives the worker itself ([`ApprovalWorker::run_due`]).
    background_worker: bool,
    /// SQLite: keeps other processes off the file while this one serves.
    _serving_lock: Option<ServingLock>,
}

/// How often old records are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often the database's clock is read again.
const CLOCK_SYNC_EVERY: Duration = Duration::from_secs(60);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (store, serving_lock) = Store::connect_serving(&config.database_url, &config.store)
            .await
            .context("DATABASE_URL: cannot open the store")?;
        match store.sync_clock().await {
            Ok(0) => {}
            Ok(offset_ms) => tracing::info!(offset_ms, "following the database's clock"),
            Err(e) => tracing::warn!(error = %e, "cannot read the database's clock yet"),
        }
        if store.backend() == Backend::Sqlite {
            // One process owns a SQLite file, so leases left behind are from a dead process.
            let released = store.release_stale_leases().await?;
            if released > 0 {
                tracing::info!(released, "resuming tasks left by a previous run");
            }
        }
        let circleci = CircleCiClient::new(&config.circleci, store.clock().clone())?;
        let metrics = Metrics::new();
        let token = TokenCheck::default();
        let wake = Arc::new(Notify::new());
        let reconciler_wake = Arc::new(Notify::new());
        let rules = Arc::new(config.rules.clone());
        let reconciler = match &config.gates.sym_api {
            Some(sym) => Some(Arc::new(Reconciler::new(
                store.clone(),
                SymApiClient::new(
                    sym.url.clone(),
                    &sym.token,
                    sym.timeout,
                    store.clock().clone(),
                )?,
                Arc::clone(&rules),
                config.gates.timeout,
                metrics.clone(),
                Arc::clone(&wake),
            ))),
            None => {
                if config.gates.gate_token.is_some() {
                    tracing::info!(
                        "gates are recorded but not reconciled: set SYM_API_TOKEN to release \
                         hold jobs from Sym's run status when a hook delivery never arrives"
                    );
                }
                None
            }
        };
        let oidc = match &config.oidc {
            Some(oidc) => {
                let keys = OidcKeys::new(
                    oidc.issuer.clone(),
                    oidc.allow_insecure_http,
                    config.circleci.timeout,
                )?;
                // Fetched now, in the background, so the first CI call does not wait for them.
                tokio::spawn({
                    let keys = keys.clone();
                    async move { keys.prefetch().await }
                });
                tracing::info!(issuer = %oidc.issuer, audience = %oidc.audience, "CI callers prove themselves with CircleCI OIDC tokens");
                Some(OidcVerifier::new(
                    keys,
                    oidc.issuer.as_str(),
                    &oidc.audience,
                ))
            }
            None => None,
        };
        for (variable, set) in [
            ("GATE_TOKEN", config.gates.gate_token.is_some()),
            ("VERDICT_TOKEN", config.verdict_token.is_some()),
        ] {
            if set {
                tracing::warn!(
                    variable,
                    oidc = oidc.is_some(),
                    "a static CI token is accepted: whoever holds it may act for any workflow \
                     (CircleCI OIDC tokens are scoped to their own pipeline; see docs/security.md)"
                );
            }
        }
        let lookups = WorkflowLookups::new(circleci.clone(), {
            let metrics = metrics.clone();
            Arc::new(move |call| metrics.circleci_call(call))
        });
        let ci_auth = crate::http::ci_auth::CiAuth::new(
            oidc,
            config.gates.gate_token.as_ref().map(BearerToken::new),
            config.verdict_token.as_ref().map(BearerToken::new),
            lookups.clone(),
            config.worker.allowed_projects.clone(),
            metrics.clone(),
        );
        let worker = Arc::new(ApprovalWorker::new(
            store.clone(),
            circleci.clone(),
            config.worker.clone(),
            config.rules.default_hold_job().to_owned(),
            metrics.clone(),
            Arc::clone(&wake),
            token.clone(),
        ));
        let observer = metrics.clone();
        // New tasks go straight to the worker's free slots (when it runs); the rest wake it.
        let intake = crate::store::Intake::start(
            store.clone(),
            crate::store::BatchOptions::default(),
            Arc::new(move |size, waited| observer.intake_batch(size, waited)),
            Arc::clone(&wake),
            Some(worker.handoff()),
        );
        let areas = http::Areas {
            webhook: http::WebhookState {
                verifier: config.verifier.clone(),
                clock: store.clock().clone(),
                metrics: metrics.clone(),
                rules: Arc::clone(&rules),
                max_body_bytes: config.http.max_body_bytes,
                body_read_timeout: config.http.body_read_timeout,
                store_slots: tokio::sync::Semaphore::new(config.http.max_concurrent_requests),
                intake,
                refusal_log: crate::telemetry::RateLimit::per_second(5),
                reconciler_wake: Arc::clone(&reconciler_wake),
            },
            admin: http::AdminState {
                store: store.clone(),
                admin_token: config.admin_token.as_ref().map(BearerToken::new),
            },
            ci: http::CiState {
                auth: ci_auth,
                store: store.clone(),
                verdicts: crate::verdicts::Verdicts::new(
                    store.clone(),
                    lookups,
                    Arc::clone(&rules),
                ),
                rules,
                metrics: metrics.clone(),
                reconciler_wake: Arc::clone(&reconciler_wake),
            },
            health: http::HealthState {
                store: store.clone(),
                metrics: metrics.clone(),
            },
        };
        let router = http::router(areas, &config.http);
        let listener = TcpListener::bind(config.http.listen_addr)
            .await
            .with_context(|| {
                format!("LISTEN_ADDR: cannot listen on {}", config.http.listen_addr)
            })?;
        Ok(Self {
            http: config.http.clone(),
            metrics: metrics.clone(),
            token_check: (token, circleci, metrics),
            listener,
            router,
            worker,
            reconciler,
            reconciler_wake,
            store,
            retention: config.retention,
            background_worker: true,
            _serving_lock: serving_lock,
        })
    }

    /// Serve without running the worker in the background: the caller takes its steps with
    /// [`ApprovalWorker::run_due`] (tests, with a manual clock).
    pub fn without_background_worker(mut self) -> Self {
        self.background_worker = false;
        self
    }

    pub fn worker(&self) -> Arc<ApprovalWorker> {
        Arc::clone(&self.worker)
    }

    /// The gate reconciler, when `SYM_API_TOKEN` is set.
    pub fn reconciler(&self) -> Option<Arc<Reconciler>> {
        self.reconciler.clone()
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` is cancelled: then stops accepting, finishes in-flight requests,
    /// lets the worker finish its current steps, and closes the store. Pending tasks stay.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, backend = self.store.backend().name(), "listening");
        if self.store.backend() == Backend::Postgres {
            tokio::spawn(sync_clock_periodically(
                self.store.clone(),
                shutdown.clone(),
            ));
        }
        if self.store.backend() == Backend::Sqlite {
            tokio::spawn(checkpoint_periodically(
                self.store.clone(),
                shutdown.clone(),
            ));
        }
        let (token, client, metrics) = self.token_check.clone();
        tokio::spawn(token.run(client, metrics, shutdown.clone()));
        let worker = self
            .background_worker
            .then(|| Arc::clone(&self.worker).spawn(shutdown.clone()));
        let reconciler = self
            .reconciler
            .clone()
            .filter(|_| self.background_worker)
            .map(|r| tokio::spawn(r.run(Arc::clone(&self.reconciler_wake), shutdown.clone())));
        let pruner = self.retention.map(|retention| {
            tokio::spawn(prune_periodically(
                self.store.clone(),
                retention,
                shutdown.clone(),
            ))
        });
        http::server::serve(
            self.listener,
            self.router,
            self.http.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        if let Some(worker) = worker {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "worker ended abnormally");
            }
        }
        if let Some(reconciler) = reconciler {
            let _ = reconciler.await;
        }
        if let Some(pruner) = pruner {
            let _ = pruner.await;
        }
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs `work` every `period` on the store's clock until `shutdown` (first at once when
/// `now`, else after one period). One helper for the housekeeping loops below.
async fn every<F, Fut>(
    store: &Store,
    period: Duration,
    now: bool,
    shutdown: CancellationToken,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if now {
        work().await;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = store.clock().sleep(period) => {}
        }
        work().await;
    }
}

/// Re-reads the database's clock now and then (system clocks drift, NTP steps them).
async fn sync_clock_periodically(store: Store, shutdown: CancellationToken) {
    every(&store, CLOCK_SYNC_EVERY, false, shutdown, || async {
        if let Err(e) = store.sync_clock().await {
            tracing::warn!(error = %e, "cannot read the database's clock; keeping the last offset");
        }
    })
    .await;
}

async fn checkpoint_periodically(store: Store, shutdown: CancellationToken) {
    every(
        &store,
        crate::store::CHECKPOINT_EVERY,
        false,
        shutdown,
        || async {
            if let Err(e) = store.checkpoint().await {
                tracing::debug!(error = %e, "WAL checkpoint failed; will try again");
            }
        },
    )
    .await;
}

/// Deletes records older than `retention` now and every [`PRUNE_EVERY`]; pending tasks stay.
async fn prune_periodically(store: Store, retention: Duration, shutdown: CancellationToken) {
    every(&store, PRUNE_EVERY, true, shutdown, || async {
        let cutoff = store
            .clock()
            .now_ms()
            .saturating_sub(duration_ms(retention));
        match store.prune(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "pruned records past RETENTION_DAYS"),
            Err(e) => tracing::warn!(error = %e, "pruning failed; will try again"),
        }
    })
    .await;
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
    token.cancel();
}
