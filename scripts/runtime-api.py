#!/usr/bin/env python3
"""The deployed artifact as the local stack's functions: each arm64
`bootstrap` that `sam build` leaves in .aws-sam/build/<LogicalId>/, booted
under qemu-aarch64 against a Lambda Runtime API of this script's, behind an
HTTP API and a Lambda invoke API (scripts/arm64-check).

Run with the project's venv (the standard library, and the template reader
scripts/esm.py and scripts/iam_local.py already use):

  serve --port PORT --env-file FILE [--build-dir DIR] [--launcher CMD] [--template PATH]
      Boots every AWS::Serverless::Function of the template, one instance
      each, as Lambda does: CMD + [its bootstrap] (CMD defaults to
      `qemu-aarch64 -L /usr/aarch64-linux-gnu`), in its own directory, with
      the environment Lambda gives it (below) and AWS_LAMBDA_RUNTIME_API
      pointing at a Runtime API of its own on loopback:
        GET  /2018-06-01/runtime/invocation/next       one event, with the
             Lambda-Runtime-Aws-Request-Id, -Deadline-Ms (now + the
             function's Timeout), -Invoked-Function-Arn and -Trace-Id headers
        POST /2018-06-01/runtime/invocation/ID/response  the answer
        POST /2018-06-01/runtime/invocation/ID/error     a function error
        POST /2018-06-01/runtime/init/error              an init error
      A process that exits is reported and started again for the next
      invocation (one that exits in init fails the invocations waiting for
      it, as Lambda's init errors do); one that outlives its Timeout is
      killed.
      On 127.0.0.1:PORT it serves what `cargo lambda watch` serves:
        - the HTTP API: the template's HttpApi routes, matched by path as
          cargo lambda's router does (a method the template does not list
          reaches the function, which answers 405 itself; API Gateway would
          answer 404), each request turned into an API Gateway HTTP API
          (payload 2.0) event and the function's answer back into HTTP;
        - POST /2015-03-31/functions/NAME/invocations, NAME a binary or a
          logical id: the body is the event, the answer the function's
          payload (a function error: its error object, with
          X-Amz-Function-Error: Unhandled, as Lambda's Invoke answers);
        - GET /__runtime/report: per function, its boots, init times, exits
          and every invocation's outcome (a status code, `ok`, or a function
          error's type and message: no payload is kept or logged).
      Each function's output goes to <env-file dir>/logs/fn-NAME.log.

  serve ... lambda watch [cargo lambda watch's options]
      The same, started by scripts/stack.sh's stack_start in place of
      `cargo-lambda lambda watch` (scripts/arm64-check puts a cargo-lambda
      command that execs this first on PATH): --invoke-port and --env-file
      are read, the rest ignored.

  check [--template PATH] [--deliver-wait SECONDS]
      With the stack up and seeded (BROKER_URL, BROKER_API_KEY,
      WEBHOOK_RECEIVER_URL, DEMO_PORT in the environment, as scripts/stack.sh
      and seed_demo leave them), a request to each function: admin
      create_api_key; api GET /integrations, POST /webhook-endpoints (to the
      stack's receiver), POST /connections (the `keys` integration) and POST
      /connect-sessions; token, test-connection and proxy on that
      connection; authorize POST /oauth/demo/authorize with the session;
      callback with an unknown state; inbound POST /webhooks/demo/demo;
      refresh with the schedule's `{}`; and deliver, through the table
      stream and the queue, with the connection's connection.created
      webhook (SECONDS to arrive, 180). Then the server's report. Passes when every
      function of the template answered: a well-formed HTTP response (not a
      5xx) from each HTTP function, a success from each event function, no
      function error, no crash, no timeout; and the webhook that the
      connection made here caused went table stream -> deliver -> queue ->
      deliver -> receiver, verified there. Exit status 0 when it passes.

  artifacts [--build-dir DIR]
      Lists each function's bootstrap; fails unless every function of the
      template has one and it is an arm64 (aarch64) ELF executable.

  boot-watch --url URL [--seconds N] [--signal-pid PID]
      Waits until every function served at URL has polled its Runtime API
      once; fails, and sends SIGTERM to PID, when a function exits in init
      twice or N seconds (300) pass (stack_start would wait 15 minutes).

The environment of each function is what template.yaml gives it, with the
values the local stack gives the same names (the env file scripts/stack.sh
writes for cargo lambda watch): Globals.Function.Environment and the
function's own Environment (so DELIVERY_QUEUE_URL only where the template
sets it); what Lambda itself sets (AWS_LAMBDA_FUNCTION_NAME, _MEMORY_SIZE
from MemorySize, _VERSION, AWS_LAMBDA_LOG_FORMAT and _LOG_LEVEL from
LoggingConfig, AWS_REGION, LAMBDA_TASK_ROOT, _HANDLER, TZ, ...); the local
plumbing of the env file that is no template variable (AWS_ENDPOINT_URL,
credentials file, timeouts, ALLOW_INSECURE_LOOPBACK); and the function's
[package.metadata.lambda.env] (its AWS_PROFILE: the IAM user
scripts/iam_local.py made from its template policy), as cargo lambda watch
adds it.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from esm import plain  # noqa: E402
from iam_local import TEMPLATE, load_template  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LAUNCHER = "qemu-aarch64 -L /usr/aarch64-linux-gnu"
ACCOUNT = "123456789012"
EM_AARCH64 = 183  # ELF e_machine
# The front door waits this much longer than a function's Timeout before it
# gives up on the answer (the function itself is bound by its deadline).
GRACE_SECONDS = 10


def log(msg: str) -> None:
    print(f"runtime-api: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- template


class Spec:
    """One AWS::Serverless::Function: what Lambda and API Gateway know of it."""

    def __init__(self, logical: str, props: dict[str, Any], metadata: dict[str, Any], glob: dict[str, Any]):
        self.logical = logical
        self.binary = str((metadata.get("BuildProperties") or {}).get("Binary") or logical)
        self.timeout = int(props.get("Timeout", glob.get("Timeout", 3)))
        self.memory = int(props.get("MemorySize", glob.get("MemorySize", 128)))
        self.handler = str(props.get("Handler", glob.get("Handler", "bootstrap")))
        logging_config = props.get("LoggingConfig", glob.get("LoggingConfig")) or {}
        self.log_format = str(logging_config.get("LogFormat", "Text"))
        self.tracing = props.get("Tracing", glob.get("Tracing")) == "Active"
        names = dict(((glob.get("Environment") or {}).get("Variables") or {}))
        names.update(((props.get("Environment") or {}).get("Variables") or {}))
        self.env_names = sorted(names)
        self.routes: list[tuple[str, str]] = []
        self.events: list[str] = []
        for ev in (props.get("Events") or {}).values():
            kind = ev.get("Type")
            self.events.append(str(kind))
            if kind == "HttpApi":
                p = ev.get("Properties") or {}
                self.routes.append((str(p.get("Method", "ANY")).upper(), str(p.get("Path"))))

    @property
    def is_http(self) -> bool:
        return bool(self.routes)


def load_specs(template_path: Path) -> tuple[list[Spec], dict[str, Any]]:
    t = plain(load_template(template_path))
    glob = (t.get("Globals") or {}).get("Function") or {}
    specs = [
        Spec(logical, r.get("Properties") or {}, r.get("Metadata") or {}, glob)
        for logical, r in (t.get("Resources") or {}).items()
        if isinstance(r, dict) and r.get("Type") == "AWS::Serverless::Function"
    ]
    return specs, t


def route_match(template_path: str, path: str) -> dict[str, str] | None:
    """Path parameters when `path` matches the route's path ({x} one
    segment, {x+} the rest), else None."""
    want = [s for s in template_path.split("/") if s]
    have = path.split("?")[0].split("/")[1:] if path.startswith("/") else []
    if have and have[-1] == "":
        have = have[:-1]
    params: dict[str, str] = {}
    for i, w in enumerate(want):
        if w.startswith("{") and w.endswith("+}"):
            if i >= len(have):
                return None
            params[w[1:-2]] = urllib.parse.unquote("/".join(have[i:]))
            return params
        if i >= len(have):
            return None
        if w.startswith("{") and w.endswith("}"):
            if not have[i]:
                return None
            params[w[1:-1]] = urllib.parse.unquote(have[i])
        elif w != have[i]:
            return None
    return params if len(have) == len(want) else None


def route(specs: list[Spec], method: str, path: str) -> tuple[Spec, str, str, dict[str, str]] | None:
    """The function, route method and path for a request: the most
    specific path (more literal segments, no greedy parameter), then the
    same method, then ANY, then any method (cargo lambda routes by path)."""
    best = None
    for spec in specs:
        for m, p in spec.routes:
            params = route_match(p, path)
            if params is None:
                continue
            segs = [s for s in p.split("/") if s]
            literal = sum(1 for s in segs if not s.startswith("{"))
            greedy = any(s.endswith("+}") for s in segs)
            score = (0 if greedy else 1, literal, 2 if m == method else 1 if m == "ANY" else 0)
            if best is None or score > best[0]:
                best = (score, spec, m, p, params)
    if best is None:
        return None
    _, spec, m, p, params = best
    return spec, m, p, params


# ---------------------------------------------------------------- environment


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        env[k.strip()] = v
    return env


def package_env(binary: str) -> dict[str, str]:
    """[package.metadata.lambda.env] of the package that builds `binary`
    (cargo lambda watch adds it to the function's environment)."""
    for manifest in sorted((ROOT / "functions").glob("*/Cargo.toml")):
        data = tomllib.loads(manifest.read_text())
        if (data.get("package") or {}).get("name") == binary:
            env = (((data["package"].get("metadata") or {}).get("lambda") or {}).get("env")) or {}
            return {str(k): str(v) for k, v in env.items()}
    return {}


def function_env(spec: Spec, specs: list[Spec], template: dict[str, Any], stack: dict[str, str],
                 task_root: Path) -> dict[str, str]:
    template_names = {n for s in specs for n in s.env_names}
    missing = [n for n in spec.env_names if n not in stack]
    if missing:
        raise SystemExit(
            f"runtime-api: template.yaml gives {spec.logical} {', '.join(missing)}, "
            "but the local stack's env file has no value for it"
        )
    region = stack.get("AWS_REGION", "us-east-1")
    name = f"oauth-broker-{spec.logical}"
    level = stack.get("RUST_LOG", "info")
    app_level = (((template.get("Mappings") or {}).get("LogLevels") or {}).get(level) or {}).get(
        "Application", level.upper())
    env = {
        # What Lambda sets (provided.al2023).
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(task_root),
        "_HANDLER": spec.handler,
        "TZ": ":UTC",
        "LANG": "en_US.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    }
    if spec.log_format.upper() == "JSON":
        env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
        env["AWS_LAMBDA_LOG_LEVEL"] = str(app_level)
    # The template's variables, as the local stack resolves them.
    for n in spec.env_names:
        env[n] = stack[n]
    # The local stack's plumbing (no template variable of any function).
    for k, v in stack.items():
        if k not in template_names and k not in env:
            env[k] = v
    env.update(package_env(spec.binary))
    return env


# ---------------------------------------------------------------- HTTP bodies


def read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
         headers: list[tuple[str, str]] | None = None) -> None:
    try:
        handler.send_response(status)
        for k, v in headers or []:
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if body and handler.command != "HEAD":
            handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the caller gave up (curl --max-time); the answer is recorded


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


# ---------------------------------------------------------------- functions


class Invocation:
    def __init__(self, event: Any, timeout: int):
        self.id = str(uuid.uuid4())
        self.body = json.dumps(event).encode()
        self.deadline_ms = int(time.time() * 1000) + timeout * 1000
        self.done = threading.Event()
        self.ok = False
        self.payload = b""
        self.error: dict[str, Any] | None = None
        self.entry: dict[str, Any] = {}

    def finish(self, ok: bool, payload: bytes = b"", error: dict[str, Any] | None = None) -> bool:
        if self.done.is_set():
            return False
        self.ok, self.payload, self.error = ok, payload, error
        self.done.set()
        return True


class Incarnation:
    """One process of a function, with its own Runtime API."""

    def __init__(self, fn: "Function"):
        self.fn = fn
        self.alive = True
        self.inflight: dict[str, Invocation] = {}
        self.started = time.monotonic()
        self.first_poll: float | None = None
        inc = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/2018-06-01/runtime/invocation/next":
                    send(self, 404)
                    return
                if inc.first_poll is None:
                    inc.first_poll = time.monotonic()
                    fn.record["init_ms"].append(round((inc.first_poll - inc.started) * 1000, 1))
                while inc.alive:
                    try:
                        inv = fn.pending.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    if inv.done.is_set():
                        continue  # given up on before any instance took it
                    if not inc.alive:
                        fn.pending.put(inv)  # for the next process
                        break
                    inc.inflight[inv.id] = inv
                    headers = [
                        ("Content-Type", "application/json"),
                        ("Lambda-Runtime-Aws-Request-Id", inv.id),
                        ("Lambda-Runtime-Deadline-Ms", str(inv.deadline_ms)),
                        ("Lambda-Runtime-Invoked-Function-Arn",
                         f"arn:aws:lambda:{fn.region}:{ACCOUNT}:function:{fn.env['AWS_LAMBDA_FUNCTION_NAME']}"),
                    ]
                    if fn.spec.tracing:
                        headers.append(("Lambda-Runtime-Trace-Id",
                                        f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0"))
                    send(self, 200, inv.body, headers)
                    return
                self.close_connection = True

            def do_POST(self) -> None:  # noqa: N802
                body = read_body(self)
                parts = self.path.strip("/").split("/")
                if parts[:3] == ["2018-06-01", "runtime", "init"] and parts[3:] == ["error"]:
                    fn.record["init_errors"].append(error_summary(body, self.headers))
                    send(self, 202)
                    return
                if parts[:3] != ["2018-06-01", "runtime", "invocation"] or len(parts) != 5:
                    send(self, 404)
                    return
                inv = inc.inflight.pop(parts[3], None)
                if inv is None:
                    send(self, 400, b'{"errorType":"InvalidRequestID"}')
                    return
                if parts[4] == "response":
                    inv.finish(True, body)
                elif parts[4] == "error":
                    inv.finish(False, error=error_summary(body, self.headers))
                else:
                    send(self, 404)
                    return
                send(self, 202)

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        env = {**fn.env, "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.server.server_port}"}
        self.proc = subprocess.Popen(
            [*fn.launcher, str(fn.bootstrap)], env=env, cwd=str(fn.bootstrap.parent),
            stdin=subprocess.DEVNULL, stdout=fn.log, stderr=subprocess.STDOUT,
        )
        fn.record["boots"] += 1
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        code = self.proc.wait()
        self.alive = False
        fn = self.fn
        if not fn.stopping:
            why = f"process exited with status {code}"
            fn.record["exits"].append({"status": code, "log_tail": fn.log_tail()})
            for inv in list(self.inflight.values()):
                inv.finish(False, error={"errorType": "Runtime.ExitError", "errorMessage": why})
            if self.first_poll is None:
                # Died in init: Lambda fails the invocations that waited for it.
                while True:
                    try:
                        inv = fn.pending.get_nowait()
                    except queue.Empty:
                        break
                    inv.finish(False, error={"errorType": "Runtime.ExitError", "errorMessage": f"{why} during init"})
        self.inflight.clear()
        self.server.shutdown()
        self.server.server_close()
        if not fn.stopping and not fn.pending.empty():
            fn.ensure_running()  # invocations queued behind the one that crashed it

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


def error_summary(body: bytes, headers: Any) -> dict[str, Any]:
    try:
        err = json.loads(body or b"{}")
    except ValueError:
        err = {"errorMessage": body[:300].decode(errors="replace")}
    if not isinstance(err, dict):
        err = {"errorMessage": str(err)[:300]}
    err.setdefault("errorType", headers.get("Lambda-Runtime-Function-Error-Type") or "Unhandled")
    return {"errorType": str(err.get("errorType"))[:200], "errorMessage": str(err.get("errorMessage", ""))[:500]}


class Function:
    def __init__(self, spec: Spec, bootstrap: Path, launcher: list[str], env: dict[str, str], log_path: Path):
        self.spec = spec
        self.bootstrap = bootstrap
        self.launcher = launcher
        self.env = env
        self.region = env.get("AWS_REGION", "us-east-1")
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.pending: "queue.Queue[Invocation]" = queue.Queue()
        self.lock = threading.Lock()
        self.current: Incarnation | None = None
        self.stopping = False
        self.record: dict[str, Any] = {
            "logical_id": spec.logical, "http": spec.is_http, "bootstrap": str(bootstrap),
            "size_bytes": bootstrap.stat().st_size, "boots": 0, "init_ms": [], "init_errors": [],
            "exits": [], "invocations": [],
        }

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 4000))
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def ensure_running(self) -> None:
        with self.lock:
            if self.stopping:
                return
            if self.current is None or not self.current.alive:
                self.current = Incarnation(self)

    def invoke(self, event: Any, via: str, what: str) -> Invocation:
        inv = Invocation(event, self.spec.timeout)
        started = time.monotonic()
        self.ensure_running()
        self.pending.put(inv)
        if not inv.done.wait(self.spec.timeout + GRACE_SECONDS):
            if inv.finish(False, error={"errorType": "Sandbox.Timedout",
                                        "errorMessage": f"no answer within the Timeout ({self.spec.timeout} s)"}):
                with self.lock:
                    if self.current is not None:
                        self.current.kill()  # as Lambda ends a timed-out sandbox
        entry: dict[str, Any] = {"via": via, "what": what, "ms": round((time.monotonic() - started) * 1000, 1)}
        if inv.ok:
            entry["answer"] = "ok"
        else:
            entry["answer"] = "error"
            entry["error"] = inv.error
        self.record["invocations"].append(entry)
        inv.entry = entry
        return inv

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            if self.current is not None:
                self.current.kill()


# ---------------------------------------------------------------- API Gateway


TEXT_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded", "application/xml",
              "application/javascript", "+json", "+xml")


