//! `image_conversion`: the staged image is converted to `[image_conversion]
//! output_format` and replaces the staged file.
//!
//! Glance's steps, in its order: the format inspectors run first (so
//! `qemu-img` never sees a qcow2 with a backing or data file, an unsafe
//! VMDK, QED, or a header hidden in another format); a detected `gpt` is
//! raw; an ISO declared `iso` is left as it is; any other difference
//! between the data and `disk_format` is refused; `qemu-img info` with `-f`
//! forced, under resource limits, repeats the backing-file, data-file and
//! VMDK create-type checks and gives the virtual size; data already in the
//! target format is not converted; `qemu-img convert -f <src> -O <target>`;
//! the output is inspected again and must be in the target format; the
//! image becomes `disk_format = <target>`, `container_format = bare`.
//!
//! Beyond Glance: before converting, the work directory must have room for
//! the largest output the virtual size allows, and that output must fit
//! `image_size_cap`; `qemu-img convert` runs with a time limit and an
//! output-file size limit; progress is reported while it runs.

use std::time::Duration;

use crate::inspect::{self, Format, InspectError, PREFIX_LEN};

use super::{PartialFile, PluginContext, PluginError, State};

/// The plugin's name in `image_import_plugins`.
pub(super) const NAME: &str = "image_conversion";

/// The largest output a conversion of `virtual_size` bytes may produce:
/// raw output is the virtual size; qcow2 and VMDK add their metadata
/// (qcow2 L2 and refcount tables are about 1/6500 of the virtual size, VMDK
/// grain tables less), far below the 1/64 allowed here.
pub(crate) fn output_bound(virtual_size: u64) -> u64 {
    virtual_size
        .saturating_add(virtual_size / 64)
        .saturating_add(1 << 20)
}

/// Wall-time limit of one conversion: an hour, plus the time to write the
/// output at 50 MiB/s, so the largest images finish while a wedged
/// `qemu-img` is still stopped.
pub(crate) fn time_limit(virtual_size: u64) -> Duration {
    Duration::from_secs(3600 + virtual_size / (50 << 20))
}

/// `qemu-img -f` name of a `disk_format`.
fn qemu_format(disk_format: &str) -> &str {
    if disk_format == "vhd" {
        "vpc"
    } else {
        disk_format
    }
}

/// Runs the inspectors on the head of the data; `gpt` is reported as raw,
/// and a GPT check listed in `gpt_safety_checks_nonfatal` only warns.
fn detect(
    ctx: &PluginContext<'_>,
    image_id: &str,
    head: &[u8],
    stage: &'static str,
) -> Result<&'static str, PluginError> {
    let s = ctx.settings;
    match inspect::inspect(head, &s.vmdk_allowed_types) {
        Ok(found) if found.format == Format::Gpt => Ok("raw"),
        Ok(found) => Ok(found.format.name()),
        Err(InspectError::Unsafe {
            format: "gpt",
            check,
            reason,
        }) if s.gpt_safety_checks_nonfatal.iter().any(|c| c == check) => {
            tracing::warn!(
                image_id,
                check,
                reason,
                "GPT safety check failed; listed in gpt_safety_checks_nonfatal, so treated as raw"
            );
            Ok("raw")
        }
        Err(source) => Err(PluginError::Inspection {
            image_id: image_id.to_string(),
            stage,
            source,
        }),
    }
}

