//! The state-of-the-world bookkeeping of one ADS stream, with no I/O: which
//! names the client wants of each type, what was last sent (nonce, version,
//! and the revision of each resource in it), whether the client took it
//! (ACK) or refused it (NACK), and so when a response is owed.
//!
//! The rules, from the xDS protocol:
//! - A request with no nonce subscribes (the first of a type on a stream, or
//!   a client that reconnected): it is always answered, even when none of
//!   its resources exists, so the client learns that they do not.
//! - A request carrying the nonce of the last response of its type is the
//!   client's verdict on it: an ACK, or with `error_detail` a NACK (logged
//!   and counted by the caller; the client keeps its last good config, and
//!   the same resources are not sent again until they change). Its names
//!   are the subscription from then on.
//! - A request carrying an older nonce was overtaken by a response in
//!   flight; it is ignored (its names come again with the next ACK).
//! - Between requests, a response is owed when a subscribed resource came,
//!   went or (endpoints) changed revision. Listener and cluster responses
//!   are state of the world: each names every subscribed resource that
//!   exists, and one left out is removed. Endpoint and route responses
//!   hold only the resources the client does not hold at their revision
//!   (the protocol groups these types as the incremental variant does,
//!   and a client keeps one left out), so a stream watching many services
//!   is sent the one that changed, not all of them. A response to a
//!   subscription holds everything, of every type.
//! - Listeners and clusters may be asked for by wildcard (Envoy's CDS): a
//!   first request with no names, or the name `*`. The stream then owes every
//!   resource of the type that exists (the caller lists them), and compares
//!   again at every change in the namespace. Explicit names beside `*` are
//!   subscribed too; a request that names resources without `*` ends the
//!   wildcard.

use std::collections::{BTreeMap, BTreeSet};

use super::resources::ResourceType;

/// What the client said with a request, for the caller to log and count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new subscription (no nonce): answered whatever it finds.
    Subscribe,
    /// The last response of the type was applied.
    Ack { version: String },
    /// The last response of the type was refused; `version` is the last
    /// one the client holds.
    Nack { version: String, message: String },
    /// The same NACK again (a client retrying): not counted twice; its
    /// names are taken as any request's.
    Repeated,
    /// Answers a response that a newer one overtook: ignored.
    Stale,
}

/// A request refused whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{count} resource names in one request is over the limit of {limit} (limits.max_services_per_subscribe)")]
    TooManyNames { count: usize, limit: usize },
}

/// What a response held of each resource: its revision (endpoints) or 0
/// (the others, which change only by existing or not); absent resources
/// are not in the map.
pub type Sent = BTreeMap<String, u64>;

/// What a client wants of one type, in either variant.
#[derive(Debug, Default)]
struct Interest {
    /// The client has asked for this type on this stream.
    subscribed: bool,
    names: BTreeSet<String>,
    /// Every resource of the type is subscribed (see the module's rules).
    wildcard: bool,
    /// A response is owed whatever the state (a new subscription).
    owed: bool,
    /// Compare every resource of the type before the next response (the
    /// subscription changed, or a wildcard's namespace did).
    dirty: bool,
    /// Names asked for that changed since the last response: unless
    /// `dirty` or `owed`, only these need comparing (what delta does; a
    /// state-of-the-world response holds every resource anyway).
    touched: BTreeSet<String>,
}

/// What a stream wants of each of the four types: the part of the
/// bookkeeping both variants share, and whether it changed since the
/// caller last looked ([`Self::take_resubscribed`]).
#[derive(Debug, Default)]
pub struct Interests {
    types: [Interest; 4],
    resubscribed: bool,
}

impl Interests {
    /// Whether a request changed what the stream asks for (names, wildcard,
    /// a first subscription) since the last call: only then are the
    /// services it watches worth working out again. An ACK that changes
    /// nothing, the usual request, costs nothing more.
    pub fn take_resubscribed(&mut self) -> bool {
        std::mem::take(&mut self.resubscribed)
    }

    fn of(&mut self, t: ResourceType) -> &mut Interest {
        &mut self.types[t.index()]
    }

    /// Every name any type subscribes to: the services to watch.
    pub fn watched(&self) -> BTreeSet<String> {
        self.types.iter().flat_map(|s| s.names.iter().cloned()).collect()
    }

    /// Whether some type subscribes to every resource: the stream must
    /// watch its whole namespace.
    pub fn any_wildcard(&self) -> bool {
        self.types.iter().any(|s| s.wildcard)
    }

    /// Whether type `t` subscribes to every resource that exists.
    pub fn is_wildcard(&self, t: ResourceType) -> bool {
        self.types[t.index()].wildcard
    }

    /// `service` changed: each type that subscribes to it (by name or by
    /// wildcard) compares its state again before the next response, that
    /// name alone when it is asked for by name.
    pub fn touch(&mut self, service: &str) {
        for s in &mut self.types {
            if s.wildcard {
                s.dirty = true;
            } else if s.names.contains(service) && !s.touched.contains(service) {
                s.touched.insert(service.to_string());
            }
        }
    }

    /// Every type asked for: compare again (the watched services were
    /// watched anew, and any of them may have changed meanwhile).
    pub fn touch_all(&mut self) {
        for s in &mut self.types {
            s.dirty = s.subscribed;
        }
    }

