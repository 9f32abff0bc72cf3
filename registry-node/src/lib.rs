//! The registry server: one node of an AP service registry.
//!
//! A node holds the whole registry in memory, serves the `registry.v1` gRPC API,
//! applies local writes at once and (in a cluster) replicates them to its peers.
//!
//! Layout:
//! - [`config`]: settings from file, env and flags, validated at start.
//! - [`validate`]: checks of everything clients send, with typed refusals.
//! - [`registry`]: the shared state: the store behind a single writer, ownership
//!   of instances by sessions and leases, the consumer directory.
//! - [`views`]: per-service views, revisions and the encode-once fan-out.
//! - [`api`]: the in-process API every front-end calls (`NodeApi`).
//! - [`frontend`]: one module per protocol (gRPC, HTTP, xDS).
//! - [`listen`]: accepting connections, plaintext or TLS, with each peer's
//!   client certificate names.
//! - [`auth`]: principals, grants, tokens, client certificates, the audit trail.
//! - [`cluster`]: replication wiring (the replica the sync runtime drives,
//!   Members, sync metrics).
//! - [`metrics`], [`readiness`]: what operators look at.
//! - [`node`]: wiring and lifecycle: start, serve, drain, stop.
//!
//! Dependencies point one way: node → bus-sync → store; everything → proto.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod core;
pub mod frontend;
pub mod listen;
pub mod metrics;
pub mod movers;
pub mod node;
pub mod readiness;
pub mod registry;
pub mod validate;
pub mod views;

pub use config::{Cli, ConfigError, NodeConfig};
pub use node::{NodeHandle, StartError, start};
