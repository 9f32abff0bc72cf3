//! The replication layer's tests, one module per subject, in one test binary
//! instead of one per file. `cargo test -p bus-sync --test sync -- simulation::`
//! runs one module. A module's proptest regressions live next to its file.

mod departure;
mod discovery;
mod hostile;
mod simulation;
