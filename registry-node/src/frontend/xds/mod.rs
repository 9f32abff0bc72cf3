//! The xDS front-end: Envoy's Aggregated Discovery Service
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService`), state of the
//! world, on the gRPC port beside `registry.v1`. Every gRPC client with a
//! built-in xDS resolver (`xds:///orders`) and Envoy discover through it.
//!
//! How it maps onto the node:
//! - Each ADS stream is one [`NodeApi::watch`] of the services it asks for
//!   (in the namespace of its bootstrap's `node.metadata.namespace`,
//!   "default" without; the whole namespace when it asks for every listener
//!   or cluster, as Envoy's CDS does): so it is a consumer in the directory (the
//!   bootstrap's `node.id`, its zone), it is authenticated and checked
//!   against read grants exactly as a Subscribe stream is, it waits for a
//!   warming node and it is drained with the node. The watch's frames only
//!   tell the stream which service changed; what it sends is built from the
//!   view.
//! - A service's resources ([`resources`]) are encoded once per revision of
//!   its view and shared by every stream that sends them ([`cache`]).
//! - The protocol's bookkeeping (names per type, nonces, ACK and NACK) is
//!   pure ([`protocol`]); the stream task ([`stream`]) carries it out.
//!
//! Bounded by construction: a stream's watch queue is the Subscribe queue
//! (a slow stream is marked for a snapshot, never queued without end), its
//! outgoing queue holds a few responses, and what is owed is computed from
//! the state when there is room, so a client that reads slowly or never
//! ACKs gets the latest state when it catches up, never a backlog.
//!
//! Both variants are served: state of the world
//! (`StreamAggregatedResources`, gRPC clients and Envoy's default) and
//! incremental (`DeltaAggregatedResources`, Envoy's `DELTA_GRPC`), on the
//! same stream task with the bookkeeping of each ([`protocol::Sotw`],
//! [`protocol::Delta`]).

pub mod cache;
pub mod protocol;
pub mod resources;
pub mod stream;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, BufMut, Bytes};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, StdError, http};
use tonic::{Status, Streaming};

pub use self::cache::XdsCache;
use crate::api::NodeApi;

/// The gRPC name of the service.
pub const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Responses a stream may have queued for its client: state of the world
/// needs no history, so a few cover a client that reads slowly.
const OUT_QUEUE: usize = 4;

/// A `DiscoveryResponse` written around resources that are already encoded
/// (`google.protobuf.Any` bytes shared by every stream), with the stream's
/// own version and nonce. Written by hand as `SubscribeFrame` is: a
/// message's encoding is the concatenation of its fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiscoveryFrame {
    pub version_info: String,
    pub resources: Vec<Bytes>,
    pub type_url: &'static str,
    pub nonce: String,
}

impl DiscoveryFrame {
    /// The wire encoding of the `DiscoveryResponse` (fields 1, 2, 4, 5).
    pub fn write(&self, buf: &mut impl BufMut) {
        put_field(1, self.version_info.as_bytes(), buf);
        for r in &self.resources {
            put_len_delimited(2, r, buf);
        }
        put_field(4, self.type_url.as_bytes(), buf);
        put_field(5, self.nonce.as_bytes(), buf);
    }

    pub fn encoded_len(&self) -> usize {
        let field = |tag: u32, len: usize| if len == 0 { 0 } else { len_delimited(tag, len) };
        field(1, self.version_info.len())
            + self.resources.iter().map(|r| len_delimited(2, r.len())).sum::<usize>()
            + field(4, self.type_url.len())
            + field(5, self.nonce.len())
    }
}

/// A `DeltaDiscoveryResponse` written around resources already encoded:
/// each resource an `envoy.service.discovery.v3.Resource` (name, version,
/// the shared `Any`), and the names the client is to drop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaFrame {
    pub system_version_info: String,
    /// (name, version, encoded `Any`).
    pub resources: Vec<(String, String, Bytes)>,
    pub type_url: &'static str,
    pub nonce: String,
    pub removed: Vec<String>,
}

impl DeltaFrame {
    /// The `Resource` message's length: version (1), resource (2), name (3).
    fn resource_len(name: &str, version: &str, any: &[u8]) -> usize {
        let field = |tag: u32, len: usize| if len == 0 { 0 } else { len_delimited(tag, len) };
        field(1, version.len()) + len_delimited(2, any.len()) + field(3, name.len())
    }

