//! Group commit for event writes: concurrent `write_events` calls queue their rows, and the
//! first caller to get the writer connection commits every queued write in one transaction.
//! Pages that several requests touch (index pages above all) are then written to the WAL and
//! synced once per group instead of once per request.
//!
//! When the group's transaction fails, it is rolled back and each write is committed in a
//! transaction of its own, so a write that fails gets its own error and the others commit.
//! Every caller hears back only after the transaction holding its rows has committed with
//! `synchronous=FULL`, so a 2xx still means the rows are on disk.

use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::insert_events;
use crate::store::{EncodedEvents, IdentityLink, StoreResult, WriteSummary};

/// The maximum number of writes committed in one transaction, which bounds its size.
const MAX_GROUP: usize = 32;

/// One caller's rows, waiting for a commit.
pub(super) struct PendingWrite {
    pub project_id: i64,
    pub events: EncodedEvents,
    pub links: Vec<IdentityLink>,
    pub now_ms: i64,
    pub done: oneshot::Sender<StoreResult<WriteSummary>>,
}

/// Writes waiting for the next group commit.
#[derive(Clone, Default)]
pub(super) struct WriteQueue {
    pending: Arc<Mutex<Vec<PendingWrite>>>,
}

fn write_one(conn: &Connection, write: &PendingWrite) -> StoreResult<WriteSummary> {
    let mut link_stmt = conn.prepare_cached(
        "INSERT INTO identity_links (project_id, distinct_id, canonical_id, linked_at_ms)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )?;
    for link in &write.links {
        link_stmt.execute(params![
            write.project_id,
            link.distinct_id,
            link.canonical_id,
            write.now_ms
        ])?;
    }
    insert_events(conn, write.project_id, &write.events, write.now_ms)?;
    Ok(WriteSummary {
        written: write.events.len(),
    })
}

impl WriteQueue {
    pub(super) fn push(&self, write: PendingWrite) {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(write);
    }

    /// Commits up to [`MAX_GROUP`] queued writes in one transaction and sends each its result.
    /// The caller must have locked the writer connection.
    pub(super) fn flush(&self, conn: &mut Connection) {
        let group: Vec<PendingWrite> = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let take = pending.len().min(MAX_GROUP);
            pending.drain(..take).collect()
        };
        if group.is_empty() {
            return;
        }
        // The whole group in one transaction, without a savepoint per write: savepoints copy
        // every page they touch into a sub-journal, which cost a tenth of the writer's time.
        let together = (|| -> StoreResult<Vec<WriteSummary>> {
            let tx = conn.transaction()?;
            let summaries = group
                .iter()
                .map(|write| write_one(&tx, write))
                .collect::<StoreResult<Vec<_>>>()?;
            tx.commit()?;
            Ok(summaries)
        })();
        match together {
            Ok(summaries) => {
                for (write, summary) in group.into_iter().zip(summaries) {
                    let _ = write.done.send(Ok(summary));
                }
            }
            // Dropping the transaction rolled every write back. Each is retried in a transaction
            // of its own, so a failing write gets its own error and the others still commit.
            Err(error) if group.len() > 1 => {
                tracing::warn!(writes = group.len(), error = %error, "group commit failed; committing its writes one by one");
                for write in group {
                    let result = (|| -> StoreResult<WriteSummary> {
                        let tx = conn.transaction()?;
                        let summary = write_one(&tx, &write)?;
                        tx.commit()?;
                        Ok(summary)
                    })();
                    let _ = write.done.send(result);
                }
            }
            Err(error) => {
                if let Some(write) = group.into_iter().next() {
                    let _ = write.done.send(Err(error));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::store::{NewEvent, SqliteStore, Store};

    fn write(
        project_id: i64,
        insert_id: &str,
    ) -> (PendingWrite, oneshot::Receiver<StoreResult<WriteSummary>>) {
        let (done, result) = oneshot::channel();
        let events = vec![NewEvent {
            event: "e".into(),
            distinct_id: "u".into(),
            time_ms: 1_700_000_000_000,
            insert_id: insert_id.into(),
            properties: Map::new(),
        }];
        let pending = PendingWrite {
            project_id,
            events: EncodedEvents::encode(&events).unwrap(),
            links: Vec::new(),
            now_ms: 1_700_000_000_000,
            done,
        };
        (pending, result)
    }

    #[tokio::test]
    async fn failing_write_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let project = store
            .create_project(crate::store::sqlite::tests::test_project())
            .await
            .unwrap();

        let (first, mut first_result) = write(project.id, "a");
        let (missing_project, mut failed_result) = write(999, "b");
        let (last, mut last_result) = write(project.id, "c");
        let queue = store.queue.clone();
        for pending in [first, missing_project, last] {
            queue.push(pending);
        }
        {
            let mut conn = store.writer.lock().unwrap();
            queue.flush(&mut conn);
        }

        assert_eq!(first_result.try_recv().unwrap().unwrap().written, 1);
        assert!(failed_result.try_recv().unwrap().is_err());
        assert_eq!(last_result.try_recv().unwrap().unwrap().written, 1);
        assert_eq!(store.count_events(project.id).await.unwrap(), 2);
    }
}
