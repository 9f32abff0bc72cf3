//! The node's core rules as plain data and functions of `now`: no I/O, no
//! clock reads, no tasks. The registry holds these behind its write lock and
//! the task layer (sessions, the reaper) only carries out what they decide,
//! so every rule is tested here without a runtime.
//!
//! - [`ownership`]: which session or lease holds which instances.
//! - [`leases`]: unary leases and their deadlines.
//! - [`deadlines`]: own copies hidden by newer ones, purged when due.
//! - [`session_end`]: how the end of a provider session decides when its
//!   instances go (the removal table of ARCHITECTURE.md).

pub mod deadlines;
pub mod leases;
pub mod ownership;
pub mod session_end;

pub use leases::{Lease, Leases};
pub use ownership::{OwnerId, Ownership};
pub use session_end::{Disposal, End, disposal, end_of};
