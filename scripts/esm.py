#!/usr/bin/env python3
"""Lambda's event sources for the local stack: queues and event source mappings.

moto serves SQS and DynamoDB Streams but cannot run our functions, and
`cargo lambda watch` runs them but polls nothing. This script does what
AWS's event source mappings do, from template.yaml, so the local path is
the deployed one: stream records and queue messages reach the function as
the same JSON events, with the same batch sizes, filter and partial-batch
semantics.

  queues --prefix NAME
      Create every AWS::SQS::Queue of the template in moto (named
      NAME-<LogicalId>[.fifo], with its FIFO, visibility, retention and
      redrive settings) and print {LogicalId: url} as JSON.

  run --table NAME --queues JSON --invoke URL
      For every function with DynamoDB or SQS events in the template, poll
      its sources and invoke it at URL/2015-03-31/functions/<binary>/invocations
      (cargo lambda watch's invoke API):
        * DynamoDB stream: records from TRIM_HORIZON, BatchSize, the event's
          FilterCriteria patterns (records that match none are skipped, as
          AWS does), a failed batch retried up to MaximumRetryAttempts;
        * SQS: ReceiveMessage with BatchSize and every attribute; messages
          the function names in batchItemFailures stay (their visibility is
          the function's to set), the rest are deleted; a failed invocation
          deletes nothing.
      Reads the stream and the queues as the function's own IAM user (AWS
      polls with the function's role), found by its binary name as profile.

Run with the project's venv: .venv/bin/python scripts/esm.py ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iam_local import TEMPLATE, load_template  # noqa: E402

POLL_SECONDS = 0.2
REFRESH_IDLE_ITERATOR_SECONDS = 2.0


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def log(msg: str) -> None:
    print(f"esm: {msg}", file=sys.stderr, flush=True)


def plain(v: Any) -> Any:
    """cfn-lint nodes -> plain Python values."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, str):
        return str(v)
    return v


def resources(kind: str) -> dict[str, dict[str, Any]]:
    t = load_template(TEMPLATE)
    return {
        str(k): plain(r)
        for k, r in (t.get("Resources") or {}).items()
        if isinstance(r, dict) and r.get("Type") == kind
    }


def ref_target(value: Any) -> str | None:
    """The logical id a !GetAtt X.Arn / !Ref X names."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value:
            att = value["Fn::GetAtt"]
            return att[0] if isinstance(att, list) else str(att).split(".")[0]
        if "Ref" in value:
            return value["Ref"]
    return None


# ---------------------------------------------------------------- queues


def create_queues(prefix: str) -> dict[str, str]:
    import boto3

    sqs = boto3.client("sqs", region_name=region())
    queues = resources("AWS::SQS::Queue")
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}
    # Dead-letter targets first.
    order = sorted(queues, key=lambda k: "RedrivePolicy" in queues[k].get("Properties", {}))
    for logical in order:
        props = queues[logical].get("Properties", {})
        fifo = bool(props.get("FifoQueue"))
        name = f"{prefix}-{logical}" + (".fifo" if fifo else "")
        attrs = {}
        for key in ("VisibilityTimeout", "MessageRetentionPeriod"):
            if key in props:
                attrs[key] = str(props[key])
        if fifo:
            attrs["FifoQueue"] = "true"
            attrs["ContentBasedDeduplication"] = str(bool(props.get("ContentBasedDeduplication"))).lower()
        redrive = props.get("RedrivePolicy")
        if redrive:
            target = ref_target(redrive["deadLetterTargetArn"])
            attrs["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arns[target], "maxReceiveCount": str(redrive["maxReceiveCount"])}
            )
        url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        urls[logical] = url
        arns[logical] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    return urls


# ---------------------------------------------------------------- filters


def matches(pattern: Any, value: Any) -> bool:
    """EventBridge-style pattern: nested keys; a list lists allowed values."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and matches(p, value[k]) for k, p in pattern.items())
    if isinstance(pattern, list):
        return value in pattern
    return pattern == value


