//! The page the callback (and a refused authorize) answers in the popup: it
//! posts `{type, status, connection_id | error}` to the exact origin fixed
//! in the connect session and closes itself. Never a token or code.

use crate::crypto::random_token;

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
        let body = format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title>
<style nonce="{nonce}">body{{font:16px system-ui,sans-serif;margin:3rem auto;max-width:28rem;padding:0 1rem;color:#1f2328}}h1{{font-size:1.3rem}}.detail{{color:#57606a;font-size:.9rem}}</style>
</head><body>
<h1>{title}</h1><p>{text}</p>{detail}
<script type="application/json" id="result" data-origin="{origin_attr}">{json}</script>
<script nonce="{nonce}">
(function () {{
  var el = document.getElementById("result");
  var origin = el.getAttribute("data-origin");
  if (window.opener && origin) {{
    window.opener.postMessage(JSON.parse(el.textContent), origin);
    window.close();
  }}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflected_text_is_escaped() {
        let page = ResultPage {
            origin: Some("https://app.example\"><script>alert(1)</script>"),
            outcome: Outcome::Failed {
                code: "access_denied",
            },
            detail: Some("<script>alert('x')</script>"),
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
        };
        let (html, _) = page.render();
        assert!(html.contains(r#"data-origin="https://app.example.com""#));
        assert!(html.contains(r#""connection_id":"conn_1""#));
        assert!(html.contains("postMessage(JSON.parse(el.textContent), origin)"));
        assert_eq!(page.message().as_object().unwrap().len(), 3);
    }
}
