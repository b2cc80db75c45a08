// Demo app page script (served as /app.js; the page's CSP allows only 'self'
// scripts). Everything shown comes from another origin: textContent only.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const connectBtn = $('connect');
  const testBtn = $('test');
  const disconnectBtn = $('disconnect');

  let config = null;
  let brokerOrigin = null;
  let popup = null;
  let sessionToken = null; // the current attempt's connect session (for /oauth/status)
  let settled = true; // the current attempt has an outcome
  let closedWatch = null;
  let connectionId = null;

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
    $('connection-account').textContent = String(conn.provider_account_id ?? '');
    $('connection-id').textContent = String(conn.id ?? conn.connection_id ?? '');
    $('connection').hidden = false;
    $('actions').hidden = false;
  }

  // Calls this page's backend, which holds the API key; answers [ok, body].
  async function api(path, method = 'GET') {
    const res = await fetch(path, { method, headers: { Accept: 'application/json' } });
    const body = await res.json().catch(() => ({}));
    return [res.ok, body && typeof body === 'object' ? body : {}];
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

  // One outcome per attempt, from the popup's message or from /oauth/status.
  function finish(outcome) {
    if (settled) return;
    settled = true;
    stopWatching();
    connectBtn.disabled = false;
    if (outcome.status === 'connected' && typeof outcome.connection_id === 'string' && outcome.connection_id) {
      connectionId = outcome.connection_id;
      setResult(`Connected: ${connectionId}`, 'ok');
      loadConnection(connectionId);
    } else if (outcome.status === 'pending') {
      setResult('Cancelled', 'err');
    } else {
      const code = typeof outcome.error === 'string' && outcome.error ? outcome.error : 'unknown_error';
      setResult(`Error: ${code}`, 'err');
    }
  }

  function stopWatching() {
    if (closedWatch) clearInterval(closedWatch);
    closedWatch = null;
  }

  // The popup closed without posting a result (closed by the user, or it lost
  // its opener): ask the broker how the session ended.
  async function pollStatus() {
    const token = sessionToken;
    try {
      const res = await fetch(`${config.broker_url}/oauth/status?session=${encodeURIComponent(token)}`, {
        headers: { Accept: 'application/json' },
        credentials: 'omit',
      });
      const body = await res.json();
      if (token !== sessionToken) return; // a newer attempt started
      if (res.ok) return finish(body);
      finish({ status: 'error', error: body?.error?.code ?? 'status_unavailable' });
    } catch {
      if (token === sessionToken) finish({ status: 'error', error: 'status_unavailable' });
    }
  }

  function watchPopup() {
    stopWatching();
    closedWatch = setInterval(() => {
      if (!popup || !popup.closed) return;
      stopWatching();
      if (!settled) pollStatus();
    }, 500);
  }

  window.addEventListener('message', (event) => {
    if (!brokerOrigin || event.origin !== brokerOrigin) return;
    const data = event.data;
    if (!data || typeof data !== 'object') return;
    // The broker's connect page asks for the session until it gets it; only
    // our own popup, at the broker's origin, is answered.
    if (data.type === 'oauth-broker:ready') {
      if (popup && event.source === popup && sessionToken) {
        popup.postMessage({ type: 'oauth-broker:session', token: sessionToken }, brokerOrigin);
      }
      return;
    }
    if (data.type !== 'oauth-broker:result') return;
    if (data.status === 'connected' || data.status === 'error') finish(data);
  });

  connectBtn.addEventListener('click', async () => {
    if (!config) return;
    // Open the broker's connect page synchronously inside the click handler
    // so popup blockers allow it; it asks this page for the session, which
    // it gets once the backend has minted one.
    const connectUrl = `${config.broker_url}/oauth/${encodeURIComponent(config.integration)}/connect`;
    popup = window.open(connectUrl, 'connect', 'width=520,height=700');
    if (!popup) {
      setResult('Error: popup_blocked', 'err');
      return;
    }
    settled = false;
    sessionToken = null;
    connectBtn.disabled = true;
    resetConnection();
    setResult('Waiting for the provider…', '');
    try {
      const res = await fetch('/api/connect-session', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: '{}',
      });
      const body = await res.json().catch(() => ({}));
      if (!res.ok || typeof body.token !== 'string') {
        throw new Error(typeof body.error === 'string' ? body.error : 'session_failed');
      }
      sessionToken = body.token;
      watchPopup();
    } catch (err) {
      try { popup.close(); } catch { /* ignore */ }
      finish({ status: 'error', error: err && err.message ? err.message : 'session_failed' });
    }
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
      brokerOrigin = new URL(config.broker_url).origin;
      $('integration').textContent = config.integration;
      $('broker').textContent = brokerOrigin;
      $('user').textContent = `Signed in as ${config.end_user_id}`;
      if (window.location.origin !== config.app_origin) {
        const warning = $('warning');
        warning.textContent = `Open this page at ${config.app_origin}/ — the broker posts the result only to that exact origin.`;
        warning.hidden = false;
      }
      connectBtn.disabled = false;
    } catch {
      setResult('Error: demo_config_unavailable', 'err');
    }
  })();
})();
