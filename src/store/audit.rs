//! The audit trail, read side: who approved which workflow, when, and every CircleCI attempt
//! made for it; plus retention (pruning old records).
//!
//! An audit record is a delivery that asked something of us (`approve`, `deny`, `expire`),
//! with the task it created, if any (a deny with `ON_DENY=ignore` has none, and is still
//! recorded), or that bound a Sym run to its workflow (`request`, status `bound`). Duplicates
//! are folded into the original as a count.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::task::DeliveryStatus;

/// Event types that appear in the audit trail.
const AUDITED_EVENTS: &str = "('approve', 'deny', 'expire', 'request')";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Approver {
    pub username: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRef {
    pub id: Option<String>,
    pub number: Option<i64>,
    pub project_slug: Option<String>,
}

/// One entry of `GET /v1/approvals`.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalSummary {
    /// The delivery id (what the webhook answered with).
    pub id: String,
    pub event_type: String,
    pub sym_event_id: String,
    pub workflow_id: Option<String>,
    pub approver: Approver,
    pub received_at: String,
    /// `approve`, `cancel`, or null when the event asked nothing of CircleCI.
    pub action: Option<String>,
    /// `pending`, `succeeded`, `failed`; `attached` (another approval of a hold job whose
    /// approve task was live: see `attached_to`), `bound` (a request event that bound its Sym
    /// run to the workflow), or `ignored` (no task).
    pub status: String,
    /// For an `attached` approval: the delivery whose task it was attached to (the one that
    /// released the hold job, or is trying to).
    pub attached_to: Option<String>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub finished_at: Option<String>,
    #[serde(skip)]
    received_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    pub id: String,
    pub webhook_id: String,
    pub sym_event_id: String,
    pub event_type: String,
    pub received_at: String,
    pub approver: Approver,
    pub workflow_url: Option<String>,
    pub merging_user: Option<String>,
    pub run_srn: Option<String>,
    /// Later deliveries of the same event, answered as duplicates.
    pub duplicates: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptDetail {
    pub at: String,
    pub method: String,
    pub endpoint: String,
    pub status: Option<i64>,
    pub duration_ms: i64,
    pub error: Option<String>,
}

/// `GET /v1/approvals/{id}`: the whole story of one approval.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalDetail {
    pub id: String,
    pub workflow_id: Option<String>,
    pub delivery: DeliveryDetail,
    pub task_id: Option<String>,
    pub action: Option<String>,
    pub status: String,
    /// For an `attached` approval: the delivery whose task it was attached to.
    pub attached_to: Option<String>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub created_at: Option<String>,
    pub deadline_at: Option<String>,
    pub finished_at: Option<String>,
    pub hold_job: Option<JobRef>,
    /// The path that made the task: `hook` (Sym's delivery) or `reconciler` (a gate).
    pub path: Option<String>,
    /// The workflow's gate, when CircleCI registered one.
    pub gate: Option<super::GateView>,
    pub attempts: Vec<AttemptDetail>,
}

/// A page of summaries and the cursor of the next page.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub items: Vec<ApprovalSummary>,
    pub next_cursor: Option<String>,
}

