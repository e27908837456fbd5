//! The MTU rollup, kept current inside each ingestion transaction.
//!
//! `mtu_members` contains, per calendar month of the project's time zone, the number of events of
//! each key (name, `$partner_id`, ingestion path) and distinct id. The monthly report then reads
//! one row per distinct id, not one per event. Exemption rules and identity links are applied
//! when the report is read, so changing either needs no rebuild. A new project time zone moves
//! month boundaries, so it rebuilds the project's rollup from its events.
//!
//! Ingestion does not rewrite `mtu_members` rows: each transaction appends its changes to
//! `mtu_deltas`, packed in one row, and the writer folds those into `mtu_members` once enough
//! are pending and before every report, many changes per `mtu_members` row at once.

use std::collections::HashMap;

use chrono::{Datelike, TimeZone};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::store::{MtuCell, MtuKey, MtuMonth, StoreError, StoreResult};

/// One change to the rollup: `delta` events of a key and distinct id in a month.
pub(super) struct Change<'a> {
    pub month: i64,
    pub event: &'a str,
    pub partner_id: &'a str,
    pub imported: bool,
    pub distinct_id: &'a str,
    pub delta: i64,
}

/// Returns the month of `time_ms` in `zone`, as `YYYY * 100 + MM`.
pub(super) fn month_of(zone: chrono_tz::Tz, time_ms: i64) -> i64 {
    match zone.timestamp_millis_opt(time_ms).single() {
        Some(local) => i64::from(local.year()) * 100 + i64::from(local.month()),
        // Out of chrono's range; such times are refused at ingestion, so this is only a guard.
        None => 0,
    }
}

/// Reads the project's time zone; a name that no longer parses counts as UTC, as in the report.
pub(super) fn project_zone(conn: &Connection, project_id: i64) -> StoreResult<chrono_tz::Tz> {
    let name: Option<String> = conn
        .prepare_cached("SELECT timezone FROM projects WHERE id = ?1")?
        .query_row([project_id], |row| row.get(0))
        .optional()?;
    Ok(name.and_then(|n| n.parse().ok()).unwrap_or(chrono_tz::UTC))
}

/// The bytes of one (key id, event count) pair in `mtu_members.counts`.
const PAIR: usize = 12;

/// Decodes a `counts` blob. A truncated tail, which no writer produces, is ignored.
fn decode(blob: &[u8]) -> impl Iterator<Item = (u32, i64)> + '_ {
    blob.chunks_exact(PAIR).map(|pair| {
        let key = u32::from_le_bytes(pair[..4].try_into().expect("4 bytes"));
        let events = u64::from_le_bytes(pair[4..].try_into().expect("8 bytes"));
        (key, i64::try_from(events).unwrap_or(i64::MAX))
    })
}

fn encode(pairs: &[(u32, i64)]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(pairs.len() * PAIR);
    for &(key, events) in pairs {
        blob.extend_from_slice(&key.to_le_bytes());
        blob.extend_from_slice(&(events.max(0) as u64).to_le_bytes());
    }
    blob
}

/// Pending changes that make the writer fold them into `mtu_members` within the transaction
/// that appends them. A batch of 2000 events packs up to one change per distinct id and key.
const FOLD_AT_CHANGES: i64 = if cfg!(test) { 8 } else { 250_000 };

/// Pending rows that make the writer fold, so that many small requests do not pile up rows.
const FOLD_AT_ROWS: i64 = if cfg!(test) { 3 } else { 1_000 };

