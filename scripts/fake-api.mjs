// A provider API for the proxy's end-to-end tests, served by the local
// oidc-provider under /api/ (the `demo` provider's api_base_url): it takes
// the access tokens that server issues, and nothing else.
//
//   ANY /api/echo[/...][?status=N]  what arrived: method, path, query,
//                                   headers (not Authorization), body (base64,
//                                   sha256), and whether the token was valid
//   GET /api/binary?bytes=N         N bytes of a fixed binary pattern
//   GET /api/big?bytes=N            N bytes of text
//   ANY /api/script/KEY[/...]       the next step of KEY's script (the last
//                                   repeats): {status, headers, body, hang}
//   ANY /api/sticky-401/KEY         401 to the first token it sees for KEY,
//                                   200 to any other
//   PUT /__test/api-script/KEY      sets KEY's script (a JSON array of steps)
//   GET /__test/api-calls/KEY       calls seen for KEY: count, and each one's
//                                   method, headers, time (ms) and a hash of its token
//
// No token is logged or answered: calls are recorded by a hash prefix.

import * as crypto from 'node:crypto';

const MAX_BODY = 8 * 1024 * 1024;
const KEY = /^[A-Za-z0-9_-]{1,80}$/;

function send(res, status, body, headers = {}) {
  const data = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(data);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error('too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function hashOf(token) {
  return token ? crypto.createHash('sha256').update(token).digest('hex').slice(0, 12) : null;
}

function headersOf(req) {
  const out = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (k !== 'authorization') out[k] = v;
  }
  return out;
}

// isValid(token) -> Promise<boolean>: whether the authorization server issued it.
export function fakeApi(isValid) {
  const scripts = new Map(); // key -> { steps, next }
  const calls = new Map(); // key -> [{ method, headers, token }]
  const sticky = new Map(); // key -> first token hash

  const record = (key, req, token) => {
    const list = calls.get(key) ?? [];
    list.push({ method: req.method, headers: headersOf(req), token: hashOf(token), at_ms: Date.now() });
    calls.set(key, list);
  };

  return async function handle(req, res) {
    const url = new URL(req.url, 'http://fake-api');
    const path = url.pathname;
    if (path.startsWith('/__test/api-script/') || path.startsWith('/__test/api-calls/')) {
      const key = path.split('/')[3] ?? '';
      if (!KEY.test(key)) return send(res, 400, { error: 'bad key' });
      if (req.method === 'PUT' && path.startsWith('/__test/api-script/')) {
        const steps = JSON.parse((await readBody(req)).toString('utf8'));
        if (!Array.isArray(steps) || steps.length === 0) return send(res, 400, { error: 'steps' });
        scripts.set(key, { steps, next: 0 });
        calls.delete(key);
        return send(res, 200, { key, steps: steps.length });
      }
      if (req.method === 'GET' && path.startsWith('/__test/api-calls/')) {
        const list = calls.get(key) ?? [];
        return send(res, 200, { key, count: list.length, calls: list });
      }
      return send(res, 405, { error: 'method' });
    }

    let body;
    try {
      body = await readBody(req);
    } catch {
      return send(res, 413, { error: 'too large' });
    }
    const auth = req.headers.authorization ?? '';
    const token = /^Bearer (.+)$/.exec(auth)?.[1] ?? null;
    const valid = token !== null && (await isValid(token));
    const segments = path.split('/').filter(Boolean); // ['api', ...]

    if (segments[1] === 'sticky-401' && KEY.test(segments[2] ?? '')) {
      const key = segments[2];
      record(key, req, token);
      if (!valid) return send(res, 401, { error: 'invalid_token' });
      const first = sticky.get(key);
      if (first === undefined) sticky.set(key, hashOf(token));
      if (first === undefined || first === hashOf(token)) {
        return send(res, 401, { error: 'token_revoked' }, { 'www-authenticate': 'Bearer error="invalid_token"' });
      }
      return send(res, 200, { ok: true });
    }
    if (!valid) return send(res, 401, { error: 'invalid_token' }, { 'www-authenticate': 'Bearer' });

    switch (segments[1]) {
      case 'echo': {
        const status = Number(url.searchParams.get('status') ?? 200);
        return send(res, Number.isInteger(status) && status >= 200 && status < 600 ? status : 200, {
          method: req.method,
          path,
          raw_url: req.url,
          query: Object.fromEntries(url.searchParams),
          headers: headersOf(req),
          token_valid: true,
          body_base64: body.toString('base64'),
          body_sha256: crypto.createHash('sha256').update(body).digest('hex'),
          length: body.length,
        });
      }
      case 'binary': {
        const n = Math.min(Number(url.searchParams.get('bytes') ?? 256), MAX_BODY);
        const out = Buffer.alloc(n);
        for (let i = 0; i < n; i += 1) out[i] = (i * 7 + 3) & 255;
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-sha256': crypto.createHash('sha256').update(out).digest('hex') });
        return res.end(out);
      }
      case 'big': {
        const n = Math.min(Number(url.searchParams.get('bytes') ?? 1024), MAX_BODY);
        res.writeHead(200, { 'content-type': 'text/plain' });
        return res.end(Buffer.alloc(n, 'a'));
      }
      case 'script': {
        const key = segments[2] ?? '';
        const script = scripts.get(key);
        if (!KEY.test(key) || !script) return send(res, 404, { error: 'no script' });
        record(key, req, token);
        const step = script.steps[Math.min(script.next, script.steps.length - 1)];
        script.next += 1;
        if (step.hang) return undefined; // never answers
        const headers = { ...(step.headers ?? {}) };
        return send(res, step.status ?? 200, step.body ?? { step: script.next }, headers);
      }
      default:
        return send(res, 404, { error: 'not found' });
    }
  };
}
