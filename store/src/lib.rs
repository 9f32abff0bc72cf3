//! The replicated state of a registry node, and the merged view clients read.
//!
//! Every node's state is the union of *slices*, one per origin: a `(node_id,
//! incarnation)` pair. The node's own slice is authoritative; the others are copies
//! received from peers. For each record key, the merged view shows the entry with
//! the highest [`Version`] across all slices, if it is a live record. Removing a
//! record from one slice never deletes another origin's copy, so there are no
//! cross-node delete races. A standalone node is simply a cluster of one origin.
//!
//! Layout:
//! - [`version`]: the hybrid logical clock that orders copies held by different
//!   origins, and the stable hash used for digests.
//! - [`record`]: keys, records, entries and the changes that travel between nodes.
//! - [`slices`]: [`Store`], the slices and the merged view, with the per-origin
//!   digest kept incrementally.
//!
//! Everything here is synchronous and deterministic: time comes in as arguments.
//! This crate must never depend on tokio, tonic, NATS or anything else doing I/O.
//! It uses `registry-proto` without its `grpc` feature: prost messages only.

pub mod record;
pub mod slices;
pub mod version;

pub use record::{Change, ConsumerKey, EncodedInstance, Entry, InstanceKey, InstanceKeyParts, Key, Record};
pub use slices::{OriginId, Outcome, SliceStats, Store, ViewChange};
pub use version::{Hlc, Origin, Version};