/// Where a page starts: after this (received_at, id), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub received_ms: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}:{}", self.received_ms, self.id))
    }

    pub fn decode(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (ms, id) = raw.split_once(':')?;
        Uuid::try_parse(id).ok()?;
        Some(Self {
            received_ms: ms.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// RFC 3339 for a unix-millisecond time.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

const SUMMARY_COLUMNS: &str = "d.id, d.event_type, d.sym_event_id, d.workflow_id, \
    d.approver_username, d.approver_name, d.received_at, d.outcome AS delivery_outcome, \
    d.duplicate_of, t.action, t.status, t.outcome, t.detail, t.finished_at";

/// A delivery's status in the audit trail: its task's, else `attached` or `ignored`; and the
/// delivery an attached one is attached to.
fn status_of(row: &AnyRow) -> Result<(String, Option<String>), sqlx::Error> {
    let task_status: Option<String> = row.try_get("status")?;
    let delivery_outcome: String = row.try_get("delivery_outcome")?;
    let attached = delivery_outcome == DeliveryStatus::Attached.as_str();
    let status = match task_status {
        Some(status) => status,
        None if attached => DeliveryStatus::Attached.as_str().to_owned(),
        None if delivery_outcome == DeliveryStatus::Bound.as_str() => delivery_outcome.clone(),
        None => DeliveryStatus::Ignored.as_str().to_owned(),
    };
    let attached_to = if attached {
        row.try_get("duplicate_of")?
    } else {
        None
    };
    Ok((status, attached_to))
}

fn summary_from_row(row: &AnyRow) -> Result<ApprovalSummary, sqlx::Error> {
    let received_ms: i64 = row.try_get("received_at")?;
    let finished: Option<i64> = row.try_get("finished_at")?;
    let (status, attached_to) = status_of(row)?;
    Ok(ApprovalSummary {
        id: row.try_get("id")?,
        event_type: row.try_get("event_type")?,
        sym_event_id: row.try_get("sym_event_id")?,
        workflow_id: row.try_get("workflow_id")?,
        approver: Approver {
            username: row.try_get("approver_username")?,
            name: row.try_get("approver_name")?,
        },
        received_at: rfc3339(received_ms),
        action: row.try_get("action")?,
        status,
        attached_to,
        outcome: row.try_get("outcome")?,
        detail: row.try_get("detail")?,
        finished_at: finished.map(rfc3339),
        received_ms,
    })
}

impl Store {
    /// Newest first; `limit` items after `cursor`, optionally for one workflow.
    pub async fn audit_list(
        &self,
        workflow_id: Option<Uuid>,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        self.bounded(async {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM deliveries d \
                 LEFT JOIN tasks t ON t.delivery_id = d.id \
                 WHERE d.outcome <> 'duplicate' AND d.event_type IN {AUDITED_EVENTS} \
                 AND ($1 IS NULL OR d.workflow_id = $1) \
                 AND ($2 IS NULL OR d.received_at < $2 OR (d.received_at = $2 AND d.id < $3)) \
                 ORDER BY d.received_at DESC, d.id DESC LIMIT $4"
            );
            let rows = sqlx::query(&sql)
                .bind(workflow_id.map(|w| w.to_string()))
                .bind(cursor.map(|c| c.received_ms))
                .bind(cursor.map(|c| c.id.clone()).unwrap_or_default())
                .bind(i64::from(limit) + 1)
                .fetch_all(&mut *self.reader().await?)
                .await?;
            let mut items = rows
                .iter()
                .map(summary_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|last| {
                    Cursor {
                        received_ms: last.received_ms,
                        id: last.id.clone(),
                    }
                    .encode()
                })
            } else {
                None
            };
            Ok(Page { items, next_cursor })
        })
        .await
    }

    /// The whole story of one approval, by delivery id or task id.
    pub async fn audit_get(&self, id: &str) -> Result<Option<ApprovalDetail>, StoreError> {
        self.bounded(async {
        let row = sqlx::query(&format!(
            "SELECT d.id, d.webhook_id, d.sym_event_id, d.event_type, d.workflow_id, d.workflow_url, \
             d.merging_user, d.approver_username, d.approver_name, d.run_srn, d.received_at, \
             d.outcome AS delivery_outcome, d.duplicate_of, t.id AS task_id, t.action, t.status, t.outcome, t.detail, t.created_at, t.deadline_at, \
             t.finished_at, t.job_id, t.job_number, t.project_slug, t.origin, t.hold_job_name \
             FROM deliveries d LEFT JOIN tasks t ON t.delivery_id = d.id \
             WHERE d.outcome <> 'duplicate' AND d.event_type IN {AUDITED_EVENTS} \
             AND (d.id = $1 OR t.id = $1)"
        ))
        .bind(id)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let delivery_id: String = row.try_get("id")?;
        let sym_event_id: String = row.try_get("sym_event_id")?;
        let webhook_id: String = row.try_get("webhook_id")?;
        let task_id: Option<String> = row.try_get("task_id")?;
        let (status, attached_to) = status_of(&row)?;
        let created: Option<i64> = row.try_get("created_at")?;
        let deadline: Option<i64> = row.try_get("deadline_at")?;
        let finished: Option<i64> = row.try_get("finished_at")?;
        let job_id: Option<String> = row.try_get("job_id")?;
        let job_number: Option<i64> = row.try_get("job_number")?;
        let project_slug: Option<String> = row.try_get("project_slug")?;

        // Replays are counted on the original; rows of older versions still count too.
        let duplicates: i64 = sqlx::query_scalar(
            "SELECT (SELECT redeliveries FROM deliveries WHERE id = $1) + \
             (SELECT COUNT(*) FROM deliveries WHERE outcome = 'duplicate' AND duplicate_of = $1)",
        )
        .bind(&delivery_id)
        .fetch_one(&mut *self.reader().await?)
        .await?;
        let attempts = match &task_id {
            Some(task_id) => sqlx::query(
                "SELECT started_at, method, endpoint, status_code, duration_ms, error \
                 FROM attempts WHERE task_id = $1 ORDER BY started_at, id",
            )
            .bind(task_id)
            .fetch_all(&mut *self.reader().await?)
            .await?
            .iter()
            .map(|a| {
                Ok(AttemptDetail {
                    at: rfc3339(a.try_get("started_at")?),
                    method: a.try_get("method")?,
                    endpoint: a.try_get("endpoint")?,
                    status: a.try_get("status_code")?,
                    duration_ms: a.try_get("duration_ms")?,
                    error: a.try_get("error")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?,
            None => Vec::new(),
        };
        let workflow_id: Option<String> = row.try_get("workflow_id")?;
        let origin: Option<String> = row.try_get("origin")?;
        let path = task_id
            .as_ref()
            .map(|_| origin.unwrap_or_else(|| "hook".to_owned()));
        // The gate of this approval's hold job (the workflow's first gate when the delivery
        // made no task).
        let hold_job: Option<String> = row.try_get("hold_job_name")?;
        let gate = match &workflow_id {
            Some(workflow) => {
                let gates = self.gates_of_now(workflow).await?;
                let mine = hold_job
                    .as_deref()
                    .and_then(|h| gates.iter().position(|g| g.hold_job_name == h));
                mine.or((!gates.is_empty()).then_some(0))
                    .and_then(|i| gates.into_iter().nth(i))
            }
            None => None,
        };
        let hold_job = (job_id.is_some() || project_slug.is_some()).then_some(JobRef {
            id: job_id,
            number: job_number,
            project_slug,
        });
        Ok(Some(ApprovalDetail {
            id: delivery_id.clone(),
            workflow_id,
            delivery: DeliveryDetail {
                id: delivery_id,
                webhook_id,
                sym_event_id,
                event_type: row.try_get("event_type")?,
                received_at: rfc3339(row.try_get("received_at")?),
                approver: Approver {
                    username: row.try_get("approver_username")?,
                    name: row.try_get("approver_name")?,
                },
                workflow_url: row.try_get("workflow_url")?,
                merging_user: row.try_get("merging_user")?,
                run_srn: row.try_get("run_srn")?,
                duplicates,
            },
            task_id,
            action: row.try_get("action")?,
            status,
            attached_to,
            outcome: row.try_get("outcome")?,
            detail: row.try_get("detail")?,
            created_at: created.map(rfc3339),
            deadline_at: deadline.map(rfc3339),
            finished_at: finished.map(rfc3339),
            hold_job,
            path,
            gate,
            attempts,
        }))
    })
    .await
    }

    /// Deletes deliveries (with their tasks and attempts) received before `cutoff_ms`, except
    /// those whose task is still pending. Returns how many deliveries went.
    pub async fn prune(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.bounded(async {
        let mut writer = self.unsynced_writer().await?;
        // Attempts and tasks first, explicitly (no reliance on ON DELETE CASCADE being enabled),
        // all in one transaction so a failure never leaves a delivery without its task.
        let old = "SELECT d.id FROM deliveries d WHERE d.received_at < $1 AND NOT EXISTS \
                   (SELECT 1 FROM tasks p WHERE p.delivery_id = d.id AND p.status = 'pending')";
        // On SQLite's unsynced writer: a prune lost with the power is done again by the next.
        let mut tx = writer.begin().await?;
        sqlx::query(&format!(
            "DELETE FROM attempts WHERE task_id IN (SELECT id FROM tasks WHERE delivery_id IN ({old}))"
        ))
        .bind(cutoff_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("DELETE FROM tasks WHERE delivery_id IN ({old})"))
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(&format!("DELETE FROM deliveries WHERE id IN ({old})"))
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    })
    .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            received_ms: 1_795_348_800_123,
            id: Uuid::new_v4().to_string(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not-a-cursor"), None);
        assert_eq!(Cursor::decode(""), None);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_348_800_500), "2026-11-22T12:00:00.5Z");
    }
}
