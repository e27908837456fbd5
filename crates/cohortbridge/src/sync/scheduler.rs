//! The loop that starts dynamic sync runs when they are due.

use std::sync::Arc;
use std::time::Duration;

use super::SyncEngine;

/// Checks for due syncs every `tick` and starts each in its own task, until `shutdown` fires.
/// A sync still running from an earlier tick is left alone, and a sync leased by another node
/// is not listed as due, so runs never overlap.
pub fn spawn_scheduler(
    engine: Arc<SyncEngine>,
    tick: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.changed() => break,
            }
            let due = match engine
                .store
                .due_syncs(chrono::Utc::now().timestamp_millis())
                .await
            {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list due syncs; retrying at the next tick");
                    continue;
                }
            };
            for sync in due {
                if engine.is_running(sync.id) {
                    continue;
                }
                let engine = engine.clone();
                tokio::spawn(async move {
                    match engine
                        .run_triggered(sync.id, super::Trigger::Schedule)
                        .await
                    {
                        Ok(_) => {}
                        // Another node leased the sync between the listing and this start.
                        Err(super::SyncError::RunningElsewhere(_)) => {
                            tracing::debug!(
                                sync_id = sync.id,
                                "scheduled sync run is running on another node"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(sync_id = sync.id, error = %e, "scheduled sync run did not start");
                        }
                    }
                });
            }
        }
    })
}
