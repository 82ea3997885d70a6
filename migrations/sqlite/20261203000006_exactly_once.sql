-- A call (approve or cancel) noted before it was made whose answer is not stored yet. Such a
-- task keeps its lease at shutdown and at a restart (another process could otherwise read the
-- hold job on hold and call again while the first call is still on its way), until the step's
-- result is stored or the lease runs out.
ALTER TABLE tasks ADD COLUMN call_in_flight BIGINT NOT NULL DEFAULT 0;

-- An approval for a hold job whose approve task is live is kept as a delivery of its own,
-- outcome 'attached', duplicate_of = the live task's delivery: if that task fails, the newest
-- attached approval gets a task of its own. Found by the delivery it is attached to.
CREATE INDEX deliveries_attached ON deliveries (duplicate_of, received_at)
    WHERE outcome = 'attached';
