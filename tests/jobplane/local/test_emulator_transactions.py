"""The emulator's transactions keep moto's semantics but back up only the items they name.

moto deep-copies every table a TransactWriteItems touches and, when the transaction is cancelled, swaps
the copy in; the emulator puts back just the named items and the stream's length instead."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.models import dynamodb_backends

from jobplane.local.emulator import start_moto

ACCOUNT, REGION = "123456789012", "us-east-1"


@pytest.fixture(scope="module")
def ddb():
    emulator, url = start_moto()
    client = boto3.client("dynamodb", endpoint_url=url, region_name=REGION)
    client.create_table(
        TableName="txn_jobs",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    client.create_table(
        TableName="txn_history",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}, {"AttributeName": "seq", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "job_id", "AttributeType": "S"},
            {"AttributeName": "seq", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.put_item(TableName="txn_jobs", Item={"job_id": {"S": "a"}, "status": {"S": "QUEUED"}})
    client.put_item(TableName="txn_jobs", Item={"job_id": {"S": "b"}, "status": {"S": "RUNNING"}})
    yield client
    emulator.stop()


def _tables():
    return dynamodb_backends[ACCOUNT][REGION].tables


def _status(client, job_id: str) -> str | None:
    item = client.get_item(TableName="txn_jobs", Key={"job_id": {"S": job_id}}).get("Item")
    return item["status"]["S"] if item else None


def _history(client, job_id: str) -> list[int]:
    items = client.query(
        TableName="txn_history",
        KeyConditionExpression="job_id = :j",
        ExpressionAttributeValues={":j": {"S": job_id}},
    )["Items"]
    return [int(i["seq"]["N"]) for i in items]


def _update(job_id: str, status: str, expect: str) -> dict:
    return {
        "Update": {
            "TableName": "txn_jobs",
            "Key": {"job_id": {"S": job_id}},
            "UpdateExpression": "SET #s = :new",
            "ConditionExpression": "#s = :old",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":new": {"S": status}, ":old": {"S": expect}},
        }
    }


def _append(job_id: str, seq: int) -> dict:
    return {
        "Put": {
            "TableName": "txn_history",
            "Item": {"job_id": {"S": job_id}, "seq": {"N": str(seq)}},
            "ConditionExpression": "attribute_not_exists(seq)",
        }
    }


def test_a_cancelled_transaction_puts_back_the_items_it_wrote_and_the_stream_it_grew(ddb):
    tables = _tables()
    jobs, history = tables["txn_jobs"], tables["txn_history"]
    stream_before = len(jobs.stream_shard.items)
    # a's update and history append apply first; b's condition then fails and cancels all three
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(
            TransactItems=[_update("a", "RUNNING", "QUEUED"), _append("a", 1), _update("b", "SUCCEEDED", "QUEUED")]
        )
    reasons = [r["Code"] for r in caught.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "ConditionalCheckFailed"]
    assert _status(ddb, "a") == "QUEUED" and _status(ddb, "b") == "RUNNING"
    assert _history(ddb, "a") == []
    assert len(jobs.stream_shard.items) == stream_before
    # the live tables were restored in place, not replaced by whole copies
    assert _tables()["txn_jobs"] is jobs and _tables()["txn_history"] is history


def test_a_transaction_that_passes_writes_everything_once(ddb):
    stream_before = len(_tables()["txn_jobs"].stream_shard.items)
    ddb.transact_write_items(TransactItems=[_update("a", "RUNNING", "QUEUED"), _append("a", 1)])
    assert _status(ddb, "a") == "RUNNING" and _history(ddb, "a") == [1]
    records = _tables()["txn_jobs"].stream_shard.items[stream_before:]
    assert [r.record["eventName"] for r in records] == ["MODIFY"]


def test_a_transaction_refused_midway_for_a_bad_expression_leaves_nothing_behind(ddb):
    jobs = _tables()["txn_jobs"]
    before = _status(ddb, "b")
    bad = {"Update": {"TableName": "txn_jobs", "Key": {"job_id": {"S": "a"}}, "UpdateExpression": "SET"}}
    with pytest.raises(ClientError):
        ddb.transact_write_items(TransactItems=[_update("b", "STOPPING", before), _append("b", 7), bad])
    assert _status(ddb, "b") == before and _history(ddb, "b") == []
    assert _tables()["txn_jobs"] is jobs


def test_the_same_item_twice_is_refused_and_nothing_is_written(ddb):
    before = _status(ddb, "b")
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(TransactItems=[_update("b", "X", before), _update("b", "Y", before)])
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert _status(ddb, "b") == before
