"""The emulator's queries read only the partition they ask for, and answer what DynamoDB would.

Each expectation is computed here from the items written, in plain Python, by DynamoDB's documented
rules: a Query returns the items of one partition key value (of the table or of an index; an index
holds only items that carry its key attributes), ordered by the sort key, a page at a time."""

from __future__ import annotations

from decimal import Decimal

import boto3
import pytest

from jobplane.local.emulator import start_moto

OWNERS = ["alice", "bob", "carol"]


def _items():
    items = []
    for n in range(120):
        item = {
            "job_id": {"S": f"job-{n:03d}"},
            "owner": {"S": OWNERS[n % 3]},
            "created_at": {"S": f"2026-12-01T{n // 60:02d}:{n % 60:02d}:00Z"},
            "priority": {"N": str(n % 4)},
        }
        if n % 5 == 0:  # a sparse index: only these carry `active`
            item["active"] = {"S": "1"}
        items.append(item)
    return items


@pytest.fixture(scope="module")
def ddb():
    emulator, url = start_moto()
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    client.create_table(
        TableName="q_jobs",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": a, "AttributeType": t}
            for a, t in (("job_id", "S"), ("owner", "S"), ("created_at", "S"), ("priority", "N"), ("active", "S"))
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": name,
                "KeySchema": [
                    {"AttributeName": h, "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for name, h in (("by_owner", "owner"), ("by_priority", "priority"), ("active", "active"))
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.create_table(
        TableName="q_history",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}, {"AttributeName": "seq", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "job_id", "AttributeType": "S"},
            {"AttributeName": "seq", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    for item in _items():
        client.put_item(TableName="q_jobs", Item=item)
    for n in range(60):
        client.put_item(TableName="q_history", Item={"job_id": {"S": f"job-{n % 6:03d}"}, "seq": {"N": str(n)}})
    yield client
    emulator.stop()


def _all_pages(client, **query) -> list[dict]:
    items, start = [], None
    while True:
        page = client.query(**query, **({"ExclusiveStartKey": start} if start else {}))
        items += page["Items"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return items


def _ids(items) -> list[str]:
    return [i["job_id"]["S"] for i in items]


@pytest.mark.parametrize("forward", [True, False])
@pytest.mark.parametrize("limit", [7, 50])
def test_an_index_query_returns_one_partition_in_sort_key_order_page_by_page(ddb, forward, limit):
    got = _all_pages(
        ddb,
        TableName="q_jobs",
        IndexName="by_owner",
        KeyConditionExpression="#o = :o",
        ExpressionAttributeNames={"#o": "owner"},
        ExpressionAttributeValues={":o": {"S": "bob"}},
        ScanIndexForward=forward,
        Limit=limit,
    )
    expected = sorted((i for i in _items() if i["owner"]["S"] == "bob"), key=lambda i: i["created_at"]["S"])
    assert _ids(got) == _ids(expected if forward else expected[::-1])
    assert len(got) == 40


def test_a_sort_key_condition_and_a_filter_apply_within_the_partition(ddb):
    got = _all_pages(
        ddb,
        TableName="q_jobs",
        IndexName="by_owner",
        KeyConditionExpression="#o = :o AND created_at BETWEEN :a AND :b",
        FilterExpression="priority >= :p",
        ExpressionAttributeNames={"#o": "owner"},
        ExpressionAttributeValues={
            ":o": {"S": "alice"},
            ":a": {"S": "2026-12-01T00:10:00Z"},
            ":b": {"S": "2026-12-01T01:05:00Z"},
            ":p": {"N": "2"},
        },
    )
    expected = [
        i
        for i in sorted(_items(), key=lambda i: i["created_at"]["S"])
        if i["owner"]["S"] == "alice"
        and "2026-12-01T00:10:00Z" <= i["created_at"]["S"] <= "2026-12-01T01:05:00Z"
        and int(i["priority"]["N"]) >= 2
    ]
    assert _ids(got) == _ids(expected) and expected


def test_a_numeric_partition_key_matches_by_value_not_by_spelling(ddb):
    got = _all_pages(
        ddb,
        TableName="q_jobs",
        IndexName="by_priority",
        KeyConditionExpression="priority = :p",
        ExpressionAttributeValues={":p": {"N": "3.0"}},
    )
    expected = sorted((i for i in _items() if Decimal(i["priority"]["N"]) == 3), key=lambda i: i["created_at"]["S"])
    assert _ids(got) == _ids(expected) and len(got) == 30


def test_a_sparse_index_holds_only_items_that_carry_its_key(ddb):
    got = _all_pages(
        ddb, TableName="q_jobs", IndexName="active", KeyConditionExpression="active = :a",
        ExpressionAttributeValues={":a": {"S": "1"}},
    )  # fmt: skip
    assert _ids(got) == [f"job-{n:03d}" for n in range(0, 120, 5)]


def test_a_table_query_reads_its_partition_by_sort_key_after_writes_and_deletes(ddb):
    ddb.delete_item(TableName="q_history", Key={"job_id": {"S": "job-002"}, "seq": {"N": "8"}})
    ddb.put_item(TableName="q_history", Item={"job_id": {"S": "job-002"}, "seq": {"N": "1000"}})
    got = _all_pages(
        ddb, TableName="q_history", KeyConditionExpression="job_id = :j AND seq > :s",
        ExpressionAttributeValues={":j": {"S": "job-002"}, ":s": {"N": "10"}}, Limit=3,
    )  # fmt: skip
    assert [int(i["seq"]["N"]) for i in got] == [14, 20, 26, 32, 38, 44, 50, 56, 1000]
    assert _all_pages(
        ddb, TableName="q_history", KeyConditionExpression="job_id = :j",
        ExpressionAttributeValues={":j": {"S": "nobody"}},
    ) == []  # fmt: skip


def test_an_update_that_moves_an_item_between_partitions_is_seen_by_the_next_query(ddb):
    ddb.update_item(
        TableName="q_jobs",
        Key={"job_id": {"S": "job-001"}},
        UpdateExpression="SET #o = :o REMOVE active",
        ExpressionAttributeNames={"#o": "owner"},
        ExpressionAttributeValues={":o": {"S": "dave"}},
    )
    got = _all_pages(
        ddb, TableName="q_jobs", IndexName="by_owner", KeyConditionExpression="#o = :o",
        ExpressionAttributeNames={"#o": "owner"}, ExpressionAttributeValues={":o": {"S": "dave"}},
    )  # fmt: skip
    assert _ids(got) == ["job-001"]
    bob = _all_pages(
        ddb, TableName="q_jobs", IndexName="by_owner", KeyConditionExpression="#o = :o",
        ExpressionAttributeNames={"#o": "owner"}, ExpressionAttributeValues={":o": {"S": "bob"}},
    )  # fmt: skip
    assert "job-001" not in _ids(bob) and len(bob) == 39
