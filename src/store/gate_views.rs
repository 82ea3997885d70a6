//! Reads of the gates for the audit trail and the metrics.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Store, StoreError};
use crate::domain::gate::GateProblem;

/// A gate as the audit trail shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GateView {
    pub workflow_id: String,
    pub sym_run_id: String,
    pub hold_job_name: String,
    pub status: String,
    /// `hook` or `reconciler`, once released.
    pub released_by: Option<String>,
    pub polling: bool,
    pub polls: i64,
    pub last_run_status: Option<String>,
    pub detail: Option<String>,
    /// What is wrong with it: `unbound`, `run_bound_elsewhere`, `sym_forbidden`,
    /// `sym_not_found`, `sym_refused`; null when nothing is.
    pub problem: Option<String>,
    /// Whether Sym signed that the run was requested for this gate's workflow and hold job.
    pub bound: bool,
    pub created_at: String,
    pub closed_at: Option<String>,
}

const GATE_COLUMNS: &str = "g.workflow_id, g.sym_run_id, g.hold_job_name, g.status, \
    g.released_by, g.polling, g.polls, g.last_run_status, g.detail, g.problem, g.created_at, \
    g.closed_at, CASE WHEN r.workflow_id = g.workflow_id AND r.hold_job_name = g.hold_job_name \
    THEN 1 ELSE 0 END AS bound";

impl Store {
    /// Open gates and the creation time of the oldest, for metrics.
    pub async fn open_gates_summary(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM gates WHERE status = 'open'",
            )
            .fetch_one(&mut *self.reader().await?)
            .await?;
            Ok((row.try_get("n")?, row.try_get("oldest")?))
        })
        .await
    }

    /// Open gates with a problem, by problem, for metrics (every problem present, 0 or more).
    pub async fn gate_problems(&self) -> Result<Vec<(GateProblem, i64)>, StoreError> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT problem, COUNT(*) AS n FROM gates \
                 WHERE status = 'open' AND problem IS NOT NULL GROUP BY problem",
            )
            .fetch_all(&mut *self.reader().await?)
            .await?;
            let mut counts: Vec<(GateProblem, i64)> =
                GateProblem::ALL.iter().map(|p| (*p, 0)).collect();
            for row in rows {
                let problem: String = row.try_get("problem")?;
                if let Some(p) = GateProblem::parse(&problem) {
                    if let Some(slot) = counts.iter_mut().find(|(q, _)| *q == p) {
                        slot.1 = row.try_get("n")?;
                    }
                }
            }
            Ok(counts)
        })
        .await
    }

    /// A workflow's gates, for the audit trail (oldest first).
    pub async fn gates_of(&self, workflow: &str) -> Result<Vec<GateView>, StoreError> {
        self.bounded(self.gates_of_now(workflow)).await
    }

    /// [`Self::gates_of`] inside an operation that is already time-limited.
    pub(super) async fn gates_of_now(&self, workflow: &str) -> Result<Vec<GateView>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {GATE_COLUMNS} FROM gates g LEFT JOIN sym_runs r ON r.run_key = g.run_key \
             WHERE g.workflow_id = $1 ORDER BY g.created_at, g.hold_job_name"
        ))
        .bind(workflow)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter().map(view_from_row).collect()
    }
}

fn view_from_row(row: &AnyRow) -> Result<GateView, StoreError> {
    let polling: i64 = row.try_get("polling")?;
    let closed: Option<i64> = row.try_get("closed_at")?;
    let bound: i64 = row.try_get("bound")?;
    Ok(GateView {
        workflow_id: row.try_get("workflow_id")?,
        sym_run_id: row.try_get("sym_run_id")?,
        hold_job_name: row.try_get("hold_job_name")?,
        status: row.try_get("status")?,
        released_by: row.try_get("released_by")?,
        polling: polling == 1,
        polls: row.try_get("polls")?,
        last_run_status: row.try_get("last_run_status")?,
        detail: row.try_get("detail")?,
        problem: row.try_get("problem")?,
        bound: bound == 1,
        created_at: super::audit::rfc3339(row.try_get("created_at")?),
        closed_at: closed.map(super::audit::rfc3339),
    })
}
