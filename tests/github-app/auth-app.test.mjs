// The GitHub App stand-in (scripts/github-app-server.mjs) driven as a consumer
// drives GitHub: with GitHub's own client library, @octokit/auth-app, for the
// app JWT, installation tokens and the user-authorization proof of an
// installation; signed `installation` webhooks checked with the webhook secret
// (node:crypto and @octokit/webhooks-methods).
//
// Run: node --test tests/github-app/

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { createAppAuth } from '@octokit/auth-app';
import { request } from '@octokit/request';
import { verify as verifyWebhook } from '@octokit/webhooks-methods';

const SERVER = fileURLToPath(new URL('../../scripts/github-app-server.mjs', import.meta.url));

const APP_ID = 123456;
const SLUG = 'broker-test-app';
const CLIENT_ID = 'Iv23liBrokerTest01';
const CLIENT_SECRET = crypto.randomBytes(20).toString('hex');
const WEBHOOK_SECRET = crypto.randomBytes(24).toString('hex');
const OTHER_APP_ID = 654321;
const ALICE = { login: 'alice', id: 5001 };
const BOB = { login: 'bob', id: 5002 };
const ALICE_INSTALLATION = 4242001;
const BOB_INSTALLATION = 4242002;
const OTHER_APP_INSTALLATION = 4242003;

const rsa = () => crypto.generateKeyPairSync('rsa', {
  modulusLength: 2048,
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
});
const appKey = rsa();
const otherKey = rsa();

// Everything secret this test handles: none of it may appear in the server's output.
const secrets = new Set([CLIENT_SECRET, WEBHOOK_SECRET, appKey.privateKey, otherKey.privateKey]);

let child;
let output = '';
let baseUrl;
let gh;
let receiver;
let receiverUrl;
const deliveries = [];

