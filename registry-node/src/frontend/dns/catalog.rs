//! The DNS front-end's index of the views: which names exist, and the
//! records of each, compiled once per change of its view and then shared
//! by every query.
//!
//! The index is a lock-free map ([`papaya`]): a query reads it without a
//! lock, so a flood of queries never holds up the registry's writer, and
//! the writer never holds up a query. The writer tells the index of each
//! change as it happens ([`ViewListener`]), which only marks the name's
//! compiled records as behind; the first query after a change compiles
//! them again from the view (one read of that service's view, as any
//! reader of the registry does) and the records behind, which hold what
//! the unchanged instances gave, and every later query copies them. A
//! change is thereby visible to the next query, and an unknown name is
//! answered from the index alone.
//!
//! DNS names match without regard to case (RFC 4343) and registry names do
//! not: the index is keyed by lowercase names, and a name whose services
//! differ only in case answers for all of them.

use std::hash::Hash;
use std::sync::Arc;

use papaya::{Equivalent, Operation, ResizeMode};

use super::answer::Records;
use crate::views::{ServiceKey, ViewListener};

type Hasher = foldhash::quality::RandomState;

/// A name of the index: namespace and service, lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NameKey {
    namespace: Box<str>,
    service: Box<str>,
}

impl NameKey {
    fn of(namespace: &str, service: &str) -> Self {
        Self { namespace: namespace.to_ascii_lowercase().into(), service: service.to_ascii_lowercase().into() }
    }
}

/// A lookup of a lowercase name, without building a key.
struct NameRef<'a>(&'a str, &'a str);

impl Hash for NameRef<'_> {
    /// As `NameKey`'s derived hash: each field in turn, as `str`.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<NameKey> for NameRef<'_> {
    fn equivalent(&self, key: &NameKey) -> bool {
        *key.namespace == *self.0 && *key.service == *self.1
    }
}

/// One name: the views behind it, and its records if compiled.
#[derive(Clone, Debug, Default)]
struct Slot {
    /// Each view (exact names) with the latest revision told of it.
    views: Vec<(ServiceKey, u64)>,
    /// The latest revision told of any of them: compiled records are
    /// current when they were compiled at this version.
    version: u64,
    compiled: Option<(u64, Arc<Records>)>,
    /// Held while compiling: a query that finds the records behind while
    /// another compiles them waits for those rather than compile them too
    /// (both UDP threads compiling a big service at every change doubled
    /// the cost of a change).
    compiling: Arc<parking_lot::Mutex<()>>,
}

/// See the module's documentation.
#[derive(Debug)]
pub struct Catalog {
    names: papaya::HashMap<NameKey, Slot, Hasher>,
}

impl Default for Catalog {
    fn default() -> Self {
        // Blocking resizes: the writer that outgrows the table copies it
        // whole. Incremental ones are finished by later writes, and this map
        // is written far less than read: lookups went on searching the old
        // table and the new one, ten times slower (measured).
        let names = papaya::HashMap::builder().hasher(Hasher::default()).resize_mode(ResizeMode::Blocking).build();
        Self { names }
    }
}

impl Catalog {
    /// The records of `namespace`/`service` (lowercase): the compiled ones
    /// if current, else `compile`d from the views behind the name and the
    /// last records compiled (whose unchanged instances it reuses), and
    /// kept. Records compiled while a change came are kept too, not served:
    /// the next query compiles again from them. A query that finds the
    /// records behind while another compiles them waits for those. `None`
    /// if no view has that name.
    pub fn records(
        &self,
        namespace: &str,
        service: &str,
        compile: impl FnOnce(&[ServiceKey], Option<&Records>) -> Records,
    ) -> Option<Arc<Records>> {
        let names = self.names.pin();
        let current = |slot: &Slot| match &slot.compiled {
            Some((version, records)) if *version == slot.version => Some(records.clone()),
            _ => None,
        };
        let slot = names.get(&NameRef(namespace, service))?;
        if let Some(records) = current(slot) {
            return Some(records);
        }
        let compiling = slot.compiling.clone();
        let _compiling = compiling.lock();
        // Compiled meanwhile by the query that held the lock?
        let slot = names.get(&NameRef(namespace, service))?;
        if let Some(records) = current(slot) {
            return Some(records);
        }
        let version = slot.version;
        let views: Vec<ServiceKey> = slot.views.iter().map(|(k, _)| k.clone()).collect();
        let previous = slot.compiled.as_ref().map(|(_, records)| records.clone());
        // Read after the version: the views are at least that new.
        let records = Arc::new(compile(&views, previous.as_deref()));
        names.compute(NameKey::of(namespace, service), |entry| match entry {
            Some((_, slot)) if slot.compiled.as_ref().is_none_or(|(v, _)| *v < version) => {
                Operation::Insert(Slot { compiled: Some((version, records.clone())), ..slot.clone() })
            }
            _ => Operation::Abort(()),
        });
        Some(records)
    }

