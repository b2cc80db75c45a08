#!/usr/bin/env python3
"""Tests for scripts/faultproxy.py against a real moto server.

    .venv/bin/python scripts/test_faultproxy.py

Starts its own moto servers and proxies on free loopback ports and stops them
at the end (their logs go to a temporary folder, removed at the end unless
FAULTPROXY_TEST_KEEP_LOGS is set). No assertion depends on how fast the machine is: waits poll a
state with a generous deadline, and no test measures elapsed time.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tempfile
import unittest
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

import boto3
import botocore.exceptions
from botocore.config import Config
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROXY = os.path.join(HERE, "faultproxy.py")
VENV_BIN = os.path.dirname(sys.executable)
MOTO_SERVER = os.path.join(VENV_BIN, "moto_server")
if not os.path.exists(MOTO_SERVER):
    MOTO_SERVER = os.path.join(ROOT, ".venv", "bin", "moto_server")
START_DEADLINE = 180.0  # seconds for a server to come up on a loaded machine
POLL_DEADLINE = 60.0
TABLE = "faultproxy-test"

# botocore's "max_attempts" counts retries, not attempts: total_max_attempts=1
# is the setting that really makes one attempt only.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                  connect_timeout=30, read_timeout=120)

# The Rust SDK's throttling codes (aws-runtime 1.10.2, src/retries/classifiers.rs,
# THROTTLING_ERRORS); the error code is taken as in aws-sdk-*/src/json_errors.rs.
RUST_THROTTLING_ERRORS = [
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
]


def rust_error_code(headers: dict, body: bytes) -> str | None:
    """The error code as aws-sdk-{dynamodb,secretsmanager}'s json_errors.rs derives it:
    the x-amzn-errortype header, else body "code", else body "__type"; then
    everything from the first ':' is cut, and everything up to '#'."""
    doc = json.loads(body)
    code = headers.get("x-amzn-errortype") or doc.get("code") or doc.get("__type")
    if code is None:
        return None
    code = code.split(":", 1)[0]
    return code.split("#", 1)[1] if "#" in code else code


# For hand-made requests: moto picks the service from the credential scope
# (the main moto server does not check signatures).
FAKE_AUTH = {svc: f"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{svc}/aws4_request, "
                  "SignedHeaders=host;x-amz-target, Signature=0"
             for svc in ("dynamodb", "secretsmanager")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, what: str, deadline: float = POLL_DEADLINE):
    end = time.monotonic() + deadline
    while True:
        try:
            value = pred()
            if value:
                return value
        except Exception:
            if time.monotonic() > end:
                raise
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


PROCS: list[subprocess.Popen] = []


def start(cmd, env=None, log_name="proc") -> subprocess.Popen:
    log = open(os.path.join(LOG_DIR, f"{log_name}.log"), "wb")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                         stdin=subprocess.DEVNULL)
    log.close()
    PROCS.append(p)
    unittest.addModuleCleanup(stop, p)
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def start_moto(name: str, extra_env=None) -> str:
    port = free_port()
    env = dict(os.environ, **(extra_env or {}))
    start([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], env=env, log_name=name)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_status(url + "/moto-api/") == 200, f"{name} at {url}", START_DEADLINE)
    return url


def start_proxy(upstream: str, name: str) -> str:
    port = free_port()
    start([sys.executable, PROXY, "--listen", f"127.0.0.1:{port}", "--upstream", upstream],
          log_name=name)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_status(url + "/__faults/health") == 200, f"{name} at {url}",
               START_DEADLINE)
    return url


class Control:
    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, obj=None):
        data = json.dumps(obj).encode() if obj is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def add(self, **rule) -> str:
        return self.call("POST", "/__faults/rules", rule)["id"]

    def rule(self, rule_id: str) -> dict:
        return self.call("GET", f"/__faults/rules/{rule_id}")

    def calls(self, match=None, faulted=False) -> dict:
        q = "?" + urllib.parse.urlencode({"match": match}) if match else ""
        return self.call("GET", ("/__faults/faulted" if faulted else "/__faults/calls") + q)

    def reset(self):
        return self.call("POST", "/__faults/reset")

    def wait_outcome(self, rule_id: str, outcome: str, index: int = 0) -> dict:
        def done():
            hits = self.rule(rule_id)["hits"]
            return hits[index] if len(hits) > index and hits[index]["outcome"] == outcome else None
        return wait_until(done, f"rule {rule_id} hit {index} outcome {outcome!r}")


LOG_DIR = ""
MOTO = PROXY_URL = ""


def client(service: str, endpoint: str, config: Config = NO_RETRY, key="test", secret="test"):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret, config=config)


def setUpModule():
    global LOG_DIR, MOTO, PROXY_URL
    LOG_DIR = tempfile.mkdtemp(prefix="faultproxy-test-")
    if not os.environ.get("FAULTPROXY_TEST_KEEP_LOGS"):
        unittest.addModuleCleanup(shutil.rmtree, LOG_DIR, ignore_errors=True)
    MOTO = start_moto("moto")
    PROXY_URL = start_proxy(MOTO, "proxy")
    client("dynamodb", MOTO).create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])


class ProxyTest(unittest.TestCase):
    def setUp(self):
        self.ctl = Control(PROXY_URL)
        self.ctl.reset()
        self.ddb = client("dynamodb", PROXY_URL)
        self.sm = client("secretsmanager", PROXY_URL)
        self.moto_ddb = client("dynamodb", MOTO)
        self.moto_sm = client("secretsmanager", MOTO)
        self.tid = "t-" + uuid.uuid4().hex[:12]

    def put(self, pk: str, ddb=None, **extra):
        item = {"pk": {"S": pk}, **{k: {"S": v} for k, v in extra.items()}}
        return (ddb or self.ddb).put_item(TableName=TABLE, Item=item)

    def get(self, pk: str, ddb=None):
        return (ddb or self.ddb).get_item(TableName=TABLE, Key={"pk": {"S": pk}}, ConsistentRead=True)

    def at_moto(self, pk: str):
        return self.get(pk, self.moto_ddb).get("Item")

    def assert_code(self, ctx, code: str):
        self.assertEqual(ctx.exception.response["Error"]["Code"], code)

    # ------------------------------------------------------------ plain proxying

    def test_passthrough(self):
        self.put(self.tid, v="one")
        self.assertEqual(self.get(self.tid)["Item"]["v"]["S"], "one")
        self.assertEqual(self.at_moto(self.tid)["v"]["S"], "one")
        name = f"{self.tid}/secret"
        self.sm.create_secret(Name=name, SecretString="s3cret")
        self.assertEqual(self.sm.get_secret_value(SecretId=name)["SecretString"], "s3cret")
        # an error from moto comes through as moto sent it
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.sm.get_secret_value(SecretId=f"{self.tid}/missing")
        self.assert_code(ctx, "ResourceNotFoundException")

    def test_keep_alive(self):
        host, port = PROXY_URL.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            socks = []
            for _ in range(3):
                conn.request("POST", "/", body=b"{}", headers={
                    "X-Amz-Target": "DynamoDB_20120810.ListTables",
                    "Authorization": FAKE_AUTH["dynamodb"],
                    "Content-Type": "application/x-amz-json-1.0"})
                resp = conn.getresponse()
                self.assertEqual(resp.status, 200)
                self.assertIn(TABLE, json.loads(resp.read())["TableNames"])
                self.assertIsNone(resp.getheader("Connection"))  # moto's "close" is not passed on
                self.assertFalse(resp.will_close)
                socks.append(conn.sock)
            self.assertIsNotNone(socks[0])
            self.assertTrue(all(s is socks[0] for s in socks), "the connection was not reused")
        finally:
            conn.close()

    def test_parallel_requests(self):
        errors = []
        # boto3's default session is not safe for creating clients in threads.
        clients = [client("dynamodb", PROXY_URL) for _ in range(16)]

        def work(i):
            try:
                c = clients[i]
                self.put(f"{self.tid}-{i}", ddb=c)
                self.get(f"{self.tid}-{i}", ddb=c)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(self.ctl.calls(self.tid), {"dynamodb:GetItem": 16, "dynamodb:PutItem": 16})

    def test_client_disconnect_does_not_kill_proxy(self):
        host, port = PROXY_URL.removeprefix("http://").split(":")
        for payload in (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                        b"X-Amz-Target: DynamoDB_20120810.ListTables\r\n\r\n{\"a\"",
                        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                        b"X-Amz-Target: DynamoDB_20120810.ListTables\r\n\r\n{}"):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(payload)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # RST, mid-body or before the answer
        self.assertTrue(self.ctl.call("GET", "/__faults/health")["ok"])
        self.put(self.tid)

    # ------------------------------------------------------------ throttle / fail

    def test_throttle_dynamodb(self):
        rid = self.ctl.add(action="dynamodb:PutItem", match=self.tid, fault="throttle")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.put(self.tid)
        self.assert_code(ctx, "ThrottlingException")
        self.assertIsInstance(ctx.exception, self.ddb.exceptions.ThrottlingException)
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        self.assertTrue(ThrottledRetryableChecker().is_retryable(
            RetryContext(attempt_number=1, parsed_response=ctx.exception.response)))
        self.assertIsNone(self.at_moto(self.tid), "a before-fault must not reach moto")
        self.put(self.tid)  # times=1: the next one goes through
        self.assertIsNotNone(self.at_moto(self.tid))
        rule = self.ctl.rule(rid)
        self.assertEqual((rule["seen"], rule["fired"]), (2, 1))

    def test_throughput_dynamodb(self):
        self.ctl.add(action="dynamodb:GetItem", match=self.tid, fault="throughput")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.get(self.tid)
        self.assert_code(ctx, "ProvisionedThroughputExceededException")
        self.assertTrue(ThrottledRetryableChecker().is_retryable(
            RetryContext(attempt_number=1, parsed_response=ctx.exception.response)))

    def test_throttle_secretsmanager(self):
        name = f"{self.tid}/s"
        self.sm.create_secret(Name=name, SecretString="v1")
        self.ctl.add(action="secretsmanager:PutSecretValue", match=self.tid, fault="throttle")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.sm.put_secret_value(SecretId=name, SecretString="v2")
        self.assert_code(ctx, "ThrottlingException")
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        self.assertTrue(ThrottledRetryableChecker().is_retryable(
            RetryContext(attempt_number=1, parsed_response=ctx.exception.response)))
        self.assertEqual(self.moto_sm.get_secret_value(SecretId=name)["SecretString"], "v1")

    def test_retrying_client_recovers_from_throttle(self):
        retrying = client("dynamodb", PROXY_URL, Config(retries={"total_max_attempts": 3,
                                                                  "mode": "standard"}))
        self.ctl.add(action="dynamodb:PutItem", match=self.tid, fault="throttle", times=2)
        resp = self.put(self.tid, ddb=retrying)
        self.assertEqual(resp["ResponseMetadata"]["RetryAttempts"], 2)
        self.assertIsNotNone(self.at_moto(self.tid))

    def test_error_shapes_as_the_rust_sdk_reads_them(self):
        host, port = PROXY_URL.removeprefix("http://").split(":")
        cases = [("DynamoDB_20120810.GetItem", "application/x-amz-json-1.0", "dynamodb:GetItem",
                  "throttle", 400, "ThrottlingException"),
                 ("DynamoDB_20120810.GetItem", "application/x-amz-json-1.0", "dynamodb:GetItem",
                  "throughput", 400, "ProvisionedThroughputExceededException"),
                 ("DynamoDB_20120810.GetItem", "application/x-amz-json-1.0", "dynamodb:GetItem",
                  "fail", 500, "InternalServerError"),
                 ("secretsmanager.GetSecretValue", "application/x-amz-json-1.1",
                  "secretsmanager:GetSecretValue", "throttle", 400, "ThrottlingException"),
                 ("secretsmanager.GetSecretValue", "application/x-amz-json-1.1",
                  "secretsmanager:GetSecretValue", "fail", 500, "InternalServiceError")]
        for target, ctype, action, fault, status, code in cases:
            with self.subTest(action=action, fault=fault):
                self.ctl.reset()
                self.ctl.add(action=action, fault=fault, match=self.tid)
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                body = json.dumps({"Key": self.tid}).encode()
                conn.request("POST", "/", body=body, headers={
                    "X-Amz-Target": target, "Content-Type": ctype,
                    "Authorization": FAKE_AUTH[action.partition(":")[0]]})
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                headers = {k.lower(): v for k, v in resp.getheaders()}
                self.assertEqual(resp.status, status)
                self.assertEqual(headers["content-type"], ctype)
                self.assertEqual(int(headers["content-length"]), len(data))
                self.assertIn("x-amzn-requestid", headers)
                self.assertEqual(rust_error_code(headers, data), code)
                self.assertEqual(rust_error_code({}, data), code)  # header and body agree
                if fault != "fail":
                    self.assertIn(code, RUST_THROTTLING_ERRORS)
                if action.startswith("dynamodb"):
                    self.assertEqual(int(headers["x-amz-crc32"]), zlib.crc32(data))

    def test_fail(self):
        self.ctl.add(action="dynamodb:UpdateItem", match=self.tid, fault="fail")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.ddb.update_item(TableName=TABLE, Key={"pk": {"S": self.tid}},
                                 UpdateExpression="SET v = :v",
                                 ExpressionAttributeValues={":v": {"S": "x"}})
        self.assert_code(ctx, "InternalServerError")
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 500)
        self.assertIsNone(self.at_moto(self.tid))

        name = f"{self.tid}/s"
        self.ctl.add(action="secretsmanager:CreateSecret", match=self.tid, fault="fail")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.sm.create_secret(Name=name, SecretString="v1")
        self.assert_code(ctx, "InternalServiceError")
        self.assertIsInstance(ctx.exception, self.sm.exceptions.InternalServiceError)
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.moto_sm.describe_secret(SecretId=name)
        self.assert_code(ctx, "ResourceNotFoundException")

    # ------------------------------------------------------------ rule semantics

    def test_nth_times_match(self):
        rid = self.ctl.add(action="dynamodb:GetItem", match=self.tid, nth=2, times=2, fault="fail")
        other = "o-" + uuid.uuid4().hex[:12]
        results = []
        for pk in (other, self.tid, self.tid, other, self.tid, self.tid, self.tid):
            try:
                self.get(pk)
                results.append("ok")
            except botocore.exceptions.ClientError as e:
                results.append(e.response["Error"]["Code"])
        self.put(self.tid)  # another action does not count
        self.assertEqual(results, ["ok", "ok", "InternalServerError", "ok",
                                   "InternalServerError", "ok", "ok"])
        rule = self.ctl.rule(rid)
        self.assertEqual((rule["seen"], rule["fired"], rule["exhausted"]), (5, 2, True))
        self.assertEqual([h["n"] for h in rule["hits"]], [2, 3])

    def test_times_zero_means_every_one_from_nth(self):
        rid = self.ctl.add(action="dynamodb:GetItem", match=self.tid, nth=3, times=0, fault="throttle")
        codes = []
        for _ in range(6):
            try:
                self.get(self.tid)
                codes.append("ok")
            except botocore.exceptions.ClientError as e:
                codes.append(e.response["Error"]["Code"])
        self.assertEqual(codes, ["ok", "ok"] + ["ThrottlingException"] * 4)
        self.assertEqual(self.ctl.rule(rid)["fired"], 4)
        self.assertFalse(self.ctl.rule(rid)["exhausted"])
        self.ctl.call("DELETE", f"/__faults/rules/{rid}")
        self.get(self.tid)
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            self.ctl.rule(rid)
        self.assertEqual(ctx.exception.code, 404)

    def test_counting_starts_when_rule_is_added(self):
        self.get(self.tid)
        self.get(self.tid)
        self.ctl.add(action="dynamodb:GetItem", match=self.tid, nth=1, fault="fail")
        with self.assertRaises(botocore.exceptions.ClientError):
            self.get(self.tid)

    def test_first_added_rule_wins(self):
        first = self.ctl.add(action="dynamodb:GetItem", match=self.tid, fault="fail")
        second = self.ctl.add(action="dynamodb:*", match=self.tid, fault="throttle", times=2)
        codes = []
        for _ in range(3):
            try:
                self.get(self.tid)
                codes.append("ok")
            except botocore.exceptions.ClientError as e:
                codes.append(e.response["Error"]["Code"])
        self.assertEqual(codes, ["InternalServerError", "ThrottlingException", "ok"])
        self.assertEqual(self.ctl.rule(first)["fired"], 1)
        self.assertEqual((self.ctl.rule(second)["seen"], self.ctl.rule(second)["fired"]), (3, 1))

    def test_bad_rules_are_rejected(self):
        for bad in ({"fault": "throttle"}, {"action": "dynamodb:GetItem", "fault": "explode"},
                    {"action": "dynamodb:GetItem", "fault": "fail", "nth": 0},
                    {"action": "dynamodb:GetItem", "fault": "fail", "when": "during"},
                    {"action": "dynamodb:GetItem", "fault": "fail", "tmes": 2},
                    {"action": "secretsmanager:GetSecretValue", "fault": "throughput"}):
            with self.subTest(rule=bad), self.assertRaises(urllib.error.HTTPError) as ctx:
                self.ctl.call("POST", "/__faults/rules", bad)
            self.assertEqual(ctx.exception.code, 400)
        self.assertEqual(self.ctl.call("GET", "/__faults/rules"), {"rules": []})

    # ------------------------------------------------------------ when=after

    def test_after_applies_the_write_at_moto(self):
        self.ctl.add(action="dynamodb:PutItem", match=self.tid, fault="fail", when="after")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.put(self.tid, v="applied")
        self.assert_code(ctx, "InternalServerError")
        self.assertEqual(self.at_moto(self.tid)["v"]["S"], "applied")

        name = f"{self.tid}/s"
        self.sm.create_secret(Name=name, SecretString="v1")
        rid = self.ctl.add(action="secretsmanager:PutSecretValue", match=self.tid,
                           fault="throttle", when="after")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.sm.put_secret_value(SecretId=name, SecretString="v2")
        self.assert_code(ctx, "ThrottlingException")
        self.assertEqual(self.moto_sm.get_secret_value(SecretId=name)["SecretString"], "v2")
        self.assertEqual(self.ctl.rule(rid)["hits"][0]["upstream_status"], 200)

    # ------------------------------------------------------------ delay / hang

    def test_delay(self):
        rid = self.ctl.add(action="dynamodb:PutItem", match=self.tid, fault="delay", delay_ms=200)
        self.put(self.tid)
        self.assertIsNotNone(self.at_moto(self.tid))
        rule = self.ctl.rule(rid)
        self.assertEqual(rule["fired"], 1)
        self.assertEqual(rule["hits"][0]["outcome"], "delayed")
        self.assertEqual(rule["hits"][0]["upstream_status"], 200)

        rid = self.ctl.add(action="dynamodb:GetItem", match=self.tid, fault="delay",
                           delay_ms=100, when="after")
        self.assertIn("Item", self.get(self.tid))
        self.assertEqual(self.ctl.rule(rid)["fired"], 1)

    def test_conflict_cancels_a_transaction_on_an_item_another_is_writing(self):
        contended, other = self.tid + "-counter", self.tid + "-record"

        def transact(pk_a, pk_b):
            return self.ddb.transact_write_items(TransactItems=[
                {"Put": {"TableName": TABLE, "Item": {"pk": {"S": pk_a}}}},
                {"Put": {"TableName": TABLE, "Item": {"pk": {"S": pk_b}}}},
            ])

        rid = self.ctl.add(action="dynamodb:TransactWriteItems", match=contended,
                           fault="conflict", times=0, delay_ms=60_000)
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(out=transact(other, contended)))
        t.start()
        self.ctl.wait_outcome(rid, "holding", 0)
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            transact(self.tid + "-another", contended)
        self.assert_code(ctx, "TransactionCanceledException")
        reasons = [r["Code"] for r in ctx.exception.response["CancellationReasons"]]
        self.assertEqual(reasons, ["None", "TransactionConflict"])
        # A transaction on other items goes through meanwhile.
        transact(self.tid + "-x", self.tid + "-y")
        self.assertIsNotNone(self.at_moto(self.tid + "-x"))
        self.assertIsNone(self.at_moto(self.tid + "-another"), "nothing of a cancelled one")
        # Deleting the rule lets the held one be written.
        self.ctl.call("DELETE", f"/__faults/rules/{rid}")
        t.join(timeout=POLL_DEADLINE)
        self.assertIn("out", first)
        self.assertIsNotNone(self.at_moto(contended))

    def test_conflict_is_a_transaction_fault_with_an_item(self):
        for bad in ({"action": "dynamodb:PutItem", "fault": "conflict", "match": "x"},
                    {"action": "dynamodb:TransactWriteItems", "fault": "conflict"}):
            with self.assertRaises(urllib.error.HTTPError):
                self.ctl.add(**bad)

    def test_hang_until_client_gives_up(self):
        rid = self.ctl.add(action="dynamodb:PutItem", match=self.tid, fault="hang")
        impatient = client("dynamodb", PROXY_URL, Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=30, read_timeout=1))
        with self.assertRaises(botocore.exceptions.ReadTimeoutError):
            self.put(self.tid, ddb=impatient)
        self.ctl.wait_outcome(rid, "client disconnected")
        self.assertEqual(self.ctl.rule(rid)["fired"], 1)
        self.assertIsNone(self.at_moto(self.tid), "a hung before-request must not reach moto")

    def test_hang_released_by_deleting_the_rule(self):
        rid = self.ctl.add(action="dynamodb:PutItem", match=self.tid, fault="hang")
        outcome = {}
        patient = client("dynamodb", PROXY_URL)

        def call():
            try:
                outcome["resp"] = self.put(self.tid, ddb=patient)
            except Exception as e:  # reported by the assertions below
                outcome["error"] = e

        t = threading.Thread(target=call)
        t.start()
        self.ctl.wait_outcome(rid, "hanging")
        self.assertIsNone(self.at_moto(self.tid))
        hit = self.ctl.rule(rid)["hits"][0]
        self.ctl.call("DELETE", f"/__faults/rules/{rid}")
        t.join(120)
        self.assertFalse(t.is_alive())
        self.assertNotIn("error", outcome)
        self.assertEqual(outcome["resp"]["ResponseMetadata"]["HTTPStatusCode"], 200)
        self.assertIsNotNone(self.at_moto(self.tid))
        self.assertEqual(hit["fault"], "hang")

    def test_hang_after_released_by_reset(self):
        rid = self.ctl.add(action="dynamodb:PutItem", match=self.tid, fault="hang", when="after")
        outcome = {}
        patient = client("dynamodb", PROXY_URL)

        def call():
            try:
                outcome["resp"] = self.put(self.tid, ddb=patient)
            except Exception as e:
                outcome["error"] = e

        t = threading.Thread(target=call)
        t.start()
        self.ctl.wait_outcome(rid, "hanging")
        self.assertIsNotNone(self.at_moto(self.tid), "when=after: moto applied it already")
        self.assertTrue(t.is_alive())
        self.ctl.reset()
        t.join(120)
        self.assertNotIn("error", outcome)
        self.assertEqual(outcome["resp"]["ResponseMetadata"]["HTTPStatusCode"], 200)

    # ------------------------------------------------------------ kill

    CHILD = r"""
