//! Runs every scenario of the bench tool at a tiny size so the tool cannot rot.
//! No timing is asserted: numbers from a loaded CI machine mean nothing.

use std::process::Command;
use std::sync::Mutex;

/// One smoke run at a time: two at once on a 2-core machine starve each
/// other's nodes, and a catch-up joiner that hears no peer within its
/// discovery time turns ready empty, which fails the run.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `registry-bench <args> smoke`; checks that it succeeds with a row of
/// every scenario, and returns the table's rows.
fn smoke(args: &[&str]) -> Vec<String> {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_registry-bench")).args(args).arg("smoke").output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    for scenario in ["ingest", "propagation", "fan-out", "scale", "catch-up", "failure detection"] {
        assert!(stdout.contains(&format!("| {scenario}")), "no {scenario} row in:\n{stdout}");
    }
    stdout.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| scenario ")).map(String::from).collect()
}

#[test]
fn every_scenario_runs_at_a_tiny_size() {
    let rows = smoke(&[]);
    assert!(rows.iter().any(|r| r.starts_with("| SSE fan-out")), "no SSE fan-out row in {rows:?}");
}

/// With `--tls --token`: nodes that serve TLS only and enforce auth, clients
/// that trust the run's CA and send its token (the bench checks that every
/// node refuses a caller without it), and rows that say so.
#[test]
fn every_scenario_runs_with_tls_and_a_token() {
    for row in smoke(&["--tls", "--token"]) {
        assert!(row.contains(", TLS + token |"), "a row without its mode: {row}");
    }
}
