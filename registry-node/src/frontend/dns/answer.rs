//! The DNS front-end's core, with no I/O: a request's bytes in, the
//! answer's bytes out (or nothing), read from a [`Directory`] of compiled
//! records. Sockets, timeouts and counting of connections live in the
//! module around it; everything a client can send and every answer it can
//! get is decided here, which is what the unit tests below exercise.
//!
//! Names under the domain (`registry.internal.` by default), matched
//! without regard to case (RFC 4343):
//!
//! - `<service>.<namespace>.<domain>`: A/AAAA of the UP instances whose
//!   host is an IP literal, SRV of every UP instance.
//! - `_<service>._tcp.<namespace>.<domain>`: the RFC 2782 form (SRV).
//! - `<zone>.<service>.<namespace>.<domain>`: one zone's instances.
//! - `<hex address>.addr.<domain>`: the SRV target of an instance whose host
//!   is an IP literal (SRV targets must be names), answering its A or AAAA.
//!
//! The namespace is the label just before the domain, so a namespace with a
//! dot in its name cannot be reached; a service name may contain dots. When
//! a name reads both as a dotted service and as a zone of a shorter one
//! (`a.b.<ns>`), the dotted service wins if it has instances.
//!
//! Speed: a service's records are compiled once per change of its view
//! ([`Responder::compile`]; only the changed instances' records are
//! encoded again, by hickory), each answer record with its owner
//! name compressed to a pointer at the question (which every response
//! carries at the same offset, 12). A query then costs a parse, a lookup
//! and a copy of the records it gets, rotated; sizes are known before
//! anything is written, so an answer cut to fit is cut once.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use registry_proto::v1;
use registry_store::EncodedInstance;

/// The largest UDP answer sent, whatever size a requester offers: bigger
/// datagrams fragment, and fragments get lost or spoofed.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// The largest DNS message over TCP (its length prefix is 16 bits).
pub const MAX_TCP_MESSAGE: usize = u16::MAX as usize;

/// Orders a service's records: fixed, so every node lists them alike.
const RANK: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5eed);

/// Where every response carries its question's name: right after the
/// 12-byte header. Compiled answer records point their owner name here.
const QUESTION_OFFSET: usize = 12;

/// What answers read: the node's views, or a table in tests.
pub trait Directory {
    /// Whether the node has loaded the registry (a warming-up clustered node
    /// answers SERVFAIL rather than a partial list).
    fn ready(&self) -> bool;
    /// The records of a service, compiled by `responder`, or `None` if the
    /// name is unknown. `namespace` and `service` come lowercase; a name
    /// matches every service whose name differs from it only in case.
    fn records(&self, namespace: &str, service: &str, responder: &Responder) -> Option<Arc<Records>>;
    /// The SOA serial: anything that grows when the registry changes.
    fn serial(&self) -> u32;
}

/// How the request came, which bounds the answer's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What happened to one request, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The response code sent, if anything was sent.
    pub rcode: Option<ResponseCode>,
    /// The request was not a well-formed query.
    pub bad: bool,
    /// The answer was cut to fit (TC set).
    pub truncated: bool,
}

/// Why settings cannot make a zone.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("{0:?} is not a domain name: {1}")]
    Domain(String, ProtoError),
}

/// The zone this node is authoritative for, and how it answers.
#[derive(Debug)]
pub struct Responder {
    domain: Name,
    /// SOA names, made once.
    mname: Name,
    rname: Name,
    addr: Name,
    /// The owner name compiled answer records are encoded under (then
    /// pointed at the question of each response).
    placeholder: Name,
    /// Our OPT record, encoded once.
    opt: Vec<u8>,
    ttl: u32,
    /// Namespaces served, lowercase; empty serves all.
    namespaces: Vec<String>,
    /// Turns per query, so answers rotate.
    turn: AtomicU64,
}

/// A name of the zone, read.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The domain itself.
    Apex,
    /// Candidates for a service's instances, tried in order: a name may
    /// read as a dotted service or as a zone of a shorter one.
    Service(Vec<ServiceName>),
    /// An address label under `addr.`.
    Address(IpAddr),
    /// Nothing we could ever answer.
    Nothing,
}

/// A service name read from a query, lowercase.
#[derive(Debug, PartialEq, Eq)]
struct ServiceName {
    namespace: String,
    service: String,
    zone: Option<String>,
    /// The RFC 2782 form: SRV only.
    srv_only: bool,
}

/// Encoded records, each whole and independent of where it lands in a
/// response: `bytes` holds them back to back, record `i` ending at
/// `ends[i]`.
#[derive(Debug, Default)]
struct Chunks {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Chunks {
    /// Appends a record; returns its index.
    fn push(&mut self, record: &[u8]) -> u32 {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len() as u32);
        self.ends.len() as u32 - 1
    }

    /// Record `i`, if there is one.
    fn get(&self, i: u32) -> Option<&[u8]> {
        let end = *self.ends.get(i as usize)? as usize;
        self.bytes.get(self.start(i as usize)..end)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Room for as many records as `other` has, and one more.
    fn reserve_as(&mut self, other: &Chunks) {
        let last = other.ends.len().checked_sub(1).map_or(0, |i| (other.ends[i] - other.start(i) as u32) as usize);
        self.bytes.reserve(other.bytes.len() + last);
        self.ends.reserve(other.ends.len() + 1);
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] as usize }
    }

    /// Appends whole records to `out`, starting at record `turn` (mod the
    /// count) and wrapping, while they fit in `room` bytes. Returns how many
    /// records and bytes it wrote.
    fn write_rotated(&self, turn: usize, room: usize, out: &mut Vec<u8>) -> (usize, usize) {
        let n = self.len();
        if n == 0 {
            return (0, 0);
        }
        let first = turn % n;
        let split = self.start(first);
        if self.bytes.len() <= room {
            out.extend_from_slice(&self.bytes[split..]);
            out.extend_from_slice(&self.bytes[..split]);
            return (n, self.bytes.len());
        }
        let mut used = 0;
        for k in 0..n {
            let i = (first + k) % n;
            let record = &self.bytes[self.start(i)..self.ends[i] as usize];
            if used + record.len() > room {
                return (k, used);
            }
            out.extend_from_slice(record);
            used += record.len();
        }
        (n, used)
    }
}

/// The records of one service (or of one of its zones), ready to copy.
#[derive(Debug, Default)]
struct RecordSet {
    /// Whether the name exists: it has instances, of any status.
    exists: bool,
    /// Answers, owner pointing at the question.
    a: Chunks,
    aaaa: Chunks,
    srv: Chunks,
    /// A/AAAA of the SRV targets we named, for the additional section.
    targets: Chunks,
}

/// A service's records, compiled once per change of its view: the whole
/// service, and each zone.
#[derive(Debug, Default)]
pub struct Records {
    all: RecordSet,
    /// Zones, lowercase.
    zones: Vec<(Arc<str>, RecordSet)>,
    /// Where each stored instance's records sit in `all`: the next compile
    /// copies those of the instances still stored and encodes the rest.
    /// Kept for services of `KEEP_PLACES_FROM` instances or more.
    placed: Placed,
}