function startServer() {
  return new Promise((resolve, reject) => {
    child = spawn(process.execPath, [SERVER], {
      env: { ...process.env, GITHUB_APP_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const timer = setTimeout(() => reject(new Error(`stand-in did not start: ${output}`)), 10_000);
    const onData = (chunk) => {
      output += chunk.toString('utf8');
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output);
      if (m && !baseUrl) {
        clearTimeout(timer);
        baseUrl = m[1];
        resolve();
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (!baseUrl) reject(new Error(`stand-in exited (${code}): ${output}`));
    });
  });
}

async function admin(method, path, body) {
  const res = await fetch(`${baseUrl}/__admin${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  assert.ok(res.status < 300, `${method} /__admin${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

// A JWT signed by hand, for the refusals @octokit/auth-app never produces.
function jwt(claims, { key = appKey.privateKey, alg = 'RS256' } = {}) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const data = `${enc({ alg, typ: 'JWT' })}.${enc(claims)}`;
  const sig = alg === 'HS256'
    ? crypto.createHmac('sha256', 'guess').update(data).digest()
    : crypto.sign('RSA-SHA256', Buffer.from(data), key);
  const token = `${data}.${sig.toString('base64url')}`;
  secrets.add(token);
  return token;
}
const nowS = () => Math.floor(Date.now() / 1000);

const warnings = [];
const appAuth = (options = {}) => createAppAuth({
  appId: APP_ID,
  privateKey: appKey.privateKey,
  clientId: CLIENT_ID,
  clientSecret: CLIENT_SECRET,
  request: gh,
  log: { warn: (...args) => warnings.push(args.join(' ')) },
  ...options,
});

// The error @octokit/request throws for a refused request.
async function refused(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail('the request was not refused');
}

function assertGitHubRefusal(e, status, message) {
  assert.equal(e.status, status, `${e.status}: ${e.message}`);
  assert.equal(e.response.data.message, message);
  assert.match(e.response.data.documentation_url, /^https:\/\/docs\.github\.com\//);
}

async function waitForDelivery(predicate, ms = 5_000) {
  const until = Date.now() + ms;
  for (;;) {
    const found = deliveries.find(predicate);
    if (found) return found;
    if (Date.now() > until) assert.fail('no such webhook delivery');
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function verifiedDelivery(d) {
  const expected = `sha256=${crypto.createHmac('sha256', WEBHOOK_SECRET).update(d.body).digest('hex')}`;
  const got = String(d.headers['x-hub-signature-256'] ?? '');
  assert.equal(got.length, expected.length);
  assert.ok(crypto.timingSafeEqual(Buffer.from(got), Buffer.from(expected)), 'X-Hub-Signature-256 verifies');
  assert.equal(await verifyWebhook(WEBHOOK_SECRET, d.body, got), true, '@octokit/webhooks-methods verifies it');
  assert.equal(await verifyWebhook('not-the-secret', d.body, got), false);
  return JSON.parse(d.body);
}

before(async () => {
  receiver = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      deliveries.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  receiverUrl = `http://127.0.0.1:${receiver.address().port}`;

  await startServer();
  gh = request.defaults({ baseUrl, headers: { 'user-agent': 'broker-github-app-tests' } });

  await admin('POST', '/apps', {
    app_id: APP_ID,
    slug: SLUG,
    name: 'Broker Test App',
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    public_key: appKey.publicKey,
    webhook_secret: WEBHOOK_SECRET,
    webhook_url: `${receiverUrl}/hooks/github`,
    setup_url: `${receiverUrl}/setup`,
    callback_urls: [`${receiverUrl}/callback`],
    request_oauth_on_install: true,
    permissions: { metadata: 'read', contents: 'write', issues: 'read' },
  });
  await admin('POST', '/apps', {
    app_id: OTHER_APP_ID,
    slug: 'other-app',
    client_id: 'Iv23liOtherApp0001',
    client_secret: crypto.randomBytes(20).toString('hex'),
    public_key: otherKey.publicKey,
  });
  await admin('POST', '/users', ALICE);
  await admin('POST', '/users', BOB);
  await admin('POST', '/installations', {
    app_id: APP_ID,
    installation_id: ALICE_INSTALLATION,
    account: { ...ALICE, type: 'User' },
    users: [ALICE.login],
    repository_selection: 'selected',
    permissions: { metadata: 'read', contents: 'write' },
    repositories: [{ name: 'alpha' }, { name: 'beta' }],
  });
  await admin('POST', '/installations', {
    app_id: APP_ID,
    installation_id: BOB_INSTALLATION,
    account: { login: 'bob-org', id: 6002, type: 'Organization' },
    users: [BOB.login],
  });
  await admin('POST', '/installations', {
    app_id: OTHER_APP_ID,
    installation_id: OTHER_APP_INSTALLATION,
    account: { ...ALICE, type: 'User' },
    users: [ALICE.login],
  });
});

after(async () => {
  child?.kill('SIGTERM');
  await new Promise((r) => receiver?.close(r));
});

test('an app JWT made by @octokit/auth-app is accepted by GET /app', async () => {
  const auth = appAuth();
  const { token, appId, expiresAt } = await auth({ type: 'app' });
  secrets.add(token);
  assert.equal(appId, APP_ID);
  const [header, claims] = token.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url')));
  assert.equal(header.alg, 'RS256');
  assert.ok(claims.iat <= nowS() && claims.exp - nowS() <= 600, 'iat not ahead, exp at most 10 minutes ahead');
  assert.ok(Date.parse(expiresAt) > Date.now());

  const { status, data } = await gh('GET /app', { headers: { authorization: `Bearer ${token}` } });
  assert.equal(status, 200);
  assert.equal(data.id, APP_ID);
  assert.equal(data.slug, SLUG);
  assert.equal(data.client_id, CLIENT_ID);
  assert.equal(data.installations_count, 2);

  // The same through the library's request hook, as an Octokit consumer calls it.
  const viaHook = await gh('GET /app', { request: { hook: auth.hook } });
  assert.equal(viaHook.data.id, APP_ID);

  // `iss` may be the client ID ("Use of the client ID is recommended").
  const byClientId = jwt({ iat: nowS() - 60, exp: nowS() + 540, iss: CLIENT_ID });
  assert.equal((await gh('GET /app', { headers: { authorization: `Bearer ${byClientId}` } })).data.id, APP_ID);

  const inst = await gh('GET /app/installations/{installation_id}', {
    installation_id: ALICE_INSTALLATION,
    request: { hook: auth.hook },
  });
  assert.equal(inst.data.account.login, ALICE.login);
  assert.equal(inst.data.app_id, APP_ID);
  assert.equal(inst.data.suspended_at, null);
});

test('an installation token made by @octokit/auth-app is accepted by GET /installation/repositories', async () => {
  const auth = appAuth();
  const before = (await admin('GET', '/stats')).access_tokens[String(ALICE_INSTALLATION)] ?? 0;
  const inst = await auth({ type: 'installation', installationId: ALICE_INSTALLATION });
  secrets.add(inst.token);
  assert.match(inst.token, /^ghs_[A-Za-z0-9]{36}$/);
  assert.equal(inst.tokenType, 'installation');
  const ttl = (Date.parse(inst.expiresAt) - Date.now()) / 1000;
  assert.ok(ttl > 3590 && ttl <= 3600, `expires in an hour (${ttl}s)`);
  assert.deepEqual(inst.permissions, { metadata: 'read', contents: 'write' });
  assert.equal(inst.repositorySelection, 'selected');

  for (const scheme of ['token', 'Bearer']) {
    const { status, data } = await gh('GET /installation/repositories', { headers: { authorization: `${scheme} ${inst.token}` } });
    assert.equal(status, 200);
    assert.equal(data.total_count, 2);
    assert.deepEqual(data.repositories.map((r) => r.full_name), ['alice/alpha', 'alice/beta']);
  }
  // Through the hook of an auth bound to the installation, as Octokit does it.
  const bound = appAuth({ installationId: ALICE_INSTALLATION });
  assert.equal((await gh('GET /installation/repositories', { request: { hook: bound.hook } })).data.total_count, 2);

  // A narrower token (repositories, permissions) and a wider one refused.
  const narrow = await auth({
    type: 'installation', installationId: ALICE_INSTALLATION, repositoryNames: ['beta'], permissions: { contents: 'read' },
  });
  secrets.add(narrow.token);
  assert.equal(narrow.repositorySelection, 'selected');
  assert.deepEqual(narrow.repositoryNames, ['beta']);
  const narrowRepos = await gh('GET /installation/repositories', { headers: { authorization: `token ${narrow.token}` } });
  assert.deepEqual(narrowRepos.data.repositories.map((r) => r.name), ['beta']);
  const wider = await refused(auth({ type: 'installation', installationId: ALICE_INSTALLATION, permissions: { issues: 'write' } }));
  assertGitHubRefusal(wider, 422, 'The permissions requested are not granted to this installation.');

  const stats = await admin('GET', '/stats');
  // auth, bound (a cache of its own) and narrow each minted one; the refused request minted none.
  assert.equal(stats.access_tokens[String(ALICE_INSTALLATION)], before + 3);

  // Revoked with DELETE /installation/token: then 401.
  await gh('DELETE /installation/token', { headers: { authorization: `token ${narrow.token}` } });
  const revoked = await refused(gh('GET /installation/repositories', { headers: { authorization: `token ${narrow.token}` } }));
  assertGitHubRefusal(revoked, 401, 'Bad credentials');
});

test('JWTs GitHub refuses are refused: another key, expired, exp too far, iat ahead, not RS256', async () => {
  const before = (await admin('GET', '/stats')).jwt_refusals;
  const t = nowS();
  const cases = [
    ['signed with another key', jwt({ iat: t - 60, exp: t + 540, iss: APP_ID }, { key: otherKey.privateKey }), 401, 'A JSON web token could not be decoded'],
    ['expired', jwt({ iat: t - 700, exp: t - 100, iss: APP_ID }), 401, "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"],
    ['exp more than 10 minutes ahead', jwt({ iat: t - 60, exp: t + 660, iss: APP_ID }), 401, "'Expiration time' claim ('exp') is too far in the future"],
    ['iat in the future', jwt({ iat: t + 120, exp: t + 540, iss: APP_ID }), 401, "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"],
    ['iat not an integer', jwt({ iat: `${t - 60}`, exp: t + 540, iss: APP_ID }), 401, "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"],
    ['HS256', jwt({ iat: t - 60, exp: t + 540, iss: APP_ID }, { alg: 'HS256' }), 401, 'A JSON web token could not be decoded'],
    ['not a JWT', 'not.a.jwt', 401, 'A JSON web token could not be decoded'],
    ['unknown app', jwt({ iat: t - 60, exp: t + 540, iss: 999999 }), 404, 'Integration not found'],
  ];
  for (const [name, token, status, message] of cases) {
    for (const route of ['GET /app', 'POST /app/installations/{installation_id}/access_tokens']) {
      const e = await refused(gh(route, { installation_id: ALICE_INSTALLATION, headers: { authorization: `Bearer ${token}` } }));
      assert.equal(e.status, status, `${name}: ${route}`);
      assert.equal(e.response.data.message, message, `${name}: ${route}`);
    }
  }
  // "if you are passing a JSON web token (JWT), you must use Authorization: Bearer"
  const good = jwt({ iat: t - 60, exp: t + 540, iss: APP_ID });
  assertGitHubRefusal(await refused(gh('GET /app', { headers: { authorization: `token ${good}` } })), 401, 'A JSON web token could not be decoded');
  assertGitHubRefusal(await refused(gh('GET /app')), 401, 'Requires authentication');
  // An installation token is no app JWT.
  const inst = await appAuth()({ type: 'installation', installationId: ALICE_INSTALLATION });
  assertGitHubRefusal(await refused(gh('GET /app', { headers: { authorization: `Bearer ${inst.token}` } })), 401, 'A JSON web token could not be decoded');

  const stats = await admin('GET', '/stats');
  assert.equal(stats.jwt_refusals - before, cases.length * 2 + 3);
  assert.equal(stats.jwt_refusal_reasons.exp_too_far >= 2, true);

  // The library with the wrong private key gets GitHub's answer.
  const wrongKey = createAppAuth({ appId: APP_ID, privateKey: otherKey.privateKey, request: gh });
  const e = await refused(wrongKey({ type: 'installation', installationId: ALICE_INSTALLATION }));
  assertGitHubRefusal(e, 401, 'A JSON web token could not be decoded');
});

test("another app's installation is not found for this app's JWT", async () => {
  const e = await refused(appAuth()({ type: 'installation', installationId: OTHER_APP_INSTALLATION }));
  assert.equal(e.status, 404);
  assert.equal(e.response.data.message, 'Not Found');
  assertGitHubRefusal(await refused(appAuth()({ type: 'installation', installationId: 1 })), 404, 'Not Found');
});

test('a suspended installation gets no token (403) and its webhook is signed', async () => {
  const auth = appAuth();
  const earlier = await auth({ type: 'installation', installationId: BOB_INSTALLATION, refresh: true });
  secrets.add(earlier.token);
  const { delivery } = await admin('POST', `/installations/${BOB_INSTALLATION}/suspend`);
  assert.equal(delivery.status_code, 204);
  const d = await waitForDelivery((x) => x.headers['x-github-delivery'] === delivery.guid);
  const payload = await verifiedDelivery(d);
  assert.equal(d.headers['x-github-event'], 'installation');
  assert.equal(payload.action, 'suspend');
  assert.equal(payload.installation.id, BOB_INSTALLATION);
  assert.equal(payload.installation.account.login, 'bob-org');
  assert.equal(payload.installation.account.type, 'Organization');
  assert.ok(payload.installation.suspended_at);

  const e = await refused(auth({ type: 'installation', installationId: BOB_INSTALLATION, refresh: true }));
  assertGitHubRefusal(e, 403, 'This installation has been suspended');
  const used = await refused(gh('GET /installation/repositories', { headers: { authorization: `token ${earlier.token}` } }));
  assertGitHubRefusal(used, 403, 'This installation has been suspended');
  const seen = await gh('GET /app/installations/{installation_id}', { installation_id: BOB_INSTALLATION, request: { hook: auth.hook } });
  assert.ok(seen.data.suspended_at, 'GET /app/installations/{id} shows suspended_at');
  assert.equal((await admin('GET', '/stats')).access_token_refusals.suspended, 1);

  const back = await admin('POST', `/installations/${BOB_INSTALLATION}/unsuspend`);
  const payload2 = await verifiedDelivery(await waitForDelivery((x) => x.headers['x-github-delivery'] === back.delivery.guid));
  assert.equal(payload2.action, 'unsuspend');
  assert.equal(payload2.installation.suspended_at, null);
  const again = await auth({ type: 'installation', installationId: BOB_INSTALLATION, refresh: true });
  secrets.add(again.token);
  assert.match(again.token, /^ghs_/);
});

test('install page -> setup redirect; the code proves the installation is the user\'s (GET /user/installations)', async () => {
  const state = crypto.randomBytes(16).toString('hex');
  const page = await fetch(`${baseUrl}/apps/${SLUG}/installations/new?state=${state}&as=${ALICE.login}`);
  assert.equal(page.status, 200);
  const html = await page.text();
  assert.match(html, /<button[^>]*>Install<\/button>/);
  const form = new URLSearchParams([...html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)].map((m) => [m[1], m[2]]));
  assert.equal(form.get('state'), state);
  const action = /<form method="post" action="([^"]+)"/.exec(html)[1];
  const installed = await fetch(new URL(action, baseUrl), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: form.toString(),
    redirect: 'manual',
  });
  assert.equal(installed.status, 302);
  const location = new URL(installed.headers.get('location'));
  // request_oauth_on_install: the first callback URL, with a code.
  assert.equal(`${location.origin}${location.pathname}`, `${receiverUrl}/callback`);
  assert.equal(location.searchParams.get('setup_action'), 'install');
  assert.equal(location.searchParams.get('state'), state);
  const installationId = Number(location.searchParams.get('installation_id'));
  const code = location.searchParams.get('code');
  assert.ok(installationId > 0 && code);
  secrets.add(code);
  const created = await verifiedDelivery(await waitForDelivery((x) => x.body.includes('"action":"created"') && x.body.includes(`"id":${installationId},`)));
  assert.equal(created.installation.account.login, ALICE.login);
  assert.equal(created.sender.login, ALICE.login);

  // The proof: the user's code -> a user access token -> the installations it can see.
  const auth = appAuth();
  const user = await auth({ type: 'oauth-user', code });
  secrets.add(user.token);
  if (user.refreshToken) secrets.add(user.refreshToken);
  assert.match(user.token, /^ghu_/);
  assert.ok(user.refreshToken?.startsWith('ghr_') && Date.parse(user.expiresAt) > Date.now());
  const mine = await gh('GET /user/installations', { headers: { authorization: `Bearer ${user.token}` } });
  const ids = mine.data.installations.map((i) => i.id);
  assert.equal(mine.data.total_count, ids.length);
  assert.ok(ids.includes(installationId), 'the new installation is the user\'s');
  assert.ok(ids.includes(ALICE_INSTALLATION));
  assert.ok(!ids.includes(BOB_INSTALLATION), "bob's installation is not alice's: a forged installation_id fails the check");
  assert.ok(!ids.includes(OTHER_APP_INSTALLATION), "another app's installation is not listed");
  assert.equal((await gh('GET /user', { headers: { authorization: `token ${user.token}` } })).data.login, ALICE.login);

  // Another user's token does not list it.
  const { code: bobCode } = await admin('POST', '/codes', { client_id: CLIENT_ID, login: BOB.login });
  secrets.add(bobCode);
  const bob = await auth({ type: 'oauth-user', code: bobCode });
  secrets.add(bob.token);
  const bobs = (await gh('GET /user/installations', { headers: { authorization: `token ${bob.token}` } })).data.installations.map((i) => i.id);
  assert.ok(!bobs.includes(installationId));
  assert.deepEqual(bobs, [BOB_INSTALLATION]);

  // A code works once; errors are HTTP 200 with `error`, as GitHub answers them.
  const reused = await refused(auth({ type: 'oauth-user', code, refresh: true }));
  assert.match(reused.message, /bad_verification_code/);
  assert.equal(reused.response.status, 200);
  assert.equal(reused.response.data.error, 'bad_verification_code');
  // An installation token is not a user token.
  const inst = await auth({ type: 'installation', installationId: ALICE_INSTALLATION });
  assert.equal((await refused(gh('GET /user/installations', { headers: { authorization: `token ${inst.token}` } }))).status, 403);
  assertGitHubRefusal(await refused(gh('GET /user/installations', { headers: { authorization: 'token ghu_nope' } })), 401, 'Bad credentials');
});

test('POST /login/oauth/access_token answers form-encoded by default, JSON on Accept; errors with HTTP 200', async () => {
  const { code } = await admin('POST', '/codes', { client_id: CLIENT_ID, login: ALICE.login });
  secrets.add(code);
  const wrong = await fetch(`${baseUrl}/login/oauth/access_token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ client_id: CLIENT_ID, client_secret: 'wrong', code }).toString(),
  });
  assert.equal(wrong.status, 200);
  assert.match(wrong.headers.get('content-type'), /application\/x-www-form-urlencoded/);
  const wrongBody = new URLSearchParams(await wrong.text());
  assert.equal(wrongBody.get('error'), 'incorrect_client_credentials');
  assert.equal(wrongBody.get('error_description'), 'The client_id and/or client_secret passed are incorrect.');

  const mismatch = await fetch(`${baseUrl}/login/oauth/access_token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ client_id: CLIENT_ID, client_secret: CLIENT_SECRET, code, redirect_uri: 'http://attacker.test/cb' }),
  });
  assert.equal((await mismatch.json()).error, 'redirect_uri_mismatch');

  const ok = await fetch(`${baseUrl}/login/oauth/access_token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ client_id: CLIENT_ID, client_secret: CLIENT_SECRET, code }).toString(),
  });
  const form = new URLSearchParams(await ok.text());
  const token = form.get('access_token');
  secrets.add(token);
  secrets.add(form.get('refresh_token'));
  assert.match(token, /^ghu_/);
  assert.equal(form.get('token_type'), 'bearer');
  assert.equal(form.get('scope'), '');
  assert.equal(form.get('expires_in'), '28800');
  assert.equal(form.get('refresh_token_expires_in'), '15811200');

  // Refresh: the old refresh token and the old access token stop working.
  const refreshed = await (await fetch(`${baseUrl}/login/oauth/access_token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ client_id: CLIENT_ID, client_secret: CLIENT_SECRET, grant_type: 'refresh_token', refresh_token: form.get('refresh_token') }),
  })).json();
  secrets.add(refreshed.access_token);
  secrets.add(refreshed.refresh_token);
  assert.match(refreshed.access_token, /^ghu_/);
  assertGitHubRefusal(await refused(gh('GET /user/installations', { headers: { authorization: `token ${token}` } })), 401, 'Bad credentials');
  assert.equal((await gh('GET /user/installations', { headers: { authorization: `token ${refreshed.access_token}` } })).status, 200);
});

