// Demo app page script (served as /app.js, an ES module; the page's CSP
// allows only 'self' scripts). It connects through the browser SDK
// (sdk/index.js). Everything shown comes from another origin: textContent only.
import { ConnectError, connect, readRedirectResult } from '/sdk/index.js';

(() => {
  const $ = (id) => document.getElementById(id);
  const connectBtn = $('connect');
  const testBtn = $('test');
  const disconnectBtn = $('disconnect');

  const anyBtn = $('connect-any');
  const redirectBtn = $('connect-redirect');
  const cancelBtn = $('cancel');
  let cancelling = null;
  cancelBtn.addEventListener('click', () => cancelling?.abort());
  let config = null;
  let connectionId = null;
  let attempt = 0;

  function show(id, text, kind) {
    const el = $(id);
    el.textContent = text;
    el.className = id === 'result' ? kind || '' : `note ${kind || ''}`.trim();
    el.hidden = false;
  }
  const setResult = (text, kind) => show('result', text, kind);

  function resetConnection() {
    connectionId = null;
    for (const id of ['connection', 'actions', 'test-result', 'disconnect-result']) $(id).hidden = true;
    testBtn.disabled = false;
    disconnectBtn.disabled = false;
  }

  function showConnection(conn) {
    $('connection-status').textContent = String(conn.status ?? 'unknown');
    $('connection-account').textContent = String(conn.provider_account_id ?? conn.connection_config?.shop ?? '');
    $('connection-id').textContent = String(conn.id ?? conn.connection_id ?? '');
    $('connection').hidden = false;
    $('actions').hidden = false;
  }

  // Calls this page's backend, which holds the API key; answers [ok, body].
  async function api(path, method = 'GET', body = undefined) {
    const res = await fetch(path, {
      method,
      headers: { Accept: 'application/json', ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const json = await res.json().catch(() => ({}));
    return [res.ok, json && typeof json === 'object' ? json : {}];
  }
  const errorOf = (body, fallback) => (typeof body.error === 'string' && body.error ? body.error : fallback);

  async function loadConnection(id) {
    try {
      const [ok, body] = await api(`/api/connections/${encodeURIComponent(id)}`);
      if (ok && connectionId === id) showConnection({ id, ...(body.connection ?? body) });
    } catch {
      // status display is best effort
    }
  }

  function connected(id) {
    connectionId = id;
    setResult(`Connected: ${id}`, 'ok');
    loadConnection(id);
  }

  // The session is minted by this page's backend while the popup opens.
  async function mintSession(ask) {
    const [ok, body] = await api('/api/connect-session', 'POST', ask);
    if (!ok || typeof body.token !== 'string') throw new ConnectError(errorOf(body, 'session_failed'));
    return body.token;
  }

  // One attempt: the SDK opens the popup synchronously from the click.
  function start(options) {
    const mine = ++attempt;
    for (const b of [connectBtn, anyBtn, redirectBtn]) b.disabled = true;
    resetConnection();
    setResult('Waiting for the provider…', '');
    cancelling = new AbortController();
    // The popup reads closed while a flow is still at the provider (closed
    // by the person, or cut off by the provider's page): offer a way out.
    const onWaiting = () => { if (mine === attempt) cancelBtn.hidden = false; };
    connect({ broker: config.broker_url, signal: cancelling.signal, onWaiting, ...options })
      .then(({ connectionId: id }) => { if (mine === attempt) connected(id); })
      .catch((e) => {
        if (mine !== attempt) return;
        const code = e instanceof ConnectError ? e.code : 'unknown_error';
        if (code === 'window_closed' || code === 'cancelled') setResult('Cancelled', 'err');
        else setResult(`Error: ${code}`, 'err');
      })
      .finally(() => {
        if (mine !== attempt) return;
        cancelBtn.hidden = true;
        for (const b of [connectBtn, anyBtn, redirectBtn]) b.disabled = false;
      });
  }

  connectBtn.addEventListener('click', () => {
    if (config) start({ sessionToken: mintSession({}), integration: config.integration });
  });
  anyBtn.addEventListener('click', () => {
    if (config) start({ sessionToken: mintSession({ all: true }) });
  });
  redirectBtn.addEventListener('click', () => {
    if (!config) return;
    setResult('Going to the provider…', '');
    connect({ broker: config.broker_url, mode: 'redirect', sessionToken: mintSession({ redirect: true }), integration: config.integration })
      .catch((e) => setResult(`Error: ${e instanceof ConnectError ? e.code : 'unknown_error'}`, 'err'));
  });

  testBtn.addEventListener('click', async () => {
    const id = connectionId;
    if (!id) return;
    testBtn.disabled = true;
    show('test-result', 'Testing…', '');
    try {
      const [ok, body] = await api(`/api/connections/${encodeURIComponent(id)}/test`, 'POST');
      if (id !== connectionId) return;
      if (ok && body.ok === true) {
        show('test-result', `Test: ok (HTTP ${body.status ?? '?'}, ${body.latency_ms ?? '?'} ms)`, 'ok');
      } else {
        const code = ok ? body.error_code || (body.status ? `http_${body.status}` : 'unknown_error') : errorOf(body, 'test_failed');
        show('test-result', `Test: failed (${code})`, 'err');
      }
      if (typeof body.connection_status === 'string') $('connection-status').textContent = body.connection_status;
    } catch {
      show('test-result', 'Test: failed (demo_unreachable)', 'err');
    } finally {
      testBtn.disabled = false;
    }
  });

  const yesNo = (v) => (v === true ? 'yes' : v === false ? 'no' : 'n/a');

  disconnectBtn.addEventListener('click', async () => {
    const id = connectionId;
    if (!id) return;
    testBtn.disabled = true;
    disconnectBtn.disabled = true;
    show('disconnect-result', 'Disconnecting…', '');
    try {
      const [ok, body] = await api(`/api/connections/${encodeURIComponent(id)}`, 'DELETE');
      if (!ok || body.deleted !== true) throw new Error(errorOf(body, 'disconnect_failed'));
      const r = body.revoked || {};
      show('disconnect-result',
        `Disconnected (refresh token revoked: ${yesNo(r.refresh_token)}, access token revoked: ${yesNo(r.access_token)})`, 'ok');
      $('connection-status').textContent = 'deleted';
      $('actions').hidden = true;
      connectionId = null;
    } catch (err) {
      show('disconnect-result', `Disconnect failed (${err && err.message ? err.message : 'demo_unreachable'})`, 'err');
      testBtn.disabled = false;
      disconnectBtn.disabled = false;
    }
  });

  (async () => {
    try {
      const res = await fetch('/api/config', { headers: { Accept: 'application/json' } });
      config = await res.json();
      const brokerOrigin = new URL(config.broker_url).origin;
      $('integration').textContent = config.integration;
      $('broker').textContent = brokerOrigin;
      $('user').textContent = `Signed in as ${config.end_user_id}`;
      if (window.location.origin !== config.app_origin) {
        const warning = $('warning');
        warning.textContent = `Open this page at ${config.app_origin}/ — the broker posts the result only to that exact origin.`;
        warning.hidden = false;
      }
      for (const b of [connectBtn, anyBtn, redirectBtn]) b.disabled = false;
    } catch {
      setResult('Error: demo_config_unavailable', 'err');
      return;
    }
    // Back from redirect mode: the outcome is in this page's query.
    try {
      const back = readRedirectResult(window.location.href);
      if (back) connected(back.connectionId);
    } catch (e) {
      setResult(`Error: ${e instanceof ConnectError ? e.code : 'unknown_error'}`, 'err');
    }
    if (window.location.search) window.history.replaceState(null, '', '/');
  })();
})();
