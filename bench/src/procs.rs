//! The bench's registry nodes: the test kit's child processes, with a
//! configuration made for measuring, and the security the run asked for.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
pub(crate) use registry_tests::procs::{NodeProc, cpu_seconds, node_bin as default_node_bin, rss_kib};

use crate::security::{Client, NodeChannel, Security};

/// Configuration of every bench node: big sessions, and a 60 s heartbeat
/// (3 min lease) so the bench's sessions, which do not heartbeat, never expire
/// in the middle of a measurement.
///
/// Rebalancing is off: the scenarios model providers that stay where they
/// registered, and a node asking sessions to move while a scenario is still
/// registering them (catch-up registers on one node of two) failed the run.
pub(crate) const BENCH_CONFIG: &str = "[limits]\nmax_instances_per_session = 100000\n[sessions]\ndefault_heartbeat_ms = 60000\nrebalance_interval_ms = 0\n";

/// How a run starts its nodes and reaches them: which binary, and what
/// `--tls` and `--token` ask of both ends.
pub(crate) struct Setup {
    bin: PathBuf,
    security: Security,
    config: String,
}

impl Setup {
    pub(crate) fn new(bin: PathBuf, security: Security) -> Result<Self> {
        let config = format!("{BENCH_CONFIG}{}", security.node_config()?);
        Ok(Self { bin, security, config })
    }

    /// Which mode is measured (`None`: plaintext, no auth).
    pub(crate) fn label(&self) -> Option<&'static str> {
        self.security.label()
    }

    /// Starts a bench node and waits until it is ready.
    pub(crate) async fn start_node(&self, name: &str, nats: &[String], cluster: &str) -> Result<NodeProc> {
        self.start_node_with(name, nats, cluster, "").await
    }

    /// [`Self::start_node`] with more TOML after the bench's (new tables only).
    pub(crate) async fn start_node_with(
        &self,
        name: &str,
        nats: &[String],
        cluster: &str,
        extra: &str,
    ) -> Result<NodeProc> {
        let node = NodeProc::spawn(&self.bin, name, nats, cluster, &format!("{}{extra}", self.config))?;
        // With TLS, the test kit's probes (readiness, metrics) use HTTPS.
        self.security.register(&node);
        node.wait_ready(Duration::from_secs(120)).await?;
        self.security.check_enforced(node.grpc).await?;
        Ok(node)
    }

    /// A connected channel to a node's gRPC port (or to a link in front of it).
    pub(crate) async fn channel(&self, addr: SocketAddr) -> Result<NodeChannel> {
        self.security.channel(addr).await
    }

    pub(crate) async fn client(&self, addr: SocketAddr) -> Result<Client> {
        Ok(Client::new(self.channel(addr).await?))
    }
}
