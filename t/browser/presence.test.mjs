// The page in a real browser: Debian's chromium driven by playwright-core.
//
// Run by t/browser.t, which starts redis-server and nginx and passes:
//   PRESENCE_BASE_URL    where nginx serves the page, e.g. http://127.0.0.1:PORT/
//   PRESENCE_TTL         the presence_ttl nginx runs with, in seconds
//   PRESENCE_GRACE       its presence_leave_grace on api/leave, in seconds
//   PRESENCE_REDIS_STOP  shell command that stops Redis (the banner check)
//   PRESENCE_REDIS_START shell command that starts it again
//   PRESENCE_SHOTS       folder for the screenshots
//   CHROMIUM             the browser (default /usr/bin/chromium)
//
//   node --test-reporter=tap t/browser/presence.test.mjs
//
// nginx serves the page three ways (t/browser.t): at BASE with the live
// stream (api/stream), at BASE/poll/ without a stream location (the page
// polls api/online), at BASE/live/ with the stream, a room of its own and
// no leave grace.
//
// Every wait has a deadline; nothing sleeps a fixed time hoping the page
// caught up.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { chromium } from 'playwright-core';

const BASE = process.env.PRESENCE_BASE_URL;
const TTL_MS = Number(process.env.PRESENCE_TTL || 10) * 1000;
const GRACE_MS = Number(process.env.PRESENCE_GRACE || 0) * 1000;
const POLL_MS = 2000;              // the page's list refresh (html/app.js)
const STREAM_WAIT_MS = 4000;       // its wait for the stream's snapshot (html/app.js)
const LIVE_MS = 1000;              // the stream: a join or leave on the other screen within
const SLACK_MS = 600;              // one request's round trip and scheduling
const SAMPLE_MS = 250;             // "never unlisted": one look every 250 ms...
const WATCH_MS = 8000;             // ...for this long
const SHOTS = process.env.PRESENCE_SHOTS
  || fs.mkdtempSync(path.join(os.tmpdir(), 'presence-shots-'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

if (!BASE) {
  throw new Error('PRESENCE_BASE_URL is not set (run t/browser.t, which sets it)');
}
fs.mkdirSync(SHOTS, { recursive: true });

const ADA = 'Ada Lovelace';
const GRACE = 'Grace Hopper';
const CHARLES = 'Charles Babbage';
const HOSTILE = '<img src=x onerror=alert(1)>';
const TABS = 'Ada';            // one person in several tabs of one browser
const ALAN = 'Alan Turing';    // in the room of BASE/live/

let browser;
const pages = [];              // every page opened, for the error check at the end
let ada;                       // stays open for the whole run: the observer
let tabs;                      // TABS's tabs, all in one context

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // without these, chromium in a closed network hangs reaching out
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update',
      '--disable-sync'],
  });
});

after(async () => {
  if (browser) {
    await browser.close();
  }
});

// ---- helpers ----

// A tab in a browser of its own. opts.path: where, relative to BASE
// ('poll/', 'live/?poll=0'); opts.setup(context): before the page loads.
async function open(opts = {}) {
  const context = await browser.newContext({
    viewport: opts.viewport || { width: 880, height: 600 },
    deviceScaleFactor: opts.scale || 1,
  });
  if (opts.noLeave) {
    // a tab that dies without a word: no beacon, and no leave request
    await context.addInitScript(() => {
      navigator.sendBeacon = () => true;
    });
    await context.route('**/api/leave', (route) => route.abort());
  }
  if (opts.setup) {
    await opts.setup(context);
  }
  return openTab(context, opts.path);
}

