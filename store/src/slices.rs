//! [`Store`]: the per-origin slices and the merged view over them.
//!
//! Records are indexed by key, each key holding the entries of every origin that
//! has one (almost always exactly one). That makes the merged-view decision for a
//! key a scan of a one- or two-element list instead of a look-up in every slice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::record::{Change, Entry, InstanceKey, Key, Record};
use crate::version::{Hlc, Origin, Version};

/// Dense local handle of an [`Origin`]; meaningless outside this store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginId(u32);

/// A change to the merged view: what subscribers and readers must learn.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewChange {
    /// The key is now shown with this record (new, or replacing another one).
    Upsert { key: Key, record: Record, origin: OriginId },
    /// The key is no longer shown.
    Remove { key: Key },
}

/// Everything one store operation caused.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Changes to the merged view, in order.
    pub view: Vec<ViewChange>,
    /// Changes to the own slice with their sequence numbers, to publish to peers.
    pub local: Vec<(u64, Change)>,
    /// Own-slice keys a newer write elsewhere took over or removed: the local
    /// session or lease that held them no longer owns them.
    pub superseded: Vec<Key>,
    /// Own entries a newer entry elsewhere hides. They stay until the caller
    /// purges them with [`Store::purge_stale`], once the newer entry has had
    /// time to reach every node.
    pub stale: Vec<Key>,
}

impl Outcome {
    /// Appends what another operation caused, after this one's.
    pub fn extend(&mut self, other: Outcome) {
        self.view.extend(other.view);
        self.local.extend(other.local);
        self.superseded.extend(other.superseded);
        self.stale.extend(other.stale);
    }

    pub fn is_empty(&self) -> bool {
        self.view.is_empty() && self.local.is_empty() && self.superseded.is_empty() && self.stale.is_empty()
    }
}

/// Summary of one slice, as beats and the Members API report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceStats {
    pub origin: Origin,
    /// Own slice: the last sequence number issued. Peers: not tracked here.
    pub seq: u64,
    /// Order-independent hash of all entries (XOR of per-entry hashes).
    pub digest: u64,
    pub entries: u64,
    pub live: u64,
    /// Own slice: this node's clock (HLC) now. Every version the node has
    /// written so far is at most this, and every version it writes later is
    /// above it, so a peer caught up with this snapshot's `seq` holds every
    /// copy of the node's with a version up to it that still exists (see
    /// [`Store::set_writers_known`]). Peers: 0.
    pub hlc: u64,
}

#[derive(Debug)]
struct Slice {
    origin: Origin,
    seq: u64,
    digest: u64,
    entries: u64,
    live: u64,
}

/// The entries one key has, one per origin that holds it. Almost always one,
/// kept inline in the index's bucket: a `Vec` would allocate room for four.
type Holders = SmallVec<[(OriginId, Entry); 1]>;
const _: () = assert!(std::mem::size_of::<Holders>() <= 56, "a holder list should fit one entry inline");

/// Keyed per process (keys come from the network, so a fixed hash would let a
/// client pick colliding names) but several times cheaper than SipHash on the
/// short keys the index holds.
type KeyHasher = foldhash::quality::RandomState;

/// The replicated registry state of one node. See the crate docs.
#[derive(Debug)]
pub struct Store {
    local: OriginId,
    hlc: Hlc,
    slices: HashMap<OriginId, Slice>,
    ids: HashMap<Origin, OriginId>,
    next_id: u32,
    keys: HashMap<Key, Holders, KeyHasher>,
    /// Namespace and service names, one allocation each however many keys use them.
    names: HashSet<Arc<str>, KeyHasher>,
    /// The last namespace and service interned: keys come in runs of one
    /// service, and a string comparison is cheaper than a set look-up.
    recent: [Option<Arc<str>>; 2],
    /// Own tombstones in the order they were written, with the wall time
    /// they were written at: a tombstone's version says nothing of its age
    /// (see [`Store::remove_local`]).
    tombstones: std::collections::VecDeque<(u64, Key, Version)>,
    /// Peers' copies whose origin dropped them as moved (`Change::Moved`)
    /// before the newer copy reached this node: still shown, until a copy
    /// at least as new as the one they moved to arrives, or they expire
    /// (see [`Store::sweep_moved`]).
    moved: HashMap<Key, Moved, KeyHasher>,
    /// The time of the last [`Store::sweep_moved`]: moved copies are aged
    /// from it.
    moved_clock: u64,
    /// How far each writer's copies are known here (node hashes, as in
    /// [`Version::node`], to an HLC): every copy the writer wrote with a
    /// version up to its mark that still exists is here. A copy dropped as
    /// moved to a writer's copy above its mark is kept in view (that copy
    /// may be on its way); at or below it, it is not (that copy is here, or
    /// gone). Writers not named are known entirely. Set by the replication
    /// layer.
    known: HashMap<u64, u64>,
}

