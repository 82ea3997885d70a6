//! The `attempts` table: every HTTP exchange with CircleCI made for a task.

use std::time::Duration;

use sqlx::Row as _;

use super::{Store, StoreError};
use crate::clock::duration_ms;
use crate::domain::ids::{LeaseToken, TaskId};
use crate::domain::upstream::{CallRecord, Operation};

/// A call noted before it was made ([`Store::begin_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptId(i64);

/// A call that changes something at CircleCI, about to be made.
#[derive(Debug, Clone, Copy)]
pub(super) struct PlannedCall<'a> {
    pub operation: Operation,
    pub method: &'a str,
    pub endpoint: &'a str,
}

/// The start of every insert into `attempts`; [`bind_call`] binds one row of it.
const INSERT_ATTEMPTS: &str = "INSERT INTO attempts (task_id, started_at, operation, method, \
                               endpoint, status_code, duration_ms, error) VALUES";

type AttemptsInsert<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the 8 values of one row of [`INSERT_ATTEMPTS`]: `call`, made for `task`.
fn bind_call<'q>(
    insert: AttemptsInsert<'q>,
    task: TaskId,
    call: &'q CallRecord,
) -> AttemptsInsert<'q> {
    insert
        .bind(task)
        .bind(call.started_at)
        .bind(call.operation.as_str())
        .bind(call.method)
        .bind(&call.endpoint)
        .bind(call.status.map(i64::from))
        .bind(duration_ms(call.duration))
        .bind(call.error.as_deref())
}

/// Records `calls` of `task`: one statement for all of them (each statement on SQLite is a
/// round trip to the connection's thread).
pub(super) async fn insert_calls(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    task: TaskId,
    calls: &[CallRecord],
    mark: char,
) -> Result<(), sqlx::Error> {
    let rows: Vec<(TaskId, &CallRecord)> = calls.iter().map(|c| (task, c)).collect();
    insert_rows(tx, &rows, None, mark).await?;
    Ok(())
}

/// What a noted call carries until its answer is stored: no answer yet, so the audit trail
/// shows it may have landed if none is ever stored. No call made carries it.
const IN_FLIGHT: &str = "no answer recorded (the call was in flight)";

/// Records `reads` of `task` and notes `call` about to be made, in one statement; returns the
/// note's id. The note is the one row with no answer and [`IN_FLIGHT`]'s text (a read that
/// got no answer has its own error), so it is found whatever order the rows come back in.
async fn insert_reads_and_planned(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    task: TaskId,
    at: i64,
    reads: &[CallRecord],
    call: &PlannedCall<'_>,
    mark: char,
) -> Result<AttemptId, StoreError> {
    // Far more reads than one step makes go in statements of their own first.
    let (earlier, last) = reads.split_at(reads.len().saturating_sub(READS_WITH_NOTE));
    if !earlier.is_empty() {
        insert_calls(tx, task, earlier, mark).await?;
    }
    let sql = format!(
        "{INSERT_ATTEMPTS} {} RETURNING id, status_code, error",
        super::value_rows(mark, 1, last.len() + 1, 8)
    );
    let mut insert = sqlx::query(&sql).persistent(last.len() <= 2);
    for read in last {
        insert = bind_call(insert, task, read);
    }
    let rows = insert
        .bind(task)
        .bind(at)
        .bind(call.operation.as_str())
        .bind(call.method)
        .bind(call.endpoint)
        .bind(None::<i64>)
        .bind(0_i64)
        .bind(IN_FLIGHT)
        .fetch_all(&mut **tx)
        .await?;
    let mut noted = Vec::with_capacity(1);
    for row in &rows {
        let status: Option<i64> = row.try_get("status_code")?;
        let error: Option<String> = row.try_get("error")?;
        if status.is_none() && error.as_deref() == Some(IN_FLIGHT) {
            noted.push(AttemptId(row.try_get("id")?));
        }
    }
    match noted[..] {
        [id] => Ok(id),
        _ => Err(StoreError::Invalid(format!(
            "{} rows came back as the noted call, not one",
            noted.len()
        ))),
    }
}

/// Most reads that share the note's statement (8 parameters a row).
const READS_WITH_NOTE: usize = 99;

/// Notes a call about to be made: no answer yet, so the audit trail shows it may have landed
/// if the answer is never stored.
async fn insert_planned<'e, E>(
    executor: E,
    task: TaskId,
    at: i64,
    call: &PlannedCall<'_>,
) -> Result<AttemptId, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO attempts (task_id, started_at, operation, method, endpoint, \
         status_code, duration_ms, error) \
         VALUES ($1, $2, $3, $4, $5, NULL, 0, $6) RETURNING id",
    )
    .bind(task)
    .bind(at)
    .bind(call.operation.as_str())
    .bind(call.method)
    .bind(call.endpoint)
    .bind(IN_FLIGHT)
    .fetch_one(executor)
    .await?;
    Ok(AttemptId(id))
}

