//! The systems the registry is compared with: etcd and ZooKeeper, run as real
//! 3-member clusters on loopback (child processes, killed on drop) and driven
//! with the same payloads and offered load as the registry scenarios.
//!
//! One model for both: an instance is the key (znode)
//! `/registry/<namespace>/<service>/<instance_id>` whose value is the same
//! `registry.v1.Instance` the registry gets, encoded with prost. A provider's
//! session is an etcd lease (renewed with keepalives) or a ZooKeeper session
//! (instances are ephemeral znodes); a subscriber is a prefix watch (etcd) or a
//! persistent recursive watch (ZooKeeper).
//!
//! Rows carry the system's name in front of their variant ("etcd: ...") and
//! otherwise the registry's scenario, variant and metric names, so tables of
//! the three systems can be put side by side.

pub(crate) mod etcd;
pub(crate) mod zookeeper;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use prost::Message as _;
use registry_proto::v1;
use registry_tests::instance;
use tokio::time::Instant;

use crate::scenarios::{Row, row, with_metadata};

/// Namespace of every bench instance (the registry's default namespace).
pub(crate) const NAMESPACE: &str = "default";

/// Lease TTL / session timeout of the bench's providers outside the failure
/// scenario: the registry bench's sessions get a 3 min lease (60 s heartbeat).
pub(crate) const BENCH_TTL: Duration = Duration::from_secs(180);

/// Lease TTL / session timeout in the failure scenario, comparable to the
/// registry's 3 s reconnect grace.
pub(crate) const FAILURE_TTL: Duration = Duration::from_secs(3);

/// The key (etcd) or znode path (ZooKeeper) of one instance.
pub(crate) fn key(service: &str, id: &str) -> String {
    format!("{}/{id}", service_dir(service))
}

/// The prefix (etcd, with a trailing '/') or parent znode (ZooKeeper, without).
pub(crate) fn service_dir(service: &str) -> String {
    format!("/registry/{NAMESPACE}/{service}")
}

/// The instance the registry scenarios register, with `metadata` bytes of metadata.
pub(crate) fn payload(service: &str, id: &str, port: u32, metadata: usize) -> v1::Instance {
    with_metadata(instance(service, id, port), metadata)
}

pub(crate) fn encode(i: &v1::Instance) -> Vec<u8> {
    i.encode_to_vec()
}

pub(crate) fn decode(bytes: &[u8]) -> Result<v1::Instance> {
    Ok(v1::Instance::decode(bytes)?)
}

/// The send time (µs since the scenario's epoch) the propagation scenario puts
/// in metadata "t".
pub(crate) fn sent_at(i: &v1::Instance) -> Option<u64> {
    i.metadata.get("t").and_then(|t| t.parse().ok())
}

/// "etcd: <variant>".
pub(crate) fn variant(system: &str, v: &str) -> String {
    format!("{system}: {v}")
}

/// A row that says a number would not mean the same thing as the registry's.
pub(crate) fn not_comparable(scenario: &str, variant: &str, why: &str) -> Row {
    row(scenario, variant, &format!("not comparable: {why}"), f64::NAN, "")
}

/// Runs one of the `bench/peers/*.sh` scripts (embedded at build time) and
/// returns the `key=value` lines it prints.
pub(crate) fn run_script(name: &str, body: &str) -> Result<HashMap<String, String>> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(body)
        .arg(name)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running bench/peers/{name}"))?;
    if !out.status.success() {
        bail!("bench/peers/{name} failed: {}", out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().into(), v.trim().into())).collect())
}

pub(crate) fn script_value(values: &HashMap<String, String>, name: &str, key: &str) -> Result<String> {
    values.get(key).cloned().ok_or_else(|| anyhow!("bench/peers/{name} printed no {key}="))
}

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("registry-bench-{tag}-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes allocated on disk to the regular files under `dir` (preallocated log
/// files count, sparse holes do not).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.blocks() * 512).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// One server process of a peer system, its output in a log file. Killed on drop.
pub(crate) struct PeerProc {
    /// The node's name in rows ("a", "b", "cold").
    pub(crate) name: String,
    /// "etcd a", for messages.
    label: String,
    child: Child,
    log: PathBuf,
}

impl PeerProc {
    pub(crate) fn spawn(system: &str, name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let label = format!("{system} {name}");
        let out = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let child = cmd.spawn().with_context(|| format!("starting {label}: {cmd:?}"))?;
        Ok(Self { name: name.into(), label, child, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the end of its log) if the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); end of {}:\n{}", self.label, self.log.display(), self.log_tail());
        }
        Ok(())
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// User + system CPU seconds used so far (all threads).
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        crate::procs::cpu_seconds(self.pid())
    }

    /// (current, peak) resident memory in KiB.
    pub(crate) fn rss_kib(&self) -> Result<(u64, u64)> {
        crate::procs::rss_kib(self.pid())
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn cpu(procs: &[&PeerProc]) -> Result<Vec<f64>> {
    procs.iter().map(|p| p.cpu_seconds()).collect()
}

/// Ingest rows from per-process CPU and peak RSS, as the registry's ingest has them.
pub(crate) fn process_rows(
    scenario: &str,
    variant: &str,
    procs: &[&PeerProc],
    cpu0: &[f64],
    cpu1: &[f64],
    per: f64,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let us = (cpu1[i] - cpu0[i]) * 1e6 / per;
        rows.push(row(scenario, variant, &format!("CPU per instance, node {}", p.name), us, "µs"));
        rows.push(row(scenario, variant, &format!("peak RSS, node {}", p.name), p.rss_kib()?.1 as f64 / 1024.0, "MiB"));
    }
    Ok(rows)
}

/// Polls `check` every `every` until it returns `Some`, or fails after `within`.
pub(crate) async fn poll<T, F, Fut>(what: &str, within: Duration, every: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(every).await;
    }
}
