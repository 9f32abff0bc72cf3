// Drives Debian's chromium (headless, through playwright-core) through the
// registry console, as a user would. Started by tests/tests/e2e/console.rs, which
// runs the nodes: when the script needs something done outside the browser
// (register over gRPC, kill a node) it prints `step <name>` and waits for
// the test to answer `ok` (or `fail <why>`) on stdin.
//
// Environment: PLAYWRIGHT (a node_modules folder), CHROMIUM (the browser),
// SCENARIO (single | cluster | scale), URL (the node's HTTP base), and per
// scenario ADMIN_TOKEN, READ_TOKEN, NODES; SCREENSHOTS (a folder) to save
// screenshots in.

import { createRequire } from 'node:module';
import readline from 'node:readline';
import path from 'node:path';

const require = createRequire(path.join(process.env.PLAYWRIGHT, 'x.js'));
const { chromium } = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL = env('URL');
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the test to do `name` outside the browser, and waits for it. */
async function step(name) {
  console.log(`step ${name}`);
  const { value, done } = await lines.next();
  if (done || value !== 'ok') throw new Error(`step ${name}: ${done ? 'the test stopped answering' : value}`);
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, colorScheme: 'light' });
const page = await context.newPage();
page.setDefaultTimeout(10_000);
const problems = [];
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
});
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));

async function shot(name) {
  if (!process.env.SCREENSHOTS) return;
  await page.waitForTimeout(0);
  await page.screenshot({ path: path.join(process.env.SCREENSHOTS, `console-${name}.png`) });
}

/** Within `ms` of now, `selector` is on the page (throws with what was asked). */
async function within(ms, selector, what) {
  try {
    await page.waitForSelector(selector, { timeout: ms });
  } catch {
    throw new Error(`${what}: not on the page within ${ms} ms (${selector})`);
  }
}

async function gone(ms, selector, what) {
  try {
    await page.waitForSelector(selector, { state: 'detached', timeout: ms });
  } catch {
    throw new Error(`${what}: still on the page after ${ms} ms (${selector})`);
  }
}

async function signIn(token) {
  await page.waitForSelector('form.login #token');
  await page.fill('#token', token);
  await page.press('#token', 'Enter');
  await page.waitForSelector('#who:not(:empty)');
}

