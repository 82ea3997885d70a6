-- Gates: a workflow's hold job waiting for a Sym run, registered from CircleCI right after
-- sym/request, so the reconciler can release it from Sym's run status when the hook's
-- delivery never arrives.
CREATE TABLE gates (
    workflow_id       TEXT PRIMARY KEY,
    sym_run_id        TEXT NOT NULL,
    hold_job_name     TEXT NOT NULL,
    status            TEXT NOT NULL,            -- open | released | closed | timed_out
    released_by       TEXT,                     -- hook | reconciler
    polling           BIGINT NOT NULL DEFAULT 1, -- 0 once polling stopped (refused token)
    polls             BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    next_poll_at      BIGINT NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    last_run_status   TEXT,
    detail            TEXT,
    closed_at         BIGINT
);
CREATE INDEX gates_due ON gates (next_poll_at) WHERE status = 'open' AND polling = 1;
CREATE INDEX gates_open ON gates (created_at) WHERE status = 'open';

-- Which path made a task: hook (Sym's delivery) or reconciler (Sym's run status). NULL on
-- tasks made before gates existed (all hook).
ALTER TABLE tasks ADD COLUMN origin TEXT;

-- One live approval per hold job: a second path (hook and reconciler racing, or a second
-- approve event) finds the first one's task instead of making another.
CREATE UNIQUE INDEX tasks_one_live_approve ON tasks (workflow_id, hold_job_name)
    WHERE action = 'approve' AND hold_job_name IS NOT NULL
    AND (status = 'pending' OR outcome = 'approved');
