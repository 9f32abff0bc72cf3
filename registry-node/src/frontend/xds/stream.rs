//! The task behind one ADS stream: reads the client's requests, keeps the
//! node's watch of the services they name, and sends what is owed when the
//! client has room.
//!
//! Everything it waits on is in one `select!`: a request, a frame of its
//! watch (which only says which service changed, or that the node wants the
//! stream to go), room in the outgoing queue when a response is owed, a
//! drain's deadline, the node's stop. Responses are computed when there is
//! room, from the views as they are then, so a client that reads slowly
//! skips the states it missed instead of queueing them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Message;
use registry_proto::{SubscribeFrame, v1};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use super::cache::{Slot, XdsCache};
use super::protocol::{Delta, Interests, ProtocolError, Sent, Sotw, Verdict};
use super::resources::ResourceType;
use super::{AdsFrame, DeltaFrame, DiscoveryFrame, Incoming};
use crate::api::{NodeApi, RegistryError, WatchItem};
use crate::auth::Caller;
use crate::metrics::Metrics;
use crate::validate;

/// Why a stream ended on the node's side: each is a gRPC status the client
/// acts on (reconnect, fix its bootstrap, fix its credentials).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the request is not a DiscoveryRequest: {0}")]
    Garbage(prost::DecodeError),
    /// tonic refused what the client sent (a message over
    /// `limits.max_message_bytes`, a broken frame): its status as it is.
    #[error("{}", .0.message())]
    Refused(Status),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("node.metadata.namespace must be a string naming a namespace")]
    NamespaceNotText,
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the node shut down; reconnect (to any node)")]
    Shutdown,
    #[error("the node asks xDS clients to reconnect ({0})")]
    Moved(String),
}

