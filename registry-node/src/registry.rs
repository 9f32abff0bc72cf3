//! [`Registry`]: the node's shared state, behind one small API that the gRPC
//! layer, the session tasks and the lease reaper use.
//!
//! Writes go through one mutex around the store and the ownership tables: a write
//! is a few hash-map operations, so a single writer costs little and makes every
//! change, its revision and its fan-out happen in one order. Reads never take that
//! mutex: they are served from [`Views`](crate::views::Views), a `DashMap` of
//! per-service views that the writer keeps current.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_sync::{SliceCut, SyncShared};
use dashmap::DashMap;
use parking_lot::Mutex;
use registry_proto::v1;
use registry_store::{Change, Entry, InstanceKey, Key, Origin, Outcome, Record, SliceStats, Store, ViewChange};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::metrics::{Gauges, Metrics};
use crate::movers::Movers;
use crate::validate::ValidationError;
use crate::views::Views;

/// Who holds a set of instances: a Register stream or a unary lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u64);

/// Why the registry refused a request. Mapped to a gRPC status in one place
/// (`grpc.rs`).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("session holds {limit} instances, the limit (limits.max_instances_per_session)")]
    TooManyInstances { limit: usize },
    #[error("instance {0} is not registered by this session")]
    NotOwned(String),
    #[error("lease {0:?} is unknown or expired; register the instance again")]
    LeaseNotFound(String),
    #[error("node is shutting down; connect to another node")]
    Draining,
}

/// Milliseconds since the Unix epoch, for versions and display only. Expiry
/// decisions use the monotonic clock.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug)]
struct Lease {
    owner: OwnerId,
    ttl: Duration,
    deadline: Instant,
}

/// Everything written under the write lock.
#[derive(Debug)]
struct State {
    store: Store,
    owner_of: HashMap<InstanceKey, OwnerId>,
    owned: HashMap<OwnerId, HashSet<InstanceKey>>,
    leases: HashMap<String, Lease>,
    lease_deadlines: BTreeSet<(Instant, String)>,
    /// Own-slice changes not yet handed to replication (clustered nodes only).
    outbox: Vec<(u64, Change)>,
    /// Own entries hidden by newer ones elsewhere, purged when due (in order).
    stale: std::collections::VecDeque<(Instant, Key)>,
}

/// The node's registry. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Registry {
    node_id: Arc<str>,
    incarnation: u64,
    config: Arc<NodeConfig>,
    state: Mutex<State>,
    views: Views,
    consumers: DashMap<Arc<str>, HashMap<Arc<str>, Arc<v1::Consumer>>>,
    next_id: AtomicU64,
    draining: AtomicBool,
    pub metrics: Arc<Metrics>,
    clustered: bool,
    local_changed: Notify,
    /// Peer origins whose records are kept only for the orphan grace.
    orphaned: Mutex<HashSet<Origin>>,
    /// Open provider sessions (by owner id), to ask some to move.
    pub sessions: Movers,
    /// Open Subscribe streams (by stream id), to ask some to move.
    pub subscriptions: Movers,
    bus_down: AtomicBool,
    sync: OnceLock<Arc<SyncShared>>,
    /// Where the store's monotonic milliseconds count from.
    epoch: Instant,
}

impl Registry {
    pub fn new(config: Arc<NodeConfig>, incarnation: u64) -> Self {
        let node_id: Arc<str> = config.node_id.as_str().into();
        let metrics = Arc::new(Metrics::default());
        Self {
            state: Mutex::new(State {
                store: Store::new(Origin::new(node_id.clone(), incarnation)),
                owner_of: HashMap::new(),
                owned: HashMap::new(),
                leases: HashMap::new(),
                lease_deadlines: BTreeSet::new(),
                outbox: Vec::new(),
                stale: std::collections::VecDeque::new(),
            }),
            views: Views::new(config.subscriptions.queue_capacity, metrics.clone()),
            consumers: DashMap::new(),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            draining: AtomicBool::new(false),
            clustered: config.clustered(),
            local_changed: Notify::new(),
            orphaned: Mutex::new(HashSet::new()),
            sessions: Movers::default(),
            subscriptions: Movers::default(),
            bus_down: AtomicBool::new(config.clustered()),
            sync: OnceLock::new(),
            node_id,
            incarnation,
            config,
            metrics,
        }
    }

