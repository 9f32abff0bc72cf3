// Overview: the node, instances by status, namespaces, and (admins) members.

import { session } from '../api.js';
import { h, fill, fmt, pill, table } from '../ui.js';

function card(label, value, cls = '') {
  return h('div', { class: `card ${cls}` }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, fmt(value)));
}

export function overview({ main, feed }) {
  const cards = h('div', { class: 'cards', 'data-testid': 'counts' });
  const nodeLine = h('p', { class: 'muted' });
  const namespaces = h('tbody');
  const members = h('tbody');
  fill(main,
    h('h1', null, 'Overview'),
    nodeLine,
    cards,
    h('h2', null, 'Namespaces'),
    h('div', { class: 'panel' }, table([{ label: 'Namespace' }, { label: 'Services', num: true }, { label: 'Instances', num: true }],
      namespaces, { label: 'Namespaces' })),
    session.admin ? [
      h('h2', null, 'Members ', h('a', { href: '#/cluster', class: 'muted' }, '(details)')),
      h('div', { class: 'panel' }, table([{ label: 'Node' }, { label: 'State' }, { label: 'Ready' }, { label: 'In sync' }],
        members, { label: 'Members' })),
    ] : null);
  fill(namespaces, h('tr', null, h('td', { colspan: 3, class: 'empty' }, 'Loading…')));

  feed.follow(feed.namespace);
  const off = [
    feed.on('node', (n) => {
      fill(nodeLine, `Node ${n.nodeId} of cluster ${n.cluster} · version ${n.version} · `,
        n.clustered ? 'clustered' : 'standalone', ' · ', n.ready ? 'ready' : 'not ready',
        ` · ${fmt(n.sessions)} sessions, ${fmt(n.leases)} leases, ${fmt(n.subscribers)} watchers`);
      fill(cards,
        card('Nodes', n.members),
        card('Services', n.services),
        card('Instances', n.instances),
        card('Up', n.up, 'up'),
        card('Down', n.down, 'down'),
        card('Starting', n.starting, 'starting'),
        card('Out of service', n.outOfService, 'oos'));
    }),
    feed.on('namespaces', (d) => {
      if (!d.namespaces.length) {
        fill(namespaces, h('tr', null, h('td', { colspan: 3, class: 'empty' }, 'No service has an instance yet.')));
        return;
      }
      fill(namespaces, d.namespaces.map((ns) => h('tr', null,
        h('td', null, h('a', { href: `#/services?ns=${encodeURIComponent(ns.name)}` }, ns.name)),
        h('td', { class: 'num' }, fmt(ns.services)),
        h('td', { class: 'num' }, fmt(ns.instances)))));
    }),
    feed.on('members', (m) => {
      fill(members, m.members.map((x) => {
        const state = x.state.replace('MEMBER_STATE_', '');
        return h('tr', null,
          h('td', null, x.nodeId),
          h('td', null, pill(state)),
          h('td', null, x.ready ? 'yes' : 'no'),
          h('td', null, x.digestMatch && x.lag === '0' ? 'yes' : `no (lag ${fmt(x.lag)})`));
      }));
    }),
  ];
  return () => off.forEach((f) => f());
}