    /// Whether a response of type `t` may be owed (the variant's book tells).
    pub fn maybe_due(&self, t: ResourceType) -> bool {
        let s = &self.types[t.index()];
        s.subscribed && (s.owed || s.dirty || !s.touched.is_empty())
    }

    /// The names of type `t` that changed since the last response, when
    /// they are all that needs comparing; `None` when everything does (a
    /// response is owed, the subscription changed, or a wildcard).
    pub fn changed_only(&self, t: ResourceType) -> Option<&BTreeSet<String>> {
        let s = &self.types[t.index()];
        (!s.owed && !s.dirty && !s.wildcard).then_some(&s.touched)
    }

    /// The names of type `t` asked for by name, sorted (a wildcard adds
    /// every resource that exists: see [`Self::is_wildcard`]).
    pub fn names(&self, t: ResourceType) -> impl Iterator<Item = &str> {
        self.types[t.index()].names.iter().map(String::as_str)
    }

    /// Type `t` was compared and found as the client holds it: nothing to
    /// compare again until the next change.
    fn compared(&mut self, t: ResourceType) {
        let s = self.of(t);
        s.dirty = false;
        s.touched.clear();
    }

    /// A response of type `t` went: nothing is owed until the next change.
    fn answered(&mut self, t: ResourceType) {
        self.of(t).owed = false;
        self.compared(t);
    }
}

/// What the client holds of one type, and its verdicts.
#[derive(Debug, Default)]
struct SotwType {
    /// Nonce of the last response of this type (0: none yet).
    nonce: u64,
    /// Each resource the client holds, at the revision sent: the last
    /// response's for listeners and clusters, every response's since the
    /// last whole one for endpoints and routes.
    sent: Sent,
    /// Version the client last accepted.
    acked: Option<String>,
    /// Nonce of the last response refused (0: none).
    nacked: u64,
}

/// The state-of-the-world bookkeeping of one stream.
#[derive(Debug)]
pub struct Sotw {
    want: Interests,
    types: [SotwType; 4],
    /// Counter of responses on this stream: each gets the next value as
    /// both its version and its nonce.
    counter: u64,
    max_names: usize,
}

impl Sotw {
    pub fn new(max_names: usize) -> Self {
        Self { want: Interests::default(), types: Default::default(), counter: 0, max_names }
    }

    /// What the stream wants.
    pub fn want(&self) -> &Interests {
        &self.want
    }

    pub fn want_mut(&mut self) -> &mut Interests {
        &mut self.want
    }

    /// Takes one request of type `t`. `nonce` is the request's
    /// `response_nonce`, `error` its `error_detail` message if it has one.
    pub fn on_request(
        &mut self,
        t: ResourceType,
        names: Vec<String>,
        nonce: &str,
        version: &str,
        error: Option<String>,
    ) -> Result<Verdict, ProtocolError> {
        if names.len() > self.max_names {
            return Err(ProtocolError::TooManyNames { count: names.len(), limit: self.max_names });
        }
        let s = &mut self.types[t.index()];
        let verdict = if nonce.is_empty() || s.nonce == 0 {
            // A nonce of a response this stream never sent (a client that
            // reconnected) is a new subscription too.
            Verdict::Subscribe
        } else if nonce != s.nonce.to_string() {
            return Ok(Verdict::Stale);
        } else if let Some(message) = error {
            if s.nacked == s.nonce {
                Verdict::Repeated
            } else {
                s.nacked = s.nonce;
                Verdict::Nack { version: version.to_string(), message }
            }
        } else {
            s.acked = Some(version.to_string());
            Verdict::Ack { version: version.to_string() }
        };
        let w = self.want.of(t);
        let mut names: BTreeSet<String> = names.into_iter().collect();
        let star = names.remove("*");
        let wildcard = t.may_be_wildcard() && (star || (names.is_empty() && (!w.subscribed || w.wildcard)));
        if verdict == Verdict::Subscribe || names != w.names || wildcard != w.wildcard {
            w.owed = true;
            self.want.resubscribed = true;
        }
        let w = self.want.of(t);
        w.subscribed = true;
        w.names = names;
        w.wildcard = wildcard;
        Ok(verdict)
    }

    /// What a response of type `t` must hold, if one is owed, given `now`:
    /// the subscribed resources that exist, with their revisions; for
    /// endpoints and routes, when [`Interests::changed_only`] gives names,
    /// only those of them (the rest are as the client holds them).
    ///
    /// Listeners and clusters: all of `now`, if a response is owed or it
    /// differs from the last one. Endpoints and routes: all of `now` if a
    /// response is owed (a subscription), else the resources whose revision
    /// the client does not hold; those gone are forgotten (the client
    /// learns it from their listener and cluster). `None`: nothing to send,
    /// and nothing to compare until the next change.
    pub fn response(&mut self, t: ResourceType, now: &Sent) -> Option<Sent> {
        let w = &self.want.types[t.index()];
        let s = &mut self.types[t.index()];
        if w.owed {
            if !t.whole_in_sotw() {
                s.sent.clear();
            }
            return Some(now.clone());
        }
        if !w.dirty && w.touched.is_empty() {
            return None;
        }
        let send = if t.whole_in_sotw() {
            (s.sent != *now).then(|| now.clone())
        } else {
            // Gone: of every name the client holds, or of the changed ones.
            if w.dirty {
                s.sent.retain(|name, _| now.contains_key(name));
            } else {
                for name in w.touched.iter().filter(|n| !now.contains_key(*n)) {
                    s.sent.remove(name);
                }
            }
            let changed: Sent =
                now.iter().filter(|(name, r)| s.sent.get(*name) != Some(r)).map(|(n, r)| (n.clone(), *r)).collect();
            (!changed.is_empty()).then_some(changed)
        };
        if send.is_none() {
            self.want.compared(t);
        }
        send
    }

