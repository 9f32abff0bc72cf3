//! The consumer's cache of one service, as plain data: applying snapshots and
//! deltas, detecting revision gaps, and computing what really changed. No I/O;
//! the task in [`consumer`](crate::consumer) drives it.

use std::collections::BTreeMap;

use registry_proto::v1;

/// One service as a consumer sees it: instances by id, plus how current it is.
///
/// ```
/// use registry_client::ServiceView;
/// use registry_client::v1::{Instance, ServiceSnapshot};
///
/// let mut view = ServiceView::new("default", "orders");
/// let snapshot = ServiceSnapshot {
///     service: "orders".into(),
///     instances: vec![Instance { instance_id: "o1".into(), host: "10.0.0.7".into(), port: 80, ..Default::default() }],
///     revision: 3,
///     ..Default::default()
/// };
/// let changes = view.apply_snapshot(snapshot);
/// assert_eq!(changes.len(), 1);
/// assert!(view.instances.contains_key("o1"));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceView {
    /// Namespace of the service.
    pub namespace: String,
    /// Name of the service.
    pub service: String,
    /// Live instances by instance id.
    pub instances: BTreeMap<String, v1::Instance>,
    /// Revision of the serving node's view (revisions are per node: a new node
    /// starts a new sequence with its snapshot).
    pub revision: u64,
    /// True while no node streams to this view: it is the last good one, kept
    /// on purpose (an unreachable registry never empties it).
    pub stale: bool,
    /// The serving node says part of the view comes from a silent peer, or it is
    /// itself cut off from its peers.
    pub degraded: bool,
    /// Age in ms of the oldest node state contributing to the view.
    pub oldest_origin_age_ms: u64,
    /// The endpoint the view is (or was last) streamed from.
    pub endpoint: String,
}

/// One real difference between two views of a service.
///
/// ```
/// use registry_client::{InstanceChange, ServiceView};
/// use registry_client::v1::{Instance, ServiceSnapshot};
///
/// let mut view = ServiceView::new("default", "s");
/// let a = Instance { instance_id: "a".into(), ..Default::default() };
/// let changes = view.apply_snapshot(ServiceSnapshot { instances: vec![a.clone()], ..Default::default() });
/// assert_eq!(changes, [InstanceChange::Added(a)]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum InstanceChange {
    /// A new instance.
    Added(v1::Instance),
    /// An instance whose address, status, weight, zone or metadata changed.
    Updated(v1::Instance),
    /// An instance that is gone (its last known record).
    Removed(v1::Instance),
}

impl InstanceChange {
    /// The instance the change is about.
    ///
    /// ```
    /// use registry_client::InstanceChange;
    /// use registry_client::v1::Instance;
    /// let c = InstanceChange::Added(Instance { instance_id: "a".into(), ..Default::default() });
    /// assert_eq!(c.instance().instance_id, "a");
    /// ```
    pub fn instance(&self) -> &v1::Instance {
        match self {
            Self::Added(i) | Self::Updated(i) | Self::Removed(i) => i,
        }
    }
}

/// A delta that does not follow the view's revision: something was lost, the
/// view must be rebuilt from a new snapshot.
///
/// ```
/// use registry_client::{RevisionGap, ServiceView};
/// use registry_client::v1::ServiceDelta;
///
/// let mut view = ServiceView::new("default", "s");
/// let late = ServiceDelta { revision: 8, prev_revision: 7, ..Default::default() };
/// assert_eq!(view.apply_delta(late), Err(RevisionGap { revision: 0, prev_revision: 7 }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("delta follows revision {prev_revision} but the view is at {revision}")]
pub struct RevisionGap {
    /// The view's revision.
    pub revision: u64,
    /// The revision the delta says it follows.
    pub prev_revision: u64,
}

