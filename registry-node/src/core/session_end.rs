//! How the end of a provider session decides when its instances go: the
//! removal table of ARCHITECTURE.md, as a function. The session task only
//! tells how the stream ended ([`End`]) and carries out the [`Disposal`].

use std::time::Duration;

use crate::config::NodeConfig;

/// What ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A `goodbye`: the provider is stopping.
    Goodbye,
    /// A `goodbye` with `moved` (the provider registered on another node),
    /// or an end that does not say why after the node asked it to move.
    Moved,
    /// The client closed its side of the stream cleanly.
    HalfClose,
    /// A plain `goodbye` from a session the node had asked to move.
    Leaving,
    /// The transport broke (RST, connection loss, keepalive timeout).
    Broken,
    /// No message within the lease TTL.
    LeaseExpired,
    /// The node is stopping.
    Shutdown,
}

/// What becomes of an ended session's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Removed at once. `expired`: counted as expirations (the provider
    /// ended without a goodbye), else as deregistrations.
    Remove { expired: bool },
    /// Kept until newer copies elsewhere have taken every one over, or
    /// `bound` has passed; what is left is removed then (counted as
    /// `expired` says). If the node stops meanwhile, they are abandoned.
    Hold { bound: Duration, expired: bool },
    /// Left in place, unowned: the node is stopping and its slice goes with
    /// it. Removing them now, with fresh versions, could hide the
    /// registrations their providers are making elsewhere at this moment.
    Abandon,
}

/// How a session ended, once whether the node had asked it to move is known.
/// Asked to move, an end that does not say why (half-close, silence while it
/// registers elsewhere) is a move: a removal now could overtake the
/// provider's new copies. A plain goodbye then says it is stopping.
pub fn end_of(end: End, asked_to_move: bool) -> End {
    match end {
        End::HalfClose | End::LeaseExpired if asked_to_move => End::Moved,
        End::Goodbye if asked_to_move => End::Leaving,
        other => other,
    }
}

/// The times a disposal depends on, from the node's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holds {
    /// `sessions.reconnect_grace_ms`: how long a broken session's provider
    /// has to come back.
    pub reconnect_grace: Duration,
    /// `sync.dead_after_ms + sync.orphan_grace_ms` on a clustered node (as
    /// long as it keeps a silent peer's records); `None` standalone.
    pub move_hold: Option<Duration>,
    /// One beat interval on a clustered node; `None` standalone.
    pub beat_interval: Option<Duration>,
}

impl Holds {
    pub fn of(config: &NodeConfig) -> Self {
        let clustered = config.clustered();
        let s = &config.sync;
        Self {
            reconnect_grace: config.sessions.reconnect_grace(),
            move_hold: clustered.then(|| Duration::from_millis(s.dead_after_ms + s.orphan_grace_ms)),
            beat_interval: clustered.then(|| Duration::from_millis(s.beat_interval_ms)),
        }
    }
}

