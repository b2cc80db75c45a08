#!/usr/bin/env node
// The project's configured, real OpenID Connect / OAuth 2 authorization server
// (npm `oidc-provider`) used by the local demo and by the end-to-end tests.
//
// Env:
//   OIDC_PORT               listen port on 127.0.0.1 (default 9100)
//   OIDC_ISSUER             issuer identifier (default http://localhost:${OIDC_PORT})
//   OIDC_ACCESS_TOKEN_TTL   access token lifetime in seconds (default 300)
//   OIDC_FIRST_ACCESS_TOKEN_TTL
//                           lifetime of the access token a code exchange issues (default:
//                           OIDC_ACCESS_TOKEN_TTL); tests make it short so a new connection
//                           falls due at once while refreshed tokens stay fresh
//   DEMO_CLIENT_ID / DEMO_CLIENT_SECRET / DEMO_REDIRECT_URI
//                           optional static confidential client (client_secret_basic);
//                           DEMO_REDIRECT_URI may list several URIs separated by commas/spaces
//   OIDC_TEST_ENDPOINTS=1   enables GET /__test/token-requests, GET /__test/revocations,
//                           PUT /__test/access-token-ttl?client_id=ID&ttl=SECONDS (the
//                           lifetime of the access tokens issued to one client from now on,
//                           so tests control time instead of racing it) and
//                           PUT /__test/token-failures?client_id=ID&count=N (the client's
//                           next N token requests, by Basic auth, answer 503; GET tells
//                           how many are left)
//
// Accounts: any login name with the password `demo`; sub = login name,
// email = `${login}@example.test`.
//
// Logging: one line per request with method, path (never the query string) and
// status. Codes, tokens, secrets, passwords and cookies are never logged.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';
import { fakeApi } from './fake-api.mjs';
// oidc-provider's own in-memory adapter (one store per factory).
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const PORT = parsePort(process.env.OIDC_PORT, 9100);
const ISSUER = (process.env.OIDC_ISSUER || `http://localhost:${PORT}`).replace(/\/+$/, '');
const ACCESS_TOKEN_TTL = parsePositiveInt(process.env.OIDC_ACCESS_TOKEN_TTL, 300, 'OIDC_ACCESS_TOKEN_TTL');
const FIRST_ACCESS_TOKEN_TTL = parsePositiveInt(process.env.OIDC_FIRST_ACCESS_TOKEN_TTL, ACCESS_TOKEN_TTL, 'OIDC_FIRST_ACCESS_TOKEN_TTL');
const TEST_ENDPOINTS = process.env.OIDC_TEST_ENDPOINTS === '1';
const DEMO_PASSWORD = 'demo';
// Per-client access token lifetimes set through the test endpoint.
const accessTokenTtlByClient = new Map();
const FORM_BODY_LIMIT = 16 * 1024;

function parsePort(value, fallback) {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    console.error('OIDC_PORT must be an integer between 1 and 65535');
    process.exit(2);
  }
  return n;
}

function parsePositiveInt(value, fallback, name) {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) {
    console.error(`${name} must be a positive integer (seconds)`);
    process.exit(2);
  }
  return n;
}

// ---------------------------------------------------------------------------
// Ephemeral key material: cookie signing keys and the JWKS (fresh RSA pair).
// ---------------------------------------------------------------------------
function freshJwks() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return {
    keys: [{ ...jwk, kid: crypto.randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' }],
  };
}

const cookieKeys = [crypto.randomBytes(32).toString('base64url')];

// ---------------------------------------------------------------------------
// Static demo client (optional).
// ---------------------------------------------------------------------------
const clients = [];
if (process.env.DEMO_CLIENT_ID || process.env.DEMO_CLIENT_SECRET || process.env.DEMO_REDIRECT_URI) {
  const { DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REDIRECT_URI } = process.env;
  if (!DEMO_CLIENT_ID || !DEMO_CLIENT_SECRET || !DEMO_REDIRECT_URI) {
    console.error('DEMO_CLIENT_ID, DEMO_CLIENT_SECRET and DEMO_REDIRECT_URI must be set together');
    process.exit(2);
  }
  clients.push({
    client_id: DEMO_CLIENT_ID,
    client_secret: DEMO_CLIENT_SECRET,
    redirect_uris: DEMO_REDIRECT_URI.split(/[\s,]+/).filter(Boolean),
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    application_type: 'web',
  });
}

// ---------------------------------------------------------------------------
// Accounts: any login with password "demo".
// ---------------------------------------------------------------------------
function displayName(login) {
  return login.charAt(0).toUpperCase() + login.slice(1);
}

async function findAccount(_ctx, sub) {
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        email: `${sub}@example.test`,
        email_verified: true,
        name: displayName(sub),
      };
    },
  };
}