async function single() {
  const admin = env('ADMIN_TOKEN');
  const reader = env('READ_TOKEN');
  await page.goto(`${URL}/ui/`);
  // Auth is on: a login form first; a wrong token is refused there.
  await page.waitForSelector('form.login #token');
  await page.fill('#token', 'not-a-token');
  await page.press('#token', 'Enter');
  await page.waitForSelector('form.login .error-text:has-text("does not know that token")');
  // (Chromium logs the refused request as a console error: expected here.)
  problems.length = 0;
  await signIn(admin);
  check((await page.textContent('#who')).includes('admin'), 'the admin is shown as such');
  check(!(await page.evaluate(() => document.cookie)), 'no cookie is set');
  check(!page.url().includes(admin), 'the token is not in the URL');

  // Overview: counts by status.
  await page.waitForSelector('[data-testid=counts] .card.down .value:text-is("1")');
  await page.waitForSelector('[data-testid=counts] .card:has(.label:text-is("Instances")) .value:text-is("3")');
  await shot('overview');

  // Services: the gRPC-registered services with their counts; sorting.
  await page.click('nav a[data-nav=services]');
  await within(5_000, 'tr[data-service=orders]', 'orders in the services list');
  const ordersRow = await page.textContent('tr[data-service=orders]');
  check(/orders\s*2\s*2/.test(ordersRow.replace(/\s+/g, ' ')), `orders counts 2 instances, 2 up: ${ordersRow}`);
  await page.click('th button.sort:text-is("Down")');
  await page.waitForSelector('th[aria-sort=descending]:has-text("Down")');
  const first = await page.getAttribute('tbody tr:first-child', 'data-service');
  check(first === 'payments', `sorted by down instances, payments comes first (got ${first})`);
  await page.fill('input[type=search]', 'pay');
  await gone(5_000, 'tr[data-service=orders]', 'a search for "pay" hides orders');
  await page.fill('input[type=search]', '');
  await within(5_000, 'tr[data-service=orders]', 'orders back after clearing the search');
  await shot('services');

  // Keyboard: the service link is reachable and opens the service.
  await page.focus('tr[data-service=orders] a');
  await page.keyboard.press('Enter');
  await within(5_000, 'tr[data-instance=orders-1]', 'the instances of orders');
  check((await page.textContent('tr[data-instance=orders-1]')).includes('version=1.4.2'), 'metadata shown');
  check((await page.textContent('tr[data-instance=orders-1]')).includes('eu-1'), 'zone shown');
  await within(8_000, 'tr[data-consumer=billing]', 'the consumer billing');
  await within(5_000, 'tr[data-instance=orders-1] td:has-text("console-node")', 'the owner node');

  // Live: a registration and a removal show without reload, within 1 s.
  await step('register orders-3');
  await within(1_000, 'tr[data-instance=orders-3]', 'a registration over gRPC shows within 1 s');
  await within(1_000, '.changes li:has-text("orders-3"):has-text("added")', 'the change is listed');
  await step('remove orders-3');
  await gone(1_000, 'tr[data-instance=orders-3]', 'a removal shows within 1 s');

  // Admin: out of service (confirmed), then deregistration (confirmed).
  await page.click('tr[data-instance=orders-2] button[data-action=out-of-service]');
  await page.waitForSelector('dialog[open]');
  await page.keyboard.press('Escape');
  await gone(2_000, 'dialog', 'Escape cancels the dialog');
  check(await page.$('tr[data-instance=orders-2] .pill.UP'), 'cancelled: still up');
  await page.click('tr[data-instance=orders-2] button[data-action=out-of-service]');
  await page.click('dialog[open] button[data-confirm=ok]');
  await within(2_000, 'tr[data-instance=orders-2] .pill.OUT_OF_SERVICE', 'the override shows');
  await within(2_000, 'tr[data-instance=orders-2] .badge:has-text("override by ops")', 'who set it shows');
  await shot('service');
  await page.click('tr[data-instance=orders-1] button[data-action=deregister]');
  await page.click('dialog[open] button[data-confirm=ok]');
  await gone(2_000, 'tr[data-instance=orders-1]', 'the deregistered instance goes');
  await step('orders-1 is gone');

  // Dark.
  await page.click('#theme');
  check(await page.getAttribute('html', 'data-theme') === 'dark', 'dark theme');
  await shot('service-dark');
  await page.click('#theme');

  // A read-only token: no admin action anywhere, and the API refuses them.
  await page.click('#logout');
  await signIn(reader);
  check((await page.textContent('#who')).includes('read-only'), 'shown as read-only');
  await page.goto(`${URL}/ui/#/services/default/orders`);
  await within(5_000, 'tr[data-instance=orders-2]', 'the reader sees the instances');
  check((await page.$$('button[data-action]')).length === 0, 'no admin action for a reader');
  await page.click('nav a[data-nav=cluster]');
  await page.waitForSelector('main:has-text("needs an admin grant")');
  check((await page.$$('button[data-action]')).length === 0, 'no drain for a reader');
  const refused = await fetch(`${URL}/v1/namespaces/default/services/orders/instances/orders-2`, {
    method: 'DELETE', headers: { authorization: `Bearer ${reader}` },
  });
  check(refused.status === 403, `the API refuses a reader's deregistration: ${refused.status}`);
  const drain = await fetch(`${URL}/v1/node/drain`, { method: 'POST', headers: { authorization: `Bearer ${reader}` } });
  check(drain.status === 403, `the API refuses a reader's drain: ${drain.status}`);
}

