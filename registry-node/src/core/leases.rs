//! Unary leases: a lease is an owner with a TTL, renewed by its provider and
//! ended when its deadline passes. Plain data: every operation takes `now`,
//! and [`Leases::next_deadline`] tells the reaper how long it may sleep.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ownership::OwnerId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: OwnerId,
    pub ttl: Duration,
    pub deadline: Instant,
    /// The principal that took the lease (auth on): only it may renew it.
    pub principal: Option<Arc<str>>,
}

/// Leases by id, plus their deadlines in order.
#[derive(Debug, Default)]
pub struct Leases {
    by_id: HashMap<String, Lease>,
    deadlines: BTreeSet<(Instant, String)>,
}

impl Leases {
    /// Starts lease `id` for `owner`, due `ttl` after `now`.
    pub fn grant(&mut self, id: String, owner: OwnerId, ttl: Duration, now: Instant) {
        self.grant_to(id, owner, ttl, now, None);
    }

    /// [`Leases::grant`], taken by `principal`.
    pub fn grant_to(&mut self, id: String, owner: OwnerId, ttl: Duration, now: Instant, principal: Option<Arc<str>>) {
        let deadline = now + ttl;
        if let Some(old) = self.by_id.insert(id.clone(), Lease { owner, ttl, deadline, principal }) {
            self.deadlines.remove(&(old.deadline, id.clone()));
        }
        self.deadlines.insert((deadline, id));
    }

    /// Extends lease `id` to `ttl` after `now`. `None` if it is unknown
    /// (never granted, expired or dropped).
    pub fn renew(&mut self, id: &str, now: Instant) -> Option<&Lease> {
        let lease = self.by_id.get_mut(id)?;
        self.deadlines.remove(&(lease.deadline, id.to_string()));
        lease.deadline = now + lease.ttl;
        self.deadlines.insert((lease.deadline, id.to_string()));
        Some(lease)
    }

    pub fn get(&self, id: &str) -> Option<&Lease> {
        self.by_id.get(id)
    }

    /// Ends lease `id` (its owner is released by the caller).
    pub fn remove(&mut self, id: &str) -> Option<Lease> {
        let lease = self.by_id.remove(id)?;
        self.deadlines.remove(&(lease.deadline, id.to_string()));
        Some(lease)
    }

    /// Ends every lease due at `now` (deadline reached), earliest first, and
    /// returns their owners.
    pub fn expire(&mut self, now: Instant) -> Vec<OwnerId> {
        let mut owners = Vec::new();
        while let Some((deadline, _)) = self.deadlines.first() {
            if *deadline > now {
                break;
            }
            let Some((_, id)) = self.deadlines.pop_first() else { break };
            if let Some(lease) = self.by_id.remove(&id) {
                owners.push(lease.owner);
            }
        }
        owners
    }

    /// When the next lease is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn a_lease_expires_at_its_deadline_not_before() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        l.grant("a".into(), OwnerId(1), TTL, t0);
        assert_eq!(l.next_deadline(), Some(t0 + TTL));
        assert_eq!(l.expire(t0 + TTL - Duration::from_millis(1)), vec![]);
        assert_eq!(l.expire(t0 + TTL), vec![OwnerId(1)]);
        assert!(l.is_empty());
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn renewing_moves_the_deadline_and_only_that() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        l.grant("a".into(), OwnerId(1), TTL, t0);
        l.grant("b".into(), OwnerId(2), TTL * 2, t0);
        let renewed = l.renew("a", t0 + Duration::from_secs(15)).map(|x| x.deadline);
        assert_eq!(renewed, Some(t0 + Duration::from_secs(25)));
        assert_eq!(l.next_deadline(), Some(t0 + TTL * 2), "b is due first now");
        assert_eq!(l.expire(t0 + Duration::from_secs(20)), vec![OwnerId(2)]);
        assert_eq!(l.expire(t0 + Duration::from_secs(25)), vec![OwnerId(1)]);
    }

    #[test]
    fn an_expired_or_removed_lease_cannot_be_renewed() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        l.grant("a".into(), OwnerId(1), TTL, t0);
        l.grant("b".into(), OwnerId(2), TTL, t0);
        l.expire(t0 + TTL);
        assert!(l.renew("a", t0 + TTL).is_none());
        assert!(l.remove("b").is_none(), "b expired with a");
        l.grant("c".into(), OwnerId(3), TTL, t0);
        assert_eq!(l.remove("c").map(|x| x.owner), Some(OwnerId(3)));
        assert!(l.renew("c", t0).is_none());
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn leases_due_together_all_expire_earliest_first() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        for (i, s) in [3u64, 1, 2].into_iter().enumerate() {
            l.grant(format!("l{i}"), OwnerId(s), Duration::from_secs(s), t0);
        }
        assert_eq!(l.expire(t0 + Duration::from_secs(60)), vec![OwnerId(1), OwnerId(2), OwnerId(3)]);
    }
}
