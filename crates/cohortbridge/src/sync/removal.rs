//! Stopping a sync: `syncs remove` and `cohorts delete`, optionally removing every member the
//! sync put in Braze first.
//!
//! Removal of members is recorded as a run with trigger `removal`, with each acknowledged request
//! recorded before the next, like any other run. If Braze refuses or gives up, the sync stays in
//! place so that the operator can retry; nothing is marked removed that Braze still holds.

use super::*;

impl SyncEngine {
    /// Stops a sync for good. With `remove_members`, first removes from Braze every id the
    /// sync's cohort has in the connection's workspace, and fails without stopping the sync
    /// when Braze does not accept that.
    pub async fn remove_sync(&self, sync_id: i64, remove_members: bool) -> Result<(), SyncError> {
        let sync = self
            .store
            .sync(sync_id)
            .await?
            .ok_or(SyncError::NotFound(sync_id))?;
        if sync.status == "removed" {
            return Ok(());
        }
        let _guard = self.claim(sync_id)?;
        let queue = self.connection_queue(sync.connection_id);
        let _turn = queue.lock().await;

        self.wait_for_connection_turn(sync.connection_id).await?;
        let result = self.remove_in_turn(&sync, remove_members).await;
        self.release_connection_turn(sync.connection_id).await;
        result
    }

    /// Leases the sync like a run, so that no node runs it meanwhile, and removes it.
    async fn remove_in_turn(&self, sync: &Sync, remove_members: bool) -> Result<(), SyncError> {
        let sync_id = sync.id;
        let lease_ms = self.lease.as_millis() as i64;
        if !self
            .store
            .lease_sync(sync_id, &self.node_id, now_ms(), lease_ms)
            .await?
        {
            return Err(SyncError::RunningElsewhere(sync_id));
        }
        let result = self.remove_leased(sync, remove_members).await;
        if let Err(e) = self.store.release_sync_lease(sync_id, &self.node_id).await {
            tracing::warn!(sync_id, error = %e, "cannot release the sync lease; it expires by itself");
        }
        result
    }

    /// Removes a sync whose lease this node holds, after removing its members when asked.
    async fn remove_leased(&self, sync: &Sync, remove_members: bool) -> Result<(), SyncError> {
        let sync_id = sync.id;
        if remove_members {
            self.remove_members(sync).await?;
        }
        let reason = if remove_members {
            "removed; its members were removed from Braze"
        } else {
            "removed; its members were left in Braze"
        };
        self.store
            .set_sync_state(sync_id, "removed", Some(reason), None)
            .await?;
        tracing::info!(
            sync_id,
            cohort_id = sync.cohort_id,
            remove_members,
            "sync removed; it will not run again"
        );
        Ok(())
    }

    /// Sends removes for every acknowledged member, as a recorded run.
    async fn remove_members(&self, sync: &Sync) -> Result<(), SyncError> {
        let fail = |message: String| SyncError::Removal {
            id: sync.id,
            message,
        };
        let connection = self
            .store
            .connection(sync.connection_id)
            .await?
            .ok_or_else(|| fail(format!("connection {} not found", sync.connection_id)))?;
        if connection.disconnected_at_ms.is_some() {
            return Err(fail(format!(
                "connection {:?} is disconnected; reconnect it first, or remove the sync \
                 without removing its members",
                connection.name
            )));
        }
        let Some(known) = self
            .store
            .braze_cohort(connection.id, sync.cohort_id)
            .await?
        else {
            // The cohort never reached Braze, so it has no members there.
            return Ok(());
        };
        let members = self
            .store
            .braze_members(connection.id, sync.cohort_id)
            .await?
            .union(
                &self
                    .store
                    .braze_pending(connection.id, sync.cohort_id)
                    .await?,
            );

        let run = self.store.start_run(sync.id, now_ms()).await?;
        let _heartbeat = self.keep_lease(sync.id, sync.connection_id, run.id);
        self.store
            .set_run_trigger(run.id, Trigger::Removal.as_str())
            .await?;
        let mut counts = RunCounts::default();
        // The run lists one remove per id, naming the member who last held it when known.
        let mut plan = Plan {
            removes: members,
            ..Plan::default()
        };
        let recorded = async {
            self.find_remove_holders(connection.id, sync.cohort_id, run.id, &mut plan)
                .await?;
            let no_members = SyncMembers::default();
            self.record_operations(run.id, &no_members, &connection.user_id_property, &plan)
                .await
        };
        let outcome = match recorded.await {
            Ok(()) => {
                self.send_removes(
                    run.id,
                    &connection,
                    &known,
                    sync.cohort_id,
                    &plan.removes,
                    &mut counts,
                )
                .await
            }
            Err(e) => Err(format!("storage error: {e}")),
        };
        let error = outcome.as_ref().err().cloned();
        let status = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        self.store
            .finish_run(run.id, status, &counts, error.as_deref(), now_ms())
            .await?;
        outcome.map_err(fail)
    }

