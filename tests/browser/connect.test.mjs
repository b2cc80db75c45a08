// Browser tests of the hosted Connect page and the browser SDK, in headless
// Chromium against the local stack: the demo app's page (scripts/demo, which
// uses sdk/index.js) opens the broker's /connect page, which lists the
// session's integrations (demo, shops: the templated demo-shop provider,
// keys: the demo-api-key provider whose stand-in service is the demo app).
//
// Run: DEMO_URL=http://localhost:9200/ BROKER_URL=http://localhost:9000 \
//      BROKER_API_KEY=... OIDC_ISSUER=http://localhost:9100 node --test tests/browser/

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { test } from './emulator.mjs';

import { chromium } from 'playwright-core';
import { generateKeyPairSync } from 'node:crypto';

const DEMO_URL = process.env.DEMO_URL || 'http://localhost:9200/';
const BROKER_URL = (process.env.BROKER_URL || 'http://localhost:9000').replace(/\/+$/, '');
const BROKER_ORIGIN = new URL(BROKER_URL).origin;
const JWT_SERVER_URL = (process.env.JWT_SERVER_URL || 'http://127.0.0.1:9150').replace(/\/+$/, '');
const OIDC_ISSUER = (process.env.OIDC_ISSUER || 'http://localhost:9100').replace(/\/+$/, '');
const BROKER_API_KEY = process.env.BROKER_API_KEY || '';
const TEST_TIMEOUT = Number(process.env.POPUP_TEST_TIMEOUT_MS) || 60_000;
const STEP_TIMEOUT = Math.max(5_000, TEST_TIMEOUT - 5_000);
const EVIL = 'http://attacker.test';

let browser;

before(async () => {
  assert.ok(BROKER_API_KEY, 'BROKER_API_KEY must be set');
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
});

after(async () => {
  await browser?.close();
});

function brokerApi(path, method = 'GET') {
  return fetch(`${BROKER_URL}${path}`, {
    method,
    headers: { Authorization: `Bearer ${BROKER_API_KEY}`, Accept: 'application/json' },
    signal: AbortSignal.timeout(STEP_TIMEOUT),
  });
}

async function connectionsOf(integration) {
  const res = await brokerApi(`/connections?end_user_id=user-123&integration_id=${integration}`);
  assert.equal(res.status, 200);
  return (await res.json()).connections;
}

async function demoPage(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  await page.goto(DEMO_URL, { waitUntil: 'load' });
  await page.locator('#connect-any:not([disabled])').waitFor();
  return page;
}

// Clicks `button` on the demo page and returns the broker's popup.
async function openPopup(page, button) {
  const popupPromise = page.waitForEvent('popup', { timeout: STEP_TIMEOUT });
  await page.click(button);
  const popup = await popupPromise;
  popup.setDefaultTimeout(STEP_TIMEOUT);
  return popup;
}

async function openHosted(context) {
  const page = await demoPage(context);
  const popup = await openPopup(page, '#connect-any');
  await popup.locator('#integrations li').first().waitFor();
  return { page, popup };
}

async function signIn(popup, login) {
  await popup.locator('#login').waitFor({ state: 'visible' });
  await popup.fill('#login', login);
  await popup.fill('#password', 'demo');
  await popup.click('#submit');
  await popup.locator('#confirm').waitFor({ state: 'visible' });
}

async function clickFinal(popup, selector) {
  try {
    await popup.click(selector);
  } catch (err) {
    if (!popup.isClosed() && !/closed/i.test(String(err?.message))) throw err;
  }
}

async function connectedId(page) {
  const result = page.locator('#result', { hasText: /Connected: conn_|Error:|Cancelled/ });
  await result.waitFor({ state: 'visible' });
  const text = ((await result.textContent()) ?? '').trim();
  const m = /^Connected: (conn_[a-z0-9]+)$/.exec(text);
  assert.ok(m, `unexpected result: ${text}`);
  return m[1];
}

async function names(popup) {
  return popup.locator('#integrations .name').allTextContents();
}

