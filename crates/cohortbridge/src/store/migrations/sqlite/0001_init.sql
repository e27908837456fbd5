-- Initial schema of the embedded store.
-- Secrets are stored encrypted (`*_enc`) for display to the owner and hashed (`*_hash`, SHA-256
-- hex) for lookups; the admin key is stored only as a hash.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE projects (
    id                  INTEGER PRIMARY KEY,
    name                TEXT NOT NULL,
    token               TEXT NOT NULL UNIQUE,
    api_secret_enc      TEXT NOT NULL,
    api_secret_hash     TEXT NOT NULL UNIQUE,
    currents_token_enc  TEXT NOT NULL,
    currents_token_hash TEXT NOT NULL UNIQUE,
    created_at_ms       INTEGER NOT NULL
);

-- One row per stored event. The unique key is Mixpanel's deduplication key; a row whose
-- `insert_id` was not sent carries one derived from the event's content.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    project_id    INTEGER NOT NULL REFERENCES projects(id),
    event         TEXT NOT NULL,
    distinct_id   TEXT NOT NULL,
    time_ms       INTEGER NOT NULL,
    insert_id     TEXT NOT NULL,
    partner_id    TEXT,
    properties    TEXT NOT NULL,
    ingested_at_ms INTEGER NOT NULL,
    UNIQUE (project_id, event, distinct_id, time_ms, insert_id)
);
CREATE INDEX events_by_name_time ON events (project_id, event, time_ms);
CREATE INDEX events_by_time ON events (project_id, time_ms);

-- Simplified ID Merge links: `distinct_id` (a `$device:` id) resolves to `canonical_id` (a
-- `$user_id`). The first link of a device wins and is never replaced.
CREATE TABLE identity_links (
    project_id    INTEGER NOT NULL REFERENCES projects(id),
    distinct_id   TEXT NOT NULL,
    canonical_id  TEXT NOT NULL,
    linked_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (project_id, distinct_id)
);

CREATE TABLE profiles (
    project_id     INTEGER NOT NULL REFERENCES projects(id),
    distinct_id    TEXT NOT NULL,
    properties     TEXT NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (project_id, distinct_id)
);

CREATE TABLE cohorts (
    id             INTEGER PRIMARY KEY,
    project_id     INTEGER NOT NULL REFERENCES projects(id),
    name           TEXT NOT NULL,
    definition     TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);

CREATE TABLE connections (
    id                  INTEGER PRIMARY KEY,
    project_id          INTEGER NOT NULL REFERENCES projects(id),
    name                TEXT NOT NULL,
    instance            TEXT NOT NULL,
    base_url            TEXT NOT NULL,
    data_import_key_enc TEXT NOT NULL,
    user_id_property    TEXT NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

-- What Braze has acknowledged for one cohort in one connection's workspace: whether the cohort
-- was created (and under which name), and every external id it holds.
CREATE TABLE braze_cohorts (
    connection_id  INTEGER NOT NULL REFERENCES connections(id),
    cohort_id      INTEGER NOT NULL REFERENCES cohorts(id),
    braze_cohort_id TEXT NOT NULL,
    name_sent      TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (connection_id, cohort_id)
);

CREATE TABLE braze_members (
    connection_id  INTEGER NOT NULL,
    cohort_id      INTEGER NOT NULL,
    external_id    TEXT NOT NULL,
    PRIMARY KEY (connection_id, cohort_id, external_id)
);

CREATE TABLE syncs (
    id              INTEGER PRIMARY KEY,
    project_id      INTEGER NOT NULL REFERENCES projects(id),
    cohort_id       INTEGER NOT NULL REFERENCES cohorts(id),
    connection_id   INTEGER NOT NULL REFERENCES connections(id),
    mode            TEXT NOT NULL CHECK (mode IN ('once', 'dynamic')),
    interval_secs   INTEGER,
    status          TEXT NOT NULL,
    status_reason   TEXT,
    next_run_at_ms  INTEGER,
    created_at_ms   INTEGER NOT NULL
);

CREATE TABLE sync_runs (
    id              INTEGER PRIMARY KEY,
    sync_id         INTEGER NOT NULL REFERENCES syncs(id),
    started_at_ms   INTEGER NOT NULL,
    finished_at_ms  INTEGER,
    status          TEXT NOT NULL,
    members         INTEGER NOT NULL DEFAULT 0,
    added           INTEGER NOT NULL DEFAULT 0,
    removed         INTEGER NOT NULL DEFAULT 0,
    skipped         INTEGER NOT NULL DEFAULT 0,
    requests        INTEGER NOT NULL DEFAULT 0,
    error           TEXT
);
CREATE INDEX sync_runs_by_sync ON sync_runs (sync_id, id);

-- Currents events that could not be mapped; kept whole so nothing Braze sent is lost.
CREATE TABLE currents_quarantine (
    id              INTEGER PRIMARY KEY,
    project_id      INTEGER NOT NULL REFERENCES projects(id),
    received_at_ms  INTEGER NOT NULL,
    raw             TEXT NOT NULL,
    error           TEXT NOT NULL
);