    /// Whether no name is known (the tests check that dropped names go).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl ViewListener for Catalog {
    fn changed(&self, service: &ServiceKey, revision: u64) {
        self.names.pin().compute(NameKey::of(&service.0, &service.1), |entry| {
            let mut slot = entry.map(|(_, s)| s.clone()).unwrap_or_default();
            match slot.views.iter_mut().find(|(k, _)| k == service) {
                Some((_, r)) => *r = (*r).max(revision),
                None => slot.views.push((service.clone(), revision)),
            }
            slot.version = slot.version.max(revision);
            Operation::Insert::<_, ()>(slot)
        });
    }

    fn dropped(&self, service: &ServiceKey, revision: u64) {
        self.names.pin().compute(NameKey::of(&service.0, &service.1), |entry| {
            let Some((_, old)) = entry else { return Operation::Abort(()) };
            // A view of the same name made since has a higher revision: keep it.
            let mut slot = old.clone();
            slot.views.retain(|(k, r)| !(k == service && *r <= revision));
            if slot.views.len() == old.views.len() {
                Operation::Abort(())
            } else if slot.views.is_empty() {
                Operation::Remove
            } else {
                // The dropped view had no instances: the records stand.
                Operation::Insert(slot)
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn hash_of(value: &impl Hash) -> u64 {
        foldhash::quality::FixedState::with_seed(7).hash_one(value)
    }

    fn key(ns: &str, svc: &str) -> ServiceKey {
        (ns.into(), svc.into())
    }

    /// Compiles nothing, counting calls and recording which views it read.
    struct Compiler {
        calls: AtomicUsize,
    }

    impl Compiler {
        fn read(&self, catalog: &Catalog, ns: &str, svc: &str) -> Option<Vec<ServiceKey>> {
            let mut seen = None;
            catalog.records(ns, svc, |views, _| {
                self.calls.fetch_add(1, Ordering::Relaxed);
                seen = Some(views.to_vec());
                Records::default()
            })?;
            Some(seen.unwrap_or_default())
        }
    }

    /// `NameRef` and `NameKey` must hash alike for lookups to find anything.
    #[test]
    fn lookups_hash_as_keys() {
        assert_eq!(hash_of(&NameRef("prod", "web")), hash_of(&NameKey::of("prod", "web")));
        assert_ne!(hash_of(&NameRef("prod", "web")), hash_of(&NameRef("pro", "dweb")));
    }

    #[test]
    fn compiled_once_per_change_and_unknown_names_read_nothing() {
        let (catalog, c) = (Catalog::default(), Compiler { calls: AtomicUsize::new(0) });
        assert!(c.read(&catalog, "prod", "web").is_none());
        catalog.changed(&key("prod", "web"), 3);
        assert_eq!(c.read(&catalog, "prod", "web"), Some(vec![key("prod", "web")]));
        assert_eq!(c.read(&catalog, "prod", "web"), Some(Vec::new()), "the second query copies");
        assert_eq!(c.calls.load(Ordering::Relaxed), 1);
        catalog.changed(&key("prod", "web"), 9);
        assert!(c.read(&catalog, "prod", "web").is_some());
        assert_eq!(c.calls.load(Ordering::Relaxed), 2, "a change compiles again");
        assert!(c.read(&catalog, "prod", "api").is_none());
        assert_eq!(c.calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn names_match_without_case_and_gather_their_views() {
        let (catalog, c) = (Catalog::default(), Compiler { calls: AtomicUsize::new(0) });
        catalog.changed(&key("Prod", "Web"), 1);
        catalog.changed(&key("prod", "web"), 2);
        let mut views = c.read(&catalog, "prod", "web").expect("known");
        views.sort();
        assert_eq!(views, vec![key("Prod", "Web"), key("prod", "web")]);
        catalog.dropped(&key("Prod", "Web"), 1);
        assert_eq!(c.read(&catalog, "prod", "web"), Some(Vec::new()), "records stand: the view had no instances");
        catalog.dropped(&key("prod", "web"), 2);
        assert!(c.read(&catalog, "prod", "web").is_none());
        assert!(catalog.is_empty(), "dropped names are forgotten");
    }

    #[test]
    fn a_late_drop_keeps_a_view_made_since() {
        let (catalog, c) = (Catalog::default(), Compiler { calls: AtomicUsize::new(0) });
        catalog.changed(&key("prod", "web"), 5);
        // Dropped at 4, told after the view came back at 5.
        catalog.dropped(&key("prod", "web"), 4);
        assert!(c.read(&catalog, "prod", "web").is_some());
        // Told out of order: the higher revision stands.
        catalog.changed(&key("prod", "web"), 3);
        assert!(c.read(&catalog, "prod", "web").is_some());
        catalog.changed(&key("prod", "web"), 6);
        assert!(c.read(&catalog, "prod", "web").is_some());
        assert_eq!(c.calls.load(Ordering::Relaxed), 2, "one compile at 5, one at 6");
    }

    #[test]
    fn records_compiled_across_a_change_are_not_served_but_build_the_next() {
        let (catalog, calls) = (Catalog::default(), AtomicUsize::new(0));
        catalog.changed(&key("prod", "web"), 1);
        let mut previous = Vec::new();
        let mut read = || {
            catalog.records("prod", "web", |_, last: Option<&Records>| {
                previous.push(last.map(|r| r as *const Records));
                // The writer changes the view while this query compiles.
                if calls.fetch_add(1, Ordering::Relaxed) == 0 {
                    catalog.changed(&key("prod", "web"), 2);
                }
                Records::default()
            })
        };
        let first = read().expect("known");
        let second = read().expect("known");
        assert_eq!(calls.load(Ordering::Relaxed), 2, "the first compile was behind: compiled again");
        assert!(read().is_some());
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(previous, vec![None, Some(Arc::as_ptr(&first))], "the second compile started from the first");
        assert!(!Arc::ptr_eq(&first, &second));
    }

    /// Two queries finding the records behind: one compiles, the other
    /// waits for its records rather than compile them too.
    #[test]
    fn one_query_compiles_while_the_others_wait() {
        let catalog = Arc::new(Catalog::default());
        catalog.changed(&key("prod", "web"), 1);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let other = std::sync::Mutex::new(None);
        let first = catalog.records("prod", "web", |_, _| {
            let catalog = catalog.clone();
            let done = done_tx.clone();
            *other.lock().expect("not poisoned") = Some(std::thread::spawn(move || {
                let mut compiled = false;
                let records = catalog.records("prod", "web", |_, _| {
                    compiled = true;
                    Records::default()
                });
                let _ = done.send(());
                (compiled, records)
            }));
            // The other query cannot be done before this compile is: it waits.
            let waited = done_rx.recv_timeout(std::time::Duration::from_millis(200));
            assert!(waited.is_err(), "the other query was answered while this one compiled");
            Records::default()
        });
        let other = other.lock().expect("not poisoned").take().expect("spawned");
        let (compiled, records) = other.join().expect("the other query");
        assert!(!compiled, "the other query compiled too");
        assert!(Arc::ptr_eq(&first.expect("known"), &records.expect("known")), "it got the records compiled");
    }
}
