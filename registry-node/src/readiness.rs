//! Whether the node serves reads. A standalone node is ready once it listens; a
//! clustered node only after it has loaded its peers' slices (so it never serves
//! an empty or partial registry). Shutdown makes it unready again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Cheap, cloneable readiness flag.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
}
