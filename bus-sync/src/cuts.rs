//! Consistent cuts of the own slice, served page by page.
//!
//! A slice pull starts a cut: a copy of the own slice as of one sequence number.
//! The requester pulls it in bounded pages (so no message nears the bus's payload
//! limit and a slow requester only slows itself), then applies the changes after
//! the cut's seq from the stream or the ring. Cuts are shared by reference, kept
//! while pulled, and dropped after a while idle; the number of live cuts is
//! bounded, so many joining nodes cannot multiply the memory.

use std::collections::HashMap;
use std::sync::Arc;

use registry_store::{Entry, Key};

use crate::wire::{Page, Reply};

/// The own slice as of one sequence number, as the node hands it over to be
/// served: its entries, and the slice's digest the node keeps incrementally
/// (so serving a cut does not hash every entry again).
#[derive(Debug, Default)]
pub struct SliceCut {
    pub seq: u64,
    pub digest: u64,
    pub entries: Vec<(Key, Entry)>,
}

#[derive(Debug)]
struct Cut {
    seq: u64,
    /// Entries per page of this cut: the configured count, or fewer when its
    /// largest entries would make a page exceed the byte budget.
    page_len: usize,
    entries: Arc<Vec<(Key, Entry)>>,
    digest: u64,
    last_used: u64,
    /// Offsets served at least once, and how many entries they cover: pages
    /// are asked for several at a time and may be asked again.
    served: std::collections::HashSet<u64>,
    served_entries: usize,
}

/// Live cuts of the own slice.
#[derive(Debug)]
pub struct Cuts {
    cuts: HashMap<u64, Cut>,
    next_id: u64,
    page_entries: usize,
    page_bytes: usize,
    max_cuts: usize,
    idle_ms: u64,
}

/// Bytes an entry takes in a page, roughly (its key, its record and the
/// framing around them); only used to size pages.
fn entry_bytes(key: &Key, entry: &Entry) -> usize {
    let key = match key {
        Key::Instance(k) | Key::StatusOverride(k) => k.namespace.len() + k.service.len() + k.id.len(),
        Key::Consumer(k) => k.namespace.len() + k.stream.len(),
    };
    let record = match &entry.record {
        Some(registry_store::Record::Instance(i)) => i.bytes().len(),
        Some(registry_store::Record::Consumer(c)) => prost::Message::encoded_len(&**c),
        Some(registry_store::Record::StatusOverride(o)) => prost::Message::encoded_len(&**o),
        None => 0,
    };
    key + record + 64
}

impl Cuts {
    pub fn new(page_entries: usize, max_cuts: usize, idle_ms: u64) -> Self {
        Self {
            cuts: HashMap::new(),
            next_id: 1,
            page_entries: page_entries.max(1),
            page_bytes: usize::MAX,
            max_cuts,
            idle_ms,
        }
    }

    /// Caps a page's size in bytes (the bus's largest message, with room to
    /// spare): a cut whose largest entry is big gets fewer entries per page.
    /// Pages of one cut all have the same length, which the requester checks.
    pub fn set_page_bytes(&mut self, bytes: usize) {
        self.page_bytes = bytes.max(1);
    }

    /// Answers a page request. `cut_id` 0 starts a new cut from `snapshot`, which
    /// returns the own slice and the seq it is at, taken atomically.
    pub fn serve(&mut self, cut_id: u64, offset: u64, now: u64, snapshot: impl FnOnce() -> SliceCut) -> Reply {
        self.cuts.retain(|_, c| now < c.last_used + self.idle_ms);
        let id = if cut_id == 0 {
            if self.cuts.len() >= self.max_cuts {
                return Reply::Refused { reason: "too many slice transfers at once; retry".into(), pull_slice: false };
            }
            // The cut is a copy: its order is fixed, so pages never overlap or skip.
            let SliceCut { seq, digest, entries } = snapshot();
            debug_assert_eq!(digest, entries.iter().fold(0, |acc, (k, e)| acc ^ e.digest(k)), "slice digest");
            let largest = entries.iter().map(|(k, e)| entry_bytes(k, e)).max().unwrap_or(1);
            let page_len = self.page_entries.min((self.page_bytes / largest).max(1));
            let id = self.next_id;
            self.next_id += 1;
            let cut = Cut {
                seq,
                page_len,
                entries: Arc::new(entries),
                digest,
                last_used: now,
                served: std::collections::HashSet::new(),
                served_entries: 0,
            };
            self.cuts.insert(id, cut);
            id
        } else {
            cut_id
        };
        let Some(cut) = self.cuts.get_mut(&id) else {
            return Reply::Refused { reason: "unknown or expired cut; start over".into(), pull_slice: true };
        };
        cut.last_used = now;
        let total = cut.entries.len() as u64;
        if offset > total {
            return Reply::Refused { reason: "offset past the end of the cut".into(), pull_slice: true };
        }
        let start = offset as usize;
        let end = (start + cut.page_len).min(cut.entries.len());
        let entries = cut.entries[start..end].to_vec();
        if cut.served.insert(offset) {
            cut.served_entries += end - start;
        }
        let done = cut.served_entries >= cut.entries.len();
        let page = Page { cut_id: id, cut_seq: cut.seq, offset, total, digest: cut.digest, entries };
        if done {
            // Every page served once: a requester that lost one starts over.
            self.cuts.remove(&id);
        }
        Reply::Page(page)
    }

    pub fn live(&self) -> usize {
        self.cuts.len()
    }
}
