//! [`Registry`]: the node's shared state, behind one small API that the gRPC
//! layer, the session tasks and the lease reaper use.
//!
//! Writes go through one mutex around the store and the ownership tables: a write
//! is a few hash-map operations, so a single writer costs little and makes every
//! change, its revision and its fan-out happen in one order. Reads never take that
//! mutex: they are served from [`Views`](crate::views::Views), a `DashMap` of
//! per-service views that the writer keeps current.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_sync::{SliceCut, SyncShared};
use dashmap::DashMap;
use parking_lot::Mutex;
use registry_proto::v1;
use registry_store::{
    Change, Entry, InstanceKey, Key, Origin, OriginId, Outcome, Record, SliceStats, Store, ViewChange,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::NodeConfig;
pub use crate::core::OwnerId;
use crate::core::deadlines::StaleQueue;
use crate::core::{Leases, Ownership};
use crate::metrics::{Gauges, Metrics};
use crate::movers::Movers;
use crate::validate::ValidationError;
use crate::views::Views;

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
    #[error("node is warming up: it has not loaded the registry yet; retry shortly")]
    WarmingUp,
    #[error("{0}")]
    Unauthenticated(crate::auth::AuthFailure),
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<crate::auth::Refusal> for RegistryError {
    fn from(r: crate::auth::Refusal) -> Self {
        match r {
            crate::auth::Refusal::Unauthenticated(f) => RegistryError::Unauthenticated(f),
            denied => RegistryError::PermissionDenied(denied.to_string()),
        }
    }
}

/// Milliseconds since the Unix epoch, for versions and display only. Expiry
/// decisions use the monotonic clock.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Everything written under the write lock.
#[derive(Debug)]
struct State {
    store: Store,
    owners: Ownership,
    leases: Leases,
    /// Own-slice changes not yet handed to replication (clustered nodes only).
    outbox: Vec<(u64, Change)>,
    /// Own entries hidden by newer ones elsewhere, purged when due.
    stale: StaleQueue,
    /// Status overrides shown now, by instance (see `set_status_override`).
    overrides: HashMap<InstanceKey, Arc<v1::StatusOverride>>,
    /// Overrides whose instance is not shown, and when they are to be
    /// dropped (see `drop_gone_overrides`).
    overridden_gone: HashMap<InstanceKey, Instant>,
    /// When `drop_gone_overrides` next has something to do.
    overrides_due: Option<Instant>,
    /// Moved copies the store kept in view, as of the last write (more now:
    /// the reaper has a new deadline).
    moved_seen: usize,
    /// When the reaper will next run (`None`: it sleeps until woken). A new
    /// deadline wakes it only if it is sooner, so a registration under a new
    /// lease (due a whole TTL later) costs the reaper nothing.
    reaper_at: Option<Instant>,
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
    /// Woken when a deadline may have come nearer (a lease granted, a copy
    /// to purge or a moved copy to age): the reaper sleeps until the next.
    deadlines_changed: Notify,
    /// Woken when newer copies elsewhere took over own instances: ended
    /// sessions waiting for their handover look again.
    taken_over: Notify,
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
                owners: Ownership::default(),
                leases: Leases::default(),
                outbox: Vec::new(),
                stale: StaleQueue::new(Duration::from_millis(config.sync.dead_after_ms)),
                overrides: HashMap::new(),
                overridden_gone: HashMap::new(),
                overrides_due: None,
                moved_seen: 0,
                reaper_at: None,
            }),
            views: Views::new(config.subscriptions.queue_capacity, metrics.clone()),
            consumers: DashMap::new(),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            draining: AtomicBool::new(false),
            clustered: config.clustered(),
            local_changed: Notify::new(),
            deadlines_changed: Notify::new(),
            taken_over: Notify::new(),
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
        self.state.lock().owners.open(id);
        id
    }

    /// Registers or updates an instance (already validated) for `owner`,
    /// written by `writer`. Returns the version the write got.
    pub fn upsert(&self, owner: OwnerId, mut instance: v1::Instance, writer: &Writer) -> Result<u64, RegistryError> {
        let limit = self.config.limits.max_instances_per_session;
        let mut st = self.state.lock();
        let key = st.store.instance_key(&instance.namespace, &instance.service, &instance.instance_id);
        if !st.owners.within_limit(owner, &key, limit) {
            return Err(RegistryError::TooManyInstances { limit });
        }
        // An owner updating what it holds wrote the shown record itself (an
        // owner has one principal): no need to decode it to ask whose it is.
        if !st.owners.holds(owner, &key) {
            check_writer(&st, &key, writer, "replace")?;
        }
        if let Some(p) = &writer.principal {
            instance.principal = p.to_string();
        }
        let (version, out) = st.store.put_local(Key::Instance(key.clone()), Record::instance(&instance), wall_ms());
        tracing::trace!(key = %display_key(&key), ?owner, version = version.hlc, "registered");
        st.owners.claim(key, owner);
        self.apply(&mut st, out);
        Metrics::inc(&self.metrics.registrations);
        Ok(version.hlc)
    }

    /// Sets (`Some`) or clears (`None`) an admin's status override of `key`,
    /// replicated to every node; the instance shows the override's status
    /// until it is cleared or its instance is long gone
    /// ([`Self::drop_gone_overrides`]), whatever its provider sends. Returns whether
    /// anything changed (clearing what is not set changes nothing). A writer
    /// that is not an admin of the service may only override its own
    /// instance ([`check_override`]).
    pub fn set_status_override(
        &self,
        key: &InstanceKey,
        o: Option<v1::StatusOverride>,
        writer: &Writer,
    ) -> Result<bool, RegistryError> {
        let mut st = self.state.lock();
        check_override(&st, key, writer)?;
        let key = Key::StatusOverride(st.store.intern_key(key.clone()));
        let out = match o {
            Some(o) => Some(st.store.put_local(key, Record::StatusOverride(Arc::new(o)), wall_ms()).1),
            // Always a tombstone: nodes that cannot hear this one now may
            // hold copies (adopted from this node while it was silent to
            // them); it hides those when it reaches them.
            None => st.store.hide_local(&key, wall_ms()).map(|(_, out)| out),
        };
        let changed = out.is_some();
        if let Some(out) = out {
            self.apply(&mut st, out);
        }
        Ok(changed)
    }

    /// Where the shown copy of each of `ids` (instances of `namespace`/
    /// `service`) comes from: the node holding it, and when that copy was
    /// written (Unix ms). Ids not shown are left out.
    pub fn instance_sources(&self, namespace: &str, service: &str, ids: &[&str]) -> HashMap<String, (Arc<str>, u64)> {
        let st = self.state.lock();
        ids.iter()
            .filter_map(|id| {
                let key = Key::Instance(InstanceKey::new(namespace, service, id));
                let (origin, entry) = st.store.visible_entry(&key)?;
                let node = st.store.origin(origin)?.node.clone();
                Some((id.to_string(), (node, entry.version.wall_ms())))
            })
            .collect()
    }

    /// Removes one instance that `owner` registered.
    pub fn remove_owned(&self, owner: OwnerId, key: &InstanceKey) -> Result<u64, RegistryError> {
        let mut st = self.state.lock();
        if !st.owners.holds(owner, key) {
            return Err(RegistryError::NotOwned(display_key(key)));
        }
        let version = self.remove_locked(&mut st, key);
        Metrics::inc(&self.metrics.deregistrations);
        Ok(version)
    }

    /// Removes an instance whoever registered it, if `writer` may. Returns
    /// whether it was there.
    pub fn deregister(&self, key: &InstanceKey, writer: &Writer) -> Result<bool, RegistryError> {
        let mut st = self.state.lock();
        check_writer(&st, key, writer, "remove")?;
        let found = if st.owners.owner_of(key).is_some() {
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
        Ok(found)
    }

    /// Keys `owner` still holds (keys taken over by newer copies elsewhere
    /// have left it).
    pub fn owned_count(&self, owner: OwnerId) -> usize {
        self.state.lock().owners.count(owner)
    }

    /// Waits until `owner` holds nothing (newer copies elsewhere took every
    /// instance over) or `until` passes; returns whether it holds nothing.
    /// Woken by the writer when copies are taken over, not by polling.
    pub async fn taken_over(&self, owner: OwnerId, until: Instant) -> bool {
        loop {
            let notified = self.taken_over.notified();
            tokio::pin!(notified);
            // Registered before looking, so a takeover in between still wakes us.
            notified.as_mut().enable();
            if self.owned_count(owner) == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.owned_count(owner) == 0;
            }
        }
    }

    /// Forgets an owner without removing its instances (the node is stopping;
    /// its slice goes away with it).
    pub fn abandon(&self, owner: OwnerId) {
        self.state.lock().owners.end(owner);
    }

    /// Ends an owner: every instance it still holds is removed.
    /// `expired` says whether it ended without a goodbye (counted apart).
    pub fn release(&self, owner: OwnerId, expired: bool) -> usize {
        let mut st = self.state.lock();
        let keys = st.owners.end(owner);
        // One outcome for all of them, so subscribers get one delta per service.
        let mut all = Outcome::default();
        let now = wall_ms();
        for key in &keys {
            if let Some((_, out)) = take_out(&mut st, key, now) {
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
    /// `principal` (auth on) takes a new lease; only it may renew one.
    pub fn lease(
        &self,
        lease_id: &str,
        ttl: Duration,
        principal: Option<&Arc<str>>,
    ) -> Result<(String, OwnerId, Duration), RegistryError> {
        self.lease_as(lease_id, ttl, Instant::now(), principal)
    }

    #[cfg(test)]
    fn lease_at(
        &self,
        lease_id: &str,
        ttl: Duration,
        now: Instant,
    ) -> Result<(String, OwnerId, Duration), RegistryError> {
        self.lease_as(lease_id, ttl, now, None)
    }

    fn lease_as(
        &self,
        lease_id: &str,
        ttl: Duration,
        now: Instant,
        principal: Option<&Arc<str>>,
    ) -> Result<(String, OwnerId, Duration), RegistryError> {
        let mut st = self.state.lock();
        if lease_id.is_empty() {
            let owner = OwnerId(self.next_id());
            let id = format!("{}-{:x}-{}", self.node_id, self.incarnation, owner.0);
            st.owners.open(owner);
            st.leases.grant_to(id.clone(), owner, ttl, now, principal.cloned());
            Metrics::inc(&self.metrics.leases_active);
            self.deadline_at(&mut st, now + ttl);
            Ok((id, owner, ttl))
        } else {
            check_lease_holder(&st.leases, lease_id, principal)?;
            let lease = st.leases.renew(lease_id, now).ok_or_else(|| RegistryError::LeaseNotFound(lease_id.into()))?;
            Ok((lease_id.to_string(), lease.owner, lease.ttl))
        }
    }

    /// Extends a lease by its TTL.
    pub fn renew(&self, lease_id: &str, principal: Option<&Arc<str>>) -> Result<Duration, RegistryError> {
        let mut st = self.state.lock();
        check_lease_holder(&st.leases, lease_id, principal)?;
        let lease = st.leases.renew(lease_id, Instant::now());
        lease.map(|l| l.ttl).ok_or_else(|| RegistryError::LeaseNotFound(lease_id.to_string()))
    }

    /// Ends every lease whose deadline passed; returns how many.
    pub fn expire_leases(&self, now: Instant) -> usize {
        let expired = self.state.lock().leases.expire(now);
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
        let Some(owner) = st.leases.get(lease_id).map(|l| l.owner) else { return };
        if st.owners.end_if_empty(owner) {
            st.leases.remove(lease_id);
            Metrics::dec(&self.metrics.leases_active);
        }
    }

    /// When the reaper must next run: the next lease due, the next hidden
    /// own copy to purge, the next moved copy to stop showing. `None`: nothing
    /// is pending (the reaper sleeps until woken).
    ///
    /// The reaper calls it before it sleeps: the answer is when it runs
    /// next, and only a sooner deadline wakes it before then.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut st = self.state.lock();
        let hold = self.config.sync.dead_after_ms + self.config.sync.orphan_grace_ms;
        let moved = st.store.next_moved_due(hold).map(|ms| self.epoch + Duration::from_millis(ms));
        let next =
            [st.leases.next_deadline(), st.stale.next_deadline(), moved, st.overrides_due].into_iter().flatten().min();
        st.reaper_at = next;
        next
    }

    /// Something is due at `deadline`: wakes the reaper if it would sleep
    /// past it.
    fn deadline_at(&self, st: &mut State, deadline: Instant) {
        if st.reaper_at.is_none_or(|at| deadline < at) {
            st.reaper_at = Some(deadline);
            self.deadlines_changed.notify_one();
        }
    }

    /// Woken when a deadline may have come nearer than the one the reaper
    /// sleeps until.
    pub fn deadlines_changed(&self) -> &Notify {
        &self.deadlines_changed
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
        let st = self.state.lock();
        let (store_keys, status_overrides) = (st.store.key_count() as u64, st.overrides.len() as u64);
        Gauges { instances, services, store_keys, status_overrides, ready }
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
        self.state.lock().store.stats_of(origin).map_or((0, 0), |s| (s.digest, s.entries))
    }

    /// Live records of this node's copy of `origin`'s slice; `None` if it
    /// holds none.
    pub fn copy_live(&self, origin: &Origin) -> Option<u64> {
        self.state.lock().store.stats_of(origin).map(|s| s.live)
    }

    /// Milliseconds of `now` on the store's clock (moved copies are aged on it).
    fn store_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Locks the state for applying peers' changes, with the store's clock
    /// set to now: a copy a peer drops as moved is aged from now, however
    /// long the reaper has slept.
    fn lock_for_peers(&self) -> parking_lot::MutexGuard<'_, State> {
        let mut st = self.state.lock();
        st.store.set_clock(self.store_ms(Instant::now()));
        st
    }

    /// Applies a peer's changes, in its order.
    pub fn apply_remote(&self, origin: &Origin, changes: Vec<Change>) {
        if tracing::enabled!(tracing::Level::TRACE) {
            for change in &changes {
                tracing::trace!(%origin, change = %describe_change(change), "applying a peer's change");
            }
        }
        let mut st = self.lock_for_peers();
        let id = st.store.origin_id(origin);
        let mut all = Outcome::default();
        for change in changes {
            all.extend(st.store.apply_remote(id, change));
        }
        self.apply(&mut st, all);
    }

    /// How far this node holds each peer's copies (see
    /// `Store::set_writers_known`).
    pub fn set_writers_known(&self, writers: Vec<(u64, u64)>) {
        let mut st = self.lock_for_peers();
        let out = st.store.set_writers_known(writers);
        self.apply(&mut st, out);
    }

    pub fn replace_slice(&self, origin: &Origin, entries: Vec<(Key, Entry)>) {
        let mut st = self.lock_for_peers();
        let id = st.store.origin_id(origin);
        let out = st.store.replace_slice(id, entries);
        self.apply(&mut st, out);
    }

    pub fn drop_origin(&self, origin: &Origin) {
        let mut st = self.lock_for_peers();
        if let Some(id) = st.store.find_origin(origin) {
            // Status overrides outlive the node an admin reached (see
            // `adopt_overrides`); mostly adopted already, when it went silent.
            let mut out = self.adopt_overrides(&mut st, id);
            out.extend(st.store.drop_origin(id));
            self.apply(&mut st, out);
        }
        drop(st);
        self.orphaned.lock().remove(origin);
    }

    /// Flags a silent peer's records as orphaned (or no longer). A peer
    /// going silent also has its status overrides adopted.
    pub fn set_orphaned(&self, origin: &Origin, orphaned: bool) {
        if orphaned {
            let mut st = self.lock_for_peers();
            if let Some(id) = st.store.find_origin(origin) {
                let out = self.adopt_overrides(&mut st, id);
                self.apply(&mut st, out);
            }
        }
        let mut set = self.orphaned.lock();
        if orphaned {
            set.insert(origin.clone());
        } else {
            set.remove(origin);
        }
    }

    /// Copies the status overrides that `id`'s slice shows into the own
    /// slice, at their versions ([`Store::adopt`]): an admin's override
    /// outlives the node the admin happened to reach. Done when a peer goes
    /// silent, not only when its slice is dropped: a slice this node keeps
    /// (its safety valve holds) may lose the override when the peer comes
    /// back, because the peer, cut off from the instance, dropped it after
    /// the retention. The own copy stays, so the override is kept wherever
    /// the instance is shown, and returns to the peer with the heal. Every
    /// node does the same; the copies are the same write. An admin's clear
    /// is a tombstone above that version, so it hides every copy.
    ///
    /// Looks only at the overrides in force (`State::overrides`), not the
    /// peer's whole slice: this runs under the state lock whenever a peer
    /// goes silent, and a slice may hold a million instances.
    fn adopt_overrides(&self, st: &mut State, id: OriginId) -> Outcome {
        let shown: Vec<(Key, Entry)> = st
            .overrides
            .keys()
            .filter_map(|k| {
                let key = Key::StatusOverride(k.clone());
                let (origin, entry) = st.store.visible_entry(&key)?;
                (origin == id).then(|| (key, entry.clone()))
            })
            .collect();
        let mut out = Outcome::default();
        for (key, entry) in shown {
            let adopted = st.store.adopt(key.clone(), entry);
            if !adopted.is_empty()
                && let Key::StatusOverride(k) = &key
            {
                tracing::debug!(key = %display_key(k), "status override adopted from a silent or departed peer");
                // Owned here now: dropped by this node's reaper if its
                // instance stays gone.
                self.track_override(st, k);
            }
            out.extend(adopted);
        }
        out
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
        let mut all = st.store.sweep_moved(self.store_ms(now), hold);
        let mut n = 0;
        for key in st.stale.due(now) {
            let out = st.store.purge_stale(&key);
            n += usize::from(!out.local.is_empty());
            all.extend(out);
        }
        self.apply(&mut st, all);
        n
    }

    /// Drops the status overrides whose instance is gone: an admin's once
    /// the instance has not been shown for
    /// `sessions.status_override_retention_ms` (it outlives the instance's
    /// restarts and moves, not the instance), a provider's own as soon as the
    /// instance is gone (`ends_with_instance`, as in Eureka). Each node drops
    /// only its own copy ([`Store::purge_own`]), never another node's: every
    /// node holding a copy decides from its own view, so a copy stays where
    /// the instance is still shown (the other side of a partition) and comes
    /// back from there. Not while this node's view is degraded (cut off from
    /// the bus, or a peer orphaned): an instance missing from a partial view
    /// may be alive. Returns how many were due.
    pub fn drop_gone_overrides(&self, now: Instant) -> usize {
        let mut st = self.state.lock();
        if st.overrides_due.is_none_or(|due| now < due) {
            return 0;
        }
        if self.bus_down.load(Ordering::Relaxed) || !self.orphaned.lock().is_empty() {
            // Looked at again once the view may be whole.
            st.overrides_due = Some(now + Duration::from_millis(self.config.sync.beat_interval_ms));
            return 0;
        }
        let due: Vec<InstanceKey> =
            st.overridden_gone.iter().filter(|(_, at)| **at <= now).map(|(k, _)| k.clone()).collect();
        let mut all = Outcome::default();
        for key in &due {
            st.overridden_gone.remove(key);
            if let Some(out) = st.store.purge_own(&Key::StatusOverride(key.clone())) {
                tracing::info!(key = %display_key(key), "status override dropped: its instance is gone");
                all.extend(out);
            } else {
                tracing::debug!(key = %display_key(key), "status override of a gone instance: its holders drop it");
            }
        }
        st.overrides_due = st.overridden_gone.values().min().copied();
        self.apply(&mut st, all);
        due.len()
    }

    /// Keeps `overridden_gone` true after the view changed for `key`: an
    /// override without its instance shown gets the time it is dropped at
    /// (now for a provider's own, after the retention for an admin's).
    fn track_override(&self, st: &mut State, key: &InstanceKey) {
        let retention = self.config.sessions.status_override_retention_ms;
        let gone = st.store.visible(&Key::Instance(key.clone())).is_none();
        let Some(ends_with_instance) = st.overrides.get(key).filter(|_| gone).map(|o| o.ends_with_instance) else {
            st.overridden_gone.remove(key);
            return;
        };
        if (ends_with_instance || retention != 0) && !st.overridden_gone.contains_key(key) {
            let now = Instant::now();
            let due = if ends_with_instance { now } else { now + Duration::from_millis(retention) };
            st.overridden_gone.insert(key.clone(), due);
            if st.overrides_due.is_none_or(|d| due < d) {
                st.overrides_due = Some(due);
            }
            self.deadline_at(st, due);
        }
    }

    /// Applies what a store operation caused: ownership hand-overs, view
    /// changes (with their fan-out) and consumer directory changes.
    fn apply(&self, st: &mut State, out: Outcome) {
        if self.clustered && !out.local.is_empty() {
            st.outbox.extend(out.local);
            self.local_changed.notify_one();
        }
        if !out.stale.is_empty() {
            let now = Instant::now();
            st.stale.push(out.stale, now);
            self.deadline_at(st, now + Duration::from_millis(self.config.sync.dead_after_ms));
        }
        if !out.superseded.is_empty() {
            for key in &out.superseded {
                if let Key::Instance(k) = key {
                    let owner = st.owners.release_key(k);
                    tracing::trace!(key = %display_key(k), ?owner, "own copy superseded by a newer one");
                }
            }
            self.taken_over.notify_waiters();
        }
        // A moved copy kept in view is a deadline too (when it stops being
        // shown); it is aged from now (see `lock_for_peers`).
        let moved = st.store.moved_pending();
        if moved > st.moved_seen {
            let hold = self.config.sync.dead_after_ms + self.config.sync.orphan_grace_ms;
            self.deadline_at(st, Instant::now() + Duration::from_millis(hold));
        }
        st.moved_seen = moved;
        let mut instance_changes = Vec::with_capacity(out.view.len());
        // Overridden instances shown or gone, and overrides set or cleared.
        let mut overridden = Vec::new();
        for change in out.view {
            match change {
                // An override changed: the instance (if shown) is shown again
                // with the status now in force.
                ViewChange::Upsert { key: Key::StatusOverride(k), record: Record::StatusOverride(o), .. } => {
                    // The same override shown from another copy (adopted):
                    // nothing changed for anyone.
                    if st.overrides.get(&k).is_some_and(|old| **old == *o) {
                        continue;
                    }
                    st.overrides.insert(k.clone(), o);
                    instance_changes.extend(shown_with_override(st, &k));
                    overridden.push(k);
                }
                ViewChange::Remove { key: Key::StatusOverride(k) } => {
                    st.overrides.remove(&k);
                    instance_changes.extend(shown_with_override(st, &k));
                    overridden.push(k);
                }
                ViewChange::Upsert { key: Key::Instance(k), record: Record::Instance(i), origin }
                    if st.overrides.contains_key(&k) =>
                {
                    let record = with_override(&i, st.overrides.get(&k).map(|o| &**o));
                    overridden.push(k.clone());
                    instance_changes.push(ViewChange::Upsert { key: Key::Instance(k), record, origin });
                }
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
                        if st.overrides.contains_key(k) {
                            overridden.push(k.clone());
                        }
                    }
                    instance_changes.push(other)
                }
            }
        }
        for key in &overridden {
            self.track_override(st, key);
        }
        if !instance_changes.is_empty() {
            self.views.apply(instance_changes, || self.freshness());
        }
    }
}

