//! Conversions between the store's types and the bus messages, with validation:
//! anything that comes from the bus is checked here and refused with a typed
//! error before the protocol core sees it.

use std::sync::Arc;

use prost::Message as _;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use registry_proto::sync as pb;
use registry_store::{Change, ConsumerKey, EncodedInstance, Entry, InstanceKey, Key, Origin, Record, Version};

/// Longest string accepted in a key from the bus.
const MAX_KEY_PART: usize = 4_096;

/// Why a bus message was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a valid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Invalid { field, reason: reason.into() }
}

/// `[A-Za-z0-9_-]`, 1..=64: a node id that is also a NATS subject token.
pub fn is_node_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn origin_to_wire(o: &Origin) -> pb::Origin {
    pb::Origin { node_id: o.node.to_string(), incarnation: o.incarnation }
}

pub fn origin_from_wire(o: Option<pb::Origin>) -> Result<Origin, WireError> {
    let o = o.ok_or(WireError::Missing("origin"))?;
    if !is_node_token(&o.node_id) {
        return Err(invalid("origin.node_id", format!("{:?} is not a node id", o.node_id)));
    }
    if o.incarnation == 0 {
        return Err(invalid("origin.incarnation", "must not be 0"));
    }
    Ok(Origin::new(o.node_id, o.incarnation))
}

fn part(field: &'static str, s: &str) -> Result<Arc<str>, WireError> {
    if s.is_empty() || s.len() > MAX_KEY_PART {
        return Err(invalid(field, format!("length {} is outside 1..={MAX_KEY_PART}", s.len())));
    }
    Ok(s.into())
}

/// The namespace and service names of the previous key of a message: keys
/// come in runs of one service (a cut is grouped by service), so a run shares
/// one allocation per name instead of making one per key.
#[derive(Default)]
struct RecentNames {
    namespace: Option<Arc<str>>,
    service: Option<Arc<str>>,
}

impl RecentNames {
    fn get(slot: &mut Option<Arc<str>>, field: &'static str, s: &str) -> Result<Arc<str>, WireError> {
        match slot {
            Some(name) if **name == *s => Ok(name.clone()),
            _ => {
                let name = part(field, s)?;
                *slot = Some(name.clone());
                Ok(name)
            }
        }
    }
}

pub fn key_to_wire(k: &Key) -> pb::Key {
    let kind = match k {
        Key::Instance(k) => pb::key::Kind::Instance(k.to_proto()),
        Key::Consumer(k) => pb::key::Kind::Consumer(pb::ConsumerKey {
            namespace: k.namespace.to_string(),
            stream: k.stream.to_string(),
        }),
        Key::StatusOverride(k) => pb::key::Kind::StatusOverride(k.to_proto()),
    };
    pb::Key { kind: Some(kind) }
}

pub fn key_from_wire(k: Option<pb::Key>) -> Result<Key, WireError> {
    key_with_names(k, &mut RecentNames::default())
}

fn key_with_names(k: Option<pb::Key>, names: &mut RecentNames) -> Result<Key, WireError> {
    match k.and_then(|k| k.kind).ok_or(WireError::Missing("key"))? {
        pb::key::Kind::Instance(k) => Ok(Key::Instance(InstanceKey::from_parts(
            RecentNames::get(&mut names.namespace, "key.namespace", &k.namespace)?,
            RecentNames::get(&mut names.service, "key.service", &k.service)?,
            part("key.instance_id", &k.instance_id)?,
        ))),
        pb::key::Kind::Consumer(k) => Ok(Key::Consumer(std::sync::Arc::new(ConsumerKey {
            namespace: part("key.namespace", &k.namespace)?,
            stream: part("key.stream", &k.stream)?,
        }))),
        pb::key::Kind::StatusOverride(k) => Ok(Key::StatusOverride(InstanceKey::from_parts(
            RecentNames::get(&mut names.namespace, "key.namespace", &k.namespace)?,
            RecentNames::get(&mut names.service, "key.service", &k.service)?,
            part("key.instance_id", &k.instance_id)?,
        ))),
    }
}

pub fn entry_to_wire(e: &Entry) -> pb::Entry {
    pb::Entry {
        version: Some(pb::Version { hlc: e.version.hlc, node: e.version.node }),
        record: e.record.as_ref().map(|r| match r {
            Record::Instance(i) => pb::entry::Record::Instance(i.bytes().to_vec()),
            Record::Consumer(c) => pb::entry::Record::Consumer((**c).clone()),
            Record::StatusOverride(o) => pb::entry::Record::StatusOverride((**o).clone()),
        }),
    }
}

