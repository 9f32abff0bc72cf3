//! The xDS resources of the services xDS clients watch, encoded once per
//! revision of the service's view and shared by every stream that sends
//! them (the bytes are reference counted, as Subscribe frames are).
//!
//! A stream holds a [`Slot`] per service it watches; [`Slot::current`]
//! compares the slot's revision with the view's (one map lookup) and, when
//! the view moved on, rebuilds under the slot's lock, so the first stream to
//! look encodes and every other takes the result. A slot no stream holds any
//! more is dropped ([`XdsCache::release`]): the cache holds what is
//! watched, never more.

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use super::resources::{self, ServiceResources};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::views::ServiceKey;

/// The shared encodings of the node's xDS front-end.
#[derive(Debug)]
pub struct XdsCache {
    registry: Arc<Registry>,
    slots: DashMap<ServiceKey, Arc<Slot>>,
}

/// One service's encodings, under one resource name, at the revision they
/// were built for.
#[derive(Debug)]
pub struct Slot {
    /// `(namespace, resource name)`: a service asked for as `orders` and
    /// as `payments/orders` is named differently in its resources.
    key: ServiceKey,
    service: Arc<str>,
    /// `(revision, resources)`; `None` while the service has no instances.
    built: Mutex<Option<(u64, Option<Arc<ServiceResources>>)>>,
}

impl XdsCache {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry, slots: DashMap::new() }
    }

    /// The slot of `namespace`/`service` under the resource name `name`
    /// (the service's own name, or `namespace/service`), for a stream that
    /// watches it.
    pub fn slot(&self, namespace: &str, service: &str, name: &str) -> Arc<Slot> {
        let key: ServiceKey = (namespace.into(), name.into());
        self.slots
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Slot { key, service: service.into(), built: Mutex::new(None) }))
            .clone()
    }

    /// A stream stopped watching `slot`'s service: the slot goes once no
    /// stream holds it.
    pub fn release(&self, slot: Arc<Slot>) {
        let key = slot.key.clone();
        drop(slot);
        // Under the shard's write lock: no stream can take the slot meanwhile.
        self.slots.remove_if(&key, |_, s| Arc::strong_count(s) == 1);
    }

    /// Slots held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The service's resources as its view is now (`None`: it has no
    /// instances), built if the view moved on since they were.
    pub fn current(&self, slot: &Slot) -> Option<Arc<ServiceResources>> {
        let views = self.registry.views();
        let (ns, svc, name) = (&*slot.key.0, &*slot.service, &*slot.key.1);
        let mut built = slot.built.lock();
        let revision = views.service_revision(ns, svc);
        if let Some((r, resources)) = &*built
            && *r == revision
        {
            return resources.clone();
        }
        // Revision and instances read together, under the view's guard.
        let (revision, instances) = views.get(ns, svc);
        let resources = resources::build(name, revision, &instances).map(Arc::new);
        let m = &self.registry.metrics.xds;
        Metrics::inc(&m.encodings);
        if let Some(r) = &resources
            && r.hosts_left_out > 0
        {
            m.hosts_left_out.fetch_add(r.hosts_left_out as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                namespace = ns,
                service = svc,
                revision,
                left_out = r.hosts_left_out,
                "instances left out of xDS endpoints: their host is not an IP address"
            );
        }
        *built = Some((revision, resources.clone()));
        resources
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use registry_proto::v1;

    use super::*;
    use crate::config::NodeConfig;
    use crate::registry::Writer;

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

    #[tokio::test]
    async fn encoded_once_per_revision_for_every_holder_and_dropped_with_the_last() {
        let registry = Arc::new(Registry::new(Arc::new(NodeConfig::default()), 1));
        let cache = XdsCache::new(registry.clone());
        let encodings = || registry.metrics.xds.encodings.load(Ordering::Relaxed);
        let (a, b) = (cache.slot("default", "orders", "orders"), cache.slot("default", "orders", "orders"));
        assert!(Arc::ptr_eq(&a, &b), "one slot per service");
        assert!(cache.current(&a).is_none(), "no instances: it does not exist");

        let (_, owner, _) = registry.lease("", Duration::from_secs(30), None).expect("lease");
        registry.upsert(owner, instance("i1", 1), &Writer::default()).expect("upsert");
        let before = encodings();
        let first = cache.current(&a).expect("exists");
        let second = cache.current(&b).expect("exists");
        assert!(Arc::ptr_eq(&first, &second), "the second holder takes the first one's encoding");
        assert_eq!(encodings(), before + 1, "built once for the revision");

        registry.upsert(owner, instance("i2", 2), &Writer::default()).expect("upsert");
        let newer = cache.current(&b).expect("exists");
        assert!(newer.revision > first.revision);
        assert_eq!(encodings(), before + 2, "built again for the next revision only");

        cache.release(a);
        assert_eq!(cache.len(), 1, "still held");
        cache.release(b);
        assert!(cache.is_empty(), "the last holder gone, the slot goes");
    }
}
