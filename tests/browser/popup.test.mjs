// Browser popup test: a real page (the demo app) opens a real popup to the
// broker, the user signs in and consents at the real authorization server
// (scripts/oidc-provider.mjs), and the broker's callback page posts the
// result to the opener and closes itself. The page then tests and
// disconnects the connection through the demo app's backend, and falls back to
// the broker's /oauth/status when the popup closes without a result.
//
// Run: DEMO_URL=http://localhost:9200/ BROKER_URL=http://localhost:9000 \
//      BROKER_API_KEY=... node --test tests/browser/
// Optional: CHROMIUM_PATH (default /usr/bin/chromium), POPUP_TEST_TIMEOUT_MS
// (default 60000 per test), BROWSER_ARTIFACTS_DIR (screenshots on failure).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { test } from './emulator.mjs';

import { chromium } from 'playwright-core';

const DEMO_URL = process.env.DEMO_URL || 'http://localhost:9200/';
const BROKER_URL = (process.env.BROKER_URL || 'http://localhost:9000').replace(/\/+$/, '');
const BROKER_API_KEY = process.env.BROKER_API_KEY || '';
const TEST_TIMEOUT = Number(process.env.POPUP_TEST_TIMEOUT_MS) || 60_000;
// Each step may wait most of the budget (the broker's first request may compile).
const STEP_TIMEOUT = Math.max(5_000, TEST_TIMEOUT - 5_000);
const ARTIFACTS_DIR = process.env.BROWSER_ARTIFACTS_DIR || join(tmpdir(), 'oauth-broker-browser-test');

// Query parameters that must never appear in any URL the popup loads.
const SECRET_PARAMS = ['access_token', 'refresh_token', 'id_token', 'code_verifier', 'client_secret'];

let browser;

before(async () => {
  assert.ok(BROKER_API_KEY, 'BROKER_API_KEY must be set (the tenant key used to read the connection)');
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: 30_000,
  });
});

after(async () => {
  await browser?.close();
});

async function saveScreenshots(name, pages) {
  try {
    mkdirSync(ARTIFACTS_DIR, { recursive: true });
    for (const [label, p] of Object.entries(pages)) {
      if (p && !p.isClosed()) {
        const file = join(ARTIFACTS_DIR, `${name}-${label}.png`);
        await p.screenshot({ path: file, timeout: 5_000 });
        console.error(`screenshot: ${file}`);
      }
    }
  } catch {
    // diagnostics only
  }
}

// Opens the demo page, clicks Connect and returns the popup, which has reached
// the authorization server's login form. Records every URL the popup loads.
async function startConnect(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  await page.goto(DEMO_URL, { waitUntil: 'load' });
  const connect = page.locator('#connect');
  await connect.waitFor({ state: 'visible' });
  // The button is enabled once the page has loaded its configuration.
  await page.locator('#connect:not([disabled])').waitFor();

  const popupPromise = page.waitForEvent('popup', { timeout: STEP_TIMEOUT });
  await connect.click();
  const popup = await popupPromise;
  popup.setDefaultTimeout(STEP_TIMEOUT);

  const urls = [];
  popup.on('request', (request) => urls.push(request.url()));
  popup.on('framenavigated', (frame) => urls.push(frame.url()));

  try {
    await popup.locator('#login').waitFor({ state: 'visible' });
  } catch (err) {
    // Say where the popup stopped: its URLs (no secrets: see
    // assertNoSecretsInUrls) and what it shows.
    await saveScreenshots('start', { page, popup });
    const shown = popup.isClosed() ? '(closed)' : ((await popup.locator('body').textContent().catch(() => '')) ?? '').slice(0, 500);
    const where = urls.map((u) => u.split('?')[0]);
    throw new Error(`the popup did not reach the login form: ${err.message}\nurls: ${where.join(' ')}\nshows: ${shown}`);
  }
  return { page, popup, urls };
}

