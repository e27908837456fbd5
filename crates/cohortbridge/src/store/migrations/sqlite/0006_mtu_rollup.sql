-- The MTU rollup: per calendar month of the project's time zone, how many events each distinct
-- id sent under each key (name, `$partner_id`, ingestion path). The ingestion transaction keeps
-- it current, so the monthly report reads one row per distinct id instead of every event.
-- Changing the project's time zone rebuilds it from the events.

CREATE TABLE mtu_keys (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    event       TEXT NOT NULL,
    -- '' when the events carry no `$partner_id`.
    partner_id  TEXT NOT NULL,
    imported    INTEGER NOT NULL,
    UNIQUE (project_id, event, partner_id, imported)
);

-- A number per distinct id, so that the rollup stores integers.
CREATE TABLE mtu_users (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    distinct_id TEXT NOT NULL,
    UNIQUE (project_id, distinct_id)
);

CREATE TABLE mtu_members (
    project_id  INTEGER NOT NULL,
    -- YYYY * 100 + MM
    month       INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    -- (key id, event count) pairs sorted by key id, each a little-endian u32 and u64.
    counts      BLOB NOT NULL,
    PRIMARY KEY (project_id, month, user_id)
) WITHOUT ROWID;
