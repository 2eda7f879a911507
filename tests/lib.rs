//! Test-only crate; see suite/.
