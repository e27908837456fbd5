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
