-- Rollup changes not yet folded into `mtu_members`. An ingestion transaction appends its changes
-- here, which touches a few pages at the end of the table, instead of rewriting one
-- `mtu_members` row per distinct id of the batch, which touched pages all over it. Once enough
-- rows pile up, and before every report, the writer folds them into `mtu_members` and deletes
-- them.
CREATE TABLE mtu_deltas (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL,
    -- YYYY * 100 + MM
    month       INTEGER NOT NULL,
    distinct_id TEXT NOT NULL,
    key_id      INTEGER NOT NULL,
    delta       INTEGER NOT NULL
);
