//! The import plugins on real files: archives made here with the same
//! crates a user's tools would produce (gzip, zip) or taken from a real LHA
//! archiver, disk images made with the real `qemu-img`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use imaged_config::{Daemon, LoadRequest, load};
use imaged_tasks::Settings;
use imaged_tasks::inspect::InspectError;
use imaged_tasks::plugins::{PluginContext, PluginError, PluginOutcome, StagedImage, run_plugins};

const TASK: &str = "0b5e3b7e-9a52-4d5f-8f4a-2f1c3e6d7a10";
const IMAGE: &str = "7c1f0c2e-5b7d-4a4e-9d2a-1e0f3b6c8d90";

/// `lha a one.lzh disk.img` (an LHA archiver, method -lh5-), where disk.img
/// is [`lha_content`].
const ONE_LZH: &str = "2a002d6c68352ddb00000000000100dda6096b200253a3000500005f0d0b00016469736b2e696d670000018058094000\
0ff800000000000000000000000000000002b478040240a41241a42242a43243a44244a45245a46246a47247a48248a4\
9249a4a24aa4b24ba4c24ca4d24da4e24ea4f24fa50250a51251a52252a53253a54254a55255a56256a57257a58258a5\
9259a5a25aa5b25ba5c25ca5d25da5e25ea5f25fa60260a61261a62262a63263a64264a65265a66266a67267a68268a6\
9269a6a26aa6b26ba6c26ca6d26da6e26ea6f26fa70270a71271a72272a73273a74274a75275a76276a77277a78278a7\
9279a7a27aa7b27ba7c27ca7d27da7e27ea7f27fa000";

/// `lha a two.lzh disk.img b.img`: the same member plus a second one.
const TWO_LZH: &str = "2a002d6c68352ddb00000000000100dda6096b200253a3000500005f0d0b00016469736b2e696d670000018058094000\
0ff800000000000000000000000000000002b478040240a41241a42242a43243a44244a45245a46246a47247a48248a4\
9249a4a24aa4b24ba4c24ca4d24da4e24ea4f24fa50250a51251a52252a53253a54254a55255a56256a57257a58258a5\
9259a5a25aa5b25ba5c25ca5d25da5e25ea5f25fa60260a61261a62262a63263a64264a65265a66266a67267a68268a6\
9269a6a26aa6b26ba6c26ca6d26da6e26ea6f26fa70270a71271a72272a73273a74274a75275a76276a77277a78278a7\
9279a7a27aa7b27ba7c27ca7d27da7e27ea7f27fa027002d6c68302d0e0000000e000000dda6096b2002fcec00050000\
ad26080001622e696d6700007365636f6e64206d656d6265720a00";

/// 64 KiB, each 512-byte sector filled with its number.
fn lha_content() -> Vec<u8> {
    (0..65536usize).map(|i| (i / 512) as u8).collect()
}

/// Data that compresses but is not trivially uniform.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i / 4096) ^ (i % 251)) as u8).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in members {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An empty qcow2 disk of `size` (a `qemu-img` size such as `1M`).
fn create_qcow2(path: &Path, size: &str) {
    qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), size]);
}

/// `qemu-img convert` of `src`, a `from` image, to `dst` as `to`.
fn convert(from: &str, to: &str, src: &Path, dst: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        from,
        "-O",
        to,
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
}

struct Env {
    dir: tempfile::TempDir,
    work: PathBuf,
    settings: Settings,
    messages: Mutex<Vec<String>>,
}

