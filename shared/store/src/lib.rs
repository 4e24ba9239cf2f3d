//! imaged-store.