impl ServiceView {
    /// An empty view, not yet filled by any snapshot (stale).
    ///
    /// ```
    /// let v = registry_client::ServiceView::new("default", "orders");
    /// assert!(v.stale && v.instances.is_empty());
    /// ```
    pub fn new(namespace: &str, service: &str) -> Self {
        Self { namespace: namespace.into(), service: service.into(), stale: true, ..Self::default() }
    }

    /// Replaces the instances with a snapshot's and returns only the real
    /// differences, so a resync after a reconnect does not flap anything.
    ///
    /// ```
    /// use registry_client::{InstanceChange, ServiceView};
    /// use registry_client::v1::{Instance, ServiceSnapshot};
    ///
    /// let i = Instance { instance_id: "a".into(), port: 1, ..Default::default() };
    /// let mut view = ServiceView::new("default", "s");
    /// view.apply_snapshot(ServiceSnapshot { instances: vec![i.clone()], revision: 5, ..Default::default() });
    /// // Another node, another revision, same instances: nothing changed.
    /// let again = view.apply_snapshot(ServiceSnapshot { instances: vec![i], revision: 2, ..Default::default() });
    /// assert!(again.is_empty());
    /// assert_eq!(view.revision, 2);
    /// ```
    pub fn apply_snapshot(&mut self, snapshot: v1::ServiceSnapshot) -> Vec<InstanceChange> {
        let mut next: BTreeMap<String, v1::Instance> =
            snapshot.instances.into_iter().map(|i| (i.instance_id.clone(), i)).collect();
        let mut changes = Vec::new();
        for (id, old) in std::mem::take(&mut self.instances) {
            match next.get(&id) {
                None => changes.push(InstanceChange::Removed(old)),
                Some(new) if *new != old => changes.push(InstanceChange::Updated(new.clone())),
                Some(_) => {}
            }
            // Keep what was already known in place; added ones are collected below.
            if let Some(new) = next.remove(&id) {
                self.instances.insert(id, new);
            }
        }
        for (id, new) in next {
            changes.push(InstanceChange::Added(new.clone()));
            self.instances.insert(id, new);
        }
        self.revision = snapshot.revision;
        self.set_freshness(snapshot.freshness);
        self.stale = false;
        changes
    }

    /// The view as a snapshot: applied to another view, it makes that one
    /// equal to this one and yields only the differences.
    pub(crate) fn to_snapshot(&self) -> v1::ServiceSnapshot {
        v1::ServiceSnapshot {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            instances: self.instances.values().cloned().collect(),
            revision: self.revision,
            freshness: Some(v1::Freshness { oldest_origin_age_ms: self.oldest_origin_age_ms, degraded: self.degraded }),
        }
    }

    /// Applies a delta that follows the view's revision; refuses one that does
    /// not (the caller resubscribes). Upserts equal to what is known are no change.
    ///
    /// ```
    /// use registry_client::ServiceView;
    /// use registry_client::v1::{Instance, InstanceKey, ServiceDelta, ServiceSnapshot};
    ///
    /// let mut view = ServiceView::new("default", "s");
    /// view.apply_snapshot(ServiceSnapshot { revision: 1, ..Default::default() });
    /// let add = ServiceDelta {
    ///     upserted: vec![Instance { instance_id: "a".into(), ..Default::default() }],
    ///     revision: 2,
    ///     prev_revision: 1,
    ///     ..Default::default()
    /// };
    /// assert_eq!(view.apply_delta(add).unwrap().len(), 1);
    /// let skipped = ServiceDelta { revision: 9, prev_revision: 8, ..Default::default() };
    /// assert!(view.apply_delta(skipped).is_err());
    /// ```
    pub fn apply_delta(&mut self, delta: v1::ServiceDelta) -> Result<Vec<InstanceChange>, RevisionGap> {
        if delta.prev_revision != self.revision {
            return Err(RevisionGap { revision: self.revision, prev_revision: delta.prev_revision });
        }
        let mut changes = Vec::new();
        for key in delta.removed {
            if let Some(old) = self.instances.remove(&key.instance_id) {
                changes.push(InstanceChange::Removed(old));
            }
        }
        for new in delta.upserted {
            match self.instances.insert(new.instance_id.clone(), new.clone()) {
                None => changes.push(InstanceChange::Added(new)),
                Some(old) if old != new => changes.push(InstanceChange::Updated(new)),
                Some(_) => {}
            }
        }
        self.revision = delta.revision;
        self.set_freshness(delta.freshness);
        Ok(changes)
    }