test('the Connect page lists the session\'s integrations and filters them by search', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  try {
    const { popup } = await openHosted(context);
    const csp = (await popup.evaluate(() => document.querySelector('script[nonce]') !== null));
    assert.ok(csp, 'the page\'s script runs under its nonce');
    assert.deepEqual(await names(popup), [
      'Local demo (oidc-provider)',
      'Local API key service (development)',
      'Local basic-auth service (development)',
      'Local client credentials (oidc-provider)',
      'Local service account (Authlib)',
      'Local shops (development)',
    ]);
    await popup.fill('#search', 'shop');
    assert.deepEqual(await names(popup), ['Local shops (development)']);
    await popup.fill('#search', 'e-commerce');
    assert.deepEqual(await names(popup), ['Local shops (development)'], 'categories are searched');
    await popup.fill('#search', 'zzz');
    await popup.locator('#empty').waitFor({ state: 'visible' });
    assert.deepEqual(await names(popup), []);
    await popup.fill('#search', '');
    assert.equal((await names(popup)).length, 6);
    // Keyboard only: from the search box to the first integration, Enter opens it.
    await popup.focus('#search');
    await popup.keyboard.press('Tab');
    await popup.keyboard.press('Enter');
    await popup.locator('h1', { hasText: 'Local demo (oidc-provider)' }).waitFor();
  } finally {
    await context.close();
  }
});

test('a templated provider connects with the value the end user typed, and a bad value sends nothing', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  const requests = [];
  context.on('request', (r) => requests.push(r.url()));
  let page;
  try {
    let popup;
    ({ page, popup } = await openHosted(context));
    await popup.click('button[data-integration="shops"]');
    await popup.locator('#field-shop').waitFor();
    for (const bad of ['Not A Shop', 'acme.evil.example', 'a/../b']) {
      await popup.fill('#field-shop', bad);
      await popup.click('#submit');
      await popup.locator('#field-shop-error').waitFor({ state: 'visible' });
      assert.equal(await popup.getAttribute('#field-shop', 'aria-invalid'), 'true');
    }
    assert.ok(!requests.some((u) => u.includes('/oauth/shops/authorize') || u.includes('/shops/')),
      `no request left the page for a bad value: ${requests.filter((u) => u.includes('shop'))}`);

    const shop = `s${Date.now().toString(36)}`;
    await popup.fill('#field-shop', shop);
    const closed = popup.waitForEvent('close', { timeout: STEP_TIMEOUT });
    await popup.click('#submit');
    await signIn(popup, 'dora');
    await clickFinal(popup, '#confirm');
    const id = await connectedId(page);
    await closed;
    assert.ok(requests.some((u) => u.startsWith(`${OIDC_ISSUER}/shops/${shop}/auth`)), 'the shop\'s own issuer');
    const res = await brokerApi(`/connections/${id}`);
    const conn = await res.json();
    assert.equal(conn.status, 'active');
    assert.deepEqual(conn.connection_config, { shop });
    assert.equal(conn.integration_id, 'shops');
  } finally {
    await context.close();
  }
});

test('an API-key connection is made from the page, and a rejected key shows its error and stores nothing', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  try {
    const { page, popup } = await openHosted(context);
    for (const c of await connectionsOf('keys')) await brokerApi(`/connections/${c.id}`, 'DELETE');
    await popup.click('button[data-integration="keys"]');
    await popup.fill('#api-key', 'wrong-key');
    await popup.click('#submit');
    const error = popup.locator('#error[data-code="api_key_rejected"]');
    await error.waitFor({ state: 'visible' });
    assert.match((await error.textContent()) ?? '', /did not accept this API key/);
    assert.equal((await connectionsOf('keys')).length, 0, 'a rejected key stores nothing');
    // The retry, with the same session.
    await popup.fill('#api-key', 'demo-key-123');
    const closed = popup.waitForEvent('close', { timeout: STEP_TIMEOUT });
    await popup.click('#submit');
    const id = await connectedId(page);
    await closed;
    const stored = await connectionsOf('keys');
    assert.deepEqual(stored.map((c) => c.id), [id]);
    assert.equal(stored[0].last_test.ok, true, 'verified with the provider before it was stored');
    await brokerApi(`/connections/${id}`, 'DELETE');
  } finally {
    await context.close();
  }
});