/// Each instance compiled, in the order the views gave them, with where
/// its records sit.
type Placed = Vec<(Stored, Place)>;

/// A stored instance, told by identity: the views keep an instance's
/// stored bytes until it changes, and a change stores new ones. Comparing
/// addresses rather than bytes is what makes a compile after a change
/// cheap. An instance stored again with the same bytes is encoded again:
/// the same records.
#[derive(Debug)]
struct Stored(EncodedInstance);

impl Stored {
    /// The address of its bytes: no other instance has it while this one
    /// holds them (and none is empty: every one has a name).
    fn address(&self) -> usize {
        address(&self.0)
    }
}

fn address(stored: &EncodedInstance) -> usize {
    stored.bytes().as_ptr() as usize
}

/// How far ahead of where the last one was found an instance is looked
/// for among the last records' (an instance changed, added or removed
/// shifts the others by one).
const LOOK_AHEAD: usize = 8;

/// The fewest instances whose places a service's records keep: a smaller
/// service is compiled from nothing at every change (64 instances: about
/// 130 µs), and its records keep no placements.
const KEEP_PLACES_FROM: usize = 64;

/// Not a record: an index in no `Chunks`.
const NONE: u32 = u32::MAX;

/// Where one instance's records sit in its service's `all` set: a few
/// bytes per instance, not a second copy of its records.
#[derive(Clone, Copy, Debug)]
struct Place {
    /// Its place in the order: a fixed hash of host and port, the same on
    /// every node of a build, cheaper to sort by than the host's text (ties
    /// go by the stored bytes).
    rank: u64,
    /// Its zone in `zones`, or `NONE`.
    zone: u32,
    /// Its A answer (AAAA if `v6`), SRV answer and SRV target's address;
    /// `NONE` where it has none (all three if it is not UP).
    address: u32,
    v6: bool,
    srv: u32,
    target: u32,
}

/// One instance's records, wherever they are kept.
struct Parts<'a> {
    /// Whether AAAA, and the record.
    address: Option<(bool, &'a [u8])>,
    srv: &'a [u8],
    target: Option<&'a [u8]>,
}

