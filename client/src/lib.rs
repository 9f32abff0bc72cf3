//! Client library of the registry: register providers, watch services, and feed
//! tonic's load balancer with live instances.
//!
//! ```no_run
//! # async fn demo() -> Result<(), registry_client::Error> {
//! use registry_client::{Client, ClientConfig, InstanceFilter, balance_channel};
//! use registry_client::v1::Instance;
//!
//! let client = Client::new(ClientConfig::new(["http://10.0.0.1:7070", "http://10.0.0.2:7070"]))?;
//!
//! // A provider: registered until dropped or shut down, heartbeats in the background,
//! // follows the cluster when its node drains or dies.
//! let me = Instance { service: "greeter".into(), host: "10.0.0.7".into(), port: 50051, ..Default::default() };
//! let provider = client.register([me]).await?;
//!
//! // A consumer: a live view of a service, and a channel balancing over it.
//! let greeters = client.watch("greeter").await?;
//! let channel = balance_channel(&greeters, InstanceFilter::up());
//! # drop((provider, channel));
//! # Ok(()) }
//! ```
//!
//! Nodes with auth enabled want a bearer token: [`ClientConfig::token`] sends
//! `authorization: Bearer <token>` with every call (unary calls, `Register`
//! sessions, `Subscribe` streams, `Members`, on every fail-over and reconnect).
//! The token never shows in `Debug` output, logs or errors. A node that does
//! not know the token answers [`Error::Unauthenticated`]; one whose grants do
//! not cover the call, [`Error::PermissionDenied`] (also for an upsert refused
//! inside a session). Neither is retried on another node: every node would
//! answer the same.
//!
//! ```no_run
//! # async fn demo() -> Result<(), registry_client::Error> {
//! use registry_client::{Client, ClientConfig, Error};
//!
//! let token = std::env::var("REGISTRY_TOKEN").unwrap_or_default();
//! let client = Client::new(ClientConfig::new(["http://10.0.0.1:7070"]).token(token))?;
//! match client.get_service("orders").await {
//!     Err(Error::PermissionDenied(why)) => eprintln!("ask for a read grant: {why}"),
//!     other => println!("{:?}", other?.instances.len()),
//! }
//! # Ok(()) }
//! ```
//!
//! Nodes serving TLS: [`ClientConfig::ca_file`] names the CA their
//! certificates chain to (a bare `host:port` endpoint then uses TLS;
//! `https://` always does, with the system's roots when no CA is given;
//! `http://` never does), [`ClientConfig::identity_files`] a client
//! certificate and key for nodes that ask for one (mTLS), and
//! [`ClientConfig::tls_domain`] the name in their certificates when they are
//! reached by IP. [`Client::new`] reads and checks the files: a bad one is
//! [`Error::InvalidTls`], naming it. A failed handshake (another CA, expired,
//! a name the certificate lacks, a refused client certificate) is
//! [`Error::Unavailable`] saying `TLS handshake failed` and why, within the
//! connect timeout, and the next node is tried.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use registry_client::{Client, ClientConfig};
//!
//! let client = Client::new(
//!     ClientConfig::new(["10.0.0.1:7070", "10.0.0.2:7070"])
//!         .ca_file("/etc/registry/ca.pem")
//!         .identity_files("/etc/registry/billing.pem", "/etc/registry/billing.key")
//!         .tls_domain("registry.internal")
//!         .token(std::env::var("REGISTRY_TOKEN")?),
//! )?;
//! # drop(client);
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`config`](ClientConfig): endpoints, timeouts, the jittered [`Backoff`],
//!   the [`BearerToken`], the TLS settings.
//! - `auth`: the interceptor putting the token on every request; every channel
//!   to a node goes through it.
//! - `tls`: [`TlsConfig`] (the CA, the client identity, the TLS domain), read
//!   and checked by [`Client::new`], and which endpoints use TLS.
//! - `client`: [`Client`], one lazily connected channel per node, unary reads that
//!   fail over from node to node (`UNAVAILABLE`, including "warming up", moves on).
//! - `provider`: [`Provider`], the task owning a `Register` session: heartbeats,
//!   updates, moves on drain (make-before-break) or loss (jittered reconnect),
//!   goodbye on shutdown or drop.
//! - `view`: [`ServiceView`], the pure core of a consumer's cache: snapshots,
//!   deltas, revision gaps, real differences.
//! - `lease`: [`Lease`], one instance under a unary TTL lease, renewed at the node
//!   that granted it and registered again elsewhere when that node is gone or
//!   answers NOT_FOUND.
//! - `consumer`: [`ServiceWatch`], the task owning a `Subscribe` stream around a view.
//! - `balance`: [`InstanceFilter`], [`choose_weighted`], [`balance_channel`].
//! - `error`: [`Error`].
//!
//! It depends on the public API (`registry-proto`) only, never on the node's crates.
//!
//! The command line, `regctl`, is built on this library in a crate of its own
//! (`regctl/`), so programs using the library do not compile its dependencies.

#![warn(missing_docs)]

mod auth;
mod balance;
mod client;
mod config;
mod consumer;
mod error;
mod lease;
mod provider;
mod tls;
mod view;

pub use balance::{
    InstanceFilter, balance_channel, balance_channel_with, choose_weighted, plaintext_endpoint, weight_of,
};
pub use client::Client;
pub use config::{Backoff, BearerToken, ClientConfig};
pub use consumer::{ServiceWatch, WatchEvent};
pub use error::{Error, Result};
pub use lease::{Lease, LeaseState};
pub use provider::{Provider, ProviderState};
/// The public API's messages (`registry.v1`), as this library returns them.
pub use registry_proto::v1;
pub use tls::{ClientIdentity, Pem, TlsConfig};
pub use view::{InstanceChange, RevisionGap, ServiceView};
