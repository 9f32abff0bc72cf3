//! Replication of registry slices between nodes over a message bus.
//!
//! Each node publishes the changes of its own slice, numbered by a per-incarnation
//! sequence, and applies its peers' changes in order, repairing gaps by pulling
//! ranges or whole slices. The protocol core is sans-IO: it takes local changes,
//! bus messages and clock ticks, and returns messages to publish and changes to
//! apply. Transports (NATS, and an in-memory bus for simulation) live around it.
//!
//! Depends on the store and the wire format only; never on tonic or the node.
