// The registry console: a hash-routed page over the node's JSON API.
// Plain ES modules, no build step: what is in this folder is what the node
// serves at /ui/.

import { api, ApiError, session, setToken, stream } from './api.js';
import { h, fill, toast } from './ui.js';
import { overview } from './pages/overview.js';
import { services } from './pages/services.js';
import { service } from './pages/service.js';
import { cluster } from './pages/cluster.js';

const main = document.getElementById('main');
const live = document.getElementById('live');

// ---------------------------------------------------------------- theme

const THEME_KEY = 'registry.theme';
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
}
applyTheme(localStorage.getItem(THEME_KEY)
  || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'));
document.getElementById('theme').addEventListener('click', () => {
  const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
});

// ---------------------------------------------------------------- live feed

/**
 * One `/v1/events` stream per tab, shared by the pages: the node's overview,
 * namespaces, the services of one namespace, and (admins) the members. A
 * listener gets the last event at once, then every new one.
 */
const feed = {
  namespace: 'default',
  stop: null,
  last: new Map(),
  listeners: new Map(),
  start() {
    this.stop?.();
    this.last.delete('services');
    const path = `/v1/events?namespace=${encodeURIComponent(this.namespace)}`;
    this.stop = stream(path, (name, data) => this.emit(name, data), (state, err) => {
      live.dataset.state = state;
      live.textContent = state === 'open' ? 'live' : state === 'retrying' ? 'reconnecting…' : 'offline';
      live.title = err ? err.message : 'Connected to the node: pages update as the registry changes';
      if (err instanceof ApiError && err.status === 401) signedOut('Your token is no longer accepted.');
    });
  },
  follow(namespace) {
    if (namespace !== this.namespace || !this.stop) {
      this.namespace = namespace;
      this.start();
    }
  },
  emit(name, data) {
    this.last.set(name, data);
    for (const fn of this.listeners.get(name) || []) fn(data);
  },
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    if (this.last.has(name)) fn(this.last.get(name));
    return () => this.listeners.get(name).delete(fn);
  },
  close() {
    this.stop?.();
    this.stop = null;
    this.last.clear();
  },
};

// Banners: what an operator must know on every page.
feed.on('node', (n) => {
  const banners = [];
  if (n.draining) banners.push(['warn', 'This node is draining: its clients are moving to other nodes, then it stops.']);
  else if (!n.ready) banners.push(['warn', 'This node is warming up: it serves reads once it has caught up with its peers.']);
  if (n.degraded) {
    banners.push(['error', 'Degraded view: part of what this node serves comes from a peer it has not heard from recently, or it is cut off from the bus.']);
  }
  if (n.safetyValveHolding) {
    banners.push(['error', 'Safety valve holding: removing the orphaned instances would remove too much at once, so they stay served until their peer returns.']);
  }
  if (n.suspectPeers) banners.push(['warn', `${n.suspectPeers} peer${n.suspectPeers > 1 ? 's are' : ' is'} suspect: not heard from lately.`]);
  if (n.orphanedPeers) banners.push(['error', `${n.orphanedPeers} peer${n.orphanedPeers > 1 ? 's are' : ' is'} orphaned: silent for too long; their instances are being removed.`]);
  fill(document.getElementById('banners'), banners.map(([kind, text]) => h('div', { class: `banner ${kind}`, role: 'status' }, text)));
});

// ---------------------------------------------------------------- router

const routes = [
  [/^\/?$/, overview, 'overview'],
  [/^\/services\/([^/]+)\/(.+)$/, service, 'services'],
  [/^\/services\/?$/, services, 'services'],
  [/^\/cluster\/?$/, cluster, 'cluster'],
];

let dispose = null;

function route() {
  dispose?.();
  dispose = null;
  const [path, query = ''] = location.hash.replace(/^#/, '').split('?');
  for (const [pattern, page, nav] of routes) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const a of document.querySelectorAll('nav a')) {
      if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const params = match.slice(1).map(decodeURIComponent);
    const ctx = { main, params, query: new URLSearchParams(query), feed, signedOut };
    dispose = page(ctx) || null;
    return;
  }
  fill(main, h('h1', null, 'Not found'), h('p', null, 'No such page. ', h('a', { href: '#/' }, 'Go to the overview.')));
}

window.addEventListener('hashchange', () => {
  route();
  main.focus({ preventScroll: true });
});

// ---------------------------------------------------------------- session

function showWho() {
  const who = document.getElementById('who');
  const logout = document.getElementById('logout');
  if (session.authRequired || session.principal) {
    fill(who, session.principal || 'anonymous', session.admin ? ' · admin' : ' · read-only');
    logout.hidden = !session.token;
  } else {
    fill(who, 'auth off');
    logout.hidden = true;
  }
}

document.getElementById('logout').addEventListener('click', () => {
  setToken('');
  signedOut('Signed out.');
});

function signedOut(message) {
  dispose?.();
  dispose = null;
  feed.close();
  Object.assign(session, { principal: '', admin: false });
  fill(document.getElementById('who'));
  document.getElementById('logout').hidden = true;
  fill(document.getElementById('banners'));
  live.textContent = '';
  showLogin(message);
}

function showLogin(message = '') {
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const error = h('p', { class: 'error-text', role: 'alert' }, message);
  const form = h('form', { class: 'login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in'),
    h('p', { class: 'muted' }, 'This node requires a token. It stays in this tab only, and is sent with each request.'),
    h('label', { for: 'token' }, 'Token'),
    input,
    error,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    try {
      await begin();
    } catch (err) {
      setToken('');
      error.textContent = err instanceof ApiError && err.status === 401
        ? 'This node does not know that token.'
        : `Cannot sign in: ${err.message}`;
      input.select();
    }
  });
  fill(main, form);
  input.focus();
}

/** Asks the node who we are, then shows the page the URL names. */
async function begin() {
  const s = await api('/v1/session');
  Object.assign(session, s);
  if (!s.signedIn) {
    showLogin();
    return;
  }
  showWho();
  feed.start();
  route();
}

begin().catch((err) => {
  if (err instanceof ApiError && err.status === 401) {
    setToken('');
    showLogin(session.token ? 'Your token is no longer accepted.' : '');
  } else {
    fill(main, h('h1', null, 'The node did not answer'), h('p', { class: 'muted' }, err.message));
    toast(err.message, 'error');
  }
});
