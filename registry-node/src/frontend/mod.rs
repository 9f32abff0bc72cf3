//! Protocol front-ends: each translates one protocol to the node's
//! in-process API ([`crate::api::NodeApi`]) and the API's errors to its own
//! codes. A front-end holds no registry state and no rule of its own:
//! registration, leases, ownership, watches, readiness and the consumer
//! directory are decided once, behind the API.
//!
//! - [`grpc`]: `registry.v1` (Registry, Cluster) on the gRPC port.
//! - [`http`]: operators' endpoints on the HTTP port (metrics, health,
//!   readiness, read-only admin JSON), the JSON API and the web console.
//! - [`eureka`]: the Eureka-compatible REST API on the HTTP port.
//! - [`xds`]: Envoy's Aggregated Discovery Service (state of the world) on
//!   the gRPC port, for gRPC clients' `xds:///` resolver and Envoy.
//! - [`dns`]: an authoritative DNS server on its own UDP and TCP port,
//!   answering from the views (it has no credentials to check).
//!
//! Authentication and grants sit in front of the API for all of them, in
//! one place.

pub mod dns;
pub mod eureka;
pub mod grpc;
pub mod http;
pub mod xds;
