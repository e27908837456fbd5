-- Connection lifecycle, cohort deletion, operator pauses and per-run detail of cohort syncs.

-- A disconnected connection keeps its key and state; its syncs stay paused until a reconnect.
ALTER TABLE connections ADD COLUMN disconnected_at_ms INTEGER;

-- A deleted cohort keeps its row so that its syncs and their runs stay readable.
ALTER TABLE cohorts ADD COLUMN deleted_at_ms INTEGER;

-- Cause of a pause: `operator` (syncs pause), `connection` (disconnect) or `error` (a Braze
-- reply that resending cannot fix). A reconnect resumes the last two kinds only.
ALTER TABLE syncs ADD COLUMN paused_by TEXT;

-- `manual`, `schedule`, `export` or `removal`.
ALTER TABLE sync_runs ADD COLUMN trigger TEXT NOT NULL DEFAULT 'manual';
ALTER TABLE sync_runs ADD COLUMN unchanged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_runs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;

-- What one run planned for each member and each id it removed: `add`, `remove`, `no-op` or
-- `skipped` (with the reason).
CREATE TABLE sync_run_operations (
    run_id       INTEGER NOT NULL REFERENCES sync_runs(id),
    seq          INTEGER NOT NULL,
    distinct_id  TEXT,
    external_id  TEXT,
    operation    TEXT NOT NULL CHECK (operation IN ('add', 'remove', 'no-op', 'skipped')),
    reason       TEXT,
    PRIMARY KEY (run_id, seq)
);

-- Ids of a request sent to Braze whose acknowledgement was never recorded (the process stopped
-- while the request was in flight). Braze may or may not have applied it, so the next run sends
-- each of these ids again: an add if it is still a member, a remove otherwise.
CREATE TABLE braze_pending (
    connection_id  INTEGER NOT NULL,
    cohort_id      INTEGER NOT NULL,
    external_id    TEXT NOT NULL,
    PRIMARY KEY (connection_id, cohort_id, external_id)
);

-- How a connection delivers membership: `cohort_import` (partner cohort import API, with the
-- Data Import Key) or `attributes` (an array custom attribute through /users/track, with a REST
-- API key stored encrypted in data_import_key_enc).
ALTER TABLE connections ADD COLUMN delivery TEXT NOT NULL DEFAULT 'cohort_import';
ALTER TABLE connections ADD COLUMN attribute_name TEXT;
