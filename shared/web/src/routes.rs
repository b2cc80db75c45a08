//! Every HTTP route the broker serves, in one table: which function serves
//! it, its method and its path template. The API function routes from it,
//! a 405's `Allow` comes from it, and the other descriptions of the HTTP
//! surface are checked against it: `template.yaml`'s `HttpApi` events and
//! the local router in `Cargo.toml`
//! (`the_template_and_the_local_router_route_exactly_the_route_table`) and
//! the OpenAPI document
//! (`every_route_is_documented_and_every_documented_route_is_a_route`).

use lambda_http::http::{HeaderValue, Method, header};
use lambda_http::{Body, Response};

/// One route: `path` is a template of `/`-separated segments, `{name}`
/// standing for one segment and a last `{path+}` for the rest of the path
/// (API Gateway's greedy parameter). `ANY` is every method the proxy takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The binary (the `Binary` of its function in `template.yaml`).
    pub function: &'static str,
    pub method: &'static str,
    pub path: &'static str,
}

const fn r(function: &'static str, method: &'static str, path: &'static str) -> Route {
    Route {
        function,
        method,
        path,
    }
}

/// The methods `ANY` stands for (the proxy's; TRACE and CONNECT are not).
pub const ANY_METHODS: [&str; 7] = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"];

/// The table.
pub const ROUTES: &[Route] = &[
    r("authorize", "POST", "/oauth/{integration}/authorize"),
    r("authorize", "GET", "/oauth/{integration}/authorize"),
    r("authorize", "GET", "/oauth/{integration}/connect"),
    r("authorize", "POST", "/oauth/status"),
    r("authorize", "GET", "/connect"),
    r("authorize", "POST", "/connect"),
    r("authorize", "POST", "/connect/session"),
    r("callback", "GET", "/oauth/{integration}/callback"),
    r("callback", "POST", "/connect/api-key"),
    r("api", "POST", "/connect-sessions"),
    r("api", "GET", "/openapi.json"),
    r("api", "POST", "/integrations"),
    r("api", "GET", "/integrations"),
    r("api", "GET", "/integrations/{id}"),
    r("api", "PATCH", "/integrations/{id}"),
    r("api", "DELETE", "/integrations/{id}"),
    r("api", "PUT", "/integrations/{id}/client-secret"),
    r("api", "PUT", "/integrations/{id}/webhook-secret"),
    r("api", "DELETE", "/integrations/{id}/webhook-secret"),
    r("api", "GET", "/integrations/{id}/stats"),
    r("api", "GET", "/providers"),
    r("api", "GET", "/providers/{id}"),
    r("api", "POST", "/custom-providers"),
    r("api", "GET", "/custom-providers"),
    r("api", "GET", "/custom-providers/{id}"),
    r("api", "DELETE", "/custom-providers/{id}"),
    r("api", "POST", "/provider-discovery"),
    r("api", "GET", "/connections"),
    r("api", "POST", "/connections"),
    r("api", "GET", "/connections/{id}"),
    r("api", "DELETE", "/connections/{id}"),
    r("api", "GET", "/connections/{id}/health"),
    r("api", "GET", "/connections/{id}/events"),
    r("api", "POST", "/connections/{id}/events/{event}/redeliver"),
    r("api", "POST", "/webhook-endpoints"),
    r("api", "GET", "/webhook-endpoints"),
    r("api", "GET", "/webhook-endpoints/{id}"),
    r("api", "PATCH", "/webhook-endpoints/{id}"),
    r("api", "DELETE", "/webhook-endpoints/{id}"),
    r("api", "POST", "/webhook-endpoints/{id}/rotate-secret"),
    r("token", "GET", "/connections/{id}/token"),
    r("test-connection", "POST", "/connections/{id}/test"),
    r("proxy", "ANY", "/proxy/{id}"),
    r("proxy", "ANY", "/proxy/{id}/{path+}"),
    r("inbound", "POST", "/webhooks/{tenant}/{integration}"),
];

