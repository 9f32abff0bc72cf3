//! Protocol front-ends: each translates one protocol to the node's
//! in-process API ([`crate::api::NodeApi`]) and the API's errors to its own
//! codes. A front-end holds no registry state and no rule of its own:
//! registration, leases, ownership, watches, readiness and the consumer
//! directory are decided once, behind the API.
//!
//! - [`grpc`]: `registry.v1` (Registry, Cluster) on the gRPC port.
//! - [`http`]: operators' endpoints on the HTTP port (metrics, health,
//!   readiness, read-only admin JSON).
//! - [`xds`]: Envoy's Aggregated Discovery Service (state of the world) on
//!   the gRPC port, for gRPC clients' `xds:///` resolver and Envoy.
//!
//! Where the next ones go: `http` grows the JSON API (`/v1/`) and the
//! console (`/ui/`); `eureka` (the
//! Eureka REST API on the HTTP port) and `dns` (its own UDP/TCP listener)
//! each get a module here. Authentication and grants sit in front of the API
//! for all of them, in one place.

pub mod grpc;
pub mod http;
pub mod xds;
