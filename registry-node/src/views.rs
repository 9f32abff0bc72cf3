//! Per-service views of the merged registry, and the fan-out to subscribers.
//!
//! Each service has a [`ServiceView`]: its instances, a revision, the subscribers
//! watching it and a cached encoded snapshot. The registry's single writer applies
//! merged-view changes here; each change to a service becomes one delta, encoded
//! once into a [`SubscribeFrame`] that every subscriber's stream shares.
//!
//! Revisions come from one node-wide counter, so a service's revision only grows,
//! even if its view is dropped and created again; each delta names the revision it
//! follows (`prev_revision`) so a consumer can check it missed nothing.
//!
//! A subscriber's stream is a bounded channel that the writer fills directly.
//! When it is full, the subscriber is marked as needing a snapshot of that
//! service and nothing more is queued for it; its task waits for room, then sends
//! one fresh snapshot (taken under the view's lock, so nothing overtakes it),
//! which replaces everything it missed. Memory per subscriber stays bounded and no
//! change is silently lost.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;
use registry_proto::{GetServiceFrame, SubscribeFrame, encode, v1};
use registry_store::{EncodedInstance, Key, Record, ViewChange};
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;

/// `(namespace, service)`.
pub type ServiceKey = (Arc<str>, Arc<str>);

/// Seeded per process (names come from clients) and cheaper than SipHash on
/// the short names these maps are keyed by.
type Hasher = foldhash::quality::RandomState;

/// A service's instances by id. Unordered: a node loading a million
/// instances inserts each in O(1) instead of descending a B-tree of string
/// comparisons, and no reply promises an order.
type Instances = HashMap<Arc<str>, EncodedInstance, Hasher>;

/// Net changes to one service's instances: the record, or `None` for removed.
type NetChanges = HashMap<Arc<str>, Option<EncodedInstance>, Hasher>;

/// What a watcher's queue holds: a shared pre-encoded frame, or why the node
/// ended the watch (see [`crate::api::watch`]).
pub type StreamItem = crate::api::WatchItem;

#[derive(Debug, Default)]
struct Pending {
    /// Services whose next message to this subscriber must be a snapshot.
    needs_snapshot: BTreeSet<ServiceKey>,
    /// Services this subscriber has had a snapshot of.
    known: HashSet<ServiceKey>,
}

/// The writer's side of one Subscribe stream.
///
/// Deltas go straight into the stream's bounded channel (the one the gRPC
/// layer reads), so a push costs one `try_send` and no task wake-up of ours.
#[derive(Debug)]
pub struct Subscriber {
    pub id: u64,
    tx: mpsc::Sender<StreamItem>,
    pending: Mutex<Pending>,
    /// Woken when a snapshot is needed.
    pub notify: Notify,
}

impl Subscriber {
    /// Services that need a snapshot now.
    pub fn needs(&self) -> Vec<ServiceKey> {
        self.pending.lock().needs_snapshot.iter().cloned().collect()
    }

    /// The sending side of the stream, for the task that serves it.
    pub fn sender(&self) -> mpsc::Sender<StreamItem> {
        self.tx.clone()
    }

    fn mark_needs(&self, service: &ServiceKey) {
        let mut p = self.pending.lock();
        p.needs_snapshot.insert(service.clone());
        drop(p);
        self.notify.notify_one();
    }

