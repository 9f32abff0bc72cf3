//! Scenarios over the store's public API: what the merged view shows when
//! copies of a record live in several slices.

use proptest::prelude::*;
use registry_proto::v1;
use registry_store::{Change, InstanceKey, Key, Origin, Outcome, Record, Store, Version, ViewChange};

fn key(id: &str) -> Key {
    Key::Instance(InstanceKey::new("default", "orders", id))
}

fn instance(id: &str, port: u32) -> Record {
    Record::instance(&v1::Instance {
        namespace: "default".into(),
        service: "orders".into(),
        instance_id: id.into(),
        host: "10.0.0.1".into(),
        port,
        ..Default::default()
    })
}

fn port_shown(store: &Store, k: &Key) -> Option<u32> {
    match store.visible(k)?.1 {
        Record::Instance(i) => i.decode().ok().map(|i| i.port),
        Record::Consumer(_) | Record::StatusOverride(_) => None,
    }
}

/// Ships every local change of `from` to `to`, as the bus would.
fn replicate(out: &Outcome, from: &Origin, to: &mut Store) -> Vec<Outcome> {
    let id = to.origin_id(from);
    out.local.iter().map(|(_, c)| to.apply_remote(id, c.clone())).collect()
}

#[test]
fn a_provider_moving_to_another_node_never_disappears() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let mut a = Store::new(oa.clone());
    let mut b = Store::new(ob.clone());
    let k = key("i1");

    let (_, out) = a.put_local(k.clone(), instance("i1", 1), 1_000);
    replicate(&out, &oa, &mut b);
    // The provider re-registers at B (e.g. after a reconnect) with a newer version.
    let (_, out_b) = b.put_local(k.clone(), instance("i1", 2), 1_001);
    assert!(out_b.view.iter().all(|c| matches!(c, ViewChange::Upsert { .. })));
    let on_a = replicate(&out_b, &ob, &mut a);
    // A sees the newer copy: its own copy is superseded, never a removal. It
    // is purged only later (a purge overtaking the newer copy on its way to a
    // third node would show that node a removal).
    assert!(on_a.iter().all(|o| o.view.iter().all(|c| !matches!(c, ViewChange::Remove { .. }))));
    assert_eq!(on_a[0].superseded, vec![k.clone()]);
    assert_eq!(on_a[0].stale, vec![k.clone()]);
    assert!(on_a.iter().all(|o| o.local.is_empty()), "no purge yet");
    let later = a.purge_stale(&k);
    assert!(later.view.is_empty());
    let purge = later.local;
    assert!(matches!(purge.as_slice(), [(2, Change::Moved { .. })]));
    // The purge reaches B and removes nothing visible there either.
    let on_b: Vec<Outcome> = purge
        .iter()
        .map(|(_, c)| {
            let id = b.origin_id(&oa);
            b.apply_remote(id, c.clone())
        })
        .collect();
    assert!(on_b.iter().all(|o| o.view.is_empty()));
    assert_eq!(port_shown(&a, &k), Some(2));
    assert_eq!(port_shown(&b, &k), Some(2));
}

#[test]
fn deregistering_at_a_non_owner_hides_the_copy_and_tells_the_owner() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let mut a = Store::new(oa.clone());
    let mut b = Store::new(ob.clone());
    let k = key("i1");
    let (_, out) = a.put_local(k.clone(), instance("i1", 1), 1_000);
    replicate(&out, &oa, &mut b);

    let (_, out_b) = b.remove_local(&k, 1_000).expect("visible on b");
    assert_eq!(out_b.view, vec![ViewChange::Remove { key: k.clone() }]);
    assert_eq!(port_shown(&b, &k), None);
    let on_a = replicate(&out_b, &ob, &mut a);
    assert_eq!(on_a[0].superseded, vec![k.clone()]);
    assert_eq!(port_shown(&a, &k), None);
    a.purge_stale(&k);
    assert!(a.local_entry(&k).is_none(), "owner dropped its copy");
}

fn status_override(id: &str) -> (Key, Record) {
    let o = v1::StatusOverride { status: v1::Status::OutOfService as i32, set_by: "ops".into(), ..Default::default() };
    (Key::StatusOverride(InstanceKey::new("default", "orders", id)), Record::StatusOverride(o.into()))
}