    /// Records a response of type `t` holding `sent` (what
    /// [`Self::response`] gave); returns its version and nonce (the same
    /// number, as text).
    pub fn record_sent(&mut self, t: ResourceType, sent: Sent) -> String {
        self.counter += 1;
        let n = self.counter;
        let s = &mut self.types[t.index()];
        s.nonce = n;
        if t.whole_in_sotw() {
            s.sent = sent;
        } else {
            s.sent.extend(sent);
        }
        self.want.answered(t);
        n.to_string()
    }

    /// The version the client last accepted of type `t`.
    pub fn acked(&self, t: ResourceType) -> Option<&str> {
        self.types[t.index()].acked.as_deref()
    }
}

/// What a delta response of one type carries: the resources to send
/// (name, version) and the names the client is to drop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub send: Vec<(String, String)>,
    pub removed: Vec<String>,
}

/// The incremental (delta xDS) bookkeeping of one stream, with no I/O.
///
/// The rules, from the xDS protocol's incremental variant:
/// - Subscriptions change by difference: each request names resources to
///   add and to drop (`*` adds or drops the wildcard); they apply whatever
///   nonce the request carries. A type's first request with no names asks
///   for every listener or cluster (the legacy wildcard), and brings the
///   versions the client already holds (a reconnect), which are not sent
///   again.
/// - A request carrying the nonce of a response is the client's verdict on
///   it (ACK, or a NACK with `error_detail`: logged and counted by the
///   caller, not sent again until it changes).
/// - A response sends each subscribed resource whose version the client
///   does not hold, and names in `removed_resources` those it holds that
///   are gone, and those it asked for by name that do not exist (once).
///   A type's first request is always answered, even with nothing.
#[derive(Debug)]
pub struct Delta {
    want: Interests,
    types: [DeltaType; 4],
    counter: u64,
    max_names: usize,
}

/// What the client holds of one type, and its verdicts.
#[derive(Debug, Default)]
struct DeltaType {
    /// Each resource's version, or `None` for a name the client was told
    /// does not exist.
    known: BTreeMap<String, Option<String>>,
    /// Nonce of the last response refused (0: none).
    nacked: u64,
}

impl Delta {
    pub fn new(max_names: usize) -> Self {
        Self { want: Interests::default(), types: Default::default(), counter: 0, max_names }
    }

    /// What the stream wants.
    pub fn want(&self) -> &Interests {
        &self.want
    }

    pub fn want_mut(&mut self) -> &mut Interests {
        &mut self.want
    }

    /// Takes one request of type `t`: names to subscribe and unsubscribe,
    /// the versions the client holds (heeded on its first request of the
    /// type), its `response_nonce` and `error_detail` message.
    pub fn on_request(
        &mut self,
        t: ResourceType,
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
        initial: BTreeMap<String, String>,
        nonce: &str,
        error: Option<String>,
    ) -> Result<Verdict, ProtocolError> {
        let count = subscribe.len() + unsubscribe.len() + initial.len();
        if count > self.max_names {
            return Err(ProtocolError::TooManyNames { count, limit: self.max_names });
        }
        let s = &mut self.types[t.index()];
        let verdict = match nonce.parse::<u64>() {
            _ if nonce.is_empty() => Verdict::Subscribe,
            Ok(n) if n >= 1 && n <= self.counter => match error {
                Some(_) if s.nacked == n => Verdict::Repeated,
                Some(message) => {
                    s.nacked = n;
                    Verdict::Nack { version: String::new(), message }
                }
                None => Verdict::Ack { version: nonce.to_string() },
            },
            // A nonce this stream never sent: its subscription changes still apply.
            _ => Verdict::Stale,
        };
        if !self.want.types[t.index()].subscribed || !subscribe.is_empty() || !unsubscribe.is_empty() {
            self.want.resubscribed = true;
        }
        let w = self.want.of(t);
        if !w.subscribed {
            w.subscribed = true;
            w.owed = true;
            w.wildcard = t.may_be_wildcard() && (subscribe.is_empty() || subscribe.iter().any(|n| n == "*"));
            s.known = initial.into_iter().map(|(name, version)| (name, Some(version))).collect();
        }
        for name in subscribe {
            if name == "*" {
                w.wildcard = t.may_be_wildcard();
            } else {
                w.names.insert(name);
            }
            w.dirty = true;
        }
        for name in unsubscribe {
            if name == "*" {
                // The client drops what it held by the wildcard alone.
                w.wildcard = false;
                let names = &w.names;
                s.known.retain(|n, _| names.contains(n));
            } else {
                w.names.remove(&name);
                if !w.wildcard {
                    s.known.remove(&name);
                }
            }
            w.dirty = true;
        }
        Ok(verdict)
    }

