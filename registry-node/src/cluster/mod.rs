//! Wiring of replication into the node, one concern per file:
//! - [`replica`]: the [`bus_sync::Replica`] the sync runtime drives;
//! - [`members`]: the `Cluster.Members` view;
//! - [`metrics`]: the replication metrics;
//! - [`rebalance`]: moving streams off a node holding more than its share.

pub mod members;
pub mod metrics;
pub mod rebalance;
pub mod replica;

pub use members::{advertise_addr, members, peer_members};
pub use metrics::render_metrics;
pub use rebalance::{balance_peers, rebalance_plan, spawn_rebalancer};
pub use replica::{NodeReplica, REGISTRY_SERVICE};
