#!/usr/bin/env python3
"""Tests of scripts/iam_local.py: the template's IAM, enforced per function by moto.

Run: .venv/bin/python scripts/test_iam_local.py [-v]

Starts its own moto servers on free loopback ports (and stops them), so it
runs beside a running local stack. Waits poll with generous deadlines; no
test depends on how fast the machine is.
"""

from __future__ import annotations

import configparser
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
import urllib.request
from pathlib import Path
from typing import Any, Callable

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no scripts/__pycache__
import iam_local  # noqa: E402

SCRIPT = HERE / "iam_local.py"
PY = sys.executable
MOTO_SERVER = Path(PY).parent / "moto_server"
REGION = "us-east-1"
START_DEADLINE_S = 120.0
BINARIES = {"admin", "api", "authorize", "callback", "deliver", "inbound", "proxy", "refresh", "test-connection", "token"}
HARNESS = iam_local.DEFAULT_ADMIN_PROFILE
TABLE = "iam-test"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})

_SAVED_ENV: dict[str, str | None] = {}


def setUpModule() -> None:
    # Nothing from the host's AWS setup may leak into the clients.
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_EC2_METADATA_DISABLED",
    ):
        _SAVED_ENV[name] = os.environ.pop(name, None)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def tearDownModule() -> None:
    for name, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "INITIAL_NO_AUTH_ACTION_COUNT"}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """A moto server process of this test run, on its own port."""

    def __init__(self, cmd: list[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*cmd, "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=10):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server not up after {START_DEADLINE_S}s:\n{self.log_tail()}")
                time.sleep(0.2)

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def profile_client(endpoint: str, credentials_file: Path, profile: str, service: str) -> Any:
    """A client resolving its credentials from `profile` in `credentials_file`."""
    core = botocore.session.Session(profile=profile)
    core.set_config_variable("credentials_file", str(credentials_file))
    core.set_config_variable("config_file", os.devnull)
    return boto3.Session(botocore_session=core).client(
        service, endpoint_url=endpoint, region_name=REGION, config=NO_RETRY
    )


def key_client(endpoint: str, service: str, key_id: str, secret: str) -> Any:
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=NO_RETRY,
    )


def error_of(call: Callable[[], Any]) -> tuple[str, int, str]:
    """(error code, HTTP status, message) of a call that must fail."""
    try:
        call()
    except ClientError as err:
        e = err.response["Error"]
        return str(e.get("Code")), int(err.response["ResponseMetadata"]["HTTPStatusCode"]), str(e.get("Message"))
    raise AssertionError("the call succeeded; it should have been refused")


