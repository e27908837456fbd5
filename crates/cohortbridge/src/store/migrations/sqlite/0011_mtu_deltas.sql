-- Rollup changes not yet folded into `mtu_members`. An ingestion transaction appends one row
-- that packs all of its changes, which touches a page or two at the end of the table, instead
-- of rewriting one `mtu_members` row per distinct id of the batch, which touched pages all over
-- it. Once enough changes pile up, and before every report, the writer folds them into
-- `mtu_members` and deletes the rows.
CREATE TABLE mtu_deltas (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL,
    -- The number of changes in `changes`.
    count       INTEGER NOT NULL,
    -- Per change: month (YYYY * 100 + MM) as a little-endian i64, key id as u32, event count
    -- change as i64, then the distinct id's length as u32 and its UTF-8 bytes.
    changes     BLOB NOT NULL
);