/// An override written on a, then adopted by b (as when a goes silent to
/// b): a and its origin, b, the key, its version, and b's adoption.
fn override_adopted_by_b() -> (Origin, Store, Store, Key, Version, Outcome) {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let (mut a, mut b) = (Store::new(oa.clone()), Store::new(ob));
    let (k, o) = status_override("i");
    let (version, out) = a.put_local(k.clone(), o, 1_000);
    replicate(&out, &oa, &mut b);
    let entry = b.visible_entry(&k).map(|(_, e)| e.clone()).expect("shown on b");
    let adopted = b.adopt(k.clone(), entry.clone());
    assert!(b.adopt(k.clone(), entry).is_empty(), "held already: nothing to do");
    (oa, a, b, k, version, adopted)
}

#[test]
fn an_adopted_copy_is_the_same_write_and_outlives_its_origins_purge() {
    let (oa, mut a, mut b, k, version, adopted) = override_adopted_by_b();
    assert_eq!(b.local_entry(&k).map(|e| e.version), Some(version), "at the origin's version");
    assert!(matches!(adopted.local.as_slice(), [(1, Change::Put { .. })]), "published as b's own");
    assert!(adopted.view.iter().all(|c| !matches!(c, ViewChange::Remove { .. })));
    // a drops its copy alone (its own view lost the instance): b's stays.
    let purge = a.purge_own(&k).expect("a holds one");
    assert!(matches!(purge.local.as_slice(), [(_, Change::Purge { .. })]));
    assert!(a.purge_own(&k).is_none(), "nothing left to purge");
    replicate(&purge, &oa, &mut b);
    assert!(b.visible(&k).is_some());
}

#[test]
fn hiding_writes_a_tombstone_even_alone_and_it_hides_adopted_copies() {
    // a holds no other copy: b adopted it while cut off from a.
    let (oa, mut a, mut b, k, version, _) = override_adopted_by_b();
    let (hidden_at, cleared) = a.hide_local(&k, 60_000).expect("shown on a");
    assert_eq!(hidden_at.hlc, version.hlc + 1, "just above the copy, not now");
    assert!(a.local_entry(&k).is_some_and(|e| !e.is_live()), "a tombstone, not a purge");
    assert!(a.purge_own(&k).is_none(), "a tombstone is left to the collection");
    let on_b = replicate(&cleared, &oa, &mut b);
    assert!(b.visible(&k).is_none(), "the adopted copy is hidden too");
    assert_eq!(on_b[0].stale, vec![k.clone()], "and b purges it later");
    // remove_local, alone, purges instead (no copy elsewhere to hide).
    let (k2, o2) = status_override("j");
    a.put_local(k2.clone(), o2, 2_000);
    let (_, removed) = a.remove_local(&k2, 3_000).expect("shown");
    assert!(matches!(removed.local.as_slice(), [(_, Change::Purge { .. })]));
}

#[test]
fn removing_what_is_not_there_is_not_found() {
    let mut a = Store::new(Origin::new("a", 1));
    assert!(a.remove_local(&key("nope"), 1).is_none());
}

#[test]
fn dropping_an_origin_removes_only_what_it_alone_showed() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let mut a = Store::new(oa.clone());
    let mut b = Store::new(ob.clone());
    let (_, o1) = a.put_local(key("only-a"), instance("only-a", 1), 10);
    let (_, o2) = b.put_local(key("only-b"), instance("only-b", 2), 10);
    replicate(&o2, &ob, &mut a);
    let id_b = a.origin_id(&ob);
    let out = a.drop_origin(id_b);
    assert_eq!(out.view, vec![ViewChange::Remove { key: key("only-b") }]);
    assert_eq!(port_shown(&a, &key("only-a")), Some(1));
    drop(o1);
}