def invoke(url: str, binary: str, event: dict[str, Any]) -> tuple[bool, Any]:
    req = urllib.request.Request(
        f"{url}/2015-03-31/functions/{binary}/invocations",
        data=json.dumps(event, default=_json_default).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        return False, err.read()[:300]
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        return False, str(err)
    try:
        out = json.loads(body or b"null")
    except ValueError:
        return False, body[:300]
    if isinstance(out, dict) and ("errorType" in out or "errorMessage" in out):
        return False, out
    return True, out


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.timestamp()
    if isinstance(v, (bytes, bytearray)):
        import base64

        return base64.b64encode(v).decode()
    raise TypeError(f"not JSON: {type(v)}")


# ---------------------------------------------------------------- pollers


def poll_stream(session: Any, stream_arn: str, binary: str, props: dict[str, Any], url: str) -> None:
    streams = session.client("dynamodbstreams")
    batch = int(props.get("BatchSize", 100))
    max_retries = int(props.get("MaximumRetryAttempts", 10))
    patterns = [
        json.loads(f["Pattern"]) for f in (props.get("FilterCriteria") or {}).get("Filters", [])
    ]
    iterators: dict[str, str | None] = {}
    positions: dict[str, str] = {}
    idle_since: dict[str, float] = {}
    read = matched = 0
    last_seq = None
    reported = time.monotonic()
    while True:
        if time.monotonic() - reported > 30:
            log(f"{binary}: stream: {read} records read, {matched} passed the filter, last {last_seq}")
            reported = time.monotonic()
        try:
            desc = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]
            for shard in desc.get("Shards", []):
                sid = shard["ShardId"]
                if sid not in iterators:
                    iterators[sid] = streams.get_shard_iterator(
                        StreamArn=stream_arn, ShardId=sid, ShardIteratorType="TRIM_HORIZON"
                    )["ShardIterator"]
            for sid, it in list(iterators.items()):
                if it is None:
                    continue
                out = streams.get_records(ShardIterator=it, Limit=batch)
                iterators[sid] = out.get("NextShardIterator")
                got = out.get("Records", [])
                read += len(got)
                if got:
                    last_seq = got[-1]["dynamodb"].get("SequenceNumber")
                    positions[sid] = last_seq
                    idle_since[sid] = time.monotonic()
                elif time.monotonic() - idle_since.get(sid, 0) > REFRESH_IDLE_ITERATOR_SECONDS:
                    # A cancelled TransactWriteItems makes moto (5.x) restore
                    # the table from a deep copy, stream shard included, so
                    # an iterator taken before it reads an orphaned shard
                    # forever (moto/dynamodb/models/__init__.py,
                    # transact_write_items). A fresh one from the last
                    # position read costs one call and follows the table.
                    kind = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": positions[sid]} \
                        if sid in positions else {"ShardIteratorType": "TRIM_HORIZON"}
                    iterators[sid] = streams.get_shard_iterator(StreamArn=stream_arn, ShardId=sid, **kind)[
                        "ShardIterator"
                    ]
                    idle_since[sid] = time.monotonic()
                records = [r for r in got if not patterns or any(matches(p, r) for p in patterns)]
                matched += len(records)
                if not records:
                    continue
                for r in records:
                    r.setdefault("eventSource", "aws:dynamodb")
                    r["eventSourceARN"] = stream_arn
                for attempt in range(max_retries + 1):
                    ok, out_or_err = invoke(url, binary, {"Records": records})
                    if ok:
                        break
                    log(f"{binary}: stream batch failed (attempt {attempt + 1}): {out_or_err!r}")
                    time.sleep(min(2**attempt, 30) * 0.5)
                else:
                    on_failure(session, props, stream_arn, sid, records)
        except Exception as err:  # the poller outlives a moto hiccup, as AWS's does
            log(f"{binary}: stream poll error: {err}")
            time.sleep(1)
        time.sleep(POLL_SECONDS)