// ---------------------------------------------------------------------------
// Helpers: HTML, forms, client id extraction.
// ---------------------------------------------------------------------------
function escapeHtml(value) {
  return String(value ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

const STYLE = `
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f3f4f6;margin:0;color:#111827}
main{max-width:360px;margin:48px auto;background:#fff;border-radius:10px;box-shadow:0 2px 10px rgba(0,0,0,.08);padding:28px}
h1{font-size:1.3rem;margin:0 0 16px}
label{display:block;font-size:.85rem;margin:12px 0 4px;color:#374151}
input{width:100%;box-sizing:border-box;padding:9px 10px;border:1px solid #d1d5db;border-radius:6px;font-size:1rem}
button{margin-top:18px;width:100%;padding:10px;border:0;border-radius:6px;font-size:1rem;cursor:pointer;background:#2563eb;color:#fff}
button.secondary{background:#e5e7eb;color:#111827;margin-top:10px}
.error{color:#b91c1c;font-size:.9rem}
.hint{color:#6b7280;font-size:.8rem}
.client{word-break:break-all;margin-top:-8px}
ul{padding-left:20px}
`;

let styleHash;
function pageCsp() {
  styleHash ||= crypto.createHash('sha256').update(STYLE).digest('base64');
  // No form-action directive: Chromium applies form-action to the redirects that
  // follow a form POST, and the consent POST ends in a redirect to the client.
  return `default-src 'none'; style-src 'sha256-${styleHash}'; base-uri 'none'; frame-ancestors 'none'`;
}

function page(title, body) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<main>
${body}
</main>
</body>
</html>
`;
}

function loginPage(base, uid, clientName, clientId, { error, login } = {}) {
  return page('Sign in', `<h1>Sign in to continue to ${escapeHtml(clientName)}</h1>
<p class="hint client">Client ID: ${escapeHtml(clientId)}</p>
${error ? `<p class="error" id="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="${base}/interaction/${escapeHtml(uid)}/login">
<label for="login">Username</label>
<input id="login" name="login" type="text" autocomplete="username" autocapitalize="off" spellcheck="false" required autofocus value="${escapeHtml(login || '')}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button id="submit" type="submit">Sign in</button>
</form>
<p class="hint">Demo provider: any username, password <code>demo</code>.</p>`);
}

const SCOPE_TEXT = {
  openid: 'Know who you are',
  profile: 'Read your name',
  email: 'Read your email address',
  offline_access: 'Keep access while you are away (refresh token)',
};

function consentPage(base, uid, clientName, clientId, accountId, scopes) {
  const items = scopes.map((s) => `<li>${escapeHtml(SCOPE_TEXT[s] || s)} <span class="hint">(${escapeHtml(s)})</span></li>`).join('\n');
  return page('Authorize', `<h1>Allow ${escapeHtml(clientName)} to access your account?</h1>
<p class="hint client">Client ID: ${escapeHtml(clientId)}</p>
<p>Signed in as <strong id="account">${escapeHtml(accountId)}</strong>.</p>
${items ? `<ul>\n${items}\n</ul>` : ''}
<form method="post" action="${base}/interaction/${escapeHtml(uid)}/confirm">
<button id="confirm" type="submit">Allow</button>
</form>
<form method="post" action="${base}/interaction/${escapeHtml(uid)}/abort">
<button id="deny" class="secondary" type="submit">Deny</button>
</form>`);
}

async function readForm(ctx) {
  if (!ctx.is('application/x-www-form-urlencoded')) {
    ctx.throw(415, 'expected application/x-www-form-urlencoded');
  }
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > FORM_BODY_LIMIT) ctx.throw(413, 'form body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function setPageHeaders(ctx) {
  ctx.set('Cache-Control', 'no-store');
  ctx.set('Pragma', 'no-cache');
  ctx.set('Referrer-Policy', 'no-referrer');
  ctx.set('X-Content-Type-Options', 'nosniff');
  ctx.set('Content-Security-Policy', pageCsp());
}

function redirect303(ctx, location) {
  ctx.redirect(location);
  ctx.status = 303;
}

// RFC 6749 2.3.1: client credentials in HTTP Basic are form-urlencoded.
function clientIdFromBasic(header) {
  if (!header) return undefined;
  const [scheme, value] = header.split(' ');
  if (!scheme || scheme.toLowerCase() !== 'basic' || !value) return undefined;
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i === -1) return undefined;
  try {
    return decodeURIComponent(decoded.slice(0, i).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

function clientIdOf(ctx) {
  const fromBasic = clientIdFromBasic(ctx.get('authorization'));
  if (fromBasic) return fromBasic;
  try {
    const body = ctx.oidc?.body;
    if (body && typeof body.client_id === 'string' && body.client_id) return body.client_id;
    return ctx.oidc?.client?.clientId;
  } catch {
    return undefined;
  }
}

function grantTypeOf(ctx) {
  try {
    const gt = ctx.oidc?.body?.grant_type;
    return typeof gt === 'string' && gt ? gt : 'unknown';
  } catch {
    return 'unknown';
  }
}

// ---------------------------------------------------------------------------
// Provider configuration.
// ---------------------------------------------------------------------------
const DAY = 24 * 60 * 60;

// Registered clients are one store for every issuer (a client registered at
// the root is known to every shop, as one OAuth app is to every Shopify
// shop); everything else (codes, tokens, grants, sessions) is each issuer's own.
const clientStore = createMemoryAdapter();

// One issuer: the root one at ISSUER, or a shop's at ISSUER/shops/NAME.
function buildProvider(issuer, cookieSuffix) {
const ownStore = createMemoryAdapter();
const base = new URL(issuer).pathname.replace(/\/+$/, '');
const configuration = {
  adapter: (model) => (model === 'Client' ? clientStore(model) : ownStore(model)),
  clients,
  jwks: freshJwks(),
  findAccount,
  cookies: {
    keys: cookieKeys,
    // Cookies are scoped per host, not per port: every service on
    // "localhost" shares one cookie jar. Distinct names keep the provider's
    // cookies from colliding with the broker's or the demo app's.
    names: {
      session: `oidc_op_session${cookieSuffix}`,
      interaction: `oidc_op_interaction${cookieSuffix}`,
      resume: `oidc_op_interaction_resume${cookieSuffix}`,
    },
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  responseTypes: ['code'],
  // PKCE for every authorization request. S256 is the only method oidc-provider v9
  // implements (code_challenge_method=plain is rejected).
  pkce: { required: () => true },
  // A consented offline_access always yields a refresh token for clients
  // allowed the refresh_token grant.
  async issueRefreshToken(_ctx, client, code) {
    return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
  },
  // Rotate on every use; the old refresh token is consumed, and presenting it
  // again is treated as replay (invalid_grant, and the grant is revoked).
  rotateRefreshToken: true,
  // Revocation (RFC 7009) ends only the token presented, as
  // django-oauth-toolkit and Authlib do: the registry marks this server
  // `revocation_scope = "token"`, and the broker revokes a reconnect's
  // replaced set without ending the new one. A replayed rotated refresh
  // token still revokes its whole grant (reuse detection).
  revokeGrantPolicy: (ctx) => ctx.oidc.route !== 'revocation',
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true, initialAccessToken: false },
    // RFC 7592: a test deletes its client, as an end user revokes an API
    // client, with the registration access token it was given.
    registrationManagement: { enabled: true, rotateRegistrationAccessToken: false },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
    },
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
    },
    userinfo: { enabled: true },
    // RFC 6749 4.4, for the broker's client-credentials mode: a client
    // registered with the client_credentials grant mints opaque tokens.
    clientCredentials: { enabled: true },
  },
  interactions: {
    // Absolute, so every Location header this server sends is absolute.
    url: (_ctx, interaction) => `${issuer}/interaction/${interaction.uid}`,
  },
  ttl: {
    AccessToken: (ctx, _token, client) => accessTokenTtlByClient.get(client?.clientId)
      ?? (ctx?.oidc?.params?.grant_type === 'authorization_code' ? FIRST_ACCESS_TOKEN_TTL : ACCESS_TOKEN_TTL),
    // Minted tokens: the per-client TTL a test sets, else the refreshed TTL.
    ClientCredentials: (_ctx, _token, client) => accessTokenTtlByClient.get(client?.clientId) ?? ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * DAY,
    Interaction: 3600,
    Session: 14 * DAY,
    Grant: 14 * DAY,
  },
  clientBasedCORS: () => false,
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.set('Content-Security-Policy', pageCsp());
    ctx.body = page('Error', `<h1>Something went wrong</h1>
<p class="error" id="error">${escapeHtml(out.error)}</p>
${out.error_description ? `<p>${escapeHtml(out.error_description)}</p>` : ''}`);
  },
};

