//! Protobuf and gRPC definitions of the registry.
//!
//! Layout:
//! - [`v1`]: the public API (`registry.v1`): messages, and with the `grpc`
//!   feature its tonic clients and servers.
//! - [`sync`]: the bus messages nodes replicate their slices with (not public).
//! - [`SubscribeFrame`], [`GetServiceFrame`]: a `SubscribeResponse` encoded once
//!   and shared by every subscriber, and a `GetServiceResponse` written from
//!   stored bytes.
//! - [`encode`]: writes those frames around instances that are already encoded.
//! - `frames` (`grpc` feature): the `Registry` server with `Subscribe` returning
//!   [`SubscribeFrame`] and `GetService` returning [`GetServiceFrame`].
//! - [`FILE_DESCRIPTOR_SET`]: the compiled descriptors, for gRPC server reflection.
//!
//! Features:
//! - `grpc` (off by default): the tonic code. Without it this crate needs prost
//!   alone, which is how the store and the replication layer use it: they must
//!   not compile tonic, hyper or h2. The messages are identical either way.
//!
//! This crate holds generated code and the few helpers that belong to the wire
//! format; it depends on nothing else of the workspace.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};

pub mod encode;

/// Generated code, one module per protobuf package (prost refers across packages
/// by relative paths, so the nesting must mirror the package names). Included
/// by hand rather than with `tonic::include_proto!`, which would need tonic
/// even when no service is generated.
#[allow(clippy::all, unreachable_pub, missing_docs)]
pub mod registry {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/registry.v1.rs"));
    }
    pub mod sync {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/registry.sync.v1.rs"));
        }
    }
}

/// Messages nodes exchange over the bus, package `registry.sync.v1`.
pub use registry::sync::v1 as sync;
/// The public API, package `registry.v1`.
pub use registry::v1;

/// The `Registry` server whose `Subscribe` stream yields pre-encoded frames.
#[cfg(feature = "grpc")]
#[allow(clippy::all, unreachable_pub, missing_docs)]
pub mod frames {
    include!(concat!(env!("OUT_DIR"), "/frames/registry.v1.rs"));
}

/// Encoded `FileDescriptorSet` of every `.proto` of this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/registry_descriptor.bin"));

/// A message type written from bytes that are already its wire encoding.
/// It implements [`prost::Message`] only to be written by the gRPC codec; it
/// is never decoded (decoding skips every field).
macro_rules! encoded_message {
    ($(#[$doc:meta])* $name:ident, $message:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name(pub Bytes);

        impl $name {
            /// Encodes `msg` once.
            pub fn encode(msg: &$message) -> Self {
                Self(Bytes::from(prost::Message::encode_to_vec(msg)))
            }

            /// Decodes the bytes back into the message (tests and diagnostics).
            pub fn decode(&self) -> Result<$message, prost::DecodeError> {
                prost::Message::decode(self.0.clone())
            }
        }

        impl prost::Message for $name {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                // A message's encoding is the concatenation of its fields, so
                // the bytes of a whole message are a valid body on their own.
                buf.put_slice(&self.0);
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), prost::DecodeError> {
                prost::encoding::skip_field(wire_type, tag, buf, ctx)
            }

            fn encoded_len(&self) -> usize {
                self.0.len()
            }

            fn clear(&mut self) {
                self.0 = Bytes::new();
            }
        }
    };
}

encoded_message!(
    /// A `registry.v1.SubscribeResponse` already encoded to its wire bytes.
    ///
    /// Cloning is a reference-count increment, so one frame built per event
    /// is shared by all subscribers of a service.
    SubscribeFrame,
    v1::SubscribeResponse
);

encoded_message!(
    /// A `registry.v1.GetServiceResponse` already encoded to its wire bytes,
    /// written around the instances' stored encodings.
    GetServiceFrame,
    v1::GetServiceResponse
);

impl v1::Status {
    /// `STATUS_UNSPECIFIED` reads as UP.
    pub fn effective(self) -> Self {
        match self {
            Self::Unspecified => Self::Up,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_wire_identical_to_the_message() {
        let msg = v1::SubscribeResponse {
            kind: Some(v1::subscribe_response::Kind::Progress(v1::Progress {
                freshness: Some(v1::Freshness { oldest_origin_age_ms: 7, degraded: true }),
                node_id: "n1".into(),
            })),
        };
        let frame = SubscribeFrame::encode(&msg);
        let mut written = Vec::new();
        prost::Message::encode(&frame, &mut written).expect("vec has room");
        assert_eq!(written, prost::Message::encode_to_vec(&msg));
        assert_eq!(frame.decode().expect("decodes"), msg);
    }
}