    pub fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn views(&self) -> &Views {
        &self.views
    }

    /// A node-unique id for sessions, leases and subscriptions.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Refuses new sessions and subscriptions once shutdown has begun.
    pub fn check_accepting(&self) -> Result<(), RegistryError> {
        if self.is_draining() { Err(RegistryError::Draining) } else { Ok(()) }
    }

    /// Starts tracking a new owner (a session or a lease).
    pub fn open_owner(&self) -> OwnerId {
        let id = OwnerId(self.next_id());
        self.state.lock().owned.insert(id, HashSet::new());
        id
    }

    /// Registers or updates an instance (already validated) for `owner`.
    /// Returns the version the write got.
    pub fn upsert(&self, owner: OwnerId, instance: v1::Instance) -> Result<u64, RegistryError> {
        let limit = self.config.limits.max_instances_per_session;
        let mut st = self.state.lock();
        let key = st.store.instance_key(&instance.namespace, &instance.service, &instance.instance_id);
        let owned = st.owned.get(&owner).map_or(0, HashSet::len);
        let already = st.owned.get(&owner).is_some_and(|s| s.contains(&key));
        if !already && owned >= limit {
            return Err(RegistryError::TooManyInstances { limit });
        }
        let (version, out) = st.store.put_local(Key::Instance(key.clone()), Record::instance(&instance), wall_ms());
        if let Some(previous) = st.owner_of.insert(key.clone(), owner)
            && previous != owner
            && let Some(keys) = st.owned.get_mut(&previous)
        {
            keys.remove(&key);
        }
        tracing::trace!(key = %display_key(&key), ?owner, version = version.hlc, "registered");
        st.owned.entry(owner).or_default().insert(key);
        self.apply(&mut st, out);
        Metrics::inc(&self.metrics.registrations);
        Ok(version.hlc)
    }

    /// Removes one instance that `owner` registered.
    pub fn remove_owned(&self, owner: OwnerId, key: &InstanceKey) -> Result<u64, RegistryError> {
        let mut st = self.state.lock();
        if st.owner_of.get(key) != Some(&owner) {
            return Err(RegistryError::NotOwned(display_key(key)));
        }
        let version = self.remove_locked(&mut st, key);
        Metrics::inc(&self.metrics.deregistrations);
        Ok(version)
    }

    /// Removes an instance whoever registered it. Returns whether it was there.
    pub fn deregister(&self, key: &InstanceKey) -> bool {
        let mut st = self.state.lock();
        let found = if st.owner_of.contains_key(key) {
            self.remove_locked(&mut st, key);
            true
        } else {
            match st.store.remove_local(&Key::Instance(key.clone()), wall_ms()) {
                Some((_, out)) => {
                    self.apply(&mut st, out);
                    true
                }
                None => false,
            }
        };
        if found {
            Metrics::inc(&self.metrics.deregistrations);
        }
        found
    }

    /// Keys `owner` still holds (keys taken over by newer copies elsewhere
    /// have left it).
    pub fn owned_count(&self, owner: OwnerId) -> usize {
        self.state.lock().owned.get(&owner).map_or(0, HashSet::len)
    }

    /// Forgets an owner without removing its instances (the node is stopping;
    /// its slice goes away with it).
    pub fn abandon(&self, owner: OwnerId) {
        let mut st = self.state.lock();
        for key in st.owned.remove(&owner).unwrap_or_default() {
            if st.owner_of.get(&key) == Some(&owner) {
                st.owner_of.remove(&key);
            }
        }
    }

