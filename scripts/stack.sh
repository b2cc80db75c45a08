# Sourced by scripts/dev and scripts/test: starts and stops the local stack
# (moto server, oidc-provider, cargo lambda watch). Every process is started
# here and stopped by stack_stop; logs go to $STACK_DIR/logs.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$ROOT/.venv/bin:$PATH"
: "${STACK_DIR:=$ROOT/.stack}"
: "${MOTO_PORT:=5055}" "${OIDC_PORT:=9100}" "${BROKER_PORT:=9000}" "${DEMO_PORT:=9200}"
: "${WEBHOOK_RECEIVER_PORT:=$((DEMO_PORT + 100))}"
export STACK_DIR MOTO_PORT OIDC_PORT BROKER_PORT DEMO_PORT WEBHOOK_RECEIVER_PORT
export WEBHOOK_RECEIVER_URL="http://127.0.0.1:$WEBHOOK_RECEIVER_PORT"
: "${FAULT_PORT:=$((MOTO_PORT + 1))}"
export FAULT_PORT
# The RFC 7523 (JWT bearer) authorization server (scripts/jwt-server.py).
: "${JWT_PORT:=$((OIDC_PORT + 50))}"
export JWT_PORT JWT_SERVER_URL="http://127.0.0.1:$JWT_PORT"
# Scripts and tests reach moto directly; the functions reach it through the
# fault-injecting proxy (scripts/faultproxy.py), which the reliability tests
# program at $FAULT_PROXY_URL/__faults/.
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
export FAULT_PROXY_URL="http://127.0.0.1:$FAULT_PORT"
# The template's IAM, enforced (scripts/iam_local.py): scripts and tests act
# as profile "harness"; each function runs as its own user, named by the
# AWS_PROFILE in its Cargo.toml. No static keys: they would win over AWS_PROFILE.
export AWS_REGION=us-east-1
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
export AWS_SHARED_CREDENTIALS_FILE="$STACK_DIR/aws-credentials" AWS_CONFIG_FILE=/dev/null AWS_PROFILE=harness
export BROKER_URL="http://localhost:$BROKER_PORT"
export OIDC_ISSUER="http://localhost:$OIDC_PORT"
: "${TABLE_NAME:=oauth-broker-local}" "${SECRET_PREFIX:=oauth-broker-local/}"
export TABLE_NAME SECRET_PREFIX
STACK_PIDS=()

mkdir -p "$STACK_DIR/logs"

stack_log() { echo "stack: $*" >&2; }

