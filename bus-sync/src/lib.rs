//! Replication of registry slices between nodes over a message bus.
//!
//! Each node publishes the changes of its own slice, numbered by a per-incarnation
//! sequence, and applies its peers' changes in order, repairing gaps by pulling
//! ranges or whole slices. Beats carry each origin's seq and slice digest, which
//! reveals lost tails and diverged copies; silent peers become suspect, then
//! orphaned, then removed (unless the safety valve holds).
//!
//! Layout:
//! - [`core`]: the sans-IO protocol state machine ([`SyncCore`]).
//! - [`runtime`]: the sans-IO glue around the core ([`Runtime`]): subjects,
//!   serving, carrying out actions against the node's [`Replica`], beats; it
//!   reaches the bus through a [`Transport`].
//! - [`wire`]: bus messages to and from the store's types, with validation.
//! - [`cuts`]: consistent cuts of the own slice, served in pages.
//! - [`nats`]: the NATS transport and the task that drives the runtime
//!   ([`spawn_sync`]), with TLS and credentials ([`NatsSecurity`]).
//! - `memory` (feature `sim`): an in-memory NATS-like bus with faults and its
//!   transport, so the simulation drives the same runtime production runs.
//!
//! Depends on the store, the wire format and NATS; never on tonic or the node.

pub mod core;
pub mod cuts;
#[cfg(feature = "sim")]
pub mod memory;
pub mod nats;
pub mod runtime;
pub mod wire;

pub use crate::core::{Action, Counters, KnownWriters, PeerState, PeerView, SyncConfig, SyncCore};
pub use crate::cuts::{Cuts, SliceCut};
pub use crate::nats::{NatsConfig, NatsCredentials, NatsSecurity, Secret, SyncError, SyncHandle, spawn_sync};
pub use crate::runtime::{
    Answer, Input, Replica, Runtime, RuntimeConfig, Subjects, SyncMetrics, SyncShared, Transport,
};
pub use crate::wire::{Batch, BeatInfo, Page, Reply, Request, WireError};
