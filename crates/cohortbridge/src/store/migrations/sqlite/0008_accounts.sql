-- People who log in to the web UI, their browser sessions and their API keys. Passwords are
-- stored as argon2 hashes; session tokens and API keys only as SHA-256 hashes.
CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE user_sessions (
    token_hash     TEXT PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    csrf_token     TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);

CREATE TABLE user_api_keys (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    name           TEXT NOT NULL,
    key_hash       TEXT NOT NULL UNIQUE,
    created_at_ms  INTEGER NOT NULL
);
