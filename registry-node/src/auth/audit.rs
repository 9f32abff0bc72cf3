//! The audit trail: one structured line for every admin action, every
//! denied write and every ownership refusal, with the principal, the action,
//! the key, the peer and the node.
//!
//! Every line goes to the log (target `registry::audit`). With
//! `auth.audit_file`, each is also appended to that file as one JSON object
//! per line, by a thread of its own: a request never waits for the disk.
//! Lines wait in a bounded queue; if the disk falls so far behind that the
//! queue is full, a line is counted as dropped (`registry_audit_dropped_total`)
//! rather than stall the node. SIGHUP reopens the file (after logrotate moved
//! it).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use serde::Serialize;

use super::Caller;

/// Lines waiting for the audit file.
const QUEUE: usize = 65_536;

/// What became of the audited request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    Denied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
        }
    }
}

/// One line of the audit file.
#[derive(Debug, Serialize)]
struct Line<'a> {
    ts_ms: u64,
    node: &'a str,
    principal: &'a str,
    action: &'a str,
    key: &'a str,
    peer: &'a str,
    outcome: Outcome,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
}

/// Audit lines written and dropped, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditMetrics {
    pub lines: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

enum Msg {
    Line(String),
    Reopen,
}

/// The node's audit trail.
#[derive(Debug)]
pub struct Audit {
    node: Arc<str>,
    file: Option<SyncSender<Msg>>,
    pub metrics: Arc<AuditMetrics>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Line(_) => "Line",
            Msg::Reopen => "Reopen",
        })
    }
}

impl Audit {
    /// An audit trail that only logs.
    pub fn log_only(node: &str) -> Self {
        Self { node: node.into(), file: None, metrics: Arc::default() }
    }

    /// An audit trail that logs and appends to `path` (created if missing;
    /// an error names the file).
    pub fn to_file(node: &str, path: &Path) -> Result<Self, String> {
        let file = open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let metrics = Arc::<AuditMetrics>::default();
        let (path, m) = (path.to_path_buf(), metrics.clone());
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(path, file, rx, m))
            .map_err(|e| format!("auth.audit_file: cannot start its writer: {e}"))?;
        Ok(Self { node: node.into(), file: Some(tx), metrics })
    }

    /// Whether a line would go anywhere (the audit file, or a log that
    /// keeps target `registry::audit`); when not, a line is only counted.
    fn active(&self) -> bool {
        self.file.is_some() || tracing::enabled!(target: "registry::audit", tracing::Level::INFO)
    }

    /// Records one audited request. `key` is built only if the line goes
    /// somewhere (see [`Audit::active`]): requests are audited on the write
    /// path, where nobody may be listening.
    pub fn record(&self, caller: &Caller, action: &str, key: impl FnOnce() -> String, outcome: Outcome, reason: &str) {
        self.metrics.lines.fetch_add(1, Ordering::Relaxed);
        if !self.active() {
            return;
        }
        let key = &*key();
        let principal = caller.name().unwrap_or("-");
        let peer = caller.peer.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            target: "registry::audit",
            principal, action, key, peer, node = %self.node, outcome = outcome.as_str(), reason,
            "audit"
        );
        let Some(tx) = &self.file else { return };
        let line = Line {
            ts_ms: crate::registry::wall_ms(),
            node: &self.node,
            principal,
            action,
            key,
            peer: &peer,
            outcome,
            reason,
        };
        let Ok(mut text) = serde_json::to_string(&line) else { return };
        text.push('\n');
        match tx.try_send(Msg::Line(text)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    tracing::error!(
                        dropped = n + 1,
                        "audit file writer behind or gone: audit lines dropped (still logged)"
                    );
                }
            }
        }
    }

    /// Reopens the audit file (SIGHUP, after a rotation).
    pub fn reopen(&self) {
        if let Some(tx) = &self.file {
            let _ = tx.try_send(Msg::Reopen);
        }
    }
}

fn open(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("auth.audit_file {}: {e}", path.display()))
}

/// Appends lines as they come, flushing whenever the queue runs dry.
fn write_loop(path: PathBuf, file: std::fs::File, rx: Receiver<Msg>, metrics: Arc<AuditMetrics>) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(text) => {
                    if out.write_all(text.as_bytes()).is_err() {
                        metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Msg::Reopen => {
                    let _ = out.flush();
                    match open(&path) {
                        Ok(f) => out = std::io::BufWriter::new(f),
                        Err(e) => tracing::error!(error = %e, "audit file not reopened: writing to the old one"),
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            metrics.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<serde_json::Value> =
                text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
            if lines.len() >= n || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_are_json_with_every_field_and_survive_a_rotation() {
        let dir = std::env::temp_dir().join(format!("registry-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let audit = Audit::to_file("node-a", &path).expect("opens");
        let caller =
            Caller { identity: super::super::Identity::Open, peer: Some("10.0.0.9:5000".parse().expect("addr")) };
        audit.record(&caller, "deregister", || "default/orders/o1".into(), Outcome::Denied, "belongs to \"x\"");
        let lines = read_lines(&path, 1);
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l["node"], "node-a");
        assert_eq!(l["principal"], "-");
        assert_eq!(l["action"], "deregister");
        assert_eq!(l["key"], "default/orders/o1");
        assert_eq!(l["peer"], "10.0.0.9:5000");
        assert_eq!(l["outcome"], "denied");
        assert_eq!(l["reason"], "belongs to \"x\"");

        // logrotate: the file moves away, SIGHUP reopens a new one.
        let rotated = dir.join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        audit.reopen();
        audit.record(&caller, "members", String::new, Outcome::Allowed, "");
        assert_eq!(read_lines(&path, 1).len(), 1, "the new line is in the new file");
        assert_eq!(read_lines(&rotated, 1).len(), 1, "the old file keeps its line");
        assert_eq!(audit.metrics.lines.load(Ordering::Relaxed), 2);
        assert_eq!(audit.metrics.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unwritable_file_is_named() {
        let err = Audit::to_file("n", Path::new("/nonexistent-dir/audit.jsonl")).expect_err("no dir");
        assert!(err.contains("auth.audit_file") && err.contains("nonexistent-dir"), "{err}");
    }
}