    /// Takes the freshness a node pushed (snapshot, delta or progress).
    /// Returns whether anything changed.
    ///
    /// ```
    /// use registry_client::ServiceView;
    /// use registry_client::v1::Freshness;
    /// let mut v = ServiceView::new("default", "s");
    /// assert!(v.set_freshness(Some(Freshness { oldest_origin_age_ms: 0, degraded: true })));
    /// assert!(v.degraded);
    /// ```
    pub fn set_freshness(&mut self, freshness: Option<v1::Freshness>) -> bool {
        let f = freshness.unwrap_or_default();
        let changed = self.degraded != f.degraded || self.oldest_origin_age_ms != f.oldest_origin_age_ms;
        self.degraded = f.degraded;
        self.oldest_origin_age_ms = f.oldest_origin_age_ms;
        changed
    }

    /// Instances that pass `filter`, in id order.
    ///
    /// ```
    /// use registry_client::{InstanceFilter, ServiceView};
    /// let v = ServiceView::new("default", "s");
    /// assert_eq!(v.matching(&InstanceFilter::up()).count(), 0);
    /// ```
    pub fn matching<'a>(&'a self, filter: &'a crate::InstanceFilter) -> impl Iterator<Item = &'a v1::Instance> + 'a {
        self.instances.values().filter(move |i| filter.matches(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, port: u32) -> v1::Instance {
        v1::Instance { instance_id: id.into(), port, ..Default::default() }
    }

    fn snap(instances: Vec<v1::Instance>, revision: u64) -> v1::ServiceSnapshot {
        v1::ServiceSnapshot { instances, revision, ..Default::default() }
    }

    #[test]
    fn a_resync_emits_only_real_differences() {
        let mut v = ServiceView::new("default", "s");
        v.apply_snapshot(snap(vec![inst("a", 1), inst("b", 2), inst("c", 3)], 10));
        let changes = v.apply_snapshot(snap(vec![inst("a", 1), inst("b", 20), inst("d", 4)], 3));
        assert_eq!(
            changes,
            [
                InstanceChange::Updated(inst("b", 20)),
                InstanceChange::Removed(inst("c", 3)),
                InstanceChange::Added(inst("d", 4))
            ]
        );
        assert_eq!(v.instances.keys().collect::<Vec<_>>(), ["a", "b", "d"]);
        assert!(!v.stale);
    }

    #[test]
    fn deltas_must_follow_the_revision() {
        let mut v = ServiceView::new("default", "s");
        v.apply_snapshot(snap(vec![inst("a", 1)], 1));
        let d = v1::ServiceDelta {
            upserted: vec![inst("a", 1), inst("b", 2)],
            removed: vec![v1::InstanceKey { instance_id: "zzz".into(), ..Default::default() }],
            revision: 2,
            prev_revision: 1,
            ..Default::default()
        };
        assert_eq!(v.apply_delta(d.clone()), Ok(vec![InstanceChange::Added(inst("b", 2))]));
        assert_eq!(v.apply_delta(d), Err(RevisionGap { revision: 2, prev_revision: 1 }));
        let rm = v1::ServiceDelta {
            removed: vec![v1::InstanceKey { instance_id: "a".into(), ..Default::default() }],
            revision: 3,
            prev_revision: 2,
            ..Default::default()
        };
        assert_eq!(v.apply_delta(rm), Ok(vec![InstanceChange::Removed(inst("a", 1))]));
    }
}
