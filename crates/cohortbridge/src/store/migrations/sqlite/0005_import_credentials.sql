-- Extra credentials for `/import`, each shown once at creation and stored only as a hash.
-- A credential with a `partner_id` marks every event imported with it as that partner's,
-- as Braze's Mixpanel connector expects (`$partner_id` = `braze`).
CREATE TABLE import_credentials (
    id             INTEGER PRIMARY KEY,
    project_id     INTEGER NOT NULL REFERENCES projects(id),
    name           TEXT NOT NULL,
    secret_hash    TEXT NOT NULL UNIQUE,
    partner_id     TEXT,
    created_at_ms  INTEGER NOT NULL,
    UNIQUE (project_id, name)
);
