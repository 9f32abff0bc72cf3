//! `registry-bench`: runs benchmark scenarios against real `registry-node` and
//! `nats-server` processes on this machine and prints a table of results.
//!
//! Build both binaries in one target dir first:
//! `cargo build --release -p registry-node -p registry-bench`.
//!
//! `--system etcd` or `--system zookeeper` runs the same scenarios against the
//! systems the registry is compared with (see `peers`); `bench/peers/*.sh`
//! install them from Debian packages when they are missing.
//!
//! `--tls` and `--token` run the registry's scenarios with TLS on every port
//! and with auth enforced (see `security`); the rows then say so.

mod dns;
mod eureka;
mod peers;
mod procs;
mod scenarios;
mod security;
mod xds;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::scenarios::Row;

#[derive(Debug, Parser)]
#[command(name = "registry-bench", about = "Benchmark scenarios for the registry")]
struct Cli {
    /// The system the scenarios run against.
    #[arg(long, global = true, value_enum, default_value_t = System::Registry)]
    system: System,
    /// Maximum Java heap of each ZooKeeper server (-Xmx), in MiB.
    #[arg(long, global = true, default_value_t = 4096)]
    zk_heap_mb: u32,
    /// The registry-node binary [default: next to this binary].
    #[arg(long, global = true)]
    node_bin: Option<PathBuf>,
    /// Also append the result rows (markdown) to this file.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Every node serves TLS only, with a CA and a certificate for localhost
    /// made at start; the bench's clients trust that CA.
    #[arg(long, global = true)]
    tls: bool,
    /// Every node enforces auth, knowing one admin token made at start; the
    /// bench's clients send it.
    #[arg(long, global = true)]
    token: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    /// Our registry-node processes (and nats-server).
    Registry,
    /// etcd 3.4 (Debian package etcd-server): leases, prefix watches.
    Etcd,
    /// ZooKeeper 3.8 (Debian package zookeeper): ephemeral znodes, persistent recursive watches.
    Zookeeper,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Instances registered per second, on 1 or 3 nodes.
    Ingest {
        #[arg(long, default_value_t = 200_000)]
        instances: u32,
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Send without waiting for each answer.
        #[arg(long)]
        pipelined: bool,
    },
    /// Register on node a, push seen by a subscriber on node c, at a fixed rate.
    Propagation {
        #[arg(long, default_value_t = 1_000)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// One service, many subscribers, one instance flapping.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        subscribers: u32,
        #[arg(long, default_value_t = 8)]
        connections: u32,
        #[arg(long, default_value_t = 20)]
        flaps: u32,
    },
    /// One service watched over server-sent events (`GET /v1/watch`), one
    /// instance flapping.
    SseFanout {
        #[arg(long, default_value_t = 1_000)]
        watchers: u32,
        #[arg(long, default_value_t = 20)]
        flaps: u32,
    },
    /// Eureka instances registered and renewing beside gRPC leases (node CPU
    /// per renewal), and the full fetch of `/eureka/apps`.
    Eureka {
        #[arg(long, default_value_t = 10_000)]
        instances: u32,
        #[arg(long, default_value_t = 200)]
        fetches: u32,
    },
    /// DNS: dnsperf against a node holding `instances` in `services`
    /// services (and against NSD with the same records, when installed);
    /// a registration on node a answered by DNS on node c.
    Dns {
        #[arg(long, default_value_t = 100_000)]
        instances: u32,
        #[arg(long, default_value_t = 10_000)]
        services: u32,
        /// How long each dnsperf run lasts.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Queries per second offered in the latency run.
        #[arg(long, default_value_t = 100_000)]
        qps: u32,
        /// Changes a second to a service of 10,000 instances during one more
        /// latency run (0: no such run).
        #[arg(long, default_value_t = 100)]
        churn_rate: u32,
    },
    /// Memory per instance and GetService latency under writes.
    Scale {
        #[arg(long, default_value_t = 100_000)]
        instances: u32,
        #[arg(long, default_value_t = 200)]
        metadata: usize,
    },
    /// A cold node joins a loaded cluster: time to ready.
    Catchup {
        #[arg(long, default_value_t = 1_000_000)]
        instances: u32,
        #[arg(long, default_value_t = 200)]
        metadata: usize,
    },
    /// A provider dies: time until a subscriber on another node sees it gone.
    Failure {
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// The same over xDS: ADS streams on one node watching one service's
    /// endpoints while an instance flaps, then upserts on node a at `rate`
    /// seen by an ADS stream on node c.
    Xds {
        #[arg(long, default_value_t = 1_000)]
        streams: u32,
        #[arg(long, default_value_t = 8)]
        connections: u32,
        #[arg(long, default_value_t = 20)]
        flaps: u32,
        /// Services each stream watches: the flapping one and the rest
        /// quiet (where delta sends only what changed).
        #[arg(long, default_value_t = 1)]
        resources: u32,
        #[arg(long, default_value_t = 1_000)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Every scenario at a tiny size (keeps the tool working; no timing claims).
    Smoke,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // On Ctrl-C or SIGTERM the run is dropped, so its server processes are
    // killed (their handles kill them on drop) instead of outliving the bench.
    let rows = tokio::select! {
        rows = run(&cli) => rows?,
        signal = interrupted() => bail!("stopped by {}", signal?),
    };
    let table = render(&rows);
    print!("{table}");
    if let Some(path) = cli.out {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(table.as_bytes())?;
    }
    Ok(())
}

async fn interrupted() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|_| "SIGINT").map_err(Into::into),
        _ = term.recv() => Ok("SIGTERM"),
    }
}

