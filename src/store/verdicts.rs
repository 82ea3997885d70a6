//! Reads behind the deploy job's verdict: a workflow's approve tasks, and the approved task
//! of an earlier run of the same pipeline and workflow.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::rfc3339;
use super::tasks::{parse_outcome, parse_status};
use super::{Store, StoreError};
use crate::domain::ids::WorkflowId;
use crate::domain::task::{Outcome, TaskAction, TaskStatus};
use crate::domain::verdict::ApprovalRecord;

const COLUMNS: &str = "t.workflow_id, t.status, t.outcome, t.detail, t.hold_job_name, t.job_id, \
    COALESCE(d.approver_username, d.approver_name) AS approver, d.sym_event_id, d.received_at, \
    t.finished_at";

/// `hold_job` filters to tasks of that hold job; tasks that name none are the default's.
const HOLD_FILTER: &str = "($2 IS NULL OR COALESCE(t.hold_job_name, $3) = $2)";

impl Store {
    /// The approve tasks of a workflow, newest first.
    pub async fn approvals_of_workflow(
        &self,
        workflow: WorkflowId,
        hold_job: Option<&str>,
        default_hold_job: &str,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.bounded(async {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM tasks t JOIN deliveries d ON d.id = t.delivery_id \
                 WHERE t.workflow_id = $1 AND {HOLD_FILTER} AND t.action = $4 \
                 ORDER BY d.received_at DESC, t.id DESC LIMIT 100"
            ))
            .bind(workflow)
            .bind(hold_job)
            .bind(default_hold_job)
            .bind(TaskAction::Approve.as_str())
            .fetch_all(&mut *self.reader().await?)
            .await?;
            rows.iter().map(record_from_row).collect()
        })
        .await
    }

    /// The newest task that approved a workflow of `pipeline_id` named `workflow_name`.
    pub async fn approved_in_pipeline(
        &self,
        pipeline_id: &str,
        workflow_name: &str,
        hold_job: Option<&str>,
        default_hold_job: &str,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        self.bounded(async {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM tasks t JOIN deliveries d ON d.id = t.delivery_id \
                 WHERE t.pipeline_id = $1 AND t.workflow_name = $4 AND {HOLD_FILTER} \
                 AND t.status = $5 AND t.outcome = $6 \
                 ORDER BY t.finished_at DESC LIMIT 1"
            ))
            .bind(pipeline_id)
            .bind(hold_job)
            .bind(default_hold_job)
            .bind(workflow_name)
            .bind(TaskStatus::Succeeded.as_str())
            .bind(Outcome::Approved.as_str())
            .fetch_optional(&mut *self.reader().await?)
            .await?;
            row.as_ref().map(record_from_row).transpose()
        })
        .await
    }
}

fn record_from_row(row: &AnyRow) -> Result<ApprovalRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let outcome: Option<String> = row.try_get("outcome")?;
    let finished: Option<i64> = row.try_get("finished_at")?;
    Ok(ApprovalRecord {
        workflow_id: row.try_get("workflow_id")?,
        status: parse_status(&status)?,
        outcome: outcome.as_deref().map(parse_outcome).transpose()?,
        detail: row.try_get("detail")?,
        hold_job_name: row.try_get("hold_job_name")?,
        job_id: row.try_get("job_id")?,
        approver: row.try_get("approver")?,
        sym_event_id: row.try_get("sym_event_id")?,
        received_at: rfc3339(row.try_get("received_at")?),
        finished_at: finished.map(rfc3339),
    })
}