const provider = new Provider(issuer, configuration);
// Trust no proxy headers: the server listens on loopback only.
provider.proxy = false;

provider.on('server_error', (_ctx, err) => {
  console.error(`server_error: ${err?.name || 'Error'}`);
});

// ---------------------------------------------------------------------------
// Middleware, in order: request log, test endpoints + counters, offline_access
// prompt policy, interactions. The provider's own routes come after these.
// ---------------------------------------------------------------------------
provider.use(async (ctx, next) => {
  const started = Date.now();
  try {
    await next();
  } finally {
    // Method + path only: never the query string, headers or bodies.
    console.log(`${ctx.method} ${ctx.path} ${ctx.status} ${Date.now() - started}ms`);
  }
});

if (TEST_ENDPOINTS) {
  const tokenRequests = new Map(); // client_id -> { count, by_grant }
  const tokenFailures = new Map(); // client_id -> 503s left to answer
  const revocations = new Map(); // client_id -> count
  const tokenPath = provider.pathFor('token');
  const revocationPath = provider.pathFor('revocation');

  // Requests by method and path (no query), for tests that check which
  // issuer a call went to.
  const pathCounts = new Map();
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/__test/path-counts') {
      ctx.set('Cache-Control', 'no-store');
      ctx.body = Object.fromEntries(pathCounts);
      return;
    }
    if (!ctx.path.startsWith('/__test/')) {
      const key = `${ctx.method} ${ctx.path}`;
      pathCounts.set(key, (pathCounts.get(key) ?? 0) + 1);
    }
    await next();
  });

  // Every client assertion (private_key_jwt) it was sent goes to the
  // stack's log-hygiene ledger: no log of the broker may hold one
  // (no_secrets_in_logs).
  provider.use(async (ctx, next) => {
    try {
      await next();
    } finally {
      const assertion = ctx.oidc?.params?.client_assertion;
      if (process.env.STACK_DIR && typeof assertion === 'string' && assertion.split('.').length === 3) {
        fs.appendFileSync(`${process.env.STACK_DIR}/secrets-ledger.txt`, `${assertion.split('.')[2]}\n`);
      }
    }
  });

  provider.use(async (ctx, next) => {
    if (ctx.method === 'PUT' && ctx.path === '/__test/access-token-ttl') {
      const clientId = ctx.query.client_id;
      const ttl = Number(ctx.query.ttl);
      ctx.set('Cache-Control', 'no-store');
      if (typeof clientId !== 'string' || !clientId || !Number.isInteger(ttl) || ttl <= 0) {
        ctx.status = 400;
        ctx.body = { error: 'client_id and a positive integer ttl are required' };
        return;
      }
      accessTokenTtlByClient.set(clientId, ttl);
      ctx.body = { client_id: clientId, ttl };
      return;
    }
    if (ctx.path === '/__test/token-failures' && (ctx.method === 'PUT' || ctx.method === 'GET')) {
      const clientId = ctx.query.client_id;
      ctx.set('Cache-Control', 'no-store');
      const count = Number(ctx.query.count ?? 0);
      if (typeof clientId !== 'string' || !clientId || !Number.isInteger(count) || count < 0) {
        ctx.status = 400;
        ctx.body = { error: 'client_id and a count of zero or more are required' };
        return;
      }
      if (ctx.method === 'PUT') tokenFailures.set(clientId, count);
      ctx.body = { client_id: clientId, left: tokenFailures.get(clientId) ?? 0 };
      return;
    }
    if (ctx.method === 'GET' && (ctx.path === '/__test/token-requests' || ctx.path === '/__test/revocations')) {
      const clientId = ctx.query.client_id;
      ctx.set('Cache-Control', 'no-store');
      if (typeof clientId !== 'string' || !clientId) {
        ctx.status = 400;
        ctx.body = { error: 'client_id query parameter required' };
        return;
      }
      if (ctx.path === '/__test/token-requests') {
        const entry = tokenRequests.get(clientId);
        ctx.body = {
          client_id: clientId,
          count: entry?.count ?? 0,
          by_grant: { authorization_code: 0, refresh_token: 0, ...(entry?.by_grant ?? {}) },
        };
      } else {
        ctx.body = { client_id: clientId, count: revocations.get(clientId) ?? 0 };
      }
      return;
    }

    const isToken = ctx.method === 'POST' && ctx.path === tokenPath;
    const isRevocation = ctx.method === 'POST' && ctx.path === revocationPath;
    if (!isToken && !isRevocation) {
      await next();
      return;
    }
    const failing = isToken ? clientIdFromBasic(ctx.get('authorization')) : undefined;
    if (failing && (tokenFailures.get(failing) ?? 0) > 0) {
      // A provider outage, as the broker sees one: 503, nothing issued.
      tokenFailures.set(failing, tokenFailures.get(failing) - 1);
      ctx.status = 503;
      ctx.set('Cache-Control', 'no-store');
      ctx.body = { error: 'temporarily_unavailable' };
      return;
    }
    try {
      await next();
    } finally {
      // Counted after the provider handled (and parsed) the request, before the
      // response is written, whatever the outcome.
      const clientId = clientIdOf(ctx) ?? '';
      if (isToken) {
        const entry = tokenRequests.get(clientId) ?? { count: 0, by_grant: {} };
        const grant = grantTypeOf(ctx);
        entry.count += 1;
        entry.by_grant[grant] = (entry.by_grant[grant] ?? 0) + 1;
        tokenRequests.set(clientId, entry);
      } else {
        revocations.set(clientId, (revocations.get(clientId) ?? 0) + 1);
      }
    }
  });
}

