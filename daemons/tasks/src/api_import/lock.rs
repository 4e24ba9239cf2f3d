//! The per-image import lock (`os_glance_import_task = <task id>`): taking
//! it, deciding whether another holder is stale, and taking a stale lock
//! over with a compare-and-set so that one image never has two imports.
//!
//! A holder is stale when its task is gone or finished, when it was run by
//! an imaged executor whose lease expired (the executor died; imaged's own
//! heartbeat keeps a live task's lease fresh in every phase), or, for a task
//! Glance's API runs itself, after Glance's own expiry (60 minutes since the
//! task's last update, 120 while it is `pending`).

use std::time::Duration;

use imaged_catalog::api_import::{IMPORT_LOCK, LockedUpdate, StoreListChange};
use imaged_catalog::claims::ClaimKind;
use imaged_catalog::tasks::Task;
use imaged_catalog::{Catalog, ClaimOwner};

use crate::import::ImportFailure;

/// Glance's hard-coded lock expiry for a `processing` holder.
const EXPIRY: Duration = Duration::from_secs(60 * 60);
/// Glance's expiry for a `pending` holder.
const PENDING_EXPIRY: Duration = Duration::from_secs(120 * 60);

/// Message a preempted holder is failed with (Glance's words).
pub const PREEMPTED: &str = "Expired lock preempted";

/// Why a lock holder may be taken over, or `None` while it is live.
pub async fn stale_reason(
    catalog: &Catalog,
    holder: &str,
) -> Result<Option<String>, ImportFailure> {
    let ctx = |step: &'static str| {
        move |e: imaged_catalog::CatalogError| {
            ImportFailure::Failed(format!(
                "checking import lock holder {holder}: {step}: catalog error: {e}"
            ))
        }
    };
    let Some(task) = catalog
        .get_task(holder)
        .await
        .map_err(ctx("reading the task"))?
    else {
        return Ok(Some(format!("task {holder} no longer exists")));
    };
    if task.deleted || matches!(task.status.as_str(), "success" | "failure") {
        return Ok(Some(format!("task {holder} is {}", task.status)));
    }
    let now = chrono::Utc::now().naive_utc();
    if let Some(rec) = catalog
        .claim_record(ClaimKind::Task, holder)
        .await
        .map_err(ctx("reading its claim"))?
    {
        match (rec.owner, rec.lease_expires_at) {
            (Some(_), Some(until)) if until > now => return Ok(None),
            (Some(owner), _) => {
                return Ok(Some(format!(
                    "task {holder} was run by executor {owner}, whose lease expired"
                )));
            }
            // Handed back or not yet claimed: an imaged executor will run it.
            _ if task.status == "pending" || task.status == "processing" => return Ok(None),
            _ => {}
        }
    }
    let age = task
        .updated_at
        .map(|u| (now - u).to_std().unwrap_or_default())
        .unwrap_or_default();
    let limit = if task.status == "pending" {
        PENDING_EXPIRY
    } else {
        EXPIRY
    };
    if age >= limit {
        return Ok(Some(format!(
            "task {holder} has not been updated for {} minutes",
            age.as_secs() / 60
        )));
    }
    Ok(None)
}

/// Makes sure `task` holds the import lock of `image_id`: keeps it when it
/// already names the task (the API set it), takes a free lock atomically,
/// takes over a stale holder's lock (failing that task as Glance does and
/// removing its stores from the store-list properties), and refuses a live
/// holder.
pub async fn acquire(
    catalog: &Catalog,
    task: &Task,
    image_id: &str,
    ttl: Duration,
) -> Result<(), ImportFailure> {
    // Two rounds: a lock released between our read and our write is free
    // on the second look.
    for _ in 0..2 {
        let holder = catalog
            .import_lock_holder(image_id)
            .await
            .map_err(super::flow::cat_err(image_id, "reading the import lock"))?;
        match holder {
            Some(h) if h == task.id => return Ok(()),
            None => {
                if catalog
                    .set_property_atomic(image_id, IMPORT_LOCK, &task.id)
                    .await
                    .map_err(super::flow::cat_err(image_id, "taking the import lock"))?
                {
                    return Ok(());
                }
            }
            Some(other) => {
                let Some(reason) = stale_reason(catalog, &other).await? else {
                    return Err(ImportFailure::Failed(format!(
                        "image {image_id} is locked by import task {other}, which is still running; \
                         a prior operation is still in progress"
                    )));
                };
                if !catalog
                    .replace_import_lock(image_id, &other, &task.id)
                    .await
                    .map_err(super::flow::cat_err(
                        image_id,
                        "taking over a stale import lock",
                    ))?
                {
                    continue;
                }
                tracing::warn!(image_id, task_id = %task.id, stale = %other, %reason, "took over a stale import lock");
                preempt(catalog, &other, image_id, &task.id, ttl).await;
                return Ok(());
            }
        }
    }
    Err(ImportFailure::Failed(format!(
        "image {image_id}: the import lock changed hands while being taken; a prior operation is still in progress"
    )))
}

