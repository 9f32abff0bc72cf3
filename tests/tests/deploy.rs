//! The files under `deploy/` checked against the real programs: every TOML
//! passes the node's own `--check-config`, every `REGISTRY_*` variable and flag
//! the files use is one the node knows, the NATS configuration loads in a real
//! nats-server, and its per-node users may do what a node does and no more.
//! (YAML, compose, HAProxy and systemd files: `scripts/check-deploy.sh`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use registry_tests::nats::free_port;
use registry_tests::procs::node_bin;
use registry_tests::*;
use tokio_stream::StreamExt as _;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { stack.push(path) } else { out.push(path) }
        }
    }
    out.sort();
    out
}

fn deploy_files() -> Vec<PathBuf> {
    files_under(&repo_root().join("deploy"))
}

/// Runs the node binary with `args`, without any `REGISTRY_*` variable of the
/// test's own environment.
fn node(args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new(node_bin()?);
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("REGISTRY_")) {
        cmd.env_remove(k);
    }
    Ok(cmd.output()?)
}

#[test]
fn every_toml_under_deploy_passes_check_config() -> Result<()> {
    let mut tomls: Vec<PathBuf> =
        deploy_files().into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    tomls.push(repo_root().join("config.example.toml"));
    ensure!(tomls.len() >= 3, "expected the systemd and k8s examples, found {tomls:?}");
    for path in &tomls {
        let out = node(&["--config", &path.to_string_lossy(), "--check-config"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "{}: {:?}: {stderr}", path.display(), out.status);
        let printed = String::from_utf8(out.stdout)?;
        ensure!(printed.contains("[sync]"), "{}: printed the effective config", path.display());
    }
    Ok(())
}

/// Words of the form `REGISTRY_[A-Z_]+` in `text`.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("REGISTRY_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        // `REGISTRY_*` or `REGISTRY_<N>_...` in prose names a family, not a variable.
        if !tail[..end].ends_with('_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn deploy_files_use_only_settings_the_node_knows() -> Result<()> {
    let help = String::from_utf8(node(&["--help"])?.stdout)?;
    let known = env_names(&help);
    ensure!(known.contains("REGISTRY_NODE_ID"), "--help lists the variables: {help}");
    for path in deploy_files() {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for name in env_names(&text) {
            // nats-server's own variables (passwords of the per-node users).
            if name.ends_with("_NATS_PASSWORD") {
                continue;
            }
            ensure!(known.contains(&name), "{} uses {name}, which registry-node does not read", path.display());
        }
        // Flags on the node's command lines.
        for line in text.lines() {
            let Some((_, args)) = line.split_once("bin/registry-node ") else { continue };
            for flag in args.split_whitespace().filter(|w| w.starts_with("--")) {
                ensure!(help.contains(flag), "{}: unknown flag {flag} in {line:?}", path.display());
            }
        }
    }
    Ok(())
}

/// deploy/nats/nats.conf made runnable on loopback: its listen, monitoring and
/// route addresses moved to free local ports, and the per-node users included.
struct AuthNats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

const PASSWORDS: [(&str, &str); 3] =
    [("REGISTRY_0_NATS_PASSWORD", "pw-0"), ("REGISTRY_1_NATS_PASSWORD", "pw-1"), ("REGISTRY_2_NATS_PASSWORD", "pw-2")];

impl AuthNats {
    fn config(port: u16, monitor: u16, route: u16) -> Result<String> {
        let text = std::fs::read_to_string(repo_root().join("deploy/nats/nats.conf"))?;
        let mut out = text.clone();
        for (from, to) in [
            ("0.0.0.0:4222".to_string(), format!("127.0.0.1:{port}")),
            ("0.0.0.0:8222".to_string(), format!("127.0.0.1:{monitor}")),
            ("0.0.0.0:6222".to_string(), format!("127.0.0.1:{route}")),
            ("# include \"auth.conf\"".to_string(), "include \"auth.conf\"".to_string()),
        ] {
            ensure!(out.contains(&from), "deploy/nats/nats.conf no longer has {from:?}");
            out = out.replace(&from, &to);
        }
        // This server is nats-1; nothing listens on the other two routes.
        for n in 1..=3 {
            let from = format!("nats-route://nats-{n}:6222");
            ensure!(out.contains(&from), "deploy/nats/nats.conf no longer routes to nats-{n}");
            let to = if n == 1 { route } else { free_port()? };
            out = out.replace(&from, &format!("nats-route://127.0.0.1:{to}"));
        }
        Ok(out)
    }

    fn prepare(port: u16, monitor: u16, route: u16) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("registry-deploy-nats-{port}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("nats.conf"), Self::config(port, monitor, route)?)?;
        std::fs::copy(repo_root().join("deploy/nats/auth.conf"), dir.join("auth.conf"))?;
        Ok(dir)
    }

    fn command(dir: &Path) -> Command {
        let mut cmd = Command::new("nats-server");
        cmd.current_dir(dir).env("SERVER_NAME", "deploy-test").envs(PASSWORDS).stdout(Stdio::null());
        cmd
    }

    async fn start() -> Result<Self> {
        let (port, monitor) = (free_port()?, free_port()?);
        let dir = Self::prepare(port, monitor, free_port()?)?;
        let child = Self::command(&dir)
            .args(["-c", "nats.conf", "-l", "nats.log"])
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (scripts/test.sh installs it)")?;
        let server = Self { child, port, dir };
        let addr = format!("127.0.0.1:{monitor}").parse()?;
        eventually("nats-server with the deploy config answers", Duration::from_secs(10), || async move {
            http_get(addr, "/healthz").await.ok().filter(|(s, _)| *s == 200).map(|_| ())
        })
        .await?;
        Ok(server)
    }

    async fn connect(&self, user: &str, password: &str) -> Result<async_nats::Client> {
        let url = format!("nats://127.0.0.1:{}", self.port);
        Ok(async_nats::ConnectOptions::with_user_and_password(user.into(), password.into()).connect(url).await?)
    }
}

impl Drop for AuthNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn nats_config_loads_in_nats_server() -> Result<()> {
    let dir = AuthNats::prepare(free_port()?, free_port()?, free_port()?)?;
    let out = AuthNats::command(&dir).args(["-c", "nats.conf", "-t"]).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.context("running nats-server -t (scripts/test.sh installs it)")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.contains("valid"), "nats-server -t: {said}");
    Ok(())
}