/// A provider moved b → a → c faster than the copies travel. a still holds
/// b's older copy (not purged yet) when its grace for its own copy runs out,
/// before c's newer registration has reached it. a's removal must hide what a
/// knew of, not c's registration: whichever arrives first at a fourth node,
/// the instance stays visible there with c's copy.
#[test]
fn a_removal_never_hides_a_newer_registration_it_had_not_seen() {
    let (oa, ob, oc) = (Origin::new("a", 1), Origin::new("b", 1), Origin::new("c", 1));
    let (mut a, mut b, mut c) = (Store::new(oa.clone()), Store::new(ob.clone()), Store::new(oc.clone()));
    let k = key("i");
    let (_, from_b) = b.put_local(k.clone(), instance("i", 1), 500);
    replicate(&from_b, &ob, &mut a);
    replicate(&from_b, &ob, &mut c);
    let (_, from_a) = a.put_local(k.clone(), instance("i", 2), 1_000);
    replicate(&from_a, &oa, &mut c);
    let (_, from_c) = c.put_local(k.clone(), instance("i", 3), 2_000);
    // a's grace ends at 3 s, before c's copy has arrived.
    let (_, removal) = a.remove_local(&k, 3_000).expect("a shows its own copy");
    for tombstone_first in [true, false] {
        let mut d = Store::new(Origin::new("d", 1));
        replicate(&from_b, &ob, &mut d);
        replicate(&from_a, &oa, &mut d);
        if tombstone_first {
            replicate(&removal, &oa, &mut d);
            replicate(&from_c, &oc, &mut d);
        } else {
            replicate(&from_c, &oc, &mut d);
            replicate(&removal, &oa, &mut d);
        }
        assert_eq!(port_shown(&d, &k), Some(3), "tombstone first: {tombstone_first}");
    }
    // And a itself shows c's copy once it arrives.
    replicate(&from_c, &oc, &mut a);
    assert_eq!(port_shown(&a, &k), Some(3));
}

#[test]
fn a_removal_still_hides_every_copy_it_knew_of() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let (mut a, mut b) = (Store::new(oa.clone()), Store::new(ob.clone()));
    let k = key("i");
    let (_, from_a) = a.put_local(k.clone(), instance("i", 1), 1_000);
    replicate(&from_a, &oa, &mut b);
    // Removed at b (a unary deregister, say) long after it was written.
    let (_, removal) = b.remove_local(&k, 60_000).expect("shown on b");
    assert_eq!(port_shown(&b, &k), None);
    let on_a = replicate(&removal, &ob, &mut a);
    assert_eq!(port_shown(&a, &k), None);
    assert!(on_a.iter().any(|o| o.view.iter().any(|c| matches!(c, ViewChange::Remove { .. }))));
}

#[test]
fn tombstones_age_from_when_they_were_written_not_from_their_version() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let (mut a, mut b) = (Store::new(oa.clone()), Store::new(ob.clone()));
    let (_, out) = a.put_local(key("i"), instance("i", 1), 1_000);
    replicate(&out, &oa, &mut b);
    // The copy is an hour old; its tombstone is versioned just above it.
    b.remove_local(&key("i"), 3_600_000).expect("shown");
    assert!(b.gc_tombstones(3_600_000 + 4_000, 5_000).local.is_empty(), "written 4 s ago");
    assert_eq!(b.gc_tombstones(3_600_000 + 6_000, 5_000).local.len(), 1);
}

#[test]
fn tombstones_are_collected_after_their_ttl() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let mut a = Store::new(oa.clone());
    let mut b = Store::new(ob.clone());
    let (_, out) = a.put_local(key("i"), instance("i", 1), 1_000);
    replicate(&out, &oa, &mut b);
    b.remove_local(&key("i"), 1_000).expect("shown");
    assert!(b.gc_tombstones(2_000, 5_000).local.is_empty());
    let gc = b.gc_tombstones(7_000, 5_000);
    assert!(matches!(gc.local.as_slice(), [(_, Change::Purge { .. })]));
    assert!(b.local_entry(&key("i")).is_none());
}

/// Recomputes a slice digest from scratch, to check the incremental one.
fn digest_from_scratch(store: &Store, origin: &Origin) -> (u64, u64) {
    let mut probe = Store::new(Origin::new("probe", 0));
    let pid = probe.origin_id(origin);
    let src = {
        let mut st = store.slice_entries(store_id(store, origin));
        st.sort_by(|x, y| x.0.cmp(&y.0));
        st
    };
    for (k, e) in src {
        probe.apply_remote(pid, Change::Put { key: k, entry: e });
    }
    let stats = probe.slice_stats(pid).expect("registered");
    (stats.digest, stats.entries)
}