    async fn send_removes(
        &self,
        run_id: i64,
        connection: &Connection,
        known: &BrazeCohort,
        cohort_id: i64,
        members: &IdSet,
        counts: &mut RunCounts,
    ) -> Result<(), String> {
        let credentials = self.credentials(connection)?;
        let attributes = connection.delivery == "attributes";
        let chunk_size = if attributes {
            crate::braze::users_track::MAX_ATTRIBUTE_OBJECTS
        } else {
            MAX_IDS_PER_REQUEST
        };
        let storage = |e: StoreError| format!("storage error: {e}");
        let mut acknowledged = BrazeProgress::default();
        for (_, range) in batches(0, members.len(), chunk_size) {
            self.check_lease(run_id)
                .map_err(|failure| failure.message)?;
            let removed = members.slice(range);
            // The previous request's acknowledgement and this request's ids are committed
            // together before this request is sent.
            acknowledged.pending = IdSet::from_ids(&removed);
            self.store
                .record_braze_progress(connection.id, cohort_id, acknowledged)
                .await
                .map_err(storage)?;
            let retries = if attributes {
                // In this mode `braze_cohort_id` is the attribute and `name_sent` the value.
                let objects = removed
                    .iter()
                    .map(|id| {
                        crate::braze::users_track::attribute_object(
                            id,
                            &known.braze_cohort_id,
                            &[],
                            &[known.name_sent.as_str()],
                        )
                    })
                    .collect();
                let outcome = self
                    .client
                    .track_attributes(&connection.base_url, &credentials, objects)
                    .await
                    .map_err(|e| e.to_string())?;
                if !outcome.rejected.is_empty() {
                    return Err(format!(
                        "Braze rejected {} of {} attribute objects; first reason: {}",
                        outcome.rejected.len(),
                        removed.len(),
                        outcome.rejected[0].1
                    ));
                }
                outcome.retries
            } else {
                self.client
                    .update_members(
                        &connection.base_url,
                        &credentials,
                        &known.braze_cohort_id,
                        &[],
                        &removed,
                    )
                    .await
                    .map_err(|e| e.to_string())?
            };
            counts.requests += 1;
            counts.retries += i64::from(retries);
            counts.removed += removed.len() as i64;
            acknowledged = BrazeProgress {
                acknowledged_removes: IdSet::from_ids(&removed),
                run_counts: Some((run_id, counts.clone())),
                ..BrazeProgress::default()
            };
            self.metrics
                .ids_sent
                .with_label_values(&["remove"])
                .inc_by(removed.len() as u64);
        }
        if !acknowledged.acknowledged_removes.is_empty() {
            self.store
                .record_braze_progress(connection.id, cohort_id, acknowledged)
                .await
                .map_err(storage)?;
        }
        Ok(())
    }
}