    /// Ends an owner: every instance it still holds is removed.
    /// `expired` says whether it ended without a goodbye (counted apart).
    pub fn release(&self, owner: OwnerId, expired: bool) -> usize {
        let mut st = self.state.lock();
        let keys = st.owned.remove(&owner).unwrap_or_default();
        // One outcome for all of them, so subscribers get one delta per service.
        let mut all = Outcome::default();
        let now = wall_ms();
        for key in &keys {
            if st.owner_of.get(key) == Some(&owner)
                && let Some((_, out)) = take_out(&mut st, key, now)
            {
                all.extend(out);
            }
        }
        self.apply(&mut st, all);
        let counter = if expired { &self.metrics.expirations } else { &self.metrics.deregistrations };
        counter.fetch_add(keys.len() as u64, Ordering::Relaxed);
        keys.len()
    }

    fn remove_locked(&self, st: &mut State, key: &InstanceKey) -> u64 {
        match take_out(st, key, wall_ms()) {
            Some((version, out)) => {
                self.apply(st, out);
                version.hlc
            }
            None => 0,
        }
    }

    // ------------------------------------------------------------ unary leases

    /// Creates a lease, or renews `lease_id` if given. Returns (lease id, owner, ttl).
    pub fn lease(&self, lease_id: &str, ttl: Duration) -> Result<(String, OwnerId, Duration), RegistryError> {
        let now = Instant::now();
        let mut st = self.state.lock();
        if lease_id.is_empty() {
            let owner = OwnerId(self.next_id());
            let id = format!("{}-{:x}-{}", self.node_id, self.incarnation, owner.0);
            st.owned.insert(owner, HashSet::new());
            st.lease_deadlines.insert((now + ttl, id.clone()));
            st.leases.insert(id.clone(), Lease { owner, ttl, deadline: now + ttl });
            Metrics::inc(&self.metrics.leases_active);
            Ok((id, owner, ttl))
        } else {
            let (owner, ttl) = renew_locked(&mut st, lease_id, now)?;
            Ok((lease_id.to_string(), owner, ttl))
        }
    }

    /// Extends a lease by its TTL.
    pub fn renew(&self, lease_id: &str) -> Result<Duration, RegistryError> {
        let mut st = self.state.lock();
        renew_locked(&mut st, lease_id, Instant::now()).map(|(_, ttl)| ttl)
    }

    /// Ends every lease whose deadline passed; returns how many.
    pub fn expire_leases(&self, now: Instant) -> usize {
        let expired: Vec<OwnerId> = {
            let mut st = self.state.lock();
            let mut owners = Vec::new();
            while let Some((deadline, id)) = st.lease_deadlines.first().cloned() {
                if deadline > now {
                    break;
                }
                st.lease_deadlines.pop_first();
                if let Some(lease) = st.leases.remove(&id) {
                    owners.push(lease.owner);
                }
            }
            owners
        };
        for owner in &expired {
            Metrics::dec(&self.metrics.leases_active);
            self.release(*owner, true);
        }
        expired.len()
    }

    /// Deletes a lease whose instances are gone (e.g. an empty new lease whose
    /// first registration was refused).
    pub fn drop_lease_if_empty(&self, lease_id: &str) {
        let mut st = self.state.lock();
        let Some(lease) = st.leases.get(lease_id) else { return };
        if st.owned.get(&lease.owner).is_some_and(|k| !k.is_empty()) {
            return;
        }
        let (owner, deadline) = (lease.owner, lease.deadline);
        st.leases.remove(lease_id);
        st.lease_deadlines.remove(&(deadline, lease_id.to_string()));
        st.owned.remove(&owner);
        Metrics::dec(&self.metrics.leases_active);
    }

    // ------------------------------------------------------------ consumers

