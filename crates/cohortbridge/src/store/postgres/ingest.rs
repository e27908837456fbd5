//! Ingestion writes of the PostgreSQL store: events and identity links as array parameters in
//! one statement each, Original ID Merge, and profile updates applied in memory under
//! per-profile advisory locks.

use std::collections::{BTreeSet, HashMap};

use deadpool_postgres::GenericClient;
use serde_json::{Map, Value};

use crate::ingest::engage::{self, Outcome};
use crate::store::{
    EncodedEvents, IdentityLink, MergeKind, MergeRequest, ProfileUpdate, StoreResult,
};

/// Events as column arrays, with duplicates on Mixpanel's key reduced to the last one, because
/// one `INSERT ... ON CONFLICT DO UPDATE` may not touch a row twice.
pub(super) struct EventRows {
    names: Vec<String>,
    distinct_ids: Vec<String>,
    times_ms: Vec<i64>,
    insert_ids: Vec<String>,
    partner_ids: Vec<Option<String>>,
    properties: Vec<String>,
}

impl EventRows {
    pub(super) fn new(events: &EncodedEvents) -> Self {
        let mut last_of_key: HashMap<(&str, &str, i64, &str), usize> = HashMap::new();
        for (index, (event, _)) in events.iter().enumerate() {
            let key = (
                event.event.as_str(),
                event.distinct_id.as_str(),
                event.time_ms,
                event.insert_id.as_str(),
            );
            last_of_key.insert(key, index);
        }
        let mut rows = Self {
            names: Vec::with_capacity(last_of_key.len()),
            distinct_ids: Vec::with_capacity(last_of_key.len()),
            times_ms: Vec::with_capacity(last_of_key.len()),
            insert_ids: Vec::with_capacity(last_of_key.len()),
            partner_ids: Vec::with_capacity(last_of_key.len()),
            properties: Vec::with_capacity(last_of_key.len()),
        };
        for (index, (event, properties)) in events.iter().enumerate() {
            let key = (
                event.event.as_str(),
                event.distinct_id.as_str(),
                event.time_ms,
                event.insert_id.as_str(),
            );
            if last_of_key[&key] != index {
                continue;
            }
            rows.names.push(event.event.clone());
            rows.distinct_ids.push(event.distinct_id.clone());
            rows.times_ms.push(event.time_ms);
            rows.insert_ids.push(event.insert_id.clone());
            rows.partner_ids.push(event.partner_id.clone());
            rows.properties.push(properties.to_owned());
        }
        rows
    }
}

/// Stores identity links and events in one transaction.
pub(super) async fn write_batch(
    client: &mut deadpool_postgres::Object,
    project_id: i64,
    rows: &EventRows,
    links: &[IdentityLink],
    now_ms: i64,
) -> StoreResult<()> {
    let tx = client.transaction().await?;
    insert_links(&tx, project_id, links, now_ms).await?;
    insert_events(&tx, project_id, rows, now_ms).await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts Simplified ID Merge links; the first link of a distinct id wins.
async fn insert_links(
    client: &impl GenericClient,
    project_id: i64,
    links: &[IdentityLink],
    now_ms: i64,
) -> StoreResult<()> {
    if links.is_empty() {
        return Ok(());
    }
    let (from, to): (Vec<&str>, Vec<&str>) = links
        .iter()
        .map(|link| (link.distinct_id.as_str(), link.canonical_id.as_str()))
        .unzip();
    client
        .execute(
            "INSERT INTO identity_links (project_id, distinct_id, canonical_id, linked_at_ms)
             SELECT $1, l.distinct_id, l.canonical_id, $4
             FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS l(distinct_id, canonical_id, n)
             ORDER BY l.n
             ON CONFLICT DO NOTHING",
            &[&project_id, &from, &to, &now_ms],
        )
        .await?;
    Ok(())
}

/// Inserts events; a duplicate on Mixpanel's key replaces the earlier row.
pub(super) async fn insert_events(
    client: &impl GenericClient,
    project_id: i64,
    rows: &EventRows,
    now_ms: i64,
) -> StoreResult<()> {
    if rows.names.is_empty() {
        return Ok(());
    }
    let statement = client
        .prepare_cached(
            "INSERT INTO events (project_id, event, distinct_id, time_ms, insert_id,
                 partner_id, properties, ingested_at_ms)
             SELECT $1, e.event, e.distinct_id, e.time_ms, e.insert_id, e.partner_id,
                    e.properties, $8
             FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
                 WITH ORDINALITY AS e(event, distinct_id, time_ms, insert_id, partner_id, properties, n)
             ORDER BY e.n
             ON CONFLICT (project_id, event, distinct_id, time_ms, insert_id)
             DO UPDATE SET properties = excluded.properties,
                           partner_id = excluded.partner_id,
                           ingested_at_ms = excluded.ingested_at_ms",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &project_id,
                &rows.names,
                &rows.distinct_ids,
                &rows.times_ms,
                &rows.insert_ids,
                &rows.partner_ids,
                &rows.properties,
                &now_ms,
            ],
        )
        .await?;
    Ok(())
}

