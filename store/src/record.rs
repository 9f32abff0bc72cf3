//! Keys, records and the changes that travel between nodes.

use std::sync::Arc;

use registry_proto::v1;

use crate::version::{StableHasher, Version};

/// Identifies one instance of a service.
///
/// One pointer wide: a key is held by the store's index and the registry's
/// ownership tables, whose hash-table buckets are sized by it, so the parts
/// live behind one shared allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey(Arc<InstanceKeyParts>);

/// The parts of an [`InstanceKey`], reached through it by `Deref`.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKeyParts {
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    pub id: Arc<str>,
}

impl std::ops::Deref for InstanceKey {
    type Target = InstanceKeyParts;

    fn deref(&self) -> &InstanceKeyParts {
        &self.0
    }
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.service, self.id)
    }
}

impl InstanceKey {
    pub fn new(namespace: &str, service: &str, id: &str) -> Self {
        Self::from_parts(namespace.into(), service.into(), id.into())
    }

    pub fn from_parts(namespace: Arc<str>, service: Arc<str>, id: Arc<str>) -> Self {
        Self(Arc::new(InstanceKeyParts { namespace, service, id }))
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

/// Key of a replicated record. Both variants are one pointer, so the key is
/// two words (see [`InstanceKey`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Instance(InstanceKey),
    Consumer(Arc<ConsumerKey>),
    /// An admin's status override of the instance with this key: a record of
    /// its own, written by whichever node the admin reached, so that the
    /// instance's record stays its provider's node's.
    StatusOverride(InstanceKey),
}

impl Key {
    pub fn consumer(namespace: &str, stream: &str) -> Self {
        Self::Consumer(Arc::new(ConsumerKey { namespace: namespace.into(), stream: stream.into() }))
    }
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
            Key::StatusOverride(k) => {
                h.write(&[3]);
                h.write_field(k.namespace.as_bytes());
                h.write_field(k.service.as_bytes());
                h.write_field(k.id.as_bytes());
            }
        }
    }
}

/// An instance held as its protobuf encoding: one allocation per record,
/// shared by reference by the store, the views and the bus, and copied into
/// outgoing messages as it is, without re-encoding. Decoded only where a struct
/// is needed (validation of bus input, GetService).
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedInstance(Arc<[u8]>);

impl EncodedInstance {
    pub fn encode(i: &v1::Instance) -> Self {
        Self(prost::Message::encode_to_vec(i).into())
    }

    /// Wraps bytes the caller has checked decode as a valid instance.
    pub fn from_checked(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn decode(&self) -> Result<v1::Instance, prost::DecodeError> {
        prost::Message::decode(&*self.0)
    }

    /// The instance's status (an override's, when one is applied), read
    /// without decoding the rest: counting a node's instances by status
    /// allocates nothing. Bytes that do not parse read as unspecified.
    pub fn status(&self) -> v1::Status {
        use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
        /// `Instance.status`.
        const STATUS: u32 = 9;
        let mut buf = &self.0[..];
        let mut status = 0;
        while !buf.is_empty() {
            let Ok((field, wire_type)) = decode_key(&mut buf) else { break };
            if field == STATUS && wire_type == WireType::Varint {
                match decode_varint(&mut buf) {
                    Ok(v) => status = v as i32,
                    Err(_) => break,
                }
            } else if skip_field(wire_type, field, &mut buf, DecodeContext::default()).is_err() {
                break;
            }
        }
        v1::Status::try_from(status).unwrap_or(v1::Status::Unspecified)
    }
}

impl std::fmt::Debug for EncodedInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decode() {
            Ok(i) => write!(f, "{}/{}/{}@{}:{}", i.namespace, i.service, i.instance_id, i.host, i.port),
            Err(_) => write!(f, "<{} undecodable bytes>", self.0.len()),
        }
    }
}

/// A live record. Shared by reference: the store, the views and every pushed
/// event point at the same allocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Instance(EncodedInstance),
    Consumer(Arc<v1::Consumer>),
    StatusOverride(Arc<v1::StatusOverride>),
}

impl Record {
    /// An instance record (encoded once, here).
    pub fn instance(i: &v1::Instance) -> Self {
        Self::Instance(EncodedInstance::encode(i))
    }
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
    /// Forget the origin's entry for the key (a removal nobody else holds a
    /// copy of, or tombstone garbage collection).
    Purge { key: Key },
    /// Forget the origin's entry for the key because a newer copy, of
    /// version `to`, exists elsewhere: the key moved. To the origin's slice
    /// this is a purge; a node that does not hold that newer copy yet keeps
    /// showing the record until it arrives (see `Store::sweep_moved`).
    Moved { key: Key, to: crate::Version },
}

impl Change {
    pub fn key(&self) -> &Key {
        match self {
            Change::Put { key, .. } | Change::Purge { key } | Change::Moved { key, .. } => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_status_read_alone_is_the_decoded_one(
            status in 0i32..6,
            metadata in proptest::collection::btree_map("[a-z]{1,8}", ".{0,20}", 0..4),
            host in "[a-z0-9.]{1,30}",
            overridden in proptest::option::of(0i32..5),
        ) {
            let instance = v1::Instance {
                namespace: "ns".into(),
                service: "svc".into(),
                instance_id: "i-1".into(),
                host,
                port: 8080,
                metadata: metadata.into_iter().collect(),
                weight: Some(7),
                zone: "z".into(),
                status,
                principal: "p".into(),
                status_override: overridden.map(|s| v1::StatusOverride { status: s, ..Default::default() }),
            };
            let encoded = EncodedInstance::encode(&instance);
            let decoded = encoded.decode().expect("decodes");
            prop_assert_eq!(encoded.status(), decoded.status());
        }
    }

    #[test]
    fn garbage_reads_as_unspecified() {
        for bytes in [&[0xff_u8, 0xff, 0xff][..], &[0x48][..], &[]] {
            assert_eq!(EncodedInstance::from_checked(bytes).status(), v1::Status::Unspecified);
        }
    }
}