# wait_for NAME URL [SECONDS] [EXPECTED_STATUS_REGEX]
wait_for() {
  local name=$1 url=$2 secs=${3:-60} want=${4:-'^[2-4]'} code i
  for ((i = 0; i < secs * 2; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)
    if [[ $code =~ $want ]]; then return 0; fi
    sleep 0.5
  done
  stack_log "$name did not come up at $url (last status $code); see $STACK_DIR/logs"
  return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_bg() { # start_bg NAME CMD...
  local name=$1; shift
  "$@" >"$STACK_DIR/logs/$name.log" 2>&1 &
  STACK_PIDS+=($!)
}

stack_start() {
  for p in "$MOTO_PORT" "$FAULT_PORT" "$OIDC_PORT" "$BROKER_PORT" "$WEBHOOK_RECEIVER_PORT" "$JWT_PORT"; do
    port_free "$p" || { stack_log "port $p is in use (another stack running?)"; return 1; }
  done
  stack_log "moto server (IAM enforced) on 127.0.0.1:$MOTO_PORT, fault proxy on $FAULT_PROXY_URL"
  start_bg moto python "$ROOT/scripts/iam_local.py" serve -H 127.0.0.1 -p "$MOTO_PORT"
  start_bg faultproxy python "$ROOT/scripts/faultproxy.py" --listen "127.0.0.1:$FAULT_PORT" \
      --upstream "$AWS_ENDPOINT_URL"
  stack_log "oidc-provider on $OIDC_ISSUER"
  OIDC_TEST_ENDPOINTS=1 OIDC_ACCESS_TOKEN_TTL=${OIDC_ACCESS_TOKEN_TTL:-300} \
    OIDC_FIRST_ACCESS_TOKEN_TTL=${OIDC_FIRST_ACCESS_TOKEN_TTL:-${OIDC_ACCESS_TOKEN_TTL:-300}} \
    start_bg oidc-provider node "$ROOT/scripts/oidc-provider.mjs"
  # A tenant's webhook receiver, verifying with the standardwebhooks library.
  start_bg webhook-receiver node "$ROOT/scripts/webhook-receiver.mjs"
  stack_log "jwt-server (RFC 7523, Authlib) on $JWT_SERVER_URL"
  start_bg jwt-server python "$ROOT/scripts/jwt-server.py"
  wait_for moto "http://127.0.0.1:$MOTO_PORT/moto-api/" 60
  wait_for faultproxy "$FAULT_PROXY_URL/__faults/health" 60
  # Provisioning writes the harness profile: it cannot act as it yet.
  env -u AWS_PROFILE python "$ROOT/scripts/iam_local.py" provision --endpoint "$AWS_ENDPOINT_URL" \
      --credentials-file "$AWS_SHARED_CREDENTIALS_FILE" >&2
  python "$ROOT/scripts/create_table.py" "$TABLE_NAME" >&2
  # The template's SecretsKey: Secrets Manager encrypts the secrets with it,
  # and a refreshed token set whose secret write keeps failing is sealed
  # under it into the record.
  SECRETS_KMS_KEY_ID=$(python - <<'PY'
import os, boto3
kms = boto3.client("kms", region_name=os.environ["AWS_REGION"])
print(kms.create_key(Description="broker secrets (local)")["KeyMetadata"]["Arn"])
PY
) || return 1
  export SECRETS_KMS_KEY_ID
  # The template's queues, and the functions' event sources (scripts/esm.py).
  STACK_QUEUES=$(python "$ROOT/scripts/esm.py" queues --prefix "$TABLE_NAME") || return 1
  DELIVERY_QUEUE_URL=$(json_field DeliveryQueue <<<"$STACK_QUEUES") || return 1
  export STACK_QUEUES DELIVERY_QUEUE_URL
  wait_for oidc-provider "$OIDC_ISSUER/.well-known/openid-configuration" 60
  wait_for jwt-server "$JWT_SERVER_URL/health" 60

  cat >"$STACK_DIR/functions.env" <<ENV
TABLE_NAME=$TABLE_NAME
SECRET_PREFIX=$SECRET_PREFIX
PUBLIC_BASE_URL=$BROKER_URL
ALLOW_INSECURE_LOOPBACK=true
AWS_ENDPOINT_URL=$FAULT_PROXY_URL
AWS_REGION=$AWS_REGION
AWS_SHARED_CREDENTIALS_FILE=$AWS_SHARED_CREDENTIALS_FILE
AWS_CONFIG_FILE=/dev/null
AWS_PROFILE=function-without-profile
SECRETS_KMS_KEY_ID=$SECRETS_KMS_KEY_ID
RUST_LOG=${FUNCTIONS_LOG:-info}
REFRESH_MARGIN_SECONDS=${REFRESH_MARGIN_SECONDS:-300}
REFRESH_COALESCE_SECONDS=${REFRESH_COALESCE_SECONDS:-10}
REFRESH_FORCE_COALESCE_SECONDS=${REFRESH_FORCE_COALESCE_SECONDS:-60}
SWEEP_LOOKAHEAD_SECONDS=${SWEEP_LOOKAHEAD_SECONDS:-300}
PROVIDER_TIMEOUT_MS=${PROVIDER_TIMEOUT_MS:-10000}
# Emulators on a loaded machine answer far slower than AWS (the defaults are
# 1 s an attempt, 2 s a call), and a call the fault proxy holds must not be
# retried by the SDK while a test acts around it.
AWS_ATTEMPT_TIMEOUT_MS=${AWS_ATTEMPT_TIMEOUT_MS:-30000}
AWS_OPERATION_TIMEOUT_MS=${AWS_OPERATION_TIMEOUT_MS:-30000}
DELIVERY_QUEUE_URL=$DELIVERY_QUEUE_URL
WEBHOOK_RETRY_SCHEDULE=${WEBHOOK_RETRY_SCHEDULE:-5,300,1800,7200,18000,36000,36000}
WEBHOOK_TIMEOUT_MS=${WEBHOOK_TIMEOUT_MS:-10000}
ENV
  stack_log "cargo lambda watch on $BROKER_URL (first start compiles the functions)"
  cd "$ROOT"
  # Hot reload only for scripts/dev: under the tests a file written into the
  # tree would restart every function mid-request (a 55 s stall, then a 500
  # from cargo lambda, in the browser tests).
  local reload=(--ignore-changes)
  [[ ${STACK_HOT_RELOAD:-0} == 1 ]] && reload=()
  # cargo lambda's own log: its info lines, and every 500 it answered
  # (tower_http's failures), so the tests can tell its own faults from
  # the functions' (see emulator_faults).
  # Under the tests the functions are already built (scripts/test builds the
  # workspace once): cargo lambda starts those binaries (scripts/cargo-prebuilt)
  # instead of building each function again with its own feature set. It is
  # run as cargo-lambda itself, since `cargo lambda` would set $CARGO.
  local cargo_env=()
  if [[ ${STACK_PREBUILT:-0} == 1 ]]; then
    cargo_env=(env CARGO="$ROOT/scripts/cargo-prebuilt" REAL_CARGO="$(command -v cargo)" PREBUILT_ROOT="$ROOT")
  fi
  RUST_LOG=${CARGO_LAMBDA_LOG:-cargo_lambda=info,tower_http=error} \
  # Up to four instances of each function at once, as Lambda runs many:
  # concurrent requests meet in the store, not in one process.
  start_bg functions "${cargo_env[@]}" cargo-lambda lambda watch --invoke-address 127.0.0.1 "${reload[@]}" \
      --invoke-port "$BROKER_PORT" --disable-cors --concurrency "${FUNCTION_CONCURRENCY:-4}" \
      --env-file "$STACK_DIR/functions.env"
  # Each route answers once its function is built and running.
  wait_for api "$BROKER_URL/connect-sessions" 900 '^401$'
  # A bare GET of the authorize route is always refused (unbound_link).
  wait_for authorize "$BROKER_URL/oauth/demo/authorize" 300 '^403$'
  wait_for callback "$BROKER_URL/oauth/demo/callback" 300 '^400$'
  stack_log "event sources (table stream, delivery queue) -> deliver"
  start_bg esm python "$ROOT/scripts/esm.py" run --table "$TABLE_NAME" \
      --queues "$STACK_QUEUES" --invoke "$BROKER_URL"
}

stack_stop() {
  local pid
  for pid in "${STACK_PIDS[@]}"; do
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  # cargo lambda watch runs each function as its own child process.
  pkill -TERM -f "cargo-lambda lambda watch --invoke-address 127.0.0.1 --invoke-port $BROKER_PORT" 2>/dev/null || true
  pkill -TERM -f "iam_local.py serve -H 127.0.0.1 -p $MOTO_PORT" 2>/dev/null || true
  pkill -TERM -f "faultproxy.py --listen 127.0.0.1:$FAULT_PORT" 2>/dev/null || true
  pkill -TERM -f "esm.py run --table $TABLE_NAME" 2>/dev/null || true
  sleep 1
  for pid in "${STACK_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  STACK_PIDS=()
}

# emulator_faults: how many 500s cargo lambda answered itself so far. Its
# emulation drops a function's response now and then (the function's POST
# of the response is accepted, the caller still gets cargo lambda's own
# `{"type":"https://httpstatuses.com/500"}`): a fault of the emulator, not
# of the broker, whose own 500s are logged as `request failed` with code `internal_error` first.
emulator_faults() {
  local log="$STACK_DIR/logs/functions.log" all own
  all=$(grep -c 'response failed classification=Status code: 500' "$log" || true)
  own=$(grep -cE 'request failed code="internal_error"|panicked at' "$log" || true)
  echo $(( all > own ? all - own : 0 ))
}

# admin_invoke JSON: runs the operator function through the local Lambda API.
admin_invoke() {
  curl -sf -X POST "$BROKER_URL/2015-03-31/functions/admin/invocations" \
    -H 'content-type: application/json' --data "$1"
}

# seed_demo: a demo tenant with its API key, a provider client registered at
# the local oidc-provider, and the `demo`, `shops` (demo-shop, templated),
# `keys` (demo-api-key), `logins` (demo-basic) and `machines`
# (demo-client-credentials: the end user types a client registered at the
# local oidc-provider, whose id and secret demo.env holds) integrations. Writes BROKER_API_KEY
# to $STACK_DIR/demo.env (mode 600) instead of printing it.
seed_demo() {
  local key client_id client_secret reg
  key=$(admin_invoke '{"action":"create_api_key","tenant_id":"demo"}' | json_field api_key)
  reg=$(curl -sf -X POST "$OIDC_ISSUER/reg" -H 'content-type: application/json' --data "{
    \"redirect_uris\": [\"$BROKER_URL/oauth/demo/callback\", \"$BROKER_URL/oauth/shops/callback\"],
    \"grant_types\": [\"authorization_code\", \"refresh_token\"],
    \"response_types\": [\"code\"], \"token_endpoint_auth_method\": \"client_secret_basic\"}")
  client_id=$(json_field client_id <<<"$reg")
  client_secret=$(json_field client_secret <<<"$reg")
  curl -sf -X POST "$BROKER_URL/integrations" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' --data "{\"id\": \"demo\", \"provider\": \"demo\",
      \"client_id\": \"$client_id\", \"client_secret\": \"$client_secret\",
      \"config\": {\"host\": \"localhost:$OIDC_PORT\"}}" >/dev/null
  # A templated provider (the end user types the shop, on the Connect
  # page), with the same provider client, and an API-key provider whose
  # stand-in service is the demo app (the key demo-key-123 is good).
  curl -sf -X POST "$BROKER_URL/integrations" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' --data "{\"id\": \"shops\", \"provider\": \"demo-shop\",
      \"client_id\": \"$client_id\", \"client_secret\": \"$client_secret\",
      \"config\": {\"host\": \"localhost:$OIDC_PORT\"}}" >/dev/null
  curl -sf -X POST "$BROKER_URL/integrations" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' --data "{\"id\": \"keys\", \"provider\": \"demo-api-key\",
      \"config\": {\"host\": \"localhost:$DEMO_PORT\"}}" >/dev/null
  # A basic-auth provider, the demo app again (demo-user / demo-pass).
  curl -sf -X POST "$BROKER_URL/integrations" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' --data "{\"id\": \"logins\", \"provider\": \"demo-basic\",
      \"config\": {\"host\": \"localhost:$DEMO_PORT\"}}" >/dev/null
  curl -sf -X POST "$BROKER_URL/integrations" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' --data "{\"id\": \"machines\", \"provider\": \"demo-client-credentials\",
      \"config\": {\"host\": \"localhost:$OIDC_PORT\"}}" >/dev/null
  local m2m
  m2m=$(curl -sf -X POST "$OIDC_ISSUER/reg" -H 'content-type: application/json' --data '{
    "redirect_uris": [], "response_types": [], "grant_types": ["client_credentials"],
    "token_endpoint_auth_method": "client_secret_basic"}')
  # A service account on the local RFC 7523 server: its key file, made
  # here and registered there, is what the end user uploads.
  curl -sf -X POST "$BROKER_URL/integrations" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' --data "{\"id\": \"service-accounts\", \"provider\": \"demo-service-account\",
      \"config\": {\"host\": \"127.0.0.1:$JWT_PORT\"}}" >/dev/null
  python "$ROOT/scripts/jwt-server.py" demo-key-file "$STACK_DIR/demo-service-account.json" >&2 || return 1
  export DEMO_INTEGRATIONS=demo,shops,keys,logins,machines,service-accounts
  (umask 077; printf 'BROKER_API_KEY=%s\nDEMO_M2M_CLIENT_ID=%s\nDEMO_M2M_CLIENT_SECRET=%s\n' "$key" \
    "$(json_field client_id <<<"$m2m")" "$(json_field client_secret <<<"$m2m")" >"$STACK_DIR/demo.env")
  export BROKER_API_KEY=$key
}

json_field() { python -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
