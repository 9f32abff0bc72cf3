//! Packet-level faults against real processes: nats-servers in network
//! namespaces joined by the impairment router of `registry_tests::netem`
//! (a userspace netem over TUN devices), registry-node processes on them,
//! providers and consumers through the client library. Unlike the TCP fault
//! links of the `faults` suite, the router loses and reorders IP packets, so
//! the kernels' TCP stacks retransmit, send duplicate ACKs and recover, as on
//! a bad network.
//!
//! These tests need root and /dev/net/tun. Without them they fail, saying
//! what is missing: they never pass without having tested anything.
//!
//! Bounds are derived from the timers of `FAULT_CONFIG` (beats every 200 ms,
//! a peer suspect after 600 ms of silence and orphaned after 1.5 s) and from
//! TCP's retransmission timeout: Linux waits at least [`RTO_MIN`] (plus the
//! smoothed round trip) before sending a segment again when no later segment
//! reveals the loss, and doubles the wait each time the same segment is lost
//! again. A segment lost k times in a row arrives about `RTO · (2^k − 1)`
//! late, and that happens to a given segment with probability `p^k` for a
//! packet loss rate `p`. Each bound below names the k it tolerates and what
//! the odds of exceeding it are.

use std::time::Duration;

use anyhow::{Result, bail};
use registry_tests::faults::{FAULT_CONFIG, Fleet, Report, converge, ids, time_of_day};
use registry_tests::nats::NatsServer;
use registry_tests::netem::{Host, Impairment, Lab, LabCluster, PeerStates, PeerTally};
use tokio::time::Instant;

/// Linux's minimum retransmission timeout (`TCP_RTO_MIN`).
const RTO_MIN: Duration = Duration::from_millis(200);

/// What a round may take on routes of at most 80 ms each way with no loss:
/// the bound of the `faults` suite's slow-routes scenario (registration on
/// loopback, propagation over the routes, the consumers' pushes, and the
/// checker's 50 ms polls).
const SLOW_ROUTE_ROUND: Duration = Duration::from_millis(1_500);

/// How long each scenario keeps its impairment at least: over six times the
/// 1.5 s after which a silent peer is taken for dead, so beats and changes
/// cross the impaired links thousands of times.
const IMPAIRED_FOR: Duration = Duration::from_secs(10);

/// How long one round may take before the scenario gives up on it: a
/// segment lost five times in a row on the slowest links here (`31 · RTO`
/// with RTO ≤ 0.35 s is 10.9 s minus the round's own 1.5 s). Six losses in a
/// row are 1 in a million segments at 10% loss.
const ROUND_DEADLINE: Duration = Duration::from_secs(10);

/// The time each register/deregister round took to be visible everywhere.
///
/// The slowest round of a run is TCP's tail, not the registry's: with loss
/// rate `p`, some segment among the thousand or so a run sends is lost k times
/// in a row with probability about `1000 · p^k`, and waits `RTO · (2^k − 1)`.
/// So the bound is on the 90th percentile (a round moves some tens of
/// segments, so a tenth of the rounds hitting the tolerated k at once is out
/// of reach of chance), and every round must still finish within
/// [`ROUND_DEADLINE`].
#[derive(Default)]
struct Rounds(Vec<Duration>);