/// Glance's lock busting, after the lock changed hands: the old task is
/// failed (if it still can be) and its stores leave the store lists.
async fn preempt(catalog: &Catalog, old: &str, image_id: &str, new: &str, ttl: Duration) {
    let old_task = catalog.get_task(old).await.ok().flatten();
    if let Some(t) = &old_task
        && matches!(t.status.as_str(), "pending" | "processing")
    {
        // The owner only matters for releasing the claim, which the old
        // executor (dead) cannot do any more; a foreign owner leaves it.
        let nobody = ClaimOwner::from_string("imaged-lock-takeover");
        if let Err(e) = catalog.fail_task(old, &nobody, PREEMPTED, ttl).await {
            tracing::warn!(task_id = old, error = %e, "cannot fail the preempted task");
        }
    }
    let stores: Vec<String> = old_task
        .and_then(|t| t.input)
        .and_then(|i| i.get("backend").cloned())
        .and_then(|b| b.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if stores.is_empty() {
        return;
    }
    let change = StoreListChange {
        add: vec![],
        remove: stores,
    };
    let upd = LockedUpdate {
        importing: Some(change.clone()),
        failed: Some(change),
        ..LockedUpdate::default()
    };
    match catalog.update_locked_image(image_id, new, &upd).await {
        Ok(Ok(_)) => {}
        Ok(Err(r)) => {
            tracing::warn!(image_id, reason = %r, "cannot clean the preempted task's store lists")
        }
        Err(e) => {
            tracing::warn!(image_id, error = %e, "cannot clean the preempted task's store lists")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imaged_catalog::Engine;
    use imaged_catalog::tasks::NewTask;
    use imaged_catalog::testing::TestDb;
    use serde_json::json;

    async fn task(cat: &Catalog) -> String {
        cat.enqueue_task(&NewTask::new("api_image_import", "p", json!({})))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn which_holders_are_stale() {
        let Some(db) = TestDb::new(Engine::Sqlite).await else {
            return;
        };
        let cat = &db.catalog;
        let stale = |id: String| async move { stale_reason(cat, &id).await.unwrap() };
        assert!(
            stale("no-such-task".into())
                .await
                .unwrap()
                .contains("no longer exists")
        );

        // Queued and not claimed yet: an executor will run it.
        let pending = task(cat).await;
        assert_eq!(stale(pending.clone()).await, None);

        // Claimed by a live executor, then its lease expires (it died).
        let owner = ClaimOwner::from_string("h:1:x");
        let got = cat
            .claim_tasks(&owner, Duration::from_secs(60), 1, &["api_image_import"])
            .await
            .unwrap();
        assert_eq!(got[0].id, pending);
        assert_eq!(stale(pending.clone()).await, None);
        cat.renew_claim(ClaimKind::Task, &pending, &owner, Duration::ZERO)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            stale(pending.clone())
                .await
                .unwrap()
                .contains("lease expired")
        );

        // Finished.
        cat.fail_task(&pending, &owner, "x", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(stale(pending).await.unwrap().contains("failure"));

        // Run by glance-api itself (no claim): Glance's 60-minute rule.
        let glance = task(cat).await;
        db.exec(&format!(
            "UPDATE tasks SET status = 'processing' WHERE id = '{glance}'"
        ))
        .await
        .unwrap();
        assert_eq!(stale(glance.clone()).await, None);
        db.exec(&format!(
            "UPDATE tasks SET updated_at = '2001-01-01 00:00:00.000000' WHERE id = '{glance}'"
        ))
        .await
        .unwrap();
        assert!(stale(glance).await.unwrap().contains("not been updated"));
    }
}
