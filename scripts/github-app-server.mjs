// A local stand-in for GitHub's App API, for the broker's GitHub App
// installations mode (issue 23) and its tests. It implements the documented
// endpoints as GitHub documents them and checks an app's JWT with the app's
// public key as GitHub does (RS256 only; `iat` must not be in the future,
// `exp` must be in the future and "no more than 10 minutes into the future").
// One base URL is both the "API" and the "web" host.
//
// GitHub API (as documented at docs.github.com):
//   GET    /app                                      JWT: the authenticated app
//   GET    /app/installations                        JWT: the app's installations
//   GET    /app/installations/{id}                   JWT: one installation (404 if not this app's)
//   DELETE /app/installations/{id}                   JWT: uninstall (204, `installation.deleted` webhook)
//   POST   /app/installations/{id}/access_tokens     JWT: 201 {token: "ghs_...", expires_at, permissions,
//                                                    repository_selection[, repositories]}; 403 suspended;
//                                                    404 unknown or another app's; 422 more than granted
//   PUT    /app/installations/{id}/suspended         JWT: suspend (204, `installation.suspend` webhook)
//   DELETE /app/installations/{id}/suspended         JWT: unsuspend (204, `installation.unsuspend` webhook)
//   GET    /installation/repositories                installation token (`token ghs_...` or `Bearer ghs_...`)
//   DELETE /installation/token                       installation token: revokes it (204)
//   POST   /login/oauth/access_token                 code (or refresh_token) -> user token `ghu_...`;
//                                                    form-encoded, JSON or XML per Accept; errors are
//                                                    HTTP 200 with `error`, `error_description`, `error_uri`
//   GET    /user                                     user token: the user
//   GET    /user/installations                       user token: {total_count, installations} this app's
//                                                    installations the user can access
//   GET    /apps/{slug}/installations/new?state=S&as=LOGIN   the install page (signed in as LOGIN)
//   POST   /apps/{slug}/installations/new            "Install": creates the installation and redirects to
//                                                    the setup URL with installation_id, setup_action=install,
//                                                    state; with request_oauth_on_install, to the first
//                                                    callback URL (the setup URL if none) with a `code` too
//
// Test administration (JSON):
//   POST   /__admin/apps            {app_id, slug, client_id, client_secret, public_key (SPKI PEM) or
//                                    public_keys [..], webhook_secret?, webhook_url?, setup_url?,
//                                    callback_urls? (or callback_url), request_oauth_on_install?, name?,
//                                    owner?, permissions?, events?, token_ttl? (s, default 3600),
//                                    user_token_ttl? (s, default 28800)} -> 201
//   POST   /__admin/users           {login, id} -> 201
//   POST   /__admin/installations   {app_id, installation_id, account: {login, id, type}, users: [logins],
//                                    repository_selection?, permissions?, repositories?, events?} -> 201
//   POST   /__admin/codes           {client_id, login, state?, redirect_uri?} -> 201 {code} (one use, 10 min)
//   POST   /__admin/installations/{id}/suspend | unsuspend, DELETE /__admin/installations/{id}
//                                   -> 200 {installation_id, state, delivery}: the signed webhook, when the
//                                    app has a webhook_url (X-GitHub-Event: installation,
//                                    X-GitHub-Delivery: uuid, X-Hub-Signature-256: sha256=<hex hmac>)
//   POST   /__admin/faults          {path_prefix, status, count, method?, retry_after?} -> 201: the next
//                                    `count` matching API requests answer `status` (5xx, 429, 403 ...)
//   GET    /__admin/stats           counts: access_tokens per installation, refusals by reason ...
//   GET    /__admin/deliveries      the webhook deliveries made (no payload secrets: there are none)
//   POST   /__admin/reset           forgets everything
//   POST   /__admin/clock           {offset}: the stand-in's clock is real time + offset seconds
//
// Listens on 127.0.0.1:$GITHUB_APP_PORT (default 9160; 0 picks a free port) and prints
// "github-app-server listening on http://127.0.0.1:PORT". It logs method, path (no query),
// status: never a token, a JWT, a code, a secret or a key.

import crypto from 'node:crypto';
import http from 'node:http';
import { pathToFileURL } from 'node:url';

const MAX_BODY = 1 << 20;
const DOCS = 'https://docs.github.com/rest';
const DOC_CREATE_TOKEN = 'https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app';
const DOC_SUSPENDED = 'https://docs.github.com/rest/reference/apps#create-an-installation-access-token-for-an-app';
const DOC_GET_INSTALLATION = 'https://docs.github.com/rest/apps/apps#get-an-installation-for-the-authenticated-app';
const DOC_USER_INSTALLATIONS = 'https://docs.github.com/rest/apps/installations#list-app-installations-accessible-to-the-user-access-token';
const DOC_OAUTH_ERRORS = '/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors';
// "The time must be no more than 10 minutes into the future."
// https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app
const JWT_MAX_FUTURE_S = 600;
const CODE_TTL_S = 600;
const REFRESH_TTL_S = 15811200; // 6 months, as documented for `refresh_token_expires_in`

// GitHub's messages for refused app JWTs, as its API answers them (401).
const JWT_UNDECODABLE = 'A JSON web token could not be decoded';
const JWT_IAT = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
const JWT_EXP = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
const JWT_EXP_FAR = "'Expiration time' claim ('exp') is too far in the future";