// One more tab in the context: it shares localStorage (the name, and
// whether to go online) with the others, not sessionStorage.
async function openTab(context, where = '') {
  const page = await context.newPage();
  await page.addInitScript(holdScript);
  // asked: every request's path and when it went out; answered: the
  // status each got
  const p = { context, page, dialogs: [], errors: [], sent: [], asked: [], answered: [] };
  page.on('request', (r) => p.asked.push({ path: new URL(r.url()).pathname, at: Date.now() }));
  page.on('response', (r) => p.answered.push({ path: new URL(r.url()).pathname,
    status: r.status() }));
  page.on('dialog', (d) => {
    p.dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => p.errors.push(String(e)));
  // the session each heartbeat and leave names, in order
  page.on('request', (r) => {
    const api = /\/api\/(heartbeat|leave)$/.exec(new URL(r.url()).pathname);
    if (api) {
      let body = null;
      try {
        body = JSON.parse(r.postData() || '');
      } catch (e) { /* not JSON: no session */ }
      p.sent.push({ kind: api[1], session: body && body.session_id });
    }
  });
  pages.push(p);
  p.loaded = Date.now();
  await page.goto(BASE + where);
  return p;
}

// the requests the tab made for one API (a path ending in api/<what>)
function asked(p, what) {
  return p.asked.filter((r) => r.path.endsWith(`/api/${what}`));
}

function answered(p, what) {
  return p.answered.filter((r) => r.path.endsWith(`/api/${what}`)).map((r) => r.status);
}

// Where the tab takes the list from ('stream' or 'poll'), once it knows.
function feedIs(p, feed, ms, what) {
  return until(p.page, (f) => document.getElementById('live').dataset.feed === f, feed,
    ms, what);
}

async function goOnline(p, name) {
  await p.page.getByLabel('Your name').fill(name);
  await p.page.getByRole('button', { name: 'Go online' }).click();
  await untilSelf(p, name, 5000, `${name} listed as themself`);
}

function untilSelf(p, name, ms, what) {
  return until(p.page, (n) => {
    const me = document.querySelector('#users .user.is-self .user-name');
    return me !== null && me.textContent === n;
  }, name, ms, what);
}

// The session the tab's latest heartbeat named.
function sessionOf(p) {
  const hb = p.sent.filter((s) => s.kind === 'heartbeat');
  return hb.length ? hb[hb.length - 1].session : undefined;
}

// The tab's next heartbeat answered: its next one is TTL/2 away.
function nextHeartbeat(p) {
  return p.page.waitForResponse(
    (r) => r.url().endsWith('/api/heartbeat') && r.status() === 200,
    { timeout: TTL_MS / 2 + SLACK_MS + 2000 });
}

// Waits until fn(arg) is true in the page, or fails after ms.
async function until(page, fn, arg, ms, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    const now = await listed(page).catch(() => '?');
    throw new Error(`${what}: not within ${ms} ms (list shows ${JSON.stringify(now)})`);
  }
}

function listed(page) {
  return page.$$eval('#users .user-name', (els) => els.map((e) => e.textContent));
}

const shows = (name) => Array.from(document.querySelectorAll('#users .user-name'))
  .some((e) => e.textContent === name);
const showsNot = (name) => !Array.from(document.querySelectorAll('#users .user-name'))
  .some((e) => e.textContent === name);

// What the API itself says about one user, straight from node:
// { online, sessions }.
async function apiUser(name) {
  const r = await fetch(`${BASE}api/online?user_id=${encodeURIComponent(name)}`);
  assert.equal(r.status, 200, `GET api/online?user_id=${name}`);
  const { online, sessions } = await r.json();
  return { online, sessions };
}

async function apiOnline(name) {
  return (await apiUser(name)).online;
}

// Asks the API until name has fewer than `than` live sessions (a leave
// arrived: a session ending after the grace is no longer counted), and
// returns what it said then; fails after ms.
async function sessionsBelow(name, than, ms, what) {
  const t0 = Date.now();
  for (;;) {
    const user = await apiUser(name);
    if (user.sessions < than) {
      return user;
    }
    if (Date.now() - t0 > ms) {
      throw new Error(`${what}: ${name} still has ${user.sessions} sessions after ${ms} ms`);
    }
    await delay(25);
  }
}

// Reloads the tab with its heartbeats held until check() has run: the
// test looks at what the leave of the page that went away did before the
// reloaded page is back. Returns what check() returned. The holding is in
// the page (holdScript), not page.route: Chromium loses the pagehide
// beacon of a page whose requests are intercepted.
async function reloadHeld(p, check) {
  await p.page.evaluate(() => sessionStorage.setItem('test.hold', '1'));
  await p.page.reload();
  try {
    return await check();
  } finally {
    await p.page.evaluate(() => window.__release());
  }
}

