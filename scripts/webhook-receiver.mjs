// A webhook receiver for the end-to-end tests, verifying every delivery as a
// tenant's server would: with the official Standard Webhooks library
// (npm `standardwebhooks`), never with the broker's own code.
//
//   PUT  /__sinks/NAME  {"secrets": ["whsec_..."], "plan": [{"status": 500}, {"status": 429, "retry_after": "1"}],
//                        "otherwise": {"status": 503}}
//        Sets the secrets deliveries to NAME are checked with, the answers to
//        its next requests, and the answer after the plan (default 204).
//   POST /hooks/NAME    a delivery: verified with each secret, recorded, answered per plan.
//   GET  /__sinks/NAME  {"deliveries": [{id, timestamp, type, data, verified_with, answered, received_at_ms, headers, body}]}
//   POST /__verify      {"secret", "headers", "body", "now"?} -> {"ok", "error"?}: the library's
//                       verdict on a delivery, at `now` (unix seconds) if given, for replay tests.
//
// Listens on 127.0.0.1:$WEBHOOK_RECEIVER_PORT.

import http from 'node:http';
import { Webhook } from 'standardwebhooks';

const port = Number(process.env.WEBHOOK_RECEIVER_PORT || 9300);
const sinks = new Map();

function sink(name) {
  if (!sinks.has(name)) sinks.set(name, { secrets: [], plan: [], otherwise: { status: 204 }, deliveries: [] });
  return sinks.get(name);
}

function verify(secret, headers, body, now) {
  const realNow = Date.now;
  if (now !== undefined) Date.now = () => now * 1000;
  try {
    new Webhook(secret).verify(body, headers);
    return { ok: true };
  } catch (e) {
    return { ok: false, error: String(e.message || e) };
  } finally {
    Date.now = realNow;
  }
}

function json(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

const server = http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size <= 1 << 20) chunks.push(c);
  });
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url, 'http://receiver');
    const parts = url.pathname.split('/').filter(Boolean);
    try {
      if (parts[0] === '__sinks' && parts.length === 2 && req.method === 'PUT') {
        const s = sink(parts[1]);
        const cfg = JSON.parse(body || '{}');
        if (cfg.secrets) s.secrets = cfg.secrets;
        if (cfg.plan) s.plan = cfg.plan;
        if (cfg.otherwise) s.otherwise = cfg.otherwise;
        res.writeHead(204).end();
      } else if (parts[0] === '__sinks' && parts.length === 2 && req.method === 'GET') {
        json(res, 200, { deliveries: sink(parts[1]).deliveries });
      } else if (parts[0] === '__verify' && req.method === 'POST') {
        const v = JSON.parse(body);
        json(res, 200, verify(v.secret, v.headers, v.body, v.now));
      } else if (parts[0] === 'hooks' && parts.length === 2 && req.method === 'POST') {
        const s = sink(parts[1]);
        const headers = {
          'webhook-id': req.headers['webhook-id'],
          'webhook-timestamp': req.headers['webhook-timestamp'],
          'webhook-signature': req.headers['webhook-signature'],
        };
        const verifiedWith = s.secrets
          .map((secret, i) => (verify(secret, headers, body).ok ? i : -1))
          .filter((i) => i >= 0);
        const step = s.plan.shift() || s.otherwise;
        let parsed = {};
        try { parsed = JSON.parse(body); } catch { /* recorded as is */ }
        s.deliveries.push({
          id: headers['webhook-id'],
          timestamp: Number(headers['webhook-timestamp']),
          type: parsed.type,
          data: parsed.data,
          verified_with: verifiedWith,
          answered: step.status,
          received_at_ms: Date.now(),
          headers,
          body,
        });
        const out = {};
        if (step.retry_after) out['retry-after'] = step.retry_after;
        if (step.location) out.location = step.location;
        res.writeHead(step.status, out).end();
      } else {
        json(res, 404, { error: 'not_found' });
      }
    } catch (e) {
      json(res, 400, { error: String(e.message || e) });
    }
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`webhook receiver on http://127.0.0.1:${port}`);
});
