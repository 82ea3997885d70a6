-- The approval job a task releases (the event's hold_job_name or the default); NULL on
-- tasks made before it was recorded, which use the default.
ALTER TABLE tasks ADD COLUMN hold_job_name TEXT;
-- The approved workflow's pipeline and name (GET /workflow/{id}), so a "rerun from failed"
-- of the same pipeline and workflow is recognised as the same approval.
ALTER TABLE tasks ADD COLUMN pipeline_id TEXT;
ALTER TABLE tasks ADD COLUMN workflow_name TEXT;
CREATE INDEX tasks_pipeline ON tasks (pipeline_id, workflow_name) WHERE pipeline_id IS NOT NULL;