async function cluster() {
  const [local, , victim] = env('NODES').split(',');
  await page.goto(`${URL}/ui/#/cluster`);
  for (const n of env('NODES').split(',')) await within(10_000, `tr[data-node="${n}"]`, `member ${n}`);
  await within(10_000, `tr[data-node="${local}"] .pill.LOCAL`, 'this node is local');
  await within(10_000, `tr[data-node="${victim}"] .pill.LIVE`, `${victim} is live`);
  await shot('cluster');
  await step(`kill ${victim}`);
  await within(15_000, `tr[data-node="${victim}"] .pill:is(.SUSPECT, .ORPHANED)`, `${victim} turns suspect`);
  await within(5_000, '.banner:has-text("peer")', 'a banner says a peer is suspect or orphaned');
}

async function scale() {
  const started = Date.now();
  await page.goto(`${URL}/ui/#/services`);
  await page.waitForSelector('tbody tr[data-service]');
  await page.waitForSelector('.pager [role=status]:has-text("of 10,000 services")');
  const loaded = Date.now() - started;
  check((await page.$$('tbody tr[data-service]')).length === 100, 'a page of 100 services');
  await page.click('.pager button:has-text("Next")');
  await page.waitForSelector('.pager [role=status]:has-text("101–200 of 10,000")');
  const sortStarted = Date.now();
  await page.click('th button.sort:text-is("Instances")');
  await page.waitForSelector('.pager [role=status]:has-text("1–100 of 10,000")');
  await page.waitForSelector('th[aria-sort=descending]:has-text("Instances")');
  const sorted = Date.now() - sortStarted;
  console.log(`measure services_page_load_ms=${loaded} sort_by_instances_ms=${sorted}`);

  // A service of 10,000 instances changing 1,000 times a second: the page
  // keeps drawing frames, and shows the last change within a second.
  const opened = Date.now();
  await page.goto(`${URL}/ui/#/services/churn/big`);
  await page.waitForSelector('[data-testid=service-counts]:has-text("10,000 instances")');
  await page.waitForSelector('tr[data-instance=b-00000] .pill.UP');
  const serviceLoaded = Date.now() - opened;
  await page.evaluate(() => {
    window.frameGaps = [];
    window.longTasks = 0;
    let last = performance.now();
    const frame = (t) => {
      window.frameGaps.push(t - last);
      last = t;
      if (!window.stopFrames) requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.longTasks += e.duration;
    }).observe({ type: 'longtask' });
  });
  await step('churn');
  await within(1_000, 'tr[data-instance=b-00000] .pill.DOWN', 'the last of 3,000 changes shows within 1 s');
  const f = await page.evaluate(() => {
    window.stopFrames = true;
    const gaps = window.frameGaps.slice(1).sort((a, b) => a - b);
    return { n: gaps.length, p99: gaps[Math.floor(gaps.length * 0.99)] || 0, max: gaps[gaps.length - 1] || 0, long: window.longTasks };
  });
  check(f.n > 0, 'frames were drawn during the churn');
  console.log(`measure service_10k_load_ms=${serviceLoaded} churn_frames=${f.n} frame_gap_p99_ms=${f.p99.toFixed(0)} `
    + `frame_gap_max_ms=${f.max.toFixed(0)} long_tasks_total_ms=${f.long.toFixed(0)}`);
}

try {
  const scenario = env('SCENARIO');
  if (scenario === 'single') await single();
  else if (scenario === 'cluster') await cluster();
  else if (scenario === 'scale') await scale();
  else throw new Error(`unknown scenario ${scenario}`);
  check(problems.length === 0, `the console logged problems:\n${problems.join('\n')}`);
  console.log('done');
} catch (e) {
  await page.screenshot({ path: path.join(process.env.FAILURE_DIR || '.', 'console-failure.png') }).catch(() => {});
  console.error(`failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  process.exit();
}