/// The removal table. A moved provider is alive and registered elsewhere;
/// only the bus is slow or cut (a partition that began as it moved), so its
/// old copies stay as long as this node would keep a silent peer's records.
/// A provider that says it is stopping after a drain is not shown for a
/// move's whole hold, but one beat interval still lets a client that moved
/// without saying `moved` have its new copies arrive first.
pub fn disposal(end: End, holds: &Holds) -> Disposal {
    match end {
        End::Goodbye | End::HalfClose => Disposal::Remove { expired: false },
        End::LeaseExpired => Disposal::Remove { expired: true },
        End::Broken => Disposal::Hold { bound: holds.reconnect_grace, expired: true },
        End::Moved => Disposal::Hold {
            bound: holds.move_hold.map_or(holds.reconnect_grace, |hold| hold.max(holds.reconnect_grace)),
            expired: false,
        },
        End::Leaving => Disposal::Hold { bound: holds.beat_interval.unwrap_or(Duration::ZERO), expired: false },
        End::Shutdown => Disposal::Abandon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(3_000);
    const MOVE_HOLD: Duration = Duration::from_millis(16_000);
    const BEAT: Duration = Duration::from_millis(1_000);

    fn clustered() -> Holds {
        Holds { reconnect_grace: GRACE, move_hold: Some(MOVE_HOLD), beat_interval: Some(BEAT) }
    }

    fn standalone() -> Holds {
        Holds { reconnect_grace: GRACE, move_hold: None, beat_interval: None }
    }

    /// One row of the table: how the stream ended, whether the node had
    /// asked it to move, and the disposal on a clustered node.
    fn row(end: End, asked_to_move: bool) -> Disposal {
        disposal(end_of(end, asked_to_move), &clustered())
    }

    #[test]
    fn goodbye_removes_at_once() {
        assert_eq!(row(End::Goodbye, false), Disposal::Remove { expired: false });
    }

    #[test]
    fn a_moved_goodbye_holds_until_taken_over_or_a_silent_peers_hold() {
        assert_eq!(row(End::Moved, false), Disposal::Hold { bound: MOVE_HOLD, expired: false });
        // Never shorter than the reconnect grace.
        let long_grace = Holds { reconnect_grace: MOVE_HOLD * 2, ..clustered() };
        assert_eq!(disposal(End::Moved, &long_grace), Disposal::Hold { bound: MOVE_HOLD * 2, expired: false });
    }

    #[test]
    fn half_close_removes_at_once() {
        assert_eq!(row(End::HalfClose, false), Disposal::Remove { expired: false });
    }

    #[test]
    fn a_broken_transport_holds_for_the_reconnect_grace_then_counts_as_expired() {
        assert_eq!(row(End::Broken, false), Disposal::Hold { bound: GRACE, expired: true });
        assert_eq!(row(End::Broken, true), Disposal::Hold { bound: GRACE, expired: true });
    }

    #[test]
    fn silence_removes_at_once_as_expired() {
        assert_eq!(row(End::LeaseExpired, false), Disposal::Remove { expired: true });
    }

    #[test]
    fn half_close_or_silence_after_a_drain_is_a_move() {
        assert_eq!(end_of(End::HalfClose, true), End::Moved);
        assert_eq!(end_of(End::LeaseExpired, true), End::Moved);
        assert_eq!(row(End::HalfClose, true), Disposal::Hold { bound: MOVE_HOLD, expired: false });
        assert_eq!(row(End::LeaseExpired, true), Disposal::Hold { bound: MOVE_HOLD, expired: false });
    }

    #[test]
    fn a_plain_goodbye_after_a_drain_holds_one_beat_interval() {
        assert_eq!(end_of(End::Goodbye, true), End::Leaving);
        assert_eq!(row(End::Goodbye, true), Disposal::Hold { bound: BEAT, expired: false });
    }

    #[test]
    fn a_moved_goodbye_after_a_drain_is_still_a_move() {
        assert_eq!(row(End::Moved, true), Disposal::Hold { bound: MOVE_HOLD, expired: false });
    }

    #[test]
    fn shutdown_abandons_whatever_the_drain() {
        assert_eq!(row(End::Shutdown, false), Disposal::Abandon);
        assert_eq!(row(End::Shutdown, true), Disposal::Abandon);
    }

    #[test]
    fn standalone_a_move_holds_the_grace_and_leaving_holds_nothing() {
        let s = standalone();
        assert_eq!(disposal(End::Moved, &s), Disposal::Hold { bound: GRACE, expired: false });
        assert_eq!(disposal(End::Leaving, &s), Disposal::Hold { bound: Duration::ZERO, expired: false });
        assert_eq!(disposal(End::Goodbye, &s), Disposal::Remove { expired: false });
    }

    #[test]
    fn holds_come_from_the_settings() {
        let mut config = NodeConfig::default();
        assert_eq!(Holds::of(&config).move_hold, None, "a standalone node has no peers to wait for");
        config.nats_url = vec!["nats://127.0.0.1:4222".into()];
        let h = Holds::of(&config);
        assert_eq!(h.move_hold, Some(Duration::from_millis(config.sync.dead_after_ms + config.sync.orphan_grace_ms)));
        assert_eq!(h.beat_interval, Some(Duration::from_millis(config.sync.beat_interval_ms)));
        assert_eq!(h.reconnect_grace, config.sessions.reconnect_grace());
    }
}