/// The view change that shows instance `key` as it is now, with the
/// override in force applied (none if the instance is not shown).
fn shown_with_override(st: &State, key: &InstanceKey) -> Option<ViewChange> {
    let ikey = Key::Instance(key.clone());
    let (origin, record) = st.store.visible(&ikey)?;
    let Record::Instance(i) = record else { return None };
    let record = with_override(i, st.overrides.get(key).map(|o| &**o));
    Some(ViewChange::Upsert { key: ikey, record, origin })
}

/// An instance record as shown: with `o`, its status is the override's
/// and `status_override` says who set it and what the provider reports.
fn with_override(i: &registry_store::EncodedInstance, o: Option<&v1::StatusOverride>) -> Record {
    let Some(o) = o else { return Record::Instance(i.clone()) };
    let Ok(mut shown) = i.decode() else { return Record::Instance(i.clone()) };
    shown.status_override = Some(v1::StatusOverride { provider_status: shown.status, ..o.clone() });
    shown.status = o.status;
    Record::instance(&shown)
}

/// Forgets who owns `key` and removes it from the own slice; the caller applies
/// the outcome (alone, or with others for one delta per service).
fn take_out(st: &mut State, key: &InstanceKey, now: u64) -> Option<(registry_store::Version, Outcome)> {
    let owner = st.owners.release_key(key);
    let removed = st.store.remove_local(&Key::Instance(key.clone()), now);
    let version = removed.as_ref().map(|(v, _)| v.hlc);
    tracing::trace!(key = %display_key(key), ?owner, ?version, "removed from the own slice");
    removed
}