fn store_id(store: &Store, origin: &Origin) -> registry_store::OriginId {
    assert_eq!(store.local_origin(), origin);
    store.local_id()
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        node: usize,
        id: u8,
        port: u16,
    },
    Remove {
        node: usize,
        id: u8,
    },
    Deliver {
        from: usize,
        to: usize,
    },
    Gc {
        node: usize,
    },
    /// Purge the node's stale own entries (the registry does it after a delay).
    PurgeStale {
        node: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..6u8, 1..1000u16).prop_map(|(node, id, port)| Op::Put { node, id, port }),
        (0..3usize, 0..6u8).prop_map(|(node, id)| Op::Remove { node, id }),
        (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Deliver { from, to }),
        (0..3usize).prop_map(|node| Op::Gc { node }),
        (0..3usize).prop_map(|node| Op::PurgeStale { node }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    /// Three stores exchanging their changes in origin order (one queue per
    /// link, delivered in random interleavings) end with identical merged views
    /// and digests that match a from-scratch computation.
    #[test]
    fn stores_converge_and_digests_stay_exact(ops in prop::collection::vec(op(), 1..120)) {
        let origins: Vec<Origin> = (0..3).map(|i| Origin::new(format!("n{i}"), 1)).collect();
        let mut stores: Vec<Store> = origins.iter().map(|o| Store::new(o.clone())).collect();
        // queues[from][to]: changes of `from`'s slice not yet applied at `to`.
        let mut queues: Vec<Vec<Vec<Change>>> = vec![vec![Vec::new(); 3]; 3];
        let mut clock = 1_000u64;
        // Own entries each store reported stale, not purged yet.
        let mut stale: Vec<Vec<Key>> = vec![Vec::new(); 3];
        let push = |queues: &mut Vec<Vec<Vec<Change>>>, from: usize, out: &Outcome| {
            for (to, queue) in queues[from].iter_mut().enumerate() {
                if to != from {
                    queue.extend(out.local.iter().map(|(_, c)| c.clone()));
                }
            }
        };
        for op in ops {
            clock += 7;
            match op {
                Op::Put { node, id, port } => {
                    let k = key(&id.to_string());
                    let (_, out) = stores[node].put_local(k, instance(&id.to_string(), port.into()), clock);
                    push(&mut queues, node, &out);
                }
                Op::Remove { node, id } => {
                    if let Some((_, out)) = stores[node].remove_local(&key(&id.to_string()), clock) {
                        push(&mut queues, node, &out);
                    }
                }
                Op::Deliver { from, to } if from != to => {
                    let pending = std::mem::take(&mut queues[from][to]);
                    let id = stores[to].origin_id(&origins[from]);
                    for c in pending {
                        let out = stores[to].apply_remote(id, c);
                        stale[to].extend(out.stale.iter().cloned());
                        push(&mut queues, to, &out);
                    }
                }
                Op::Deliver { .. } => {}
                Op::Gc { node } => {
                    let out = stores[node].gc_tombstones(clock, 50);
                    push(&mut queues, node, &out);
                }
                Op::PurgeStale { node } => {
                    for k in std::mem::take(&mut stale[node]) {
                        let out = stores[node].purge_stale(&k);
                        push(&mut queues, node, &out);
                    }
                }
            }
        }
        // Quiesce: deliver until no queue holds anything.
        loop {
            let mut moved = false;
            for from in 0..3 {
                for to in 0..3 {
                    if from == to || queues[from][to].is_empty() {
                        continue;
                    }
                    moved = true;
                    let pending = std::mem::take(&mut queues[from][to]);
                    let id = stores[to].origin_id(&origins[from]);
                    for c in pending {
                        let out = stores[to].apply_remote(id, c);
                        stale[to].extend(out.stale.iter().cloned());
                        push(&mut queues, to, &out);
                    }
                }
            }
            // Purges come due in the end, and travel too.
            for (node, keys) in stale.iter_mut().enumerate() {
                for k in std::mem::take(keys) {
                    let out = stores[node].purge_stale(&k);
                    moved |= !out.local.is_empty();
                    push(&mut queues, node, &out);
                }
            }
            if !moved {
                break;
            }
        }
        // Everything has arrived: a copy still kept as moved has no newer
        // copy coming any more (it was removed since), and its hold ends.
        for s in &mut stores {
            s.sweep_moved(u64::MAX / 2, 1);
        }
        let view = |s: &Store| {
            let mut v: Vec<(Key, u32)> = s
                .visible_records()
                .map(|(k, _, r)| match r {
                    Record::Instance(i) => (k.clone(), i.decode().map_or(0, |i| i.port)),
                    Record::Consumer(_) | Record::StatusOverride(_) => (k.clone(), 0),
                })
                .collect();
            v.sort();
            v
        };
        prop_assert_eq!(view(&stores[0]), view(&stores[1]));
        prop_assert_eq!(view(&stores[1]), view(&stores[2]));
        for (i, o) in origins.iter().enumerate() {
            let stats = stores[i].slice_stats(stores[i].local_id()).expect("own slice");
            prop_assert_eq!(digest_from_scratch(&stores[i], o), (stats.digest, stats.entries));
            for (j, other) in stores.iter_mut().enumerate() {
                if i != j {
                    let id = other.origin_id(o);
                    let copy = other.slice_stats(id).expect("known");
                    prop_assert_eq!(copy.digest, stats.digest, "copy of {} at {}", o, j);
                }
            }
        }
    }
}

