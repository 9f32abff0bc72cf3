//! The bench's registry nodes: the test kit's child processes, with a
//! configuration made for measuring.

use std::path::Path;

use anyhow::Result;
pub(crate) use registry_tests::procs::{NodeProc, cpu_seconds, node_bin as default_node_bin, rss_kib};

/// Configuration of every bench node: big sessions, and a 60 s heartbeat
/// (3 min lease) so the bench's sessions, which do not heartbeat, never expire
/// in the middle of a measurement.
///
/// Rebalancing is off: the scenarios model providers that stay where they
/// registered, and a node asking sessions to move while a scenario is still
/// registering them (catch-up registers on one node of two) failed the run.
pub(crate) const BENCH_CONFIG: &str = "[limits]\nmax_instances_per_session = 100000\n[sessions]\ndefault_heartbeat_ms = 60000\nrebalance_interval_ms = 0\n";

/// Starts a bench node and waits until it is ready.
pub(crate) async fn start_node(bin: &Path, name: &str, nats: &[String], cluster: &str) -> Result<NodeProc> {
    NodeProc::start(bin, name, nats, cluster, BENCH_CONFIG).await
}
