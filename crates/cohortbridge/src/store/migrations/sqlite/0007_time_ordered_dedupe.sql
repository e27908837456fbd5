-- Deduplication looks events up by (project, time, `$insert_id`) and then compares the name and
-- distinct id, instead of through a unique index on all five columns. Live events arrive in
-- time order, so new index entries land at the end of the index rather than at random places
-- among tens of millions of distinct ids, and each commit rewrites few index pages. SQLite
-- cannot drop a table constraint, so the table is rebuilt.

CREATE TABLE events_time_ordered (
    id            INTEGER PRIMARY KEY,
    project_id    INTEGER NOT NULL REFERENCES projects(id),
    event         TEXT NOT NULL,
    distinct_id   TEXT NOT NULL,
    time_ms       INTEGER NOT NULL,
    insert_id     TEXT NOT NULL,
    partner_id    TEXT,
    properties    TEXT NOT NULL,
    ingested_at_ms INTEGER NOT NULL
);
INSERT INTO events_time_ordered
    (id, project_id, event, distinct_id, time_ms, insert_id, partner_id, properties, ingested_at_ms)
SELECT id, project_id, event, distinct_id, time_ms, insert_id, partner_id, properties, ingested_at_ms
FROM events;
DROP TABLE events;
ALTER TABLE events_time_ordered RENAME TO events;

CREATE INDEX events_by_name_time ON events (project_id, event, time_ms);
-- Also serves every query by time range.
CREATE INDEX events_by_time_insert_id ON events (project_id, time_ms, insert_id);