/// A zone's name: shared with the last records (compared by address
/// first), or read from an instance.
enum Zone<'a> {
    Shared(&'a Arc<str>),
    Text(&'a str),
}

impl Records {
    /// Where each of `instances` sits in these records, if it is one of
    /// theirs. The views give a service's instances in the same order from
    /// one read to the next, but for the changed ones: each is looked for
    /// a little after the last one found, in turn. When more than a few
    /// are not found that way (a view that grew and rehashed, many removed
    /// at once), those are looked up by address.
    fn find(&self, instances: &[EncodedInstance]) -> Vec<Option<Place>> {
        let before = &self.placed;
        let mut next = 0;
        let mut missed = 0;
        let mut found: Vec<Option<Place>> = instances
            .iter()
            .map(|instance| {
                let end = before.len().min(next + LOOK_AHEAD);
                let at = (next..end).find(|&at| before[at].0.address() == address(instance));
                if let Some(at) = at {
                    next = at + 1;
                } else {
                    missed += 1;
                }
                at.map(|at| before[at].1)
            })
            .collect();
        if missed > LOOK_AHEAD && !before.is_empty() {
            let by_address: HashMap<usize, Place, foldhash::fast::RandomState> =
                before.iter().map(|(stored, place)| (stored.address(), *place)).collect();
            for (instance, place) in instances.iter().zip(&mut found) {
                if place.is_none() {
                    *place = by_address.get(&address(instance)).copied();
                }
            }
        }
        found
    }

    /// Where `zone`'s set is, added if new (with room for as many records
    /// as it had in `previous`).
    fn zone(&mut self, zone: Zone<'_>, previous: Option<&Records>) -> usize {
        let found = self.zones.iter().position(|(z, _)| match zone {
            Zone::Shared(shared) => Arc::ptr_eq(z, shared) || z == shared,
            Zone::Text(text) => **z == *text,
        });
        if let Some(at) = found {
            return at;
        }
        let name = match zone {
            Zone::Shared(shared) => shared.clone(),
            Zone::Text(text) => text.into(),
        };
        let mut set = RecordSet::default();
        if let Some(last) = previous.and_then(|p| p.set(Some(&name))) {
            set.reserve_as(last);
        }
        self.zones.push((name, set));
        self.zones.len() - 1
    }

    fn set(&self, zone: Option<&str>) -> Option<&RecordSet> {
        match zone {
            None => Some(&self.all),
            Some(zone) => self.zones.iter().find(|(z, _)| &**z == zone).map(|(_, set)| set),
        }
    }
}

/// Records made for one query (the apex, an address, negative answers):
/// the rare paths, encoded whole by hickory.
struct Made {
    answers: Vec<Record>,
    authority: Option<Record>,
    code: ResponseCode,
}

impl Responder {
    /// `domain` is made fully qualified; `ttl` applies to every record.
    pub fn new(domain: &str, ttl: u32, namespaces: Vec<String>) -> Result<Self, ZoneError> {
        let bad = |e| ZoneError::Domain(domain.to_string(), e);
        let mut name = Name::from_ascii(domain).map_err(bad)?.to_lowercase();
        name.set_fqdn(true);
        let label = |l: &str| Name::from_ascii(l).and_then(|n| n.append_domain(&name)).map_err(bad);
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        let mut opt = Vec::new();
        Record::from(&edns).emit(&mut BinEncoder::new(&mut opt)).map_err(bad)?;
        Ok(Self {
            mname: label("ns")?,
            rname: label("hostmaster")?,
            addr: label("addr")?,
            placeholder: Name::from_ascii("q.").map_err(bad)?,
            opt,
            domain: name,
            ttl,
            namespaces: namespaces.iter().map(|n| n.to_ascii_lowercase()).collect(),
            turn: AtomicU64::new(0),
        })
    }

    /// The answer to `request`, or `None` when nothing should be sent (not
    /// even a header to answer, or a response sent to us).
    pub fn respond(&self, request: &[u8], transport: Transport, dir: &impl Directory) -> (Option<Vec<u8>>, Outcome) {
        let mut outcome = Outcome { rcode: None, bad: false, truncated: false };
        let message = match Message::from_vec(request) {
            Ok(m) => m,
            Err(_) => {
                outcome.bad = true;
                // Answer FORMERR only to what reads as a query header; less
                // than a header, or a response, gets nothing (no reflection).
                let header = Header::read(&mut BinDecoder::new(request)).ok();
                let Some(h) = header.filter(|h| h.metadata.message_type == MessageType::Query) else {
                    return (None, outcome);
                };
                return self.error(h.metadata.id, h.metadata.op_code, ResponseCode::FormErr, outcome);
            }
        };
        let meta = message.metadata;
        if meta.message_type != MessageType::Query {
            outcome.bad = true;
            return (None, outcome);
        }
        if meta.op_code != OpCode::Query {
            outcome.bad = true;
            return self.error(meta.id, meta.op_code, ResponseCode::NotImp, outcome);
        }
        let [query] = message.queries.as_slice() else {
            outcome.bad = true;
            return self.error(meta.id, meta.op_code, ResponseCode::FormErr, outcome);
        };

        let limit = match transport {
            Transport::Udp => usize::from(message.max_payload().min(MAX_UDP_PAYLOAD)),
            Transport::Tcp => MAX_TCP_MESSAGE,
        };
        let Some(mut response) = Response::start(meta, query, message.edns.is_some().then_some(&self.opt[..])) else {
            // A question read from the request encodes again; if not, say so.
            return self.error(meta.id, meta.op_code, ResponseCode::ServFail, outcome);
        };
        let qname = query.name();
        let in_zone =
            (query.query_class() == DNSClass::IN || query.query_class() == DNSClass::ANY) && self.domain.zone_of(qname);
        // Not ours to answer, or not yet: an empty, non-authoritative answer.
        let refusal = if !in_zone {
            Some(ResponseCode::Refused)
        } else if !dir.ready() {
            Some(ResponseCode::ServFail)
        } else {
            None
        };
        if let Some(code) = refusal {
            response.authoritative = false;
            return self.made(response, Made { answers: Vec::new(), authority: None, code }, limit, outcome);
        }
        let qtype = query.query_type();
        let answers = match self.read_name(qname) {
            Target::Apex if matches!(qtype, RecordType::SOA | RecordType::ANY) => vec![self.soa(dir)],
            Target::Apex => Vec::new(),
            Target::Address(ip) => match (ip, qtype) {
                (IpAddr::V4(_), RecordType::A | RecordType::ANY)
                | (IpAddr::V6(_), RecordType::AAAA | RecordType::ANY) => vec![self.address_record(qname.clone(), ip)],
                _ => Vec::new(),
            },
            Target::Nothing => return self.negative(response, ResponseCode::NXDomain, dir, limit, outcome),
            Target::Service(candidates) => {
                let found = candidates.iter().find_map(|c| {
                    let records = dir.records(&c.namespace, &c.service, self)?;
                    records.set(c.zone.as_deref()).is_some_and(|s| s.exists).then_some((c, records))
                });
                let Some((name, records)) = found else {
                    return self.negative(response, ResponseCode::NXDomain, dir, limit, outcome);
                };
                let Some(set) = records.set(name.zone.as_deref()) else {
                    return self.negative(response, ResponseCode::NXDomain, dir, limit, outcome);
                };
                let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;
                let mut lists: Vec<&Chunks> = Vec::with_capacity(3);
                if !name.srv_only {
                    if want(RecordType::A) {
                        lists.push(&set.a);
                    }
                    if want(RecordType::AAAA) {
                        lists.push(&set.aaaa);
                    }
                }
                let srv = want(RecordType::SRV);
                if srv {
                    lists.push(&set.srv);
                }
                lists.retain(|c| c.len() > 0);
                if lists.is_empty() {
                    return self.negative(response, ResponseCode::NoError, dir, limit, outcome);
                }
                let additional = if srv { Some(&set.targets) } else { None };
                let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
                return self.compiled(response, &lists, additional, turn, limit, outcome);
            }
        };
        if answers.is_empty() {
            return self.negative(response, ResponseCode::NoError, dir, limit, outcome);
        }
        self.made(response, Made { answers, authority: None, code: ResponseCode::NoError }, limit, outcome)
    }

    fn error(&self, id: u16, op: OpCode, code: ResponseCode, mut outcome: Outcome) -> (Option<Vec<u8>>, Outcome) {
        outcome.rcode = Some(code);
        (Message::error_msg(id, op, code).to_vec().ok(), outcome)
    }

    /// NXDOMAIN or NODATA (NOERROR, no answer), with the SOA for negative
    /// caching (RFC 2308).
    fn negative(
        &self,
        response: Response<'_>,
        code: ResponseCode,
        dir: &impl Directory,
        limit: usize,
        outcome: Outcome,
    ) -> (Option<Vec<u8>>, Outcome) {
        self.made(response, Made { answers: Vec::new(), authority: Some(self.soa(dir)), code }, limit, outcome)
    }

    /// A response of records made for this query. They are few and small
    /// (one SOA or one address); if even they do not fit, the answer goes
    /// out empty with TC.
    fn made(
        &self,
        mut response: Response<'_>,
        made: Made,
        limit: usize,
        mut outcome: Outcome,
    ) -> (Option<Vec<u8>>, Outcome) {
        response.code = made.code;
        outcome.rcode = Some(made.code);
        let mark = response.out.len();
        let encoded = (|| {
            // The question's names are compression targets for these.
            let mut encoder = BinEncoder::with_offset(&mut response.out, mark as u32);
            let answers = encoder.emit_all(made.answers.iter())?;
            let authorities = encoder.emit_all(made.authority.iter())?;
            Ok::<_, ProtoError>((answers, authorities))
        })();
        match encoded {
            Ok((answers, authorities)) if response.out.len() + response.opt.len() <= limit => {
                response.counts.answers = answers as u16;
                response.counts.authorities = authorities as u16;
            }
            Ok(_) => {
                response.out.truncate(mark);
                response.truncated = true;
                outcome.truncated = true;
            }
            // Only names we made could fail to encode; say so rather than
            // send nothing and make the client wait.
            Err(_) => return self.error(response.id, OpCode::Query, ResponseCode::ServFail, outcome),
        }
        self.finish(response, outcome)
    }

    /// A response of compiled records: all of them if they fit in `limit`,
    /// else without the additional section, else with as many whole answers
    /// as fit and TC set (RFC 2181 §9: TC only when the answer itself is
    /// incomplete). Each list starts at record `turn`.
    fn compiled(
        &self,
        mut response: Response<'_>,
        lists: &[&Chunks],
        additional: Option<&Chunks>,
        turn: usize,
        limit: usize,
        mut outcome: Outcome,
    ) -> (Option<Vec<u8>>, Outcome) {
        response.code = ResponseCode::NoError;
        outcome.rcode = Some(ResponseCode::NoError);
        let base = response.out.len() + response.opt.len();
        let answers: usize = lists.iter().map(|c| c.bytes.len()).sum();
        let extra = additional.map_or(0, |c| c.bytes.len());
        let mut room = limit.saturating_sub(base);
        let with_additional = answers + extra <= room;
        response.out.reserve(answers.min(room) + if with_additional { extra } else { 0 } + response.opt.len());
        let mut count = 0;
        for list in lists {
            let (n, used) = list.write_rotated(turn, room, &mut response.out);
            count += n;
            room -= used;
            if n < list.len() {
                response.truncated = true;
                outcome.truncated = true;
                break;
            }
        }
        response.counts.answers = count as u16;
        if let Some(targets) = additional.filter(|_| with_additional) {
            let (n, _) = targets.write_rotated(turn, usize::MAX, &mut response.out);
            response.counts.additionals = n as u16;
        }
        self.finish(response, outcome)
    }

    /// Writes the header (and our OPT if the request had one) around the
    /// records written.
    fn finish(&self, mut response: Response<'_>, outcome: Outcome) -> (Option<Vec<u8>>, Outcome) {
        let mut metadata = Metadata::new(response.id, MessageType::Response, OpCode::Query);
        metadata.authoritative = response.authoritative;
        metadata.truncation = response.truncated;
        metadata.recursion_desired = response.recursion_desired;
        metadata.response_code = response.code;
        if !response.opt.is_empty() {
            response.out.extend_from_slice(response.opt);
            response.counts.additionals += 1;
        }
        let header = Header { metadata, counts: response.counts };
        let mut head = Vec::with_capacity(QUESTION_OFFSET);
        match header.emit(&mut BinEncoder::new(&mut head)) {
            Ok(()) if head.len() == QUESTION_OFFSET => {
                response.out[..QUESTION_OFFSET].copy_from_slice(&head);
                (Some(response.out), outcome)
            }
            _ => self.error(response.id, OpCode::Query, ResponseCode::ServFail, outcome),
        }
    }

    /// Reads a name of the zone (the caller checked it is one), lowercase.
    fn read_name(&self, qname: &Name) -> Target {
        let labels: Vec<&[u8]> = qname.iter().collect();
        let Some(ours) = labels.len().checked_sub(usize::from(self.domain.num_labels())) else {
            return Target::Nothing;
        };
        let labels = &labels[..ours];
        let Some((namespace, rest)) = labels.split_last() else {
            return Target::Apex;
        };
        let text = |l: &[u8]| std::str::from_utf8(l).ok().map(str::to_ascii_lowercase);
        let (Some(namespace), Some(rest)) = (text(namespace), rest.iter().map(|l| text(l)).collect::<Option<Vec<_>>>())
        else {
            return Target::Nothing;
        };
        if namespace == "addr" {
            return match rest.as_slice() {
                [hex] => parse_address(hex).map_or(Target::Nothing, Target::Address),
                _ => Target::Nothing,
            };
        }
        if rest.is_empty() || (!self.namespaces.is_empty() && !self.namespaces.contains(&namespace)) {
            return Target::Nothing;
        }
        // _<service>._tcp: everything before `_tcp`, less the underscore.
        if let [first, .., last] = rest.as_slice()
            && last == "_tcp"
            && let Some(head) = first.strip_prefix('_')
        {
            let mut service = head.to_string();
            for l in &rest[1..rest.len() - 1] {
                service.push('.');
                service.push_str(l);
            }
            return Target::Service(vec![ServiceName { namespace, service, zone: None, srv_only: true }]);
        }
        let mut candidates =
            vec![ServiceName { namespace: namespace.clone(), service: rest.join("."), zone: None, srv_only: false }];
        if let [zone, service @ ..] = rest.as_slice()
            && !service.is_empty()
        {
            candidates.push(ServiceName {
                namespace,
                service: service.join("."),
                zone: Some(zone.clone()),
                srv_only: false,
            });
        }
        Target::Service(candidates)
    }

    /// Compiles the records of a service's instances (any status; only UP
    /// ones give records): for the whole service and for each zone. The
    /// records of an instance still stored as it was when `previous` was
    /// compiled are copied from there, not decoded and encoded again: a
    /// change to a service of 10,000 instances costs the next query a copy
    /// of the records (under 1 ms), where encoding them all took 25-28 ms.
    pub fn compile(&self, instances: Vec<EncodedInstance>, previous: Option<&Records>) -> Records {
        /// Where an instance's records come from.
        enum Source {
            /// `previous`, where they sit.
            Kept(Place),
            /// Encoded now (`None`: not UP, or not for DNS); zone lowercase.
            New(Box<(Option<String>, Option<InstanceRecords>)>),
        }
        let found = previous.map(|p| p.find(&instances)).unwrap_or_default();
        let mut stored = Vec::with_capacity(instances.len());
        let mut sources = Vec::with_capacity(instances.len());
        for (k, instance) in instances.into_iter().enumerate() {
            let (rank, source) = match found.get(k).copied().flatten() {
                Some(place) => (place.rank, Source::Kept(place)),
                // Stored instances were validated; one that does not decode
                // cannot exist, and would be skipped rather than fail the name.
                None => match instance.decode() {
                    Ok(i) => {
                        let zone = (!i.zone.is_empty()).then(|| i.zone.to_ascii_lowercase());
                        let up = i.status().effective() == v1::Status::Up;
                        let records = up.then(|| self.encode_instance(&i)).flatten();
                        (RANK.hash_one((&i.host, i.port)), Source::New(Box::new((zone, records))))
                    }
                    Err(_) => continue,
                },
            };
            stored.push(Stored(instance));
            sources.push((rank, source));
        }
        // A stable order before the rotation, whatever order the views keep:
        // by rank, sorted as numbers side by side (ties, if ever, by bytes).
        let mut order: Vec<(u64, usize)> = sources.iter().enumerate().map(|(k, (rank, _))| (*rank, k)).collect();
        order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| stored[a.1].0.bytes().cmp(stored[b.1].0.bytes())));
        // The zones of `previous` by index, as found or added in these.
        let mut zones_then: Vec<Option<usize>> = vec![None; previous.map_or(0, |p| p.zones.len())];

        let mut records = Records::default();
        let last = previous.map(|p| &p.all);
        if let Some(last) = last {
            // Room for as many records as last time: a change moves few.
            records.all.reserve_as(last);
        }
        let unplaced = Place { rank: 0, zone: NONE, address: NONE, v6: false, srv: NONE, target: NONE };
        let mut places = vec![unplaced; sources.len()];
        for (rank, k) in order {
            records.all.exists = true;
            let (zone, parts) = match &sources[k].1 {
                Source::Kept(place) => {
                    let then = place.zone as usize;
                    let zone = match (zones_then.get(then).copied().flatten(), previous.and_then(|p| p.zones.get(then)))
                    {
                        (Some(at), _) => Some(at),
                        (None, Some((name, _))) => {
                            let at = records.zone(Zone::Shared(name), previous);
                            zones_then[then] = Some(at);
                            Some(at)
                        }
                        (None, None) => None,
                    };
                    (zone, last.and_then(|all| all.parts(place)))
                }
                Source::New(new) => {
                    let (zone, encoded) = &**new;
                    let zone = zone.as_deref().map(|z| records.zone(Zone::Text(z), previous));
                    (zone, encoded.as_ref().map(InstanceRecords::parts))
                }
            };
            if let Some(at) = zone {
                records.zones[at].1.exists = true;
            }
            let place = &mut places[k];
            *place = Place { rank, zone: zone.map_or(NONE, |at| at as u32), ..unplaced };
            if let Some(parts) = parts {
                records.all.add(&parts, place);
                if let Some(at) = zone {
                    // Where they sit in a zone's set is not kept.
                    let mut in_zone = *place;
                    records.zones[at].1.add(&parts, &mut in_zone);
                }
            }
        }
        if stored.len() >= KEEP_PLACES_FROM {
            records.placed = stored.into_iter().zip(places).collect();
        }
        records
    }

    /// One UP instance's records: its A or AAAA answer if its host is an
    /// IP literal, its SRV answer, and the address of the SRV target if we
    /// named it. `None` if its port or host cannot be told by DNS.
    fn encode_instance(&self, i: &v1::Instance) -> Option<InstanceRecords> {
        let port = u16::try_from(i.port).ok()?;
        let weight = u16::try_from(i.weight.unwrap_or(100)).unwrap_or(u16::MAX);
        let host = i.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&i.host);
        let (address, target, target_address) = match host.parse::<IpAddr>() {
            Ok(ip) => {
                let target = self.address_name(ip)?;
                let address = self.answer_chunk(self.address_record(self.placeholder.clone(), ip))?;
                let target_address = record_chunk(&self.address_record(target.clone(), ip))?;
                (Some((ip, address)), target, Some(target_address))
            }
            // A host name is a target only: its addresses are not ours.
            Err(_) => {
                let mut target = Name::from_ascii(host).ok()?;
                target.set_fqdn(true);
                (None, target, None)
            }
        };
        let srv = Record::from_rdata(self.placeholder.clone(), self.ttl, RData::SRV(SRV::new(0, weight, port, target)));
        Some(InstanceRecords { address, srv: self.answer_chunk(srv)?, target_address })
    }

    /// `record` (owned by the placeholder) encoded as it will be in a
    /// response, its owner a pointer at the question.
    fn answer_chunk(&self, record: Record) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; QUESTION_OFFSET];
        let mut encoder = BinEncoder::with_offset(&mut buf, QUESTION_OFFSET as u32);
        self.placeholder.emit(&mut encoder).ok()?;
        let start = encoder.offset();
        record.emit(&mut encoder).ok()?;
        Some(buf[start..].to_vec())
    }

    fn address_record(&self, name: Name, ip: IpAddr) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(name, self.ttl, data)
    }

    /// `<hex of the address>.addr.<domain>`.
    fn address_name(&self, ip: IpAddr) -> Option<Name> {
        let hex: String = match ip {
            IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
            IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
        };
        Name::from_ascii(hex).and_then(|n| n.append_domain(&self.addr)).ok()
    }

    fn soa(&self, dir: &impl Directory) -> Record {
        let soa = SOA::new(self.mname.clone(), self.rname.clone(), dir.serial(), 3600, 600, 86400, self.ttl);
        Record::from_rdata(self.domain.clone(), self.ttl, RData::SOA(soa))
    }
}

