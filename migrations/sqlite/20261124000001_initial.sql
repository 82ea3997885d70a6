-- Every verified delivery: queued, ignored, or a duplicate of an earlier one.
CREATE TABLE deliveries (
    id                TEXT PRIMARY KEY,
    webhook_id        TEXT NOT NULL,
    sym_event_id      TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    workflow_id       TEXT,
    workflow_url      TEXT,
    merging_user      TEXT,
    approver_username TEXT,
    approver_name     TEXT,
    run_srn           TEXT,
    received_at       BIGINT NOT NULL,          -- unix milliseconds
    outcome           TEXT NOT NULL,            -- queued | ignored | duplicate
    duplicate_of      TEXT
);
-- Global deduplication lives in the database: one original per Sym id and per webhook-id.
CREATE UNIQUE INDEX deliveries_sym_event_id_original ON deliveries (sym_event_id) WHERE outcome <> 'duplicate';
CREATE UNIQUE INDEX deliveries_webhook_id_original ON deliveries (webhook_id) WHERE outcome <> 'duplicate';
CREATE INDEX deliveries_received_at ON deliveries (received_at);

-- Work to do at CircleCI for a delivery: approve the hold job, or cancel the workflow.
CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    delivery_id       TEXT NOT NULL UNIQUE REFERENCES deliveries (id) ON DELETE CASCADE,
    action            TEXT NOT NULL,            -- approve | cancel
    workflow_id       TEXT NOT NULL,
    status            TEXT NOT NULL,            -- pending | succeeded | failed
    outcome           TEXT,                     -- approved | already_approved | canceled | timed_out | ...
    detail            TEXT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    deadline_at       BIGINT NOT NULL,
    next_attempt_at   BIGINT NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    job_id            TEXT,
    job_number        BIGINT,
    project_slug      TEXT,
    finished_at       BIGINT
);
CREATE INDEX tasks_due ON tasks (status, next_attempt_at);
CREATE INDEX tasks_workflow ON tasks (workflow_id, created_at);
CREATE INDEX tasks_created ON tasks (created_at, id);

-- Every HTTP exchange with CircleCI made for a task.
CREATE TABLE attempts (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id           TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    started_at        BIGINT NOT NULL,
    method            TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    status_code       BIGINT,
    duration_ms       BIGINT NOT NULL,
    error             TEXT
);
CREATE INDEX attempts_task ON attempts (task_id, id);
