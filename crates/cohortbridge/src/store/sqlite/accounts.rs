//! SQL for people, their browser sessions and their API keys. Secrets arrive hashed: the
//! password as an argon2 hash, session tokens and API keys as SHA-256 hex.

use rusqlite::{params, Connection as SqlConnection, OptionalExtension, Row};

use super::is_unique_violation;
use crate::store::{NewSession, NewUser, StoreError, StoreResult, User, UserApiKey};

const USER_COLUMNS: &str =
    "users.id, users.email, users.password_hash, users.role, users.created_at_ms";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        password_hash: row.get(2)?,
        role: row.get(3)?,
        created_at_ms: row.get(4)?,
    })
}

pub(super) fn create_user(
    conn: &mut SqlConnection,
    user: NewUser,
    now_ms: i64,
) -> StoreResult<User> {
    let inserted = conn.execute(
        "INSERT INTO users (email, password_hash, role, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![user.email, user.password_hash, user.role, now_ms],
    );
    match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::Conflict {
                what: "user",
                value: user.email,
            })
        }
        other => other?,
    };
    Ok(User {
        id: conn.last_insert_rowid(),
        email: user.email,
        password_hash: user.password_hash,
        role: user.role,
        created_at_ms: now_ms,
    })
}

pub(super) fn list_users(conn: &SqlConnection) -> StoreResult<Vec<User>> {
    let mut stmt = conn.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))?;
    let rows = stmt.query_map([], user_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn user_where(
    conn: &SqlConnection,
    condition: &str,
    value: &str,
) -> StoreResult<Option<User>> {
    Ok(conn
        .query_row(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE {condition}"),
            [value],
            user_from_row,
        )
        .optional()?)
}

pub(super) fn create_session(conn: &mut SqlConnection, session: NewSession) -> StoreResult<()> {
    // Expired sessions are dropped here, so the table does not grow without bound.
    conn.execute(
        "DELETE FROM user_sessions WHERE expires_at_ms <= ?1",
        [session.created_at_ms],
    )?;
    conn.execute(
        "INSERT INTO user_sessions (token_hash, user_id, csrf_token, created_at_ms, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            session.token_hash,
            session.user_id,
            session.csrf_token,
            session.created_at_ms,
            session.expires_at_ms
        ],
    )?;
    Ok(())
}

pub(super) fn session(
    conn: &SqlConnection,
    token_hash: &str,
    now_ms: i64,
) -> StoreResult<Option<(User, String)>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {USER_COLUMNS}, user_sessions.csrf_token FROM user_sessions
                 JOIN users ON users.id = user_sessions.user_id
                 WHERE user_sessions.token_hash = ?1 AND user_sessions.expires_at_ms > ?2"
            ),
            params![token_hash, now_ms],
            |row| Ok((user_from_row(row)?, row.get(5)?)),
        )
        .optional()?)
}

pub(super) fn delete_session(conn: &mut SqlConnection, token_hash: &str) -> StoreResult<()> {
    conn.execute(
        "DELETE FROM user_sessions WHERE token_hash = ?1",
        [token_hash],
    )?;
    Ok(())
}

pub(super) fn create_api_key(
    conn: &mut SqlConnection,
    user_id: i64,
    name: String,
    key_hash: String,
    now_ms: i64,
) -> StoreResult<UserApiKey> {
    conn.execute(
        "INSERT INTO user_api_keys (user_id, name, key_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![user_id, name, key_hash, now_ms],
    )?;
    Ok(UserApiKey {
        id: conn.last_insert_rowid(),
        user_id,
        name,
        created_at_ms: now_ms,
    })
}

pub(super) fn user_by_api_key_hash(
    conn: &SqlConnection,
    key_hash: &str,
) -> StoreResult<Option<User>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {USER_COLUMNS} FROM user_api_keys
                 JOIN users ON users.id = user_api_keys.user_id
                 WHERE user_api_keys.key_hash = ?1"
            ),
            [key_hash],
            user_from_row,
        )
        .optional()?)
}