    /// The wire encoding of the `DeltaDiscoveryResponse` (fields 1, 2, 4, 5, 6).
    pub fn write(&self, buf: &mut impl BufMut) {
        put_field(1, self.system_version_info.as_bytes(), buf);
        for (name, version, any) in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(Self::resource_len(name, version, any) as u64, buf);
            put_field(1, version.as_bytes(), buf);
            put_len_delimited(2, any, buf);
            put_field(3, name.as_bytes(), buf);
        }
        put_field(4, self.type_url.as_bytes(), buf);
        put_field(5, self.nonce.as_bytes(), buf);
        for name in &self.removed {
            put_len_delimited(6, name.as_bytes(), buf);
        }
    }

    pub fn encoded_len(&self) -> usize {
        let field = |tag: u32, len: usize| if len == 0 { 0 } else { len_delimited(tag, len) };
        field(1, self.system_version_info.len())
            + self.resources.iter().map(|(n, v, a)| len_delimited(2, Self::resource_len(n, v, a))).sum::<usize>()
            + field(4, self.type_url.len())
            + field(5, self.nonce.len())
            + self.removed.iter().map(|n| len_delimited(6, n.len())).sum::<usize>()
    }
}

/// What a stream sends: a response of its variant.
#[derive(Clone, Debug, PartialEq)]
pub enum AdsFrame {
    Sotw(DiscoveryFrame),
    Delta(DeltaFrame),
}

impl AdsFrame {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            Self::Sotw(f) => f.write(buf),
            Self::Delta(f) => f.write(buf),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Sotw(f) => f.encoded_len(),
            Self::Delta(f) => f.encoded_len(),
        }
    }
}

