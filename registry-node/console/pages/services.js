// Services of a namespace: searchable, sortable, a page at a time (the API
// paginates, so 10,000 services load as fast as 100), live.

import { api } from '../api.js';
import { h, fill, fmt, count, table, coalesce, toast } from '../ui.js';

const PAGE_SIZE = 100;
const COLUMNS = [
  { label: 'Service', key: 'name' },
  { label: 'Instances', key: 'instanceCount', num: true },
  { label: 'Up', key: 'up', num: true },
  { label: 'Down', key: 'down', num: true },
  { label: 'Starting', key: 'starting', num: true },
  { label: 'Out of service', key: 'outOfService', num: true },
];

export function services({ main, query, feed }) {
  const state = {
    namespace: query.get('ns') || feed.namespace || 'default',
    search: query.get('q') || '',
    sort: parseSort(query.get('order')),
    tokens: [''], // the token of each page up to the current one
  };
  const abort = new AbortController();
  const select = h('select', { 'aria-label': 'Namespace' });
  const search = h('input', {
    type: 'search', placeholder: 'Search services  ( / )', 'aria-label': 'Search services', value: state.search,
  });
  const summary = h('span', { class: 'muted', role: 'status' });
  const prev = h('button', { type: 'button' }, '‹ Previous');
  const next = h('button', { type: 'button' }, 'Next ›');
  const holder = h('div', { class: 'panel' });
  fill(main,
    h('h1', null, 'Services'),
    h('div', { class: 'toolbar' }, select, search, h('div', { class: 'spacer' })),
    holder,
    h('div', { class: 'pager' }, summary, prev, next));

  let body = h('tbody');
  let nextToken = '';
  const renderTable = () => {
    body = h('tbody');
    fill(holder, table(COLUMNS, body, {
      label: `Services of ${state.namespace}`,
      sort: state.sort,
      onSort: (field) => {
        const desc = state.sort.field === field ? !state.sort.desc : field !== 'name';
        state.sort = { field, desc };
        restart();
      },
    }));
  };

  let loading = null;
  async function load() {
    const token = state.tokens[state.tokens.length - 1];
    const params = new URLSearchParams({ pageSize: PAGE_SIZE });
    if (state.search) params.set('search', state.search);
    if (state.sort.field !== 'name' || state.sort.desc) {
      params.set('orderBy', `${state.sort.field}${state.sort.desc ? ' desc' : ''}`);
    }
    if (token) params.set('pageToken', token);
    const request = api(`/v1/namespaces/${encodeURIComponent(state.namespace)}/services?${params}`, { signal: abort.signal });
    loading = request;
    let page;
    try {
      page = await request;
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (e.status === 400 && token) {
        // The page's token no longer fits (another sort or search): start over.
        state.tokens = [''];
        load();
        return;
      }
      fill(body, h('tr', null, h('td', { colspan: COLUMNS.length, class: 'empty' }, e.message)));
      if (e.status !== 403) toast(e.message, 'error');
      return;
    }
    if (loading !== request) return; // a newer request is on its way
    nextToken = page.nextPageToken;
    const first = (state.tokens.length - 1) * PAGE_SIZE;
    if (!page.services.length) {
      fill(body, h('tr', null, h('td', { colspan: COLUMNS.length, class: 'empty' },
        state.search ? `No service matches “${state.search}”.` : 'No service in this namespace has an instance.')));
    } else {
      fill(body, page.services.map((s) => h('tr', { 'data-service': s.service },
        h('td', null, h('a', { href: `#/services/${encodeURIComponent(state.namespace)}/${encodeURIComponent(s.service)}` }, s.service)),
        h('td', { class: 'num' }, fmt(s.instanceCount)),
        h('td', { class: 'num' }, count(s.up, 'up')),
        h('td', { class: 'num' }, count(s.down, 'down')),
        h('td', { class: 'num' }, count(s.starting, 'starting')),
        h('td', { class: 'num' }, count(s.outOfService, 'oos')))));
    }
    fill(summary, page.total
      ? `${fmt(first + 1)}–${fmt(first + page.services.length)} of ${fmt(page.total)} services`
      : '0 services');
    prev.disabled = state.tokens.length === 1;
    next.disabled = !nextToken;
  }

  const refresh = coalesce(load, 500);
  function remember() {
    const q = new URLSearchParams({ ns: state.namespace });
    if (state.search) q.set('q', state.search);
    if (state.sort.field !== 'name' || state.sort.desc) q.set('order', `${state.sort.field}${state.sort.desc ? ' desc' : ''}`);
    history.replaceState(null, '', `#/services?${q}`);
  }
  function restart() {
    state.tokens = [''];
    remember();
    renderTable();
    load();
  }

  let typing = null;
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.search = search.value.trim();
      state.tokens = [''];
      remember();
      load();
    }, 200);
  });
  select.addEventListener('change', () => {
    state.namespace = select.value;
    feed.follow(state.namespace);
    restart();
  });
  prev.addEventListener('click', () => {
    if (state.tokens.length > 1) state.tokens.pop();
    load();
  });
  next.addEventListener('click', () => {
    if (nextToken) state.tokens.push(nextToken);
    load();
  });
  const slash = (e) => {
    if (e.key === '/' && document.activeElement !== search && !e.target.closest?.('input, select, textarea')) {
      e.preventDefault();
      search.focus();
    }
  };
  document.addEventListener('keydown', slash);

  feed.follow(state.namespace);
  const off = [
    feed.on('namespaces', (d) => {
      const names = d.namespaces.map((n) => n.name);
      if (!names.includes(state.namespace)) names.unshift(state.namespace);
      fill(select, names.map((n) => h('option', { value: n, selected: n === state.namespace }, n)));
    }),
    // The feed says which services changed; the page reads its rows again
    // (at most twice a second however fast they change).
    feed.on('services', (ev) => {
      if (ev.namespace === state.namespace && (ev.changed.length || ev.removed.length || ev.truncated)) refresh();
    }),
  ];
  fill(select, h('option', { value: state.namespace }, state.namespace));
  renderTable();
  load();
  return () => {
    abort.abort();
    refresh.cancel();
    clearTimeout(typing);
    document.removeEventListener('keydown', slash);
    off.forEach((f) => f());
  };
}

function parseSort(text) {
  const [field, dir] = (text || 'name').split(' ');
  const known = COLUMNS.some((c) => c.key === field);
  return known ? { field, desc: dir === 'desc' } : { field: 'name', desc: false };
}