impl Env {
    /// Settings from a real configuration file holding `conf`.
    fn new(conf: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tasks.conf");
        std::fs::write(
            &file,
            format!("[database]\nconnection = sqlite:////var/lib/glance/glance.sqlite\n{conf}"),
        )
        .unwrap();
        let mut req = LoadRequest::new(Some(Daemon::Tasks));
        req.config_files.push(file);
        let loaded = load(&req).unwrap_or_else(|e| panic!("{e}"));
        let settings = Settings::from_config(&loaded.config).unwrap();
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        Env {
            work: dir.path().join("work"),
            dir,
            settings,
            messages: Mutex::new(Vec::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn work(&self) -> PathBuf {
        self.work.clone()
    }

    fn staged_path(&self) -> PathBuf {
        self.path("staging").join(IMAGE)
    }

    /// Stages `data` as the image's staged file.
    fn stage(&self, data: &[u8], disk: &str, container: &str) -> StagedImage {
        std::fs::write(self.staged_path(), data).unwrap();
        self.staged(disk, container)
    }

    fn staged(&self, disk: &str, container: &str) -> StagedImage {
        StagedImage {
            path: self.staged_path(),
            disk_format: Some(disk.to_string()),
            container_format: Some(container.to_string()),
            image_id: IMAGE.to_string(),
            properties: BTreeMap::from([("owner_note".to_string(), "x".to_string())]),
        }
    }

    async fn run(
        &self,
        plugins: &[&str],
        staged: StagedImage,
    ) -> Result<PluginOutcome, PluginError> {
        self.run_as(None, plugins, staged).await
    }

    async fn run_as(
        &self,
        roles: Option<&[String]>,
        plugins: &[&str],
        staged: StagedImage,
    ) -> Result<PluginOutcome, PluginError> {
        let heartbeat = |m: &str| self.messages.lock().unwrap().push(m.to_string());
        let work = self.work();
        let ctx = PluginContext {
            settings: &self.settings,
            task_id: TASK,
            work_dir: &work,
            user_roles: roles,
            heartbeat: &heartbeat,
        };
        let plugins: Vec<String> = plugins.iter().map(|p| p.to_string()).collect();
        run_plugins(&ctx, &plugins, staged).await
    }

    /// Stages `data` and runs `plugins` on it.
    async fn run_on(
        &self,
        data: &[u8],
        disk: &str,
        container: &str,
        plugins: &[&str],
    ) -> Result<PluginOutcome, PluginError> {
        let staged = self.stage(data, disk, container);
        self.run(plugins, staged).await
    }

    /// `image_conversion` on `data` staged as a bare image of `disk`.
    async fn run_conversion(&self, data: &[u8], disk: &str) -> Result<PluginOutcome, PluginError> {
        self.run_on(data, disk, "bare", &["image_conversion"]).await
    }

    /// `image_decompression` on `data` staged as a raw, bare image, which
    /// must leave `want` in its place and nothing else behind.
    async fn decompresses(&self, data: &[u8], want: &[u8]) -> PluginOutcome {
        let out = self
            .run_on(data, "raw", "bare", &["image_decompression"])
            .await
            .unwrap();
        self.assert_staged_only(want);
        out
    }

    /// `image_decompression` refuses `data` staged as a raw, bare image; a
    /// refusal must leave the staged data as it was and no partial output.
    async fn decompression_refuses(&self, data: &[u8]) -> PluginError {
        let e = self
            .run_on(data, "raw", "bare", &["image_decompression"])
            .await
            .unwrap_err();
        self.assert_staged_only(data);
        e
    }

    fn staged_data(&self) -> Vec<u8> {
        std::fs::read(self.staged_path()).unwrap()
    }

    /// Files left in the work directory and beside the staged file.
    fn leftovers(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in [self.work(), self.path("staging")] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd {
                let name = e.unwrap().file_name().to_string_lossy().to_string();
                if name != IMAGE {
                    names.push(name);
                }
            }
        }
        names
    }

    /// The staged file holds `want` (compared without printing megabytes)
    /// and nothing is left beside it or in the work directory.
    fn assert_staged_only(&self, want: &[u8]) {
        assert!(self.staged_data() == want, "staged data differs");
        assert!(self.leftovers().is_empty(), "{:?}", self.leftovers());
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

/// The outcome names the staged file, now `disk` in a `container`.
fn assert_outcome(out: &PluginOutcome, env: &Env, disk: &str, container: &str) {
    assert_eq!(out.path, env.staged_path());
    assert_eq!(out.disk_format.as_deref(), Some(disk));
    assert_eq!(out.container_format.as_deref(), Some(container));
}

fn assert_outcome_unchanged(out: &PluginOutcome, env: &Env, disk: &str, container: &str) {
    assert_outcome(out, env, disk, container);
    assert!(out.set_properties.is_empty());
}

/// The archive kind and member count of a multi-member refusal.
fn multi_member(e: &PluginError) -> (&'static str, usize) {
    match e {
        PluginError::MultiMember {
            archive, members, ..
        } => (archive, *members),
        other => panic!("unexpected error: {other}"),
    }
}

/// The format detected in data refused as not its declared `disk_format`.
fn mismatch_detected(e: &PluginError) -> &'static str {
    match e {
        PluginError::Inspection {
            source: InspectError::Mismatch { detected, .. },
            ..
        } => detected,
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn gzip_is_decompressed_in_place() {
    let env = Env::new("");
    let data = pattern(3 << 20);
    let out = env.decompresses(&gzip(&data), &data).await;
    assert_outcome_unchanged(&out, &env, "raw", "bare");
    assert_eq!(out.virtual_size, None);
    let m = env.messages();
    assert_eq!(m[0], "Running import plugin image_decompression");
    assert!(
        m.iter()
            .any(|m| m == &format!("Decompressed gzip data: {} bytes", data.len())),
        "{m:?}"
    );
}

#[tokio::test]
async fn single_member_zip_is_decompressed() {
    let env = Env::new("");
    let data = pattern(1 << 20);
    env.decompresses(&zip(&[("disk.img", &data)]), &data).await;
}

#[tokio::test]
async fn single_member_lha_is_decompressed() {
    let env = Env::new("");
    env.decompresses(&hex::decode(ONE_LZH).unwrap(), &lha_content())
        .await;
}

#[tokio::test]
async fn gzip_bomb_is_refused_at_the_cap_and_leaves_nothing() {
    // 64 MiB of zeros compress to about 64 KiB; the cap is 1 MiB.
    let env = Env::new("[DEFAULT]\nimage_size_cap = 1048576\n");
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 128 << 10);
    let e = env.decompression_refuses(&bomb).await;
    match &e {
        PluginError::ArchiveTooLarge {
            image_id,
            archive,
            limit_name,
            limit,
            written,
        } => {
            assert_eq!(image_id, IMAGE);
            assert_eq!(*archive, "gzip");
            assert_eq!(limit_name, "image_size_cap");
            assert_eq!(*limit, 1 << 20);
            assert!(*written <= 1 << 20, "wrote {written} bytes past the cap");
        }
        other => panic!("unexpected error: {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("image_decompression: image {IMAGE}:")),
        "{msg}"
    );
    assert!(msg.contains("image_size_cap (1048576 bytes)"), "{msg}");
    assert_eq!(e.plugin(), "image_decompression");
}

#[tokio::test]
async fn lha_past_the_cap_is_refused() {
    let env = Env::new("[DEFAULT]\nimage_size_cap = 32768\n");
    let lzh = hex::decode(ONE_LZH).unwrap();
    let e = env
        .run_on(&lzh, "raw", "bare", &["image_decompression"])
        .await
        .unwrap_err();
    assert!(
        matches!(e, PluginError::ArchiveTooLarge { archive: "lha", limit: 32768, written, .. } if written <= 32768),
        "{e}"
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[tokio::test]
async fn multi_member_archives_are_refused() {
    let env = Env::new("");
    let two = zip(&[("a.img", b"first"), ("b.img", b"second")]);
    let e = env.decompression_refuses(&two).await;
    assert_eq!(multi_member(&e), ("zip", 2));
    assert!(e.to_string().contains("holds 2 members"), "{e}");

    let e = env
        .decompression_refuses(&hex::decode(TWO_LZH).unwrap())
        .await;
    assert_eq!(multi_member(&e), ("lha", 2));
}

#[tokio::test]
async fn corrupt_gzip_is_refused_without_leftovers() {
    let env = Env::new("");
    let mut bad = gzip(&pattern(1 << 20));
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let e = env.decompression_refuses(&bad).await;
    assert!(
        matches!(e, PluginError::BadArchive { archive, .. } if archive == "gzip"),
        "{e}"
    );
}

#[tokio::test]
async fn compressed_container_and_plain_data_pass_unchanged() {
    let env = Env::new("");
    let cases: [(_, _, &[&str]); 2] = [
        // container_format = compressed: the user wants the archive kept.
        (gzip(&pattern(4096)), "compressed", &["image_decompression"]),
        (pattern(8192), "bare", &["image_decompression", "no_op"]),
    ];
    for (data, container, plugins) in cases {
        let out = env.run_on(&data, "raw", container, plugins).await.unwrap();
        assert_outcome_unchanged(&out, &env, "raw", container);
        assert!(env.staged_data() == data);
    }
    assert!(!env.work().exists(), "nothing to write, no work dir needed");
}

/// A raw disk with recognisable content, and the same disk as qcow2.
fn raw_and_qcow2(env: &Env, size: usize) -> (Vec<u8>, Vec<u8>) {
    let raw = pattern(size);
    let raw_path = env.path("src.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let q = env.path("src.qcow2");
    convert("raw", "qcow2", &raw_path, &q);
    (raw, std::fs::read(q).unwrap())
}

#[tokio::test]
async fn qcow2_is_converted_to_raw_with_its_virtual_size() {
    let env = Env::new("");
    let (raw, qcow2) = raw_and_qcow2(&env, 4 << 20);
    let out = env.run_conversion(&qcow2, "qcow2").await.unwrap();
    assert_outcome(&out, &env, "raw", "bare");
    assert_eq!(out.virtual_size, Some(4 << 20));
    env.assert_staged_only(&raw);
    let m = env.messages();
    assert!(m.iter().any(|m| m == "Converted qcow2 to raw"), "{m:?}");
}

#[tokio::test]
async fn raw_is_converted_to_qcow2_when_configured() {
    let env = Env::new("[image_conversion]\noutput_format = qcow2\n");
    let raw = pattern(2 << 20);
    let out = env
        .run_on(&raw, "raw", "ovf", &["image_conversion"])
        .await
        .unwrap();
    assert_eq!(out.disk_format.as_deref(), Some("qcow2"));
    assert_eq!(out.container_format.as_deref(), Some("bare"));
    assert_eq!(out.virtual_size, Some(2 << 20));
    assert!(env.staged_data().starts_with(b"QFI\xfb"));
    // Back to raw with qemu-img: the same disk.
    let back = env.path("back.raw");
    convert("qcow2", "raw", &env.staged_path(), &back);
    assert!(std::fs::read(back).unwrap() == raw);
}

#[tokio::test]
async fn data_already_in_the_target_format_is_not_converted() {
    let env = Env::new("");
    let raw = pattern(1 << 20);
    let out = env.run_conversion(&raw, "raw").await.unwrap();
    assert_outcome_unchanged(&out, &env, "raw", "bare");
    assert_eq!(out.virtual_size, Some(1 << 20));
    assert!(env.staged_data() == raw);
    assert!(!env.work().exists());
}

#[tokio::test]
async fn qcow2_with_a_backing_file_is_refused_before_conversion() {
    let env = Env::new("");
    let base = env.path("base.qcow2");
    let top = env.path("top.qcow2");
    create_qcow2(&base, "1M");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    let data = std::fs::read(&top).unwrap();
    let e = env.run_conversion(&data, "qcow2").await.unwrap_err();
    match &e {
        PluginError::Inspection {
            image_id,
            stage,
            source: InspectError::Unsafe { check, .. },
        } => {
            assert_eq!(image_id, IMAGE);
            assert_eq!(*stage, "before conversion");
            assert_eq!(*check, "backing_file");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(e.plugin(), "image_conversion");
    assert!(env.staged_data() == data);
    assert!(
        !env.work().exists(),
        "nothing may be written for an unsafe image"
    );
}

#[tokio::test]
async fn data_that_is_not_its_disk_format_is_refused() {
    let env = Env::new("");
    let (_, qcow2) = raw_and_qcow2(&env, 1 << 20);
    let e = env.run_conversion(&qcow2, "vmdk").await.unwrap_err();
    assert_eq!(mismatch_detected(&e), "qcow2");
}

#[tokio::test]
async fn conversion_needing_more_than_the_free_space_is_refused() {
    // A small qcow2 whose raw form (64 TiB) cannot fit on this disk.
    let env = Env::new("[DEFAULT]\nimage_size_cap = 9223372036854775807\n");
    let q = env.path("huge.qcow2");
    create_qcow2(&q, "64T");
    let data = std::fs::read(&q).unwrap();
    assert!(data.len() < 4 << 20);
    let e = env.run_conversion(&data, "qcow2").await.unwrap_err();
    match &e {
        PluginError::NoSpace {
            plugin,
            dir,
            needed,
            free,
            ..
        } => {
            assert_eq!(*plugin, "image_conversion");
            assert_eq!(dir, &env.work());
            assert!(*needed >= 64 << 40);
            assert!(free < needed);
        }
        other => panic!("unexpected error: {other}"),
    }
    env.assert_staged_only(&data);
}

#[tokio::test]
async fn conversion_past_the_size_cap_is_refused() {
    let env = Env::new("[DEFAULT]\nimage_size_cap = 8388608\n");
    let q = env.path("16m.qcow2");
    create_qcow2(&q, "16M");
    let e = env
        .run_conversion(&std::fs::read(&q).unwrap(), "qcow2")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PluginError::ConversionTooLarge {
                virtual_size: 16777216,
                cap: 8388608,
                ..
            }
        ),
        "{e}"
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[tokio::test]
async fn inject_sets_properties_but_never_os_glance_ones() {
    let mut env = Env::new("[inject_metadata_properties]\ninject = hw_vif_model:virtio,site:lab\n");
    // The loader refuses os_glance keys; one arriving anyway is skipped.
    env.settings
        .inject_properties
        .push(("os_glance_import_task".into(), "forged".into()));
    let out = env
        .run_on(b"data", "raw", "bare", &["inject_image_metadata"])
        .await
        .unwrap();
    assert_eq!(
        out.set_properties,
        BTreeMap::from([
            ("hw_vif_model".to_string(), "virtio".to_string()),
            ("site".to_string(), "lab".to_string()),
        ])
    );

    // A user known to hold an ignored role gets nothing; other roles do.
    let admin = ["member".to_string(), "admin".to_string()];
    let member = ["member".to_string()];
    for (roles, injected) in [(&admin[..], 0), (&member[..], 2)] {
        let staged = env.staged("raw", "bare");
        let out = env
            .run_as(Some(roles), &["inject_image_metadata"], staged)
            .await
            .unwrap();
        assert_eq!(out.set_properties.len(), injected, "{roles:?}");
    }
    assert!(env.staged_data() == b"data");
}

#[tokio::test]
async fn plugins_run_in_the_configured_order() {
    let env = Env::new("");
    let (raw, qcow2) = raw_and_qcow2(&env, 2 << 20);
    let packed = gzip(&qcow2);

    // Decompress, then convert: the gzip'd qcow2 ends as the raw disk.
    let all = [
        "image_decompression",
        "image_conversion",
        "inject_image_metadata",
    ];
    let out = env.run_on(&packed, "qcow2", "bare", &all).await.unwrap();
    assert_eq!(out.disk_format.as_deref(), Some("raw"));
    assert_eq!(out.virtual_size, Some(2 << 20));
    assert!(env.staged_data() == raw);
    let started: Vec<String> = env
        .messages()
        .into_iter()
        .filter(|m| m.starts_with("Running import plugin "))
        .collect();
    assert_eq!(
        started,
        [
            "Running import plugin image_decompression",
            "Running import plugin image_conversion",
            "Running import plugin inject_image_metadata",
        ]
    );

    // The other way round, conversion sees gzip data declared qcow2.
    let e = env
        .run_on(
            &packed,
            "qcow2",
            "bare",
            &["image_conversion", "image_decompression"],
        )
        .await
        .unwrap_err();
    assert_eq!(mismatch_detected(&e), "raw");
    assert!(env.staged_data() == packed);
}

#[tokio::test]
async fn an_unknown_plugin_fails_before_any_plugin_runs() {
    let env = Env::new("");
    let gz = gzip(&pattern(4096));
    let e = env
        .run_on(
            &gz,
            "raw",
            "bare",
            &["image_decompression", "image_compression"],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PluginError::UnknownPlugin { plugin, image_id, .. }
            if plugin == "image_compression" && image_id == IMAGE),
        "{e}"
    );
    assert_eq!(e.plugin(), "image_compression");
    assert!(
        e.to_string()
            .contains("image_decompression, image_conversion"),
        "{e}"
    );
    // Not even the valid plugin before it ran.
    assert!(env.staged_data() == gz);
    assert!(env.messages().is_empty());
}

#[tokio::test]
async fn output_on_another_file_system_is_copied_beside_the_staged_file() {
    // /dev/shm is a tmpfs, the staging directory is not: no rename between them.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut env = Env::new("");
    env.work = shm.path().join("work");
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    assert_ne!(
        dev(shm.path()),
        dev(&env.path("staging")),
        "the test needs /dev/shm on its own file system"
    );
    let data = pattern(2 << 20);
    env.decompresses(&gzip(&data), &data).await;
}

#[tokio::test]
async fn a_cancelled_decompression_leaves_nothing() {
    let env = Env::new("");
    let packed = gzip(&vec![0u8; 256 << 20]);
    let staged = env.stage(&packed, "raw", "bare");
    // Dropping the future is how the executor abandons a task.
    let r = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        env.run(&["image_decompression"], staged),
    )
    .await;
    assert!(r.is_err(), "decompressing 256 MiB should outlast 20 ms");
    assert!(env.work().exists(), "decompression had started");
    // The worker notices at its next block and removes its output.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !env.leftovers().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    env.assert_staged_only(&packed);
}
