//! `regctl`: the registry from the command line.
//!
//! Exit codes scripts can rely on:
//! - 0: done;
//! - 1: not found, or refused by the registry (the message says why);
//! - 2: bad usage (unknown flag, bad endpoint);
//! - 69: no registry node available (EX_UNAVAILABLE): unreachable, shutting down
//!   or still warming up. Worth a retry.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use registry_client::{Client, ClientConfig, Error, InstanceChange, WatchEvent, v1};
use serde_json::{Value, json};

/// Talk to a registry cluster.
#[derive(Debug, Parser)]
#[command(name = "regctl", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Registry node to talk to (repeat, or comma-separate, for fail-over).
    #[arg(
        long = "endpoint",
        short = 'e',
        env = "REGISTRY_ENDPOINT",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    endpoints: Vec<String>,
    /// Namespace.
    #[arg(long, short = 'n', env = "REGISTRY_NAMESPACE", default_value = "default", global = true)]
    namespace: String,
    /// Print JSON (one document, or one line per event for `watch`).
    #[arg(long, global = true)]
    json: bool,
    /// Timeout of each request, in ms.
    #[arg(long, default_value_t = 5_000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 ok; 1 not found or refused; 2 bad usage; 69 no registry node available.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Register an instance and hold its session until Ctrl-C (then say goodbye).
    Register {
        service: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        port: u32,
        /// Defaults to host:port.
        #[arg(long)]
        instance_id: Option<String>,
        /// Metadata entry (repeatable).
        #[arg(long = "meta", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove an instance, wherever it is registered.
    Deregister {
        service: String,
        /// The instance id (host:port unless it was registered with another).
        instance_id: String,
    },
    /// Instances of a service.
    Get { service: String },
    /// Services of the namespace.
    List,
    /// Follow a service: one line per change.
    Watch { service: String },
    /// Consumers watching a service.
    Consumers { service: String },
    /// Members of the cluster.
    Members,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected key=value"))?;
    Ok((k.to_string(), v.to_string()))
}

