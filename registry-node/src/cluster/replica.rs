//! The node as replication sees it: the [`Replica`] the sync runtime works
//! against, over the registry.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bus_sync::{Replica, SliceCut};
use registry_store::{Change, Entry, Key, Origin, SliceStats};
use tokio::sync::Notify;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::readiness::Readiness;
use crate::registry::Registry;

/// The gRPC service name health reports on besides "".
pub const REGISTRY_SERVICE: &str = "registry.v1.Registry";

/// The node as replication sees it.
pub struct NodeReplica {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub health: HealthReporter,
}

impl Replica for NodeReplica {
    fn take_local_changes(&self) -> Vec<(u64, Change)> {
        self.registry.take_outbox()
    }

    fn beat_snapshot(&self) -> (Vec<(u64, Change)>, SliceStats) {
        self.registry.outbox_and_stats()
    }

    fn own_cut(&self) -> SliceCut {
        self.registry.own_cut()
    }

    fn copy_stats(&self, origin: &Origin) -> (u64, u64) {
        self.registry.copy_stats(origin)
    }

    fn copy_live(&self, origin: &Origin) -> Option<u64> {
        self.registry.copy_live(origin)
    }

    fn apply(&self, origin: &Origin, _first_seq: u64, changes: Vec<Change>) {
        self.registry.apply_remote(origin, changes);
    }

    fn set_writers_known(&self, writers: Vec<(u64, u64)>) {
        self.registry.set_writers_known(writers);
    }

    fn replace_slice(&self, origin: &Origin, _cut_seq: u64, entries: Vec<(Key, Entry)>) {
        self.registry.replace_slice(origin, entries);
    }

    fn load_entries(&self, origin: &Origin, entries: Vec<(Key, Entry)>) {
        let changes = entries.into_iter().map(|(key, entry)| Change::Put { key, entry }).collect();
        self.registry.apply_remote(origin, changes);
    }

    fn drop_origin(&self, origin: &Origin) {
        self.registry.drop_origin(origin);
    }

    fn set_orphaned(&self, origin: &Origin, orphaned: bool) {
        self.registry.set_orphaned(origin, orphaned);
    }

    fn session_count(&self) -> u64 {
        self.registry.metrics.sessions_active.load(Ordering::Relaxed)
    }

    fn subscription_count(&self) -> u64 {
        self.registry.metrics.subscribers_active.load(Ordering::Relaxed)
    }

    fn leaving(&self) -> bool {
        self.registry.is_draining()
    }

    fn own_live(&self) -> u64 {
        self.registry.own_live()
    }

    fn set_ready(&self, _timed_out: bool) {
        if self.registry.is_draining() {
            return;
        }
        self.readiness.set(true);
        let health = self.health.clone();
        tokio::spawn(async move {
            health.set_service_status("", ServingStatus::Serving).await;
            health.set_service_status(REGISTRY_SERVICE, ServingStatus::Serving).await;
        });
    }

    fn set_bus_connected(&self, connected: bool) {
        self.registry.set_bus_connected(connected);
    }

    fn local_changed(&self) -> &Notify {
        self.registry.local_changed()
    }
}
