-- The node that runs a sync, and until when its lease holds. A node renews the lease while the
-- run goes on. Another node may take the sync over only once the lease has expired.
ALTER TABLE syncs ADD COLUMN lease_owner TEXT;
ALTER TABLE syncs ADD COLUMN lease_expires_at_ms BIGINT;