    /// What a response of type `t` must carry, given `now`: the version of
    /// every subscribed resource that exists, and `None` for a name asked
    /// for that does not; or, when [`Interests::changed_only`] gives names,
    /// of those names only (a resource the client holds and `now` leaves
    /// out is then unchanged, not gone). `None` when nothing is owed (the
    /// dirty and touched marks are cleared then).
    pub fn changes(&mut self, t: ResourceType, now: &BTreeMap<String, Option<String>>) -> Option<Changes> {
        if !self.want.maybe_due(t) {
            return None;
        }
        let partial = self.want.changed_only(t).is_some();
        let known = &self.types[t.index()].known;
        let mut c = Changes::default();
        for (name, version) in now {
            match (version, known.get(name)) {
                (Some(v), Some(Some(held))) if v == held => {}
                (Some(v), _) => c.send.push((name.clone(), v.clone())),
                (None, Some(None)) => {}
                (None, _) => c.removed.push(name.clone()),
            }
        }
        if !partial {
            for (name, held) in known {
                if held.is_some() && !now.contains_key(name) {
                    c.removed.push(name.clone());
                }
            }
        }
        if c.send.is_empty() && c.removed.is_empty() && !self.want.types[t.index()].owed {
            self.want.compared(t);
            return None;
        }
        Some(c)
    }