/// Waits until the server has registered `sub` (on `subject`): async-nats's
/// flush only writes the socket, so another connection could otherwise publish
/// before the subscription exists. The probe is read off `sub` here.
async fn until_subscribed(client: &async_nats::Client, sub: &mut async_nats::Subscriber, subject: &str) -> Result<()> {
    client.publish(subject.to_string(), "probe".into()).await?;
    client.flush().await?;
    ensure!(next_subject(sub).await? == subject, "the probe comes back first");
    Ok(())
}

async fn next_subject(sub: &mut async_nats::Subscriber) -> Result<String> {
    let msg = tokio::time::timeout(PROMPTLY, sub.next()).await.context("no message in time")?;
    Ok(msg.context("subscription ended")?.subject.to_string())
}

#[tokio::test]
async fn nats_users_publish_only_their_own_changes() -> Result<()> {
    let nats = AuthNats::start().await?;
    ensure!(nats.connect("registry-0", "wrong").await.is_err(), "a wrong password is refused");
    let node0 = nats.connect("registry-0", "pw-0").await?;
    let node1 = nats.connect("registry-1", "pw-1").await?;
    let mut bus = node1.subscribe("registry.prod.bus.>").await?;
    until_subscribed(&node1, &mut bus, "registry.prod.bus.hello").await?;

    // registry-0 tries to publish in registry-1's name first: the server drops
    // it, so the first thing registry-1 hears is registry-0's own batch.
    node0.publish("registry.prod.bus.changes.registry-1", "forged".into()).await?;
    node0.publish("registry.prod.bus.changes.registry-0", "own".into()).await?;
    node0.publish("registry.prod.bus.beat", "beat".into()).await?;
    node0.publish("registry.prod.bus.hello", "hello".into()).await?;
    node0.flush().await?;
    let mut heard = Vec::new();
    for _ in 0..3 {
        heard.push(next_subject(&mut bus).await?);
    }
    assert_eq!(
        heard,
        ["registry.prod.bus.changes.registry-0", "registry.prod.bus.beat", "registry.prod.bus.hello"],
        "the forged batch never arrives"
    );

    // Sync pulls: registry-0 asks registry-1, which may answer the request it
    // received (allow_responses) though it may not publish on _INBOX at large.
    let mut pulls = node1.subscribe("registry.prod.sync.registry-1").await?;
    until_subscribed(&node1, &mut pulls, "registry.prod.sync.registry-1").await?;
    let responder = {
        let node1 = node1.clone();
        tokio::spawn(async move {
            while let Some(msg) = pulls.next().await {
                if let Some(reply) = msg.reply {
                    let _ = node1.publish(reply, "page".into()).await;
                    let _ = node1.flush().await;
                }
            }
        })
    };
    let reply = tokio::time::timeout(PROMPTLY, node0.request("registry.prod.sync.registry-1", "pull".into()))
        .await
        .context("no reply in time")??;
    assert_eq!(&reply.payload[..], b"page");

    // registry-0 may not listen to pulls addressed to registry-1.
    let mut stolen = node0.subscribe("registry.prod.sync.registry-1").await?;
    node0.flush().await?;
    let _ = tokio::time::timeout(PROMPTLY, node0.request("registry.prod.sync.registry-1", "pull".into())).await;
    if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), stolen.next()).await {
        bail!("registry-0 received a pull addressed to registry-1: {msg:?}");
    }
    responder.abort();
    Ok(())
}

