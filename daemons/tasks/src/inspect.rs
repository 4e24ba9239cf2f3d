//! Disk-format detection and safety checks, run on the first bytes of an
//! image before any of it reaches a store or `qemu-img`.
//!
//! Every inspector looks at the same prefix ([`PREFIX_LEN`] bytes, enough for
//! every header and descriptor the checks need). The checks answer the
//! advisories in the import reference:
//!
//! * CVE-2022-47951 (OSSA-2023-002): VMDK descriptors that name host files —
//!   only the allowed `createType`s (default `monolithicSparse`,
//!   `streamOptimized`), extent lines without `/`, descriptor bounded to
//!   1 MiB; a bare text descriptor is refused outright;
//! * CVE-2024-32498 (OSSA-2024-001): qcow2 with a backing file or an
//!   external data file, unknown incompatible features or versions, QED;
//! * a header hidden inside another format: more than one match fails,
//!   except ISO + GPT (hybrid ISOs), which counts as ISO.

/// Bytes of the image the inspectors read.
pub const PREFIX_LEN: usize = 2 * 1024 * 1024;

/// Largest VMDK descriptor accepted (oslo.utils' bound).
const VMDK_DESCRIPTOR_MAX: u64 = 1024 * 1024 - 1;

/// Highest qcow2 incompatible-feature bit known (4 = extended L2 entries).
const QCOW2_MAX_FEATURE_BIT: u32 = 4;
/// The qcow2 incompatible-feature bit of an external data file.
const QCOW2_DATA_FILE_BIT: u32 = 2;

/// A detectable disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Anything else.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// QEMU enhanced disk (always refused).
    Qed,
    /// Microsoft VHD.
    Vhd,
    /// Microsoft VHDX.
    Vhdx,
    /// VMware VMDK.
    Vmdk,
    /// VirtualBox VDI.
    Vdi,
    /// ISO 9660 / UDF.
    Iso,
    /// A disk with an MBR / GPT partition table (treated as raw).
    Gpt,
    /// LUKS encrypted container.
    Luks,
}

impl Format {
    /// The `disk_format` name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qed => "qed",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vmdk => "vmdk",
            Format::Vdi => "vdi",
            Format::Iso => "iso",
            Format::Gpt => "gpt",
            Format::Luks => "luks",
        }
    }

    /// The `qemu-img -f` name of a detected format (gpt is raw to qemu).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Format::Gpt | Format::Iso => "raw",
            Format::Vhd => "vpc",
            other => other.name(),
        }
    }
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// Headers of several formats were found.
    #[error("multiple formats detected ({0}): possibly a header hidden in another format")]
    MultipleFormats(String),
    /// A safety check failed.
    #[error("image failed safety checks: {format}: {check}: {reason}")]
    Unsafe {
        /// Detected format.
        format: &'static str,
        /// Check name (`backing_file`, `data_file`, `descriptor`, …).
        check: &'static str,
        /// What was found.
        reason: String,
    },
    /// The data does not match `disk_format`.
    #[error("image format mismatch: disk_format is {declared} but the data is {detected}")]
    Mismatch {
        /// `disk_format` of the image.
        declared: String,
        /// Detected format.
        detected: &'static str,
    },
}

