//! CircleCI lookups made on behalf of API callers (a verdict for a workflow the service never
//! saw, the pipeline check of an OIDC caller), which must not spend the rate limit that
//! approvals need: each workflow is looked up at most once a minute (answers, CircleCI's 404
//! and errors alike are kept that long; a workflow that exists is kept an hour, as a
//! workflow's pipeline and project never change), and all lookups together at most five a
//! second, spaced evenly. A lookup that would wait more than [`MAX_WAIT`] for its turn is
//! refused instead ([`LookupError::RateLimited`], answered 429 with `Retry-After`).
//!
//! Two exceptions, both deliberate: a CircleCI error (not a 404) is kept 10 s, not a minute,
//! so a registration retried after a blip is not refused for a minute; and a job listing is one
//! lookup however many pages it has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::CircleCiClient;
use crate::domain::ids::WorkflowId;
use crate::domain::upstream::{CallRecord, Failure, UpstreamError};
use crate::domain::workflow::{HoldJob, WorkflowInfo};

/// Spacing between two lookups: five a second at most in any second, with room for the
/// requests' own jitter on the way (four a second as scheduled).
const SPACING: Duration = Duration::from_millis(250);
/// Longest a lookup waits for its turn before it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
/// How long an answer about a workflow is kept: the "once a minute" of a workflow...
const KEEP: Duration = Duration::from_secs(60);
/// ...and of a workflow that exists (its pipeline and project do not change)...
const KEEP_FOUND: Duration = Duration::from_secs(3600);
/// ...and of a CircleCI error.
const KEEP_ERROR: Duration = Duration::from_secs(10);
/// Most workflows remembered; the oldest answers go first beyond this.
const MAX_ENTRIES: usize = 10_000;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    /// Too many lookups at once: ask again shortly.
    #[error("too many CircleCI lookups at once; retry shortly")]
    RateLimited,
    #[error("{0}")]
    Upstream(UpstreamError),
}

type Answer<T> = Result<Option<T>, UpstreamError>;

struct Kept<T> {
    answer: Answer<T>,
    at: Instant,
}

impl<T: Clone> Kept<T> {
    fn fresh(&self) -> Option<Answer<T>> {
        let keep = match &self.answer {
            Ok(Some(_)) => KEEP_FOUND,
            Ok(None) => KEEP,
            Err(_) => KEEP_ERROR,
        };
        (self.at.elapsed() < keep).then(|| self.answer.clone())
    }
}

/// One kind of lookup's memory: answers by key, and a lock per key so concurrent askers of
/// the same key wait for one lookup.
struct Memo<K, T> {
    kept: std::sync::Mutex<HashMap<K, Kept<T>>>,
    locks: std::sync::Mutex<HashMap<K, Arc<Mutex<()>>>>,
}

impl<K: std::hash::Hash + Eq + Clone, T: Clone> Memo<K, T> {
    fn new() -> Self {
        Self {
            kept: std::sync::Mutex::default(),
            locks: std::sync::Mutex::default(),
        }
    }

    fn get(&self, key: &K) -> Option<Answer<T>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(key).and_then(Kept::fresh)
    }

    fn put(&self, key: K, answer: Answer<T>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MAX_ENTRIES {
            kept.retain(|_, k| k.fresh().is_some());
            if kept.len() >= MAX_ENTRIES {
                let oldest = kept
                    .iter()
                    .min_by_key(|(_, k)| k.at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    kept.remove(&oldest);
                }
            }
        }
        kept.insert(
            key,
            Kept {
                answer,
                at: Instant::now(),
            },
        );
    }

    fn lock_of(&self, key: &K) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > MAX_ENTRIES {
            // Locks nobody holds or waits for.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(locks.entry(key.clone()).or_default())
    }
}

/// Told of every CircleCI call a lookup makes (the metrics count them with the others).
pub type CallObserver = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// The rate-limited, remembering lookups. Cheap to clone.
#[derive(Clone)]
pub struct WorkflowLookups {
    client: CircleCiClient,
    observe: CallObserver,
    next_slot: Arc<std::sync::Mutex<Instant>>,
    workflows: Arc<Memo<WorkflowId, WorkflowInfo>>,
    holds: Arc<Memo<(WorkflowId, String), HoldJob>>,
}

impl std::fmt::Debug for WorkflowLookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkflowLookups")
    }
}

impl WorkflowLookups {
    pub fn new(client: CircleCiClient, observe: CallObserver) -> Self {
        Self {
            client,
            observe,
            next_slot: Arc::new(std::sync::Mutex::new(Instant::now())),
            workflows: Arc::new(Memo::new()),
            holds: Arc::new(Memo::new()),
        }
    }

    /// Waits for this lookup's turn (at most [`MAX_WAIT`]).
    async fn turn(&self) -> Result<(), LookupError> {
        let slot = {
            let now = Instant::now();
            let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(now);
            if slot.duration_since(now) > MAX_WAIT {
                return Err(LookupError::RateLimited);
            }
            *next = slot + SPACING;
            slot
        };
        tokio::time::sleep_until(slot).await;
        Ok(())
    }

    /// `GET /workflow/{id}`: None when CircleCI does not know it (404).
    pub async fn workflow(&self, id: WorkflowId) -> Result<Option<WorkflowInfo>, LookupError> {
        if let Some(answer) = self.workflows.get(&id) {
            return answer.map_err(LookupError::Upstream);
        }
        let lock = self.workflows.lock_of(&id);
        let _one = lock.lock().await;
        if let Some(answer) = self.workflows.get(&id) {
            return answer.map_err(LookupError::Upstream);
        }
        self.turn().await?;
        let mut calls = Vec::with_capacity(1);
        let result = self.client.workflow_info(id, &mut calls).await;
        calls.iter().for_each(|c| (self.observe)(c));
        let answer = match result {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.failure == Failure::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        self.workflows.put(id, answer.clone());
        answer.map_err(LookupError::Upstream)
    }

    /// The workflow's approval job `hold_job_name` (its jobs, all pages): None when the
    /// workflow has no such job or CircleCI does not know the workflow.
    pub async fn hold_job(
        &self,
        id: WorkflowId,
        hold_job_name: &str,
    ) -> Result<Option<HoldJob>, LookupError> {
        let key = (id, hold_job_name.to_owned());
        if let Some(answer) = self.holds.get(&key) {
            return answer.map_err(LookupError::Upstream);
        }
        let lock = self.holds.lock_of(&key);
        let _one = lock.lock().await;
        if let Some(answer) = self.holds.get(&key) {
            return answer.map_err(LookupError::Upstream);
        }
        self.turn().await?;
        let mut calls = Vec::new();
        let result = self
            .client
            .workflow_view(id, hold_job_name, &mut calls)
            .await;
        calls.iter().for_each(|c| (self.observe)(c));
        let answer = match result {
            Ok(view) => Ok(view.hold),
            Err(e) if e.failure == Failure::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        self.holds.put(key, answer.clone());
        answer.map_err(LookupError::Upstream)
    }
}
