#!/usr/bin/env python3
"""Fault-injecting HTTP proxy between the broker's functions and moto server.

    python scripts/faultproxy.py --listen 127.0.0.1:5056 --upstream http://127.0.0.1:5055

Every request is forwarded unchanged (method, path, every header including
Host, Authorization, X-Amz-Date and X-Amz-Target, so SigV4 still verifies at
moto; the body byte for byte). The AWS action of a request is read from
X-Amz-Target ("DynamoDB_20120810.UpdateItem" -> "dynamodb:UpdateItem",
"secretsmanager.PutSecretValue" -> "secretsmanager:PutSecretValue"); requests
without X-Amz-Target are forwarded but are not counted and never faulted.

Control API on the same port (paths under /__faults/, JSON in and out):

  GET    /__faults/health                 {"ok": true, "upstream": "http://..."}
  POST   /__faults/rules                  body: a rule (below)  -> {"id": "..."}
  GET    /__faults/rules                  {"rules": [rule state, ...]}
  GET    /__faults/rules/{id}             rule state
  DELETE /__faults/rules/{id}             {"deleted": "<id>"} (releases its hangs)
  POST   /__faults/reset                  clears every rule (releasing hangs) and
                                          every call count -> {"reset": true}
  GET    /__faults/calls?match=S[&not_caller=KEY][&caller=KEY]  {"dynamodb:GetItem": 3, ...}
                                          (not_caller / caller: leave out, or keep
                                          only, requests signed with that access
                                          key id, i.e. one function's)
  GET    /__faults/faulted?match=S        same shape, only the faulted requests
  POST   /__faults/calls/reset?match=S    {"reset": true, "match": S or null}

A rule:
  {"action": "secretsmanager:PutSecretValue",   required; fnmatch wildcards ok
   "match": "tenant-123",                       optional substring of the body
   "nth": 1, "times": 1,                        times 0 = every one from nth on
   "fault": "throttle|throughput|fail|delay|hang|kill|conflict",
   "when": "before|after", "delay_ms": 0}

Among the requests of that action whose raw body contains `match` (counted from
when the rule was added), the nth one and the following times-1 ones get the
fault. Every rule counts every request it matches; when several rules would
fault the same request, the one added first wins. when=before: the fault
replaces forwarding. when=after: the request is forwarded (moto applies it),
then the client gets the fault instead of moto's answer.

  throttle    400 ThrottlingException in the service's JSON-protocol shape
  throughput  400 ProvisionedThroughputExceededException (dynamodb only)
  fail        500 InternalServerError (dynamodb) / InternalServiceError
  delay       waits delay_ms, then proceeds normally (deleting the rule or a
              reset ends the wait early)
  hang        holds the request unanswered. The client disconnecting ends it
              (the connection is dropped; with when=before moto never sees
              the request); deleting the rule or a reset releases it (it then
              proceeds normally, so a hang also works as a gate); after 120 s
              the connection is closed unanswered.
  conflict    DynamoDB's rule for transactions (dynamodb:TransactWriteItems
              only): a matching transaction is held for delay_ms, then
              forwarded; another matching one that arrives meanwhile is
              cancelled with TransactionCanceledException, its items that
              contain `match` marked TransactionConflict (the others None),
              as DynamoDB answers a transaction on an item another one is
              writing. `match` names the contended item (its key).
  kill        SIGKILLs the process that owns the client's end of the TCP
              connection (found through /proc/net/tcp{,6} and /proc/PID/fd),
              waits until it is gone, then closes the connection.

/__faults/calls counts every AWS request at its arrival, faulted or not, since
the start, the last POST /__faults/reset, or the last
POST /__faults/calls/reset with the same match (that one resets only that
match; without match it resets all). Matching is a substring test on the raw
request body, so the counts need the bodies: they are kept in memory only
(never written anywhere), up to --max-log-mib; past that the oldest are
dropped and count answers carry the header X-Faultproxy-Truncated: true.

Bodies and headers can carry secrets: nothing here logs them. One line per
faulted request goes to stderr (action, rule id, fault); normal requests are
not logged.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import email.utils
import fnmatch
import http.client
import http.server
import ipaddress
import json
import re
import os
import secrets
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

HANG_CAP_SECONDS = 120.0
MAX_DELAY_MS = 600_000
UPSTREAM_TIMEOUT_SECONDS = 120.0
FAULTS = ("throttle", "throughput", "fail", "delay", "hang", "kill", "conflict")
WHENS = ("before", "after")
RULE_KEYS = {"action", "match", "nth", "times", "fault", "when", "delay_ms"}
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding",
    "upgrade",
}
# X-Amz-Target prefixes whose IAM service name is not simply the lowercased
# prefix with any _YYYYMMDD version removed.
TARGET_SERVICES = {
    "dynamodb": "dynamodb",
    "dynamodbstreams": "dynamodb",  # DynamoDB Streams actions are dynamodb:*
    "amazonsqs": "sqs",
    "trentservice": "kms",
    "awssecuritytokenservicev20110615": "sts",
}


def log(msg: str) -> None:
    sys.stderr.write(f"faultproxy: {msg}\n")
    sys.stderr.flush()


def caller_key(authorization: str | None) -> str | None:
    """The access key id of a SigV4 Authorization header (which function)."""
    m = re.search(r"Credential=([A-Za-z0-9]+)/", authorization or "")
    return m.group(1) if m else None


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def action_of(target: str | None) -> str | None:
    """'DynamoDB_20120810.UpdateItem' -> 'dynamodb:UpdateItem'."""
    if not target or "." not in target:
        return None
    prefix, _, op = target.rpartition(".")
    if not prefix or not op:
        return None
    base = prefix.lower()
    head, sep, tail = base.rpartition("_")
    if sep and tail.isdigit():
        base = head
    service = TARGET_SERVICES.get(base.replace("_", ""), base)
    return f"{service}:{op}"


# ---------------------------------------------------------------- AWS errors

def _dynamodb_request_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(52))


def aws_error(service: str, fault: str, request_content_type: str | None):
    """(status, headers, body) of a service error as AWS sends it (JSON protocol)."""
    if service == "dynamodb":
        ns = "com.amazonaws.dynamodb.v20120810#"
        if fault == "throttle":
            status, typ, msg = 400, "ThrottlingException", "Rate of requests exceeds the allowed throughput."
        elif fault == "throughput":
            status, typ, msg = 400, "ProvisionedThroughputExceededException", (
                "The level of configured provisioned throughput for the table was exceeded. "
                "Consider increasing your provisioning level with the UpdateTable API.")
        else:
            status, typ, msg = 500, "InternalServerError", "Internal server error"
        body = json.dumps({"__type": ns + typ, "message": msg}, separators=(",", ":")).encode()
        headers = [
            ("x-amzn-RequestId", _dynamodb_request_id()),
            ("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF)),
            ("Content-Type", "application/x-amz-json-1.0"),
        ]
        return status, headers, body
    # Other AWS JSON services (Secrets Manager is awsJson1_1): the error code in
    # __type and, consistently, in X-Amzn-ErrorType.
    if fault in ("throttle", "throughput"):
        status, typ, key, msg = 400, "ThrottlingException", "message", "Rate exceeded"
    elif service == "secretsmanager":
        status, typ, key, msg = 500, "InternalServiceError", "Message", "An error occurred on the server side."
    else:
        status, typ, key, msg = 500, "InternalFailure", "message", "An internal error occurred."
    body = json.dumps({"__type": typ, key: msg}, separators=(",", ":")).encode()
    ctype = request_content_type or ""
    if not ctype.startswith("application/x-amz-json-"):
        ctype = "application/x-amz-json-1.1"
    headers = [
        ("x-amzn-RequestId", str(uuid.uuid4())),
        ("Content-Type", ctype),
        ("x-amzn-ErrorType", typ),
    ]
    return status, headers, body


def transaction_conflict(body: bytes, contended: bytes):
    """(status, headers, body) of a TransactWriteItems cancelled because
    another transaction is writing one of its items (the items containing
    `contended`)."""
    try:
        items = json.loads(body).get("TransactItems", [])
    except ValueError:
        items = []
    codes = ["TransactionConflict" if contended in json.dumps(i).encode() else "None" for i in items]
    reasons = [{"Code": c} if c == "None" else {"Code": c, "Message": "Transaction is ongoing for the item"}
               for c in codes]
    msg = f"Transaction cancelled, please refer cancellation reasons for specific reasons [{', '.join(codes)}]"
    payload = {"__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
               "Message": msg, "CancellationReasons": reasons}
    out = json.dumps(payload, separators=(",", ":")).encode()
    headers = [
        ("x-amzn-RequestId", _dynamodb_request_id()),
        ("x-amz-crc32", str(zlib.crc32(out) & 0xFFFFFFFF)),
        ("Content-Type", "application/x-amz-json-1.0"),
    ]
    return 400, headers, out


# ---------------------------------------------------------------- socket owner

def _parse_proc_addr(text: str):
    host, _, port = text.partition(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = ipaddress.IPv4Address(raw[::-1])
    else:  # four 32-bit words, each in host (little-endian) order
        ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
    return ip, int(port, 16)


def _norm_addr(addr):
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip, int(addr[1])


def socket_owners(peer, local) -> list[int]:
    """Pids holding the socket whose local end is `peer` and remote end `local`."""
    want_local, want_remote = _norm_addr(peer), _norm_addr(local)
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[9] == "0":
                continue
            try:
                if (_parse_proc_addr(fields[1]) == want_local
                        and _parse_proc_addr(fields[2]) == want_remote):
                    inodes.add(fields[9])
            except ValueError:
                continue
    if not inodes:
        return []
    targets = {f"socket:[{i}]" for i in inodes}
    me, owners = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") in targets:
                        owners.append(int(name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return owners


def cmdline_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
            if state in ("Z", "X"):
                return True
        except OSError:
            return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------- state

class Rule:
    def __init__(self, spec: dict):
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        action = spec.get("action")
        if not isinstance(action, str) or ":" not in action:
            raise ValueError('"action" must be "service:Action", e.g. "dynamodb:UpdateItem"')
        match = spec.get("match")
        if match is not None and not isinstance(match, str):
            raise ValueError('"match" must be a string')
        fault = spec.get("fault")
        if fault not in FAULTS:
            raise ValueError(f'"fault" must be one of {list(FAULTS)}')
        when = spec.get("when", "before")
        if when not in WHENS:
            raise ValueError('"when" must be "before" or "after"')

        def integer(key, default, low, high=None):
            v = spec.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
                raise ValueError(f'"{key}" must be an integer >= {low}' + (f" and <= {high}" if high else ""))
            return v

        self.nth = integer("nth", 1, 1)
        self.times = integer("times", 1, 0)
        self.delay_ms = integer("delay_ms", 0, 0, MAX_DELAY_MS)
        if fault == "throughput" and not fnmatch.fnmatchcase("dynamodb", action.partition(":")[0]):
            raise ValueError('"throughput" is a dynamodb fault')
        if fault == "conflict" and action != "dynamodb:TransactWriteItems":
            raise ValueError('"conflict" is a fault of "dynamodb:TransactWriteItems"')
        if fault == "conflict" and not match:
            raise ValueError('"conflict" needs "match": the contended item')
        self.id = uuid.uuid4().hex[:12]
        self.action, self.match, self.fault, self.when = action, match, fault, when
        self.match_bytes = match.encode() if match else None
        self.created = now_iso()
        self.seen = 0
        self.fired = 0
        self.hits: list[dict] = []
        self.killed_pids: list[int] = []
        self.released = threading.Event()  # set on delete / reset
        self.inflight = 0  # conflict: matching transactions being written

    def matches(self, action: str, body: bytes) -> bool:
        if not fnmatch.fnmatchcase(action, self.action):
            return False
        return self.match_bytes is None or self.match_bytes in body

    def in_window(self) -> bool:
        return self.seen >= self.nth and (self.times == 0 or self.seen < self.nth + self.times)

    def exhausted(self) -> bool:
        return self.times != 0 and self.seen >= self.nth + self.times - 1

    def to_json(self) -> dict:
        return {
            "id": self.id, "action": self.action, "match": self.match, "nth": self.nth,
            "times": self.times, "fault": self.fault, "when": self.when,
            "delay_ms": self.delay_ms, "created": self.created, "seen": self.seen,
            "fired": self.fired, "exhausted": self.exhausted(),
            "hits": [dict(h) for h in self.hits], "killed_pids": list(self.killed_pids),
        }


class State:
    def __init__(self, max_log_bytes: int):
        self.lock = threading.Lock()
        self.rules: dict[str, Rule] = {}
        self.seq = 0
        self.records: collections.deque = collections.deque()  # [seq, action, faulted, body]
        self.record_bytes = 0
        self.max_log_bytes = max_log_bytes
        self.evicted_through = 0
        self.global_mark = 0
        self.marks: dict[str, int] = {}

    def arrive(self, action: str, body: bytes, caller: str | None = None):
        """Counts the request (with the access key id that signed it), runs
        the rules; returns (rule, hit) or (None, None)."""
        with self.lock:
            self.seq += 1
            chosen, hit = None, None
            for rule in self.rules.values():
                if not rule.matches(action, body):
                    continue
                rule.seen += 1
                if chosen is None and rule.in_window():
                    chosen = rule
                    rule.fired += 1
                    hit = {"seq": self.seq, "n": rule.seen, "at": now_iso(), "action": action,
                           "fault": rule.fault, "when": rule.when, "outcome": "pending"}
                    rule.hits.append(hit)
            self.records.append([self.seq, action, chosen is not None, body, caller])
            self.record_bytes += len(body) + 64
            while self.record_bytes > self.max_log_bytes and len(self.records) > 1:
                old = self.records.popleft()
                self.record_bytes -= len(old[3]) + 64
                self.evicted_through = old[0]
            return chosen, hit

    def update_hit(self, hit: dict, **fields) -> None:
        with self.lock:
            hit.update(fields)

    def add_rule(self, rule: Rule) -> None:
        with self.lock:
            self.rules[rule.id] = rule

    def delete_rule(self, rule_id: str) -> bool:
        with self.lock:
            rule = self.rules.pop(rule_id, None)
        if rule is None:
            return False
        rule.released.set()
        return True

    def reset(self) -> None:
        with self.lock:
            rules = list(self.rules.values())
            self.rules.clear()
            self._reset_calls(None)
        for rule in rules:
            rule.released.set()

    def reset_calls(self, match: str | None) -> None:
        with self.lock:
            self._reset_calls(match)

    def _reset_calls(self, match: str | None) -> None:
        if match:
            self.marks[match] = self.seq
        else:
            self.global_mark = self.seq
            self.marks.clear()
            self.records.clear()
            self.record_bytes = 0

    def counts(self, match: str | None, faulted_only: bool, not_caller: str | None = None,
               caller_only: str | None = None):
        with self.lock:
            since = max(self.global_mark, self.marks.get(match, 0)) if match else self.global_mark
            needle = match.encode() if match else None
            out: dict[str, int] = {}
            for seq, action, faulted, body, caller in self.records:
                if seq <= since or (faulted_only and not faulted):
                    continue
                if not_caller is not None and caller == not_caller:
                    continue
                if caller_only is not None and caller != caller_only:
                    continue
                if needle is not None and needle not in body:
                    continue
                out[action] = out.get(action, 0) + 1
            truncated = self.evicted_through > since
            return dict(sorted(out.items())), truncated


# ---------------------------------------------------------------- HTTP

class Upstream:
    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("--upstream must be http://HOST:PORT")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultproxy"
    disable_nagle_algorithm = True
    timeout = 900  # idle keep-alive connections free their thread eventually

    state: State
    upstream: Upstream

    # No per-request logging (request lines, errors): nothing from a request leaks.
    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def dispatch(self):
        try:
            if self.path.startswith("/__faults/") or self.path == "/__faults":
                self.control()
            else:
                self.proxy()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True

    # ------------------------------------------------------------ bodies

    def read_body(self) -> tuple[bytes, bool]:
        """The request body and whether it came chunked."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionResetError("client closed mid-body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks), True
        length = self.headers.get("Content-Length")
        if not length:
            return b"", False
        n = int(length)
        if n < 0:
            raise ValueError("negative Content-Length")
        body = self.rfile.read(n)
        if len(body) != n:
            raise ConnectionResetError("client closed mid-body")
        return body, False

    # ------------------------------------------------------------ responses

    def send_raw(self, status: int, reason: str | None, headers, body: bytes,
                 head_length: str | None = None) -> None:
        self.send_response_only(status, reason)
        has_date = False
        for k, v in headers:
            lk = k.lower()
            if lk in HOP_BY_HOP or lk == "content-length":
                continue
            has_date = has_date or lk == "date"
            self.send_header(k, v)
        if not has_date:
            self.send_header("Date", email.utils.formatdate(usegmt=True))
        if self.command == "HEAD":
            if head_length is not None:
                self.send_header("Content-Length", head_length)
        elif status >= 200 and status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body and status not in (204, 304):
            self.wfile.write(body)

    def send_json(self, status: int, obj, extra_headers=()) -> None:
        body = json.dumps(obj).encode()
        self.send_raw(status, None, [("Content-Type", "application/json"), *extra_headers], body)

    def drop(self) -> None:
        """Ends the connection without an answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------ upstream

    def forward(self, body: bytes, chunked: bool):
        """(status, reason, headers, body, head_length) from moto, or raises OSError/HTTPException."""
        conn = http.client.HTTPConnection(self.upstream.host, self.upstream.port,
                                          timeout=UPSTREAM_TIMEOUT_SECONDS)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                conn.putheader(k, v)
            if chunked:
                framed = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
                conn.endheaders(framed)
            else:
                conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data, resp.getheader("Content-Length")
        finally:
            conn.close()

    def forward_and_answer(self, body: bytes, chunked: bool, hit: dict | None = None):
        try:
            result = self.forward(body, chunked)
        except (OSError, ValueError, http.client.HTTPException) as e:
            if hit is not None:
                self.state.update_hit(hit, upstream_status=None, upstream_error=type(e).__name__)
            self.send_json(502, {"__type": "FaultProxyUpstreamError",
                                 "message": f"upstream {self.upstream.url} failed: {type(e).__name__}"})
            return
        if hit is not None:
            self.state.update_hit(hit, upstream_status=result[0])
        self.send_raw(*result)

    # ------------------------------------------------------------ proxy

    def proxy(self):
        try:
            body, chunked = self.read_body()
        except ValueError:
            self.close_connection = True
            self.send_json(400, {"message": "bad request body framing"})
            return
        action = action_of(self.headers.get("X-Amz-Target"))
        if action is None:
            self.forward_and_answer(body, chunked)
            return
        rule, hit = self.state.arrive(action, body, caller_key(self.headers.get("Authorization")))
        if rule is None:
            self.forward_and_answer(body, chunked)
            return
        log(f"{action} rule={rule.id} fault={rule.fault} when={rule.when}")
        service = action.partition(":")[0]

        upstream = None
        if rule.when == "after":
            try:
                upstream = self.forward(body, chunked)
                self.state.update_hit(hit, upstream_status=upstream[0])
            except (OSError, ValueError, http.client.HTTPException) as e:
                self.state.update_hit(hit, upstream_status=None, upstream_error=type(e).__name__)

        def proceed():
            if rule.when == "after":
                if upstream is None:
                    self.send_json(502, {"__type": "FaultProxyUpstreamError",
                                         "message": f"upstream {self.upstream.url} failed"})
                else:
                    self.send_raw(*upstream)
            else:
                self.forward_and_answer(body, chunked, hit)

        fault = rule.fault
        if fault in ("throttle", "throughput", "fail"):
            status, headers, err = aws_error(service, fault, self.headers.get("Content-Type"))
            self.state.update_hit(hit, outcome=f"answered {status}")
            self.send_raw(status, None, headers, err)
        elif fault == "delay":
            released = rule.released.wait(rule.delay_ms / 1000.0)
            self.state.update_hit(hit, outcome="delayed" + (" (released early)" if released else ""))
            proceed()
        elif fault == "hang":
            self.state.update_hit(hit, outcome="hanging")
            how = self.hold(rule)
            self.state.update_hit(hit, outcome=how)
            if how == "released":
                proceed()
            else:
                self.drop()
        elif fault == "kill":
            self.kill_client(rule, hit)
            self.drop()
        elif fault == "conflict":
            self.contend(rule, hit, body, chunked)

    def contend(self, rule: Rule, hit: dict, body: bytes, chunked: bool) -> None:
        """The conflict fault: one matching transaction at a time is written
        (held delay_ms first); one arriving meanwhile is cancelled."""
        with self.state.lock:
            busy = rule.inflight > 0
            if not busy:
                rule.inflight += 1
        if busy:
            status, headers, err = transaction_conflict(body, rule.match_bytes)
            self.state.update_hit(hit, outcome=f"answered {status} TransactionConflict")
            self.send_raw(status, None, headers, err)
            return
        try:
            self.state.update_hit(hit, outcome="holding")
            rule.released.wait(rule.delay_ms / 1000.0)
            self.state.update_hit(hit, outcome="written")
            self.forward_and_answer(body, chunked, hit)
        finally:
            with self.state.lock:
                rule.inflight -= 1

    def hold(self, rule: Rule) -> str:
        """Waits until the client disconnects ('client disconnected'), the rule
        is deleted or reset ('released') or the cap passes ('timed out')."""
        deadline = time.monotonic() + HANG_CAP_SECONDS
        sock = self.connection
        poller = select.poll()  # not select(): that fails on fds >= 1024
        poller.register(sock, select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)
        while True:
            if rule.released.is_set():
                return "released"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed out"
            try:
                if poller.poll(int(min(0.2, remaining) * 1000) + 1):
                    if not sock.recv(1, socket.MSG_PEEK):
                        return "client disconnected"
                    time.sleep(0.2)  # the client sent more bytes; keep holding
            except (OSError, ValueError):
                return "client disconnected"

    def kill_client(self, rule: Rule, hit: dict) -> None:
        try:
            pids = socket_owners(self.client_address, self.connection.getsockname())
        except Exception as e:  # never let the lookup take the proxy down
            self.state.update_hit(hit, outcome=f"kill failed: {type(e).__name__}", killed=[])
            return
        pids = [p for p in pids if p not in (1, os.getpid())]
        killed = []
        for pid in pids:
            cmd = cmdline_of(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as e:
                killed.append({"pid": pid, "cmdline": cmd, "error": type(e).__name__})
                continue
            killed.append({"pid": pid, "cmdline": cmd})
        ok = [k["pid"] for k in killed if "error" not in k]
        with self.state.lock:
            hit.update(outcome="killing" if ok else "kill failed: no process owns the client socket",
                       killed=killed)
            rule.killed_pids.extend(ok)
        if not ok:
            return
        gone = all([wait_gone(pid) for pid in ok])
        self.state.update_hit(hit, outcome="killed" if gone else "killed (still exiting after 5 s)")

    # ------------------------------------------------------------ control

    def control(self):
        try:
            body, _ = self.read_body()
        except ValueError:
            self.close_connection = True
            self.send_json(400, {"message": "bad request body framing"})
            return
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/")
        query = urllib.parse.parse_qs(url.query)
        match = (query.get("match") or [""])[0] or None
        method = self.command
        st = self.state

        if path in ("/__faults", "/__faults/health") and method == "GET":
            with st.lock:
                n = len(st.rules)
            self.send_json(200, {"ok": True, "upstream": self.upstream.url, "rules": n})
        elif path == "/__faults/rules" and method == "POST":
            try:
                spec = json.loads(body or b"null")
                if not isinstance(spec, dict):
                    raise ValueError("the rule must be a JSON object")
                rule = Rule(spec)
            except ValueError as e:
                self.send_json(400, {"message": str(e)})
                return
            st.add_rule(rule)
            self.send_json(200, {"id": rule.id})
        elif path == "/__faults/rules" and method == "GET":
            with st.lock:
                rules = [r.to_json() for r in st.rules.values()]
            self.send_json(200, {"rules": rules})
        elif path.startswith("/__faults/rules/") and method in ("GET", "DELETE"):
            rule_id = path[len("/__faults/rules/"):]
            if method == "GET":
                with st.lock:
                    rule = st.rules.get(rule_id)
                    data = rule.to_json() if rule else None
                if data is None:
                    self.send_json(404, {"message": f"no rule {rule_id}"})
                else:
                    self.send_json(200, data)
            elif st.delete_rule(rule_id):
                self.send_json(200, {"deleted": rule_id})
            else:
                self.send_json(404, {"message": f"no rule {rule_id}"})
        elif path == "/__faults/reset" and method == "POST":
            st.reset()
            self.send_json(200, {"reset": True})
        elif path in ("/__faults/calls", "/__faults/faulted") and method == "GET":
            not_caller = (query.get("not_caller") or [""])[0] or None
            caller = (query.get("caller") or [""])[0] or None
            counts, truncated = st.counts(match, faulted_only=path.endswith("faulted"),
                                          not_caller=not_caller, caller_only=caller)
            extra = [("X-Faultproxy-Truncated", "true")] if truncated else []
            self.send_json(200, counts, extra)
        elif path == "/__faults/calls/reset" and method == "POST":
            st.reset_calls(match)
            self.send_json(200, {"reset": True, "match": match})
        else:
            self.send_json(404, {"message": f"no control endpoint {method} {path}"})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self):
        # Skips HTTPServer's getfqdn() (a reverse DNS lookup) at start.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)):
            return
        log(f"error handling a request: {type(exc).__name__}")


def parse_listen(text: str):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("--listen must be HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, type=parse_listen, help="HOST:PORT to listen on")
    ap.add_argument("--upstream", required=True, help="moto server, http://HOST:PORT")
    ap.add_argument("--max-log-mib", type=int, default=256,
                    help="memory kept for per-match call counts (default 256)")
    args = ap.parse_args(argv)
    try:
        upstream = Upstream(args.upstream)
    except ValueError as e:
        ap.error(str(e))

    Handler.state = State(args.max_log_mib * 1024 * 1024)
    Handler.upstream = upstream
    host, port = args.listen
    Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = Server((host, port), Handler)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log(f"listening on {host}:{server.server_address[1]}, upstream {upstream.url}")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