pub(super) async fn complete_call(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    attempt: AttemptId,
    call: &CallRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE attempts SET status_code = $2, duration_ms = $3, error = $4 WHERE id = $1")
        .bind(attempt.0)
        .bind(call.status.map(i64::from))
        .bind(duration_ms(call.duration))
        .bind(call.error.as_deref())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A call the intake noted for a task it handed to the local worker ([`note_handed`]).
#[derive(Debug, Clone)]
pub(super) struct HandedNote {
    pub task: TaskId,
    pub operation: Operation,
    /// The call's path as far as the intake knows it (an approve's hold job is not read yet).
    pub endpoint: String,
}

/// Notes, in the intake's transaction, the call each handed task's first step may make, so
/// that step makes it without a commit of its own first (docs/writes.md, "The intake's
/// note"). One statement for all of them; returns each note's id, in the order of `notes`.
pub(super) async fn note_handed(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    notes: &[HandedNote],
    now: i64,
    mark: char,
) -> Result<Vec<AttemptId>, StoreError> {
    if notes.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "{INSERT_ATTEMPTS} {} RETURNING id, task_id",
        super::value_rows(mark, 1, notes.len(), 8)
    );
    let mut insert = sqlx::query(&sql).persistent(notes.len() <= 2);
    for note in notes {
        insert = insert
            .bind(note.task)
            .bind(now)
            .bind(note.operation.as_str())
            .bind("POST")
            .bind(&note.endpoint)
            .bind(None::<i64>)
            .bind(0_i64)
            .bind(IN_FLIGHT);
    }
    let rows = insert.fetch_all(&mut **tx).await?;
    let mut ids = Vec::with_capacity(notes.len());
    for note in notes {
        let mut found = None;
        for row in &rows {
            if row.try_get::<TaskId, _>("task_id")? == note.task {
                found = Some(AttemptId(row.try_get("id")?));
            }
        }
        ids.push(found.ok_or_else(|| {
            StoreError::Invalid(format!("no note came back for task {}", note.task))
        })?);
    }
    Ok(ids)
}

/// Takes back notes no call was made under (an intake's note whose step made no call, a
/// fresh note whose call was never sent), or that a call's record replaces; returns the ids
/// it removed. Only rows still without an answer: an answered call is never removed from the
/// audit trail. No lease guard: no other process makes a call under these notes.
pub(super) async fn withdraw_notes(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    notes: &[AttemptId],
    mark: char,
) -> Result<Vec<AttemptId>, sqlx::Error> {
    if notes.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "DELETE FROM attempts WHERE status_code IS NULL AND id IN ({}) RETURNING id",
        super::placeholders(mark, 1, notes.len())
    );
    let mut delete = sqlx::query(&sql).persistent(notes.len() == 1);
    for note in notes {
        delete = delete.bind(note.0);
    }
    delete
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| row.try_get("id").map(AttemptId))
        .collect()
}

