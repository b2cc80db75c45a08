// Demo app page script (served as /app.js; the page's CSP allows only 'self' scripts).
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const connectBtn = $('connect');
  const resultEl = $('result');

  let config = null;
  let brokerOrigin = null;
  let popup = null;
  let settled = false; // a result message arrived for the current attempt
  let closedWatch = null;

  function setResult(text, kind) {
    resultEl.textContent = text; // never innerHTML: data comes from another origin
    resultEl.className = kind || '';
  }

  function showConnection(conn) {
    const box = $('connection');
    $('connection-status').textContent = String(conn.status ?? 'unknown');
    $('connection-account').textContent = String(conn.provider_account_id ?? '');
    $('connection-id').textContent = String(conn.id ?? conn.connection_id ?? '');
    box.hidden = false;
  }

  async function loadConnection(id) {
    try {
      const res = await fetch(`/api/connections/${encodeURIComponent(id)}`, { headers: { Accept: 'application/json' } });
      if (!res.ok) return;
      const body = await res.json();
      showConnection({ id, ...(body && typeof body === 'object' ? (body.connection ?? body) : {}) });
    } catch {
      // status display is best effort
    }
  }

  function stopWatching() {
    if (closedWatch) clearInterval(closedWatch);
    closedWatch = null;
  }

  // If the user closes the popup without finishing, say so (after a grace
  // period, so a result posted just before the popup closed itself wins).
  function watchPopup() {
    stopWatching();
    closedWatch = setInterval(() => {
      if (!popup || !popup.closed) return;
      stopWatching();
      setTimeout(() => {
        if (!settled) {
          setResult('Error: popup_closed', 'err');
          connectBtn.disabled = false;
        }
      }, 1500);
    }, 500);
  }

  window.addEventListener('message', (event) => {
    if (!brokerOrigin || event.origin !== brokerOrigin) return;
    const data = event.data;
    if (!data || typeof data !== 'object' || data.type !== 'oauth-broker:result') return;
    if (data.status === 'connected' && typeof data.connection_id === 'string' && data.connection_id) {
      settled = true;
      stopWatching();
      setResult(`Connected: ${data.connection_id}`, 'ok');
      connectBtn.disabled = false;
      loadConnection(data.connection_id);
    } else if (data.status === 'error') {
      settled = true;
      stopWatching();
      const code = typeof data.error === 'string' && data.error ? data.error : 'unknown_error';
      setResult(`Error: ${code}`, 'err');
      connectBtn.disabled = false;
    }
  });

  connectBtn.addEventListener('click', async () => {
    if (!config) return;
    // Open synchronously inside the click handler so popup blockers allow it;
    // navigate it once the backend has minted a connect session.
    popup = window.open('about:blank', 'connect', 'width=520,height=700');
    if (!popup) {
      setResult('Error: popup_blocked', 'err');
      return;
    }
    settled = false;
    connectBtn.disabled = true;
    $('connection').hidden = true;
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
      popup.location.href = `${config.broker_url}/oauth/${encodeURIComponent(config.integration)}/authorize?session=${encodeURIComponent(body.token)}`;
      watchPopup();
    } catch (err) {
      try { popup.close(); } catch { /* ignore */ }
      settled = true;
      setResult(`Error: ${err && err.message ? err.message : 'session_failed'}`, 'err');
      connectBtn.disabled = false;
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
