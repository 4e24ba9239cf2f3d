//! imaged-catalog.
