-- What each CircleCI call was for (list_jobs | approve | cancel), so the audit trail and the
-- worker find approve calls by name, not by matching the URL.
ALTER TABLE attempts ADD COLUMN operation TEXT;
UPDATE attempts SET operation = CASE
    WHEN endpoint LIKE '%/approve/%' THEN 'approve'
    WHEN endpoint LIKE '%/cancel' THEN 'cancel'
    ELSE 'list_jobs' END;

-- Steps that ended in an error, apart from polls, so the error backoff starts at its first
-- step however long the task polled before.
ALTER TABLE tasks ADD COLUMN errors BIGINT NOT NULL DEFAULT 0;

-- Redeliveries of a delivery that changed nothing, counted on the original.
ALTER TABLE deliveries ADD COLUMN redeliveries BIGINT NOT NULL DEFAULT 0;
