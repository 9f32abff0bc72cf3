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
            // nats-server's own variables: REGISTRY_<N>_NATS_PASSWORD, the
            // passwords of the per-node users (the node's own is checked).
            let number = name.strip_prefix("REGISTRY_").and_then(|n| n.strip_suffix("_NATS_PASSWORD"));
            if number.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
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
/// route addresses moved to free local ports, with the per-node users of
/// auth.conf, their passwords made for the run by deploy/nats/make-passwords.sh
/// as an operator makes them.
struct AuthNats {
    child: Child,
    port: u16,
    monitor: u16,
    dir: PathBuf,
    passwords: Vec<String>,
}

/// The node ids deploy/nats/auth.conf has users for.
const NODES: [&str; 3] = ["registry-0", "registry-1", "registry-2"];

/// Runs deploy/nats/make-passwords.sh for `dir`: new passwords in
/// `dir/passwords.conf` (the servers' copy) and `dir/.env` (the nodes'),
/// returned in node order, as read back from `.env`.
fn make_passwords(dir: &Path) -> Result<Vec<String>> {
    let script = repo_root().join("deploy/nats/make-passwords.sh");
    let env = dir.join(".env");
    let out =
        Command::new(&script).arg(dir).arg(&env).output().with_context(|| format!("running {}", script.display()))?;
    ensure!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&env)?;
    NODES
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let prefix = format!("REGISTRY_{i}_NATS_PASSWORD=");
            let password = text.lines().find_map(|l| l.strip_prefix(&prefix));
            Ok(password.with_context(|| format!("{}: no password for {node}", env.display()))?.to_string())
        })
        .collect()
}

