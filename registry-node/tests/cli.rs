//! The binary's command line: a refused configuration exits with code 64 and a
//! message naming the setting.

use std::process::Command;

fn node() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_registry-node"));
    // Only what the test sets counts, not the environment it runs in.
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn invalid_flag_value_exits_64_naming_the_setting() {
    let out = node().args(["--node-id", "has.dot"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node_id"), "{err}");
}

#[test]
fn invalid_env_value_exits_64() {
    let out = node().env("REGISTRY_CLUSTER", "").output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster"));
}

#[test]
fn an_exposed_address_without_auth_exits_64_naming_auth() {
    let out = node().args(["--grpc-addr", "0.0.0.0:0", "--check-config"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[auth]") && err.contains("auth.mode"), "{err}");
    let out = node().args(["--grpc-addr", "0.0.0.0:0", "--auth-mode", "off", "--check-config"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "off on purpose: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn config_file_errors_exit_64() {
    let dir = std::env::temp_dir().join(format!("registry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[sessions]\nreconnect_grace = 5\n").expect("write");
    let out = node().arg("--config").arg(&bad).output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reconnect_grace"));
    let missing = node().args(["--config", "/nonexistent/registry.toml"]).output().expect("runs");
    assert_eq!(missing.status.code(), Some(64));
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.example.toml");
    let out = node().args(["--config", example, "--node-id", "n7", "--check-config"]).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node_id = \"n7\""), "{text}");
    assert!(text.contains("[limits]"), "{text}");
}

#[test]
fn sigterm_stops_a_running_node_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let mut child = node()
        .args(["--node-id", "sig", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.by_ref().take(50).map_while(Result::ok).any(|l| l.contains("registry node ready"));
    assert!(ready, "node logs that it is ready");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("waits") {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "node did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}