#[test]
fn replacing_a_slice_changes_only_what_differs() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let mut a = Store::new(oa.clone());
    let mut b = Store::new(ob.clone());
    let mut outs = Vec::new();
    for id in ["x", "y", "z"] {
        outs.push(a.put_local(key(id), instance(id, 1), 10).1);
    }
    for o in &outs {
        replicate(o, &oa, &mut b);
    }
    // A changes y and drops z; B gets A's whole slice instead of the changes.
    a.put_local(key("y"), instance("y", 2), 20);
    a.remove_local(&key("z"), 20);
    let id = b.origin_id(&oa);
    let out = b.replace_slice(id, a.slice_entries(a.local_id()));
    let mut changed: Vec<String> = out
        .view
        .iter()
        .map(|c| match c {
            ViewChange::Upsert { key: Key::Instance(k), .. } => format!("+{}", k.id),
            ViewChange::Remove { key: Key::Instance(k) } => format!("-{}", k.id),
            other => format!("{other:?}"),
        })
        .collect();
    changed.sort();
    assert_eq!(changed, ["+y", "-z"], "x is untouched");
    let own = a.slice_stats(a.local_id()).expect("own");
    let copy = b.slice_stats(id).expect("copy");
    assert_eq!((own.digest, own.entries), (copy.digest, copy.entries));
}

#[test]
fn names_no_key_uses_are_forgotten() {
    let mut store = Store::new(Origin::new("a", 1));
    for n in 0..100 {
        let service = format!("short-lived-{n}");
        let k = Key::Instance(store.instance_key("default", &service, "i1"));
        store.put_local(k.clone(), instance("i1", 1), 10);
        store.remove_local(&k, 20);
    }
    let kept = Key::Instance(store.instance_key("default", "kept", "i1"));
    store.put_local(kept.clone(), instance("i1", 1), 30);
    store.forget_unused_names();
    assert_eq!(store.name_count(), 2, "only the names of the live key remain");
    assert!(store.visible(&kept).is_some());
    // A forgotten name comes back when used again, shared as before.
    let back = Key::Instance(store.instance_key("default", "short-lived-7", "i2"));
    store.put_local(back.clone(), instance("i2", 1), 40);
    assert_eq!(store.name_count(), 3);
    assert_eq!(port_shown(&store, &back), Some(1));
}

#[test]
fn a_stale_copy_written_again_is_not_purged() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let mut a = Store::new(oa.clone());
    let mut b = Store::new(ob.clone());
    let k = key("i1");
    let (_, out) = a.put_local(k.clone(), instance("i1", 1), 1_000);
    replicate(&out, &oa, &mut b);
    let (_, out_b) = b.put_local(k.clone(), instance("i1", 2), 1_001);
    let on_a = replicate(&out_b, &ob, &mut a);
    assert_eq!(on_a[0].stale, vec![k.clone()]);
    // The provider comes back to A before the purge is due.
    a.put_local(k.clone(), instance("i1", 3), 1_002);
    assert!(a.purge_stale(&k).is_empty(), "the own entry is the newest again");
    assert_eq!(port_shown(&a, &k), Some(3));
}

