//! The web console in a real browser: Debian's chromium, headless, driven by
//! playwright-core (`tests/console/e2e.mjs`, installed under `target/npm/`).
//! The nodes are real (one in this process, or `registry-node` processes on
//! a real nats-server), and so is every request the page makes.
//!
//! Screenshots go to `target/console-screenshots/`; with
//! `UPDATE_SCREENSHOTS=1` they replace those in `docs/` that the README shows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use registry_node::auth::{AuthMode, Role};
use registry_proto::v1;
use registry_proto::v1::registry_client::RegistryClient;
use registry_tests::nats::NatsServer;
use registry_tests::procs::{NodeProc, node_bin};
use registry_tests::tools::{npm_project, target_dir};
use registry_tests::{Session, Watch, channel, grant, start_node, test_config, token_entry};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use v1::register_request::Kind as In;
use v1::register_response::Kind as Out;

const CHROMIUM: &str = "/usr/bin/chromium";

/// One scenario at a time, and not beside the heaviest scenarios of the
/// other modules of this binary (see `main.rs`).
use crate::ONE_AT_A_TIME;

/// A scenario of `e2e.mjs` running against `url`. The script asks for steps
/// outside the browser; `on_step` does them.
struct Browser {
    scenario: &'static str,
    url: String,
    env: Vec<(&'static str, String)>,
}

impl Browser {
    fn new(scenario: &'static str, http: SocketAddr) -> Self {
        Self { scenario, url: format!("http://{http}"), env: Vec::new() }
    }

    fn env(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.env.push((name, value.into()));
        self
    }

    /// Runs the scenario to its end (at most `within`); returns the lines it
    /// printed as `measure ...`.
    async fn run<F, Fut>(self, within: Duration, mut on_step: F) -> Result<Vec<String>>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        ensure!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does)"
        );
        let modules = npm_project("console")?;
        let shots = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("docs")
        } else {
            target_dir().join("console-screenshots")
        };
        let failures = target_dir().join("console-screenshots").join(format!("failed-{}", self.scenario));
        std::fs::create_dir_all(&shots)?;
        std::fs::create_dir_all(&failures)?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console").join("e2e.mjs");
        let mut child = tokio::process::Command::new("node")
            .arg(&script)
            .env("PLAYWRIGHT", &modules)
            .env("CHROMIUM", CHROMIUM)
            .env("SCENARIO", self.scenario)
            .env("URL", &self.url)
            .env("SCREENSHOTS", &shots)
            .env("FAILURE_DIR", &failures)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("node (Debian: nodejs) runs the browser script")?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("stdin"))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("stdout"))?).lines();
        let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("stderr"))?;
        let mut measures = Vec::new();
        let mut done = false;
        let talk = async {
            while let Some(line) = stdout.next_line().await? {
                if let Some(step) = line.strip_prefix("step ") {
                    let answer = match on_step(step.to_string()).await {
                        Ok(()) => "ok\n".to_string(),
                        Err(e) => format!("fail {}\n", format!("{e:#}").replace('\n', " ")),
                    };
                    stdin.write_all(answer.as_bytes()).await?;
                } else if let Some(m) = line.strip_prefix("measure ") {
                    measures.push(m.to_string());
                } else if line == "done" {
                    done = true;
                } else {
                    eprintln!("browser: {line}");
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(within, talk)
            .await
            .map_err(|_| anyhow!("the browser scenario took over {within:?}"))??;
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
        let mut errors = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut errors).await?;
        if !status.success() || !done {
            bail!(
                "the {} scenario failed ({status}); a screenshot is in {}:\n{errors}",
                self.scenario,
                failures.display()
            );
        }
        Ok(measures)
    }
}

/// Adds `authorization: Bearer <token>` to each call.
type Bearer = Box<dyn FnMut(Request<()>) -> Result<Request<()>, tonic::Status> + Send>;
type Authed = RegistryClient<InterceptedService<Channel, Bearer>>;

/// A gRPC client sending `token` with every call.
async fn client_with(addr: SocketAddr, token: &str) -> Result<Authed> {
    let value = MetadataValue::try_from(format!("Bearer {token}"))?;
    let bearer: Bearer = Box::new(move |mut r| {
        r.metadata_mut().insert("authorization", value.clone());
        Ok(r)
    });
    Ok(RegistryClient::with_interceptor(channel(addr).await?, bearer))
}

