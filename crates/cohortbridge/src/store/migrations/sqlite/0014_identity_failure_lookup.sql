-- A failure is recorded once: importing the same events again looks up the failures already
-- recorded for each insert id instead of adding copies.
CREATE INDEX identity_failures_by_insert_id ON identity_failures (project_id, insert_id);
