-- Fewer indexes for each task to write (docs/writes.md, "Indexes").
--
-- Three indexes led with workflow_id: tasks_workflow (every task), tasks_leased_workflow
-- (pending and leased) and tasks_one_live_approve (the one-live-approval rule). They become
-- one unique index on (workflow_id, hold_job_name, live slot), where the live slot is '' for
-- an approve task that is pending or approved, and the task's own id otherwise. So:
--   * two approve tasks of one hold job can be live (or approved) at once no more than before:
--     both would have the slot '' under the same key; a NULL hold_job_name is never equal, as
--     in the partial index it replaces;
--   * a finished, cancel or failed task has a slot of its own and never conflicts;
--   * every query by workflow (the claim's one-lease-per-workflow check, the verdict's
--     approvals of a workflow, attaching an approval to the live task) reads its prefix.
-- tasks_due (status, next_attempt_at) and tasks_created (created_at, id): the pending queries
-- use tasks_pending_due, and nothing reads tasks by creation time alone.
DROP INDEX tasks_one_live_approve;
DROP INDEX tasks_leased_workflow;
DROP INDEX tasks_workflow;
DROP INDEX tasks_due;
DROP INDEX tasks_created;
CREATE UNIQUE INDEX tasks_by_workflow ON tasks (
    workflow_id,
    hold_job_name,
    (CASE WHEN action = 'approve' AND (status = 'pending' OR outcome = 'approved')
          THEN '' ELSE id END)
);
