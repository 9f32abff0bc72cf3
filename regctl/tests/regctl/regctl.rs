//! `regctl` against a real (standalone, in-process) node: what it prints and the
//! exit codes scripts rely on.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use registry_client::{Client, ClientConfig};
use registry_node::{NodeConfig, NodeHandle};
use tokio::time::Instant;

async fn start_node() -> NodeHandle {
    let config = NodeConfig {
        node_id: "n1".into(),
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        shutdown_grace_ms: 1_000,
        ..NodeConfig::default()
    };
    registry_node::start(config).await.expect("node starts")
}

/// Runs regctl to completion: (exit code, stdout).
async fn regctl(args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_regctl"))
            .args(&args)
            .env_remove("REGISTRY_ENDPOINT")
            .output()
            .expect("regctl runs");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .expect("join")
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regctl_registers_lists_gets_and_says_goodbye_on_ctrl_c() {
    let node = start_node().await;
    let ep = format!("http://{}", node.grpc_addr);

    let (code, out) = regctl(&["--endpoint", &ep, "members"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("NODE") && out.contains("n1") && out.contains("local"), "{out}");
    let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NODE", "STATE", "ADDRESS", "READY", "RECORDS", "LAG", "DIGEST", "LAST_BEAT", "SYNC"]);
    let me: Vec<&str> = out.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!((me[0], me[1], me[3], me[5], me[6], me[8]), ("n1", "local", "true", "0", "match", "self"), "{out}");

    // `register` holds the session until SIGINT.
    let mut child = Command::new(env!("CARGO_BIN_EXE_regctl"))
        .args(["--endpoint", &ep, "register", "orders", "--host", "10.0.0.7", "--port", "8080", "--meta", "v=2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("regctl register starts");
    let stdout = child.stdout.take().expect("piped");
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = first_tx.send(lines.next());
        lines.map_while(Result::ok).collect::<Vec<_>>()
    });
    let first = first_rx.await.expect("join").expect("a line").expect("utf-8");
    assert!(first.starts_with("registered orders/10.0.0.7:8080 at 10.0.0.7:8080 on node n1"), "{first}");

    let (code, out) = regctl(&["--endpoint", &ep, "get", "orders"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("INSTANCE") && lines[1].contains("10.0.0.7:8080") && lines[1].contains("up"), "{out}");
    assert!(lines[1].contains("v=2"), "{out}");

    let (code, out) = regctl(&["--endpoint", &ep, "--json", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(r#""service":"orders""#) && out.contains(r#""instances":1"#), "{out}");

    // Ctrl-C: goodbye, the instance goes at once.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("exit");
    assert_eq!(status.code(), Some(0));
    assert_eq!(reader.await.expect("join"), ["deregistered"]);
    let client = Client::new(ClientConfig::new([ep.clone()])).expect("client");
    until("goodbye removed the instance", async || {
        client.get_service("orders").await.is_ok_and(|r| r.instances.is_empty())
    })
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regctl_exit_codes() {
    let node = start_node().await;
    let ep = format!("http://{}", node.grpc_addr);
    // Not found: 1.
    let (code, _) = regctl(&["--endpoint", &ep, "deregister", "orders", "nobody"]).await;
    assert_eq!(code, 1);
    // Refused by the node (port 0 is invalid): 1.
    let (code, _) = regctl(&["--endpoint", &ep, "register", "orders", "--host", "h", "--port", "0"]).await;
    assert_eq!(code, 1);
    // Usage: 2.
    let (code, _) = regctl(&["--endpoint", &ep, "get"]).await;
    assert_eq!(code, 2);
    // Nobody listens there: 69, and the JSON says so too.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, out) = regctl(&["--endpoint", &dead, "--json", "--timeout-ms", "1000", "list"]).await;
    assert_eq!(code, 69);
    assert!(out.contains(r#""exit_code":69"#), "{out}");
    // A dead endpoint first, a live one second: fail-over, 0.
    let (code, _) = regctl(&["--endpoint", &format!("{dead},{ep}"), "list"]).await;
    assert_eq!(code, 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regctl_watch_prints_one_line_per_change() {
    let node = start_node().await;
    let ep = format!("http://{}", node.grpc_addr);
    let client = Client::new(ClientConfig::new([ep.clone()])).expect("client");
    let provider = client.register([instance("10.0.0.1", 1)]).await.expect("registered");

    let mut child = Command::new(env!("CARGO_BIN_EXE_regctl"))
        .args(["--endpoint", &ep, "watch", "orders"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("regctl watch starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut next = async || tokio::time::timeout(Duration::from_secs(5), lines.recv()).await.expect("a line in time");
    assert_eq!(next().await.as_deref(), Some("added 10.0.0.1:1 10.0.0.1:1 up"));
    provider.upsert(instance("10.0.0.2", 2)).await.expect("second");
    assert_eq!(next().await.as_deref(), Some("added 10.0.0.2:2 10.0.0.2:2 up"));
    provider.deregister("orders", "10.0.0.1:1").await.expect("removed");
    assert_eq!(next().await.as_deref(), Some("removed 10.0.0.1:1 10.0.0.1:1 up"));

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("exit");
    assert_eq!(status.code(), Some(0));
    reader.await.expect("join");
    provider.shutdown().await;
    node.shutdown().await;
}

fn instance(host: &str, port: u32) -> registry_client::v1::Instance {
    registry_client::v1::Instance { service: "orders".into(), host: host.into(), port, ..Default::default() }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}