    /// Records a subscription in the consumer directory.
    pub fn add_consumer(&self, namespace: &str, stream: &str, consumer: v1::Consumer) {
        let key = Key::consumer(namespace, stream);
        let mut st = self.state.lock();
        let (_, out) = st.store.put_local(key, Record::Consumer(Arc::new(consumer)), wall_ms());
        self.apply(&mut st, out);
    }

    pub fn remove_consumer(&self, namespace: &str, stream: &str) {
        let key = Key::consumer(namespace, stream);
        let mut st = self.state.lock();
        if let Some((_, out)) = st.store.remove_local(&key, wall_ms()) {
            self.apply(&mut st, out);
        }
    }

    /// Consumers of `namespace` watching `service` (all of them if empty).
    pub fn list_consumers(&self, namespace: &str, service: &str) -> Vec<v1::Consumer> {
        let mut list: Vec<v1::Consumer> = self
            .consumers
            .get(namespace)
            .map(|m| {
                m.values()
                    .filter(|c| service.is_empty() || c.services.is_empty() || c.services.iter().any(|s| s == service))
                    .map(|c| (**c).clone())
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by(|a, b| {
            let id = |c: &v1::Consumer| c.info.as_ref().map(|i| i.consumer_id.clone()).unwrap_or_default();
            id(a).cmp(&id(b)).then(a.since_unix_ms.cmp(&b.since_unix_ms))
        });
        list
    }

    // ------------------------------------------------------------ observation

    /// Own slice statistics (sequence, digest, record count) for Members.
    pub fn own_stats(&self) -> registry_store::SliceStats {
        let st = self.state.lock();
        st.store.slice_stats(st.store.local_id()).expect("own slice always exists")
    }

    pub fn gauges(&self, ready: bool) -> Gauges {
        let (instances, services) = self.views.counts();
        let store_keys = self.state.lock().store.key_count() as u64;
        Gauges { instances, services, store_keys, ready }
    }

    /// Freshness of what this node serves: the age of the oldest peer state it
    /// holds (time since that peer was last heard), and whether part of it is
    /// orphaned or this node is cut off from the bus. A standalone node owns all
    /// its data, so it is always current.
    pub fn freshness(&self) -> v1::Freshness {
        let Some(sync) = self.sync.get() else {
            return v1::Freshness { oldest_origin_age_ms: 0, degraded: false };
        };
        let oldest = sync.peers.lock().iter().filter(|p| !p.retired).map(|p| p.last_heard_age_ms).max();
        let degraded = self.bus_down.load(Ordering::Relaxed) || !self.orphaned.lock().is_empty();
        v1::Freshness { oldest_origin_age_ms: oldest.unwrap_or(0), degraded }
    }

    /// Replication state, once replication runs.
    pub fn sync_state(&self) -> Option<&Arc<SyncShared>> {
        self.sync.get()
    }

    pub fn attach_sync(&self, shared: Arc<SyncShared>) {
        let _ = self.sync.set(shared);
    }

    pub fn bus_connected(&self) -> bool {
        !self.bus_down.load(Ordering::Relaxed)
    }

    /// Purges own tombstones past their TTL (they only hide copies that can no
    /// longer exist), and names no key uses any more.
    pub fn gc_tombstones(&self, ttl_ms: u64) {
        let mut st = self.state.lock();
        let out = st.store.gc_tombstones(wall_ms(), ttl_ms);
        self.apply(&mut st, out);
        st.store.forget_unused_names();
    }

    // ------------------------------------------------------------ replication

    /// Own-slice changes made since the last call, in seq order.
    pub fn take_outbox(&self) -> Vec<(u64, Change)> {
        std::mem::take(&mut self.state.lock().outbox)
    }

    /// The outbox and the own slice's stats, together.
    pub fn outbox_and_stats(&self) -> (Vec<(u64, Change)>, SliceStats) {
        let mut st = self.state.lock();
        let stats = st.store.slice_stats(st.store.local_id()).expect("own slice always exists");
        (std::mem::take(&mut st.outbox), stats)
    }

    /// The own slice with its seq and digest, atomically; grouped by service
    /// (outside the lock) for the peers that load it.
    pub fn own_cut(&self) -> SliceCut {
        let st = self.state.lock();
        let local = st.store.local_id();
        let stats = st.store.slice_stats(local).expect("own slice always exists");
        let mut entries = st.store.slice_entries(local);
        drop(st);
        Store::group_by_service(&mut entries);
        SliceCut { seq: stats.seq, digest: stats.digest, entries }
    }

    pub fn copy_stats(&self, origin: &Origin) -> (u64, u64) {
        let st = self.state.lock();
        st.store.find_origin(origin).and_then(|id| st.store.slice_stats(id)).map_or((0, 0), |s| (s.digest, s.entries))
    }

    /// Applies a peer's changes, in its order.
    pub fn apply_remote(&self, origin: &Origin, changes: Vec<Change>) {
        if tracing::enabled!(tracing::Level::TRACE) {
            for change in &changes {
                tracing::trace!(%origin, change = %describe_change(change), "applying a peer's change");
            }
        }
        let mut st = self.state.lock();
        let id = st.store.origin_id(origin);
        let mut all = Outcome::default();
        for change in changes {
            all.extend(st.store.apply_remote(id, change));
        }
        self.apply(&mut st, all);
    }

    /// The peers whose copies may still be on their way (see
    /// `Store::set_unsettled_writers`).
    pub fn set_unsettled_writers(&self, writers: Vec<u64>) {
        let mut st = self.state.lock();
        let out = st.store.set_unsettled_writers(writers);
        self.apply(&mut st, out);
    }

    pub fn replace_slice(&self, origin: &Origin, entries: Vec<(Key, Entry)>) {
        let mut st = self.state.lock();
        let id = st.store.origin_id(origin);
        let out = st.store.replace_slice(id, entries);
        self.apply(&mut st, out);
    }

    pub fn drop_origin(&self, origin: &Origin) {
        let mut st = self.state.lock();
        if let Some(id) = st.store.find_origin(origin) {
            let out = st.store.drop_origin(id);
            self.apply(&mut st, out);
        }
        drop(st);
        self.orphaned.lock().remove(origin);
    }

    pub fn set_orphaned(&self, origin: &Origin, orphaned: bool) {
        let mut set = self.orphaned.lock();
        if orphaned {
            set.insert(origin.clone());
        } else {
            set.remove(origin);
        }
    }

    pub fn set_bus_connected(&self, connected: bool) {
        self.bus_down.store(!connected, Ordering::Relaxed);
    }

    pub fn own_live(&self) -> u64 {
        self.own_stats().live
    }

    /// Woken whenever the own slice changed (clustered nodes).
    pub fn local_changed(&self) -> &Notify {
        &self.local_changed
    }

    /// Purges own entries that newer entries elsewhere have hidden for
    /// `sync.dead_after_ms`: by then every live node holds the newer entry,
    /// so the purge cannot show anyone a removal. Returns how many.
    ///
    /// Also stops showing peers' copies that their origin dropped as moved
    /// when the copy they moved to has not come within `dead_after_ms` plus
    /// `orphan_grace_ms` (its node is cut off from this one, or died): as
    /// long as a silent peer's records stay.
    pub fn purge_stale(&self, now: Instant) -> usize {
        let mut st = self.state.lock();
        let sync = &self.config.sync;
        let hold = sync.dead_after_ms + sync.orphan_grace_ms;
        let mut all = st.store.sweep_moved(now.saturating_duration_since(self.epoch).as_millis() as u64, hold);
        let mut n = 0;
        while st.stale.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, key)) = st.stale.pop_front() else { break };
            let out = st.store.purge_stale(&key);
            n += usize::from(!out.local.is_empty());
            all.extend(out);
        }
        self.apply(&mut st, all);
        n
    }

    /// Applies what a store operation caused: ownership hand-overs, view
    /// changes (with their fan-out) and consumer directory changes.
    fn apply(&self, st: &mut State, out: Outcome) {
        if self.clustered && !out.local.is_empty() {
            st.outbox.extend(out.local);
            self.local_changed.notify_one();
        }
        if !out.stale.is_empty() {
            let due = Instant::now() + Duration::from_millis(self.config.sync.dead_after_ms);
            st.stale.extend(out.stale.into_iter().map(|k| (due, k)));
        }
        for key in &out.superseded {
            if let Key::Instance(k) = key {
                tracing::trace!(key = %display_key(k), owner = ?st.owner_of.get(k), "own copy superseded by a newer one");
            }
            if let Key::Instance(k) = key
                && let Some(owner) = st.owner_of.remove(k)
                && let Some(keys) = st.owned.get_mut(&owner)
            {
                keys.remove(k);
            }
        }
        let mut instance_changes = Vec::with_capacity(out.view.len());
        for change in out.view {
            match change {
                ViewChange::Upsert { key: Key::Consumer(k), record: Record::Consumer(c), .. } => {
                    self.consumers.entry(k.namespace.clone()).or_default().insert(k.stream.clone(), c);
                }
                ViewChange::Remove { key: Key::Consumer(k) } => {
                    let mut empty = false;
                    if let Some(mut m) = self.consumers.get_mut(&k.namespace) {
                        m.remove(&k.stream);
                        empty = m.is_empty();
                    }
                    if empty {
                        self.consumers.remove_if(&k.namespace, |_, m| m.is_empty());
                    }
                }
                other => {
                    if let ViewChange::Remove { key: Key::Instance(k) } = &other {
                        tracing::trace!(key = %display_key(k), "instance left the merged view");
                    }
                    instance_changes.push(other)
                }
            }
        }
        if !instance_changes.is_empty() {
            self.views.apply(instance_changes, || self.freshness());
        }
    }
}

