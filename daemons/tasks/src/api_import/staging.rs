//! The staging area of the interoperable import: where an image's data
//! waits as `<staging dir>/<image id>` between staging and the store
//! uploads, filling it from a URL or from an existing store location, and
//! removing what images deleted since left there.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use imaged_catalog::Catalog;
use tokio::io::AsyncWriteExt;

use crate::import::ImportFailure;
use crate::settings::Settings;

/// The staging directory, or why the configuration has none.
pub fn staging_dir(settings: &Settings) -> Result<PathBuf, ImportFailure> {
    settings
        .api_import
        .staging_dir
        .clone()
        .map_err(ImportFailure::Failed)
}

/// The staged file of an image.
pub fn staged_path(dir: &Path, image_id: &str) -> PathBuf {
    dir.join(image_id)
}

/// Streams `data` into `path` (created or truncated), refusing more than
/// `cap` bytes and reporting "<verb> N MiB of M MiB" into `progress`.
/// Returns the bytes written. The caller removes the file on failure.
pub async fn fill<S, E>(
    path: &Path,
    mut data: S,
    announced: Option<u64>,
    cap: u64,
    verb: &str,
    progress: &Arc<Mutex<String>>,
) -> Result<u64, ImportFailure>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| {
            ImportFailure::Failed(format!(
                "cannot create the staging directory {}: {e}",
                parent.display()
            ))
        })?;
        if let Some(len) = announced {
            let free = crate::qemu::free_space(parent).map_err(ImportFailure::Failed)?;
            if len > free {
                return Err(ImportFailure::Failed(format!(
                    "staging directory {} has {free} bytes free, the image needs {len}",
                    parent.display()
                )));
            }
        }
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ImportFailure::Failed(format!("cannot create {}: {e}", path.display())))?;
    let mut n = 0u64;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ImportFailure::Failed(e.to_string()))?;
        n += chunk.len() as u64;
        // Glance does not cap the staging write: a huge
        // source would fill the staging disk before the store refused it.
        if n > cap {
            return Err(ImportFailure::Failed(format!(
                "image size exceeds image_size_cap of {cap} bytes (more than {cap} bytes received)"
            )));
        }
        file.write_all(&chunk).await.map_err(|e| {
            ImportFailure::Failed(format!("writing {} failed: {e}", path.display()))
        })?;
        if (n >> 20) != ((n - chunk.len() as u64) >> 20)
            && let Ok(mut p) = progress.lock()
        {
            *p = match announced {
                Some(t) => format!("{verb} {} MiB of {} MiB", n >> 20, t >> 20),
                None => format!("{verb} {} MiB", n >> 20),
            };
        }
    }
    file.flush()
        .await
        .map_err(|e| ImportFailure::Failed(format!("writing {} failed: {e}", path.display())))?;
    file.sync_all()
        .await
        .map_err(|e| ImportFailure::Failed(format!("writing {} failed: {e}", path.display())))?;
    Ok(n)
}

/// Whether a staging entry name belongs to an image: `<uuid>` or
/// `<uuid>.<suffix>` (plugin outputs such as `<uuid>.raw`).
fn image_id_of_name(name: &str) -> Option<&str> {
    let id = name.split('.').next()?;
    let b = id.as_bytes();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    uuid.then_some(id)
}

/// Removes staged files of images that are deleted or no longer exist
/// (Glance removes them when the image is deleted through its API; a
/// deletion elsewhere, or a crash, leaves them behind). Files of live
/// images are kept: a failed glance-direct import keeps its data for a
/// retry. Returns how many files were removed.
pub async fn clean_staging(catalog: &Catalog, settings: &Settings) -> usize {
    let Ok(dir) = settings.api_import.staging_dir.clone() else {
        return 0;
    };
    let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
        return 0;
    };
    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    while let Ok(Some(ent)) = rd.next_entry().await {
        let name = ent.file_name().to_string_lossy().to_string();
        let is_file = ent.file_type().await.map(|t| t.is_file()).unwrap_or(false);
        if let (true, Some(id)) = (is_file, image_id_of_name(&name)) {
            entries.push((id.to_string(), ent.path()));
        }
    }
    if entries.is_empty() {
        return 0;
    }
    let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
    let live = match catalog.live_image_ids(&ids).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check staged images; staging left as it is");
            return 0;
        }
    };
    let mut removed = 0;
    for (id, path) in entries {
        if live.contains(&id) {
            continue;
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(file = %path.display(), image_id = %id, "removed staged data of a deleted image");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove staged data of a deleted image")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names() {
        let id = "0b6d4b64-5a3e-4f6f-9d3c-2f1f1f1f1f1f";
        assert_eq!(image_id_of_name(id), Some(id));
        assert_eq!(image_id_of_name(&format!("{id}.raw")), Some(id));
        assert_eq!(image_id_of_name("lost+found"), None);
        assert_eq!(image_id_of_name("imaged-task-x.download"), None);
    }
}