/// `println!` that does not panic when stdout is closed (`regctl watch | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 69;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("REGCTL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = match e.downcast_ref::<Error>() {
                Some(Error::Unavailable { .. }) => EXIT_UNAVAILABLE,
                Some(Error::NoEndpoints | Error::InvalidEndpoint { .. }) => EXIT_USAGE,
                _ => EXIT_NOT_FOUND,
            };
            if json {
                out!("{}", json!({ "error": format!("{e:#}"), "exit_code": code }));
            }
            eprintln!("regctl: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = ClientConfig::new(cli.endpoints)
        .namespace(cli.namespace)
        .client_name("regctl")
        .request_timeout(Duration::from_millis(cli.timeout_ms))
        .in_order(true);
    // Listened for from the start: a signal that comes just after a command
    // said it waits for one (a script reads that line and sends it at once)
    // must end the command cleanly, not kill it.
    let mut signals = Signals::new()?;
    let client = Client::new(config)?;
    let json = cli.json;
    match cli.command {
        Command::Register { service, host, port, instance_id, meta, zone, weight } => {
            let instance = v1::Instance {
                service,
                instance_id: instance_id.unwrap_or_default(),
                host,
                port,
                metadata: meta.into_iter().collect(),
                weight,
                zone: zone.unwrap_or_default(),
                ..Default::default()
            };
            let provider = client.register([instance]).await?;
            let registered = provider.instances();
            let node = provider.state().borrow().node_id.clone().unwrap_or_default();
            if json {
                out!(
                    "{}",
                    json!({ "registered": registered.iter().map(instance_json).collect::<Vec<_>>(), "node_id": node })
                );
            } else {
                for i in &registered {
                    out!(
                        "registered {}/{} at {}:{} on node {node}; Ctrl-C to deregister",
                        i.service,
                        i.instance_id,
                        i.host,
                        i.port
                    );
                }
            }
            signals.recv().await;
            provider.shutdown().await;
            if !json {
                out!("deregistered");
            }
        }
        Command::Deregister { service, instance_id } => {
            if !client.deregister_instance(&service, &instance_id).await? {
                return Err(Error::NotFound(format!("{service}/{instance_id} is not registered")).into());
            }
            if json {
                out!("{}", json!({ "deregistered": { "service": service, "instance_id": instance_id } }));
            } else {
                out!("deregistered {service}/{instance_id}");
            }
        }
        Command::Get { service } => {
            let r = client.get_service(&service).await?;
            if json {
                let instances: Vec<Value> = r.instances.iter().map(instance_json).collect();
                out!(
                    "{}",
                    json!({ "namespace": r.namespace, "service": r.service, "revision": r.revision, "instances": instances })
                );
            } else {
                let rows = r.instances.iter().map(instance_row).collect();
                print_table(&["INSTANCE", "ADDRESS", "STATUS", "WEIGHT", "ZONE", "METADATA"], rows);
            }
        }
        Command::List => {
            let r = client.list_services().await?;
            if json {
                let services: Vec<Value> = r
                    .services
                    .iter()
                    .map(|s| json!({ "service": s.service, "instances": s.instance_count, "revision": s.revision }))
                    .collect();
                out!("{}", json!({ "namespace": r.namespace, "services": services }));
            } else {
                let rows = r
                    .services
                    .iter()
                    .map(|s| vec![s.service.clone(), s.instance_count.to_string(), s.revision.to_string()])
                    .collect();
                print_table(&["SERVICE", "INSTANCES", "REVISION"], rows);
            }
        }
        Command::Consumers { service } => {
            let r = client.list_consumers(&service).await?;
            if json {
                let consumers: Vec<Value> = r
                    .consumers
                    .iter()
                    .map(|c| {
                        let info = c.info.clone().unwrap_or_default();
                        json!({ "consumer_id": info.consumer_id, "host": info.host, "node_id": c.node_id, "services": c.services, "since_unix_ms": c.since_unix_ms })
                    })
                    .collect();
                out!("{}", json!({ "consumers": consumers }));
            } else {
                let rows = r
                    .consumers
                    .iter()
                    .map(|c| {
                        let info = c.info.clone().unwrap_or_default();
                        vec![info.consumer_id, info.host, c.node_id.clone(), c.services.join(",")]
                    })
                    .collect();
                print_table(&["CONSUMER", "HOST", "NODE", "SERVICES"], rows);
            }
        }
        Command::Members => {
            let r = client.members().await?;
            if json {
                let members: Vec<Value> = r.members.iter().map(member_json).collect();
                out!("{}", json!({ "cluster": r.cluster, "members": members }));
            } else {
                print_table(&MEMBER_COLUMNS, r.members.iter().map(member_row).collect());
            }
        }
        Command::Watch { service } => {
            let watch = client.watch(&service).await?;
            let mut events = watch.events();
            let view = watch.current();
            for i in view.instances.values() {
                print_event(json, "added", Some(i), &view.endpoint);
            }
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(WatchEvent::Changed(InstanceChange::Added(i))) => print_event(json, "added", Some(&i), ""),
                        Ok(WatchEvent::Changed(InstanceChange::Updated(i))) => print_event(json, "updated", Some(&i), ""),
                        Ok(WatchEvent::Changed(InstanceChange::Removed(i))) => print_event(json, "removed", Some(&i), ""),
                        Ok(WatchEvent::Disconnected { reason }) => print_event(json, "stale", None, &reason),
                        Ok(WatchEvent::Synced { endpoint }) => print_event(json, "synced", None, &endpoint),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => print_event(json, "lagged", None, &n.to_string()),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = signals.recv() => break,
                }
            }
        }
    }
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, each registered once.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        })
    }

    /// Waits for either; a signal received before this call counts.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

fn status_name(i: &v1::Instance) -> String {
    i.status().effective().as_str_name().trim_start_matches("STATUS_").to_lowercase()
}

fn instance_json(i: &v1::Instance) -> Value {
    json!({
        "namespace": i.namespace, "service": i.service, "instance_id": i.instance_id, "host": i.host, "port": i.port,
        "status": status_name(i), "weight": registry_client::weight_of(i), "zone": i.zone, "metadata": i.metadata,
    })
}

fn instance_row(i: &v1::Instance) -> Vec<String> {
    let mut meta: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    meta.sort();
    vec![
        i.instance_id.clone(),
        format!("{}:{}", i.host, i.port),
        status_name(i),
        registry_client::weight_of(i).to_string(),
        i.zone.clone(),
        meta.join(","),
    ]
}

/// Columns of `regctl members`: the sync state of every node at a glance.
const MEMBER_COLUMNS: [&str; 9] =
    ["NODE", "STATE", "ADDRESS", "READY", "RECORDS", "LAG", "DIGEST", "LAST_BEAT", "SYNC"];

