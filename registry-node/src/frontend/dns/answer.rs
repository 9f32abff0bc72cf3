//! The DNS front-end's core, with no I/O: a request's bytes in, the
//! answer's bytes out (or nothing), read from a [`Directory`] of instances.
//! Sockets, timeouts and counting of connections live in the module around
//! it; everything a client can send and every answer it can get is decided
//! here, which is what the unit tests below exercise.
//!
//! Names under the domain (`registry.internal.` by default):
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

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use registry_proto::v1;

/// The largest UDP answer sent, whatever size a requester offers: bigger
/// datagrams fragment, and fragments get lost or spoofed.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// The largest DNS message over TCP (its length prefix is 16 bits).
pub const MAX_TCP_MESSAGE: usize = u16::MAX as usize;

/// What answers read: the node's views, or a table in tests.
pub trait Directory {
    /// Whether the node has loaded the registry (a warming-up clustered node
    /// answers SERVFAIL rather than a partial list).
    fn ready(&self) -> bool;
    /// Every instance of a service, whatever its status; empty if unknown.
    fn instances(&self, namespace: &str, service: &str) -> Vec<v1::Instance>;
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
    ttl: u32,
    /// Namespaces served; empty serves all.
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

#[derive(Debug, PartialEq, Eq)]
struct ServiceName {
    namespace: String,
    service: String,
    zone: Option<String>,
    /// The RFC 2782 form: SRV only.
    srv_only: bool,
}

/// The records of one service name.
#[derive(Debug, Default)]
struct Found {
    /// Whether the name exists (it has instances, of any status).
    exists: bool,
    addresses: Vec<IpAddr>,
    /// (weight, port, target, address of the target if it is ours).
    srv: Vec<(u16, u16, Name, Option<IpAddr>)>,
}

impl Responder {
    /// `domain` is made fully qualified; `ttl` applies to every record.
    pub fn new(domain: &str, ttl: u32, namespaces: Vec<String>) -> Result<Self, ZoneError> {
        let bad = |e| ZoneError::Domain(domain.to_string(), e);
        let mut name = Name::from_ascii(domain).map_err(bad)?.to_lowercase();
        name.set_fqdn(true);
        let label = |l: &str| Name::from_ascii(l).and_then(|n| n.append_domain(&name)).map_err(bad);
        Ok(Self {
            mname: label("ns")?,
            rname: label("hostmaster")?,
            addr: label("addr")?,
            domain: name,
            ttl,
            namespaces,
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

        let mut response = Message::response(meta.id, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = meta.recursion_desired;
        response.add_query(query.clone());
        if message.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            response.set_edns(edns);
        }
        let limit = match transport {
            Transport::Udp => usize::from(message.max_payload().min(MAX_UDP_PAYLOAD)),
            Transport::Tcp => MAX_TCP_MESSAGE,
        };

        let qname = query.name();
        if !(query.query_class() == DNSClass::IN || query.query_class() == DNSClass::ANY) || !self.domain.zone_of(qname)
        {
            response.metadata.authoritative = false;
            return self.finish(response, Vec::new(), Vec::new(), ResponseCode::Refused, limit, outcome);
        }
        if !dir.ready() {
            response.metadata.authoritative = false;
            return self.finish(response, Vec::new(), Vec::new(), ResponseCode::ServFail, limit, outcome);
        }
        let qtype = query.query_type();
        let (answers, additionals, code) = match self.read_name(qname) {
            Target::Apex => {
                let answers =
                    if matches!(qtype, RecordType::SOA | RecordType::ANY) { vec![self.soa(dir)] } else { Vec::new() };
                (answers, Vec::new(), ResponseCode::NoError)
            }
            Target::Address(ip) => match (ip, qtype) {
                (IpAddr::V4(_), RecordType::A | RecordType::ANY)
                | (IpAddr::V6(_), RecordType::AAAA | RecordType::ANY) => {
                    (vec![self.address_record(qname.clone(), ip)], Vec::new(), ResponseCode::NoError)
                }
                _ => (Vec::new(), Vec::new(), ResponseCode::NoError),
            },
            Target::Nothing => (Vec::new(), Vec::new(), ResponseCode::NXDomain),
            Target::Service(candidates) => {
                let found = candidates.iter().map(|c| self.find(c, dir)).find(|f| f.exists);
                match found {
                    None => (Vec::new(), Vec::new(), ResponseCode::NXDomain),
                    Some(found) => {
                        let (answers, additionals) = self.records(qname, qtype, found);
                        (answers, additionals, ResponseCode::NoError)
                    }
                }
            }
        };
        if answers.is_empty() {
            // NXDOMAIN and NODATA carry the SOA, for negative caching.
            response.add_authority(self.soa(dir));
        }
        self.finish(response, answers, additionals, code, limit, outcome)
    }

    fn error(&self, id: u16, op: OpCode, code: ResponseCode, mut outcome: Outcome) -> (Option<Vec<u8>>, Outcome) {
        outcome.rcode = Some(code);
        (Message::error_msg(id, op, code).to_vec().ok(), outcome)
    }

    /// Encodes the response within `limit` bytes: whole, else without the
    /// additional section, else with as many whole answers as fit and TC
    /// set (RFC 2181 §9: TC only when the answer itself is incomplete).
    fn finish(
        &self,
        mut response: Message,
        answers: Vec<Record>,
        additionals: Vec<Record>,
        code: ResponseCode,
        limit: usize,
        mut outcome: Outcome,
    ) -> (Option<Vec<u8>>, Outcome) {
        response.metadata.response_code = code;
        outcome.rcode = Some(code);
        response.answers = answers;
        response.additionals = additionals;
        match fit(&mut response, limit) {
            Ok((bytes, truncated)) => {
                outcome.truncated = truncated;
                (Some(bytes), outcome)
            }
            // Only names we made could fail to encode; say so rather than
            // send nothing and make the client wait.
            Err(_) => {
                let (id, op) = (response.metadata.id, response.metadata.op_code);
                self.error(id, op, ResponseCode::ServFail, outcome)
            }
        }
    }

    /// Reads a name of the zone (the caller checked it is one).
    fn read_name(&self, qname: &Name) -> Target {
        let labels: Vec<&[u8]> = qname.iter().collect();
        let Some(ours) = labels.len().checked_sub(usize::from(self.domain.num_labels())) else {
            return Target::Nothing;
        };
        let labels = &labels[..ours];
        let Some((namespace, rest)) = labels.split_last() else {
            return Target::Apex;
        };
        let text = |l: &[u8]| std::str::from_utf8(l).ok().map(str::to_string);
        let (Some(namespace), Some(rest)) = (text(namespace), rest.iter().map(|l| text(l)).collect::<Option<Vec<_>>>())
        else {
            return Target::Nothing;
        };
        if namespace.eq_ignore_ascii_case("addr") {
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
            && last.eq_ignore_ascii_case("_tcp")
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

    /// The UP instances of a service name, as addresses and SRV data.
    fn find(&self, name: &ServiceName, dir: &impl Directory) -> Found {
        let mut found = Found::default();
        let mut instances = dir.instances(&name.namespace, &name.service);
        if let Some(zone) = &name.zone {
            instances.retain(|i| &i.zone == zone);
        }
        found.exists = !instances.is_empty();
        instances.retain(|i| i.status().effective() == v1::Status::Up);
        // A stable order before the rotation, whatever order the views keep.
        instances.sort_unstable_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        for i in &instances {
            let Ok(port) = u16::try_from(i.port) else { continue };
            let weight = u16::try_from(i.weight.unwrap_or(100)).unwrap_or(u16::MAX);
            match i.host.parse::<IpAddr>() {
                Ok(ip) => {
                    if !name.srv_only {
                        found.addresses.push(ip);
                    }
                    if let Some(target) = self.address_name(ip) {
                        found.srv.push((weight, port, target, Some(ip)));
                    }
                }
                // A host name is a target only: its addresses are not ours.
                Err(_) => {
                    if let Ok(mut target) = Name::from_ascii(&i.host) {
                        target.set_fqdn(true);
                        found.srv.push((weight, port, target, None));
                    }
                }
            }
        }
        found
    }

    /// The answers to `qtype` at `qname`, rotated by one more turn than the
    /// last query's, and the addresses of SRV targets as additionals.
    fn records(&self, qname: &Name, qtype: RecordType, found: Found) -> (Vec<Record>, Vec<Record>) {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
        let Found { mut addresses, mut srv, .. } = found;
        rotate(&mut addresses, turn);
        rotate(&mut srv, turn);
        let want_a = matches!(qtype, RecordType::A | RecordType::ANY);
        let want_aaaa = matches!(qtype, RecordType::AAAA | RecordType::ANY);
        let want_srv = matches!(qtype, RecordType::SRV | RecordType::ANY);
        let mut answers: Vec<Record> = addresses
            .into_iter()
            .filter(|ip| (ip.is_ipv4() && want_a) || (ip.is_ipv6() && want_aaaa))
            .map(|ip| self.address_record(qname.clone(), ip))
            .collect();
        let mut additionals = Vec::new();
        if want_srv {
            for (weight, port, target, ip) in srv {
                if let Some(ip) = ip {
                    additionals.push(self.address_record(target.clone(), ip));
                }
                answers.push(Record::from_rdata(
                    qname.clone(),
                    self.ttl,
                    RData::SRV(SRV::new(0, weight, port, target)),
                ));
            }
        }
        (answers, additionals)
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

fn rotate<T>(v: &mut [T], turn: usize) {
    if !v.is_empty() {
        v.rotate_left(turn % v.len());
    }
}

/// Encodes `response` in at most `limit` bytes; returns whether answers had
/// to be left out (TC is then set).
fn fit(response: &mut Message, limit: usize) -> Result<(Vec<u8>, bool), ProtoError> {
    if let Some(whole) = encode_whole(response, limit)? {
        return Ok((whole, false));
    }
    response.additionals.clear();
    if let Some(bytes) = encode_whole(response, limit)? {
        return Ok((bytes, false));
    }
    // The most whole answers that fit, by bisection (name compression makes
    // sizes not add up record by record).
    response.authorities.clear();
    response.metadata.truncation = true;
    let answers = std::mem::take(&mut response.answers);
    let (mut lo, mut hi) = (0, answers.len());
    let mut best = response.to_vec()?;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        response.answers = answers[..mid].to_vec();
        match encode_whole(response, limit)? {
            Some(bytes) => {
                lo = mid;
                best = bytes;
            }
            None => hi = mid - 1,
        }
    }
    Ok((best, true))
}

/// `response` encoded, if all of it fits in `limit` bytes. hickory cuts a
/// message that outgrows 64 KiB by itself (dropping the records that do not
/// fit); such a cut counts as not fitting.
fn encode_whole(response: &Message, limit: usize) -> Result<Option<Vec<u8>>, ProtoError> {
    let bytes = response.to_vec()?;
    if bytes.len() > limit {
        return Ok(None);
    }
    let header = Header::read(&mut BinDecoder::new(&bytes)).map_err(|_| ProtoError::Message("unreadable header"))?;
    let complete = usize::from(header.counts.answers) == response.answers.len()
        && usize::from(header.counts.authorities) == response.authorities.len()
        && usize::from(header.counts.additionals) >= response.additionals.len();
    Ok(complete.then_some(bytes))
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
        fn instances(&self, namespace: &str, service: &str) -> Vec<v1::Instance> {
            self.services.get(&(namespace.to_string(), service.to_string())).cloned().unwrap_or_default()
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
        // SRV targets are never compressed (RFC 2782): 1000 of ours do not
        // fit in the 64 KiB of a TCP message, and the cut says so.
        let srv = ask_with(&r, &t, "big.prod.registry.internal.", RecordType::SRV, None, Transport::Tcp);
        assert!(srv.metadata.truncation && srv.answers.len() > 800, "{} SRV over TCP", srv.answers.len());
        assert!(srv.additionals.is_empty(), "{:?}", srv.additionals.first());
        let small = ask(&r, &big(3), "big.prod.registry.internal.", RecordType::A);
        assert!(!small.metadata.truncation);
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
