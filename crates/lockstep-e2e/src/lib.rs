//! Test-only crate: the end-to-end tests live in `tests/` and drive the real
//! `lockstep-server` and `lockstep-edge` binaries. Nothing to export.