fn member_state(m: &v1::Member) -> String {
    m.state().as_str_name().trim_start_matches("MEMBER_STATE_").to_lowercase()
}

/// Changes the member issued that the answering node has not applied.
fn member_lag(m: &v1::Member) -> u64 {
    m.origin_seq.saturating_sub(m.applied_seq)
}

/// One word for the answering node's copy of a member: `self` (its own
/// entry), `gone` (it left: its copy is kept until the orphan grace ends),
/// `lagging` (changes not applied yet), `diverged` (caught up but the
/// digests differ: a full resync follows), or `in-sync`.
fn member_sync(m: &v1::Member) -> &'static str {
    if m.state() == v1::MemberState::Local {
        "self"
    } else if m.state() == v1::MemberState::Left {
        "gone"
    } else if member_lag(m) > 0 {
        "lagging"
    } else if !m.digest_match {
        "diverged"
    } else {
        "in-sync"
    }
}

fn member_row(m: &v1::Member) -> Vec<String> {
    let local = m.state() == v1::MemberState::Local;
    let lag = member_lag(m);
    // Digests are compared only once the copy has caught up.
    let digest = if lag > 0 {
        "-"
    } else if m.digest_match {
        "match"
    } else {
        "DIFFERS"
    };
    let beat = if local { "-".to_string() } else { format!("{:.1}s", m.last_beat_age_ms as f64 / 1000.0) };
    vec![
        m.node_id.clone(),
        member_state(m),
        m.advertise_addr.clone(),
        m.ready.to_string(),
        m.record_count.to_string(),
        lag.to_string(),
        digest.to_string(),
        beat,
        member_sync(m).to_string(),
    ]
}

fn member_json(m: &v1::Member) -> Value {
    let lag = member_lag(m);
    json!({
        "node_id": m.node_id, "state": member_state(m), "address": m.advertise_addr, "ready": m.ready,
        "records": m.record_count, "origin_seq": m.origin_seq, "applied_seq": m.applied_seq, "lag": lag,
        "digest_match": m.digest_match, "in_sync": m.digest_match && lag == 0, "sync": member_sync(m),
        "last_beat_age_ms": m.last_beat_age_ms, "incarnation": m.incarnation,
    })
}

fn print_event(json: bool, event: &str, instance: Option<&v1::Instance>, detail: &str) {
    if json {
        out!("{}", json!({ "event": event, "instance": instance.map(instance_json), "detail": detail }));
    } else {
        match instance {
            Some(i) => out!("{event} {} {}:{} {}", i.instance_id, i.host, i.port, status_name(i)),
            None => out!("{event} {detail}"),
        }
    }
}

/// Left-aligned columns, two spaces apart.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(origin_seq: u64, applied_seq: u64, digest_match: bool) -> v1::Member {
        v1::Member {
            node_id: "b".into(),
            state: v1::MemberState::Live as i32,
            advertise_addr: "10.0.0.2:7070".into(),
            last_beat_age_ms: 250,
            origin_seq,
            applied_seq,
            record_count: 42,
            digest_match,
            ready: true,
            ..Default::default()
        }
    }

    #[test]
    fn members_rows_show_lag_digest_and_sync_at_a_glance() {
        let row = member_row(&peer(10, 10, true));
        assert_eq!(row, ["b", "live", "10.0.0.2:7070", "true", "42", "0", "match", "0.2s", "in-sync"]);
        let row = member_row(&peer(15, 10, false));
        assert_eq!(&row[5..], ["5", "-", "0.2s", "lagging"], "a lagging copy is not called diverged");
        let row = member_row(&peer(10, 10, false));
        assert_eq!(&row[5..], ["0", "DIFFERS", "0.2s", "diverged"]);
        let me = v1::Member { state: v1::MemberState::Local as i32, ..peer(7, 7, true) };
        assert_eq!(&member_row(&me)[5..], ["0", "match", "-", "self"]);
        let left = v1::Member { state: v1::MemberState::Left as i32, ..peer(15, 10, false) };
        assert_eq!(&member_row(&left)[..2], ["b", "left"]);
        assert_eq!(member_row(&left)[8], "gone", "a departed node's copy is not lagging");
        let j = member_json(&peer(15, 10, false));
        assert_eq!(
            (j["lag"].as_u64(), j["in_sync"].as_bool(), j["sync"].as_str()),
            (Some(5), Some(false), Some("lagging"))
        );
    }
}
