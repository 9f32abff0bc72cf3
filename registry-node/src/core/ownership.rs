//! Who holds which instances. Each provider session and each unary lease is
//! an owner; an instance key has at most one owner (the last to upsert it),
//! and an owner's key set is what its end removes.

use std::collections::{HashMap, HashSet};

use registry_store::InstanceKey;

/// Who holds a set of instances: a Register stream or a unary lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u64);

/// Keys come from clients, so the hasher is seeded per process (as the
/// store's); foldhash's quality variant costs a fraction of SipHash on the
/// three strings of a key, hashed a few times per upsert under the write lock.
type Hasher = foldhash::quality::RandomState;

/// The two maps kept in step: key → owner and owner → keys.
#[derive(Debug, Default)]
pub struct Ownership {
    owner_of: HashMap<InstanceKey, OwnerId, Hasher>,
    owned: HashMap<OwnerId, HashSet<InstanceKey, Hasher>, Hasher>,
}

impl Ownership {
    /// Starts tracking `owner`, with no keys.
    pub fn open(&mut self, owner: OwnerId) {
        self.owned.entry(owner).or_default();
    }

    /// Whether `owner` is tracked (opened and not yet ended).
    pub fn is_open(&self, owner: OwnerId) -> bool {
        self.owned.contains_key(&owner)
    }

    /// Keys `owner` holds.
    pub fn count(&self, owner: OwnerId) -> usize {
        self.owned.get(&owner).map_or(0, HashSet::len)
    }

    pub fn holds(&self, owner: OwnerId, key: &InstanceKey) -> bool {
        self.owner_of.get(key) == Some(&owner)
    }

    pub fn owner_of(&self, key: &InstanceKey) -> Option<OwnerId> {
        self.owner_of.get(key).copied()
    }

    /// Whether `owner` may take `key` with at most `limit` keys held.
    pub fn within_limit(&self, owner: OwnerId, key: &InstanceKey, limit: usize) -> bool {
        self.holds(owner, key) || self.count(owner) < limit
    }

    /// `owner` takes `key` (an upsert): a previous owner loses it (newest
    /// wins). Returns the previous owner, if another.
    pub fn claim(&mut self, key: InstanceKey, owner: OwnerId) -> Option<OwnerId> {
        let previous = self.owner_of.insert(key.clone(), owner);
        if previous == Some(owner) {
            // An update by the holder: its key set already has it.
            return None;
        }
        if let Some(p) = previous
            && let Some(keys) = self.owned.get_mut(&p)
        {
            keys.remove(&key);
        }
        self.owned.entry(owner).or_default().insert(key);
        previous
    }

    /// `key` leaves whoever holds it (removed, or a newer copy elsewhere took
    /// it over). Returns that owner.
    pub fn release_key(&mut self, key: &InstanceKey) -> Option<OwnerId> {
        let owner = self.owner_of.remove(key)?;
        if let Some(keys) = self.owned.get_mut(&owner) {
            keys.remove(key);
        }
        Some(owner)
    }

    /// Ends `owner`: forgets it and every key it still holds, and returns
    /// those keys (for the caller to remove, or to leave in place).
    pub fn end(&mut self, owner: OwnerId) -> Vec<InstanceKey> {
        let keys = self.owned.remove(&owner).unwrap_or_default();
        let mut held: Vec<InstanceKey> = Vec::with_capacity(keys.len());
        for key in keys {
            if self.owner_of.get(&key) == Some(&owner) {
                self.owner_of.remove(&key);
                held.push(key);
            }
        }
        held
    }

    /// Forgets `owner` only if it holds nothing. Returns whether it did.
    pub fn end_if_empty(&mut self, owner: OwnerId) -> bool {
        if self.count(owner) > 0 {
            return false;
        }
        self.owned.remove(&owner);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> InstanceKey {
        InstanceKey::new("default", "orders", id)
    }

    #[test]
    fn a_newer_upsert_by_another_owner_takes_the_key_over() {
        let mut o = Ownership::default();
        let (a, b) = (OwnerId(1), OwnerId(2));
        o.open(a);
        o.open(b);
        assert_eq!(o.claim(key("i1"), a), None);
        assert_eq!(o.claim(key("i1"), a), None, "an owner updating its own key is no takeover");
        assert_eq!(o.claim(key("i1"), b), Some(a));
        assert_eq!((o.count(a), o.count(b)), (0, 1));
        assert!(o.holds(b, &key("i1")) && !o.holds(a, &key("i1")));
        assert_eq!(o.end(a), Vec::<InstanceKey>::new(), "ending the old owner removes nothing of b's");
        assert_eq!(o.end(b), vec![key("i1")]);
        assert_eq!(o.owner_of(&key("i1")), None);
    }

    #[test]
    fn a_key_taken_over_elsewhere_leaves_its_owner() {
        let mut o = Ownership::default();
        let a = OwnerId(1);
        o.claim(key("i1"), a);
        o.claim(key("i2"), a);
        assert_eq!(o.release_key(&key("i1")), Some(a));
        assert_eq!(o.release_key(&key("i1")), None);
        assert_eq!(o.count(a), 1);
        assert_eq!(o.end(a), vec![key("i2")]);
        assert!(!o.is_open(a));
    }

    #[test]
    fn the_limit_counts_new_keys_only() {
        let mut o = Ownership::default();
        let a = OwnerId(1);
        o.claim(key("i1"), a);
        assert!(o.within_limit(a, &key("i1"), 1), "updating a held key is always allowed");
        assert!(!o.within_limit(a, &key("i2"), 1));
        assert!(o.within_limit(OwnerId(2), &key("i2"), 1));
    }

    #[test]
    fn only_an_empty_owner_ends_quietly() {
        let mut o = Ownership::default();
        let a = OwnerId(1);
        o.open(a);
        o.claim(key("i1"), a);
        assert!(!o.end_if_empty(a));
        o.release_key(&key("i1"));
        assert!(o.end_if_empty(a));
        assert!(!o.is_open(a));
    }
}
