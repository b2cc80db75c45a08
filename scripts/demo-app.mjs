#!/usr/bin/env node
// A tiny stand-in for "the customer's app": a page with a Connect button that
// opens the broker's popup, and a backend that mints connect sessions, reads,
// tests and disconnects connections with the tenant's API key (which never
// reaches the browser; neither does any token).
//
// Env:
//   DEMO_PORT         listen port on 127.0.0.1 (default 9200)
//   BROKER_URL        broker base URL (default http://localhost:9000)
//   BROKER_API_KEY    the tenant's backend API key (required for /api/*)
//   DEMO_INTEGRATION  integration id the main card connects (default "demo")
//   DEMO_INTEGRATIONS integrations the "connect an app" button lists on the
//                     broker's hosted Connect page (comma-separated; default
//                     DEMO_INTEGRATION)
//   DEMO_END_USER     end user id (default "user-123")
//
// Routes: GET /api/config, POST /api/connect-session ({all?, redirect?}),
//         GET|DELETE /api/connections/:id, POST /api/connections/:id/test,
//         GET /api/whoami (a stand-in API-key provider for
//         the `demo-api-key` integration: the key `demo-key-123` is good),
//         GET /api/basic/whoami (a stand-in basic-auth provider for the
//         `demo-basic` integration: `demo-user` / `demo-pass` is good, sent
//         with the provider's `/token` user-name suffix).
// The page uses the browser SDK (sdk/index.js, served as /sdk/index.js).
// Logs method + path + status only; never the session token or the API key.

import { timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import * as http from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const STATIC_DIR = join(HERE, 'demo');

const PORT = (() => {
  const raw = process.env.DEMO_PORT;
  if (raw === undefined || raw === '') return 9200;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    console.error('DEMO_PORT must be an integer between 1 and 65535');
    process.exit(2);
  }
  return n;
})();
const ORIGIN = `http://localhost:${PORT}`;
const BROKER_URL = (process.env.BROKER_URL || 'http://localhost:9000').replace(/\/+$/, '');
const BROKER_API_KEY = process.env.BROKER_API_KEY || '';
const INTEGRATION = process.env.DEMO_INTEGRATION || 'demo';
const INTEGRATIONS = (process.env.DEMO_INTEGRATIONS || INTEGRATION).split(',').map((s) => s.trim()).filter(Boolean);
const FAKE_KEY = 'demo-key-123';
const FAKE_BASIC = Buffer.from('demo-user/token:demo-pass').toString('base64');
const END_USER = process.env.DEMO_END_USER || 'user-123';
const BROKER_TIMEOUT_MS = 60_000; // the broker's first request may still be compiling

let brokerOrigin;
try {
  brokerOrigin = new URL(BROKER_URL).origin;
} catch {
  console.error('BROKER_URL must be an absolute URL');
  process.exit(2);
}
if (!BROKER_API_KEY) {
  console.error('warning: BROKER_API_KEY is not set; /api/* will fail');
}

const PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  // The page polls the broker's /oauth/status when the popup closes without a result.
  `connect-src 'self' ${brokerOrigin}`,
  "img-src 'self' data:",
  "base-uri 'none'",
  // Redirect mode posts the session to the broker's Connect page.
  `form-action ${brokerOrigin}`,
  "frame-ancestors 'none'",
].join('; ');

const STATIC = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
  '/sdk/index.js': { file: '../../sdk/index.js', type: 'text/javascript; charset=utf-8' },
};

function securityHeaders(res) {
  res.setHeader('Content-Security-Policy', PAGE_CSP);
  // The browser's default: a cross-origin request carries this page's
  // origin only; with `no-referrer` the redirect-mode POST to the broker
  // would carry `Origin: null`, which the broker refuses.
  res.setHeader('Referrer-Policy', 'strict-origin-when-cross-origin');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Cache-Control', 'no-store');
}

function sendJson(res, status, body) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length });
  res.end(data);
}

// Same-origin check for the state-changing API routes (the page always sends
// Origin on POST and DELETE).
function sameOrigin(req) {
  const origin = req.headers.origin;
  return origin === undefined || origin === ORIGIN;
}

