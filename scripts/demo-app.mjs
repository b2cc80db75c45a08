#!/usr/bin/env node
// A tiny stand-in for "the customer's app": a page with a Connect button that
// opens the broker's popup, and a backend that mints connect sessions with the
// tenant's API key (which never reaches the browser).
//
// Env:
//   DEMO_PORT         listen port on 127.0.0.1 (default 9200)
//   BROKER_URL        broker base URL (default http://localhost:9000)
//   BROKER_API_KEY    the tenant's backend API key (required for /api/*)
//   DEMO_INTEGRATION  integration id to connect (default "demo")
//   DEMO_END_USER     end user id (default "user-123")
//
// Logs method + path + status only; never the session token or the API key.

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
  console.error('warning: BROKER_API_KEY is not set; /api/connect-session will fail');
}

const PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const STATIC = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

function securityHeaders(res) {
  res.setHeader('Content-Security-Policy', PAGE_CSP);
  res.setHeader('Referrer-Policy', 'no-referrer');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Cache-Control', 'no-store');
}

function sendJson(res, status, body) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length });
  res.end(data);
}

// Same-origin check for the state-changing API route (the page always sends Origin on POST).
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

async function createConnectSession(req, res) {
  if (!sameOrigin(req)) return sendJson(res, 403, { error: 'cross_origin_request' });
  if (!BROKER_API_KEY) return sendJson(res, 500, { error: 'demo_not_configured' });
  req.resume(); // the body carries nothing we need
  let upstream;
  try {
    upstream = await broker('/connect-sessions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ end_user_id: END_USER, integrations: [INTEGRATION], origin: ORIGIN }),
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

async function getConnection(res, id) {
  if (!BROKER_API_KEY) return sendJson(res, 500, { error: 'demo_not_configured' });
  let upstream;
  try {
    upstream = await broker(`/connections/${encodeURIComponent(id)}`);
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
  return sendJson(res, upstream.ok ? 200 : upstream.status === 404 ? 404 : 502, body);
}

async function serveStatic(res, entry) {
  const data = await readFile(join(STATIC_DIR, entry.file));
  res.writeHead(200, { 'Content-Type': entry.type, 'Content-Length': data.length });
  res.end(data);
}

const CONNECTION_PATH = /^\/api\/connections\/([A-Za-z0-9_-]{1,128})$/;

async function handle(req, res) {
  securityHeaders(res);
  const { pathname } = new URL(req.url, ORIGIN);

  if (req.method === 'GET' && STATIC[pathname]) return serveStatic(res, STATIC[pathname]);

  if (pathname === '/api/config' && req.method === 'GET') {
    return sendJson(res, 200, {
      broker_url: BROKER_URL,
      broker_origin: brokerOrigin,
      integration: INTEGRATION,
      end_user_id: END_USER,
      app_origin: ORIGIN,
    });
  }
  if (pathname === '/api/connect-session') {
    if (req.method !== 'POST') {
      res.setHeader('Allow', 'POST');
      return sendJson(res, 405, { error: 'method_not_allowed' });
    }
    return createConnectSession(req, res);
  }
  const match = CONNECTION_PATH.exec(pathname);
  if (match) {
    if (req.method !== 'GET') {
      res.setHeader('Allow', 'GET');
      return sendJson(res, 405, { error: 'method_not_allowed' });
    }
    return getConnection(res, match[1]);
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