pub(super) async fn run(ctx: &PluginContext<'_>, st: &mut State) -> Result<(), PluginError> {
    let s = ctx.settings;
    let target = s.conversion_output_format.clone();
    let id = st.image_id.clone();
    let io = |action: String| {
        let image_id = id.clone();
        move |source| PluginError::Io {
            plugin: NAME,
            image_id,
            action,
            source,
        }
    };
    let Some(declared) = st.disk_format.clone() else {
        return Err(PluginError::NoDiskFormat { image_id: id });
    };

    (ctx.heartbeat)(&format!(
        "Inspecting the image before conversion to {target}"
    ));
    let head = super::read_head(&st.path, PREFIX_LEN)
        .await
        .map_err(io(format!("cannot read {}", st.path.display())))?;
    let detected = detect(ctx, &id, &head, "before conversion")?;
    drop(head);
    if detected == "iso" && declared == "iso" {
        tracing::info!(image_id = %id, "ISO images are not converted");
        return Ok(());
    }
    if detected != declared {
        return Err(PluginError::Inspection {
            image_id: id,
            stage: "before conversion",
            source: InspectError::Mismatch { declared, detected },
        });
    }

    let info = crate::qemu::info(&st.path, qemu_format(&declared), &s.vmdk_allowed_types)
        .await
        .map_err(|reason| PluginError::Qemu {
            image_id: id.clone(),
            reason,
        })?;
    let Some(virtual_size) = info.virtual_size else {
        return Err(PluginError::Qemu {
            image_id: id,
            reason: "qemu-img info reported no virtual size".to_string(),
        });
    };
    if declared == target {
        tracing::info!(image_id = %id, format = %target, "image already in the target format");
        st.virtual_size = Some(virtual_size);
        return Ok(());
    }

    // The cap is checked before the free space: a conversion bomb (a tiny
    // image with a huge virtual size) is then refused for what it is, the
    // same way on every host, not as a shortage of this host's disk.
    if virtual_size > s.image_size_cap {
        return Err(PluginError::ConversionTooLarge {
            image_id: id,
            target,
            virtual_size,
            cap: s.image_size_cap,
        });
    }
    super::ensure_dir(ctx, NAME, &id).await?;
    let bound = output_bound(virtual_size);
    let free = super::free_space(ctx, NAME, &id)?;
    if bound > free {
        return Err(PluginError::NoSpace {
            plugin: NAME,
            image_id: id,
            dir: ctx.work_dir.to_path_buf(),
            needed: bound,
            free,
        });
    }
    let max_output = bound.min(s.image_size_cap);

    let out = PartialFile::new(crate::import::work_file(
        ctx.work_dir,
        ctx.task_id,
        "converted",
    ));
    let out_path = out.path.clone();
    let converted = super::with_progress(
        ctx,
        crate::qemu::convert(
            &st.path,
            qemu_format(&declared),
            &out.path,
            qemu_format(&target),
            time_limit(virtual_size),
            max_output,
        ),
        || {
            let done = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
            format!(
                "Converting {declared} to {target}: {} of {} MiB written",
                done >> 20,
                virtual_size >> 20
            )
        },
    )
    .await;
    if let Err(reason) = converted {
        let size = std::fs::metadata(&out.path).map(|m| m.len()).unwrap_or(0);
        let reason = if size >= max_output {
            format!("{reason} (the output reached its limit of {max_output} bytes)")
        } else {
            reason
        };
        return Err(PluginError::Qemu {
            image_id: id,
            reason,
        });
    }

    // The output must be what was asked for (catches a format hidden in another).
    let head = super::read_head(&out.path, PREFIX_LEN)
        .await
        .map_err(io(format!("cannot read {}", out.path.display())))?;
    let got = detect(ctx, &id, &head, "after conversion")?;
    if got != target {
        return Err(PluginError::UnexpectedOutput {
            image_id: id,
            expected: target,
            found: got.to_string(),
        });
    }
    super::replace_staged(ctx, NAME, &id, out, &st.path).await?;
    tracing::info!(
        image_id = %id,
        from = %declared,
        to = %target,
        virtual_size,
        "converted the staged image"
    );
    (ctx.heartbeat)(&format!("Converted {declared} to {target}"));
    st.disk_format = Some(target);
    st.container_format = Some("bare".to_string());
    st.virtual_size = Some(virtual_size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_grow_with_the_virtual_size() {
        assert_eq!(output_bound(0), 1 << 20);
        assert_eq!(output_bound(64 << 20), (65 << 20) + (1 << 20));
        assert_eq!(output_bound(u64::MAX), u64::MAX);
        assert_eq!(time_limit(0), Duration::from_secs(3600));
        assert_eq!(time_limit(500 << 30), Duration::from_secs(3600 + 10240));
        assert_eq!(qemu_format("vhd"), "vpc");
        assert_eq!(qemu_format("qcow2"), "qcow2");
    }
}