async function broker(path, init = {}) {
  return fetch(`${BROKER_URL}${path}`, {
    ...init,
    headers: {
      Accept: 'application/json',
      Authorization: `Bearer ${BROKER_API_KEY}`,
      ...(init.headers || {}),
    },
    redirect: 'manual',
    signal: AbortSignal.timeout(BROKER_TIMEOUT_MS),
  });
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 4096) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function createConnectSession(req, res) {
  if (!sameOrigin(req)) return sendJson(res, 403, { error: 'cross_origin_request' });
  if (!BROKER_API_KEY) return sendJson(res, 500, { error: 'demo_not_configured' });
  let ask;
  try {
    ask = JSON.parse((await readBody(req)) || '{}');
  } catch {
    return sendJson(res, 400, { error: 'invalid_json' });
  }
  const session = {
    end_user_id: END_USER,
    integrations: ask.all === true ? INTEGRATIONS : [INTEGRATION],
    origin: ORIGIN,
  };
  // Redirect mode: the broker sends this tab back here with the outcome.
  if (ask.redirect === true) session.return_to = `${ORIGIN}/`;
  let upstream;
  try {
    upstream = await broker('/connect-sessions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(session),
    });
  } catch (err) {
    console.error(`broker unreachable: ${err?.name || 'Error'}`);
    return sendJson(res, 502, { error: 'broker_unreachable' });
  }
  let body;
  try {
    body = await upstream.json();
  } catch {
    body = undefined;
  }
  if (upstream.status !== 201 && upstream.status !== 200) {
    console.error(`broker POST /connect-sessions -> ${upstream.status}`);
    const error = typeof body?.error === 'string' ? body.error : 'broker_error';
    return sendJson(res, 502, { error, broker_status: upstream.status });
  }
  if (typeof body?.token !== 'string' || !body.token) {
    return sendJson(res, 502, { error: 'broker_bad_response' });
  }
  return sendJson(res, 200, { token: body.token, expires_at: body.expires_at ?? null });
}

// The broker's error code from `{"error": {"code"}}` (or a bare string).
function errorCode(body) {
  const e = body?.error;
  if (typeof e === 'string' && e) return e;
  if (typeof e?.code === 'string' && e.code) return e.code;
  return 'broker_error';
}

// Calls the broker for a connection route and answers the page with
// pick(body) on success. A 404 or 409 keeps its status, any other failure is a
// 502; errors carry only the broker's code, never its message.
async function proxyConnection(req, res, method, path, pick) {
  if (method !== 'GET' && !sameOrigin(req)) return sendJson(res, 403, { error: 'cross_origin_request' });
  if (!BROKER_API_KEY) return sendJson(res, 500, { error: 'demo_not_configured' });
  req.resume(); // no route here reads a body
  let upstream;
  try {
    upstream = await broker(path, { method });
  } catch (err) {
    console.error(`broker unreachable: ${err?.name || 'Error'}`);
    return sendJson(res, 502, { error: 'broker_unreachable' });
  }
  let body;
  try {
    body = await upstream.json();
  } catch {
    return sendJson(res, 502, { error: 'broker_bad_response', broker_status: upstream.status });
  }
  if (upstream.ok && body && typeof body === 'object') return sendJson(res, 200, pick(body));
  if (upstream.ok) return sendJson(res, 502, { error: 'broker_bad_response' });
  const status = upstream.status === 404 || upstream.status === 409 ? upstream.status : 502;
  if (status === 502) console.error(`broker ${method} connection route -> ${upstream.status}`);
  return sendJson(res, status, { error: errorCode(body), broker_status: upstream.status });
}

const flag = (v) => (typeof v === 'boolean' ? v : null);

// Explicit fields only, so nothing else the broker might add reaches the page.
const pickTest = (b) => ({
  ok: b.ok === true,
  status: Number.isInteger(b.status) ? b.status : null,
  latency_ms: Number.isFinite(b.latency_ms) ? b.latency_ms : null,
  checked_at: typeof b.checked_at === 'string' ? b.checked_at : null,
  error_code: typeof b.error_code === 'string' ? b.error_code : null,
  connection_status: typeof b.connection_status === 'string' ? b.connection_status : null,
});
const pickDelete = (b) => ({
  id: typeof b.id === 'string' ? b.id : null,
  deleted: b.deleted === true,
  revoked: { refresh_token: flag(b.revoked?.refresh_token), access_token: flag(b.revoked?.access_token) },
});
// The connection record holds no secret material (see README); passed through.
const pickRecord = (b) => b;