async fn resolve(
    client: &impl GenericClient,
    project_id: i64,
    distinct_id: &str,
) -> StoreResult<String> {
    let row = client
        .query_opt(
            "SELECT canonical_id FROM identity_links WHERE project_id = $1 AND distinct_id = $2",
            &[&project_id, &distinct_id],
        )
        .await?;
    match row {
        Some(row) => Ok(row.try_get(0)?),
        None => Ok(distinct_id.to_owned()),
    }
}

/// Number of distinct ids in the cluster whose canonical id is `canonical_id`.
async fn cluster_size(
    client: &impl GenericClient,
    project_id: i64,
    canonical_id: &str,
) -> StoreResult<i64> {
    let linked: i64 = client
        .query_one(
            "SELECT count(*) FROM identity_links WHERE project_id = $1 AND canonical_id = $2",
            &[&project_id, &canonical_id],
        )
        .await?
        .try_get(0)?;
    Ok(linked + 1)
}

/// Applies one Original ID Merge, or returns why it cannot happen. The cluster of `from` joins
/// the cluster of `into`, whose canonical id stays.
pub(super) async fn apply_merge(
    client: &impl GenericClient,
    project_id: i64,
    merge: &MergeRequest,
    now_ms: i64,
) -> StoreResult<Option<String>> {
    let into = resolve(client, project_id, &merge.into).await?;
    let from = resolve(client, project_id, &merge.from).await?;
    if into == from {
        return Ok(None);
    }
    let from_size = cluster_size(client, project_id, &from).await?;
    let must_be_unmerged = matches!(merge.kind, MergeKind::Identify | MergeKind::CreateAlias);
    if must_be_unmerged && (from != merge.from || from_size > 1) {
        return Ok(Some(format!(
            "{:?} is already merged with other ids (canonical id {from:?}), so it cannot be merged into {:?}",
            merge.from, merge.into
        )));
    }
    let total = cluster_size(client, project_id, &into).await? + from_size;
    if total > crate::identity::original::MAX_CLUSTER_SIZE {
        return Ok(Some(format!(
            "merging {:?} into {:?} would make a cluster of {total} ids; at most {} are allowed",
            merge.from,
            merge.into,
            crate::identity::original::MAX_CLUSTER_SIZE
        )));
    }
    client
        .execute(
            "UPDATE identity_links SET canonical_id = $3, linked_at_ms = $4
             WHERE project_id = $1 AND canonical_id = $2",
            &[&project_id, &from, &into, &now_ms],
        )
        .await?;
    client
        .execute(
            "INSERT INTO identity_links (project_id, distinct_id, canonical_id, linked_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (project_id, distinct_id) DO UPDATE SET canonical_id = excluded.canonical_id",
            &[&project_id, &from, &into, &now_ms],
        )
        .await?;
    Ok(None)
}