impl AuthNats {
    fn config(port: u16, monitor: u16, route: u16) -> Result<String> {
        let text = std::fs::read_to_string(repo_root().join("deploy/nats/nats.conf"))?;
        let mut out = text.clone();
        ensure!(out.lines().any(|l| l == "include \"auth.conf\""), "deploy/nats/nats.conf includes auth.conf");
        for (from, to) in [
            ("0.0.0.0:4222".to_string(), format!("127.0.0.1:{port}")),
            ("0.0.0.0:8222".to_string(), format!("127.0.0.1:{monitor}")),
            ("0.0.0.0:6222".to_string(), format!("127.0.0.1:{route}")),
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

    /// A directory with the configuration and new passwords; the passwords.
    fn prepare(port: u16, monitor: u16, route: u16) -> Result<(PathBuf, Vec<String>)> {
        let dir = std::env::temp_dir().join(format!("registry-deploy-nats-{port}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("nats.conf"), Self::config(port, monitor, route)?)?;
        std::fs::copy(repo_root().join("deploy/nats/auth.conf"), dir.join("auth.conf"))?;
        let passwords = make_passwords(&dir)?;
        Ok((dir, passwords))
    }

    /// nats-server in `dir`, with none of the passwords' variables in its
    /// environment: they must come from passwords.conf.
    fn command(dir: &Path) -> Command {
        let mut cmd = Command::new("nats-server");
        cmd.current_dir(dir).env("SERVER_NAME", "deploy-test").stdout(Stdio::null());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("REGISTRY_")) {
            cmd.env_remove(k);
        }
        cmd
    }

    async fn start() -> Result<Self> {
        let (port, monitor) = (free_port()?, free_port()?);
        let (dir, passwords) = Self::prepare(port, monitor, free_port()?)?;
        let child = Self::command(&dir)
            .args(["-c", "nats.conf", "-l", "nats.log"])
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (scripts/test.sh installs it)")?;
        let server = Self { child, port, monitor, dir, passwords };
        let addr = format!("127.0.0.1:{monitor}").parse()?;
        eventually("nats-server with the deploy config answers", Duration::from_secs(10), || async move {
            http_get(addr, "/healthz").await.ok().filter(|(s, _)| *s == 200).map(|_| ())
        })
        .await?;
        Ok(server)
    }

    fn password(&self, node: &str) -> &str {
        let i = NODES.iter().position(|n| *n == node).expect("a node of auth.conf");
        &self.passwords[i]
    }

    /// A client logged in as `user`, with the node's inbox prefix (cluster
    /// "prod"), the only part of _INBOX its user may read.
    async fn connect(&self, user: &str, password: &str) -> Result<async_nats::Client> {
        let url = format!("nats://127.0.0.1:{}", self.port);
        Ok(async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .custom_inbox_prefix(format!("_INBOX.registry.prod.{user}"))
            .connect(url)
            .await?)
    }

    async fn connect_as(&self, node: &str) -> Result<async_nats::Client> {
        self.connect(node, self.password(node)).await
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
    let (dir, _) = AuthNats::prepare(free_port()?, free_port()?, free_port()?)?;
    let out = AuthNats::command(&dir).args(["-c", "nats.conf", "-t"]).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.context("running nats-server -t (scripts/test.sh installs it)")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.contains("valid"), "nats-server -t: {said}");
    Ok(())
}

/// The rotation of deploy/README.md, with the shipped files: new passwords
/// from make-passwords.sh, then a reload of the running server (SIGHUP, as
/// `docker compose kill -s HUP` sends it). The server is not restarted,
/// refuses the old passwords and takes the new ones.
#[tokio::test]
async fn nats_passwords_rotate_by_reload_as_shipped() -> Result<()> {
    let mut nats = AuthNats::start().await?;
    let old = nats.password("registry-0").to_string();
    let before = nats.connect("registry-0", &old).await?;
    let config_loaded = |nats: &AuthNats| {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], nats.monitor).into();
        async move {
            let (_, body) = http_get(addr, "/varz").await.ok()?;
            let varz: serde_json::Value = serde_json::from_str(&body).ok()?;
            varz.get("config_load_time").map(ToString::to_string)
        }
    };
    let loaded = config_loaded(&nats).await.context("/varz has config_load_time")?;
    nats.passwords = make_passwords(&nats.dir)?;
    ensure!(nats.password("registry-0") != old, "make-passwords.sh made new passwords");
    let pid = nats.child.id();
    let signalled = Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
    ensure!(signalled.success(), "kill -HUP {pid}");
    eventually("nats-server reloads its configuration", PROMPTLY, || async {
        config_loaded(&nats).await.filter(|now| *now != loaded)
    })
    .await?;
    ensure!(nats.child.try_wait()?.is_none(), "the server kept running (a reload, not a restart)");
    ensure!(nats.connect("registry-0", &old).await.is_err(), "the old password is refused after the reload");
    for node in NODES {
        nats.connect_as(node).await.with_context(|| format!("{node} logs in with its new password"))?;
    }
    // The reload closed the connection made with the old password.
    eventually("the old login is closed", PROMPTLY, || async {
        (before.connection_state() != async_nats::connection::State::Connected).then_some(())
    })
    .await?;
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
async fn nats_users_publish_only_on_their_own_subjects() -> Result<()> {
    let nats = AuthNats::start().await?;
    ensure!(nats.connect("registry-0", "wrong").await.is_err(), "a wrong password is refused");
    let node0 = nats.connect_as("registry-0").await?;
    let node1 = nats.connect_as("registry-1").await?;
    let mut bus = node1.subscribe("registry.prod.bus.>").await?;
    until_subscribed(&node1, &mut bus, "registry.prod.bus.hello.registry-1").await?;

    // registry-0 tries to publish in registry-1's name before each message of
    // its own: the server drops those, so registry-1 hears registry-0's own only.
    for kind in ["changes", "beat", "hello"] {
        node0.publish(format!("registry.prod.bus.{kind}.registry-1"), "forged".into()).await?;
        node0.publish(format!("registry.prod.bus.{kind}.registry-0"), "own".into()).await?;
    }
    node0.flush().await?;
    let mut heard = Vec::new();
    for _ in 0..3 {
        heard.push(next_subject(&mut bus).await?);
    }
    assert_eq!(
        heard,
        [
            "registry.prod.bus.changes.registry-0",
            "registry.prod.bus.beat.registry-0",
            "registry.prod.bus.hello.registry-0"
        ],
        "nothing forged arrives"
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
    let url = |user: &str| format!("nats://{user}:{}@127.0.0.1:{}", nats.password(user), nats.port);
    let connected = |n: &registry_node::NodeHandle| {
        let registry = n.registry.clone();
        eventually("the node is connected to NATS", PROMPTLY, move || {
            let r = registry.clone();
            async move { r.bus_connected().then_some(()) }
        })
    };
    let a = start_node(cluster_config("registry-0", &[url("registry-0")], "prod")).await?;
    connected(&a).await?;
    until_ready(&a).await?;
    let mut provider = Session::open(&mut client(a.grpc_addr).await?, 0).await?;
    provider.upsert(instance("orders", "o1", 8001)).await?;
    // registry-1 starts later, so it pulls registry-0's slice (a sync request
    // and its replies), then hears the next change on the bus.
    let b = start_node(cluster_config("registry-1", &[url("registry-1")], "prod")).await?;
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
