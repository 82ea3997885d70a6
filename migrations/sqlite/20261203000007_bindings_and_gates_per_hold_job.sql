-- Sym runs bound to the workflow and hold job they were requested for, from data Sym signed:
-- the flow's `request` event (or an approve/deny/expire event of the run), or Sym's own answer
-- for the run when it carries the request's fields. The gate reconciler releases a gate only
-- when its run is bound to that very workflow and hold job. run_key is the run id lowercased
-- (Sym's SDK lowercases SRN components).
CREATE TABLE sym_runs (
    run_key           TEXT PRIMARY KEY,
    workflow_id       TEXT NOT NULL,
    hold_job_name     TEXT NOT NULL,
    source            TEXT NOT NULL,            -- request | approve | deny | expire | sym_api
    delivery_id       TEXT,
    bound_at          BIGINT NOT NULL
);

-- Gates, one per workflow and hold job (a staging and a production gate in one workflow), a
-- Sym run belonging to one gate at most.
CREATE TABLE gates_per_hold_job (
    workflow_id       TEXT NOT NULL,
    hold_job_name     TEXT NOT NULL,
    sym_run_id        TEXT NOT NULL,
    run_key           TEXT NOT NULL,
    status            TEXT NOT NULL,            -- open | released | closed | timed_out
    released_by       TEXT,                     -- hook | reconciler
    polling           BIGINT NOT NULL DEFAULT 1,
    polls             BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    next_poll_at      BIGINT NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    last_run_status   TEXT,
    detail            TEXT,
    closed_at         BIGINT,
    -- What is wrong with it, visibly: unbound | run_bound_elsewhere | sym_forbidden |
    -- sym_not_found | sym_refused; NULL when nothing is.
    problem           TEXT,
    -- The workflow's pipeline and project, when the registration was proven by an OIDC token.
    pipeline_id       TEXT,
    project_slug      TEXT,
    PRIMARY KEY (workflow_id, hold_job_name)
);
INSERT INTO gates_per_hold_job (workflow_id, hold_job_name, sym_run_id, run_key, status,
    released_by, polling, polls, created_at, next_poll_at, lease_owner, lease_expires_at,
    last_run_status, detail, closed_at)
SELECT workflow_id, hold_job_name, sym_run_id, LOWER(sym_run_id), status, released_by, polling,
    polls, created_at, next_poll_at, lease_owner, lease_expires_at, last_run_status, detail,
    closed_at
FROM gates g
-- A run registered for two gates (what the old table allowed) keeps its first gate only.
WHERE NOT EXISTS (SELECT 1 FROM gates o WHERE LOWER(o.sym_run_id) = LOWER(g.sym_run_id)
    AND (o.created_at < g.created_at
         OR (o.created_at = g.created_at AND o.workflow_id < g.workflow_id)));
DROP TABLE gates;
ALTER TABLE gates_per_hold_job RENAME TO gates;
CREATE UNIQUE INDEX gates_one_per_run ON gates (run_key);
CREATE INDEX gates_due ON gates (next_poll_at) WHERE status = 'open' AND polling = 1;
CREATE INDEX gates_open ON gates (created_at) WHERE status = 'open';