    /// Records a response of type `t` carrying `c`; returns its nonce.
    pub fn record_sent(&mut self, t: ResourceType, c: &Changes) -> String {
        self.counter += 1;
        let names = &self.want.types[t.index()].names;
        let known = &mut self.types[t.index()].known;
        for (name, version) in &c.send {
            known.insert(name.clone(), Some(version.clone()));
        }
        for name in &c.removed {
            if names.contains(name) {
                known.insert(name.clone(), None);
            } else {
                known.remove(name);
            }
        }
        self.want.answered(t);
        self.counter.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: ResourceType = ResourceType::Listener;
    const E: ResourceType = ResourceType::Endpoints;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn sent(n: &[(&str, u64)]) -> Sent {
        n.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_subscription_is_answered_even_when_nothing_exists() {
        let mut p = Sotw::new(10);
        assert!(!p.want().maybe_due(L));
        assert_eq!(p.on_request(L, names(&["orders"]), "", "", None), Ok(Verdict::Subscribe));
        assert!(p.want().maybe_due(L));
        assert_eq!(p.response(L, &Sent::new()), Some(Sent::new()), "empty, but owed");
        assert_eq!(p.record_sent(L, Sent::new()), "1");
        assert!(!p.want().maybe_due(L));
        assert!(!p.want().maybe_due(E), "other types are not subscribed");
    }

    #[test]
    fn ack_and_nack_by_nonce() {
        let mut p = Sotw::new(10);
        p.on_request(E, names(&["orders"]), "", "", None).expect("ok");
        let v1 = p.record_sent(E, sent(&[("orders", 5)]));
        assert_eq!(p.on_request(E, names(&["orders"]), &v1, &v1, None), Ok(Verdict::Ack { version: v1.clone() }));
        assert_eq!(p.acked(E), Some(v1.as_str()));
        assert!(!p.want().maybe_due(E), "an ACK with the same names asks for nothing");

        p.want_mut().touch("orders");
        assert_eq!(p.response(E, &sent(&[("orders", 6)])), Some(sent(&[("orders", 6)])));
        let v2 = p.record_sent(E, sent(&[("orders", 6)]));
        let nack = p.on_request(E, names(&["orders"]), &v2, &v1, Some("bad weight".into()));
        assert_eq!(nack, Ok(Verdict::Nack { version: v1.clone(), message: "bad weight".into() }));
        let again = p.on_request(E, names(&["orders"]), &v2, &v1, Some("bad weight".into()));
        assert_eq!(again, Ok(Verdict::Repeated), "a NACK storm is counted once");
        assert_eq!(p.acked(E), Some(v1.as_str()), "the client keeps its last good config");
        assert!(!p.want().maybe_due(E), "what was refused is not sent again until it changes");
        p.want_mut().touch("orders");
        assert_eq!(p.response(E, &sent(&[("orders", 6)])), None, "unchanged: nothing owed, dirty cleared");
        assert!(!p.want().maybe_due(E));
    }

    #[test]
    fn a_request_answering_an_overtaken_response_is_ignored() {
        let mut p = Sotw::new(10);
        p.on_request(L, names(&["a"]), "", "", None).expect("ok");
        let v1 = p.record_sent(L, sent(&[("a", 0)]));
        p.want_mut().touch("a");
        let _v2 = p.record_sent(L, Sent::new());
        // The client's ACK of v1 (with a new name) crosses v2 on the wire.
        assert_eq!(p.on_request(L, names(&["a", "b"]), &v1, &v1, None), Ok(Verdict::Stale));
        assert_eq!(p.want().names(L).collect::<Vec<_>>(), ["a"], "its names wait for the next ACK");
        assert!(!p.want().maybe_due(L));
    }

    #[test]
    fn changed_names_are_answered_and_define_what_is_watched() {
        let mut p = Sotw::new(10);
        p.on_request(L, names(&["a"]), "", "", None).expect("ok");
        let v = p.record_sent(L, Sent::new());
        p.on_request(E, names(&["b", "c"]), "", "", None).expect("ok");
        assert_eq!(p.want().watched().into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(p.on_request(L, names(&["a", "d"]), &v, &v, None), Ok(Verdict::Ack { version: v.clone() }));
        assert!(p.want().maybe_due(L), "a new name is answered");
        assert_eq!(p.response(L, &Sent::new()), Some(Sent::new()), "even when the answer did not change");
    }

    #[test]
    fn a_change_marks_only_the_types_that_hold_the_service() {
        let mut p = Sotw::new(10);
        p.on_request(L, names(&["a"]), "", "", None).expect("ok");
        p.record_sent(L, sent(&[("a", 0)]));
        p.on_request(E, names(&["b"]), "", "", None).expect("ok");
        p.record_sent(E, sent(&[("b", 1)]));
        p.want_mut().touch("b");
        assert!(!p.want().maybe_due(L));
        assert!(p.want().maybe_due(E));
        assert_eq!(p.response(E, &Sent::new()), None, "b is gone: its listener and cluster say so");
        p.want_mut().touch("a");
        assert!(p.want().maybe_due(L));
        assert_eq!(p.response(L, &Sent::new()), Some(Sent::new()), "a is gone: left out, so removed");
    }

    #[test]
    fn endpoint_responses_hold_what_the_client_does_not_hold() {
        let mut p = Sotw::new(10);
        p.on_request(E, names(&["a", "b", "c"]), "", "", None).expect("ok");
        let all = sent(&[("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(p.response(E, &all), Some(all.clone()), "a subscription gets everything");
        let v = p.record_sent(E, all);
        assert_eq!(p.on_request(E, names(&["a", "b", "c"]), &v, &v, None), Ok(Verdict::Ack { version: v.clone() }));
        // One changes: compared alone, and sent alone.
        p.want_mut().touch("b");
        let only: Vec<&String> = p.want().changed_only(E).expect("names").iter().collect();
        assert_eq!(only, ["b"]);
        assert_eq!(p.response(E, &sent(&[("b", 2)])), Some(sent(&[("b", 2)])));
        p.record_sent(E, sent(&[("b", 2)]));
        // It goes (nothing to send), and comes back: sent again.
        p.want_mut().touch("b");
        assert_eq!(p.response(E, &Sent::new()), None);
        p.want_mut().touch("b");
        assert_eq!(p.response(E, &sent(&[("b", 3)])), Some(sent(&[("b", 3)])), "the client is owed it again");
        p.record_sent(E, sent(&[("b", 3)]));
        // Everything compared (watched anew): only what changed meanwhile.
        p.want_mut().touch_all();
        assert_eq!(p.want().changed_only(E), None);
        assert_eq!(p.response(E, &sent(&[("a", 1), ("b", 3), ("c", 1)])), None, "all as the client holds them");
        p.want_mut().touch_all();
        assert_eq!(p.response(E, &sent(&[("a", 1), ("b", 3), ("c", 4)])), Some(sent(&[("c", 4)])));
        let v = p.record_sent(E, sent(&[("c", 4)]));
        // A new name is a new subscription: everything again.
        p.on_request(E, names(&["a", "b", "c", "d"]), &v, &v, None).expect("ok");
        let all = sent(&[("a", 1), ("b", 3), ("c", 4), ("d", 1)]);
        assert_eq!(p.response(E, &all), Some(all.clone()));
    }

    #[test]
    fn a_nonce_from_another_stream_subscribes() {
        let mut p = Sotw::new(10);
        assert_eq!(p.on_request(L, names(&["a"]), "17", "17", None), Ok(Verdict::Subscribe));
        assert!(p.want().maybe_due(L));
    }

    #[test]
    fn wildcards_of_clusters_and_listeners() {
        const C: ResourceType = ResourceType::Cluster;
        let mut p = Sotw::new(10);
        assert_eq!(p.on_request(C, vec![], "", "", None), Ok(Verdict::Subscribe));
        assert!(p.want().is_wildcard(C) && p.want().any_wildcard(), "a first request without names is a wildcard");
        let v = p.record_sent(C, sent(&[("a", 0)]));
        p.want_mut().touch("anything");
        assert!(p.want().maybe_due(C), "every service's change concerns a wildcard");
        p.on_request(C, vec![], &v, &v, None).expect("ok");
        assert!(p.want().is_wildcard(C), "an ACK without names keeps the wildcard");
        p.on_request(C, names(&["a"]), &v, &v, None).expect("ok");
        assert!(!p.want().is_wildcard(C), "names without * end it");
        p.on_request(C, names(&["*", "b"]), &v, &v, None).expect("ok");
        assert!(p.want().is_wildcard(C));
        assert_eq!(p.want().names(C).collect::<Vec<_>>(), ["b"], "* is not a name");

        assert_eq!(p.on_request(E, vec![], "", "", None), Ok(Verdict::Subscribe));
        assert!(!p.want().is_wildcard(E), "endpoints are asked for by name only");
        let mut q = Sotw::new(10);
        q.on_request(C, names(&["a"]), "", "", None).expect("ok");
        let v = q.record_sent(C, Sent::new());
        q.on_request(C, vec![], &v, &v, None).expect("ok");
        assert!(!q.want().is_wildcard(C), "no names after names unsubscribes, it is no wildcard");
    }

    #[test]
    fn too_many_names_are_refused_whole() {
        let mut p = Sotw::new(3);
        let many: Vec<String> = (0..10_000).map(|i| format!("s{i}")).collect();
        assert_eq!(p.on_request(L, many, "", "", None), Err(ProtocolError::TooManyNames { count: 10_000, limit: 3 }));
        assert!(p.want().watched().is_empty(), "nothing of it is kept");
    }

    const C: ResourceType = ResourceType::Cluster;

    fn now(n: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        n.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect()
    }

    fn sends(n: &[(&str, &str)]) -> Vec<(String, String)> {
        n.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn delta_a_wildcard_gets_what_comes_and_is_told_what_goes() {
        let mut d = Delta::new(10);
        assert_eq!(d.on_request(C, vec![], vec![], BTreeMap::new(), "", None), Ok(Verdict::Subscribe));
        assert!(d.want().is_wildcard(C) && d.want().maybe_due(C));
        let c = d.changes(C, &now(&[])).expect("a first request is answered, even with nothing");
        assert_eq!(c, Changes::default());
        let n1 = d.record_sent(C, &c);
        assert_eq!(d.on_request(C, vec![], vec![], BTreeMap::new(), &n1, None), Ok(Verdict::Ack { version: n1 }));
        assert!(!d.want().maybe_due(C));
        d.want_mut().touch("orders");
        let c = d.changes(C, &now(&[("orders", Some("a"))])).expect("orders came");
        assert_eq!((c.send.clone(), c.removed.clone()), (sends(&[("orders", "a")]), vec![]));
        d.record_sent(C, &c);
        d.want_mut().touch("orders");
        assert_eq!(d.changes(C, &now(&[("orders", Some("a"))])), None, "unchanged: nothing");
        assert!(!d.want().maybe_due(C), "the dirty mark is cleared");
        d.want_mut().touch("orders");
        let c = d.changes(C, &now(&[])).expect("orders went");
        assert_eq!((c.send.clone(), c.removed.clone()), (vec![], vec!["orders".to_string()]));
        d.record_sent(C, &c);
        d.want_mut().touch("orders");
        assert_eq!(d.changes(C, &now(&[])), None, "told once");
    }

    #[test]
    fn delta_names_are_added_and_dropped_by_difference() {
        let mut d = Delta::new(10);
        d.on_request(E, names(&["orders", "nowhere"]), vec![], BTreeMap::new(), "", None).expect("ok");
        assert!(!d.want().is_wildcard(E), "endpoints are never a wildcard");
        let c = d.changes(E, &now(&[("orders", Some("v1")), ("nowhere", None)])).expect("owed");
        assert_eq!(c.send, sends(&[("orders", "v1")]));
        assert_eq!(c.removed, ["nowhere"], "a name asked for that does not exist is said so");
        let n1 = d.record_sent(E, &c);
        // A NACK: counted once, not sent again until it changes.
        let nack = d.on_request(E, vec![], vec![], BTreeMap::new(), &n1, Some("bad".into()));
        assert_eq!(nack, Ok(Verdict::Nack { version: String::new(), message: "bad".into() }));
        let again = d.on_request(E, vec![], vec![], BTreeMap::new(), &n1, Some("bad".into()));
        assert_eq!(again, Ok(Verdict::Repeated));
        assert_eq!(d.changes(E, &now(&[("orders", Some("v1")), ("nowhere", None)])), None);
        // `nowhere` comes: sent. `orders` dropped by the client: never sent again.
        let stale = d.on_request(E, vec![], names(&["orders"]), BTreeMap::new(), "99", None);
        assert_eq!(stale, Ok(Verdict::Stale), "an unknown nonce; the change applies anyway");
        assert_eq!(d.want().watched(), ["nowhere".to_string()].into());
        let c = d.changes(E, &now(&[("nowhere", Some("v7"))])).expect("nowhere came");
        assert_eq!((c.send.clone(), c.removed.clone()), (sends(&[("nowhere", "v7")]), vec![]));
    }

    #[test]
    fn delta_a_reconnecting_client_is_not_sent_what_it_holds() {
        let mut d = Delta::new(10);
        let held: BTreeMap<String, String> = [("orders".to_string(), "v1".to_string())].into();
        d.on_request(C, names(&["*"]), vec![], held, "", None).expect("ok");
        let c = d.changes(C, &now(&[("orders", Some("v1")), ("pay", Some("p1"))])).expect("owed");
        assert_eq!(c.send, sends(&[("pay", "p1")]), "orders is held at this version");
        d.record_sent(C, &c);
        // Dropping the wildcard drops what it alone brought.
        d.on_request(C, vec![], names(&["*"]), BTreeMap::new(), "", None).expect("ok");
        assert!(!d.want().any_wildcard());
        assert_eq!(d.changes(C, &now(&[])), None);
    }

    #[test]
    fn delta_compares_only_the_names_that_changed() {
        let mut d = Delta::new(10);
        d.on_request(E, names(&["a", "b", "c"]), vec![], BTreeMap::new(), "", None).expect("ok");
        assert_eq!(d.want().changed_only(E), None, "a first request compares everything");
        let c = d.changes(E, &now(&[("a", Some("a1")), ("b", Some("b1")), ("c", None)])).expect("owed");
        let n1 = d.record_sent(E, &c);
        d.on_request(E, vec![], vec![], BTreeMap::new(), &n1, None).expect("ack");
        // b changes, then goes; a and c are not compared, and a, which the
        // client holds and the caller leaves out, is not taken as gone.
        d.want_mut().touch("b");
        d.want_mut().touch("elsewhere");
        assert_eq!(d.want().changed_only(E), Some(&["b".to_string()].into()));
        let c = d.changes(E, &now(&[("b", Some("b2"))])).expect("b changed");
        assert_eq!((c.send.clone(), c.removed.clone()), (sends(&[("b", "b2")]), vec![]));
        d.record_sent(E, &c);
        assert!(!d.want().maybe_due(E), "the touched mark is cleared");
        d.want_mut().touch("b");
        let c = d.changes(E, &now(&[("b", None)])).expect("b went");
        assert_eq!((c.send.clone(), c.removed.clone()), (vec![], vec!["b".to_string()]));
        d.record_sent(E, &c);
        d.want_mut().touch("a");
        assert_eq!(d.changes(E, &now(&[("a", Some("a1"))])), None, "a touched but unchanged");
        // A subscription change compares everything again.
        d.on_request(E, names(&["d"]), vec![], BTreeMap::new(), "", None).expect("ok");
        assert_eq!(d.want().changed_only(E), None);
        // A wildcard always compares everything (what exists comes and goes).
        let mut w = Delta::new(10);
        w.on_request(C, vec![], vec![], BTreeMap::new(), "", None).expect("ok");
        let c = w.changes(C, &now(&[])).expect("owed");
        w.record_sent(C, &c);
        w.want_mut().touch("orders");
        assert_eq!(w.want().changed_only(C), None);
    }

    #[test]
    fn only_a_changed_subscription_is_worked_out_again() {
        let mut p = Sotw::new(10);
        p.on_request(E, names(&["a"]), "", "", None).expect("ok");
        assert!(p.want_mut().take_resubscribed(), "a first request");
        assert!(!p.want_mut().take_resubscribed(), "taken");
        let v = p.record_sent(E, Sent::new());
        p.on_request(E, names(&["a"]), &v, &v, None).expect("ack");
        assert!(!p.want_mut().take_resubscribed(), "an ACK with the same names");
        p.on_request(E, names(&["a", "b"]), &v, &v, None).expect("ok");
        assert!(p.want_mut().take_resubscribed(), "a name added");
        let mut d = Delta::new(10);
        d.on_request(E, names(&["a"]), vec![], BTreeMap::new(), "", None).expect("ok");
        assert!(d.want_mut().take_resubscribed());
        let c = d.changes(E, &now(&[("a", Some("a1"))])).expect("owed");
        let n = d.record_sent(E, &c);
        d.on_request(E, vec![], vec![], BTreeMap::new(), &n, None).expect("ack");
        assert!(!d.want_mut().take_resubscribed(), "an ACK changes nothing");
        d.on_request(E, vec![], names(&["a"]), BTreeMap::new(), &n, None).expect("ok");
        assert!(d.want_mut().take_resubscribed(), "a name dropped");
    }

    /// One step of a delta stream's life, for the model test below.
    #[derive(Clone, Debug)]
    enum Step {
        /// Resource `n` changes to version `v`, or (0) goes away.
        Change(usize, u8),
        Subscribe(usize),
        Unsubscribe(usize),
        /// The stream sends what it owes, and the client ACKs it.
        Respond,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..5usize, 0..3u8).prop_map(|(n, v)| Step::Change(n, v)),
            (0..5usize).prop_map(Step::Subscribe),
            (0..5usize).prop_map(Step::Unsubscribe),
            Just(Step::Respond),
            Just(Step::Respond),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of changes, subscriptions and responses, a
        /// client that applies every delta response holds, once nothing is
        /// owed, exactly the current version of every resource it subscribes
        /// to, and nothing of those that do not exist: comparing only the
        /// touched names loses nothing. `now` is built as the stream builds
        /// it: the touched names when `changed_only` gives them, else every
        /// subscribed name.
        #[test]
        fn a_delta_client_converges_on_what_exists(steps in proptest::collection::vec(step(), 1..60)) {
            let name = |n: usize| format!("s{n}");
            let mut exists: [u8; 5] = [1, 1, 0, 2, 1];
            let mut d = Delta::new(100);
            let mut held: BTreeMap<String, String> = BTreeMap::new();
            let mut nonce = String::new();
            let version_of = |v: u8| (v > 0).then(|| format!("v{v}"));
            for step in steps.into_iter().chain([Step::Respond]) {
                match step {
                    Step::Change(n, v) => {
                        exists[n] = v;
                        d.want_mut().touch(&name(n));
                    }
                    Step::Subscribe(n) => {
                        d.on_request(E, vec![name(n)], vec![], BTreeMap::new(), &nonce, None).expect("within limits");
                    }
                    Step::Unsubscribe(n) => {
                        d.on_request(E, vec![], vec![name(n)], BTreeMap::new(), &nonce, None).expect("within limits");
                        held.remove(&name(n));
                    }
                    Step::Respond => {
                        let scope: Vec<String> = match d.want().changed_only(E) {
                            Some(touched) => touched.iter().cloned().collect(),
                            None => d.want().names(E).map(String::from).collect(),
                        };
                        let now: BTreeMap<String, Option<String>> = scope
                            .into_iter()
                            .map(|s| {
                                let n: usize = s[1..].parse().expect("s<n>");
                                (s, version_of(exists[n]))
                            })
                            .collect();
                        if let Some(c) = d.changes(E, &now) {
                            nonce = d.record_sent(E, &c);
                            for (s, v) in c.send {
                                held.insert(s, v);
                            }
                            for s in c.removed {
                                held.remove(&s);
                            }
                            d.on_request(E, vec![], vec![], BTreeMap::new(), &nonce, None).expect("ack");
                        }
                    }
                }
            }
            let subscribed: Vec<String> = d.want().names(E).map(String::from).collect();
            let want: BTreeMap<String, String> = subscribed
                .iter()
                .filter_map(|s| version_of(exists[s[1..].parse::<usize>().expect("s<n>")]).map(|v| (s.clone(), v)))
                .collect();
            proptest::prop_assert_eq!(held, want);
        }
    }

    /// One step of a state-of-the-world stream's life, for the model test
    /// below.
    #[derive(Clone, Debug)]
    enum SotwStep {
        /// Service `n` changes to revision `v`, or (0) goes away.
        Change(usize, u8),
        /// The client asks for listeners and endpoints of one more name, or
        /// one fewer (a request with the new names, ACKing the last response).
        Subscribe(usize),
        Unsubscribe(usize),
        /// The watched services were watched anew: compare everything.
        TouchAll,
        /// The stream sends what it owes, and the client ACKs it.
        Respond,
    }

    fn sotw_step() -> impl proptest::strategy::Strategy<Value = SotwStep> {
        use proptest::prelude::*;
        prop_oneof![
            (0..5usize, 0..4u8).prop_map(|(n, v)| SotwStep::Change(n, v)),
            (0..5usize).prop_map(SotwStep::Subscribe),
            (0..5usize).prop_map(SotwStep::Unsubscribe),
            Just(SotwStep::TouchAll),
            Just(SotwStep::Respond),
            Just(SotwStep::Respond),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of changes, subscriptions and responses, a
        /// state-of-the-world client that takes every listener response as
        /// the whole set (dropping the endpoints of a listener left out)
        /// and merges every endpoint response into what it holds (the
        /// protocol's rules) holds, once nothing is owed, exactly
        /// the listeners of the subscribed services that exist and the
        /// current endpoints of each: sending endpoints only where they
        /// changed loses nothing. `now` is built as the stream builds it.
        #[test]
        fn a_sotw_client_converges_on_what_exists(steps in proptest::collection::vec(sotw_step(), 1..60)) {
            let name = |n: usize| format!("s{n}");
            let index = |s: &str| s[1..].parse::<usize>().expect("s<n>");
            let mut exists: [u8; 5] = [1, 1, 0, 2, 1];
            let mut p = Sotw::new(100);
            let mut names: BTreeSet<String> = BTreeSet::new();
            let mut nonces: BTreeMap<usize, String> = BTreeMap::new();
            let mut listeners: BTreeSet<String> = BTreeSet::new();
            let mut endpoints: BTreeMap<String, u64> = BTreeMap::new();
            for step in steps.into_iter().chain([SotwStep::Respond]) {
                match step {
                    SotwStep::Change(n, v) => {
                        exists[n] = v;
                        p.want_mut().touch(&name(n));
                    }
                    SotwStep::Subscribe(n) | SotwStep::Unsubscribe(n) => {
                        if matches!(step, SotwStep::Subscribe(_)) {
                            names.insert(name(n));
                        } else {
                            names.remove(&name(n));
                        }
                        for t in [L, E] {
                            let nonce = nonces.get(&t.index()).cloned().unwrap_or_default();
                            p.on_request(t, names.iter().cloned().collect(), &nonce, &nonce, None).expect("within limits");
                        }
                    }
                    SotwStep::TouchAll => p.want_mut().touch_all(),
                    SotwStep::Respond => {
                        for t in [E, L] {
                            loop {
                                let scope: Vec<String> = match p.want().changed_only(t).filter(|_| !t.whole_in_sotw()) {
                                    Some(touched) => touched.iter().cloned().collect(),
                                    None => p.want().names(t).map(String::from).collect(),
                                };
                                let now: Sent = scope
                                    .into_iter()
                                    .filter(|s| exists[index(s)] > 0)
                                    .map(|s| {
                                        let r = if t.follows_instances() { u64::from(exists[index(&s)]) } else { 0 };
                                        (s, r)
                                    })
                                    .collect();
                                let Some(send) = p.response(t, &now) else { break };
                                if t.whole_in_sotw() {
                                    // A listener left out is removed, and
                                    // the client drops what it held for it.
                                    listeners = send.keys().cloned().collect();
                                    endpoints.retain(|s, _| listeners.contains(s));
                                } else {
                                    endpoints.extend(send.clone());
                                }
                                let nonce = p.record_sent(t, send);
                                p.on_request(t, names.iter().cloned().collect(), &nonce, &nonce, None).expect("ack");
                                nonces.insert(t.index(), nonce);
                            }
                        }
                    }
                }
            }
            let live: BTreeSet<String> = names.iter().filter(|s| exists[index(s)] > 0).cloned().collect();
            proptest::prop_assert_eq!(&listeners, &live);
            for s in &live {
                proptest::prop_assert_eq!(endpoints.get(s).copied(), Some(u64::from(exists[index(s)])), "{}", s);
            }
        }
    }

    #[test]
    fn delta_too_many_names_are_refused() {
        let mut d = Delta::new(2);
        let err = d.on_request(E, names(&["a", "b"]), names(&["c"]), BTreeMap::new(), "", None);
        assert_eq!(err, Err(ProtocolError::TooManyNames { count: 3, limit: 2 }));
        assert!(!d.want().maybe_due(E), "nothing changed");
    }
}
