//! The import plugin options: `[image_import_opts] image_import_plugins`
//! names only plugins the task executor has, and `[inject_metadata_properties]
//! inject` never names a reserved `os_glance*` property.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use imaged_config::{
    ConfigErrors, Daemon, Diagnostic, IMPORT_PLUGINS, LoadRequest, Loaded, Origin, load,
};

const DB: &str = "[database]\nconnection = sqlite:////var/lib/glance/glance.sqlite\n";

/// A configuration file holding the `[database]` section, then `body`; the
/// directory must outlive the file.
fn write(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("glance-image-import.conf");
    std::fs::write(&p, format!("{DB}{body}")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    (dir, p)
}

fn load_for(daemon: Daemon, file: &Path) -> Result<Loaded, ConfigErrors> {
    let mut r = LoadRequest::new(Some(daemon));
    r.config_files.push(file.to_path_buf());
    load(&r)
}

/// The one error loading `file` for the task executor reports, which must
/// point at `line` of the file and name `value`.
fn only_error(file: &Path, line: usize, value: &str) -> Diagnostic {
    let errs = match load_for(Daemon::Tasks, file) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors,
    };
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let d = errs.into_iter().next().unwrap();
    assert_eq!(
        d.origin,
        Some(Origin::File {
            path: file.to_path_buf(),
            line
        })
    );
    assert_eq!(d.value.as_deref(), Some(value));
    d
}

/// The diagnostic's text holds every one of `needles`.
fn assert_says(d: &Diagnostic, needles: &[&str]) {
    let text = d.to_string();
    for needle in needles {
        assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    }
}

#[test]
fn known_plugins_and_inject_pairs_load() {
    let (_dir, f) = write(
        "[image_import_opts]\n\
         image_import_plugins = [image_decompression, image_conversion, inject_image_metadata, no_op]\n\
         [inject_metadata_properties]\n\
         ignore_user_roles = admin, reader\n\
         inject = hw_vif_model:virtio, site:lab\n",
    );
    let l = load_for(Daemon::Tasks, &f).unwrap_or_else(|e| panic!("{e}"));
    let t = l.config.task();
    assert_eq!(t.image_import_plugins, IMPORT_PLUGINS);
    assert_eq!(t.inject_ignore_user_roles, ["admin", "reader"]);
    assert_eq!(
        t.inject_properties,
        [
            ("hw_vif_model".to_string(), "virtio".to_string()),
            ("site".to_string(), "lab".to_string())
        ]
    );
}

#[test]
fn defaults_match_glance() {
    let (_dir, f) = write("");
    let t = load_for(Daemon::Tasks, &f).unwrap().config.task();
    assert!(t.image_import_plugins.is_empty());
    assert_eq!(t.inject_ignore_user_roles, ["admin"]);
    assert!(t.inject_properties.is_empty());
    assert_eq!(t.conversion_output_format, "raw");
}

#[test]
fn an_unknown_plugin_is_an_error_with_file_and_line() {
    let (_dir, f) =
        write("[image_import_opts]\nimage_import_plugins = no_op, image_decompresion\n");
    let d = only_error(&f, 4, "image_decompresion");
    assert_eq!(d.option.as_deref(), Some("image_import_plugins"));
    assert_says(
        &d,
        &[
            "unknown import plugin \"image_decompresion\"",
            "did you mean \"image_decompression\"?",
        ],
    );

    // The scrubber does not run imports: the same file loads for it.
    assert!(load_for(Daemon::Scrubber, &f).is_ok());
}

#[test]
fn os_glance_keys_cannot_be_injected() {
    let (_dir, f) =
        write("[inject_metadata_properties]\ninject = site:lab,os_glance_import_task:forged\n");
    let d = only_error(&f, 4, "os_glance_import_task");
    assert_says(
        &d,
        &[
            "[inject_metadata_properties] inject = \"os_glance_import_task\"",
            "reserved",
        ],
    );
}