fn instance(service: &str, id: &str, port: u32, zone: &str, status: v1::Status) -> v1::Instance {
    v1::Instance {
        namespace: "default".into(),
        service: service.into(),
        instance_id: id.into(),
        host: "10.1.0.7".into(),
        port,
        metadata: [("version".to_string(), "1.4.2".to_string())].into(),
        weight: None,
        zone: zone.into(),
        status: status as i32,
        ..Default::default()
    }
}

async fn register(c: &mut Authed, i: v1::Instance) -> Result<()> {
    let r = v1::RegisterInstanceRequest { instance: Some(i), ttl_ms: 600_000, lease_id: String::new() };
    c.register_instance(r).await?;
    Ok(())
}

async fn ids(c: &mut Authed, service: &str) -> Result<Vec<String>> {
    let r = c.get_service(v1::GetServiceRequest { namespace: "default".into(), service: service.into() }).await?;
    Ok(r.into_inner().instances.into_iter().map(|i| i.instance_id).collect())
}

/// A provider registers over gRPC and a consumer watches over gRPC; an admin
/// and a reader use the console, with auth on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_service_live_and_obeys_grants() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let token = || format!("{:032x}", rand::random::<u128>());
    let (admin, reader, provider) = (token(), token(), token());
    let entry = |name: &str, t: &str, role| token_entry(name, t, vec![grant("*", "*", role)]);
    let mut config = test_config("console-node");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.tokens = vec![
        entry("ops", &admin, Role::Admin),
        entry("viewer", &reader, Role::Read),
        entry("shop", &provider, Role::Write),
    ];
    let node = start_node(config).await?;
    let mut grpc = client_with(node.grpc_addr, &provider).await?;
    register(&mut grpc, instance("orders", "orders-1", 8080, "eu-1", v1::Status::Up)).await?;
    register(&mut grpc, instance("orders", "orders-2", 8081, "eu-2", v1::Status::Up)).await?;
    register(&mut grpc, instance("payments", "payments-1", 9090, "eu-1", v1::Status::Down)).await?;
    let mut consumer_client = client_with(node.grpc_addr, &reader).await?;
    let _billing = Watch::start(&mut consumer_client, "default", &["orders"], "billing").await?;

    let addr = node.grpc_addr;
    let provider_token = provider.clone();
    Browser::new("single", node.http_addr)
        .env("ADMIN_TOKEN", admin)
        .env("READ_TOKEN", reader)
        .run(Duration::from_secs(120), |step| {
            let token = provider_token.clone();
            async move {
                let mut c = client_with(addr, &token).await?;
                match step.as_str() {
                    "register orders-3" => {
                        register(&mut c, instance("orders", "orders-3", 8082, "eu-1", v1::Status::Up)).await
                    }
                    "remove orders-3" => {
                        let key = v1::InstanceKey {
                            namespace: "default".into(),
                            service: "orders".into(),
                            instance_id: "orders-3".into(),
                        };
                        let found = c.deregister(v1::DeregisterRequest { key: Some(key) }).await?.into_inner().found;
                        ensure!(found, "orders-3 was registered");
                        Ok(())
                    }
                    "orders-1 is gone" => {
                        let now = ids(&mut c, "orders").await?;
                        ensure!(!now.contains(&"orders-1".to_string()), "GetService still has orders-1: {now:?}");
                        Ok(())
                    }
                    other => bail!("unknown step {other}"),
                }
            }
        })
        .await?;
    node.shutdown().await;
    Ok(())
}

/// The cluster page of a 3-node cluster on a real nats-server: every member,
/// and a killed node turning suspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_every_member_and_a_killed_one_turning_suspect() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let nats = NatsServer::start().await?;
    let bin = node_bin()?;
    let config = "[sync]\nbeat_interval_ms = 500\nsuspect_after_ms = 2000\ndead_after_ms = 6000\n";
    let mut nodes = Vec::new();
    for name in ["console-a", "console-b", "console-c"] {
        nodes.push(NodeProc::spawn(&bin, name, &[nats.url()], "console", config)?);
    }
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60)).await?;
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let http = nodes[0].http;
    let victim = std::sync::Arc::new(tokio::sync::Mutex::new(nodes.pop().ok_or_else(|| anyhow!("three nodes"))?));
    Browser::new("cluster", http)
        .env("NODES", names.join(","))
        .run(Duration::from_secs(90), |step| {
            let victim = victim.clone();
            async move {
                ensure!(step == "kill console-c", "unknown step {step}");
                victim.lock().await.kill9()
            }
        })
        .await?;
    Ok(())
}

