//! The attribute delivery mode: membership written as the cohort's name in an array custom
//! attribute through `/users/track`, for workspaces without a partner cohort import integration.
//!
//! The diff, the pending ids and the acknowledgement records are the same as in the cohort import
//! mode; only the requests differ. A rename sends, for every member, an add of the new name and
//! a remove of the old one in the same attribute object. The new name is recorded only after
//! every member carries it, so a run that stops half-way repeats the rename.

use super::*;
use crate::braze::users_track::{attribute_object, MAX_ATTRIBUTE_OBJECTS};

impl SyncEngine {
    pub(super) async fn deliver_attributes(
        &self,
        run_id: i64,
        counts: &mut RunCounts,
        cohort: &Cohort,
        connection: &Connection,
        evaluated: SyncMembers,
        credentials: &Credentials,
    ) -> Result<(), RunFailure> {
        let store_failure = |e: StoreError| RunFailure::retry_later(format!("storage error: {e}"));
        let attribute = connection
            .attribute_name
            .clone()
            .unwrap_or_else(|| "mixpanel_cohorts".into());
        let known = self
            .store
            .braze_cohort(connection.id, cohort.id)
            .await
            .map_err(store_failure)?;
        let old_name = known
            .as_ref()
            .map(|k| k.name_sent.clone())
            .filter(|name| *name != cohort.name);
        let record = BrazeCohort {
            braze_cohort_id: attribute.clone(),
            name_sent: cohort.name.clone(),
        };
        if known.is_none() {
            self.store
                .record_braze_cohort(connection.id, cohort.id, &record, now_ms())
                .await
                .map_err(store_failure)?;
        }

        let acknowledged = self
            .store
            .braze_members(connection.id, cohort.id)
            .await
            .map_err(store_failure)?;
        let pending = self
            .store
            .braze_pending(connection.id, cohort.id)
            .await
            .map_err(store_failure)?;
        let mut plan = plan_changes(&evaluated, &acknowledged, &pending);
        drop(acknowledged);
        drop(pending);
        counts.members = plan.counts.members;
        counts.skipped = plan.counts.skipped;
        counts.unchanged = plan.counts.unchanged;
        self.find_remove_holders(connection.id, cohort.id, run_id, &mut plan)
            .await
            .map_err(store_failure)?;

        // After a rename every member needs the new name, not only the new members.
        let renamed_adds;
        let adds = if old_name.is_some() {
            renamed_adds = plan_operations(&evaluated, &connection.user_id_property, &plan)
                .filter(|op| op.operation == "add" || op.operation == "no-op")
                .filter_map(|op| op.external_id)
                .collect::<IdSet>();
            counts.unchanged = 0;
            &renamed_adds
        } else {
            &plan.adds
        };
        self.record_operations(run_id, &evaluated, &connection.user_id_property, &plan)
            .await
            .map_err(store_failure)?;
        drop(evaluated);
        self.store
            .update_run_counts(run_id, counts)
            .await
            .map_err(store_failure)?;

        let name = cohort.name.as_str();
        let old: Vec<&str> = old_name.iter().map(String::as_str).collect();
        let mut all_names = vec![name];
        all_names.extend(old.iter().copied());
        let mut last_progress = Instant::now();
        let mut acknowledged = BrazeProgress::default();
        for (add_range, remove_range) in
            batches(adds.len(), plan.removes.len(), MAX_ATTRIBUTE_OBJECTS)
        {
            let added = adds.slice(add_range);
            let removed = plan.removes.slice(remove_range);
            let objects: Vec<Value> = added
                .iter()
                .map(|id| attribute_object(id, &attribute, &[name], &old))
                .chain(
                    removed
                        .iter()
                        .map(|id| attribute_object(id, &attribute, &[], &all_names)),
                )
                .collect();
            self.check_lease(run_id)?;
            // The previous request's acknowledgement and this request's ids are committed
            // together before this request is sent.
            acknowledged.pending = IdSet::from_ids(added.iter().chain(&removed));
            self.store
                .record_braze_progress(connection.id, cohort.id, acknowledged)
                .await
                .map_err(store_failure)?;
            let outcome = self
                .client
                .track_attributes(&connection.base_url, credentials, objects)
                .await
                .map_err(|e| braze_failure_counted(e, counts))?;
            counts.requests += 1;
            counts.retries += i64::from(outcome.retries);

            // Rejected objects stay pending, so the next run sends them again.
            let rejected: HashSet<usize> = outcome.rejected.iter().map(|(i, _)| *i).collect();
            if let Some((index, reason)) = outcome.rejected.first() {
                tracing::warn!(
                    run_id,
                    rejected = outcome.rejected.len(),
                    first_index = index,
                    first_reason = %reason,
                    "Braze rejected attribute objects; their ids stay pending for the next run"
                );
            }
            let accepted = |ids: &[&str], offset: usize| -> IdSet {
                ids.iter()
                    .enumerate()
                    .filter(|(i, _)| !rejected.contains(&(offset + i)))
                    .map(|(_, id)| *id)
                    .collect()
            };
            let acknowledged_adds = accepted(&added, 0);
            let acknowledged_removes = accepted(&removed, added.len());
            counts.added += acknowledged_adds.len() as i64;
            counts.removed += acknowledged_removes.len() as i64;
            acknowledged = BrazeProgress {
                acknowledged_adds,
                acknowledged_removes,
                pending: IdSet::default(),
                run_counts: Some((run_id, counts.clone())),
            };
            self.metrics
                .ids_sent
                .with_label_values(&["add"])
                .inc_by(acknowledged.acknowledged_adds.len() as u64);
            self.metrics
                .ids_sent
                .with_label_values(&["remove"])
                .inc_by(acknowledged.acknowledged_removes.len() as u64);
            // The counts are progress for `syncs show`, not state that a crash must keep, so
            // they are written at most once a second; `finish_run` writes the final ones.
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                self.store
                    .update_run_counts(run_id, counts)
                    .await
                    .map_err(store_failure)?;
                last_progress = Instant::now();
            }
        }
        if !acknowledged.acknowledged_adds.is_empty()
            || !acknowledged.acknowledged_removes.is_empty()
        {
            self.store
                .record_braze_progress(connection.id, cohort.id, acknowledged)
                .await
                .map_err(store_failure)?;
        }

        if old_name.is_some() {
            self.store
                .record_braze_cohort(connection.id, cohort.id, &record, now_ms())
                .await
                .map_err(store_failure)?;
        }
        Ok(())
    }
}
