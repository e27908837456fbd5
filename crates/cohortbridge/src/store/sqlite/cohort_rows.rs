//! Streams the rows of a cohort evaluation into an `IndexBuilder`, one row at a time, inside
//! one read transaction.

use rusqlite::types::Type;
use rusqlite::{params, Connection as SqlConnection, Row};

use crate::cohorts::rows::IndexBuilder;
use crate::store::StoreResult;

/// Borrows column `i` of `row` as text, or as `None` when it is NULL.
fn text_or_null<'r>(row: &'r Row<'_>, i: usize) -> rusqlite::Result<Option<&'r str>> {
    row.get_ref(i)?
        .as_str_or_null()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

/// Borrows column `i` of `row` as text.
fn text<'r>(row: &'r Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(i)?
        .as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

/// Feeds `builder` the project's identity links, the distinct ids with events, the profiles
/// and the selected events up to and including `until_ms`, all from one snapshot.
pub(super) fn read_cohort_rows(
    conn: &SqlConnection,
    project_id: i64,
    mut builder: IndexBuilder,
    until_ms: i64,
) -> StoreResult<IndexBuilder> {
    let tx = conn.unchecked_transaction()?;

    // Every profile and every link names a distinct id, so their count sizes the builder's id
    // table once.
    let counted: i64 = tx.query_row(
        "SELECT (SELECT count(*) FROM profiles WHERE project_id = ?1)
              + (SELECT count(*) FROM identity_links WHERE project_id = ?1)",
        [project_id],
        |row| row.get(0),
    )?;
    builder.reserve_ids(usize::try_from(counted).unwrap_or(0));

    let mut stmt =
        tx.prepare("SELECT distinct_id, canonical_id FROM identity_links WHERE project_id = ?1")?;
    let mut rows = stmt.query([project_id])?;
    while let Some(row) = rows.next()? {
        builder.add_link(text(row, 0)?, text(row, 1)?);
    }
    drop(rows);
    drop(stmt);

    let mut stmt = tx.prepare(
        "SELECT DISTINCT distinct_id FROM events WHERE project_id = ?1 AND distinct_id <> ''",
    )?;
    let mut rows = stmt.query([project_id])?;
    while let Some(row) = rows.next()? {
        builder.add_event_distinct_id(text(row, 0)?);
    }
    drop(rows);
    drop(stmt);

    let mut stmt =
        tx.prepare("SELECT distinct_id, properties FROM profiles WHERE project_id = ?1")?;
    let mut rows = stmt.query([project_id])?;
    while let Some(row) = rows.next()? {
        builder.add_profile_json(text(row, 0)?, text(row, 1)?)?;
    }
    drop(rows);
    drop(stmt);

    for name in builder.event_names() {
        let sql = if builder.reads_event_properties(&name) {
            "SELECT distinct_id, time_ms, properties FROM events
             WHERE project_id = ?1 AND event = ?2 AND time_ms <= ?3 AND distinct_id <> ''"
        } else {
            "SELECT distinct_id, time_ms, NULL FROM events
             WHERE project_id = ?1 AND event = ?2 AND time_ms <= ?3 AND distinct_id <> ''"
        };
        let mut stmt = tx.prepare_cached(sql)?;
        let mut rows = stmt.query(params![project_id, name, until_ms])?;
        while let Some(row) = rows.next()? {
            let properties = text_or_null(row, 2)?;
            builder.add_event_json(&name, text(row, 0)?, row.get(1)?, properties)?;
        }
    }

    tx.commit()?;
    Ok(builder)
}