function brokerGet(path) {
  return fetch(`${BROKER_URL}${path}`, {
    headers: { Authorization: `Bearer ${BROKER_API_KEY}`, Accept: 'application/json' },
    signal: AbortSignal.timeout(STEP_TIMEOUT),
  });
}

async function textOf(page, selector) {
  return ((await page.locator(selector).textContent()) ?? '').trim();
}

async function login(popup, username) {
  await popup.fill('#login', username);
  await popup.fill('#password', 'demo');
  await popup.click('#submit');
  await popup.locator('#confirm').waitFor({ state: 'visible' });
}

// Clicks a button whose form submission ends with the popup closing itself;
// a click racing the close must not fail the test.
async function clickFinal(popup, selector) {
  try {
    await popup.click(selector);
  } catch (err) {
    if (!popup.isClosed() && !/closed/i.test(String(err?.message))) throw err;
  }
}

// Runs `wait`; when it fails, says where the popup is and what it shows.
async function explainOnTimeout(popup, wait) {
  try {
    return await wait();
  } catch (err) {
    const where = popup.isClosed() ? '(closed)' : popup.url().split('?')[0];
    const shown = popup.isClosed() ? '' : ((await popup.locator('body').textContent().catch(() => '')) ?? '').slice(0, 500);
    throw new Error(`${err.message}\npopup at: ${where}\nshows: ${shown}`);
  }
}

function assertNoSecretsInUrls(urls) {
  for (const raw of urls) {
    let url;
    try {
      url = new URL(raw);
    } catch {
      continue;
    }
    const params = new URLSearchParams(url.search + '&' + url.hash.replace(/^#/, ''));
    for (const name of SECRET_PARAMS) {
      assert.ok(!params.has(name), `a popup URL carried ${name}`);
    }
  }
}

test('popup connects the demo account and posts the result to the opener', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  let page;
  let popup;
  try {
    let urls;
    ({ page, popup, urls } = await startConnect(context));
    await login(popup, 'alice');

    const closed = popup.waitForEvent('close', { timeout: STEP_TIMEOUT });
    await clickFinal(popup, '#confirm');

    const result = page.locator('#result', { hasText: /Connected: conn_/ });
    await result.waitFor({ state: 'visible' });
    const text = (await page.locator('#result').textContent()) ?? '';
    const match = /Connected: (conn_[^\s]+)/.exec(text);
    assert.ok(match, `unexpected result text: ${text}`);
    const connectionId = match[1];

    await closed;
    assert.ok(popup.isClosed(), 'the callback page should close the popup');
    assertNoSecretsInUrls(urls);

    const path = `/connections/${encodeURIComponent(connectionId)}`;
    const res = await brokerGet(path);
    assert.equal(res.status, 200, `GET /connections/${connectionId} -> ${res.status}`);
    const connection = await res.json();
    assert.equal(connection.status, 'active');
    assert.equal(connection.provider_account_id, 'alice');
    // The record the backend reads holds no token material.
    const serialized = JSON.stringify(connection);
    for (const name of SECRET_PARAMS) {
      assert.ok(!serialized.includes(`"${name}"`), `connection record exposes ${name}`);
    }

    // Test the connection through the demo app's backend.
    await page.locator('#connection').waitFor({ state: 'visible' });
    await page.click('#test');
    await page.locator('#test-result', { hasText: /Test: (ok|failed)/ }).waitFor({ state: 'visible' });
    assert.match(await textOf(page, '#test-result'), /^Test: ok \(HTTP 200, \d+ ms\)$/);

    // Disconnect: both tokens revoked at the provider, the buttons go away.
    await page.click('#disconnect');
    await page.locator('#disconnect-result', { hasText: /Disconnect(ed|\s+failed)/ }).waitFor({ state: 'visible' });
    assert.equal(
      await textOf(page, '#disconnect-result'),
      'Disconnected (refresh token revoked: yes, access token revoked: yes)',
    );
    await page.locator('#actions').waitFor({ state: 'hidden' });
    if (process.env.DEMO_SCREENSHOT) await page.screenshot({ path: process.env.DEMO_SCREENSHOT });

    const gone = await brokerGet(path);
    assert.equal(gone.status, 404, `GET ${path} after disconnect -> ${gone.status}`);
  } catch (err) {
    await saveScreenshots('connect', { page, popup });
    throw err;
  } finally {
    await context.close();
  }
});

test('denying consent shows the code with a retry, and closing reports access_denied to the opener', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  let page;
  let popup;
  try {
    let urls;
    ({ page, popup, urls } = await startConnect(context));
    await login(popup, 'bob');

    await popup.click('#deny');
    // The hosted Connect page shows the declined flow with a retry; closing
    // it reports the code to the app.
    await explainOnTimeout(popup, () => popup.locator('#error[data-code="access_denied"]').waitFor({ state: 'visible' }));
    assert.match((await popup.locator('#error').textContent()) ?? '', /You declined access/);
    assert.ok(await popup.locator('#submit', { hasText: 'Try again' }).isVisible(), 'a retry is offered');
    await clickFinal(popup, '#close');

    await page.locator('#result', { hasText: 'Error: access_denied' }).waitFor({ state: 'visible' });
    const text = ((await page.locator('#result').textContent()) ?? '').trim();
    assert.equal(text, 'Error: access_denied');
    assertNoSecretsInUrls(urls);
  } catch (err) {
    await saveScreenshots('deny', { page, popup });
    throw err;
  } finally {
    await context.close();
  }
});