impl Route {
    /// The values of the template's parameters in a path's segments (as
    /// [`crate::http::segments`] gives them: decoded, none empty), in
    /// order, when the segments match the template. A greedy last
    /// parameter takes the rest of the path, one segment at the least.
    pub fn captures<S: AsRef<str>>(&self, segs: &[S]) -> Option<Vec<String>> {
        let template: Vec<&str> = self.path.trim_start_matches('/').split('/').collect();
        let greedy = template.last().is_some_and(|t| t.ends_with("+}"));
        let fits = if greedy {
            segs.len() >= template.len()
        } else {
            segs.len() == template.len()
        };
        if !fits {
            return None;
        }
        let mut out = Vec::new();
        for (i, t) in template.iter().enumerate() {
            let seg = segs[i].as_ref();
            if t.ends_with("+}") {
                let rest: Vec<&str> = segs[i..].iter().map(AsRef::as_ref).collect();
                out.push(rest.join("/"));
            } else if t.starts_with('{') {
                out.push(seg.to_string());
            } else if *t != seg {
                return None;
            }
        }
        Some(out)
    }

    /// Whether the route takes `method`.
    pub fn takes(&self, method: &Method) -> bool {
        match self.method {
            "ANY" => ANY_METHODS.contains(&method.as_str()),
            m => m == method.as_str(),
        }
    }
}

/// The route for `method` and a path's segments, with the values of its
/// parameters. `Err(true)` when the path is a route's but not for this
/// method (a 405), `Err(false)` when it is no route's (a 404).
pub fn find<S: AsRef<str>>(method: &Method, segs: &[S]) -> Result<(Route, Vec<String>), bool> {
    let mut known = false;
    for route in ROUTES {
        if let Some(values) = route.captures(segs) {
            if route.takes(method) {
                return Ok((*route, values));
            }
            known = true;
        }
    }
    Err(known)
}

/// The methods `path` allows, as an `Allow` value, when it is a route's.
pub fn allowed_methods(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut methods: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.captures(&segs).is_some())
        .flat_map(|r| match r.method {
            "ANY" => ANY_METHODS.to_vec(),
            m => vec![m],
        })
        .collect();
    methods.sort_unstable();
    methods.dedup();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// Adds the `Allow` header to a 405 answer for `path` (RFC 9110 15.5.6).
pub fn with_allow(path: &str, mut resp: Response<Body>) -> Response<Body> {
    if resp.status() == 405 && !resp.headers().contains_key(header::ALLOW) {
        if let Some(v) = allowed_methods(path).and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_methods_come_from_the_table() {
        assert_eq!(
            allowed_methods("/connections/conn_1").as_deref(),
            Some("DELETE, GET")
        );
        assert_eq!(
            allowed_methods("/oauth/demo/authorize").as_deref(),
            Some("GET, POST")
        );
        assert_eq!(allowed_methods("/connect").as_deref(), Some("GET, POST"));
        assert_eq!(allowed_methods("/nope/x/y/z"), None);
    }

    fn segs(path: &str) -> Vec<&str> {
        path.split('/').filter(|s| !s.is_empty()).collect()
    }

    #[test]
    fn a_template_captures_its_parameters_and_a_greedy_one_takes_the_rest() {
        let route = |path| ROUTES.iter().find(|r| r.path == path).unwrap();
        let redeliver = route("/connections/{id}/events/{event}/redeliver");
        let got = |r: &Route, p| r.captures(&segs(p));
        assert_eq!(
            got(redeliver, "/connections/c1/events/e1/redeliver"),
            Some(vec!["c1".to_string(), "e1".to_string()])
        );
        assert_eq!(got(redeliver, "/connections/c1/events/e1"), None);
        assert_eq!(
            got(redeliver, "/connections/c1/events/e1/redeliver/x"),
            None
        );
        let proxied = route("/proxy/{id}/{path+}");
        assert_eq!(
            got(proxied, "/proxy/c1/v1/users/me"),
            Some(vec!["c1".to_string(), "v1/users/me".to_string()])
        );
        assert_eq!(got(proxied, "/proxy/c1/"), None);
        assert_eq!(
            got(route("/proxy/{id}"), "/proxy/c1"),
            Some(vec!["c1".to_string()])
        );
    }

    #[test]
    fn a_known_path_with_another_method_is_told_apart_from_an_unknown_path() {
        let found = find(&Method::GET, &segs("/connections/c1")).unwrap();
        assert_eq!(
            (found.0.path, found.1),
            ("/connections/{id}", vec!["c1".to_string()])
        );
        assert_eq!(
            find(&Method::PUT, &segs("/connections/c1")).err(),
            Some(true)
        );
        assert_eq!(
            find(&Method::GET, &segs("/connections/c1/nope")).err(),
            Some(false)
        );
        assert!(find(&Method::PATCH, &segs("/proxy/c1/x")).is_ok());
        assert_eq!(find(&Method::TRACE, &segs("/proxy/c1/x")).err(), Some(true));
    }
}
