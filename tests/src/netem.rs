//! A userspace netem: an IP router between network namespaces that loses,
//! delays, jitters, reorders and duplicates packets, so the real TCP
//! connections of real processes (nats-server routes, registry nodes' bus
//! connections) see real packet loss and reordering: retransmission
//! timeouts, duplicate ACKs, SACK recovery. A TCP proxy such as
//! [`crate::faults::FaultLink`] cannot show those, since TCP hides loss and
//! order from whoever reads the stream.
//!
//! Why not `tc qdisc ... netem`: kernels built without `sch_netem` (and
//! without tc actions) exist, and the suite must inject loss there too. The
//! router needs only TUN devices and network namespaces:
//!
//! ```text
//!   namespace 0: tun 198.18.x.1/24 ──┐
//!   namespace 1: tun 198.18.x.2/24 ──┼── router thread ── tun 198.18.x.254/24 (the test's own namespace)
//!   namespace 2: tun 198.18.x.3/24 ──┘
//! ```
//!
//! Every host's packets to the lab subnet leave through its TUN device; the
//! router reads them, looks at the destination address, applies the
//! [`Impairment`] set for that (source, destination) pair, and writes them to
//! the destination's TUN device, where the destination's kernel receives
//! them. Counters per pair ([`Counters`]) show that impairment really
//! happened, so a test can assert it did rather than trust it.
//!
//! Addresses come from 198.18.0.0/15, the range set aside for benchmarking
//! network devices (RFC 2544): no real network uses it, and its 512 /24
//! subnets let labs of parallel tests (and of parallel test processes) each
//! have their own. A lab claims its subnet by creating the TUN device named
//! after it in the test's namespace: the kernel refuses a second owner, so
//! two labs never share one.
//!
//! A lab needs root (namespaces, devices, addresses), `/dev/net/tun` and the
//! `ip` command of iproute2. Without them [`Lab::start`] fails with
//! [`LabError::Unavailable`] naming what is missing: a test that needs the
//! lab fails loudly instead of passing without having tested anything.
//! Dropping the lab stops the router, which removes the TUN devices, and
//! deletes the namespaces, also when a test panics.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::nats::{NatsCluster, NatsServer};
use crate::procs::{NodeProc, node_bin, send_signal};
use crate::v1;

/// Why a lab could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The machine lacks what the lab needs: the test cannot run here and
    /// must fail rather than pass without testing anything.
    #[error(
        "network impairment lab unavailable: missing {0}. These tests need root, /dev/net/tun and \
         iproute2's `ip`; they fail rather than pass without them"
    )]
    Unavailable(String),
    /// Every subnet of 198.18.0.0/15 is held by a running lab.
    #[error("no free lab subnet: all {0} /24 subnets of 198.18.0.0/15 are held by running labs")]
    NoSubnet(usize),
    /// A lab holds 1 to 200 namespaces (host addresses .1 to .200).
    #[error("a lab holds 1 to {MAX_HOSTS} namespaces, not {0}")]
    Size(usize),
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("TUN device {name}: {source}")]
    Tun { name: String, source: std::io::Error },
    #[error("starting the router: {0}")]
    Router(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Most namespaces in one lab.
const MAX_HOSTS: usize = 200;
/// /24 subnets in 198.18.0.0/15.
const SUBNETS: usize = 512;
/// Host part of the test's own namespace's address.
const ROOT_HOST: u8 = 254;
/// Prefix of every lab namespace's name: `regnet-<pid>-<subnet>-<i>`.
const NETNS_PREFIX: &str = "regnet-";

/// One end of a lab link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// Namespace `i` of the lab (address `.i+1`).
    Ns(usize),
    /// The namespace the test runs in (address `.254`): the test itself and
    /// the processes it starts without a namespace.
    Root,
}

