//! Registry responses written around instances that are already encoded.
//!
//! A node keeps each instance as its `registry.v1.Instance` wire bytes. These
//! functions copy those bytes into a [`SubscribeFrame`] or [`GetServiceFrame`]
//! as they are, never decoding and re-encoding them. A `repeated Instance`
//! field is a run of length-delimited fields, so the result is exactly what
//! encoding the generated message would give (the tests check it).
//!
//! Every `instances` item must be the encoding of one [`v1::Instance`] (what
//! `prost::Message::encode_to_vec` gives). Nothing checks it here: bytes that
//! are not make a frame clients fail to decode.

use prost::encoding::{self, WireType};

use crate::{GetServiceFrame, SubscribeFrame, v1};

// Field numbers of `registry.v1.SubscribeResponse`'s `kind`, and of the
// messages written below. They must follow `registry.proto`; the tests compare
// every frame with the generated message, so a renumbering fails them.
const SUBSCRIBE_SNAPSHOT: u32 = 1;
const SUBSCRIBE_DELTA: u32 = 2;

/// `GetServiceResponse { namespace, service, instances, revision }`.
pub fn get_service<'a>(
    namespace: &str,
    service: &str,
    instances: impl IntoIterator<Item = &'a [u8]>,
    revision: u64,
) -> GetServiceFrame {
    let mut out = Vec::new();
    service_fields(namespace, service, instances, revision, &mut out);
    GetServiceFrame(out.into())
}

/// `SubscribeResponse { snapshot: ServiceSnapshot { namespace, service,
/// instances, revision, freshness } }`.
pub fn snapshot<'a>(
    namespace: &str,
    service: &str,
    instances: impl IntoIterator<Item = &'a [u8]>,
    revision: u64,
    freshness: &v1::Freshness,
) -> SubscribeFrame {
    let mut inner = Vec::new();
    service_fields(namespace, service, instances, revision, &mut inner);
    encoding::message::encode(5, freshness, &mut inner);
    wrap(SUBSCRIBE_SNAPSHOT, &inner)
}

/// `SubscribeResponse { delta: ServiceDelta { namespace, service, upserted,
/// removed, revision, prev_revision, freshness } }`.
pub fn delta<'a>(
    namespace: &str,
    service: &str,
    upserted: impl IntoIterator<Item = &'a [u8]>,
    removed: &[v1::InstanceKey],
    revision: u64,
    prev_revision: u64,
    freshness: &v1::Freshness,
) -> SubscribeFrame {
    let mut inner = Vec::new();
    names(namespace, service, &mut inner);
    for i in upserted {
        raw(3, i, &mut inner);
    }
    for k in removed {
        encoding::message::encode(4, k, &mut inner);
    }
    encoding::uint64::encode(5, &revision, &mut inner);
    encoding::uint64::encode(6, &prev_revision, &mut inner);
    encoding::message::encode(7, freshness, &mut inner);
    wrap(SUBSCRIBE_DELTA, &inner)
}

/// `namespace, service, instances, revision` (fields 1-4): all of a
/// `GetServiceResponse`, and the start of a `ServiceSnapshot`.
fn service_fields<'a>(
    namespace: &str,
    service: &str,
    instances: impl IntoIterator<Item = &'a [u8]>,
    revision: u64,
    buf: &mut Vec<u8>,
) {
    names(namespace, service, buf);
    for i in instances {
        raw(3, i, buf);
    }
    encoding::uint64::encode(4, &revision, buf);
}

/// Fields 1 and 2, `namespace` and `service`, in every message written here.
fn names(namespace: &str, service: &str, buf: &mut Vec<u8>) {
    raw(1, namespace.as_bytes(), buf);
    raw(2, service.as_bytes(), buf);
}

/// One length-delimited field: a string, or an embedded message's bytes.
fn raw(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// A `SubscribeResponse` whose `kind` is the message `inner`.
fn wrap(kind: u32, inner: &[u8]) -> SubscribeFrame {
    // Room for the key and the length varint in front of the body.
    let mut out = Vec::with_capacity(inner.len() + 8);
    raw(kind, inner, &mut out);
    SubscribeFrame(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str) -> v1::Instance {
        v1::Instance {
            namespace: "ns".into(),
            service: "svc".into(),
            instance_id: id.into(),
            host: "h".into(),
            port: 9,
            metadata: [("k".to_string(), "v".to_string())].into(),
            weight: Some(100),
            ..Default::default()
        }
    }

    #[test]
    fn hand_written_frames_decode_to_the_generated_messages() {
        let fresh = v1::Freshness { oldest_origin_age_ms: 12, degraded: true };
        let all = [inst("a"), inst("b")];
        let enc: Vec<Vec<u8>> = all.iter().map(prost::Message::encode_to_vec).collect();
        let bytes = || enc.iter().map(Vec::as_slice);

        let snap = snapshot("ns", "svc", bytes(), 7, &fresh);
        let want = v1::SubscribeResponse {
            kind: Some(v1::subscribe_response::Kind::Snapshot(v1::ServiceSnapshot {
                namespace: "ns".into(),
                service: "svc".into(),
                instances: all.to_vec(),
                revision: 7,
                freshness: Some(fresh),
            })),
        };
        assert_eq!(snap.decode().expect("decodes"), want);
        // Byte for byte what prost writes, not merely something that decodes alike.
        assert_eq!(&snap.0[..], prost::Message::encode_to_vec(&want));

        let removed = [v1::InstanceKey { namespace: "ns".into(), service: "svc".into(), instance_id: "z".into() }];
        let d = delta("ns", "svc", bytes().take(1), &removed, 9, 7, &fresh);
        let want = v1::SubscribeResponse {
            kind: Some(v1::subscribe_response::Kind::Delta(v1::ServiceDelta {
                namespace: "ns".into(),
                service: "svc".into(),
                upserted: vec![all[0].clone()],
                removed: removed.to_vec(),
                revision: 9,
                prev_revision: 7,
                freshness: Some(fresh),
            })),
        };
        assert_eq!(d.decode().expect("decodes"), want);
        assert_eq!(&d.0[..], prost::Message::encode_to_vec(&want));

        let got = get_service("ns", "svc", bytes(), 7);
        let want = v1::GetServiceResponse {
            namespace: "ns".into(),
            service: "svc".into(),
            instances: all.to_vec(),
            revision: 7,
        };
        assert_eq!(got.decode().expect("decodes"), want);
        assert_eq!(&got.0[..], prost::Message::encode_to_vec(&want));

        // An unknown service: no instances, revision 0.
        let empty = get_service("ns", "none", std::iter::empty(), 0);
        let want = v1::GetServiceResponse { namespace: "ns".into(), service: "none".into(), ..Default::default() };
        assert_eq!(empty.decode().expect("decodes"), want);
    }
}
