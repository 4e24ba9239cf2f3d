//! The import plugins of interoperable import (`[image_import_opts]
//! image_import_plugins`): what runs on the staged data after it is staged
//! and before it is uploaded to the stores, in the configured order.
//!
//! * `image_decompression` ([`decompress`]): gzip, zip and LHA data is
//!   decompressed in place, bounded by `image_size_cap` and the free space
//!   of the work directory (Glance's is unbounded);
//! * `image_conversion` ([`convert`]): inspected, checked by `qemu-img
//!   info`, converted to `[image_conversion] output_format` with a bounded
//!   `qemu-img convert`, inspected again;
//! * `inject_image_metadata` ([`inject`]): `[inject_metadata_properties]
//!   inject` added to the image's properties, never an `os_glance*` key;
//! * `no_op`: nothing.
//!
//! Data-changing plugins write into `work_dir` under the executor's work-file
//! names (`imaged-task-<task id>.*`, removed by the executor's clean-up if a
//! crash leaves them), then replace the staged file, so the caller uploads
//! and finally deletes the same path it staged. Partial output is removed on
//! every failure, including when the future is dropped. Long steps report
//! progress through [`PluginContext::heartbeat`].
//!
//! The caller applies the outcome to the catalog: `disk_format`,
//! `container_format`, `virtual_size`, the new size of the staged file, and
//! the properties to set. On failure, [`PluginError::plugin`] names the
//! plugin, so the caller can revert as Glance does (a failed
//! `image_conversion` sends the image back to `queued`, bug 2072483).

mod convert;
mod decompress;
mod inject;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imaged_config::IMPORT_PLUGINS;

use crate::inspect::InspectError;
use crate::settings::Settings;

/// What the plugins need from the running task.
pub struct PluginContext<'a> {
    /// The settings the task started with.
    pub settings: &'a Settings,
    /// The task's id: work files are named after it, so the executor's
    /// work-directory clean-up recognises what a crash left behind.
    pub task_id: &'a str,
    /// Where decompressed and converted output is written before it replaces
    /// the staged file (best on the staging file system: the replacement is
    /// then a rename, not a copy).
    pub work_dir: &'a Path,
    /// The roles of the user who asked for the import, when known.
    /// Glance's `api_image_import` task input records no roles (only
    /// `image_id`, `import_req` and `backend`), so the executor passes
    /// `None`, and `inject_image_metadata` then injects: the operator asked
    /// for the properties, and only a role the executor can see may exempt
    /// an import from them.
    pub user_roles: Option<&'a [String]>,
    /// Progress callback: called when each plugin starts and, during long
    /// steps (decompression, conversion, copies), about twice per
    /// `[imaged_tasks] heartbeat_interval`.
    pub heartbeat: &'a (dyn Fn(&str) + Send + Sync),
}

/// The staged data of one import and the image fields the plugins read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedImage {
    /// The staged file.
    pub path: PathBuf,
    /// `images.disk_format`.
    pub disk_format: Option<String>,
    /// `images.container_format`.
    pub container_format: Option<String>,
    /// `images.id`.
    pub image_id: String,
    /// The image's current extra properties.
    pub properties: BTreeMap<String, String>,
}

/// What the plugins changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginOutcome {
    /// The data to upload now: always the staged path, whose content the
    /// plugins may have replaced (its size may have changed).
    pub path: PathBuf,
    /// The image's `disk_format` after the plugins (changed by conversion).
    pub disk_format: Option<String>,
    /// The image's `container_format` after the plugins (conversion sets
    /// `bare`, as Glance does).
    pub container_format: Option<String>,
    /// Extra properties to set on the image (injected ones; never an
    /// `os_glance*` key).
    pub set_properties: BTreeMap<String, String>,
    /// The virtual size `qemu-img info` reported during conversion; `None`
    /// when no conversion ran (the upload's inspection decides then).
    pub virtual_size: Option<u64>,
}

