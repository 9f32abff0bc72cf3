//! The Eureka-compatible API with a real Eureka client (py-eureka-client,
//! from PyPI into the test virtual environment), and its bad input over
//! plain HTTP. The client registers, renews, discovers a service registered
//! over gRPC, follows it by deltas without falling back to full fetches,
//! stops, and expires when its renewals stop.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use registry_node::auth::{AuthMode, Role};
use registry_proto::v1;
use registry_tests::tools::python_module;
use registry_tests::{
    PROMPTLY, Watch, client, eventually, grant, http_json, http_request, metric, start_node, test_config, token_entry,
};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const PY_EUREKA_CLIENT: &str = "py-eureka-client==0.13.3";

/// A Eureka client process driven by lines: py-eureka-client
/// (`tests/eureka/py_client.py`) or eureka-js-client (`tests/eureka-js/client.js`).
struct PyClient {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl PyClient {
    /// Starts py-eureka-client; it has registered when this returns.
    async fn start(http: SocketAddr, app: &str, id: &str, port: u16) -> Result<Self> {
        Self::start_url(format!("http://{http}/eureka/"), app, id, port).await
    }

    /// [`Self::start`] with HTTP basic auth in the URL, as Spring writes it.
    async fn start_as(http: SocketAddr, user: &str, token: &str, app: &str, id: &str, port: u16) -> Result<Self> {
        Self::start_url(format!("http://{user}:{token}@{http}/eureka/"), app, id, port).await
    }

    async fn start_url(url: String, app: &str, id: &str, port: u16) -> Result<Self> {
        let python = python_module("py_eureka_client", &[PY_EUREKA_CLIENT])?;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eureka").join("py_client.py");
        let mut command = tokio::process::Command::new(python);
        command.arg(script).args([url, app.into(), id.into(), port.to_string()]);
        Self::spawn(command, "py-eureka-client").await
    }

    /// Starts eureka-js-client (npm, pinned by tests/eureka-js/package-lock.json).
    async fn start_js(http: SocketAddr, app: &str, id: &str, port: u16) -> Result<Self> {
        let modules = registry_tests::tools::npm_project("eureka-js")?;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eureka-js").join("client.js");
        let mut command = tokio::process::Command::new("node");
        command.env("NODE_MODULES", modules).arg(script).args([
            http.ip().to_string(),
            http.port().to_string(),
            app.into(),
            id.into(),
            port.to_string(),
        ]);
        Self::spawn(command, "eureka-js-client").await
    }