/// Takes back every note of `task` still without an answer: for a handed task whose step
/// never started its call ([`super::Store::release_unstarted`]), whose notes are all its
/// own (the intake's, and a fresh one after slow reads).
pub(super) async fn withdraw_task_notes(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    task: TaskId,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM attempts WHERE task_id = $1 AND status_code IS NULL AND error = $2")
        .bind(task)
        .bind(IN_FLIGHT)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The records of calls made under intake notes, each in its note's place: stored only where
/// the note was still there to take back, so a result written twice stores a call once.
pub(super) async fn replace_notes(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    replacing: &[(TaskId, AttemptId, &CallRecord)],
    mark: char,
) -> Result<(), sqlx::Error> {
    if replacing.is_empty() {
        return Ok(());
    }
    let notes: Vec<AttemptId> = replacing.iter().map(|(_, note, _)| *note).collect();
    let removed = withdraw_notes(tx, &notes, mark).await?;
    let rows: Vec<(TaskId, &CallRecord)> = replacing
        .iter()
        .filter(|(_, note, _)| removed.contains(note))
        .map(|(task, _, call)| (*task, *call))
        .collect();
    insert_rows(tx, &rows, None, mark).await?;
    Ok(())
}

/// A call about to be made, with what must be stored before it ([`Store::prepare_call`]),
/// owned so that it can wait for a shared commit ([`super::StepWrites`]).
#[derive(Debug, Clone)]
pub struct CallNote {
    pub task: TaskId,
    pub lease: LeaseToken,
    /// How long the renewed lease runs.
    pub lease_for: Duration,
    /// The step's reads not stored yet.
    pub reads: Vec<CallRecord>,
    pub operation: Operation,
    pub method: &'static str,
    pub endpoint: String,
}

/// One note inside a transaction: renew the lease, append the reads, note the call. None when
/// the lease was lost: then nothing is written (the renewal is the first statement and
/// changed no row).
pub(super) async fn note_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    note: &CallNote,
    now: i64,
    mark: char,
) -> Result<Option<AttemptId>, StoreError> {
    let renewed = sqlx::query(
        "UPDATE tasks SET lease_expires_at = $3, call_in_flight = 1 \
         WHERE id = $1 AND lease_owner = $2 AND status = 'pending' \
         AND lease_expires_at > $4",
    )
    .bind(note.task)
    .bind(note.lease.as_str())
    .bind(now.saturating_add(duration_ms(note.lease_for)))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if renewed.rows_affected() != 1 {
        return Ok(None);
    }
    let call = PlannedCall {
        operation: note.operation,
        method: note.method,
        endpoint: &note.endpoint,
    };
    // The reads and the note in one statement (each statement on SQLite is a round trip to
    // the connection's thread), the reads first, so the audit trail stays in the order
    // things happened.
    let id = insert_reads_and_planned(tx, note.task, now, &note.reads, &call, mark).await?;
    Ok(Some(id))
}

/// Stores the answers of noted calls, set-based (SQLite): one statement for all of them.
pub(super) async fn complete_all(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    answers: &[(AttemptId, &CallRecord)],
) -> Result<(), sqlx::Error> {
    if answers.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE attempts SET status_code = v.column2, duration_ms = v.column3, \
         error = v.column4 FROM (VALUES {}) AS v WHERE attempts.id = v.column1",
        super::value_rows('?', 1, answers.len(), 4)
    );
    let mut update = sqlx::query(&sql).persistent(answers.len() <= 2);
    for (attempt, call) in answers {
        update = update
            .bind(attempt.0)
            .bind(call.status.map(i64::from))
            .bind(duration_ms(call.duration))
            .bind(call.error.as_deref());
    }
    update.execute(&mut **tx).await?;
    Ok(())
}

/// Rows of one set-based insert into `attempts` at most (8 parameters a row).
const ROWS_PER_INSERT: usize = 100;

/// Inserts `rows` (each a call and its task) in statements of [`ROWS_PER_INSERT`] rows, in
/// order (ids follow it, so the audit trail keeps the order things happened); with
/// `returning`, what each statement gave back.
pub(super) async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[(TaskId, &CallRecord)],
    returning: Option<&str>,
    mark: char,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let mut returned = Vec::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "{INSERT_ATTEMPTS} {}{}",
            super::value_rows(mark, 1, chunk.len(), 8),
            returning
                .map(|r| format!(" RETURNING {r}"))
                .unwrap_or_default()
        );
        let mut insert = sqlx::query(&sql).persistent(chunk.len() <= 2);
        for (task, call) in chunk {
            insert = bind_call(insert, *task, call);
        }
        if returning.is_some() {
            returned.extend(insert.fetch_all(&mut **tx).await?);
        } else {
            insert.execute(&mut **tx).await?;
        }
    }
    Ok(returned)
}

