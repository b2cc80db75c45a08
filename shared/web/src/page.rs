//! The page the callback (and a refused authorize) answers in the popup: it
//! posts `{type, status, connection_id | error}` to the exact origin fixed
//! in the connect session and closes itself. Never a token or code. When
//! the popup has no opener any more (a provider page sent
//! `Cross-Origin-Opener-Policy: same-origin`), it shows the outcome it
//! would have posted, with a Close button, and never sends the person to
//! the Connect page (which cannot work without the opener): the app reads
//! the outcome from `/oauth/status`.

use domain::crypto::random_token;

/// What the page reports to the opener.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Connected { connection_id: String },
    Failed { code: &'static str },
}

/// The popup result page.
pub struct ResultPage<'a> {
    /// Exact origin to post to; `None` when it is not known (no valid flow),
    /// in which case nothing is posted.
    pub origin: Option<&'a str>,
    pub outcome: Outcome,
    /// Extra text shown to the person (e.g. a provider's error_description); escaped.
    pub detail: Option<&'a str>,
    /// A failed flow started from the hosted Connect page goes back there
    /// (this URL, on the broker) to show the error and offer a retry,
    /// instead of reporting to the opener and closing.
    pub retry: Option<&'a str>,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// JSON that is safe inside a `<script>` element: no `<`, `>`, `&` or line separators.
fn script_safe_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

