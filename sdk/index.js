// @oauth-broker/connect: the browser side of the OAuth connection broker.
// Plain ES module, no dependencies. See README.md and index.d.ts.
//
// connect() opens the broker's hosted Connect page (or one integration on
// it) in a popup, synchronously, so call it from the click handler itself:
// popup blockers allow a window opened there and nowhere else. The session
// token may still be on its way (a promise): the page asks for it by
// message and gets it only from this window, at the broker's origin. The
// token is never put in a URL.

const READY = 'oauth-broker:ready';
const SESSION = 'oauth-broker:session';
const RESULT = 'oauth-broker:result';

/** A connect attempt that did not connect; `code` is the broker's stable code. */
export class ConnectError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'ConnectError';
    this.code = code;
  }
}

function brokerBase(broker) {
  let url;
  try {
    url = new URL(broker);
  } catch {
    throw new ConnectError('invalid_options', 'broker must be an absolute URL');
  }
  if (url.protocol !== 'https:' && url.hostname !== 'localhost' && url.hostname !== '127.0.0.1') {
    throw new ConnectError('invalid_options', 'broker must be https');
  }
  url.search = '';
  url.hash = '';
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

function checkId(integration) {
  if (integration !== undefined && !/^[a-z0-9][a-z0-9_-]{0,62}$/.test(integration)) {
    throw new ConnectError('invalid_options', 'integration is not an integration id');
  }
}

/** Resolves `sessionToken` (a string, a promise, or a function returning either). */
function tokenOf(sessionToken) {
  const t = typeof sessionToken === 'function' ? sessionToken() : sessionToken;
  return Promise.resolve(t).then((v) => {
    if (typeof v !== 'string' || !v) throw new ConnectError('invalid_session', 'no session token');
    return v;
  });
}

/**
 * Opens the Connect page and resolves to `{status: 'connected', connectionId}`,
 * or rejects with a `ConnectError` whose `code` is the broker's stable code
 * (`access_denied`, `session_expired`, `api_key_rejected`, ...), or one of
 * this SDK's: `popup_blocked`, `window_closed`, `cancelled`, `invalid_options`.
 */
export function connect(options) {
  const o = options || {};
  let base;
  try {
    base = brokerBase(o.broker);
    checkId(o.integration);
  } catch (e) {
    return Promise.reject(e);
  }
  const win = o.window || window;
  if ((o.mode || 'popup') === 'redirect') return redirect(win, base, o);
  if (o.mode !== undefined && o.mode !== 'popup') {
    return Promise.reject(new ConnectError('invalid_options', 'mode is popup or redirect'));
  }
  const page = new URL('connect', base);
  if (o.integration) page.searchParams.set('integration', o.integration);
  // Synchronously, before anything is awaited.
  const popup = win.open(page.href, o.windowName || 'oauth-broker-connect', o.popupFeatures || 'width=520,height=720');
  if (!popup) return Promise.reject(new ConnectError('popup_blocked'));
  return watch(win, popup, base, o);
}

/** A pending status that says a flow of the session is still at the provider. */
function atProvider(body) {
  return typeof body.flow_expires_in === 'number' && body.flow_expires_in > 0;
}

function watch(win, popup, base, o) {
  const origin = base.origin;
  const token = tokenOf(o.sessionToken);
  const pollMs = o.pollIntervalMs ?? 1000;
  const waitAfterClose = o.waitAfterCloseMs ?? 2000;
  // A provider page sent with `Cross-Origin-Opener-Policy: same-origin`
  // cuts the popup off from this window: it then reads closed while the
  // user is still signing in. While the broker says a flow of this session
  // is at the provider, the status is asked for up to this long.
  const waitForProvider = o.waitForProviderMs ?? 300000;
  let waitingSaid = false;
  return new Promise((resolve, reject) => {
    let done = false;
    let timer = null;
    let closedAt = null;
    let polling = false;
    let lastPoll = 0;
    const finish = (outcome) => {
      if (done) return;
      done = true;
      win.removeEventListener('message', onMessage);
      clearInterval(timer);
      if (o.signal) o.signal.removeEventListener('abort', onAbort);
      if (outcome.status === 'connected' && typeof outcome.connection_id === 'string' && outcome.connection_id) {
        resolve({ status: 'connected', connectionId: outcome.connection_id });
      } else {
        reject(new ConnectError(typeof outcome.error === 'string' && outcome.error ? outcome.error : 'unknown_error'));
      }
    };
    function onMessage(e) {
      // Only the broker's pages in this popup speak for the flow.
      if (e.origin !== origin || e.source !== popup) return;
      const d = e.data;
      if (!d || typeof d !== 'object') return;
      if (d.type === READY) {
        token.then((t) => {
          if (!done) popup.postMessage({ type: SESSION, token: t }, origin);
        }, () => { /* settled by the catch below */ });
      } else if (d.type === RESULT && (d.status === 'connected' || d.status === 'error')) {
        finish(d);
      }
    }
    function onAbort() {
      try { popup.close(); } catch { /* gone */ }
      finish({ status: 'error', error: 'cancelled' });
    }
    // The popup closed (or lost its opener) without a message: the broker
    // knows how the session ended.
    async function poll() {
      let t;
      try {
        t = await token;
      } catch (err) {
        finish({ status: 'error', error: err.code || 'invalid_session' });
        return;
      }
      // The token goes in a form body (never a URL); a form POST needs no
      // CORS preflight.
      const u = new URL('oauth/status', base);
      try {
        const r = await fetch(u.href, {
          method: 'POST',
          body: new URLSearchParams({ session: t }),
          credentials: 'omit',
          cache: 'no-store',
          headers: { accept: 'application/json' },
        });
        const body = await r.json().catch(() => ({}));
        if (!r.ok) {
          finish({ status: 'error', error: (body.error && body.error.code) || 'status_unavailable' });
        } else if (body.status !== 'pending') {
          finish(body);
        } else if (atProvider(body) && Date.now() - closedAt < waitForProvider) {
          // Cut off, not closed (or closed mid-flow): keep asking, and let
          // the app offer a way out (abort the signal to cancel).
          if (!waitingSaid && typeof o.onWaiting === 'function') {
            waitingSaid = true;
            try { o.onWaiting(); } catch { /* the app's */ }
          }
        } else if (Date.now() - closedAt >= waitAfterClose) {
          finish({ status: 'error', error: 'window_closed' });
        }
      } catch {
        if (Date.now() - closedAt >= waitAfterClose) finish({ status: 'error', error: 'status_unavailable' });
      }
    }
    win.addEventListener('message', onMessage);
    // No session to give (the app's backend failed): close the popup now.
    token.catch((err) => {
      try { popup.close(); } catch { /* gone */ }
      finish({ status: 'error', error: err.code || 'invalid_session' });
    });
    if (o.signal) {
      if (o.signal.aborted) return onAbort();
      o.signal.addEventListener('abort', onAbort);
    }
    // The popup is checked every 250 ms; once it is closed, the status is
    // asked every `pollIntervalMs`, one request at a time.
    timer = setInterval(() => {
      if (done) return;
      // A popup that reads open again was only between two pages.
      if (!popup.closed) {
        closedAt = null;
        return;
      }
      if (closedAt === null) closedAt = Date.now();
      if (polling || Date.now() - lastPoll < pollMs) return;
      polling = true;
      lastPoll = Date.now();
      poll().finally(() => { polling = false; });
    }, 250);
  });
}

function redirect(win, base, o) {
  return tokenOf(o.sessionToken).then((t) => {
    const doc = win.document;
    const form = doc.createElement('form');
    form.method = 'post';
    form.action = new URL('connect', base).href;
    form.hidden = true;
    const fields = { session: t };
    if (o.integration) fields.integration = o.integration;
    for (const [name, value] of Object.entries(fields)) {
      const input = doc.createElement('input');
      input.type = 'hidden';
      input.name = name;
      input.value = value;
      form.appendChild(input);
    }
    doc.body.appendChild(form);
    // The page's Origin on this POST is the broker's proof that the app
    // started the flow. The tab leaves; the promise never settles.
    form.submit();
    return new Promise(() => {});
  });
}

/**
 * Reads the outcome the broker put on `return_to` (redirect mode). Answers
 * `null` when the URL carries none; otherwise the same result `connect()`
 * resolves to, or throws a `ConnectError`.
 */
export function readRedirectResult(url) {
  const u = new URL(url ?? window.location.href);
  const status = u.searchParams.get('status');
  if (status === null) return null;
  const id = u.searchParams.get('connection_id');
  if (status === 'connected' && id && /^conn_[a-z0-9]{1,64}$/.test(id)) {
    return { status: 'connected', connectionId: id };
  }
  const code = u.searchParams.get('error');
  throw new ConnectError(code && /^[a-z_]{1,40}$/.test(code) ? code : 'unknown_error');
}