/// The notes of a SQLite batch, set-based: every lease renewed in ONE statement (each
/// guarded as in [`note_one`]), then, for the renewed ones only, their reads and notes in
/// one multi-row insert. One answer per note, in order: None when its lease was lost, and
/// then nothing of it is written.
pub(super) async fn note_all(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    notes: &[&CallNote],
    now: i64,
) -> Result<Vec<Option<AttemptId>>, StoreError> {
    if notes.is_empty() {
        return Ok(Vec::new());
    }
    let mark = '?';
    let sql = format!(
        "UPDATE tasks SET lease_expires_at = v.column3, call_in_flight = 1 \
         FROM (VALUES {}) AS v \
         WHERE tasks.id = v.column1 AND tasks.lease_owner = v.column2 \
         AND tasks.status = 'pending' AND tasks.lease_expires_at > {} \
         RETURNING tasks.id",
        super::value_rows(mark, 1, notes.len(), 3),
        super::param(mark, notes.len() * 3 + 1)
    );
    let mut renew = sqlx::query(&sql).persistent(notes.len() <= 2);
    for note in notes {
        renew = renew
            .bind(note.task)
            .bind(note.lease.as_str())
            .bind(now.saturating_add(duration_ms(note.lease_for)));
    }
    let renewed: Vec<TaskId> = renew
        .bind(now)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    let held: Vec<&CallNote> = notes
        .iter()
        .copied()
        .filter(|n| renewed.contains(&n.task))
        .collect();
    let planned: Vec<CallRecord> = held
        .iter()
        .map(|n| CallRecord {
            started_at: now,
            operation: n.operation,
            method: n.method,
            endpoint: n.endpoint.clone(),
            status: None,
            duration: Duration::ZERO,
            error: Some(IN_FLIGHT.to_owned()),
        })
        .collect();
    let mut rows = Vec::new();
    for (note, call) in held.iter().zip(&planned) {
        rows.extend(note.reads.iter().map(|r| (note.task, r)));
        rows.push((note.task, call));
    }
    let returned = insert_rows(tx, &rows, Some("id, task_id, status_code, error"), mark).await?;
    let mut ids: Vec<(TaskId, AttemptId)> = Vec::with_capacity(held.len());
    for row in &returned {
        let status: Option<i64> = row.try_get("status_code")?;
        let error: Option<String> = row.try_get("error")?;
        if status.is_none() && error.as_deref() == Some(IN_FLIGHT) {
            ids.push((row.try_get("task_id")?, AttemptId(row.try_get("id")?)));
        }
    }
    notes
        .iter()
        .map(|note| {
            if !renewed.contains(&note.task) {
                return Ok(None);
            }
            let mut mine = ids.iter().filter(|(task, _)| *task == note.task);
            match (mine.next(), mine.count()) {
                (Some((_, id)), 0) => Ok(Some(*id)),
                (first, more) => Err(StoreError::Invalid(format!(
                    "{} rows came back as the noted call of one task, not one",
                    usize::from(first.is_some()) + more
                ))),
            }
        })
        .collect()
}

impl Store {
    /// Before a call that changes something at CircleCI, in ONE transaction (one commit):
    /// renew the lease, append the step's reads so far, and note the call (no answer yet), so
    /// that even if this process dies before the answer is stored, the audit trail shows the
    /// call may have landed. None when the lease was lost: nothing is written, no call made.
    /// The worker notes through [`super::StepWrites`], which shares commits on SQLite.
    pub async fn prepare_call(&self, note: &CallNote) -> Result<Option<AttemptId>, StoreError> {
        let now = self.clock.now_ms();
        self.bounded(async {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin().await?;
            let id = note_one(&mut tx, note, now, self.backend.param_mark()).await?;
            tx.commit().await?;
            Ok(id)
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
            let mut writer = self.writer().await?;
            let planned = PlannedCall {
                operation,
                method,
                endpoint,
            };
            Ok(insert_planned(&mut *writer, task, started_at, &planned).await?)
        })
        .await
    }

    /// Takes back notes a step made no call under, outside a step's result (a step that lost
    /// its lease stores no result). See [`withdraw_notes`].
    pub async fn withdraw_unused_notes(&self, notes: &[AttemptId]) -> Result<(), StoreError> {
        if notes.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin().await?;
            withdraw_notes(&mut tx, notes, self.backend.param_mark()).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Did an earlier `operation` call (approve or cancel) for this task possibly take
    /// effect? Yes for a 2xx whose result was not stored in time, for no answer (in flight when
    /// the process died, timed out, connection dropped) and for a 5xx (CircleCI may have acted
    /// before failing to answer). A definite 4xx means it did not.
    ///
    /// `besides`: notes the asking step holds and has made no call under (the intake's note
    /// of a handed task, [`note_handed`], or its own fresh note); they are no earlier call.
    pub async fn call_may_have_landed(
        &self,
        task: TaskId,
        operation: Operation,
        besides: &[AttemptId],
    ) -> Result<bool, StoreError> {
        let mark = self.backend.param_mark();
        // The ids after the task and the operation (each parameter once, in order).
        let not_these = if besides.is_empty() {
            String::new()
        } else {
            format!(
                " AND id NOT IN ({})",
                super::placeholders(mark, 3, besides.len())
            )
        };
        let sql = format!(
            "SELECT COUNT(*) FROM attempts WHERE task_id = {} AND operation = {} \
             AND (status_code IS NULL OR status_code < 400 OR status_code >= 500){not_these}",
            super::param(mark, 1),
            super::param(mark, 2),
        );
        self.bounded(async {
            let mut count = sqlx::query_scalar(&sql)
                .persistent(besides.len() <= 1)
                .bind(task)
                .bind(operation.as_str());
            for note in besides {
                count = count.bind(note.0);
            }
            let n: i64 = count.fetch_one(&mut *self.reader().await?).await?;
            Ok(n > 0)
        })
        .await
    }
}
