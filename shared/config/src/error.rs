//! Diagnostics (errors, warnings, debug notes) and the crate's error types.

use std::fmt;
use std::path::PathBuf;

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a config file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
    },
    /// An environment variable.
    Env {
        /// Its name.
        var: String,
    },
    /// The option's default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env { var } => write!(f, "environment {var}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One problem or remark about the configuration, with everything needed to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File and line, or environment variable; `None` for whole-configuration checks.
    pub origin: Option<Origin>,
    /// Section concerned, if any.
    pub section: Option<String>,
    /// Option concerned, if any.
    pub option: Option<String>,
    /// The offending value as written (masked when the option is secret).
    pub value: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Diagnostic {
            origin: None,
            section: None,
            option: None,
            value: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    pub(crate) fn option(mut self, section: &str, name: &str) -> Self {
        self.section = Some(section.to_owned());
        self.option = Some(name.to_owned());
        self
    }

    pub(crate) fn section(mut self, section: &str) -> Self {
        self.section = Some(section.to_owned());
        self
    }

    pub(crate) fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.origin {
            write!(f, "{o}: ")?;
        }
        match (&self.section, &self.option) {
            (Some(s), Some(o)) => write!(f, "[{s}] {o}")?,
            (Some(s), None) => write!(f, "[{s}]")?,
            (None, Some(o)) => write!(f, "{o}")?,
            (None, None) => {}
        }
        if let Some(v) = &self.value {
            write!(f, " = {v:?}")?;
        }
        if self.section.is_some() || self.option.is_some() {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem that stopped the configuration from loading, all reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The problems, in the order found.
    pub errors: Vec<Diagnostic>,
    /// Warnings found along the way (reported with the errors so nothing is lost).
    pub warnings: Vec<Diagnostic>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid configuration: {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Errors of the crate's file operations (writing the sample) and of loading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}
