//! Streams the rows of a cohort evaluation into an `IndexBuilder` inside one read-only
//! repeatable-read transaction. Rows arrive through a portal in batches, so the process never
//! keeps more than one batch of stored rows in memory.

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::cohorts::rows::IndexBuilder;
use crate::store::StoreResult;

/// Rows fetched from the portal per round trip.
const BATCH_ROWS: i32 = 10_000;

/// Runs `sql` with `params` and passes every row to `each`, `BATCH_ROWS` rows at a time.
async fn for_each_row(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    mut each: impl FnMut(&Row) -> StoreResult<()>,
) -> StoreResult<()> {
    let statement = tx.prepare_cached(sql).await?;
    let portal = tx.bind(&statement, params).await?;
    loop {
        let rows = tx.query_portal(&portal, BATCH_ROWS).await?;
        for row in &rows {
            each(row)?;
        }
        if rows.len() < BATCH_ROWS as usize {
            return Ok(());
        }
    }
}

/// Feeds `builder` the project's identity links, the distinct ids with events, the profiles
/// and the selected events up to and including `until_ms`. The caller owns the transaction.
pub(super) async fn read_cohort_rows(
    tx: &Transaction<'_>,
    project_id: i64,
    mut builder: IndexBuilder,
    until_ms: i64,
) -> StoreResult<IndexBuilder> {
    // Every profile and every link names a distinct id, so their count sizes the builder's id
    // table once.
    let counted: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM profiles WHERE project_id = $1)
                  + (SELECT count(*) FROM identity_links WHERE project_id = $1)",
            &[&project_id],
        )
        .await?
        .try_get(0)?;
    builder.reserve_ids(usize::try_from(counted).unwrap_or(0));
    for_each_row(
        tx,
        "SELECT distinct_id, canonical_id FROM identity_links WHERE project_id = $1",
        &[&project_id],
        |row| {
            builder.add_link(row.try_get(0)?, row.try_get(1)?);
            Ok(())
        },
    )
    .await?;
    for_each_row(
        tx,
        "SELECT DISTINCT distinct_id FROM events WHERE project_id = $1 AND distinct_id <> ''",
        &[&project_id],
        |row| {
            builder.add_event_distinct_id(row.try_get(0)?);
            Ok(())
        },
    )
    .await?;
    for_each_row(
        tx,
        "SELECT distinct_id, properties FROM profiles WHERE project_id = $1",
        &[&project_id],
        |row| {
            builder.add_profile_json(row.try_get(0)?, row.try_get(1)?)?;
            Ok(())
        },
    )
    .await?;

    for name in builder.event_names() {
        let sql = if builder.reads_event_properties(&name) {
            "SELECT distinct_id, time_ms, properties FROM events
             WHERE project_id = $1 AND event = $2 AND time_ms <= $3 AND distinct_id <> ''"
        } else {
            "SELECT distinct_id, time_ms, NULL::text FROM events
             WHERE project_id = $1 AND event = $2 AND time_ms <= $3 AND distinct_id <> ''"
        };
        for_each_row(tx, sql, &[&project_id, &name, &until_ms], |row| {
            builder.add_event_json(&name, row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)?;
            Ok(())
        })
        .await?;
    }
    Ok(builder)
}