/// Decodes an entry and checks that its record belongs to `key`.
pub fn entry_from_wire(key: &Key, e: Option<pb::Entry>) -> Result<Entry, WireError> {
    let e = e.ok_or(WireError::Missing("entry"))?;
    let v = e.version.ok_or(WireError::Missing("entry.version"))?;
    let version = Version { hlc: v.hlc, node: v.node };
    let record = match (key, e.record) {
        (_, None) => None,
        (Key::Instance(k), Some(pb::entry::Record::Instance(bytes))) => {
            check_instance_key(&bytes, k)?;
            Some(Record::Instance(EncodedInstance::from_checked(&bytes)))
        }
        (Key::Consumer(_), Some(pb::entry::Record::Consumer(c))) => Some(Record::Consumer(Arc::new(c))),
        (Key::StatusOverride(_), Some(pb::entry::Record::StatusOverride(o))) => {
            if registry_proto::v1::Status::try_from(o.status).is_err() || o.set_by.len() > 1_024 {
                return Err(invalid(
                    "entry.record",
                    "a status override with an unknown status or an oversized principal",
                ));
            }
            Some(Record::StatusOverride(Arc::new(o)))
        }
        _ => return Err(invalid("entry.record", "record kind does not match the key kind")),
    };
    Ok(Entry { version, record })
}

/// Checks that `bytes` is a well-framed `registry.v1.Instance` whose
/// identifying fields (tags 1-3) are `key`'s. Only those are looked at; the
/// rest is skipped over, which still checks its framing. Allocates nothing: a
/// slice transfer checks a million of these.
fn check_instance_key(bytes: &[u8], key: &InstanceKey) -> Result<(), WireError> {
    let mismatch = || invalid("entry.instance", "does not match its key");
    let mut buf = bytes;
    let mut seen = [false; 3];
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match (tag, wire_type) {
            (1..=3, WireType::LengthDelimited) => {
                let len = usize::try_from(decode_varint(&mut buf)?).unwrap_or(usize::MAX);
                if len > buf.len() {
                    return Err(invalid("entry.instance", "a field runs past the end"));
                }
                let (value, rest) = buf.split_at(len);
                buf = rest;
                let (want, i) = match tag {
                    1 => (&*key.namespace, 0),
                    2 => (&*key.service, 1),
                    _ => (&*key.id, 2),
                };
                if value != want.as_bytes() {
                    return Err(mismatch());
                }
                seen[i] = true;
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
        }
    }
    // An absent field is the empty string, which no key part is.
    if seen != [true; 3] {
        return Err(mismatch());
    }
    Ok(())
}

pub fn change_to_wire(c: &Change) -> pb::Change {
    match c {
        Change::Put { key, entry } => {
            pb::Change { key: Some(key_to_wire(key)), put: Some(entry_to_wire(entry)), moved_to: None }
        }
        Change::Purge { key } => pb::Change { key: Some(key_to_wire(key)), put: None, moved_to: None },
        Change::Moved { key, to } => pb::Change {
            key: Some(key_to_wire(key)),
            put: None,
            moved_to: Some(pb::Version { hlc: to.hlc, node: to.node }),
        },
    }
}

pub fn change_from_wire(c: pb::Change) -> Result<Change, WireError> {
    change_with_names(c, &mut RecentNames::default())
}

fn change_with_names(c: pb::Change, names: &mut RecentNames) -> Result<Change, WireError> {
    let key = key_with_names(c.key, names)?;
    Ok(match (c.put, c.moved_to) {
        (Some(e), None) => {
            let entry = entry_from_wire(&key, Some(e))?;
            Change::Put { key, entry }
        }
        (Some(_), Some(_)) => return Err(invalid("change.moved_to", "set on a put; it only goes with a purge")),
        (None, None) => Change::Purge { key },
        (None, Some(v)) => Change::Moved { key, to: Version { hlc: v.hlc, node: v.node } },
    })
}

/// A decoded, validated change batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub origin: Origin,
    pub first_seq: u64,
    pub changes: Vec<Change>,
}

impl Batch {
    /// Sequence number of the last change.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.changes.len() as u64 - 1
    }
}