/// Who writes an instance, for the ownership check (auth on).
#[derive(Clone, Debug, Default)]
pub struct Writer {
    /// The principal; `None` with auth off (no ownership to check or record).
    pub principal: Option<Arc<str>>,
    /// May replace or remove others' instances (an admin of the namespace).
    pub may_override: bool,
    /// `warn` mode: a refusal is logged, and the write goes on.
    pub warn_only: bool,
}

/// An instance registered by one principal is replaced or removed by that
/// principal only (or an admin). The principal travels with the record, so
/// this holds whichever node the other principal writes to.
fn check_writer(st: &State, key: &InstanceKey, writer: &Writer, action: &str) -> Result<(), RegistryError> {
    let Some(me) = &writer.principal else { return Ok(()) };
    if writer.may_override {
        return Ok(());
    }
    let Some((_, Record::Instance(shown))) = st.store.visible(&Key::Instance(key.clone())) else { return Ok(()) };
    let holder = shown.decode().map(|i| i.principal).unwrap_or_default();
    if holder.is_empty() || *holder == **me {
        return Ok(());
    }
    refuse(
        writer,
        format!("instance {} belongs to principal {holder:?}: principal {me:?} may not {action} it", display_key(key)),
    )
}

/// A refusal of what `writer` asked: PERMISSION_DENIED, or in `warn` mode a
/// warning, and the write goes on.
fn refuse(writer: &Writer, reason: String) -> Result<(), RegistryError> {
    if writer.warn_only {
        tracing::warn!(%reason, "would deny (auth.mode = warn: allowed)");
        return Ok(());
    }
    tracing::info!(%reason, "denied");
    Err(RegistryError::PermissionDenied(reason))
}

