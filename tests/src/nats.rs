//! Real `nats-server` processes for tests: started on free loopback ports,
//! killed on drop. A single server (plain, or with a configuration file of
//! users, permissions and TLS), or a cluster of servers joined by routes.
//! A server may also run inside a network namespace on its address there
//! (see [`crate::netem`]), so its connections cross an impaired network.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::{eventually, http_get};

/// A free TCP port on loopback for a process a test starts, which binds it
/// a moment later. Taken from 20000..32768, below the range the OS hands out
/// for outgoing connections (32768-60999 by default on Linux): the thousands
/// of client connections a fault scenario opens cannot take it in between, as
/// they could a port the OS picked. Never the same port twice in one test
/// process.
pub fn free_port() -> Result<u16> {
    static GIVEN: parking_lot::Mutex<std::collections::BTreeSet<u16>> =
        parking_lot::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock();
    for _ in 0..1_000 {
        let port = rand::random_range(20_000..32_768);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    // Crowded: let the OS pick, as a last resort.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One nats-server child process.
pub struct NatsServer {
    pub port: u16,
    pub monitor_port: u16,
    /// The address it binds and is reached at (loopback unless in a namespace).
    host: IpAddr,
    /// The network namespace it runs in (`ip netns exec`), if not the test's.
    netns: Option<String>,
    args: Vec<String>,
    /// Environment of the server (secrets a configuration file names as `$VAR`).
    env: Vec<(String, String)>,
    /// The configuration file written for it, if any (removed on drop).
    config: Option<PathBuf>,
    child: Option<Child>,
    log: PathBuf,
}

impl NatsServer {
    /// A standalone server.
    pub async fn start() -> Result<Self> {
        Self::start_with(Vec::new(), free_port()?, free_port()?).await
    }

    async fn start_with(extra: Vec<String>, port: u16, monitor_port: u16) -> Result<Self> {
        Self::start_at(None, IpAddr::from([127, 0, 0, 1]), extra, port, monitor_port).await
    }

    /// A standalone server on loopback with configuration file `config`
    /// (nats-server's format: users, permissions, TLS) and environment `env`
    /// (the secrets the file names as `$VAR`, so they are in no file). Its
    /// ports are given as flags, which take precedence over the file.
    pub async fn start_configured(config: &str, env: Vec<(String, String)>) -> Result<Self> {
        let (port, monitor_port) = (free_port()?, free_port()?);
        let path = std::env::temp_dir().join(format!("registry-test-nats-{port}.conf"));
        std::fs::write(&path, config)?;
        // A configuration the server refuses says why here, not as a
        // server that never answers.
        if let Err(e) = check_config(&path, &env) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let host = IpAddr::from([127, 0, 0, 1]);
        let args = vec!["-c".to_string(), path.to_string_lossy().into_owned()];
        let mut server = Self::new(None, host, args, port, monitor_port);
        server.env = env;
        server.config = Some(path);
        server.spawn().await?;
        Ok(server)
    }

    /// A server in network namespace `netns` (the test's own when `None`),
    /// bound to `host` there, with `extra` arguments (cluster options).
    pub async fn start_at(
        netns: Option<&str>,
        host: IpAddr,
        extra: Vec<String>,
        port: u16,
        monitor_port: u16,
    ) -> Result<Self> {
        let mut server = Self::new(netns, host, extra, port, monitor_port);
        server.spawn().await?;
        Ok(server)
    }

    fn new(netns: Option<&str>, host: IpAddr, extra: Vec<String>, port: u16, monitor_port: u16) -> Self {
        let mut args = vec![
            "-a".to_string(),
            host.to_string(),
            "-p".to_string(),
            port.to_string(),
            "-m".to_string(),
            monitor_port.to_string(),
        ];
        args.extend(extra);
        // Kept beside the nodes' logs when a run keeps those (`NODE_LOG_DIR`).
        let log = match std::env::var_os("NODE_LOG_DIR") {
            Some(dir) => PathBuf::from(dir).join(format!("nats-{host}-{port}.log")),
            None => std::env::temp_dir().join(format!("registry-test-nats-{host}-{port}.log")),
        };
        let netns = netns.map(str::to_string);
        Self { port, monitor_port, host, netns, args, env: Vec::new(), config: None, child: None, log }
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = match &self.netns {
            // `ip netns exec` enters the namespace and execs the server: the
            // child's pid is the server's.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "nats-server"]);
                cmd
            }
            None => Command::new("nats-server"),
        };
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["-l", &self.log.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (is it installed? scripts/test.sh installs it)")?;
        self.child = Some(child);
        let monitor = SocketAddr::new(self.host, self.monitor_port);
        eventually("nats-server answers", Duration::from_secs(10), || async move {
            http_get(monitor, "/healthz").await.ok().filter(|(s, _)| *s == 200).map(|_| ())
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("nats://{}", SocketAddr::new(self.host, self.port))
    }

    /// The last `lines` lines of the server's log, to explain a failure.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether its process is still running (false once killed or exited).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Starts the server again on the same ports with another environment
    /// (new secrets for its configuration file's `$VAR`s).
    pub async fn restart_with(&mut self, env: Vec<(String, String)>) -> Result<()> {
        self.env = env;
        self.restart().await
    }

    /// Replaces its configuration file with `config` and has the running
    /// server load it, as an operator rotating credentials does
    /// (`nats-server --signal reload=<pid>`): no restart, and the server
    /// itself closes the connections whose login the new file refuses.
    /// The environment stays the one the process started with, and a reload
    /// reads the file's `$VAR`s from it: new secrets must be in the file.
    ///
    /// The file is checked first (`nats-server -t`) and moved into place
    /// whole, so a refused file says why here and the server never reads
    /// half of one. It may hold secrets: only the owner may read it. Returns
    /// once the server has loaded it (`config_load_time` in `/varz` moved
    /// on): a file it refused at reload would leave the old one in force.
    pub async fn reload_with(&mut self, config: &str) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.config.clone().context("reloading a server started without a configuration file")?;
        let next = path.with_extension("conf.next");
        // Left by a run that died between writing and moving it, if any.
        let _ = std::fs::remove_file(&next);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&next)
            .and_then(|mut file| file.write_all(config.as_bytes()))
            .with_context(|| format!("writing {}", next.display()))
            .and_then(|()| check_config(&next, &self.env))
            .and_then(|()| std::fs::rename(&next, &path).with_context(|| format!("replacing {}", path.display())));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&next);
            return Err(e);
        }
        let before = self.varz().await?;
        let pid = self.pid();
        let signalled = Command::new("nats-server")
            .args(["--signal", &format!("reload={pid}")])
            .output()
            .context("running nats-server --signal reload")?;
        if !signalled.status.success() {
            bail!(
                "nats-server --signal reload={pid} failed: {}{}",
                String::from_utf8_lossy(&signalled.stdout),
                String::from_utf8_lossy(&signalled.stderr)
            );
        }
        let reloaded = eventually("nats-server reloads its configuration", Duration::from_secs(5), || async {
            self.varz().await.ok().filter(|now| now.config_load_time != before.config_load_time)
        })
        .await;
        reloaded.with_context(|| format!("nats-server's log ends:\n{}", self.log_tail(10)))?;
        Ok(())
    }

    /// Which server process answers and when it last loaded its
    /// configuration, from `/varz`.
    pub async fn varz(&self) -> Result<Varz> {
        let varz = self.monitor("/varz").await?;
        let field =
            |name: &str| varz[name].as_str().map(str::to_string).with_context(|| format!("no {name} in /varz: {varz}"));
        Ok(Varz {
            server_id: field("server_id")?,
            start: field("start")?,
            config_load_time: field("config_load_time")?,
        })
    }

    /// The client connections open now, with the user each logged in as.
    pub async fn logins(&self) -> Result<Vec<Login>> {
        let connz = self.monitor("/connz?auth=true").await?;
        let connections =
            connz["connections"].as_array().with_context(|| format!("no connections in /connz: {connz}"))?;
        connections
            .iter()
            .map(|c| {
                let cid = c["cid"].as_u64().with_context(|| format!("a connection without a cid in /connz: {c}"))?;
                let user = c["authorized_user"].as_str().unwrap_or_default().to_string();
                Ok(Login { cid, user })
            })
            .collect()
    }

    /// A monitoring endpoint's answer (`/varz`, `/connz`...), as JSON.
    async fn monitor(&self, path: &str) -> Result<serde_json::Value> {
        let monitor = SocketAddr::new(self.host, self.monitor_port);
        let (_, body) = http_get(monitor, path).await?;
        serde_json::from_str(&body).with_context(|| format!("{path} is not JSON: {body}"))
    }

    /// Number of routes to other servers of its cluster.
    pub async fn routes(&self) -> Result<usize> {
        let monitor = SocketAddr::new(self.host, self.monitor_port);
        let (_, body) = http_get(monitor, "/routez").await?;
        let n = body
            .split("\"num_routes\":")
            .nth(1)
            .and_then(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
        n.ok_or_else(|| anyhow::anyhow!("no num_routes in /routez"))
    }
}

/// What `/varz` tells of a running server. A restarted server has a new
/// `server_id` (made at each start) and `start`; a reloaded one keeps both
/// and has a new `config_load_time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Varz {
    pub server_id: String,
    pub start: String,
    pub config_load_time: String,
}

