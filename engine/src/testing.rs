//! Test support, behind the `testing` feature: storage that fails on demand and keeps crash
//! images. Never compiled into production builds.

pub use crate::storage::check_bounds;