pub fn batch_to_wire(origin: &Origin, first_seq: u64, changes: &[Change]) -> pb::ChangeBatch {
    pb::ChangeBatch {
        origin: Some(origin_to_wire(origin)),
        first_seq,
        changes: changes.iter().map(change_to_wire).collect(),
    }
}

pub fn batch_from_wire(b: pb::ChangeBatch) -> Result<Batch, WireError> {
    let origin = origin_from_wire(b.origin)?;
    if b.changes.is_empty() {
        return Err(invalid("changes", "batch is empty"));
    }
    if b.first_seq == 0 || b.first_seq.checked_add(b.changes.len() as u64).is_none() {
        return Err(invalid("first_seq", format!("{} with {} changes is out of range", b.first_seq, b.changes.len())));
    }
    let mut names = RecentNames::default();
    let changes = b.changes.into_iter().map(|c| change_with_names(c, &mut names)).collect::<Result<_, _>>()?;
    Ok(Batch { origin, first_seq: b.first_seq, changes })
}

pub fn decode_batch(bytes: &[u8]) -> Result<Batch, WireError> {
    batch_from_wire(pb::ChangeBatch::decode(bytes)?)
}

/// What a beat says about its origin.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BeatInfo {
    pub seq: u64,
    pub digest: u64,
    pub entries: u64,
    pub live: u64,
    pub ready: bool,
    pub advertise_addr: String,
    pub start_unix_ms: u64,
    pub leaving: bool,
    /// Membership digest: see [`crate::SyncCore::members_digest`].
    pub members: u64,
    /// Provider sessions the sender holds (for rebalancing).
    pub sessions: u64,
    /// Subscribe streams the sender holds (for rebalancing).
    pub subscriptions: u64,
    /// The sender's last message: it stopped on purpose.
    pub farewell: bool,
    /// The sender's clock (HLC) when it took `seq`: every copy it wrote up
    /// to `seq` has a version at most this, every later one above it.
    /// `None` from a node of an older release.
    pub hlc: Option<u64>,
}

pub fn beat_to_wire(origin: &Origin, b: &BeatInfo) -> pb::Beat {
    pb::Beat {
        origin: Some(origin_to_wire(origin)),
        seq: b.seq,
        digest: b.digest,
        entries: b.entries,
        live: b.live,
        ready: b.ready,
        advertise_addr: b.advertise_addr.clone(),
        start_unix_ms: b.start_unix_ms,
        leaving: b.leaving,
        members: b.members,
        sessions: b.sessions,
        subscriptions: b.subscriptions,
        farewell: b.farewell,
        hlc: b.hlc,
    }
}

pub fn decode_beat(bytes: &[u8]) -> Result<(Origin, BeatInfo), WireError> {
    let b = pb::Beat::decode(bytes)?;
    let origin = origin_from_wire(b.origin)?;
    if b.live > b.entries {
        return Err(invalid("live", "more live records than entries"));
    }
    if b.advertise_addr.len() > 256 {
        return Err(invalid("advertise_addr", "longer than 256 bytes"));
    }
    Ok((
        origin,
        BeatInfo {
            seq: b.seq,
            digest: b.digest,
            entries: b.entries,
            live: b.live,
            ready: b.ready,
            advertise_addr: b.advertise_addr,
            start_unix_ms: b.start_unix_ms,
            leaving: b.leaving,
            members: b.members,
            sessions: b.sessions,
            subscriptions: b.subscriptions,
            farewell: b.farewell,
            hlc: b.hlc,
        },
    ))
}

pub fn hello_to_wire(origin: &Origin) -> pb::Hello {
    pb::Hello { origin: Some(origin_to_wire(origin)) }
}

pub fn decode_hello(bytes: &[u8]) -> Result<Origin, WireError> {
    origin_from_wire(pb::Hello::decode(bytes)?.origin)
}

/// A decoded sync request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Range { from_seq: u64, to_seq: u64 },
    Page { cut_id: u64, offset: u64 },
}

pub fn request_to_wire(requester: &Origin, incarnation: u64, r: &Request) -> pb::SyncRequest {
    let kind = match r {
        Request::Range { from_seq, to_seq } => {
            pb::sync_request::Kind::Range(pb::SeqRange { from_seq: *from_seq, to_seq: *to_seq })
        }
        Request::Page { cut_id, offset } => {
            pb::sync_request::Kind::Page(pb::PageRequest { cut_id: *cut_id, offset: *offset })
        }
    };
    pb::SyncRequest { requester: Some(origin_to_wire(requester)), incarnation, kind: Some(kind) }
}