/// What the inspectors found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The format (gpt already folded into raw where appropriate is left to
    /// the caller; this is the raw detection).
    pub format: Format,
    /// Virtual size in bytes, when the header says.
    pub virtual_size: Option<u64>,
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}
fn be64(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}
fn le32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn le64(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

fn unsafe_(format: Format, check: &'static str, reason: impl Into<String>) -> InspectError {
    InspectError::Unsafe {
        format: format.name(),
        check,
        reason: reason.into(),
    }
}

fn is_qcow2(b: &[u8]) -> bool {
    b.starts_with(b"QFI\xfb")
}

fn check_qcow2(b: &[u8]) -> Result<Option<u64>, InspectError> {
    let f = Format::Qcow2;
    let version = be32(b, 4).ok_or_else(|| unsafe_(f, "header", "truncated header"))?;
    if version != 2 && version != 3 {
        return Err(unsafe_(
            f,
            "unknown_features",
            format!("unsupported version {version}"),
        ));
    }
    let backing = be64(b, 8).ok_or_else(|| unsafe_(f, "header", "truncated header"))?;
    if backing != 0 {
        return Err(unsafe_(f, "backing_file", "the image names a backing file"));
    }
    if version == 3 {
        let features = be64(b, 72).ok_or_else(|| unsafe_(f, "header", "truncated header"))?;
        if features & (1 << QCOW2_DATA_FILE_BIT) != 0 {
            return Err(unsafe_(
                f,
                "data_file",
                "the image uses an external data file",
            ));
        }
        if features >> (QCOW2_MAX_FEATURE_BIT + 1) != 0 {
            return Err(unsafe_(
                f,
                "unknown_features",
                format!("unknown incompatible feature bits {features:#x}"),
            ));
        }
    }
    Ok(be64(b, 24))
}

fn is_vmdk(b: &[u8]) -> bool {
    b.starts_with(b"KDMV")
}

/// A text VMDK descriptor (the "flat" layouts): qemu would open the files
/// its extents name.
fn is_vmdk_text_descriptor(b: &[u8]) -> bool {
    let head = &b[..b.len().min(1024)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    text.trim_start().starts_with("# disk descriptorfile")
        || (text.contains("createtype") && text.contains("extent description"))
}

fn check_vmdk(b: &[u8], allowed: &[String]) -> Result<Option<u64>, InspectError> {
    let f = Format::Vmdk;
    let capacity = le64(b, 12).ok_or_else(|| unsafe_(f, "header", "truncated header"))?;
    let desc_sector = le64(b, 28).ok_or_else(|| unsafe_(f, "header", "truncated header"))?;
    let desc_sectors = le64(b, 36).ok_or_else(|| unsafe_(f, "header", "truncated header"))?;
    if desc_sector == 0 {
        return Err(unsafe_(f, "descriptor", "no embedded descriptor"));
    }
    let start = desc_sector.saturating_mul(512);
    let len = desc_sectors.saturating_mul(512);
    if len > VMDK_DESCRIPTOR_MAX || start > VMDK_DESCRIPTOR_MAX + 512 {
        return Err(unsafe_(
            f,
            "descriptor",
            format!("descriptor at {start} of {len} bytes is out of bounds"),
        ));
    }
    let (start, len) = (start as usize, len as usize);
    let raw = b
        .get(start..(start + len).min(b.len()))
        .ok_or_else(|| unsafe_(f, "descriptor", "descriptor beyond the data"))?;
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    check_vmdk_descriptor(&text, allowed)?;
    Ok(Some(capacity.saturating_mul(512)))
}

/// The descriptor rules of oslo.utils' VMDK inspector.
pub fn check_vmdk_descriptor(text: &str, allowed: &[String]) -> Result<(), InspectError> {
    let f = Format::Vmdk;
    let mut create_type: Option<String> = None;
    let mut extents = 0usize;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("ddb.") {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            if line.contains('/') {
                return Err(unsafe_(
                    f,
                    "descriptor",
                    format!("extent names a path: {line:?}"),
                ));
            }
            extents += 1;
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == "createType" {
                create_type = Some(v.trim().trim_matches('"').to_string());
            }
            continue;
        }
        return Err(unsafe_(
            f,
            "descriptor",
            format!("unexpected descriptor line {line:?}"),
        ));
    }
    let ct = create_type.ok_or_else(|| unsafe_(f, "descriptor", "no createType"))?;
    if !allowed.iter().any(|a| a == &ct) {
        return Err(unsafe_(
            f,
            "descriptor",
            format!("unsupported subformat {ct:?}"),
        ));
    }
    if extents == 0 {
        return Err(unsafe_(f, "descriptor", "no extents"));
    }
    Ok(())
}

fn is_vhd(b: &[u8]) -> bool {
    b.starts_with(b"conectix")
}
fn is_vhdx(b: &[u8]) -> bool {
    b.starts_with(b"vhdxfile")
}
fn is_vdi(b: &[u8]) -> bool {
    le32(b, 0x40) == Some(0xbeda_107f)
}
fn is_qed(b: &[u8]) -> bool {
    b.starts_with(b"QED\0")
}
fn is_luks(b: &[u8]) -> bool {
    b.starts_with(b"LUKS\xba\xbe")
}
fn is_iso(b: &[u8]) -> bool {
    // Volume descriptors start at sector 16 (32 KiB); scan a few of them.
    (0..8).any(|i| {
        let off = 32768 + i * 2048 + 1;
        matches!(b.get(off..off + 5), Some(s) if s == b"CD001" || s == b"NSR02" || s == b"NSR03" || s == b"BEA01")
    })
}
fn is_gpt(b: &[u8]) -> bool {
    if b.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return false;
    }
    // A FAT volume boot record also ends in 0x55AA; it is not a partition table.
    let fat = b.get(54..57) == Some(&b"FAT"[..]) || b.get(82..87) == Some(&b"FAT32"[..]);
    !fat
}

