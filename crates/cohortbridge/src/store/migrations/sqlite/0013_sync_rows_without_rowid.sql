-- The tables a sync run writes once per member and per acknowledged id become WITHOUT ROWID
-- tables, clustered on their primary key. A rowid table with a composite primary key keeps each
-- row twice, in the table and in the key's index, so every insert and delete wrote two B-trees.
-- Rows, keys and constraints are unchanged.
CREATE TABLE sync_run_operations_clustered (
    run_id       INTEGER NOT NULL REFERENCES sync_runs(id),
    seq          INTEGER NOT NULL,
    distinct_id  TEXT,
    external_id  TEXT,
    operation    TEXT NOT NULL CHECK (operation IN ('add', 'remove', 'no-op', 'skipped')),
    reason       TEXT,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
INSERT INTO sync_run_operations_clustered
    SELECT run_id, seq, distinct_id, external_id, operation, reason FROM sync_run_operations;
DROP TABLE sync_run_operations;
ALTER TABLE sync_run_operations_clustered RENAME TO sync_run_operations;

CREATE TABLE braze_members_clustered (
    connection_id  INTEGER NOT NULL,
    cohort_id      INTEGER NOT NULL,
    external_id    TEXT NOT NULL,
    PRIMARY KEY (connection_id, cohort_id, external_id)
) WITHOUT ROWID;
INSERT INTO braze_members_clustered
    SELECT connection_id, cohort_id, external_id FROM braze_members;
DROP TABLE braze_members;
ALTER TABLE braze_members_clustered RENAME TO braze_members;

CREATE TABLE braze_pending_clustered (
    connection_id  INTEGER NOT NULL,
    cohort_id      INTEGER NOT NULL,
    external_id    TEXT NOT NULL,
    PRIMARY KEY (connection_id, cohort_id, external_id)
) WITHOUT ROWID;
INSERT INTO braze_pending_clustered
    SELECT connection_id, cohort_id, external_id FROM braze_pending;
DROP TABLE braze_pending;
ALTER TABLE braze_pending_clustered RENAME TO braze_pending;