fn len_delimited(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A proto3 scalar field: left out when empty.
fn put_field(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    if !bytes.is_empty() {
        put_len_delimited(tag, bytes, buf);
    }
}

fn put_len_delimited(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// A request as it came: decoded, or why it could not be. The stream
/// answers garbage with a typed error of its own (and counts it) rather
/// than tonic's generic one.
pub type Incoming<R = DiscoveryRequest> = Result<R, prost::DecodeError>;

/// Writes [`AdsFrame`]s and reads [`Incoming`] requests of type `R`
/// (`DiscoveryRequest` or `DeltaDiscoveryRequest`).
#[derive(Debug, Default)]
struct AdsCodec<R>(std::marker::PhantomData<fn() -> R>);

impl<R> Clone for AdsCodec<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for AdsCodec<R> {}

impl<R: prost::Message + Default + Send + 'static> Codec for AdsCodec<R> {
    type Encode = AdsFrame;
    type Decode = Incoming<R>;
    type Encoder = AdsCodec<R>;
    type Decoder = AdsCodec<R>;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl<R> Encoder for AdsCodec<R> {
    type Item = AdsFrame;
    type Error = Status;

    fn encode(&mut self, item: AdsFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.write(dst);
        Ok(())
    }
}

impl<R: prost::Message + Default> Decoder for AdsCodec<R> {
    type Item = Incoming<R>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Incoming<R>>, Status> {
        let decoded = R::decode(&mut *src);
        // A message that failed half way leaves bytes behind: skip them, so
        // the next message starts where it should.
        let rest = src.remaining();
        src.advance(rest);
        Ok(Some(decoded))
    }
}

/// The ADS service, as tonic serves it. Hand-written rather than generated
/// so that its responses are [`DiscoveryFrame`]s (shared bytes, not
/// messages re-encoded per stream) and its requests [`Incoming`].
#[derive(Clone, Debug)]
pub struct AdsServer {
    inner: Arc<Ads>,
    max_message_bytes: usize,
}

/// What every ADS stream shares.
#[derive(Debug)]
pub struct Ads {
    pub api: NodeApi,
    pub cache: Arc<XdsCache>,
}

impl AdsServer {
    pub fn new(api: NodeApi) -> Self {
        let cache = Arc::new(XdsCache::new(api.registry().clone()));
        let max_message_bytes = api.registry().config().limits.max_message_bytes;
        Self { inner: Arc::new(Ads { api, cache }), max_message_bytes }
    }

    pub fn cache(&self) -> &Arc<XdsCache> {
        &self.inner.cache
    }
}

impl tonic::server::NamedService for AdsServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// `StreamAggregatedResources` (`R` = `DiscoveryRequest`) or
/// `DeltaAggregatedResources` (`DeltaDiscoveryRequest`): authenticate, then
/// hand the stream to its task.
struct AdsMethod<R>(Arc<Ads>, std::marker::PhantomData<fn() -> R>);

impl<R: stream::AdsRequest> tonic::server::StreamingService<Incoming<R>> for AdsMethod<R> {
    type Response = AdsFrame;
    type ResponseStream = ReceiverStream<Result<AdsFrame, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<Incoming<R>>>) -> Self::Future {
        let ads = self.0.clone();
        Box::pin(async move {
            let caller = super::grpc::caller(&ads.api, &request)?;
            let peer = super::grpc::peer(&request).addr;
            let (tx, rx) = mpsc::channel(OUT_QUEUE);
            let task = stream::AdsStream::new(ads.api.clone(), ads.cache.clone(), caller, peer, tx, R::DELTA);
            ads.api.signals().tasks.spawn(task.run(request.into_inner()));
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for AdsServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let max = self.max_message_bytes;
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let codec = AdsCodec::<DiscoveryRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), None);
                Ok(grpc.streaming(AdsMethod(inner, std::marker::PhantomData), req).await)
            }),
            DELTA_PATH => Box::pin(async move {
                let codec = AdsCodec::<DeltaDiscoveryRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), None);
                Ok(grpc.streaming(AdsMethod(inner, std::marker::PhantomData), req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such ADS method").into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse, Resource};
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message as _;

    use super::*;

    #[test]
    fn a_delta_frame_is_wire_identical_to_the_response() {
        let any = Any { type_url: "type.googleapis.com/x.Y".into(), value: vec![1, 2, 3] };
        let frame = DeltaFrame {
            system_version_info: "3".into(),
            resources: vec![
                ("orders".into(), "00ff".into(), Bytes::from(any.encode_to_vec())),
                ("pay".into(), String::new(), Bytes::from(any.encode_to_vec())),
            ],
            type_url: resources::ResourceType::Endpoints.type_url(),
            nonce: "3".into(),
            removed: vec!["gone".into(), "never".into()],
        };
        let mut written = Vec::new();
        frame.write(&mut written);
        assert_eq!(written.len(), frame.encoded_len());
        let resource = |name: &str, version: &str| Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(any.clone()),
            ..Default::default()
        };
        let want = DeltaDiscoveryResponse {
            system_version_info: "3".into(),
            resources: vec![resource("orders", "00ff"), resource("pay", "")],
            type_url: frame.type_url.into(),
            nonce: "3".into(),
            removed_resources: vec!["gone".into(), "never".into()],
            ..Default::default()
        };
        assert_eq!(written, want.encode_to_vec());
        assert_eq!(DeltaDiscoveryResponse::decode(&written[..]).expect("decodes"), want);
    }

    #[test]
    fn a_frame_is_wire_identical_to_the_response() {
        let any = Any { type_url: "type.googleapis.com/x.Y".into(), value: vec![1, 2, 3] };
        let frame = DiscoveryFrame {
            version_info: "7".into(),
            resources: vec![Bytes::from(any.encode_to_vec()), Bytes::from(any.encode_to_vec())],
            type_url: resources::ResourceType::Cluster.type_url(),
            nonce: "7".into(),
        };
        let mut written = Vec::new();
        frame.write(&mut written);
        assert_eq!(written.len(), frame.encoded_len());
        let want = DiscoveryResponse {
            version_info: "7".into(),
            resources: vec![any.clone(), any],
            type_url: resources::ResourceType::Cluster.type_url().into(),
            nonce: "7".into(),
            ..Default::default()
        };
        assert_eq!(written, want.encode_to_vec());
        let empty = DiscoveryFrame { type_url: resources::ResourceType::Listener.type_url(), ..Default::default() };
        let mut written = Vec::new();
        empty.write(&mut written);
        let want = DiscoveryResponse { type_url: empty.type_url.into(), ..Default::default() };
        assert_eq!(written, want.encode_to_vec(), "an empty response names its type only");
    }
}