/// A peer's copy kept in view after its origin dropped it as moved.
#[derive(Debug)]
struct Moved {
    origin: OriginId,
    entry: Entry,
    /// The version of the copy it moved to.
    to: Version,
    since_ms: u64,
}

impl Store {
    /// A store whose own slice belongs to `local`.
    pub fn new(local: Origin) -> Self {
        let mut store = Self {
            local: OriginId(0),
            hlc: Hlc::new(&local.node),
            slices: HashMap::new(),
            ids: HashMap::new(),
            next_id: 0,
            keys: HashMap::default(),
            names: HashSet::default(),
            recent: [None, None],
            tombstones: std::collections::VecDeque::new(),
            moved: HashMap::default(),
            moved_clock: 0,
            known: HashMap::new(),
        };
        store.local = store.origin_id(&local);
        store
    }

    pub fn local_id(&self) -> OriginId {
        self.local
    }

    pub fn local_origin(&self) -> &Origin {
        &self.slices[&self.local].origin
    }

    /// The handle of `origin`, registering an empty slice for it if new.
    pub fn origin_id(&mut self, origin: &Origin) -> OriginId {
        if let Some(id) = self.ids.get(origin) {
            return *id;
        }
        let id = OriginId(self.next_id);
        self.next_id += 1;
        self.ids.insert(origin.clone(), id);
        self.slices.insert(id, Slice { origin: origin.clone(), seq: 0, digest: 0, entries: 0, live: 0 });
        id
    }

    /// The handle of `origin` if this store knows it (registers nothing).
    pub fn find_origin(&self, origin: &Origin) -> Option<OriginId> {
        self.ids.get(origin).copied()
    }

    pub fn origin(&self, id: OriginId) -> Option<&Origin> {
        self.slices.get(&id).map(|s| &s.origin)
    }

    pub fn slice_stats(&self, id: OriginId) -> Option<SliceStats> {
        self.slices.get(&id).map(|s| SliceStats {
            origin: s.origin.clone(),
            seq: s.seq,
            digest: s.digest,
            entries: s.entries,
            live: s.live,
            hlc: if id == self.local { self.hlc.last() } else { 0 },
        })
    }

    /// [`Store::slice_stats`] of `origin`'s slice, if this store holds one.
    pub fn stats_of(&self, origin: &Origin) -> Option<SliceStats> {
        self.slice_stats(self.find_origin(origin)?)
    }