/// What the router does to the packets of one direction of one link, as
/// netem would: drop, delay with jitter, hold back to be overtaken, duplicate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Chance that a packet is dropped.
    pub loss: f64,
    /// Delay of every packet.
    pub delay: Duration,
    /// Each packet's delay varies uniformly within `delay ± jitter`; packets
    /// still leave in the order they came (jitter alone never reorders, so a
    /// test controls reordering with `reorder` alone).
    pub jitter: Duration,
    /// Chance that a packet is held back `reorder_gap` beyond its time, so
    /// packets sent after it overtake it.
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_gap: Duration,
    /// Chance that a packet is delivered twice.
    pub duplicate: f64,
    /// Lose a TCP segment, or an acknowledgement, at most once: its
    /// retransmission (same connection, same sequence number) and a repeated
    /// acknowledgement (same connection, same acknowledgement number) always
    /// pass. With random loss alone, one segment's tries can be lost again
    /// and again, and TCP doubles its wait each time: a segment lost k times
    /// in a row (with its acknowledgements) is `RTO · (2^k − 1)` late, with no
    /// bound but chance. Sparing the second try bounds a stall at about three
    /// retransmission timeouts, for a test of the router that must not depend
    /// on TCP's tail.
    pub spare_retries: bool,
}

impl Impairment {
    /// Packets dropped with probability `p`.
    pub fn loss(p: f64) -> Self {
        Self { loss: p, ..Self::default() }
    }

    /// Adds a delay of `delay ± jitter`.
    pub fn delay(self, delay: Duration, jitter: Duration) -> Self {
        Self { delay, jitter, ..self }
    }

    /// Adds reordering: a share `p` of packets held back by `gap`.
    pub fn reorder(self, p: f64, gap: Duration) -> Self {
        Self { reorder: p, reorder_gap: gap, ..self }
    }

    /// Adds duplication of a share `p` of packets.
    pub fn duplicate(self, p: f64) -> Self {
        Self { duplicate: p, ..self }
    }

    /// Loses a TCP segment or acknowledgement at most once (see
    /// [`Impairment::spare_retries`]).
    pub fn sparing_retries(self) -> Self {
        Self { spare_retries: true, ..self }
    }
}

/// What identifies a TCP packet's second try: its connection (addresses
/// and ports, 12 bytes) and, for a packet with data, its sequence number, or
/// for a bare acknowledgement, its acknowledgement number. `None` for
/// anything that is not a well-formed TCP packet over IPv4.
fn tcp_try(packet: &[u8]) -> Option<([u8; 12], bool, u32)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.len() < 20 || packet[9] != 6 || ihl < 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    let tcp = packet.get(ihl..total)?;
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    if offset < 20 || tcp.len() < offset {
        return None;
    }
    let mut conn = [0u8; 12];
    conn[..8].copy_from_slice(&packet[12..20]);
    conn[8..].copy_from_slice(&tcp[..4]);
    let has_data = tcp.len() > offset;
    let number = if has_data { &tcp[4..8] } else { &tcp[8..12] };
    Some((conn, has_data, u32::from_be_bytes([number[0], number[1], number[2], number[3]])))
}

/// What the router did to the packets of one direction of a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets written to the destination's device (duplicates included).
    pub delivered: u64,
    /// Packets dropped on purpose.
    pub lost: u64,
    /// Packets held back to be overtaken.
    pub held_back: u64,
    /// Packets delivered after a packet of the same direction that was sent
    /// later than them: reordering that happened, not just was asked for.
    pub out_of_order: u64,
    /// Packets delivered twice.
    pub duplicated: u64,
    /// The most packets lost in a row on the link: each one lost again
    /// doubles TCP's retransmission timeout when they are one segment's tries.
    pub longest_loss_run: u64,
}

impl Counters {
    fn add(self, o: Self) -> Self {
        Self {
            delivered: self.delivered + o.delivered,
            lost: self.lost + o.lost,
            held_back: self.held_back + o.held_back,
            out_of_order: self.out_of_order + o.out_of_order,
            duplicated: self.duplicated + o.duplicated,
            longest_loss_run: self.longest_loss_run.max(o.longest_loss_run),
        }
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} delivered, {} lost (at most {} in a row), {} held back, {} out of order, {} duplicated",
            self.delivered, self.lost, self.longest_loss_run, self.held_back, self.out_of_order, self.duplicated
        )
    }
}

/// State the test and the router share.
#[derive(Default)]
struct Shared {
    impairments: Mutex<HashMap<(Host, Host), Impairment>>,
    counters: Mutex<HashMap<(Host, Host), Counters>>,
    /// Packets the router could not place: not IPv4, not for a lab host, or
    /// refused by the destination device.
    undeliverable: AtomicU64,
}

