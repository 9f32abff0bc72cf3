//! Registry nodes as child processes of the real `registry-node` binary, the
//! signals a fault test sends them, and what /proc says about them (CPU
//! seconds and resident memory).
//!
//! In-process nodes (`start_node`) are quicker to start and to inspect; child
//! processes are what `kill -9`, `SIGSTOP` and restarts need, and what the
//! benchmarks measure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::nats::free_port;
use crate::{eventually, http_get, metric};

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One `registry-node` child process. Killed when dropped.
pub struct NodeProc {
    pub name: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    bin: PathBuf,
    nats: Vec<String>,
    cluster: String,
    child: Option<Child>,
    config: PathBuf,
    /// Where its log (warnings and errors) goes when `NODE_LOG` does not
    /// send it elsewhere: kept for [`Self::log`], removed on drop.
    log: Option<PathBuf>,
}

impl NodeProc {
    /// Starts a node with `config` (TOML) and waits until it is ready.
    pub async fn start(bin: &Path, name: &str, nats: &[String], cluster: &str, config: &str) -> Result<Self> {
        let node = Self::spawn(bin, name, nats, cluster, config)?;
        node.wait_ready(Duration::from_secs(120)).await?;
        Ok(node)
    }

    /// Starts a node on free ports without waiting for it.
    pub fn spawn(bin: &Path, name: &str, nats: &[String], cluster: &str, config: &str) -> Result<Self> {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let path = std::env::temp_dir().join(format!("registry-node-{name}-{}.toml", http.port()));
        std::fs::write(&path, config)?;
        let mut node = Self {
            name: name.into(),
            grpc,
            http,
            bin: bin.into(),
            nats: nats.to_vec(),
            cluster: cluster.into(),
            child: None,
            config: path,
            log: std::env::var_os("NODE_LOG")
                .is_none()
                .then(|| std::env::temp_dir().join(format!("registry-node-{name}-{}.log", http.port()))),
        };
        node.child = Some(node.command().spawn().with_context(|| format!("starting {}", bin.display()))?);
        Ok(node)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--node-id",
            &self.name,
            "--grpc-addr",
            &self.grpc.to_string(),
            "--http-addr",
            &self.http.to_string(),
        ])
        .arg("--config")
        .arg(&self.config)
        .args(["--cluster", &self.cluster])
        .env("RUST_LOG", std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(match &self.log {
            // Appended to: a restarted node adds to what it said before.
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_or_else(|_| Stdio::null(), Stdio::from),
            None => node_log(&self.cluster, &self.name),
        })
        .stderr(Stdio::inherit());
        for url in &self.nats {
            cmd.args(["--nats-url", url]);
        }
        cmd
    }

    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        let http = self.http;
        eventually(&format!("node {} ready", self.name), within, || async move {
            http_get(http, "/readyz").await.ok().filter(|(s, _)| *s == 200).map(|_| ())
        })
        .await
    }

    /// What it logged (warnings and errors, across restarts); empty when
    /// `NODE_LOG` sends the log elsewhere.
    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`: the process ends without a word to anyone.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// `SIGTERM`, then waits for the process to exit (its drain) and reaps
    /// it; returns how long the drain took.
    pub async fn terminate(&mut self, within: Duration) -> Result<Duration> {
        let start = std::time::Instant::now();
        self.signal("TERM")?;
        loop {
            let Some(child) = self.child.as_mut() else { return Ok(start.elapsed()) };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                if !status.success() {
                    bail!("node {} exited with {status} after SIGTERM", self.name);
                }
                return Ok(start.elapsed());
            }
            if start.elapsed() >= within {
                bail!("node {} still running {within:?} after SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`...).
    pub fn signal(&self, name: &str) -> Result<()> {
        send_signal(self.pid(), name)
    }

    /// Starts the node again after [`Self::kill9`]: same id, ports and
    /// config, a new incarnation. Waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("node {} is still running", self.name);
        }
        self.child = Some(self.command().spawn().with_context(|| format!("restarting {}", self.name))?);
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid())
    }

    /// (current, peak) resident memory in KiB.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        rss_kib(self.pid())
    }

    /// A gauge or counter from the node's /metrics.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let (_, body) = http_get(self.http, "/metrics").await.ok()?;
        metric(&body, name)
    }

    /// Waits until the node shows `n` instances.
    pub async fn wait_instances(&self, n: u64, within: Duration) -> Result<()> {
        eventually(&format!("{} shows {n} instances", self.name), within, || async move {
            self.metric("instances").await.filter(|v| *v == n).map(|_| ())
        })
        .await
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // A stopped process does not die of SIGKILL until continued on
            // some kernels' accounting; continue it first to be sure.
            let _ = send_signal(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.config);
        if let Some(log) = &self.log {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// Where a node's log goes: nowhere, unless `NODE_LOG` (a `RUST_LOG` filter
/// such as `info`) asks for the nodes' timelines, which then go to stderr,
/// or with `NODE_LOG_DIR` to one file per node, `<cluster>-<node>.log`
/// (a restarted node appends to it).
fn node_log(cluster: &str, name: &str) -> Stdio {
    if std::env::var_os("NODE_LOG").is_none() {
        return Stdio::null();
    }
    let file = std::env::var_os("NODE_LOG_DIR").and_then(|dir| {
        let path = std::path::Path::new(&dir).join(format!("{cluster}-{name}.log"));
        std::fs::OpenOptions::new().create(true).append(true).open(path).ok()
    });
    file.map_or_else(|| Stdio::from(std::io::stderr()), Stdio::from)
}

/// Sends signal `name` (as `kill -<name>` spells it) to `pid`.
pub fn send_signal(pid: u32, name: &str) -> Result<()> {
    if pid == 0 {
        bail!("no process to signal");
    }
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).stderr(Stdio::null()).status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed: {status}");
    }
    Ok(())
}

/// User + system CPU seconds a process has used so far (all its threads).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("odd /proc stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: f64 = f.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok((utime + stime) / TICKS_PER_SECOND)
}

/// (current, peak) resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
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

/// The `registry-node` binary of this build: next to the running executable,
/// or one level up from a test binary in `deps/`. `cargo test --workspace`
/// builds it; alone, `cargo build -p registry-node` does.
pub fn node_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().ok_or_else(|| anyhow!("no parent dir"))?;
    [Some(dir.join("registry-node")), dir.parent().map(|d| d.join("registry-node"))]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!("registry-node not found near {}; build it (cargo build -p registry-node)", me.display())
        })
}
