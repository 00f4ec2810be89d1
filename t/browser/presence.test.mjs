// The page in a real browser: Debian's chromium driven by playwright-core.
//
// Run by t/browser.t, which starts redis-server and nginx and passes:
//   PRESENCE_BASE_URL    where nginx serves the page, e.g. http://127.0.0.1:PORT/
//   PRESENCE_TTL         the presence_ttl nginx runs with, in seconds
//   PRESENCE_REDIS_STOP  shell command that stops Redis (the banner check)
//   PRESENCE_REDIS_START shell command that starts it again
//   PRESENCE_SHOTS       folder for the screenshots
//   CHROMIUM             the browser (default /usr/bin/chromium)
//
//   node --test-reporter=tap t/browser/presence.test.mjs
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
const POLL_MS = 2000;              // the page's list refresh (html/app.js)
const SLACK_MS = 600;              // one request's round trip and scheduling
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

let browser;
const pages = [];              // every page opened, for the error check at the end
let ada;                       // stays open for the whole run: the observer

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
  const page = await context.newPage();
  const p = { context, page, dialogs: [], errors: [] };
  page.on('dialog', (d) => {
    p.dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => p.errors.push(String(e)));
  pages.push(p);
  await page.goto(BASE);
  return p;
}

async function goOnline(p, name) {
  await p.page.getByLabel('Your name').fill(name);
  await p.page.getByRole('button', { name: 'Go online' }).click();
  await until(p.page, (n) => {
    const me = document.querySelector('#users .user.is-self .user-name');
    return me !== null && me.textContent === n;
  }, name, 5000, `${name} listed as themself`);
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

// What the API itself says about one user, straight from node.
async function apiOnline(name) {
  const r = await fetch(`${BASE}api/online?user_id=${encodeURIComponent(name)}`);
  assert.equal(r.status, 200, `GET api/online?user_id=${name}`);
  return (await r.json()).online;
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

test('a poll answered 304 leaves the list alone', { timeout: 20000 }, async () => {
  const { page } = ada;
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
});

test('a reload keeps the name and goes back online', { timeout: 20000 }, async () => {
  const grace = pages[1];
  await grace.page.reload();
  assert.equal(await grace.page.inputValue('#name'), GRACE, 'name box after reload');
  await until(grace.page, (n) => {
    const me = document.querySelector('#users .user.is-self .user-name');
    return me !== null && me.textContent === n;
  }, GRACE, 5000, 'Grace back online after reload');
  await until(ada.page, shows, GRACE, POLL_MS + SLACK_MS + 1000, 'Ada sees Grace again');
});

test('closing a tab sends a leave: gone from the others within 2 s', { timeout: 20000 }, async (t) => {
  const grace = pages[1];
  await until(ada.page, shows, GRACE, 5000, 'Ada sees Grace');
  const t0 = Date.now();
  await grace.page.close({ runBeforeUnload: true });

  // Gone from the API well before the TTL could have dropped her: only the
  // beacon can do that (her last heartbeat is at most TTL/2 old).
  let gone = false;
  while (!gone && Date.now() - t0 < TTL_MS / 2 - SLACK_MS) {
    gone = !(await apiOnline(GRACE));
    if (!gone) {
      await delay(25);
    }
  }
  assert.ok(gone, 'the leave beacon reached the server');

  await until(ada.page, showsNot, GRACE, Math.max(1, POLL_MS + SLACK_MS - (Date.now() - t0)),
    'Grace gone from Ada\'s list');
  t.diagnostic(`gone from the other list ${Date.now() - t0} ms after the tab closed`);
  await grace.context.close();
});

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

test('"Go offline" leaves at once and stays offline across a reload', { timeout: 20000 }, async () => {
  const mallory = pages[pages.length - 1];
  const t0 = Date.now();
  await mallory.page.getByRole('button', { name: 'Go offline' }).click();
  await until(ada.page, showsNot, HOSTILE, POLL_MS + SLACK_MS, 'gone from Ada\'s list');
  assert.equal(await apiOnline(HOSTILE), false);
  assert.ok(Date.now() - t0 < TTL_MS, 'left before the TTL');
  assert.equal(await mallory.page.getAttribute('#me', 'data-state'), 'offline');

  await mallory.page.reload();
  assert.equal(await mallory.page.inputValue('#name'), HOSTILE, 'name kept');
  assert.equal(await mallory.page.getByRole('button', { name: 'Go online' }).isVisible(), true);
  await mallory.page.waitForResponse((r) => r.url().includes('/api/online'),
    { timeout: POLL_MS + SLACK_MS });
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
  const p = await open();
  const { page } = p;
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

  execSync(stop, { stdio: ['ignore', 2, 2] });
  await until(page, () => !document.getElementById('banner').hidden, null,
    POLL_MS + 5000, 'banner shown while Redis is down');
  const detail = await page.textContent('#banner-detail');
  assert.match(detail, /presence store/, 'the banner says what is wrong');
  assert.deepEqual(await listed(page), [ADA], 'the last list stays on screen');
  await until(page, () => document.getElementById('me').dataset.state === 'reconnecting', null,
    TTL_MS / 2 + SLACK_MS, 'own status says reconnecting');
  await shot(ada, 'redis-down.png');

  execSync(start, { stdio: ['ignore', 2, 2] });
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