async fn run(cli: &Cli) -> Result<Vec<Row>> {
    if matches!(cli.scenario, Scenario::Smoke) && cli.system != System::Registry {
        bail!("smoke runs the registry only (CI must not need etcd or Java); run the peer scenarios one by one");
    }
    if (cli.tls || cli.token) && cli.system != System::Registry {
        bail!("--tls and --token apply to the registry only; the peers run as they are set up in bench/peers");
    }
    Ok(match cli.system {
        System::Registry => {
            let bin = match &cli.node_bin {
                Some(b) => b.clone(),
                None => procs::default_node_bin()?,
            };
            let setup = procs::Setup::new(bin, security::Security::new(cli.tls, cli.token)?)?;
            let mut rows = registry(&setup, &cli.scenario).await?;
            if let Some(mode) = setup.label() {
                eprintln!("mode: {mode}");
                for r in &mut rows {
                    r.variant = format!("{}, {mode}", r.variant);
                }
            }
            rows
        }
        System::Etcd => {
            let etcd = peers::etcd::Etcd::locate()?;
            eprintln!("system: etcd {}", etcd.version);
            run_etcd(&etcd, &cli.scenario).await?
        }
        System::Zookeeper => {
            let zk = peers::zookeeper::ZooKeeper::locate(cli.zk_heap_mb)?;
            eprintln!("system: zookeeper {} (java -Xmx{}m)", zk.version, cli.zk_heap_mb);
            run_zookeeper(&zk, &cli.scenario).await?
        }
    })
}

