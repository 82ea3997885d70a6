-- Claiming a task stays cheap with a backlog (thousands of pending tasks, e.g. after a long
-- CircleCI outage): due tasks are walked in claim order and the walk stops at the first free
-- one, and "is another task of this workflow leased right now?" looks only at leased tasks.
CREATE INDEX tasks_pending_due ON tasks (next_attempt_at, created_at) WHERE status = 'pending';
CREATE INDEX tasks_leased_workflow ON tasks (workflow_id, lease_expires_at)
    WHERE status = 'pending' AND lease_expires_at IS NOT NULL;