async function serveStatic(res, entry) {
  const data = await readFile(join(STATIC_DIR, entry.file));
  res.writeHead(200, { 'Content-Type': entry.type, 'Content-Length': data.length });
  res.end(data);
}

const CONNECTION_PATH = /^\/api\/connections\/([^/]+)(\/test)?$/;
const CONNECTION_ID = /^conn_[a-z0-9]{1,64}$/;

function methodNotAllowed(res, allow) {
  res.setHeader('Allow', allow);
  return sendJson(res, 405, { error: 'method_not_allowed' });
}

async function handle(req, res) {
  securityHeaders(res);
  const { pathname } = new URL(req.url, ORIGIN);

  if (req.method === 'GET' && STATIC[pathname]) return serveStatic(res, STATIC[pathname]);

  if (pathname === '/api/config' && req.method === 'GET') {
    return sendJson(res, 200, {
      broker_url: BROKER_URL,
      broker_origin: brokerOrigin,
      integration: INTEGRATION,
      integrations: INTEGRATIONS,
      end_user_id: END_USER,
      app_origin: ORIGIN,
    });
  }
  if (pathname === '/api/connect-session') {
    if (req.method !== 'POST') return methodNotAllowed(res, 'POST');
    return createConnectSession(req, res);
  }
  const match = CONNECTION_PATH.exec(pathname);
  if (match) {
    const [, id, test] = match;
    if (!CONNECTION_ID.test(id)) return sendJson(res, 400, { error: 'invalid_connection_id' });
    const path = `/connections/${id}`;
    if (test) {
      if (req.method !== 'POST') return methodNotAllowed(res, 'POST');
      return proxyConnection(req, res, 'POST', `${path}/test`, pickTest);
    }
    if (req.method === 'GET') return proxyConnection(req, res, 'GET', path, pickRecord);
    if (req.method === 'DELETE') return proxyConnection(req, res, 'DELETE', path, pickDelete);
    return methodNotAllowed(res, 'GET, DELETE');
  }
  // The stand-in API-key provider: one good key, checked in constant time.
  if (pathname === '/api/whoami' && req.method === 'GET') {
    const got = Buffer.from(String(req.headers.authorization || ''));
    const want = Buffer.from(`Bearer ${FAKE_KEY}`);
    const ok = got.length === want.length && timingSafeEqual(got, want);
    return sendJson(res, ok ? 200 : 401, ok ? { account: 'demo-account' } : { error: 'invalid_api_key' });
  }
  // The stand-in basic-auth provider: one good pair, checked in constant time.
  if (pathname === '/api/basic/whoami' && req.method === 'GET') {
    const got = Buffer.from(String(req.headers.authorization || ''));
    const want = Buffer.from(`Basic ${FAKE_BASIC}`);
    const ok = got.length === want.length && timingSafeEqual(got, want);
    return sendJson(res, ok ? 200 : 401, ok ? { account: 'demo-user' } : { error: 'invalid_credentials' });
  }
  if (pathname === '/favicon.ico') {
    res.writeHead(204);
    return res.end();
  }
  return sendJson(res, 404, { error: 'not_found' });
}

const server = http.createServer((req, res) => {
  const started = Date.now();
  res.on('finish', () => {
    // Path only, never the query string.
    const path = (req.url || '/').split('?')[0];
    console.log(`${req.method} ${path} ${res.statusCode} ${Date.now() - started}ms`);
  });
  handle(req, res).catch((err) => {
    console.error(`demo app error: ${err?.name || 'Error'}`);
    if (!res.headersSent) sendJson(res, 500, { error: 'internal_error' });
    else res.destroy();
  });
});

server.on('error', (err) => {
  console.error(`demo app failed to listen: ${err.code || err.message}`);
  process.exit(1);
});

server.listen(PORT, '127.0.0.1', () => {
  console.log(`demo app on http://localhost:${PORT}/`);
});

let shuttingDown = false;
function shutdown() {
  if (shuttingDown) return;
  shuttingDown = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections?.();
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
