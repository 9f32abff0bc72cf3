// Cluster: every member as this node sees it, live; drain for admins.

import { api, session } from '../api.js';
import { h, fill, fmt, pill, duration, table, confirmAction, toast } from '../ui.js';

const COLUMNS = [
  { label: 'Node' }, { label: 'State' }, { label: 'Ready' }, { label: 'Advertise address' },
  { label: 'Last beat', num: true }, { label: 'Origin seq', num: true }, { label: 'Applied seq', num: true },
  { label: 'Lag', num: true }, { label: 'Records', num: true }, { label: 'Digest' }, { label: 'In sync' },
];

export function cluster({ main, feed }) {
  if (!session.admin) {
    fill(main, h('h1', null, 'Cluster'),
      h('p', { class: 'muted' }, 'Reading the members of the cluster needs an admin grant.'));
    return null;
  }
  const body = h('tbody');
  const title = h('p', { class: 'muted' });
  const drain = h('button', { type: 'button', class: 'danger', 'data-action': 'drain' }, 'Drain this node');
  fill(main,
    h('div', { class: 'toolbar' }, h('h1', null, 'Cluster'), h('div', { class: 'spacer' }), drain),
    title,
    h('div', { class: 'panel' }, table(COLUMNS, body, { label: 'Members' })));
  fill(body, h('tr', null, h('td', { colspan: COLUMNS.length, class: 'empty' }, 'Loading…')));

  let nodeId = '';
  drain.addEventListener('click', async () => {
    const ok = await confirmAction({
      title: `Drain ${nodeId}?`,
      body: `${nodeId} turns unready, asks its providers and watchers to move to other nodes, and stops. `
        + 'Its supervisor decides whether it starts again. This console loses its connection to it.',
      action: 'Drain and stop',
      danger: true,
    });
    if (!ok) return;
    try {
      await api('/v1/node/drain', { method: 'POST' });
      toast(`${nodeId} is draining.`);
    } catch (e) {
      toast(`Drain refused: ${e.message}`, 'error');
    }
  });

  feed.follow(feed.namespace);
  const off = feed.on('members', (m) => {
    nodeId = m.nodeId;
    drain.textContent = `Drain ${m.nodeId}`;
    fill(title, `Cluster ${m.cluster}, as ${m.nodeId} sees it: ${m.members.length} member${m.members.length === 1 ? '' : 's'}.`);
    fill(body, m.members.map((x) => {
      const state = x.state.replace('MEMBER_STATE_', '');
      const inSync = x.digestMatch && x.lag === '0';
      return h('tr', { 'data-node': x.nodeId },
        h('td', null, x.nodeId, state === 'LOCAL' ? h('span', { class: 'badge' }, 'this node') : null),
        h('td', { 'data-testid': 'state' }, pill(state)),
        h('td', null, x.ready ? 'yes' : 'no'),
        h('td', { class: 'mono' }, x.advertiseAddr),
        h('td', { class: 'num' }, state === 'LOCAL' ? '—' : `${duration(x.lastBeatAgeMs)} ago`),
        h('td', { class: 'num' }, fmt(x.originSeq)),
        h('td', { class: 'num' }, fmt(x.appliedSeq)),
        h('td', { class: 'num' }, fmt(x.lag)),
        h('td', { class: 'num' }, fmt(x.recordCount)),
        h('td', null, x.digestMatch ? 'match' : 'differs'),
        h('td', null, inSync ? pill('UP', 'in sync') : pill('STARTING', 'catching up')));
    }));
  });
  return off;
}
