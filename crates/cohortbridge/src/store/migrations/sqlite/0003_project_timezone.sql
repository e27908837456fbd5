-- The project's IANA time zone, in which cohort windows (`last_days`, `between`, `since`) and
-- distinct days are evaluated.
ALTER TABLE projects ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
