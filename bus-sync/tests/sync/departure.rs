//! A node that stops on purpose says so: beats while it drains carry
//! `leaving`, and its last beat carries `farewell`. Peers then flag its
//! records as orphaned at once (not after the dead time) and drop them when
//! the orphan grace ends, exactly as for a crashed node from that point on.

use bus_sync::wire::BeatInfo;
use bus_sync::{Action, PeerState, SyncConfig, SyncCore};
use registry_store::Origin;

const DEAD_AFTER: u64 = 6_000;
const GRACE: u64 = 10_000;

fn node() -> SyncCore {
    let cfg = SyncConfig { dead_after_ms: DEAD_AFTER, orphan_grace_ms: GRACE, ..SyncConfig::default() };
    SyncCore::new(Origin::new("me", 1), cfg, 0)
}

fn peer() -> Origin {
    Origin::new("p", 7)
}

fn beat(leaving: bool, farewell: bool) -> BeatInfo {
    BeatInfo { ready: true, live: 3, entries: 3, leaving, farewell, ..Default::default() }
}

fn orphaned(actions: &[Action], flag: bool) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::SetOrphaned { origin, orphaned } if *origin == peer() && *orphaned == flag))
}

fn dropped(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::DropOrigin { origin } if *origin == peer()))
}

#[test]
fn a_leaving_peer_stays_live_and_says_so() {
    let mut core = node();
    core.on_beat(peer(), beat(true, false), (0, 0), 10);
    let view = &core.peers(20)[0];
    assert_eq!(view.state, PeerState::Live);
    assert!(view.beat.as_ref().is_some_and(|b| b.leaving));
    assert!(!view.left);
}

#[test]
fn a_farewell_orphans_at_once_and_the_grace_runs_from_there() {
    let mut core = node();
    core.on_beat(peer(), beat(true, false), (0, 0), 10);
    let actions = core.on_beat(peer(), beat(true, true), (0, 0), 1_000);
    assert!(orphaned(&actions, true), "flagged at the farewell, not {DEAD_AFTER} ms later: {actions:?}");
    let view = &core.peers(1_000)[0];
    assert_eq!(view.state, PeerState::Orphaned);
    assert!(view.left);
    // Kept through the grace (providers still moving get it), dropped after.
    assert!(!dropped(&core.on_tick(1_000 + GRACE - 1, 0)));
    assert!(dropped(&core.on_tick(1_000 + GRACE, 0)));
    assert!(core.peers(1_000 + GRACE).is_empty());
}

#[test]
fn without_a_farewell_a_silent_peer_waits_out_the_dead_time() {
    let mut core = node();
    core.on_beat(peer(), beat(true, false), (0, 0), 10);
    assert!(!orphaned(&core.on_tick(10 + DEAD_AFTER - 1, 0), true));
    assert!(orphaned(&core.on_tick(10 + DEAD_AFTER, 0), true));
    assert!(!core.peers(10 + DEAD_AFTER)[0].left, "a crash is not a departure");
}

#[test]
fn a_peer_that_speaks_after_its_farewell_is_live_again() {
    // Real nodes say nothing after a farewell: this one is a forgery (or the
    // node is back), and keeping a live node's records is the safe side.
    let mut core = node();
    core.on_beat(peer(), beat(true, true), (0, 0), 10);
    let actions = core.on_beat(peer(), beat(false, false), (0, 0), 20);
    assert!(orphaned(&actions, false), "{actions:?}");
    let view = &core.peers(20)[0];
    assert_eq!(view.state, PeerState::Live);
    assert!(!view.left);
}

#[test]
fn nothing_is_pulled_from_a_peer_that_left() {
    let mut core = node();
    // Its farewell announces changes this node never saw: asking for them
    // would only time out.
    let actions = core.on_beat(peer(), BeatInfo { seq: 5, farewell: true, ..beat(true, true) }, (0, 0), 10);
    let later = core.on_tick(5_000, 0);
    let pulls = actions.iter().chain(&later).filter(|a| matches!(a, Action::Request { .. })).count();
    assert_eq!(pulls, 0, "{actions:?} {later:?}");
}

#[test]
fn the_safety_valve_does_not_hold_back_a_peer_that_left() {
    // The valve guards against this node's own isolation (everyone silent at
    // once); a farewell is said, not inferred, so it is not held back even
    // when the departed node held most of the instances.
    let mut core = node();
    let big = BeatInfo { live: 1_000, entries: 1_000, ..beat(true, true) };
    core.on_beat(peer(), big, (0, 0), 10);
    let actions = core.on_tick(10 + GRACE, 5);
    assert!(dropped(&actions), "{actions:?}");
    assert!(!core.valve_holding());
}