impl From<&StreamError> for Status {
    fn from(e: &StreamError) -> Self {
        match e {
            StreamError::Garbage(_) | StreamError::NamespaceNotText => Status::invalid_argument(e.to_string()),
            StreamError::Protocol(ProtocolError::TooManyNames { .. }) => Status::resource_exhausted(e.to_string()),
            StreamError::Registry(r) => crate::frontend::grpc::status_of(r),
            StreamError::Refused(s) => s.clone(),
            StreamError::Shutdown | StreamError::Moved(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// A request of either variant, as the stream reads it.
pub struct Request {
    node: Option<Node>,
    type_url: String,
    error: Option<String>,
    nonce: String,
    kind: RequestKind,
}

enum RequestKind {
    /// The names wanted now, and the version the client holds.
    Sotw { names: Vec<String>, version: String },
    /// Names added and dropped, and the versions held (first request).
    Delta { subscribe: Vec<String>, unsubscribe: Vec<String>, initial: BTreeMap<String, String> },
}

/// A request message of one of the two ADS methods.
pub trait AdsRequest: prost::Message + Default + Send + 'static {
    /// The incremental variant.
    const DELTA: bool;
    fn into_request(self) -> Request;
}

impl AdsRequest for DiscoveryRequest {
    const DELTA: bool = false;

    fn into_request(self) -> Request {
        Request {
            node: self.node,
            type_url: self.type_url,
            error: self.error_detail.map(|e| e.message),
            nonce: self.response_nonce,
            kind: RequestKind::Sotw { names: self.resource_names, version: self.version_info },
        }
    }
}

impl AdsRequest for DeltaDiscoveryRequest {
    const DELTA: bool = true;

    fn into_request(self) -> Request {
        Request {
            node: self.node,
            type_url: self.type_url,
            error: self.error_detail.map(|e| e.message),
            nonce: self.response_nonce,
            kind: RequestKind::Delta {
                subscribe: self.resource_names_subscribe,
                unsubscribe: self.resource_names_unsubscribe,
                initial: self.initial_resource_versions.into_iter().collect(),
            },
        }
    }
}

/// The bookkeeping of the stream's variant.
#[derive(Debug)]
enum Book {
    Sotw(Sotw),
    Delta(Delta),
}

impl Book {
    fn want(&self) -> &Interests {
        match self {
            Self::Sotw(p) => p.want(),
            Self::Delta(p) => p.want(),
        }
    }

    fn want_mut(&mut self) -> &mut Interests {
        match self {
            Self::Sotw(p) => p.want_mut(),
            Self::Delta(p) => p.want_mut(),
        }
    }
}

/// One ADS stream.
pub struct AdsStream {
    api: NodeApi,
    cache: Arc<XdsCache>,
    caller: Caller,
    peer: SocketAddr,
    out: mpsc::Sender<Result<AdsFrame, Status>>,
    book: Book,
    /// From the stream's first request; `None` until then.
    namespace: Option<String>,
    consumer: v1::ConsumerInfo,
    /// The node's watches of the services asked for, one per namespace
    /// (names of the form `namespace/service` reach beyond the stream's).
    watch: StreamMap<String, ReceiverStream<WatchItem>>,
    /// What each watch in `watch` covers, by namespace.
    watching: BTreeMap<String, Watching>,
    /// The slot of each resource name watched (valid names only; others do
    /// not exist).
    slots: HashMap<String, Arc<Slot>>,
    /// When a stream asked to move ends.
    drain_at: Option<Instant>,
}

/// What a stream's watch covers.
#[derive(Debug, PartialEq, Eq)]
enum Watching {
    Services(BTreeSet<String>),
    /// Every service of the namespace (a wildcard was asked for).
    Namespace,
}

/// What woke the stream.
enum Event<'a> {
    Stop,
    Drain,
    Request(Option<Result<Box<Incoming<Request>>, Status>>),
    Watch(Option<(String, WatchItem)>),
    Room(mpsc::Permit<'a, Result<AdsFrame, Status>>),
}

impl AdsStream {
    pub fn new(
        api: NodeApi,
        cache: Arc<XdsCache>,
        caller: Caller,
        peer: SocketAddr,
        out: mpsc::Sender<Result<AdsFrame, Status>>,
        delta: bool,
    ) -> Self {
        let max_names = api.registry().config().limits.max_services_per_subscribe;
        let book = if delta { Book::Delta(Delta::new(max_names)) } else { Book::Sotw(Sotw::new(max_names)) };
        Self {
            api,
            cache,
            caller,
            peer,
            out,
            book,
            namespace: None,
            consumer: v1::ConsumerInfo::default(),
            watch: StreamMap::new(),
            watching: BTreeMap::new(),
            slots: HashMap::new(),
            drain_at: None,
        }
    }

    pub async fn run<R: AdsRequest>(mut self, requests: Streaming<Incoming<R>>) {
        let metrics = self.api.registry().metrics.clone();
        Metrics::inc(&metrics.xds.streams);
        let end = self.serve(requests).await;
        if let Err(e) = &end {
            match e {
                StreamError::Garbage(_)
                | StreamError::Refused(_)
                | StreamError::Protocol(_)
                | StreamError::NamespaceNotText => {
                    Metrics::inc(&metrics.xds.bad_requests);
                    debug!(peer = %self.peer, error = %e, "xDS stream refused");
                }
                StreamError::Registry(RegistryError::Invalid(_)) => Metrics::inc(&metrics.xds.bad_requests),
                _ => {}
            }
            // The client may not be reading: the end is worth a short wait,
            // not a task held open.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.out.send(Err(Status::from(e)))).await;
        }
        self.watch.clear();
        for (_, slot) in self.slots.drain() {
            self.cache.release(slot);
        }
        Metrics::dec(&metrics.xds.streams);
    }

    fn any_due(&self) -> bool {
        ResourceType::ALL.into_iter().any(|t| self.book.want().maybe_due(t))
    }

    async fn serve<R: AdsRequest>(&mut self, mut requests: Streaming<Incoming<R>>) -> Result<(), StreamError> {
        let stop = self.api.signals().stop.clone();
        loop {
            let out = self.out.clone();
            let due = self.any_due();
            let event = tokio::select! {
                biased;
                _ = stop.cancelled() => Event::Stop,
                _ = tokio::time::sleep_until(self.drain_at.unwrap_or_else(Instant::now)), if self.drain_at.is_some() => Event::Drain,
                r = requests.message() => Event::Request(
                    r.transpose().map(|r| r.map(|incoming| Box::new(incoming.map(R::into_request))))
                ),
                item = self.watch.next(), if !self.watch.is_empty() => Event::Watch(item),
                permit = out.reserve(), if due => match permit {
                    Ok(p) => Event::Room(p),
                    Err(_) => return Ok(()),
                },
            };
            match event {
                Event::Stop => return Err(StreamError::Shutdown),
                Event::Drain => return Err(StreamError::Moved("draining or rebalancing".into())),
                // The client half-closed, or went away.
                Event::Request(None) => return Ok(()),
                Event::Request(Some(Err(s))) if refused(&s) => return Err(StreamError::Refused(s)),
                Event::Request(Some(Err(_))) => return Ok(()),
                Event::Request(Some(Ok(incoming))) => match *incoming {
                    Err(garbage) => return Err(StreamError::Garbage(garbage)),
                    Ok(request) => self.on_request(request)?,
                },
                Event::Watch(None) => return Err(StreamError::Shutdown),
                Event::Watch(Some((_, Err(end)))) => return Err(StreamError::Moved(end.to_string())),
                Event::Watch(Some((namespace, Ok(frame)))) => self.on_frame(&namespace, &frame),
                Event::Room(permit) => self.send_due(permit),
            }
        }
    }

    fn on_request(&mut self, request: Request) -> Result<(), StreamError> {
        if self.namespace.is_none() {
            // Clients send their node on the first request only.
            let (namespace, consumer) = consumer_of(request.node.as_ref())?;
            let limits = &self.api.registry().config().limits;
            // "" is the default namespace, by its name.
            let namespace = validate::namespace(&namespace, limits).map_err(|e| self.api.invalid(e))?;
            self.namespace = Some(namespace);
            self.consumer = consumer;
        }
        let xds = &self.api.registry().metrics.xds;
        let Some(t) = ResourceType::from_type_url(&request.type_url) else {
            Metrics::inc(&xds.unknown_types);
            debug!(peer = %self.peer, type_url = %request.type_url, "xDS request of a type not served: ignored");
            return Ok(());
        };
        let (nonce, error) = (request.nonce, request.error);
        let verdict = match (&mut self.book, request.kind) {
            (Book::Sotw(p), RequestKind::Sotw { names, version }) => p.on_request(t, names, &nonce, &version, error)?,
            (Book::Delta(p), RequestKind::Delta { subscribe, unsubscribe, initial }) => {
                p.on_request(t, subscribe, unsubscribe, initial, &nonce, error)?
            }
            // Each method decodes its own request type, and its stream keeps
            // that variant's book: nothing else comes.
            _ => return Ok(()),
        };
        match verdict {
            Verdict::Subscribe | Verdict::Ack { .. } => {}
            Verdict::Nack { version, message } => {
                Metrics::inc(&xds.nacks[t.index()]);
                warn!(
                    consumer = %self.consumer.consumer_id, peer = %self.peer, r#type = t.label(), kept_version = %version,
                    error = %message, "xDS client refused a response (NACK); it keeps its last good config"
                );
            }
            Verdict::Repeated => {}
            Verdict::Stale => Metrics::inc(&xds.stale),
        }
        self.rewatch_if_changed()
    }

    /// The namespace and service a resource name stands for: `service` in
    /// the stream's namespace, or `namespace/service`. `None`: not a valid
    /// name, so a resource that does not exist.
    fn resolve(&self, name: &str) -> Option<(String, String)> {
        let own = self.namespace.as_deref().unwrap_or_default();
        let (namespace, service) = name.split_once('/').unwrap_or((own, name));
        validate::service_ref(namespace, service, &self.api.registry().config().limits).ok()
    }

    /// Watches what the client now asks for, if that changed: for each
    /// namespace it names, a new watch (a consumer record naming the new
    /// services, or the whole namespace for a wildcard) replaces the old one.
    fn rewatch_if_changed(&mut self) -> Result<(), StreamError> {
        if !self.book.want_mut().take_resubscribed() {
            return Ok(());
        }
        let named: BTreeSet<String> =
            self.book.want().watched().into_iter().filter(|n| self.resolve(n).is_some()).collect();
        let mut want: BTreeMap<String, Watching> = BTreeMap::new();
        for name in &named {
            if let Some((namespace, service)) = self.resolve(name)
                && let Watching::Services(s) =
                    want.entry(namespace).or_insert_with(|| Watching::Services(BTreeSet::new()))
            {
                s.insert(service);
            }
        }
        if self.book.want().any_wildcard() {
            // Every service of the stream's namespace, those to come included
            // (the watch checks a read grant on all of it).
            want.insert(self.namespace.clone().unwrap_or_default(), Watching::Namespace);
        }
        if want != self.watching {
            for (namespace, w) in &want {
                if self.watching.get(namespace) != Some(w) {
                    let services = match w {
                        Watching::Services(s) => s.iter().cloned().collect(),
                        Watching::Namespace => Vec::new(),
                    };
                    let rx = self.watch_services(namespace, services)?;
                    self.watch.insert(namespace.clone(), ReceiverStream::new(rx));
                }
            }
            for namespace in self.watching.keys() {
                if !want.contains_key(namespace) {
                    self.watch.remove(namespace);
                }
            }
            self.watching = want;
            self.book.want_mut().touch_all();
        }
        // Slots for the names asked for; a wildcard's come and go with the
        // responses that list them (`send_due`).
        if !self.book.want().any_wildcard() {
            self.retain_slots(&named);
        }
        for name in named {
            self.slot(&name);
        }
        Ok(())
    }

    fn watch_services(&self, namespace: &str, services: Vec<String>) -> Result<mpsc::Receiver<WatchItem>, StreamError> {
        let request =
            v1::SubscribeRequest { namespace: namespace.into(), services, consumer: Some(self.consumer.clone()) };
        Ok(self.api.watch(&self.caller, request, Some(self.peer))?)
    }

    /// The slot of the resource `name`, taken from the cache the first
    /// time; `None` if the name is not valid.
    fn slot(&mut self, name: &str) -> Option<Arc<Slot>> {
        if let Some(slot) = self.slots.get(name) {
            return Some(slot.clone());
        }
        let (namespace, service) = self.resolve(name)?;
        let slot = self.cache.slot(&namespace, &service, name);
        self.slots.insert(name.to_string(), slot.clone());
        Some(slot)
    }

    /// Gives back the slots of names not in `keep`.
    fn retain_slots(&mut self, keep: &BTreeSet<String>) {
        let gone: Vec<String> = self.slots.keys().filter(|s| !keep.contains(*s)).cloned().collect();
        for s in gone {
            if let Some(slot) = self.slots.remove(&s) {
                self.cache.release(slot);
            }
        }
    }

    fn on_frame(&mut self, namespace: &str, frame: &SubscribeFrame) {
        match FrameKind::decode(frame.0.clone()) {
            Ok(FrameKind { snapshot: Some(s), .. }) | Ok(FrameKind { delta: Some(s), .. }) => {
                // The service changed under both of its names.
                if self.namespace.as_deref() == Some(namespace) {
                    self.book.want_mut().touch(&s.service);
                }
                self.book.want_mut().touch(&format!("{namespace}/{}", s.service));
            }
            Ok(FrameKind { drain: Some(d), .. }) if self.drain_at.is_none() => {
                self.drain_at = Some(Instant::now() + Duration::from_millis(u64::from(d.delay_ms)));
            }
            // Progress keepalives: xDS has none of its own to map them to.
            _ => {}
        }
    }

    /// Sends the first response owed, in the order clusters, endpoints,
    /// listeners, routes.
    fn send_due(&mut self, permit: mpsc::Permit<'_, Result<AdsFrame, Status>>) {
        let namespace = self.namespace.clone().unwrap_or_default();
        for t in ResourceType::ALL {
            if !self.book.want().maybe_due(t) {
                continue;
            }
            // Delta, and state of the world's endpoints and routes, compare
            // only the names that changed, when they can: a stream asking
            // for many resources is not walked whole at every change of one
            // of them. (Never for a wildcard: `changed_only` gives none then.)
            let changed = match &self.book {
                Book::Sotw(_) if t.whole_in_sotw() => None,
                book => book.want().changed_only(t).cloned(),
            };
            let named: BTreeSet<String> =
                changed.unwrap_or_else(|| self.book.want().names(t).map(String::from).collect());
            let names: Vec<String> = if self.book.want().is_wildcard(t) {
                // Every service of the namespace that has instances. The
                // listing walks the views: a wildcard is for the few Envoys
                // of a fleet, not for every client.
                let mut all: BTreeSet<String> =
                    self.api.registry().views().list(&namespace).into_iter().map(|s| s.service).collect();
                all.extend(named.iter().cloned());
                let mut keep = all.clone();
                keep.extend(self.book.want().watched());
                self.retain_slots(&keep);
                all.into_iter().collect()
            } else {
                named.iter().cloned().collect()
            };
            // What exists of each name now.
            let mut current = Vec::with_capacity(names.len());
            for name in names {
                let now = self.slot(&name).and_then(|slot| self.cache.current(&slot));
                current.push((name, now));
            }
            let frame = match &mut self.book {
                Book::Sotw(p) => {
                    let mut now = Sent::new();
                    let mut bytes = HashMap::new();
                    for (name, r) in current {
                        if let Some(r) = r {
                            now.insert(name.clone(), if t.follows_instances() { r.revision } else { 0 });
                            bytes.insert(name, r.get(t).clone());
                        }
                    }
                    let Some(send) = p.response(t, &now) else { continue };
                    let resources = send.keys().filter_map(|name| bytes.remove(name)).collect();
                    let version = p.record_sent(t, send);
                    AdsFrame::Sotw(DiscoveryFrame {
                        nonce: version.clone(),
                        version_info: version,
                        resources,
                        type_url: t.type_url(),
                    })
                }
                Book::Delta(p) => {
                    let mut now = BTreeMap::new();
                    let mut bytes = HashMap::new();
                    for (name, r) in current {
                        match r {
                            Some(r) => {
                                now.insert(name.clone(), Some(r.version(t).to_string()));
                                bytes.insert(name, r.get(t).clone());
                            }
                            // Asked for by name and absent: the client is told.
                            None if named.contains(&name) => {
                                now.insert(name, None);
                            }
                            None => {}
                        }
                    }
                    let Some(changes) = p.changes(t, &now) else { continue };
                    let nonce = p.record_sent(t, &changes);
                    let resources = changes
                        .send
                        .into_iter()
                        .filter_map(|(name, version)| {
                            let b = bytes.remove(&name)?;
                            Some((name, version, b))
                        })
                        .collect();
                    AdsFrame::Delta(DeltaFrame {
                        system_version_info: nonce.clone(),
                        resources,
                        type_url: t.type_url(),
                        nonce,
                        removed: changes.removed,
                    })
                }
            };
            permit.send(Ok(frame));
            Metrics::inc(&self.api.registry().metrics.xds.responses);
            return;
        }
    }
}

/// Whether tonic refused what the client sent, rather than losing the
/// client: worth telling it why, and counting.
fn refused(s: &Status) -> bool {
    matches!(s.code(), tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::Internal)
}

/// The namespace and consumer record of a stream, from its bootstrap's node.
fn consumer_of(node: Option<&Node>) -> Result<(String, v1::ConsumerInfo), StreamError> {
    let mut info = v1::ConsumerInfo::default();
    info.metadata.insert("protocol".into(), "xds".into());
    let Some(node) = node else { return Ok((String::new(), info)) };
    let namespace = match node.metadata.as_ref().and_then(|m| m.fields.get("namespace")).and_then(|v| v.kind.as_ref()) {
        None => String::new(),
        Some(Kind::StringValue(s)) => s.clone(),
        Some(_) => return Err(StreamError::NamespaceNotText),
    };
    info.consumer_id = node.id.clone();
    if let Some(l) = &node.locality {
        for (key, value) in [("zone", &l.zone), ("region", &l.region)] {
            if !value.is_empty() {
                info.metadata.insert(key.into(), value.clone());
            }
        }
    }
    if !node.cluster.is_empty() {
        info.metadata.insert("cluster".into(), node.cluster.clone());
    }
    if !node.user_agent_name.is_empty() {
        let mut agent = node.user_agent_name.clone();
        // Metadata values are bounded; a version string is not.
        if let Some(envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(v)) =
            &node.user_agent_version_type
        {
            agent = format!("{agent} {v}");
        }
        info.metadata.insert("user_agent".into(), agent.chars().take(256).collect());
    }
    Ok((namespace, info))
}

/// The parts of a `SubscribeResponse` a stream looks at: which service a
/// snapshot or delta is about, and a drain's delay. Decoding skips the
/// instances (length-delimited fields are stepped over, not read).
#[derive(Clone, PartialEq, Message)]
struct FrameKind {
    #[prost(message, optional, tag = "1")]
    snapshot: Option<ServiceRef>,
    #[prost(message, optional, tag = "2")]
    delta: Option<ServiceRef>,
    #[prost(message, optional, tag = "4")]
    drain: Option<DrainRef>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceRef {
    #[prost(string, tag = "2")]
    service: String,
}

#[derive(Clone, PartialEq, Message)]
struct DrainRef {
    #[prost(uint32, tag = "2")]
    delay_ms: u32,
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    use super::*;

    #[test]
    fn frames_are_read_for_their_service_and_drain() {
        let snap = v1::SubscribeResponse {
            kind: Some(v1::subscribe_response::Kind::Snapshot(v1::ServiceSnapshot {
                namespace: "ns".into(),
                service: "orders".into(),
                instances: vec![v1::Instance { host: "10.0.0.1".into(), ..Default::default() }],
                revision: 4,
                freshness: None,
            })),
        };
        let k = FrameKind::decode(SubscribeFrame::encode(&snap).0).expect("decodes");
        assert_eq!(k.snapshot.map(|s| s.service).as_deref(), Some("orders"));
        let delta = v1::SubscribeResponse {
            kind: Some(v1::subscribe_response::Kind::Delta(v1::ServiceDelta {
                service: "pay".into(),
                ..Default::default()
            })),
        };
        let k = FrameKind::decode(SubscribeFrame::encode(&delta).0).expect("decodes");
        assert_eq!(k.delta.map(|s| s.service).as_deref(), Some("pay"));
        let drain = v1::SubscribeResponse {
            kind: Some(v1::subscribe_response::Kind::Drain(v1::Drain { delay_ms: 250, ..Default::default() })),
        };
        let k = FrameKind::decode(SubscribeFrame::encode(&drain).0).expect("decodes");
        assert_eq!(k.drain.map(|d| d.delay_ms), Some(250));
    }

    #[test]
    fn the_node_names_the_consumer_and_its_namespace() {
        let text = |s: &str| Value { kind: Some(Kind::StringValue(s.into())) };
        let node = Node {
            id: "checkout-7".into(),
            locality: Some(Locality { zone: "eu-1a".into(), ..Default::default() }),
            metadata: Some(Struct { fields: [("namespace".to_string(), text("payments"))].into() }),
            ..Default::default()
        };
        let (ns, info) = consumer_of(Some(&node)).expect("valid");
        assert_eq!(ns, "payments");
        assert_eq!(info.consumer_id, "checkout-7");
        assert_eq!(info.metadata.get("zone").map(String::as_str), Some("eu-1a"));
        assert_eq!(info.metadata.get("protocol").map(String::as_str), Some("xds"));

        let (ns, _) = consumer_of(None).expect("no node is fine");
        assert_eq!(ns, "", "the default namespace");
        let number = Node {
            metadata: Some(Struct {
                fields: [("namespace".to_string(), Value { kind: Some(Kind::NumberValue(1.0)) })].into(),
            }),
            ..Default::default()
        };
        assert!(matches!(consumer_of(Some(&number)), Err(StreamError::NamespaceNotText)));
    }
}
