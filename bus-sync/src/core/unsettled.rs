//! Which writers' copies may still be on their way, as told to the store
//! around each step.

/// What a store was last told of the unsettled writers
/// ([`super::SyncCore::unsettled_writers`]), and what to tell it around the
/// actions of a step: writers that became unsettled count as such for what
/// the step applies; writers that settled only once it is applied (the last
/// page of a transfer may hold the copy a moved one waits for).
#[derive(Debug, Default)]
pub struct UnsettledWriters {
    given: Vec<u64>,
}

impl UnsettledWriters {
    /// Before the step's actions: the set to give the store now, if `now`
    /// has writers it was not given (those given before stay in it).
    pub fn before(&self, now: &[u64]) -> Option<Vec<u64>> {
        if now.iter().all(|w| self.given.contains(w)) {
            return None;
        }
        let mut both: Vec<u64> = self.given.iter().chain(now).copied().collect();
        both.sort_unstable();
        both.dedup();
        Some(both)
    }

    /// After the step's actions: `now`, if it is not what was last given.
    pub fn after(&mut self, now: Vec<u64>) -> Option<Vec<u64>> {
        if now == self.given {
            return None;
        }
        self.given.clone_from(&now);
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::UnsettledWriters;

    /// Writers that become unsettled are given before a step's actions,
    /// with those given earlier; writers that settle only after them.
    #[test]
    fn unsettled_writers_widen_before_a_step_and_narrow_after_it() {
        let mut given = UnsettledWriters::default();
        assert_eq!(given.before(&[]), None);
        assert_eq!(given.after(Vec::new()), None);
        assert_eq!(given.before(&[7]), Some(vec![7]));
        assert_eq!(given.after(vec![7]), Some(vec![7]));
        // 7 settles and 3 does not: 3 joins before, 7 leaves after.
        assert_eq!(given.before(&[3]), Some(vec![3, 7]));
        assert_eq!(given.after(vec![3]), Some(vec![3]));
        // Only settling: nothing before, the narrower set after.
        assert_eq!(given.before(&[]), None);
        assert_eq!(given.after(Vec::new()), Some(Vec::new()));
        assert_eq!(given.after(Vec::new()), None);
    }
}