/// Nodes given their user and password in the NATS URL join a server that
/// requires them, and replicate within the permissions of deploy/nats/auth.conf.
/// (async-nats does not take credentials from a URL; bus-sync hands them over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_replicate_as_their_own_nats_users() -> Result<()> {
    let nats = AuthNats::start().await?;
    let url = |user: &str, pw: &str| format!("nats://{user}:{pw}@127.0.0.1:{}", nats.port);
    let connected = |n: &registry_node::NodeHandle| {
        let registry = n.registry.clone();
        eventually("the node is connected to NATS", PROMPTLY, move || {
            let r = registry.clone();
            async move { r.bus_connected().then_some(()) }
        })
    };
    let a = start_node(cluster_config("registry-0", &[url("registry-0", "pw-0")], "prod")).await?;
    connected(&a).await?;
    until_ready(&a).await?;
    let mut provider = Session::open(&mut client(a.grpc_addr).await?, 0).await?;
    provider.upsert(instance("orders", "o1", 8001)).await?;
    // registry-1 starts later, so it pulls registry-0's slice (a sync request
    // and its replies), then hears the next change on the bus.
    let b = start_node(cluster_config("registry-1", &[url("registry-1", "pw-1")], "prod")).await?;
    connected(&b).await?;
    until_ready(&b).await?;
    assert_eq!(service_ids(b.grpc_addr, "orders").await?, ["o1"], "loaded from registry-0's slice");
    provider.upsert(instance("orders", "o2", 8002)).await?;
    eventually("registry-1 hears registry-0's next change", PROMPTLY, || async {
        service_ids(b.grpc_addr, "orders").await.ok().filter(|ids| ids == &["o1", "o2"])
    })
    .await?;
    provider.goodbye().await?;
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
