//! The end-to-end tests, one module per subject, in one test binary: each
//! file under `tests/` used to be a binary of its own, and linking ~20 of
//! them (each with tonic, hyper and the node) was most of the suite's build
//! time. `cargo test -p registry-tests --test e2e -- dns::` runs one module.
//!
//! One binary means the modules' tests run side by side (cargo runs a
//! binary's tests in parallel, binaries one after another). What must not
//! overlap says so with [`ONE_AT_A_TIME`]; the fault scenarios, which
//! measure timings and share the machine through their own lock, are a
//! binary of their own (`tests/faults/`).
//!
//! Module-level state that was per process is still per module: statics are
//! the module's own, and what tests install (the Python virtual environment,
//! npm projects under `target/`) is installed under a file lock, one
//! installer at a time, across modules as across processes.

mod admin;
mod auth;
mod client;
mod cluster;
mod console;
mod deploy;
mod dns;
mod eureka;
mod greeter;
mod http_api;
mod nats_auth;
mod standalone;
mod tls;
mod xds;

/// One heavy scenario at a time. The browser scenarios (`console`) hold their
/// pages to "within 1 s" of a change, which a browser starved by another
/// scenario's 100,000 registrations on a 2-core machine could miss for
/// reasons that are not the console's; so they run one at a time, and the
/// scenarios of the other modules that load the machine as much (tens of
/// thousands of instances, a thousand sessions) take the same turn. Before
/// these modules shared a binary, none of those ran beside a browser. The
/// rest run side by side.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