test('a basic connection is made from a form of the provider\'s own labels, and a rejected pair shows its error and stores nothing', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  try {
    const { page, popup } = await openHosted(context);
    for (const c of await connectionsOf('logins')) await brokerApi(`/connections/${c.id}`, 'DELETE');
    await popup.click('button[data-integration="logins"]');
    // The form is the provider's: its labels, the secret half masked.
    assert.equal(await popup.locator('label[for="username"]').textContent(), 'Account');
    assert.equal(await popup.locator('label[for="password"]').textContent(), 'Secret');
    assert.equal(await popup.getAttribute('#username', 'type'), 'text');
    assert.equal(await popup.getAttribute('#password', 'type'), 'password');
    await popup.fill('#username', 'demo-user');
    await popup.fill('#password', 'wrong-pass');
    await popup.click('#submit');
    const error = popup.locator('#error[data-code="credentials_rejected"]');
    await error.waitFor({ state: 'visible' });
    assert.match((await error.textContent()) ?? '', /did not accept these credentials/);
    assert.equal((await connectionsOf('logins')).length, 0, 'a rejected pair stores nothing');
    // The retry, with the same session: the user name is kept, the secret is not.
    assert.equal(await popup.inputValue('#username'), 'demo-user');
    assert.equal(await popup.inputValue('#password'), '');
    await popup.fill('#password', 'demo-pass');
    const closed = popup.waitForEvent('close', { timeout: STEP_TIMEOUT });
    await popup.click('#submit');
    const id = await connectedId(page);
    await closed;
    const stored = await connectionsOf('logins');
    assert.deepEqual(stored.map((c) => c.id), [id]);
    assert.equal(stored[0].last_test.ok, true, 'verified with the provider before it was stored');
    await brokerApi(`/connections/${id}`, 'DELETE');
  } finally {
    await context.close();
  }
});

test('a client-credentials connection is made from the end user\'s own client: a wrong secret is refused by the provider and stores nothing', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  try {
    // The end user's own machine client, registered at the provider.
    const reg = await fetch(`${OIDC_ISSUER}/reg`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ redirect_uris: [], response_types: [], grant_types: ['client_credentials'], token_endpoint_auth_method: 'client_secret_basic' }),
    });
    assert.equal(reg.status, 201);
    const client = await reg.json();
    const { page, popup } = await openHosted(context);
    for (const c of await connectionsOf('machines')) await brokerApi(`/connections/${c.id}`, 'DELETE');
    await popup.click('button[data-integration="machines"]');
    assert.equal(await popup.locator('label[for="client-id"]').textContent(), 'Client ID');
    assert.equal(await popup.locator('label[for="client-secret"]').textContent(), 'Client secret');
    assert.equal(await popup.getAttribute('#client-secret', 'type'), 'password');
    await popup.fill('#client-id', client.client_id);
    await popup.fill('#client-secret', 'not-the-secret');
    await popup.click('#submit');
    const error = popup.locator('#error[data-code="credentials_rejected"]');
    await error.waitFor({ state: 'visible' });
    assert.equal((await connectionsOf('machines')).length, 0, 'a refused client stores nothing');
    assert.equal(await popup.inputValue('#client-id'), client.client_id, 'the id is kept, the secret is not');
    await popup.fill('#client-secret', client.client_secret);
    const closed = popup.waitForEvent('close', { timeout: STEP_TIMEOUT });
    await popup.click('#submit');
    const id = await connectedId(page);
    await closed;
    const stored = await connectionsOf('machines');
    assert.deepEqual(stored.map((c) => c.id), [id]);
    assert.equal(stored[0].last_test.ok, true, 'the minted token was verified before it was stored');
    await brokerApi(`/connections/${id}`, 'DELETE');
  } finally {
    await context.close();
  }
});

