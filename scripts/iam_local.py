#!/usr/bin/env python3
"""Per-function IAM for the local stack: the template's policies, enforced by moto.

Every AWS::Serverless::Function in template.yaml gets one IAM user in moto
server whose inline policy holds exactly the actions of that function's
`Policies` statements (action level: moto checks actions, not resources, so
every Resource becomes "*" and Conditions are dropped). A separate harness
user may do everything; the stack scripts and the tests use it for table
creation, seeding and direct reads.

Usage (run with the project's venv: .venv/bin/python scripts/iam_local.py ...):

  policies [--template PATH] [--documents]
      Print {binary: [actions]} as JSON (with --documents: the IAM policy
      document each function user gets). Touches no server.

  serve [--host 127.0.0.1] --port PORT
      Run moto server, one request at a time (so conditional writes are
      atomic, as in DynamoDB), with IAM enforced from its first request
      (INITIAL_NO_AUTH_ACTION_COUNT=0), answering authentication and
      authorization failures of JSON-protocol services (DynamoDB, Secrets
      Manager, ...) the way AWS does: HTTP 400 with a JSON body and
      x-amzn-errortype AccessDeniedException / UnrecognizedClientException /
      InvalidSignatureException. Plain
      moto 5.2.5 sends those services an XML ErrorResponse with status 403,
      which the AWS SDKs cannot parse into an error code.

  provision --endpoint http://127.0.0.1:PORT --credentials-file PATH
            [--template PATH] [--region us-east-1] [--admin-profile harness]
            [--wait SECONDS]
      Against a fresh moto server: bootstrap the harness user in three
      unauthenticated calls (CreateUser, PutUserPolicy, CreateAccessKey),
      switch enforcement on, then, signed as the harness, create user
      fn-<binary> with the template's actions for every function binary.
      Writes an AWS shared credentials file (mode 600) with profile
      [<binary>] per function and [<admin-profile>] for the harness. No key
      is ever printed. Fails (exit 1) if the server was provisioned already:
      restart it instead.

How moto decides (moto 5.2.5): BaseResponse.call_action authorizes every
service request (moto/core/responses.py:442); the first
INITIAL_NO_AUTH_ACTION_COUNT such requests are let through and counted
(moto/core/authorization.py:40-65), later ones are signature-checked and
their "<sigv4 service>:<operation>" action matched against the caller's
IAM policies (moto/iam/access_control.py:232-283). /moto-api/* requests are
not service requests and are never counted. POST /moto-api/reset-auth with
a number sets the allowance and resets the count
(moto/moto_api/_internal/responses.py:26-50); provision uses it to open a
window of exactly three calls and closes it (0) right after, so enforcement
is on afterwards however the server was started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import re
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
FUNCTION_TYPE = "AWS::Serverless::Function"
FUNCTION_USER_PREFIX = "fn-"
FUNCTION_POLICY_NAME = "template-policy"
DEFAULT_ADMIN_PROFILE = "harness"
ADMIN_POLICY_NAME = "allow-all"
BOOTSTRAP_CALLS = 3  # CreateUser, PutUserPolicy, CreateAccessKey


class TemplateError(Exception):
    """template.yaml holds something the action-level local copy cannot express."""


def fail(msg: str) -> None:
    print(f"iam_local: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- template


def load_template(path: Path) -> dict[str, Any]:
    from cfnlint.decode import decode  # understands !Ref, !Sub, !GetAtt ...

    template, matches = decode(str(path))
    if matches or template is None:
        raise TemplateError(f"cannot parse {path}: " + "; ".join(str(m) for m in matches or []))
    return template


def _is_intrinsic(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and (
        next(iter(value)) == "Ref" or str(next(iter(value))).startswith("Fn::")
    )


def _literal_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TemplateError(f"{where} must be a literal string, found {json.dumps(value, default=str)}")
    return str(value)


_OPERATIONS: dict[str, dict[str, str] | None] = {}
_MODELS_OF_PREFIX = {"dynamodb": ["dynamodb", "dynamodbstreams"]}


def _canonical_action(action: str, where: str) -> str:
    """IAM matches actions case-insensitively, moto case-sensitively: use the
    API operation's own spelling where botocore knows the service."""
    service, sep, name = action.partition(":")
    if not sep or not service or not name:
        raise TemplateError(f"{where}: {action!r} is not of the form service:Action")
    if "*" in name or "?" in name:
        return f"{service.lower()}:{name}"
    if service.lower() not in _OPERATIONS:
        try:
            import botocore.session

            ops: dict[str, str] = {}
            # IAM's "dynamodb" prefix also covers the Streams API.
            for model_name in _MODELS_OF_PREFIX.get(service.lower(), [service.lower()]):
                model = botocore.session.get_session().get_service_model(model_name)
                ops.update({op.lower(): op for op in model.operation_names})
            _OPERATIONS[service.lower()] = ops
        except Exception:  # unknown to botocore: keep the action as written
            _OPERATIONS[service.lower()] = None
    ops = _OPERATIONS[service.lower()]
    if ops is None:
        return f"{service.lower()}:{name}"
    if name.lower() not in ops:
        print(
            f"iam_local: warning: {where}: {action} is no {service} API operation botocore "
            "knows; kept as written (moto compares actions case-sensitively)",
            file=sys.stderr,
        )
        return f"{service.lower()}:{name}"
    return f"{service.lower()}:{ops[name.lower()]}"