/// An admin overrides any instance's status. A writer that is not an admin
/// overrides (or clears) only the status of an instance it registered and
/// that is shown, as Spring's `/actuator/service-registry` does through
/// Eureka to take itself out of traffic; and never an override someone
/// else set, so an admin's stays until an admin clears it.
fn check_override(st: &State, key: &InstanceKey, writer: &Writer) -> Result<(), RegistryError> {
    let Some(me) = &writer.principal else { return Ok(()) };
    if writer.may_override {
        return Ok(());
    }
    let shown = display_key(key);
    if st.store.visible(&Key::Instance(key.clone())).is_none() {
        return refuse(
            writer,
            format!("instance {shown} is not registered: only an admin overrides the status of an instance not shown"),
        );
    }
    check_writer(st, key, writer, "override the status of")?;
    match st.overrides.get(key) {
        Some(o) if !o.set_by.is_empty() && *o.set_by != **me => refuse(
            writer,
            format!("the status of {shown} is overridden by {:?}: only an admin replaces or clears it", o.set_by),
        ),
        _ => Ok(()),
    }
}

/// A lease taken by a principal is renewed by that principal only.
fn check_lease_holder(leases: &Leases, lease_id: &str, principal: Option<&Arc<str>>) -> Result<(), RegistryError> {
    match (leases.get(lease_id).and_then(|l| l.principal.as_ref()), principal) {
        (Some(holder), Some(caller)) if holder != caller => Err(RegistryError::PermissionDenied(format!(
            "principal {caller:?} may not use lease {lease_id:?}: it belongs to principal {holder:?}"
        ))),
        _ => Ok(()),
    }
}

