//! The import plugin options: `[image_import_opts] image_import_plugins`
//! names only plugins the task executor has, and `[inject_metadata_properties]
//! inject` never names a reserved `os_glance*` property.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use imaged_config::{
    ConfigErrors, Daemon, Diagnostic, IMPORT_PLUGINS, LoadRequest, Loaded, Origin, load,
};

const DB: &str = "[database]\nconnection = sqlite:////var/lib/glance/glance.sqlite\n";

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("glance-image-import.conf");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    p
}

fn load_for(daemon: Daemon, file: &Path) -> Result<Loaded, ConfigErrors> {
    let mut r = LoadRequest::new(Some(daemon));
    r.config_files.push(file.to_path_buf());
    load(&r)
}

fn errors(r: Result<Loaded, ConfigErrors>) -> Vec<Diagnostic> {
    match r {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors,
    }
}

#[test]
fn known_plugins_and_inject_pairs_load() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        &format!(
            "{DB}[image_import_opts]\n\
             image_import_plugins = [image_decompression, image_conversion, inject_image_metadata, no_op]\n\
             [inject_metadata_properties]\n\
             ignore_user_roles = admin, reader\n\
             inject = hw_vif_model:virtio, site:lab\n"
        ),
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
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), DB);
    let t = load_for(Daemon::Tasks, &f).unwrap().config.task();
    assert!(t.image_import_plugins.is_empty());
    assert_eq!(t.inject_ignore_user_roles, ["admin"]);
    assert!(t.inject_properties.is_empty());
    assert_eq!(t.conversion_output_format, "raw");
}

#[test]
fn an_unknown_plugin_is_an_error_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        &format!("{DB}[image_import_opts]\nimage_import_plugins = no_op, image_decompresion\n"),
    );
    let errs = errors(load_for(Daemon::Tasks, &f));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let d = &errs[0];
    assert_eq!(
        d.origin,
        Some(Origin::File {
            path: f.clone(),
            line: 4
        })
    );
    assert_eq!(d.option.as_deref(), Some("image_import_plugins"));
    assert_eq!(d.value.as_deref(), Some("image_decompresion"));
    let text = d.to_string();
    assert!(
        text.contains("unknown import plugin \"image_decompresion\""),
        "{text}"
    );
    assert!(
        text.contains("did you mean \"image_decompression\"?"),
        "{text}"
    );

    // The scrubber does not run imports: the same file loads for it.
    assert!(load_for(Daemon::Scrubber, &f).is_ok());
}

#[test]
fn os_glance_keys_cannot_be_injected() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        &format!(
            "{DB}[inject_metadata_properties]\ninject = site:lab,os_glance_import_task:forged\n"
        ),
    );
    let errs = errors(load_for(Daemon::Tasks, &f));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let d = &errs[0];
    assert_eq!(
        d.origin,
        Some(Origin::File {
            path: f.clone(),
            line: 4
        })
    );
    assert_eq!(d.value.as_deref(), Some("os_glance_import_task"));
    assert!(
        d.to_string()
            .contains("[inject_metadata_properties] inject = \"os_glance_import_task\""),
        "{d}"
    );
    assert!(d.to_string().contains("reserved"), "{d}");
}