test('a service account connects from its uploaded key file: a key the provider does not know is refused and stores nothing', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  try {
    // The end user's service account: its public key registered at the
    // provider (the local RFC 7523 server), its key file on their disk.
    const email = `sa-${Date.now().toString(36)}@broker.iam.example.test`;
    const keyFile = (privateKey) => ({
      name: 'service-account.json',
      mimeType: 'application/json',
      buffer: Buffer.from(JSON.stringify({
        type: 'service_account', project_id: 'demo', private_key_id: 'abcdef0123456789',
        private_key: privateKey, client_email: email, client_id: '1',
      })),
    });
    const pair = () => generateKeyPairSync('rsa', {
      modulusLength: 2048,
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    });
    const good = pair();
    const reg = await fetch(`${JWT_SERVER_URL}/admin/issuers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ issuer: email, public_key: good.publicKey }),
    });
    assert.equal(reg.status, 201);
    const { page, popup } = await openHosted(context);
    for (const c of await connectionsOf('service-accounts')) await brokerApi(`/connections/${c.id}`, 'DELETE');
    await popup.click('button[data-integration="service-accounts"]');
    assert.equal(await popup.locator('label[for="key-file"]').textContent(), 'Service account key (JSON file)');
    assert.equal(await popup.getAttribute('#key-file', 'type'), 'file');
    assert.equal(await popup.locator('#field-client_email').count(), 0, 'read from the file, not typed');
    await popup.setInputFiles('#key-file', keyFile(pair().privateKey));
    await popup.locator('#key-file[data-loaded="true"]').waitFor({ state: 'attached' });
    await popup.click('#submit');
    const error = popup.locator('#error[data-code="credentials_rejected"]');
    await error.waitFor({ state: 'visible' });
    assert.equal((await connectionsOf('service-accounts')).length, 0, 'a refused key stores nothing');
    assert.ok(!(await popup.content()).includes('PRIVATE KEY'), 'the key is never shown');
    await popup.setInputFiles('#key-file', keyFile(good.privateKey));
    await popup.locator('#key-file[data-loaded="true"]').waitFor({ state: 'attached' });
    const closed = popup.waitForEvent('close', { timeout: STEP_TIMEOUT });
    await popup.click('#submit');
    const id = await connectedId(page);
    await closed;
    const stored = await connectionsOf('service-accounts');
    assert.deepEqual(stored.map((c) => c.id), [id]);
    assert.equal(stored[0].connection_config.client_email, email);
    assert.equal(stored[0].last_test.ok, true, 'the exchanged token was verified before it was stored');
    await brokerApi(`/connections/${id}`, 'DELETE');
  } finally {
    await context.close();
  }
});

test('the SDK connects in redirect mode and reads the outcome from the return URL', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  try {
    const page = await demoPage(context);
    await page.click('#connect-redirect');
    // The tab itself goes to the provider (no popup).
    await signIn(page, 'erin');
    await page.click('#confirm');
    await page.waitForURL((u) => u.href.startsWith(DEMO_URL));
    const id = await connectedId(page);
    assert.equal(new URL(page.url()).search, '', 'the outcome is read, then cleared from the URL');
    const conn = await (await brokerApi(`/connections/${id}`)).json();
    assert.equal(conn.provider_account_id, 'erin');
  } finally {
    await context.close();
  }
});

test('the SDK polls the session when the popup closes without reporting', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  try {
    // The callback runs at the broker, but its page has lost its opener
    // (as when a provider's page cut the popup from the app): it reports
    // nothing and stays open.
    await context.addInitScript(() => {
      if (window.location.pathname.endsWith('/callback')) {
        Object.defineProperty(window, 'opener', { value: null });
      }
    });
    const page = await demoPage(context);
    const popup = await openPopup(page, '#connect');
    await signIn(popup, 'frank');
    await popup.click('#confirm');
    await popup.locator('h1', { hasText: 'Connected' }).waitFor();
    assert.ok(!popup.isClosed(), 'the page could not report');
    await popup.close();
    const id = await connectedId(page);
    const conn = await (await brokerApi(`/connections/${id}`)).json();
    assert.equal(conn.provider_account_id, 'frank');
  } finally {
    await context.close();
  }
});

test('the SDK ignores messages from any other origin and gives the session to no one else', { timeout: TEST_TIMEOUT }, async () => {
  const context = await browser.newContext();
  try {
    // Another site opens the app's page and spams it with forged results
    // and session requests.
    await context.route(`${EVIL}/**`, (route) => route.fulfill({
      contentType: 'text/html',
      body: `<!doctype html><script>
        window.got = [];
        window.sent = 0;
        addEventListener('message', (e) => window.got.push(e.data));
        window.app = window.open(${JSON.stringify(DEMO_URL)}, 'app');
        setInterval(() => {
          try {
            window.app.postMessage({ type: 'oauth-broker:result', status: 'connected', connection_id: 'conn_forged' }, '*');
            window.app.postMessage({ type: 'oauth-broker:ready' }, '*');
            window.sent += 1;
          } catch (e) {}
        }, 50);
      </script>`,
    }));
    const evil = await context.newPage();
    evil.setDefaultTimeout(STEP_TIMEOUT);
    const appPromise = evil.waitForEvent('popup');
    await evil.goto(`${EVIL}/`);
    const page = await appPromise;
    page.setDefaultTimeout(STEP_TIMEOUT);
    await page.locator('#connect:not([disabled])').waitFor();
    const popup = await openPopup(page, '#connect');
    await popup.locator('#login').waitFor();
    // Forged messages keep arriving while the flow is open.
    const sentBefore = await evil.evaluate(() => window.sent);
    await evil.waitForFunction((n) => window.sent > n + 10, sentBefore);
    await popup.close();
    // A flow is still at the provider: the app waits, and offers Cancel.
    await page.locator('#cancel').waitFor({ state: 'visible' });
    await page.click('#cancel');
    await page.locator('#result', { hasText: /Cancelled|Connected|Error/ }).waitFor();
    assert.equal(((await page.locator('#result').textContent()) ?? '').trim(), 'Cancelled');
    const got = await evil.evaluate(() => JSON.stringify(window.got));
    assert.ok(!got.includes('oauth-broker:session'), `the session went to another site: ${got}`);
  } finally {
    await context.close();
  }
});
