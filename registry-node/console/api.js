// The node's JSON API, for the console: requests with the session's token,
// and server-sent events read over fetch (EventSource cannot send an
// Authorization header, and a token never goes in a URL).

const TOKEN_KEY = 'registry.token';

export const session = {
  // Kept in sessionStorage: gone when the tab closes, never sent as a cookie.
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  principal: '',
  admin: false,
  authRequired: false,
};

export function setToken(token) {
  session.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

function headers(accept, json) {
  const h = { accept };
  if (session.token) h.authorization = `Bearer ${session.token}`;
  if (json) h['content-type'] = 'application/json';
  return h;
}

async function failure(res) {
  const text = await res.text().catch(() => '');
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON: use the text */ }
  return new ApiError(res.status, body?.code || `HTTP_${res.status}`, body?.message || text || res.statusText);
}

/** A JSON request; throws ApiError with the API's code and message. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headers('application/json', body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'UNAVAILABLE', `the node did not answer (${e.message})`);
  }
  if (!res.ok) throw await failure(res);
  return res.status === 204 ? null : res.json();
}

/**
 * Follows a server-sent event stream: `onEvent(name, data)` for each event
 * (data parsed as JSON), `onState('open' | 'retrying' | 'error', error)` as
 * the connection changes. Reconnects with backoff unless the node refuses
 * (400, 401, 403). Returns a function that stops it.
 */
export function stream(path, onEvent, onState = () => {}) {
  const abort = new AbortController();
  let stopped = false;
  (async () => {
    let backoff = 500;
    while (!stopped) {
      try {
        const res = await fetch(path, { headers: headers('text/event-stream'), signal: abort.signal, cache: 'no-store' });
        if (!res.ok) {
          const err = await failure(res);
          if ([400, 401, 403, 404].includes(res.status)) {
            onState('error', err);
            return;
          }
          throw err;
        }
        onState('open');
        backoff = 500;
        await readEvents(res.body, onEvent);
        if (!stopped) onState('retrying');
      } catch (e) {
        if (stopped || e.name === 'AbortError') return;
        onState('retrying', e);
      }
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 8000);
    }
  })();
  return () => {
    stopped = true;
    abort.abort();
  };
}

/** Parses the text/event-stream format (the WHATWG rules we need). */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let name = 'message';
  let data = [];
  let scanned = 0; // the buffer's first `scanned` characters hold no newline
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // Walk the lines with a cursor and keep only the unfinished tail: a
    // chunk of hundreds of events is read in one pass, not copied per line.
    let from = 0;
    let end;
    while ((end = buffer.indexOf('\n', Math.max(from, scanned))) >= 0) {
      let line = buffer.slice(from, end);
      from = end + 1;
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (data.length) {
          let parsed = null;
          try { parsed = JSON.parse(data.join('\n')); } catch { parsed = null; }
          if (parsed !== null) onEvent(name, parsed);
        }
        name = 'message';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? '' : line.slice(colon + 1);
      if (v.startsWith(' ')) v = v.slice(1);
      if (field === 'event') name = v;
      else if (field === 'data') data.push(v);
    }
    buffer = buffer.slice(from);
    scanned = buffer.length;
  }
}