/// Applies profile updates in order inside the caller's transaction. The profiles they touch are
/// locked in sorted order, read once, changed in memory and written back, so that updates of one
/// profile sent to two nodes at once are applied one after the other.
pub(super) async fn apply_profile_updates(
    client: &impl GenericClient,
    project_id: i64,
    updates: &[ProfileUpdate],
    now_ms: i64,
) -> StoreResult<()> {
    let sent_ids: Vec<&str> = updates.iter().map(|u| u.distinct_id.as_str()).collect();
    let mut canonical: HashMap<String, String> = HashMap::new();
    for row in client
        .query(
            "SELECT distinct_id, canonical_id FROM identity_links
             WHERE project_id = $1 AND distinct_id = ANY($2)",
            &[&project_id, &sent_ids],
        )
        .await?
    {
        canonical.insert(row.try_get(0)?, row.try_get(1)?);
    }
    let targets: Vec<String> = updates
        .iter()
        .map(|update| {
            if update.ignore_alias {
                update.distinct_id.clone()
            } else {
                canonical
                    .get(&update.distinct_id)
                    .cloned()
                    .unwrap_or_else(|| update.distinct_id.clone())
            }
        })
        .collect();
    let locked: BTreeSet<&String> = targets.iter().collect();
    let lock_keys: Vec<String> = locked
        .iter()
        .map(|id| format!("cohortbridge:profile:{project_id}:{id}"))
        .collect();
    client
        .query(
            "SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest($1::text[]) AS k ORDER BY k",
            &[&lock_keys],
        )
        .await?;

    let locked_ids: Vec<&String> = locked.into_iter().collect();
    let mut state: HashMap<String, Option<Map<String, Value>>> = HashMap::new();
    for row in client
        .query(
            "SELECT distinct_id, properties FROM profiles
             WHERE project_id = $1 AND distinct_id = ANY($2)",
            &[&project_id, &locked_ids],
        )
        .await?
    {
        let text: &str = row.try_get(1)?;
        state.insert(row.try_get(0)?, Some(serde_json::from_str(text)?));
    }

    let mut touched: BTreeSet<String> = BTreeSet::new();
    for (update, target) in updates.iter().zip(&targets) {
        let current = state.get(target).cloned().flatten();
        let existed = current.is_some();
        let mut properties = current.unwrap_or_default();
        match engage::apply(&mut properties, &update.operation) {
            Outcome::Deleted => {
                state.insert(target.clone(), None);
                touched.insert(target.clone());
                continue;
            }
            Outcome::Updated => {}
        }
        if let Some(ms) = update.last_seen_ms {
            engage::touch_last_seen(&mut properties, ms);
        } else if !existed && properties.is_empty() {
            continue;
        }
        state.insert(target.clone(), Some(properties));
        touched.insert(target.clone());
    }

    let mut upsert_ids = Vec::new();
    let mut upsert_properties = Vec::new();
    let mut deleted_ids = Vec::new();
    for id in touched {
        match state.remove(&id).flatten() {
            Some(properties) => {
                upsert_properties.push(serde_json::to_string(&properties)?);
                upsert_ids.push(id);
            }
            None => deleted_ids.push(id),
        }
    }
    if !deleted_ids.is_empty() {
        client
            .execute(
                "DELETE FROM profiles WHERE project_id = $1 AND distinct_id = ANY($2)",
                &[&project_id, &deleted_ids],
            )
            .await?;
    }
    if !upsert_ids.is_empty() {
        client
            .execute(
                "INSERT INTO profiles (project_id, distinct_id, properties, updated_at_ms)
                 SELECT $1, p.distinct_id, p.properties, $4
                 FROM unnest($2::text[], $3::text[]) AS p(distinct_id, properties)
                 ON CONFLICT (project_id, distinct_id)
                 DO UPDATE SET properties = excluded.properties,
                               updated_at_ms = excluded.updated_at_ms",
                &[&project_id, &upsert_ids, &upsert_properties, &now_ms],
            )
            .await?;
    }
    Ok(())
}