// The stand-in's clock: real time plus an offset a test sets
// (POST /__admin/clock), so no test waits for a lifetime to pass.
let clockOffset = 0;
const now = () => Math.floor(Date.now() / 1000) + clockOffset;
const iso = (s) => new Date(s * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
function randomToken(prefix, n = 36) {
  const bytes = crypto.randomBytes(n);
  let out = prefix;
  for (let i = 0; i < n; i += 1) out += ALNUM[bytes[i] % ALNUM.length];
  return out;
}
const nodeId = (kind, id) => Buffer.from(`0${kind}${id}`).toString('base64');

class Refusal extends Error {
  constructor(status, message, documentationUrl = DOCS, headers = {}) {
    super(message);
    this.status = status;
    this.documentationUrl = documentationUrl;
    this.headers = headers;
  }
}

function githubError(status, message, documentationUrl = DOCS) {
  return { message, documentation_url: documentationUrl, status: String(status) };
}

function b64urlJson(part) {
  if (!/^[A-Za-z0-9_-]+$/.test(part)) throw new Error('not base64url');
  const value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error('not an object');
  return value;
}

export function createGitHubAppServer({ log = (line) => process.stdout.write(`${line}\n`) } = {}) {
  let state;
  const reset = () => {
    state = {
      apps: new Map(), // app_id -> app
      users: new Map(), // login -> {login, id}
      installations: new Map(), // id -> installation (deleted ones are removed)
      installationTokens: new Map(), // token -> {installation_id, app_id, expires_at, revoked, permissions, repository_ids}
      userTokens: new Map(), // token -> {login, app_id, expires_at}
      refreshTokens: new Map(), // token -> {login, app_id, access_token, expires_at}
      codes: new Map(), // code -> {app_id, login, redirect_uri, expires_at}
      faults: [],
      deliveries: [],
      nextInstallationId: 70000001,
      nextRepoId: 90000001,
      stats: {
        access_tokens: {}, // installation id -> tokens minted
        access_token_requests: {}, // installation id -> requests (minted or refused)
        access_token_refusals: {}, // reason -> count
        jwt_refusals: 0,
        jwt_refusal_reasons: {}, // reason -> count
        jwt_accepted: 0,
        oauth_exchanges: 0,
        oauth_errors: {}, // error -> count
        user_installations_requests: 0,
        installation_token_uses: 0,
        bad_credentials: 0,
        faults_served: 0,
        webhooks_delivered: 0,
      },
    };
  };
  reset();

  const bump = (obj, key) => {
    obj[key] = (obj[key] ?? 0) + 1;
  };

  // ---- views (shapes as in GitHub's REST reference) ----

  const userView = (u, type = 'User') => ({
    login: u.login,
    id: u.id,
    node_id: nodeId(type === 'Organization' ? 'Organization' : 'User', u.id),
    avatar_url: `https://avatars.githubusercontent.com/u/${u.id}?v=4`,
    gravatar_id: '',
    url: `${baseUrl()}/users/${u.login}`,
    html_url: `${baseUrl()}/${u.login}`,
    type,
    site_admin: false,
  });

  const appView = (app) => ({
    id: app.app_id,
    slug: app.slug,
    client_id: app.client_id,
    node_id: nodeId('Integration', app.app_id),
    owner: userView(app.owner, app.owner.type ?? 'User'),
    name: app.name,
    description: app.description ?? '',
    external_url: app.external_url ?? `${baseUrl()}/`,
    html_url: `${baseUrl()}/apps/${app.slug}`,
    created_at: app.created_at,
    updated_at: app.created_at,
    permissions: app.permissions,
    events: app.events,
    installations_count: [...state.installations.values()].filter((i) => i.app_id === app.app_id).length,
  });

  const installationView = (inst) => {
    const app = state.apps.get(inst.app_id);
    return {
      id: inst.id,
      client_id: app?.client_id,
      account: userView(inst.account, inst.account.type),
      repository_selection: inst.repository_selection,
      access_tokens_url: `${baseUrl()}/app/installations/${inst.id}/access_tokens`,
      repositories_url: `${baseUrl()}/installation/repositories`,
      html_url: inst.account.type === 'Organization'
        ? `${baseUrl()}/organizations/${inst.account.login}/settings/installations/${inst.id}`
        : `${baseUrl()}/settings/installations/${inst.id}`,
      app_id: inst.app_id,
      app_slug: app?.slug,
      target_id: inst.account.id,
      target_type: inst.account.type,
      permissions: inst.permissions,
      events: inst.events,
      created_at: inst.created_at,
      updated_at: inst.updated_at,
      single_file_name: null,
      has_multiple_single_files: false,
      single_file_paths: [],
      suspended_by: inst.suspended_by ? userView(inst.suspended_by) : null,
      suspended_at: inst.suspended_at,
    };
  };

  const repoView = (inst, r) => ({
    id: r.id,
    node_id: nodeId('Repository', r.id),
    name: r.name,
    full_name: `${inst.account.login}/${r.name}`,
    private: r.private ?? true,
    owner: userView(inst.account, inst.account.type),
    html_url: `${baseUrl()}/${inst.account.login}/${r.name}`,
    url: `${baseUrl()}/repos/${inst.account.login}/${r.name}`,
  });

  let listeningUrl = 'http://127.0.0.1';
  const baseUrl = () => listeningUrl;

  // ---- authentication ----

  function refuseJwt(reason, status, message) {
    state.stats.jwt_refusals += 1;
    bump(state.stats.jwt_refusal_reasons, reason);
    return new Refusal(status, message);
  }

  // The app a request's JWT authenticates, as GitHub checks it.
  function appFromJwt(req) {
    const authz = req.headers.authorization;
    if (!authz) throw refuseJwt('missing', 401, 'Requires authentication');
    // "if you are passing a JSON web token (JWT), you must use Authorization: Bearer"
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authz);
    if (!m) throw refuseJwt('not_bearer', 401, JWT_UNDECODABLE);
    const parts = m[1].split('.');
    if (parts.length !== 3) throw refuseJwt('malformed', 401, JWT_UNDECODABLE);
    let header;
    let claims;
    try {
      header = b64urlJson(parts[0]);
      claims = b64urlJson(parts[1]);
    } catch {
      throw refuseJwt('malformed', 401, JWT_UNDECODABLE);
    }
    // "Your JWT must be signed using the RS256 algorithm"
    if (header.alg !== 'RS256') throw refuseJwt('alg', 401, JWT_UNDECODABLE);
    // `iss`: "The client ID or application ID of your GitHub App. This value is
    // used to find the right public key to verify the signature of the JWT."
    const iss = claims.iss;
    let app;
    if (typeof iss === 'number' || (typeof iss === 'string' && /^\d+$/.test(iss))) {
      app = state.apps.get(Number(iss));
    } else if (typeof iss === 'string') {
      app = [...state.apps.values()].find((a) => a.client_id === iss);
    }
    if (!app) throw refuseJwt('unknown_iss', 404, 'Integration not found');
    let signature;
    try {
      signature = Buffer.from(parts[2], 'base64url');
    } catch {
      throw refuseJwt('malformed', 401, JWT_UNDECODABLE);
    }
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`, 'ascii');
    const good = app.public_keys.some((key) => {
      try {
        return crypto.verify('RSA-SHA256', signed, key, signature);
      } catch {
        return false;
      }
    });
    if (!good) throw refuseJwt('signature', 401, JWT_UNDECODABLE);
    const t = now();
    if (!Number.isInteger(claims.iat) || claims.iat > t) throw refuseJwt('iat', 401, JWT_IAT);
    if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp) || claims.exp <= t) {
      throw refuseJwt('exp', 401, JWT_EXP);
    }
    if (claims.exp > t + JWT_MAX_FUTURE_S) throw refuseJwt('exp_too_far', 401, JWT_EXP_FAR);
    state.stats.jwt_accepted += 1;
    return app;
  }

  function bearerOrToken(req) {
    const authz = req.headers.authorization;
    if (!authz) return null;
    const m = /^(?:Bearer|token)\s+(\S+)\s*$/i.exec(authz);
    return m ? m[1] : '';
  }

  function badCredentials() {
    state.stats.bad_credentials += 1;
    return new Refusal(401, 'Bad credentials');
  }

  function installationFromToken(req) {
    const token = bearerOrToken(req);
    if (token === null) throw new Refusal(401, 'Requires authentication');
    const rec = state.installationTokens.get(token);
    if (!rec) {
      if (state.userTokens.has(token)) {
        throw new Refusal(403, 'You must authenticate as an installation to access this endpoint.');
      }
      throw badCredentials();
    }
    if (rec.revoked || rec.expires_at <= now()) throw badCredentials();
    const inst = state.installations.get(rec.installation_id);
    if (!inst) throw badCredentials();
    if (inst.suspended_at) throw new Refusal(403, 'This installation has been suspended');
    state.stats.installation_token_uses += 1;
    return { inst, rec, token };
  }

  function userFromToken(req) {
    const token = bearerOrToken(req);
    if (token === null) throw new Refusal(401, 'Requires authentication');
    const rec = state.userTokens.get(token);
    if (!rec) {
      if (state.installationTokens.has(token)) {
        throw new Refusal(403, 'You must authenticate with an access token authorized to a GitHub App in order to list installations', DOC_USER_INSTALLATIONS);
      }
      throw badCredentials();
    }
    if (rec.revoked || rec.expires_at <= now()) throw badCredentials();
    return rec;
  }

  // ---- webhooks ----

  async function deliver(app, action, inst, sender) {
    if (!app.webhook_url) return null;
    const payload = {
      action,
      installation: installationView(inst),
      sender: userView(sender, sender.type ?? 'User'),
    };
    if (action === 'created' || action === 'deleted') {
      payload.repositories = inst.repositories.map((r) => ({
        id: r.id,
        node_id: nodeId('Repository', r.id),
        name: r.name,
        full_name: `${inst.account.login}/${r.name}`,
        private: r.private ?? true,
      }));
      payload.requester = null;
    }
    const body = JSON.stringify(payload);
    const guid = crypto.randomUUID();
    const headers = {
      'content-type': 'application/json',
      'user-agent': 'GitHub-Hookshot/stand-in',
      'x-github-event': 'installation',
      'x-github-delivery': guid,
      'x-github-hook-id': String(app.hook_id),
      'x-github-hook-installation-target-type': 'integration',
      'x-github-hook-installation-target-id': String(app.app_id),
    };
    if (app.webhook_secret) {
      headers['x-hub-signature'] = `sha1=${crypto.createHmac('sha1', app.webhook_secret).update(body).digest('hex')}`;
      headers['x-hub-signature-256'] = `sha256=${crypto.createHmac('sha256', app.webhook_secret).update(body).digest('hex')}`;
    }
    const record = { guid, event: 'installation', action, installation_id: inst.id, app_id: app.app_id, at: iso(now()) };
    try {
      const res = await fetch(app.webhook_url, { method: 'POST', headers, body, signal: AbortSignal.timeout(10_000) });
      await res.arrayBuffer().catch(() => undefined);
      record.status_code = res.status;
    } catch (e) {
      record.status_code = null;
      record.error = String(e?.cause?.code || e?.name || 'error');
    }
    state.deliveries.push(record);
    state.stats.webhooks_delivered += 1;
    return record;
  }

  // ---- installations ----

  function addInstallation(app, body, account) {
    const id = body.installation_id !== undefined ? Number(body.installation_id) : state.nextInstallationId++;
    if (!Number.isSafeInteger(id) || id <= 0) throw new Refusal(422, 'installation_id must be a positive integer');
    const t = iso(now());
    const repositories = (body.repositories ?? [{ name: `${account.login}-repo` }]).map((r) => ({
      id: r.id ?? state.nextRepoId++,
      name: r.name,
      private: r.private ?? true,
    }));
    const inst = {
      id,
      app_id: app.app_id,
      account: { login: account.login, id: Number(account.id), type: account.type ?? 'User' },
      users: [...new Set(body.users ?? [account.login])],
      repository_selection: body.repository_selection ?? 'all',
      permissions: body.permissions ?? app.permissions,
      events: body.events ?? app.events,
      repositories,
      created_at: t,
      updated_at: t,
      suspended_at: null,
      suspended_by: null,
    };
    state.installations.set(id, inst);
    return inst;
  }

  function setSuspended(inst, suspended, by) {
    inst.suspended_at = suspended ? iso(now()) : null;
    inst.suspended_by = suspended ? by : null;
    inst.updated_at = iso(now());
  }

  function removeInstallation(inst) {
    state.installations.delete(inst.id);
    // Tokens of an uninstalled installation stop working.
    for (const rec of state.installationTokens.values()) {
      if (rec.installation_id === inst.id) rec.revoked = true;
    }
  }

  function appInstallation(app, idText) {
    const id = Number(idText);
    const inst = Number.isSafeInteger(id) ? state.installations.get(id) : undefined;
    // Another app's installation is as unknown as a missing one.
    if (!inst || inst.app_id !== app.app_id) throw new Refusal(404, 'Not Found', DOC_GET_INSTALLATION);
    return inst;
  }

  function mintInstallationToken(app, inst, body) {
    const key = String(inst.id);
    bump(state.stats.access_token_requests, key);
    const refuse = (reason, status, message, doc = DOC_CREATE_TOKEN) => {
      bump(state.stats.access_token_refusals, reason);
      return new Refusal(status, message, doc);
    };
    if (inst.suspended_at) throw refuse('suspended', 403, 'This installation has been suspended', DOC_SUSPENDED);
    let permissions = { ...inst.permissions };
    if (body.permissions !== undefined) {
      if (!body.permissions || typeof body.permissions !== 'object' || Array.isArray(body.permissions)) {
        throw refuse('invalid', 422, 'Invalid request.\n\nFor \'properties/permissions\', is not an object.');
      }
      const rank = { read: 1, write: 2, admin: 3 };
      permissions = {};
      for (const [name, level] of Object.entries(body.permissions)) {
        const granted = inst.permissions[name];
        if (!rank[level] || !granted || rank[level] > rank[granted]) {
          throw refuse('permissions', 422, 'The permissions requested are not granted to this installation.');
        }
        permissions[name] = level;
      }
    }
    let repositories;
    if (body.repositories !== undefined || body.repository_ids !== undefined) {
      const names = body.repositories ?? [];
      const ids = body.repository_ids ?? [];
      if (!Array.isArray(names) || !Array.isArray(ids) || names.length + ids.length > 500) {
        throw refuse('invalid', 422, 'Invalid request.\n\nNo more than 500 repositories may be listed.');
      }
      repositories = [];
      for (const n of names) {
        const r = inst.repositories.find((x) => x.name === n || `${inst.account.login}/${x.name}` === n);
        if (!r) throw refuse('repositories', 422, 'There is at least one repository that does not exist or is not accessible to the parent installation.');
        repositories.push(r);
      }
      for (const i of ids) {
        const r = inst.repositories.find((x) => x.id === Number(i));
        if (!r) throw refuse('repositories', 422, 'There is at least one repository that does not exist or is not accessible to the parent installation.');
        repositories.push(r);
      }
      repositories = [...new Map(repositories.map((r) => [r.id, r])).values()];
    }
    const token = randomToken('ghs_');
    const expiresAt = now() + app.token_ttl;
    state.installationTokens.set(token, {
      installation_id: inst.id,
      app_id: app.app_id,
      expires_at: expiresAt,
      revoked: false,
      permissions,
      repository_ids: repositories ? repositories.map((r) => r.id) : null,
    });
    bump(state.stats.access_tokens, key);
    const out = {
      token,
      expires_at: iso(expiresAt),
      permissions,
      repository_selection: repositories ? 'selected' : inst.repository_selection,
    };
    if (repositories) out.repositories = repositories.map((r) => repoView(inst, r));
    return out;
  }

  // ---- OAuth (user access tokens) ----

  function issueUserToken(app, login) {
    const token = randomToken('ghu_');
    const refresh = randomToken('ghr_', 76);
    const t = now();
    state.userTokens.set(token, { login, app_id: app.app_id, expires_at: t + app.user_token_ttl, revoked: false });
    state.refreshTokens.set(refresh, { login, app_id: app.app_id, access_token: token, expires_at: t + REFRESH_TTL_S });
    return {
      access_token: token,
      expires_in: app.user_token_ttl,
      refresh_token: refresh,
      refresh_token_expires_in: REFRESH_TTL_S,
      scope: '',
      token_type: 'bearer',
    };
  }

  const OAUTH_ERRORS = {
    incorrect_client_credentials: ['The client_id and/or client_secret passed are incorrect.', `${DOC_OAUTH_ERRORS}/#incorrect-client-credentials`],
    redirect_uri_mismatch: ['The redirect_uri MUST match the registered callback URL for this application.', '/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/#redirect-uri-mismatch2'],
    bad_verification_code: ['The code passed is incorrect or expired.', `${DOC_OAUTH_ERRORS}/#bad-verification-code`],
    bad_refresh_token: ['The refresh token passed is incorrect or expired.', `${DOC_OAUTH_ERRORS}`],
    unsupported_grant_type: ['The grant type is not supported.', `${DOC_OAUTH_ERRORS}`],
  };

  function oauthExchange(params) {
    const fail = (error) => {
      bump(state.stats.oauth_errors, error);
      const [description, uri] = OAUTH_ERRORS[error];
      return { error, error_description: description, error_uri: `https://docs.github.com${uri}` };
    };
    const app = [...state.apps.values()].find((a) => a.client_id === params.client_id);
    if (!app || typeof params.client_secret !== 'string' || !app.client_secrets.some((s) => timingSafeEqualText(s, params.client_secret))) {
      return fail('incorrect_client_credentials');
    }
    const grant = params.grant_type ?? 'authorization_code';
    if (grant === 'refresh_token') {
      const rec = state.refreshTokens.get(params.refresh_token ?? '');
      if (!rec || rec.app_id !== app.app_id || rec.expires_at <= now()) return fail('bad_refresh_token');
      // "Once you use a refresh token, that refresh token and the old user access token will no longer work."
      state.refreshTokens.delete(params.refresh_token);
      const old = state.userTokens.get(rec.access_token);
      if (old) old.revoked = true;
      state.stats.oauth_exchanges += 1;
      return issueUserToken(app, rec.login);
    }
    if (grant !== 'authorization_code') return fail('unsupported_grant_type');
    const code = state.codes.get(params.code ?? '');
    if (!code || code.app_id !== app.app_id || code.expires_at <= now()) {
      if (code && code.app_id === app.app_id) state.codes.delete(params.code);
      return fail('bad_verification_code');
    }
    if (params.redirect_uri !== undefined && params.redirect_uri !== '') {
      const allowed = code.redirect_uri ? [code.redirect_uri] : app.callback_urls;
      if (allowed.length > 0 && !allowed.includes(params.redirect_uri)) return fail('redirect_uri_mismatch');
    }
    state.codes.delete(params.code); // one use
    state.stats.oauth_exchanges += 1;
    return issueUserToken(app, code.login);
  }

  function issueCode(app, login, redirectUri) {
    const code = randomToken('', 20).toLowerCase();
    state.codes.set(code, { app_id: app.app_id, login, redirect_uri: redirectUri ?? null, expires_at: now() + CODE_TTL_S });
    return code;
  }

  function sendOAuth(req, res, value) {
    const accept = String(req.headers.accept ?? '');
    if (/application\/json/i.test(accept)) return sendJson(res, 200, value);
    if (/application\/xml/i.test(accept)) {
      const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
      const xml = `<OAuth>${Object.entries(value).map(([k, v]) => `<${k}>${esc(v)}</${k}>`).join('')}</OAuth>`;
      res.writeHead(200, { 'content-type': 'application/xml; charset=utf-8', 'cache-control': 'no-store' });
      return res.end(xml);
    }
    res.writeHead(200, { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8', 'cache-control': 'no-store' });
    return res.end(new URLSearchParams(Object.entries(value).map(([k, v]) => [k, String(v)])).toString());
  }

  // ---- the install page ----

  const escHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

  function installPage(res, app, params) {
    const login = params.as;
    const user = login ? state.users.get(login) : undefined;
    if (!user) {
      res.writeHead(401, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(`<!doctype html><title>Sign in to GitHub</title><h1>Sign in to GitHub</h1>`
        + `<p>Sign in to install ${escHtml(app.name)} (add <code>?as=LOGIN</code>).</p>`);
    }
    const hidden = ['state', 'as', 'repository_selection']
      .filter((k) => params[k] !== undefined)
      .map((k) => `<input type="hidden" name="${k}" value="${escHtml(params[k])}">`).join('');
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    return res.end(`<!doctype html><meta charset="utf-8"><title>Install ${escHtml(app.name)}</title>`
      + `<h1>Install ${escHtml(app.name)}</h1><p>Signed in as <b>${escHtml(user.login)}</b>.</p>`
      + `<form method="post" action="/apps/${encodeURIComponent(app.slug)}/installations/new">${hidden}`
      + `<button type="submit" id="install">Install</button></form>`);
  }

  async function install(res, app, params) {
    const user = params.as ? state.users.get(params.as) : undefined;
    if (!user) throw new Refusal(401, 'Requires authentication');
    const inst = addInstallation(app, { repository_selection: params.repository_selection }, { ...user, type: 'User' });
    await deliver(app, 'created', inst, user);
    const query = new URLSearchParams();
    let target = app.setup_url;
    if (app.request_oauth_on_install) {
      // "If you select Request user authorization (OAuth) during installation ...
      // GitHub will start the web application flow immediately after a user
      // installs your app" and redirects "to the first callback URL in your app
      // settings, and provide a code query parameter".
      target = app.callback_urls[0] ?? app.setup_url;
      query.set('code', issueCode(app, user.login, app.callback_urls[0]));
    }
    query.set('installation_id', String(inst.id));
    query.set('setup_action', 'install');
    if (params.state !== undefined) query.set('state', params.state);
    if (!target) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(`<!doctype html><title>Installed</title><p>Installed ${escHtml(app.name)} (installation ${inst.id}).</p>`);
    }
    const location = new URL(target);
    for (const [k, v] of query) location.searchParams.set(k, v);
    res.writeHead(302, { location: location.toString(), 'content-type': 'text/html; charset=utf-8' });
    return res.end('');
  }

  // ---- admin ----

  function registerApp(body) {
    const appId = Number(body.app_id);
    if (!Number.isSafeInteger(appId) || appId <= 0) throw new Refusal(422, 'app_id must be a positive integer');
    if (typeof body.slug !== 'string' || !/^[a-z0-9][a-z0-9-]*$/.test(body.slug)) throw new Refusal(422, 'slug must be a slug');
    if (typeof body.client_id !== 'string' || !body.client_id) throw new Refusal(422, 'client_id is required');
    const pems = body.public_keys ?? (body.public_key ? [body.public_key] : []);
    if (!Array.isArray(pems) || pems.length === 0) throw new Refusal(422, 'public_key is required');
    const publicKeys = pems.map((pem) => {
      let key;
      try {
        key = crypto.createPublicKey(pem);
      } catch {
        throw new Refusal(422, 'public_key must be an SPKI PEM');
      }
      if (key.asymmetricKeyType !== 'rsa') throw new Refusal(422, 'public_key must be an RSA key');
      return key;
    });
    const secrets = body.client_secrets ?? (body.client_secret ? [body.client_secret] : []);
    const callbacks = body.callback_urls ?? (body.callback_url ? [body.callback_url] : []);
    for (const u of [...callbacks, body.setup_url, body.webhook_url].filter(Boolean)) {
      try {
        new URL(u);
      } catch {
        throw new Refusal(422, `not a URL: ${String(u).slice(0, 100)}`);
      }
    }
    const existing = state.apps.get(appId);
    const app = {
      app_id: appId,
      slug: body.slug,
      name: body.name ?? body.slug,
      description: body.description,
      client_id: body.client_id,
      client_secrets: secrets.map(String),
      public_keys: publicKeys,
      webhook_secret: body.webhook_secret ?? null,
      webhook_url: body.webhook_url ?? null,
      setup_url: body.setup_url ?? null,
      callback_urls: callbacks,
      request_oauth_on_install: Boolean(body.request_oauth_on_install),
      owner: body.owner ?? { login: `${body.slug}-owner`, id: appId + 1000000, type: 'User' },
      permissions: body.permissions ?? { metadata: 'read', contents: 'read' },
      events: body.events ?? [],
      token_ttl: Number(body.token_ttl ?? 3600),
      user_token_ttl: Number(body.user_token_ttl ?? 28800),
      hook_id: existing?.hook_id ?? 400000000 + appId,
      created_at: existing?.created_at ?? iso(now()),
    };
    if (!(app.token_ttl > 0) || !(app.user_token_ttl > 0)) throw new Refusal(422, 'token_ttl and user_token_ttl must be positive');
    state.apps.set(appId, app);
    return { app_id: appId, slug: app.slug, client_id: app.client_id, public_keys: publicKeys.length };
  }

  async function admin(req, res, url, parts, body) {
    const m = req.method;
    const [, what, id, action] = parts; // ['__admin', what, id?, action?]
    if (m === 'POST' && what === 'reset' && !id) {
      reset();
      return sendJson(res, 200, { ok: true });
    }
    if (m === 'POST' && what === 'clock' && !id) {
      if (!Number.isSafeInteger(body.offset)) throw new Refusal(422, 'offset (seconds) is required');
      clockOffset = body.offset;
      return sendJson(res, 200, { offset: clockOffset });
    }
    if (m === 'POST' && what === 'apps' && !id) return sendJson(res, 201, registerApp(body));
    if (m === 'POST' && what === 'users' && !id) {
      if (typeof body.login !== 'string' || !body.login || !Number.isSafeInteger(Number(body.id))) {
        throw new Refusal(422, 'login and id are required');
      }
      const user = { login: body.login, id: Number(body.id) };
      state.users.set(user.login, user);
      return sendJson(res, 201, user);
    }
    if (m === 'POST' && what === 'codes' && !id) {
      const app = [...state.apps.values()].find((a) => a.client_id === body.client_id);
      if (!app) throw new Refusal(404, 'unknown client_id');
      if (!state.users.has(body.login)) throw new Refusal(404, 'unknown login');
      return sendJson(res, 201, { code: issueCode(app, body.login, body.redirect_uri), state: body.state ?? null });
    }
    if (m === 'POST' && what === 'installations' && !id) {
      const app = state.apps.get(Number(body.app_id));
      if (!app) throw new Refusal(404, 'unknown app_id');
      const account = body.account;
      if (!account || typeof account.login !== 'string' || !Number.isSafeInteger(Number(account.id))) {
        throw new Refusal(422, 'account {login, id, type} is required');
      }
      if (body.installation_id !== undefined && state.installations.has(Number(body.installation_id))) {
        throw new Refusal(422, 'installation_id already exists');
      }
      const inst = addInstallation(app, body, account);
      return sendJson(res, 201, installationView(inst));
    }
    if (what === 'installations' && id) {
      const inst = state.installations.get(Number(id));
      if (!inst) throw new Refusal(404, 'Not Found');
      const app = state.apps.get(inst.app_id);
      const sender = body.sender ?? app.owner;
      let webhookAction;
      if (m === 'POST' && action === 'suspend') {
        setSuspended(inst, true, sender);
        webhookAction = 'suspend';
      } else if (m === 'POST' && action === 'unsuspend') {
        setSuspended(inst, false);
        webhookAction = 'unsuspend';
      } else if (m === 'DELETE' && !action) {
        removeInstallation(inst);
        webhookAction = 'deleted';
      } else {
        throw new Refusal(404, 'Not Found');
      }
      const delivery = await deliver(app, webhookAction, inst, sender);
      return sendJson(res, 200, {
        installation_id: inst.id,
        state: webhookAction === 'deleted' ? 'deleted' : inst.suspended_at ? 'suspended' : 'active',
        delivery,
      });
    }
    if (m === 'POST' && what === 'faults' && !id) {
      const status = Number(body.status);
      const count = Number(body.count ?? 1);
      if (typeof body.path_prefix !== 'string' || !body.path_prefix.startsWith('/')) throw new Refusal(422, 'path_prefix must start with /');
      if (!Number.isInteger(status) || status < 400 || status > 599) throw new Refusal(422, 'status must be 4xx or 5xx');
      if (!Number.isInteger(count) || count < 1) throw new Refusal(422, 'count must be a positive integer');
      const fault = { path_prefix: body.path_prefix, status, remaining: count, method: body.method?.toUpperCase(), retry_after: body.retry_after };
      state.faults.push(fault);
      return sendJson(res, 201, { path_prefix: fault.path_prefix, status, count });
    }
    if (m === 'GET' && what === 'stats' && !id) {
      return sendJson(res, 200, { ...state.stats, faults_pending: state.faults.reduce((n, f) => n + f.remaining, 0) });
    }
    if (m === 'GET' && what === 'deliveries' && !id) return sendJson(res, 200, { deliveries: state.deliveries });
    throw new Refusal(404, 'Not Found');
  }

  // ---- faults ----

  function takeFault(method, path) {
    const f = state.faults.find((x) => x.remaining > 0 && path.startsWith(x.path_prefix) && (!x.method || x.method === method));
    if (!f) return null;
    f.remaining -= 1;
    state.faults = state.faults.filter((x) => x.remaining > 0);
    state.stats.faults_served += 1;
    return f;
  }

  function sendFault(res, f) {
    const headers = {};
    let message = 'Server Error';
    if (f.status === 429 || f.status === 403) {
      message = f.status === 429 ? 'API rate limit exceeded' : 'You have exceeded a secondary rate limit. Please wait a few minutes before you try again.';
      headers['retry-after'] = String(f.retry_after ?? 1);
      headers['x-ratelimit-remaining'] = '0';
      headers['x-ratelimit-reset'] = String(now() + Number(f.retry_after ?? 1));
    } else if (f.status === 503) {
      message = 'Service Unavailable';
    } else if (f.status === 502) {
      message = 'Bad Gateway';
    } else if (f.status < 500) {
      message = http.STATUS_CODES[f.status] ?? 'Error';
    }
    return sendJson(res, f.status, githubError(f.status, message), headers);
  }

  // ---- HTTP ----

  function sendJson(res, status, value, headers = {}) {
    const data = value === undefined ? '' : JSON.stringify(value);
    res.writeHead(status, {
      'content-type': 'application/json; charset=utf-8',
      'x-github-media-type': 'github.v3; format=json',
      'x-github-request-id': crypto.randomBytes(8).toString('hex').toUpperCase(),
      'x-ratelimit-limit': '5000',
      'x-ratelimit-remaining': '4999',
      ...headers,
    });
    res.end(data);
  }

  function readBody(req) {
    return new Promise((resolve, reject) => {
      const chunks = [];
      let size = 0;
      req.on('data', (c) => {
        size += c.length;
        if (size > MAX_BODY) {
          reject(new Refusal(413, 'Payload too large'));
          req.destroy();
          return;
        }
        chunks.push(c);
      });
      req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      req.on('error', reject);
    });
  }

  function parseParams(req, url, raw) {
    const params = Object.fromEntries(url.searchParams);
    const type = String(req.headers['content-type'] ?? '');
    if (!raw) return params;
    if (/application\/x-www-form-urlencoded/i.test(type)) return { ...params, ...Object.fromEntries(new URLSearchParams(raw)) };
    try {
      const value = JSON.parse(raw);
      if (value && typeof value === 'object' && !Array.isArray(value)) return { ...params, ...value };
    } catch {
      // fall through
    }
    throw new Refusal(400, 'Problems parsing JSON');
  }

  function parseJson(raw) {
    if (!raw) return {};
    try {
      const value = JSON.parse(raw);
      if (value && typeof value === 'object' && !Array.isArray(value)) return value;
    } catch {
      // fall through
    }
    throw new Refusal(400, 'Problems parsing JSON');
  }

  async function route(req, res) {
    const url = new URL(req.url, 'http://stand-in');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const parts = path.split('/').filter(Boolean);
    const m = req.method;
    const raw = await readBody(req);

    if (parts[0] === '__admin') return admin(req, res, url, parts, parseJson(raw));

    const fault = takeFault(m, path);
    if (fault) return sendFault(res, fault);

    // GitHub App endpoints (JWT).
    if (parts[0] === 'app') {
      if (parts.length === 1 && m === 'GET') return sendJson(res, 200, appView(appFromJwt(req)));
      if (parts[1] === 'installations') {
        const app = appFromJwt(req);
        if (parts.length === 2 && m === 'GET') {
          const list = [...state.installations.values()].filter((i) => i.app_id === app.app_id).map(installationView);
          return sendJson(res, 200, paginate(url, list));
        }
        const inst = appInstallation(app, parts[2]);
        if (parts.length === 3 && m === 'GET') return sendJson(res, 200, installationView(inst));
        if (parts.length === 3 && m === 'DELETE') {
          removeInstallation(inst);
          await deliver(app, 'deleted', inst, app.owner);
          return sendJson(res, 204);
        }
        if (parts.length === 4 && parts[3] === 'access_tokens' && m === 'POST') {
          return sendJson(res, 201, mintInstallationToken(app, inst, parseJson(raw)));
        }
        if (parts.length === 4 && parts[3] === 'suspended' && (m === 'PUT' || m === 'DELETE')) {
          setSuspended(inst, m === 'PUT', app.owner);
          await deliver(app, m === 'PUT' ? 'suspend' : 'unsuspend', inst, app.owner);
          return sendJson(res, 204);
        }
      }
      throw new Refusal(404, 'Not Found');
    }

    if (path === '/installation/repositories' && m === 'GET') {
      const { inst, rec } = installationFromToken(req);
      const repos = inst.repositories.filter((r) => !rec.repository_ids || rec.repository_ids.includes(r.id));
      const page = paginate(url, repos.map((r) => repoView(inst, r)), 'repositories');
      return sendJson(res, 200, { ...page, repository_selection: rec.repository_ids ? 'selected' : inst.repository_selection });
    }
    if (path === '/installation/token' && m === 'DELETE') {
      const { rec } = installationFromToken(req);
      rec.revoked = true;
      return sendJson(res, 204);
    }

    if (path === '/login/oauth/access_token' && m === 'POST') {
      return sendOAuth(req, res, oauthExchange(parseParams(req, url, raw)));
    }

    if (path === '/user' && m === 'GET') {
      const rec = userFromToken(req);
      const user = state.users.get(rec.login);
      return sendJson(res, 200, userView(user));
    }
    if (path === '/user/installations' && m === 'GET') {
      state.stats.user_installations_requests += 1;
      const rec = userFromToken(req);
      const list = [...state.installations.values()]
        .filter((i) => i.app_id === rec.app_id && i.users.includes(rec.login))
        .map(installationView);
      return sendJson(res, 200, paginate(url, list, 'installations'));
    }

    if (parts[0] === 'apps' && parts.length === 4 && parts[2] === 'installations' && parts[3] === 'new') {
      const app = [...state.apps.values()].find((a) => a.slug === parts[1]);
      if (!app) {
        res.writeHead(404, { 'content-type': 'text/html; charset=utf-8' });
        return res.end('<!doctype html><title>Page not found</title><h1>404</h1>');
      }
      if (m === 'GET') return installPage(res, app, Object.fromEntries(url.searchParams));
      if (m === 'POST') return install(res, app, parseParams(req, url, raw));
    }

    throw new Refusal(404, 'Not Found');
  }

  function paginate(url, list, key) {
    const perPage = Math.min(Math.max(Number(url.searchParams.get('per_page') ?? 30) || 30, 1), 100);
    const page = Math.max(Number(url.searchParams.get('page') ?? 1) || 1, 1);
    const slice = list.slice((page - 1) * perPage, page * perPage);
    return key ? { total_count: list.length, [key]: slice } : slice;
  }

  const handler = (req, res) => {
    const started = Date.now();
    res.on('finish', () => {
      const path = (req.url ?? '').split('?')[0];
      log(`${new Date().toISOString()} ${req.method} ${path} ${res.statusCode} ${Date.now() - started}ms`);
    });
    route(req, res).catch((e) => {
      if (res.headersSent) return res.destroy();
      if (e instanceof Refusal) return sendJson(res, e.status, githubError(e.status, e.message, e.documentationUrl), e.headers);
      log(`error: ${e?.name ?? 'Error'}`);
      return sendJson(res, 500, githubError(500, 'Server Error'));
    });
  };

  return {
    handler,
    setBaseUrl(u) {
      listeningUrl = u;
    },
  };
}

function timingSafeEqualText(a, b) {
  const x = crypto.createHash('sha256').update(String(a)).digest();
  const y = crypto.createHash('sha256').update(String(b)).digest();
  return crypto.timingSafeEqual(x, y);
}

const isMain = process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isMain) {
  const port = Number(process.env.GITHUB_APP_PORT ?? 9160);
  const host = process.env.GITHUB_APP_HOST || '127.0.0.1';
  const stub = createGitHubAppServer();
  const server = http.createServer(stub.handler);
  server.listen(port, host, () => {
    const url = `http://${host}:${server.address().port}`;
    stub.setBaseUrl(process.env.GITHUB_APP_PUBLIC_URL || url);
    process.stdout.write(`github-app-server listening on ${url}\n`);
  });
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
}