impl ResultPage<'_> {
    /// The message posted to the opener.
    pub fn message(&self) -> serde_json::Value {
        match &self.outcome {
            Outcome::Connected { connection_id } => serde_json::json!({
                "type": "oauth-broker:result", "status": "connected", "connection_id": connection_id
            }),
            Outcome::Failed { code } => serde_json::json!({
                "type": "oauth-broker:result", "status": "error", "error": code
            }),
        }
    }

    /// Renders the page and its Content-Security-Policy.
    pub fn render(&self) -> (String, String) {
        let nonce = random_token(16);
        let (title, text) = match &self.outcome {
            Outcome::Connected { .. } => (
                "Connected",
                "Your account is connected. You can close this window.".to_string(),
            ),
            Outcome::Failed { code } => (
                "Connection failed",
                format!("The connection could not be completed ({code})."),
            ),
        };
        let detail = self
            .detail
            .map(|d| {
                format!(
                    "<p class=\"detail\">{}</p>",
                    escape_html(&d.chars().take(300).collect::<String>())
                )
            })
            .unwrap_or_default();
        let origin_attr = self.origin.map(escape_html).unwrap_or_default();
        let retry_attr = match (&self.outcome, self.retry) {
            (Outcome::Failed { .. }, Some(r)) => escape_html(r),
            _ => String::new(),
        };
        let body = format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title>
<style nonce="{nonce}">body{{font:16px system-ui,sans-serif;margin:3rem auto;max-width:28rem;padding:0 1rem;color:#1f2328}}h1{{font-size:1.3rem}}.detail{{color:#57606a;font-size:.9rem}}button{{font:inherit;padding:.4rem 1rem}}</style>
</head><body>
<h1>{title}</h1><p>{text}</p>{detail}
<p id="elsewhere" hidden>The app you came from will show this result.</p>
<button type="button" id="close" hidden>Close</button>
<script type="application/json" id="result" data-origin="{origin_attr}" data-retry="{retry_attr}">{json}</script>
<script nonce="{nonce}">
(function () {{
  var el = document.getElementById("result");
  var origin = el.getAttribute("data-origin");
  var retry = el.getAttribute("data-retry");
  var opener = window.opener;
  if (opener && retry) {{
    window.location.replace(retry);
    return;
  }}
  if (opener && origin) {{
    try {{ opener.postMessage(JSON.parse(el.textContent), origin); }} catch (e) {{ /* gone */ }}
    window.close();
  }}
  // Still open: no opener (the provider's page cut it off), or closing
  // was refused. The outcome is on the page; the app reads it from the
  // broker's /oauth/status.
  if (origin) document.getElementById("elsewhere").hidden = false;
  var close = document.getElementById("close");
  close.hidden = false;
  close.addEventListener("click", function () {{ window.close(); }});
}})();
</script>
</body></html>
"#,
            title = title,
            text = escape_html(&text),
            json = script_safe_json(&self.message()),
        );
        let csp = format!(
            "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        (body, csp)
    }
}

/// The connect page (`GET /oauth/{integration}/connect`), which the app's
/// page opens as its popup. It asks its opener for the session
/// (`{type: "oauth-broker:ready"}`, repeated until answered, carrying
/// nothing), takes it only from a message whose source is its opener
/// (`{type: "oauth-broker:session", token}`), and posts the token, with the
/// origin the browser reports for that message, to `authorize`. The server
/// starts a flow only when that origin is the session's. Opened without an
/// opener (a link from an email or a chat) it says so and does nothing.
/// Returns the page and its Content-Security-Policy (no `form-action`: the
/// form's answer redirects to the provider, whose origin is not known here).
pub fn connect_page() -> (String, String) {
    let nonce = random_token(16);
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Connecting</title>
<style nonce="{nonce}">body{{font:16px system-ui,sans-serif;margin:3rem auto;max-width:28rem;padding:0 1rem;color:#1f2328}}</style>
</head><body>
<h1 id="title">Connecting…</h1><p id="text">Waiting for the app.</p>
<form id="start" method="post" action="authorize"><input type="hidden" name="session"><input type="hidden" name="origin"></form>
<script nonce="{nonce}">
(function () {{
  var opener = window.opener;
  function refuse(text) {{
    document.getElementById("title").textContent = "Cannot connect here";
    document.getElementById("text").textContent = text;
  }}
  if (!opener) {{
    refuse("{unbound}");
    return;
  }}
  var started = false, asks = 0;
  window.addEventListener("message", function (e) {{
    var d = e.data;
    if (started || e.source !== opener || !d || d.type !== "oauth-broker:session" || typeof d.token !== "string") return;
    started = true;
    var form = document.getElementById("start");
    form.elements.session.value = d.token;
    form.elements.origin.value = e.origin;
    form.submit();
  }});
  (function ask() {{
    if (started) return;
    if (asks++ >= 240) {{ refuse("The app did not start the connection. Close this window and try again."); return; }}
    try {{ opener.postMessage({{ type: "oauth-broker:ready" }}, "*"); }} catch (err) {{ /* the opener is gone */ }}
    setTimeout(ask, 250);
  }})();
}})();
</script>
</body></html>
"#,
        unbound = UNBOUND_TEXT,
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         base-uri 'none'; frame-ancestors 'none'"
    );
    (body, csp)
}

/// The hosted Connect page (`/connect`): the page, its script and its
/// style, all embedded in the binary (no CDN), under a CSP whose nonce is
/// new on every render and which allows no inline handler. `boot` is what
/// the script starts from (`mode`, `broker_base`, and in redirect mode the
/// session `token` and `origin`), put in a JSON data block (never markup).
/// Images may come only from https (providers' logos), scripts and styles
/// only with the nonce, fetches only to the broker itself.
pub fn hosted_connect_page(boot: &serde_json::Value) -> (String, String) {
    let nonce = random_token(16);
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="color-scheme" content="light dark"><title>Connect an account</title>
<style nonce="{nonce}">{css}</style>
</head><body>
<main id="main" aria-live="polite"><h1>Loading…</h1><noscript><p>This page needs JavaScript.</p></noscript></main>
<script type="application/json" id="boot">{boot}</script>
<script nonce="{nonce}">{js}</script>
</body></html>
"#,
        css = CONNECT_CSS,
        js = CONNECT_JS,
        boot = script_safe_json(boot),
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         img-src https: data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    );
    (body, csp)
}

const CONNECT_JS: &str = include_str!("../assets/connect.js");
const CONNECT_CSS: &str = include_str!("../assets/connect.css");

/// What the person is told when a connect link is opened outside the app.
pub const UNBOUND_TEXT: &str = "This connection can only be started from the app you were \
    using: go back to it and choose Connect there. A link sent by email, in a chat or from \
    another website cannot connect an account.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_page_takes_the_session_only_from_its_opener() {
        let (html, csp) = connect_page();
        assert!(html.contains("e.source !== opener"));
        assert!(html.contains("form.elements.origin.value = e.origin"));
        assert!(html.contains(r#"postMessage({ type: "oauth-broker:ready" }, "*")"#));
        assert!(!csp.contains("form-action") && csp.contains("frame-ancestors 'none'"));
    }

    #[test]
    fn reflected_text_is_escaped() {
        let page = ResultPage {
            origin: Some("https://app.example\"><script>alert(1)</script>"),
            outcome: Outcome::Failed {
                code: "access_denied",
            },
            detail: Some("<script>alert('x')</script>"),
            retry: None,
        };
        let (html, csp) = page.render();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(csp.starts_with("default-src 'none'; script-src 'nonce-"));
    }

    #[test]
    fn posts_only_status_and_connection_id_to_the_exact_origin() {
        let page = ResultPage {
            origin: Some("https://app.example.com"),
            outcome: Outcome::Connected {
                connection_id: "conn_1".into(),
            },
            detail: None,
            retry: None,
        };
        let (html, _) = page.render();
        assert!(html.contains(r#"data-origin="https://app.example.com""#));
        assert!(html.contains(r#""connection_id":"conn_1""#));
        assert!(html.contains("postMessage(JSON.parse(el.textContent), origin)"));
        assert_eq!(page.message().as_object().unwrap().len(), 3);
    }
}