    async fn spawn(mut command: tokio::process::Command, what: &str) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("stdout"))?).lines();
        let mut c = Self { _child: child, stdin, stdout };
        let first = c.line().await?;
        ensure!(first == "registered", "{what} said {first:?}");
        Ok(c)
    }

    async fn line(&mut self) -> Result<String> {
        tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line())
            .await
            .context("py-eureka-client did not answer")??
            .ok_or_else(|| anyhow!("py-eureka-client exited"))
    }

    async fn ask(&mut self, command: &str) -> Result<String> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await?;
        self.line().await
    }

    /// The UP instances of `app` in the client's own registry copy.
    async fn discover(&mut self, app: &str) -> Result<Vec<String>> {
        Ok(serde_json::from_str(&self.ask(&format!("discover {app}")).await?)?)
    }

    /// Asks until the client's copy of `app` is `want` (it fetches every
    /// second), for at most 10 s.
    async fn until_discovers(&mut self, app: &str, want: &[&str]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.discover(app).await?;
            if seen == want {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the client's copy of {app} is {seen:?}, not {want:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn grpc_instance(service: &str, id: &str, host: &str, port: u32) -> v1::Instance {
    v1::Instance {
        namespace: "default".into(),
        service: service.into(),
        instance_id: id.into(),
        host: host.into(),
        port,
        ..Default::default()
    }
}

async fn register_grpc(addr: SocketAddr, i: v1::Instance) -> Result<()> {
    let mut c = client(addr).await?;
    c.register_instance(v1::RegisterInstanceRequest { instance: Some(i), ttl_ms: 60_000, lease_id: String::new() })
        .await?;
    Ok(())
}

/// Whether the watched views of orders-py hold `id`.
fn has(
    views: &std::collections::HashMap<String, (u64, std::collections::BTreeMap<String, v1::Instance>)>,
    id: &str,
) -> bool {
    views.get("orders-py").is_some_and(|(_, instances)| instances.contains_key(id))
}

async fn metrics_of(http: SocketAddr) -> Result<String> {
    Ok(http_request(http, "GET", "/metrics", &[], None).await?.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_eureka_client_registers_renews_discovers_by_delta_and_leaves() -> Result<()> {
    let node = start_node(test_config("eureka-py")).await?;
    let (grpc, http) = (node.grpc_addr, node.http_addr);
    // Metadata the gRPC API takes but no XML element name can hold as it
    // is, and a value with a control character. The client reads XML with
    // a strict parser: written as they are, they made the whole document
    // unreadable, and the client found nothing at all.
    let mut inv_1 = grpc_instance("inventory", "inv-1", "10.0.0.1", 7001);
    inv_1.metadata =
        [("app.kubernetes.io/name", "inventory"), ("build_id", "42"), ("1st", "a"), ("note", "bell\u{7}!")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    register_grpc(grpc, inv_1).await?;
    register_grpc(grpc, grpc_instance("inventory", "inv-2", "10.0.0.2", 7002)).await?;

    // It registers: GetService and Subscribe see it, with what it sent.
    let mut py = PyClient::start(http, "orders-py", "orders-py-1", 9090).await?;
    let mut c = client(grpc).await?;
    let got = c
        .get_service(v1::GetServiceRequest { namespace: "default".into(), service: "orders-py".into() })
        .await?
        .into_inner();
    let i = got.instances.iter().find(|i| i.instance_id == "orders-py-1").context("registered")?;
    ensure!(i.host == "10.5.0.1" && i.port == 9090 && i.zone == "eu-1", "{i:?}");
    ensure!(i.metadata.get("version").map(String::as_str) == Some("2.0"), "{i:?}");
    ensure!(i.status() == v1::Status::Up, "{i:?}");
    let mut watch = Watch::start(&mut c, "default", &["orders-py"], "eureka-test").await?;
    watch.until("the snapshot has it", PROMPTLY, |v| has(v, "orders-py-1")).await?;

    // Its renewals (every second, a 3 s lease) keep it: nothing is removed
    // over two whole leases.
    let quiet = tokio::time::timeout(Duration::from_secs(6), watch.step(Duration::from_secs(6))).await;
    if let Ok(Ok(push)) = quiet {
        ensure!(watch.has("orders-py", "orders-py-1"), "a renewed instance went away: {push:?}");
    }

    // It finds the service registered over gRPC through its own registry
    // copy, and follows a new registration by delta, with no full fetch
    // after its first (the delta's hash code adds up).
    let full_before = metric(&metrics_of(http).await?, "eureka_full_fetches_total").unwrap_or(0);
    let want = ["10.0.0.1:7001", "10.0.0.2:7002"];
    py.until_discovers("inventory", &want).await?;
    // Keys coded as a Eureka server codes them (XStream's name coder, which
    // Java clients decode; this client does not), the control character
    // replaced.
    let seen: serde_json::Value = serde_json::from_str(&py.ask("metadata inventory").await?)?;
    let want_metadata = serde_json::json!({
        "app.kubernetes.io_.002fname": "inventory", "build__id": "42", "_.0031st": "a", "note": "bell\u{FFFD}!",
    });
    ensure!(seen["inv-1"] == want_metadata, "inv-1's metadata as the client reads it: {seen}");
    register_grpc(grpc, grpc_instance("inventory", "inv-3", "10.0.0.3", 7003)).await?;
    py.until_discovers("inventory", &["10.0.0.1:7001", "10.0.0.2:7002", "10.0.0.3:7003"])
        .await
        .context("a new gRPC registration reaches the client by delta")?;
    let m = metrics_of(http).await?;
    let (full, deltas) =
        (metric(&m, "eureka_full_fetches_total").unwrap_or(0), metric(&m, "eureka_delta_fetches_total").unwrap_or(0));
    eprintln!("py-eureka-client fetches: {full} full ({full_before} before the delta), {deltas} delta");
    ensure!(full == full_before, "the client fell back to full fetches: {full_before} then {full}");
    ensure!(deltas > 0, "the client fetched no delta");

    // stop(): it cancels, and the watcher sees it go at once.
    ensure!(py.ask("stop").await? == "stopped");
    watch.until("the stopped client is gone", PROMPTLY, |v| !has(v, "orders-py-1")).await?;

    // A client whose renewals stop expires after its lease (3 s).
    let mut silent = PyClient::start(http, "orders-py", "orders-py-2", 9091).await?;
    watch.until("the second client is there", PROMPTLY, |v| has(v, "orders-py-2")).await?;
    ensure!(silent.ask("silence").await? == "silent");
    let quiet_since = tokio::time::Instant::now();
    watch.until("the silent client expires", Duration::from_secs(10), |v| !has(v, "orders-py-2")).await?;
    let after = quiet_since.elapsed();
    ensure!(after >= Duration::from_secs(1), "expired after {after:?}, before its 3 s lease could run out");
    node.shutdown().await;
    Ok(())
}

/// POSTs `body` and reads the answer even when the node answers before the
/// body is all sent (a body over the limit) and stops reading.
async fn post_any_size(addr: SocketAddr, path: &str, body: &str) -> Result<(u16, String)> {
    use tokio::io::AsyncReadExt as _;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    // The node may answer and close before taking it all: that is its right.
    let _ = s.write_all(body.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PROMPTLY, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status =
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("no answer: {text:?}"))?;
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Bad input: each is a 400 naming the field, counted, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_eureka_input_is_refused_and_counted() -> Result<()> {
    let node = start_node(test_config("eureka-bad")).await?;
    let http = node.http_addr;
    let big = format!("{{\"instance\": {{\"ipAddr\": \"{}\"}}}}", "x".repeat(10 * 1024 * 1024));
    let long_app = "a".repeat(300);
    let cases: Vec<(String, String, &str)> = vec![
        ("/eureka/apps/ORDERS".into(), "{\"instance\": ".into(), "body"),
        ("/eureka/apps/ORDERS".into(), "<instance><port>1</instance>".into(), "body"),
        ("/eureka/apps/ORDERS".into(), "{\"instance\": {\"hostName\": \"h\"}}".into(), "instance.port"),
        ("/eureka/apps/ORDERS".into(), "{\"instance\": {\"port\": 80}}".into(), "instance.ipAddr"),
        (
            "/eureka/apps/ORDERS".into(),
            "<instance><instanceId>i</instanceId><ipAddr>10.0.0.1</ipAddr><port enabled=\"true\">80</port><status>SLEEPY</status></instance>".into(),
            "instance.status",
        ),
        ("/eureka/apps/ORDERS".into(), big, "body"),
        (format!("/eureka/apps/{long_app}"), "{\"instance\": {\"instanceId\": \"i\", \"ipAddr\": \"10.0.0.1\", \"port\": 80}}".into(), "service"),
    ];
    for (path, body, field) in &cases {
        let (status, text) = post_any_size(http, path, body).await?;
        ensure!(status == 400, "{path} {}…: {status} {text}", &body[..body.len().min(60)]);
        ensure!(text.contains(field), "{path}: the message names {field}: {text}");
    }
    let (status, _) = http_request(http, "PUT", "/eureka/apps/ORDERS/x?status=SLEEPY", &[], None).await?;
    ensure!(status == 400, "a renewal with an unknown status: {status}");
    let m = metrics_of(http).await?;
    let counted = metric(&m, "eureka_bad_requests_total").unwrap_or(0);
    ensure!(counted == cases.len() as u64 + 1, "counted {counted} of {}", cases.len() + 1);
    // Nothing changed, and the node still answers.
    let (status, apps) = http_request(http, "GET", "/eureka/apps", &[("accept", "application/json")], None).await?;
    ensure!(status == 200, "{status}");
    let apps: serde_json::Value = serde_json::from_str(&apps)?;
    ensure!(apps["applications"]["application"].as_array().is_none_or(Vec::is_empty), "{apps}");
    node.shutdown().await;
    Ok(())
}

/// An `authorization` header of HTTP basic auth, as Spring sends it.
fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

/// With auth on: HTTP basic auth (the token's principal and the token), or
/// a bearer token; grants as for gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eureka_calls_authenticate_with_basic_auth() -> Result<()> {
    let token = format!("{:032x}", rand::random::<u128>());
    let mut config = test_config("eureka-auth");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.tokens = vec![token_entry("shop", &token, vec![grant("default", "orders", Role::Write)])];
    let node = start_node(config).await?;
    let http = node.http_addr;
    let body = "{\"instance\": {\"instanceId\": \"o-1\", \"ipAddr\": \"10.0.0.1\", \"port\": {\"$\": 80, \"@enabled\": \"true\"}}}";
    let (status, _) = http_request(http, "POST", "/eureka/apps/ORDERS", &[], Some(body)).await?;
    ensure!(status == 401, "no credential: {status}");
    let (status, _) =
        http_request(http, "POST", "/eureka/apps/ORDERS", &[("authorization", &basic("shop", "wrong"))], Some(body))
            .await?;
    ensure!(status == 401, "a wrong token: {status}");
    let (status, _) =
        http_request(http, "POST", "/eureka/apps/ORDERS", &[("authorization", &basic("other", &token))], Some(body))
            .await?;
    ensure!(status == 401, "a user that is not the token's principal: {status}");
    let (status, _) =
        http_request(http, "POST", "/eureka/apps/PAYMENTS", &[("authorization", &basic("shop", &token))], Some(body))
            .await?;
    ensure!(status == 403, "outside the grant: {status}");
    let (status, text) =
        http_request(http, "POST", "/eureka/apps/ORDERS", &[("authorization", &basic("shop", &token))], Some(body))
            .await?;
    ensure!(status == 204, "basic auth: {status} {text}");
    let (status, xml) =
        http_request(http, "GET", "/eureka/v2/apps/ORDERS/o-1", &[("authorization", &format!("Bearer {token}"))], None)
            .await?;
    ensure!(
        status == 200 && xml.contains("<instanceId>o-1</instanceId>") && xml.contains("<app>ORDERS</app>"),
        "{status} {xml}"
    );
    let (status, _) =
        http_request(http, "PUT", "/eureka/apps/ORDERS/o-1", &[("authorization", &basic("shop", &token))], None)
            .await?;
    ensure!(status == 200, "renew: {status}");
    let (status, _) =
        http_request(http, "DELETE", "/eureka/apps/ORDERS/o-1", &[("authorization", &basic("shop", &token))], None)
            .await?;
    ensure!(status == 200, "cancel: {status}");
    let (status, _) =
        http_request(http, "PUT", "/eureka/apps/ORDERS/o-1", &[("authorization", &basic("shop", &token))], None)
            .await?;
    ensure!(status == 404, "renewing a cancelled instance: {status}");
    node.shutdown().await;
    Ok(())
}

/// Spring's `/actuator/service-registry` and py-eureka-client's
/// `status_update` take an instance out of traffic through Eureka's status
/// override, with the instance's own credential: with auth on, every reader
/// sees it OUT_OF_SERVICE until the client clears the override. Another
/// writer of the service may not touch it, and the instance may not clear
/// an admin's override.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_takes_itself_out_of_service_with_its_own_credential() -> Result<()> {
    let token = || format!("{:032x}", rand::random::<u128>());
    let (shop, rival, ops) = (token(), token(), token());
    let entry = |name: &str, token: &str, services: &str, role| {
        token_entry(name, token, vec![grant("default", services, role)])
    };
    let mut config = test_config("eureka-self-status");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.tokens = vec![
        entry("shop", &shop, "orders", Role::Write),
        entry("rival", &rival, "orders", Role::Write),
        entry("ops", &ops, "*", Role::Admin),
    ];
    let node = start_node(config).await?;
    let http = node.http_addr;
    let admin = format!("Bearer {ops}");
    // The instance as every reader sees it: its status and who overrides it.
    let shown = || async {
        let path = "/v1/namespaces/default/services/orders";
        let (_, d) = http_json(http, "GET", path, &[("authorization", &admin)], None).await.ok()?;
        let i = &d["instances"].as_array()?.first()?.clone();
        Some((i["status"].as_str()?.to_string(), i["statusOverride"]["setBy"].as_str().map(str::to_string)))
    };
    let until_shown = |what: &'static str, want: (&'static str, Option<&'static str>)| async move {
        eventually(what, PROMPTLY, || async {
            let (status, by) = shown().await?;
            (status == want.0 && by.as_deref() == want.1).then_some(())
        })
        .await
    };

    let mut client = PyClient::start_as(http, "shop", &shop, "orders", "o-1", 8080).await?;
    until_shown("registered UP", ("STATUS_UP", None)).await?;
    ensure!(client.ask("status OUT_OF_SERVICE").await? == "status sent");
    until_shown("out of service by its own hand", ("STATUS_OUT_OF_SERVICE", Some("shop"))).await?;
    let overrides = |text: &str| metric(text, "status_overrides");
    // Another writer of the service may not clear it.
    let path = "/eureka/apps/ORDERS/o-1/status";
    let (status, text) =
        http_request(http, "DELETE", path, &[("authorization", &basic("rival", &rival))], None).await?;
    ensure!(status == 403, "another principal cleared it: {status} {text}");
    ensure!(client.ask("clear-status").await? == "clear sent");
    eventually("the override cleared by the instance", PROMPTLY, || async {
        shown().await.filter(|(_, by)| by.is_none())
    })
    .await?;
    // An admin's override is not the instance's to clear.
    let (status, _) =
        http_request(http, "PUT", &format!("{path}?value=OUT_OF_SERVICE"), &[("authorization", &admin)], None).await?;
    ensure!(status == 200, "admin override: {status}");
    until_shown("out of service by an admin", ("STATUS_OUT_OF_SERVICE", Some("ops"))).await?;
    let (status, text) = http_request(http, "DELETE", path, &[("authorization", &basic("shop", &shop))], None).await?;
    ensure!(status == 403, "the instance cleared an admin's override: {status} {text}");
    ensure!(shown().await == Some(("STATUS_OUT_OF_SERVICE".into(), Some("ops".into()))), "unchanged");
    let (status, _) = http_request(http, "DELETE", path, &[("authorization", &admin)], None).await?;
    ensure!(status == 200, "the admin clears it: {status}");
    until_shown("the admin's override cleared", ("STATUS_UP", None)).await?;

    // Spring's graceful shutdown: out of service by its own hand, then
    // deregistered. The override ends with the instance, as in Eureka: the
    // next deployment of the same instance is UP, not out of service.
    ensure!(client.ask("status OUT_OF_SERVICE").await? == "status sent");
    until_shown("out of service before stopping", ("STATUS_OUT_OF_SERVICE", Some("shop"))).await?;
    ensure!(client.ask("stop").await? == "stopped");
    eventually("the instance's own override gone with it", PROMPTLY, || async {
        let (_, text) = http_request(http, "GET", "/metrics", &[("authorization", &admin)], None).await.ok()?;
        (overrides(&text)? == 0).then_some(())
    })
    .await?;
    let mut next = PyClient::start_as(http, "shop", &shop, "orders", "o-1", 8080).await?;
    until_shown("the next deployment is UP", ("STATUS_UP", None)).await?;
    ensure!(next.ask("stop").await? == "stopped");
    node.shutdown().await;
    Ok(())
}

/// A 3-node cluster on a real nats-server: a Eureka registration on node a
/// is renewed on node b after a crashes (its client failing over), and a
/// watcher on node c never sees it go; a gRPC registration on node a is in
/// node c's Eureka answers within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_failing_over_to_another_node_keeps_the_instance_without_a_flap() -> Result<()> {
    let nats = registry_tests::nats::NatsServer::start().await?;
    let mut nodes = registry_tests::start_cluster(&[nats.url()], "eureka-ha", &["ea", "eb", "ec"]).await?;
    let (c_grpc, c_http, b_http, a_http, a_grpc) =
        (nodes[2].grpc_addr, nodes[2].http_addr, nodes[1].http_addr, nodes[0].http_addr, nodes[0].grpc_addr);
    let mut watch = Watch::start(&mut client(c_grpc).await?, "default", &["orders-ha"], "eureka-ha-watch").await?;

    // gRPC on a → Eureka on c, within a second.
    register_grpc(a_grpc, grpc_instance("inventory", "inv-a", "10.0.0.9", 7009)).await?;
    let registered = tokio::time::Instant::now();
    loop {
        let (status, xml) = http_request(c_http, "GET", "/eureka/apps/INVENTORY", &[], None).await?;
        if status == 200 && xml.contains("<instanceId>inv-a</instanceId>") {
            break;
        }
        ensure!(
            registered.elapsed() < Duration::from_secs(1),
            "node c's Eureka API lacks inv-a after 1 s: {status} {xml}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A Eureka client registers on a (a 3 s lease) and renews there.
    let body = "{\"instance\": {\"instanceId\": \"oh-1\", \"app\": \"ORDERS-HA\", \"ipAddr\": \"10.0.0.8\", \
                \"port\": {\"$\": 8080, \"@enabled\": \"true\"}, \"leaseInfo\": {\"durationInSecs\": 3}, \
                \"lastDirtyTimestamp\": \"1700000000000\"}}";
    let (status, text) = http_request(a_http, "POST", "/eureka/apps/ORDERS-HA", &[], Some(body)).await?;
    ensure!(status == 204, "register on a: {status} {text}");
    watch.until("node c has it", PROMPTLY, |v| v.get("orders-ha").is_some_and(|(_, i)| i.contains_key("oh-1"))).await?;
    let renew = "/eureka/apps/ORDERS-HA/oh-1?status=UP&lastDirtyTimestamp=1700000000000";
    let (status, _) = http_request(a_http, "PUT", renew, &[], None).await?;
    ensure!(status == 200, "renew on a: {status}");

    // a crashes; the client renews on b from now on, every second, for
    // longer than a's copy takes to be orphaned and removed.
    nodes.remove(0).crash().await;
    for round in 0..8 {
        let (status, text) = http_request(b_http, "PUT", renew, &[], None).await?;
        ensure!(status == 200, "renewal {round} on b: {status} {text}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let adopted = metric(&metrics_of(b_http).await?, "eureka_adoptions_total").unwrap_or(0);
    ensure!(adopted == 1, "b took the instance over once, not {adopted} times");
    watch.drain(PROMPTLY).await?;
    let removed = registry_tests::removed_ids(&watch);
    ensure!(!removed.contains(&"oh-1".to_string()), "the instance flapped on node c: {removed:?}");
    ensure!(watch.views.get("orders-ha").is_some_and(|(_, i)| i.contains_key("oh-1")), "node c lost it");
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// eureka-js-client (npm): registers and renews, shows in GetService,
/// discovers a gRPC service and follows it by delta, stop() cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eureka_js_client_registers_discovers_by_delta_and_leaves() -> Result<()> {
    let node = start_node(test_config("eureka-js")).await?;
    let (grpc, http) = (node.grpc_addr, node.http_addr);
    register_grpc(grpc, grpc_instance("inventory", "inv-1", "10.0.0.1", 7001)).await?;
    let mut js = PyClient::start_js(http, "orders-js", "orders-js-1", 9191).await?;
    let mut c = client(grpc).await?;
    let mut watch = Watch::start(&mut c, "default", &["orders-js"], "eureka-js-test").await?;
    let has_js = |v: &std::collections::HashMap<String, (u64, std::collections::BTreeMap<String, v1::Instance>)>| {
        v.get("orders-js").and_then(|(_, i)| i.get("orders-js-1")).is_some_and(|i| {
            i.host == "10.6.0.1" && i.port == 9191 && i.metadata.get("version").map(String::as_str) == Some("3.1")
        })
    };
    watch.until("eureka-js-client's registration", PROMPTLY, has_js).await?;
    js.until_discovers("inventory", &["10.0.0.1:7001"]).await?;
    let full_before = metric(&metrics_of(http).await?, "eureka_full_fetches_total").unwrap_or(0);
    register_grpc(grpc, grpc_instance("inventory", "inv-2", "10.0.0.2", 7002)).await?;
    js.until_discovers("inventory", &["10.0.0.1:7001", "10.0.0.2:7002"]).await.context("by delta")?;
    let m = metrics_of(http).await?;
    let full = metric(&m, "eureka_full_fetches_total").unwrap_or(0);
    eprintln!(
        "eureka-js-client fetches: {full} full ({full_before} before the delta), {} delta",
        metric(&m, "eureka_delta_fetches_total").unwrap_or(0)
    );
    ensure!(full == full_before, "eureka-js-client fell back to full fetches: {full_before} then {full}");
    ensure!(js.ask("stop").await? == "stopped");
    watch.until("the stopped client is gone", PROMPTLY, |v| !has_js(v)).await?;
    node.shutdown().await;
    Ok(())
}