/// One instance's encoded records (see [`Responder::encode_instance`]).
#[derive(Debug)]
struct InstanceRecords {
    address: Option<(IpAddr, Vec<u8>)>,
    srv: Vec<u8>,
    target_address: Option<Vec<u8>>,
}

impl InstanceRecords {
    fn parts(&self) -> Parts<'_> {
        Parts {
            address: self.address.as_ref().map(|(ip, chunk)| (ip.is_ipv6(), chunk.as_slice())),
            srv: &self.srv,
            target: self.target_address.as_deref(),
        }
    }
}

impl RecordSet {
    /// Room for as many records as `other` has.
    fn reserve_as(&mut self, other: &RecordSet) {
        self.a.reserve_as(&other.a);
        self.aaaa.reserve_as(&other.aaaa);
        self.srv.reserve_as(&other.srv);
        self.targets.reserve_as(&other.targets);
    }

    /// Adds one instance's records, telling `place` where they went.
    fn add(&mut self, parts: &Parts<'_>, place: &mut Place) {
        if let Some((v6, chunk)) = parts.address {
            place.address = if v6 { self.aaaa.push(chunk) } else { self.a.push(chunk) };
            place.v6 = v6;
        }
        place.srv = self.srv.push(parts.srv);
        if let Some(chunk) = parts.target {
            place.target = self.targets.push(chunk);
        }
    }