/// Finds the key id of each change, adding the keys not seen before.
fn key_ids(conn: &Connection, project_id: i64, changes: &[Change<'_>]) -> StoreResult<Vec<u32>> {
    let mut find_key_stmt = conn.prepare_cached(
        "SELECT id FROM mtu_keys
         WHERE project_id = ?1 AND event = ?2 AND partner_id = ?3 AND imported = ?4",
    )?;
    let mut add_key_stmt = conn.prepare_cached(
        "INSERT INTO mtu_keys (project_id, event, partner_id, imported) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut keys: HashMap<(&str, &str, bool), u32> = HashMap::new();
    let mut ids = Vec::with_capacity(changes.len());
    for c in changes {
        let id = match keys.get(&(c.event, c.partner_id, c.imported)) {
            Some(id) => *id,
            None => {
                let key = params![project_id, c.event, c.partner_id, c.imported];
                let found: Option<i64> =
                    find_key_stmt.query_row(key, |row| row.get(0)).optional()?;
                let id = match found {
                    Some(id) => id,
                    None => {
                        add_key_stmt.execute(key)?;
                        conn.last_insert_rowid()
                    }
                };
                let id = u32::try_from(id).map_err(|_| {
                    StoreError::Task(format!("MTU key id {id} does not fit 32 bits"))
                })?;
                keys.insert((c.event, c.partner_id, c.imported), id);
                id
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

/// One pending change as packed in `mtu_deltas.changes`.
struct Packed<'a> {
    month: i64,
    key: u32,
    delta: i64,
    distinct_id: &'a str,
}

fn pack(changes: &[Packed<'_>]) -> Vec<u8> {
    let size: usize = changes.iter().map(|c| 24 + c.distinct_id.len()).sum();
    let mut blob = Vec::with_capacity(size);
    for c in changes {
        blob.extend_from_slice(&c.month.to_le_bytes());
        blob.extend_from_slice(&c.key.to_le_bytes());
        blob.extend_from_slice(&c.delta.to_le_bytes());
        blob.extend_from_slice(&(c.distinct_id.len() as u32).to_le_bytes());
        blob.extend_from_slice(c.distinct_id.as_bytes());
    }
    blob
}

/// Decodes a `changes` blob, or returns `None` when it is not one that [`pack`] wrote.
fn unpack(mut blob: &[u8]) -> Option<Vec<Packed<'_>>> {
    fn take<'b>(blob: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        let (head, tail) = blob.split_at_checked(n)?;
        *blob = tail;
        Some(head)
    }
    let mut changes = Vec::new();
    while !blob.is_empty() {
        let month = i64::from_le_bytes(take(&mut blob, 8)?.try_into().ok()?);
        let key = u32::from_le_bytes(take(&mut blob, 4)?.try_into().ok()?);
        let delta = i64::from_le_bytes(take(&mut blob, 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(take(&mut blob, 4)?.try_into().ok()?) as usize;
        let distinct_id = std::str::from_utf8(take(&mut blob, len)?).ok()?;
        changes.push(Packed {
            month,
            key,
            delta,
            distinct_id,
        });
    }
    Some(changes)
}

/// Records `changes` in the caller's transaction as one appended row. Folds every pending
/// change into `mtu_members` once [`FOLD_AT_CHANGES`] changes or [`FOLD_AT_ROWS`] rows are
/// pending.
pub(super) fn apply(conn: &Connection, project_id: i64, changes: &[Change<'_>]) -> StoreResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let ids = key_ids(conn, project_id, changes)?;
    let mut sums: HashMap<(i64, &str, u32), i64> = HashMap::with_capacity(changes.len());
    for (c, key) in changes.iter().zip(ids) {
        *sums.entry((c.month, c.distinct_id, key)).or_insert(0) += c.delta;
    }
    let packed: Vec<Packed<'_>> = sums
        .into_iter()
        .filter(|(_, delta)| *delta != 0)
        .map(|((month, distinct_id, key), delta)| Packed {
            month,
            key,
            delta,
            distinct_id,
        })
        .collect();
    if packed.is_empty() {
        return Ok(());
    }
    conn.prepare_cached("INSERT INTO mtu_deltas (project_id, count, changes) VALUES (?1, ?2, ?3)")?
        .execute(params![project_id, packed.len() as i64, pack(&packed)])?;
    let (rows, pending): (i64, i64) = conn
        .prepare_cached("SELECT count(*), coalesce(sum(count), 0) FROM mtu_deltas")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    if rows >= FOLD_AT_ROWS || pending >= FOLD_AT_CHANGES {
        fold(conn)?;
    }
    Ok(())
}

/// Folds every pending change of every project into `mtu_members`, in the caller's
/// transaction, and deletes them.
pub(crate) fn fold(conn: &Connection) -> StoreResult<()> {
    let mut pending: HashMap<(i64, i64, String), Vec<(u32, i64)>> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached("SELECT id, project_id, changes FROM mtu_deltas")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let project_id: i64 = row.get(1)?;
            let blob = row.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
            let changes = unpack(blob).ok_or_else(|| {
                StoreError::Task(format!("mtu_deltas row {id} has an invalid changes blob"))
            })?;
            for c in changes {
                pending
                    .entry((project_id, c.month, c.distinct_id.to_owned()))
                    .or_default()
                    .push((c.key, c.delta));
            }
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    for ((project_id, month, distinct_id), deltas) in &pending {
        merge_user(conn, *project_id, *month, distinct_id, deltas)?;
    }
    conn.prepare_cached("DELETE FROM mtu_deltas")?.execute([])?;
    Ok(())
}

/// Folds the pending changes that an earlier version stored one per row, in the table that the
/// packing migration renamed to `mtu_deltas_unpacked`, then drops that table.
pub(super) fn fold_unpacked(conn: &Connection) -> StoreResult<()> {
    let mut pending: HashMap<(i64, i64, String), Vec<(u32, i64)>> = HashMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT project_id, month, distinct_id, key_id, delta FROM mtu_deltas_unpacked",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            pending
                .entry((row.get(0)?, row.get(1)?, row.get(2)?))
                .or_default()
                .push((row.get(3)?, row.get(4)?));
        }
    }
    for ((project_id, month, distinct_id), deltas) in &pending {
        merge_user(conn, *project_id, *month, distinct_id, deltas)?;
    }
    conn.execute_batch("DROP TABLE mtu_deltas_unpacked")?;
    Ok(())
}

/// Adds `changes` straight to `mtu_members`, for a rebuild.
fn merge(conn: &Connection, project_id: i64, changes: &[Change<'_>]) -> StoreResult<()> {
    let ids = key_ids(conn, project_id, changes)?;
    let mut by_user: HashMap<(i64, &str), Vec<(u32, i64)>> = HashMap::new();
    for (c, key) in changes.iter().zip(ids) {
        by_user
            .entry((c.month, c.distinct_id))
            .or_default()
            .push((key, c.delta));
    }
    for ((month, distinct_id), deltas) in by_user {
        merge_user(conn, project_id, month, distinct_id, &deltas)?;
    }
    Ok(())
}

/// Adds `deltas` to the `mtu_members` row of one month and distinct id: one read and one write.
fn merge_user(
    conn: &Connection,
    project_id: i64,
    month: i64,
    distinct_id: &str,
    deltas: &[(u32, i64)],
) -> StoreResult<()> {
    let mut find_user_stmt =
        conn.prepare_cached("SELECT id FROM mtu_users WHERE project_id = ?1 AND distinct_id = ?2")?;
    let found: Option<i64> = find_user_stmt
        .query_row(params![project_id, distinct_id], |row| row.get(0))
        .optional()?;
    let user_id = match found {
        Some(id) => id,
        None => {
            conn.prepare_cached("INSERT INTO mtu_users (project_id, distinct_id) VALUES (?1, ?2)")?
                .execute(params![project_id, distinct_id])?;
            conn.last_insert_rowid()
        }
    };
    let blob: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT counts FROM mtu_members WHERE project_id = ?1 AND month = ?2 AND user_id = ?3",
        )?
        .query_row(params![project_id, month, user_id], |row| row.get(0))
        .optional()?;
    let mut counts: std::collections::BTreeMap<u32, i64> = blob
        .as_deref()
        .map(|blob| decode(blob).collect())
        .unwrap_or_default();
    for &(key, delta) in deltas {
        *counts.entry(key).or_insert(0) += delta;
    }
    let pairs: Vec<(u32, i64)> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
    if pairs.is_empty() {
        conn.prepare_cached(
            "DELETE FROM mtu_members WHERE project_id = ?1 AND month = ?2 AND user_id = ?3",
        )?
        .execute(params![project_id, month, user_id])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO mtu_members (project_id, month, user_id, counts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project_id, month, user_id) DO UPDATE SET counts = excluded.counts",
        )?
        .execute(params![project_id, month, user_id, encode(&pairs)])?;
    }
    Ok(())
}

/// Recomputes the project's rollup from its events, in the caller's transaction.
pub(super) fn rebuild(conn: &Connection, project_id: i64) -> StoreResult<()> {
    conn.execute(
        "DELETE FROM mtu_members WHERE project_id = ?1",
        [project_id],
    )?;
    // The events hold every pending change too. The table exists only from a later migration
    // than the one that first rebuilds.
    let has_deltas: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mtu_deltas')",
        [],
        |row| row.get(0),
    )?;
    if has_deltas {
        conn.execute("DELETE FROM mtu_deltas WHERE project_id = ?1", [project_id])?;
    }
    let zone = project_zone(conn, project_id)?;
    let mut stmt = conn.prepare(
        "SELECT event, coalesce(partner_id, ''),
                coalesce(json_extract(properties, '$.\"$import\"'), 0), distinct_id, time_ms
         FROM events WHERE project_id = ?1",
    )?;
    let mut rows = stmt.query([project_id])?;
    let mut batch: Vec<(String, String, bool, String, i64)> = Vec::new();
    let flush = |batch: &mut Vec<(String, String, bool, String, i64)>| -> StoreResult<()> {
        let changes: Vec<Change<'_>> = batch
            .iter()
            .map(
                |(event, partner_id, imported, distinct_id, time_ms)| Change {
                    month: month_of(zone, *time_ms),
                    event,
                    partner_id,
                    imported: *imported,
                    distinct_id,
                    delta: 1,
                },
            )
            .collect();
        merge(conn, project_id, &changes)?;
        batch.clear();
        Ok(())
    };
    while let Some(row) = rows.next()? {
        batch.push((
            row.get(0)?,
            row.get(1)?,
            row.get::<_, i64>(2)? != 0,
            row.get(3)?,
            row.get(4)?,
        ));
        if batch.len() == 50_000 {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)
}

/// Rebuilds the rollup of every project, for the migration that creates the tables.
pub(super) fn rebuild_all(conn: &Connection) -> StoreResult<()> {
    let projects: Vec<i64> = conn
        .prepare("SELECT id FROM projects")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for project_id in projects {
        rebuild(conn, project_id)?;
    }
    Ok(())
}

/// Reads one month of the rollup and resolves its distinct ids through the identity links.
pub(super) fn read_month(
    conn: &Connection,
    project_id: i64,
    month: i64,
    distinct_ids: Option<Vec<String>>,
) -> StoreResult<MtuMonth> {
    let mut keys = Vec::new();
    // Key ids are small, so a vector indexed by id finds each key's position in `keys`.
    let mut key_index: Vec<Option<u32>> = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, event, partner_id, imported FROM mtu_keys WHERE project_id = ?1",
        )?;
        let mut rows = stmt.query([project_id])?;
        while let Some(row) = rows.next()? {
            let partner_id: String = row.get(2)?;
            let id = usize::try_from(row.get::<_, i64>(0)?).unwrap_or(usize::MAX);
            if id >= 1 << 24 {
                continue;
            }
            if key_index.len() <= id {
                key_index.resize(id + 1, None);
            }
            key_index[id] = Some(keys.len() as u32);
            keys.push(MtuKey {
                event: row.get(1)?,
                partner_id: (!partner_id.is_empty()).then_some(partner_id),
                imported: row.get(3)?,
            });
        }
    }

    // Distinct ids that link to another id count as that id's user. A canonical id that sent no
    // event itself has no number yet and gets a negative one.
    let mut resolved: HashMap<i64, i64> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT u.id, l.canonical_id, c.id
             FROM identity_links l
             JOIN mtu_users u ON u.project_id = l.project_id AND u.distinct_id = l.distinct_id
             LEFT JOIN mtu_users c ON c.project_id = l.project_id AND c.distinct_id = l.canonical_id
             WHERE l.project_id = ?1",
        )?;
        let mut unnumbered: HashMap<String, i64> = HashMap::new();
        let mut rows = stmt.query([project_id])?;
        while let Some(row) = rows.next()? {
            let user: i64 = row.get(0)?;
            let canonical = match row.get::<_, Option<i64>>(2)? {
                Some(id) => id,
                None => {
                    let next = -1 - unnumbered.len() as i64;
                    *unnumbered.entry(row.get(1)?).or_insert(next)
                }
            };
            resolved.insert(user, canonical);
        }
    }
    let unattributed: Option<i64> = conn
        .prepare_cached("SELECT id FROM mtu_users WHERE project_id = ?1 AND distinct_id = ''")?
        .query_row([project_id], |row| row.get(0))
        .optional()?;

    let mut sql = String::from(
        "SELECT user_id, counts FROM mtu_members WHERE project_id = ?1 AND month = ?2",
    );
    let mut values: Vec<rusqlite::types::Value> = vec![project_id.into(), month.into()];
    if let Some(ids) = &distinct_ids {
        let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("?{}", i + 3)).collect();
        sql.push_str(&format!(
            " AND user_id IN (SELECT id FROM mtu_users WHERE project_id = ?1
                              AND distinct_id IN ({}))",
            placeholders.join(", ")
        ));
        values.extend(ids.iter().cloned().map(Into::into));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut cells = Vec::new();
    while let Some(row) = rows.next()? {
        let user_id: i64 = row.get(0)?;
        let user = if Some(user_id) == unattributed {
            None
        } else {
            Some(resolved.get(&user_id).copied().unwrap_or(user_id))
        };
        let blob = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        for (key_id, events) in decode(blob) {
            if let Some(&key) = key_index.get(key_id as usize).and_then(Option::as_ref) {
                cells.push(MtuCell { key, user, events });
            }
        }
    }
    Ok(MtuMonth { keys, cells })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::store::{IdentityLink, MtuEventGroup, NewEvent, SqliteStore, Store};

    /// A cell with its key spelled out and its user labelled: (event, partner, imported, user,
    /// events).
    type Cell = (String, Option<String>, bool, Option<String>, i64);

    /// 2026-11-10T12:00:00Z
    const NOVEMBER_10: i64 = 1_794_312_000_000;
    /// 2026-10-31T23:30:00Z: still October in UTC, already November in Berlin.
    const OCTOBER_31_LATE: i64 = 1_793_489_400_000;

    async fn project(store: &SqliteStore) -> i64 {
        store
            .create_project(crate::store::sqlite::tests::test_project())
            .await
            .unwrap()
            .id
    }

    fn event(name: &str, user: &str, time_ms: i64, insert_id: &str, extra: Value) -> NewEvent {
        let mut properties = Map::new();
        if let Value::Object(extra) = extra {
            properties.extend(extra);
        }
        NewEvent {
            event: name.into(),
            distinct_id: user.into(),
            time_ms,
            insert_id: insert_id.into(),
            properties,
        }
    }

    /// Recounts a month from the events table, row by row, with the links applied in Rust.
    async fn recount(
        store: &SqliteStore,
        project_id: i64,
        zone: chrono_tz::Tz,
        month: i64,
    ) -> Vec<Cell> {
        let links = store.identity_links(project_id).await.unwrap();
        let groups = store
            .read(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT distinct_id, event, partner_id,
                            coalesce(json_extract(properties, '$.\"$import\"'), 0), time_ms
                     FROM events WHERE project_id = ?1",
                )?;
                let rows = stmt.query_map([project_id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, i64>(3)? != 0,
                        row.get::<_, i64>(4)?,
                    ))
                })?;
                let mut groups = Vec::new();
                for row in rows {
                    let (distinct_id, event, partner_id, imported, time_ms) = row?;
                    if month_of(zone, time_ms) == month {
                        groups.push(MtuEventGroup {
                            distinct_id,
                            event,
                            partner_id,
                            imported,
                            count: 1,
                        });
                    }
                }
                Ok(groups)
            })
            .await
            .unwrap();
        normalise(&MtuMonth::from_groups(groups, &links))
    }

    /// Sums a month per (event, partner, imported, user) with users named by a stable label,
    /// so that two months built with different user numbers compare equal.
    fn normalise(month: &MtuMonth) -> Vec<Cell> {
        let mut first_key_of_user: HashMap<i64, String> = HashMap::new();
        let mut sums: HashMap<(String, Option<String>, bool, Option<i64>), i64> = HashMap::new();
        for cell in &month.cells {
            let key = &month.keys[cell.key as usize];
            *sums
                .entry((
                    key.event.clone(),
                    key.partner_id.clone(),
                    key.imported,
                    cell.user,
                ))
                .or_insert(0) += cell.events;
        }
        // Users are labelled by the sorted list of cells they own, which identifies them
        // whatever number either side gave them.
        let mut cells_of_user: HashMap<i64, Vec<String>> = HashMap::new();
        for ((event, partner, imported, user), events) in &sums {
            if let Some(user) = user {
                cells_of_user
                    .entry(*user)
                    .or_default()
                    .push(format!("{event}|{partner:?}|{imported}|{events}"));
            }
        }
        for (user, mut cells) in cells_of_user {
            cells.sort();
            first_key_of_user.insert(user, cells.join(";"));
        }
        let mut out: Vec<_> = sums
            .into_iter()
            .filter(|(_, events)| *events != 0)
            .map(|((event, partner, imported, user), events)| {
                let label = user.map(|u| first_key_of_user[&u].clone());
                (event, partner, imported, label, events)
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn rollup_moves_changed_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let project_id = project(&store).await;
        let first = event("Email Send", "u1", NOVEMBER_10, "a", json!({}));
        let again = event(
            "Email Send",
            "u1",
            NOVEMBER_10,
            "a",
            json!({"$partner_id": "braze"}),
        );
        store
            .write_events(project_id, vec![first.clone()], vec![], 1)
            .await
            .unwrap();
        store
            .write_events(project_id, vec![again, first.clone(), first], vec![], 2)
            .await
            .unwrap();
        let month = store.mtu_month(project_id, 202611, None).await.unwrap();
        let total: i64 = month.cells.iter().map(|c| c.events).sum();
        assert_eq!(total, 1, "one stored event, one count: {month:?}");
        assert_eq!(
            month.cells.len(),
            1,
            "the emptied cell is removed: {month:?}"
        );
        assert_eq!(
            recount(&store, project_id, chrono_tz::UTC, 202611).await,
            normalise(&month)
        );
    }

    #[tokio::test]
    async fn rollup_follows_new_time_zone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let project_id = project(&store).await;
        store
            .write_events(
                project_id,
                vec![event("Viewed", "u1", OCTOBER_31_LATE, "a", json!({}))],
                vec![],
                1,
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .mtu_month(project_id, 202610, None)
                .await
                .unwrap()
                .cells
                .len(),
            1
        );
        store
            .set_project_timezone(project_id, "Europe/Berlin")
            .await
            .unwrap();
        assert!(store
            .mtu_month(project_id, 202610, None)
            .await
            .unwrap()
            .cells
            .is_empty());
        assert_eq!(
            store
                .mtu_month(project_id, 202611, None)
                .await
                .unwrap()
                .cells
                .len(),
            1
        );
        // New events follow the new zone too.
        store
            .write_events(
                project_id,
                vec![event("Viewed", "u2", OCTOBER_31_LATE, "b", json!({}))],
                vec![],
                2,
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .mtu_month(project_id, 202611, None)
                .await
                .unwrap()
                .cells
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn rollup_migration_fills_from_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let project_id = {
            let store = SqliteStore::open(&path).unwrap();
            let project_id = project(&store).await;
            let events = (0..50)
                .map(|i| {
                    event(
                        "Viewed",
                        &format!("u{}", i % 7),
                        NOVEMBER_10 + i,
                        &format!("i{i}"),
                        json!({}),
                    )
                })
                .collect();
            store
                .write_events(project_id, events, vec![], 1)
                .await
                .unwrap();
            // Forget the rollup as a database from before the migration would.
            store
                .write(|conn| {
                    conn.execute_batch(
                        "DROP TABLE mtu_members; DROP TABLE mtu_users; DROP TABLE mtu_keys;
                         DELETE FROM schema_migrations WHERE name = '0006_mtu_rollup';",
                    )?;
                    Ok(())
                })
                .await
                .unwrap();
            project_id
        };
        let store = SqliteStore::open(&path).unwrap();
        let month = store.mtu_month(project_id, 202611, None).await.unwrap();
        assert_eq!(month.cells.iter().map(|c| c.events).sum::<i64>(), 50);
        assert_eq!(month.cells.len(), 7);
    }

    fn arbitrary_event() -> impl Strategy<Value = NewEvent> {
        (
            prop::sample::select(vec!["Email Send", "Email Open", "Viewed", "$identify"]),
            prop::sample::select(vec!["", "u1", "u2", "$device:d1", "$device:d2", "u3"]),
            // Around the end of October in UTC and in the zones below.
            prop::sample::select(vec![
                OCTOBER_31_LATE - 3_600_000,
                OCTOBER_31_LATE,
                NOVEMBER_10,
            ]),
            0..4u8,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(name, user, time_ms, insert, braze, imported)| {
                let mut extra = serde_json::Map::new();
                if braze {
                    extra.insert("$partner_id".into(), json!("braze"));
                }
                extra.insert("$import".into(), json!(imported));
                event(
                    name,
                    user,
                    time_ms,
                    &format!("i{insert}"),
                    Value::Object(extra),
                )
            })
    }

    #[tokio::test]
    async fn unpacked_changes_fold_when_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let project_id;
        {
            let store = SqliteStore::open(&path).unwrap();
            project_id = project(&store).await;
            let events = vec![event("Open", "u1", NOVEMBER_10, "a", json!({}))];
            store
                .write_events(project_id, events, Vec::new(), 0)
                .await
                .unwrap();
            // The report folds u1's pending change into `mtu_members`.
            store.mtu_month(project_id, 202611, None).await.unwrap();
            // Put the database back in the state of the earlier shape: one pending change per
            // row, and the packing migration not yet applied.
            let conn = store.writer.lock().unwrap();
            let key: i64 = conn
                .query_row("SELECT id FROM mtu_keys WHERE event = 'Open'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            conn.execute_batch(&format!(
                "DROP TABLE mtu_deltas;
                 {}
                 INSERT INTO mtu_deltas (project_id, month, distinct_id, key_id, delta)
                     VALUES ({project_id}, 202611, 'u2', {key}, 2);
                 DELETE FROM schema_migrations WHERE name = '0012_mtu_deltas_packed';",
                include_str!("../migrations/sqlite/0011_mtu_deltas.sql")
            ))
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let month = store.mtu_month(project_id, 202611, None).await.unwrap();
        let mut events: Vec<i64> = month.cells.iter().map(|cell| cell.events).collect();
        events.sort();
        assert_eq!(events, vec![1, 2], "u1's event and u2's two unpacked ones");
        let users: std::collections::HashSet<_> = month.cells.iter().map(|c| c.user).collect();
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn packed_changes_round_trip() {
        let changes = [
            Packed {
                month: 202611,
                key: 7,
                delta: -1,
                distinct_id: "user-ü-🙂",
            },
            Packed {
                month: 202612,
                key: u32::MAX,
                delta: 3,
                distinct_id: "",
            },
        ];
        let blob = pack(&changes);
        let back = unpack(&blob).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            (
                back[0].month,
                back[0].key,
                back[0].delta,
                back[0].distinct_id
            ),
            (202611, 7, -1, "user-ü-🙂")
        );
        assert_eq!(
            (
                back[1].month,
                back[1].key,
                back[1].delta,
                back[1].distinct_id
            ),
            (202612, u32::MAX, 3, "")
        );
        assert!(
            unpack(&blob[..blob.len() - 1]).is_none(),
            "a cut blob is malformed"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Whatever mix of new events, duplicates and time zone changes arrives, the rollup
        /// equals a recount of the stored events.
        #[test]
        fn rollup_matches_a_recount(
            batches in prop::collection::vec(prop::collection::vec(arbitrary_event(), 1..12), 1..5),
            zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
            zone_first in any::<bool>(),
            linked in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
                let project_id = project(&store).await;
                if zone_first {
                    store.set_project_timezone(project_id, zone).await.unwrap();
                }
                let links = if linked {
                    vec![IdentityLink { distinct_id: "$device:d1".into(), canonical_id: "u1".into() },
                         IdentityLink { distinct_id: "$device:d2".into(), canonical_id: "u9".into() }]
                } else {
                    Vec::new()
                };
                for (i, batch) in batches.into_iter().enumerate() {
                    let links = if i == 0 { links.clone() } else { Vec::new() };
                    store.write_events(project_id, batch, links, i as i64).await.unwrap();
                }
                if !zone_first {
                    store.set_project_timezone(project_id, zone).await.unwrap();
                }
                let zone: chrono_tz::Tz = zone.parse().unwrap();
                for month in [202610, 202611] {
                    let rollup = store.mtu_month(project_id, month, None).await.unwrap();
                    prop_assert_eq!(recount(&store, project_id, zone, month).await, normalise(&rollup));
                }
                Ok(())
            })?;
        }
    }
}
