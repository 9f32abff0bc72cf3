//! Keys, records and the changes that travel between nodes.

use std::sync::Arc;

use registry_proto::v1;

use crate::version::{StableHasher, Version};

/// Identifies one instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    pub id: Arc<str>,
}

impl InstanceKey {
    pub fn new(namespace: &str, service: &str, id: &str) -> Self {
        Self { namespace: namespace.into(), service: service.into(), id: id.into() }
    }

    pub fn to_proto(&self) -> v1::InstanceKey {
        v1::InstanceKey {
            namespace: self.namespace.to_string(),
            service: self.service.to_string(),
            instance_id: self.id.to_string(),
        }
    }
}

/// Identifies one subscription (one Subscribe stream) in the consumer directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerKey {
    pub namespace: Arc<str>,
    /// Unique per stream across the cluster: the holding node's id and a counter.
    pub stream: Arc<str>,
}

/// Key of a replicated record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Instance(InstanceKey),
    Consumer(ConsumerKey),
}

impl Key {
    fn hash_into(&self, h: &mut StableHasher) {
        match self {
            Key::Instance(k) => {
                h.write(&[1]);
                h.write_field(k.namespace.as_bytes());
                h.write_field(k.service.as_bytes());
                h.write_field(k.id.as_bytes());
            }
            Key::Consumer(k) => {
                h.write(&[2]);
                h.write_field(k.namespace.as_bytes());
                h.write_field(k.stream.as_bytes());
            }
        }
    }
}

/// A live record. Shared by reference: the store, the views and every pushed
/// event point at the same allocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Instance(Arc<v1::Instance>),
    Consumer(Arc<v1::Consumer>),
}

/// What one slice holds for a key: a live record or a tombstone.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub version: Version,
    /// `None` is a tombstone: it hides older copies held by other origins.
    pub record: Option<Record>,
}

impl Entry {
    pub fn is_live(&self) -> bool {
        self.record.is_some()
    }

    /// Contribution of this entry to its slice's digest; a slice's digest is the
    /// XOR of these over its entries.
    pub fn digest(&self, key: &Key) -> u64 {
        let mut h = StableHasher::new();
        key.hash_into(&mut h);
        h.write_u64(self.version.hlc);
        h.write_u64(self.version.node);
        h.write(&[u8::from(self.is_live())]);
        h.finish()
    }
}

/// One change to one slice, in the order its origin made it.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Insert or replace the origin's entry for the key.
    Put { key: Key, entry: Entry },
    /// Forget the origin's entry for the key (tombstone garbage collection, or a
    /// copy dropped because a newer one exists elsewhere).
    Purge { key: Key },
}

impl Change {
    pub fn key(&self) -> &Key {
        match self {
            Change::Put { key, .. } | Change::Purge { key } => key,
        }
    }
}
