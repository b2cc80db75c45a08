#!/usr/bin/env python3
"""Create the local DynamoDB table (moto server) from template.yaml.

The schema is read from Resources.ConnectionsTable.Properties of the SAM
template, so the local table and the deployed table cannot drift apart.

Usage: .venv/bin/python scripts/create_table.py <table-name>

Environment:
  AWS_ENDPOINT_URL   endpoint of the local DynamoDB (e.g. http://127.0.0.1:15055); required
  AWS_REGION         default us-east-1
  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   default test / test when unset

Idempotent: an existing table with the same key schema is accepted (TTL is
(re-)enabled); an existing table with a different key schema is an error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
RESOURCE = "ConnectionsTable"


def fail(msg: str) -> None:
    print(f"create_table: {msg}", file=sys.stderr)
    sys.exit(1)


def plain(value: Any, where: str) -> Any:
    """cfn-lint nodes -> plain Python; refuse intrinsic functions (no stack here)."""
    if isinstance(value, dict):
        if len(value) == 1:
            (key,) = value.keys()
            if key == "Ref" or str(key).startswith("Fn::"):
                fail(f"{where} uses {key}; the local table needs literal values there")
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    return value


def table_properties() -> dict[str, Any]:
    from cfnlint.decode import decode  # understands !Ref, !Sub, !GetAtt ...

    template, matches = decode(str(TEMPLATE))
    if matches or template is None:
        fail(f"cannot parse {TEMPLATE}: " + "; ".join(str(m) for m in matches or []))
    resource = template.get("Resources", {}).get(RESOURCE)
    if not resource or resource.get("Type") != "AWS::DynamoDB::Table":
        fail(f"{TEMPLATE} has no AWS::DynamoDB::Table named {RESOURCE}")
    return plain(resource.get("Properties", {}), f"{RESOURCE}.Properties")


def index(spec: dict[str, Any], billing: str, global_index: bool) -> dict[str, Any]:
    out = {
        "IndexName": spec["IndexName"],
        "KeySchema": spec["KeySchema"],
        "Projection": spec.get("Projection", {"ProjectionType": "ALL"}),
    }
    if global_index and billing == "PROVISIONED":
        out["ProvisionedThroughput"] = spec["ProvisionedThroughput"]
    return out


def create_args(name: str, props: dict[str, Any]) -> dict[str, Any]:
    billing = props.get("BillingMode", "PROVISIONED")
    args: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": billing,
    }
    if billing == "PROVISIONED":
        args["ProvisionedThroughput"] = props["ProvisionedThroughput"]
    if props.get("GlobalSecondaryIndexes"):
        args["GlobalSecondaryIndexes"] = [
            index(g, billing, True) for g in props["GlobalSecondaryIndexes"]
        ]
    if props.get("LocalSecondaryIndexes"):
        args["LocalSecondaryIndexes"] = [
            index(l, billing, False) for l in props["LocalSecondaryIndexes"]
        ]
    if props.get("StreamSpecification"):
        args["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": props["StreamSpecification"]["StreamViewType"],
        }
    return args


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    name = sys.argv[1]
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        fail("AWS_ENDPOINT_URL is not set (refusing to touch a real AWS account)")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if not os.environ.get("AWS_PROFILE"):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")

    props = table_properties()
    args = create_args(name, props)

    import boto3
    from botocore.exceptions import ClientError

    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=region)
    try:
        ddb.create_table(**args)
        print(f"create_table: creating {name}")
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceInUseException":
            raise
        existing = ddb.describe_table(TableName=name)["Table"]
        if sorted(map(str, existing["KeySchema"])) != sorted(map(str, args["KeySchema"])):
            fail(
                f"table {name} exists with key schema {existing['KeySchema']}, "
                f"template.yaml says {args['KeySchema']}; delete it and rerun"
            )
        have = {g["IndexName"] for g in existing.get("GlobalSecondaryIndexes", [])}
        want = {g["IndexName"] for g in args.get("GlobalSecondaryIndexes", [])}
        if want - have:
            fail(f"table {name} exists without indexes {sorted(want - have)}; delete it and rerun")
        print(f"create_table: {name} already exists")

    ddb.get_waiter("table_exists").wait(
        TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )

    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        current = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
            if current.get("AttributeName") != ttl["AttributeName"]:
                fail(
                    f"table {name} has TTL on {current.get('AttributeName')!r}, "
                    f"template.yaml says {ttl['AttributeName']!r}"
                )
        else:
            ddb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
            )

    status = ddb.describe_table(TableName=name)["Table"]["TableStatus"]
    print(f"create_table: {name} is {status}")


if __name__ == "__main__":
    main()