import sys, boto3
from botocore.config import Config
c = boto3.client("dynamodb", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test",
                 config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                               read_timeout=300))
c.put_item(TableName=sys.argv[2], Item={"pk": {"S": sys.argv[3]}})
print("survived")
"""

    def run_child(self):
        p = subprocess.Popen([sys.executable, "-c", self.CHILD, PROXY_URL, TABLE, self.tid,
                              "faultproxy-kill-child"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise
        return p, out, err

    def check_kill(self, when: str, reached_moto: bool):
        rid = self.ctl.add(action="dynamodb:PutItem", match=self.tid, fault="kill", when=when)
        p, out, err = self.run_child()
        self.assertEqual(p.returncode, -signal.SIGKILL, (out, err[-2000:]))
        self.assertNotIn(b"survived", out)
        hit = self.ctl.wait_outcome(rid, "killed")
        rule = self.ctl.rule(rid)
        self.assertEqual(rule["fired"], 1)
        self.assertEqual(rule["killed_pids"], [p.pid])
        self.assertEqual(hit["killed"][0]["pid"], p.pid)
        self.assertIn("faultproxy-kill-child", hit["killed"][0]["cmdline"])
        self.assertEqual(self.at_moto(self.tid) is not None, reached_moto)
        self.assertEqual(self.ctl.calls(self.tid), {"dynamodb:PutItem": 1})
        self.assertTrue(self.ctl.call("GET", "/__faults/health")["ok"])

    def test_kill_before(self):
        self.check_kill("before", reached_moto=False)

    def test_kill_after(self):
        self.check_kill("after", reached_moto=True)

    def test_kill_plain_http_client(self):
        rid = self.ctl.add(action="dynamodb:GetItem", match=self.tid, fault="kill")
        host, port = PROXY_URL.removeprefix("http://").split(":")
        p = subprocess.Popen([sys.executable, "-c", (
            "import http.client,sys\n"
            "c=http.client.HTTPConnection(sys.argv[1],int(sys.argv[2]),timeout=300)\n"
            "c.request('POST','/',body=sys.argv[3].encode(),headers={"
            "'X-Amz-Target':'DynamoDB_20120810.GetItem'})\n"
            "c.getresponse().read()\nprint('survived')\n"), host, port,
            json.dumps({"Key": self.tid})], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        out, _ = p.communicate(timeout=300)
        self.assertEqual(p.returncode, -signal.SIGKILL)
        self.assertEqual(out, b"")
        self.ctl.wait_outcome(rid, "killed")
        self.assertEqual(self.ctl.rule(rid)["killed_pids"], [p.pid])
        self.assertTrue(self.ctl.call("GET", "/__faults/health")["ok"])

    # ------------------------------------------------------------ call counts

    def test_calls_counts_match_and_reset(self):
        a, b = self.tid, "b-" + uuid.uuid4().hex[:12]
        name = f"{a}/s"
        self.sm.create_secret(Name=name, SecretString="v")
        self.sm.get_secret_value(SecretId=name)
        for pk in (a, a, b):
            self.put(pk)
        self.get(a)
        self.get(b)
        self.ctl.add(action="dynamodb:GetItem", match=a, fault="throttle")
        with self.assertRaises(botocore.exceptions.ClientError):
            self.get(a)
        self.assertEqual(self.ctl.calls(a), {
            "dynamodb:GetItem": 2, "dynamodb:PutItem": 2,
            "secretsmanager:CreateSecret": 1, "secretsmanager:GetSecretValue": 1})
        self.assertEqual(self.ctl.calls(a, faulted=True), {"dynamodb:GetItem": 1})
        self.assertEqual(self.ctl.calls(b), {"dynamodb:GetItem": 1, "dynamodb:PutItem": 1})
        everything = self.ctl.calls()
        self.assertEqual(everything["dynamodb:PutItem"], 3)

        self.assertEqual(self.ctl.call("POST", "/__faults/calls/reset?match=" + a),
                         {"reset": True, "match": a})
        self.assertEqual(self.ctl.calls(a), {})
        self.assertEqual(self.ctl.calls(a, faulted=True), {})
        self.assertEqual(self.ctl.calls(b), {"dynamodb:GetItem": 1, "dynamodb:PutItem": 1})
        self.get(a)
        self.assertEqual(self.ctl.calls(a), {"dynamodb:GetItem": 1})

        self.ctl.call("POST", "/__faults/calls/reset")
        self.assertEqual(self.ctl.calls(), {})
        self.assertEqual(self.ctl.calls(b), {})
        self.assertEqual(len(self.ctl.call("GET", "/__faults/rules")["rules"]), 1,
                         "resetting calls keeps the rules")

    def test_reset_clears_rules_and_counts(self):
        self.ctl.add(action="dynamodb:GetItem", match=self.tid, fault="fail")
        self.put(self.tid)
        self.assertEqual(self.ctl.reset(), {"reset": True})
        self.assertEqual(self.ctl.call("GET", "/__faults/rules"), {"rules": []})
        self.assertEqual(self.ctl.calls(self.tid), {})
        self.get(self.tid)
        self.assertEqual(self.ctl.calls(self.tid), {"dynamodb:GetItem": 1})

    def test_unknown_control_path(self):
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            self.ctl.call("GET", "/__faults/nope")
        self.assertEqual(ctx.exception.code, 404)


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in upstream that answers with what it received, chunked."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while size := int(self.rfile.readline().strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        echo = json.dumps({"method": self.command, "path": self.path,
                           "headers": list(self.headers.items()),
                           "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        half = len(echo) // 2
        for part in (echo[:half], echo[half:]):
            self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


class ForwardingTest(unittest.TestCase):
    """What reaches the upstream, chunked answers, upstream down, SigV4."""

    @classmethod
    def setUpClass(cls):
        cls.echo = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
        cls.echo.daemon_threads = True
        threading.Thread(target=cls.echo.serve_forever, daemon=True).start()
        cls.addClassCleanup(cls.echo.server_close)
        cls.addClassCleanup(cls.echo.shutdown)
        cls.echo_proxy = start_proxy(f"http://127.0.0.1:{cls.echo.server_address[1]}", "echo-proxy")

    def test_request_forwarded_unchanged_and_chunked_answer_reframed(self):
        host, port = self.echo_proxy.removeprefix("http://").split(":")
        body = b'{"TableName":"t","Key":{"pk":{"S":"\xc3\xa9"}}}'
        sent = [("Host", "dynamodb.example:1234"),
                ("X-Amz-Target", "DynamoDB_20120810.GetItem"),
                ("Content-Type", "application/x-amz-json-1.0"),
                ("X-Amz-Date", "20260101T000000Z"),
                ("Authorization", "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/dynamodb/"
                                  "aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, "
                                  "Signature=abc"),
                ("x-custom-Case", "Kept As Is"),
                ("Content-Length", str(len(body)))]
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            for _ in range(2):  # and the client connection stays usable
                conn.putrequest("POST", "/some/path?x=1", skip_host=True, skip_accept_encoding=True)
                for k, v in sent:
                    conn.putheader(k, v)
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                self.assertEqual(resp.status, 200)
                self.assertIsNone(resp.getheader("Transfer-Encoding"))
                self.assertIsNone(resp.getheader("Connection"))
                self.assertEqual(int(resp.getheader("Content-Length")), len(data))
                echo = json.loads(data)
                self.assertEqual(echo["method"], "POST")
                self.assertEqual(echo["path"], "/some/path?x=1")
                self.assertEqual([tuple(h) for h in echo["headers"]], sent)
                self.assertEqual(echo["body"].encode(), body)
        finally:
            conn.close()

    def test_chunked_request_body(self):
        host, port = self.echo_proxy.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("POST", "/", body=iter([b'{"a":', b'"tenant-x"}']), encode_chunked=True,
                         headers={"X-Amz-Target": "secretsmanager.GetSecretValue"})
            resp = conn.getresponse()
            echo = json.loads(resp.read())
        finally:
            conn.close()
        self.assertEqual(echo["body"], '{"a":"tenant-x"}')
        self.assertIn(("Transfer-Encoding", "chunked"), [tuple(h) for h in echo["headers"]])
        self.assertEqual(Control(self.echo_proxy).calls("tenant-x"),
                         {"secretsmanager:GetSecretValue": 1})

    def test_upstream_down_is_502(self):
        proxy = start_proxy(f"http://127.0.0.1:{free_port()}", "dead-proxy")
        ddb = client("dynamodb", proxy)
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            ddb.list_tables()
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 502)
        self.assertEqual(ctx.exception.response["Error"]["Code"], "FaultProxyUpstreamError")
        self.assertEqual(Control(proxy).calls(), {"dynamodb:ListTables": 1})

    def test_sigv4_verifies_at_moto_through_the_proxy(self):
        # moto checks signatures and IAM policies after its first 3 actions.
        moto = start_moto("moto-auth", {"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
        proxy = start_proxy(moto, "auth-proxy")
        iam = client("iam", moto)
        iam.create_user(UserName="fn")
        key = iam.create_access_key(UserName="fn")["AccessKey"]
        iam.put_user_policy(UserName="fn", PolicyName="p", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "dynamodb:ListTables", "Resource": "*"}]}))
        good = client("dynamodb", proxy, key=key["AccessKeyId"], secret=key["SecretAccessKey"])
        self.assertEqual(good.list_tables()["TableNames"], [])
        bad = client("dynamodb", proxy, key=key["AccessKeyId"], secret="wrong")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            bad.list_tables()
        # moto answers its auth errors in XML, which botocore's JSON parser
        # leaves in Message (Code becomes the status).
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)
        self.assertIn("<Code>SignatureDoesNotMatch</Code>", ctx.exception.response["Error"]["Message"])
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            good.describe_table(TableName="x")
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)
        self.assertIn("AccessDenied", ctx.exception.response["Error"]["Message"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
