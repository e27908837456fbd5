//! The loop that starts dynamic sync runs when they are due.

use std::sync::Arc;
use std::time::Duration;

use super::SyncEngine;

/// Checks for due syncs every `tick` and starts each in its own task, until `shutdown` fires.
/// A sync still running from an earlier tick is left alone, so runs never overlap.
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
                    if let Err(e) = engine
                        .run_triggered(sync.id, super::Trigger::Schedule)
                        .await
                    {
                        tracing::warn!(sync_id = sync.id, error = %e, "scheduled sync run did not start");
                    }
                });
            }
        }
    })
}
