//! The scenarios that measure the machine as much as the registry, in one
//! test binary of their own: the fault suite (`faults`), packet-level faults
//! (`netem`) and the slow subscriber's memory (`slow_subscriber`).
//!
//! Each holds a share of the fault kit's machine lock
//! (`registry_tests::faults::Report` takes it): most run beside each other,
//! the heaviest alone. Nothing else runs in this process, so "alone" means
//! alone, and the slow subscriber's reading of this process's resident
//! memory is its own (it takes the lock alone too). Beside the end-to-end
//! tests of `tests/e2e/` they would measure those tests' load instead.
//!
//! `cargo test -p registry-tests --test faults -- netem::` runs one module.

mod faults;
mod netem;
mod slow_subscriber;