// Reloads one of TABS's tabs (she has `sessions` live ones) while the
// observer watches her: what the API says once the leave of the page that
// went away has arrived must be `atLeave`; she is never unlisted, and the
// tab comes back in the same session.
async function reloadWatched(p, sessions, atLeave, what) {
  const id = sessionOf(p);
  const watching = watch(ada, TABS);
  const left = await reloadHeld(p,
    () => sessionsBelow(TABS, sessions, TTL_MS / 2, 'the reloaded tab\'s leave'));
  assert.deepEqual(left, atLeave, what);
  await untilSelf(p, TABS, 5000, 'the reloaded tab back online');
  assertNeverGone(await watching, TABS);
  assert.equal(sessionOf(p), id, 'the same session after the reload');
  assert.deepEqual(await apiUser(TABS), { online: true, sessions });
}

// Every tab's init script: while sessionStorage has test.hold as the page
// loads, its heartbeats wait for window.__release().
function holdScript() {
  if (!sessionStorage.getItem('test.hold')) {
    return;
  }
  const { open, send } = XMLHttpRequest.prototype;
  const held = [];
  let holding = true;
  window.__release = () => {
    sessionStorage.removeItem('test.hold');
    holding = false;
    held.splice(0).forEach((go) => go());
  };
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.testUrl = String(url);
    return open.call(this, method, url, ...rest);
  };
  XMLHttpRequest.prototype.send = function (...args) {
    if (holding && /api\/heartbeat$/.test(this.testUrl)) {
      held.push(() => send.apply(this, args));
      return undefined;
    }
    return send.apply(this, args);
  };
}

// Looks every SAMPLE_MS for WATCH_MS at whether the observer lists name
// and the API has them online; resolves to the samples. A person missing
// for a poll of the list (2 s) or between a leave and the next heartbeat
// of another tab (TTL/2) cannot slip through.
async function watch(observer, name) {
  const samples = [];
  const t0 = Date.now();
  while (Date.now() - t0 < WATCH_MS) {
    const started = Date.now();
    const [names, user] = await Promise.all([listed(observer.page), apiUser(name)]);
    samples.push({ at: started - t0, listed: names.includes(name), ...user });
    await delay(Math.max(0, SAMPLE_MS - (Date.now() - started)));
  }
  return samples;
}

function assertNeverGone(samples, name) {
  assert.ok(samples.length >= WATCH_MS / SAMPLE_MS / 2,
    `only ${samples.length} samples in ${WATCH_MS} ms`);
  assert.deepEqual(samples.filter((s) => !s.listed || !s.online), [],
    `${name} unlisted or offline in some of ${samples.length} samples`);
}

function shot(p, file, opts = {}) {
  return p.page.screenshot({ path: path.join(SHOTS, file), ...opts });
}

// ---- the checks ----

