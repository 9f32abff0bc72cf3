//! Runs every scenario of the bench tool at a tiny size so the tool cannot rot.
//! No timing is asserted: numbers from a loaded CI machine mean nothing.

use std::process::Command;

#[test]
fn every_scenario_runs_at_a_tiny_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_registry-bench")).arg("smoke").output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    for scenario in ["ingest", "propagation", "fan-out", "scale", "catch-up", "failure detection"] {
        assert!(stdout.contains(&format!("| {scenario}")), "no {scenario} row in:\n{stdout}");
    }
}