/// A change in a line of a log: key, version, and what it does.
fn describe_change(change: &Change) -> String {
    let key = |k: &Key| match k {
        Key::Instance(k) => display_key(k),
        Key::Consumer(c) => format!("consumer {}/{}", c.namespace, c.stream),
        Key::StatusOverride(k) => format!("status override of {}", display_key(k)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, port: u32) -> v1::Instance {
        v1::Instance {
            namespace: "default".into(),
            service: "orders".into(),
            instance_id: id.into(),
            host: "10.0.0.1".into(),
            port,
            ..Default::default()
        }
    }

    fn registry() -> Registry {
        Registry::new(Arc::new(NodeConfig::default()), 1)
    }

    fn shown(r: &Registry) -> Vec<String> {
        let mut ids: Vec<String> = r.views().get("default", "orders").1.into_iter().map(|i| i.instance_id).collect();
        ids.sort();
        ids
    }

    /// Peer `b` writes a newer copy of `id`, as the bus would deliver it.
    fn newer_copy_from_b(r: &Registry, id: &str) {
        let b = Origin::new("b", 7);
        let mut store = Store::new(b.clone());
        let key = Key::Instance(InstanceKey::new("default", "orders", id));
        let (_, out) = store.put_local(key, Record::instance(&instance(id, 9)), wall_ms() + 60_000);
        r.apply_remote(&b, out.local.into_iter().map(|(_, c)| c).collect());
    }

    fn statuses(r: &Registry) -> Vec<(String, v1::Status, Option<String>)> {
        let mut v: Vec<_> = r
            .views()
            .get("default", "orders")
            .1
            .into_iter()
            .map(|i| {
                let status = i.status();
                (i.instance_id, status, i.status_override.map(|o| o.set_by))
            })
            .collect();
        v.sort();
        v
    }

    /// Sets or clears an override with auth off.
    fn set_override(r: &Registry, key: &InstanceKey, o: Option<v1::StatusOverride>) -> bool {
        r.set_status_override(key, o, &Writer::default()).expect("no auth, no refusal")
    }

    fn oos(by: &str) -> Option<v1::StatusOverride> {
        Some(v1::StatusOverride {
            status: v1::Status::OutOfService as i32,
            set_by: by.into(),
            set_unix_ms: 1,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_status_override_wins_over_the_provider_until_cleared() {
        let r = registry();
        let (_, owner, _) = r.lease("", Duration::from_secs(30), None).expect("lease");
        let mut up = instance("i1", 1);
        up.status = v1::Status::Up as i32;
        r.upsert(owner, up.clone(), &Writer::default()).expect("upsert");
        let key = InstanceKey::new("default", "orders", "i1");
        assert!(set_override(&r, &key, oos("ops")));
        assert_eq!(statuses(&r), [("i1".into(), v1::Status::OutOfService, Some("ops".into()))]);
        let shown = &r.views().get("default", "orders").1[0];
        let o = shown.status_override.as_ref().expect("override shown");
        assert_eq!(o.provider_status(), v1::Status::Up, "what the provider says is kept beside it");
        // The provider updating its instance does not undo the override.
        up.port = 2;
        r.upsert(owner, up, &Writer::default()).expect("upsert");
        assert_eq!(statuses(&r), [("i1".into(), v1::Status::OutOfService, Some("ops".into()))]);
        // An override set before its instance exists applies when it comes.
        set_override(&r, &InstanceKey::new("default", "orders", "i2"), oos("ops"));
        r.upsert(owner, instance("i2", 3), &Writer::default()).expect("upsert");
        assert_eq!(statuses(&r)[1], ("i2".into(), v1::Status::OutOfService, Some("ops".into())));
        // Cleared: the provider's status again; clearing twice changes nothing.
        assert!(set_override(&r, &key, None));
        assert!(!set_override(&r, &key, None));
        assert_eq!(statuses(&r)[0], ("i1".into(), v1::Status::Up, None));
    }

    #[tokio::test]
    async fn a_writer_overrides_its_own_instance_only_and_never_an_admins_override() {
        let r = registry();
        let writer =
            |name: &str, admin: bool| Writer { principal: Some(name.into()), may_override: admin, warn_only: false };
        let (_, owner, _) = r.lease("", Duration::from_secs(30), Some(&Arc::from("shop"))).expect("lease");
        r.upsert(owner, instance("mine", 1), &writer("shop", false)).expect("upsert");
        let (_, other, _) = r.lease("", Duration::from_secs(30), Some(&Arc::from("rival"))).expect("lease");
        r.upsert(other, instance("theirs", 2), &writer("rival", false)).expect("upsert");
        let key = |id: &str| InstanceKey::new("default", "orders", id);
        let denied = |result: Result<bool, RegistryError>| matches!(result, Err(RegistryError::PermissionDenied(_)));
        // Its own instance: set, then cleared.
        assert_eq!(r.set_status_override(&key("mine"), oos("shop"), &writer("shop", false)).ok(), Some(true));
        assert_eq!(statuses(&r)[0], ("mine".into(), v1::Status::OutOfService, Some("shop".into())));
        assert_eq!(r.set_status_override(&key("mine"), None, &writer("shop", false)).ok(), Some(true));
        // Another principal's instance, or one not registered: refused.
        assert!(denied(r.set_status_override(&key("theirs"), oos("shop"), &writer("shop", false))));
        assert!(denied(r.set_status_override(&key("nobody"), oos("shop"), &writer("shop", false))));
        // An admin's override is an admin's to clear or replace.
        assert_eq!(r.set_status_override(&key("mine"), oos("ops"), &writer("ops", true)).ok(), Some(true));
        assert!(denied(r.set_status_override(&key("mine"), None, &writer("shop", false))));
        assert!(denied(r.set_status_override(&key("mine"), oos("shop"), &writer("shop", false))));
        assert_eq!(statuses(&r)[0], ("mine".into(), v1::Status::OutOfService, Some("ops".into())));
        assert_eq!(overrides_kept(&r), ["mine"], "the refused writes changed nothing");
        // `warn` mode logs the refusal and goes on.
        let warn = Writer { warn_only: true, ..writer("shop", false) };
        assert_eq!(r.set_status_override(&key("mine"), None, &warn).ok(), Some(true));
        assert_eq!(statuses(&r)[0], ("mine".into(), v1::Status::Unspecified, None));
    }

    #[tokio::test]
    async fn an_override_from_a_departed_node_is_adopted() {
        let r = registry();
        let (_, owner, _) = r.lease("", Duration::from_secs(30), None).expect("lease");
        r.upsert(owner, instance("i1", 1), &Writer::default()).expect("upsert");
        // Node b set the override; then b leaves, and its slice is dropped.
        let b = Origin::new("b", 7);
        let mut store = Store::new(b.clone());
        let key = Key::StatusOverride(InstanceKey::new("default", "orders", "i1"));
        let (_, out) =
            store.put_local(key.clone(), Record::StatusOverride(Arc::new(oos("ops").expect("o"))), wall_ms());
        r.apply_remote(&b, out.local.into_iter().map(|(_, c)| c).collect());
        assert_eq!(statuses(&r)[0].1, v1::Status::OutOfService);
        r.drop_origin(&b);
        assert_eq!(statuses(&r)[0].1, v1::Status::OutOfService, "still in force: adopted into this node's slice");
        let st = r.state.lock();
        assert_eq!(st.store.visible_entry(&key).map(|(o, _)| o), Some(st.store.local_id()));
    }

    /// What a store wrote, as the bus would deliver it to a peer.
    fn changes(out: Outcome) -> Vec<Change> {
        out.local.into_iter().map(|(_, c)| c).collect()
    }

    /// Peer `b`'s store with an admin's override of `id` set there, after
    /// `r` got it: the store, the key and the override's version.
    fn override_from_b(r: &Registry, id: &str) -> (Origin, Store, Key, registry_store::Version) {
        let b = Origin::new("b", 7);
        let mut on_b = Store::new(b.clone());
        let key = Key::StatusOverride(InstanceKey::new("default", "orders", id));
        let (version, out) =
            on_b.put_local(key.clone(), Record::StatusOverride(Arc::new(oos("ops").expect("o"))), wall_ms());
        r.apply_remote(&b, changes(out));
        (b, on_b, key, version)
    }

    #[tokio::test]
    async fn a_silent_peers_override_is_adopted_and_kept_when_the_peer_drops_it() {
        let r = registry();
        let (_, owner, _) = r.lease("", Duration::from_secs(30), None).expect("lease");
        r.upsert(owner, instance("i1", 1), &Writer::default()).expect("upsert");
        let (b, mut on_b, key, version) = override_from_b(&r, "i1");
        assert_eq!(statuses(&r)[0].1, v1::Status::OutOfService);
        // b goes silent: its override is copied into the own slice at its
        // version, the same write held twice, so nobody is shown a change.
        let revision = r.views().get("default", "orders").0;
        r.set_orphaned(&b, true);
        assert_eq!(r.state.lock().store.local_entry(&key).map(|e| e.version), Some(version));
        assert_eq!(r.views().get("default", "orders").0, revision, "nothing pushed");
        // b, cut off from the instance, drops its copy after the retention;
        // at the heal the own copy keeps the override in force.
        r.set_orphaned(&b, false);
        r.apply_remote(&b, changes(on_b.purge_own(&key).expect("b holds it")));
        assert_eq!(statuses(&r)[0], ("i1".into(), v1::Status::OutOfService, Some("ops".into())));
        // An admin's clear hides every copy: a tombstone above the version,
        // though this node holds no other copy now.
        assert!(set_override(&r, &InstanceKey::new("default", "orders", "i1"), None));
        assert_eq!(statuses(&r)[0].1, v1::Status::Unspecified);
        let st = r.state.lock();
        let entry = st.store.local_entry(&key).expect("a tombstone");
        assert!(!entry.is_live());
        assert_eq!(entry.version.hlc, version.hlc + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_retention_drops_only_the_own_copy_of_an_override() {
        let mut config = NodeConfig::default();
        config.sessions.status_override_retention_ms = 10_000;
        let r = Registry::new(Arc::new(config), 1);
        let t0 = Instant::now();
        // An override of an instance shown nowhere, set on b and adopted
        // here while b was silent.
        let (b, mut on_b, key, _) = override_from_b(&r, "gone");
        r.set_orphaned(&b, true);
        assert!(r.state.lock().store.local_entry(&key).is_some(), "adopted");
        assert_eq!(r.drop_gone_overrides(t0 + Duration::from_secs(60)), 0, "not while b is orphaned");
        r.set_orphaned(&b, false);
        let due = r.next_deadline().expect("looked at again");
        assert_eq!(r.drop_gone_overrides(due), 1);
        // The own copy is gone; b's is b's to drop (by its own view), and
        // until it does this node shows it.
        assert!(r.state.lock().store.local_entry(&key).is_none());
        assert_eq!(overrides_kept(&r), ["gone"]);
        r.apply_remote(&b, changes(on_b.purge_own(&key).expect("b holds it")));
        assert!(overrides_kept(&r).is_empty());
    }

    fn overrides_kept(r: &Registry) -> Vec<String> {
        let mut ids: Vec<String> = r.state.lock().overrides.keys().map(|k| k.id.to_string()).collect();
        ids.sort();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn an_override_is_dropped_once_its_instance_is_gone_for_the_retention() {
        let mut config = NodeConfig::default();
        config.sessions.status_override_retention_ms = 10_000;
        let retention = Duration::from_secs(10);
        let r = Registry::new(Arc::new(config), 1);
        let (_, owner, _) = r.lease("", Duration::from_secs(3_600), None).expect("lease");
        for id in ["i1", "i2"] {
            r.upsert(owner, instance(id, 1), &Writer::default()).expect("upsert");
            assert!(set_override(&r, &InstanceKey::new("default", "orders", id), oos("ops")));
        }
        // Shown instances keep their overrides, however long.
        tokio::time::advance(retention * 2).await;
        assert_eq!(r.drop_gone_overrides(Instant::now()), 0);
        assert_eq!(r.next_deadline(), Some(Instant::now() + Duration::from_secs(3_600) - retention * 2));
        // Both leave; i2 comes back within the retention (a restart) and
        // keeps its override, i1 does not.
        let t0 = Instant::now();
        for id in ["i1", "i2"] {
            r.deregister(&InstanceKey::new("default", "orders", id), &Writer::default()).expect("deregister");
        }
        assert_eq!(r.next_deadline(), Some(t0 + retention), "the reaper wakes for it");
        tokio::time::advance(retention / 2).await;
        r.upsert(owner, instance("i2", 2), &Writer::default()).expect("upsert");
        assert_eq!(r.drop_gone_overrides(t0 + retention - Duration::from_millis(1)), 0, "not yet");
        assert_eq!(overrides_kept(&r), ["i1", "i2"]);
        assert_eq!(r.drop_gone_overrides(t0 + retention), 1);
        assert_eq!(overrides_kept(&r), ["i2"]);
        assert_eq!(statuses(&r), [("i2".into(), v1::Status::OutOfService, Some("ops".into()))]);
        // i1 registering again now is its provider's status alone.
        let mut up = instance("i1", 3);
        up.status = v1::Status::Up as i32;
        r.upsert(owner, up, &Writer::default()).expect("upsert");
        assert_eq!(statuses(&r)[0], ("i1".into(), v1::Status::Up, None));
        // An override of an instance never registered counts from when it was set.
        let t1 = Instant::now();
        set_override(&r, &InstanceKey::new("default", "orders", "never"), oos("ops"));
        assert_eq!(r.drop_gone_overrides(t1 + retention), 1);
        assert_eq!(overrides_kept(&r), ["i2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_providers_own_override_ends_with_its_instance() {
        let r = registry();
        let (_, owner, _) = r.lease("", Duration::from_secs(3_600), None).expect("lease");
        r.upsert(owner, instance("mine", 1), &Writer::default()).expect("upsert");
        let key = InstanceKey::new("default", "orders", "mine");
        let own = oos("shop").map(|o| v1::StatusOverride { ends_with_instance: true, ..o });
        assert!(set_override(&r, &key, own));
        assert_eq!(statuses(&r)[0].1, v1::Status::OutOfService);
        // Its instance leaves (Spring's graceful shutdown: out of service,
        // then deregistered): the override is due at once, not in an hour.
        let t0 = Instant::now();
        r.deregister(&key, &Writer::default()).expect("deregister");
        assert_eq!(r.next_deadline(), Some(t0));
        assert_eq!(r.drop_gone_overrides(t0), 1);
        assert!(overrides_kept(&r).is_empty());
        // The next deployment of the same instance is its provider's status.
        r.upsert(owner, instance("mine", 2), &Writer::default()).expect("upsert");
        assert_eq!(statuses(&r), [("mine".into(), v1::Status::Unspecified, None)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_degraded_node_keeps_overrides_of_instances_it_does_not_see() {
        let mut config = NodeConfig::default();
        config.sessions.status_override_retention_ms = 10_000;
        let r = Registry::new(Arc::new(config), 1);
        let t0 = Instant::now();
        set_override(&r, &InstanceKey::new("default", "orders", "elsewhere"), oos("ops"));
        // Cut off from the bus, an instance missing here may be alive on a
        // peer: nothing is dropped, and it is looked at again later.
        r.set_bus_connected(false);
        let late = t0 + Duration::from_secs(60);
        assert_eq!(r.drop_gone_overrides(late), 0);
        assert_eq!(overrides_kept(&r), ["elsewhere"]);
        let again = r.next_deadline().expect("a deadline");
        assert!(again > late, "no busy loop while degraded");
        r.set_bus_connected(true);
        assert_eq!(r.drop_gone_overrides(again), 1);
        assert!(overrides_kept(&r).is_empty());
        assert_eq!(r.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn overrides_are_kept_until_cleared_with_no_retention() {
        let mut config = NodeConfig::default();
        config.sessions.status_override_retention_ms = 0;
        let r = Registry::new(Arc::new(config), 1);
        set_override(&r, &InstanceKey::new("default", "orders", "i1"), oos("ops"));
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.drop_gone_overrides(Instant::now() + Duration::from_secs(86_400 * 365)), 0);
        assert_eq!(overrides_kept(&r), ["i1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_at_its_deadline_with_its_instances() {
        let r = registry();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let (id, owner, _) = r.lease_at("", ttl, t0).expect("lease");
        r.upsert(owner, instance("i1", 1), &Writer::default()).expect("upsert");
        assert_eq!(r.next_deadline(), Some(t0 + ttl));
        assert_eq!(r.expire_leases(t0 + ttl - Duration::from_millis(1)), 0);
        assert_eq!(shown(&r), ["i1"]);
        assert_eq!(r.expire_leases(t0 + ttl), 1);
        assert!(shown(&r).is_empty());
        assert_eq!(r.next_deadline(), None, "nothing left to wake for");
        assert!(matches!(r.renew(&id, None), Err(RegistryError::LeaseNotFound(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn renewing_keeps_a_lease_and_its_instances() {
        let r = registry();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let (id, owner, _) = r.lease_at("", ttl, t0).expect("lease");
        r.upsert(owner, instance("i1", 1), &Writer::default()).expect("upsert");
        let (same, again, _) = r.lease_at(&id, ttl, t0 + Duration::from_secs(8)).expect("renew");
        assert_eq!((same.as_str(), again), (id.as_str(), owner));
        assert_eq!(r.expire_leases(t0 + ttl), 0);
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(18)));
        assert_eq!(shown(&r), ["i1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_first_registration_leaves_no_lease() {
        let r = registry();
        let (id, _, _) = r.lease_at("", Duration::from_secs(10), Instant::now()).expect("lease");
        r.drop_lease_if_empty(&id);
        assert!(matches!(r.renew(&id, None), Err(RegistryError::LeaseNotFound(_))));
        assert_eq!(r.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_wakes_the_reaper_only_if_due_before_it_runs() {
        let r = registry();
        let t0 = Instant::now();
        fn woken(r: &Registry) -> impl Future<Output = bool> + '_ {
            let n = r.deadlines_changed().notified();
            async move { tokio::time::timeout(Duration::from_millis(1), n).await.is_ok() }
        }
        assert_eq!(r.next_deadline(), None, "the reaper sleeps until woken");
        let first = woken(&r);
        r.lease_at("", Duration::from_secs(10), t0).expect("lease");
        assert!(first.await, "the first deadline wakes it");
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(10)));
        let later = woken(&r);
        r.lease_at("", Duration::from_secs(20), t0).expect("lease");
        assert!(!later.await, "a later deadline does not");
        let sooner = woken(&r);
        r.lease_at("", Duration::from_secs(5), t0).expect("lease");
        assert!(sooner.await, "a sooner one does");
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_session_limit_counts_held_instances() {
        let mut config = NodeConfig::default();
        config.limits.max_instances_per_session = 1;
        let r = Registry::new(Arc::new(config), 1);
        let owner = r.open_owner();
        r.upsert(owner, instance("i1", 1), &Writer::default()).expect("first");
        r.upsert(owner, instance("i1", 2), &Writer::default()).expect("an update is not a new instance");
        assert!(matches!(
            r.upsert(owner, instance("i2", 1), &Writer::default()),
            Err(RegistryError::TooManyInstances { limit: 1 })
        ));
    }

    #[test]
    fn another_owners_upsert_takes_the_instance_over() {
        let r = registry();
        let (a, b) = (r.open_owner(), r.open_owner());
        r.upsert(a, instance("i1", 1), &Writer::default()).expect("a");
        r.upsert(b, instance("i1", 2), &Writer::default()).expect("b");
        assert_eq!((r.owned_count(a), r.owned_count(b)), (0, 1));
        let key = InstanceKey::new("default", "orders", "i1");
        assert!(matches!(r.remove_owned(a, &key), Err(RegistryError::NotOwned(_))));
        assert_eq!(r.release(a, false), 0, "a's end removes nothing b holds");
        assert_eq!(shown(&r), ["i1"]);
        r.release(b, false);
        assert!(shown(&r).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_copy_elsewhere_ends_the_handover_wait_at_once() {
        let r = Arc::new(registry());
        let owner = r.open_owner();
        r.upsert(owner, instance("i1", 1), &Writer::default()).expect("upsert");
        r.upsert(owner, instance("i2", 1), &Writer::default()).expect("upsert");
        let t0 = Instant::now();
        let wait = tokio::spawn({
            let r = r.clone();
            async move { r.taken_over(owner, t0 + Duration::from_secs(60)).await }
        });
        newer_copy_from_b(&r, "i1");
        tokio::task::yield_now().await;
        assert!(!wait.is_finished(), "i2 is still held");
        newer_copy_from_b(&r, "i2");
        assert!(wait.await.expect("join"), "every instance was taken over");
        assert_eq!(Instant::now(), t0, "woken by the takeover, not by the clock");
        assert_eq!(r.release(owner, false), 0, "nothing left to remove");
        assert_eq!(shown(&r), ["i1", "i2"], "the newer copies are shown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_handover_wait_ends_at_its_bound() {
        let r = registry();
        let owner = r.open_owner();
        r.upsert(owner, instance("i1", 1), &Writer::default()).expect("upsert");
        let t0 = Instant::now();
        assert!(!r.taken_over(owner, t0 + Duration::from_secs(3)).await);
        assert_eq!(Instant::now(), t0 + Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hidden_own_copy_is_purged_when_due_and_that_is_the_next_deadline() {
        let r = registry();
        let owner = r.open_owner();
        r.upsert(owner, instance("i1", 1), &Writer::default()).expect("upsert");
        let t0 = Instant::now();
        newer_copy_from_b(&r, "i1");
        let due = t0 + Duration::from_millis(r.config().sync.dead_after_ms);
        assert_eq!(r.next_deadline(), Some(due));
        assert_eq!(r.purge_stale(due - Duration::from_millis(1)), 0);
        assert_eq!(r.purge_stale(due), 1);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(shown(&r), ["i1"], "the newer copy stays shown: no removal");
    }
}
