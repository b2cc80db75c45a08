// The hosted Connect page (`/connect`), served by the broker with a nonce
// CSP. It takes the connect session from its opener by message (popup mode)
// or from the page the broker rendered after the app's POST (redirect
// mode), lists the session's integrations, asks for the connection values
// the end user fills, then starts the OAuth flow in this window or checks
// and stores an API key, and reports the outcome to the opener as the
// popup result page does. Everything the broker says is text: it is put
// in the page with textContent, never as markup.
(function () {
  "use strict";
  var boot = JSON.parse(document.getElementById("boot").textContent);
  var base = boot.broker_base; // ends with "/"
  var main = document.getElementById("main");
  var session = null; // {token, origin}
  var view = null; // the broker's answer to connect/session

  var MESSAGES = {
    access_denied: "You declined access. You can try again.",
    session_expired: "This connection request has expired. Close this window and start again from the app.",
    invalid_session: "This connection request is not valid. Close this window and start again from the app.",
    session_used: "This connection request was already used. Start again from the app to connect another account.",
    api_key_rejected: "The provider did not accept this API key. Check it and try again.",
    credentials_rejected: "The provider did not accept these credentials. Check them and try again.",
    provider_unavailable: "The provider could not be reached. Try again in a moment.",
    temporarily_unavailable: "The service is busy. Try again in a moment.",
    invalid_connection_config: "Check the values you entered.",
    integration_not_allowed: "This app did not allow this connection.",
    unknown_integration: "This connection is not available.",
    origin_mismatch: boot.unbound_text,
    unbound_link: boot.unbound_text,
    state_expired: "The sign-in took too long. Try again.",
    token_exchange_failed: "The provider did not complete the connection. Try again.",
    provider_error: "The provider reported an error. Try again.",
  };
  var FINAL = ["session_expired", "invalid_session", "session_used", "origin_mismatch", "unbound_link", "integration_not_allowed"];

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function show(nodes) {
    main.replaceChildren.apply(main, nodes);
    var h = main.querySelector("h1");
    if (h) { h.setAttribute("tabindex", "-1"); h.focus(); }
  }
  function message(code) {
    return (MESSAGES[code] || "The connection failed.") + " (" + code + ")";
  }
  function alertBox(code) {
    return el("p", { class: "alert", role: "alert", id: "error", "data-code": code, text: message(code) });
  }

  // ---- the outcome, to the app --------------------------------------------
  function report(result) {
    var msg = { type: "oauth-broker:result", status: result.status };
    if (result.connection_id) msg.connection_id = result.connection_id;
    if (result.error) msg.error = result.error;
    if (boot.mode === "redirect" && view && view.return_to) {
      var to = new URL(view.return_to);
      to.searchParams.append("status", msg.status);
      if (msg.connection_id) to.searchParams.append("connection_id", msg.connection_id);
      if (msg.error) to.searchParams.append("error", msg.error);
      window.location.assign(to.href);
      return;
    }
    if (window.opener && session) {
      window.opener.postMessage(msg, session.origin);
      window.close();
    }
  }

  function fatal(code) {
    var close = el("button", { type: "button", class: "btn", id: "close", text: "Close" });
    close.addEventListener("click", function () { report({ status: "error", error: code }); window.close(); });
    show([el("h1", { text: "Cannot connect" }), alertBox(code), el("div", { class: "actions" }, [session ? close : null])]);
  }

  // ---- the session ----------------------------------------------------------
  function fromOpener(done) {
    var opener = window.opener, started = false, asks = 0;
    if (!opener) { fatal("unbound_link"); return; }
    window.addEventListener("message", function (e) {
      var d = e.data;
      if (started || e.source !== opener || !d || d.type !== "oauth-broker:session" || typeof d.token !== "string") return;
      started = true;
      done({ token: d.token, origin: e.origin });
    });
    (function ask() {
      if (started) return;
      if (asks++ >= 240) { fatal("unbound_link"); return; }
      try { opener.postMessage({ type: "oauth-broker:ready" }, "*"); } catch (err) { /* the opener is gone */ }
      setTimeout(ask, 250);
    })();
  }

  function post(path, body) {
    return fetch(base + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (r.ok) return j;
        var code = (j && j.error && j.error.code) || "temporarily_unavailable";
        throw { code: code, message: j && j.error && j.error.message };
      });
    }, function () { throw { code: "temporarily_unavailable" }; });
  }

  function load() {
    show([el("h1", { text: "Loading…" })]);
    post("connect/session", { session: session.token, origin: session.origin }).then(function (v) {
      view = v;
      var only = v.integrations.length === 1 ? v.integrations[0].id : null;
      var pick = boot.integration || only;
      var chosen = pick && v.integrations.filter(function (i) { return i.id === pick; })[0];
      var nothingToAsk = chosen && chosen.available && chosen.auth_mode === "oauth2"
        && !chosen.fields.some(function (f) { return f.source === "end_user"; });
      if (chosen && nothingToAsk && !boot.error) startOauth(chosen, {});
      else if (chosen) detail(chosen, boot.error, !boot.integration || v.integrations.length > 1);
      else list("");
    }, function (e) { fatal(e.code); });
  }

  // ---- the list ------------------------------------------------------------
  var COLORS = ["#0969da", "#8250df", "#bf3989", "#cf222e", "#bc4c00", "#1a7f37", "#116329", "#0550ae"];
  function monogram(name) {
    var words = name.replace(/[^A-Za-z0-9 ]/g, " ").split(/\s+/).filter(Boolean);
    var m = words.length > 1 ? words[0][0] + words[1][0] : (words[0] || "?").slice(0, 2);
    return m.toUpperCase();
  }
  function logo(i) {
    var hash = 0;
    for (var k = 0; k < i.id.length; k++) hash = (hash * 31 + i.id.charCodeAt(k)) >>> 0;
    var box = el("span", { class: "logo", "aria-hidden": "true" });
    box.style.background = COLORS[hash % COLORS.length];
    box.textContent = monogram(i.display_name);
    if (i.logo_url) {
      var img = el("img", { alt: "", src: i.logo_url, referrerpolicy: "no-referrer" });
      img.addEventListener("error", function () { img.remove(); });
      img.addEventListener("load", function () { box.textContent = ""; box.appendChild(img); });
    }
    return box;
  }

  function list(query) {
    var search = el("input", { type: "search", id: "search", placeholder: "Search", "aria-label": "Search integrations", autocomplete: "off", value: query });
    var ul = el("ul", { class: "list", id: "integrations", "aria-live": "polite" });
    var empty = el("p", { class: "muted", id: "empty", text: "No integration matches.", hidden: "" });
    function render() {
      var q = search.value.trim().toLowerCase();
      ul.replaceChildren();
      var shown = view.integrations.filter(function (i) {
        return !q || i.display_name.toLowerCase().indexOf(q) >= 0 || i.id.indexOf(q) >= 0
          || i.categories.some(function (c) { return c.indexOf(q) >= 0; });
      });
      shown.forEach(function (i) {
        var b = el("button", { type: "button", "data-integration": i.id }, [
          logo(i),
          el("span", {}, [el("span", { class: "name", text: i.display_name }), el("span", { class: "cats", text: i.categories.join(" · ") })]),
        ]);
        if (!i.available) b.setAttribute("aria-disabled", "true");
        b.addEventListener("click", function () { detail(i, null, true); });
        ul.appendChild(el("li", {}, [b]));
      });
      empty.hidden = shown.length > 0;
    }
    search.addEventListener("input", render);
    render();
    show([el("h1", { text: "Connect an account" }), search, ul, empty]);
    search.focus();
  }

  // ---- one integration -----------------------------------------------------
  function compile(p) {
    try { return new RegExp("^(?:" + p + ")$", "u"); } catch (e) { return null; }
  }

  // Non-secret credential fields typed this visit, by integration and name.
  var typedNames = {};

  function detail(i, errorCode, canGoBack) {
    var nodes = [el("h1", { text: i.display_name })];
    if (errorCode) nodes.push(alertBox(errorCode));
    if (!i.available) {
      nodes.push(el("p", { class: "alert", role: "alert", id: "error", "data-code": "invalid_connection_config", text: "This connection needs settings only the app can provide. (invalid_connection_config)" }));
    }
    var form = el("form", { id: "connect", novalidate: "" });
    var inputs = [];
    i.fields.forEach(function (f) {
      if (f.source === "app" || f.source === "integration") {
        form.appendChild(el("div", { class: "fixed" }, [el("span", { text: f.label }), el("code", { text: f.value })]));
      } else if (f.source === "end_user") {
        var id = "field-" + f.name;
        var input = el("input", { id: id, name: "config." + f.name, required: "", autocomplete: "off", autocapitalize: "off", spellcheck: "false", placeholder: f.example, "aria-describedby": id + "-hint" });
        var err = el("p", { class: "field-error", id: id + "-error", hidden: "" });
        form.appendChild(el("label", { for: id, text: f.label }));
        form.appendChild(input);
        form.appendChild(el("p", { class: "hint", id: id + "-hint", text: f.description + " (e.g. " + f.example + ")" }));
        form.appendChild(err);
        inputs.push({ field: f, input: input, err: err, re: compile(f.pattern) });
      }
    });
    // The credentials the provider's auth mode asks for (an API key; a
    // user name and password under the provider's own labels).
    var creds = (i.credentials || []).map(function (c) {
      var id = c.name.replace(/_/g, "-");
      var input = c.file
        ? el("input", { id: id, name: c.name, type: "file", required: "", accept: c.name === "key_file" ? ".json,application/json" : ".pem,.key,.p8,text/plain" })
        : el("input", { id: id, name: c.name, type: c.secret ? "password" : "text", required: "", autocomplete: "off", autocapitalize: "off", spellcheck: "false" });
      // After a refusal the user name is kept; a secret is never kept.
      if (!c.secret && typedNames[i.id + "/" + c.name]) input.value = typedNames[i.id + "/" + c.name];
      var err = el("p", { class: "field-error", id: id + "-error", hidden: "" });
      form.appendChild(el("label", { for: id, text: c.label }));
      form.appendChild(input);
      form.appendChild(err);
      var x = { field: c, input: input, err: err, re: c.pattern ? compile(c.pattern) : null, text: "", tooLarge: false };
      // A key file is read in the page and sent once; never shown. Only
      // the last file picked counts, however the reads finish.
      if (c.file) input.addEventListener("change", function () {
        var f = input.files && input.files[0];
        x.text = "";
        x.tooLarge = !!f && f.size > 16384;
        input.removeAttribute("data-loaded");
        if (!f || x.tooLarge) return;
        f.text().then(function (t) {
          if (input.files[0] !== f) return;
          x.text = t;
          input.setAttribute("data-loaded", "true");
        });
      });
      return x;
    });
    if (i.auth_mode !== "oauth2") {
      form.appendChild(el("p", { class: "hint", text: "Checked with " + i.display_name + " before it is saved." }));
    }
    var submit = el("button", { type: "submit", class: "btn primary", id: "submit", text: errorCode ? "Try again" : "Connect" });
    if (!i.available) submit.setAttribute("disabled", "");
    var actions = el("div", { class: "actions" }, [submit]);
    if (canGoBack && view.integrations.length > 1) {
      var back = el("button", { type: "button", class: "btn", id: "back", text: "Back" });
      back.addEventListener("click", function () { list(""); });
      actions.appendChild(back);
    }
    if (errorCode) {
      var close = el("button", { type: "button", class: "btn", id: "close", text: "Close" });
      close.addEventListener("click", function () { report({ status: "error", error: errorCode }); window.close(); });
      actions.appendChild(close);
    }
    form.appendChild(actions);
    nodes.push(form);
    show(nodes);

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var values = {}, ok = true;
      inputs.forEach(function (x) {
        var v = x.input.value.trim();
        var bad = !v || (x.re && !x.re.test(v));
        x.err.hidden = !bad;
        x.err.textContent = bad ? (v ? "Not a valid value (e.g. " + x.field.example + ")." : "Required.") : "";
        x.input.setAttribute("aria-invalid", bad ? "true" : "false");
        if (bad) { if (ok) x.input.focus(); ok = false; }
        values[x.field.name] = v;
      });
      var secrets = {};
      creds.forEach(function (x) {
        // Sent as typed (a password may begin or end with a space).
        var v = x.field.file ? x.text : x.field.secret ? x.input.value : x.input.value.trim();
        var bad = !v || (x.re && !x.re.test(v));
        x.err.hidden = !bad;
        x.err.textContent = bad ? (x.tooLarge ? "The file is larger than 16 KB." : v ? "Not a valid " + x.field.label + "." : "Required.") : "";
        x.input.setAttribute("aria-invalid", bad ? "true" : "false");
        if (bad) { if (ok) x.input.focus(); ok = false; }
        secrets[x.field.name] = v;
      });
      if (!ok) return;
      submit.setAttribute("disabled", "");
      // Only OAuth goes to the provider in the browser; every other mode
      // is checked (a client-credentials token minted) by the broker.
      if (i.auth_mode === "oauth2") startOauth(i, values);
      else submitCredentials(i, secrets, values);
    });
  }

  function startOauth(i, values) {
    var f = el("form", { method: "post", action: base + "oauth/" + encodeURIComponent(i.id) + "/authorize", hidden: "" });
    var fields = { session: session.token, origin: session.origin };
    // A failed flow comes back to this page only in a popup; in redirect
    // mode the broker sends the tab back to the app with the outcome.
    if (boot.mode === "popup") fields.hosted = "1";
    Object.keys(values).forEach(function (k) { fields["config." + k] = values[k]; });
    Object.keys(fields).forEach(function (k) { f.appendChild(el("input", { type: "hidden", name: k, value: fields[k] })); });
    document.body.appendChild(f);
    f.submit();
  }

  function submitCredentials(i, secrets, values) {
    (i.credentials || []).forEach(function (c) { if (!c.secret) typedNames[i.id + "/" + c.name] = secrets[c.name]; });
    var body = { session: session.token, origin: session.origin, integration: i.id, config: values };
    Object.keys(secrets).forEach(function (k) { body[k] = secrets[k]; });
    post("connect/api-key", body)
      .then(function (r) {
        show([el("h1", { class: "done", text: "Connected" }), el("p", { text: "Your " + i.display_name + " account is connected." })]);
        report({ status: "connected", connection_id: r.connection_id });
      }, function (e) {
        if (FINAL.indexOf(e.code) >= 0) { fatal(e.code); return; }
        detail(i, e.code, true);
      });
  }

  // ---- start ---------------------------------------------------------------
  if (boot.token) {
    session = { token: boot.token, origin: boot.origin };
    load();
  } else {
    fromOpener(function (s) { session = s; load(); });
  }
})();