    fn deliver(&self, service: &ServiceKey, frame: &SubscribeFrame, metrics: &Metrics) {
        let mut p = self.pending.lock();
        if !p.known.contains(service) || p.needs_snapshot.contains(service) {
            // First sight of a service (namespace watchers) or already behind:
            // the snapshot it will get covers this change.
            p.needs_snapshot.insert(service.clone());
            drop(p);
            self.notify.notify_one();
            return;
        }
        match self.tx.try_send(Ok(frame.clone())) {
            Ok(()) => Metrics::inc(&metrics.pushes),
            Err(mpsc::error::TrySendError::Full(_)) => {
                p.needs_snapshot.insert(service.clone());
                drop(p);
                Metrics::inc(&metrics.subscriber_resyncs);
                self.notify.notify_one();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Instances counted by (effective) status: unspecified counts as up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub up: u32,
    pub down: u32,
    pub starting: u32,
    pub out_of_service: u32,
}

impl StatusCounts {
    fn add(&mut self, status: v1::Status) {
        match status.effective() {
            v1::Status::Down => self.down += 1,
            v1::Status::Starting => self.starting += 1,
            v1::Status::OutOfService => self.out_of_service += 1,
            _ => self.up += 1,
        }
    }
}

/// One service's view.
#[derive(Debug, Default)]
pub struct ServiceView {
    pub revision: u64,
    pub instances: Instances,
    subscribers: HashMap<u64, Arc<Subscriber>>,
    snapshot: Option<SubscribeFrame>,
}

/// What changed lately in one namespace: for each instance added, modified
/// or deleted in the last `retention_ms`, its latest change (an instance
/// added then modified reads as added; then deleted, as deleted). Eureka's
/// `/apps/delta` is read from it. Kept only when asked for
/// ([`Views::keep_changes`]). It holds names, never records: its memory is
/// bounded by `MAX_CHANGES` entries however big or busy the instances are
/// (an overflow drops the oldest, and a Eureka client whose delta then does
/// not add up fetches everything, as it would from Eureka).
#[derive(Debug)]
pub struct ChangeLog {
    namespace: Arc<str>,
    retention_ms: u64,
    inner: Mutex<LogInner>,
}

/// An instance of the logged namespace: (service, instance id).
type InstanceName = (Arc<str>, Arc<str>);

#[derive(Debug, Default)]
struct LogInner {
    /// Changes in time order: when, and which instance.
    order: std::collections::VecDeque<(u64, Arc<str>, Arc<str>)>,
    /// The latest change of each instance: when, and what.
    latest: HashMap<InstanceName, (u64, ChangeAction), Hasher>,
}

/// One change of a [`ChangeLog`]: the latest of an instance.
#[derive(Clone, Debug)]
pub struct LoggedChange {
    pub at_unix_ms: u64,
    pub service: Arc<str>,
    pub instance_id: Arc<str>,
    pub action: ChangeAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeAction {
    Added,
    Modified,
    Deleted,
}

impl ChangeLog {
    /// The most changes kept, however recent (bounds memory under churn).
    pub const MAX_CHANGES: usize = 200_000;

    fn record(&self, service: &Arc<str>, id: &Arc<str>, action: ChangeAction) {
        let now = unix_ms();
        let mut inner = self.inner.lock();
        let key = (service.clone(), id.clone());
        // Added, then changed again within the window: still news as added;
        // whatever came before a deletion, it is deleted.
        let action = match (inner.latest.get(&key).map(|(_, a)| *a), action) {
            (Some(ChangeAction::Added), ChangeAction::Modified) => ChangeAction::Added,
            (_, a) => a,
        };
        inner.latest.insert(key, (now, action));
        inner.order.push_back((now, service.clone(), id.clone()));
        self.trim(&mut inner, now);
    }

    fn trim(&self, inner: &mut LogInner, now: u64) {
        while let Some((at, _, _)) = inner.order.front() {
            if *at + self.retention_ms >= now && inner.order.len() <= Self::MAX_CHANGES {
                break;
            }
            let Some((at, service, id)) = inner.order.pop_front() else { break };
            let key = (service, id);
            // A later change of the same instance is still in the log.
            if inner.latest.get(&key).is_some_and(|(latest, _)| *latest <= at) {
                inner.latest.remove(&key);
            }
        }
    }

    /// The latest change of each instance changed within the retention.
    pub fn recent(&self) -> Vec<LoggedChange> {
        let mut inner = self.inner.lock();
        self.trim(&mut inner, unix_ms());
        let mut out: Vec<LoggedChange> = inner
            .latest
            .iter()
            .map(|((service, id), (at, action))| LoggedChange {
                at_unix_ms: *at,
                service: service.clone(),
                instance_id: id.clone(),
                action: *action,
            })
            .collect();
        out.sort_by_key(|c| c.at_unix_ms);
        out
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// All service views of the node.
#[derive(Debug)]
pub struct Views {
    map: DashMap<ServiceKey, ServiceView, Hasher>,
    /// Subscribers watching a whole namespace.
    watchers: DashMap<Arc<str>, HashMap<u64, Arc<Subscriber>>>,
    revision: AtomicU64,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
    changelog: std::sync::OnceLock<Arc<ChangeLog>>,
    listener: std::sync::OnceLock<Arc<dyn ViewListener>>,
}

/// Told of every change to a service's view, as it happens: what keeps its
/// own index of the views (DNS) stays exact without reading them on every
/// query. Calls come from the registry's writer, after the view changed and
/// before its lock is released, and must be quick and never block.
pub trait ViewListener: Send + Sync + std::fmt::Debug {
    /// `service`'s instances changed; its view is now at `revision`.
    fn changed(&self, service: &ServiceKey, revision: u64);
    /// `service`'s view was forgotten (no instances, no subscribers) at
    /// `revision`. A later view of the same name starts at a higher one.
    fn dropped(&self, service: &ServiceKey, revision: u64);
}

impl Views {
    pub fn new(queue_capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            map: DashMap::with_hasher(Hasher::default()),
            watchers: DashMap::new(),
            revision: AtomicU64::new(0),
            queue_capacity,
            metrics,
            changelog: std::sync::OnceLock::new(),
            listener: std::sync::OnceLock::new(),
        }
    }

    /// Starts telling `listener` of every change, after telling it of every
    /// view that has instances now. One listener per node: false if there
    /// is one already.
    pub fn listen(&self, listener: Arc<dyn ViewListener>) -> bool {
        if self.listener.set(listener.clone()).is_err() {
            return false;
        }
        // Changes from now on are told by the writer; the views that exist
        // are told here. The two may cross: a listener keeps the highest
        // revision it hears of.
        for entry in self.map.iter() {
            if !entry.value().instances.is_empty() {
                listener.changed(entry.key(), entry.value().revision);
            }
        }
        true
    }

    /// Starts keeping a [`ChangeLog`] of `namespace` (once per node; later
    /// calls get the first log).
    pub fn keep_changes(&self, namespace: &str, retention_ms: u64) -> Arc<ChangeLog> {
        self.changelog
            .get_or_init(|| Arc::new(ChangeLog { namespace: namespace.into(), retention_ms, inner: Mutex::default() }))
            .clone()
    }

    /// A new subscriber, and the receiving end of its stream.
    pub fn new_subscriber(&self, id: u64) -> (Arc<Subscriber>, mpsc::Receiver<StreamItem>) {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let sub = Subscriber { id, tx, pending: Mutex::new(Pending::default()), notify: Notify::new() };
        (Arc::new(sub), rx)
    }

    /// Watches the given services; the first message for each is a snapshot.
    pub fn watch_services(&self, sub: &Arc<Subscriber>, namespace: &str, services: &[String]) {
        for s in services {
            let key: ServiceKey = (namespace.into(), s.as_str().into());
            let mut view = self.map.entry(key.clone()).or_default();
            view.subscribers.insert(sub.id, sub.clone());
            sub.mark_needs(&key);
        }
    }

    /// Watches every service of a namespace, present and future.
    pub fn watch_namespace(&self, sub: &Arc<Subscriber>, namespace: &str) {
        self.watchers.entry(namespace.into()).or_default().insert(sub.id, sub.clone());
        for entry in self.map.iter() {
            if &*entry.key().0 == namespace && !entry.value().instances.is_empty() {
                sub.mark_needs(entry.key());
            }
        }
    }

    pub fn unwatch(&self, sub: &Subscriber, namespace: &str, services: &[String]) {
        if services.is_empty() {
            if let Some(mut w) = self.watchers.get_mut(namespace) {
                w.remove(&sub.id);
            }
            self.watchers.remove_if(namespace, |_, w| w.is_empty());
            return;
        }
        for s in services {
            let key: ServiceKey = (namespace.into(), s.as_str().into());
            if let Some(mut view) = self.map.get_mut(&key) {
                view.subscribers.remove(&sub.id);
            }
            self.drop_if_unused(&key);
        }
    }

    /// Sends the current snapshot of `service` through `permit`, if the
    /// subscriber still needs one. Taken under the view's lock, so every delta
    /// after it is queued behind it and every delta before it is covered.
    /// Returns false if nothing was sent.
    pub fn send_snapshot(
        &self,
        sub: &Subscriber,
        service: &ServiceKey,
        permit: mpsc::Permit<'_, StreamItem>,
        freshness: v1::Freshness,
    ) -> bool {
        let Some(mut view) = self.map.get_mut(service) else {
            // A namespace watcher's service that is gone again: nothing to show.
            let mut p = sub.pending.lock();
            p.needs_snapshot.remove(service);
            p.known.remove(service);
            return false;
        };
        let mut p = sub.pending.lock();
        if !p.needs_snapshot.remove(service) {
            return false;
        }
        p.known.insert(service.clone());
        drop(p);
        let view = &mut *view;
        let revision = view.revision;
        let instances = &view.instances;
        let frame = view.snapshot.get_or_insert_with(|| {
            encode::snapshot(
                &service.0,
                &service.1,
                instances.values().map(EncodedInstance::bytes),
                revision,
                &freshness,
            )
        });
        permit.send(Ok(frame.clone()));
        Metrics::inc(&self.metrics.pushes);
        true
    }

    /// Instances and revision of one service (empty and 0 if unknown).
    pub fn get(&self, namespace: &str, service: &str) -> (u64, Vec<v1::Instance>) {
        let key: ServiceKey = (namespace.into(), service.into());
        match self.map.get(&key) {
            // Records were validated before they were stored; one that does not
            // decode cannot exist, and would be skipped rather than fail the read.
            Some(v) => (v.revision, v.instances.values().filter_map(|i| i.decode().ok()).collect()),
            None => (0, Vec::new()),
        }
    }

    /// The stored instances of one service (none if unknown), as they are:
    /// shared bytes, nothing decoded. A cache of what is built from each
    /// instance keys on them.
    pub fn get_stored(&self, namespace: &str, service: &str) -> Vec<EncodedInstance> {
        let key: ServiceKey = (namespace.into(), service.into());
        self.map.get(&key).map(|v| v.instances.values().cloned().collect()).unwrap_or_default()
    }

    /// The revision of one service (0 if unknown), without reading its
    /// instances: how a cache of what is built from them tells it is current.
    pub fn service_revision(&self, namespace: &str, service: &str) -> u64 {
        let key: ServiceKey = (namespace.into(), service.into());
        self.map.get(&key).map_or(0, |v| v.revision)
    }

    /// What `GetService` answers, written around the instances' stored
    /// encodings (nothing decoded or re-encoded). Wire-identical to the
    /// `GetServiceResponse` of [`Self::get`].
    pub fn get_encoded(&self, namespace: &str, service: &str) -> GetServiceFrame {
        let key: ServiceKey = (namespace.into(), service.into());
        match self.map.get(&key) {
            Some(v) => {
                encode::get_service(namespace, service, v.instances.values().map(EncodedInstance::bytes), v.revision)
            }
            None => encode::get_service(namespace, service, std::iter::empty(), 0),
        }
    }

    /// Services of a namespace that have instances, sorted by name.
    pub fn list(&self, namespace: &str) -> Vec<v1::ServiceSummary> {
        let mut out: Vec<v1::ServiceSummary> = self
            .map
            .iter()
            .filter(|e| &*e.key().0 == namespace && !e.value().instances.is_empty())
            .map(|e| v1::ServiceSummary {
                service: e.key().1.to_string(),
                instance_count: e.value().instances.len() as u32,
                revision: e.value().revision,
            })
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    /// The node-wide revision: it changes whenever any service's view does
    /// (dashboards poll it to skip work when nothing changed).
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// Instances by status: of one service, or of every service of the node.
    pub fn status_counts(&self, service: Option<(&str, &str)>) -> StatusCounts {
        let mut counts = StatusCounts::default();
        match service {
            Some((namespace, service)) => {
                let key: ServiceKey = (namespace.into(), service.into());
                if let Some(v) = self.map.get(&key) {
                    v.instances.values().for_each(|i| counts.add(i.status()));
                }
            }
            None => self.map.iter().for_each(|e| e.value().instances.values().for_each(|i| counts.add(i.status()))),
        }
        counts
    }

    /// Every namespace with instances: (name, services with instances,
    /// instances), sorted by name.
    pub fn namespaces(&self) -> Vec<(String, u64, u64)> {
        let mut by: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
        for e in self.map.iter() {
            let n = e.value().instances.len() as u64;
            if n > 0 {
                let c = by.entry(e.key().0.to_string()).or_default();
                *c = (c.0 + 1, c.1 + n);
            }
        }
        by.into_iter().map(|(ns, (s, i))| (ns, s, i)).collect()
    }

    /// (instances, services with at least one instance).
    pub fn counts(&self) -> (u64, u64) {
        self.map.iter().fold((0, 0), |(i, s), e| {
            let n = e.value().instances.len() as u64;
            (i + n, s + u64::from(n > 0))
        })
    }

    /// Applies merged-view changes of instances, in order: one delta per touched
    /// service, encoded once and queued to each subscriber.
    /// `freshness` is asked only if a delta is encoded (someone watches).
    pub fn apply(&self, changes: Vec<ViewChange>, freshness: impl Fn() -> v1::Freshness) {
        // Net effect per service (in first-touch order) and instance id.
        let mut runs: Vec<(ServiceKey, NetChanges)> = Vec::new();
        let mut index: HashMap<ServiceKey, usize, Hasher> = HashMap::default();
        for change in changes {
            let (key, value) = match change {
                ViewChange::Upsert { key: Key::Instance(k), record: Record::Instance(i), .. } => (k, Some(i)),
                ViewChange::Remove { key: Key::Instance(k) } => (k, None),
                _ => continue,
            };
            // Changes come in runs of one service (a session's batch, a page of
            // a slice transfer); a run's names are the same interned pointers.
            let run = match runs.last() {
                Some(((ns, svc), _)) if Arc::ptr_eq(ns, &key.namespace) && Arc::ptr_eq(svc, &key.service) => {
                    runs.len() - 1
                }
                _ => *index.entry((key.namespace.clone(), key.service.clone())).or_insert_with_key(|svc| {
                    runs.push((svc.clone(), HashMap::default()));
                    runs.len() - 1
                }),
            };
            runs[run].1.insert(key.id.clone(), value);
        }
        for (svc, changes) in runs {
            self.apply_service(&svc, changes, &freshness);
        }
    }

    fn apply_service(&self, svc: &ServiceKey, changes: NetChanges, freshness: &impl Fn() -> v1::Freshness) {
        let mut view = self.map.entry(svc.clone()).or_default();
        let mut upserted = Vec::new();
        let mut removed = Vec::new();
        let log = self.changelog.get().filter(|l| l.namespace == svc.0);
        for (id, value) in changes {
            match value {
                Some(instance) => {
                    upserted.push(instance.clone());
                    if let Some(log) = log {
                        let action =
                            if view.instances.contains_key(&id) { ChangeAction::Modified } else { ChangeAction::Added };
                        log.record(&svc.1, &id, action);
                    }
                    view.instances.insert(id, instance);
                }
                None => {
                    if view.instances.remove(&id).is_some() {
                        if let Some(log) = log {
                            log.record(&svc.1, &id, ChangeAction::Deleted);
                        }
                        removed.push(v1::InstanceKey {
                            namespace: svc.0.to_string(),
                            service: svc.1.to_string(),
                            instance_id: id.to_string(),
                        });
                    }
                }
            }
        }
        if upserted.is_empty() && removed.is_empty() {
            return;
        }
        let prev_revision = view.revision;
        let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        view.revision = revision;
        view.snapshot = None;
        if let Some(listener) = self.listener.get() {
            listener.changed(svc, revision);
        }
        let watched = self.watchers.get(&svc.0).is_some_and(|w| !w.is_empty());
        if view.subscribers.is_empty() && !watched {
            // Nobody to tell (the common case while a node loads the registry):
            // skip encoding the delta.
            let unused = view.instances.is_empty();
            drop(view);
            if unused {
                self.drop_if_unused(svc);
            }
            return;
        }
        let frame = encode::delta(
            &svc.0,
            &svc.1,
            upserted.iter().map(EncodedInstance::bytes),
            &removed,
            revision,
            prev_revision,
            &freshness(),
        );
        for sub in view.subscribers.values() {
            sub.deliver(svc, &frame, &self.metrics);
        }
        if let Some(watchers) = self.watchers.get(&svc.0) {
            for sub in watchers.values() {
                sub.deliver(svc, &frame, &self.metrics);
            }
        }
        let unused = view.instances.is_empty() && view.subscribers.is_empty();
        drop(view);
        if unused {
            self.drop_if_unused(svc);
        }
    }

    /// Forgets a view with no instances and no subscribers, so churn of service
    /// names does not grow memory. Namespace watchers that knew it will get a
    /// snapshot if it comes back.
    fn drop_if_unused(&self, svc: &ServiceKey) {
        let removed = self.map.remove_if(svc, |_, v| v.instances.is_empty() && v.subscribers.is_empty());
        if let (Some((_, view)), Some(listener)) = (&removed, self.listener.get()) {
            listener.dropped(svc, view.revision);
        }
        if removed.is_some()
            && let Some(watchers) = self.watchers.get(&svc.0)
        {
            for sub in watchers.values() {
                let mut p = sub.pending.lock();
                p.known.remove(svc);
                p.needs_snapshot.remove(svc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> ChangeLog {
        ChangeLog { namespace: "ns".into(), retention_ms: 60_000, inner: Mutex::default() }
    }

    fn latest(log: &ChangeLog) -> Vec<(String, ChangeAction)> {
        let mut out: Vec<(String, ChangeAction)> =
            log.recent().into_iter().map(|c| (c.instance_id.to_string(), c.action)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn the_change_log_keeps_the_latest_change_of_each_instance() {
        let log = log();
        let svc: Arc<str> = "orders".into();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        log.record(&svc, &a, ChangeAction::Added);
        log.record(&svc, &a, ChangeAction::Modified);
        log.record(&svc, &b, ChangeAction::Modified);
        log.record(&svc, &b, ChangeAction::Deleted);
        log.record(&svc, &c, ChangeAction::Deleted);
        log.record(&svc, &c, ChangeAction::Added);
        assert_eq!(
            latest(&log),
            vec![
                ("a".to_string(), ChangeAction::Added),
                ("b".to_string(), ChangeAction::Deleted),
                ("c".to_string(), ChangeAction::Added)
            ]
        );
    }

    #[test]
    fn the_change_log_is_bounded_however_busy() {
        let log = log();
        let svc: Arc<str> = "orders".into();
        for n in 0..(ChangeLog::MAX_CHANGES + 10_000) {
            let id: Arc<str> = format!("i-{n}").into();
            log.record(&svc, &id, ChangeAction::Added);
        }
        let inner = log.inner.lock();
        assert!(inner.order.len() <= ChangeLog::MAX_CHANGES, "{}", inner.order.len());
        assert!(inner.latest.len() <= ChangeLog::MAX_CHANGES, "{}", inner.latest.len());
        // The newest are kept.
        assert!(inner.latest.contains_key(&(svc.clone(), format!("i-{}", ChangeLog::MAX_CHANGES + 9_999).into())));
    }
}