test('two people in two browsers see each other', { timeout: 30000 }, async () => {
  ada = await open({ scale: 2 });     // a sharp picture for the README
  const grace = await open({ viewport: { width: 390, height: 760 } });   // a phone
  await goOnline(ada, ADA);
  await goOnline(grace, GRACE);

  await until(ada.page, shows, GRACE, 5000, 'Ada sees Grace');
  await until(grace.page, shows, ADA, 5000, 'Grace sees Ada');
  assert.deepEqual(await listed(ada.page), [ADA, GRACE].sort());
  assert.equal(await ada.page.textContent('#count'), '2');

  // each marks its own row, and only that one
  for (const [p, me] of [[ada, ADA], [grace, GRACE]]) {
    const self = await p.page.$$eval('#users .user.is-self .user-name',
      (els) => els.map((e) => e.textContent));
    assert.deepEqual(self, [me], 'own row marked');
    assert.equal(await p.page.textContent('#me-text'), `You're online as ${me}`);
  }

  // screen readers: a labelled name box and a live list
  assert.equal(await ada.page.getAttribute('#users', 'aria-live'), 'polite');
  assert.equal(await ada.page.getByLabel('Your name').count(), 1);

  // phone width: nothing sticks out sideways
  const overflow = await grace.page.evaluate(
    () => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than a 390px screen`);

  await delay(450);   // let the arrival animation finish before the picture
  await shot(ada, 'two-online.png', { fullPage: true });
  await shot(grace, 'two-online-phone.png', { fullPage: true });
});

test('the page at / follows the stream and does not poll', { timeout: 20000 }, async () => {
  await feedIs(ada, 'stream', 5000, 'Ada\'s tab on the stream');
  await feedIs(pages[1], 'stream', 5000, 'Grace\'s tab on the stream');
  for (const p of [ada, pages[1]]) {
    assert.deepEqual(answered(p, 'stream'), [200], 'one api/stream, answered 200');
    assert.deepEqual(asked(p, 'online'), [], 'no api/online at all');
  }
});

// B (a page that never goes online) sees A come and go through the stream
// alone: ?poll=0 turns the polling fallback off, and B asks api/online
// nothing at all. Polling every 2 s could not keep to 1 s either.
test('the stream: B sees A join within 1 s, and leave within 1 s of A\'s tab closing', { timeout: 30000 }, async (t) => {
  const b = await open({ path: 'live/?poll=0' });
  await feedIs(b, 'stream', 5000, 'B on the stream');
  assert.deepEqual(await listed(b.page), [], 'the live room is empty');
  const a = await open({ path: 'live/?poll=0' });
  await feedIs(a, 'stream', 5000, 'A on the stream');

  const joined = a.page.waitForResponse(
    (r) => r.url().endsWith('/api/heartbeat') && r.status() === 200, { timeout: 5000 });
  await a.page.getByLabel('Your name').fill(ALAN);
  await a.page.getByRole('button', { name: 'Go online' }).click();
  await joined;
  const t0 = Date.now();
  await until(b.page, shows, ALAN, LIVE_MS, 'B sees A within 1 s of A\'s heartbeat');
  t.diagnostic(`join on B's screen ${Date.now() - t0} ms after A's heartbeat was answered`);
  assert.equal(await b.page.textContent('#count'), '1');
  await untilSelf(a, ALAN, 2000, 'A sees itself');

  const t1 = Date.now();
  await a.page.close({ runBeforeUnload: true });
  await until(b.page, showsNot, ALAN, Math.max(1, LIVE_MS - (Date.now() - t1)),
    'B sees A go within 1 s of A\'s tab closing');
  t.diagnostic(`leave on B's screen ${Date.now() - t1} ms after A's tab closed`);
  assert.equal(await b.page.textContent('#count'), '0');

  assert.deepEqual(asked(b, 'online'), [], 'B never asked api/online: the stream did it');
  assert.deepEqual(asked(a, 'online'), [], 'nor did A');
  assert.deepEqual(answered(b, 'stream'), [200], 'B opened the stream once');
  assert.equal(await b.page.isVisible('#banner'), false, 'no banner');
  await a.context.close();
  await b.context.close();
});

test('without a stream location (api/stream 404) the page polls; a 304 leaves the list alone', { timeout: 20000 }, async () => {
  const p = await open({ path: 'poll/' });
  const { page } = p;
  await until(page, (names) => names.every((n) => Array.from(
    document.querySelectorAll('#users .user-name')).some((e) => e.textContent === n)),
  [ADA, GRACE], POLL_MS + SLACK_MS, 'the list shown by polling');
  assert.equal(await page.getAttribute('#live', 'data-feed'), 'poll');
  assert.deepEqual(answered(p, 'stream'), [404], 'the stream was asked once, 404');
  assert.ok(asked(p, 'online').length >= 1, 'api/online asked');

  // the rows' arrival mark comes off 400 ms after they are drawn
  await until(page, () => !document.querySelector('#users .is-new'), null, 2000,
    'the new rows settled');
  await page.evaluate(() => {
    window.__mutations = 0;
    new MutationObserver((m) => { window.__mutations += m.length; })
      .observe(document.getElementById('users'),
        { childList: true, subtree: true, characterData: true, attributes: true });
  });
  const r304 = () => page.waitForResponse(
    (r) => r.url().includes('/api/online') && r.status() === 304,
    { timeout: POLL_MS * 2 + SLACK_MS });
  const first = await r304();
  assert.ok(first.request().headers()['if-none-match'], 'poll sends If-None-Match');
  await r304();
  assert.equal(await page.evaluate(() => window.__mutations), 0,
    'the list was redrawn after a 304');
  assert.deepEqual(answered(p, 'stream'), [404], 'the stream not asked again meanwhile');
  assert.deepEqual(p.errors, [], 'no script error');
  await p.context.close();
});

test('a stream that never sends its snapshot (a buffering proxy): the page polls after a few seconds', { timeout: 20000 }, async () => {
  let held = 0;
  const p = await open({
    // the stream's request goes out and nothing ever comes back
    setup: (context) => context.route('**/api/stream', () => { held++; }),
  });
  await until(p.page, shows, ADA, STREAM_WAIT_MS + POLL_MS + SLACK_MS,
    'the list shown by polling');
  assert.equal(held, 1, 'the stream was asked');
  assert.equal(await p.page.getAttribute('#live', 'data-feed'), 'poll');
  const polls = asked(p, 'online');
  const waited = polls[0].at - p.loaded;
  assert.ok(waited >= STREAM_WAIT_MS - 500,
    `first api/online ${waited} ms after the page was opened: it did not wait for the stream`);
  assert.deepEqual(p.errors, [], 'no script error');
  await p.context.close();
});

test('no EventSource in the browser: the page polls at once', { timeout: 20000 }, async () => {
  const p = await open({
    setup: (context) => context.addInitScript(() => { delete window.EventSource; }),
  });
  await until(p.page, shows, ADA, POLL_MS + SLACK_MS, 'the list shown by polling');
  assert.equal(await p.page.getAttribute('#live', 'data-feed'), 'poll');
  assert.deepEqual(asked(p, 'stream'), [], 'no stream asked');
  assert.deepEqual(p.errors, [], 'no script error');
  await p.context.close();
});

// The stream's events as a proxy or a race might hand them over: stale
// ids, ids past 2^53, junk. Served whole, as one response (then the
// connection ends, and retry: keeps EventSource from coming back soon).
test('stream events: applied in id order on top of the snapshot, stale and broken ones ignored', { timeout: 20000 }, async () => {
  const ev = (event, id, data) => `event: ${event}\n${id ? `id: ${id}\n` : ''}data: ${data}\n\n`;
  const body = 'retry: 600000\n\n'
    + ev('join', '99', '{"user_id":"before the snapshot","count":1}')
    + ev('snapshot', '100',
      '{"room":"global","ttl":4,"count":3,"users":["a","b","\uFFFD"]}')
    + ev('join', '100', '{"user_id":"same id","count":4}')
    + ev('join', '99', '{"user_id":"older id","count":4}')
    + ev('join', '101', '{"user_id":"\u{1F600}","count":4}')     // sorts after U+FFFD
    + ev('leave', '102', '{"user_id":"a","count":3,"reason":"timeout"}')
    + ev('join', '103', 'not JSON')
    + ev('join', '104', '{"user_id":5,"count":4}')
    + ev('join', '', '{"user_id":"no id of its own","count":4}')
    + ev('join', '10000000000000000001', '{"user_id":"c","count":4}')
    + ev('join', '10000000000000000000', '{"user_id":"past 2^53, older","count":5}')
    + ev('leave', '10000000000000000002', '{"user_id":"nobody listed","count":"four"}')
    + ev('message', '', 'an unnamed event');
  const p = await open({
    path: '?poll=0',
    setup: (context) => context.route('**/api/stream', (route) => route.fulfill({
      status: 200, contentType: 'text/event-stream', body,
    })),
  });
  await until(p.page, (want) => JSON.stringify(Array.from(
    document.querySelectorAll('#users .user-name'), (e) => e.textContent)) === want,
  JSON.stringify(['b', 'c', '\uFFFD', '\u{1F600}']), 5000, 'the events applied');
  assert.equal(await p.page.textContent('#count'), '4', 'the count of the last event applied');
  assert.equal(await p.page.isVisible('#more'), false, 'no "and N more"');
  assert.deepEqual(asked(p, 'online'), [], 'no polling');
  assert.deepEqual(p.errors, [], 'no script error');
  await p.context.close();
});

test('a reload keeps the name and goes back online', { timeout: 20000 }, async () => {
  const grace = pages[1];
  await grace.page.reload();
  assert.equal(await grace.page.inputValue('#name'), GRACE, 'name box after reload');
  await untilSelf(grace, GRACE, 5000, 'Grace back online after reload');
  await until(ada.page, shows, GRACE, POLL_MS + SLACK_MS + 1000, 'Ada sees Grace again');
});

test('closing a tab sends a leave: gone from the others after the grace', { timeout: 20000 }, async (t) => {
  const grace = pages[1];
  await until(ada.page, shows, GRACE, 5000, 'Ada sees Grace');
  const t0 = Date.now();
  await grace.page.close({ runBeforeUnload: true });

  // Her session ends (after the grace) well before the TTL could have
  // dropped it: only the beacon can do that (her last heartbeat is at
  // most TTL/2 old).
  await sessionsBelow(GRACE, 1, TTL_MS / 2 - SLACK_MS, 'the leave beacon');

  await until(ada.page, showsNot, GRACE,
    Math.max(1, GRACE_MS + POLL_MS + SLACK_MS - (Date.now() - t0)),
    'Grace gone from Ada\'s list');
  t.diagnostic(`gone from the other list ${Date.now() - t0} ms after the tab closed`);
  await grace.context.close();
});

// Sessions: each tab is one. The observer (Ada Lovelace's page, another
// context) must never lose TABS while one of her tabs goes away or reloads.

test('two tabs of one person: closing one never unlists her', { timeout: 60000 }, async () => {
  const context = await browser.newContext();
  const one = await openTab(context);
  await goOnline(one, TABS);
  const two = await openTab(context);     // the name is remembered: it joins by itself
  await untilSelf(two, TABS, 5000, 'the second tab online by itself');
  tabs = { context, one, two };

  assert.match(sessionOf(one), /^tab-[0-9a-f]{12}$/, 'the first tab names a session');
  assert.match(sessionOf(two), /^tab-[0-9a-f]{12}$/, 'the second tab names a session');
  assert.notEqual(sessionOf(one), sessionOf(two), 'a session each');
  assert.deepEqual(await apiUser(TABS), { online: true, sessions: 2 });
  await until(ada.page, shows, TABS, POLL_MS + SLACK_MS + 1000, 'the observer sees her');

  // right after the other tab's heartbeat: a leave that ended all of her
  // sessions would have her offline until its next one, TTL/2 away
  await nextHeartbeat(two);
  const watching = watch(ada, TABS);
  await one.page.close({ runBeforeUnload: true });
  // well before the TTL could have ended that session: the beacon did
  assert.deepEqual(await sessionsBelow(TABS, 2, TTL_MS / 2 - SLACK_MS, 'the closed tab\'s leave'),
    { online: true, sessions: 1 }, 'the leave ended the closed tab\'s session only');
  assertNeverGone(await watching, TABS);
  assert.deepEqual(await apiUser(TABS), { online: true, sessions: 1 });
});

test('two tabs of one person: reloading one never unlists her', { timeout: 60000 }, async () => {
  const { two } = tabs;
  const three = tabs.three = await openTab(tabs.context);
  await untilSelf(three, TABS, 5000, 'a new tab online by itself');
  assert.deepEqual(await apiUser(TABS), { online: true, sessions: 2 });

  await nextHeartbeat(two);
  await reloadWatched(three, 2, { online: true, sessions: 1 },
    'the leave ended the reloaded tab\'s session only');
});

test('one tab: a reload never unlists her (presence_leave_grace)', { timeout: 60000 }, async () => {
  try {
    await reloadAlone(tabs);
  } finally {
    // whatever happened, no Ada on the lists of the tests after this one:
    // a leave without session_id ends all her sessions at once
    await tabs.context.close();
    await fetch(`${BASE}api/leave`, { method: 'POST', body: JSON.stringify({ user_id: TABS }),
      headers: { 'Content-Type': 'application/json' } });
  }
});

async function reloadAlone({ two, three }) {
  await three.page.close({ runBeforeUnload: true });
  await sessionsBelow(TABS, 2, TTL_MS / 2 - SLACK_MS, 'the closed tab\'s leave');

  // her one session is ending, and she is online till the grace is over:
  // without it she would be gone now and back with the next heartbeat
  await reloadWatched(two, 1, { online: true, sessions: 0 },
    'the leave arrived, and she is still online');

  await two.page.getByRole('button', { name: 'Go offline' }).click();
  await until(ada.page, showsNot, TABS, TTL_MS / 2 + GRACE_MS + POLL_MS + SLACK_MS,
    'gone from the observer\'s list after "Go offline" and the grace');
}

test('a tab killed without a leave drops out within the TTL', { timeout: 30000 }, async () => {
  const charles = await open({ noLeave: true });
  await goOnline(charles, CHARLES);
  await until(ada.page, shows, CHARLES, POLL_MS + SLACK_MS + 1000, 'Ada sees Charles');

  const t0 = Date.now();
  await charles.context.close();
  assert.equal(await apiOnline(CHARLES), true, 'no leave was sent, still online');
  await until(ada.page, showsNot, CHARLES, TTL_MS + POLL_MS + SLACK_MS,
    'Charles dropped after the TTL');
  const took = Date.now() - t0;
  assert.ok(took >= TTL_MS / 2 - SLACK_MS, `dropped after ${took} ms: too early for a TTL`);
});

test('a hostile name shows as text, never as HTML', { timeout: 20000 }, async () => {
  const mallory = await open();
  await goOnline(mallory, HOSTILE);
  await until(ada.page, shows, HOSTILE, POLL_MS + SLACK_MS + 1000, 'Ada sees the name literally');
  for (const p of [ada, mallory]) {
    assert.equal(await p.page.locator('img').count(), 0, 'no img element in the page');
    assert.deepEqual(p.dialogs, [], 'no dialog opened');
  }
  assert.equal(await mallory.page.textContent('#me-text'), `You're online as ${HOSTILE}`);
  await shot(mallory, 'hostile-name.png');
});

test('"Go offline" ends the tab\'s session and stays offline across a reload', { timeout: 20000 }, async () => {
  const mallory = pages[pages.length - 1];
  const left = mallory.page.waitForResponse((r) => r.url().endsWith('/api/leave'),
    { timeout: TTL_MS / 2 + SLACK_MS });
  await mallory.page.getByRole('button', { name: 'Go offline' }).click();
  const r = await left;
  assert.equal(JSON.parse(r.request().postData()).session_id, sessionOf(mallory),
    'the leave names the tab\'s session');
  assert.equal((await r.json()).sessions, 0, 'the session ends');
  await until(ada.page, showsNot, HOSTILE, GRACE_MS + POLL_MS + SLACK_MS,
    'gone from Ada\'s list after the grace');
  assert.equal(await apiOnline(HOSTILE), false);
  assert.equal(await mallory.page.getAttribute('#me', 'data-state'), 'offline');

  await mallory.page.reload();
  assert.equal(await mallory.page.inputValue('#name'), HOSTILE, 'name kept');
  assert.equal(await mallory.page.getByRole('button', { name: 'Go online' }).isVisible(), true);
  // the list has come (the stream's snapshot): a rejoin would have begun
  await feedIs(mallory, 'stream', STREAM_WAIT_MS + SLACK_MS, 'the reloaded tab on the stream');
  assert.equal(await mallory.page.getAttribute('#me', 'data-state'), 'offline',
    'did not rejoin after going offline');
});

test('a name the server refuses shows its message by the name box', { timeout: 20000 }, async () => {
  const mallory = pages[pages.length - 1];
  const { page } = mallory;
  const reply = page.waitForResponse((r) => r.url().includes('/api/heartbeat'),
    { timeout: 5000 });
  await page.getByLabel('Your name').fill('x'.repeat(129));   // over 128 bytes
  await page.getByRole('button', { name: 'Go online' }).click();
  const r = await reply;
  assert.equal(r.status(), 400);
  const body = await r.json();
  assert.equal(body.error, 'invalid_user_id');

  await until(page, () => !document.getElementById('name-error').hidden, null, 2000,
    'name error shown');
  assert.equal(await page.textContent('#name-error'), body.message);
  assert.equal(await page.getAttribute('#name', 'aria-invalid'), 'true');
  assert.equal(await page.getAttribute('#me', 'data-state'), 'offline');
  await mallory.context.close();
});

test('a malformed listing neither throws nor stops the polling', { timeout: 30000 }, async () => {
  // What a broken proxy or a half-written reply could hand the page, each
  // a 200 answer; the last is served until the page has shown it.
  const bodies = [
    'null',
    'this is not JSON',
    '{"users":"Ada Lovelace","count":"2","ttl":"soon"}',
    '{"users":[1,null,{},["x"],"Alan Turing","Alan Turing"],"count":1e999,"ttl":-1,"room":5}',
  ];
  const p = await open({ path: 'poll/' });    // where the page polls
  const { page } = p;
  await feedIs(p, 'poll', SLACK_MS + 2000, 'the page polls');
  const ttl = await page.textContent('#ttl');
  let served = 0;
  let release = false;
  await page.route('**/api/online', (route) => {
    if (release) {
      return route.fallback();
    }
    const body = bodies[Math.min(served++, bodies.length - 1)];
    return route.fulfill({ status: 200, contentType: 'application/json', body });
  });

  // every poll goes on after a bad one, so the last body shows up, as well
  // as it can: the strings once each, the count and TTL left sane
  await until(page, () => {
    const names = Array.from(document.querySelectorAll('#users .user-name'),
      (e) => e.textContent);
    return names.length === 1 && names[0] === 'Alan Turing'
      && document.getElementById('count').textContent === '1';
  }, null, bodies.length * POLL_MS + 5000, 'the last malformed listing shown');
  assert.ok(served >= bodies.length, `all ${bodies.length} bodies served (${served})`);
  assert.equal(await page.textContent('#ttl'), ttl, 'TTL kept');
  assert.equal(await page.textContent('#room'), 'global', 'room kept');
  assert.equal(await page.isVisible('#more'), false, 'no "and N more"');
  assert.equal(await page.isVisible('#banner'), false, 'a 200 is no outage');
  assert.deepEqual(p.errors, [], 'no script error');

  release = true;
  await until(page, shows, ADA, POLL_MS + SLACK_MS + 1000, 'the real listing after the bad ones');
  assert.deepEqual(p.errors, [], 'no script error');
  await p.context.close();
});

test('Redis down shows a banner; Redis back clears it without a reload', { timeout: 60000 }, async (t) => {
  const stop = process.env.PRESENCE_REDIS_STOP;
  const start = process.env.PRESENCE_REDIS_START;
  if (!stop || !start) {
    t.skip('PRESENCE_REDIS_STOP/START not set');
    return;
  }
  const { page } = ada;
  assert.equal(await page.isVisible('#banner'), false, 'no banner to begin with');
  // A tab that is not online (no heartbeats) and does not poll: only the
  // stream's `unavailable` can put its banner up, and only the snapshot
  // after it take it down.
  const watcher = await open({ path: '?poll=0' });
  await feedIs(watcher, 'stream', 5000, 'the watcher on the stream');
  assert.equal(await watcher.page.isVisible('#banner'), false, 'no banner on the watcher');

  execSync(stop, { stdio: ['ignore', 2, 2] });
  await until(watcher.page, () => !document.getElementById('banner').hidden, null,
    5000, 'the stream\'s `unavailable` shows the watcher the banner');
  assert.match(await watcher.page.textContent('#banner-detail'), /presence store/,
    'the watcher\'s banner says what is wrong');
  await until(page, () => !document.getElementById('banner').hidden, null,
    POLL_MS + 5000, 'banner shown while Redis is down');
  const detail = await page.textContent('#banner-detail');
  assert.match(detail, /presence store/, 'the banner says what is wrong');
  assert.deepEqual(await listed(page), [ADA], 'the last list stays on screen');
  await until(page, () => document.getElementById('me').dataset.state === 'reconnecting', null,
    TTL_MS / 2 + SLACK_MS, 'own status says reconnecting');
  await shot(ada, 'redis-down.png');

  execSync(start, { stdio: ['ignore', 2, 2] });
  await until(watcher.page, () => document.getElementById('banner').hidden, null,
    10000, 'the watcher\'s banner gone with the snapshot once Redis is back');
  assert.deepEqual(asked(watcher, 'heartbeat'), [], 'the watcher sent no heartbeat');
  assert.deepEqual(asked(watcher, 'online'), [], 'the watcher never polled');
  assert.deepEqual(answered(watcher, 'stream'), [200], 'one stream all along');
  await watcher.context.close();
  await until(page, () => document.getElementById('banner').hidden, null,
    POLL_MS + 10000, 'banner gone once Redis is back');
  // Redis came back empty; Ada's next heartbeat puts her back
  await until(page, shows, ADA, TTL_MS / 2 + POLL_MS + SLACK_MS + 2000,
    'Ada listed again after Redis came back');
  assert.equal(await page.getAttribute('#me', 'data-state'), 'online');
  await shot(ada, 'redis-back.png');
});

test('no script errors on any page', () => {
  for (const p of pages) {
    assert.deepEqual(p.errors, []);
  }
});