fn check_gpt_mbr(b: &[u8]) -> Result<(), InspectError> {
    let f = Format::Gpt;
    let mut used = 0;
    let mut protective = false;
    for i in 0..4 {
        let e = &b[446 + i * 16..446 + (i + 1) * 16];
        if e[0] != 0 && e[0] != 0x80 {
            return Err(unsafe_(
                f,
                "mbr",
                format!("partition {i} has invalid boot flag {:#x}", e[0]),
            ));
        }
        if e[4] == 0 {
            continue;
        }
        used += 1;
        if e[4] == 0xee {
            protective = true;
            let lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
            if lba != 1 || e[1] != 0 || e[2] != 2 || e[3] != 0 {
                return Err(unsafe_(
                    f,
                    "mbr",
                    "protective partition does not start at LBA 1 (CHS 0/2/0)",
                ));
            }
        }
    }
    if used == 0 {
        return Err(unsafe_(f, "mbr", "no partitions"));
    }
    if protective && used != 1 {
        return Err(unsafe_(
            f,
            "mbr",
            "a protective partition must be the only one",
        ));
    }
    Ok(())
}

/// Detects the format of `prefix` (the first [`PREFIX_LEN`] bytes, or the
/// whole image when shorter) and runs its safety checks.
pub fn inspect(prefix: &[u8], vmdk_allowed_types: &[String]) -> Result<Inspection, InspectError> {
    let mut matches: Vec<Format> = Vec::new();
    for (f, hit) in [
        (Format::Qcow2, is_qcow2(prefix)),
        (Format::Qed, is_qed(prefix)),
        (Format::Vhd, is_vhd(prefix)),
        (Format::Vhdx, is_vhdx(prefix)),
        (
            Format::Vmdk,
            is_vmdk(prefix) || is_vmdk_text_descriptor(prefix),
        ),
        (Format::Vdi, is_vdi(prefix)),
        (Format::Iso, is_iso(prefix)),
        (Format::Gpt, is_gpt(prefix)),
        (Format::Luks, is_luks(prefix)),
    ] {
        if hit {
            matches.push(f);
        }
    }
    let format = match matches.as_slice() {
        [] => Format::Raw,
        [one] => *one,
        [Format::Iso, Format::Gpt] => Format::Iso,
        many => {
            return Err(InspectError::MultipleFormats(
                many.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
            ));
        }
    };
    let virtual_size = match format {
        Format::Raw | Format::Gpt | Format::Iso => None,
        Format::Qcow2 => check_qcow2(prefix)?,
        Format::Qed => {
            return Err(unsafe_(format, "format", "this file format is not allowed"));
        }
        Format::Vmdk if !is_vmdk(prefix) => {
            return Err(unsafe_(
                format,
                "descriptor",
                "a text descriptor refers to external extent files",
            ));
        }
        Format::Vmdk => check_vmdk(prefix, vmdk_allowed_types)?,
        Format::Vhd => be64(prefix, 48),
        Format::Vdi => le64(prefix, 0x170),
        Format::Vhdx => None,
        Format::Luks => {
            let version = prefix.get(6..8).map(|s| u16::from_be_bytes([s[0], s[1]]));
            if version != Some(1) {
                return Err(unsafe_(
                    format,
                    "version",
                    format!("unsupported LUKS version {version:?}"),
                ));
            }
            None
        }
    };
    if format == Format::Gpt {
        check_gpt_mbr(prefix)?;
    }
    Ok(Inspection {
        format,
        virtual_size,
    })
}

/// The `disk_format`s the inspectors can recognise.
const INSPECTABLE: &[&str] = &[
    "raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi", "iso", "luks", "qed",
];

/// The `images.virtual_size` Glance records for data of `actual` bytes
/// found to be `found` under `declared`: the header's virtual size when the
/// detected format is the declared one; the byte size for raw (or
/// partitioned) data and for anything declared `raw` (Glance then ignores the
/// richer header, as qemu will be told `-f raw`); nothing for a mismatch let
/// through by `require_image_format_match = false`.
pub fn recorded_virtual_size(found: &Inspection, declared: &str, actual: u64) -> Option<u64> {
    match found.format {
        Format::Raw | Format::Gpt => Some(actual),
        _ if declared == "raw" => Some(actual),
        f if f.name() == declared => found.virtual_size,
        _ => None,
    }
}

