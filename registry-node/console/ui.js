// Small DOM helpers. Everything shown comes from the network (service names,
// metadata), so text always goes in as text nodes, never as HTML.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const number = new Intl.NumberFormat('en-US');
export const fmt = (n) => number.format(Number(n) || 0);

/** `STATUS_UP` → `UP`; unset reads as UP, as the registry counts it. */
export function statusName(s) {
  const name = String(s || '').replace(/^STATUS_/, '');
  return name === '' || name === 'UNSPECIFIED' ? 'UP' : name;
}

export function pill(name, label) {
  return h('span', { class: `pill ${name}` }, label || name.replaceAll('_', ' ').toLowerCase());
}

/** A count by status, greyed out at zero. */
export function count(n, cls) {
  return h('span', { class: Number(n) ? cls : 'zero' }, fmt(n));
}

/** "42 s", "3 min", "5 h", "2 d" since `unixMs`. */
export function ago(unixMs) {
  const ms = Date.now() - Number(unixMs);
  if (!Number.isFinite(ms) || !unixMs) return '—';
  return duration(Math.max(0, ms));
}

export function duration(ms) {
  if (Number(ms) < 10_000) return `${(Number(ms) / 1000).toFixed(1)} s`;
  const s = Math.round(Number(ms) / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export function time(date = new Date()) {
  return h('time', { datetime: date.toISOString() }, date.toLocaleTimeString('en-GB'));
}

/** Asks before an admin action; resolves true only on the confirming button. */
export function confirmAction({ title, body, action, danger = false }) {
  return new Promise((resolve) => {
    const cancel = h('button', { type: 'button', 'data-confirm': 'cancel' }, 'Cancel');
    const ok = h('button', { type: 'button', class: danger ? 'danger primary' : 'primary', 'data-confirm': 'ok' }, action);
    const dialog = h('dialog', { 'aria-labelledby': 'dialog-title' },
      h('h2', { id: 'dialog-title' }, title),
      h('p', null, body),
      h('div', { class: 'buttons' }, cancel, ok));
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener('click', () => done(false));
    ok.addEventListener('click', () => done(true));
    dialog.addEventListener('cancel', (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

export function toast(message, kind = 'info') {
  const el = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  document.getElementById('toasts').append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}

/**
 * Runs `fn` at most once per `ms`, and once more after the last call: many
 * changes a second become a few renders.
 */
export function coalesce(fn, ms) {
  let timer = null;
  let again = false;
  const run = () => {
    timer = null;
    if (again) {
      again = false;
      requestAnimationFrame(() => fn());
      timer = setTimeout(run, ms);
    }
  };
  const call = () => {
    if (timer) {
      again = true;
      return;
    }
    requestAnimationFrame(() => fn());
    timer = setTimeout(run, ms);
  };
  call.cancel = () => {
    clearTimeout(timer);
    timer = null;
    again = false;
  };
  return call;
}

/** A table with a header row; `columns`: [{label, num, key?, sort?}]. */
export function table(columns, body, { label, sort, onSort } = {}) {
  const head = h('tr', null, columns.map((c) => {
    const th = h('th', { class: c.num ? 'num' : null, scope: 'col' });
    if (c.key && onSort) {
      const state = sort?.field === c.key ? (sort.desc ? 'descending' : 'ascending') : null;
      if (state) th.setAttribute('aria-sort', state);
      th.append(h('button', { class: 'sort', type: 'button', onclick: () => onSort(c.key) }, c.label));
    } else {
      th.append(c.label);
    }
    return th;
  }));
  return h('table', { 'aria-label': label }, h('thead', null, head), body);
}
