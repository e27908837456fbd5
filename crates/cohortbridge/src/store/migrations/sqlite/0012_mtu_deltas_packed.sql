-- One `mtu_deltas` row per ingestion transaction instead of one per change: the transaction's
-- changes are packed into a blob, so a 2000-event batch appends one row, not about 2000. The
-- rows of the earlier shape are folded into `mtu_members` when this migration is applied (see
-- `mtu_rollup::fold_unpacked`), then their table is dropped.
ALTER TABLE mtu_deltas RENAME TO mtu_deltas_unpacked;

CREATE TABLE mtu_deltas (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL,
    -- The number of changes in `changes`.
    count       INTEGER NOT NULL,
    -- Per change: month (YYYY * 100 + MM) as a little-endian i64, key id as u32, event count
    -- change as i64, then the distinct id's length as u32 and its UTF-8 bytes.
    changes     BLOB NOT NULL
);