// A provider whose pages send `Cross-Origin-Opener-Policy: same-origin`
// (Django's default; scripts/oidc-provider.mjs sends it on the consent page
// of coop-* accounts) cuts the popup off from the app: `window.opener` is
// null when the broker's result page loads, and the app's window reads the
// popup as closed while the user is still at the provider.
for (const [what, account, act, outcome] of [
  ['connects', 'coop-alice', '#confirm', /^Connected: conn_/],
  ['is denied', 'coop-bob', '#deny', /^Error: access_denied$/],
]) {
  test(`a provider page that cuts the popup off from its opener: a flow that ${what} shows its real outcome with a Close button, and the app gets it from /oauth/status`, { timeout: TEST_TIMEOUT }, async () => {
    const context = await browser.newContext();
    let page;
    let popup;
    try {
      ({ page, popup } = await startConnect(context));
      await login(popup, account);
      await popup.click(act);
      await explainOnTimeout(popup, () => popup.locator('#close').waitFor({ state: 'visible' }));
      const shown = await textOf(popup, 'h1');
      if (act === '#confirm') {
        assert.equal(shown, 'Connected');
      } else {
        assert.equal(shown, 'Connection failed');
        assert.match(await textOf(popup, 'body'), /access_denied/);
        assert.doesNotMatch(await textOf(popup, 'body'), /unbound_link|can only be started/);
      }
      assert.equal(await popup.evaluate(() => window.opener), null, 'the provider cut the opener');
      // The app learns the outcome through the broker's /oauth/status.
      await page.locator('#result', { hasText: /Connected|Error|Cancelled/ }).waitFor({ state: 'visible' });
      assert.match(await textOf(page, '#result'), outcome);
      await clickFinal(popup, '#close');
    } catch (err) {
      await saveScreenshots(`coop-${account}`, { page, popup });
      throw err;
    } finally {
      await context.close();
    }
  });
}