def _statements(policy: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(policy, str):
        raise TemplateError(
            f"{where} names the managed policy {policy!r}; only inline policy documents "
            "can be copied to the local stack"
        )
    if _is_intrinsic(policy):
        raise TemplateError(f"{where} is an intrinsic function ({next(iter(policy))}); use a literal policy document")
    if not isinstance(policy, dict):
        raise TemplateError(f"{where} is neither a policy document nor a policy name")
    if "Statement" not in policy:
        names = ", ".join(sorted(str(k) for k in policy))
        raise TemplateError(
            f"{where} uses the SAM policy template(s) {names}; expand them to inline "
            "statements in template.yaml (the local stack copies statements only)"
        )
    unknown = set(policy) - {"Version", "Statement", "Id"}
    if unknown:
        raise TemplateError(f"{where} has unsupported keys {sorted(unknown)}")
    statements = policy["Statement"]
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        raise TemplateError(f"{where}.Statement must be a list or a statement")
    return statements


def function_policies(template: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{binary: [statements with Resource "*", no Condition]} for every function."""
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    for key in ("Policies", "Role"):
        if key in globals_fn:
            raise TemplateError(f"Globals.Function.{key} is not supported by the local IAM copy")

    result: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, str] = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if not isinstance(resource, dict) or resource.get("Type") != FUNCTION_TYPE:
            continue
        where = f"Resources.{logical_id}"
        binary = ((resource.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
        binary = _literal_str(binary, f"{where}.Metadata.BuildProperties.Binary")
        if binary in owner:
            raise TemplateError(f"{where} and Resources.{owner[binary]} both build binary {binary!r}")
        owner[binary] = str(logical_id)
        props = resource.get("Properties") or {}
        if "Role" in props:
            raise TemplateError(f"{where}.Properties.Role: an explicit role cannot be copied; use Policies")
        policies = props.get("Policies", [])
        if not isinstance(policies, list):
            policies = [policies]

        statements: list[dict[str, Any]] = []
        for p_index, policy in enumerate(policies):
            p_where = f"{where}.Properties.Policies[{p_index}]"
            for s_index, statement in enumerate(_statements(policy, p_where)):
                s_where = f"{p_where}.Statement[{s_index}]"
                if not isinstance(statement, dict):
                    raise TemplateError(f"{s_where} is not a statement")
                effect = statement.get("Effect")
                if effect != "Allow":
                    raise TemplateError(
                        f"{s_where} has Effect {effect!r}; only Allow can be copied at action "
                        "level (a resource-scoped Deny would deny the action everywhere)"
                    )
                for key in ("NotAction", "NotResource", "Principal", "NotPrincipal"):
                    if key in statement:
                        raise TemplateError(f"{s_where} uses {key}, which the local IAM copy does not support")
                actions = statement.get("Action")
                if isinstance(actions, str) or _is_intrinsic(actions):
                    actions = [actions]
                if not isinstance(actions, list) or not actions:
                    raise TemplateError(f"{s_where}.Action must be a non-empty list of actions")
                out: dict[str, Any] = {}
                if "Sid" in statement:
                    out["Sid"] = _literal_str(statement["Sid"], f"{s_where}.Sid")
                out["Effect"] = "Allow"
                out["Action"] = [
                    _canonical_action(_literal_str(a, f"{s_where}.Action[{i}]"), s_where)
                    for i, a in enumerate(actions)
                ]
                out["Resource"] = "*"
                statements.append(out)
        result[binary] = statements
    if not result:
        raise TemplateError(f"no {FUNCTION_TYPE} in the template")
    return result


_SECRET_SCOPE = re.compile(r"secret:\$\{SecretPrefix\}([a-z-]+)/\*")


def secret_scopes(template: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """{binary: {secretsmanager action: [secret scopes]}}: the part of the
    resources the local copy drops (it grants on "*"), so a test can hold
    each function's secret actions to the secrets its ports touch
    (`token_secrets_are_granted_on_the_connections_scope`)."""
    out: dict[str, dict[str, set[str]]] = {}
    for resource in (template.get("Resources") or {}).values():
        if not isinstance(resource, dict) or resource.get("Type") != FUNCTION_TYPE:
            continue
        binary = ((resource.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
        mine = out.setdefault(str(binary), {})
        for policy in (resource.get("Properties") or {}).get("Policies", []) or []:
            for statement in _statements(policy, str(binary)):
                actions = statement.get("Action")
                actions = [actions] if isinstance(actions, str) else actions or []
                scopes = _SECRET_SCOPE.findall(json.dumps(statement.get("Resource"), default=str))
                for a in actions:
                    if isinstance(a, str) and a.startswith("secretsmanager:"):
                        mine.setdefault(a, set()).update(scopes)
    return {b: {a: sorted(s) for a, s in sorted(m.items())} for b, m in sorted(out.items())}


def action_lists(policies: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {
        binary: sorted({a for s in statements for a in s["Action"]})
        for binary, statements in sorted(policies.items())
    }


# Operations AWS authorizes by another action, which moto checks under their
# own name. AWS: a TransactWriteItems is authorized item by item as PutItem,
# UpdateItem, DeleteItem or ConditionCheckItem ("Using IAM with DynamoDB
# transactions"; there is no dynamodb:TransactWriteItems action); the SQS
# batch operations are authorized as their single-message actions. The
# broker's transactions always Put (an event), so PutItem stands for them.
MOTO_EQUIVALENTS: dict[str, list[str]] = {
    "dynamodb:PutItem": ["dynamodb:TransactWriteItems"],
    "sqs:SendMessage": ["sqs:SendMessageBatch"],
    "sqs:DeleteMessage": ["sqs:DeleteMessageBatch"],
    "sqs:ChangeMessageVisibility": ["sqs:ChangeMessageVisibilityBatch"],
}


def policy_document(statements: list[dict[str, Any]]) -> dict[str, Any]:
    if not statements:
        # A user without a policy is denied everything, like a role without one.
        return {}
    granted = {a for s in statements for a in s["Action"]}
    extra = sorted({e for a in granted for e in MOTO_EQUIVALENTS.get(a, []) if e not in granted})
    statements = list(statements)
    if extra:
        statements.append({"Sid": "MotoNamesOfGrantedOperations", "Effect": "Allow", "Action": extra, "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


# ---------------------------------------------------------------- serve


def install_aws_json_auth_errors() -> None:
    """Make moto answer auth failures of JSON-protocol services as AWS does.

    moto raises its XML-bodied errors (403) for every service
    (moto/iam/access_control.py:369-386, moto/core/exceptions.py:114-141);
    AWS answers awsJson services with HTTP 400 and a JSON body. The query
    and XML services (IAM, STS, ...) keep moto's own XML errors, which are
    what AWS sends them.
    """
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.exceptions import (
        AccessDeniedError,
        InvalidClientTokenIdError,
        SignatureDoesNotMatchError,
    )
    from werkzeug.exceptions import HTTPException

    class AwsJsonAuthError(HTTPException):
        code = 400

        def __init__(self, error_type: str, message: str) -> None:
            super().__init__()
            self.description = json.dumps(
                {"__type": f"com.amazon.coral.service#{error_type}", "Message": message}
            )

    json_codes = {
        AccessDeniedError: "AccessDeniedException",
        InvalidClientTokenIdError: "UnrecognizedClientException",
        SignatureDoesNotMatchError: "InvalidSignatureException",
    }
    original = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

    def authenticate(self: Any, resource: str = "*") -> None:
        headers = self.headers
        is_json = bool(headers.get("X-Amz-Target")) and str(
            headers.get("Content-Type") or ""
        ).startswith("application/x-amz-json")

        def json_error(error_type: str, message: str) -> AwsJsonAuthError:
            # call_action answers with self.response_headers (same dict object).
            self.response_headers["x-amzn-errortype"] = error_type
            self.response_headers["Content-Type"] = headers.get("Content-Type")
            return AwsJsonAuthError(error_type, message)

        try:
            original(self, resource)
        except (AccessDeniedError, InvalidClientTokenIdError, SignatureDoesNotMatchError) as err:
            if not is_json:
                raise
            raise json_error(json_codes[type(err)], err.message) from None

    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = authenticate  # type: ignore[method-assign]


def install_two_phase_transactions() -> None:
    """TransactWriteItems that checks every condition first, then writes.

    moto 5.x deep-copies every table a transaction touches before it starts,
    to restore it if one condition fails (moto/dynamodb/models/__init__.py,
    transact_write_items). That costs time in proportion to the table, on
    every transaction (the broker's every connection commit), and a
    restored table has a new stream shard object, which stream iterators
    taken before it never see again. The server handles one request at a
    time (`serve`), so checking all conditions before writing anything is
    as atomic as DynamoDB and needs no copy: a refused transaction writes
    nothing and answers the same TransactionCanceledException with one
    reason per item.
    """
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models import DynamoDBBackend

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        targets: set[tuple[str, str]] = set()
        planned = []
        reasons: list[tuple[Any, Any, Any]] = []
        for item in transact_items:
            if len(item) > 1:
                raise TransactWriteSingleOpException
            op_type, op = next(iter(item.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            if op_type == "Put":
                table = self.get_table(table_name)
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            target = (str(table_name), str(dict(sorted(key.items()))))
            if target in targets:
                raise MultipleTransactionsException()
            targets.add(target)
            current = self.get_item(table_name, key)
            condition = op.get("ConditionExpression")
            holds = condition is None or get_filter_expression(
                condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            ).expr(current)
            if holds:
                reasons.append((None, None, None))
            else:
                old = None
                if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                    old = current.to_json()["Attributes"]
                reasons.append(("ConditionalCheckFailed", "The conditional request failed", old))
            planned.append((op_type, op, table_name, key))
        if any(code is not None for code, _, _ in reasons):
            raise TransactionCanceledException(reasons)
        for op_type, op, table_name, key in planned:
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if op_type == "Put":
                self.put_item(table_name, op["Item"], expression_attribute_names=names,
                              expression_attribute_values=values)
            elif op_type == "Delete":
                self.delete_item(table_name, key, expression_attribute_names=names,
                                 expression_attribute_values=values)
            elif op_type == "Update":
                self.update_item(table_name, key, update_expression=op["UpdateExpression"],
                                 expression_attribute_names=names, expression_attribute_values=values)

    DynamoDBBackend.transact_write_items = transact_write_items


def serve(host: str, port: int) -> None:
    # Read by moto.settings at import time: enforced from the first request.
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    install_aws_json_auth_errors()
    install_two_phase_transactions()
    os.environ.setdefault("MOTO_PORT", str(port))
    import threading

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    # One request at a time. DynamoDB applies a conditional write to an item
    # atomically; moto 5.2.5 checks and writes in separate steps, so two
    # concurrent conditional updates of one item could both succeed (two
    # lease winners were seen on a loaded machine). Serializing requests
    # gives the tests DynamoDB's guarantee; connections are still accepted
    # concurrently, and moto answers each request in milliseconds.
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ: Any, start_response: Any) -> Any:
        with lock:
            return list(app(environ, start_response))

    run_simple(host, port, serialized, threaded=True, request_handler=MotoRequestHandler)


# ---------------------------------------------------------------- provision


def _client(service: str, endpoint: str, region: str, key_id: str, secret: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        # A retry would spend one of the three unauthenticated calls.
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def _moto_api(endpoint: str, path: str, data: bytes | None = None) -> bytes:
    # Not form-encoded: werkzeug would parse a form body and moto read an empty request.data.
    req = urllib.request.Request(
        f"{endpoint}/moto-api/{path}",
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "text/plain"} if data else {},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def _set_no_auth_allowance(endpoint: str, count: int) -> None:
    """POST /moto-api/reset-auth: allow `count` more unauthenticated requests."""
    body = json.loads(_moto_api(endpoint, "reset-auth", str(count).encode()))
    if body.get("status") != "ok":
        raise RuntimeError(f"moto refused reset-auth: {body}")


def _wait_for(endpoint: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            _moto_api(endpoint, "")  # the dashboard: not a service request, never counted
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"moto server did not answer at {endpoint}/moto-api/: {err}") from None
            time.sleep(0.2)


def _error_code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(err).__name__))


def _write_credentials(path: Path, profiles: dict[str, tuple[str, str]]) -> None:
    lines = ["# Written by scripts/iam_local.py provision: local moto users, one profile per function."]
    for name, (key_id, secret) in profiles.items():
        lines += ["", f"[{name}]", f"aws_access_key_id = {key_id}", f"aws_secret_access_key = {secret}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    os.chmod(path, 0o600)


def provision(
    endpoint: str,
    credentials_file: Path,
    template_path: Path,
    region: str,
    admin_profile: str,
    wait: float,
) -> None:
    from botocore.exceptions import ClientError

    policies = function_policies(load_template(template_path))  # fail before touching the server
    if admin_profile in policies:
        raise TemplateError(
            f"the harness profile {admin_profile!r} is also a function binary; choose another --admin-profile"
        )
    admin_user = admin_profile
    endpoint = endpoint.rstrip("/")
    _wait_for(endpoint, wait)

    # 1. Bootstrap: exactly three unauthenticated calls, then enforcement on.
    iam = _client("iam", endpoint, region, "bootstrap-unauthenticated", "unused")
    _set_no_auth_allowance(endpoint, BOOTSTRAP_CALLS)
    try:
        try:
            iam.create_user(UserName=admin_user)
        except ClientError as err:
            if _error_code(err) == "EntityAlreadyExists":
                raise RuntimeError(
                    f"moto at {endpoint} is provisioned already (user {admin_user} exists); "
                    "start a fresh server instead"
                ) from None
            raise
        iam.put_user_policy(
            UserName=admin_user,
            PolicyName=ADMIN_POLICY_NAME,
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        admin_key = iam.create_access_key(UserName=admin_user)["AccessKey"]
    except ClientError as err:
        raise RuntimeError(
            f"bootstrap failed with {_error_code(err)}: did another client use one of the "
            f"{BOOTSTRAP_CALLS} unauthenticated calls? Restart moto and provision again"
        ) from None
    finally:
        _set_no_auth_allowance(endpoint, 0)
    admin = (admin_key["AccessKeyId"], admin_key["SecretAccessKey"])

    # 2. Enforcement check: the harness is recognised, an unknown key is not.
    sts = _client("sts", endpoint, region, *admin)
    arn = sts.get_caller_identity()["Arn"]
    if not arn.endswith(f":user/{admin_user}"):
        raise RuntimeError(f"harness credentials resolve to {arn}")
    try:
        _client("sts", endpoint, region, "FAKEUNKNOWNPROBE0000", "unused").get_caller_identity()
    except ClientError as err:
        if _error_code(err) not in ("InvalidClientTokenId", "UnrecognizedClientException"):
            raise
    else:
        raise RuntimeError(f"moto at {endpoint} accepts unknown access keys: IAM enforcement is off")

    # 3. One user per function, signed as the harness.
    iam = _client("iam", endpoint, region, *admin)
    profiles: dict[str, tuple[str, str]] = {}
    for binary, statements in sorted(policies.items()):
        user = f"{FUNCTION_USER_PREFIX}{binary}"
        iam.create_user(UserName=user, Tags=[{"Key": "binary", "Value": binary}])
        document = policy_document(statements)
        if document:
            iam.put_user_policy(UserName=user, PolicyName=FUNCTION_POLICY_NAME, PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        profiles[binary] = (key["AccessKeyId"], key["SecretAccessKey"])
    profiles[admin_profile] = admin

    _write_credentials(credentials_file, profiles)
    print(
        f"iam_local: {len(policies)} function users (fn-<binary>) and harness user {admin_user} in "
        f"moto at {endpoint}; profiles {', '.join(profiles)} written to {credentials_file} (mode 600)",
        file=sys.stderr,
    )


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("policies", help="print {binary: [actions]} as JSON")
    p.add_argument("--template", type=Path, default=TEMPLATE)
    p.add_argument("--documents", action="store_true", help="print the IAM policy document per binary")
    p.add_argument("--secret-scopes", action="store_true", help="print {binary: {secretsmanager action: [scopes]}}")

    s = sub.add_parser("serve", help="run moto server with IAM enforced and AWS-shaped JSON auth errors")
    s.add_argument("-H", "--host", default="127.0.0.1")
    s.add_argument("-p", "--port", type=int, required=True)

    v = sub.add_parser("provision", help="create the function users and write the credentials file")
    v.add_argument("--endpoint", required=True)
    v.add_argument("--credentials-file", type=Path, required=True)
    v.add_argument("--template", type=Path, default=TEMPLATE)
    v.add_argument("--region", default=os.environ.get("AWS_REGION") or "us-east-1")
    v.add_argument("--admin-profile", default=DEFAULT_ADMIN_PROFILE)
    v.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server (default 60)")

    args = parser.parse_args(argv)
    try:
        if args.command == "policies":
            template = load_template(args.template)
            policies = function_policies(template)
            if args.secret_scopes:
                out: Any = secret_scopes(template)
            elif args.documents:
                out = {b: policy_document(s) for b, s in sorted(policies.items())}
            else:
                out = action_lists(policies)
            print(json.dumps(out, indent=2))
        elif args.command == "serve":
            serve(args.host, args.port)
        else:
            provision(
                args.endpoint,
                args.credentials_file,
                args.template,
                args.region,
                args.admin_profile,
                args.wait,
            )
    except (TemplateError, RuntimeError) as err:
        fail(str(err))


if __name__ == "__main__":
    main()