def apigw_event(handler: http.server.BaseHTTPRequestHandler, body: bytes, method: str, route_path: str,
                params: dict[str, str]) -> dict[str, Any]:
    """An API Gateway HTTP API payload 2.0 event, as the $default stage sends it."""
    raw_path, _, raw_query = handler.path.partition("?")
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for k, v in handler.headers.items():
        k = k.lower()
        if k == "cookie":
            cookies += [c.strip() for c in v.split(";") if c.strip()]
            continue
        headers[k] = f"{headers[k]},{v}" if k in headers else v
    query: dict[str, str] = {}
    for k, v in urllib.parse.parse_qsl(raw_query, keep_blank_values=True):
        query[k] = f"{query[k]},{v}" if k in query else v
    host = headers.get("host", "localhost").split(":")[0]
    route_key = f"{method} {route_path}"
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "http": {
                "method": handler.command,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": handler.client_address[0],
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if params:
        event["pathParameters"] = params
    if body:
        ctype = headers.get("content-type", "").lower()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and (not ctype or any(t in ctype for t in TEXT_TYPES)):
            event["body"] = text
        else:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


def http_answer(payload: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """The HTTP response of a payload 2.0 answer, or None if it is not one."""
    try:
        resp = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(resp, dict) or not isinstance(resp.get("statusCode"), int) \
            or not 100 <= resp["statusCode"] <= 599:
        return None
    headers: list[tuple[str, str]] = []
    multi = resp.get("multiValueHeaders") or {}
    for k, v in (resp.get("headers") or {}).items():
        if k not in multi:
            headers.append((k, str(v)))
    for k, vs in multi.items():
        headers += [(k, str(v)) for v in vs]
    headers += [("Set-Cookie", str(c)) for c in resp.get("cookies") or []]
    body = resp.get("body") or ""
    data = base64.b64decode(body) if resp.get("isBase64Encoded") else str(body).encode()
    headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding", "connection")]
    return resp["statusCode"], headers, data


# ---------------------------------------------------------------- serve


def serve(args: argparse.Namespace) -> None:
    specs, template = load_specs(Path(args.template))
    build_dir = Path(args.build_dir).resolve()
    env_file = Path(args.env_file).resolve()
    logs = env_file.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stack = read_env_file(env_file)
    launcher = shlex.split(args.launcher)
    missing = [s.logical for s in specs if not (build_dir / s.logical / s.handler).is_file()]
    if missing:
        raise SystemExit(f"runtime-api: no {build_dir}/<LogicalId>/bootstrap for {', '.join(missing)}: run sam build")
    functions: dict[str, Function] = {}
    for spec in specs:
        bootstrap = build_dir / spec.logical / spec.handler
        env = function_env(spec, specs, template, stack, bootstrap.parent)
        functions[spec.binary] = Function(spec, bootstrap, launcher, env, logs / f"fn-{spec.binary}.log")
    by_logical = {f.spec.logical: f for f in functions.values()}

    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def handle_any(self) -> None:
            body = read_body(self)
            path = self.path.split("?")[0]
            if path == "/__runtime/report" and self.command == "GET":
                report = {b: f.record for b, f in functions.items()}
                send(self, 200, json.dumps(report).encode(), [("Content-Type", "application/json")])
                return
            parts = path.strip("/").split("/")
            if len(parts) == 4 and parts[:2] == ["2015-03-31", "functions"] and parts[3] == "invocations":
                fn = functions.get(parts[2]) or by_logical.get(parts[2])
                if fn is None or self.command != "POST":
                    send(self, 404, b'{"Type":"User","Message":"Function not found"}',
                         [("Content-Type", "application/json")])
                    return
                try:
                    event = json.loads(body or b"{}")
                except ValueError:
                    send(self, 400, b'{"Type":"User","Message":"Could not parse request body into json"}')
                    return
                inv = fn.invoke(event, "invoke", "direct invocation")
                if inv.ok:
                    send(self, 200, inv.payload, [("Content-Type", "application/json")])
                else:
                    send(self, 200, json.dumps(inv.error).encode(),
                         [("Content-Type", "application/json"), ("X-Amz-Function-Error", "Unhandled")])
                return
            found = route(list(f.spec for f in functions.values()), self.command, path)
            if found is None:
                send(self, 404, b'{"message":"Not Found"}', [("Content-Type", "application/json")])
                return
            spec, method, route_path, params = found
            fn = functions[spec.binary]
            event = apigw_event(self, body, method, route_path, params)
            inv = fn.invoke(event, "http", f"{self.command} {path}")
            entry = inv.entry
            if not inv.ok:
                timed_out = (inv.error or {}).get("errorType") == "Sandbox.Timedout"
                send(self, 503 if timed_out else 500,
                     b'{"message":"Service Unavailable"}' if timed_out else b'{"message":"Internal Server Error"}',
                     [("Content-Type", "application/json")])
                return
            answer = http_answer(inv.payload)
            if answer is None:
                entry["answer"] = "malformed"
                send(self, 500, b'{"message":"Internal Server Error"}', [("Content-Type", "application/json")])
                return
            status, headers, data = answer
            entry["answer"] = status
            send(self, status, data, headers)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any  # noqa: N815

    def stop(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = QuietServer((args.host, args.port), Front)
    try:
        log(f"{len(functions)} functions from {build_dir} under `{args.launcher}`; "
            f"HTTP API and invoke API on http://{args.host}:{args.port}")
        for f in functions.values():
            f.ensure_running()
        server.serve_forever()
    finally:
        for f in functions.values():
            f.stop()


# ---------------------------------------------------------------- check


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 120) -> tuple[int, bytes]:
    """One request, redirects not followed; (status, body), status 0 when
    the server could not be reached."""
    u = urllib.parse.urlsplit(url)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = {"content-type": "application/json", **(headers or {})}
    try:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        c.request(method, u.path + (f"?{u.query}" if u.query else ""), body=data, headers=h)
        r = c.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException) as err:
        return 0, str(err).encode()


def check(args: argparse.Namespace) -> None:
    broker = os.environ["BROKER_URL"].rstrip("/")
    receiver = os.environ["WEBHOOK_RECEIVER_URL"].rstrip("/")
    origin = f"http://localhost:{os.environ['DEMO_PORT']}"
    auth = {"authorization": f"Bearer {os.environ['BROKER_API_KEY']}"}
    specs, _ = load_specs(Path(args.template))
    problems: list[str] = []
    notes: list[str] = []

    def req(fn: str, method: str, path: str, want: int, body: Any = None, headers: dict[str, str] | None = None,
            show: str | None = None) -> tuple[int, bytes]:
        status, data = call(method, broker + path, body, headers)
        shown = show or f"{method} {path}"
        line = f"  {fn:<16} {shown:<44} {status or 'unreachable'}"
        if status != want:
            line += f" (expected {want})"
            notes.append(f"{fn}: {shown} answered {status}, expected {want}")
        print(line, flush=True)
        return status, data

    def invoke(fn: str, event: Any) -> tuple[bool, Any]:
        status, data = call("POST", f"{broker}/2015-03-31/functions/{fn}/invocations", event)
        try:
            out = json.loads(data or b"null")
        except ValueError:
            out = None
        ok = status == 200 and not (isinstance(out, dict) and "errorType" in out)
        print(f"  {fn:<16} {'invoke ' + json.dumps(event)[:37]:<44} {'ok' if ok else 'error'}", flush=True)
        return ok, out

    print("requests (function, request, status):", flush=True)
    ok, out = invoke("admin", {"action": "create_api_key", "tenant_id": "arm64-check"})
    if ok and not (isinstance(out, dict) and out.get("api_key")):
        problems.append("admin: create_api_key answered without an api_key")
    req("api", "GET", "/integrations", 200, headers=auth)
    sink = f"arm64-{int(time.time())}"
    status, data = req("api", "POST", "/webhook-endpoints", 201, headers=auth,
                       body={"url": f"{receiver}/hooks/{sink}", "event_types": ["connection.created"]})
    hook = json.loads(data) if status == 201 else {}
    if hook:
        call("PUT", f"{receiver}/__sinks/{sink}", {"secrets": [hook["secret"]]})
    status, data = req("api", "POST", "/connections", 201, headers=auth,
                       body={"integration_id": "keys", "end_user_id": sink, "api_key": "demo-key-123"})
    cid = json.loads(data)["id"] if status == 201 else "conn_missing"
    req("token", "GET", f"/connections/{cid}/token", 200, headers=auth, show="GET /connections/{id}/token")
    req("test-connection", "POST", f"/connections/{cid}/test", 200, headers=auth,
        show="POST /connections/{id}/test")
    req("proxy", "GET", f"/proxy/{cid}/whoami", 200, headers=auth, show="GET /proxy/{id}/whoami")
    status, data = req("api", "POST", "/connect-sessions", 201, headers=auth,
                       body={"end_user_id": sink, "integrations": ["demo"], "origin": origin})
    session = json.loads(data).get("token", "") if status == 201 else "missing"
    req("authorize", "POST", "/oauth/demo/authorize", 303,
        body=urllib.parse.urlencode({"session": session}).encode(),
        headers={"origin": origin, "content-type": "application/x-www-form-urlencoded"})
    req("callback", "GET", "/oauth/demo/callback?state=arm64-check&code=x", 400,
        show="GET /oauth/demo/callback?state=..&code=..")
    req("inbound", "POST", "/webhooks/demo/demo", 404, body={})
    # The refresh schedule's input (ScheduleV2 Input "{}"): a real sweep.
    invoke("refresh", {})

    # deliver: the connection.created event of the POST /connections above,
    # table stream -> deliver (fan-out) -> FIFO queue -> deliver -> receiver.
    delivered = False
    if hook and cid != "conn_missing":
        until = time.monotonic() + args.deliver_wait
        while time.monotonic() < until and not delivered:
            status, data = call("GET", f"{receiver}/__sinks/{sink}")
            got = [d for d in (json.loads(data).get("deliveries", []) if status == 200 else [])
                   if d.get("data", {}).get("connection_id") == cid]
            if got:
                delivered = True
                if got[0].get("verified_with") != [0]:
                    problems.append("deliver: the receiver could not verify the webhook's signature")
                break
            time.sleep(1)
        print(f"  {'deliver':<16} {'connection.created -> stream -> queue -> POST':<44} "
              f"{'delivered' if delivered else 'not delivered'}", flush=True)
        if not delivered:
            problems.append(f"deliver: the connection.created webhook did not reach the receiver in "
                            f"{args.deliver_wait} s (see logs/esm.log and logs/fn-deliver.log)")
    else:
        problems.append("deliver: no webhook endpoint or connection was made (api failed above), "
                        "so no event was delivered")
    status, data = call("GET", f"{broker}/__runtime/report")
    if status == 200 and not json.loads(data).get("deliver", {}).get("invocations"):
        # Never reached through the stream: one direct invocation (an empty
        # batch), so that whether it boots and answers is still reported.
        invoke("deliver", {"Records": []})

    status, data = call("GET", f"{broker}/__runtime/report")
    if status != 200:
        sys.exit(f"arm64-check: the runtime API's report is unreachable ({status}): {data[:200]!r}")
    report = json.loads(data)
    print()
    print(f"{'function':<16} {'logical id':<24} {'MB':>5} {'boots':>5} {'init ms':>8}  answers")
    passed = 0
    for spec in specs:
        r = report.get(spec.binary)
        if r is None:
            problems.append(f"{spec.binary}: not served")
            continue
        answers = [i["answer"] for i in r["invocations"]]
        good = [a for a in answers if (isinstance(a, int) and a < 500) or a == "ok"]
        bad = [i for i in r["invocations"] if not ((isinstance(i["answer"], int) and i["answer"] < 500)
                                                  or i["answer"] == "ok")]
        init = f"{min(r['init_ms']):.0f}" if r["init_ms"] else "-"
        shown = " ".join(str(a) for a in answers[:12]) + (" ..." if len(answers) > 12 else "")
        print(f"{spec.binary:<16} {spec.logical:<24} {r['size_bytes'] / 1e6:>5.2f} {r['boots']:>5} {init:>8}  "
              f"{shown or '(none)'}")
        mine = []
        if not good:
            mine.append("answered nothing" if not answers else "never answered well")
        for i in bad:
            detail = i.get("error") or {}
            what = f"{detail.get('errorType', '')}: {detail.get('errorMessage', '')}".strip(": ")
            mine.append(f"{i['what']}: {i['answer']}" + (f" ({what})" if what else ""))
        for e in r["init_errors"]:
            mine.append(f"init error {e.get('errorType')}: {e.get('errorMessage')}")
        for e in r["exits"]:
            mine.append(f"process exited with status {e['status']}; its last output:\n{e['log_tail']}")
        if not r["init_ms"]:
            mine.append("never polled the Runtime API (did not boot)")
        if mine:
            problems += [f"{spec.binary}: {m}" for m in mine]
        else:
            passed += 1
    print()
    for n in notes:
        print(f"note: {n}")
    for p in problems:
        print(f"FAIL: {p}")
    total = len(specs)
    print(f"arm64-check: {passed} of {total} functions answered"
          + ("; the webhook was delivered and verified" if delivered else "")
          + (": passed" if not problems else ": FAILED"))
    sys.exit(0 if not problems else 1)


def artifacts(args: argparse.Namespace) -> None:
    """Every function's bootstrap in the build directory, an arm64 ELF."""
    specs, _ = load_specs(Path(args.template))
    build_dir = Path(args.build_dir)
    bad = []
    for spec in sorted(specs, key=lambda s: s.logical):
        path = build_dir / spec.logical / spec.handler
        try:
            with open(path, "rb") as f:
                head = f.read(20)
        except OSError:
            bad.append(f"{path}: missing")
            continue
        if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != EM_AARCH64:
            bad.append(f"{path}: not an arm64 (aarch64) ELF executable")
            continue
        print(f"  {spec.logical:<24} {spec.binary:<16} {path.stat().st_size / 1e6:5.2f} MB")
    if bad:
        sys.exit("no arm64 build of every function (run scripts/deploy, i.e. sam build):\n  " + "\n  ".join(bad))


def boot_watch(args: argparse.Namespace) -> None:
    """Waits for every function to poll its Runtime API once. Fails (and
    sends SIGTERM to --signal-pid) when one exits in init twice, or when
    not all have booted --seconds after the server answered."""
    specs, _ = load_specs(Path(args.template))
    url = args.url.rstrip("/") + "/__runtime/report"
    up_since = None
    started = time.monotonic()
    failure = None
    while failure is None:
        status, data = call("GET", url, timeout=10)
        if status == 200:
            up_since = up_since or time.monotonic()
            report = json.loads(data)
            waiting = [s.binary for s in specs if not report.get(s.binary, {}).get("init_ms")]
            if not waiting:
                return
            dead = [b for b in waiting if len(report.get(b, {}).get("exits", [])) >= 2]
            if dead:
                failure = "exited before their first poll of the Runtime API: " + ", ".join(dead)
                for b in dead:
                    failure += f"\n-- {b}: last output\n{report[b]['exits'][-1]['log_tail']}"
            elif time.monotonic() - up_since > args.seconds:
                failure = f"not booted {args.seconds} s after the runtime API started: {', '.join(waiting)}"
        elif time.monotonic() - started > args.seconds + 600:
            failure = f"the runtime API did not start (last: {status} {data[:200]!r})"
        time.sleep(1)
    print(f"arm64-check: functions {failure}", file=sys.stderr, flush=True)
    if args.signal_pid:
        os.kill(args.signal_pid, signal.SIGTERM)
    sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", "--invoke-port", dest="port", type=int, required=True)
    s.add_argument("--host", "--invoke-address", dest="host", default="127.0.0.1")
    s.add_argument("--env-file", required=True)
    s.add_argument("--build-dir", default=str(ROOT / ".aws-sam" / "build"))
    s.add_argument("--launcher", default=DEFAULT_LAUNCHER,
                   help=f"the command each bootstrap runs under (default: {DEFAULT_LAUNCHER})")
    s.add_argument("--template", default=str(TEMPLATE))
    c = sub.add_parser("check")
    c.add_argument("--template", default=str(TEMPLATE))
    c.add_argument("--deliver-wait", type=int, default=180)
    a = sub.add_parser("artifacts")
    a.add_argument("--template", default=str(TEMPLATE))
    a.add_argument("--build-dir", default=str(ROOT / ".aws-sam" / "build"))
    w = sub.add_parser("boot-watch")
    w.add_argument("--template", default=str(TEMPLATE))
    w.add_argument("--url", required=True)
    w.add_argument("--seconds", type=int, default=300)
    w.add_argument("--signal-pid", type=int)
    args, rest = p.parse_known_args()
    if args.cmd == "serve":
        # As cargo-lambda: `lambda watch` and the options serve does not use.
        ignored = [a for a in rest if a not in ("lambda", "watch")]
        if ignored:
            log(f"ignoring {' '.join(ignored)}")
        serve(args)
    else:
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        {"check": check, "artifacts": artifacts, "boot-watch": boot_watch}[args.cmd](args)


if __name__ == "__main__":
    main()