def write_template(tmp: Path, body: str) -> Path:
    path = tmp / "template.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            AWSTemplateFormatVersion: "2010-09-09"
            Transform: AWS::Serverless-2016-10-31
            Resources:
              Table:
                Type: AWS::DynamoDB::Table
                Properties:
                  KeySchema: [{AttributeName: pk, KeyType: HASH}]
                  AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]
              Fn:
                Type: AWS::Serverless::Function
                Metadata:
                  BuildMethod: rust-cargolambda
                  BuildProperties:
                    Binary: fn
                Properties:
                  CodeUri: .
                  Handler: bootstrap
                  Runtime: provided.al2023
            """
        )
        + textwrap.indent(textwrap.dedent(body), " " * 6)
    )
    return path


# ---------------------------------------------------------------- template


class TemplateParsing(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def test_policies_cli_lists_every_function_of_the_template(self) -> None:
        out = run_cli("policies")
        self.assertEqual(out.returncode, 0, out.stderr)
        actions = json.loads(out.stdout)
        self.assertEqual(set(actions), BINARIES)
        self.assertEqual(actions, iam_local.action_lists(iam_local.function_policies(iam_local.load_template(iam_local.TEMPLATE))))
        self.assertIn("dynamodb:GetItem", actions["token"])
        self.assertIn("secretsmanager:PutSecretValue", actions["token"])
        self.assertNotIn("secretsmanager:CreateSecret", actions["token"])
        self.assertIn("dynamodb:PutItem", actions["authorize"])
        self.assertFalse([a for a in actions["authorize"] if a.startswith("secretsmanager:")])

    def test_documents_keep_actions_only(self) -> None:
        out = run_cli("policies", "--documents")
        self.assertEqual(out.returncode, 0, out.stderr)
        for binary, doc in json.loads(out.stdout).items():
            for statement in doc["Statement"]:
                self.assertEqual(statement["Effect"], "Allow", binary)
                self.assertEqual(statement["Resource"], "*", binary)
                self.assertNotIn("Condition", statement, binary)

    def test_statement_forms_and_action_case(self) -> None:
        path = write_template(
            self.tmp,
            """\
            Policies:
              - Statement:
                  Effect: Allow
                  Action: dynamodb:getitem
                  Resource: !GetAtt Table.Arn
              - Version: "2012-10-17"
                Statement:
                  - Effect: Allow
                    Action: [secretsmanager:Get*, SecretsManager:describesecret]
                    Resource: "*"
                    Condition: {StringEquals: {"aws:ResourceTag/x": "y"}}
            """,
        )
        policies = iam_local.function_policies(iam_local.load_template(path))
        self.assertEqual(
            iam_local.action_lists(policies),
            {"fn": ["dynamodb:GetItem", "secretsmanager:DescribeSecret", "secretsmanager:Get*"]},
        )

    def test_function_without_policies_gets_an_empty_list(self) -> None:
        path = write_template(self.tmp, "Description: none\n")
        self.assertEqual(iam_local.action_lists(iam_local.function_policies(iam_local.load_template(path))), {"fn": []})

    def assert_refused(self, body: str, *needles: str) -> None:
        path = write_template(self.tmp, body)
        with self.assertRaises(iam_local.TemplateError) as ctx:
            iam_local.function_policies(iam_local.load_template(path))
        for needle in needles:
            self.assertIn(needle, str(ctx.exception))
        out = run_cli("policies", "--template", str(path))
        self.assertEqual(out.returncode, 1)
        for needle in needles:
            self.assertIn(needle, out.stderr)

    def test_sam_policy_templates_fail_loudly_by_name(self) -> None:
        self.assert_refused(
            """\
            Policies:
              - DynamoDBReadPolicy: {TableName: !Ref Table}
              - SecretsManagerGetSecretValuePolicy: {SecretArn: "*"}
            """,
            "DynamoDBReadPolicy",
            "Resources.Fn.Properties.Policies[0]",
        )

    def test_managed_policy_names_fail_loudly(self) -> None:
        self.assert_refused("Policies: AmazonDynamoDBFullAccess\n", "AmazonDynamoDBFullAccess")

    def test_deny_fails_loudly(self) -> None:
        self.assert_refused(
            """\
            Policies:
              - Statement:
                  - Effect: Deny
                    Action: dynamodb:Scan
                    Resource: "*"
            """,
            "Deny",
        )

    def test_missing_binary_fails_loudly(self) -> None:
        path = self.tmp / "template.yaml"
        path.write_text(
            "Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n    Properties: {CodeUri: .}\n"
        )
        with self.assertRaises(iam_local.TemplateError) as ctx:
            iam_local.function_policies(iam_local.load_template(path))
        self.assertIn("Metadata.BuildProperties.Binary", str(ctx.exception))


# ---------------------------------------------------------------- enforced server


class EnforcedStack(unittest.TestCase):
    """`iam_local.py serve` + `provision`: what the local stack runs."""

    server: MotoServer
    creds: Path
    provision_out: subprocess.CompletedProcess[str]
    actions: dict[str, list[str]]

    @classmethod
    def setUpClass(cls) -> None:
        tmp = tempfile.TemporaryDirectory()
        cls.addClassCleanup(tmp.cleanup)
        cls.tmp = Path(tmp.name)
        cls.server = MotoServer([PY, str(SCRIPT), "serve"], clean_env(), cls.tmp, "serve")
        cls.addClassCleanup(cls.server.stop)
        cls.server.wait_ready()
        cls.creds = cls.tmp / "stack" / "aws-credentials"
        cls.provision_out = run_cli("provision", "--endpoint", cls.server.endpoint, "--credentials-file", str(cls.creds))
        if cls.provision_out.returncode != 0:
            raise RuntimeError(f"provision failed:\n{cls.provision_out.stderr}\n{cls.server.log_tail()}")
        cls.actions = iam_local.action_lists(iam_local.function_policies(iam_local.load_template(iam_local.TEMPLATE)))

        # The harness prepares what the probes touch.
        ddb = cls.client(HARNESS, "dynamodb")
        ddb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        sm = cls.client(HARNESS, "secretsmanager")
        for binary in BINARIES:
            sm.create_secret(Name=f"iam-test/{binary}/existing", SecretString="v1")
            sm.create_secret(Name=f"iam-test/{binary}/doomed", SecretString="v1")

    @classmethod
    def client(cls, profile: str, service: str) -> Any:
        return profile_client(cls.server.endpoint, cls.creds, profile, service)

    def harness_key(self) -> tuple[str, str]:
        ini = configparser.ConfigParser()
        ini.read(self.creds)
        return ini[HARNESS]["aws_access_key_id"], ini[HARNESS]["aws_secret_access_key"]

    def assert_denied(self, call: Callable[[], Any], user: str, action: str) -> None:
        code, status, message = error_of(call)
        self.assertEqual((code, status), ("AccessDeniedException", 400), message)
        self.assertIn(f"user/{user} is not authorized to perform: {action}", message)

    def assert_enforced(self) -> None:
        ep = self.server.endpoint
        ddb = key_client(ep, "dynamodb", "FAKEUNKNOWN000000000", "x")
        sm = key_client(ep, "secretsmanager", "FAKEUNKNOWN000000000", "x")
        for call in (ddb.list_tables, sm.list_secrets):
            code, status, _ = error_of(call)
            self.assertEqual((code, status), ("UnrecognizedClientException", 400))

    # -- the credentials file

    def test_credentials_file_is_private_and_has_one_profile_per_binary(self) -> None:
        self.assertEqual(stat.S_IMODE(self.creds.stat().st_mode), 0o600)
        ini = configparser.ConfigParser()
        ini.read(self.creds)
        self.assertEqual(set(ini.sections()), BINARIES | {HARNESS})
        keys = [ini[s]["aws_access_key_id"] for s in ini.sections()]
        self.assertEqual(len(set(keys)), len(keys), "every profile has its own key")
        self.assertEqual(list(self.creds.parent.iterdir()), [self.creds], "no temporary file left behind")

    def test_provision_prints_no_key(self) -> None:
        ini = configparser.ConfigParser()
        ini.read(self.creds)
        printed = self.provision_out.stdout + self.provision_out.stderr
        for section in ini.sections():
            self.assertNotIn(ini[section]["aws_access_key_id"], printed)
            self.assertNotIn(ini[section]["aws_secret_access_key"], printed)
        self.assertNotIn("AKIA", printed)

    def test_each_profile_is_its_own_user(self) -> None:
        for binary in BINARIES:
            arn = self.client(binary, "sts").get_caller_identity()["Arn"]
            self.assertTrue(arn.endswith(f":user/fn-{binary}"), arn)
        self.assertTrue(self.client(HARNESS, "sts").get_caller_identity()["Arn"].endswith(f":user/{HARNESS}"))

    # -- the examples of the brief

    def test_token_may_read_the_table_and_write_a_connection_secret(self) -> None:
        self.client("token", "dynamodb").get_item(TableName=TABLE, Key={"pk": {"S": "a"}, "sk": {"S": "b"}})
        self.client("token", "secretsmanager").put_secret_value(SecretId="iam-test/token/existing", SecretString="v2")
        got = self.client(HARNESS, "secretsmanager").get_secret_value(SecretId="iam-test/token/existing")
        self.assertEqual(got["SecretString"], "v2")

    def test_token_may_not_create_a_secret_or_scan(self) -> None:
        sm = self.client("token", "secretsmanager")
        self.assert_denied(lambda: sm.create_secret(Name="iam-test/token/new", SecretString="x"), "fn-token", "secretsmanager:CreateSecret")
        ddb = self.client("token", "dynamodb")
        self.assert_denied(lambda: ddb.scan(TableName=TABLE), "fn-token", "dynamodb:Scan")
        self.assert_denied(
            lambda: ddb.delete_item(TableName=TABLE, Key={"pk": {"S": "a"}, "sk": {"S": "b"}}), "fn-token", "dynamodb:DeleteItem"
        )

    def test_authorize_may_not_read_secrets(self) -> None:
        self.client("authorize", "dynamodb").put_item(TableName=TABLE, Item={"pk": {"S": "flow"}, "sk": {"S": "1"}})
        sm = self.client("authorize", "secretsmanager")
        self.assert_denied(
            lambda: sm.get_secret_value(SecretId="iam-test/authorize/existing"), "fn-authorize", "secretsmanager:GetSecretValue"
        )

    # -- every function against every probe

    def probes(self, binary: str) -> list[tuple[str, str, Callable[[Any], Any]]]:
        key = {"pk": {"S": f"probe#{binary}"}, "sk": {"S": "1"}}
        existing, doomed = f"iam-test/{binary}/existing", f"iam-test/{binary}/doomed"
        return [
            ("dynamodb", "GetItem", lambda c: c.get_item(TableName=TABLE, Key=key)),
            ("dynamodb", "PutItem", lambda c: c.put_item(TableName=TABLE, Item=key)),
            (
                "dynamodb",
                "UpdateItem",
                lambda c: c.update_item(
                    TableName=TABLE, Key=key, UpdateExpression="SET n = :n", ExpressionAttributeValues={":n": {"N": "1"}}
                ),
            ),
            (
                "dynamodb",
                "Query",
                lambda c: c.query(
                    TableName=TABLE, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": key["pk"]}
                ),
            ),
            ("dynamodb", "DeleteItem", lambda c: c.delete_item(TableName=TABLE, Key=key)),
            ("dynamodb", "Scan", lambda c: c.scan(TableName=TABLE, Limit=1)),
            ("dynamodb", "DescribeTable", lambda c: c.describe_table(TableName=TABLE)),
            ("dynamodb", "ListTables", lambda c: c.list_tables()),
            (
                "dynamodb",
                "TransactWriteItems",
                lambda c: c.transact_write_items(TransactItems=[{"Put": {"TableName": TABLE, "Item": key}}]),
            ),
            ("secretsmanager", "GetSecretValue", lambda c: c.get_secret_value(SecretId=existing)),
            ("secretsmanager", "PutSecretValue", lambda c: c.put_secret_value(SecretId=existing, SecretString="v2")),
            ("secretsmanager", "DescribeSecret", lambda c: c.describe_secret(SecretId=existing)),
            ("secretsmanager", "TagResource", lambda c: c.tag_resource(SecretId=existing, Tags=[{"Key": "k", "Value": "v"}])),
            ("secretsmanager", "CreateSecret", lambda c: c.create_secret(Name=f"iam-test/{binary}/created", SecretString="x")),
            ("secretsmanager", "ListSecrets", lambda c: c.list_secrets()),
            ("secretsmanager", "UpdateSecretVersionStage", lambda c: c.update_secret_version_stage(SecretId=existing, VersionStage="X")),
            ("secretsmanager", "DeleteSecret", lambda c: c.delete_secret(SecretId=doomed, ForceDeleteWithoutRecovery=True)),
        ]

    def test_every_function_gets_exactly_its_template_actions(self) -> None:
        granted_somewhere = 0
        for binary in sorted(BINARIES):
            clients = {s: self.client(binary, s) for s in ("dynamodb", "secretsmanager")}
            for service, op, call in self.probes(binary):
                action = f"{service}:{op}"
                granted = set(self.actions[binary])
                granted |= {e for a in granted for e in iam_local.MOTO_EQUIVALENTS.get(a, [])}
                with self.subTest(binary=binary, action=action):
                    if action in granted:
                        granted_somewhere += 1
                        call(clients[service])  # must succeed
                    else:
                        self.assert_denied(lambda: call(clients[service]), f"fn-{binary}", action)
        self.assertGreater(granted_somewhere, 20)

    def test_a_transaction_with_one_refused_condition_writes_nothing(self) -> None:
        ddb = self.client(HARNESS, "dynamodb")
        a = {"pk": {"S": "tx"}, "sk": {"S": "a"}}
        b = {"pk": {"S": "tx"}, "sk": {"S": "b"}}
        ddb.put_item(TableName=TABLE, Item={**a, "n": {"N": "1"}})
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            ddb.transact_write_items(TransactItems=[
                {"Put": {"TableName": TABLE, "Item": {**b, "n": {"N": "1"}}}},
                {"Update": {"TableName": TABLE, "Key": a, "UpdateExpression": "SET n = :two",
                            "ConditionExpression": "n = :zero",
                            "ExpressionAttributeValues": {":two": {"N": "2"}, ":zero": {"N": "0"}}}},
            ])
        err = ctx.exception.response
        self.assertEqual(err["Error"]["Code"], "TransactionCanceledException")
        self.assertEqual([r["Code"] for r in err["CancellationReasons"]], ["None", "ConditionalCheckFailed"])
        self.assertNotIn("Item", ddb.get_item(TableName=TABLE, Key=b))
        self.assertEqual(ddb.get_item(TableName=TABLE, Key=a)["Item"]["n"], {"N": "1"})
        # All conditions hold: every item is written.
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": TABLE, "Item": {**b, "n": {"N": "1"}}, "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Update": {"TableName": TABLE, "Key": a, "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        ])
        self.assertEqual(ddb.get_item(TableName=TABLE, Key=a)["Item"]["n"], {"N": "2"})
        self.assertIn("Item", ddb.get_item(TableName=TABLE, Key=b))

    def test_functions_cannot_touch_iam(self) -> None:
        for binary in sorted(BINARIES):
            iam = self.client(binary, "iam")
            with self.subTest(binary=binary):
                code, status, message = error_of(
                    lambda: iam.put_user_policy(
                        UserName=f"fn-{binary}",
                        PolicyName="more",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
                    )
                )
                # IAM is a query/XML service: AWS and moto both answer AccessDenied, 403.
                self.assertEqual((code, status), ("AccessDenied", 403), message)

    def test_harness_may_do_everything(self) -> None:
        ddb = self.client(HARNESS, "dynamodb")
        ddb.create_table(
            TableName="iam-test-scratch",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        ddb.scan(TableName="iam-test-scratch")
        ddb.delete_table(TableName="iam-test-scratch")
        sm = self.client(HARNESS, "secretsmanager")
        sm.create_secret(Name="iam-test/harness/scratch", SecretString="x")
        sm.list_secrets()
        sm.delete_secret(SecretId="iam-test/harness/scratch", ForceDeleteWithoutRecovery=True)
        users = {u["UserName"] for u in self.client(HARNESS, "iam").list_users()["Users"]}
        self.assertEqual(users, {f"fn-{b}" for b in BINARIES} | {HARNESS})

    # -- authentication failures

    def test_unknown_access_key(self) -> None:
        ep = self.server.endpoint
        for service, call in (
            ("dynamodb", lambda c: c.list_tables()),
            ("secretsmanager", lambda c: c.list_secrets()),
        ):
            code, status, message = error_of(lambda: call(key_client(ep, service, "FAKEUNKNOWN000000000", "x")))
            self.assertEqual((code, status), ("UnrecognizedClientException", 400), service)
            self.assertEqual(message, "The security token included in the request is invalid.")
        for service, call in (("sts", lambda c: c.get_caller_identity()), ("iam", lambda c: c.list_users())):
            code, status, _ = error_of(lambda: call(key_client(ep, service, "FAKEUNKNOWN000000000", "x")))
            self.assertEqual((code, status), ("InvalidClientTokenId", 403), service)

    def test_wrong_secret_for_a_known_key(self) -> None:
        key_id, _ = self.harness_key()
        ep = self.server.endpoint
        code, status, _ = error_of(lambda: key_client(ep, "dynamodb", key_id, "wrong").list_tables())
        self.assertEqual((code, status), ("InvalidSignatureException", 400))
        code, status, _ = error_of(lambda: key_client(ep, "secretsmanager", key_id, "wrong").list_secrets())
        self.assertEqual((code, status), ("InvalidSignatureException", 400))
        code, status, _ = error_of(lambda: key_client(ep, "sts", key_id, "wrong").get_caller_identity())
        self.assertEqual((code, status), ("SignatureDoesNotMatch", 403))

    def test_aws_profile_selects_the_function_and_static_env_keys_win_over_it(self) -> None:
        """What a function process sees: AWS_PROFILE + AWS_SHARED_CREDENTIALS_FILE.

        The default credential chains (botocore here; the Rust SDK's
        DefaultCredentialsChain likewise) read AWS_ACCESS_KEY_ID before any
        profile, so the shared env file must carry no static keys.
        """
        code = "import sys, boto3; print(boto3.client('sts', endpoint_url=sys.argv[1], region_name='us-east-1').get_caller_identity()['Arn'])"
        base = clean_env(AWS_SHARED_CREDENTIALS_FILE=str(self.creds), AWS_PROFILE="token")
        ok = subprocess.run([PY, "-c", code, self.server.endpoint], env=base, capture_output=True, text=True, timeout=120)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertTrue(ok.stdout.strip().endswith(":user/fn-token"), ok.stdout)
        shadowed = subprocess.run(
            [PY, "-c", code, self.server.endpoint],
            env={**base, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertNotEqual(shadowed.returncode, 0)
        self.assertIn("InvalidClientTokenId", shadowed.stderr)

    # -- the unauthenticated window stays shut

    def test_health_checks_do_not_open_the_window(self) -> None:
        for path in ("", "", "", "data.json"):
            with urllib.request.urlopen(f"{self.server.endpoint}/moto-api/{path}", timeout=30) as resp:
                self.assertEqual(resp.status, 200)
        self.assert_enforced()

    def test_second_provision_fails_and_leaves_enforcement_on(self) -> None:
        other = self.tmp / "again" / "aws-credentials"
        out = run_cli("provision", "--endpoint", self.server.endpoint, "--credentials-file", str(other))
        self.assertEqual(out.returncode, 1)
        self.assertIn("provisioned already", out.stderr)
        self.assertFalse(other.exists())
        self.assert_enforced()
        self.client("token", "dynamodb").get_item(TableName=TABLE, Key={"pk": {"S": "a"}, "sk": {"S": "b"}})

    def test_admin_profile_may_not_shadow_a_function(self) -> None:
        out = run_cli(
            "provision", "--endpoint", self.server.endpoint, "--credentials-file", str(self.tmp / "x"), "--admin-profile", "admin"
        )
        self.assertEqual(out.returncode, 1)
        self.assertIn("also a function binary", out.stderr)
        self.assert_enforced()


# ---------------------------------------------------------------- stock moto


class StockMotoServer(unittest.TestCase):
    """moto_server itself, without `serve`: how it counts, and what clients get."""

    def start(self, env: dict[str, str]) -> MotoServer:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        server = MotoServer([str(MOTO_SERVER)], env, Path(tmp.name), "moto")
        self.addCleanup(server.stop)
        server.wait_ready()
        self.tmp = Path(tmp.name)
        return server

    def test_initial_no_auth_action_count_counts_service_requests_only(self) -> None:
        server = self.start(clean_env(INITIAL_NO_AUTH_ACTION_COUNT="2"))
        for _ in range(5):  # the dashboard is not a service request: never counted
            with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=30):
                pass
        anyone = key_client(server.endpoint, "dynamodb", "FAKEUNKNOWN000000000", "x")
        anyone.list_tables()  # 1st service request: let through, counted
        error_of(lambda: anyone.describe_table(TableName="missing"))  # 2nd: let through (fails in DynamoDB itself)
        code, status, message = error_of(anyone.list_tables)  # 3rd: authenticated
        # Stock moto answers JSON services with an XML body and 403: botocore
        # finds no error code in it and reports the status instead.
        self.assertEqual((code, status), ("403", 403))
        self.assertIn("<Code>InvalidClientTokenId</Code>", message)

    def test_provision_enforces_even_a_server_started_without_the_variable(self) -> None:
        server = self.start(clean_env())  # INITIAL_NO_AUTH_ACTION_COUNT unset: no IAM at all
        key_client(server.endpoint, "dynamodb", "FAKEUNKNOWN000000000", "x").list_tables()
        creds = self.tmp / "aws-credentials"
        out = run_cli("provision", "--endpoint", server.endpoint, "--credentials-file", str(creds))
        self.assertEqual(out.returncode, 0, out.stderr)
        code, status, message = error_of(key_client(server.endpoint, "dynamodb", "FAKEUNKNOWN000000000", "x").list_tables)
        self.assertEqual((code, status), ("403", 403))
        sm = profile_client(server.endpoint, creds, "token", "secretsmanager")
        code, status, message = error_of(lambda: sm.create_secret(Name="x", SecretString="y"))
        self.assertEqual((code, status), ("403", 403))
        self.assertIn("<Code>AccessDenied</Code>", message)
        self.assertIn("fn-token is not authorized to perform: secretsmanager:CreateSecret", message)


if __name__ == "__main__":
    unittest.main()
