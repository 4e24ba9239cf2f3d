//! Bounded `qemu-img` calls. `qemu-img info` runs under `prlimit` (2 s of
//! CPU, 1 GiB of address space, as Glance does) with `-f` forced, so qemu
//! never guesses a format; `qemu-img convert` always gets `-f`, a time limit,
//! and an output-file size limit (`RLIMIT_FSIZE`) so a small image with a
//! huge virtual size cannot fill the work directory. Any stderr output is a
//! failure, as in Glance.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

/// CPU seconds `qemu-img info` may use.
pub const INFO_CPU_SECONDS: u64 = 2;
/// Address space `qemu-img info` may map.
pub const INFO_ADDRESS_SPACE: u64 = 1 << 30;

/// What `qemu-img info` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuInfo {
    /// `format`.
    pub format: String,
    /// `virtual-size`.
    pub virtual_size: Option<u64>,
    /// `backing-filename`.
    pub backing_filename: Option<String>,
    /// `format-specific.data.data-file`.
    pub data_file: Option<String>,
    /// `format-specific.data.create-type` (VMDK).
    pub create_type: Option<String>,
}

async fn run(
    mut cmd: tokio::process::Command,
    limit: Duration,
    what: &str,
) -> Result<Vec<u8>, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{what} did not finish within {} s", limit.as_secs()))?
        .map_err(|e| format!("{what} failed: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() || !stderr.is_empty() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            if stderr.is_empty() {
                "no error output"
            } else {
                &stderr
            }
        ));
    }
    Ok(out.stdout)
}

/// Parses `qemu-img info --output=json` output.
pub fn parse_info(json: &[u8]) -> Result<QemuInfo, String> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| format!("qemu-img info returned invalid JSON: {e}"))?;
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    Ok(QemuInfo {
        format: s("/format").unwrap_or_default(),
        virtual_size: v.get("virtual-size").and_then(Value::as_u64),
        backing_filename: s("/backing-filename"),
        data_file: s("/format-specific/data/data-file"),
        create_type: s("/format-specific/data/create-type"),
    })
}

/// `qemu-img info -f <format> --output=json <path>` under resource limits,
/// then Glance's checks: qemu's format must be the one forced, no backing
/// file, no data file, VMDK create-type in `vmdk_allowed`.
pub async fn info(path: &Path, format: &str, vmdk_allowed: &[String]) -> Result<QemuInfo, String> {
    let mut cmd = tokio::process::Command::new("prlimit");
    cmd.arg(format!("--cpu={INFO_CPU_SECONDS}"))
        .arg(format!("--as={INFO_ADDRESS_SPACE}"))
        .arg("qemu-img")
        .arg("info")
        .arg("-f")
        .arg(format)
        .arg("--output=json")
        .arg(path);
    let out = run(cmd, Duration::from_secs(30), "qemu-img info").await?;
    let info = parse_info(&out)?;
    if info.format != format {
        return Err(format!(
            "qemu-img info reports format {:?}, expected {format:?}",
            info.format
        ));
    }
    if let Some(b) = &info.backing_filename {
        return Err(format!("image has a backing file ({b}); refused"));
    }
    if let Some(d) = &info.data_file {
        return Err(format!("image has an external data file ({d}); refused"));
    }
    if format == "vmdk" {
        match &info.create_type {
            Some(t) if vmdk_allowed.iter().any(|a| a == t) => {}
            other => return Err(format!("VMDK create-type {other:?} is not allowed")),
        }
    }
    Ok(info)
}

/// `qemu-img convert -f <from> -O <to> <src> <dst>`, bounded by `limit` of
/// wall time and `max_output` bytes of output file.
pub async fn convert(
    src: &Path,
    from: &str,
    dst: &Path,
    to: &str,
    limit: Duration,
    max_output: u64,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("prlimit");
    cmd.arg(format!("--fsize={}", max_output.max(1)))
        .arg("qemu-img")
        .arg("convert")
        .arg("-f")
        .arg(from)
        .arg("-O")
        .arg(to)
        .arg(src)
        .arg(dst);
    run(cmd, limit, "qemu-img convert").await.map(|_| ())
}

/// Free bytes for unprivileged users on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64, String> {
    let s =
        nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(s.blocks_available().saturating_mul(s.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_fields() {
        let j = br#"{"format":"qcow2","virtual-size":1048576,"backing-filename":"/etc/passwd",
            "format-specific":{"type":"qcow2","data":{"data-file":"/dev/sda","compat":"1.1"}}}"#;
        let i = parse_info(j).unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, Some(1048576));
        assert_eq!(i.backing_filename.as_deref(), Some("/etc/passwd"));
        assert_eq!(i.data_file.as_deref(), Some("/dev/sda"));
        assert!(parse_info(b"not json").is_err());
    }

    #[tokio::test]
    async fn info_and_convert_on_a_real_image() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("a.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&q)
            .arg("4M")
            .status()
            .unwrap();
        assert!(st.success());
        let i = info(&q, "qcow2", &[]).await.unwrap();
        assert_eq!(i.virtual_size, Some(4 << 20));
        // Forcing the wrong format is refused instead of guessed.
        assert!(info(&q, "vmdk", &[]).await.is_err());
        let raw = dir.path().join("a.raw");
        convert(&q, "qcow2", &raw, "raw", Duration::from_secs(30), 8 << 20)
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 4 << 20);
        // An output limit below the virtual size stops the conversion.
        let small = dir.path().join("b.raw");
        assert!(
            convert(&q, "qcow2", &small, "raw", Duration::from_secs(30), 1 << 20)
                .await
                .is_err()
        );
        assert!(free_space(dir.path()).unwrap() > 0);
    }
}
