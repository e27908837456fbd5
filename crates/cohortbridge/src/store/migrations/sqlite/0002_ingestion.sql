-- Group profiles written by `/groups`, keyed by the group key (the event property that names
-- the group, such as `company`) and the group id.
CREATE TABLE group_profiles (
    project_id     INTEGER NOT NULL REFERENCES projects(id),
    group_key      TEXT NOT NULL,
    group_id       TEXT NOT NULL,
    properties     TEXT NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (project_id, group_key, group_id)
);

-- Identity merges that Original ID Merge rejected. The event that asked for the merge is stored
-- all the same; this row says why its merge did not happen.
CREATE TABLE identity_failures (
    id             INTEGER PRIMARY KEY,
    project_id     INTEGER NOT NULL REFERENCES projects(id),
    event          TEXT NOT NULL,
    insert_id      TEXT NOT NULL,
    distinct_id    TEXT NOT NULL,
    reason         TEXT NOT NULL,
    failed_at_ms   INTEGER NOT NULL
);
CREATE INDEX identity_failures_by_project ON identity_failures (project_id, id);