/// A client connection open on a server (`/connz`): its id, never reused
/// while the server runs, and the user it logged in as (empty without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub cid: u64,
    pub user: String,
}

/// Fails, with what nats-server says, if it refuses configuration file
/// `path` in environment `env` (`nats-server -t`).
fn check_config(path: &std::path::Path, env: &[(String, String)]) -> Result<()> {
    let checked = Command::new("nats-server")
        .args(["-c", &path.to_string_lossy(), "-t"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .context("running nats-server -t (is it installed? scripts/test.sh installs it)")?;
    if !checked.status.success() {
        bail!(
            "nats-server refuses the configuration: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    Ok(())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A stopped server must be continued to die.
        if let Some(child) = &self.child {
            let _ = crate::procs::send_signal(child.id(), "CONT");
        }
        self.kill();
        if std::env::var_os("NODE_LOG_DIR").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}

/// Several nats-servers joined by routes into one NATS cluster.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub async fn start(n: usize) -> Result<Self> {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
        let routes: Vec<String> = cluster_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let others = (0..n)
            .map(|i| routes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, r)| r.clone()).collect())
            .collect();
        Self::start_routed(&cluster_ports, others, true).await
    }

    /// Servers listening for routes on `cluster_ports`, server i dialing the
    /// route URLs `routes[i]` (which may lead through proxies that a test
    /// cuts to partition the cluster). Without `gossip`, servers advertise an
    /// address nobody listens on, so they never dial each other directly
    /// around the given routes.
    pub async fn start_routed(cluster_ports: &[u16], routes: Vec<Vec<String>>, gossip: bool) -> Result<Self> {
        let mut servers = Vec::new();
        for (cport, others) in cluster_ports.iter().zip(routes) {
            let mut extra = vec![
                "--cluster_name".to_string(),
                format!("test-{}", cluster_ports[0]),
                "--cluster".to_string(),
                format!("nats://127.0.0.1:{cport}"),
                "--routes".to_string(),
                others.join(","),
            ];
            if !gossip {
                extra.extend(["--cluster_advertise".to_string(), "127.0.0.1:1".to_string()]);
            }
            servers.push(NatsServer::start_with(extra, free_port()?, free_port()?).await?);
        }
        Self::joined(servers).await
    }

    /// Started `servers` of one cluster, once each has a route to every other.
    pub async fn joined(servers: Vec<NatsServer>) -> Result<Self> {
        if servers.is_empty() {
            bail!("a cluster needs servers");
        }
        let want = servers.len() - 1;
        let cluster = Self { servers };
        for s in &cluster.servers {
            eventually("NATS routes connected", Duration::from_secs(15), || async move {
                s.routes().await.ok().filter(|r| *r >= want).map(|_| ())
            })
            .await?;
        }
        Ok(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }
}