impl Rounds {
    fn record(&mut self, took: Duration) {
        self.0.push(took);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q`-quantile (nearest rank); zero with no rounds.
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).copied().unwrap_or_default()
    }

    /// The report rows: the 90th percentile against `bound`; the median and
    /// the slowest round for information (a round past [`ROUND_DEADLINE`]
    /// has already failed the scenario in [`round`]).
    fn rows(&self, report: &mut Report, bound: Duration) {
        let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        report.row("rounds of 3 registrations and 1 removal", "≥ 5", self.len().to_string(), self.len() >= 5);
        report.within("90th percentile round, visible on every node and consumer", bound, self.quantile(0.9));
        report.row("median round", "(informational)", secs(self.quantile(0.5)), true);
        let deadline = format!("(informational; each round ≤ {})", secs(ROUND_DEADLINE));
        report.row("slowest round (TCP's tail)", deadline, secs(self.quantile(1.0)), true);
    }
}

/// One round: three registrations, the previous round's first provider
/// stopped, then the time until every node and consumer shows it.
async fn round(cluster: &LabCluster, endpoints: &[String], fleet: &mut Fleet, n: usize) -> Result<Duration> {
    let t = Instant::now();
    fleet.register(endpoints, "api", &ids(&format!("r{n}"), 3)).await?;
    if n > 0 {
        fleet.stop("api", &format!("r{}-0", n - 1)).await;
    }
    let took = converge(&cluster.named(), fleet.watches(), &fleet.expected(), ROUND_DEADLINE).await?;
    Ok(took.max(t.elapsed()))
}

/// The next message of a NATS subscription.
async fn futures_next(sub: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    use tokio_stream::StreamExt as _;
    sub.next().await
}

fn pairs(set: &std::collections::BTreeSet<(String, String)>) -> String {
    if set.is_empty() {
        return "none".into();
    }
    set.iter().map(|(o, p)| format!("{o} saw {p}")).collect::<Vec<_>>().join(", ")
}

/// Informational rows: how the nodes saw each other under the impairment.
fn peer_rows(report: &mut Report, tally: &PeerTally) {
    report.row(
        "Members polls answered (every 100 ms, each node)",
        "> 0",
        format!("{} ({} failed)", tally.polls, tally.failed_polls),
        tally.polls > 0,
    );
    report.row("longest beat age any node reported", "(informational)", format!("{} ms", tally.max_beat_age_ms), true);
    report.row("peers seen suspect (observer saw peer)", "(informational)", pairs(&tally.suspect), true);
}

/// Register/deregister rounds while `impairment` holds on every route between
/// the three NATS servers (the links between nodes and their own servers stay
/// clean). Nine rounds in ten must be visible on every node and consumer
/// within `round_bound`, and every round within [`ROUND_DEADLINE`]; with
/// `no_dead`, no node may ever take a peer for dead.
async fn lossy_routes(
    name: &str,
    cluster_name: &str,
    impairment: Impairment,
    round_bound: Duration,
    no_dead: bool,
) -> Result<()> {
    Report::new(name)
        .run(async |report| {
            let cluster = LabCluster::start(cluster_name, &["a", "b", "c"], FAULT_CONFIG).await?;
            let endpoints = cluster.endpoints();
            let mut fleet = Fleet::default();
            fleet.register(&endpoints, "api", &ids("base", 3)).await?;
            fleet.watch(&endpoints, "api").await?;
            converge(&cluster.named(), fleet.watches(), &fleet.expected(), Duration::from_secs(10)).await?;

            let lab = &cluster.lab;
            let peers = PeerStates::watch(cluster.named(), Duration::from_millis(100));
            lab.impair_between_namespaces(impairment);
            let impaired = Instant::now();
            let mut rounds = Rounds::default();
            while impaired.elapsed() < IMPAIRED_FOR {
                let took = round(&cluster, &endpoints, &mut fleet, rounds.len()).await?;
                rounds.record(took);
            }
            let tally = peers.tally();
            let counters = lab.counters_over(&lab.links_between_namespaces());
            println!("{name}: routes: {counters}; {} rounds", rounds.len());
            lab.heal();
            let healed = Instant::now();
            let back = converge(&cluster.named(), fleet.watches(), &fleet.expected(), Duration::from_secs(10)).await?;

            rounds.rows(report, round_bound);
            report.row("packets lost on the routes", "> 0", counters.lost.to_string(), counters.lost > 0);
            report.row(
                "packets delivered out of order on the routes",
                "> 0",
                counters.out_of_order.to_string(),
                counters.out_of_order > 0,
            );
            peer_rows(report, &tally);
            if no_dead {
                report.row(
                    "peers taken for dead (orphaned)",
                    "none",
                    pairs(&tally.orphaned),
                    tally.orphaned.is_empty(),
                );
            } else {
                report.row("peers taken for dead (orphaned)", "(informational)", pairs(&tally.orphaned), true);
            }
            report.within("converged after the heal", Duration::from_secs(2), back.max(healed.elapsed()));
            fleet.check_flaps(report).await;
            fleet.shutdown().await;
            Ok(())
        })
        .await
}

/// Netem 1: every route between the three NATS servers loses 5% of packets,
/// holds back 10% by 15 ms (so later ones overtake them) and delays them
/// 20 ± 10 ms, each way, for 10 s of register/deregister rounds.
///
/// Round bound (90th percentile), 2.3 s: [`SLOW_ROUTE_ROUND`] plus a segment
/// lost twice in a row (two timeouts, `3 · RTO` with `RTO ≈ RTO_MIN + RTT`
/// and an RTT of at most 2 · 30 ms + 15 ms: 0.83 s). A round moves some tens
/// of segments over the routes; one lost three times (5%³ each) is a chance
/// of about 1 in 1000 per round.
///
/// No node may take a peer for dead: that needs 1.5 s without a beat, so a
/// beat delayed 1.3 s beyond its 200 ms cadence, which takes the same segment
/// lost three times in a row (timeouts of 0.27 + 0.55 + 1.1 s). A route
/// carries its node's five beats a second, so the six directions carry about
/// 300 beat segments in the 10 s: at 5%³ each, about 4% of runs would see
/// one, if every loss had to wait for the timeout. It does not: the next beat,
/// 200 ms later, makes the receiver SACK past the hole, and the sender's
/// RACK loss detection retransmits within a round trip of that, so a segment
/// lost three times costs about 3 × (200 + 75) ms = 0.8 s, far below 1.3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_reordering_routes_between_nats_servers() -> Result<()> {
    let impairment = Impairment::loss(0.05)
        .delay(Duration::from_millis(20), Duration::from_millis(10))
        .reorder(0.10, Duration::from_millis(15));
    let bound = SLOW_ROUTE_ROUND + (RTO_MIN + Duration::from_millis(75)) * 3;
    lossy_routes("NATS routes: 5% loss, 10% reorder, 20±10 ms (netem)", "n1", impairment, bound, true).await
}

/// Netem 1, full matrix: 15% loss, 25% reordered, 40 ± 20 ms each way. Peers
/// may be taken for dead here (three losses in a row are 27 times likelier);
/// what must hold is convergence and no flap (removal needs 4.5 s of silence:
/// five losses in a row). Round bound (90th percentile): [`SLOW_ROUTE_ROUND`]
/// plus a segment lost three times (`7 · RTO`, RTO ≈ 0.2 s + 0.14 s round
/// trip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full matrix: run with --include-ignored (FAULTS=full)"]
async fn heavy_loss_on_routes_between_nats_servers() -> Result<()> {
    let impairment = Impairment::loss(0.15)
        .delay(Duration::from_millis(40), Duration::from_millis(20))
        .reorder(0.25, Duration::from_millis(25));
    let bound = SLOW_ROUTE_ROUND + (RTO_MIN + Duration::from_millis(145)) * 7;
    lossy_routes("NATS routes: 15% loss, 25% reorder, 40±20 ms (netem)", "n3", impairment, bound, false).await
}

/// Netem 2: node a's own link to its NATS server loses 10% of packets each
/// way for 10 s of rounds (registrations spread over all nodes, a's
/// included). a's peers may see it suspect, even dead for a moment (a segment
/// lost three times: 1% of a's losses), but nothing may flap: removal needs
/// a's beats silent for 1.5 s + 3 s, five losses in a row of one segment.
///
/// Round bound (90th percentile), 2.9 s: [`SLOW_ROUTE_ROUND`] plus a segment
/// lost three times in a row on a link with a round trip under 1 ms
/// (`7 · RTO_MIN` = 1.4 s). The slowest round is not bound by it: a's link
/// carries about a thousand segments a run, and four losses in a row are
/// 1 in 10,000 per segment, so about one run in ten has a round that waits
/// 3 s for TCP (one CI run measured 4.62 s).
///
/// After the heal, 2.5 s for every view and every peer live: a segment
/// lost three times waits up to `8 · RTO_MIN` = 1.6 s for its next try (a
/// fourth backoff), then a beat interval and the checker's polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_link_between_a_node_and_its_nats_server() -> Result<()> {
    Report::new("node a's NATS link: 10% loss each way (netem)")
        .run(async |report| {
            let cluster = LabCluster::start("n2", &["a", "b", "c"], FAULT_CONFIG).await?;
            let endpoints = cluster.endpoints();
            let mut fleet = Fleet::default();
            fleet.register(&endpoints, "api", &ids("base", 6)).await?;
            fleet.watch(&endpoints, "api").await?;
            converge(&cluster.named(), fleet.watches(), &fleet.expected(), Duration::from_secs(10)).await?;

            let lab = &cluster.lab;
            let peers = PeerStates::watch(cluster.named(), Duration::from_millis(100));
            let a_link = [(Host::Root, Host::Ns(0)), (Host::Ns(0), Host::Root)];
            lab.impair(Host::Root, Host::Ns(0), Impairment::loss(0.10));
            let impaired = Instant::now();
            let round_bound = SLOW_ROUTE_ROUND + RTO_MIN * 7;
            let mut rounds = Rounds::default();
            while impaired.elapsed() < IMPAIRED_FOR {
                let took = round(&cluster, &endpoints, &mut fleet, rounds.len()).await?;
                rounds.record(took);
            }
            let tally = peers.tally();
            let counters = lab.counters_over(&a_link);
            println!("node a's link: {counters}; {} rounds", rounds.len());
            let on_a = fleet.on_node("a");

            lab.heal();
            let healed = Instant::now();
            peers.reset();
            let back = converge(&cluster.named(), fleet.watches(), &fleet.expected(), Duration::from_secs(10)).await?;
            let live =
                registry_tests::eventually("every peer live after the heal", Duration::from_secs(10), || async {
                    peers.all_live().then(|| healed.elapsed())
                })
                .await?;

            rounds.rows(report, round_bound);
            report.row("providers with their session on a", "> 0", on_a.to_string(), on_a > 0);
            report.row("packets lost on a's link", "> 0", counters.lost.to_string(), counters.lost > 0);
            peer_rows(report, &tally);
            report.row(
                "peers taken for dead (orphaned), for a moment",
                "(informational)",
                pairs(&tally.orphaned),
                true,
            );
            let after_heal = RTO_MIN * 8 + Duration::from_millis(900);
            report.within("converged after the heal", after_heal, back.max(healed.elapsed()));
            report.within("every peer live after the heal", after_heal, live);
            fleet.check_flaps(report).await;
            fleet.shutdown().await;
            Ok(())
        })
        .await
}

/// The router itself, against a real TCP connection: through a link that
/// loses 20% and reorders 20% of packets each way, 2,000 NATS messages still
/// arrive, all and in order (TCP repairs what the router did, and the
/// counters show it did it); through a link that loses everything, nothing
/// arrives; healed, the connection works again.
///
/// The loss spares retries (a segment or acknowledgement is lost at most
/// once). With plain random loss at 20% each way, a retry fails with
/// probability 1 − 0.8² = 0.36, and seven failed tries of one segment in a
/// row, `RTO · 127` = 25 s late, come up a few times in a hundred runs among
/// the hundreds of retries a run makes: this test then failed with "message
/// N never arrived" after its 20 s wait, beside the other scenarios or not.
/// That is TCP's tail, not the router's behaviour; sparing retries bounds
/// every stall at about three retransmission timeouts (the longest wait
/// between two messages is reported), so the 20 s waits below only catch a
/// router that lost a packet for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_loses_and_reorders_real_tcp_packets() -> Result<()> {
    const MESSAGES: usize = 2_000;
    Report::new("impairment router under one TCP connection")
        .run(async |report| {
            let lab = Lab::start(1).await?;
            let host = std::net::IpAddr::V4(lab.addr(Host::Ns(0)));
            let server = NatsServer::start_at(lab.netns(0), host, Vec::new(), 4222, 8222).await?;
            // Every connection event, to tell a lost message from a dropped
            // connection (core NATS loses what was sent while disconnected).
            let events = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
            let seen = events.clone();
            let client = async_nats::ConnectOptions::new()
                .event_callback(move |e| {
                    let seen = seen.clone();
                    async move { seen.lock().push(format!("{} {e}", time_of_day(std::time::SystemTime::now()))) }
                })
                .connect(server.url())
                .await?;
            let explain = |what: String| {
                anyhow::anyhow!(
                    "{what}\nclient connection events: {:?}\nnats-server log (last 20 lines):\n{}",
                    events.lock(),
                    server.log_tail(20)
                )
            };
            let mut sub = client.subscribe("netem.check").await?;
            client.flush().await?;

            lab.impair(
                Host::Root,
                Host::Ns(0),
                Impairment::loss(0.2)
                    .reorder(0.2, Duration::from_millis(5))
                    .delay(Duration::from_millis(2), Duration::ZERO)
                    .sparing_retries(),
            );
            let start = Instant::now();
            let sender = {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in 0..MESSAGES {
                        // About 1 KiB each: one TCP segment per message or so.
                        client.publish("netem.check", format!("{i:>1000}").into()).await?;
                        if i % 50 == 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    client.flush().await?;
                    anyhow::Ok(())
                })
            };
            let mut in_order = 0;
            // The longest wait between two messages: TCP's stalls.
            let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
            while in_order < MESSAGES {
                let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(20), futures_next(&mut sub)).await else {
                    let counters = lab.counters_over(&[(Host::Root, Host::Ns(0)), (Host::Ns(0), Host::Root)]);
                    return Err(explain(format!("message {in_order} never arrived (router: {counters})")));
                };
                if std::str::from_utf8(&msg.payload)?.trim_start() != in_order.to_string() {
                    bail!("message {in_order} arrived as {:?}", msg.payload);
                }
                longest = longest.max(last.elapsed());
                last = Instant::now();
                in_order += 1;
            }
            sender.await??;
            let took = start.elapsed();
            let counters = lab.counters_over(&[(Host::Root, Host::Ns(0)), (Host::Ns(0), Host::Root)]);
            println!("one TCP connection: {counters}; longest wait between two messages {longest:?}");
            report.row("messages arrived, in order", MESSAGES.to_string(), in_order.to_string(), in_order == MESSAGES);
            report.row(
                "longest wait between two messages (about 3 RTO at most)",
                "(informational)",
                format!("{:.2} s", longest.as_secs_f64()),
                true,
            );
            report.row("packets lost", "> 0", counters.lost.to_string(), counters.lost > 0);
            report.row(
                "packets delivered out of order",
                "> 0",
                counters.out_of_order.to_string(),
                counters.out_of_order > 0,
            );
            report.row("packets the router could not place", "(informational)", lab.undeliverable().to_string(), true);
            report.within("time for all messages", Duration::from_secs(20), took);

            lab.impair(Host::Root, Host::Ns(0), Impairment::loss(1.0));
            client.publish("netem.check", "cut".into()).await?;
            client.flush().await?;
            let cut = tokio::time::timeout(Duration::from_secs(1), futures_next(&mut sub)).await;
            report.row(
                "a message through a link losing everything",
                "never arrives",
                if cut.is_ok() { "arrived" } else { "none in 1 s" },
                cut.is_err(),
            );
            lab.heal();
            let healed = Instant::now();
            let back = tokio::time::timeout(Duration::from_secs(10), futures_next(&mut sub)).await;
            // One second of total loss backs the retransmission timer off to at most
            // 1.6 s; the message arrives at its next try.
            report.within(
                "the message arrives after the heal",
                RTO_MIN * 8 + Duration::from_millis(400),
                healed.elapsed(),
            );
            let arrived = matches!(&back, Ok(Some(m)) if m.payload.as_ref() == b"cut");
            report.row("the message after the heal", "arrives", if arrived { "arrived" } else { "lost" }, arrived);
            drop(server);
            Ok(())
        })
        .await
}