def on_failure(session: Any, props: dict[str, Any], stream_arn: str, shard: str, records: list) -> None:
    """A batch out of retries goes to the on-failure destination, as AWS
    sends it: the batch's shard and sequence range, not the records."""
    dest = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    target = ref_target(dest)
    url = QUEUE_URLS.get(target or "")
    if not url:
        log(f"stream batch dropped after its retries (no on-failure destination): {len(records)} records")
        return
    seqs = [r["dynamodb"]["SequenceNumber"] for r in records]
    session.client("sqs").send_message(
        QueueUrl=url,
        MessageBody=json.dumps(
            {
                "DDBStreamBatchInfo": {
                    "shardId": shard,
                    "startSequenceNumber": seqs[0],
                    "endSequenceNumber": seqs[-1],
                    "streamArn": stream_arn,
                    "batchSize": len(records),
                }
            }
        ),
    )
    log(f"stream batch of {len(records)} records sent to {target}")


def poll_queue(session: Any, queue_url: str, binary: str, props: dict[str, Any], url: str) -> None:
    sqs = session.client("sqs")
    batch = int(props.get("BatchSize", 10))
    partial = "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or [])
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    while True:
        try:
            msgs = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=batch,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not msgs:
                time.sleep(POLL_SECONDS)
                continue
            records = [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m.get("Attributes", {}),
                    "messageAttributes": m.get("MessageAttributes", {}),
                    "md5OfBody": m.get("MD5OfBody"),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": session.region_name,
                }
                for m in msgs
            ]
            ok, out = invoke(url, binary, {"Records": records})
            if not ok:
                log(f"{binary}: queue batch failed: {out!r}")
                continue
            failed = set()
            if partial and isinstance(out, dict):
                failed = {f.get("itemIdentifier") for f in out.get("batchItemFailures") or []}
            for m in msgs:
                if m["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        except Exception as err:
            log(f"{binary}: queue poll error: {err}")
            time.sleep(1)


QUEUE_URLS: dict[str, str] = {}


def run(table: str, queues: dict[str, str], url: str) -> None:
    import boto3

    QUEUE_URLS.update(queues)

    harness = boto3.session.Session(region_name=region())
    stream_arn = harness.client("dynamodb").describe_table(TableName=table)["Table"].get("LatestStreamArn")
    threads = []
    for logical, fn in resources("AWS::Serverless::Function").items():
        binary = fn["Metadata"]["BuildProperties"]["Binary"]
        events = (fn.get("Properties") or {}).get("Events") or {}
        session = boto3.session.Session(profile_name=binary, region_name=harness.region_name)
        for name, ev in events.items():
            props = ev.get("Properties") or {}
            if ev.get("Type") == "DynamoDB":
                if not stream_arn:
                    sys.exit(f"esm: table {table} has no stream for {logical}.{name}")
                target, args = poll_stream, (session, stream_arn, binary, props, url)
            elif ev.get("Type") == "SQS":
                queue = ref_target(props.get("Queue"))
                if queue not in queues:
                    sys.exit(f"esm: {logical}.{name} reads queue {queue}, which was not created")
                target, args = poll_queue, (session, queues[queue], binary, props, url)
            else:
                continue
            log(f"{logical}.{name} ({ev['Type']}) -> {binary}")
            t = threading.Thread(target=target, args=args, daemon=True, name=f"{binary}-{name}")
            t.start()
            threads.append(t)
    if not threads:
        sys.exit("esm: no function has a DynamoDB or SQS event")
    for t in threads:
        t.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queues")
    q.add_argument("--prefix", required=True)
    r = sub.add_parser("run")
    r.add_argument("--table", required=True)
    r.add_argument("--queues", required=True, help="JSON {LogicalId: url}, as `queues` prints")
    r.add_argument("--invoke", required=True)
    a = p.parse_args()
    if a.cmd == "queues":
        print(json.dumps(create_queues(a.prefix)))
    else:
        run(a.table, json.loads(a.queues), a.invoke.rstrip("/"))


if __name__ == "__main__":
    main()