/// A third node that hears the old owner's drop (as moved) before the new
/// copy, while it is not caught up with the new owner, keeps showing the
/// record, then switches to the new copy with no removal in between; a
/// deregistration there meanwhile hides the new copy too; a copy whose newer
/// copy never comes leaves after the hold, or once the new owner is caught
/// up with; a node caught up with the new owner removes at once.
#[test]
fn a_copy_dropped_as_moved_stays_shown_until_the_newer_copy_arrives() {
    let (oa, ob, oc) = (Origin::new("a", 1), Origin::new("b", 1), Origin::new("c", 1));
    let (mut a, mut b, mut c) = (Store::new(oa.clone()), Store::new(ob.clone()), Store::new(oc.clone()));
    let k = key("i1");
    // b's copies may still be on their way to the third nodes: they are not
    // caught up with b (the replication layer says so).
    let b_hash = registry_store::version::stable_hash(b"b");
    let b_writes = [(b_hash, 0)];
    let (_, first) = a.put_local(k.clone(), instance("i1", 1), 1_000);
    replicate(&first, &oa, &mut b);
    replicate(&first, &oa, &mut c);
    // The provider moves to b; a drops its copy as moved. c hears a first.
    let (to, moved) = b.put_local(k.clone(), instance("i1", 2), 2_000);
    replicate(&moved, &ob, &mut a);
    let dropped = a.purge_stale(&k);
    c.sweep_moved(10_000, 3_000);
    c.set_writers_known(b_writes);
    let on_c = replicate(&dropped, &oa, &mut c);
    assert!(on_c.iter().all(|o| o.view.is_empty()), "no view change yet: {on_c:?}");
    assert_eq!(port_shown(&c, &k), Some(1), "still shown as it was");
    assert_eq!(c.moved_pending(), 1);
    // The new copy arrives: an upsert, never a removal.
    let arrived = replicate(&moved, &ob, &mut c);
    assert!(matches!(arrived[0].view.as_slice(), [ViewChange::Upsert { .. }]), "{arrived:?}");
    assert_eq!(port_shown(&c, &k), Some(2));
    assert_eq!(c.moved_pending(), 0);

    // Again, but the new copy never comes: the record leaves after the hold.
    let mut d = Store::new(Origin::new("d", 1));
    replicate(&first, &oa, &mut d);
    d.sweep_moved(10_000, 3_000);
    d.set_writers_known(b_writes);
    replicate(&dropped, &oa, &mut d);
    assert!(d.sweep_moved(12_999, 3_000).view.is_empty(), "kept during the hold");
    assert_eq!(port_shown(&d, &k), Some(1));
    let expired = d.sweep_moved(13_000, 3_000);
    assert!(matches!(expired.view.as_slice(), [ViewChange::Remove { .. }]), "{expired:?}");
    assert_eq!(port_shown(&d, &k), None);

    // A caller that sweeps only when something is due sets the clock before
    // applying: the copy is aged from then, and says when it is due.
    let mut e = Store::new(Origin::new("e", 1));
    replicate(&first, &oa, &mut e);
    e.set_writers_known(b_writes);
    assert_eq!(e.next_moved_due(3_000), None);
    e.set_clock(50_000);
    replicate(&dropped, &oa, &mut e);
    assert_eq!(e.next_moved_due(3_000), Some(53_000));
    assert!(e.sweep_moved(52_999, 3_000).view.is_empty(), "aged from the clock set, not from 0");
    assert_eq!(port_shown(&e, &k), Some(1));
    assert!(!e.sweep_moved(53_000, 3_000).view.is_empty());
    assert_eq!(e.next_moved_due(3_000), None);

    // And a deregistration while the record is shown only as moved writes
    // a tombstone above the copy on its way, which then stays hidden.
    let mut e = Store::new(Origin::new("e", 1));
    e.set_writers_known(b_writes);
    replicate(&first, &oa, &mut e);
    replicate(&dropped, &oa, &mut e);
    let (_, removed) = e.remove_local(&k, 3_000).expect("shown, so removable");
    assert!(matches!(removed.view.as_slice(), [ViewChange::Remove { .. }]), "{removed:?}");
    assert!(matches!(removed.local.as_slice(), [(_, Change::Put { entry, .. })] if !entry.is_live()));
    let late = replicate(&moved, &ob, &mut e);
    assert!(late.iter().all(|o| o.view.is_empty()), "the tombstone hides the late copy: {late:?}");
    assert_eq!(port_shown(&e, &k), None);

    // A node caught up with b (b's copy is not on its way: it was removed
    // since) shows the drop as a removal at once.
    let mut f = Store::new(Origin::new("f", 1));
    replicate(&first, &oa, &mut f);
    let removed = replicate(&dropped, &oa, &mut f);
    assert!(matches!(removed[0].view.as_slice(), [ViewChange::Remove { .. }]), "{removed:?}");
    // And a kept copy ends, as a removal, once b is caught up with.
    let mut g = Store::new(Origin::new("g", 1));
    g.set_writers_known(b_writes);
    replicate(&first, &oa, &mut g);
    replicate(&dropped, &oa, &mut g);
    assert_eq!(port_shown(&g, &k), Some(1));
    let settled = g.set_writers_known([]);
    assert!(matches!(settled.view.as_slice(), [ViewChange::Remove { .. }]), "{settled:?}");

    // Caught up with b only as of a beat older than b's copy (a link held
    // b's messages and delivers them late, that beat first): b's copy may
    // still come, so the moved copy stays, at the drop and after; once b is
    // known up to the copy's version, it goes.
    let mut h = Store::new(Origin::new("h", 1));
    h.set_writers_known([(b_hash, to.hlc - 1)]);
    replicate(&first, &oa, &mut h);
    let kept = replicate(&dropped, &oa, &mut h);
    assert!(kept.iter().all(|o| o.view.is_empty()), "{kept:?}");
    assert!(h.set_writers_known([(b_hash, to.hlc - 1)]).view.is_empty());
    assert_eq!(port_shown(&h, &k), Some(1));
    let known = h.set_writers_known([(b_hash, to.hlc)]);
    assert!(matches!(known.view.as_slice(), [ViewChange::Remove { .. }]), "{known:?}");
    // Known that far before the drop comes: removed at once.
    let mut i = Store::new(Origin::new("i", 1));
    i.set_writers_known([(b_hash, to.hlc)]);
    replicate(&first, &oa, &mut i);
    let removed = replicate(&dropped, &oa, &mut i);
    assert!(matches!(removed[0].view.as_slice(), [ViewChange::Remove { .. }]), "{removed:?}");
}

