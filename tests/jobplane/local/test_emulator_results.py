"""The emulator's conversion of DynamoDB results gives what moto's own does, for every attribute type,
and items of every type come back from the server as they were written."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import boto3
import pytest
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.utilities import dynamo_to_dict as moto_dynamo_to_dict

from jobplane.local.emulator import start_moto

EVERY_TYPE = {
    "id": {"S": "job-1"},
    "n": {"N": "12.5"},
    "b": {"B": base64.b64encode(b"\x00\xffbin").decode()},
    "ss": {"SS": ["a", "b"]},
    "ns": {"NS": ["1", "2"]},
    "bs": {"BS": [base64.b64encode(b"\x01").decode(), base64.b64encode(b"\x02").decode()]},
    "bool": {"BOOL": False},
    "null": {"NULL": True},
    "l": {"L": [{"S": "x"}, {"N": "1"}, {"M": {"deep": {"L": [{"BOOL": True}]}}}]},
    "m": {"M": {"spec": {"M": {"command": {"L": [{"S": "python"}, {"S": "train.py"}]}, "gpus": {"N": "1"}}}}},
}


@pytest.fixture(scope="module")
def emulator():
    running, url = start_moto()
    yield running, url
    running.stop()


def test_conversion_equals_moto_for_every_type(emulator):
    import moto.dynamodb.responses as responses

    assert getattr(responses.dynamo_to_dict, "jobplane_fast", False)
    item = Item(DynamoType({"S": "job-1"}), None, EVERY_TYPE)
    result = {
        "Count": 1,
        "Items": [item.attrs],
        "LastEvaluatedKey": {"id": DynamoType({"S": "job-1"})},
        "Table": {"CreationDateTime": datetime(2026, 12, 1, tzinfo=UTC)},
        "Attrs": item,  # an object with to_json: moto's own rules
    }
    assert type(item.attrs) is not dict  # moto's LimitedSizeDict, walked as a dict
    assert responses.dynamo_to_dict(result) == moto_dynamo_to_dict(result)


def test_items_of_every_type_round_trip_through_the_server(emulator):
    _, url = emulator
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    client.create_table(
        TableName="every_type",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    decoded = {**EVERY_TYPE, "b": {"B": b"\x00\xffbin"}, "bs": {"BS": [b"\x01", b"\x02"]}}
    client.put_item(TableName="every_type", Item=decoded)
    got = client.get_item(TableName="every_type", Key={"id": {"S": "job-1"}})["Item"]
    queried = client.query(
        TableName="every_type",
        KeyConditionExpression="id = :i",
        ExpressionAttributeValues={":i": {"S": "job-1"}},
    )["Items"]
    for seen in (got, queried[0]):
        assert {k: v for k, v in seen.items() if k not in ("ss", "ns", "bs")} == {
            k: v for k, v in decoded.items() if k not in ("ss", "ns", "bs")
        }
        for key in ("ss", "ns", "bs"):  # sets: DynamoDB keeps no order
            (kind,) = decoded[key]
            assert sorted(seen[key][kind]) == sorted(decoded[key][kind])
