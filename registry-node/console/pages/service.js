// One service: its instances (live through the SSE watch), its consumers,
// its recent changes, and the admin actions.

import { api, session, stream } from '../api.js';
import { h, fill, fmt, pill, statusName, ago, time, table, coalesce, confirmAction, toast } from '../ui.js';

/** Rows drawn at most; a filter narrows a bigger service. */
const MAX_ROWS = 500;
const MAX_CHANGES = 100;

export function service({ main, params, signedOut }) {
  const [namespace, name] = params;
  const base = `/v1/namespaces/${encodeURIComponent(namespace)}/services/${encodeURIComponent(name)}`;
  const instances = new Map(); // id → InstanceJson, from the watch
  const details = new Map(); // id → { ownerNode, updatedUnixMs }, from the detail reads
  let consumers = [];
  const changes = [];
  let snapshotSeen = false;

  const counts = h('div', { class: 'counts', 'data-testid': 'service-counts' });
  const filter = h('input', { type: 'search', placeholder: 'Filter instances', 'aria-label': 'Filter instances' });
  const shown = h('span', { class: 'muted', role: 'status' });
  const instanceHolder = h('div', { class: 'panel' });
  const consumerBody = h('tbody');
  const changeList = h('ol', { class: 'changes', 'aria-label': 'Recent changes' });
  fill(main,
    h('div', { class: 'crumbs' }, h('a', { href: `#/services?ns=${encodeURIComponent(namespace)}` }, namespace), ' /'),
    h('h1', null, name),
    counts,
    h('h2', null, 'Instances'),
    h('div', { class: 'toolbar' }, filter, shown),
    instanceHolder,
    h('div', { class: 'grid2' },
      h('section', null, h('h2', null, 'Consumers'),
        h('div', { class: 'panel' }, table(
          [{ label: 'Consumer' }, { label: 'Host' }, { label: 'Node' }, { label: 'Watching' }, { label: 'Since' }],
          consumerBody, { label: 'Consumers' }))),
      h('section', null, h('h2', null, 'Recent changes'),
        h('div', { class: 'panel' }, changeList))));
  fill(instanceHolder, h('p', { class: 'empty' }, 'Loading…'));
  fill(changeList, h('li', { class: 'muted' }, 'Changes show here as they happen.'));

  // ------------------------------------------------------------ drawing

  const columns = [
    { label: 'Instance' }, { label: 'Address' }, { label: 'Status' }, { label: 'Zone' }, { label: 'Weight', num: true },
    { label: 'Metadata' }, { label: 'Node' }, { label: 'Last write', num: true },
  ];
  if (session.admin) columns.push({ label: 'Actions', num: true });

  function row(i) {
    const status = statusName(i.status);
    const o = i.statusOverride;
    const d = details.get(i.instanceId) || {};
    return h('tr', { 'data-instance': i.instanceId },
      h('td', { class: 'mono' }, i.instanceId),
      h('td', { class: 'mono' }, `${i.host}:${i.port}`),
      h('td', null, pill(status),
        o ? h('span', { class: 'badge' }, `override by ${o.setBy || 'an admin'}; provider says ${statusName(o.providerStatus).toLowerCase().replaceAll('_', ' ')}`) : null),
      h('td', null, i.zone || h('span', { class: 'zero' }, '—')),
      h('td', { class: 'num' }, fmt(i.weight)),
      h('td', null, Object.entries(i.metadata || {}).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`))),
      h('td', null, d.ownerNode || h('span', { class: 'zero' }, '…')),
      h('td', { class: 'num', title: d.updatedUnixMs ? `written ${new Date(Number(d.updatedUnixMs)).toISOString()}` : null },
        d.updatedUnixMs ? `${ago(d.updatedUnixMs)} ago` : '—'),
      session.admin ? h('td', null, h('div', { class: 'actions' }, actions(i))) : null);
  }

  function actions(i) {
    const overridden = i.statusOverride && statusName(i.statusOverride.status) === 'OUT_OF_SERVICE';
    const label = `${i.instanceId} (${i.host}:${i.port})`;
    const toggle = overridden
      ? h('button', { type: 'button', class: 'small', 'data-action': 'restore' }, 'Return to service')
      : h('button', { type: 'button', class: 'small', 'data-action': 'out-of-service' }, 'Take out of service');
    toggle.addEventListener('click', async () => {
      const ok = await confirmAction(overridden ? {
        title: `Return ${i.instanceId} to service?`,
        body: `The override is cleared on every node: ${label} shows the status its provider reports again.`,
        action: 'Return to service',
      } : {
        title: `Take ${i.instanceId} out of service?`,
        body: `${label} shows OUT_OF_SERVICE on every node, whatever its provider reports, so clients stop sending it `
          + 'traffic. It stays so, across re-registrations, until it is returned to service.',
        action: 'Take out of service',
        danger: true,
      });
      if (!ok) return;
      const path = `${base}/instances/${encodeURIComponent(i.instanceId)}/status`;
      try {
        if (overridden) await api(path, { method: 'DELETE' });
        else await api(path, { method: 'PUT', body: { status: 'STATUS_OUT_OF_SERVICE' } });
        toast(overridden ? `${i.instanceId} is back in service.` : `${i.instanceId} is out of service.`);
      } catch (e) {
        toast(`Refused: ${e.message}`, 'error');
      }
    });
    const remove = h('button', { type: 'button', class: 'small danger', 'data-action': 'deregister' }, 'Deregister');
    remove.addEventListener('click', async () => {
      const ok = await confirmAction({
        title: `Deregister ${i.instanceId}?`,
        body: `${label} is removed from every node now. A provider that is still running may register it again.`,
        action: 'Deregister',
        danger: true,
      });
      if (!ok) return;
      try {
        const r = await api(`${base}/instances/${encodeURIComponent(i.instanceId)}`, { method: 'DELETE' });
        toast(r.found ? `${i.instanceId} is deregistered.` : `${i.instanceId} was already gone.`);
      } catch (e) {
        toast(`Refused: ${e.message}`, 'error');
      }
    });
    return [toggle, remove];
  }

  // Drawing 10,000 instances changing 1,000 times a second: the sorted ids
  // are kept until an instance comes or goes, and a redraw replaces only
  // the rows that changed, unless the set of rows shown did.
  let order = null; // sorted ids, null when instances came or went
  let shownRows = new Map(); // id → its row on the page
  let rebuild = true; // the rows shown must be chosen again
  const dirty = new Set(); // ids changed since the last draw

  function drawCounts() {
    const by = { UP: 0, DOWN: 0, STARTING: 0, OUT_OF_SERVICE: 0 };
    for (const i of instances.values()) by[statusName(i.status)] = (by[statusName(i.status)] || 0) + 1;
    fill(counts,
      h('span', { class: 'muted' }, `${fmt(instances.size)} instance${instances.size === 1 ? '' : 's'}:`),
      Object.entries(by).map(([st, n]) => pill(st, `${fmt(n)} ${st.replaceAll('_', ' ').toLowerCase()}`)));
  }

  function drawInstances() {
    drawCounts();
    if (!rebuild) {
      for (const id of dirty) {
        const old = shownRows.get(id);
        const i = instances.get(id);
        if (old && i) {
          const fresh = row(i);
          old.replaceWith(fresh);
          shownRows.set(id, fresh);
        }
      }
      dirty.clear();
      return;
    }
    rebuild = false;
    dirty.clear();
    if (!order) order = [...instances.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const needle = filter.value.trim().toLowerCase();
    const matching = needle ? order.filter((id) => matches(instances.get(id), needle)) : order;
    const ids = matching.slice(0, MAX_ROWS);
    fill(shown, matching.length > ids.length
      ? `Showing ${fmt(ids.length)} of ${fmt(matching.length)}: filter to narrow.`
      : needle ? `${fmt(matching.length)} match.` : '');
    shownRows = new Map();
    if (!ids.length) {
      fill(instanceHolder, h('p', { class: 'empty' }, needle ? 'No instance matches.' : 'No instance is registered.'));
      return;
    }
    const rows = ids.map((id) => {
      const tr = row(instances.get(id));
      shownRows.set(id, tr);
      return tr;
    });
    fill(instanceHolder, table(columns, h('tbody', null, rows), { label: 'Instances' }));
  }

  /** Instances came or went: choose the rows again at the next draw. */
  function reorder() {
    order = null;
    rebuild = true;
  }

  function drawConsumers() {
    if (!consumers.length) {
      fill(consumerBody, h('tr', null, h('td', { colspan: 5, class: 'empty' }, 'No consumer watches this service.')));
      return;
    }
    fill(consumerBody, consumers.map((c) => h('tr', { 'data-consumer': c.consumerId },
      h('td', { class: 'mono' }, c.consumerId, c.principal ? h('span', { class: 'badge' }, c.principal) : null),
      h('td', { class: 'mono' }, c.host || '—'),
      h('td', null, c.nodeId),
      h('td', null, c.services.length ? c.services.join(', ') : 'whole namespace'),
      h('td', { class: 'num' }, `${ago(c.sinceUnixMs)} ago`))));
  }

  function drawChanges() {
    if (!changes.length) return;
    fill(changeList, changes.map((c) => h('li', null, time(c.at), h('span', { class: 'kind' }, c.kind),
      h('span', { class: 'mono' }, c.id), h('span', { class: 'muted' }, c.detail || ''))));
  }

  const draw = coalesce(() => {
    drawInstances();
    drawChanges();
  }, 200);
  filter.addEventListener('input', () => {
    rebuild = true;
    draw();
  });

  function change(kind, id, detail) {
    changes.unshift({ at: new Date(), kind, id, detail });
    changes.length = Math.min(changes.length, MAX_CHANGES);
  }

  // ------------------------------------------------------------ data

  function upsert(i) {
    const before = instances.get(i.instanceId);
    instances.set(i.instanceId, i);
    if (before) dirty.add(i.instanceId);
    else reorder();
    details.set(i.instanceId, { ...details.get(i.instanceId), updatedUnixMs: String(Date.now()) });
    if (!before) change('added', i.instanceId, `${i.host}:${i.port}`);
    else if (statusName(before.status) !== statusName(i.status)) {
      change('status', i.instanceId, `${statusName(before.status)} → ${statusName(i.status)}`);
    } else change('updated', i.instanceId, `${i.host}:${i.port}`);
  }

  const abort = new AbortController();
  let reading = false;
  async function readDetails(force = false) {
    if (reading || (!force && Date.now() - lastRead < detailsEvery())) return;
    reading = true;
    lastRead = Date.now();
    try {
      const s = await api(base, { signal: abort.signal });
      for (const i of s.instances) {
        details.set(i.instanceId, { ownerNode: i.ownerNode, updatedUnixMs: i.updatedUnixMs });
        if (!snapshotSeen) instances.set(i.instanceId, i);
      }
      reorder(); // every row's node and last write may have changed
      consumers = s.consumers;
      drawConsumers();
      draw();
    } catch (e) {
      if (e.name !== 'AbortError' && e.status !== 404) toast(e.message, 'error');
      if (e.status === 401) signedOut('Your token is no longer accepted.');
    } finally {
      reading = false;
    }
  }
  // The detail read carries every instance: a big service is read again
  // less often (10,000 instances: every 10 s at most).
  const details2s = coalesce(() => readDetails(), 2000);
  let lastRead = 0;
  const detailsEvery = () => Math.max(2000, instances.size);

  const consumerId = `console:${session.principal || 'anonymous'}`;
  const watch = `/v1/watch?namespace=${encodeURIComponent(namespace)}&service=${encodeURIComponent(name)}`
    + `&consumerId=${encodeURIComponent(consumerId)}`;
  const stop = stream(watch, (event, data) => {
    if (event === 'snapshot') {
      const fresh = new Map(data.instances.map((i) => [i.instanceId, i]));
      if (snapshotSeen) {
        // A snapshot after a gap: what it changes is news too.
        for (const id of instances.keys()) if (!fresh.has(id)) change('removed', id);
        for (const i of fresh.values()) {
          const before = instances.get(i.instanceId);
          if (!before || JSON.stringify(before) !== JSON.stringify(i)) upsert(i);
        }
      }
      instances.clear();
      for (const [id, i] of fresh) instances.set(id, i);
      reorder();
      snapshotSeen = true;
      draw();
      details2s();
    } else if (event === 'delta') {
      for (const id of data.removed) {
        instances.delete(id);
        details.delete(id);
        change('removed', id);
      }
      if (data.removed.length) reorder();
      for (const i of data.upserted) upsert(i);
      draw();
      details2s();
    }
  }, (state, err) => {
    if (state === 'error' && err) {
      fill(instanceHolder, h('p', { class: 'empty' }, err.message));
      if (err.status === 401) signedOut('Your token is no longer accepted.');
    }
  });

  // Consumers come and go without a change to the instances: read them
  // again now and then, only while the page is open and visible.
  const poll = setInterval(() => {
    if (document.visibilityState === 'visible') readDetails();
  }, 5000);
  readDetails(true);

  return () => {
    stop();
    abort.abort();
    clearInterval(poll);
    draw.cancel();
    details2s.cancel();
  };
}

function matches(i, needle) {
  if (i.instanceId.toLowerCase().includes(needle) || `${i.host}:${i.port}`.includes(needle)) return true;
  if ((i.zone || '').toLowerCase().includes(needle) || statusName(i.status).toLowerCase().includes(needle)) return true;
  return Object.entries(i.metadata || {}).some(([k, v]) => `${k}=${v}`.toLowerCase().includes(needle));
}