/// The own slice's stats carry the node's clock: every version written so
/// far is at most it, every later one above it (what a peer's mark of how
/// far it knows this node's copies rests on).
#[test]
fn own_stats_carry_a_clock_that_bounds_the_versions_written() {
    let (oa, ob) = (Origin::new("a", 1), Origin::new("b", 1));
    let (mut a, mut b) = (Store::new(oa.clone()), Store::new(ob.clone()));
    let stats = |s: &Store| s.slice_stats(s.local_id()).expect("own slice");
    assert_eq!(stats(&a).hlc, 0, "nothing written or seen");
    let (v1, _) = a.put_local(key("i1"), instance("i1", 1), 5_000);
    assert_eq!(stats(&a).hlc, v1.hlc);
    // Another node's newer version, observed, raises it too.
    let (vb, out) = b.put_local(key("i2"), instance("i2", 1), 9_000);
    replicate(&out, &ob, &mut a);
    let seen = stats(&a).hlc;
    assert!(seen >= vb.hlc && seen >= v1.hlc);
    // Even with the wall clock behind, the next write is above it.
    let (v2, _) = a.put_local(key("i1"), instance("i1", 2), 1_000);
    assert!(v2.hlc > seen);
    // A peer's slice carries none.
    let ib = a.find_origin(&ob).expect("b's slice");
    assert_eq!(a.slice_stats(ib).expect("b's slice").hlc, 0);
}