/// Registers `instances` on `addr` through provider sessions of 1,000
/// (a session's limit), each sent whole before its answers are read. The
/// sessions hold them while they live (60 s heartbeats).
async fn load(addr: SocketAddr, instances: impl Iterator<Item = v1::Instance>) -> Result<Vec<Session>> {
    let mut sessions = Vec::new();
    let mut client = RegistryClient::new(channel(addr).await?);
    let mut chunk = Vec::new();
    let mut instances = instances.peekable();
    while instances.peek().is_some() {
        chunk.clear();
        chunk.extend(instances.by_ref().take(1_000));
        let mut s = Session::open(&mut client, 60_000).await?;
        for i in &chunk {
            s.send(In::Upsert(i.clone())).await?;
        }
        for _ in &chunk {
            match s.next_within(Duration::from_secs(60)).await? {
                Out::Accepted(_) => {}
                other => bail!("an upsert was not accepted: {other:?}"),
            }
        }
        sessions.push(s);
    }
    Ok(sessions)
}

fn plain(service: String, id: String, port: u32, status: v1::Status) -> v1::Instance {
    // "big" churns in a namespace of its own: "default" holds the 10,000.
    let namespace = if service == "big" { "churn" } else { "default" };
    v1::Instance {
        namespace: namespace.into(),
        service,
        instance_id: id,
        host: "10.2.0.1".into(),
        port,
        status: status as i32,
        ..Default::default()
    }
}

/// 10,000 services and 100,000 instances: the services page pages through
/// them and sorts them; then a service of 10,000 instances changing 1,000
/// times a second keeps up. Times are printed and reported in BENCHMARKS.md
/// (a debug build: no speed target is asserted here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_pages_ten_thousand_services_and_keeps_up_with_churn() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut config = test_config("console-scale");
    config.sessions.max_heartbeat_ms = 60_000;
    let node = start_node(config).await?;
    let status = |n: u32| if n.is_multiple_of(7) { v1::Status::Down } else { v1::Status::Up };
    let _many = load(
        node.grpc_addr,
        (0..100_000u32).map(|n| plain(format!("svc-{:05}", n / 10), format!("i-{n}"), 1_000 + n % 50_000, status(n))),
    )
    .await?;
    let _big = load(
        node.grpc_addr,
        (0..10_000u32).map(|n| plain("big".into(), format!("b-{n:05}"), 20_000 + n, v1::Status::Up)),
    )
    .await?;
    let addr = node.grpc_addr;
    let churners = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let measures = Browser::new("scale", node.http_addr)
        .run(Duration::from_secs(120), |step| {
            let churners = churners.clone();
            async move {
                ensure!(step == "churn", "unknown step {step}");
                // 3,000 changes at 1,000 a second (status flips of b-00001..),
                // then b-00000 goes down: the page must show that last change.
                let mut client = RegistryClient::new(channel(addr).await?);
                let mut s = Session::open(&mut client, 60_000).await?;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                for n in 0..3_000u32 {
                    tick.tick().await;
                    let id = 1 + n % 999;
                    let flip = if (n / 999) % 2 == 0 { v1::Status::Down } else { v1::Status::Up };
                    s.send(In::Upsert(plain("big".into(), format!("b-{id:05}"), 20_000 + id, flip))).await?;
                }
                s.send(In::Upsert(plain("big".into(), "b-00000".into(), 20_000, v1::Status::Down))).await?;
                for _ in 0..3_001 {
                    s.next_within(Duration::from_secs(30)).await?;
                }
                // The session keeps its instances while the page checks them.
                churners.lock().await.push(s);
                Ok(())
            }
        })
        .await?;
    eprintln!("console at 10,000 services / 110,000 instances (debug build): {measures:?}");
    node.shutdown().await;
    Ok(())
}
