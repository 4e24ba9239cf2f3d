//! `inject_image_metadata`: the properties of `[inject_metadata_properties]
//! inject` are set on the imported image, unless the importing user holds
//! one of `ignore_user_roles`.
//!
//! Glance decides with the roles of the request that started the import.
//! The executor runs later, from the task row, and Glance's task input does
//! not record roles, so the roles are usually unknown
//! ([`PluginContext::user_roles`] is `None`); the properties are then
//! injected. Keys starting with `os_glance` are never injected: the
//! configuration loader refuses them, and should one reach here anyway it is
//! skipped with a warning.

use imaged_config::RESERVED_PROPERTY_PREFIX;

use super::{PluginContext, State};

/// The plugin's name in `image_import_plugins`.
pub(super) const NAME: &str = "inject_image_metadata";

pub(super) fn run(ctx: &PluginContext<'_>, st: &mut State) {
    let s = ctx.settings;
    if let Some(roles) = ctx.user_roles
        && let Some(role) = roles
            .iter()
            .find(|r| s.inject_ignore_user_roles.contains(r))
    {
        tracing::info!(
            image_id = %st.image_id,
            role,
            "the importing user holds an ignored role: no properties injected"
        );
        return;
    }
    for (key, value) in &s.inject_properties {
        if key.starts_with(RESERVED_PROPERTY_PREFIX) {
            tracing::warn!(
                image_id = %st.image_id,
                key,
                "not injecting a reserved os_glance property"
            );
            continue;
        }
        st.properties.insert(key.clone(), value.clone());
        st.set_properties.insert(key.clone(), value.clone());
    }
    tracing::debug!(
        image_id = %st.image_id,
        injected = st.set_properties.len(),
        "injected image properties"
    );
}
