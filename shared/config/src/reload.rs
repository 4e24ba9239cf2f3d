//! Reload planning: which changed options take effect live and which keep their old value until
//! a restart.
//!
//! The caller (the runtime's SIGHUP / file-watch path) loads the files again with the same
//! request; when that fails it keeps the old configuration and logs every error. When it
//! succeeds, `diff` tells it what to log and `ReloadPlan::effective` gives the configuration to
//! switch to.

use crate::config::Config;
use crate::error::Origin;
use crate::render::display_value;

/// One changed option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Section.
    pub section: String,
    /// Option.
    pub option: String,
    /// Old value as shown (secrets masked).
    pub old: String,
    /// New value as shown (secrets masked).
    pub new: String,
    /// Where the new value comes from.
    pub origin: Origin,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {}: {} -> {} ({})",
            self.section, self.option, self.old, self.new, self.origin
        )
    }
}

/// The outcome of comparing two configurations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// Changes that take effect now (live options, and options the daemon does not use).
    pub applied: Vec<Change>,
    /// Changes to options that need a restart; the old value stays in effect.
    pub needs_restart: Vec<Change>,
}

/// Compare the running configuration with a freshly loaded one.
pub fn diff(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for (section, name, n) in new.entries() {
        let o = old.entry(section, name);
        if o.is_some_and(|o| o.value == n.value) {
            continue;
        }
        let change = Change {
            section: section.to_owned(),
            option: name.to_owned(),
            old: o.map_or_else(|| "<None>".to_owned(), display_value),
            new: display_value(n),
            origin: n.origin.clone(),
        };
        if n.def.live || !n.def.used_by_daemon(new.daemon()) {
            plan.applied.push(change);
        } else {
            plan.needs_restart.push(change);
        }
    }
    plan
}

impl ReloadPlan {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.needs_restart.is_empty()
    }

    /// The configuration to run with: `new`, except that options needing a restart keep their
    /// value from `old`.
    pub fn effective(&self, old: &Config, new: &Config) -> Config {
        let mut out = new.clone();
        for c in &self.needs_restart {
            if let Some(e) = old.entry(&c.section, &c.option) {
                out.replace_entry(&c.section, &c.option, e.clone());
            }
        }
        out
    }
}
