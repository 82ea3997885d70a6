//! The `attempts` table: every HTTP exchange with CircleCI made for a task.

use super::{Store, StoreError};
use crate::clock::{duration_ms, to_ms};
use crate::domain::ids::TaskId;
use crate::outbound::circleci::{CallRecord, Operation};

/// A call noted before it was made ([`Store::begin_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptId(i64);

impl Store {
    /// Appends CircleCI exchanges to a task's audit trail (all or none, so a retry after a
    /// failure does not record a call twice).
    pub async fn record_attempts(
        &self,
        task: TaskId,
        calls: &[CallRecord],
    ) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            for call in calls {
                sqlx::query(
                    "INSERT INTO attempts (task_id, started_at, operation, method, endpoint, \
                     status_code, duration_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(task.to_string())
                .bind(to_ms(call.started_at))
                .bind(call.operation.as_str())
                .bind(call.method)
                .bind(&call.endpoint)
                .bind(call.status.map(i64::from))
                .bind(duration_ms(call.duration))
                .bind(call.error.as_deref())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Durably notes a call about to be made (no status yet), so that if the process dies
    /// before the answer is stored, the audit trail still shows the call may have landed.
    pub async fn begin_attempt(
        &self,
        task: TaskId,
        operation: Operation,
        method: &str,
        endpoint: &str,
    ) -> Result<AttemptId, StoreError> {
        let started_at = self.clock.now_ms();
        self.bounded(async {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO attempts (task_id, started_at, operation, method, endpoint, \
                 status_code, duration_ms, error) \
                 VALUES ($1, $2, $3, $4, $5, NULL, 0, $6) RETURNING id",
            )
            .bind(task.to_string())
            .bind(started_at)
            .bind(operation.as_str())
            .bind(method)
            .bind(endpoint)
            .bind("no answer recorded (the call was in flight)")
            .fetch_one(&self.pool)
            .await?;
            Ok(AttemptId(id))
        })
        .await
    }

    /// Fills in the answer of a call noted by [`Self::begin_attempt`].
    pub async fn complete_attempt(
        &self,
        attempt: AttemptId,
        call: &CallRecord,
    ) -> Result<(), StoreError> {
        self.bounded(async {
            sqlx::query(
                "UPDATE attempts SET status_code = $2, duration_ms = $3, error = $4 WHERE id = $1",
            )
            .bind(attempt.0)
            .bind(call.status.map(i64::from))
            .bind(duration_ms(call.duration))
            .bind(call.error.as_deref())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Did an earlier approve call for this task possibly take effect? Yes for a 2xx whose
    /// result was not stored in time, for no answer (in flight when the process died, timed
    /// out, connection dropped) and for a 5xx (CircleCI may have approved before failing to
    /// answer). A definite 4xx means it did not.
    pub async fn approve_may_have_landed(&self, task: TaskId) -> Result<bool, StoreError> {
        self.bounded(async {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM attempts WHERE task_id = $1 AND operation = $2 \
                 AND (status_code IS NULL OR status_code < 400 OR status_code >= 500)",
            )
            .bind(task.to_string())
            .bind(Operation::Approve.as_str())
            .fetch_one(&self.pool)
            .await?;
            Ok(n > 0)
        })
        .await
    }
}
