//! The operator verbs besides scrubbing: `restore` (undo a pending delete
//! completely) and `status` (what is queued, due and failing).

use std::time::Duration;

use imaged_catalog::scrub::{RestoreReport, ScrubStatus};
use imaged_catalog::{Catalog, CatalogError, ClaimKind, ClaimRecord};
use imaged_runtime::ExitCode;
use serde::Serialize;

/// Why a restore was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No image with that id.
    #[error("no image found with ID {0}")]
    UnknownImage(String),
    /// The image is not `pending_delete`.
    #[error("cannot restore image {id}: its status is {status}, not pending_delete")]
    NotPending { id: String, status: String },
    /// A scrubber is scrubbing the image right now.
    #[error("cannot restore image {0}: a scrubber is scrubbing it right now")]
    BeingScrubbed(String),
    /// Some of the image's data has already been deleted.
    #[error("cannot restore image {id}: its data has already been (partly) scrubbed ({detail})")]
    AlreadyScrubbed { id: String, detail: String },
    /// The catalog failed.
    #[error("catalog: {0}")]
    Catalog(CatalogError),
}

impl RestoreError {
    /// The exit status: 1 for a refused restore (as Glance), 3 when the
    /// database is unreachable.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RestoreError::Catalog(CatalogError::Database(_) | CatalogError::Io { .. }) => {
                ExitCode::BackendUnavailable
            }
            RestoreError::Catalog(_) => ExitCode::Internal,
            _ => ExitCode::WorkFailed,
        }
    }
}

/// Restores a `pending_delete` image: the image becomes `active` again
/// with its locations, properties, tags and members, in one transaction,
/// only if none of its data was scrubbed and no scrubber holds it.
pub async fn restore(catalog: &Catalog, image_id: &str) -> Result<RestoreReport, RestoreError> {
    match catalog.restore_image(image_id).await {
        Ok(r) => Ok(r),
        Err(CatalogError::NotFound { .. }) => Err(RestoreError::UnknownImage(image_id.into())),
        Err(CatalogError::Conflict { found, .. }) => {
            let found = found.unwrap_or_else(|| "changed concurrently".into());
            if found.contains("being scrubbed") {
                Err(RestoreError::BeingScrubbed(image_id.into()))
            } else if found.starts_with("pending_delete with") {
                Err(RestoreError::AlreadyScrubbed {
                    id: image_id.into(),
                    detail: found.trim_start_matches("pending_delete with ").to_string(),
                })
            } else {
                Err(RestoreError::NotPending {
                    id: image_id.into(),
                    status: found,
                })
            }
        }
        Err(e) => Err(RestoreError::Catalog(e)),
    }
}

/// One image with a recorded scrub failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailingImage {
    pub image_id: String,
    pub error_class: String,
    pub attempts: i32,
    pub reason: String,
    /// When it is tried again (naive UTC, `YYYY-MM-DD HH:MM:SS`).
    pub next_attempt_at: Option<String>,
}

/// What `imaged-scrubber status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// `pending_delete` images.
    pub pending_images: i64,
    /// Of those, past `scrub_time`.
    pub due_images: i64,
    /// `pending_delete` locations under `pending_delete` images.
    pub pending_locations: i64,
    /// `pending_delete` locations removed from live images.
    pub live_image_pending_locations: i64,
    /// `pending_delete` images without a pending location (completed on the
    /// next pass).
    pub stuck_images: i64,
    /// Images a scrubber holds right now.
    pub claimed_images: i64,
    /// Images with a recorded failure, by class.
    pub failing_by_class: Vec<(String, i64)>,
    /// The failing images (at most `limit`).
    pub failing: Vec<FailingImage>,
    /// `scrub_time` used for "due", in seconds.
    pub scrub_time_s: u64,
}

/// Reads the status from the catalog.
pub async fn status(
    catalog: &Catalog,
    scrub_time: Duration,
    limit: u32,
) -> Result<StatusReport, CatalogError> {
    let s: ScrubStatus = catalog.scrub_status(scrub_time).await?;
    let failing = catalog
        .failed_claims(ClaimKind::ScrubImage, limit)
        .await?
        .into_iter()
        .map(failing_image)
        .collect();
    Ok(StatusReport {
        pending_images: s.pending_images,
        due_images: s.due_images,
        pending_locations: s.pending_locations,
        live_image_pending_locations: s.live_image_pending_locations,
        stuck_images: s.stuck_images,
        claimed_images: s.claimed_images,
        failing_by_class: s.failures_by_class,
        failing,
        scrub_time_s: scrub_time.as_secs(),
    })
}

fn failing_image(r: ClaimRecord) -> FailingImage {
    FailingImage {
        image_id: r.unit_id,
        error_class: r.error_class.unwrap_or_default(),
        attempts: r.attempts,
        reason: r.last_error.unwrap_or_default(),
        next_attempt_at: r
            .next_attempt_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
    }
}

impl StatusReport {
    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, String); 6] = [
            ("pending_delete images", self.pending_images.to_string()),
            (
                "  due now",
                format!("{} (scrub_time {}s)", self.due_images, self.scrub_time_s),
            ),
            ("pending locations", self.pending_locations.to_string()),
            (
                "removed locations of live images",
                self.live_image_pending_locations.to_string(),
            ),
            (
                "images without pending locations",
                self.stuck_images.to_string(),
            ),
            ("images being scrubbed", self.claimed_images.to_string()),
        ];
        for (k, v) in rows {
            out.push_str(&format!("{k:<34} {v}\n"));
        }
        let failing: i64 = self.failing_by_class.iter().map(|(_, n)| n).sum();
        out.push_str(&format!("{:<34} {failing}\n", "failing images"));
        for (class, n) in &self.failing_by_class {
            out.push_str(&format!("  {:<32} {n}\n", class));
        }
        if !self.failing.is_empty() {
            out.push_str(&format!(
                "\n{:<36}  {:<9}  {:>8}  {:<19}  {}\n",
                "IMAGE", "CLASS", "ATTEMPTS", "NEXT ATTEMPT (UTC)", "REASON"
            ));
            for f in &self.failing {
                out.push_str(&format!(
                    "{:<36}  {:<9}  {:>8}  {:<19}  {}\n",
                    f.image_id,
                    f.error_class,
                    f.attempts,
                    f.next_attempt_at.as_deref().unwrap_or("-"),
                    f.reason
                ));
            }
        }
        out
    }
}