test('an uninstall delivers a signed installation.deleted webhook; the installation and its tokens are gone', async () => {
  const auth = appAuth();
  const token = (await auth({ type: 'installation', installationId: ALICE_INSTALLATION, refresh: true })).token;
  secrets.add(token);
  const { delivery, state } = await admin('DELETE', `/installations/${ALICE_INSTALLATION}`);
  assert.equal(state, 'deleted');
  const d = await waitForDelivery((x) => x.headers['x-github-delivery'] === delivery.guid);
  assert.equal(d.path, '/hooks/github');
  assert.equal(d.headers['x-github-event'], 'installation');
  assert.match(d.headers['x-github-delivery'], /^[0-9a-f-]{36}$/);
  assert.equal(d.headers['content-type'], 'application/json');
  assert.match(d.headers['user-agent'], /^GitHub-Hookshot\//);
  assert.equal(d.headers['x-github-hook-installation-target-id'], String(APP_ID));
  const payload = await verifiedDelivery(d);
  assert.equal(payload.action, 'deleted');
  assert.equal(payload.installation.id, ALICE_INSTALLATION);
  assert.equal(payload.installation.app_id, APP_ID);
  assert.equal(payload.installation.account.login, ALICE.login);
  assert.ok(payload.sender.login);
  assert.deepEqual(payload.repositories.map((r) => r.full_name), ['alice/alpha', 'alice/beta']);
  // A tampered body does not verify.
  assert.equal(await verifyWebhook(WEBHOOK_SECRET, d.body.replace('deleted', 'created'), d.headers['x-hub-signature-256']), false);

  const gone = await refused(auth({ type: 'installation', installationId: ALICE_INSTALLATION, refresh: true }));
  assertGitHubRefusal(gone, 404, 'Not Found');
  assertGitHubRefusal(await refused(gh('GET /installation/repositories', { headers: { authorization: `token ${token}` } })), 401, 'Bad credentials');
});

test('an installation token is refused (401) once its lifetime ends', async () => {
  const shortId = 777001;
  const key = rsa();
  secrets.add(key.privateKey);
  await admin('POST', '/apps', {
    app_id: shortId, slug: 'short-lived', client_id: 'Iv23liShortLived01', client_secret: 'x'.repeat(40), public_key: key.publicKey, token_ttl: 600,
  });
  await admin('POST', '/installations', { app_id: shortId, installation_id: 777002, account: { login: 'carol', id: 5003, type: 'User' } });
  const auth = createAppAuth({ appId: shortId, privateKey: key.privateKey, request: gh });
  const { token, expiresAt } = await auth({ type: 'installation', installationId: 777002 });
  secrets.add(token);
  assert.ok(Date.parse(expiresAt) - Date.now() <= 600_000);
  assert.equal((await gh('GET /installation/repositories', { headers: { authorization: `token ${token}` } })).status, 200);
  // The stand-in's clock moves past the lifetime: no waiting.
  await admin('POST', '/clock', { offset: 601 });
  try {
    assertGitHubRefusal(await refused(gh('GET /installation/repositories', { headers: { authorization: `token ${token}` } })), 401, 'Bad credentials');
  } finally {
    await admin('POST', '/clock', { offset: 0 });
  }
});

test('injected 503 and 429 reach the client while minting, then minting works', async () => {
  const auth = appAuth();
  await admin('POST', '/faults', { path_prefix: `/app/installations/${BOB_INSTALLATION}/access_tokens`, status: 503, count: 1 });
  const e503 = await refused(auth({ type: 'installation', installationId: BOB_INSTALLATION, refresh: true }));
  assert.equal(e503.status, 503);
  await admin('POST', '/faults', { path_prefix: '/app/installations/', status: 429, count: 1, retry_after: 2 });
  const e429 = await refused(auth({ type: 'installation', installationId: BOB_INSTALLATION, refresh: true }));
  assert.equal(e429.status, 429);
  assert.equal(e429.response.headers['retry-after'], '2');
  const ok = await auth({ type: 'installation', installationId: BOB_INSTALLATION, refresh: true });
  secrets.add(ok.token);
  const stats = await admin('GET', '/stats');
  assert.equal(stats.faults_served, 2);
  assert.equal(stats.faults_pending, 0);
});

test('the stand-in logged no token, JWT, code or secret', async () => {
  await new Promise((r) => setTimeout(r, 100));
  assert.match(output, /POST \/app\/installations\/\d+\/access_tokens 201/);
  for (const s of secrets) {
    if (!s) continue;
    const probe = s.includes('PRIVATE KEY') ? s.split('\n')[1] : s;
    assert.ok(!output.includes(probe), 'a secret appears in the stand-in\'s output');
  }
  assert.ok(!/ghs_|ghu_|ghr_|eyJ/.test(output), 'no token-like string in the output');
  assert.deepEqual(warnings, [], 'the library needed no retries');
});
