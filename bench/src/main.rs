//! `registry-bench`: runs benchmark scenarios against real `registry-node` and
//! `nats-server` processes on this machine and prints a table of results.
//!
//! Build both binaries in one target dir first:
//! `cargo build --release -p registry-node -p registry-bench`.

mod procs;
mod scenarios;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::scenarios::Row;

#[derive(Debug, Parser)]
#[command(name = "registry-bench", about = "Benchmark scenarios for the registry")]
struct Cli {
    /// The registry-node binary [default: next to this binary].
    #[arg(long, global = true)]
    node_bin: Option<PathBuf>,
    /// Also append the result rows (markdown) to this file.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
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
    /// Every scenario at a tiny size (keeps the tool working; no timing claims).
    Smoke,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match &cli.node_bin {
        Some(b) => b.clone(),
        None => procs::default_node_bin()?,
    };
    let rows = match cli.scenario {
        Scenario::Ingest { instances, nodes, pipelined } => {
            scenarios::ingest(&bin, nodes, instances, pipelined).await?
        }
        Scenario::Propagation { rate, seconds } => scenarios::propagation(&bin, rate, seconds).await?,
        Scenario::Fanout { subscribers, connections, flaps } => {
            scenarios::fanout(&bin, subscribers, connections, flaps).await?
        }
        Scenario::Scale { instances, metadata } => scenarios::scale(&bin, instances, metadata).await?,
        Scenario::Catchup { instances, metadata } => scenarios::catchup(&bin, instances, metadata).await?,
        Scenario::Failure { rounds } => scenarios::failure(&bin, rounds).await?,
        Scenario::Smoke => {
            let mut rows = scenarios::ingest(&bin, 1, 2_000, true).await?;
            rows.extend(scenarios::ingest(&bin, 3, 2_000, false).await?);
            rows.extend(scenarios::propagation(&bin, 100, 1).await?);
            rows.extend(scenarios::fanout(&bin, 50, 2, 3).await?);
            rows.extend(scenarios::scale(&bin, 2_000, 200).await?);
            rows.extend(scenarios::catchup(&bin, 2_000, 200).await?);
            rows.extend(scenarios::failure(&bin, 1).await?);
            rows
        }
    };
    let table = render(&rows);
    print!("{table}");
    if let Some(path) = cli.out {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(table.as_bytes())?;
    }
    Ok(())
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from("| scenario | variant | metric | value |\n|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!("| {} | {} | {} | {:.2} {} |\n", r.scenario, r.variant, r.metric, r.value, r.unit));
    }
    out
}