/// Glance's verdict on detected vs declared format: ok, or a mismatch.
/// `gpt` counts as raw; raw data under a format the inspectors cannot
/// recognise (ami, ari, aki, ploop) is accepted; raw declared over richer
/// data only warns, because qemu is always told `-f raw` for it.
pub fn check_declared(detected: Format, declared: &str) -> Result<(), InspectError> {
    let detected = if detected == Format::Gpt {
        Format::Raw
    } else {
        detected
    };
    if detected.name() == declared {
        return Ok(());
    }
    if detected == Format::Raw && !INSPECTABLE.contains(&declared) {
        return Ok(());
    }
    if declared == "raw" {
        tracing::warn!(
            detected = detected.name(),
            "image declared raw contains a richer format; treating it as raw"
        );
        return Ok(());
    }
    Err(InspectError::Mismatch {
        declared: declared.to_string(),
        detected: detected.name(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["streamOptimized".into(), "monolithicSparse".into()]
    }

    fn qcow2(version: u32, backing: u64, features: u64) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&version.to_be_bytes());
        b[8..16].copy_from_slice(&backing.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[72..80].copy_from_slice(&features.to_be_bytes());
        b
    }

    fn vmdk(descriptor: &str) -> Vec<u8> {
        let mut b = vec![0u8; 512 + 4096];
        b[..4].copy_from_slice(b"KDMV");
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[12..20].copy_from_slice(&2048u64.to_le_bytes());
        b[28..36].copy_from_slice(&1u64.to_le_bytes());
        b[36..44].copy_from_slice(&8u64.to_le_bytes());
        b[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
        b
    }

    #[test]
    fn plain_qcow2_is_accepted_with_virtual_size() {
        let i = inspect(&qcow2(3, 0, 0), &allowed()).unwrap();
        assert_eq!(i.format, Format::Qcow2);
        assert_eq!(i.virtual_size, Some(1 << 30));
        assert!(inspect(&qcow2(2, 0, 0), &allowed()).is_ok());
    }

    #[test]
    fn cve_2024_32498_qcow2_backing_file_refused() {
        let e = inspect(&qcow2(3, 512, 0), &allowed()).unwrap_err();
        assert!(
            matches!(
                e,
                InspectError::Unsafe {
                    check: "backing_file",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn cve_2024_32498_qcow2_data_file_refused() {
        let e = inspect(&qcow2(3, 0, 1 << 2), &allowed()).unwrap_err();
        assert!(
            matches!(
                e,
                InspectError::Unsafe {
                    check: "data_file",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn qcow2_unknown_features_and_versions_refused() {
        let e = inspect(&qcow2(3, 0, 1 << 9), &allowed()).unwrap_err();
        assert!(
            matches!(
                e,
                InspectError::Unsafe {
                    check: "unknown_features",
                    ..
                }
            ),
            "{e}"
        );
        let e = inspect(&qcow2(1, 0, 0), &allowed()).unwrap_err();
        assert!(
            matches!(
                e,
                InspectError::Unsafe {
                    check: "unknown_features",
                    ..
                }
            ),
            "{e}"
        );
        // dirty + corrupt + compression + extended L2 are known bits.
        assert!(inspect(&qcow2(3, 0, 0b11011), &allowed()).is_ok());
    }

    #[test]
    fn qed_always_refused() {
        let mut b = vec![0u8; 1024];
        b[..4].copy_from_slice(b"QED\0");
        assert!(matches!(
            inspect(&b, &allowed()),
            Err(InspectError::Unsafe { format: "qed", .. })
        ));
    }

    #[test]
    fn cve_2022_47951_vmdk_create_types_and_extents() {
        let ok = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\nRW 2048 SPARSE \"disk.vmdk\"\n\nddb.virtualHWVersion = \"4\"\n";
        let i = inspect(&vmdk(ok), &allowed()).unwrap();
        assert_eq!(i.format, Format::Vmdk);
        assert_eq!(i.virtual_size, Some(2048 * 512));

        let flat = ok.replace("monolithicSparse", "monolithicFlat");
        let e = inspect(&vmdk(&flat), &allowed()).unwrap_err();
        assert!(e.to_string().contains("unsupported subformat"), "{e}");

        let path = ok.replace("\"disk.vmdk\"", "\"/etc/shadow\"");
        let e = inspect(&vmdk(&path), &allowed()).unwrap_err();
        assert!(e.to_string().contains("extent names a path"), "{e}");

        // An empty allow-list refuses every VMDK.
        assert!(inspect(&vmdk(ok), &[]).is_err());

        let none = "createType=\"monolithicSparse\"\n";
        assert!(
            inspect(&vmdk(none), &allowed())
                .unwrap_err()
                .to_string()
                .contains("no extents")
        );
    }

    #[test]
    fn vmdk_text_descriptor_refused() {
        let text = b"# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 1048576 FLAT \"/etc/passwd\" 0\n";
        let e = inspect(text, &allowed()).unwrap_err();
        assert!(
            matches!(e, InspectError::Unsafe { format: "vmdk", .. }),
            "{e}"
        );
    }

    #[test]
    fn vmdk_descriptor_out_of_bounds_refused() {
        let mut b = vmdk("createType=\"monolithicSparse\"\nRW 1 SPARSE \"x\"\n");
        b[36..44].copy_from_slice(&4096u64.to_le_bytes());
        assert!(
            inspect(&b, &allowed())
                .unwrap_err()
                .to_string()
                .contains("out of bounds")
        );
    }

    #[test]
    fn hidden_header_is_multiple_formats() {
        // A qcow2 header with an ISO volume descriptor planted at 32 KiB.
        let mut b = qcow2(3, 0, 0);
        b.resize(40000, 0);
        b[32769..32774].copy_from_slice(b"CD001");
        assert!(matches!(
            inspect(&b, &allowed()),
            Err(InspectError::MultipleFormats(_))
        ));
    }

    #[test]
    fn iso_with_gpt_is_iso_and_gpt_checks_mbr() {
        let mut b = vec![0u8; 40000];
        b[32769..32774].copy_from_slice(b"CD001");
        b[510] = 0x55;
        b[511] = 0xaa;
        b[446 + 4] = 0x83;
        assert_eq!(inspect(&b, &allowed()).unwrap().format, Format::Iso);

        let mut g = vec![0u8; 1024];
        g[510] = 0x55;
        g[511] = 0xaa;
        g[446 + 4] = 0xee;
        g[446 + 2] = 2;
        g[446 + 8] = 1;
        assert_eq!(inspect(&g, &allowed()).unwrap().format, Format::Gpt);
        g[446] = 0x12;
        assert!(
            inspect(&g, &allowed())
                .unwrap_err()
                .to_string()
                .contains("boot flag")
        );
    }

    #[test]
    fn raw_and_other_formats() {
        assert_eq!(
            inspect(&[7u8; 8192], &allowed()).unwrap().format,
            Format::Raw
        );
        let mut vdi = vec![0u8; 1024];
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        vdi[0x170..0x178].copy_from_slice(&4096u64.to_le_bytes());
        let i = inspect(&vdi, &allowed()).unwrap();
        assert_eq!((i.format, i.virtual_size), (Format::Vdi, Some(4096)));
        let mut luks = vec![0u8; 1024];
        luks[..6].copy_from_slice(b"LUKS\xba\xbe");
        luks[7] = 2;
        assert!(inspect(&luks, &allowed()).is_err());
        luks[7] = 1;
        assert_eq!(inspect(&luks, &allowed()).unwrap().format, Format::Luks);
    }

    #[test]
    fn declared_format_rules() {
        assert!(check_declared(Format::Qcow2, "qcow2").is_ok());
        assert!(check_declared(Format::Gpt, "raw").is_ok());
        assert!(check_declared(Format::Raw, "ami").is_ok());
        assert!(check_declared(Format::Qcow2, "raw").is_ok());
        assert!(matches!(
            check_declared(Format::Raw, "qcow2"),
            Err(InspectError::Mismatch { .. })
        ));
        assert!(matches!(
            check_declared(Format::Vmdk, "qcow2"),
            Err(InspectError::Mismatch { .. })
        ));
    }

    #[test]
    fn recorded_virtual_size_follows_glance() {
        // (detected, header's virtual size, declared, data size, recorded)
        let cases = [
            // Raw and partitioned data: the byte size under any accepted declaration.
            (Format::Raw, None, "raw", 17, Some(17)),
            (Format::Gpt, None, "raw", 17, Some(17)),
            (Format::Raw, None, "ami", 17, Some(17)),
            (Format::Raw, None, "raw", 0, Some(0)),
            // A recognised format declared as such: the header's size.
            (
                Format::Qcow2,
                Some(8 << 20),
                "qcow2",
                200_000,
                Some(8 << 20),
            ),
            (Format::Vdi, Some(4096), "vdi", 1024, Some(4096)),
            (Format::Vhdx, None, "vhdx", 1024, None),
            // Declared raw over a richer header: the header is ignored.
            (Format::Qcow2, Some(8 << 20), "raw", 200_000, Some(200_000)),
            // A mismatch let through by require_image_format_match = false.
            (Format::Vmdk, Some(4096), "qcow2", 1024, None),
        ];
        for (format, virtual_size, declared, actual, want) in cases {
            let found = Inspection {
                format,
                virtual_size,
            };
            assert_eq!(
                recorded_virtual_size(&found, declared, actual),
                want,
                "{format:?} declared {declared}"
            );
        }
    }
}
