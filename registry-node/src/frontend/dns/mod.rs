//! The DNS interface: an authoritative server for `dns.domain` on UDP and
//! TCP at `dns.addr`, for everything that resolves names and links no
//! registry client (nginx upstreams, curl, JDBC URLs, cron jobs).
//!
//! - [`answer`]: the core, with no I/O: request bytes in, answer bytes out,
//!   the naming scheme, truncation and rotation.
//! - [`catalog`]: which names exist and their records, compiled once per
//!   change of a view, in a map queries read without a lock.
//! - This module: the sockets. A few OS threads read UDP in batches
//!   (`recvmmsg`), answer each datagram in turn and send the answers in one
//!   call (`sendmmsg`): a flood costs at most those threads, and every
//!   answer is short work. A task per TCP connection, bounded in number,
//!   each closed when its client says nothing for `dns.tcp_idle_timeout_ms`,
//!   answering on the blocking pool (an answer may wait for a compile).
//!
//! The registry's writer tells the catalog of every change as it makes it
//! ([`crate::views::ViewListener`]): a registration is visible to the next
//! query. Readiness is the API's ([`NodeApi::check_ready`]). DNS has no
//! credentials: what `dns.namespaces` lists (all by default) is readable by
//! anyone who reaches the port.

pub mod answer;
pub mod catalog;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use self::answer::{Directory, Outcome, Records, Responder, Transport};
use self::catalog::Catalog;
use crate::api::NodeApi;
use crate::config::DnsSettings;
use crate::metrics::{DnsMetrics, Metrics};

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {proto} {addr}: {source}")]
    Bind { proto: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Zone(#[from] answer::ZoneError),
    #[error("the node's views already have a listener: one DNS server per node")]
    Listening,
}

/// The UDP and TCP sockets, bound on one port.
#[derive(Debug)]
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsSockets {
    /// Binds UDP, then TCP on the same port. With port 0, the port UDP got
    /// may be taken for TCP: a few other ports are tried.
    pub async fn bind(addr: SocketAddr) -> Result<Self, DnsError> {
        let attempts = if addr.port() == 0 { 8 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let udp = UdpSocket::bind(addr).await.map_err(|source| DnsError::Bind { proto: "UDP", addr, source })?;
            let bound = udp.local_addr().map_err(|source| DnsError::Bind { proto: "UDP", addr, source })?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => return Ok(Self { udp, tcp }),
                Err(source) => last = Some(DnsError::Bind { proto: "TCP", addr: bound, source }),
            }
        }
        Err(last.unwrap_or(DnsError::Bind { proto: "TCP", addr, source: std::io::ErrorKind::AddrInUse.into() }))
    }

    /// The address both listen on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// The node seen as a [`Directory`]: the catalog, compiled from its views.
struct NodeDirectory {
    api: NodeApi,
    catalog: Arc<Catalog>,
}

impl Directory for NodeDirectory {
    fn ready(&self) -> bool {
        self.api.check_ready().is_ok()
    }

    fn records(&self, namespace: &str, service: &str, responder: &Responder) -> Option<Arc<Records>> {
        self.catalog.records(namespace, service, |views, previous| {
            let stored = views.iter().flat_map(|(ns, svc)| self.api.registry().views().get_stored(ns, svc));
            responder.compile(stored.collect(), previous)
        })
    }

    fn serial(&self) -> u32 {
        // RFC 1982 arithmetic wraps; the low bits still grow with changes.
        self.api.registry().views().revision() as u32
    }
}

/// Serves DNS on `sockets` until `stop`; the task ends when every
/// connection has closed.
pub fn spawn_dns(
    api: NodeApi,
    settings: &DnsSettings,
    sockets: DnsSockets,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, DnsError> {
    let responder = Arc::new(Responder::new(&settings.domain, settings.ttl_s, settings.namespaces.clone())?);
    let catalog = Arc::new(Catalog::default());
    if !api.registry().views().listen(catalog.clone()) {
        return Err(DnsError::Listening);
    }
    let dir = Arc::new(NodeDirectory { api: api.clone(), catalog });
    let metrics = api.registry().metrics.clone();
    let idle = Duration::from_millis(settings.tcp_idle_timeout_ms);
    let slots = Arc::new(Semaphore::new(settings.max_tcp_connections));
    let addr = sockets.local_addr().ok();
    info!(addr = ?addr, domain = %settings.domain, "DNS on UDP and TCP");
    if addr.is_some_and(|a| !a.ip().is_loopback()) && settings.namespaces.is_empty() {
        // Auth does not reach DNS: say once what is open, and to whom.
        warn!(addr = ?addr, "DNS has no credentials: every namespace is readable by anyone who reaches this address (dns.namespaces limits it)");
    }
    let DnsSockets { udp, tcp } = sockets;
    Ok(tokio::spawn(async move {
        let connections = TaskTracker::new();
        let udp_threads = match spawn_udp(udp, responder.clone(), dir.clone(), metrics.clone(), stop.clone()) {
            Ok(threads) => threads,
            Err(e) => {
                warn!(error = %e, "cannot start the DNS UDP threads: DNS is served over TCP only");
                Vec::new()
            }
        };
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: pass, but do not spin.
                        warn!(error = %e, "DNS TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                Metrics::inc(&metrics.dns.tcp_refused);
                continue;
            };
            let (responder, dir, metrics, stop) = (responder.clone(), dir.clone(), metrics.clone(), stop.clone());
            connections.spawn(async move {
                serve_tcp(stream, responder, dir, &metrics, idle, stop).await;
                drop(slot);
            });
        }
        connections.close();
        connections.wait().await;
        let _ = tokio::task::spawn_blocking(move || udp_threads.into_iter().for_each(|t| drop(t.join()))).await;
    }))
}

/// How long a UDP thread blocks before it looks whether to stop.
const UDP_STOP_POLL: Duration = Duration::from_millis(100);

/// The UDP socket's receive buffer: room for a burst of some 5,000 queries
/// (a datagram takes about 800 bytes of buffer) rather than the default's
/// 270, so a burst waits instead of being dropped. The kernel caps it at
/// `net.core.rmem_max` (OPERATIONS.md).
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// UDP is served by a few OS threads blocked in `recv_from` on the same
/// socket (the kernel hands each datagram to one of them), each answering
/// in turn and sending with a blocking `send_to`. Every answer is short
/// work with no await in it; threads skip the wake-ups and hand-offs of a
/// task on the runtime, which were most of a query's cost under load.
fn spawn_udp(
    socket: UdpSocket,
    responder: Arc<Responder>,
    dir: Arc<NodeDirectory>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let socket = socket.into_std()?;
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        warn!(error = %e, "cannot enlarge the DNS UDP receive buffer: bursts may be dropped");
    }
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(UDP_STOP_POLL))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let mut handles = Vec::with_capacity(threads);
    for n in 0..threads {
        let socket = socket.try_clone()?;
        let (responder, dir, metrics, stop) = (responder.clone(), dir.clone(), metrics.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name(format!("dns-udp-{n}"))
            .spawn(move || serve_udp(&socket, &responder, &dir, &metrics, &stop))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Datagrams read (and answers sent) per system call at most.
const UDP_BATCH: usize = 32;

/// Room for one query. A real one is a few hundred bytes (one question,
/// an OPT record); anything longer is cut, then read as garbage.
const UDP_DATAGRAM: usize = 4096;

/// One UDP thread, until `stop`: in batches where the system has them,
/// else a datagram at a time.
fn serve_udp(
    socket: &std::net::UdpSocket,
    responder: &Responder,
    dir: &NodeDirectory,
    metrics: &Metrics,
    stop: &CancellationToken,
) {
    #[cfg(target_os = "linux")]
    if serve_udp_batched(socket, responder, dir, metrics, stop) {
        return;
    }
    serve_udp_singly(socket, responder, dir, metrics, stop);
}

/// `recvmmsg` takes every datagram waiting (up to [`UDP_BATCH`]) in one
/// call, each is answered in turn, and `sendmmsg` sends the answers in one
/// call. Under load that is two system calls per batch instead of two per
/// query; at rest a batch is one datagram. Returns false at once if the
/// kernel has no `recvmmsg` (some sandboxes).
#[cfg(target_os = "linux")]
fn serve_udp_batched(
    socket: &std::net::UdpSocket,
    responder: &Responder,
    dir: &NodeDirectory,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> bool {
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd as _;

    use nix::errno::Errno;
    use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

    let fd = socket.as_raw_fd();
    let mut buffers = vec![[0u8; UDP_DATAGRAM]; UDP_BATCH];
    let mut receiving = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut sending = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut received: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(UDP_BATCH);
    let mut answers: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(UDP_BATCH);
    while !stop.is_cancelled() {
        received.clear();
        {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                buffers.iter_mut().map(|b| [IoSliceMut::new(&mut b[..])]).collect();
            // Blocks for the first (up to the socket's read timeout), then
            // takes what else is there without waiting.
            match recvmmsg(fd, &mut receiving, slices.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(messages) => {
                    for m in messages {
                        // A datagram longer than the buffer is cut: its
                        // length is what was read, and the rest reads as garbage.
                        received.push((m.bytes.min(UDP_DATAGRAM), m.address));
                    }
                }
                // The poll timeout; ICMP port unreachable from an earlier answer.
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNREFUSED) => continue,
                Err(Errno::ENOSYS) => return false,
                Err(e) => {
                    // Out of memory and the like: pass, but do not spin.
                    warn!(error = %e, "DNS UDP receive failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        answers.clear();
        for (buffer, (len, peer)) in buffers.iter().zip(&received) {
            let (answer, outcome) = responder.respond(&buffer[..*len], Transport::Udp, dir);
            count(&metrics.dns, outcome);
            if let (Some(answer), Some(peer)) = (answer, peer) {
                answers.push((answer, *peer));
            }
        }
        let mut sent = 0;
        while sent < answers.len() {
            let rest = &answers[sent..];
            let slices: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|(a, _)| [IoSlice::new(a)]).collect();
            let peers: Vec<Option<SockaddrStorage>> = rest.iter().map(|(_, p)| Some(*p)).collect();
            let none: [ControlMessage<'_>; 0] = [];
            match sendmmsg(fd, &mut sending, slices.iter(), &peers, none, MsgFlags::empty()) {
                Ok(results) => {
                    let n = results.count();
                    // A message that cannot go (its peer unreachable) stops
                    // the call: skip it, send the rest.
                    sent += n.max(1);
                }
                Err(_) => sent += 1,
            }
        }
    }
    true
}

/// A datagram per system call, for systems without `recvmmsg`.
fn serve_udp_singly(
    socket: &std::net::UdpSocket,
    responder: &Responder,
    dir: &NodeDirectory,
    metrics: &Metrics,
    stop: &CancellationToken,
) {
    let mut buf = vec![0u8; UDP_DATAGRAM];
    while !stop.is_cancelled() {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                use std::io::ErrorKind::{ConnectionRefused, ConnectionReset, Interrupted, TimedOut, WouldBlock};
                if !matches!(e.kind(), WouldBlock | TimedOut | Interrupted | ConnectionRefused | ConnectionReset) {
                    warn!(error = %e, "DNS UDP receive failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        let (answer, outcome) = responder.respond(&buf[..len], Transport::Udp, dir);
        count(&metrics.dns, outcome);
        if let Some(answer) = answer {
            let _ = socket.send_to(&answer, peer);
        }
    }
}

/// One TCP connection: length-prefixed queries, answered in order, until
/// the client closes, says nothing for `idle`, or sends garbage it cannot
/// frame.
async fn serve_tcp(
    mut stream: TcpStream,
    responder: Arc<Responder>,
    dir: Arc<NodeDirectory>,
    metrics: &Metrics,
    idle: Duration,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            buf.resize(usize::from(len), 0);
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(())
        };
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(idle, read) => r,
        };
        match read {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                Metrics::inc(&metrics.dns.tcp_timeouts);
                return;
            }
        }
        // Off the runtime: the answer may wait for a compile of the name's
        // records (tens of ms for a first compile of a service of 10,000
        // instances, or the wait for a UDP thread compiling it), which
        // would hold up every other task on this worker.
        let (r, d, query) = (responder.clone(), dir.clone(), std::mem::take(&mut buf));
        let answered = tokio::task::spawn_blocking(move || {
            let (answer, outcome) = r.respond(&query, Transport::Tcp, &*d);
            (answer, outcome, query)
        });
        let Ok((answer, outcome, query)) = answered.await else { return };
        buf = query;
        count(&metrics.dns, outcome);
        let Some(answer) = answer else {
            // Nothing to answer: a client that sends responses is not one.
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else { return };
        let write = async {
            stream.write_u16(len).await?;
            stream.write_all(&answer).await?;
            stream.flush().await
        };
        if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
            return;
        }
    }
}

fn count(m: &DnsMetrics, outcome: Outcome) {
    if outcome.bad {
        Metrics::inc(&m.bad_requests);
    }
    if outcome.truncated {
        Metrics::inc(&m.truncated);
    }
    let index = match outcome.rcode {
        None => return,
        Some(ResponseCode::NoError) => 0,
        Some(ResponseCode::NXDomain) => 1,
        Some(ResponseCode::Refused) => 2,
        Some(ResponseCode::ServFail) => 3,
        Some(ResponseCode::FormErr) => 4,
        Some(_) => 5,
    };
    let counter: &AtomicU64 = &m.answers[index];
    Metrics::inc(counter);
}