/// Why the plugins stopped an import.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// `image_import_plugins` names a plugin imaged does not have.
    #[error(
        "import plugin {plugin:?} in [image_import_opts] image_import_plugins is not known \
         (image {image_id}); known plugins: {known}"
    )]
    UnknownPlugin {
        /// The name as configured.
        plugin: String,
        /// The image being imported.
        image_id: String,
        /// Every known name.
        known: String,
    },
    /// A compressed image expanded past its limit (a decompression bomb, or
    /// simply too large); nothing was kept.
    #[error(
        "image_decompression: image {image_id}: the {archive} data expands past {limit_name} \
         ({limit} bytes); stopped after writing {written} bytes and removed the output"
    )]
    ArchiveTooLarge {
        /// The image.
        image_id: String,
        /// `gzip`, `zip` or `lha`.
        archive: &'static str,
        /// What bounded it: `image_size_cap` or the work directory's free space.
        limit_name: String,
        /// The bound in bytes.
        limit: u64,
        /// Bytes written when it stopped.
        written: u64,
    },
    /// A zip or LHA archive does not hold exactly one member.
    #[error(
        "image_decompression: image {image_id}: the {archive} archive holds {members} members; \
         only an archive of exactly one file is decompressed"
    )]
    MultiMember {
        /// The image.
        image_id: String,
        /// `zip` or `lha`.
        archive: &'static str,
        /// Members found (counting stops at a few).
        members: usize,
    },
    /// The compressed data could not be decompressed.
    #[error(
        "image_decompression: image {image_id}: cannot decompress the {archive} data: {reason}"
    )]
    BadArchive {
        /// The image.
        image_id: String,
        /// `gzip`, `zip` or `lha`.
        archive: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// Not enough free space in the work directory for the output.
    #[error(
        "{plugin}: image {image_id}: work dir {} has {free} bytes free, the output needs up \
         to {needed} bytes",
        dir.display()
    )]
    NoSpace {
        /// The plugin.
        plugin: &'static str,
        /// The image.
        image_id: String,
        /// The work directory.
        dir: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// The converted image would be larger than `image_size_cap`.
    #[error(
        "image_conversion: image {image_id}: converting to {target} yields up to {virtual_size} \
         bytes, above image_size_cap of {cap} bytes"
    )]
    ConversionTooLarge {
        /// The image.
        image_id: String,
        /// Target format.
        target: String,
        /// Virtual size of the source.
        virtual_size: u64,
        /// `image_size_cap`.
        cap: u64,
    },
    /// The image has no `disk_format`, so its data cannot be checked or converted.
    #[error("image_conversion: image {image_id} has no disk_format; cannot convert it")]
    NoDiskFormat {
        /// The image.
        image_id: String,
    },
    /// The format inspectors refused the data (safety check, several formats,
    /// or data that does not match `disk_format`).
    #[error("image_conversion: image {image_id} refused {stage}: {source}")]
    Inspection {
        /// The image.
        image_id: String,
        /// `before conversion` or `after conversion`.
        stage: &'static str,
        /// The inspectors' verdict.
        source: InspectError,
    },
    /// `qemu-img info` or `qemu-img convert` failed or refused the image.
    #[error("image_conversion: image {image_id}: {reason}")]
    Qemu {
        /// The image.
        image_id: String,
        /// What qemu-img (or its checks) said.
        reason: String,
    },
    /// The converted output is not in the target format.
    #[error(
        "image_conversion: image {image_id}: converted image in unexpected format {found} \
         (expected {expected})"
    )]
    UnexpectedOutput {
        /// The image.
        image_id: String,
        /// The target format.
        expected: String,
        /// What the inspectors found.
        found: String,
    },
    /// Local I/O failed.
    #[error("{plugin}: image {image_id}: {action}: {source}")]
    Io {
        /// The plugin.
        plugin: &'static str,
        /// The image.
        image_id: String,
        /// What was being done, with the path.
        action: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The blocking worker of a plugin died.
    #[error("{plugin}: image {image_id}: worker failed: {reason}")]
    Worker {
        /// The plugin.
        plugin: &'static str,
        /// The image.
        image_id: String,
        /// The join error.
        reason: String,
    },
}

impl PluginError {
    /// The plugin that failed (as named in `image_import_plugins`).
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::UnknownPlugin { plugin, .. } => plugin,
            PluginError::ArchiveTooLarge { .. }
            | PluginError::MultiMember { .. }
            | PluginError::BadArchive { .. } => decompress::NAME,
            PluginError::ConversionTooLarge { .. }
            | PluginError::NoDiskFormat { .. }
            | PluginError::Inspection { .. }
            | PluginError::Qemu { .. }
            | PluginError::UnexpectedOutput { .. } => convert::NAME,
            PluginError::NoSpace { plugin, .. }
            | PluginError::Io { plugin, .. }
            | PluginError::Worker { plugin, .. } => plugin,
        }
    }
}

