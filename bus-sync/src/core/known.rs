//! How far this node holds each writer's copies, as told to the store
//! around each step.

use std::collections::BTreeMap;

/// What a store was last told of how far each writer's copies are here
/// ([`super::SyncCore::writers_known`]), and what to tell it around the
/// actions of a step: a mark that went down counts for what the step applies
/// (a peer found behind: its copies may be on their way); a mark that went
/// up only once the step is applied (the last page of a transfer may hold
/// the copy a moved one waits for).
#[derive(Debug, Default)]
pub struct KnownWriters {
    given: Vec<(u64, u64)>,
}

impl KnownWriters {
    /// Before the step's actions: the marks to give the store now, if a
    /// writer's is below what it was given (each writer at the lower of the
    /// two; a writer missing from one side is known entirely there).
    pub fn before(&self, now: &[(u64, u64)]) -> Option<Vec<(u64, u64)>> {
        // Every step asks; almost always nothing went down, and that is
        // told without allocating (`given` is sorted by writer).
        let given =
            |writer: u64| self.given.binary_search_by_key(&writer, |(w, _)| *w).map_or(u64::MAX, |i| self.given[i].1);
        if now.iter().all(|&(writer, mark)| mark >= given(writer)) {
            return None;
        }
        let mut lower: BTreeMap<u64, u64> = self.given.iter().copied().collect();
        for &(writer, mark) in now {
            let given = lower.entry(writer).or_insert(u64::MAX);
            *given = (*given).min(mark);
        }
        Some(lower.into_iter().collect())
    }

    /// After the step's actions: `now` (sorted by writer, as
    /// [`super::SyncCore::writers_known`] gives it), if it is not what was
    /// last given.
    pub fn after(&mut self, now: Vec<(u64, u64)>) -> Option<Vec<(u64, u64)>> {
        if now == self.given {
            return None;
        }
        self.given.clone_from(&now);
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use registry_store::Origin;
    use registry_store::version::stable_hash;

    use super::KnownWriters;
    use crate::core::{SyncConfig, SyncCore};
    use crate::wire::BeatInfo;

    /// A peer caught up with its last beat is known up to the clock the
    /// beat carried, and not at all while behind it; one whose beats carry
    /// no clock (an older release) is known entirely once caught up.
    #[test]
    fn a_peer_is_known_up_to_the_clock_of_the_beat_it_is_caught_up_with() {
        let mut core = SyncCore::new(Origin::new("me", 1), SyncConfig::default(), 0);
        let (p, q) = (Origin::new("p", 1), Origin::new("q", 1));
        let (hp, hq) = (stable_hash(b"p"), stable_hash(b"q"));
        let sorted = |mut v: Vec<(u64, u64)>| {
            v.sort_unstable();
            v
        };
        core.on_beat(p.clone(), BeatInfo { hlc: Some(500), ..BeatInfo::default() }, (0, 0), 10);
        core.on_beat(q.clone(), BeatInfo::default(), (0, 0), 10);
        assert_eq!(core.writers_known(), sorted(vec![(hp, 500), (hq, u64::MAX)]));
        // p announces changes this node does not have: known up to nothing.
        core.on_beat(p, BeatInfo { seq: 3, hlc: Some(900), ..BeatInfo::default() }, (0, 0), 20);
        assert_eq!(core.writers_known(), sorted(vec![(hp, 0), (hq, u64::MAX)]));
        // The bus is down: nobody is known.
        core.on_bus(false, 30);
        assert_eq!(core.writers_known(), sorted(vec![(hp, 0), (hq, 0)]));
    }

    /// A mark that goes down is given before a step's actions, with the
    /// other writers' as given earlier; one that goes up only after them.
    #[test]
    fn marks_go_down_before_a_step_and_up_after_it() {
        let mut given = KnownWriters::default();
        assert_eq!(given.before(&[]), None);
        assert_eq!(given.after(Vec::new()), None);
        // A new writer, not known at all: before (from "entirely").
        assert_eq!(given.before(&[(7, 0)]), Some(vec![(7, 0)]));
        assert_eq!(given.after(vec![(7, 0)]), Some(vec![(7, 0)]));
        // 7 caught up to 50 and 3 appears behind: 3 goes down before (7
        // stays at 0 for the step), 7 goes up after.
        assert_eq!(given.before(&[(3, 0), (7, 50)]), Some(vec![(3, 0), (7, 0)]));
        assert_eq!(given.after(vec![(3, 0), (7, 50)]), Some(vec![(3, 0), (7, 50)]));
        // Only going up: nothing before, the new marks after.
        assert_eq!(given.before(&[(3, 10), (7, 60)]), None);
        assert_eq!(given.after(vec![(3, 10), (7, 60)]), Some(vec![(3, 10), (7, 60)]));
        assert_eq!(given.after(vec![(3, 10), (7, 60)]), None);
        // 7 falls behind (a gap): down to 0 before the step.
        assert_eq!(given.before(&[(3, 10), (7, 0)]), Some(vec![(3, 10), (7, 0)]));
        // A writer gone from the list (dropped) is known entirely: up, after.
        assert_eq!(given.after(vec![(3, 10)]), Some(vec![(3, 10)]));
        assert_eq!(given.before(&[(3, 10)]), None);
    }
}