    /// The shared copy of `name`; `slot` 0 is for namespaces, 1 for services.
    fn intern(&mut self, name: &str, slot: usize) -> Arc<str> {
        if let Some(recent) = &self.recent[slot]
            && **recent == *name
        {
            return recent.clone();
        }
        let shared = match self.names.get(name) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = name.into();
                self.names.insert(n.clone());
                n
            }
        };
        self.recent[slot] = Some(shared.clone());
        shared
    }

    /// Forgets names no key uses any more, so churn of service names does
    /// not grow memory. Cheap enough to run with every tombstone sweep.
    pub fn forget_unused_names(&mut self) {
        self.recent = [None, None];
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }

    /// Number of distinct namespace and service names held.
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// An instance key built with the interned names, allocating only what is
    /// new (the id and the key itself).
    pub fn instance_key(&mut self, namespace: &str, service: &str, id: &str) -> InstanceKey {
        let namespace = self.intern(namespace, 0);
        let service = self.intern(service, 1);
        InstanceKey::from_parts(namespace, service, id.into())
    }

    /// The key with its namespace and service names shared with every other key
    /// that uses them. Callers that keep keys of their own use this to share too.
    pub fn intern_key(&mut self, key: InstanceKey) -> InstanceKey {
        let namespace = self.intern(&key.namespace, 0);
        let service = self.intern(&key.service, 1);
        if Arc::ptr_eq(&namespace, &key.namespace) && Arc::ptr_eq(&service, &key.service) {
            return key;
        }
        InstanceKey::from_parts(namespace, service, key.id.clone())
    }

    /// Number of keys with at least one entry, tombstones included.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The record the merged view shows for `key`, with its origin.
    pub fn visible(&self, key: &Key) -> Option<(OriginId, &Record)> {
        let holders = self.keys.get(key).map_or(&[][..], |h| &h[..]);
        let (origin, entry) = shown_entry(&self.slices, holders, self.moved.get(key))?;
        entry.record.as_ref().map(|r| (origin, r))
    }

    /// The shown entry of `key` (its version: when it was written), and the
    /// origin holding it.
    pub fn visible_entry(&self, key: &Key) -> Option<(OriginId, &Entry)> {
        let holders = self.keys.get(key).map_or(&[][..], |h| &h[..]);
        shown_entry(&self.slices, holders, self.moved.get(key)).filter(|(_, e)| e.is_live())
    }

    /// The own slice's entry for `key`.
    pub fn local_entry(&self, key: &Key) -> Option<&Entry> {
        self.keys.get(key)?.iter().find(|(o, _)| *o == self.local).map(|(_, e)| e)
    }

    /// Writes a live record into the own slice with a fresh version.
    pub fn put_local(&mut self, key: Key, record: Record, wall_ms: u64) -> (Version, Outcome) {
        let version = self.hlc.tick(wall_ms);
        let mut out = Outcome::default();
        let entry = Entry { version, record: Some(record) };
        self.write_local(Change::Put { key, entry }, &mut out);
        (version, out)
    }

    /// Removes `key` from the merged view by a write to the own slice.
    ///
    /// Where another origin holds a copy, the own slice keeps a tombstone that
    /// hides it (and tells its owner to drop it); otherwise the own entry is
    /// simply purged. Returns `None` when nothing visible or owned was there.
    ///
    /// The tombstone is versioned just above the newest copy this node knows,
    /// not "now": it removes what was here, and nothing newer. A registration
    /// of the same instance made elsewhere that has not arrived yet (its
    /// provider moved, and this node's lease or grace for the old copy ran
    /// out) is newer, and wins everywhere, as it should.
    pub fn remove_local(&mut self, key: &Key, wall_ms: u64) -> Option<(Version, Outcome)> {
        self.remove_local_with(key, wall_ms, false)
    }

    /// Like [`Store::remove_local`], but always by a tombstone, even when no
    /// other origin holds a copy here: for records that nodes this one
    /// cannot hear may have copied ([`Store::adopt`]), so that the removal
    /// hides their copies too when it reaches them.
    pub fn hide_local(&mut self, key: &Key, wall_ms: u64) -> Option<(Version, Outcome)> {
        self.remove_local_with(key, wall_ms, true)
    }

    fn remove_local_with(&mut self, key: &Key, wall_ms: u64, always_tombstone: bool) -> Option<(Version, Outcome)> {
        let moved = self.moved.get(key).map(|m| m.to);
        let holders = self.keys.get(key).map_or(&[][..], |h| &h[..]);
        let local_live = holders.iter().any(|(o, e)| *o == self.local && e.is_live());
        let shown = moved.is_some() || self.winner(holders).is_some_and(|(_, e)| e.is_live());
        if !local_live && !shown {
            return None;
        }
        // A moved copy still shown stands for the copy it moved to, which
        // is on its way: the tombstone must hide that one too.
        let others = always_tombstone || moved.is_some() || holders.iter().any(|(o, _)| *o != self.local);
        let mut out = Outcome::default();
        let version = if others {
            let newest = holders.iter().map(|(_, e)| e.version.hlc).chain(moved.map(|v| v.hlc)).max().unwrap_or(0);
            let version = Version { hlc: newest.saturating_add(1), node: self.hlc.node() };
            self.hlc.observe(version);
            self.write_local(Change::Put { key: key.clone(), entry: Entry { version, record: None } }, &mut out);
            self.tombstones.push_back((wall_ms, key.clone(), version));
            version
        } else {
            self.write_local(Change::Purge { key: key.clone() }, &mut out);
            self.hlc.tick(wall_ms)
        };
        Some((version, out))
    }

    /// Copies a peer's entry into the own slice as it is, version included,
    /// so that the own slice keeps it if the peer's copy goes: the same
    /// write, held twice. A removal of it (a tombstone above its version)
    /// hides both copies, and a newer write of the key supersedes both.
    /// Does nothing if the own slice holds the key at that version or newer.
    pub fn adopt(&mut self, key: Key, entry: Entry) -> Outcome {
        let mut out = Outcome::default();
        if self.local_entry(&key).is_some_and(|e| e.version >= entry.version) {
            return out;
        }
        self.hlc.observe(entry.version);
        self.write_local(Change::Put { key, entry }, &mut out);
        out
    }

    /// Drops the own slice's live entry for `key`, leaving every other
    /// origin's copy as it is (unlike [`Store::remove_local`], which hides
    /// them). Returns `None` if the own slice holds no live entry for `key`
    /// (a tombstone stays until it is collected).
    pub fn purge_own(&mut self, key: &Key) -> Option<Outcome> {
        self.local_entry(key).filter(|e| e.is_live())?;
        let mut out = Outcome::default();
        self.write_local(Change::Purge { key: key.clone() }, &mut out);
        Some(out)
    }

    /// Applies one change of a peer's slice, in that origin's order.
    ///
    /// A newer entry for a key the own slice holds takes the key over: the own
    /// copy is purged (published as a local change) and reported as superseded.
    pub fn apply_remote(&mut self, origin: OriginId, change: Change) -> Outcome {
        let mut out = Outcome::default();
        if origin == self.local || !self.slices.contains_key(&origin) {
            return out;
        }
        match change {
            Change::Put { key, entry } => {
                self.hlc.observe(entry.version);
                let newer = entry.version;
                let local = self.set(origin, key.clone(), Some(entry), &mut out);
                if let Some((version, was_live)) = local
                    && version < newer
                {
                    if was_live {
                        out.superseded.push(key.clone());
                    }
                    // The own copy is hidden now but not purged yet: a purge
                    // that reached a third node before the newer copy would
                    // show it a removal. The caller purges it later.
                    out.stale.push(key);
                }
            }
            Change::Purge { key } => {
                self.set(origin, key, None, &mut out);
            }
            Change::Moved { key, to } => {
                self.hlc.observe(to);
                let holders = self.keys.get(&key).map_or(&[][..], |h| &h[..]);
                // Still shown from this origin, and the copy it moved to is
                // not here yet but may still come: keep showing it until that
                // copy comes, as a removal now would be undone by its arrival
                // (a flap). From a writer this node is caught up with, the
                // copy is not coming (it was removed since): no reason to wait.
                let keep = shown_entry(&self.slices, holders, self.moved.get(&key))
                    .filter(|(o, e)| *o == origin && e.is_live() && e.version < to)
                    .map(|(_, e)| e.clone())
                    .filter(|_| !self.is_known(to))
                    .filter(|_| !holders.iter().any(|(_, e)| e.version >= to));
                if let Some(entry) = keep {
                    self.moved.insert(key.clone(), Moved { origin, entry, to, since_ms: self.moved_clock });
                }
                self.set(origin, key, None, &mut out);
            }
        }
        out
    }

    /// Stops showing moved copies (see [`Change::Moved`]) kept for `hold_ms`
    /// or more whose newer copy never came (its node was cut off, or
    /// died), and ages the ones kept from now on from `now_ms` (see also
    /// [`Store::set_clock`]). Run it when [`Store::next_moved_due`] says.
    pub fn sweep_moved(&mut self, now_ms: u64, hold_ms: u64) -> Outcome {
        self.moved_clock = now_ms;
        let mut out = Outcome::default();
        if self.moved.is_empty() {
            return out;
        }
        let due: Vec<Key> =
            self.moved.iter().filter(|(_, m)| now_ms >= m.since_ms + hold_ms).map(|(k, _)| k.clone()).collect();
        for key in due {
            self.end_moved(key, &mut out);
        }
        out
    }

    /// Number of moved copies still shown while their newer copy is on its way.
    pub fn moved_pending(&self) -> usize {
        self.moved.len()
    }

    /// Sets the clock moved copies are aged from (the caller's monotonic
    /// milliseconds, as given to [`Store::sweep_moved`]). A caller that
    /// sweeps only when something is due sets it before applying peers'
    /// changes, so a copy moved now is aged from now.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.moved_clock = self.moved_clock.max(now_ms);
    }

    /// When the next moved copy is due to leave the view (the time, on the
    /// clock of [`Store::sweep_moved`], its `hold_ms` ends); `None` if none
    /// is kept.
    pub fn next_moved_due(&self, hold_ms: u64) -> Option<u64> {
        self.moved.values().map(|m| m.since_ms + hold_ms).min()
    }

    /// Tells the store how far it holds each writer's copies: pairs of a
    /// node hash (as in [`Version::node`]) and an HLC such that every copy
    /// the writer wrote with a version up to it, if it still exists, is
    /// here. 0 for a writer whose copies may still be on their way, whatever
    /// their version (a peer this node is not caught up with); writers not
    /// named are known entirely. Moved copies waiting for a writer's copy
    /// that is now known stop being shown: had that copy still existed, it
    /// would be here.
    ///
    /// A mark, not a yes or no: a node can be caught up with a peer's last
    /// beat while that beat is old (a link that held the peer's messages
    /// delivers them late, in order, the old beat first). A copy the peer
    /// wrote after that beat is above the mark, and its moved copy stays
    /// shown until it comes.
    pub fn set_writers_known(&mut self, writers: impl IntoIterator<Item = (u64, u64)>) -> Outcome {
        self.known = writers.into_iter().collect();
        let mut out = Outcome::default();
        if self.moved.is_empty() {
            return out;
        }
        let arrived: Vec<Key> =
            self.moved.iter().filter(|(_, m)| self.is_known(m.to)).map(|(k, _)| k.clone()).collect();
        for key in arrived {
            self.end_moved(key, &mut out);
        }
        out
    }

    /// Whether the copy `version` names would be here if it still existed
    /// (see [`Store::set_writers_known`]).
    fn is_known(&self, version: Version) -> bool {
        self.known.get(&version.node).is_none_or(|mark| version.hlc <= *mark)
    }

    /// Stops showing the moved copy kept for `key`.
    fn end_moved(&mut self, key: Key, out: &mut Outcome) {
        let holders = self.keys.get(&key).map_or(&[][..], |h| &h[..]);
        let before = shown_with(&self.slices, holders, self.moved.get(&key));
        self.moved.remove(&key);
        let after = shown_with(&self.slices, holders, None);
        if before != after {
            out.view.push(view_change(&self.slices, key, holders, None, after));
        }
    }

    /// Replaces a peer slice with a transferred copy, as a diff: keys the copy
    /// lacks are purged, the others put. Unchanged keys cause no view change, so
    /// a resync never makes instances blink.
    pub fn replace_slice(&mut self, origin: OriginId, entries: Vec<(Key, Entry)>) -> Outcome {
        let mut out = Outcome::default();
        if origin == self.local || !self.slices.contains_key(&origin) {
            return out;
        }
        let incoming: std::collections::HashSet<&Key> = entries.iter().map(|(k, _)| k).collect();
        let stale: Vec<Key> = self
            .keys
            .iter()
            .filter(|(k, holders)| holders.iter().any(|(o, _)| *o == origin) && !incoming.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            out.extend(self.apply_remote(origin, Change::Purge { key }));
        }
        for (key, entry) in entries {
            let same = self
                .keys
                .get(&key)
                .and_then(|h| h.iter().find(|(o, _)| *o == origin))
                .is_some_and(|(_, e)| *e == entry);
            if !same {
                out.extend(self.apply_remote(origin, Change::Put { key, entry }));
            }
        }
        out
    }

    /// Purges the own entry for `key` if a newer entry of another origin still
    /// hides it (see [`Outcome::stale`]); a key written here again since is
    /// left alone.
    pub fn purge_stale(&mut self, key: &Key) -> Outcome {
        let mut out = Outcome::default();
        let Some(holders) = self.keys.get(key) else { return out };
        let own = holders.iter().find(|(o, _)| *o == self.local).map(|(_, e)| e.version);
        let newest_other =
            holders.iter().filter(|(o, _)| *o != self.local).map(|(_, e)| (e.version, e.is_live())).max();
        if let (Some(own), Some((other, live))) = (own, newest_other)
            && own < other
        {
            // Hidden by a live copy: the key moved, and nodes that have not
            // got that copy yet keep showing this one. Hidden by a tombstone:
            // it was removed, and a plain purge says so.
            let change =
                if live { Change::Moved { key: key.clone(), to: other } } else { Change::Purge { key: key.clone() } };
            self.write_local(change, &mut out);
        }
        out
    }

    /// Removes a whole peer slice (a dead origin, or an older incarnation).
    pub fn drop_origin(&mut self, origin: OriginId) -> Outcome {
        let mut out = Outcome::default();
        if origin == self.local {
            return out;
        }
        let keys: Vec<Key> = self
            .keys
            .iter()
            .filter(|(_, holders)| holders.iter().any(|(o, _)| *o == origin))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.set(origin, key, None, &mut out);
        }
        if let Some(slice) = self.slices.remove(&origin) {
            self.ids.remove(&slice.origin);
        }
        out
    }

    /// Purges own tombstones written more than `ttl_ms` ago. The TTL must
    /// exceed every lease so that no copy a tombstone hides can still be
    /// renewed. Ages come from when each tombstone was written, not from its
    /// version (which is that of the copy it hides, plus one).
    pub fn gc_tombstones(&mut self, wall_ms: u64, ttl_ms: u64) -> Outcome {
        let mut out = Outcome::default();
        while let Some((written, _, _)) = self.tombstones.front()
            && written.saturating_add(ttl_ms) < wall_ms
        {
            let Some((_, key, version)) = self.tombstones.pop_front() else { break };
            // Only if it is still that tombstone (not re-registered since).
            if self.local_entry(&key).is_some_and(|e| !e.is_live() && e.version == version) {
                self.write_local(Change::Purge { key }, &mut out);
            }
        }
        out
    }

    /// Every entry of one slice, for transfer to a peer.
    pub fn slice_entries(&self, origin: OriginId) -> Vec<(Key, Entry)> {
        self.keys
            .iter()
            .filter_map(|(k, holders)| holders.iter().find(|(o, _)| *o == origin).map(|(_, e)| (k.clone(), e.clone())))
            .collect()
    }

    /// Sorts entries (of [`Self::slice_entries`]) so that each service's keys
    /// are next to each other: a peer loading them page by page then updates
    /// one service view per run instead of one per entry. Groups by the
    /// interned names' addresses, which is cheap and enough: the order only
    /// has to be a grouping, and correctness never depends on it. (Keys are
    /// computed once: comparing through the key pointers missed the cache.)
    pub fn group_by_service(entries: &mut [(Key, Entry)]) {
        entries.sort_by_cached_key(|(k, _)| match k {
            Key::Instance(k) => {
                (1, Arc::as_ptr(&k.namespace).cast::<u8>() as usize, Arc::as_ptr(&k.service).cast::<u8>() as usize)
            }
            Key::Consumer(_) | Key::StatusOverride(_) => (0, 0, 0),
        });
    }

    /// Every record the merged view shows.
    pub fn visible_records(&self) -> impl Iterator<Item = (&Key, OriginId, &Record)> + '_ {
        let held = self.keys.iter().filter_map(|(k, holders)| {
            let (o, e) = shown_entry(&self.slices, holders, self.moved.get(k))?;
            e.record.as_ref().map(|r| (k, o, r))
        });
        // Moved copies of keys no origin holds any more.
        let moved = self
            .moved
            .iter()
            .filter(|(k, _)| !self.keys.contains_key(*k))
            .filter_map(|(k, m)| m.entry.record.as_ref().map(|r| (k, m.origin, r)));
        held.chain(moved)
    }

    fn write_local(&mut self, change: Change, out: &mut Outcome) {
        let local = self.local;
        let slice = self.slices.get_mut(&local).expect("own slice always exists");
        slice.seq += 1;
        let seq = slice.seq;
        match &change {
            Change::Put { key, entry } => self.set(local, key.clone(), Some(entry.clone()), out),
            Change::Purge { key } | Change::Moved { key, .. } => self.set(local, key.clone(), None, out),
        };
        out.local.push((seq, change));
    }

    /// Sets (or with `None`, removes) `origin`'s entry for `key`, keeping the
    /// slice digest and counts, and records the merged-view change if any.
    /// Returns the version and liveness of the own slice's entry for `key`
    /// as it was before (one look-up serves both).
    fn set(&mut self, origin: OriginId, key: Key, new: Option<Entry>, out: &mut Outcome) -> Option<(Version, bool)> {
        if !self.slices.contains_key(&origin) {
            return None;
        }
        let added = new.as_ref().map(|e| (e.digest(&key), e.is_live()));
        let key = match key {
            Key::Instance(k) if new.is_some() => Key::Instance(self.intern_key(k)),
            other => other,
        };
        let holders = self.keys.entry(key.clone()).or_default();
        let local = holders.iter().find(|(o, _)| *o == self.local).map(|(_, e)| (e.version, e.is_live()));
        let before = shown_with(&self.slices, holders, self.moved.get(&key));
        let pos = holders.iter().position(|(o, _)| *o == origin);
        let old = match (pos, new) {
            (Some(i), Some(entry)) => Some(std::mem::replace(&mut holders[i].1, entry)),
            (Some(i), None) => Some(holders.swap_remove(i).1),
            (None, Some(entry)) => {
                holders.push((origin, entry));
                None
            }
            (None, None) => None,
        };
        // A moved copy kept in view is done once a copy at least as new as
        // the one it moved to is here.
        if !self.moved.is_empty()
            && let Some(m) = self.moved.get(&key)
            && holders.iter().any(|(_, e)| e.version >= m.to)
        {
            self.moved.remove(&key);
        }
        let moved = self.moved.get(&key);
        let after = shown_with(&self.slices, holders, moved);
        if before != after {
            out.view.push(view_change(&self.slices, key.clone(), holders, moved, after));
        }
        if holders.is_empty() {
            self.keys.remove(&key);
        }
        let removed = old.as_ref().map(|e| (e.digest(&key), e.is_live()));
        let slice = self.slices.get_mut(&origin).expect("checked above");
        if let Some((digest, live)) = removed {
            slice.digest ^= digest;
            slice.entries -= 1;
            slice.live -= u64::from(live);
        }
        if let Some((digest, live)) = added {
            slice.digest ^= digest;
            slice.entries += 1;
            slice.live += u64::from(live);
        }
        local
    }

    fn winner<'a>(&self, holders: &'a [(OriginId, Entry)]) -> Option<(OriginId, &'a Entry)> {
        winner(&self.slices, holders)
    }
}

