#!/usr/bin/env bash
# Checks scripts/oidc-provider.mjs end to end with curl, the way a plain
# cookie-keeping HTTP client (or the broker) uses it: dynamic registration,
# authorization code + PKCE (S256) through the project's login and consent
# forms, `iss` in the authorization response, token exchange with HTTP Basic,
# refresh token issuance and rotation, revocation, introspection, userinfo,
# consent denial, and the test-only counters. Nothing secret is printed.
#
# Usage: bash scripts/check-oidc-provider.sh      (needs node, curl, npm install done)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ ! -d node_modules/oidc-provider ]; then
  echo "node_modules missing: run 'npm ci' first" >&2
  exit 1
fi

WORK="$(mktemp -d)"
PROVIDER_PID=""
cleanup() {
  if [ -n "$PROVIDER_PID" ] && kill -0 "$PROVIDER_PID" 2>/dev/null; then
    kill -TERM "$PROVIDER_PID" 2>/dev/null || true
    wait "$PROVIDER_PID" 2>/dev/null || true
  fi
  if [ "${CHECK_KEEP_WORK:-}" = "1" ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

FAILURES=0
pass() { echo "ok   - $*"; }
fail() { echo "FAIL - $*" >&2; FAILURES=$((FAILURES + 1)); }
die() { echo "FATAL - $*" >&2; exit 1; }
check() { # check "description" test-args...
  local desc="$1"; shift
  if "$@"; then pass "$desc"; else fail "$desc"; fi
}

# json FILE EXPR -> prints the JS expression evaluated with `j` = parsed JSON ('' for undefined)
json() {
  node -e '
    const fs = require("fs");
    const j = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    const v = (new Function("j", "return (" + process.argv[2] + ");"))(j);
    process.stdout.write(v === undefined || v === null ? "" : String(v));
  ' -- "$1" "$2"
}

# url_param URL NAME -> value of a query parameter ('' when absent)
url_param() {
  node -e 'process.stdout.write(new URL(process.argv[1]).searchParams.get(process.argv[2]) ?? "")' -- "$1" "$2"
}

PORT="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close();})')"
ISSUER="http://localhost:${PORT}"
TTL=123
LOG="$WORK/provider.log"

OIDC_PORT="$PORT" OIDC_ISSUER="$ISSUER" OIDC_TEST_ENDPOINTS=1 OIDC_ACCESS_TOKEN_TTL="$TTL" OIDC_FIRST_ACCESS_TOKEN_TTL="$TTL" \
  node scripts/oidc-provider.mjs >"$LOG" 2>&1 &
PROVIDER_PID=$!

for _ in $(seq 1 100); do
  grep -q "oidc-provider listening on ${ISSUER}" "$LOG" 2>/dev/null && break
  kill -0 "$PROVIDER_PID" 2>/dev/null || { cat "$LOG" >&2; die "provider exited early"; }
  sleep 0.2
done
grep -q "oidc-provider listening on ${ISSUER}" "$LOG" || die "provider did not report ready"
pass "provider started on ${ISSUER}"

JAR="$WORK/cookies.txt"
: >"$JAR"
CURL=(curl -sS --max-time 10 -b "$JAR" -c "$JAR")

# --- discovery --------------------------------------------------------------
"${CURL[@]}" -o "$WORK/disc.json" "$ISSUER/.well-known/openid-configuration"
check "discovery issuer" test "$(json "$WORK/disc.json" 'j.issuer')" = "$ISSUER"
check "discovery advertises iss parameter" test "$(json "$WORK/disc.json" 'j.authorization_response_iss_parameter_supported')" = "true"
check "discovery S256 only" test "$(json "$WORK/disc.json" 'JSON.stringify(j.code_challenge_methods_supported)')" = '["S256"]'
check "discovery revocation endpoint" test "$(json "$WORK/disc.json" 'j.revocation_endpoint')" = "$ISSUER/token/revocation"
check "discovery introspection endpoint" test "$(json "$WORK/disc.json" 'j.introspection_endpoint')" = "$ISSUER/token/introspection"
check "discovery userinfo endpoint" test "$(json "$WORK/disc.json" 'j.userinfo_endpoint')" = "$ISSUER/me"

# --- dynamic registration ---------------------------------------------------
REDIRECT_URI="http://127.0.0.1:9/oauth/demo/callback"
cat >"$WORK/reg-req.json" <<EOF
{"redirect_uris":["${REDIRECT_URI}","http://localhost:9000/oauth/demo/callback"],
 "grant_types":["authorization_code","refresh_token"],
 "response_types":["code"],
 "token_endpoint_auth_method":"client_secret_basic",
 "client_name":"check script"}
EOF
STATUS="$("${CURL[@]}" -o "$WORK/reg.json" -w '%{http_code}' -H 'Content-Type: application/json' \
  --data-binary "@$WORK/reg-req.json" "$ISSUER/reg")"
check "registration returns 201" test "$STATUS" = "201"
CLIENT_ID="$(json "$WORK/reg.json" 'j.client_id')"
CLIENT_SECRET="$(json "$WORK/reg.json" 'j.client_secret')"
[ -n "$CLIENT_ID" ] && [ -n "$CLIENT_SECRET" ] || die "registration did not return client credentials"
pass "registered a client (localhost + 127.0.0.1 redirect URIs accepted)"

# --- helpers for the authorization flow -------------------------------------
new_pkce() {
  VERIFIER="$(node -e 'process.stdout.write(require("crypto").randomBytes(32).toString("base64url"))')"
  CHALLENGE="$(node -e 'process.stdout.write(require("crypto").createHash("sha256").update(process.argv[1]).digest("base64url"))' -- "$VERIFIER")"
  STATE="$(node -e 'process.stdout.write(require("crypto").randomBytes(16).toString("base64url"))')"
}

auth_url() { # auth_url SCOPE [extra query]
  node -e '
    const [issuer, clientId, redirectUri, scope, challenge, state, extra] = process.argv.slice(1);
    const u = new URL("/auth", issuer);
    u.search = new URLSearchParams({ client_id: clientId, response_type: "code", redirect_uri: redirectUri,
      scope, state, code_challenge: challenge, code_challenge_method: "S256" }).toString();
    if (extra) u.search += "&" + extra;
    process.stdout.write(u.href);
  ' -- "$ISSUER" "$CLIENT_ID" "$REDIRECT_URI" "$1" "$CHALLENGE" "$STATE" "${2:-}"
}

# get URL -> sets HTTP_STATUS, LOCATION (absolute), BODY_FILE
BODY_FILE="$WORK/body.html"
get() {
  local out
  out="$("${CURL[@]}" -o "$BODY_FILE" -w '%{http_code} %{redirect_url}' "$1")"
  HTTP_STATUS="${out%% *}"; LOCATION="${out#* }"
}
post_form() { # post_form URL field=value...
  local url="$1"; shift
  local args=(--data "")
  for kv in "$@"; do args+=(--data-urlencode "$kv"); done
  local out
  out="$("${CURL[@]}" -o "$BODY_FILE" -w '%{http_code} %{redirect_url}' "${args[@]}" "$url")"
  HTTP_STATUS="${out%% *}"; LOCATION="${out#* }"
}
form_action() { # first form action in BODY_FILE whose path ends with $1
  grep -o "<form method=\"post\" action=\"/interaction/[A-Za-z0-9_-]*/$1\">" "$BODY_FILE" \
    | head -n1 | sed -E 's/.*action="([^"]*)".*/\1/'
}

# follow_to_client: follow provider redirects (manually) until the redirect goes
# to REDIRECT_URI's origin; on a page, act: login (password $PASSWORD) or $CONSENT_ACTION.
# Sets FINAL (the client redirect) or fails.
follow_to_client() {
  local url="$1" hops=0
  FINAL=""
  while [ $hops -lt 20 ]; do
    hops=$((hops + 1))
    get "$url"
    if [ -n "$LOCATION" ]; then
      case "$LOCATION" in
        "${REDIRECT_URI}"*) FINAL="$LOCATION"; return 0 ;;
        "$ISSUER"/*) url="$LOCATION"; continue ;;
        *) echo "unexpected redirect target" >&2; return 1 ;;
      esac
    fi
    [ "$HTTP_STATUS" = "200" ] || { echo "unexpected status $HTTP_STATUS" >&2; return 1; }
    local action
    action="$(form_action login)"
    if [ -n "$action" ]; then
      grep -q 'name="login"' "$BODY_FILE" && grep -q 'id="login"' "$BODY_FILE" \
        && grep -q 'name="password"' "$BODY_FILE" && grep -q 'id="password"' "$BODY_FILE" \
        && grep -q 'id="submit"' "$BODY_FILE" || { echo "login form contract broken" >&2; return 1; }
      LOGIN_PAGES=$((LOGIN_PAGES + 1))
      post_form "$ISSUER$action" "login=$LOGIN" "password=$PASSWORD"
      if [ "$HTTP_STATUS" = "200" ] && [ -n "$(form_action login)" ]; then
        LOGIN_REJECTED=$((LOGIN_REJECTED + 1))
        PASSWORD="demo" # retry with the right password
        post_form "$ISSUER$action" "login=$LOGIN" "password=$PASSWORD"
      fi
      [ "$HTTP_STATUS" = "303" ] || { echo "login did not redirect ($HTTP_STATUS)" >&2; return 1; }
      url="$LOCATION"; continue
    fi
    action="$(form_action "$CONSENT_ACTION")"
    if [ -n "$action" ]; then
      grep -q 'id="confirm"' "$BODY_FILE" && grep -q 'id="deny"' "$BODY_FILE" \
        || { echo "consent form contract broken" >&2; return 1; }
      CONSENT_PAGES=$((CONSENT_PAGES + 1))
      post_form "$ISSUER$action"
      [ "$HTTP_STATUS" = "303" ] || { echo "consent did not redirect ($HTTP_STATUS)" >&2; return 1; }
      url="$LOCATION"; continue
    fi
    echo "page without a known form" >&2
    return 1
  done
  echo "too many redirects" >&2
  return 1
}

token_request() { # token_request OUTFILE form-fields... ; sets HTTP_STATUS
  local out="$1"; shift
  local args=()
  for kv in "$@"; do args+=(--data-urlencode "$kv"); done
  HTTP_STATUS="$(curl -sS --max-time 10 -o "$out" -w '%{http_code}' -u "$CLIENT_ID:$CLIENT_SECRET" "${args[@]}" "$ISSUER/token")"
}
revoke() { # revoke TOKEN HINT ; sets HTTP_STATUS
  HTTP_STATUS="$(curl -sS --max-time 10 -o "$WORK/revoke.json" -w '%{http_code}' -u "$CLIENT_ID:$CLIENT_SECRET" \
    --data-urlencode "token=$1" --data-urlencode "token_type_hint=$2" "$ISSUER/token/revocation")"
}
introspect_active() { # introspect_active TOKEN -> prints true/false
  curl -sS --max-time 10 -o "$WORK/introspect.json" -u "$CLIENT_ID:$CLIENT_SECRET" \
    --data-urlencode "token=$1" "$ISSUER/token/introspection"
  json "$WORK/introspect.json" 'j.active'
}

# --- PKCE is required ---------------------------------------------------------
new_pkce
NOPKCE_URL="$(node -e '
  const [issuer, clientId, redirectUri, state] = process.argv.slice(1);
  const u = new URL("/auth", issuer);
  u.search = new URLSearchParams({ client_id: clientId, response_type: "code", redirect_uri: redirectUri, scope: "openid", state }).toString();
  process.stdout.write(u.href);' -- "$ISSUER" "$CLIENT_ID" "$REDIRECT_URI" "$STATE")"
get "$NOPKCE_URL"
check "authorization without PKCE is rejected (error=invalid_request)" \
  test "$(url_param "${LOCATION:-http://x/}" error)" = "invalid_request"
PLAIN_URL="$(auth_url openid | sed 's/code_challenge_method=S256/code_challenge_method=plain/')"
get "$PLAIN_URL"
check "code_challenge_method=plain is rejected" test "$(url_param "${LOCATION:-http://x/}" error)" = "invalid_request"

# --- full flow: login (wrong password first), consent, code + state + iss ------
new_pkce
LOGIN="alice"; PASSWORD="wrong-password"; CONSENT_ACTION="confirm"
LOGIN_PAGES=0; LOGIN_REJECTED=0; CONSENT_PAGES=0
follow_to_client "$(auth_url 'openid offline_access profile email')" || die "authorization flow failed"
check "login page shown" test "$LOGIN_PAGES" -ge 1
check "wrong password re-renders the login form" test "$LOGIN_REJECTED" = "1"
check "consent page shown" test "$CONSENT_PAGES" = "1"
CODE="$(url_param "$FINAL" code)"
check "authorization response has a code" test -n "$CODE"
check "authorization response echoes state" test "$(url_param "$FINAL" state)" = "$STATE"
check "authorization response carries iss = issuer (RFC 9207)" test "$(url_param "$FINAL" iss)" = "$ISSUER"

# --- token exchange (client_secret_basic) ----------------------------------
token_request "$WORK/tok1.json" grant_type=authorization_code "code=$CODE" "redirect_uri=$REDIRECT_URI" "code_verifier=$VERIFIER"
check "code exchange returns 200" test "$HTTP_STATUS" = "200"
AT1="$(json "$WORK/tok1.json" 'j.access_token')"
RT1="$(json "$WORK/tok1.json" 'j.refresh_token')"
check "access token issued" test -n "$AT1"
check "refresh token issued for offline_access" test -n "$RT1"
check "id_token issued" test -n "$(json "$WORK/tok1.json" 'j.id_token')"
check "token_type Bearer" test "$(json "$WORK/tok1.json" 'j.token_type')" = "Bearer"
check "expires_in = OIDC_ACCESS_TOKEN_TTL" test "$(json "$WORK/tok1.json" 'j.expires_in')" = "$TTL"
check "granted scope includes offline_access" test "$(json "$WORK/tok1.json" 'j.scope.split(" ").includes("offline_access")')" = "true"


# --- userinfo + introspection ----------------------------------------------
curl -sS --max-time 10 -o "$WORK/me.json" -H "Authorization: Bearer $AT1" "$ISSUER/me"
check "userinfo sub = login" test "$(json "$WORK/me.json" 'j.sub')" = "alice"
check "userinfo email" test "$(json "$WORK/me.json" 'j.email')" = "alice@example.test"
check "userinfo email_verified" test "$(json "$WORK/me.json" 'j.email_verified')" = "true"
check "userinfo name" test "$(json "$WORK/me.json" 'j.name')" = "Alice"
check "introspection: access token active" test "$(introspect_active "$AT1")" = "true"

# --- refresh + rotation -----------------------------------------------------
token_request "$WORK/tok2.json" grant_type=refresh_token "refresh_token=$RT1"
check "refresh returns 200" test "$HTTP_STATUS" = "200"
AT2="$(json "$WORK/tok2.json" 'j.access_token')"
RT2="$(json "$WORK/tok2.json" 'j.refresh_token')"
check "refresh returns a new access token" test -n "$AT2" -a "$AT2" != "$AT1"
check "refresh rotates the refresh token" test -n "$RT2" -a "$RT2" != "$RT1"

token_request "$WORK/tok3.json" grant_type=refresh_token "refresh_token=$RT2"
check "rotated refresh token works" test "$HTTP_STATUS" = "200"
AT3="$(json "$WORK/tok3.json" 'j.access_token')"
RT3="$(json "$WORK/tok3.json" 'j.refresh_token')"

# --- revocation ---------------------------------------------------------------
revoke "$AT3" access_token
check "revoke access token returns 200" test "$HTTP_STATUS" = "200"
check "revoked access token is inactive" test "$(introspect_active "$AT3")" = "false"
revoke "$RT3" refresh_token
check "revoke refresh token returns 200" test "$HTTP_STATUS" = "200"
token_request "$WORK/tok4.json" grant_type=refresh_token "refresh_token=$RT3"
check "revoked refresh token rejected with invalid_grant" test "$HTTP_STATUS:$(json "$WORK/tok4.json" 'j.error')" = "400:invalid_grant"

token_request "$WORK/tok5.json" grant_type=refresh_token "refresh_token=$RT1"
check "old (rotated) refresh token rejected with invalid_grant" test "$HTTP_STATUS:$(json "$WORK/tok5.json" 'j.error')" = "400:invalid_grant"

# --- consent denied -> access_denied -------------------------------------------
new_pkce
CONSENT_ACTION="abort"; CONSENT_PAGES=0; LOGIN_PAGES=0
follow_to_client "$(auth_url 'openid offline_access')" || die "deny flow failed"
check "existing session skips login" test "$LOGIN_PAGES" = "0"
check "deny redirects with error=access_denied" test "$(url_param "$FINAL" error)" = "access_denied"
check "deny redirect echoes state" test "$(url_param "$FINAL" state)" = "$STATE"
check "deny redirect carries iss" test "$(url_param "$FINAL" iss)" = "$ISSUER"
check "deny redirect has no code" test -z "$(url_param "$FINAL" code)"

# --- no offline_access -> no refresh token ------------------------------------
new_pkce
CONSENT_ACTION="confirm"
follow_to_client "$(auth_url 'openid email')" || die "flow without offline_access failed"
token_request "$WORK/tok6.json" grant_type=authorization_code "code=$(url_param "$FINAL" code)" "redirect_uri=$REDIRECT_URI" "code_verifier=$VERIFIER"
check "without offline_access: 200 and no refresh token" test "$HTTP_STATUS:$(json "$WORK/tok6.json" 'j.refresh_token')" = "200:"

# --- wrong PKCE verifier -------------------------------------------------------
new_pkce
follow_to_client "$(auth_url 'openid offline_access')" || die "flow for PKCE mismatch failed"
token_request "$WORK/tok7.json" grant_type=authorization_code "code=$(url_param "$FINAL" code)" "redirect_uri=$REDIRECT_URI" "code_verifier=wrong-verifier-wrong-verifier-wrong-verifier-123"
check "wrong code_verifier rejected with invalid_grant" test "$HTTP_STATUS:$(json "$WORK/tok7.json" 'j.error')" = "400:invalid_grant"

# --- code replay: rejected, and the tokens issued from that code are revoked ---
new_pkce
follow_to_client "$(auth_url 'openid offline_access')" || die "flow for code replay failed"
RCODE="$(url_param "$FINAL" code)"
token_request "$WORK/tok8.json" grant_type=authorization_code "code=$RCODE" "redirect_uri=$REDIRECT_URI" "code_verifier=$VERIFIER"
check "fresh code exchange returns 200" test "$HTTP_STATUS" = "200"
AT8="$(json "$WORK/tok8.json" 'j.access_token')"
check "introspection before code replay: active" test "$(introspect_active "$AT8")" = "true"
token_request "$WORK/tok-replay.json" grant_type=authorization_code "code=$RCODE" "redirect_uri=$REDIRECT_URI" "code_verifier=$VERIFIER"
check "code replay rejected with invalid_grant" test "$HTTP_STATUS:$(json "$WORK/tok-replay.json" 'j.error')" = "400:invalid_grant"
check "code replay revokes the tokens issued from that code" test "$(introspect_active "$AT8")" = "false"

# --- counters ----------------------------------------------------------------
# token requests: codes 1 ok + 1 no-offline + 1 wrong verifier + 1 ok + 1 replay = 5;
# refresh: RT1, RT2 ok, RT3 revoked, RT1 replay = 4
curl -sS --max-time 10 -o "$WORK/cnt.json" "$ISSUER/__test/token-requests?client_id=$(node -e 'process.stdout.write(encodeURIComponent(process.argv[1]))' -- "$CLIENT_ID")"
check "counter client_id" test "$(json "$WORK/cnt.json" 'j.client_id')" = "$CLIENT_ID"
check "counter total = 9" test "$(json "$WORK/cnt.json" 'j.count')" = "9"
check "counter authorization_code = 5" test "$(json "$WORK/cnt.json" 'j.by_grant.authorization_code')" = "5"
check "counter refresh_token = 4" test "$(json "$WORK/cnt.json" 'j.by_grant.refresh_token')" = "4"
curl -sS --max-time 10 -o "$WORK/rev.json" "$ISSUER/__test/revocations?client_id=$CLIENT_ID"
check "revocation counter = 2" test "$(json "$WORK/rev.json" 'j.count')" = "2"
curl -sS --max-time 10 -o "$WORK/cnt0.json" "$ISSUER/__test/token-requests?client_id=nobody"
check "unknown client counts 0" test "$(json "$WORK/cnt0.json" 'j.count + ":" + j.by_grant.refresh_token')" = "0:0"
# client_id from the form body (client_secret_post style), even when auth fails
curl -sS --max-time 10 -o /dev/null --data-urlencode "client_id=post-client" --data-urlencode "client_secret=x" \
  --data-urlencode "grant_type=refresh_token" --data-urlencode "refresh_token=x" "$ISSUER/token"
curl -sS --max-time 10 -o "$WORK/cnt1.json" "$ISSUER/__test/token-requests?client_id=post-client"
check "failed client_secret_post request counted by body client_id" \
  test "$(json "$WORK/cnt1.json" 'j.count + ":" + j.by_grant.refresh_token')" = "1:1"

# --- nothing secret in the provider's log -------------------------------------
LEAK=0
for secret in "$CODE" "$RCODE" "$AT1" "$RT1" "$AT2" "$RT2" "$AT3" "$RT3" "$AT8" "$CLIENT_SECRET" "$VERIFIER" "password" "wrong-password"; do
  if [ -n "$secret" ] && grep -qF -- "$secret" "$LOG"; then LEAK=1; fi
done
grep -q '?' "$LOG" && LEAK=1
check "provider log holds no code/token/secret/password/query string" test "$LEAK" = "0"

# --- graceful shutdown ---------------------------------------------------------
kill -TERM "$PROVIDER_PID"
RC=0; wait "$PROVIDER_PID" || RC=$?
PROVIDER_PID=""
check "SIGTERM exits 0" test "$RC" = "0"

if [ "$FAILURES" -ne 0 ]; then
  echo "$FAILURES check(s) failed" >&2
  exit 1
fi
echo "all oidc-provider checks passed"