async fn registry(setup: &procs::Setup, scenario: &Scenario) -> Result<Vec<Row>> {
    Ok(match *scenario {
        Scenario::Ingest { instances, nodes, pipelined } => {
            scenarios::ingest(setup, nodes, instances, pipelined).await?
        }
        Scenario::Propagation { rate, seconds } => scenarios::propagation(setup, rate, seconds).await?,
        Scenario::Fanout { subscribers, connections, flaps } => {
            scenarios::fanout(setup, subscribers, connections, flaps).await?
        }
        Scenario::SseFanout { watchers, flaps } => scenarios::sse_fanout(setup, watchers, flaps).await?,
        Scenario::Eureka { instances, fetches } => eureka::eureka(setup, instances, fetches).await?,
        Scenario::Dns { instances, services, seconds, qps, churn_rate } => {
            dns::dns(setup, instances, services, seconds, qps, churn_rate).await?
        }
        Scenario::Scale { instances, metadata } => scenarios::scale(setup, instances, metadata).await?,
        Scenario::Catchup { instances, metadata } => scenarios::catchup(setup, instances, metadata).await?,
        Scenario::Failure { rounds } => scenarios::failure(setup, rounds).await?,
        Scenario::Xds { streams, connections, flaps, resources, rate, seconds } => {
            let mut rows = xds::fanout(setup, streams, connections, flaps, resources, xds::Protocol::Sotw).await?;
            rows.extend(xds::fanout(setup, streams, connections, flaps, resources, xds::Protocol::Delta).await?);
            rows.extend(xds::propagation(setup, rate, seconds).await?);
            rows
        }
        Scenario::Smoke => {
            let mut rows = scenarios::ingest(setup, 1, 2_000, true).await?;
            rows.extend(scenarios::ingest(setup, 3, 2_000, false).await?);
            rows.extend(scenarios::propagation(setup, 100, 1).await?);
            rows.extend(scenarios::fanout(setup, 50, 2, 3).await?);
            // Plain HTTP only: the SSE test client speaks no TLS.
            if setup.label().is_none() {
                rows.extend(scenarios::sse_fanout(setup, 20, 3).await?);
                rows.extend(eureka::eureka(setup, 200, 5).await?);
            }
            rows.extend(scenarios::scale(setup, 2_000, 200).await?);
            rows.extend(scenarios::catchup(setup, 2_000, 200).await?);
            rows.extend(scenarios::failure(setup, 1).await?);
            rows.extend(xds::fanout(setup, 50, 2, 3, 1, xds::Protocol::Sotw).await?);
            rows.extend(xds::fanout(setup, 50, 2, 3, 5, xds::Protocol::Delta).await?);
            rows.extend(xds::propagation(setup, 100, 1).await?);
            rows
        }
    })
}

async fn run_etcd(etcd: &peers::etcd::Etcd, scenario: &Scenario) -> Result<Vec<Row>> {
    use peers::etcd;
    Ok(match *scenario {
        Scenario::Ingest { instances, nodes, pipelined } => etcd::ingest(etcd, nodes, instances, pipelined).await?,
        Scenario::Propagation { rate, seconds } => etcd::propagation(etcd, rate, seconds).await?,
        Scenario::Fanout { subscribers, connections, flaps } => {
            etcd::fanout(etcd, subscribers, connections, flaps).await?
        }
        Scenario::Scale { instances, metadata } => etcd::scale(etcd, instances, metadata).await?,
        Scenario::Catchup { instances, metadata } => etcd::catchup(etcd, instances, metadata).await?,
        Scenario::Failure { rounds } => etcd::failure(etcd, rounds).await?,
        Scenario::Xds { .. } => bail!("xds runs the registry only (etcd speaks no xDS)"),
        Scenario::SseFanout { .. } | Scenario::Eureka { .. } | Scenario::Dns { .. } => {
            bail!("this scenario runs the registry only")
        }
        Scenario::Smoke => bail!("smoke runs the registry only"),
    })
}

async fn run_zookeeper(zk: &peers::zookeeper::ZooKeeper, scenario: &Scenario) -> Result<Vec<Row>> {
    use peers::zookeeper as z;
    Ok(match *scenario {
        Scenario::Ingest { instances, nodes, pipelined } => z::ingest(zk, nodes, instances, pipelined).await?,
        Scenario::Propagation { rate, seconds } => z::propagation(zk, rate, seconds).await?,
        Scenario::Fanout { subscribers, connections, flaps } => z::fanout(zk, subscribers, connections, flaps).await?,
        Scenario::Scale { instances, metadata } => z::scale(zk, instances, metadata).await?,
        Scenario::Catchup { instances, metadata } => z::catchup(zk, instances, metadata).await?,
        Scenario::Failure { rounds } => z::failure(zk, rounds).await?,
        Scenario::Xds { .. } => bail!("xds runs the registry only (ZooKeeper speaks no xDS)"),
        Scenario::SseFanout { .. } | Scenario::Eureka { .. } | Scenario::Dns { .. } => {
            bail!("this scenario runs the registry only")
        }
        Scenario::Smoke => bail!("smoke runs the registry only"),
    })
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from("| scenario | variant | metric | value |\n|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!("| {} | {} | {} | {:.2} {} |\n", r.scenario, r.variant, r.metric, r.value, r.unit));
    }
    out
}