/// Forgets who owns `key` and removes it from the own slice; the caller applies
/// the outcome (alone, or with others for one delta per service).
fn take_out(st: &mut State, key: &InstanceKey, now: u64) -> Option<(registry_store::Version, Outcome)> {
    let owner = st.owner_of.remove(key);
    let removed = st.store.remove_local(&Key::Instance(key.clone()), now);
    let version = removed.as_ref().map(|(v, _)| v.hlc);
    tracing::trace!(key = %display_key(key), ?owner, ?version, "removed from the own slice");
    removed
}

fn renew_locked(st: &mut State, lease_id: &str, now: Instant) -> Result<(OwnerId, Duration), RegistryError> {
    let lease = st.leases.get_mut(lease_id).ok_or_else(|| RegistryError::LeaseNotFound(lease_id.to_string()))?;
    let old = (lease.deadline, lease_id.to_string());
    lease.deadline = now + lease.ttl;
    let (owner, ttl, deadline) = (lease.owner, lease.ttl, lease.deadline);
    st.lease_deadlines.remove(&old);
    st.lease_deadlines.insert((deadline, lease_id.to_string()));
    Ok((owner, ttl))
}

/// A change in a line of a log: key, version, and what it does.
fn describe_change(change: &Change) -> String {
    let key = |k: &Key| match k {
        Key::Instance(k) => display_key(k),
        Key::Consumer(c) => format!("consumer {}/{}", c.namespace, c.stream),
    };
    match change {
        Change::Put { key: k, entry } => {
            let what = if entry.is_live() { "put" } else { "tombstone" };
            format!("{what} {} v{}.{}", key(k), entry.version.hlc, entry.version.node)
        }
        Change::Purge { key: k } => format!("purge {}", key(k)),
        Change::Moved { key: k, to } => format!("purge {} (moved to v{}.{})", key(k), to.hlc, to.node),
    }
}

pub fn display_key(k: &InstanceKey) -> String {
    format!("{}/{}/{}", k.namespace, k.service, k.id)
}