// OpenID Connect Core 11: offline_access is ignored unless prompt includes
// consent "unless other conditions ... are in place"; oidc-provider silently
// drops it otherwise. This server's policy: a request for offline_access always
// shows the consent page, so add prompt=consent to such requests (unless the
// client asked for prompt=none, which must not show any UI).
const authorizationPath = provider.pathFor('authorization');
provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === authorizationPath) {
    const { scope, prompt } = ctx.query;
    if (typeof scope === 'string' && scope.split(' ').includes('offline_access')) {
      const prompts = typeof prompt === 'string' ? prompt.split(' ').filter(Boolean) : [];
      if (prompt === undefined || (typeof prompt === 'string' && !prompts.includes('consent') && !prompts.includes('none'))) {
        ctx.query = { ...ctx.query, prompt: [...prompts, 'consent'].join(' ') };
      }
    }
  }
  await next();
});

const INTERACTION_PATH = /^\/interaction\/([A-Za-z0-9_-]{1,128})(?:\/(login|confirm|abort))?$/;

provider.use(async (ctx, next) => {
  const match = INTERACTION_PATH.exec(ctx.path);
  if (!match) {
    await next();
    return;
  }
  const [, uid, action] = match;
  setPageHeaders(ctx);

  if ((action && ctx.method !== 'POST') || (!action && ctx.method !== 'GET')) {
    ctx.status = 405;
    ctx.set('Allow', action ? 'POST' : 'GET');
    ctx.type = 'html';
    ctx.body = page('Method not allowed', '<h1>Method not allowed</h1>');
    return;
  }

  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Session expired', `<h1>Sign-in session not found</h1>
<p class="error" id="error">${escapeHtml(err?.name === 'SessionNotFound' ? 'interaction session not found or expired' : 'invalid interaction')}</p>
<p>Close this window and start again.</p>`);
    return;
  }
  if (details.uid !== uid) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Session mismatch', '<h1>Sign-in session mismatch</h1><p class="error" id="error">interaction mismatch</p>');
    return;
  }

  const { prompt, params, session } = details;
  const client = await provider.Client.find(params.client_id);
  const clientName = client?.clientName || 'the application';
  const clientId = String(params.client_id || '');

  if (!action) {
    ctx.type = 'html';
    // Accounts named coop-*: the consent page is sent the way Django sends
    // every page by default, which cuts a popup off from its opener (the
    // browser test of the broker's result page without an opener).
    if (prompt.name === 'consent' && String(session?.accountId || '').startsWith('coop-')) {
      ctx.set('Cross-Origin-Opener-Policy', 'same-origin');
    }
    if (prompt.name === 'login') {
      ctx.body = loginPage(base, uid, clientName, clientId);
    } else if (prompt.name === 'consent') {
      const scopes = String(params.scope || '').split(' ').filter(Boolean);
      ctx.body = consentPage(base, uid, clientName, clientId, session?.accountId, scopes);
    } else {
      ctx.status = 501;
      ctx.body = page('Not implemented', `<h1>Unsupported prompt</h1><p class="error" id="error">${escapeHtml(prompt.name)}</p>`);
    }
    return;
  }

  if (action === 'abort') {
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    redirect303(ctx, returnTo);
    return;
  }

  if (action === 'login') {
    if (prompt.name !== 'login') {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Unexpected step', '<h1>Unexpected step</h1><p class="error" id="error">login not expected</p>');
      return;
    }
    const form = await readForm(ctx);
    const login = (form.get('login') || '').trim();
    const password = form.get('password') || '';
    const valid = login.length > 0 && login.length <= 64 && !/[\s\u0000-\u001f\u007f]/.test(login)
      && password.length === DEMO_PASSWORD.length
      && crypto.timingSafeEqual(Buffer.from(password), Buffer.from(DEMO_PASSWORD));
    if (!valid) {
      ctx.type = 'html';
      ctx.body = loginPage(base, uid, clientName, clientId, { error: 'Invalid username or password.', login: login.slice(0, 64) });
      return;
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
      login: { accountId: login },
    }, { mergeWithLastSubmission: false });
    redirect303(ctx, returnTo);
    return;
  }

  // action === 'confirm'
  if (prompt.name !== 'consent') {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Unexpected step', '<h1>Unexpected step</h1><p class="error" id="error">consent not expected</p>');
    return;
  }
  const { details: missing } = prompt;
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  grant ||= new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
    consent: { grantId },
  }, { mergeWithLastSubmission: true });
  redirect303(ctx, returnTo);
});

return provider;
}

// ---------------------------------------------------------------------------
// Server.
// ---------------------------------------------------------------------------
const provider = buildProvider(ISSUER, '');
const rootHandler = provider.callback();
// Shops: `/shops/NAME/...` is its own issuer (ISSUER/shops/NAME), made on
// first use, for the templated `demo-shop` provider. Clients registered at
// the root are known to every shop (see clientStore).
const SHOP_PATH = /^\/shops\/([a-z0-9][a-z0-9-]{0,30})(\/[^?]*)?(\?.*)?$/;
const MAX_SHOPS = 200;
const shops = new Map();
function shopHandler(name) {
  let h = shops.get(name);
  if (!h) {
    if (shops.size >= MAX_SHOPS) return undefined;
    h = buildProvider(`${ISSUER}/shops/${name}`, `_${name.replace(/-/g, '_')}`).callback();
    shops.set(name, h);
  }
  return h;
}
// The demo provider's API (scripts/fake-api.mjs): takes this server's
// access tokens; its test endpoints only with OIDC_TEST_ENDPOINTS.
const api = fakeApi(async (token) => {
  const at = (await provider.AccessToken.find(token)) ?? (await provider.ClientCredentials.find(token));
  return Boolean(at) && !at.isExpired;
});
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/api/') || (TEST_ENDPOINTS && req.url.startsWith('/__test/api-'))) {
    api(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
    return undefined;
  }
  const m = SHOP_PATH.exec(req.url);
  if (!m) return rootHandler(req, res);
  const handler = shopHandler(m[1]);
  if (!handler) {
    res.statusCode = 503;
    res.end('too many shops');
    return undefined;
  }
  // Mounted as express does it: oidc-provider takes the mount path from
  // the difference between originalUrl and url.
  req.originalUrl = req.url;
  req.url = `${m[2] || '/'}${m[3] || ''}`;
  return handler(req, res);
});
server.keepAliveTimeout = 5000;

server.on('error', (err) => {
  console.error(`oidc-provider failed to listen: ${err.code || err.message}`);
  process.exit(1);
});

server.listen(PORT, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${ISSUER}`);
});

let shuttingDown = false;
function shutdown(signal) {
  if (shuttingDown) return;
  shuttingDown = true;
  console.log(`oidc-provider: ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeIdleConnections?.();
  setTimeout(() => {
    server.closeAllConnections?.();
    process.exit(0);
  }, 3000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