    /// The records of the instance at `place`, if it has any.
    fn parts(&self, place: &Place) -> Option<Parts<'_>> {
        let address = match place.address {
            NONE => None,
            at if place.v6 => Some((true, self.aaaa.get(at)?)),
            at => Some((false, self.a.get(at)?)),
        };
        let target = match place.target {
            NONE => None,
            at => Some(self.targets.get(at)?),
        };
        Some(Parts { address, srv: self.srv.get(place.srv)?, target })
    }
}

/// `record` encoded alone: its names uncompressed, so it can land anywhere.
fn record_chunk(record: &Record) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    record.emit(&mut BinEncoder::new(&mut buf)).ok()?;
    Some(buf)
}

/// A response being written: the header's fields, and the bytes after it.
struct Response<'a> {
    id: u16,
    recursion_desired: bool,
    authoritative: bool,
    truncated: bool,
    code: ResponseCode,
    counts: HeaderCounts,
    /// Room for the header, then the question, then records.
    out: Vec<u8>,
    /// Our OPT record if the request had EDNS, else empty.
    opt: &'a [u8],
}

impl<'a> Response<'a> {
    /// The header's room and the question, echoed as asked (case and all).
    fn start(meta: Metadata, query: &Query, opt: Option<&'a [u8]>) -> Option<Self> {
        let mut out = Vec::with_capacity(512);
        out.resize(QUESTION_OFFSET, 0);
        query.emit(&mut BinEncoder::with_offset(&mut out, QUESTION_OFFSET as u32)).ok()?;
        Some(Self {
            id: meta.id,
            recursion_desired: meta.recursion_desired,
            authoritative: true,
            truncated: false,
            code: ResponseCode::NoError,
            counts: HeaderCounts { queries: 1, answers: 0, authorities: 0, additionals: 0 },
            out,
            opt: opt.unwrap_or_default(),
        })
    }
}

