-- The node whose turn it is to send through a Braze connection, and until when the turn holds.
-- Runs of one connection take turns across nodes, so that they share the workspace's rate limit
-- one run at a time.
ALTER TABLE connections ADD COLUMN turn_owner TEXT;
ALTER TABLE connections ADD COLUMN turn_expires_at_ms BIGINT;