/// The entry the merged view shows a key by: the winner of its holders, or
/// a moved copy still kept in view if that is newer (the copy it moved to
/// is not here yet, or it would have ended the moved copy).
fn shown_entry<'a>(
    slices: &HashMap<OriginId, Slice>,
    holders: &'a [(OriginId, Entry)],
    moved: Option<&'a Moved>,
) -> Option<(OriginId, &'a Entry)> {
    let held = winner(slices, holders);
    match (held, moved) {
        (Some((_, e)), Some(m)) if m.entry.version > e.version => Some((m.origin, &m.entry)),
        (None, Some(m)) => Some((m.origin, &m.entry)),
        (held, _) => held,
    }
}

/// The origin and version of the live record the merged view shows, if any.
fn shown_with(
    slices: &HashMap<OriginId, Slice>,
    holders: &[(OriginId, Entry)],
    moved: Option<&Moved>,
) -> Option<(OriginId, Version)> {
    shown_entry(slices, holders, moved).and_then(|(o, e)| e.is_live().then_some((o, e.version)))
}

/// The view change to what is shown now (`after`, from [`shown_with`]).
fn view_change(
    slices: &HashMap<OriginId, Slice>,
    key: Key,
    holders: &[(OriginId, Entry)],
    moved: Option<&Moved>,
    after: Option<(OriginId, Version)>,
) -> ViewChange {
    match after {
        Some((o, _)) => {
            let record = shown_entry(slices, holders, moved)
                .and_then(|(_, e)| e.record.clone())
                .expect("shown implies a live record");
            ViewChange::Upsert { key, record, origin: o }
        }
        None => ViewChange::Remove { key },
    }
}

/// The entry the merged view is decided by: highest version, ties broken by
/// incarnation so that every node picks the same one.
fn winner<'a>(slices: &HashMap<OriginId, Slice>, holders: &'a [(OriginId, Entry)]) -> Option<(OriginId, &'a Entry)> {
    holders
        .iter()
        .max_by_key(|(o, e)| (e.version, slices.get(o).map_or(0, |s| s.origin.incarnation)))
        .map(|(o, e)| (*o, e))
}
