//! imaged-runtime.
