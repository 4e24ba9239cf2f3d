//! imaged-config.