pub fn decode_request(bytes: &[u8]) -> Result<(Origin, u64, Request), WireError> {
    let r = pb::SyncRequest::decode(bytes)?;
    let requester = origin_from_wire(r.requester)?;
    let req = match r.kind.ok_or(WireError::Missing("kind"))? {
        pb::sync_request::Kind::Range(g) => {
            if g.from_seq == 0 || g.from_seq > g.to_seq {
                return Err(invalid("range", format!("{}..={} is not a valid range", g.from_seq, g.to_seq)));
            }
            Request::Range { from_seq: g.from_seq, to_seq: g.to_seq }
        }
        pb::sync_request::Kind::Page(p) => Request::Page { cut_id: p.cut_id, offset: p.offset },
    };
    Ok((requester, r.incarnation, req))
}

/// A decoded page of a slice transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub cut_id: u64,
    pub cut_seq: u64,
    pub offset: u64,
    pub total: u64,
    pub digest: u64,
    pub entries: Vec<(Key, Entry)>,
}

/// A decoded sync reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Range(Batch),
    /// An empty range: nothing to send (the requester is already current).
    Empty,
    Page(Page),
    Refused {
        reason: String,
        pull_slice: bool,
    },
}

pub fn page_to_wire(p: &Page) -> pb::SyncReply {
    pb::SyncReply {
        kind: Some(pb::sync_reply::Kind::Page(pb::Page {
            cut_id: p.cut_id,
            cut_seq: p.cut_seq,
            offset: p.offset,
            total: p.total,
            digest: p.digest,
            entries: p
                .entries
                .iter()
                .map(|(k, e)| pb::KeyEntry { key: Some(key_to_wire(k)), entry: Some(entry_to_wire(e)) })
                .collect(),
        })),
    }
}

pub fn reply_to_wire(r: &Reply) -> pb::SyncReply {
    match r {
        Reply::Range(b) => {
            pb::SyncReply { kind: Some(pb::sync_reply::Kind::Range(batch_to_wire(&b.origin, b.first_seq, &b.changes))) }
        }
        Reply::Empty => pb::SyncReply { kind: Some(pb::sync_reply::Kind::Range(pb::ChangeBatch::default())) },
        Reply::Page(p) => page_to_wire(p),
        Reply::Refused { reason, pull_slice } => refused_to_wire(reason.clone(), *pull_slice),
    }
}

pub fn refused_to_wire(reason: impl Into<String>, pull_slice: bool) -> pb::SyncReply {
    pb::SyncReply { kind: Some(pb::sync_reply::Kind::Refused(pb::Refused { reason: reason.into(), pull_slice })) }
}

pub fn decode_reply(bytes: &[u8]) -> Result<Reply, WireError> {
    let r = pb::SyncReply::decode(bytes)?;
    Ok(match r.kind.ok_or(WireError::Missing("kind"))? {
        pb::sync_reply::Kind::Range(b) if b.changes.is_empty() => Reply::Empty,
        pb::sync_reply::Kind::Range(b) => Reply::Range(batch_from_wire(b)?),
        pb::sync_reply::Kind::Page(p) => {
            let mut names = RecentNames::default();
            let entries = p
                .entries
                .into_iter()
                .map(|ke| {
                    let key = key_with_names(ke.key, &mut names)?;
                    let entry = entry_from_wire(&key, ke.entry)?;
                    Ok((key, entry))
                })
                .collect::<Result<Vec<_>, WireError>>()?;
            if p.offset.checked_add(entries.len() as u64).is_none_or(|end| end > p.total) {
                return Err(invalid("page", "entries run past the total"));
            }
            Reply::Page(Page {
                cut_id: p.cut_id,
                cut_seq: p.cut_seq,
                offset: p.offset,
                total: p.total,
                digest: p.digest,
                entries,
            })
        }
        pb::sync_reply::Kind::Refused(r) => Reply::Refused { reason: r.reason, pull_slice: r.pull_slice },
    })
}

/// Encodes any bus message.
pub fn encode(msg: &impl prost::Message) -> Vec<u8> {
    msg.encode_to_vec()
}