/// Network namespaces joined by the impairment router (see the module docs).
pub struct Lab {
    subnet: [u8; 3],
    namespaces: Vec<String>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    router: Option<std::thread::JoinHandle<()>>,
}

/// Labs started by this process so far (spreads their subnets).
static STARTED: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// A lab of `n` namespaces with the router running and no impairment.
    pub async fn start(n: usize) -> Result<Self, LabError> {
        tokio::task::spawn_blocking(move || Self::start_blocking(n))
            .await
            .map_err(|e| LabError::Router(format!("setup task: {e}")))?
    }

    fn start_blocking(n: usize) -> Result<Self, LabError> {
        check_capabilities()?;
        if n == 0 || n > MAX_HOSTS {
            return Err(LabError::Size(n));
        }
        remove_stale_namespaces();
        let (index, root_tun) = claim_subnet()?;
        let subnet = [198, 18 + (index / 256) as u8, (index % 256) as u8];
        let mut lab = Self {
            subnet,
            namespaces: Vec::new(),
            shared: Arc::default(),
            stop: CancellationToken::new(),
            router: None,
        };
        // From here on, an error drops `lab`, which deletes what exists so far.
        let root_dev = root_device(index);
        let root_addr = format!("{}/24", lab.addr(Host::Root));
        ip(&["addr", "add", &root_addr, "dev", &root_dev])?;
        ip(&["link", "set", &root_dev, "up"])?;
        let mut tuns = Vec::new();
        for i in 0..n {
            let ns = format!("{NETNS_PREFIX}{}-{index}-{i}", std::process::id());
            ip(&["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            let dev = format!("nm{index}n{i}");
            tuns.push(open_tun(&dev)?);
            let addr = format!("{}/24", lab.addr(Host::Ns(i)));
            ip(&["link", "set", &dev, "netns", &ns])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &dev])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", &dev, "up"])?;
        }
        // Port i is namespace i's device; port n the test namespace's.
        tuns.push(root_tun);
        lab.router = Some(spawn_router(tuns, subnet, lab.shared.clone(), lab.stop.clone())?);
        Ok(lab)
    }

    /// Number of namespaces.
    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    /// Whether the lab has no namespace (never, once started).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// The address of `host`.
    pub fn addr(&self, host: Host) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        let d = match host {
            Host::Ns(i) => u8::try_from(i + 1).unwrap_or(0),
            Host::Root => ROOT_HOST,
        };
        Ipv4Addr::new(a, b, c, d)
    }

    /// The name of namespace `i` (for `ip netns exec`).
    pub fn netns(&self, i: usize) -> Option<&str> {
        self.namespaces.get(i).map(String::as_str)
    }

    /// Every host of the lab: the namespaces, then the test's own.
    pub fn hosts(&self) -> Vec<Host> {
        (0..self.len()).map(Host::Ns).chain([Host::Root]).collect()
    }

    /// Impairs the link between `a` and `b`, both ways.
    pub fn impair(&self, a: Host, b: Host, impairment: Impairment) {
        self.impair_one_way(a, b, impairment);
        self.impair_one_way(b, a, impairment);
    }

    /// Impairs the packets from `from` to `to` only.
    pub fn impair_one_way(&self, from: Host, to: Host, impairment: Impairment) {
        self.shared.impairments.lock().insert((from, to), impairment);
    }

    /// Impairs every link between two namespaces, both ways (links to the
    /// test's namespace keep theirs).
    pub fn impair_between_namespaces(&self, impairment: Impairment) {
        for i in 0..self.len() {
            for j in (0..self.len()).filter(|j| *j != i) {
                self.impair_one_way(Host::Ns(i), Host::Ns(j), impairment);
            }
        }
    }

    /// Every link unimpaired again.
    pub fn heal(&self) {
        self.shared.impairments.lock().clear();
    }

    /// What the router did to packets from `from` to `to` so far.
    pub fn counters(&self, from: Host, to: Host) -> Counters {
        self.shared.counters.lock().get(&(from, to)).copied().unwrap_or_default()
    }

    /// The sum of [`Self::counters`] over the given directed links.
    pub fn counters_over(&self, links: &[(Host, Host)]) -> Counters {
        links.iter().fold(Counters::default(), |sum, (a, b)| sum.add(self.counters(*a, *b)))
    }

    /// Every directed link between two namespaces.
    pub fn links_between_namespaces(&self) -> Vec<(Host, Host)> {
        let n = self.len();
        (0..n).flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (Host::Ns(i), Host::Ns(j)))).collect()
    }

    /// Packets the router could not place (not IPv4, not for a lab host).
    pub fn undeliverable(&self) -> u64 {
        self.shared.undeliverable.load(AtomicOrdering::Relaxed)
    }

    /// A NATS cluster of one server per namespace (server i in namespace i,
    /// on its address there), joined by routes that cross the router.
    pub async fn nats_cluster(&self) -> Result<NatsCluster> {
        let routes: Vec<String> = (0..self.len()).map(|i| format!("nats://{}:6222", self.addr(Host::Ns(i)))).collect();
        let mut servers = Vec::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let host = self.addr(Host::Ns(i));
            let others: Vec<&str> =
                routes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, r)| r.as_str()).collect();
            let extra = vec![
                "--cluster_name".to_string(),
                format!("lab-{}-{}", self.subnet[1], self.subnet[2]),
                "--cluster".to_string(),
                routes[i].clone(),
                "--routes".to_string(),
                others.join(","),
            ];
            // A namespace of its own: the default ports are free.
            let server = NatsServer::start_at(Some(ns), IpAddr::V4(host), extra, 4222, 8222)
                .await
                .with_context(|| format!("nats-server in namespace {ns}"))?;
            servers.push(server);
        }
        NatsCluster::joined(servers).await
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(router) = self.router.take() {
            // Closing the devices' descriptors removes the devices.
            let _ = router.join();
        }
        for ns in &self.namespaces {
            // Whatever still runs in a lab namespace was started there by
            // this test; it would keep the namespace alive.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
                    let _ = send_signal(pid, "KILL");
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Fails with what is missing unless the process is root, `/dev/net/tun`
/// exists and the `ip` command runs.
pub fn check_capabilities() -> Result<(), LabError> {
    let mut missing = Vec::new();
    match effective_uid() {
        Some(0) => {}
        Some(uid) => missing.push(format!("root (running as uid {uid})")),
        None => missing.push("root (no effective uid in /proc/self/status)".to_string()),
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (the tun module)".to_string());
    }
    let ip_runs = Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !ip_runs.is_ok_and(|s| s.success()) {
        missing.push("the `ip` command (iproute2)".to_string());
    }
    if missing.is_empty() { Ok(()) } else { Err(LabError::Unavailable(missing.join(", "))) }
}

/// The effective user id, from `/proc/self/status` (no libc call needed).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `ip args...`, failing with its error output.
fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// The name of the TUN device in the test's namespace that claims subnet `index`.
fn root_device(index: usize) -> String {
    format!("nmr{index}")
}

/// Claims a free subnet: the first whose claiming device this process can
/// create, starting at a place that differs between processes and labs.
fn claim_subnet() -> Result<(usize, File), LabError> {
    let labs = STARTED.fetch_add(1, AtomicOrdering::Relaxed);
    let first = (std::process::id() as usize).wrapping_mul(131).wrapping_add(labs.wrapping_mul(7));
    for k in 0..SUBNETS {
        let index = (first + k) % SUBNETS;
        match open_tun(&root_device(index)) {
            Ok(tun) => return Ok((index, tun)),
            // Held by another lab (EBUSY), or the name taken by a device of
            // another kind (EINVAL): try the next.
            Err(LabError::Tun { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINVAL)) => {}
            Err(e) => return Err(e),
        }
    }
    Err(LabError::NoSubnet(SUBNETS))
}

/// Deletes lab namespaces left behind by test processes that no longer run
/// (killed before their labs were dropped).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Creates TUN device `name` (IPv4 packets without a packet-info header) and
/// returns its descriptor, non-blocking. The device lives while the
/// descriptor is open.
#[allow(unsafe_code)]
fn open_tun(name: &str) -> Result<File, LabError> {
    let tun_err = |source| LabError::Tun { name: name.into(), source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(tun_err)?;
    // struct ifreq: the name (NUL-terminated, at most IFNAMSIZ bytes), then
    // a union whose member TUNSETIFF reads is `short ifr_flags`.
    let mut req = [0u8; std::mem::size_of::<libc::ifreq>()];
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(tun_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "name too long")));
    }
    req[..bytes.len()].copy_from_slice(bytes);
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    req[libc::IFNAMSIZ..libc::IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq` from the pointer and may write
    // the device's name back into it. `req` has exactly that size, is alive
    // and exclusively borrowed for the call, and the descriptor is open. No
    // alignment is needed: the kernel copies the bytes.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
    if rc < 0 {
        return Err(tun_err(std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// Starts the router on a thread of its own (with its own runtime, so a busy
/// test runtime never delays packets), once its devices are registered.
fn spawn_router(
    tuns: Vec<File>,
    subnet: [u8; 3],
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, LabError> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("netem-router".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                let _ = started_tx.send(Err(e.to_string()));
                return;
            }
        };
        runtime.block_on(async move {
            let ports: std::io::Result<Vec<Arc<AsyncFd<File>>>> =
                tuns.into_iter().map(|f| register(f).map(Arc::new)).collect();
            match ports {
                Ok(ports) => {
                    let _ = started_tx.send(Ok(()));
                    Router::new(ports, subnet, shared).run(stop).await;
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e.to_string()));
                }
            }
        });
    })?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(LabError::Router(e)),
        Err(_) => Err(LabError::Router("the router thread ended before it started".into())),
    }
}

/// Registers a device's descriptor with the router's runtime.
#[allow(unsafe_code)]
fn register(device: File) -> std::io::Result<AsyncFd<File>> {
    // SAFETY: the `AsyncFd` takes ownership of the `File`, so its descriptor
    // stays open, and refers to the same device, until the `AsyncFd` drops it;
    // a `File` always returns the same descriptor.
    unsafe { AsyncFd::register(device) }.map_err(std::io::Error::from)
}

/// A packet waiting for its time.
struct Pending {
    at: Instant,
    /// Admission order: packets due at the same instant leave in it.
    order: u64,
    /// Port from, port to.
    link: (usize, usize),
    /// Number within its link, in the order packets came.
    number: u64,
    packet: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// Per directed link: when its last in-order packet leaves, how many came,
/// and the highest number delivered (to count overtaking).
#[derive(Default)]
struct LinkState {
    last_release: Option<Instant>,
    admitted: u64,
    highest_delivered: u64,
    /// Packets lost in a row up to now.
    loss_run: u64,
    /// TCP tries lost once, spared the next time (with `spare_retries`);
    /// oldest first, bounded.
    lost_tries: std::collections::VecDeque<([u8; 12], bool, u32)>,
}

/// Lost TCP tries a link remembers to spare: far more than the segments a
/// connection has in flight.
const LOST_TRIES_KEPT: usize = 4_096;

struct Router {
    ports: Vec<Arc<AsyncFd<File>>>,
    subnet: [u8; 3],
    shared: Arc<Shared>,
    links: HashMap<(usize, usize), LinkState>,
    queue: BinaryHeap<Reverse<Pending>>,
    admitted: u64,
}

impl Router {
    fn new(ports: Vec<Arc<AsyncFd<File>>>, subnet: [u8; 3], shared: Arc<Shared>) -> Self {
        Self { ports, subnet, shared, links: HashMap::new(), queue: BinaryHeap::new(), admitted: 0 }
    }

    /// Host of port `i` (the last port is the test namespace's).
    fn host(&self, port: usize) -> Host {
        if port + 1 == self.ports.len() { Host::Root } else { Host::Ns(port) }
    }

    /// The port of the packet's destination, if it is an IPv4 packet for a
    /// lab host.
    fn destination(&self, packet: &[u8]) -> Option<usize> {
        if packet.len() < 20 || packet[0] >> 4 != 4 || packet[16..19] != self.subnet {
            return None;
        }
        let namespaces = self.ports.len() - 1;
        match packet[19] {
            ROOT_HOST => Some(namespaces),
            h if (1..=namespaces).contains(&usize::from(h)) => Some(usize::from(h) - 1),
            _ => None,
        }
    }

    async fn run(mut self, stop: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<(usize, Vec<u8>)>(4_096);
        let readers: Vec<JoinHandle<()>> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| tokio::spawn(read_port(i, port.clone(), tx.clone())))
            .collect();
        drop(tx);
        loop {
            let next = self.queue.peek().map(|Reverse(p)| p.at);
            tokio::select! {
                () = stop.cancelled() => break,
                got = rx.recv() => match got {
                    Some((from, packet)) => self.admit(from, packet),
                    None => break,
                },
                () = sleep_until(next) => {}
            }
            let now = Instant::now();
            while self.queue.peek().is_some_and(|Reverse(p)| p.at <= now) {
                if let Some(Reverse(p)) = self.queue.pop() {
                    self.deliver(p);
                }
            }
        }
        for r in readers {
            r.abort();
        }
    }

    /// Decides a packet's fate: lost, or queued for its time (perhaps twice).
    fn admit(&mut self, from: usize, packet: Vec<u8>) {
        let Some(to) = self.destination(&packet).filter(|to| *to != from) else {
            self.shared.undeliverable.fetch_add(1, AtomicOrdering::Relaxed);
            return;
        };
        let (src, dst) = (self.host(from), self.host(to));
        let imp = self.shared.impairments.lock().get(&(src, dst)).copied().unwrap_or_default();
        let mut counters = self.shared.counters.lock();
        let c = counters.entry((src, dst)).or_default();
        let link = self.links.entry((from, to)).or_default();
        let try_id = if imp.spare_retries { tcp_try(&packet) } else { None };
        let spared = try_id.is_some_and(|t| link.lost_tries.contains(&t));
        if !spared && imp.loss > 0.0 && rand::random::<f64>() < imp.loss {
            c.lost += 1;
            link.loss_run += 1;
            c.longest_loss_run = c.longest_loss_run.max(link.loss_run);
            if let Some(t) = try_id {
                if link.lost_tries.len() >= LOST_TRIES_KEPT {
                    link.lost_tries.pop_front();
                }
                link.lost_tries.push_back(t);
            }
            return;
        }
        link.loss_run = 0;
        let now = Instant::now();
        let jitter_us = imp.jitter.as_micros() as i64;
        let offset_us = if jitter_us > 0 { rand::random_range(-jitter_us..=jitter_us) } else { 0 };
        let delay_us = (imp.delay.as_micros() as i64 + offset_us).max(0);
        // In order behind the link's previous packet, as on a wire.
        let mut at = (now + Duration::from_micros(delay_us as u64)).max(link.last_release.unwrap_or(now));
        link.last_release = Some(at);
        if imp.reorder > 0.0 && rand::random::<f64>() < imp.reorder {
            at += imp.reorder_gap;
            c.held_back += 1;
        }
        link.admitted += 1;
        let number = link.admitted;
        if imp.duplicate > 0.0 && rand::random::<f64>() < imp.duplicate {
            c.duplicated += 1;
            self.admitted += 1;
            let copy = Pending { at, order: self.admitted, link: (from, to), number, packet: packet.clone() };
            self.queue.push(Reverse(copy));
        }
        self.admitted += 1;
        self.queue.push(Reverse(Pending { at, order: self.admitted, link: (from, to), number, packet }));
    }

    fn deliver(&mut self, p: Pending) {
        let (src, dst) = (self.host(p.link.0), self.host(p.link.1));
        let link = self.links.entry(p.link).or_default();
        let overtaken = p.number < link.highest_delivered;
        link.highest_delivered = link.highest_delivered.max(p.number);
        let mut device: &File = self.ports[p.link.1].get_ref();
        if device.write(&p.packet).is_err() {
            self.shared.undeliverable.fetch_add(1, AtomicOrdering::Relaxed);
            return;
        }
        let mut counters = self.shared.counters.lock();
        let c = counters.entry((src, dst)).or_default();
        c.delivered += 1;
        c.out_of_order += u64::from(overtaken);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads packets from one device and hands them to the router.
async fn read_port(port: usize, device: Arc<AsyncFd<File>>, to_router: mpsc::Sender<(usize, Vec<u8>)>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(mut ready) = device.readable().await else { return };
        let read = ready.try_io(|fd| {
            let mut f: &File = fd.get_ref();
            f.read(&mut buf)
        });
        match read {
            Ok(Ok(n)) => {
                if to_router.send((port, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return,
            Err(_would_block) => {}
        }
    }
}

/// Registry nodes as processes in the test's namespace, node i on NATS server
/// i, each server in lab namespace i: the routes between servers and each
/// node's link to its server cross the router.
pub struct LabCluster {
    // Dropped in this order: nodes, servers, then the lab.
    pub nodes: Vec<NodeProc>,
    pub nats: NatsCluster,
    pub lab: Lab,
}

impl LabCluster {
    /// One node per name, with node configuration `config` (TOML).
    pub async fn start(cluster: &str, names: &[&str], config: &str) -> Result<Self> {
        let lab = Lab::start(names.len()).await?;
        let nats = lab.nats_cluster().await?;
        let bin = node_bin()?;
        let mut nodes = Vec::new();
        for (name, server) in names.iter().zip(&nats.servers) {
            nodes.push(NodeProc::spawn(&bin, name, &[server.url()], cluster, config)?);
        }
        for n in &nodes {
            n.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(Self { nodes, nats, lab })
    }

    /// Every node's gRPC endpoint URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://{}", n.grpc)).collect()
    }

    /// (name, gRPC address) of every node, for the checker.
    pub fn named(&self) -> Vec<(String, SocketAddr)> {
        self.nodes.iter().map(|n| (n.name.clone(), n.grpc)).collect()
    }
}

/// What every node's Members API said about its peers, polled in the
/// background: how often a peer was seen suspect or orphaned.
pub struct PeerStates {
    seen: Arc<Mutex<PeerTally>>,
    poller: JoinHandle<()>,
}

/// Observations of [`PeerStates`].
#[derive(Clone, Debug, Default)]
pub struct PeerTally {
    /// Polls of every node's Members API that answered.
    pub polls: usize,
    /// Polls that could not reach a node's API.
    pub failed_polls: usize,
    /// (observer, peer) pairs ever seen suspect.
    pub suspect: BTreeSet<(String, String)>,
    /// (observer, peer) pairs ever seen orphaned (taken for dead).
    pub orphaned: BTreeSet<(String, String)>,
    /// The largest beat age any node reported for a peer, in milliseconds.
    pub max_beat_age_ms: u64,
    /// The states each node reported at the last poll: (observer, peer) → state.
    pub last: HashMap<(String, String), i32>,
}

impl PeerStates {
    /// Polls every node in `nodes` every `every`.
    pub fn watch(nodes: Vec<(String, SocketAddr)>, every: Duration) -> Self {
        let seen = Arc::new(Mutex::new(PeerTally::default()));
        let tally = seen.clone();
        let poller = tokio::spawn(async move {
            let mut clients = HashMap::new();
            loop {
                for (name, addr) in &nodes {
                    if !clients.contains_key(name) {
                        match crate::channel(*addr).await {
                            Ok(ch) => {
                                clients.insert(name.clone(), v1::cluster_client::ClusterClient::new(ch));
                            }
                            Err(_) => {
                                tally.lock().failed_polls += 1;
                                continue;
                            }
                        }
                    }
                    let Some(client) = clients.get_mut(name) else { continue };
                    let answer = tokio::time::timeout(crate::PROMPTLY, client.members(v1::MembersRequest {})).await;
                    let Ok(Ok(answer)) = answer else {
                        tally.lock().failed_polls += 1;
                        clients.remove(name);
                        continue;
                    };
                    let mut t = tally.lock();
                    t.polls += 1;
                    for m in answer.into_inner().members {
                        let pair = (name.clone(), m.node_id.clone());
                        if m.state == v1::MemberState::Suspect as i32 {
                            t.suspect.insert(pair.clone());
                        }
                        if m.state == v1::MemberState::Orphaned as i32 {
                            t.orphaned.insert(pair.clone());
                        }
                        if m.state != v1::MemberState::Local as i32 {
                            t.max_beat_age_ms = t.max_beat_age_ms.max(m.last_beat_age_ms);
                        }
                        t.last.insert(pair, m.state);
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        Self { seen, poller }
    }

    /// What was seen so far.
    pub fn tally(&self) -> PeerTally {
        self.seen.lock().clone()
    }

    /// Forgets what was seen so far (to watch a new phase).
    pub fn reset(&self) {
        *self.seen.lock() = PeerTally::default();
    }

    /// Whether the last poll saw every peer of every node live.
    pub fn all_live(&self) -> bool {
        let t = self.seen.lock();
        !t.last.is_empty()
            && t.last.values().all(|s| *s == v1::MemberState::Live as i32 || *s == v1::MemberState::Local as i32)
    }
}

impl Drop for PeerStates {
    fn drop(&mut self) {
        self.poller.abort();
    }
}
