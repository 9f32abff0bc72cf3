//! Paged slice transfers: pages of a consistent cut, loaded as they arrive
//! into an empty copy or staged to replace an existing one, checked by count
//! and digest.

use std::sync::Arc;

use registry_store::{Entry, Key};

use super::repair::drain_buffer;
use super::*;

/// A slice transfer in progress. Pages are independent (a cut holds each key
/// once), so they may arrive and be loaded in any order; completeness is checked
/// by count and by the cut's digest.
#[derive(Debug, Default)]
pub(super) struct Transfer {
    /// 0 until the first page names the cut.
    pub(super) cut_id: u64,
    pub(super) cut_seq: u64,
    pub(super) total: u64,
    /// Entries per page at the origin (known from the first page).
    pub(super) page_len: u64,
    pub(super) next_offset: u64,
    /// Page requests not answered yet: request id → offset.
    pub(super) outstanding: BTreeMap<u64, u64>,
    pub(super) received: u64,
    /// XOR of the received entries' digests, checked against the cut's.
    pub(super) digest: u64,
    /// Entries held back to replace an existing copy as a whole at the end.
    /// `None`: this node holds nothing of the origin, so pages are loaded as
    /// they arrive, overlapping the work of both nodes.
    pub(super) staged: Option<Vec<(Key, Entry)>>,
}

impl SyncCore {
    pub(super) fn on_page(
        &mut self,
        node: &Arc<str>,
        mut t: Transfer,
        id: u64,
        page: Page,
        now: u64,
        actions: &mut Vec<Action>,
    ) {
        let Some(p) = self.peers.get_mut(node) else { return };
        let offset = t.outstanding.remove(&id).unwrap_or(u64::MAX);
        let len = page.entries.len() as u64;
        let first = t.page_len == 0;
        // Every page must be the one asked for, of the same cut, of the expected
        // size; an origin's seq only grows, so a cut older than what we applied
        // is bogus.
        let consistent = page.offset == offset
            && page.cut_seq >= p.applied
            && if first {
                offset == 0 && len <= page.total && page.total <= self.cfg.max_slice_entries
            } else {
                page.cut_id == t.cut_id
                    && page.cut_seq == t.cut_seq
                    && page.total == t.total
                    && len == t.page_len.min(t.total - offset)
            };
        if !consistent {
            self.counters.invalid += 1;
            p.need_slice = true;
            p.next_pull_at = now + self.cfg.retry_ms;
            return;
        }
        if first {
            t.cut_id = page.cut_id;
            t.cut_seq = page.cut_seq;
            t.total = page.total;
            t.page_len = len.max(1);
            t.next_offset = len;
        }
        t.received += len;
        t.digest = page.entries.iter().fold(t.digest, |acc, (k, e)| acc ^ e.digest(k));
        // Keep the window full before loading this page, so the origin encodes
        // the next pages while this node loads the current one.
        while t.outstanding.len() < self.cfg.pages_in_flight.max(1) && t.next_offset < t.total {
            let id = self.next_request;
            self.next_request += 1;
            self.requests.insert(id, (node.clone(), now));
            t.outstanding.insert(id, t.next_offset);
            let request = Request::Page { cut_id: t.cut_id, offset: t.next_offset };
            actions.push(Action::Request { id, to: p.origin.clone(), request });
            t.next_offset += t.page_len;
        }
        match &mut t.staged {
            Some(staged) => staged.extend(page.entries),
            None if len > 0 => {
                p.dirty = true;
                actions.push(Action::LoadEntries { origin: p.origin.clone(), entries: page.entries });
            }
            None => {}
        }
        if t.received < t.total {
            p.pull = Pull::Slice { transfer: t };
            return;
        }
        if t.digest != page.digest || t.received != t.total {
            self.counters.digest_mismatches += 1;
            p.need_slice = true;
            p.next_pull_at = now + self.cfg.retry_ms;
            return;
        }
        let (origin, cut_seq) = (p.origin.clone(), t.cut_seq);
        actions.push(match t.staged {
            Some(entries) => Action::ReplaceSlice { origin, cut_seq, entries },
            None => Action::SliceLoaded { origin, cut_seq, entries: t.received },
        });
        p.applied = cut_seq;
        p.loaded = true;
        p.dirty = false;
        p.need_slice = false;
        drain_buffer(p, actions, &mut self.counters);
    }
}
