//! SQL for people, their browser sessions and their API keys. Secrets arrive hashed: the
//! password as an argon2 hash, session tokens and API keys as SHA-256 hex.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::is_unique_violation;
use crate::store::{NewSession, NewUser, StoreError, StoreResult, User, UserApiKey};

const USER_COLUMNS: &str =
    "users.id, users.email, users.password_hash, users.role, users.created_at_ms";

fn user_from_row(row: &Row) -> StoreResult<User> {
    Ok(User {
        id: row.try_get(0)?,
        email: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        role: row.try_get(3)?,
        created_at_ms: row.try_get(4)?,
    })
}

pub(super) async fn create_user(
    client: &impl GenericClient,
    user: NewUser,
    now_ms: i64,
) -> StoreResult<User> {
    let inserted = client
        .query_one(
            "INSERT INTO users (email, password_hash, role, created_at_ms) VALUES ($1, $2, $3, $4)
             RETURNING id",
            &[&user.email, &user.password_hash, &user.role, &now_ms],
        )
        .await;
    let row = match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::Conflict {
                what: "user",
                value: user.email,
            })
        }
        other => other?,
    };
    Ok(User {
        id: row.try_get(0)?,
        email: user.email,
        password_hash: user.password_hash,
        role: user.role,
        created_at_ms: now_ms,
    })
}

pub(super) async fn list_users(client: &impl GenericClient) -> StoreResult<Vec<User>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY id");
    client
        .query(&sql, &[])
        .await?
        .iter()
        .map(user_from_row)
        .collect()
}

pub(super) async fn user_by_email(
    client: &impl GenericClient,
    email: &str,
) -> StoreResult<Option<User>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
    client
        .query_opt(&sql, &[&email])
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
}

pub(super) async fn create_session(
    client: &impl GenericClient,
    session: NewSession,
) -> StoreResult<()> {
    // Expired sessions are dropped here, so the table does not grow without bound.
    client
        .execute(
            "DELETE FROM user_sessions WHERE expires_at_ms <= $1",
            &[&session.created_at_ms],
        )
        .await?;
    client
        .execute(
            "INSERT INTO user_sessions (token_hash, user_id, csrf_token, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &session.token_hash,
                &session.user_id,
                &session.csrf_token,
                &session.created_at_ms,
                &session.expires_at_ms,
            ],
        )
        .await?;
    Ok(())
}

pub(super) async fn session(
    client: &impl GenericClient,
    token_hash: &str,
    now_ms: i64,
) -> StoreResult<Option<(User, String)>> {
    let sql = format!(
        "SELECT {USER_COLUMNS}, user_sessions.csrf_token FROM user_sessions
         JOIN users ON users.id = user_sessions.user_id
         WHERE user_sessions.token_hash = $1 AND user_sessions.expires_at_ms > $2"
    );
    match client.query_opt(&sql, &[&token_hash, &now_ms]).await? {
        Some(row) => Ok(Some((user_from_row(&row)?, row.try_get(5)?))),
        None => Ok(None),
    }
}

pub(super) async fn delete_session(
    client: &impl GenericClient,
    token_hash: &str,
) -> StoreResult<()> {
    client
        .execute(
            "DELETE FROM user_sessions WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?;
    Ok(())
}

pub(super) async fn create_api_key(
    client: &impl GenericClient,
    user_id: i64,
    name: &str,
    key_hash: &str,
    now_ms: i64,
) -> StoreResult<UserApiKey> {
    let row = client
        .query_one(
            "INSERT INTO user_api_keys (user_id, name, key_hash, created_at_ms)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&user_id, &name, &key_hash, &now_ms],
        )
        .await?;
    Ok(UserApiKey {
        id: row.try_get(0)?,
        user_id,
        name: name.to_owned(),
        created_at_ms: now_ms,
    })
}

pub(super) async fn user_by_api_key_hash(
    client: &impl GenericClient,
    key_hash: &str,
) -> StoreResult<Option<User>> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM user_api_keys
         JOIN users ON users.id = user_api_keys.user_id
         WHERE user_api_keys.key_hash = $1"
    );
    client
        .query_opt(&sql, &[&key_hash])
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
}