test('closing the popup before finishing reports Cancelled', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  let page;
  let popup;
  try {
    ({ page, popup } = await startConnect(context));
    // The user gives up on the login page: no result is posted, so the page
    // asks the broker's /oauth/status, which says a flow is still at the
    // provider (a popup the provider cut off looks the same from here): the
    // page offers Cancel.
    await popup.close();
    await page.locator('#cancel').waitFor({ state: 'visible' });
    await page.click('#cancel');

    await page.locator('#result', { hasText: /Cancelled|Error:/ }).waitFor({ state: 'visible' });
    assert.equal(await textOf(page, '#result'), 'Cancelled');
    assert.ok(await page.locator('#connect:not([disabled])').isVisible(), 'Connect is enabled again');
    assert.ok(await page.locator('#actions').isHidden(), 'no connection actions without a connection');
  } catch (err) {
    await saveScreenshots('cancel', { page, popup });
    throw err;
  } finally {
    await context.close();
  }
});

// The attack: someone mints a session for their own end user through the app
// and gets the victim to open it. Here the broker API mints it directly (the
// tenant key stands in for "through the app"); the victim's browser never
// has the app's page as the popup's opener.
async function attackersSession() {
  const config = await (await fetch(new URL('api/config', DEMO_URL), { signal: AbortSignal.timeout(STEP_TIMEOUT) })).json();
  const res = await fetch(`${BROKER_URL}/connect-sessions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${BROKER_API_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ end_user_id: 'mallory', integrations: [config.integration], origin: config.app_origin }),
    signal: AbortSignal.timeout(STEP_TIMEOUT),
  });
  assert.equal(res.status, 201, `POST /connect-sessions -> ${res.status}`);
  return { token: (await res.json()).token, integration: config.integration };
}

async function assertAttachedNothing(token) {
  const status = await (await fetch(`${BROKER_URL}/oauth/status`, { method: 'POST', body: new URLSearchParams({ session: token }) })).json();
  assert.equal(status.status, 'pending', 'the session started nothing');
  const list = await (await brokerGet('/connections?end_user_id=mallory')).json();
  assert.equal(list.connections.length, 0, "nothing is attached to the attacker's end user");
}

test('a connect link opened outside the app is refused and attaches nothing', { timeout: TEST_TIMEOUT }, async () => {
  const { token, integration } = await attackersSession();
  const context = await browser.newContext();
  const urls = [];
  context.on('request', (r) => urls.push(r.url()));
  let page;
  try {
    // 1. The link itself, opened from an email or a chat.
    page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT);
    const link = await page.goto(`${BROKER_URL}/oauth/${integration}/authorize?session=${encodeURIComponent(token)}`);
    assert.equal(link.status(), 403);
    assert.match(await textOf(page, 'body'), /can only be started from the app/);
    // 2. The broker's connect page opened without the app as its opener.
    await page.goto(`${BROKER_URL}/oauth/${integration}/connect`);
    await page.locator('#title', { hasText: 'Cannot connect here' }).waitFor();
    // 3. Another site opens the connect page and hands it the session.
    const evil = 'http://attacker.test';
    await context.route(`${evil}/**`, (route) =>
      route.fulfill({
        contentType: 'text/html',
        body: `<!doctype html><script>
          const w = window.open(${JSON.stringify(`${BROKER_URL}/oauth/${integration}/connect`)}, 'x');
          addEventListener('message', (e) => {
            if (e.data && e.data.type === 'oauth-broker:ready')
              w.postMessage({ type: 'oauth-broker:session', token: ${JSON.stringify(token)} }, ${JSON.stringify(new URL(BROKER_URL).origin)});
          });
        </script>`,
      }),
    );
    const popupPromise = page.waitForEvent('popup');
    await page.goto(`${evil}/`);
    const popup = await popupPromise;
    popup.setDefaultTimeout(STEP_TIMEOUT);
    await popup.locator('h1', { hasText: 'Connection failed' }).waitFor();
    assert.match(await textOf(popup, 'body'), /origin_mismatch/);
    assert.ok(!urls.some((u) => u.includes('/auth?') || u.includes('/interaction/')), 'the provider was never reached');
    await assertAttachedNothing(token);
  } catch (err) {
    await saveScreenshots('hijack', { page });
    throw err;
  } finally {
    await context.close();
  }
});
