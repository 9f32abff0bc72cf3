//! Registry nodes as child processes, and what /proc says about them: CPU
//! seconds and resident memory, per process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use registry_tests::nats::free_port;
use registry_tests::{eventually, http_get, metric};

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One `registry-node` child process.
pub(crate) struct NodeProc {
    pub(crate) name: String,
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    child: Child,
    config: PathBuf,
}

/// Configuration of every bench node: big sessions, and a 60 s heartbeat
/// (3 min lease) so the bench's sessions, which do not heartbeat, never expire
/// in the middle of a measurement.
pub(crate) const BENCH_CONFIG: &str =
    "[limits]\nmax_instances_per_session = 100000\n[sessions]\ndefault_heartbeat_ms = 60000\n";

/// Where a node's log goes: nowhere, unless `BENCH_NODE_LOG` (a `RUST_LOG`
/// filter such as `info`) asks for the nodes' timelines, which then go to the
/// bench's stderr, apart from the result tables.
fn node_log() -> Stdio {
    if std::env::var_os("BENCH_NODE_LOG").is_some() { Stdio::from(std::io::stderr()) } else { Stdio::null() }
}

impl NodeProc {
    /// Starts a node and waits until it is ready.
    pub(crate) async fn start(bin: &Path, name: &str, nats: &[String], cluster: &str) -> Result<Self> {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config = std::env::temp_dir().join(format!("registry-bench-{name}-{}.toml", http.port()));
        std::fs::write(&config, BENCH_CONFIG)?;
        let mut cmd = Command::new(bin);
        cmd.args(["--node-id", name, "--grpc-addr", &grpc.to_string(), "--http-addr", &http.to_string()])
            .arg("--config")
            .arg(&config)
            .args(["--cluster", cluster])
            .env("RUST_LOG", std::env::var("BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(node_log())
            .stderr(Stdio::inherit());
        for url in nats {
            cmd.args(["--nats-url", url]);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let node = Self { name: name.into(), grpc, http, child, config };
        node.wait_ready(Duration::from_secs(120)).await?;
        Ok(node)
    }

    pub(crate) async fn wait_ready(&self, within: Duration) -> Result<()> {
        let http = self.http;
        eventually("node ready", within, || async move {
            http_get(http, "/readyz").await.ok().filter(|(s, _)| *s == 200).map(|_| ())
        })
        .await
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds used so far.
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid())
    }

    /// (current, peak) resident memory in KiB.
    pub(crate) fn rss_kib(&self) -> Result<(u64, u64)> {
        rss_kib(self.pid())
    }

    /// A gauge or counter from the node's /metrics.
    pub(crate) async fn metric(&self, name: &str) -> Option<u64> {
        let (_, body) = http_get(self.http, "/metrics").await.ok()?;
        metric(&body, name)
    }

    /// Waits until the node shows `n` instances.
    pub(crate) async fn wait_instances(&self, n: u64, within: Duration) -> Result<()> {
        eventually(&format!("{} shows {n} instances", self.name), within, || async move {
            self.metric("instances").await.filter(|v| *v == n).map(|_| ())
        })
        .await
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// User + system CPU seconds a process has used so far (all its threads).
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("odd /proc stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: f64 = f.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok((utime + stime) / TICKS_PER_SECOND)
}

/// (current, peak) resident memory of a process in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .ok_or_else(|| anyhow!("no {name} in /proc status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The `registry-node` binary next to this one (both build into one target dir).
pub(crate) fn default_node_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().ok_or_else(|| anyhow!("no parent dir"))?;
    let bin = dir.join("registry-node");
    if bin.exists() {
        Ok(bin)
    } else {
        // Test binaries live one level down, in deps/.
        let up = dir.parent().map(|d| d.join("registry-node"));
        up.filter(|p| p.exists())
            .ok_or_else(|| anyhow!("registry-node not found next to {}; build it or pass --node-bin", me.display()))
    }
}