/// The evolving state of one import as the plugins run.
#[derive(Debug)]
struct State {
    image_id: String,
    path: PathBuf,
    disk_format: Option<String>,
    container_format: Option<String>,
    properties: BTreeMap<String, String>,
    set_properties: BTreeMap<String, String>,
    virtual_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plugin {
    Decompression,
    Conversion,
    Inject,
    NoOp,
}

impl Plugin {
    fn parse(name: &str) -> Option<Plugin> {
        match name {
            decompress::NAME => Some(Plugin::Decompression),
            convert::NAME => Some(Plugin::Conversion),
            inject::NAME => Some(Plugin::Inject),
            "no_op" => Some(Plugin::NoOp),
            _ => None,
        }
    }
}

/// Runs `plugins` (the `image_import_plugins` list) in order on `staged`.
///
/// Every name is checked before any plugin runs, so a misspelt name fails
/// the import with the staged data untouched.
pub async fn run_plugins(
    ctx: &PluginContext<'_>,
    plugins: &[String],
    staged: StagedImage,
) -> Result<PluginOutcome, PluginError> {
    let parsed = plugins
        .iter()
        .map(|name| {
            Plugin::parse(name).ok_or_else(|| PluginError::UnknownPlugin {
                plugin: name.clone(),
                image_id: staged.image_id.clone(),
                known: IMPORT_PLUGINS.join(", "),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut state = State {
        image_id: staged.image_id,
        path: staged.path,
        disk_format: staged.disk_format,
        container_format: staged.container_format,
        properties: staged.properties,
        set_properties: BTreeMap::new(),
        virtual_size: None,
    };
    for (plugin, name) in parsed.into_iter().zip(plugins) {
        (ctx.heartbeat)(&format!("Running import plugin {name}"));
        match plugin {
            Plugin::Decompression => decompress::run(ctx, &mut state).await?,
            Plugin::Conversion => convert::run(ctx, &mut state).await?,
            Plugin::Inject => inject::run(ctx, &mut state),
            Plugin::NoOp => {
                tracing::debug!(image_id = %state.image_id, "import plugin no_op ran");
            }
        }
    }
    Ok(PluginOutcome {
        path: state.path,
        disk_format: state.disk_format,
        container_format: state.container_format,
        set_properties: state.set_properties,
        virtual_size: state.virtual_size,
    })
}

/// How often long steps call the heartbeat: twice per heartbeat interval,
/// so the executor's own heartbeat always finds a fresh message.
fn progress_period(settings: &Settings) -> Duration {
    (settings.heartbeat_interval / 2).max(Duration::from_millis(50))
}

/// Awaits `work`, calling the heartbeat with `message()` every
/// [`progress_period`] until it ends.
async fn with_progress<T>(
    ctx: &PluginContext<'_>,
    work: impl Future<Output = T>,
    mut message: impl FnMut() -> String,
) -> T {
    let period = progress_period(ctx.settings);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => (ctx.heartbeat)(&message()),
        }
    }
}

/// A file this plugin run is writing: removed when dropped unless kept, so
/// partial output disappears on errors and on cancellation alike.
struct PartialFile {
    path: PathBuf,
    keep: bool,
}

impl PartialFile {
    fn new(path: PathBuf) -> PartialFile {
        PartialFile { path, keep: false }
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(file = %self.path.display(), "removed partial plugin output"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %self.path.display(),
                error = %e,
                "cannot remove partial plugin output"
            ),
        }
    }
}

/// Creates the work directory when missing.
async fn ensure_dir(
    ctx: &PluginContext<'_>,
    plugin: &'static str,
    image_id: &str,
) -> Result<(), PluginError> {
    tokio::fs::create_dir_all(ctx.work_dir)
        .await
        .map_err(|source| PluginError::Io {
            plugin,
            image_id: image_id.to_string(),
            action: format!("cannot create work dir {}", ctx.work_dir.display()),
            source,
        })
}

/// Free bytes in the work directory.
fn free_space(
    ctx: &PluginContext<'_>,
    plugin: &'static str,
    image_id: &str,
) -> Result<u64, PluginError> {
    crate::qemu::free_space(ctx.work_dir).map_err(|reason| PluginError::Io {
        plugin,
        image_id: image_id.to_string(),
        action: "cannot read the free space of the work dir".to_string(),
        source: std::io::Error::other(reason),
    })
}

/// Moves finished output over the staged file. A rename when both are on
/// one file system; otherwise the output is copied next to the staged file
/// first, so the staged path only ever holds complete data.
async fn replace_staged(
    ctx: &PluginContext<'_>,
    plugin: &'static str,
    image_id: &str,
    output: PartialFile,
    staged: &Path,
) -> Result<(), PluginError> {
    let io = |action: String| {
        let image_id = image_id.to_string();
        move |source| PluginError::Io {
            plugin,
            image_id,
            action,
            source,
        }
    };
    match tokio::fs::rename(&output.path, staged).await {
        Ok(()) => {
            output.keep();
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {}
        Err(e) => {
            return Err(io(format!(
                "cannot move {} over {}",
                output.path.display(),
                staged.display()
            ))(e));
        }
    }
    let mut name = staged.file_name().unwrap_or_default().to_os_string();
    name.push(".imaged-replace");
    let beside = PartialFile::new(staged.with_file_name(name));
    let copied = with_progress(ctx, tokio::fs::copy(&output.path, &beside.path), || {
        format!("{plugin}: copying the output to the staging directory")
    })
    .await;
    copied.map_err(io(format!(
        "cannot copy {} to {}",
        output.path.display(),
        beside.path.display()
    )))?;
    tokio::fs::rename(&beside.path, staged)
        .await
        .map_err(io(format!(
            "cannot move {} over {}",
            beside.path.display(),
            staged.display()
        )))?;
    beside.keep();
    drop(output);
    Ok(())
}

/// The first [`crate::inspect::PREFIX_LEN`] bytes of a file (all of it when shorter).
async fn read_head(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(path).await?;
    let mut head = Vec::with_capacity(len);
    f.take(len as u64).read_to_end(&mut head).await?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn settings(heartbeat_ms: u64) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("tasks.conf");
        std::fs::write(
            &conf,
            "[database]\nconnection = sqlite:////tmp/unused.sqlite\n",
        )
        .unwrap();
        let mut req = imaged_config::LoadRequest::new(Some(imaged_config::Daemon::Tasks));
        req.config_files.push(conf);
        let loaded = imaged_config::load(&req).unwrap();
        let mut s = Settings::from_config(&loaded.config).unwrap();
        s.heartbeat_interval = Duration::from_millis(heartbeat_ms);
        s
    }

    #[tokio::test]
    async fn long_steps_call_the_heartbeat_periodically() {
        let s = settings(100);
        let dir = tempfile::tempdir().unwrap();
        let seen = Mutex::new(Vec::<String>::new());
        let hb = |m: &str| seen.lock().unwrap().push(m.to_string());
        let ctx = PluginContext {
            settings: &s,
            task_id: "t",
            work_dir: dir.path(),
            user_roles: None,
            heartbeat: &hb,
        };
        let mut n = 0;
        let out = with_progress(&ctx, tokio::time::sleep(Duration::from_millis(420)), || {
            n += 1;
            format!("step {n}")
        })
        .await;
        assert_eq!(out, ());
        let seen = seen.lock().unwrap().clone();
        // Every 50 ms over 420 ms: about eight calls, allowing for a slow machine.
        assert!(seen.len() >= 4 && seen.len() <= 9, "{seen:?}");
        assert_eq!(seen[0], "step 1");
    }

    #[test]
    fn partial_files_are_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"x").unwrap();
        drop(PartialFile::new(a.clone()));
        PartialFile::new(b.clone()).keep();
        assert!(!a.exists());
        assert!(b.exists());
        // A file that never came to be is no error.
        drop(PartialFile::new(dir.path().join("never")));
    }

    #[test]
    fn every_configurable_plugin_is_implemented() {
        for name in IMPORT_PLUGINS {
            assert!(Plugin::parse(name).is_some(), "{name}");
        }
        assert_eq!(Plugin::parse("image_compression"), None);
    }
}