/// The inverse of [`Responder::address_name`]'s label.
fn parse_address(hex: &str) -> Option<IpAddr> {
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    match bytes?.as_slice() {
        b if b.len() == 4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        b if b.len() == 16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::Query;

    use super::*;

    #[derive(Default)]
    struct Table {
        services: HashMap<(String, String), Vec<v1::Instance>>,
        warming: bool,
    }

    impl Directory for Table {
        fn ready(&self) -> bool {
            !self.warming
        }
        fn records(&self, namespace: &str, service: &str, responder: &Responder) -> Option<Arc<Records>> {
            // Every service whose name differs only in case, as the node's catalog.
            let mut found = None::<Vec<v1::Instance>>;
            for ((ns, svc), list) in &self.services {
                if ns.eq_ignore_ascii_case(namespace) && svc.eq_ignore_ascii_case(service) {
                    found.get_or_insert_default().extend(list.iter().cloned());
                }
            }
            found.map(|list| Arc::new(responder.compile(list.iter().map(EncodedInstance::encode).collect(), None)))
        }
        fn serial(&self) -> u32 {
            7
        }
    }

    fn instance(host: &str, port: u32, zone: &str, status: v1::Status) -> v1::Instance {
        v1::Instance {
            host: host.into(),
            port,
            zone: zone.into(),
            status: status as i32,
            weight: Some(10),
            ..Default::default()
        }
    }

    fn table() -> Table {
        let mut t = Table::default();
        let up = v1::Status::Up;
        t.services.insert(
            ("prod".into(), "web".into()),
            vec![
                instance("10.0.0.1", 80, "a", up),
                instance("10.0.0.2", 81, "b", up),
                instance("::1", 82, "a", up),
                instance("web-3.example.com", 83, "a", up),
                instance("10.0.0.9", 89, "a", v1::Status::Down),
            ],
        );
        t.services.insert(("prod".into(), "api.v2".into()), vec![instance("10.1.0.1", 90, "", up)]);
        t.services.insert(("prod".into(), "idle".into()), vec![instance("10.2.0.1", 90, "", v1::Status::Down)]);
        t
    }

    fn responder() -> Responder {
        Responder::new("registry.internal", 5, Vec::new()).expect("zone")
    }

    fn ask_with(r: &Responder, t: &Table, name: &str, qtype: RecordType, edns: Option<u16>, tr: Transport) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            q.set_edns(e);
        }
        let (bytes, _) = r.respond(&q.to_vec().expect("encode"), tr, t);
        Message::from_vec(&bytes.expect("an answer")).expect("decodes")
    }

    fn ask(r: &Responder, t: &Table, name: &str, qtype: RecordType) -> Message {
        ask_with(r, t, name, qtype, None, Transport::Udp)
    }

    fn ips(m: &Message) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn srvs(m: &Message) -> Vec<(u16, u16, u16, String)> {
        let mut v: Vec<_> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// A compile from the last records copies the records of each unchanged
    /// instance (an instance is unchanged while the views keep its stored
    /// bytes), encodes the rest, forgets the instances gone, and comes out
    /// as a compile from nothing would.
    #[test]
    fn a_compile_from_the_last_records_encodes_only_what_changed() {
        let r = responder();
        let up = v1::Status::Up;
        let mut list: Vec<v1::Instance> =
            (0..100).map(|k| instance(&format!("10.0.1.{k}"), 80, ["a", "B"][k % 2], up)).collect();
        let mut stored: Vec<EncodedInstance> = list.iter().map(EncodedInstance::encode).collect();
        let first = r.compile(stored.clone(), None);
        list[3].status = v1::Status::Down.into();
        list[10].port = 99;
        for k in [3, 10] {
            stored[k] = EncodedInstance::encode(&list[k]);
        }
        stored.remove(7);
        for i in [instance("10.0.2.1", 81, "c", up), instance("web-9.example.com", 82, "a", up)] {
            stored.push(EncodedInstance::encode(&i));
        }
        let second = r.compile(stored.clone(), Some(&first));
        // The same instances stored anew: nothing to copy.
        let anew = || stored.iter().map(|i| EncodedInstance::from_checked(i.bytes())).collect();
        let fresh = r.compile(anew(), Some(&first));
        assert_eq!(format!("{:?} {:?}", second.all, second.zones), format!("{:?} {:?}", fresh.all, fresh.zones));
        assert_eq!(second.placed.len(), 101, "the instance gone is forgotten");
        assert_eq!(second.all.a.len(), 99, "100 IP hosts, one of them down");
        assert_eq!(second.all.srv.len(), 100, "101 instances, one of them down");
        assert_eq!(second.set(Some("c")).map(|s| s.a.len()), Some(1));

        // What was copied shows in the TTL, compiling with another one.
        let other = Responder::new("registry.internal", 60, Vec::new()).expect("zone");
        let ttls = |records: &Records| {
            let mut counts = std::collections::BTreeMap::new();
            for srv in (0..records.all.srv.len() as u32).filter_map(|i| records.all.srv.get(i)) {
                // Owner pointer, type and class, then the TTL.
                *counts.entry(u32::from_be_bytes([srv[6], srv[7], srv[8], srv[9]])).or_insert(0) += 1;
            }
            counts.into_iter().collect::<Vec<_>>()
        };
        let copied = other.compile(stored.clone(), Some(&first));
        assert_eq!(ttls(&copied), [(5, 97), (60, 3)], "97 copied, the 3 changed or new UP ones encoded");
        assert_eq!(ttls(&other.compile(anew(), Some(&first))), [(60, 100)], "stored anew: all encoded");
        // In another order (a view that grew and rehashed): all found.
        let mut reordered = stored.clone();
        reordered.reverse();
        assert_eq!(ttls(&other.compile(reordered, Some(&second))), [(5, 100)], "reordered: all copied");
        // A small service keeps no places: compiled from nothing each time.
        stored.truncate(KEEP_PLACES_FROM - 1);
        let small = r.compile(stored.clone(), Some(&second));
        assert!(small.placed.is_empty());
        assert_eq!(ttls(&other.compile(stored, Some(&small))), [(60, 62)], "one of them down");
    }

    #[test]
    fn names_read_as_service_zone_rfc2782_and_address() {
        let r = responder();
        let read = |n: &str| r.read_name(&Name::from_ascii(n).expect("name"));
        let svc = |ns: &str, s: &str, zone: Option<&str>, srv_only| ServiceName {
            namespace: ns.into(),
            service: s.into(),
            zone: zone.map(str::to_string),
            srv_only,
        };
        assert_eq!(read("registry.internal."), Target::Apex);
        assert_eq!(read("prod.registry.internal."), Target::Nothing);
        assert_eq!(read("web.prod.registry.internal."), Target::Service(vec![svc("prod", "web", None, false)]));
        assert_eq!(
            read("a.web.prod.registry.internal."),
            Target::Service(vec![svc("prod", "a.web", None, false), svc("prod", "web", Some("a"), false)])
        );
        assert_eq!(read("_web._tcp.prod.registry.internal."), Target::Service(vec![svc("prod", "web", None, true)]));
        assert_eq!(
            read("_api.v2._tcp.prod.registry.internal."),
            Target::Service(vec![svc("prod", "api.v2", None, true)])
        );
        assert_eq!(read("0a000001.addr.registry.internal."), Target::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!(read("0a0000.addr.registry.internal."), Target::Nothing);
        assert_eq!(read("zz000001.addr.registry.internal."), Target::Nothing);
        let restricted = Responder::new("registry.internal.", 5, vec!["prod".into()]).expect("zone");
        let read = |n: &str| restricted.read_name(&Name::from_ascii(n).expect("name"));
        assert_eq!(read("web.dev.registry.internal."), Target::Nothing);
        assert!(matches!(read("web.prod.registry.internal."), Target::Service(_)));
    }

    #[test]
    fn a_aaaa_and_srv_of_up_instances() {
        let (r, t) = (responder(), table());
        let a = ask(&r, &t, "web.prod.registry.internal.", RecordType::A);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert_eq!(ips(&a), vec![IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])]);
        assert!(a.answers.iter().all(|r| r.ttl == 5));
        let aaaa = ask(&r, &t, "web.prod.registry.internal.", RecordType::AAAA);
        assert_eq!(ips(&aaaa), vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        let srv = ask(&r, &t, "_web._tcp.prod.registry.internal.", RecordType::SRV);
        assert_eq!(
            srvs(&srv),
            vec![
                (0, 10, 80, "0a000001.addr.registry.internal.".into()),
                (0, 10, 81, "0a000002.addr.registry.internal.".into()),
                (0, 10, 82, "00000000000000000000000000000001.addr.registry.internal.".into()),
                (0, 10, 83, "web-3.example.com.".into()),
            ]
        );
        // The targets we named come with their addresses.
        assert_eq!(srv.additionals.len(), 3);
        let target = ask(&r, &t, "0a000001.addr.registry.internal.", RecordType::A);
        assert_eq!(ips(&target), vec![IpAddr::from([10, 0, 0, 1])]);
    }

    #[test]
    fn zone_form_and_dotted_service() {
        let (r, t) = (responder(), table());
        let a = ask(&r, &t, "a.web.prod.registry.internal.", RecordType::SRV);
        assert_eq!(srvs(&a).iter().map(|s| s.2).collect::<Vec<_>>(), vec![80, 82, 83]);
        let dotted = ask(&r, &t, "api.v2.prod.registry.internal.", RecordType::A);
        assert_eq!(ips(&dotted), vec![IpAddr::from([10, 1, 0, 1])]);
        let no_zone = ask(&r, &t, "c.web.prod.registry.internal.", RecordType::A);
        assert_eq!(no_zone.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn nxdomain_nodata_refused_servfail() {
        let (r, mut t) = (responder(), table());
        let nx = ask(&r, &t, "nope.prod.registry.internal.", RecordType::A);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(nx.authorities.first().map(|r| &r.data), Some(RData::SOA(s)) if s.minimum == 5));
        // Known, but no UP instance; and known, but no record of the type.
        for (name, qtype) in
            [("idle.prod.registry.internal.", RecordType::A), ("api.v2.prod.registry.internal.", RecordType::AAAA)]
        {
            let m = ask(&r, &t, name, qtype);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.answers.is_empty(), "{name}");
            assert_eq!(m.authorities.len(), 1, "{name}: SOA for negative caching");
        }
        let txt = ask(&r, &t, "web.prod.registry.internal.", RecordType::TXT);
        assert!(txt.answers.is_empty() && txt.metadata.response_code == ResponseCode::NoError);
        let out = ask(&r, &t, "example.com.", RecordType::A);
        assert_eq!(out.metadata.response_code, ResponseCode::Refused);
        let soa = ask(&r, &t, "registry.internal.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
        t.warming = true;
        let warming = ask(&r, &t, "web.prod.registry.internal.", RecordType::A);
        assert_eq!(warming.metadata.response_code, ResponseCode::ServFail);
        assert!(warming.answers.is_empty());
    }

    #[test]
    fn names_match_without_case_and_owners_echo_the_question() {
        let (r, mut t) = (responder(), table());
        t.services.insert(("Prod".into(), "Billing".into()), vec![instance("10.3.0.1", 70, "East", v1::Status::Up)]);
        for name in
            ["WEB.Prod.Registry.Internal.", "_Web._TCP.prod.registry.internal.", "A.web.PROD.registry.internal."]
        {
            for qtype in [RecordType::A, RecordType::SRV] {
                let m = ask(&r, &t, name, qtype);
                assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name} {qtype}");
                assert_eq!(m.queries[0].name().to_ascii(), name, "the question as asked");
                assert!(m.answers.iter().all(|a| a.name.to_ascii() == name), "{name} {qtype}: {:?}", m.answers);
            }
        }
        // A registered name with capitals, a zone with capitals.
        let billing = ask(&r, &t, "east.billing.prod.registry.internal.", RecordType::A);
        assert_eq!(ips(&billing), vec![IpAddr::from([10, 3, 0, 1])]);
    }

    #[test]
    fn truncated_answers_rotate_too() {
        let (r, t) = (responder(), big(100));
        let firsts: std::collections::HashSet<String> = (0..5)
            .map(|_| {
                let m = ask(&r, &t, "big.prod.registry.internal.", RecordType::A);
                assert!(m.metadata.truncation);
                m.answers[0].to_string()
            })
            .collect();
        assert_eq!(firsts.len(), 5, "each cut starts elsewhere, so the whole fleet gets asked");
    }

    #[test]
    fn answers_rotate_per_query() {
        let (r, t) = (responder(), table());
        let firsts: Vec<_> = (0..4)
            .map(|_| ask(&r, &t, "web.prod.registry.internal.", RecordType::SRV).answers[0].to_string())
            .collect();
        assert_eq!(firsts.iter().collect::<std::collections::HashSet<_>>().len(), 4, "each query starts elsewhere");
    }

    fn big(n: u32) -> Table {
        let mut t = Table::default();
        let list =
            (0..n).map(|i| instance(&format!("10.9.{}.{}", i / 250, i % 250), 8000, "", v1::Status::Up)).collect();
        t.services.insert(("prod".into(), "big".into()), list);
        t
    }

    #[test]
    fn udp_truncates_to_whole_records_and_tcp_is_complete() {
        let (r, t) = (responder(), big(1000));
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii("big.prod.registry.internal.").expect("name"), RecordType::A));
        let (bytes, outcome) = r.respond(&q.to_vec().expect("encode"), Transport::Udp, &t);
        let bytes = bytes.expect("answer");
        assert!(bytes.len() <= 512 && outcome.truncated);
        let m = Message::from_vec(&bytes).expect("decodes");
        assert!(m.metadata.truncation);
        // 12 + question 32 + 16 per A record (compressed owner): 29 fit.
        assert!(m.answers.len() > 20, "as many as fit, got {}", m.answers.len());
        let edns = ask_with(&r, &t, "big.prod.registry.internal.", RecordType::A, Some(1232), Transport::Udp);
        assert!(edns.metadata.truncation && edns.answers.len() > m.answers.len());
        let tcp = ask_with(&r, &t, "big.prod.registry.internal.", RecordType::A, None, Transport::Tcp);
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 1000);
        // SRV targets are never compressed (RFC 2782), but each answer's
        // owner is: 1,000 SRV records fit in a TCP message (51 bytes each),
        // their targets' addresses do not, and leaving those out is no cut.
        let srv = ask_with(&r, &t, "_big._tcp.prod.registry.internal.", RecordType::SRV, None, Transport::Tcp);
        assert!(!srv.metadata.truncation);
        assert_eq!(srvs(&srv).len(), 1000, "1000 SRV over TCP");
        assert!(srv.additionals.is_empty(), "{:?}", srv.additionals.first());
        let few = ask_with(&r, &big(300), "big.prod.registry.internal.", RecordType::SRV, None, Transport::Tcp);
        assert_eq!((few.answers.len(), few.additionals.len()), (300, 300), "targets' addresses when they fit");
        let edns = ask_with(&r, &t, "big.prod.registry.internal.", RecordType::SRV, Some(4096), Transport::Udp);
        assert!(edns.metadata.truncation && edns.additionals.is_empty() && edns.answers.len() > 70);
        let small = ask(&r, &big(3), "big.prod.registry.internal.", RecordType::A);
        assert!(!small.metadata.truncation);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                (0u8..4, 0u8..255).prop_map(|(a, b)| format!("10.{a}.0.{b}")),
                (0u16..300).prop_map(|a| format!("fd00::{a:x}")),
                (0u16..50).prop_map(|a| format!("host-{a}.example.com")),
            ]
        }

        fn status() -> impl Strategy<Value = v1::Status> {
            prop_oneof![Just(v1::Status::Up), Just(v1::Status::Down), Just(v1::Status::OutOfService)]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Compiled from the last records or from nothing, after any
            /// changes, the records are the same.
            #[test]
            fn a_compile_from_the_last_records_is_one_from_nothing(
                // Across the size from which places are kept.
                start in prop::collection::vec((host(), 1u32..65536, 0usize..3, status()), 56..72),
                steps in prop::collection::vec(
                    prop::collection::vec((0usize..5, any::<prop::sample::Index>(), host(), 1u32..65536, 0usize..3, status()), 1..8),
                    1..6,
                ),
            ) {
                let r = responder();
                let zones = ["z1", "Z2", ""];
                let mut stored: Vec<EncodedInstance> = start
                    .iter()
                    .map(|(h, port, z, st)| EncodedInstance::encode(&instance(h, *port, zones[*z], *st)))
                    .collect();
                let mut last = r.compile(stored.clone(), None);
                for changes in steps {
                    for (what, at, h, port, z, st) in changes {
                        let i = EncodedInstance::encode(&instance(&h, port, zones[z], st));
                        match what {
                            0 => stored.push(i),
                            _ if stored.is_empty() => {}
                            1 => { stored.remove(at.index(stored.len())); }
                            2 => { let at = at.index(stored.len()); stored[at] = i; }
                            // As a view that grew and rehashed gives them.
                            3 => { let at = at.index(stored.len()); stored.rotate_left(at); }
                            _ => stored.reverse(),
                        }
                    }
                    let next = r.compile(stored.clone(), Some(&last));
                    let fresh = r.compile(stored.clone(), None);
                    prop_assert_eq!(format!("{:?} {:?}", next.all, next.zones), format!("{:?} {:?}", fresh.all, fresh.zones));
                    let kept = if stored.len() >= KEEP_PLACES_FROM { stored.len() } else { 0 };
                    prop_assert_eq!(next.placed.len(), kept);
                    last = next;
                }
            }

            /// Whatever the instances, the question and the size asked: the
            /// answer decodes, fits, says TC only when answers were left
            /// out, and every record is one of an UP instance's.
            #[test]
            fn every_answer_decodes_fits_and_tells_only_up_instances(
                instances in prop::collection::vec((host(), 1u32..65536, 0usize..3, status()), 0..400),
                qtype in prop_oneof![Just(RecordType::A), Just(RecordType::AAAA), Just(RecordType::SRV), Just(RecordType::ANY)],
                name in prop_oneof![Just("svc"), Just("_svc._tcp"), Just("z1.svc"), Just("SVC")],
                edns in prop_oneof![Just(None), Just(Some(512u16)), Just(Some(1232)), Just(Some(4096)), Just(Some(65000))],
                tcp in any::<bool>(),
            ) {
                let r = responder();
                let mut t = Table::default();
                let zones = ["z1", "z2", ""];
                let list: Vec<v1::Instance> = instances
                    .iter()
                    .map(|(h, port, z, st)| instance(h, *port, zones[*z], *st))
                    .collect();
                t.services.insert(("prod".into(), "svc".into()), list.clone());
                let transport = if tcp { Transport::Tcp } else { Transport::Udp };
                let mut q = Message::query();
                let qname = format!("{name}.prod.registry.internal.");
                q.add_query(Query::query(Name::from_ascii(&qname).expect("name"), qtype));
                if let Some(size) = edns {
                    let mut e = Edns::new();
                    e.set_max_payload(size);
                    q.set_edns(e);
                }
                let (bytes, outcome) = r.respond(&q.to_vec().expect("encode"), transport, &t);
                let bytes = bytes.expect("an answer");
                let limit = if tcp { MAX_TCP_MESSAGE } else { usize::from(edns.unwrap_or(512).clamp(512, MAX_UDP_PAYLOAD)) };
                prop_assert!(bytes.len() <= limit, "{} bytes over {limit}", bytes.len());
                let m = Message::from_vec(&bytes).expect("decodes");
                prop_assert_eq!(m.metadata.truncation, outcome.truncated);
                prop_assert_eq!(m.edns.is_some(), edns.is_some());
                let up: Vec<&v1::Instance> = list
                    .iter()
                    .filter(|i| i.status == v1::Status::Up as i32)
                    .filter(|i| name != "z1.svc" || i.zone == "z1")
                    .collect();
                for a in &m.answers {
                    prop_assert_eq!(a.name.to_ascii(), qname.clone());
                    let known = match &a.data {
                        RData::A(x) => up.iter().any(|i| i.host.parse::<IpAddr>().ok() == Some(IpAddr::V4(x.0))),
                        RData::AAAA(x) => up.iter().any(|i| i.host.parse::<IpAddr>().ok() == Some(IpAddr::V6(x.0))),
                        RData::SRV(x) => up.iter().any(|i| i.port == u32::from(x.port)),
                        _ => false,
                    };
                    prop_assert!(known, "{a} is no UP instance's");
                }
                let srv_form = name == "_svc._tcp";
                let want = |ty: RecordType| qtype == ty || qtype == RecordType::ANY;
                let expected = up
                    .iter()
                    .map(|i| {
                        let ip = i.host.parse::<IpAddr>().ok();
                        usize::from(!srv_form && want(RecordType::A) && ip.is_some_and(|ip| ip.is_ipv4()))
                            + usize::from(!srv_form && want(RecordType::AAAA) && ip.is_some_and(|ip| ip.is_ipv6()))
                            + usize::from(want(RecordType::SRV))
                    })
                    .sum::<usize>();
                if !m.metadata.truncation {
                    prop_assert_eq!(m.answers.len(), expected, "whole when not cut");
                } else {
                    prop_assert!(m.answers.len() < expected);
                }
                let code = m.metadata.response_code;
                let exists = list.iter().any(|i| name != "z1.svc" || i.zone == "z1");
                prop_assert_eq!(code, if exists { ResponseCode::NoError } else { ResponseCode::NXDomain });
            }
        }
    }

    #[test]
    fn bad_input_gets_formerr_notimp_or_nothing() {
        let (r, t) = (responder(), table());
        let (none, o) = r.respond(&[1, 2, 3], Transport::Udp, &t);
        assert!(none.is_none() && o.bad);
        // A query header that promises a question it does not carry.
        let (formerr, o) = r.respond(&[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w'], Transport::Udp, &t);
        let m = Message::from_vec(&formerr.expect("answer")).expect("decodes");
        assert_eq!((m.metadata.id, m.metadata.response_code, o.bad), (0xabcd, ResponseCode::FormErr, true));
        // A response sent to us: never answered.
        let mut resp = Message::response(9, OpCode::Query);
        resp.add_query(Query::query(Name::from_ascii("web.prod.registry.internal.").expect("name"), RecordType::A));
        assert!(r.respond(&resp.to_vec().expect("encode"), Transport::Udp, &t).0.is_none());
        let mut update = Message::new(5, MessageType::Query, OpCode::Update);
        update.add_query(Query::query(Name::from_ascii("registry.internal.").expect("name"), RecordType::SOA));
        let (bytes, o) = r.respond(&update.to_vec().expect("encode"), Transport::Udp, &t);
        let m = Message::from_vec(&bytes.expect("answer")).expect("decodes");
        assert_eq!((m.metadata.response_code, o.bad), (ResponseCode::NotImp, true));
        let (bytes, _) = r.respond(&Message::query().to_vec().expect("encode"), Transport::Udp, &t);
        let m = Message::from_vec(&bytes.expect("answer")).expect("decodes");
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "no question");
    }

    #[test]
    fn garbage_never_panics() {
        let (r, t) = (responder(), table());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len % 300)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = r.respond(&bytes, Transport::Udp, &t);
            let _ = r.respond(&bytes, Transport::Tcp, &t);
        }
    }
}
